//! Chat on a conversation (see `crate::chat`): the chat WebSocket for
//! clients outside a visit (the patient chat page), and REST for clients
//! without a WebSocket: the chat view of the timeline, receipts and typing.
//! Sending over REST is `POST /v1/conversations/{id}/events` (channel
//! `chat`, kind `message`).

use super::signal::{PROTOCOL_VERSION, ServerMsg};
use crate::auth::Auth;
use crate::chat::{self, CHAT_PAGE_CHANNELS, ChatIn, ChatLink, ChatMessage, Person};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use continuum_core::{Permission, Principal};
use continuum_store::ChatReceipt;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The person behind the credential, or 403 for an API key: receipts and
/// typing are a person's (the message names what to use instead).
async fn person(s: &AppState, p: &Principal, what: &str, object: &str) -> ApiResult<Person> {
    match Person::of(p) {
        Some(person) => Ok(person),
        None => {
            s.audit_denial(
                p.tenant_id(),
                &p.audit_actor(),
                what,
                object,
                "an API key is nobody",
            )
            .await;
            Err(ApiError::forbidden(format!(
                "{what} belongs to a person: send it with that person's access token (POST /v1/tokens), not an API key"
            )))
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    /// Messages before this `seq` (default: the newest).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatPage {
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    /// Older messages exist: ask again with `before` = the first `seq` here.
    pub earlier: bool,
}

/// The conversation's chat: its `message` events on channels `chat`, `sms`
/// and `whatsapp` (never internal notes), the newest page first.
#[utoipa::path(get, path = "/v1/conversations/{id}/chat/messages", tag = "chat", operation_id = "listChatMessages",
    params(("id" = String, Path, description = "the conversation's id"), MessagesQuery),
    responses((status = 200, body = ChatPage, description = "the newest messages before `before`, oldest first"),
        (status = 403, body = ErrorBody, description = "this role may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation in this tenant or the token's grants"),
        (status = 422, body = ErrorBody, description = "`limit` or `before` out of range (the message names it)")),
    security(("bearer" = [])))]
pub async fn messages(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Json<ChatPage>> {
    s.require(&p, Permission::ReadTimeline, &format!("conversation/{id}"))
        .await?;
    s.require_conversation(&p, &id).await?;
    let limit = super::limit(q.limit, 50, 200)?;
    if q.before.is_some_and(|b| b < 1) {
        return Err(ApiError::invalid(
            "before must be 1 or more (a timeline seq)",
        ));
    }
    let mut events = s
        .store
        .chat_history(
            p.tenant_id(),
            &id,
            CHAT_PAGE_CHANNELS,
            q.before,
            limit + 1,
            &p.audit_actor(),
        )
        .await?;
    let earlier = events.len() > limit;
    if earlier {
        events.remove(0);
    }
    let messages = events
        .iter()
        .filter_map(|e| ChatMessage::from_event(e, CHAT_PAGE_CHANNELS))
        .collect();
    Ok(Json(ChatPage { messages, earlier }))
}

#[derive(Serialize, ToSchema)]
pub struct ReceiptList {
    /// One per person who sent a receipt, by identity.
    pub receipts: Vec<ChatReceipt>,
}

/// How far each person of the conversation has had it delivered and read.
#[utoipa::path(get, path = "/v1/conversations/{id}/chat/receipts", tag = "chat", operation_id = "listChatReceipts",
    params(("id" = String, Path, description = "the conversation's id")),
    responses((status = 200, body = ReceiptList, description = "each person's delivered and read markers (timeline seqs)"),
        (status = 403, body = ErrorBody, description = "this role may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation in this tenant or the token's grants")),
    security(("bearer" = [])))]
pub async fn receipts(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ReceiptList>> {
    let object = format!("conversation/{id}");
    s.require(&p, Permission::ReadTimeline, &object).await?;
    s.require_conversation(&p, &id).await?;
    match s.store.chat_receipts(p.tenant_id(), &id).await {
        Ok(receipts) => Ok(Json(ReceiptList { receipts })),
        Err(e) => Err(s.audit_failure(&p, "chat.receipts", &object, e).await),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRequest {
    /// Everything up to this timeline `seq` reached your device.
    #[schema(minimum = 0)]
    pub delivered_seq: Option<i64>,
    /// Everything up to this timeline `seq` was shown to you (implies delivered).
    #[schema(minimum = 0)]
    pub read_seq: Option<i64>,
}

/// Mark the conversation delivered and/or read up to a `seq`, as the
/// token's holder. Markers only move forward (an older value changes
/// nothing); reading implies delivery. Changes are announced live (chat
/// WebSockets: `chat_receipt`; the events stream: `event: receipt`).
#[utoipa::path(post, path = "/v1/conversations/{id}/chat/receipts", tag = "chat", operation_id = "markChatReceipt",
    params(("id" = String, Path, description = "the conversation's id")), request_body = ReceiptRequest,
    responses((status = 200, body = ChatReceipt, description = "your markers now"),
        (status = 403, body = ErrorBody, description = "an API key (receipts are a person's: use their access token), or a role that may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation in this tenant or the token's grants"),
        (status = 422, body = ErrorBody, description = "neither field given, or a seq below 0 or past the conversation's last event (the message names the field)")),
    security(("bearer" = [])))]
pub async fn mark_receipt(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<ReceiptRequest>,
) -> ApiResult<Json<ChatReceipt>> {
    let object = format!("conversation/{id}");
    let who = person(&s, &p, "a chat receipt", &object).await?;
    s.require(&p, Permission::ReadTimeline, &object).await?;
    s.require_conversation(&p, &id).await?;
    if req.delivered_seq.is_none() && req.read_seq.is_none() {
        return Err(ApiError::invalid(
            "give delivered_seq, read_seq or both (timeline seqs)",
        ));
    }
    match chat::receipt(&s, &who, &id, req.delivered_seq, req.read_seq, 0).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(s.audit_failure(&p, "chat.receipt", &object, e).await),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TypingRequest {
    /// Typing now (`true`), or stopped (`false`).
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TypingResult {
    /// Whether it was passed on (a repeat within 2 s, or within 300 ms of
    /// the last notice, is dropped: nothing to resend).
    pub forwarded: bool,
    /// Receivers clear the indicator after this many seconds without news.
    pub expires_in: u64,
}

/// Tell the conversation you are typing (or stopped). Ephemeral: never
/// stored; passed on to the chat WebSockets (`typing`) and the events
/// stream (`event: typing`), at most once per 2 s per person while typing.
#[utoipa::path(post, path = "/v1/conversations/{id}/chat/typing", tag = "chat", operation_id = "sendTyping",
    params(("id" = String, Path, description = "the conversation's id")), request_body = TypingRequest,
    responses((status = 202, body = TypingResult, description = "taken (passed on, or dropped as a repeat)"),
        (status = 403, body = ErrorBody, description = "an API key (typing is a person's: use their access token), or a role that may not write to the conversation"),
        (status = 404, body = ErrorBody, description = "no such conversation in this tenant or the token's grants")),
    security(("bearer" = [])))]
pub async fn typing(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<TypingRequest>,
) -> ApiResult<(StatusCode, Json<TypingResult>)> {
    let object = format!("conversation/{id}");
    let who = person(&s, &p, "typing", &object).await?;
    s.require(&p, Permission::AppendEvent, &object).await?;
    s.require_conversation(&p, &id).await?;
    // The conversation must be the tenant's (a typing notice for another
    // tenant's id must not reach anyone, and must answer like a missing one).
    if let Err(e) = s.store.chat_receipts(p.tenant_id(), &id).await {
        return Err(s.audit_failure(&p, "chat.typing", &object, e).await);
    }
    let forwarded = s.chat.typing(&who, &id, req.active, 0);
    Ok((
        StatusCode::ACCEPTED,
        Json(TypingResult {
            forwarded,
            expires_in: chat::TYPING_EXPIRES_SECS,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
pub struct ChatSocketQuery {
    /// The access token (browsers cannot set headers on a WebSocket); or
    /// `Authorization: Bearer`. Never an API key.
    pub token: Option<String>,
    /// Replay every message after this `seq` (a reconnecting client says
    /// where it was); without it, the newest `history` messages.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// How many recent messages to replay without `after` (default 50).
    #[param(minimum = 0, maximum = 200)]
    pub history: Option<usize>,
}

/// Chat WebSocket of one conversation, for clients outside a visit (the
/// patient chat page): the same `chat`, `typing` and receipt messages as
/// the signaling WebSocket (docs/signaling.md, "Chat"). Authenticate with
/// `?token=<access token>` granting the conversation.
#[utoipa::path(get, path = "/v1/conversations/{id}/chat", tag = "chat", operation_id = "connectChat",
    params(("id" = String, Path, description = "the conversation's id"), ChatSocketQuery),
    responses((status = 101, description = "WebSocket upgrade; JSON messages as in docs/signaling.md (Chat)"),
        (status = 400, body = ErrorBody, description = "not a WebSocket upgrade request, or a query parameter is invalid"),
        (status = 403, body = ErrorBody, description = "an API key (chat is between people: use an access token), or a role that may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation in this tenant or the token's grants"),
        (status = 422, body = ErrorBody, description = "`history` out of range")),
    security(("signalingToken" = []), ("bearer" = [])))]
pub async fn socket(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<ChatSocketQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::bad_request(
                "this is the chat WebSocket: connect with a WebSocket client (HTTP/1.1 `Upgrade: websocket`)",
            )
            .into_response();
        }
    };
    let object = format!("conversation/{id}");
    let Some(who) = Person::of(&p) else {
        return person(&s, &p, "chat", &object)
            .await
            .err()
            .unwrap_or_else(|| ApiError::forbidden("chat needs an access token"))
            .into_response();
    };
    if let Err(e) = s.require(&p, Permission::ReadTimeline, &object).await {
        return e.into_response();
    }
    if let Err(e) = s.require_conversation(&p, &id).await {
        return e.into_response();
    }
    let history = q.history.unwrap_or(50);
    if history > 200 {
        return ApiError::invalid("history must be 0..=200").into_response();
    }
    if q.after.is_some_and(|a| a < 0) {
        return ApiError::bad_request("after must be 0 or more (a timeline seq)").into_response();
    }
    let (link, last) = match ChatLink::open(&s, who, &id, CHAT_PAGE_CHANNELS).await {
        Ok(opened) => opened,
        Err(e) => {
            return s
                .audit_failure(&p, "chat.open", &object, e)
                .await
                .into_response();
        }
    };
    ws.max_message_size(128 * 1024)
        .on_upgrade(move |socket| session(s, p, link, last, q.after, history, socket))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMsg {
    Chat { body: String, client_id: String },
    Typing { active: bool },
    ChatDelivered { seq: i64 },
    ChatRead { seq: i64 },
    Refresh { token: String },
    Ping,
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// What the connection replays first: the messages after `after`, or the
/// newest `history` ones; then everyone's receipts and `chat_synced`.
async fn replay(
    s: &AppState,
    link: &mut ChatLink,
    last: i64,
    after: Option<i64>,
    history: usize,
) -> Vec<String> {
    let conversation = link.conversation().to_owned();
    let (messages, earlier) = match after {
        Some(after) => {
            link.rewind(after);
            match link.catch_up().await {
                Ok(m) => (m, false),
                Err(e) => {
                    tracing::warn!(error = %e, "chat could not replay");
                    (Vec::new(), false)
                }
            }
        }
        None if history == 0 => (Vec::new(), last > 0),
        None => {
            let who = &link.person;
            match s
                .store
                .chat_history(
                    &who.tenant_id,
                    &conversation,
                    CHAT_PAGE_CHANNELS,
                    Some(last + 1),
                    history + 1,
                    &who.audit_actor,
                )
                .await
            {
                Ok(mut events) => {
                    let earlier = events.len() > history;
                    if earlier {
                        events.remove(0);
                    }
                    let m = events
                        .iter()
                        .filter_map(|e| ChatMessage::from_event(e, CHAT_PAGE_CHANNELS))
                        .collect();
                    (m, earlier)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "chat could not read its history");
                    (Vec::new(), false)
                }
            }
        }
    };
    let mut out: Vec<String> = messages
        .into_iter()
        .map(|message| {
            link.skip_to(message.seq);
            ServerMsg::Chat { message }.text()
        })
        .collect();
    out.extend(link.receipts(s).await);
    out.push(
        ServerMsg::ChatSynced {
            conversation,
            last_seq: last,
            earlier,
        }
        .text(),
    );
    out
}

async fn session(
    s: AppState,
    p: Principal,
    mut link: ChatLink,
    last: i64,
    after: Option<i64>,
    history: usize,
    socket: WebSocket,
) {
    let Principal::Token {
        identity,
        name,
        role,
        mut token,
        ..
    } = p.clone()
    else {
        return;
    };
    let tenant_id = p.tenant_id().to_owned();
    let (mut sink, mut stream) = socket.split();
    let welcome = ServerMsg::ChatWelcome {
        protocol: PROTOCOL_VERSION,
        identity: identity.clone(),
        name,
        role,
        expires_at: token.expires_at,
        conversation: link.conversation().to_owned(),
    };
    let mut first = vec![welcome.text()];
    first.extend(replay(&s, &mut link, last, after, history).await);
    for text in first {
        if sink.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    let mut revoked = s.revocations.watch();
    let mut stop = s.shutdown.subscribe();
    let expiry = tokio::time::sleep_until(deadline(token.expires_at));
    tokio::pin!(expiry);
    loop {
        let out: Vec<String> = tokio::select! {
            _ = stop.changed() => break,
            _ = revoked.changed() => match s.revocations.check(&tenant_id, &token) {
                Ok(()) => Vec::new(),
                Err(reason) => {
                    let _ = sink.send(Message::Text(ServerMsg::error("token_revoked", reason).text().into())).await;
                    let _ = sink.send(close(4003, "token revoked")).await;
                    break;
                }
            },
            _ = &mut expiry => {
                let msg = ServerMsg::error("token_expired", "the access token expired; connect again with a new one");
                let _ = sink.send(Message::Text(msg.text().into())).await;
                let _ = sink.send(close(4001, "token expired")).await;
                break;
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMsg>(&text) {
                    Err(e) => vec![ServerMsg::error("bad_message", format!("unrecognised chat message: {e}")).text()],
                    Ok(ClientMsg::Ping) => vec![ServerMsg::Pong.text()],
                    Ok(ClientMsg::Refresh { token: fresh }) => {
                        let conversation = link.conversation().to_owned();
                        match super::rtc::refreshed(&s, &fresh, &tenant_id, &identity, role).and_then(|c| {
                            if c.clone().principal().may_access_conversation(&conversation) {
                                Ok(c)
                            } else {
                                Err("the new token does not grant this conversation")
                            }
                        }) {
                            Ok(c) => {
                                token = c.meta();
                                expiry.as_mut().reset(deadline(token.expires_at));
                                vec![ServerMsg::Refreshed { expires_at: token.expires_at }.text()]
                            }
                            Err(reason) => vec![ServerMsg::error("refresh_refused", reason).text()],
                        }
                    }
                    Ok(ClientMsg::Chat { body, client_id }) => link.handle(&s, ChatIn::Message { body, client_id }).await.into_iter().collect(),
                    Ok(ClientMsg::Typing { active }) => link.handle(&s, ChatIn::Typing { active }).await.into_iter().collect(),
                    Ok(ClientMsg::ChatDelivered { seq }) => link.handle(&s, ChatIn::Delivered(seq)).await.into_iter().collect(),
                    Ok(ClientMsg::ChatRead { seq }) => link.handle(&s, ChatIn::Read(seq)).await.into_iter().collect(),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => Vec::new(),
            },
            out = link.next(&s) => out,
        };
        for text in out {
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
}

/// Seconds from now until `exp` (Unix seconds), as a tokio deadline.
fn deadline(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_sub(continuum_core::clock::unix_secs());
    tokio::time::Instant::now() + std::time::Duration::from_secs(left)
}
