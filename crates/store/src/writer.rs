//! Group commit. One thread owns the only write connection; every write in the
//! system is a job sent to it. The thread drains whatever jobs are waiting, runs
//! each inside its own SAVEPOINT (one bad job cannot spoil its batch), commits the
//! batch with a single fsync, and only then answers each caller. Under load, one
//! fsync covers hundreds of appends; alone, a write costs one fsync, as before.
//! A single writer also makes gap-free per-conversation `seq` trivially correct.

use crate::audit::AuditHeads;
use crate::db::Conn;
use crate::error::StoreError;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

/// Called once the batch holding a job has committed (or failed to).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: runs inside the batch transaction and says whether it succeeded.
pub(crate) type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> (bool, Completion) + Send>;

const MAX_BATCH: usize = 1024;

/// What a job sees: the connection, inside an open transaction and savepoint.
pub struct WriteCtx<'c> {
    pub conn: &'c Conn,
    pub(crate) audit_heads: &'c mut AuditHeads,
    pub(crate) audit_key: &'c crate::crypto::SecretKey,
}

pub(crate) struct Writer {
    tx: parking_lot::RwLock<Option<Sender<Job>>>,
    handle: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    pub fn start(
        conn: Conn,
        audit_key: crate::crypto::SecretKey,
        path: std::path::PathBuf,
    ) -> Writer {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let checkpoints = spawn_checkpointer(path);
        let handle = std::thread::Builder::new()
            .name("continuum-writer".into())
            .spawn(move || run(conn, rx, audit_key, checkpoints))
            .expect("spawning the writer thread");
        Writer {
            tx: parking_lot::RwLock::new(Some(tx)),
            handle: parking_lot::Mutex::new(Some(handle)),
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), StoreError> {
        match &*self.tx.read() {
            Some(tx) => tx.send(job).map_err(|_| StoreError::ShuttingDown),
            None => Err(StoreError::ShuttingDown),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.read().as_ref().map_or(0, |tx| tx.len())
    }

    /// Refuses new jobs, lets the queued ones commit, and waits for the thread.
    pub fn shutdown(&self) {
        self.tx.write().take();
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

/// Copies the WAL back into the database on its own connection and thread, so
/// the writer never stalls on a checkpoint. PASSIVE checkpoints never block the
/// writer; if the WAL still grows past ~64 MiB under sustained load, a RESTART
/// checkpoint (brief writer pause) bounds it.
fn spawn_checkpointer(path: std::path::PathBuf) -> Sender<()> {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let _ = std::thread::Builder::new()
        .name("continuum-checkpoint".into())
        .spawn(move || {
            let Ok(conn) = Connection::open(&path) else {
                return;
            };
            let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
            let mut last = Instant::now();
            loop {
                match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
                if last.elapsed() < std::time::Duration::from_millis(250) {
                    continue;
                }
                last = Instant::now();
                let wal_pages: i64 = conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                    .unwrap_or(0);
                if wal_pages > 16_384 {
                    let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
                }
            }
        });
    tx
}

fn run(
    conn: Conn,
    rx: Receiver<Job>,
    audit_key: crate::crypto::SecretKey,
    checkpoints: Sender<()>,
) {
    let mut heads = AuditHeads::default();
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::with_capacity(64);
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let n = jobs.len();
        run_batch(&conn, &mut heads, &audit_key, jobs);
        let _ = checkpoints.try_send(());
        metrics::histogram!("continuum_store_commit_batch_size").record(n as f64);
        metrics::histogram!("continuum_store_commit_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    drop(checkpoints);
    // All senders gone: checkpoint so the next start does not replay a long
    // WAL. The checkpointer thread may be mid-checkpoint (it exits after) and
    // a reader may still hold a snapshot: either makes TRUNCATE report busy
    // (SQLITE_BUSY, or busy = 1 in its row), so try again for a little while.
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let done = conn
            .query_row(
                "PRAGMA wal_checkpoint(TRUNCATE)",
                crate::db::params![],
                |r| r.get::<_, i64>(0),
            )
            .is_ok_and(|b| b == 0);
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tracing::debug!("writer thread stopped");
}

/// Runs one batch. A job whose completion is never called (the batch could not
/// begin, or the job panicked) drops its reply channel, which its caller sees
/// as a failed write: nothing is acknowledged that was not committed.
/// Runs a parameterless statement through the statement cache (no re-parse).
fn exec_cached(conn: &Conn, sql: &str) -> crate::db::Result<()> {
    conn.prepare_cached(sql)?.execute(crate::db::params![])?;
    Ok(())
}

fn run_batch(
    conn: &Conn,
    heads: &mut AuditHeads,
    audit_key: &crate::crypto::SecretKey,
    jobs: Vec<Job>,
) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "could not begin a write transaction; failing {} writes", jobs.len());
        heads.clear();
        return;
    }
    // Another process (the CLI) may have written since our last batch; chain
    // heads are only trusted within one transaction, which holds the write lock.
    heads.clear();
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Err(e) = exec_cached(conn, "SAVEPOINT job") {
            tracing::error!(error = %e, "could not open a savepoint; failing one write");
            continue;
        }
        let mut ctx = WriteCtx {
            conn,
            audit_heads: heads,
            audit_key,
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut ctx))) {
            Ok((true, done)) => {
                let _ = exec_cached(conn, "RELEASE job");
                completions.push(done);
            }
            Ok((false, done)) => {
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                // The cached audit heads may include a rolled-back record.
                heads.clear();
                completions.push(done);
            }
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                heads.clear();
                tracing::error!(
                    "a write job panicked; it was rolled back and the rest of its batch kept"
                );
            }
        }
    }
    let commit = conn
        .execute_batch("COMMIT")
        .map_err(|e| StoreError::Commit(e.to_string()));
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
        heads.clear();
    }
    for done in completions {
        done(commit.clone());
    }
}
