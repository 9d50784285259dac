//! The audit chain: one append-only, MAC-chained log per tenant. Each record's
//! MAC covers the previous record's MAC, so editing, deleting or reordering any
//! record breaks every link after it. The MAC key derives from the master key,
//! so someone with write access to the database alone cannot re-forge the chain.

use crate::error::{Result, StoreError};
use crate::now_micros;
use crate::writer::WriteCtx;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;

/// Tenant id under which denials that belong to no tenant (bad API keys) are chained.
pub const SERVER_CHAIN: &str = "-";

/// Last (seq, mac) per tenant, so appends don't re-read the chain head.
#[derive(Default)]
pub(crate) struct AuditHeads(HashMap<String, (i64, [u8; 32])>);

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
        let (prev_seq, prev_mac) = match self.audit_heads.0.get(tenant_id) {
            Some(head) => *head,
            None => self
                .conn
                .query_row(
                    "SELECT seq, mac FROM audit WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
                    [tenant_id],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )
                .optional()?
                .map(|(s, m)| (s, m.try_into().unwrap_or([0u8; 32])))
                .unwrap_or((0, [0u8; 32])),
        };
        let seq = prev_seq + 1;
        let at = now_micros();
        let detail = entry.detail.to_string();
        let mac = record_mac(
            self.audit_key,
            &prev_mac,
            tenant_id,
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
        self.audit_heads.0.insert(tenant_id.to_owned(), (seq, mac));
        metrics::counter!("continuum_audit_records_total", "outcome" => entry.outcome.as_str())
            .increment(1);
        Ok(seq)
    }
}

pub(crate) fn list(
    conn: &rusqlite::Connection,
    tenant_id: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, actor, action, object, outcome, detail, mac FROM audit
         WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
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
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
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

/// Walks one tenant's chain. Returns the records checked and the first problem.
pub(crate) fn verify_chain(
    conn: &rusqlite::Connection,
    key: &crate::crypto::SecretKey,
    tenant_id: &str,
    mut on_record: impl FnMut(&AuditRecordRaw) -> Option<String>,
) -> Result<(u64, Option<Problem>)> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, object, outcome, detail, prev, mac FROM audit
         WHERE tenant_id = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([tenant_id])?;
    let mut expected_seq = 1i64;
    let mut prev_mac = [0u8; 32].to_vec();
    let mut count = 0u64;
    let problem = |location: String, reason: String| Problem {
        tenant_id: tenant_id.to_owned(),
        location,
        reason,
    };
    while let Some(r) = rows.next()? {
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
        let loc = format!("audit record {}", raw.seq);
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
            tenant_id,
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

pub(crate) fn tenants_with_chains(conn: &rusqlite::Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT tenant_id FROM audit ORDER BY tenant_id")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(StoreError::from)
}
