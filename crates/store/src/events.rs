//! The timeline: append-only, gap-free `seq` per conversation, sealed bodies,
//! each append audited with a digest of the stored row (so `audit verify` can
//! prove no event was altered or removed), and the context snapshot built on it.

use crate::audit::{AuditEntry, Outcome};
use crate::contacts;
use crate::conversations::{self, Conversation, TransitionParams, apply_transition};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::webhooks::enqueue;
use crate::{Contact, Store, TenantKeys, WriteCtx, now_micros};
use continuum_core::context::EventFacts;
use continuum_core::{
    Actor, Channel, ConversationState, EventKind, NewEvent, PendingItem, Transition,
    build_pending_items,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub conversation_id: String,
    pub seq: i64,
    pub at: Timestamp,
    pub channel: Channel,
    pub kind: EventKind,
    pub actor: Actor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub meta: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip)]
    pub tenant_id: String,
}

#[derive(Serialize, Deserialize)]
struct SealedPayload {
    body: Option<String>,
    meta: serde_json::Map<String, serde_json::Value>,
}

fn aad(tenant_id: &str, conversation_id: &str, seq: i64) -> Vec<u8> {
    format!("event:{tenant_id}:{conversation_id}:{seq}").into_bytes()
}

/// Binds every stored column of an event row; recorded in the audit chain.
#[allow(clippy::too_many_arguments)]
fn row_digest(
    conversation_id: &str,
    seq: i64,
    at: i64,
    channel: &str,
    kind: &str,
    actor_type: &str,
    actor_id: Option<&str>,
    idempotency_key: Option<&str>,
    payload: &[u8],
) -> String {
    let mut h = Sha256::new();
    for part in [
        conversation_id.as_bytes(),
        &seq.to_be_bytes(),
        &at.to_be_bytes(),
        channel.as_bytes(),
        kind.as_bytes(),
        actor_type.as_bytes(),
        actor_id.unwrap_or("\u{0}").as_bytes(),
        idempotency_key.unwrap_or("\u{0}").as_bytes(),
        payload,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

pub(crate) fn publish(live: &crate::live::Live, events: &[Event]) {
    for e in events {
        live.send(Arc::new(e.clone()));
    }
    metrics::counter!("continuum_events_written_total").increment(events.len() as u64);
}

/// An event ready to store: the sealed payload of its row, the audit entry
/// that binds the row's digest, and the event as readers get it back.
pub(crate) struct SealedEvent {
    pub event: Event,
    pub sealed: Vec<u8>,
    pub audit: AuditEntry,
}

/// Seals `ev` as event `seq` of `conv_id`, written at `at`: what every
/// append path stores (one at a time, or a batch on PostgreSQL).
pub(crate) fn seal_event(
    keys: &TenantKeys,
    tenant_id: &str,
    conv_id: &str,
    seq: i64,
    at: i64,
    ev: &NewEvent,
    audit_actor: &str,
) -> Result<SealedEvent> {
    let payload = serde_json::to_vec(&SealedPayload {
        body: ev.body.clone(),
        meta: ev.meta.clone(),
    })
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let sealed = keys.data.seal(&payload, &aad(tenant_id, conv_id, seq));
    let (channel, kind, actor_type) = (
        ev.channel.as_str(),
        ev.kind.as_str(),
        ev.actor.actor_type.as_str(),
    );
    let digest = row_digest(
        conv_id,
        seq,
        at,
        channel,
        kind,
        actor_type,
        ev.actor.id.as_deref(),
        ev.idempotency_key.as_deref(),
        &sealed,
    );
    let audit = AuditEntry::new(
        audit_actor,
        "event.append",
        format!("conversation/{conv_id}/event/{seq}"),
        Outcome::Ok,
    )
    .with_detail(serde_json::json!({ "digest": digest, "kind": kind, "channel": channel }));
    let event = Event {
        conversation_id: conv_id.to_owned(),
        seq,
        at: Timestamp(at),
        channel: ev.channel,
        kind: ev.kind,
        actor: ev.actor.clone(),
        body: ev.body.clone(),
        meta: ev.meta.clone(),
        idempotency_key: ev.idempotency_key.clone(),
        tenant_id: tenant_id.to_owned(),
    };
    Ok(SealedEvent {
        event,
        sealed,
        audit,
    })
}

/// The audit entry of an append that an idempotency key answered with the
/// event it stored before.
pub(crate) fn duplicate_audit(audit_actor: &str, conv_id: &str, seq: i64) -> AuditEntry {
    AuditEntry::new(
        audit_actor,
        "event.append",
        format!("conversation/{conv_id}/event/{seq}"),
        Outcome::Ok,
    )
    .with_detail(serde_json::json!({ "duplicate_of": seq }))
}

/// Inserts one event as the next `seq` of `conv` (inside the caller's write).
pub(crate) fn append_row(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    conv: &mut Conversation,
    ev: &NewEvent,
    audit_actor: &str,
) -> Result<Event> {
    let seq = conv.last_seq + 1;
    let at = now_micros();
    let row = seal_event(keys, tenant_id, &conv.id, seq, at, ev, audit_actor)?;
    ctx.conn
        .prepare_cached(
            "INSERT INTO events (conversation_id, seq, tenant_id, at, channel, kind, actor_type, actor_id, idempotency_key, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            conv.id,
            seq,
            tenant_id,
            at,
            ev.channel.as_str(),
            ev.kind.as_str(),
            ev.actor.actor_type.as_str(),
            ev.actor.id,
            ev.idempotency_key,
            row.sealed
        ])?;
    ctx.conn
        .prepare_cached("UPDATE conversations SET last_seq = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![conv.id, seq, at])?;
    conv.last_seq = seq;
    conv.updated_at = Timestamp(at);
    write_side_rows(ctx.conn, tenant_id, &conv.id, ev, seq, at)?;
    ctx.audit(tenant_id, &row.audit)?;
    let event = row.event;
    enqueue(ctx.conn, keys, tenant_id, "event.created", || {
        serde_json::to_value(&event).unwrap_or_default()
    })?;
    Ok(event)
}

/// What a few kinds of event keep besides their row: the media session a
/// call opens or closes, and the marker of the latest triage, switch or
/// opt-in/out. (After the event's row.)
pub(crate) fn write_side_rows(
    conn: &crate::db::Conn,
    tenant_id: &str,
    conv_id: &str,
    ev: &NewEvent,
    seq: i64,
    at: i64,
) -> Result<()> {
    track_media_session(conn, tenant_id, conv_id, ev, seq, at)?;
    if let Some(marker) = marker_for(ev) {
        conn.prepare_cached(
            "INSERT INTO event_markers (conversation_id, marker, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (conversation_id, marker) DO UPDATE SET seq = excluded.seq",
        )?
        .execute(params![conv_id, marker, seq])?;
    }
    Ok(())
}

fn track_media_session(
    conn: &crate::db::Conn,
    tenant_id: &str,
    conv_id: &str,
    ev: &NewEvent,
    seq: i64,
    at: i64,
) -> Result<()> {
    let Some(session) = ev.meta.get("session_id").and_then(|v| v.as_str()) else {
        return Ok(());
    };
    match ev.kind {
        EventKind::CallStarted => {
            conn
                .prepare_cached(
                    "INSERT INTO media_sessions (conversation_id, session_id, tenant_id, channel, started_seq, started_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                )?
                .execute(params![conv_id, session, tenant_id, ev.channel.as_str(), seq, at])?;
        }
        EventKind::CallEnded | EventKind::CallFailed => {
            let outcome = if ev.kind == EventKind::CallEnded {
                "ended"
            } else {
                "failed"
            };
            conn.prepare_cached(
                "UPDATE media_sessions SET ended_at = ?3, outcome = ?4
                     WHERE conversation_id = ?1 AND session_id = ?2 AND ended_at IS NULL",
            )?
            .execute(params![conv_id, session, at, outcome])?;
        }
        _ => {}
    }
    Ok(())
}

/// PostgreSQL: the events of a batch of appends, one array per column.
pub(crate) const INSERT_MANY_SQL: &str = "INSERT INTO events (conversation_id, seq, tenant_id, at, channel, kind, actor_type, actor_id, idempotency_key, payload)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[])";

/// PostgreSQL: the events stored under some (conversation, idempotency
/// key, tenant) triples, given as three arrays.
pub(crate) fn stored_under_keys_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE (conversation_id, idempotency_key, tenant_id)
               IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))"
    )
}

pub(crate) const EVENT_COLUMNS: &str =
    "conversation_id, seq, at, channel, kind, actor_type, actor_id, idempotency_key, payload";

/// One event by its place (inside a read or write).
pub(crate) fn load_event(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    conversation_id: &str,
    seq: i64,
) -> Result<Event> {
    conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 AND seq = ?2 AND tenant_id = ?3"
    ))?
    .query_row(params![conversation_id, seq, tenant_id], |r| Ok(event_from_row(keys, tenant_id, r)))
    .optional()?
    .ok_or(StoreError::NotFound("event"))?
}

pub(crate) fn event_from_row(
    keys: &TenantKeys,
    tenant_id: &str,
    r: &crate::db::Row<'_>,
) -> Result<Event> {
    let conversation_id: String = r.get(0)?;
    let seq: i64 = r.get(1)?;
    let sealed: Vec<u8> = r.get(8)?;
    let plain = keys
        .data
        .open(&sealed, &aad(tenant_id, &conversation_id, seq))
        .map_err(|_| {
            StoreError::Integrity(format!(
                "event {conversation_id}/{seq} does not open: altered or moved"
            ))
        })?;
    let p: SealedPayload = serde_json::from_slice(&plain)
        .map_err(|e| StoreError::Integrity(format!("event {conversation_id}/{seq}: {e}")))?;
    let parse_err =
        |what: String| StoreError::Integrity(format!("event {conversation_id}/{seq}: {what}"));
    Ok(Event {
        seq,
        at: Timestamp(r.get(2)?),
        channel: r
            .get::<_, String>(3)?
            .parse()
            .map_err(|e: continuum_core::channel::UnknownChannel| parse_err(e.to_string()))?,
        kind: r
            .get::<_, String>(4)?
            .parse()
            .map_err(|e: continuum_core::event::UnknownKind| parse_err(e.to_string()))?,
        actor: Actor {
            actor_type: r.get::<_, String>(5)?.parse().map_err(parse_err)?,
            id: r.get(6)?,
        },
        idempotency_key: r.get(7)?,
        body: p.body,
        meta: p.meta,
        tenant_id: tenant_id.to_owned(),
        conversation_id,
    })
}

fn ensure_conversation(c: &crate::db::Conn, tenant_id: &str, id: &str) -> Result<()> {
    c.prepare_cached("SELECT 1 FROM conversations WHERE id = ?1 AND tenant_id = ?2")?
        .query_row(params![id, tenant_id], |_| Ok(()))
        .optional()?
        .ok_or(StoreError::NotFound("conversation"))
}

pub(crate) fn page(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    conv: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let mut rows = stmt.query(params![conv, after, limit as i64])?;
    let mut out = Vec::with_capacity(limit.min(256));
    while let Some(ref r) = rows.next()? {
        out.push(event_from_row(keys, tenant_id, r)?);
    }
    Ok(out)
}

fn latest(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    conv: &str,
    n: usize,
) -> Result<Vec<Event>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![conv, n as i64])?;
    let mut out = Vec::with_capacity(n.min(256));
    while let Some(ref r) = rows.next()? {
        out.push(event_from_row(keys, tenant_id, r)?);
    }
    out.reverse();
    Ok(out)
}

fn event_at(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    conv: &str,
    seq: i64,
) -> Result<Option<Event>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 AND seq = ?2"
    ))?;
    let mut rows = stmt.query(params![conv, seq])?;
    match rows.next()? {
        Some(ref r) => Ok(Some(event_from_row(keys, tenant_id, r)?)),
        None => Ok(None),
    }
}

/// The marker an event kind maintains, if any.
fn marker_for(ev: &NewEvent) -> Option<String> {
    match ev.kind {
        EventKind::TriageResult => Some("triage".into()),
        EventKind::ChannelSwitched => Some("switch".into()),
        EventKind::OptOut | EventKind::OptIn => {
            Some(format!("opt:{}", opt_channel(&ev.meta, ev.channel)))
        }
        // A channel handoff (a visit link texted, a text after a failed call).
        _ if ev.meta.contains_key("handoff") => Some("handoff".into()),
        _ => None,
    }
}

/// The channel an opt-in/out is about: `meta.channel`, else the channel it arrived on.
fn opt_channel(meta: &serde_json::Map<String, serde_json::Value>, arrived: Channel) -> Channel {
    meta.get("channel")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Channel>().ok())
        .unwrap_or(arrived)
}

/// A video room or voice call inside a conversation.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MediaSession {
    pub session_id: String,
    pub channel: Channel,
    pub started_seq: i64,
    pub started_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// Per-channel activity, so the next person sees at a glance where the patient has been.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelActivity {
    pub channel: Channel,
    pub events: i64,
    pub last_at: Timestamp,
}

/// What the next person to pick the conversation up needs, in one read.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Context {
    pub conversation: Conversation,
    pub patient: Contact,
    /// Things waiting on staff, most urgent kinds first.
    pub pending: Vec<PendingItem>,
    pub open_media_sessions: Vec<MediaSession>,
    /// The most recent triage outcome, however long ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_triage: Option<Event>,
    /// The most recent channel switch (e.g. video dropped to voice), however long ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_channel_switch: Option<Event>,
    /// The most recent channel handoff: a visit link sent by text (phone to
    /// video), or a text after an unanswered fallback call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_handoff: Option<Event>,
    /// Channels the patient has opted out of; do not contact them there.
    pub opted_out: Vec<Channel>,
    /// Appointments of this conversation from an hour ago on, soonest first
    /// (at most 5), with their status (`confirmed`, `reschedule_requested`
    /// after a reply to a reminder) and reminders.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub appointments: Vec<crate::Appointment>,
    pub channels: Vec<ChannelActivity>,
    /// The last N events across every channel, oldest first.
    pub recent_events: Vec<Event>,
    pub generated_at: Timestamp,
}

/// How far back pending items are looked for, beyond the N events shown.
const PENDING_WINDOW: usize = 200;

fn build_context(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
    n: usize,
) -> Result<Context> {
    let conversation = conversations::load(c, keys, tenant_id, id)?;
    let patient = contacts::load(c, keys, tenant_id, &conversation.contact_id)?;
    let window = latest(c, keys, tenant_id, id, n.max(PENDING_WINDOW))?;
    let at_strings: Vec<String> = window.iter().map(|e| e.at.to_rfc3339()).collect();
    let facts: Vec<EventFacts<'_>> = window
        .iter()
        .zip(&at_strings)
        .map(|(e, at)| EventFacts {
            seq: e.seq,
            at,
            channel: e.channel,
            kind: e.kind,
            actor_type: e.actor.actor_type,
            meta: &e.meta,
        })
        .collect();
    let pending = build_pending_items(conversation.state, conversation.assignee.as_deref(), &facts);

    let mut stmt = c.prepare_cached(
        "SELECT session_id, channel, started_seq, started_at FROM media_sessions
         WHERE conversation_id = ?1 AND ended_at IS NULL ORDER BY started_seq",
    )?;
    let open_media_sessions = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .map(|row| {
            let (session_id, channel, started_seq, started_at) = row?;
            Ok(MediaSession {
                session_id,
                channel: channel.parse().map_err(
                    |e: continuum_core::channel::UnknownChannel| {
                        StoreError::Integrity(e.to_string())
                    },
                )?,
                started_seq,
                started_at: Timestamp(started_at),
                ended_at: None,
                outcome: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut last_triage = None;
    let mut last_channel_switch = None;
    let mut last_handoff = None;
    let mut opted_out: Vec<Channel> = Vec::new();
    let markers: Vec<(String, i64)> = c
        .prepare_cached("SELECT marker, seq FROM event_markers WHERE conversation_id = ?1")?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (marker, seq) in markers {
        let Some(e) = event_at(c, keys, tenant_id, id, seq)? else {
            continue;
        };
        match marker.as_str() {
            "triage" => last_triage = Some(e),
            "switch" => last_channel_switch = Some(e),
            "handoff" => last_handoff = Some(e),
            _ if e.kind == EventKind::OptOut => opted_out.push(opt_channel(&e.meta, e.channel)),
            _ => {}
        }
    }

    let mut stmt = c.prepare_cached(
        "SELECT channel, COUNT(*), MAX(at) FROM events WHERE conversation_id = ?1 AND channel != 'system'
         GROUP BY channel ORDER BY MAX(at) DESC",
    )?;
    let channels = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .filter_map(|row| {
            let (ch, events, last) = row.ok()?;
            Some(ChannelActivity {
                channel: ch.parse().ok()?,
                events,
                last_at: Timestamp(last),
            })
        })
        .collect();

    let appointments = crate::reminders::for_context(c, keys, tenant_id, id)?;
    let skip = window.len().saturating_sub(n);
    let recent_events = window.into_iter().skip(skip).collect();
    Ok(Context {
        conversation,
        patient,
        pending,
        open_media_sessions,
        last_triage,
        last_channel_switch,
        last_handoff,
        opted_out,
        appointments,
        channels,
        recent_events,
        generated_at: Timestamp(now_micros()),
    })
}

/// The result of an append: the stored event and whether this call created it.
#[derive(Debug, Clone)]
pub struct Appended {
    pub event: Event,
    /// False when the idempotency key matched an earlier append.
    pub created: bool,
    /// Engine events written alongside (e.g. the reopen of a closed conversation).
    pub also_written: Vec<Event>,
}

/// Whether a retried append asks for the event that its key already stored.
pub(crate) fn same_request(existing: &Event, ev: &NewEvent) -> bool {
    existing.channel == ev.channel
        && existing.kind == ev.kind
        && existing.actor == ev.actor
        && existing.body == ev.body
        && existing.meta == ev.meta
}

/// The append itself, inside the caller's write (idempotency, the reopen of a
/// closed conversation on inbound contact, the row): shared by every path that
/// appends as part of a larger write (messaging, for one).
pub(crate) fn append_in_tx(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    conv_id: &str,
    ev: &NewEvent,
    audit_actor: &str,
) -> Result<Appended> {
    let mut conv = conversations::load_head(ctx.conn, tenant_id, conv_id)?;
    if let Some(key) = &ev.idempotency_key {
        let existing = ctx
            .conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 AND idempotency_key = ?2"
            ))?
            .query_row(params![conv_id, key], |r| Ok(event_from_row(keys, tenant_id, r)))
            .optional()?;
        if let Some(existing) = existing {
            let existing = existing?;
            if !same_request(&existing, ev) {
                return Err(StoreError::IdempotencyMismatch(
                    key.chars().take(64).collect(),
                ));
            }
            ctx.audit(
                tenant_id,
                &duplicate_audit(audit_actor, conv_id, existing.seq),
            )?;
            return Ok(Appended {
                event: existing,
                created: false,
                also_written: vec![],
            });
        }
    }
    let mut also_written = Vec::new();
    if conv.state == ConversationState::Closed && ev.is_inbound() {
        conv = conversations::load(ctx.conn, keys, tenant_id, conv_id)?;
        let params = TransitionParams {
            reason: Some(format!("inbound {}", ev.channel)),
            ..Default::default()
        };
        also_written = apply_transition(
            ctx,
            keys,
            tenant_id,
            &mut conv,
            Transition::Reopen,
            &params,
            &Actor::system(),
            audit_actor,
        )?;
    }
    let event = append_row(ctx, keys, tenant_id, &mut conv, ev, audit_actor)?;
    Ok(Appended {
        event,
        created: true,
        also_written,
    })
}

impl Store {
    /// Appends a client event to the timeline. A repeated idempotency key returns
    /// the original event. Inbound contact reopens a closed conversation first.
    pub async fn append_event(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        ev: NewEvent,
        audit_actor: &str,
    ) -> Result<Appended> {
        ev.validate_client()?;
        self.append_unchecked(tenant_id, conversation_id, ev, audit_actor)
            .await
    }

    /// Appends an event of one of the engine's own kinds (IVR steps,
    /// routing): the server's components only, never a client's event.
    pub async fn append_system_event(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        ev: NewEvent,
        audit_actor: &str,
    ) -> Result<Appended> {
        ev.validate_shape()?;
        self.append_unchecked(tenant_id, conversation_id, ev, audit_actor)
            .await
    }

    async fn append_unchecked(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        ev: NewEvent,
        audit_actor: &str,
    ) -> Result<Appended> {
        let (tenant_id, conv_id, audit_actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        if self.backend() == "postgres" {
            return self
                .append_batched(tenant_id, conv_id, ev, audit_actor)
                .await;
        }
        let live = self.0.live.clone();
        let notify = self.outbox_ready();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &tenant_id)?;
                append_in_tx(ctx, &keys, &tenant_id, &conv_id, &ev, &audit_actor)
            },
            move |a: &Appended| {
                if a.created {
                    publish(&live, &a.also_written);
                    publish(&live, std::slice::from_ref(&a.event));
                    notify.notify_one();
                }
            },
        )
        .await
    }

    /// A page of the timeline after `after`, audited as a PHI read.
    pub async fn list_events(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after: i64,
        limit: usize,
        audit_actor: &str,
    ) -> Result<Vec<Event>> {
        let entry = AuditEntry::new(
            audit_actor,
            "timeline.read",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        )
        .with_detail(serde_json::json!({ "after": after, "limit": limit }));
        let read = self.page_reader(tenant_id, conversation_id, after, limit);
        self.read_audited(tenant_id, entry, read).await
    }

    /// Reads a page without auditing: only for a live stream whose opening was audited.
    pub async fn stream_page(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.read(self.page_reader(tenant_id, conversation_id, after, limit))
            .await
    }

    fn page_reader(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after: i64,
        limit: usize,
    ) -> impl FnOnce(&crate::db::Conn) -> Result<Vec<Event>> + Send + 'static {
        let (t, id, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        move |c| {
            let keys = store.keys_for(c, &t)?;
            ensure_conversation(c, &t, &id)?;
            page(c, &keys, &t, &id, after, limit)
        }
    }

    /// Checks that a conversation exists for this tenant (and audits the stream's opening).
    pub async fn open_stream(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after: i64,
        audit_actor: &str,
    ) -> Result<()> {
        let entry = AuditEntry::new(
            audit_actor,
            "timeline.stream",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        )
        .with_detail(serde_json::json!({ "after": after }));
        let (t, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.read_audited(tenant_id, entry, move |c| ensure_conversation(c, &t, &id))
            .await
    }

    /// The context snapshot, audited as a PHI read.
    pub async fn context(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        recent: usize,
        audit_actor: &str,
    ) -> Result<Context> {
        let entry = AuditEntry::new(
            audit_actor,
            "context.read",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        );
        let (t, id, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            build_context(c, &keys, &t, &id, recent)
        })
        .await
    }

    /// Bulk-loads events for benchmarks: one write per batch, same path as appends.
    pub async fn append_events_bulk(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        events: Vec<NewEvent>,
        audit_actor: &str,
    ) -> Result<usize> {
        let (tenant_id, conv_id, audit_actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let mut conv = conversations::load_head(ctx.conn, &tenant_id, &conv_id)?;
            for ev in &events {
                append_row(ctx, &keys, &tenant_id, &mut conv, ev, &audit_actor)?;
            }
            Ok(events.len())
        })
        .await
    }
}

/// Checks one `event.append` audit record against the stored row.
pub(crate) fn check_event_record(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    object: &str,
    detail: &str,
) -> Option<String> {
    let detail: serde_json::Value = serde_json::from_str(detail).ok()?;
    let digest = detail.get("digest")?.as_str()?;
    let rest = object.strip_prefix("conversation/")?;
    let (conv, seq) = rest.split_once("/event/")?;
    let seq: i64 = seq.parse().ok()?;
    let row = c
        .query_row(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 AND seq = ?2"),
            params![conv, seq],
            |r| {
                Ok((
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Vec<u8>>(8)?,
                ))
            },
        )
        .optional();
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => return Some("the event this record covers is missing (deleted)".into()),
        Err(e) => return Some(format!("cannot read the event: {e}")),
    };
    let (at, channel, kind, actor_type, actor_id, idem, payload) = row;
    let now = row_digest(
        conv,
        seq,
        at,
        &channel,
        &kind,
        &actor_type,
        actor_id.as_deref(),
        idem.as_deref(),
        &payload,
    );
    if now != digest {
        return Some("the stored event differs from what was appended (altered)".into());
    }
    if keys
        .data
        .open(&payload, &aad(tenant_id, conv, seq))
        .is_err()
    {
        return Some("the event's sealed body does not open (altered or moved)".into());
    }
    None
}
