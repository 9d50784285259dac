//! One SQL interface over SQLite and PostgreSQL.
//!
//! The store's modules are written once against [`Conn`]: statements with
//! numbered placeholders (`?1`), values through [`ToValue`] and [`FromValue`]
//! (SQLite's five storage classes), rows read by column index. SQLite runs
//! them as they are; PostgreSQL gets `$1` placeholders, and each value is
//! encoded as the type the server inferred for its placeholder, so an integer
//! flag binds to a `BIGINT` or a `BOOLEAN` column alike.
//!
//! Hand-rolled rather than sqlx's `Any` driver: the store runs on blocking
//! threads (SQLite's group-committing writer, synchronous reads), sqlx is
//! async-only and pins its own SQLite, and neither driver rewrites
//! placeholders. The surface mirrors rusqlite's so the SQL-bearing code reads
//! the same on both backends.

pub(crate) mod pg;
mod value;

pub use value::{FromValue, ToValue, ValueRef};

use std::cell::RefCell;

/// What a query can fail with, on either backend.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {index}: {reason}")]
    Conversion { index: usize, reason: String },
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Pg(#[from] pg::PgError),
}

impl DbError {
    pub fn conversion(index: usize, reason: impl std::fmt::Display) -> DbError {
        DbError::Conversion {
            index,
            reason: reason.to_string(),
        }
    }

    /// A unique or primary-key constraint refused the row.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            DbError::Pg(e) => e.code.as_deref() == Some("23505"),
            _ => false,
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// `.optional()` on a single-row result, as in rusqlite.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(DbError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Bound parameters of one statement: `params![..]`, an array, or a
/// slice or vector of values.
pub trait Params {
    fn values(&self) -> Vec<ValueRef<'_>>;
}

impl<T: ToValue> Params for &[T] {
    fn values(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for &[T; N] {
    fn values(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue> Params for &Vec<T> {
    fn values(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

/// `params![a, b, c]`: a slice of values of mixed types.
#[macro_export]
#[doc(hidden)]
macro_rules! db_params {
    () => {
        &[] as &[&dyn $crate::db::ToValue]
    };
    ($($v:expr),+ $(,)?) => {
        &[$(&$v as &dyn $crate::db::ToValue),+] as &[&dyn $crate::db::ToValue]
    };
}
pub(crate) use db_params as params;

/// Which SQL dialect a connection speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

fn pg_only(sql: &str) -> DbError {
    DbError::Pg(pg::PgError {
        code: None,
        message: format!(
            "a PostgreSQL-only statement ran on SQLite: {}",
            sql.chars().take(60).collect::<String>()
        ),
        unavailable: false,
    })
}

/// One database connection of either backend.
pub struct Conn(Backend);

enum Backend {
    Sqlite(rusqlite::Connection),
    Pg(Box<RefCell<pg::PgConn>>),
}

impl Conn {
    pub fn sqlite(c: rusqlite::Connection) -> Conn {
        Conn(Backend::Sqlite(c))
    }

    pub(crate) fn pg(c: pg::PgConn) -> Conn {
        Conn(Backend::Pg(Box::new(RefCell::new(c))))
    }

    pub fn dialect(&self) -> Dialect {
        match self.0 {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Pg(_) => Dialect::Postgres,
        }
    }

    pub fn is_pg(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// ` FOR UPDATE` inside a PostgreSQL write, else nothing: a write that
    /// reads a row to change it locks it, so writers on other nodes wait
    /// instead of overwriting each other. (SQLite's single writer needs no
    /// lock.)
    pub fn row_lock(&self) -> &'static str {
        match &self.0 {
            Backend::Pg(c) if c.borrow().in_write => " FOR UPDATE",
            _ => "",
        }
    }

    /// ` FOR UPDATE SKIP LOCKED` inside a PostgreSQL write, else nothing:
    /// for the SELECT that claims queued work (due messages, reminders,
    /// webhook deliveries). Rows another node is claiming right now are
    /// passed over rather than waited for, and the rows returned stay locked
    /// until the claim commits, so no two nodes ever take the same one.
    /// (SQLite's single writer claims one batch at a time.)
    pub fn claim_lock(&self) -> &'static str {
        match &self.0 {
            Backend::Pg(c) if c.borrow().in_write => " FOR UPDATE SKIP LOCKED",
            _ => "",
        }
    }

    /// Runs `f` on one snapshot of the database: every statement of it sees
    /// the same committed state (PostgreSQL: a read-only REPEATABLE READ
    /// transaction; SQLite: a read transaction), so a walk over several
    /// tables never sees a write of another node (or of the writer thread)
    /// land between two of its statements. For reads only.
    pub fn snapshot<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Conn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        /// Ends the transaction however `f` ends (a panic included), so the
        /// connection goes back to its pool outside one.
        struct End<'c>(&'c Conn);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                let _ = self.0.execute_batch("ROLLBACK");
            }
        }
        self.execute_batch(match self.dialect() {
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Dialect::Sqlite => "BEGIN",
        })?;
        let _end = End(self);
        f(self)
    }

    /// The SQLite connection underneath (migrations, pragmas, checkpoints).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.0 {
            Backend::Sqlite(c) => Some(c),
            Backend::Pg(_) => None,
        }
    }

    pub fn as_sqlite_mut(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.0 {
            Backend::Sqlite(c) => Some(c),
            Backend::Pg(_) => None,
        }
    }

    pub(crate) fn as_pg(&self) -> Option<&RefCell<pg::PgConn>> {
        match &self.0 {
            Backend::Pg(c) => Some(c),
            Backend::Sqlite(_) => None,
        }
    }

    /// PostgreSQL only: several statements in one round trip (see
    /// `PgConn::pipeline`), their parameters typed Rust values, arrays
    /// included, for the set-based writes of a batch (`INSERT … SELECT FROM
    /// unnest($1::text[], …)`): one statement for a whole batch where the
    /// value layer above binds one row at a time. Each answer is that
    /// statement's rows or error.
    pub(crate) fn pg_pipeline(
        &self,
        items: &[(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])],
    ) -> Result<Vec<Result<Vec<tokio_postgres::Row>>>> {
        let first = items.first().map_or("", |i| i.0);
        let c = self.as_pg().ok_or_else(|| pg_only(first))?;
        let mut c = c.borrow_mut();
        let mut stmts = Vec::with_capacity(items.len());
        for (sql, _) in items {
            stmts.push(c.prepare(sql, true)?);
        }
        let piped: Vec<_> = stmts.iter().zip(items).map(|(s, i)| (s, i.1)).collect();
        Ok(c.pipeline(&piped)?
            .into_iter()
            .map(|r| r.map_err(DbError::from))
            .collect())
    }

    /// A statement kept in the connection's cache (hot paths).
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        Ok(Stmt(match &self.0 {
            Backend::Sqlite(c) => StmtInner::SqliteCached(c.prepare_cached(sql)?),
            Backend::Pg(c) => {
                let stmt = c.borrow_mut().prepare(sql, true)?;
                StmtInner::Pg { conn: c, stmt }
            }
        }))
    }

    /// A statement used once (dynamic SQL, verification walks).
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        Ok(Stmt(match &self.0 {
            Backend::Sqlite(c) => StmtInner::Sqlite(c.prepare(sql)?),
            Backend::Pg(c) => {
                let stmt = c.borrow_mut().prepare(sql, false)?;
                StmtInner::Pg { conn: c, stmt }
            }
        }))
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    /// Several statements without parameters (transaction control, DDL).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.0 {
            Backend::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Backend::Pg(c) => Ok(c.borrow_mut().batch_execute(sql)?),
        }
    }
}

/// A prepared statement.
pub struct Stmt<'c>(StmtInner<'c>);

enum StmtInner<'c> {
    SqliteCached(rusqlite::CachedStatement<'c>),
    Sqlite(rusqlite::Statement<'c>),
    Pg {
        conn: &'c RefCell<pg::PgConn>,
        stmt: tokio_postgres::Statement,
    },
}

fn bind_sqlite(stmt: &mut rusqlite::Statement<'_>, values: &[ValueRef<'_>]) -> Result<()> {
    let expected = stmt.parameter_count();
    if values.len() != expected {
        return Err(rusqlite::Error::InvalidParameterCount(values.len(), expected).into());
    }
    for (i, v) in values.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, rusqlite::types::ToSqlOutput::Borrowed(v.to_sqlite()))?;
    }
    Ok(())
}

impl<'c> Stmt<'c> {
    /// Runs the statement; returns the rows it changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        let values = params.values();
        let s: &mut rusqlite::Statement<'c> = match &mut self.0 {
            StmtInner::SqliteCached(s) => s,
            StmtInner::Sqlite(s) => s,
            StmtInner::Pg { conn, stmt } => {
                return Ok(conn.borrow_mut().execute(stmt, &values)? as usize);
            }
        };
        bind_sqlite(s, &values)?;
        Ok(s.raw_execute()?)
    }

    /// The first row, or [`DbError::NoRows`].
    pub fn query_row<T, P, F>(&mut self, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        let mut rows = self.query(params)?;
        match rows.next()? {
            Some(r) => f(&r),
            None => Err(DbError::NoRows),
        }
    }

    /// Every row through `f` (read eagerly).
    pub fn query_map<T, P, F>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let mut rows = self.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(f(&r));
        }
        Ok(out.into_iter())
    }

    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        let values = params.values();
        let s: &mut rusqlite::Statement<'c> = match &mut self.0 {
            StmtInner::SqliteCached(s) => s,
            StmtInner::Sqlite(s) => s,
            StmtInner::Pg { conn, stmt } => {
                let rows = conn.borrow_mut().query(stmt, &values)?;
                return Ok(Rows(RowsInner::Pg {
                    rows: rows.into_iter(),
                    current: None,
                }));
            }
        };
        bind_sqlite(s, &values)?;
        Ok(Rows(RowsInner::Sqlite(s.raw_query())))
    }
}

/// The rows of a query, read one at a time.
pub struct Rows<'s>(RowsInner<'s>);

enum RowsInner<'s> {
    Sqlite(rusqlite::Rows<'s>),
    Pg {
        rows: std::vec::IntoIter<tokio_postgres::Row>,
        current: Option<tokio_postgres::Row>,
    },
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match &mut self.0 {
            RowsInner::Sqlite(r) => Ok(r.next()?.map(Row::Sqlite)),
            RowsInner::Pg { rows, current } => {
                *current = rows.next();
                Ok(current.as_ref().map(Row::Pg))
            }
        }
    }
}

/// A column position (only `usize`, so a literal `r.get(0)` infers).
pub trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row; columns are read by index.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r tokio_postgres::Row),
}

impl Row<'_> {
    pub fn get<I: RowIndex, T: FromValue>(&self, index: I) -> Result<T> {
        let index = index.index();
        match self {
            Row::Sqlite(r) => {
                let v = r.get_ref(index)?;
                T::from_value(ValueRef::from_sqlite(v)).map_err(|e| DbError::conversion(index, e))
            }
            Row::Pg(r) => {
                let v = pg::value_at(r, index)?;
                T::from_value(v).map_err(|e| DbError::conversion(index, e))
            }
        }
    }
}
