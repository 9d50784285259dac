//! The PostgreSQL backend: a connection pool, and writes as one transaction
//! each on a blocking thread.
//!
//! SQLite's writer batches every write of the process into one transaction
//! (group commit). Here writers run side by side, on this node and others,
//! and PostgreSQL groups their WAL flushes itself; what the single writer
//! gave for free is kept by locks: a conversation's row is locked by the
//! write that appends to it (`Conn::row_lock`), so its `seq` stays gap-free
//! and its idempotency keys exactly-once, and the audit chain is extended
//! through per-transaction chain heads (`audit.rs`).

use crate::audit::AuditHeads;
use crate::db::Conn;
use crate::db::pg::{PgConn, PgError};
use crate::error::{Result, StoreError};
use crate::writer::WriteCtx;
use parking_lot::Mutex;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::time::Duration;

/// Connections kept open; more are made while a burst needs them.
pub(crate) struct PgPool {
    config: tokio_postgres::Config,
    /// Drives the connections' sockets (see `PgConn`); shut down in the
    /// background on drop, so dropping a store never blocks.
    runtime: Option<tokio::runtime::Runtime>,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
}

/// A connection on loan from the pool, returned on drop unless it broke.
pub(crate) struct Lease<'p> {
    pool: &'p PgPool,
    conn: Option<Conn>,
}

/// What the server names when it cannot reach PostgreSQL: the address, never
/// the password.
pub(crate) fn describe(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}:{port}/{}",
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://…".into(),
    }
}

impl PgPool {
    pub fn new(url: &str, max_idle: usize) -> Result<PgPool> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Invalid(format!(
                "store.url is not a PostgreSQL URL ({e}): expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("continuum");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("continuum-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Database(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        Ok(PgPool {
            config,
            runtime: Some(runtime),
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    pub fn get(&self) -> Result<Lease<'_>> {
        loop {
            let Some(conn) = self.idle.lock().pop() else {
                break;
            };
            let usable = conn.as_pg().is_some_and(|c| c.borrow().is_usable());
            if usable {
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                });
            }
        }
        let conn = PgConn::connect(
            &self.config,
            self.runtime.as_ref().expect("running until drop").handle(),
        )
        .map_err(|e: PgError| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL: {}", e.message))
        })?;
        Ok(Lease {
            pool: self,
            conn: Some(Conn::pg(conn)),
        })
    }

    /// Drops idle connections (after PostgreSQL restarted, they are all dead).
    pub fn clear(&self) {
        self.idle.lock().clear();
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        self.idle.get_mut().clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let Some(pg) = conn.as_pg() else { return };
        if !pg.borrow().is_usable() {
            // One dead connection usually means all of them are (a restart).
            self.pool.clear();
            return;
        }
        let mut idle = self.pool.idle.lock();
        if idle.len() < self.pool.max_idle {
            idle.push(conn);
        }
    }
}

/// Runs `f` in a transaction of its own and commits it; what SQLite's writer
/// does for a job, without the batch.
pub(crate) fn run_write<T>(
    conn: &Conn,
    audit_key: &crate::crypto::SecretKey,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>,
) -> Result<T> {
    let started = std::time::Instant::now();
    let result = transaction(conn, audit_key, f);
    // The same series as SQLite's writer (a batch of one here).
    metrics::histogram!("continuum_store_commit_batch_size").record(1.0);
    metrics::histogram!("continuum_store_commit_seconds").record(started.elapsed().as_secs_f64());
    result
}

fn transaction<T>(
    conn: &Conn,
    audit_key: &crate::crypto::SecretKey,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>,
) -> Result<T> {
    conn.execute_batch("BEGIN")?;
    in_write(conn, || {
        let mut heads = AuditHeads::default();
        let mut ctx = WriteCtx {
            conn,
            audit_heads: &mut heads,
            audit_key,
        };
        let v = f(&mut ctx)?;
        conn.execute_batch("COMMIT")
            .map_err(|e| match StoreError::from(e) {
                StoreError::Unavailable(m) => StoreError::Unavailable(m),
                e => StoreError::Commit(e.to_string()),
            })?;
        Ok(v)
    })
}

/// Runs `f` (which ends the transaction it runs in by committing it) with
/// the connection marked as inside a write (`Conn::row_lock`), and rolls
/// back whatever it left open when it fails or panics.
pub(crate) fn in_write<T>(conn: &Conn, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let pg = conn.as_pg().expect("a PostgreSQL connection");
    pg.borrow_mut().in_write = true;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    pg.borrow_mut().in_write = false;
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!("a write panicked; it was rolled back");
            Err(StoreError::Commit("the write failed (rolled back)".into()))
        }
    }
}
