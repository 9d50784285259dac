//! Runs each store test on both backends: SQLite in a temporary directory,
//! and PostgreSQL in a database of its own on a server this test binary
//! starts (initdb + pg_ctl, through continuum-testkit) and stops at exit.

#![allow(dead_code)]

use continuum_store::{SecretKey, Store, StoreOptions};
use continuum_testkit::Postgres;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store and what keeps it alive (its directory or database).
pub struct TestStore {
    pub store: Store,
    pub backend: Backend,
    /// Where to open it again: a data directory or a postgres:// URL.
    pub location: String,
    pub key: SecretKey,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl TestStore {
    /// The same data opened again (a restart), with the same key.
    pub async fn reopen(&self) -> Store {
        Store::connect(&self.location, self.key.clone(), StoreOptions::default())
            .await
            .unwrap()
    }
}

fn server() -> &'static Mutex<Postgres> {
    static SERVER: OnceLock<Mutex<Postgres>> = OnceLock::new();
    SERVER.get_or_init(|| {
        Mutex::new(Postgres::start().expect("starting a test PostgreSQL (initdb + pg_ctl)"))
    })
}

/// A fresh, empty PostgreSQL database on the shared test server.
pub fn postgres_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("t{}_{n}", std::process::id());
    server().lock().unwrap().create_database(&name).unwrap()
}

pub async fn open(backend: Backend) -> TestStore {
    open_with(backend, SecretKey::generate(), StoreOptions::default()).await
}

pub async fn open_with(backend: Backend, key: SecretKey, opts: StoreOptions) -> TestStore {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let location = dir.path().display().to_string();
            let store = Store::connect(&location, key.clone(), opts).await.unwrap();
            TestStore {
                store,
                backend,
                location,
                key,
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            let location = tokio::task::spawn_blocking(postgres_database)
                .await
                .unwrap();
            let store = Store::connect(&location, key.clone(), opts).await.unwrap();
            TestStore {
                store,
                backend,
                location,
                key,
                _dir: None,
            }
        }
    }
}

/// `both!(name)` turns `async fn name(backend: Backend)` into two tests,
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    )+};
}

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}

/// Every row of a PostgreSQL test database as `pg_dump --data-only` prints it.
pub fn pg_dump(url: &str) -> Vec<u8> {
    let server = server().lock().unwrap();
    let out = std::process::Command::new(server.bin_dir().join("pg_dump"))
        .args(["--data-only", "-d", url])
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One row of a query, columns joined with `|`, read past the store: with
/// the sqlite3 library on SQLite, with psql on PostgreSQL.
pub fn raw_query(store: &TestStore, sql: &str) -> String {
    match store.backend {
        Backend::Sqlite => {
            let db = continuum_store::database_path(std::path::Path::new(&store.location));
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.query_row(sql, [], |r| {
                let n = r.as_ref().column_count();
                let mut cols = Vec::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cols.push(match v {
                        rusqlite::types::Value::Null => String::new(),
                        rusqlite::types::Value::Integer(i) => i.to_string(),
                        rusqlite::types::Value::Real(f) => f.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        rusqlite::types::Value::Blob(b) => hex::encode(b),
                    });
                }
                Ok(cols.join("|"))
            })
            .unwrap()
        }
        Backend::Postgres => server()
            .lock()
            .unwrap()
            .psql(database_name(&store.location), sql)
            .unwrap(),
    }
}

/// Everything the database holds for the store: SQLite's database file and
/// its WAL, or PostgreSQL's rows as `pg_dump` prints them.
pub fn raw_bytes(store: &TestStore) -> Vec<u8> {
    match store.backend {
        Backend::Sqlite => {
            let db = continuum_store::database_path(std::path::Path::new(&store.location));
            let mut bytes = std::fs::read(&db).unwrap();
            if let Ok(wal) = std::fs::read(format!("{}-wal", db.display())) {
                bytes.extend_from_slice(&wal);
            }
            bytes
        }
        Backend::Postgres => pg_dump(&store.location),
    }
}

/// Whether `needle` is in `haystack`, as text or hex-encoded (how pg_dump
/// prints byte columns).
pub fn holds(haystack: &[u8], needle: &str) -> bool {
    let hex = hex::encode(needle);
    [needle.as_bytes(), hex.as_bytes()]
        .iter()
        .any(|n| haystack.windows(n.len()).any(|w| w == *n))
}

/// The last lines of the test PostgreSQL server's log (deadlock reports
/// name the statements there), for a failing test to print.
pub fn pg_log_tail() -> String {
    server().lock().unwrap().log_tail()
}
