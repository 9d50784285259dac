//! Secure chat on a conversation, the same on every live path: the signaling
//! WebSocket of a visit (`/v1/rtc`, once in a room), the conversation's chat
//! WebSocket (`/v1/conversations/{id}/chat`, the patient chat page between
//! visits), the timeline's SSE stream and REST.
//!
//! - **Messages** are `message` events on channel `chat` of the
//!   conversation, appended through the store (sealed at rest, audited,
//!   idempotent on the sender's `client_id`). Every path follows them from
//!   the store's commit-ordered broadcast ([`Follower`]), so every reader
//!   gets them in `seq` order, and a sender's own copy is its ack.
//! - **Typing** is ephemeral: never stored, rate-limited per person
//!   ([`ChatHub::typing`]), fanned out on the conversation's [`ChatHub`]
//!   channel.
//! - **Receipts** (delivered / read up to a `seq`) are stored per person
//!   (`chat_receipts`, monotonic) and their changes fanned out on the hub.
//!
//! The hub is per node and in memory, like the lobby: people chatting on
//! one conversation must reach the same node (as visits do).

use crate::state::AppState;
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Principal, Role};
use continuum_store::{ChatReceipt, Event, Store, StoreError, Timestamp};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

/// What the patient chat page shows: messages on these channels (chat, and
/// the texts exchanged by SMS and WhatsApp). Visits show `chat` only.
pub const CHAT_PAGE_CHANNELS: &[Channel] = &[Channel::Chat, Channel::Sms, Channel::Whatsapp];
/// What a visit's chat panel shows.
pub const VISIT_CHANNELS: &[Channel] = &[Channel::Chat];

/// One `typing: true` per person and conversation is passed on per this;
/// repeats in between are dropped (receivers keep the indicator for
/// [`TYPING_EXPIRES_SECS`]).
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);
/// No two typing notices of one person closer than this, whatever they say.
pub const TYPING_MIN_GAP: Duration = Duration::from_millis(300);
/// Receivers clear a typing indicator after this long without news (the
/// sender's `active: false` may never come: a closed tab).
pub const TYPING_EXPIRES_SECS: u64 = 6;
/// `client_id` (the message's idempotency key): 1..=128 printable ASCII.
pub const MAX_CLIENT_ID_LEN: usize = continuum_core::event::MAX_IDEMPOTENCY_KEY_LEN;

/// Who wrote a chat message.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Sender {
    /// The writer's identity (absent for the clinic's system messages).
    pub identity: Option<String>,
    /// Their display name when they wrote (from their access token).
    pub name: Option<String>,
    pub role: Option<Role>,
    /// `patient`, `staff`, `bot` or `system`.
    #[serde(rename = "type")]
    pub actor_type: ActorType,
}

/// A chat message: a `message` event of the conversation's timeline, as the
/// chat shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatMessage {
    /// The event's place in the timeline: messages are ordered by it.
    pub seq: i64,
    pub conversation: String,
    /// `chat`, or `sms` / `whatsapp` for texts shown in the patient's chat.
    pub channel: Channel,
    pub from: Sender,
    pub body: String,
    pub at: Timestamp,
    /// The sender's idempotency key for it (the event's `idempotency_key`).
    pub client_id: Option<String>,
}

impl ChatMessage {
    /// The event as a chat message, if it is one on `channels`.
    pub fn from_event(e: &Event, channels: &[Channel]) -> Option<ChatMessage> {
        if e.kind != EventKind::Message || !channels.contains(&e.channel) {
            return None;
        }
        let sender = e.meta.get("sender");
        let text = |k: &str| {
            sender
                .and_then(|s| s.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let role = text("role")
            .and_then(|r| r.parse().ok())
            .or((e.actor.actor_type == ActorType::Patient).then_some(Role::Patient));
        Some(ChatMessage {
            seq: e.seq,
            conversation: e.conversation_id.clone(),
            channel: e.channel,
            from: Sender {
                identity: e.actor.id.clone(),
                name: text("name"),
                role,
                actor_type: e.actor.actor_type,
            },
            body: e.body.clone()?,
            at: e.at,
            client_id: e.idempotency_key.clone(),
        })
    }
}

/// Someone is (or stopped) typing in a conversation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Typing {
    pub conversation: String,
    pub identity: String,
    pub name: Option<String>,
    pub role: Role,
    pub active: bool,
    /// Clear the indicator after this many seconds without news.
    pub expires_in: u64,
}

/// A receipt change, as every live path announces it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptNotice {
    pub conversation: String,
    #[serde(flatten)]
    pub receipt: ChatReceipt,
}

/// What a conversation's hub carries (besides messages, which come from
/// the store).
#[derive(Debug, Clone)]
pub enum Notice {
    Typing(Typing),
    Receipt(ReceiptNotice),
}

/// A notice and the connection it came from (0: REST), which does not
/// hear its own typing back.
#[derive(Debug, Clone)]
pub struct HubMsg {
    pub origin: u64,
    pub notice: Notice,
}

type ConvKey = (String, String);
/// (tenant, conversation, identity).
type PersonKey = (String, String, String);

/// Per-conversation fan-out of typing and receipts on this node.
#[derive(Default)]
pub struct ChatHub {
    convs: Mutex<HashMap<ConvKey, broadcast::Sender<Arc<HubMsg>>>>,
    /// Per (tenant, conversation, identity): when a typing notice was last
    /// passed on, and what it said.
    typing: Mutex<HashMap<PersonKey, (Instant, bool)>>,
    next_connection: AtomicU64,
}

impl ChatHub {
    /// A number for a live connection (never 0, which is REST's).
    pub fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Listen to a conversation's typing and receipts.
    pub fn subscribe(
        &self,
        tenant_id: &str,
        conversation: &str,
    ) -> broadcast::Receiver<Arc<HubMsg>> {
        let mut convs = self.convs.lock();
        if convs.len() > 1024 {
            convs.retain(|_, tx| tx.receiver_count() > 0);
        }
        convs
            .entry((tenant_id.to_owned(), conversation.to_owned()))
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Tells everyone listening to the conversation.
    pub fn publish(&self, tenant_id: &str, conversation: &str, msg: HubMsg) {
        let key = (tenant_id.to_owned(), conversation.to_owned());
        let mut convs = self.convs.lock();
        if let Some(tx) = convs.get(&key)
            && tx.send(Arc::new(msg)).is_err()
        {
            convs.remove(&key);
        }
    }

    /// Passes a typing notice on, unless it repeats one sent moments ago
    /// (see [`TYPING_INTERVAL`], [`TYPING_MIN_GAP`]); returns whether it did.
    pub fn typing(&self, who: &Person, conversation: &str, active: bool, origin: u64) -> bool {
        let now = Instant::now();
        {
            let mut typing = self.typing.lock();
            if typing.len() > 4096 {
                typing.retain(|_, (at, _)| now.duration_since(*at) < Duration::from_secs(60));
            }
            let key = (
                who.tenant_id.clone(),
                conversation.to_owned(),
                who.identity.clone(),
            );
            let last = typing.get(&key).copied();
            let pass = match last {
                None => active,
                Some((at, was)) => {
                    let gap = now.duration_since(at);
                    gap >= TYPING_MIN_GAP && (was != active || (active && gap >= TYPING_INTERVAL))
                }
            };
            if !pass {
                return false;
            }
            typing.insert(key, (now, active));
        }
        self.publish(
            &who.tenant_id,
            conversation,
            HubMsg {
                origin,
                notice: Notice::Typing(Typing {
                    conversation: conversation.to_owned(),
                    identity: who.identity.clone(),
                    name: who.name.clone(),
                    role: who.role,
                    active,
                    expires_in: TYPING_EXPIRES_SECS,
                }),
            },
        );
        true
    }

    /// A message from `identity` ends their typing (no `active: false` needed).
    fn sent(&self, who: &Person, conversation: &str) {
        self.typing.lock().remove(&(
            who.tenant_id.clone(),
            conversation.to_owned(),
            who.identity.clone(),
        ));
    }
}

/// The person behind an access token, as chat needs them.
#[derive(Debug, Clone)]
pub struct Person {
    pub tenant_id: String,
    pub identity: String,
    pub name: Option<String>,
    pub role: Role,
    pub audit_actor: String,
    pub principal: Principal,
}

impl Person {
    /// The token's holder; `None` for an API key (chat is between people).
    pub fn of(p: &Principal) -> Option<Person> {
        match p {
            Principal::Token {
                tenant_id,
                identity,
                role,
                name,
                ..
            } => Some(Person {
                tenant_id: tenant_id.clone(),
                identity: identity.clone(),
                name: name.clone(),
                role: *role,
                audit_actor: p.audit_actor(),
                principal: p.clone(),
            }),
            Principal::ApiKey { .. } => None,
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            actor_type: if self.role.is_staff() {
                ActorType::Staff
            } else {
                ActorType::Patient
            },
            id: Some(self.identity.clone()),
        }
    }
}

/// Why a chat message was not stored: the code and message of the refusal.
#[derive(Debug)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

impl Refused {
    fn new(code: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
        }
    }
}

/// Checks a chat message's fields (the messages name the field).
pub fn check_message(body: &str, client_id: &str) -> Result<(), Refused> {
    if body.trim().is_empty() {
        return Err(Refused::new("bad_message", "chat.body must not be empty"));
    }
    let limit = continuum_core::event::MAX_BODY_BYTES;
    if body.len() > limit {
        return Err(Refused::new(
            "bad_message",
            format!("chat.body is {} bytes; the limit is {limit}", body.len()),
        ));
    }
    if body.contains('\0') {
        return Err(Refused::new(
            "bad_message",
            "chat.body must not contain NUL characters (U+0000)",
        ));
    }
    if client_id.is_empty()
        || client_id.len() > MAX_CLIENT_ID_LEN
        || !client_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Refused::new(
            "bad_message",
            format!(
                "chat.client_id must be 1..={MAX_CLIENT_ID_LEN} printable ASCII characters (a random UUID per message)"
            ),
        ));
    }
    Ok(())
}

/// Stores a chat message from `who` on the conversation (its followers,
/// the sender's included, get it from the store's broadcast). Returns the
/// stored event and whether this call created it (false: `client_id` was
/// seen before, the original is returned: send it to the sender as its ack).
pub async fn send(
    s: &AppState,
    who: &Person,
    conversation: &str,
    body: String,
    client_id: String,
) -> Result<(Event, bool), Refused> {
    check_message(&body, &client_id)?;
    if !who.principal.may(continuum_core::Permission::AppendEvent) {
        return Err(Refused::new(
            "forbidden",
            "this credential may not send messages",
        ));
    }
    let mut sender = serde_json::Map::new();
    if let Some(name) = &who.name {
        sender.insert("name".into(), name.clone().into());
    }
    sender.insert("role".into(), who.role.as_str().into());
    let mut meta = serde_json::Map::new();
    meta.insert("sender".into(), sender.into());
    let ev = NewEvent {
        channel: Channel::Chat,
        kind: EventKind::Message,
        actor: who.actor(),
        body: Some(body),
        meta,
        idempotency_key: Some(client_id),
    };
    match s
        .store
        .append_event(&who.tenant_id, conversation, ev, &who.audit_actor)
        .await
    {
        Ok(a) => {
            s.chat.sent(who, conversation);
            // A patient writing on a conversation that waits in a queue
            // (nobody's yet) is work for that queue's agents.
            if a.created && who.role == continuum_core::Role::Patient {
                let (queues, tenant, conv) = (
                    s.queues.clone(),
                    who.tenant_id.clone(),
                    conversation.to_owned(),
                );
                tokio::spawn(
                    async move { queues.route_conversation(&tenant, &conv, "chat").await },
                );
            }
            Ok((a.event, a.created))
        }
        Err(StoreError::IdempotencyMismatch(_)) => Err(Refused::new(
            "client_id_reused",
            "chat.client_id was already used for a different message in this conversation: use a new random id per message",
        )),
        Err(StoreError::NotFound(_)) => Err(Refused::new("not_found", "conversation not found")),
        Err(e @ (StoreError::InvalidEvent(_) | StoreError::Invalid(_))) => {
            Err(Refused::new("bad_message", e.to_string()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "a chat message could not be stored");
            Err(Refused::new(
                "send_failed",
                "the message could not be stored; send it again (same client_id)",
            ))
        }
    }
}

/// Records `who`'s receipt and, when a marker moved, tells the conversation.
pub async fn receipt(
    s: &AppState,
    who: &Person,
    conversation: &str,
    delivered: Option<i64>,
    read: Option<i64>,
    origin: u64,
) -> Result<ChatReceipt, StoreError> {
    let u = s
        .store
        .mark_chat_receipt(
            &who.tenant_id,
            conversation,
            &who.identity,
            who.role,
            delivered,
            read,
        )
        .await?;
    if u.changed {
        s.chat.publish(
            &who.tenant_id,
            conversation,
            HubMsg {
                origin,
                notice: Notice::Receipt(ReceiptNotice {
                    conversation: conversation.to_owned(),
                    receipt: u.receipt.clone(),
                }),
            },
        );
    }
    Ok(u.receipt)
}

/// Follows a conversation's chat messages on `channels` in `seq` order:
/// from the store's commit-ordered broadcast, re-reading the store on a gap
/// or when this follower fell behind, so nothing is lost or repeated.
/// Cancel-safe: what was read from the store waits in `pending`.
pub struct Follower {
    store: Store,
    tenant_id: String,
    conversation: String,
    channels: &'static [Channel],
    /// The last `seq` handed on (or skipped as not chat).
    pub last: i64,
    live: broadcast::Receiver<Arc<Event>>,
    resyncs: tokio::sync::watch::Receiver<u64>,
    pending: std::collections::VecDeque<ChatMessage>,
}

impl Follower {
    /// Subscribes now: call before reading the conversation's `last_seq`,
    /// then set [`Follower::last`] to it.
    pub fn new(
        store: &Store,
        tenant_id: &str,
        conversation: &str,
        channels: &'static [Channel],
    ) -> Follower {
        Follower {
            live: store.subscribe_cluster(),
            resyncs: store.resyncs(),
            store: store.clone(),
            tenant_id: tenant_id.to_owned(),
            conversation: conversation.to_owned(),
            channels,
            last: 0,
            pending: Default::default(),
        }
    }

    /// The conversation this follower follows.
    pub fn conversation(&self) -> &str {
        &self.conversation
    }

    /// Reads every event after `last` from the store into `pending` (no
    /// audit: the opening of what follows was audited).
    async fn read_store(&mut self) -> Result<(), StoreError> {
        loop {
            let page = self
                .store
                .stream_page(&self.tenant_id, &self.conversation, self.last, 500)
                .await?;
            let n = page.len();
            for e in page {
                self.last = e.seq;
                self.pending
                    .extend(ChatMessage::from_event(&e, self.channels));
            }
            if n < 500 {
                return Ok(());
            }
        }
    }

    /// Every chat message after `last` in the store, now.
    pub async fn catch_up(&mut self) -> Result<Vec<ChatMessage>, StoreError> {
        self.read_store().await?;
        Ok(self.pending.drain(..).collect())
    }

    /// The next chat messages, in `seq` order (waits for them).
    pub async fn next(&mut self) -> Result<Vec<ChatMessage>, StoreError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(self.pending.drain(..).collect());
            }
            let got = tokio::select! {
                got = self.live.recv() => got,
                // Live delivery may have missed events (the bus was away).
                _ = self.resyncs.changed() => {
                    self.read_store().await?;
                    continue;
                }
            };
            match got {
                Ok(e)
                    if e.tenant_id == self.tenant_id && e.conversation_id == self.conversation =>
                {
                    if e.seq <= self.last {
                        continue;
                    }
                    if e.seq > self.last + 1 {
                        self.read_store().await?;
                        continue;
                    }
                    self.last = e.seq;
                    if let Some(m) = ChatMessage::from_event(&e, self.channels) {
                        return Ok(vec![m]);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.read_store().await?,
                Err(RecvError::Closed) => return std::future::pending().await,
            }
        }
    }
}

/// A per-connection budget for chat messages: `per_second` with bursts of
/// four times that (0: unlimited), so a burst of a few hundred passes and a
/// flood does not.
pub struct SendBudget {
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl SendBudget {
    pub fn new(per_second: u32) -> SendBudget {
        let limiter = std::num::NonZeroU32::new(per_second).map(|n| {
            let burst = n.saturating_mul(std::num::NonZeroU32::new(4).expect("4 is not 0"));
            governor::RateLimiter::direct(governor::Quota::per_second(n).allow_burst(burst))
        });
        SendBudget { limiter }
    }

    /// Spends one message; false when the budget is spent.
    pub fn spend(&self) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }
}

/// What a client says about chat, on either WebSocket.
#[derive(Debug)]
pub enum ChatIn {
    Message { body: String, client_id: String },
    Typing { active: bool },
    Delivered(i64),
    Read(i64),
}

/// One live connection's part in a conversation's chat: the messages it
/// follows, the typing and receipts it hears, what it may send.
pub struct ChatLink {
    pub person: Person,
    follower: Follower,
    hub: broadcast::Receiver<Arc<HubMsg>>,
    /// The hub fell behind: send everyone's receipts anew.
    resync: bool,
    origin: u64,
    budget: SendBudget,
    /// The highest (delivered, read) this connection sent, to skip repeats.
    marks: (i64, i64),
}

impl ChatLink {
    /// Starts following the conversation as `person` (audited as
    /// `chat.open`); returns the link and the conversation's last `seq`
    /// (the link hands on what comes after it).
    pub async fn open(
        s: &AppState,
        person: Person,
        conversation: &str,
        channels: &'static [Channel],
    ) -> Result<(ChatLink, i64), StoreError> {
        let mut follower = Follower::new(&s.store, &person.tenant_id, conversation, channels);
        let hub = s.chat.subscribe(&person.tenant_id, conversation);
        let last = s
            .store
            .open_chat(&person.tenant_id, conversation, &person.audit_actor)
            .await?;
        follower.last = last;
        let per_second = s.config.security.requests_per_second_per_token;
        Ok((
            ChatLink {
                person,
                follower,
                hub,
                resync: false,
                origin: s.chat.connection_id(),
                budget: SendBudget::new(per_second),
                marks: (0, 0),
            },
            last,
        ))
    }

    pub fn conversation(&self) -> &str {
        self.follower.conversation()
    }

    /// Hands on messages from `after` (not `last_seq`) onwards: a client
    /// that reconnects says where it was.
    pub fn rewind(&mut self, after: i64) {
        self.follower.last = after.max(0).min(self.follower.last);
    }

    /// Moves the follower past messages the caller handed on itself.
    pub fn skip_to(&mut self, seq: i64) {
        self.follower.last = self.follower.last.max(seq);
    }

    /// Catches up from the store right now (after [`ChatLink::rewind`]).
    pub async fn catch_up(&mut self) -> Result<Vec<ChatMessage>, StoreError> {
        self.follower.catch_up().await
    }

    /// Everyone's receipts, as the `chat_receipts` message.
    pub async fn receipts(&self, s: &AppState) -> Option<String> {
        match s
            .store
            .chat_receipts(&self.person.tenant_id, self.conversation())
            .await
        {
            Ok(receipts) => Some(
                crate::api::signal::ServerMsg::ChatReceipts {
                    conversation: self.conversation().to_owned(),
                    receipts,
                }
                .text(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not read chat receipts");
                None
            }
        }
    }

    /// The next things to tell the client: messages in `seq` order, typing
    /// and receipts of others. Cancel-safe (for `select!`).
    pub async fn next(&mut self, s: &AppState) -> Vec<String> {
        use crate::api::signal::ServerMsg;
        if self.resync {
            let receipts = self.receipts(s).await;
            self.resync = false;
            return receipts.into_iter().collect();
        }
        tokio::select! {
            got = self.follower.next() => match got {
                Ok(messages) => messages.into_iter().map(|message| ServerMsg::Chat { message }.text()).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "chat could not read the timeline");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Vec::new()
                }
            },
            got = self.hub.recv() => match got {
                Ok(m) if m.origin == self.origin => Vec::new(),
                Ok(m) => vec![match &m.notice {
                    Notice::Typing(t) => ServerMsg::Typing { typing: t.clone() }.text(),
                    Notice::Receipt(r) => ServerMsg::ChatReceipt { receipt: r.clone() }.text(),
                }],
                Err(RecvError::Lagged(_)) => {
                    self.resync = true;
                    Vec::new()
                }
                Err(RecvError::Closed) => std::future::pending().await,
            },
        }
    }

    /// A client's chat message: the replies for this connection (refusals,
    /// the ack of a repeat; a new message's ack comes through [`ChatLink::next`]).
    pub async fn handle(&mut self, s: &AppState, msg: ChatIn) -> Option<String> {
        use crate::api::signal::ServerMsg;
        let conversation = self.conversation().to_owned();
        match msg {
            ChatIn::Message { body, client_id } => {
                if !self.budget.spend() {
                    return Some(
                        ServerMsg::ChatError {
                            code: "rate_limited",
                            message: "too many messages at once: send this one again in a moment (same client_id)".into(),
                            client_id: Some(client_id),
                        }
                        .text(),
                    );
                }
                match send(s, &self.person, &conversation, body, client_id.clone()).await {
                    Ok((_, true)) => None,
                    // A resend (after a reconnect) of what is stored: its ack again.
                    Ok((event, false)) => ChatMessage::from_event(&event, &[event.channel])
                        .map(|message| ServerMsg::Chat { message }.text()),
                    Err(r) => Some(
                        ServerMsg::ChatError {
                            code: r.code,
                            message: r.message,
                            client_id: Some(client_id),
                        }
                        .text(),
                    ),
                }
            }
            ChatIn::Typing { active } => {
                if !self
                    .person
                    .principal
                    .may(continuum_core::Permission::AppendEvent)
                {
                    return Some(
                        ServerMsg::error("forbidden", "this credential may not send messages")
                            .text(),
                    );
                }
                s.chat
                    .typing(&self.person, &conversation, active, self.origin);
                None
            }
            ChatIn::Delivered(seq) | ChatIn::Read(seq) if seq < 0 => Some(
                ServerMsg::error("bad_message", "seq must be 0 or more (a timeline seq)").text(),
            ),
            ChatIn::Delivered(seq) if seq <= self.marks.0 => None,
            ChatIn::Read(seq) if seq <= self.marks.1 => None,
            ChatIn::Delivered(seq) | ChatIn::Read(seq) => {
                let read = matches!(msg, ChatIn::Read(_));
                let (d, r) = if read {
                    (None, Some(seq))
                } else {
                    (Some(seq), None)
                };
                match receipt(s, &self.person, &conversation, d, r, self.origin).await {
                    Ok(now) => {
                        self.marks = (now.delivered_seq, now.read_seq);
                        None
                    }
                    Err(StoreError::Invalid(m)) => Some(
                        ServerMsg::error(
                            "bad_message",
                            m.replace(
                                if read { "read_seq" } else { "delivered_seq" },
                                if read {
                                    "chat_read.seq"
                                } else {
                                    "chat_delivered.seq"
                                },
                            ),
                        )
                        .text(),
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "a chat receipt could not be stored");
                        Some(
                            ServerMsg::error(
                                "receipt_failed",
                                "the receipt could not be stored; send it again",
                            )
                            .text(),
                        )
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_core::{Grants, TokenMeta};

    fn person(identity: &str) -> Person {
        let principal = Principal::Token {
            tenant_id: "t".into(),
            identity: identity.into(),
            role: Role::Patient,
            grants: Grants::default(),
            region: None,
            name: Some("Ana".into()),
            token: TokenMeta {
                jti: "j".into(),
                expires_at: 0,
                key_id: None,
            },
        };
        Person::of(&principal).unwrap()
    }

    #[test]
    fn typing_is_passed_on_when_it_changes_and_at_most_every_interval() {
        let hub = ChatHub::default();
        let mut rx = hub.subscribe("t", "c");
        let ana = person("ana");
        assert!(!hub.typing(&ana, "c", false, 1), "not typing to begin with");
        assert!(hub.typing(&ana, "c", true, 1));
        assert!(!hub.typing(&ana, "c", true, 1), "a repeat moments later");
        assert!(
            !hub.typing(&ana, "c", false, 1),
            "closer than the minimum gap"
        );
        assert!(matches!(
            rx.try_recv().map(|m| m.notice.clone()),
            Ok(Notice::Typing(Typing { active: true, .. }))
        ));
        assert!(rx.try_recv().is_err());
        // Someone else is limited on their own.
        assert!(hub.typing(&person("bo"), "c", true, 2));
        // Sending a message ends typing: the next keystroke is news again.
        hub.sent(&ana, "c");
        assert!(hub.typing(&ana, "c", true, 1));
    }

    #[test]
    fn a_budget_allows_a_burst_and_then_refuses() {
        let b = SendBudget::new(5);
        assert!((0..20).all(|_| b.spend()));
        assert!(!b.spend());
        assert!((0..1000).all(|_| SendBudget::new(0).spend()));
    }

    #[test]
    fn message_fields_are_checked_by_name() {
        assert!(check_message("hi", "c1").is_ok());
        let e = check_message("  ", "c1").unwrap_err();
        assert!(e.message.contains("chat.body"), "{}", e.message);
        let e = check_message("hi", "").unwrap_err();
        assert!(e.message.contains("chat.client_id"), "{}", e.message);
        let e = check_message("hi", "with space").unwrap_err();
        assert!(e.message.contains("chat.client_id"), "{}", e.message);
        let big = "x".repeat(continuum_core::event::MAX_BODY_BYTES + 1);
        let e = check_message(&big, "c1").unwrap_err();
        assert!(e.message.contains("limit is 65536"), "{}", e.message);
    }
}
