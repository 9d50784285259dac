//! Conversations: one continuous episode with one patient, across channels.

use crate::audit::{AuditEntry, Outcome};
use crate::error::{Result, StoreError};
use crate::events::{append_row, publish};
use crate::time_fmt::Timestamp;
use crate::webhooks::enqueue;
use crate::{Event, Store, TenantKeys, now_micros};
use continuum_core::{Actor, Channel, ConversationState, EventKind, NewEvent, Transition};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    pub id: String,
    pub contact_id: String,
    pub state: ConversationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Highest event `seq` so far (events are numbered 1, 2, 3, … without gaps).
    pub last_seq: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    pub contact_id: String,
    /// Free text; sealed at rest like all PHI.
    pub subject: Option<String>,
    pub queue: Option<String>,
    /// Labels for routing and filtering. Stored in clear: never put PHI in tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub state: Option<ConversationState>,
    pub contact_id: Option<String>,
    pub assignee: Option<String>,
    pub updated_since: Option<Timestamp>,
    /// Restrict to these ids (tokens granted specific conversations).
    pub only: Option<Vec<String>>,
    pub cursor: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct SealedConversation {
    subject: Option<String>,
}

fn aad(id: &str) -> Vec<u8> {
    format!("conversation:{id}").into_bytes()
}

const COLUMNS: &str =
    "id, contact_id, state, queue, assignee, tags, data, last_seq, created_at, updated_at";

fn from_row(keys: &TenantKeys, r: &rusqlite::Row<'_>) -> Result<Conversation> {
    let id: String = r.get(0)?;
    let sealed: Vec<u8> = r.get(6)?;
    let data: SealedConversation = serde_json::from_slice(&keys.data.open(&sealed, &aad(&id))?)
        .map_err(|e| StoreError::Integrity(format!("conversation {id}: {e}")))?;
    let state: String = r.get(2)?;
    Ok(Conversation {
        contact_id: r.get(1)?,
        state: state.parse().map_err(StoreError::Integrity)?,
        queue: r.get(3)?,
        assignee: r.get(4)?,
        tags: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
        subject: data.subject,
        last_seq: r.get(7)?,
        created_at: Timestamp(r.get(8)?),
        updated_at: Timestamp(r.get(9)?),
        id,
    })
}

pub(crate) fn load(
    conn: &rusqlite::Connection,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<Conversation> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE id = ?1 AND tenant_id = ?2"
    ))?;
    let mut rows = stmt.query(params![id, tenant_id])?;
    match rows.next()? {
        Some(r) => from_row(keys, r),
        None => Err(StoreError::NotFound("conversation")),
    }
}

/// The conversation without its sealed fields (no decryption): what the
/// append path needs (state, `last_seq`), on the hot path.
pub(crate) fn load_head(
    conn: &rusqlite::Connection,
    tenant_id: &str,
    id: &str,
) -> Result<Conversation> {
    let mut stmt = conn.prepare_cached(
        "SELECT contact_id, state, queue, assignee, last_seq, created_at, updated_at FROM conversations WHERE id = ?1 AND tenant_id = ?2",
    )?;
    let mut rows = stmt.query(params![id, tenant_id])?;
    let Some(r) = rows.next()? else {
        return Err(StoreError::NotFound("conversation"));
    };
    let state: String = r.get(1)?;
    Ok(Conversation {
        id: id.to_owned(),
        contact_id: r.get(0)?,
        state: state.parse().map_err(StoreError::Integrity)?,
        queue: r.get(2)?,
        assignee: r.get(3)?,
        tags: Vec::new(),
        subject: None,
        last_seq: r.get(4)?,
        created_at: Timestamp(r.get(5)?),
        updated_at: Timestamp(r.get(6)?),
    })
}

fn validate_label(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(StoreError::Invalid(format!(
            "{what} `{s}` must be 1..=64 characters of letters, digits and - _ . : /"
        )));
    }
    Ok(())
}

/// What a state change needs beyond the transition itself.
#[derive(Debug, Clone, Default)]
pub struct TransitionParams {
    pub assignee: Option<String>,
    pub queue: Option<String>,
    pub reason: Option<String>,
}

/// Applies `t` inside a write and appends the event(s) recording it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_transition(
    ctx: &mut crate::WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    conv: &mut Conversation,
    t: Transition,
    params: &TransitionParams,
    actor: &Actor,
    audit_actor: &str,
) -> Result<Vec<Event>> {
    let next = conv.state.apply(t)?;
    let from = conv.state;
    if let Some(q) = &params.queue {
        validate_label("queue", q)?;
        conv.queue = Some(q.clone());
    }
    if t == Transition::Assign {
        let who = params
            .assignee
            .clone()
            .ok_or_else(|| StoreError::Invalid("assign needs an `assignee`".into()))?;
        if who.is_empty() || who.len() > 128 {
            return Err(StoreError::Invalid(
                "assignee must be 1..=128 characters".into(),
            ));
        }
        conv.assignee = Some(who);
    }
    if t == Transition::Reopen {
        conv.assignee = None;
    }
    conv.state = next;
    let now = now_micros();
    ctx.conn.execute(
        "UPDATE conversations SET state = ?3, queue = ?4, assignee = ?5, updated_at = ?6 WHERE id = ?1 AND tenant_id = ?2",
        params![conv.id, tenant_id, next.as_str(), conv.queue, conv.assignee, now],
    )?;
    conv.updated_at = Timestamp(now);
    let mut written = Vec::new();
    if from != next {
        let mut meta = serde_json::Map::new();
        meta.insert("from".into(), from.as_str().into());
        meta.insert("to".into(), next.as_str().into());
        if let Some(r) = &params.reason {
            meta.insert("reason".into(), r.clone().into());
        }
        let ev = NewEvent {
            channel: Channel::System,
            kind: EventKind::StateChanged,
            actor: actor.clone(),
            body: None,
            meta,
            idempotency_key: None,
        };
        written.push(append_row(ctx, keys, tenant_id, conv, &ev, audit_actor)?);
    }
    if t == Transition::Assign || (t == Transition::Enqueue && params.queue.is_some()) {
        let mut meta = serde_json::Map::new();
        if let Some(a) = &conv.assignee {
            meta.insert("assignee".into(), a.clone().into());
        }
        if let Some(q) = &conv.queue {
            meta.insert("queue".into(), q.clone().into());
        }
        let ev = NewEvent {
            channel: Channel::System,
            kind: EventKind::Assigned,
            actor: actor.clone(),
            body: None,
            meta,
            idempotency_key: None,
        };
        written.push(append_row(ctx, keys, tenant_id, conv, &ev, audit_actor)?);
    }
    enqueue(ctx.conn, keys, tenant_id, "conversation.updated", || {
        serde_json::to_value(&*conv).unwrap_or_default()
    })?;
    Ok(written)
}

impl Store {
    pub async fn create_conversation(
        &self,
        tenant_id: &str,
        new: NewConversation,
        actor: &str,
    ) -> Result<Conversation> {
        if let Some(q) = &new.queue {
            validate_label("queue", q)?;
        }
        if new.tags.len() > 32 {
            return Err(StoreError::Invalid("at most 32 tags".into()));
        }
        for t in &new.tags {
            validate_label("tag", t)?;
        }
        if new.subject.as_ref().is_some_and(|s| s.len() > 1000) {
            return Err(StoreError::Invalid(
                "subject must be at most 1000 bytes".into(),
            ));
        }
        let (tenant_id, actor, store) = (tenant_id.to_owned(), actor.to_owned(), self.clone());
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let contact_exists = ctx
                .conn
                .query_row(
                    "SELECT 1 FROM contacts WHERE id = ?1 AND tenant_id = ?2",
                    params![new.contact_id, tenant_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !contact_exists {
                return Err(StoreError::NotFound("contact"));
            }
            let id = uuid::Uuid::now_v7().to_string();
            let now = now_micros();
            let sealed = keys.data.seal(
                &serde_json::to_vec(&SealedConversation { subject: new.subject }).unwrap_or_default(),
                &aad(&id),
            );
            ctx.conn.execute(
                "INSERT INTO conversations (id, tenant_id, contact_id, state, queue, tags, data, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?6, ?7, ?7)",
                params![id, tenant_id, new.contact_id, new.queue, serde_json::to_string(&new.tags).unwrap_or_default(), sealed, now],
            )?;
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "conversation.create", format!("conversation/{id}"), Outcome::Ok))?;
            let conv = load(ctx.conn, &keys, &tenant_id, &id)?;
            enqueue(ctx.conn, &keys, &tenant_id, "conversation.created", || serde_json::to_value(&conv).unwrap_or_default())?;
            Ok(conv)
        })
        .await
    }

    /// Whether the contact is the patient of one of these conversations
    /// (`None`: of any conversation): what puts a contact within an access
    /// token's reach.
    pub async fn contact_in_conversations(
        &self,
        tenant_id: &str,
        contact_id: &str,
        conversations: Option<Vec<String>>,
    ) -> Result<bool> {
        let (t, c) = (tenant_id.to_owned(), contact_id.to_owned());
        let ids = conversations
            .map(|v| serde_json::to_string(&v).map_err(|e| StoreError::Invalid(e.to_string())))
            .transpose()?;
        self.read(move |conn| {
            let found: Option<i64> = conn
                .prepare_cached(
                    "SELECT 1 FROM conversations WHERE tenant_id = ?1 AND contact_id = ?2
                     AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3))) LIMIT 1",
                )?
                .query_row(params![t, c, ids], |r| r.get(0))
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    pub async fn get_conversation(&self, tenant_id: &str, id: &str) -> Result<Conversation> {
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            load(c, &keys, &t, &id)
        })
        .await
    }

    pub async fn list_conversations(
        &self,
        tenant_id: &str,
        f: ConversationFilter,
    ) -> Result<ConversationList> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        let (cursor_at, cursor_id) = match &f.cursor {
            None => (i64::MAX, String::new()),
            Some(c) => {
                let (at, id) = c
                    .split_once('.')
                    .and_then(|(a, i)| Some((a.parse::<i64>().ok()?, i.to_owned())))
                    .ok_or_else(|| {
                        StoreError::Invalid("cursor is not one this server returned".into())
                    })?;
                (at, id)
            }
        };
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            let mut sql = format!(
                "SELECT {COLUMNS} FROM conversations WHERE tenant_id = ?1 AND (updated_at < ?2 OR (updated_at = ?2 AND id < ?3))"
            );
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(t.clone()), Box::new(cursor_at), Box::new(cursor_id)];
            if let Some(s) = f.state {
                args.push(Box::new(s.as_str()));
                sql += &format!(" AND state = ?{}", args.len());
            }
            if let Some(ct) = f.contact_id {
                args.push(Box::new(ct));
                sql += &format!(" AND contact_id = ?{}", args.len());
            }
            if let Some(a) = f.assignee {
                args.push(Box::new(a));
                sql += &format!(" AND assignee = ?{}", args.len());
            }
            if let Some(since) = f.updated_since {
                args.push(Box::new(since.0));
                sql += &format!(" AND updated_at >= ?{}", args.len());
            }
            if let Some(only) = f.only {
                args.push(Box::new(serde_json::to_string(&only).unwrap_or_default()));
                sql += &format!(" AND id IN (SELECT value FROM json_each(?{}))", args.len());
            }
            args.push(Box::new(f.limit as i64 + 1));
            sql += &format!(" ORDER BY updated_at DESC, id DESC LIMIT ?{}", args.len());
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
            let mut conversations = Vec::new();
            while let Some(r) = rows.next()? {
                conversations.push(from_row(&keys, r)?);
            }
            let next_cursor = if conversations.len() > f.limit {
                conversations.truncate(f.limit);
                conversations.last().map(|c| format!("{}.{}", c.updated_at.0, c.id))
            } else {
                None
            };
            Ok(ConversationList { conversations, next_cursor })
        })
        .await
    }

    /// Queue, assign, close or reopen. Invalid transitions are refused with the reason.
    pub async fn transition(
        &self,
        tenant_id: &str,
        id: &str,
        t: Transition,
        params: TransitionParams,
        actor: Actor,
        audit_actor: &str,
    ) -> Result<(Conversation, Vec<Event>)> {
        let (tenant_id, id, audit_actor, store) = (
            tenant_id.to_owned(),
            id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        let notify = self.outbox_ready();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &tenant_id)?;
                let mut conv = load(ctx.conn, &keys, &tenant_id, &id)?;
                let written = apply_transition(
                    ctx,
                    &keys,
                    &tenant_id,
                    &mut conv,
                    t,
                    &params,
                    &actor,
                    &audit_actor,
                )?;
                Ok((conv, written))
            },
            move |(_, written): &(Conversation, Vec<Event>)| {
                publish(&live, written);
                notify.notify_one();
            },
        )
        .await
    }
}
