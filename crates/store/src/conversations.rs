//! Conversations: one continuous episode with one patient, across channels.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::events::{append_row, publish};
use crate::time_fmt::Timestamp;
use crate::webhooks::enqueue;
use crate::{Event, Store, TenantKeys, now_micros};
use continuum_core::{Actor, Channel, ConversationState, EventKind, NewEvent, Transition};
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
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub subject: Option<String>,
    /// A queue code (sealed at rest).
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._:/-]{1,64}$"))]
    pub queue: Option<String>,
    /// Labels for routing (at most 32). Sealed at rest like the subject.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(max_items = 32, inline, value_type = Vec<String>, pattern = r"^[A-Za-z0-9._:/-]{1,64}$")
    )]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub state: Option<ConversationState>,
    pub contact_id: Option<String>,
    pub assignee: Option<String>,
    /// Only those in this queue.
    pub queue: Option<String>,
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

/// What `data` seals. Queue, assignee and tags joined the subject in
/// migration 4 (clear columns before): blobs sealed earlier lack them.
#[derive(Serialize, Deserialize, Default)]
struct SealedConversation {
    subject: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    assignee: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

fn aad(id: &str) -> Vec<u8> {
    format!("conversation:{id}").into_bytes()
}

fn seal(keys: &TenantKeys, id: &str, data: &SealedConversation) -> Vec<u8> {
    keys.data
        .seal(&serde_json::to_vec(data).unwrap_or_default(), &aad(id))
}

fn unseal(keys: &TenantKeys, id: &str, sealed: &[u8]) -> Result<SealedConversation> {
    serde_json::from_slice(&keys.data.open(sealed, &aad(id))?)
        .map_err(|e| StoreError::Integrity(format!("conversation {id}: {e}")))
}

/// Blind-index kinds: `assignee_idx` and `queue_idx` hold the HMAC of the value
/// under the tenant's lookup key, so filtering by them is an index lookup while
/// the values themselves stay sealed.
const ASSIGNEE_INDEX: &str = "conversation.assignee";
const QUEUE_INDEX: &str = "conversation.queue";

fn blind(keys: &TenantKeys, kind: &str, value: Option<&str>) -> Option<Vec<u8>> {
    value.map(|v| keys.blind_index(kind, v))
}

// The clear `queue`, `assignee` and `tags` columns of migration 1 are never
// read and always NULL / NULL / '[]' (see migration 4 and `seal_clear_labels`):
// the values live in `data`, sealed.
const COLUMNS: &str = "id, contact_id, state, data, last_seq, created_at, updated_at";

fn from_row(keys: &TenantKeys, r: &crate::db::Row<'_>) -> Result<Conversation> {
    let id: String = r.get(0)?;
    let sealed: Vec<u8> = r.get(3)?;
    let data = unseal(keys, &id, &sealed)?;
    let state: String = r.get(2)?;
    Ok(Conversation {
        contact_id: r.get(1)?,
        state: state.parse().map_err(StoreError::Integrity)?,
        queue: data.queue,
        assignee: data.assignee,
        tags: data.tags,
        subject: data.subject,
        last_seq: r.get(4)?,
        created_at: Timestamp(r.get(5)?),
        updated_at: Timestamp(r.get(6)?),
        id,
    })
}

pub(crate) fn load(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<Conversation> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE id = ?1 AND tenant_id = ?2{}",
        conn.row_lock()
    ))?;
    let mut rows = stmt.query(params![id, tenant_id])?;
    match rows.next()? {
        Some(ref r) => from_row(keys, r),
        None => Err(StoreError::NotFound("conversation")),
    }
}

/// PostgreSQL: locks the conversations of a batch of appends, given as
/// (id, tenant) pairs in two arrays (another tenant's conversation is
/// neither locked nor read), in id order (so two batches never wait on each
/// other in a cycle), with what the batch needs of each.
pub(crate) const LOCK_MANY_SQL: &str = "SELECT id, tenant_id, state, last_seq FROM conversations
     WHERE id = ANY($1) AND (id, tenant_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
     ORDER BY id FOR UPDATE";

/// PostgreSQL: moves the `last_seq` and `updated_at` of several
/// conversations at once (arrays of ids, seqs, times).
pub(crate) const ADVANCE_MANY_SQL: &str =
    "UPDATE conversations AS c SET last_seq = v.seq, updated_at = v.at
     FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(id, seq, at) WHERE c.id = v.id";

/// The conversation without its sealed fields (no decryption): what the
/// append path needs (state, `last_seq`), on the hot path. `subject`, `queue`,
/// `assignee` and `tags` are sealed and left empty here: its callers
/// (`append_event`, `append_events_bulk`) only number and insert events, and
/// load the conversation in full before a transition (the reopen of a closed
/// conversation). Never return or serialize what this gives.
pub(crate) fn load_head(conn: &crate::db::Conn, tenant_id: &str, id: &str) -> Result<Conversation> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT contact_id, state, last_seq, created_at, updated_at FROM conversations WHERE id = ?1 AND tenant_id = ?2{}",
        conn.row_lock()
    ))?;
    let mut rows = stmt.query(params![id, tenant_id])?;
    let Some(r) = rows.next()? else {
        return Err(StoreError::NotFound("conversation"));
    };
    let state: String = r.get(1)?;
    Ok(Conversation {
        id: id.to_owned(),
        contact_id: r.get(0)?,
        state: state.parse().map_err(StoreError::Integrity)?,
        queue: None,
        assignee: None,
        tags: Vec::new(),
        subject: None,
        last_seq: r.get(2)?,
        created_at: Timestamp(r.get(3)?),
        updated_at: Timestamp(r.get(4)?),
    })
}

/// The elements of the JSON array of strings bound to `?n`, as a subquery.
fn json_text_elements(conn: &crate::db::Conn, n: usize) -> String {
    if conn.is_pg() {
        format!("SELECT jsonb_array_elements_text(CAST(CAST(?{n} AS TEXT) AS jsonb))")
    } else {
        format!("SELECT value FROM json_each(?{n})")
    }
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

/// Applies `t` inside a write and appends the event(s) recording it. The
/// sealed fields are re-read from the row and re-sealed with the new queue and
/// assignee, so `conv` needs only its head (state, `last_seq`); they are copied
/// into `conv` as stored.
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
    let stored: Vec<u8> = ctx
        .conn
        .prepare_cached("SELECT data FROM conversations WHERE id = ?1 AND tenant_id = ?2")?
        .query_row(params![conv.id, tenant_id], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound("conversation"))?;
    let mut data = unseal(keys, &conv.id, &stored)?;
    if let Some(q) = &params.queue {
        validate_label("queue", q)?;
        data.queue = Some(q.clone());
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
        data.assignee = Some(who);
    }
    if t == Transition::Reopen {
        data.assignee = None;
    }
    conv.state = next;
    let now = now_micros();
    ctx.conn.execute(
        "UPDATE conversations SET state = ?3, data = ?4, queue_idx = ?5, assignee_idx = ?6, updated_at = ?7 WHERE id = ?1 AND tenant_id = ?2",
        params![
            conv.id,
            tenant_id,
            next.as_str(),
            seal(keys, &conv.id, &data),
            blind(keys, QUEUE_INDEX, data.queue.as_deref()),
            blind(keys, ASSIGNEE_INDEX, data.assignee.as_deref()),
            now
        ],
    )?;
    conv.queue = data.queue;
    conv.assignee = data.assignee;
    conv.tags = data.tags;
    conv.subject = data.subject;
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
            let queue_idx = blind(&keys, QUEUE_INDEX, new.queue.as_deref());
            let data = SealedConversation { subject: new.subject, queue: new.queue, assignee: None, tags: new.tags };
            ctx.conn.execute(
                "INSERT INTO conversations (id, tenant_id, contact_id, state, data, queue_idx, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?6, ?6)",
                params![id, tenant_id, new.contact_id, seal(&keys, &id, &data), queue_idx, now],
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
                .prepare_cached(&format!(
                    "SELECT 1 FROM conversations WHERE tenant_id = ?1 AND contact_id = ?2
                     AND (CAST(?3 AS TEXT) IS NULL OR id IN ({})) LIMIT 1",
                    json_text_elements(conn, 3)
                ))?
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
            // A contact's conversations (how every inbound message and call
            // finds its conversation) through the contact index: without
            // statistics SQLite picked `conversations_recent` and scanned
            // every conversation of the tenant, per lookup.
            // (PostgreSQL keeps statistics, and has no such hint.)
            let index = if f.contact_id.is_some() && !c.is_pg() { " INDEXED BY conversations_contact" } else { "" };
            let mut sql = format!(
                "SELECT {COLUMNS} FROM conversations{index} WHERE tenant_id = ?1 AND (updated_at < ?2 OR (updated_at = ?2 AND id < ?3))"
            );
            let mut args: Vec<Box<dyn crate::db::ToValue>> = vec![Box::new(t.clone()), Box::new(cursor_at), Box::new(cursor_id)];
            if let Some(s) = f.state {
                args.push(Box::new(s.as_str()));
                sql += &format!(" AND state = ?{}", args.len());
            }
            if let Some(ct) = f.contact_id {
                args.push(Box::new(ct));
                sql += &format!(" AND contact_id = ?{}", args.len());
            }
            if let Some(a) = f.assignee {
                args.push(Box::new(keys.blind_index(ASSIGNEE_INDEX, &a)));
                sql += &format!(" AND assignee_idx = ?{}", args.len());
            }
            if let Some(q) = f.queue {
                args.push(Box::new(keys.blind_index(QUEUE_INDEX, &q)));
                sql += &format!(" AND queue_idx = ?{}", args.len());
            }
            if let Some(since) = f.updated_since {
                args.push(Box::new(since.0));
                sql += &format!(" AND updated_at >= ?{}", args.len());
            }
            if let Some(only) = f.only {
                args.push(Box::new(serde_json::to_string(&only).unwrap_or_default()));
                sql += &format!(" AND id IN ({})", json_text_elements(c, args.len()));
            }
            args.push(Box::new(f.limit as i64 + 1));
            sql += &format!(" ORDER BY updated_at DESC, id DESC LIMIT ?{}", args.len());
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(&args)?;
            let mut conversations = Vec::new();
            while let Some(ref r) = rows.next()? {
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

/// Rows still holding a clear label (written before migration 4, or by an
/// older binary since).
const CLEAR_LABELS: &str =
    "FROM conversations WHERE queue IS NOT NULL OR assignee IS NOT NULL OR tags != '[]'";

/// Moves clear `queue`, `assignee` and `tags` into the sealed `data`, fills the
/// blind indexes and empties the clear columns (NULL, NULL, '[]'), in one
/// transaction with one audit record per tenant. Run by `Store::open` right
/// after the migrations (SQL alone cannot seal); finding nothing to do is one
/// probe of a partial index, so running it again changes nothing. A clear
/// value wins over the sealed one: it was written last. Returns the number of
/// conversations re-sealed.
pub(crate) fn seal_clear_labels(
    conn: &crate::db::Conn,
    master: &crate::SecretKey,
    audit_key: &crate::SecretKey,
) -> Result<usize> {
    let pending: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 {CLEAR_LABELS})"),
        params![],
        |r| r.get(0),
    )?;
    if !pending {
        return Ok(0);
    }
    let Some(sqlite) = conn.as_sqlite() else {
        // Clear labels predate the PostgreSQL backend: only SQLite has them.
        return Ok(0);
    };
    // Overwrite the clear values with zeros in the pages they leave, rather
    // than leave them readable in free space.
    let secure_delete: i64 = sqlite.pragma_query_value(None, "secure_delete", |r| r.get(0))?;
    sqlite.pragma_update(None, "secure_delete", 1)?;
    let sealed = reseal_rows(conn, master, audit_key);
    sqlite.pragma_update(None, "secure_delete", secure_delete)?;
    let sealed = sealed?;
    // Until a checkpoint the database file keeps its pages as they were, clear
    // values included: copy the new ones back and empty the WAL now rather than
    // at the next shutdown. Best effort: another process reading the database
    // holds it back (the writer truncates again when it stops).
    match sqlite.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => tracing::warn!(
            "sealed conversation labels: the checkpoint was blocked by a reader; old pages stay in the database file until the next one"
        ),
        Err(e) => tracing::warn!(error = %e, "sealed conversation labels: checkpoint failed"),
    }
    tracing::info!(
        conversations = sealed,
        "sealed clear queue, assignee and tags"
    );
    Ok(sealed)
}

fn reseal_rows(
    conn: &crate::db::Conn,
    master: &crate::SecretKey,
    audit_key: &crate::SecretKey,
) -> Result<usize> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match reseal_rows_in(conn, master, audit_key) {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            Ok(n)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn reseal_rows_in(
    tx: &crate::db::Conn,
    master: &crate::SecretKey,
    audit_key: &crate::SecretKey,
) -> Result<usize> {
    type ClearRow = (
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        Vec<u8>,
    );
    let rows: Vec<ClearRow> = tx
        .prepare(&format!(
            "SELECT id, tenant_id, queue, assignee, tags, data {CLEAR_LABELS}"
        ))?
        .query_map(params![], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<crate::db::Result<_>>()?;
    let mut per_tenant: std::collections::BTreeMap<String, (TenantKeys, usize)> =
        Default::default();
    for (id, tenant_id, queue, assignee, tags, sealed) in &rows {
        if !per_tenant.contains_key(tenant_id) {
            let keys = crate::unwrap_tenant_keys(tx, master, tenant_id)?;
            per_tenant.insert(tenant_id.clone(), (keys, 0));
        }
        let (keys, count) = per_tenant.get_mut(tenant_id).expect("inserted just above");
        let mut data = unseal(keys, id, sealed).map_err(|e| {
            StoreError::Integrity(format!(
                "conversation {id}: cannot seal its clear queue, assignee and tags: {e}"
            ))
        })?;
        if queue.is_some() {
            data.queue.clone_from(queue);
        }
        if assignee.is_some() {
            data.assignee.clone_from(assignee);
        }
        let tags: Vec<String> = serde_json::from_str(tags).map_err(|e| {
            StoreError::Integrity(format!("conversation {id}: clear tags are not a list: {e}"))
        })?;
        if !tags.is_empty() {
            data.tags = tags;
        }
        tx.prepare_cached(
            "UPDATE conversations SET data = ?2, queue = NULL, assignee = NULL, tags = '[]', queue_idx = ?3, assignee_idx = ?4 WHERE id = ?1",
        )?
        .execute(params![
            id,
            seal(keys, id, &data),
            blind(keys, QUEUE_INDEX, data.queue.as_deref()),
            blind(keys, ASSIGNEE_INDEX, data.assignee.as_deref()),
        ])?;
        *count += 1;
    }
    let mut heads = crate::audit::AuditHeads::default();
    let mut ctx = crate::WriteCtx {
        conn: tx,
        audit_heads: &mut heads,
        audit_key,
    };
    // One record per tenant, in the same transaction as its rows (as every write).
    for (tenant_id, (_, count)) in &per_tenant {
        ctx.audit(
            tenant_id,
            &AuditEntry::new(
                "system:migration",
                "conversation.seal_labels",
                "conversations",
                Outcome::Ok,
            )
            .with_detail(serde_json::json!({ "conversations": count })),
        )?;
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContactInput, SecretKey, StoreOptions, database_path};

    const QUEUE: &str = "psychiatry-crisis";
    const TAG: &str = "hiv-positive";
    const NURSE: &str = "nurse@example.org";

    fn disk(dir: &std::path::Path) -> Vec<u8> {
        let db = database_path(dir);
        let mut bytes = std::fs::read(&db).unwrap();
        if let Ok(wal) = std::fs::read(format!("{}-wal", db.display())) {
            bytes.extend_from_slice(&wal);
        }
        bytes
    }

    fn holds(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    type Row = (
        Option<String>,
        Option<String>,
        String,
        Vec<u8>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );

    fn row(db: &rusqlite::Connection, id: &str) -> Row {
        db.query_row(
            "SELECT queue, assignee, tags, data, queue_idx, assignee_idx FROM conversations WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .unwrap()
    }

    fn audit_count(db: &rusqlite::Connection) -> i64 {
        db.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap()
    }

    // SQLite only: clear labels predate the PostgreSQL backend, which never
    // has them (`seal_clear_labels` returns at once there).
    #[tokio::test]
    async fn clear_labels_from_before_migration_4_are_sealed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::generate();
        let open_store = || Store::open(dir.path(), master.clone(), StoreOptions::default());
        let store = open_store().unwrap();
        let t = store.create_tenant("t", "local", "test").await.unwrap();
        let contact = store
            .create_contact(
                &t.id,
                ContactInput {
                    display_name: Some("P".into()),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
        let new = |subject: &str, queue: Option<&str>, tags: &[&str]| NewConversation {
            contact_id: contact.id.clone(),
            subject: Some(subject.into()),
            queue: queue.map(str::to_owned),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        // `old` will look as migration 1 wrote it: labels in clear, a blob
        // sealing only the subject. `mixed` has sealed labels and, as an
        // older binary would write, a clear assignee.
        let old = store
            .create_conversation(&t.id, new("chest pain", None, &[]), "test")
            .await
            .unwrap();
        let mixed = store
            .create_conversation(&t.id, new("rash", Some("derm"), &["follow-up"]), "test")
            .await
            .unwrap();
        let untouched = store
            .create_conversation(&t.id, new("cough", Some("gp"), &[]), "test")
            .await
            .unwrap();
        let keys = store.read_blocking(|c| store.keys_for(c, &t.id)).unwrap();
        store.shutdown();
        drop(store);

        let db_path = database_path(dir.path());
        let untouched_row = {
            let db = rusqlite::Connection::open(&db_path).unwrap();
            let legacy = keys
                .data
                .seal(br#"{"subject":"chest pain"}"#, &aad(&old.id));
            db.execute(
                "UPDATE conversations SET queue = ?2, assignee = ?3, tags = ?4, data = ?5, queue_idx = NULL, assignee_idx = NULL WHERE id = ?1",
                rusqlite::params![old.id, QUEUE, NURSE, format!(r#"["{TAG}"]"#), legacy],
            )
            .unwrap();
            db.execute(
                "UPDATE conversations SET assignee = ?2 WHERE id = ?1",
                rusqlite::params![mixed.id, "dr-lee"],
            )
            .unwrap();
            row(&db, &untouched.id)
        };
        assert!(
            holds(&disk(dir.path()), NURSE),
            "the simulation wrote clear values"
        );

        // A wrong master key cannot seal them: opening fails, nothing changes.
        let err = Store::open(dir.path(), SecretKey::generate(), StoreOptions::default())
            .err()
            .expect("a wrong master key must not open a store with labels to seal");
        assert!(err.to_string().contains("master key"), "{err}");

        let store = open_store().unwrap();
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let (queue, assignee, tags, _, queue_idx, assignee_idx) = row(&db, &old.id);
        assert_eq!((queue, assignee, tags.as_str()), (None, None, "[]"));
        assert_eq!(queue_idx, Some(keys.blind_index(QUEUE_INDEX, QUEUE)));
        assert_eq!(assignee_idx, Some(keys.blind_index(ASSIGNEE_INDEX, NURSE)));
        let (queue, assignee, tags, _, queue_idx, assignee_idx) = row(&db, &mixed.id);
        assert_eq!((queue, assignee, tags.as_str()), (None, None, "[]"));
        assert_eq!(queue_idx, Some(keys.blind_index(QUEUE_INDEX, "derm")));
        assert_eq!(
            assignee_idx,
            Some(keys.blind_index(ASSIGNEE_INDEX, "dr-lee"))
        );
        assert_eq!(row(&db, &untouched.id), untouched_row, "not re-sealed");
        let pending: i64 = db
            .query_row(&format!("SELECT COUNT(*) {CLEAR_LABELS}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(pending, 0);
        let bytes = disk(dir.path());
        assert!(holds(&bytes, &old.id), "the check reads the right files");
        for s in [QUEUE, TAG, NURSE] {
            assert!(!holds(&bytes, s), "`{s}` is still on disk in clear");
        }

        let got = store.get_conversation(&t.id, &old.id).await.unwrap();
        assert_eq!(got.queue.as_deref(), Some(QUEUE));
        assert_eq!(got.assignee.as_deref(), Some(NURSE));
        assert_eq!(got.tags, vec![TAG.to_owned()]);
        assert_eq!(got.subject.as_deref(), Some("chest pain"));
        let got = store.get_conversation(&t.id, &mixed.id).await.unwrap();
        assert_eq!(got.queue.as_deref(), Some("derm"));
        assert_eq!(got.assignee.as_deref(), Some("dr-lee"));
        assert_eq!(got.tags, vec!["follow-up".to_owned()]);
        assert_eq!(got.subject.as_deref(), Some("rash"));
        let mine = store
            .list_conversations(
                &t.id,
                ConversationFilter {
                    assignee: Some(NURSE.into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .conversations;
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].id, old.id);
        let audit = store.list_audit(&t.id, 0, 100).await.unwrap();
        let sealed: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "conversation.seal_labels")
            .collect();
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].detail["conversations"], 2);
        assert!(store.verify().await.unwrap().is_intact());

        // Opening again changes nothing: same ciphertexts, no new audit record.
        let before = (row(&db, &old.id), row(&db, &mixed.id), audit_count(&db));
        store.shutdown();
        drop(store);
        let store = open_store().unwrap();
        let after = (row(&db, &old.id), row(&db, &mixed.id), audit_count(&db));
        assert_eq!(before, after);
        assert!(store.verify().await.unwrap().is_intact());
    }

    #[test]
    fn blobs_sealed_before_migration_4_still_open() {
        let keys = TenantKeys::from_data_key(SecretKey::generate());
        let sealed = keys.data.seal(br#"{"subject":"x"}"#, &aad("c"));
        let data = unseal(&keys, "c", &sealed).unwrap();
        assert_eq!(data.subject.as_deref(), Some("x"));
        assert!(data.queue.is_none() && data.assignee.is_none() && data.tags.is_empty());
    }
}
