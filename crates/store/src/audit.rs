//! The audit chain: one append-only, MAC-chained log per tenant. Each record's
//! MAC covers the previous record's MAC, so editing, deleting or reordering any
//! record breaks every link after it. The MAC key derives from the master key,
//! so someone with write access to the database alone cannot re-forge the chain.
//!
//! On SQLite a tenant has one chain: the single writer appends in commit
//! order. On PostgreSQL, nodes write concurrently, and one chain per tenant
//! would make every PHI write of a tenant wait for the previous one's commit
//! (a global bottleneck at one fsync per write). So a tenant has several
//! chains, numbered from 0: a transaction takes the first chain head nobody
//! holds (`FOR UPDATE SKIP LOCKED` on `audit_heads`), appends to it, and
//! keeps it until it commits; when every head is held it opens a new chain.
//! The number of chains follows the peak of concurrent writers, each chain is
//! gap-free and verifiable on its own, and chain 0 is exactly SQLite's chain,
//! so `continuum migrate` copies a single-node chain as it is. A record's MAC
//! covers its chain's name (the tenant id, and `#N` for chain N > 0), so
//! records cannot move between chains.

use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::now_micros;
use crate::writer::WriteCtx;
use serde::Serialize;
use std::collections::HashMap;

/// Tenant id under which denials that belong to no tenant (bad API keys) are chained.
pub const SERVER_CHAIN: &str = "-";

/// Last (chain, seq, mac) per tenant, so appends don't re-read the chain
/// head (on PostgreSQL: the head this transaction holds).
#[derive(Default)]
pub(crate) struct AuditHeads(HashMap<String, (i64, i64, [u8; 32])>);

/// The name a chain's MACs cover.
fn chain_name(tenant_id: &str, chain: i64) -> std::borrow::Cow<'_, str> {
    if chain == 0 {
        tenant_id.into()
    } else {
        format!("{tenant_id}#{chain}").into()
    }
}

/// How many new chains one append may try to open before giving up (each
/// try loses only to another node opening the same number at that moment).
const NEW_CHAIN_TRIES: usize = 8;

impl AuditHeads {
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    NotFound,
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not_found",
            Outcome::Invalid => "invalid",
        }
    }
}

/// One thing to record. `detail` must never carry PHI (ids and digests only).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub object: String,
    pub outcome: Outcome,
    pub detail: serde_json::Value,
}

impl AuditEntry {
    pub fn new(
        actor: impl Into<String>,
        action: &str,
        object: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        AuditEntry {
            actor: actor.into(),
            action: action.to_owned(),
            object: object.into(),
            outcome,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: crate::Timestamp,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub outcome: String,
    pub detail: serde_json::Value,
    pub mac: String,
    /// Which of the tenant's chains (always 0 on SQLite).
    pub chain: i64,
    /// Paging cursor across chains (`after`): `seq` on SQLite.
    pub position: i64,
}

fn record_mac(
    key: &crate::crypto::SecretKey,
    prev: &[u8],
    tenant_id: &str,
    seq: i64,
    at: i64,
    e: (&str, &str, &str, &str, &str),
) -> [u8; 32] {
    key.mac(&[
        prev,
        tenant_id.as_bytes(),
        &seq.to_be_bytes(),
        &at.to_be_bytes(),
        e.0.as_bytes(),
        e.1.as_bytes(),
        e.2.as_bytes(),
        e.3.as_bytes(),
        e.4.as_bytes(),
    ])
}

impl WriteCtx<'_> {
    /// Appends to `tenant_id`'s chain inside the current write.
    pub fn audit(&mut self, tenant_id: &str, entry: &AuditEntry) -> Result<i64> {
        let (chain, prev_seq, prev_mac) = match self.audit_heads.0.get(tenant_id) {
            Some(head) => *head,
            None if self.conn.is_pg() => take_head(self.conn, tenant_id)?,
            None => self
                .conn
                .query_row(
                    "SELECT seq, mac FROM audit WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
                    [tenant_id],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )
                .optional()?
                .map(|(s, m)| (0, s, m.try_into().unwrap_or([0u8; 32])))
                .unwrap_or((0, 0, [0u8; 32])),
        };
        let seq = prev_seq + 1;
        let at = now_micros();
        let detail = entry.detail.to_string();
        let mac = record_mac(
            self.audit_key,
            &prev_mac,
            &chain_name(tenant_id, chain),
            seq,
            at,
            (
                &entry.actor,
                &entry.action,
                &entry.object,
                entry.outcome.as_str(),
                &detail,
            ),
        );
        if self.conn.is_pg() {
            self.conn
                .prepare_cached(
                    "INSERT INTO audit (tenant_id, chain, seq, at, actor, action, object, outcome, detail, prev, mac)
                     VALUES (?1, ?11, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    tenant_id,
                    seq,
                    at,
                    entry.actor,
                    entry.action,
                    entry.object,
                    entry.outcome.as_str(),
                    detail,
                    &prev_mac[..],
                    &mac[..],
                    chain
                ])?;
            self.conn
                .prepare_cached(
                    "UPDATE audit_heads SET seq = ?3, mac = ?4 WHERE tenant_id = ?1 AND chain = ?2",
                )?
                .execute(params![tenant_id, chain, seq, &mac[..]])?;
        } else {
            self.conn
                .prepare_cached(
                    "INSERT INTO audit (tenant_id, seq, at, actor, action, object, outcome, detail, prev, mac)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    tenant_id,
                    seq,
                    at,
                    entry.actor,
                    entry.action,
                    entry.object,
                    entry.outcome.as_str(),
                    detail,
                    &prev_mac[..],
                    &mac[..]
                ])?;
        }
        self.audit_heads
            .0
            .insert(tenant_id.to_owned(), (chain, seq, mac));
        metrics::counter!("continuum_audit_records_total", "outcome" => entry.outcome.as_str())
            .increment(1);
        Ok(seq)
    }
}

/// PostgreSQL: the first chain head of a tenant no other transaction
/// holds, locked until commit (none when all are held: see [`take_head`]).
pub(crate) const FREE_HEAD_SQL: &str =
    "SELECT chain, seq, mac FROM audit_heads WHERE tenant_id = $1
     ORDER BY chain LIMIT 1 FOR UPDATE SKIP LOCKED";

/// A chain head as [`FREE_HEAD_SQL`] returns it.
pub(crate) fn head_from_row(r: &crate::db::Row<'_>) -> crate::db::Result<(i64, i64, [u8; 32])> {
    let mac: Vec<u8> = r.get(2)?;
    Ok((r.get(0)?, r.get(1)?, mac.try_into().unwrap_or([0u8; 32])))
}

/// Records chained after a head, as the columns of one multi-row insert
/// (PostgreSQL), and the head they leave.
pub(crate) struct ChainedRecords<'e> {
    tenant_id: &'e str,
    chain: i64,
    seqs: Vec<i64>,
    ats: Vec<i64>,
    actors: Vec<&'e str>,
    actions: Vec<&'e str>,
    objects: Vec<&'e str>,
    outcomes: Vec<&'static str>,
    details: Vec<String>,
    prevs: Vec<Vec<u8>>,
    macs: Vec<Vec<u8>>,
    /// (chain, seq, mac) after the last record.
    pub head: (i64, i64, [u8; 32]),
}

impl<'e> ChainedRecords<'e> {
    pub fn new(
        key: &crate::crypto::SecretKey,
        tenant_id: &'e str,
        head: (i64, i64, [u8; 32]),
        entries: &'e [AuditEntry],
    ) -> Self {
        let (chain, mut seq, mut mac) = head;
        let name = chain_name(tenant_id, chain);
        let n = entries.len();
        let mut c = ChainedRecords {
            tenant_id,
            chain,
            seqs: Vec::with_capacity(n),
            ats: Vec::with_capacity(n),
            actors: entries.iter().map(|e| e.actor.as_str()).collect(),
            actions: entries.iter().map(|e| e.action.as_str()).collect(),
            objects: entries.iter().map(|e| e.object.as_str()).collect(),
            outcomes: entries.iter().map(|e| e.outcome.as_str()).collect(),
            details: Vec::with_capacity(n),
            prevs: Vec::with_capacity(n),
            macs: Vec::with_capacity(n),
            head,
        };
        for e in entries {
            seq += 1;
            let at = now_micros();
            let detail = e.detail.to_string();
            let next = record_mac(
                key,
                &mac,
                &name,
                seq,
                at,
                (&e.actor, &e.action, &e.object, e.outcome.as_str(), &detail),
            );
            c.prevs.push(mac.to_vec());
            c.macs.push(next.to_vec());
            mac = next;
            c.seqs.push(seq);
            c.ats.push(at);
            c.details.push(detail);
            metrics::counter!("continuum_audit_records_total", "outcome" => e.outcome.as_str())
                .increment(1);
        }
        c.head = (chain, seq, mac);
        c
    }

    /// The insert of the records, then the move of the head (for a
    /// pipeline).
    #[allow(clippy::type_complexity)]
    pub fn statements(
        &self,
    ) -> [(
        &'static str,
        Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
    ); 2] {
        [
            (
                "INSERT INTO audit (tenant_id, chain, seq, at, actor, action, object, outcome, detail, prev, mac)
                 SELECT $1, $2, s, a, ac, act, o, oc, d, p, m
                 FROM unnest($3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::bytea[])
                      AS r(s, a, ac, act, o, oc, d, p, m)",
                vec![
                    &self.tenant_id,
                    &self.chain,
                    &self.seqs,
                    &self.ats,
                    &self.actors,
                    &self.actions,
                    &self.objects,
                    &self.outcomes,
                    &self.details,
                    &self.prevs,
                    &self.macs,
                ],
            ),
            (
                "UPDATE audit_heads SET seq = $3, mac = $4 WHERE tenant_id = $1 AND chain = $2",
                vec![&self.tenant_id, &self.chain, &self.head.1, &self.macs[self.macs.len() - 1]],
            ),
        ]
    }
}

/// PostgreSQL: takes (locks until commit) a chain head of the tenant that no
/// other transaction holds, opening a new chain when all are held.
pub(crate) fn take_head(conn: &crate::db::Conn, tenant_id: &str) -> Result<(i64, i64, [u8; 32])> {
    for _ in 0..NEW_CHAIN_TRIES {
        let free = conn
            .query_row(FREE_HEAD_SQL, [tenant_id], head_from_row)
            .optional()?;
        if let Some(head) = free {
            return Ok(head);
        }
        // Every chain is held (or there is none yet): open the next one.
        // Only a transaction holding a chain number's advisory lock inserts
        // that number, so this insert never waits for another transaction's
        // uncommitted one: that wait, while the other transaction waited for
        // a row this one had locked (a conversation), was a deadlock. A
        // number another transaction is opening right now is passed over.
        let next: i64 = conn.query_row(
            "SELECT COALESCE(MAX(chain) + 1, 0) FROM audit_heads WHERE tenant_id = ?1",
            [tenant_id],
            |r| r.get(0),
        )?;
        for chain in next..next + NEW_CHAIN_TRIES as i64 {
            let mine: bool = conn.query_row(
                "SELECT pg_try_advisory_xact_lock(?1, ?2)",
                params![chain_lock_key(tenant_id), chain],
                |r| r.get(0),
            )?;
            if !mine {
                continue;
            }
            let opened = conn
                .query_row(
                    "INSERT INTO audit_heads (tenant_id, chain, seq, mac) VALUES (?1, ?2, 0, ?3)
                     ON CONFLICT DO NOTHING RETURNING chain",
                    params![tenant_id, chain, &[0u8; 32][..]],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            if let Some(chain) = opened {
                return Ok((chain, 0, [0u8; 32]));
            }
            // Opened and committed by another transaction since the MAX
            // above: its head may be free now; look again.
            break;
        }
    }
    Err(StoreError::Unavailable(format!(
        "could not take an audit chain head for tenant {tenant_id} (too many writers opening chains at once); retry"
    )))
}

/// The first key of the advisory locks that guard the opening of a
/// tenant's chains (the second is the chain number). A collision between
/// tenants only makes an opener pass a number over.
fn chain_lock_key(tenant_id: &str) -> i32 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(tenant_id.as_bytes());
    i32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

pub(crate) fn list(
    conn: &crate::db::Conn,
    tenant_id: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(if conn.is_pg() {
        "SELECT seq, at, actor, action, object, outcome, detail, mac, chain, position FROM audit
         WHERE tenant_id = ?1 AND position > ?2 ORDER BY position LIMIT ?3"
    } else {
        "SELECT seq, at, actor, action, object, outcome, detail, mac, 0, seq FROM audit
         WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    })?;
    let rows = stmt.query_map(params![tenant_id, after, limit as i64], |r| {
        Ok(AuditRecord {
            seq: r.get(0)?,
            at: crate::Timestamp(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            object: r.get(4)?,
            outcome: r.get(5)?,
            detail: serde_json::from_str(&r.get::<_, String>(6)?)
                .unwrap_or(serde_json::Value::Null),
            mac: hex::encode(r.get::<_, Vec<u8>>(7)?),
            chain: r.get(8)?,
            position: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<crate::db::Result<_>>()?)
}

/// What `continuum audit verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub chains_checked: usize,
    pub audit_records: u64,
    pub events_checked: u64,
    /// The first broken link of each chain that has one.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub tenant_id: String,
    pub location: String,
    pub reason: String,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Walks one of a tenant's chains. Returns the records checked and the first
/// problem.
pub(crate) fn verify_chain(
    conn: &crate::db::Conn,
    key: &crate::crypto::SecretKey,
    tenant_id: &str,
    chain: i64,
    mut on_record: impl FnMut(&AuditRecordRaw) -> Option<String>,
) -> Result<(u64, Option<Problem>)> {
    let mut stmt = conn.prepare(if conn.is_pg() {
        "SELECT seq, at, actor, action, object, outcome, detail, prev, mac FROM audit
         WHERE tenant_id = ?1 AND chain = ?2 ORDER BY seq"
    } else {
        "SELECT seq, at, actor, action, object, outcome, detail, prev, mac FROM audit
         WHERE tenant_id = ?1 AND 0 = ?2 ORDER BY seq"
    })?;
    let mut rows = stmt.query(params![tenant_id, chain])?;
    let name = chain_name(tenant_id, chain);
    let mut expected_seq = 1i64;
    let mut prev_mac = [0u8; 32].to_vec();
    let mut count = 0u64;
    let problem = |location: String, reason: String| Problem {
        tenant_id: tenant_id.to_owned(),
        location,
        reason,
    };
    while let Some(ref r) = rows.next()? {
        let raw = AuditRecordRaw {
            seq: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            object: r.get(4)?,
            outcome: r.get(5)?,
            detail: r.get(6)?,
            prev: r.get(7)?,
            mac: r.get(8)?,
        };
        count += 1;
        let loc = if chain == 0 {
            format!("audit record {}", raw.seq)
        } else {
            format!("audit chain {chain} record {}", raw.seq)
        };
        if raw.seq != expected_seq {
            return Ok((
                count,
                Some(problem(
                    loc,
                    format!(
                        "expected record {expected_seq} next: a record was deleted or renumbered"
                    ),
                )),
            ));
        }
        if raw.prev != prev_mac {
            return Ok((count, Some(problem(loc, "its link to the previous record does not match: the previous record was altered or removed".into()))));
        }
        let mac = record_mac(
            key,
            &raw.prev,
            &name,
            raw.seq,
            raw.at,
            (
                &raw.actor,
                &raw.action,
                &raw.object,
                &raw.outcome,
                &raw.detail,
            ),
        );
        if raw.mac != mac {
            return Ok((
                count,
                Some(problem(
                    loc,
                    "its content does not match its MAC: the record was altered".into(),
                )),
            ));
        }
        if let Some(reason) = on_record(&raw) {
            return Ok((count, Some(problem(raw.object.clone(), reason))));
        }
        prev_mac = raw.mac;
        expected_seq += 1;
    }
    Ok((count, None))
}

pub(crate) struct AuditRecordRaw {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub outcome: String,
    pub detail: String,
    pub prev: Vec<u8>,
    pub mac: Vec<u8>,
}

/// Every (tenant, chain) with records, tenants in order.
pub(crate) fn chains(conn: &crate::db::Conn) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(if conn.is_pg() {
        "SELECT DISTINCT tenant_id, chain FROM audit ORDER BY tenant_id, chain"
    } else {
        "SELECT DISTINCT tenant_id, 0 FROM audit ORDER BY tenant_id"
    })?;
    let rows = stmt.query_map(params![], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    rows.collect::<crate::db::Result<_>>()
        .map_err(StoreError::from)
}
