//! Messaging: the providers a tenant sends through (its failover chain), the
//! durable outbox of outbound messages, inbound de-duplication, opt-outs and
//! the WhatsApp customer-service window. SQL for these tables lives here only.
//!
//! Crash safety of the outbox: a message is `queued` when written (with its
//! timeline event, in one transaction); a sender *claims* it (`sending`,
//! committed) before the provider request leaves, and records the outcome
//! after. A crash between the two leaves rows in `sending`: at the next start
//! they become `unconfirmed` rather than `queued`, because the provider may
//! have sent them (SMS has no idempotency key), and a second text is worse than
//! a flagged one. A status callback for such a message (it carries our message
//! id) still moves it on to `sent`/`delivered`.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::events::{Appended, Event, append_in_tx, publish};
use crate::time_fmt::Timestamp;
use crate::{Store, TenantKeys, WriteCtx, now_micros};
use continuum_core::{Actor, Channel, EventKind, NewEvent};
use serde::{Deserialize, Serialize};

/// How long a node may take to send a claimed message before others treat
/// the claim as abandoned (PostgreSQL; far above any provider timeout).
pub const SENDING_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// The protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Twilio's Messages API (SMS, MMS and WhatsApp), or anything speaking its shape.
    Twilio,
    /// Meta's WhatsApp Cloud API.
    MetaWhatsapp,
    /// An SMPP 3.4 carrier or aggregator.
    Smpp,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Twilio => "twilio",
            ProviderKind::MetaWhatsapp => "meta_whatsapp",
            ProviderKind::Smpp => "smpp",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "twilio" => Ok(ProviderKind::Twilio),
            "meta_whatsapp" => Ok(ProviderKind::MetaWhatsapp),
            "smpp" => Ok(ProviderKind::Smpp),
            other => Err(StoreError::Integrity(format!(
                "unknown provider kind `{other}`"
            ))),
        }
    }
}

/// One provider of a tenant's chain. `spec` is the non-secret configuration
/// (base URL, account id, sender numbers, rate limits), kept in clear like a
/// trunk's; the credentials are sealed and never returned by the API.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagingProvider {
    pub id: String,
    pub name: String,
    pub kind: ProviderKind,
    /// Position in the failover chain: lower is tried first.
    pub priority: i64,
    /// Channels it carries (`sms`, `whatsapp`).
    pub channels: Vec<Channel>,
    /// The clinic's sender numbers (E.164) or WhatsApp sender ids it sends from.
    pub senders: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
}

/// A provider with its unsealed credentials: for the sender and webhook checks only.
#[derive(Debug, Clone)]
pub struct ProviderWithSecret {
    pub tenant_id: String,
    pub provider: MessagingProvider,
    pub secret: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct NewMessagingProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub priority: i64,
    pub channels: Vec<Channel>,
    pub senders: Vec<String>,
    pub spec: serde_json::Map<String, serde_json::Value>,
    pub secret: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct StoredSpec {
    channels: Vec<Channel>,
    senders: Vec<String>,
    spec: serde_json::Map<String, serde_json::Value>,
}

/// Where an outbound message is in its life. Ordered by progress for the
/// provider statuses (`queued` < `sent` < `delivered` < `read`); `failed`,
/// `undelivered`, `suppressed` and `unconfirmed` end it (a later receipt may
/// still move an unconfirmed message on: it shows the provider had it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Undelivered,
    Failed,
    /// The patient opted out of this channel from this sender: never sent.
    Suppressed,
    /// The provider may or may not have it (a crash or timeout mid-request).
    Unconfirmed,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sending => "sending",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Read => "read",
            MessageState::Undelivered => "undelivered",
            MessageState::Failed => "failed",
            MessageState::Suppressed => "suppressed",
            MessageState::Unconfirmed => "unconfirmed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => MessageState::Queued,
            "sending" => MessageState::Sending,
            "sent" => MessageState::Sent,
            "delivered" => MessageState::Delivered,
            "read" => MessageState::Read,
            "undelivered" => MessageState::Undelivered,
            "failed" => MessageState::Failed,
            "suppressed" => MessageState::Suppressed,
            "unconfirmed" => MessageState::Unconfirmed,
            _ => return None,
        })
    }

    /// Whether a provider receipt saying `next` may replace `self`. Receipts
    /// arrive out of order (a `sent` after `delivered`): progress only moves
    /// forward, and a final failure is not overwritten by a late `sent`.
    pub fn accepts_receipt(self, next: MessageState) -> bool {
        use MessageState::*;
        let rank = |s: MessageState| match s {
            Queued | Sending | Unconfirmed => 0,
            Sent => 1,
            Delivered | Undelivered | Failed => 2,
            Read => 3,
            Suppressed => 4,
        };
        match (self, next) {
            (Suppressed, _) => false,
            // A read receipt after "undelivered" is the provider being wrong
            // the other way round; believe the later, stronger signal.
            (Undelivered | Failed, Read) => true,
            (Undelivered | Failed, _) => false,
            _ => rank(next) > rank(self),
        }
    }
}

/// An outbound message as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutboundMessage {
    pub id: String,
    pub conversation_id: String,
    /// The `message` event on the timeline.
    pub event_seq: i64,
    pub channel: Channel,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub template: Option<serde_json::Value>,
    pub state: MessageState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Failed attempts so far, oldest first: what the retry policy reads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<FailedAttempt>,
    /// A reply to STOP/START/HELP, sent whatever the opt-out says.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compliance: bool,
}

/// A message to queue on a conversation.
#[derive(Debug, Clone)]
pub struct NewOutboundMessage {
    pub channel: Channel,
    /// The patient's address (E.164), already normalised.
    pub to: String,
    /// The clinic's sender; suppression is per sender.
    pub from: Option<String>,
    pub body: Option<String>,
    pub media_urls: Vec<String>,
    pub template: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub actor: Actor,
    /// Extra timeline meta (e.g. `reminder_id`, `handoff`).
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// The one confirmation of an opt-out keyword (or a HELP answer): the
    /// only message that goes out whatever the opt-out says.
    pub compliance: bool,
}

#[derive(Serialize, Deserialize)]
struct SealedMessage {
    to: String,
    body: Option<String>,
    #[serde(default)]
    media_urls: Vec<String>,
    template: Option<serde_json::Value>,
}

/// One failed attempt: which provider, and the class of failure
/// (`retryable`, `provider_rejected`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedAttempt {
    pub provider: String,
    pub failure: String,
}

/// What a sender does with a claimed message, and what it learned.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    Sent {
        provider_id: String,
        provider_message_id: String,
    },
    /// Try again at `at` (micros), on `provider_id` (the same or the next in
    /// the chain), after `failed` (the attempt that just failed, logged).
    Retry {
        provider_id: String,
        at: i64,
        error: String,
        failed: Option<FailedAttempt>,
    },
    /// Dead-lettered: a permanent error or the chain exhausted.
    Failed {
        provider_id: Option<String>,
        error: String,
        failed: Option<FailedAttempt>,
    },
    Unconfirmed {
        provider_id: String,
        error: String,
    },
}

/// A message claimed for sending.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub tenant_id: String,
    pub message: OutboundMessage,
    /// The provider of the last attempt (a retry or failover names the next one).
    pub provider_hint: Option<String>,
}

/// An inbound message as a provider adapter parsed it.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub provider_id: String,
    pub provider_message_id: String,
    pub channel: Channel,
    /// The patient's address, normalised (E.164).
    pub from: String,
    /// The clinic's number (or WhatsApp sender id) it was sent to.
    pub to: String,
    pub body: Option<String>,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// An inbound message's fate.
#[derive(Debug, Clone)]
pub struct InboundOutcome {
    /// The stored event, or the one stored the first time the provider sent it.
    pub event: Event,
    /// False when the provider re-sent a message already on the timeline.
    pub created: bool,
}

/// An opt-out or opt-in.
#[derive(Debug, Clone)]
pub struct ConsentChange {
    pub channel: Channel,
    pub sender: String,
    /// The patient's address (normalised).
    pub recipient: String,
    pub opted_out: bool,
    /// The word the patient sent (`STOP`), or `api`.
    pub source: String,
    pub actor: Actor,
}

const PROVIDER_COLUMNS: &str = "id, tenant_id, name, kind, priority, spec, secret, created_at";
const MESSAGE_COLUMNS: &str = "id, tenant_id, conversation_id, event_seq, channel, sender, payload, state, provider_id, provider_message_id, attempts, last_error, created_at, updated_at, attempt_log, compliance";

fn secret_aad(provider_id: &str) -> String {
    format!("messaging-provider:{provider_id}")
}

fn message_aad(tenant_id: &str, id: &str) -> String {
    format!("message:{tenant_id}:{id}")
}

fn recipient_index(keys: &TenantKeys, channel: Channel, address: &str) -> Vec<u8> {
    keys.blind_index(&format!("msg-{}", channel.as_str()), address)
}

fn provider_row(
    store: &Store,
    c: &crate::db::Conn,
    r: &crate::db::Row<'_>,
    with_secret: bool,
) -> Result<ProviderWithSecret> {
    let id: String = r.get(0)?;
    let tenant_id: String = r.get(1)?;
    let stored: StoredSpec = serde_json::from_str(&r.get::<_, String>(5)?)
        .map_err(|e| StoreError::Integrity(format!("provider {id}: {e}")))?;
    let secret = if with_secret {
        let keys = store.keys_for(c, &tenant_id)?;
        let raw = keys
            .data
            .open(&r.get::<_, Vec<u8>>(6)?, secret_aad(&id).as_bytes())?;
        serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Integrity(format!("provider {id} secret: {e}")))?
    } else {
        Default::default()
    };
    Ok(ProviderWithSecret {
        provider: MessagingProvider {
            name: r.get(2)?,
            kind: ProviderKind::parse(&r.get::<_, String>(3)?)?,
            priority: r.get(4)?,
            channels: stored.channels,
            senders: stored.senders,
            spec: stored.spec,
            created_at: Timestamp(r.get(7)?),
            id,
        },
        tenant_id,
        secret,
    })
}

fn message_row(keys: &TenantKeys, r: &crate::db::Row<'_>) -> Result<OutboundMessage> {
    let id: String = r.get(0)?;
    let tenant_id: String = r.get(1)?;
    let sealed: SealedMessage = serde_json::from_slice(&keys.data.open(
        &r.get::<_, Vec<u8>>(6)?,
        message_aad(&tenant_id, &id).as_bytes(),
    )?)
    .map_err(|e| StoreError::Integrity(format!("message {id}: {e}")))?;
    let channel: String = r.get(4)?;
    let state: String = r.get(7)?;
    Ok(OutboundMessage {
        conversation_id: r.get(2)?,
        event_seq: r.get(3)?,
        channel: channel
            .parse()
            .map_err(|e: continuum_core::channel::UnknownChannel| {
                StoreError::Integrity(e.to_string())
            })?,
        from: r.get(5)?,
        to: sealed.to,
        body: sealed.body,
        media_urls: sealed.media_urls,
        template: sealed.template,
        state: MessageState::parse(&state)
            .ok_or_else(|| StoreError::Integrity(format!("message {id}: state `{state}`")))?,
        provider_id: r.get(8)?,
        provider_message_id: r.get(9)?,
        attempts: r.get(10)?,
        last_error: r.get(11)?,
        created_at: Timestamp(r.get(12)?),
        updated_at: Timestamp(r.get(13)?),
        attempt_log: serde_json::from_str(&r.get::<_, String>(14)?)
            .map_err(|e| StoreError::Integrity(format!("message {id} attempt_log: {e}")))?,
        compliance: r.get(15)?,
        id,
    })
}

/// Whether `recipient` opted out of `channel` from `sender`.
fn suppressed(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    channel: Channel,
    sender: Option<&str>,
    recipient: &str,
) -> Result<bool> {
    let Some(sender) = sender else {
        return Ok(false);
    };
    let idx = recipient_index(keys, channel, recipient);
    Ok(conn
        .prepare_cached(
            "SELECT opted_out FROM messaging_consent WHERE tenant_id = ?1 AND channel = ?2 AND recipient = ?3 AND sender = ?4",
        )?
        .query_row(params![tenant_id, channel.as_str(), idx, sender], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

/// Appends a `delivery.status` event for a message (inside the caller's write).
#[allow(clippy::too_many_arguments)]
fn append_status(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    conversation_id: &str,
    message_id: &str,
    of_seq: i64,
    channel: Channel,
    state: MessageState,
    detail: serde_json::Map<String, serde_json::Value>,
    audit_actor: &str,
) -> Result<Appended> {
    let mut meta = detail;
    meta.insert("message_id".into(), message_id.into());
    meta.insert("of_seq".into(), of_seq.into());
    meta.insert("status".into(), state.as_str().into());
    let ev = NewEvent {
        channel,
        kind: EventKind::DeliveryStatus,
        actor: Actor::system(),
        body: None,
        meta,
        idempotency_key: None,
    };
    append_in_tx(ctx, keys, tenant_id, conversation_id, &ev, audit_actor)
}

fn set_state(
    ctx: &WriteCtx<'_>,
    id: &str,
    state: MessageState,
    provider: Option<&str>,
    provider_message_id: Option<&str>,
    error: Option<&str>,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE messages SET state = ?2, provider_id = COALESCE(?3, provider_id),
                provider_message_id = COALESCE(?4, provider_message_id),
                last_error = COALESCE(?5, last_error), updated_at = ?6 WHERE id = ?1",
        )?
        .execute(params![
            id,
            state.as_str(),
            provider,
            provider_message_id,
            error,
            now_micros()
        ])?;
    Ok(())
}

fn load_message(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<OutboundMessage> {
    load_message_with(conn, keys, tenant_id, id, "")
}

/// [`load_message`] for a write that changes the message from what it
/// read: the row stays locked (PostgreSQL) until the write commits.
fn lock_message(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<OutboundMessage> {
    load_message_with(conn, keys, tenant_id, id, conn.row_lock())
}

fn load_message_with(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
    lock: &str,
) -> Result<OutboundMessage> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND tenant_id = ?2{lock}"
    ))?
    .query_row(params![id, tenant_id], |r| Ok(message_row(keys, r)))
    .optional()?
    .ok_or(StoreError::NotFound("message"))?
}

/// Queues an outbound message inside the caller's write: the `message`
/// event and the outbox row, or (the recipient opted out) the audited
/// refusal, as `Ok(Err(reason))` so the caller commits the audit record.
/// [`Store::enqueue_message`] is this in a write of its own; reminders call
/// it inside the write that claims them.
pub(crate) fn enqueue_in_tx(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    conv_id: &str,
    new: &NewOutboundMessage,
    audit_actor: &str,
) -> Result<std::result::Result<(OutboundMessage, Appended), String>> {
    let id = uuid::Uuid::now_v7().to_string();
    let mut meta = new.meta.clone();
    meta.insert("direction".into(), "outbound".into());
    let ev = NewEvent {
        channel: new.channel,
        kind: EventKind::Message,
        actor: new.actor.clone(),
        body: new.body.clone(),
        meta,
        idempotency_key: new.idempotency_key.clone(),
    };
    // The retry of a request: the message its first try queued. The
    // conversation is locked first (PostgreSQL), so a retry racing its first
    // try on another node waits for it and then finds its message here.
    if let Some(key) = &new.idempotency_key {
        crate::conversations::load_head(ctx.conn, tenant_id, conv_id)?;
        let existing: Option<String> = ctx
                .conn
                .prepare_cached(
                    "SELECT m.id FROM events e JOIN messages m ON m.conversation_id = e.conversation_id AND m.event_seq = e.seq
                     WHERE e.conversation_id = ?1 AND e.idempotency_key = ?2",
                )?
                .query_row(params![conv_id, key], |r| r.get(0))
                .optional()?;
        if let Some(mid) = existing {
            let appended = append_in_tx(
                ctx,
                keys,
                tenant_id,
                conv_id,
                &ev_with_id(&ev, &mid),
                audit_actor,
            )?;
            let message = load_message(ctx.conn, keys, tenant_id, &mid)?;
            return Ok(Ok((message, appended)));
        }
    }
    if !new.compliance
        && suppressed(
            ctx.conn,
            keys,
            tenant_id,
            new.channel,
            new.from.as_deref(),
            &new.to,
        )?
    {
        ctx.audit(
            tenant_id,
            &AuditEntry::new(
                audit_actor,
                "message.suppressed",
                format!("conversation/{conv_id}"),
                Outcome::Denied,
            )
            .with_detail(
                serde_json::json!({ "channel": new.channel.as_str(), "sender": new.from }),
            ),
        )?;
        // Committed (the audit record stays), then refused.
        return Ok(Err(format!(
            "the patient opted out of {} from {}; nothing was sent (they can reply START to opt back in)",
            new.channel,
            new.from.as_deref().unwrap_or("this sender")
        )));
    }
    let appended = append_in_tx(
        ctx,
        keys,
        tenant_id,
        conv_id,
        &ev_with_id(&ev, &id),
        audit_actor,
    )?;
    let now = now_micros();
    let sealed = serde_json::to_vec(&SealedMessage {
        to: new.to.clone(),
        body: new.body.clone(),
        media_urls: new.media_urls.clone(),
        template: new.template.clone(),
    })
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let payload = keys
        .data
        .seal(&sealed, message_aad(tenant_id, &id).as_bytes());
    ctx.conn
            .prepare_cached(
                "INSERT INTO messages (id, tenant_id, conversation_id, event_seq, channel, recipient, sender, payload, state, attempts, next_attempt_at, created_at, updated_at, compliance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', 0, ?9, ?9, ?9, ?10)",
            )?
            .execute(params![
                id,
                tenant_id,
                conv_id,
                appended.event.seq,
                new.channel.as_str(),
                recipient_index(keys, new.channel, &new.to),
                new.from,
                payload,
                now,
                new.compliance
            ])?;
    let message = OutboundMessage {
        id,
        conversation_id: conv_id.to_owned(),
        event_seq: appended.event.seq,
        channel: new.channel,
        to: new.to.clone(),
        from: new.from.clone(),
        body: new.body.clone(),
        media_urls: new.media_urls.clone(),
        template: new.template.clone(),
        state: MessageState::Queued,
        provider_id: None,
        provider_message_id: None,
        attempts: 0,
        last_error: None,
        created_at: Timestamp(now),
        updated_at: Timestamp(now),
        attempt_log: Vec::new(),
        compliance: new.compliance,
    };
    Ok(Ok((message, appended)))
}

/// The sender a message from the tenant goes out from when nothing names
/// one: the first sender of the first provider (in failover order) that
/// carries `channel` (inside a read or write).
pub(crate) fn default_sender(
    conn: &crate::db::Conn,
    tenant_id: &str,
    channel: Channel,
) -> Result<Option<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT spec FROM messaging_providers WHERE tenant_id = ?1 ORDER BY priority, created_at",
    )?;
    let mut rows = stmt.query([tenant_id])?;
    let mut carried = false;
    while let Some(ref r) = rows.next()? {
        let stored: StoredSpec = serde_json::from_str(&r.get::<_, String>(0)?)
            .map_err(|e| StoreError::Integrity(format!("provider spec: {e}")))?;
        if stored.channels.contains(&channel) {
            carried = true;
            if let Some(s) = stored.senders.first() {
                return Ok(Some(s.clone()));
            }
        }
    }
    if carried {
        Ok(None)
    } else {
        Err(StoreError::Invalid(format!(
            "no messaging provider of this tenant carries {channel}"
        )))
    }
}

/// When `address` last wrote to the tenant on `channel` (inside a read or write).
pub(crate) fn last_inbound_in_tx(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    channel: Channel,
    address: &str,
) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT last_inbound_at FROM messaging_windows WHERE tenant_id = ?1 AND channel = ?2 AND address = ?3")?
        .query_row(params![tenant_id, channel.as_str(), recipient_index(keys, channel, address)], |r| r.get(0))
        .optional()?)
}

impl Store {
    pub async fn create_messaging_provider(
        &self,
        tenant_id: &str,
        new: NewMessagingProvider,
        actor: &str,
    ) -> Result<MessagingProvider> {
        let provider = MessagingProvider {
            id: uuid::Uuid::now_v7().to_string(),
            name: new.name,
            kind: new.kind,
            priority: new.priority,
            channels: new.channels,
            senders: new.senders,
            spec: new.spec,
            created_at: Timestamp(now_micros()),
        };
        let stored = serde_json::to_string(&StoredSpec {
            channels: provider.channels.clone(),
            senders: provider.senders.clone(),
            spec: provider.spec.clone(),
        })
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let secret =
            serde_json::to_vec(&new.secret).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (p, tenant_id, actor, store) = (
            provider.clone(),
            tenant_id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let taken = ctx
                .conn
                .query_row(
                    "SELECT 1 FROM messaging_providers WHERE tenant_id = ?1 AND name = ?2",
                    params![tenant_id, p.name],
                    |_| Ok(()),
                )
                .optional()?;
            let taken_msg = || format!("a messaging provider named `{}` already exists", p.name);
            if taken.is_some() {
                return Err(StoreError::Conflict(taken_msg()));
            }
            let sealed = keys.data.seal(&secret, secret_aad(&p.id).as_bytes());
            ctx.conn
                .execute(
                    "INSERT INTO messaging_providers (id, tenant_id, name, kind, priority, spec, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![p.id, tenant_id, p.name, p.kind.as_str(), p.priority, stored, sealed, p.created_at.0],
                )
                .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "messaging_provider.create", format!("messaging_provider/{}", p.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok(provider)
    }

    /// The tenant's chain, in failover order.
    pub async fn list_messaging_providers(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<MessagingProvider>> {
        Ok(self
            .messaging_chain(tenant_id)
            .await?
            .into_iter()
            .map(|p| p.provider)
            .collect())
    }

    /// The tenant's chain with credentials, in failover order (for the sender).
    pub async fn messaging_chain(&self, tenant_id: &str) -> Result<Vec<ProviderWithSecret>> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PROVIDER_COLUMNS} FROM messaging_providers WHERE tenant_id = ?1 ORDER BY priority, created_at"
            ))?;
            let mut rows = stmt.query([&t])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                out.push(provider_row(&store, c, r, true)?);
            }
            Ok(out)
        })
        .await
    }

    /// One provider by id, whatever its tenant: how a webhook URL (which names
    /// the provider) finds the credentials to check its signature.
    pub async fn messaging_provider(&self, provider_id: &str) -> Result<ProviderWithSecret> {
        let (id, store) = (provider_id.to_owned(), self.clone());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PROVIDER_COLUMNS} FROM messaging_providers WHERE id = ?1"
            ))?;
            let mut rows = stmt.query([&id])?;
            match rows.next()? {
                Some(ref r) => provider_row(&store, c, r, true),
                None => Err(StoreError::NotFound("messaging provider")),
            }
        })
        .await
    }

    pub async fn delete_messaging_provider(
        &self,
        tenant_id: &str,
        id: &str,
        actor: &str,
    ) -> Result<()> {
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let n = ctx.conn.execute(
                "DELETE FROM messaging_providers WHERE id = ?1 AND tenant_id = ?2",
                params![id, t],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("messaging provider"));
            }
            ctx.audit(
                &t,
                &AuditEntry::new(
                    actor,
                    "messaging_provider.delete",
                    format!("messaging_provider/{id}"),
                    Outcome::Ok,
                ),
            )?;
            Ok(())
        })
        .await
    }

    /// Queues an outbound message: the `message` event and the outbox row in
    /// one transaction. A repeated idempotency key returns the first message.
    /// A recipient who opted out from this sender gets nothing: the refusal
    /// is audited and reported as [`StoreError::Suppressed`].
    pub async fn enqueue_message(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        new: NewOutboundMessage,
        audit_actor: &str,
    ) -> Result<(OutboundMessage, Appended)> {
        if !matches!(new.channel, Channel::Sms | Channel::Whatsapp) {
            return Err(StoreError::Invalid(format!(
                "channel `{}` is not a messaging channel (sms or whatsapp)",
                new.channel
            )));
        }
        let (tenant_id, conv_id, audit_actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        let notify = self.0.messages_ready.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &tenant_id)?;
                enqueue_in_tx(ctx, &keys, &tenant_id, &conv_id, &new, &audit_actor)
            },
            move |r: &std::result::Result<(OutboundMessage, Appended), String>| {
                if let Ok((_, a)) = r
                    && a.created
                {
                    publish(&live, &a.also_written);
                    publish(&live, std::slice::from_ref(&a.event));
                    notify.notify_one();
                }
            },
        )
        .await?
        .map_err(StoreError::Suppressed)
    }

    /// Woken whenever a commit queues outbound messages.
    pub fn messages_ready(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.0.messages_ready.clone()
    }

    /// Claims up to `limit` due messages (`sending`, attempt counted,
    /// committed) for this sender. Messages whose recipient has opted out
    /// since they were queued end as `suppressed` here instead.
    pub async fn claim_due_messages(&self, limit: usize) -> Result<Vec<ClaimedMessage>> {
        let store = self.clone();
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let now = now_micros();
                // On PostgreSQL the claimed rows stay locked until this
                // write commits, and other nodes' claims pass them over.
                let due: Vec<(String, String)> = ctx
                    .conn
                    .prepare_cached(&format!(
                        "SELECT id, tenant_id FROM messages WHERE state = 'queued' AND next_attempt_at <= ?1
                         ORDER BY next_attempt_at, id LIMIT ?2{}",
                        ctx.conn.claim_lock()
                    ))?
                    .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<crate::db::Result<_>>()?;
                let mut claimed = Vec::with_capacity(due.len());
                let mut suppress = Vec::new();
                for (id, tenant_id) in due {
                    let keys = store.keys_for(ctx.conn, &tenant_id)?;
                    let mut message = load_message(ctx.conn, &keys, &tenant_id, &id)?;
                    if !message.compliance && suppressed(ctx.conn, &keys, &tenant_id, message.channel, message.from.as_deref(), &message.to)? {
                        suppress.push((tenant_id, keys, message));
                        continue;
                    }
                    ctx.conn
                        .prepare_cached("UPDATE messages SET state = 'sending', attempts = attempts + 1, updated_at = ?2, claimed_by = ?3 WHERE id = ?1")?
                        .execute(params![id, now, store.0.node])?;
                    message.attempts += 1;
                    message.state = MessageState::Sending;
                    let provider_hint = message.provider_id.clone();
                    claimed.push(ClaimedMessage { tenant_id, message, provider_hint });
                }
                // A suppression lands on its conversation's timeline, which
                // locks the conversation (PostgreSQL): every claim takes them
                // in one order, so two nodes' claims cannot deadlock.
                suppress.sort_by(|a, b| a.2.conversation_id.cmp(&b.2.conversation_id));
                let mut events = Vec::new();
                for (tenant_id, keys, message) in suppress {
                    let id = &message.id;
                    set_state(ctx, id, MessageState::Suppressed, None, None, Some("the patient opted out before it was sent"))?;
                    let mut detail = serde_json::Map::new();
                    detail.insert("reason".into(), "opted_out".into());
                    let a = append_status(ctx, &keys, &tenant_id, &message.conversation_id, id, message.event_seq, message.channel, MessageState::Suppressed, detail, "system:messaging")?;
                    events.extend(a.also_written);
                    events.push(a.event);
                }
                Ok((claimed, events))
            },
            move |(_, events): &(Vec<ClaimedMessage>, Vec<Event>)| publish(&live, events),
        )
        .await
        .map(|(claimed, _)| claimed)
    }

    /// When the next queued message is due (micros), if any.
    pub async fn next_message_due(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(next_attempt_at) FROM messages WHERE state = 'queued'",
                params![],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records what became of a claimed message. Terminal outcomes land on
    /// the timeline as `delivery.status` events of the message's event.
    pub async fn record_send_outcome(
        &self,
        tenant_id: &str,
        message_id: &str,
        outcome: SendOutcome,
    ) -> Result<OutboundMessage> {
        let (t, id, store) = (tenant_id.to_owned(), message_id.to_owned(), self.clone());
        let live = self.0.live.clone();
        let notify = self.0.messages_ready.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let current = lock_message(ctx.conn, &keys, &t, &id)?;
                let mut events = Vec::new();
                let mut detail = serde_json::Map::new();
                let state = match &outcome {
                    SendOutcome::Sent { provider_id, provider_message_id } => {
                        // A receipt can beat the API's answer: keep the furthest state.
                        let state = if current.state.accepts_receipt(MessageState::Sent) || current.state == MessageState::Sending {
                            MessageState::Sent
                        } else {
                            current.state
                        };
                        set_state(ctx, &id, state, Some(provider_id), Some(provider_message_id), None)?;
                        detail.insert("provider".into(), provider_id.as_str().into());
                        Some(MessageState::Sent)
                    }
                    SendOutcome::Retry { provider_id, at, error, failed } => {
                        let mut log = current.attempt_log.clone();
                        log.extend(failed.clone());
                        let log = serde_json::to_string(&log).map_err(|e| StoreError::Invalid(e.to_string()))?;
                        ctx.conn
                            .prepare_cached("UPDATE messages SET state = 'queued', provider_id = ?2, next_attempt_at = ?3, last_error = ?4, updated_at = ?5, attempt_log = ?6 WHERE id = ?1")?
                            .execute(params![id, provider_id, at, error, now_micros(), log])?;
                        None
                    }
                    SendOutcome::Failed { provider_id, error, failed } => {
                        if let Some(f) = failed {
                            let mut log = current.attempt_log.clone();
                            log.push(f.clone());
                            let log = serde_json::to_string(&log).map_err(|e| StoreError::Invalid(e.to_string()))?;
                            ctx.conn.prepare_cached("UPDATE messages SET attempt_log = ?2 WHERE id = ?1")?.execute(params![id, log])?;
                        }
                        set_state(ctx, &id, MessageState::Failed, provider_id.as_deref(), None, Some(error))?;
                        detail.insert("error".into(), error.as_str().into());
                        if let Some(p) = provider_id {
                            detail.insert("provider".into(), p.as_str().into());
                        }
                        Some(MessageState::Failed)
                    }
                    SendOutcome::Unconfirmed { provider_id, error } => {
                        set_state(ctx, &id, MessageState::Unconfirmed, Some(provider_id), None, Some(error))?;
                        detail.insert("error".into(), error.as_str().into());
                        detail.insert("provider".into(), provider_id.as_str().into());
                        Some(MessageState::Unconfirmed)
                    }
                };
                if let Some(state) = state {
                    let a = append_status(ctx, &keys, &t, &current.conversation_id, &id, current.event_seq, current.channel, state, detail, "system:messaging")?;
                    events.extend(a.also_written);
                    events.push(a.event);
                }
                Ok((load_message(ctx.conn, &keys, &t, &id)?, events))
            },
            move |(m, events): &(OutboundMessage, Vec<Event>)| {
                publish(&live, events);
                if m.state == MessageState::Queued {
                    notify.notify_one();
                }
            },
        )
        .await
        .map(|(m, _)| m)
    }

    /// A provider's receipt for one of our messages (found by our id, or by
    /// the provider's). Stale or repeated receipts change nothing and write
    /// nothing; returns the event written, if any.
    pub async fn apply_receipt(
        &self,
        tenant_id: &str,
        message: MessageRef,
        status: MessageState,
        detail: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Event>> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let id: String = match &message {
                    MessageRef::Ours(id) => id.clone(),
                    MessageRef::Provider { provider_id, provider_message_id } => ctx
                        .conn
                        .prepare_cached("SELECT id FROM messages WHERE provider_id = ?1 AND provider_message_id = ?2 AND tenant_id = ?3")?
                        .query_row(params![provider_id, provider_message_id, t], |r| r.get(0))
                        .optional()?
                        .ok_or(StoreError::NotFound("message"))?,
                };
                let current = lock_message(ctx.conn, &keys, &t, &id)?;
                if !current.state.accepts_receipt(status) {
                    return Ok(None);
                }
                let error = detail.get("error").and_then(|e| e.as_str()).map(str::to_owned);
                let provider_message_id = detail.get("provider_message_id").and_then(|e| e.as_str()).map(str::to_owned);
                set_state(ctx, &id, status, None, provider_message_id.as_deref(), error.as_deref())?;
                let a = append_status(ctx, &keys, &t, &current.conversation_id, &id, current.event_seq, current.channel, status, detail, "system:messaging")?;
                let mut events = a.also_written;
                events.push(a.event);
                Ok(Some(events))
            },
            move |events: &Option<Vec<Event>>| {
                if let Some(events) = events {
                    publish(&live, events);
                }
            },
        )
        .await
        .map(|events| events.and_then(|mut e| e.pop()))
    }

    /// At start: messages a crashed process had claimed become `unconfirmed`
    /// (see the module docs for why they are not re-sent). Returns how many.
    /// Messages claimed for sending and never settled: at start on SQLite
    /// (all of them were this process's), and on PostgreSQL this node's own
    /// (`StoreOptions::node`: it restarted) and any claimed longer than
    /// [`SENDING_LEASE`] ago (their node died; run it now and then).
    pub async fn recover_claimed_messages(&self) -> Result<usize> {
        let store = self.clone();
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                // SQLite: one node, so everything still `sending` at start
                // was this process's. PostgreSQL: other nodes may be sending
                // right now; only claims older than the lease were abandoned.
                let claimed_before = if ctx.conn.is_pg() {
                    now_micros() - SENDING_LEASE.as_micros() as i64
                } else {
                    i64::MAX
                };
                let me = store.0.node.clone();
                let stuck: Vec<(String, String)> = ctx
                    .conn
                    // By conversation: each gets a status event, which locks
                    // its conversation (PostgreSQL), in the order claims take them.
                    .prepare(&format!(
                        "SELECT id, tenant_id FROM messages WHERE state = 'sending' AND (updated_at < ?1 OR claimed_by = ?2) ORDER BY conversation_id, id{}",
                        ctx.conn.row_lock()
                    ))?
                    .query_map(params![claimed_before, me], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<crate::db::Result<_>>()?;
                let mut events = Vec::new();
                for (id, t) in &stuck {
                    let keys = store.keys_for(ctx.conn, t)?;
                    let m = load_message(ctx.conn, &keys, t, id)?;
                    let error =
                        "the server stopped while sending; the provider may or may not have it";
                    set_state(ctx, id, MessageState::Unconfirmed, None, None, Some(error))?;
                    let mut detail = serde_json::Map::new();
                    detail.insert("error".into(), error.into());
                    let a = append_status(
                        ctx,
                        &keys,
                        t,
                        &m.conversation_id,
                        id,
                        m.event_seq,
                        m.channel,
                        MessageState::Unconfirmed,
                        detail,
                        "system:messaging",
                    )?;
                    events.extend(a.also_written);
                    events.push(a.event);
                }
                Ok((stuck.len(), events))
            },
            move |(_, events): &(usize, Vec<Event>)| publish(&live, events),
        )
        .await
        .map(|(n, _)| n)
    }

    /// Which conversation a message belongs to (no PHI: for the grant check
    /// before the audited read).
    pub async fn message_conversation(&self, tenant_id: &str, id: &str) -> Result<String> {
        let (t, mid) = (tenant_id.to_owned(), id.to_owned());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT conversation_id FROM messages WHERE id = ?1 AND tenant_id = ?2",
            )?
            .query_row(params![mid, t], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::NotFound("message"))
        })
        .await
    }

    /// One outbound message, audited as a PHI read.
    pub async fn get_message(
        &self,
        tenant_id: &str,
        id: &str,
        audit_actor: &str,
    ) -> Result<OutboundMessage> {
        let (t, mid, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        let entry = AuditEntry::new(
            audit_actor,
            "message.read",
            format!("message/{id}"),
            Outcome::Ok,
        );
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            load_message(c, &keys, &t, &mid)
        })
        .await
    }

    /// Outbound messages of a conversation, oldest first, audited as a PHI read.
    pub async fn list_messages(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        audit_actor: &str,
    ) -> Result<Vec<OutboundMessage>> {
        let (t, cid, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        let entry = AuditEntry::new(
            audit_actor,
            "message.list",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        );
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND tenant_id = ?2 ORDER BY event_seq"
            ))?;
            let mut rows = stmt.query(params![cid, t])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                out.push(message_row(&keys, r)?);
            }
            Ok(out)
        })
        .await
    }

    /// Counts by state (for metrics and the bench).
    pub async fn message_counts(&self) -> Result<Vec<(String, i64)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM messages GROUP BY state")?;
            let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Stores an inbound message on `conversation_id`, once per provider
    /// message id (providers re-send webhooks), and opens the WhatsApp
    /// customer-service window of the sender.
    pub async fn record_inbound_message(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        inbound: InboundRecord,
        audit_actor: &str,
    ) -> Result<InboundOutcome> {
        let (t, conv_id, actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                // The conversation is locked first (PostgreSQL): the same
                // message delivered twice at once (a provider's retry reaching
                // another node) waits here, then finds the first one's row.
                crate::conversations::load_head(ctx.conn, &t, &conv_id)?;
                let seen: Option<(String, String, i64)> = ctx
                    .conn
                    .prepare_cached("SELECT tenant_id, conversation_id, event_seq FROM inbound_messages WHERE provider_id = ?1 AND provider_message_id = ?2")?
                    .query_row(params![inbound.provider_id, inbound.provider_message_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                if let Some((seen_tenant, seen_conv, seq)) = seen {
                    if seen_tenant != t {
                        return Err(StoreError::Conflict("provider message id already used by another tenant".into()));
                    }
                    let event = crate::events::load_event(ctx.conn, &keys, &t, &seen_conv, seq)?;
                    return Ok((InboundOutcome { event, created: false }, Vec::new()));
                }
                let mut meta = inbound.meta.clone();
                meta.insert("direction".into(), "inbound".into());
                meta.insert("from".into(), inbound.from.as_str().into());
                meta.insert("to".into(), inbound.to.as_str().into());
                meta.insert("provider".into(), inbound.provider_id.as_str().into());
                meta.insert("provider_message_id".into(), inbound.provider_message_id.as_str().into());
                let ev = NewEvent {
                    channel: inbound.channel,
                    kind: EventKind::Message,
                    actor: Actor { actor_type: continuum_core::ActorType::Patient, id: None },
                    body: inbound.body.clone(),
                    meta,
                    idempotency_key: None,
                };
                let a = append_in_tx(ctx, &keys, &t, &conv_id, &ev, &actor)?;
                let now = now_micros();
                ctx.conn
                    .prepare_cached("INSERT INTO inbound_messages (provider_id, provider_message_id, tenant_id, conversation_id, event_seq, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                    .execute(params![inbound.provider_id, inbound.provider_message_id, t, conv_id, a.event.seq, now])?;
                ctx.conn
                    .prepare_cached(
                        "INSERT INTO messaging_windows (tenant_id, channel, address, last_inbound_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (tenant_id, channel, address) DO UPDATE SET last_inbound_at = CASE WHEN excluded.last_inbound_at > messaging_windows.last_inbound_at
                            THEN excluded.last_inbound_at ELSE messaging_windows.last_inbound_at END",
                    )?
                    .execute(params![t, inbound.channel.as_str(), recipient_index(&keys, inbound.channel, &inbound.from), now])?;
                let mut events = a.also_written;
                events.push(a.event.clone());
                Ok((InboundOutcome { event: a.event, created: true }, events))
            },
            move |(_, events): &(InboundOutcome, Vec<Event>)| publish(&live, events),
        )
        .await
        .map(|(o, _)| o)
    }

    /// When `address` last wrote to the tenant on `channel` (micros): the
    /// WhatsApp customer-service window runs 24 hours from it.
    pub async fn last_inbound_at(
        &self,
        tenant_id: &str,
        channel: Channel,
        address: &str,
    ) -> Result<Option<i64>> {
        let (t, a, store) = (tenant_id.to_owned(), address.to_owned(), self.clone());
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            last_inbound_in_tx(c, &keys, &t, channel, &a)
        })
        .await
    }

    /// Records an opt-out or opt-in for (channel, sender, recipient) and puts
    /// it on the conversation's timeline (`opt_out` / `opt_in`), in one write.
    pub async fn set_consent(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        change: ConsentChange,
        audit_actor: &str,
    ) -> Result<Appended> {
        let (t, conv_id, actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                ctx.conn
                    .prepare_cached(
                        "INSERT INTO messaging_consent (tenant_id, channel, recipient, sender, opted_out, keyword, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (tenant_id, channel, recipient, sender) DO UPDATE SET opted_out = excluded.opted_out, keyword = excluded.keyword, updated_at = excluded.updated_at",
                    )?
                    .execute(params![
                        t,
                        change.channel.as_str(),
                        recipient_index(&keys, change.channel, &change.recipient),
                        change.sender,
                        change.opted_out,
                        change.source,
                        now_micros()
                    ])?;
                let mut meta = serde_json::Map::new();
                meta.insert("channel".into(), change.channel.as_str().into());
                meta.insert("sender".into(), change.sender.as_str().into());
                meta.insert("source".into(), change.source.as_str().into());
                let ev = NewEvent {
                    channel: change.channel,
                    kind: if change.opted_out { EventKind::OptOut } else { EventKind::OptIn },
                    actor: change.actor.clone(),
                    body: None,
                    meta,
                    idempotency_key: None,
                };
                append_in_tx(ctx, &keys, &t, &conv_id, &ev, &actor)
            },
            move |a: &Appended| {
                publish(&live, &a.also_written);
                publish(&live, std::slice::from_ref(&a.event));
            },
        )
        .await
    }

    /// Whether `recipient` opted out of `channel` from `sender`.
    pub async fn is_suppressed(
        &self,
        tenant_id: &str,
        channel: Channel,
        sender: &str,
        recipient: &str,
    ) -> Result<bool> {
        let (t, s, r, store) = (
            tenant_id.to_owned(),
            sender.to_owned(),
            recipient.to_owned(),
            self.clone(),
        );
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            suppressed(c, &keys, &t, channel, Some(&s), &r)
        })
        .await
    }
}

/// How a receipt names its message.
#[derive(Debug, Clone)]
pub enum MessageRef {
    /// Our id (carried in the status callback URL we gave the provider).
    Ours(String),
    /// The provider's id (Meta statuses, SMPP receipts).
    Provider {
        provider_id: String,
        provider_message_id: String,
    },
}

/// The message event with our message id in its meta.
fn ev_with_id(ev: &NewEvent, id: &str) -> NewEvent {
    let mut ev = ev.clone();
    ev.meta.insert("message_id".into(), id.into());
    ev
}
