//! PostgreSQL under [`super::Conn`]: placeholder translation, a statement
//! cache per connection, and values encoded as the type the server inferred.

use super::ValueRef;
use std::collections::HashMap;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

/// A PostgreSQL failure, with its SQLSTATE when the server sent one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PgError {
    pub code: Option<String>,
    pub message: String,
    /// The connection is gone (server down or restarting, network): the
    /// request may be retried later, and this connection must be dropped.
    pub unavailable: bool,
}

/// SQLSTATE classes that mean "the database is not there right now".
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code == "57P01" // admin_shutdown
        || code == "57P02" // crash_shutdown
        || code == "57P03" // cannot_connect_now (starting up)
        || code == "53300" // too_many_connections
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code().to_owned();
                PgError {
                    unavailable: is_unavailable_code(&code),
                    message: match db.detail() {
                        Some(d) => format!("{} ({d})", db.message()),
                        None => db.message().to_owned(),
                    },
                    code: Some(code),
                }
            }
            None => PgError {
                code: e.code().map(|c| c.code().to_owned()),
                // No server error: the socket closed, or the connection could
                // not be made at all.
                unavailable: true,
                message: match std::error::Error::source(&e) {
                    Some(src) => format!("{e}: {src}"),
                    None => e.to_string(),
                },
            },
        }
    }
}

/// One client connection with its statement cache. The store runs on
/// blocking threads; each call waits for the async client with a plain
/// executor (legal on any thread, the CLI's async main included), while the
/// connection's socket is driven by a task on the pool's own runtime (so
/// dropping a connection never blocks, wherever it happens).
pub(crate) struct PgConn {
    client: tokio_postgres::Client,
    cache: HashMap<String, tokio_postgres::Statement>,
    /// Set once an error said the connection is gone; the pool drops it.
    pub(crate) broken: bool,
    /// Inside a write transaction (see [`super::Conn::row_lock`]).
    pub(crate) in_write: bool,
}

/// Dynamic SQL (filters) could grow the cache without bound.
const MAX_CACHED: usize = 512;

impl PgConn {
    pub fn connect(
        config: &tokio_postgres::Config,
        runtime: &tokio::runtime::Handle,
    ) -> Result<PgConn, PgError> {
        // The socket is the runtime's: connect there, and leave the
        // connection task running on it.
        let config = config.clone();
        let connecting = runtime.spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = futures::executor::block_on(connecting).map_err(|e| PgError {
            code: None,
            message: format!("connecting failed: {e}"),
            unavailable: true,
        })??;
        Ok(PgConn {
            client,
            cache: HashMap::new(),
            broken: false,
            in_write: false,
        })
    }

    fn note<T>(&mut self, r: Result<T, tokio_postgres::Error>) -> Result<T, PgError> {
        r.map_err(|e| {
            let e = PgError::from(e);
            if e.unavailable || self.client.is_closed() {
                self.broken = true;
            }
            e
        })
    }

    pub fn prepare(
        &mut self,
        sql: &str,
        cache: bool,
    ) -> Result<tokio_postgres::Statement, PgError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let translated = translate(sql);
        let r = futures::executor::block_on(self.client.prepare(&translated));
        let stmt = self.note(r)?;
        if cache {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            self.cache.insert(sql.to_owned(), stmt.clone());
        }
        Ok(stmt)
    }

    pub fn execute(
        &mut self,
        stmt: &tokio_postgres::Statement,
        values: &[ValueRef<'_>],
    ) -> Result<u64, PgError> {
        let params: Vec<Param<'_>> = values.iter().map(|v| Param(*v)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let r = futures::executor::block_on(self.client.execute(stmt, &refs));
        self.note(r)
    }

    pub fn query(
        &mut self,
        stmt: &tokio_postgres::Statement,
        values: &[ValueRef<'_>],
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        let params: Vec<Param<'_>> = values.iter().map(|v| Param(*v)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let r = futures::executor::block_on(self.client.query(stmt, &refs));
        self.note(r)
    }

    /// Sends every statement at once and then reads every answer, in
    /// order (tokio-postgres pipelines requests made concurrently): one
    /// round trip for the lot. A statement after one that failed inside a
    /// transaction fails too (the transaction is aborted), and a COMMIT
    /// there ends it as a rollback, so the caller must check every result.
    ///
    /// Every statement's parameters are checked before anything is sent:
    /// tokio-postgres refuses a bad parameter without sending that query
    /// but would send the ones after it, so a refused insert followed by a
    /// COMMIT would commit the rest of the pipeline. Here a bad parameter
    /// sends nothing (the outer error).
    #[allow(clippy::type_complexity)]
    pub fn pipeline(
        &mut self,
        items: &[(&tokio_postgres::Statement, &[&(dyn ToSql + Sync)])],
    ) -> Result<Vec<Result<Vec<tokio_postgres::Row>, PgError>>, PgError> {
        let mut scratch = bytes::BytesMut::new();
        for (stmt, params) in items {
            let types = stmt.params();
            if types.len() != params.len() {
                return Err(not_sent(format!(
                    "a statement takes {} parameters, {} were given",
                    types.len(),
                    params.len()
                )));
            }
            for (i, (p, ty)) in params.iter().zip(types).enumerate() {
                scratch.clear();
                p.to_sql_checked(ty, &mut scratch)
                    .map_err(|e| not_sent(format!("parameter ${}: {e}", i + 1)))?;
            }
        }
        let client = &self.client;
        let all = futures::executor::block_on(futures::future::join_all(
            items
                .iter()
                .map(|(stmt, params)| client.query(*stmt, params)),
        ));
        Ok(all.into_iter().map(|r| self.note(r)).collect())
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        let r = futures::executor::block_on(self.client.batch_execute(sql));
        self.note(r)
    }

    pub fn is_usable(&self) -> bool {
        !self.broken && !self.client.is_closed()
    }
}

/// A pipeline refused before sending anything.
fn not_sent(message: String) -> PgError {
    PgError {
        code: None,
        message: format!("nothing was sent: {message}"),
        unavailable: false,
    }
}

/// `?1` → `$1`, and a bare `?` → the next number; string literals, quoted
/// identifiers and comments are left alone.
pub(crate) fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next_anon = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next_anon.to_string());
                    next_anon += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A bound value, encoded as whatever type the server expects there.
#[derive(Debug)]
struct Param<'a>(ValueRef<'a>);

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (self.0, ty) {
            (ValueRef::Null, _) => Ok(IsNull::Yes),
            (ValueRef::Integer(i), &Type::INT8) => i.to_sql(ty, out),
            (ValueRef::Integer(i), &Type::INT4) => i32::try_from(i)?.to_sql(ty, out),
            (ValueRef::Integer(i), &Type::INT2) => i16::try_from(i)?.to_sql(ty, out),
            (ValueRef::Integer(i), &Type::BOOL) => (i != 0).to_sql(ty, out),
            (ValueRef::Integer(i), &Type::FLOAT8) => (i as f64).to_sql(ty, out),
            (ValueRef::Integer(i), &Type::FLOAT4) => (i as f32).to_sql(ty, out),
            (ValueRef::Integer(i), t) if is_text(t) => i.to_string().as_str().to_sql(ty, out),
            (ValueRef::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (ValueRef::Real(f), &Type::FLOAT4) => (f as f32).to_sql(ty, out),
            (ValueRef::Real(f), t) if is_text(t) => f.to_string().as_str().to_sql(ty, out),
            (ValueRef::Text(s), t) if is_text(t) => s.to_sql(ty, out),
            (ValueRef::Text(s), &Type::BYTEA) => s.as_bytes().to_sql(ty, out),
            (ValueRef::Text(s), &Type::JSON | &Type::JSONB) => {
                if *ty == Type::JSONB {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (ValueRef::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind a {} value to a {ty} parameter", v.kind()).into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn is_text(t: &Type) -> bool {
    matches!(
        *t,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

/// A column's value, decoded from the binary format by its type.
struct Column<'a>(ValueRef<'a>);

impl<'a> FromSql<'a> for Column<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::INT8 => ValueRef::Integer(i64::from_sql(ty, raw)?),
            Type::INT4 => ValueRef::Integer(i32::from_sql(ty, raw)? as i64),
            Type::INT2 => ValueRef::Integer(i16::from_sql(ty, raw)? as i64),
            Type::OID => ValueRef::Integer(u32::from_sql(ty, raw)? as i64),
            Type::BOOL => ValueRef::Integer(bool::from_sql(ty, raw)? as i64),
            Type::FLOAT8 => ValueRef::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(f32::from_sql(ty, raw)? as f64),
            Type::BYTEA => ValueRef::Blob(raw),
            Type::JSONB => ValueRef::Text(std::str::from_utf8(raw.get(1..).unwrap_or(&[]))?),
            Type::JSON => ValueRef::Text(std::str::from_utf8(raw)?),
            ref t if is_text(t) => ValueRef::Text(<&str>::from_sql(ty, raw)?),
            ref t => {
                return Err(format!(
                    "a {t} column has no Continuum value type (cast it to BIGINT, DOUBLE PRECISION or TEXT in the query)"
                )
                .into());
            }
        };
        Ok(Column(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Column(ValueRef::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

pub(crate) fn value_at(
    row: &tokio_postgres::Row,
    index: usize,
) -> Result<ValueRef<'_>, super::DbError> {
    row.try_get::<usize, Column<'_>>(index)
        .map(|c| c.0)
        .map_err(|e| super::DbError::conversion(index, e))
}

#[cfg(test)]
mod tests {
    use super::{PgConn, translate};
    use tokio_postgres::types::ToSql;

    /// A pipeline whose insert has a parameter of the wrong type, then a
    /// second insert and COMMIT: nothing is sent, so nothing is committed
    /// (tokio-postgres alone would skip the bad insert and commit the rest).
    #[test]
    fn a_pipeline_with_a_bad_parameter_sends_nothing() {
        let pg = continuum_testkit::Postgres::start().unwrap();
        let url = pg.create_database("pipeline").unwrap();
        let config: tokio_postgres::Config = url.parse().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut c = PgConn::connect(&config, runtime.handle()).unwrap();
        c.batch_execute("CREATE TABLE t (n BIGINT NOT NULL)")
            .unwrap();
        let begin = c.prepare("BEGIN", false).unwrap();
        let insert = c.prepare("INSERT INTO t (n) VALUES ($1)", false).unwrap();
        let commit = c.prepare("COMMIT", false).unwrap();
        let (bad, good): (&str, i64) = ("seven", 7);
        let none: [&(dyn ToSql + Sync); 0] = [];
        let e = c
            .pipeline(&[
                (&begin, &none),
                (&insert, &[&bad]),
                (&insert, &[&good]),
                (&commit, &none),
            ])
            .unwrap_err();
        assert!(
            e.message.starts_with("nothing was sent: parameter $1"),
            "{}",
            e.message
        );
        // The connection is still outside any transaction, and t is empty.
        let count = c.prepare("SELECT COUNT(*) FROM t", false).unwrap();
        let rows = c.pipeline(&[(&count, &none)]).unwrap();
        let n: i64 = rows[0].as_ref().unwrap()[0].get(0);
        assert_eq!(n, 0);
        let answers = c
            .pipeline(&[(&begin, &none), (&insert, &[&good]), (&commit, &none)])
            .unwrap();
        assert!(answers.iter().all(|a| a.is_ok()));
        let rows = c.pipeline(&[(&count, &none)]).unwrap();
        let n: i64 = rows[0].as_ref().unwrap()[0].get(0);
        assert_eq!(n, 1);
    }

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            translate("SELECT a FROM t WHERE x = ?1 AND y = ?12"),
            "SELECT a FROM t WHERE x = $1 AND y = $12"
        );
        assert_eq!(translate("VALUES (?, ?, ?)"), "VALUES ($1, $2, $3)");
        assert_eq!(
            translate("SELECT '?1', \"a?\" -- ?\n WHERE b = ?2"),
            "SELECT '?1', \"a?\" -- ?\n WHERE b = $2"
        );
    }
}
