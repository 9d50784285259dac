//! Chat on a conversation: the chat view of the timeline (its `message`
//! events on the channels a chat shows) and receipts, how far each person
//! has had the conversation delivered to a device and read.
//!
//! Messages are ordinary timeline events (sealed, audited, appended through
//! [`Store::append_event`]). Receipts are not: one event per message per
//! reader would flood the timeline. They live in `chat_receipts`, one row
//! per (conversation, identity), and only ever move forward. All SQL on that
//! table is in this file (a PostgreSQL port replaces this one file).

use crate::audit::{AuditEntry, Outcome};
use crate::conversations;
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::events::{EVENT_COLUMNS, Event, event_from_row};
use crate::time_fmt::Timestamp;
use crate::{Store, now_micros};
use continuum_core::{Channel, Role};
use serde::Serialize;

/// How far one person has got in a conversation: every event up to
/// `delivered_seq` reached one of their devices, up to `read_seq` they have
/// seen. Reading implies delivery (`delivered_seq >= read_seq` always).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatReceipt {
    pub identity: String,
    pub role: Role,
    /// Timeline `seq`: everything up to here was delivered to this person.
    pub delivered_seq: i64,
    /// Timeline `seq`: everything up to here was read by this person.
    pub read_seq: i64,
    pub updated_at: Timestamp,
}

/// The outcome of [`Store::mark_chat_receipt`].
#[derive(Debug, Clone)]
pub struct ReceiptUpdate {
    /// The markers now (after the update).
    pub receipt: ChatReceipt,
    /// Whether either marker moved (a stale or repeated receipt changes nothing).
    pub changed: bool,
}

/// `SQL IN` list of channel names (they are fixed identifiers, never input).
fn channel_list(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(|c| format!("'{}'", c.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn receipt_from_row(r: &crate::db::Row<'_>) -> crate::db::Result<ChatReceipt> {
    let role: String = r.get(1)?;
    Ok(ChatReceipt {
        identity: r.get(0)?,
        role: role.parse().unwrap_or(Role::Patient),
        delivered_seq: r.get(2)?,
        read_seq: r.get(3)?,
        updated_at: Timestamp(r.get(4)?),
    })
}

const RECEIPT_COLUMNS: &str = "identity, role, delivered_seq, read_seq, updated_at";

fn check_seq(field: &str, seq: Option<i64>, last_seq: i64) -> Result<()> {
    match seq {
        Some(n) if n < 0 => Err(StoreError::Invalid(format!(
            "{field} must be 0 or more (a timeline seq)"
        ))),
        Some(n) if n > last_seq => Err(StoreError::Invalid(format!(
            "{field} {n} is past the conversation's last event (seq {last_seq})"
        ))),
        _ => Ok(()),
    }
}

impl Store {
    /// Starts following a conversation's chat: checks the conversation is
    /// the tenant's, records the opening in the audit chain (what follows is
    /// PHI read live, like a timeline stream) and returns its last `seq`.
    pub async fn open_chat(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        audit_actor: &str,
    ) -> Result<i64> {
        let entry = AuditEntry::new(
            audit_actor,
            "chat.open",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        );
        let (t, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.read_audited(tenant_id, entry, move |c| {
            Ok(conversations::load_head(c, &t, &id)?.last_seq)
        })
        .await
    }

    /// The conversation's chat messages (`message` events on `channels`)
    /// before `before` (all, when `None`): the newest `limit` of them,
    /// oldest first. Audited as a PHI read.
    pub async fn chat_history(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        channels: &[Channel],
        before: Option<i64>,
        limit: usize,
        audit_actor: &str,
    ) -> Result<Vec<Event>> {
        let entry = AuditEntry::new(
            audit_actor,
            "chat.read",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        )
        .with_detail(serde_json::json!({ "before": before, "limit": limit }));
        let (t, id, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 AND seq < ?2 AND kind = 'message'
             AND channel IN ({}) ORDER BY seq DESC LIMIT ?3",
            channel_list(channels)
        );
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            conversations::load_head(c, &t, &id)?;
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![id, before.unwrap_or(i64::MAX), limit as i64])?;
            let mut out = Vec::with_capacity(limit.min(256));
            while let Some(ref r) = rows.next()? {
                out.push(event_from_row(&keys, &t, r)?);
            }
            out.reverse();
            Ok(out)
        })
        .await
    }

    /// Moves `identity`'s markers in a conversation forward to `delivered`
    /// and `read` (timeline `seq`s; either may be absent). Markers never
    /// move back: an older value changes nothing. Reading implies delivery.
    /// A `seq` past the conversation's last event is refused.
    pub async fn mark_chat_receipt(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        identity: &str,
        role: Role,
        delivered: Option<i64>,
        read: Option<i64>,
    ) -> Result<ReceiptUpdate> {
        let (t, id, who) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            identity.to_owned(),
        );
        self.write(move |ctx| {
            let head = conversations::load_head(ctx.conn, &t, &id)?;
            check_seq("delivered_seq", delivered, head.last_seq)?;
            check_seq("read_seq", read, head.last_seq)?;
            let before = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT {RECEIPT_COLUMNS} FROM chat_receipts WHERE conversation_id = ?1 AND identity = ?2"
                ))?
                .query_row(params![id, who], receipt_from_row)
                .optional()?;
            let (old_delivered, old_read) = before
                .as_ref()
                .map_or((0, 0), |r| (r.delivered_seq, r.read_seq));
            let read_seq = old_read.max(read.unwrap_or(0));
            let delivered_seq = old_delivered.max(delivered.unwrap_or(0)).max(read_seq);
            if let Some(r) = before
                && r.delivered_seq == delivered_seq
                && r.read_seq == read_seq
                && r.role == role
            {
                return Ok(ReceiptUpdate {
                    receipt: r,
                    changed: false,
                });
            }
            let now = now_micros();
            ctx.conn
                .prepare_cached(
                    "INSERT INTO chat_receipts (conversation_id, identity, tenant_id, role, delivered_seq, read_seq, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (conversation_id, identity) DO UPDATE SET
                        role = excluded.role, delivered_seq = excluded.delivered_seq,
                        read_seq = excluded.read_seq, updated_at = excluded.updated_at",
                )?
                .execute(params![id, who, t, role.as_str(), delivered_seq, read_seq, now])?;
            Ok(ReceiptUpdate {
                receipt: ChatReceipt {
                    identity: who,
                    role,
                    delivered_seq,
                    read_seq,
                    updated_at: Timestamp(now),
                },
                changed: true,
            })
        })
        .await
    }

    /// Every person's markers in a conversation, by identity.
    pub async fn chat_receipts(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<ChatReceipt>> {
        let (t, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.read(move |c| {
            conversations::load_head(c, &t, &id)?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECEIPT_COLUMNS} FROM chat_receipts WHERE conversation_id = ?1 AND tenant_id = ?2 ORDER BY identity"
            ))?;
            let rows = stmt.query_map(params![id, t], receipt_from_row)?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }
}
