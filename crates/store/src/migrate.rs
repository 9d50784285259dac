//! `continuum migrate`: a single-node SQLite store copied into an empty
//! PostgreSQL database, for moving to a cluster.
//!
//! Every table is copied row by row, values as they are: sealed columns stay
//! sealed under the same tenant keys (so the same master key must be used on
//! both sides, and is checked against every tenant's wrapped key before
//! anything is written), blind indexes and MACs stay valid. The audit table
//! becomes chain 0 of each tenant, which is exactly SQLite's single chain
//! (`audit.rs`); `audit_heads` then points at each chain's last record so new
//! appends continue it, and each record's `position` (the paging cursor) is
//! its `seq`, as on SQLite, so an auditor's cursor stays valid. Identity
//! columns (`outbox.id`, `deliveries.id`, `audit.position`) keep their values
//! and their sequences restart after the largest one.
//!
//! The copy is one PostgreSQL transaction (multi-row INSERTs in batches,
//! tables in foreign-key order): a failed copy leaves the target as it was
//! (empty), and can simply be run again. The SQLite store is held with an
//! exclusive lock from the first read to the end, so a server that is still
//! running is detected (it holds the database open) and one that starts
//! meanwhile cannot write behind the copy's back.

use crate::db::{Conn, ToValue, ValueRef, params};
use crate::error::{Result, StoreError};
use crate::{SecretKey, Store, StoreOptions, VerifyReport, database_path};
use rusqlite::types::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every table of the store, parents before children (foreign-key order).
/// A table SQLite has that is not listed here stops the copy (a newer
/// schema than this binary knows); `tables_are_in_foreign_key_order` checks
/// the order against the schema's own `REFERENCES`.
pub const TABLES: &[&str] = &[
    "tenants",
    "api_keys",
    "staff",
    "tenant_settings",
    "revoked_tokens",
    "contacts",
    "contact_bindings",
    "conversations",
    "events",
    "event_markers",
    "media_sessions",
    "audit",
    "webhooks",
    "outbox",
    "deliveries",
    "rooms",
    "sip_trunks",
    "sip_numbers",
    "dispatch_rules",
    "calls",
    "messaging_providers",
    "messages",
    "inbound_messages",
    "messaging_consent",
    "messaging_windows",
    "chat_receipts",
    "attachments",
    "reminder_settings",
    "reminder_templates",
    "appointments",
    "reminders",
    "ivr_flows",
    "business_calendars",
    "queues",
    "agents",
    "routing_tasks",
];

/// Identity columns whose sequences restart after the copied values.
const IDENTITIES: &[(&str, &str)] = &[
    ("outbox", "id"),
    ("deliveries", "id"),
    ("audit", "position"),
];

/// Columns only the PostgreSQL schema has (filled by the copy itself).
const PG_ONLY_COLUMNS: &[(&str, &str)] = &[("audit", "chain"), ("audit", "position")];

/// Rows per multi-row INSERT, at most (PostgreSQL takes 65,535 parameters
/// per statement).
const BATCH_ROWS: usize = 1000;
const MAX_PARAMS: usize = 60_000;

/// What the copy is doing, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The source is locked and current, its tenants' keys open with the
    /// master key, and the target is empty: copying starts.
    Checked { tenants: usize },
    /// A table's copy starts; `rows` is how many it has.
    Table { table: &'a str, rows: u64 },
    /// Rows of the current table copied so far.
    Copied { table: &'a str, rows: u64 },
    /// Audit chain heads and identity sequences are being set, then the
    /// transaction commits.
    Finishing,
    /// Committed; the PostgreSQL store's audit chains are being verified.
    Verifying,
}

/// What was copied.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// Rows per table, in copy order.
    pub tables: Vec<(String, u64)>,
    pub tenants: usize,
    /// Audit chains continued on PostgreSQL: (tenant id, last seq) each,
    /// the server's chain of denials (`-`) included.
    pub audit_chains: Vec<(String, i64)>,
    pub elapsed: Duration,
    /// `Store::verify_blocking` on the PostgreSQL store after the commit.
    pub verify: VerifyReport,
}

impl MigrationReport {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// A value read from SQLite, bound as it is.
impl ToValue for Value {
    fn to_value(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// Copies the SQLite store in `from_dir` (stopped: see the module doc) into
/// the empty PostgreSQL database at `to_url`, then verifies the copy's audit
/// chains. `master` must be the key the SQLite store was written under.
/// Blocking (run it off async threads).
pub fn copy_sqlite_to_postgres(
    from_dir: &Path,
    master: SecretKey,
    to_url: &str,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<MigrationReport> {
    let started = Instant::now();
    let source = open_source(from_dir, &master)?;
    let src = source.as_sqlite().expect("a SQLite connection");

    // Every tenant's data key must open: the sealed rows are copied as they
    // are, and PostgreSQL nodes will open them with this same master key.
    let tenant_ids: Vec<String> = {
        let mut stmt = src.prepare("SELECT id FROM tenants ORDER BY created_at")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for id in &tenant_ids {
        crate::unwrap_tenant_keys(&source, &master, id).map_err(|e| match e {
            StoreError::Integrity(_) => StoreError::Invalid(format!(
                "tenant {id}'s data key does not open with this master key: the SQLite store was \
                 written under another one. Use the server's key: security.master_key \
                 (CONTINUUM_SECURITY__MASTER_KEY) as the server had it, or the data directory's \
                 {} (nothing was written to PostgreSQL)",
                MASTER_KEY_FILE
            )),
            e => e,
        })?;
    }
    let source_tables = sqlite_tables(src)?;
    if let Some(unknown) = source_tables.iter().find(|t| !TABLES.contains(&t.as_str())) {
        return Err(StoreError::Invalid(format!(
            "the SQLite store has a table `{unknown}` this version of continuum does not know how \
             to copy (a store written by a newer version?): run the migration with the same \
             version as the server that wrote it"
        )));
    }

    let target = Store::open_postgres(
        to_url,
        master,
        StoreOptions {
            pg_connections: 2,
            ..Default::default()
        },
    )
    .map_err(|e| match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!(
            "{m}: check --to (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE) and that the database exists (CREATE DATABASE …)"
        )),
        e => e,
    })?;
    let pool = match &target.0.engine {
        crate::Engine::Postgres { pool, .. } => pool,
        crate::Engine::Sqlite { .. } => unreachable!("open_postgres opens PostgreSQL"),
    };
    let pg = pool.get()?;
    pg.execute_batch("BEGIN")?;
    let copied = copy_all(src, &pg, &source_tables, tenant_ids.len(), &mut progress);
    let (tables, audit_chains) = match copied {
        Ok(v) => {
            if let Err(e) = pg.execute_batch("COMMIT") {
                let _ = pg.execute_batch("ROLLBACK");
                return Err(StoreError::Commit(format!(
                    "{e} (nothing was copied; run the migration again)"
                )));
            }
            v
        }
        Err(e) => {
            let _ = pg.execute_batch("ROLLBACK");
            return Err(e);
        }
    };
    drop(pg);
    // Unlocks the SQLite store.
    drop(source);
    progress(Progress::Verifying);
    let verify = target.verify_blocking()?;
    target.shutdown();
    Ok(MigrationReport {
        tables,
        tenants: tenant_ids.len(),
        audit_chains,
        elapsed: started.elapsed(),
        verify,
    })
}

const MASTER_KEY_FILE: &str = "master.key";

/// Opens the SQLite store for the copy: locked exclusively (refused while a
/// server holds it open), its schema brought up to date and any clear labels
/// sealed, as `Store::open` would.
fn open_source(from_dir: &Path, master: &SecretKey) -> Result<Conn> {
    let path = database_path(from_dir);
    if !path.is_file() {
        return Err(StoreError::Invalid(format!(
            "no Continuum store at {}: --from names the server's data directory (server.data_dir, \
             the one holding continuum.db)",
            path.display()
        )));
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(2))?;
    // EXCLUSIVE locking: the first write transaction takes the database
    // file's exclusive lock and keeps it until the connection closes. A
    // running server (its writer connection holds the WAL database open)
    // makes that fail at once.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    let locked = conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;");
    if let Err(e) = locked {
        let busy = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        return Err(if busy {
            StoreError::Conflict(format!(
                "{} is open by another process, most likely a running Continuum server: stop it \
                 first (migrate copies a stopped store, so that nothing is written after the copy)",
                path.display()
            ))
        } else {
            StoreError::Database(format!("cannot lock {}: {e}", path.display()))
        });
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let mut conn = conn;
    crate::schema::migrate(&mut conn)?;
    let conn = Conn::sqlite(conn);
    crate::conversations::seal_clear_labels(&conn, master, &master.derive("audit-chain"))?;
    Ok(conn)
}

/// The store's tables in the SQLite file.
fn sqlite_tables(src: &rusqlite::Connection) -> Result<Vec<String>> {
    let mut stmt = src.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    Ok(stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

type Copied = (Vec<(String, u64)>, Vec<(String, i64)>);

/// The copy, inside the target's open transaction.
fn copy_all(
    src: &rusqlite::Connection,
    pg: &Conn,
    source_tables: &[String],
    tenants: usize,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<Copied> {
    // No node may write while the target is checked and filled (a server
    // starting on it would bootstrap a `dev` tenant).
    pg.execute_batch(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        TABLES.join(", ")
    ))?;
    ensure_empty(pg)?;
    progress(Progress::Checked { tenants });
    let mut tables = Vec::new();
    for &table in TABLES {
        if !source_tables.iter().any(|t| t == table) {
            // Cannot happen after the SQLite migrations; an old store's
            // table list is a subset only if someone removed one.
            return Err(StoreError::Invalid(format!(
                "the SQLite store has no table `{table}`: it is damaged or not a Continuum store"
            )));
        }
        let rows = copy_table(src, pg, table, progress)?;
        tables.push((table.to_owned(), rows));
    }
    progress(Progress::Finishing);
    // Each tenant's chain 0 continues from its last record.
    pg.execute(
        "INSERT INTO audit_heads (tenant_id, chain, seq, mac)
         SELECT a.tenant_id, 0, a.seq, a.mac FROM audit a
         WHERE a.chain = 0 AND a.seq = (SELECT MAX(b.seq) FROM audit b WHERE b.tenant_id = a.tenant_id AND b.chain = 0)",
        params![],
    )?;
    let mut stmt =
        pg.prepare("SELECT tenant_id, seq FROM audit_heads WHERE chain = 0 ORDER BY tenant_id")?;
    let chains = stmt
        .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<Vec<(String, i64)>>>()?;
    for (table, column) in IDENTITIES {
        // The next value is one past the largest copied (1 when empty).
        pg.query_row(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
            ),
            params![],
            |r| r.get::<_, i64>(0),
        )?;
    }
    Ok((tables, chains))
}

/// Refuses a target that holds anything (tenants first: the usual case).
fn ensure_empty(pg: &Conn) -> Result<()> {
    let tenants: i64 = pg.query_row("SELECT COUNT(*) FROM tenants", params![], |r| r.get(0))?;
    if tenants > 0 {
        return Err(StoreError::Conflict(format!(
            "the target database already holds {tenants} tenant(s): migrate copies into an empty \
             database only. Create a new one (CREATE DATABASE …) and point --to at it, or, if \
             this one holds nothing you need, drop and re-create it"
        )));
    }
    for &table in TABLES.iter().chain(["audit_heads"].iter()) {
        let any: bool = pg.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {table})"),
            params![],
            |r| r.get(0),
        )?;
        if any {
            return Err(StoreError::Conflict(format!(
                "the target database is not empty (table `{table}` has rows): migrate copies into \
                 an empty database only. Create a new one (CREATE DATABASE …) and point --to at it"
            )));
        }
    }
    Ok(())
}

/// PostgreSQL's columns of `table`: (name, data type).
fn pg_columns(pg: &Conn, table: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = pg.prepare(
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position",
    )?;
    let cols = stmt
        .query_map(params![table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    Ok(cols)
}

fn sqlite_columns(src: &rusqlite::Connection, table: &str) -> Result<Vec<String>> {
    let mut stmt = src.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    Ok(stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Copies one table; returns its rows.
fn copy_table(
    src: &rusqlite::Connection,
    pg: &Conn,
    table: &str,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<u64> {
    let columns = sqlite_columns(src, table)?;
    let target = pg_columns(pg, table)?;
    let mismatch = |what: String| {
        StoreError::Invalid(format!(
            "table `{table}`: {what}; the two schemas differ (run the migration with the same \
             continuum version as the server that wrote the SQLite store)"
        ))
    };
    let mut types = Vec::with_capacity(columns.len());
    for c in &columns {
        match target.iter().find(|(n, _)| n == c) {
            Some((_, ty)) => types.push(ty.clone()),
            None => return Err(mismatch(format!("PostgreSQL has no column `{c}`"))),
        }
    }
    if let Some((extra, _)) = target
        .iter()
        .find(|(n, _)| !columns.contains(n) && !PG_ONLY_COLUMNS.contains(&(table, n.as_str())))
    {
        return Err(mismatch(format!("SQLite has no column `{extra}`")));
    }
    let total: i64 = src.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    progress(Progress::Table {
        table,
        rows: total as u64,
    });

    // The audit table: each record goes to chain 0 (the column's default)
    // with its seq as its position.
    let audit_seq = (table == "audit")
        .then(|| columns.iter().position(|c| c == "seq"))
        .flatten();
    let mut insert_columns = columns.join(", ");
    let mut overriding = "";
    if audit_seq.is_some() {
        insert_columns.push_str(", position");
        overriding = " OVERRIDING SYSTEM VALUE";
    }
    let width = columns.len() + usize::from(audit_seq.is_some());
    let batch = BATCH_ROWS.min(MAX_PARAMS / width).max(1);
    let insert = |rows: usize| {
        let mut sql = format!("INSERT INTO {table} ({insert_columns}){overriding} VALUES ");
        let mut n = 1;
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..width {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("?{n}"));
                n += 1;
            }
            sql.push(')');
        }
        sql
    };
    let full_batch = insert(batch);

    let mut stmt = src.prepare(&format!("SELECT {} FROM {table}", columns.join(", ")))?;
    let mut rows = stmt.query([])?;
    let mut values: Vec<Value> = Vec::with_capacity(batch * width);
    let mut pending = 0usize;
    let mut copied = 0u64;
    let flush = |values: &mut Vec<Value>, pending: &mut usize| -> Result<()> {
        if *pending == 0 {
            return Ok(());
        }
        let sql = if *pending == batch {
            full_batch.clone()
        } else {
            insert(*pending)
        };
        let mut stmt = if *pending == batch {
            pg.prepare_cached(&sql)?
        } else {
            pg.prepare(&sql)?
        };
        stmt.execute(&*values).map_err(|e| {
            StoreError::Database(format!(
                "copying table `{table}` into PostgreSQL: {e} (nothing was copied)"
            ))
        })?;
        values.clear();
        *pending = 0;
        Ok(())
    };
    while let Some(row) = rows.next()? {
        let start = values.len();
        for (i, ty) in types.iter().enumerate() {
            let v = coerce(Value::from(row.get_ref(i)?), ty).map_err(|why| {
                StoreError::Invalid(format!(
                    "table `{table}` column `{}`: {why}; the row cannot be copied as it is",
                    columns[i]
                ))
            })?;
            values.push(v);
        }
        if let Some(i) = audit_seq {
            let seq = values[start + i].clone();
            values.push(seq);
        }
        pending += 1;
        copied += 1;
        if pending == batch {
            flush(&mut values, &mut pending)?;
            progress(Progress::Copied {
                table,
                rows: copied,
            });
        }
    }
    flush(&mut values, &mut pending)?;
    progress(Progress::Copied {
        table,
        rows: copied,
    });
    Ok(copied)
}

/// A SQLite value in the form the PostgreSQL column takes. SQLite stores
/// what it was given whatever the declared type; the store always gives a
/// column's declared type, so this only matters for rows written by hand.
fn coerce(v: Value, pg_type: &str) -> std::result::Result<Value, String> {
    Ok(match (v, pg_type) {
        (Value::Blob(b), "text") => Value::Text(
            String::from_utf8(b).map_err(|_| "a blob that is not UTF-8 text in a text column")?,
        ),
        (Value::Text(s), "bigint") => Value::Integer(
            s.trim()
                .parse()
                .map_err(|_| format!("text `{s}` in an integer column"))?,
        ),
        (Value::Real(f), "bigint") if f.fract() == 0.0 => Value::Integer(f as i64),
        (v, _) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::TABLES;

    /// Every table the schema creates is copied, after the tables it
    /// references.
    #[test]
    fn tables_are_in_foreign_key_order() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let tables = super::sqlite_tables(&conn).unwrap();
        let mut listed: Vec<&str> = TABLES.to_vec();
        listed.sort();
        assert_eq!(tables, listed, "TABLES lists exactly the schema's tables");
        for (i, table) in TABLES.iter().enumerate() {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT \"table\" FROM pragma_foreign_key_list('{table}')"
                ))
                .unwrap();
            let parents: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            for parent in parents {
                let at = TABLES.iter().position(|t| *t == parent).unwrap();
                assert!(at < i, "{table} references {parent}, which is copied later");
            }
        }
    }

    #[test]
    fn values_take_the_target_columns_form() {
        use rusqlite::types::Value;
        assert_eq!(
            super::coerce(Value::Text("12".into()), "bigint").unwrap(),
            Value::Integer(12)
        );
        assert_eq!(
            super::coerce(Value::Blob(b"[]".to_vec()), "text").unwrap(),
            Value::Text("[]".into())
        );
        assert!(super::coerce(Value::Blob(vec![0xff]), "text").is_err());
        assert_eq!(
            super::coerce(Value::Blob(vec![1]), "bytea").unwrap(),
            Value::Blob(vec![1])
        );
    }
}
