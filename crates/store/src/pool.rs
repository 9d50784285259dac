//! A tiny pool of read-only connections. WAL lets readers run beside the
//! writer; a pool crate would add a dependency pinned to its own rusqlite.

use crate::db::Conn;
use crate::error::{Result, StoreError};
use crate::schema;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::ops::Deref;
use std::path::PathBuf;

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
}

pub(crate) struct PooledConn<'p> {
    pool: &'p ReadPool,
    conn: Option<Conn>,
}

impl ReadPool {
    pub fn new(path: PathBuf, max_idle: usize) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn get(&self) -> Result<PooledConn<'_>> {
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| StoreError::Database(format!("cannot open read connection: {e}")))?;
                schema::configure(&c, false)?;
                Conn::sqlite(c)
            }
        };
        Ok(PooledConn {
            pool: self,
            conn: Some(conn),
        })
    }
}

impl Deref for PooledConn<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.pool.idle.lock();
            if idle.len() < self.pool.max_idle {
                idle.push(c);
            }
        }
    }
}
