//! Video rooms and WebSocket signaling (`/v1/rtc`, protocol version 1).
//!
//! One connection per participant: the server speaks first (`welcome`, with
//! the ICE servers), then client messages (`ClientMsg`) are handled in
//! order and answered with [`ServerMsg`]s (`super::signal`); room notices
//! (tracks, quality, speaker, mute from the media thread; roster, waiting
//! room and the end from the lobby) are interleaved. The reference for
//! integrators is docs/signaling.md.

use super::signal::{PROTOCOL_VERSION, ServerMsg};
use crate::auth::Auth;
use crate::chat::{ChatIn, ChatLink, Person, VISIT_CHANNELS};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::lobby::{LobbyNotice, RoomKey};
use crate::media::{Seat, ToClient};
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use continuum_core::{Permission, Principal, Role};
use continuum_store::Room;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// Default `rtc.max_participants_per_room`.
    pub max_participants: Option<i64>,
    /// Patients wait until staff in the room admit them. Default: the
    /// tenant's visit settings (on unless changed).
    pub waiting_room: Option<bool>,
}

/// Open a video room as a media session of this conversation.
#[utoipa::path(post, path = "/v1/conversations/{id}/rooms", tag = "video", operation_id = "createRoom", params(("id" = String, Path, description = "the conversation's id")), request_body = CreateRoomRequest,
    responses((status = 201, body = Room, description = "the room, a media session of the conversation")), security(("bearer" = [])))]
pub async fn create_room(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<CreateRoomRequest>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    let object = format!("conversation/{id}");
    s.require(&p, Permission::WriteConversation, &object)
        .await?;
    s.require_conversation(&p, &id).await?;
    let limit = s.config.rtc.max_participants_per_room as i64;
    let max = req.max_participants.unwrap_or(limit);
    if !(2..=limit).contains(&max) {
        return Err(ApiError::invalid(format!(
            "max_participants must be 2..={limit} (rtc.max_participants_per_room)"
        )));
    }
    let waiting_room = match req.waiting_room {
        Some(w) => w,
        None => s.store.visit_settings(p.tenant_id()).await?.waiting_room,
    };
    match s
        .store
        .create_room(p.tenant_id(), &id, max, waiting_room, &p.audit_actor())
        .await
    {
        Ok(room) => Ok((StatusCode::CREATED, Json(room))),
        Err(e) => Err(s.audit_failure(&p, "room.create", &object, e).await),
    }
}

/// Signaling WebSocket. Authenticate with `?token=<access token>` (a room grant is needed to join).
#[utoipa::path(get, path = "/v1/rtc", tag = "video", operation_id = "connectSignaling",
    responses((status = 101, description = "WebSocket upgrade; JSON messages as in docs/signaling.md"),
        (status = 400, body = ErrorBody, description = "not a WebSocket upgrade request"),
        (status = 403, body = ErrorBody, description = "an API key cannot join rooms: use an access token"),
        (status = 503, body = ErrorBody, description = "this node runs no media worker")),
    security(("signalingToken" = []), ("bearer" = [])))]
pub async fn signaling(
    State(s): State<AppState>,
    Auth(p): Auth,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::bad_request(
                "this is the signaling WebSocket: connect with a WebSocket client (HTTP/1.1 `Upgrade: websocket`)",
            )
            .into_response();
        }
    };
    if !matches!(p, Principal::Token { .. }) {
        return ApiError::forbidden(
            "join rooms with an access token from POST /v1/tokens, not an API key",
        )
        .into_response();
    }
    if s.media.is_none() {
        // In a cluster, a node without media still takes the connection and
        // sends the client to the room's media node.
        if s.placement.is_some() {
            return ws
                .max_message_size(256 * 1024)
                .on_upgrade(move |socket| redirect_session(s, p, socket));
        }
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media_unavailable",
            "this node runs no media worker",
        )
        .into_response();
    }
    ws.max_message_size(256 * 1024)
        .on_upgrade(move |socket| session(s, p, socket))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMsg {
    Join {
        room: String,
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
    },
    Leave,
    /// A trickled ICE candidate (`""` = end of candidates).
    Candidate {
        candidate: String,
    },
    /// The client muted or unmuted its own `audio` or `video`.
    Mute {
        kind: String,
        muted: bool,
    },
    /// The video quality the client wants from one participant (or, without
    /// `participant`, from everyone): `low`, `medium` or `high`, e.g. by the
    /// size it renders them at. The SFU never exceeds it, and goes lower when
    /// the bandwidth estimate requires.
    Layer {
        participant: Option<String>,
        quality: String,
    },
    /// Receive `participant`'s tracks (of `kind`, or all) again.
    Subscribe {
        participant: String,
        kind: Option<String>,
    },
    /// Stop receiving `participant`'s tracks (of `kind`, or all): e.g. a tile
    /// scrolled out of view, or audio-only on a weak connection.
    Unsubscribe {
        participant: String,
        kind: Option<String>,
    },
    /// Take over our seat after the signaling connection dropped (instead of
    /// `join`): the participant id and the `resume` token of `joined`.
    Resume {
        participant: String,
        token: String,
    },
    /// Replace this connection's access token with a fresh one (same tenant,
    /// identity and role) before it expires.
    Refresh {
        token: String,
    },
    /// Staff in the room let a waiting patient in (the `ticket` of `waiting_room`).
    Admit {
        ticket: String,
    },
    /// Staff in the room end the visit for everyone: all leave, nobody joins again.
    EndVisit,
    /// A chat message to the room's conversation; `client_id` is the
    /// sender's idempotency key (a resend is stored once).
    Chat {
        body: String,
        client_id: String,
    },
    /// The sender is typing (`true`) or stopped (ephemeral).
    Typing {
        active: bool,
    },
    /// Everything up to `seq` of the conversation reached this device.
    ChatDelivered {
        seq: i64,
    },
    /// Everything up to `seq` of the conversation was shown (implies delivered).
    ChatRead {
        seq: i64,
    },
}

fn media_kind(kind: Option<&str>) -> Result<Option<continuum_sfu::MediaKind>, ()> {
    match kind {
        None => Ok(None),
        Some("audio") => Ok(Some(continuum_sfu::MediaKind::Audio)),
        Some("video") => Ok(Some(continuum_sfu::MediaKind::Video)),
        Some(_) => Err(()),
    }
}

/// TURN servers with credentials bound to `<tenant>.<participant>`, those
/// of the participant's region (from its token) first.
/// The TURN servers for `welcome`. In a cluster, a node outside the
/// tenant's region hands out none (the tenant's TURN credentials stay in its
/// region): the client gets its region's from the media node it is
/// redirected to, and restarts ICE with them if it must.
async fn welcome_ice_servers(
    s: &AppState,
    tenant: &str,
    participant: &str,
    region: Option<&str>,
) -> serde_json::Value {
    if s.placement.is_some() {
        match s.store.find_tenant(tenant).await {
            Ok(t) if t.region == s.config.server.region => {}
            _ => return json!([]),
        }
    }
    ice_servers(s, tenant, participant, region)
}

fn ice_servers(
    s: &AppState,
    tenant: &str,
    participant: &str,
    region: Option<&str>,
) -> serde_json::Value {
    s.turn
        .as_ref()
        .map_or_else(|| json!([]), |t| t.ice_servers(tenant, participant, region))
}

/// Simulcast layer index for a requested quality (layers are ordered by bitrate).
fn layer_of(quality: &str) -> Option<usize> {
    match quality {
        "low" => Some(0),
        "medium" => Some(1),
        "high" => Some(2),
        _ => None,
    }
}

fn parse_participant(s: &str) -> Option<continuum_sfu::ParticipantId> {
    s.strip_prefix('p')?
        .parse()
        .ok()
        .map(continuum_sfu::ParticipantId)
}

/// A `subscribe` / `unsubscribe` message: the error to send, if any.
async fn subscribe(
    media: &crate::media::Media,
    me: Option<continuum_sfu::ParticipantId>,
    origin: &str,
    kind: Option<&str>,
    subscribed: bool,
) -> Option<String> {
    let Some(me) = me else {
        return Some(error("not_joined", "join a room first"));
    };
    let Some(origin) = parse_participant(origin) else {
        return Some(error(
            "bad_message",
            "subscribe.participant must be a participant id such as `p3`",
        ));
    };
    let Ok(kind) = media_kind(kind) else {
        return Some(error(
            "bad_message",
            "subscribe.kind must be `audio` or `video` (or absent: both)",
        ));
    };
    match media.set_subscribed(me, origin, kind, subscribed).await {
        Ok(0) => Some(error(
            "not_found",
            format!("{origin} publishes no such track in this room"),
        )),
        Ok(_) => None,
        Err(e) => Some(error("bad_subscribe", e.to_string())),
    }
}

/// A room notice as its signaling message.
fn notice_msg(n: continuum_sfu::Notice) -> ServerMsg {
    use continuum_sfu::Notice;
    let kind = |k: continuum_sfu::MediaKind| match k {
        continuum_sfu::MediaKind::Audio => "audio",
        continuum_sfu::MediaKind::Video => "video",
    };
    match n {
        Notice::TrackPublished {
            origin,
            identity,
            kind: k,
            mid,
        } => ServerMsg::TrackPublished {
            participant: origin.to_string(),
            identity,
            kind: kind(k),
            track: format!("{origin}/{mid}"),
        },
        Notice::PauseLayers { mid, paused } => ServerMsg::PublishLayers { mid, paused },
        Notice::TrackUnpublished { origin, mid } => ServerMsg::TrackUnpublished {
            participant: origin.to_string(),
            track: format!("{origin}/{mid}"),
        },
        Notice::Quality {
            origin,
            identity,
            rating,
            sample,
        } => ServerMsg::Quality {
            participant: origin.to_string(),
            identity,
            rating: rating.as_str(),
            loss: sample.loss,
            rtt_ms: sample.rtt.map(|d| d.as_millis() as u64),
            jitter_ms: sample.jitter.map(|d| d.as_millis() as u64),
        },
    }
}

fn error(code: &'static str, message: impl Into<String>) -> String {
    ServerMsg::error(code, message).text()
}

/// Seconds from now until `exp` (Unix seconds), as a tokio deadline.
fn deadline(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_sub(continuum_core::clock::unix_secs());
    tokio::time::Instant::now() + std::time::Duration::from_secs(left)
}

/// Checks a `refresh` token: ours, unexpired, unrevoked, and the same
/// tenant, identity and role as the connection's.
pub(crate) fn refreshed(
    s: &AppState,
    token: &str,
    tenant_id: &str,
    identity: &str,
    role: continuum_core::Role,
) -> Result<crate::auth::Claims, &'static str> {
    let c = s
        .tokens
        .verify(token)
        .map_err(|_| "the new token is invalid or expired")?;
    if c.tid != tenant_id || c.sub != identity || c.role != role {
        return Err("the new token must be for the same tenant, identity and role");
    }
    s.revocations.check(tenant_id, &c.meta())?;
    Ok(c)
}

/// In a cluster: `None` when this node hosts the room, else the `redirect`
/// (or the error) to send.
async fn placed(s: &AppState, tenant_id: &str, room: &Room) -> Result<Option<String>, String> {
    let Some(placement) = &s.placement else {
        return Ok(None);
    };
    let region = match s.store.find_tenant(tenant_id).await {
        Ok(t) => t.region,
        Err(e) => {
            return Err(error(
                "media_unavailable",
                format!("the tenant could not be read: {e}"),
            ));
        }
    };
    match placement.host_for(tenant_id, &region, room).await {
        Ok(crate::placement::Host::Here) => Ok(None),
        Ok(crate::placement::Host::There { node, signaling }) => Ok(Some(
            ServerMsg::Redirect {
                room: room.id.clone(),
                node,
                url: format!("{signaling}/v1/rtc"),
            }
            .text(),
        )),
        Err(m) => Err(error("media_unavailable", m)),
    }
}

/// A signaling connection on a node without media: `welcome`, then each
/// `join` is answered with the room's media node (`redirect`) or an error.
async fn redirect_session(s: AppState, p: Principal, socket: WebSocket) {
    let Principal::Token {
        tenant_id,
        identity,
        role,
        grants,
        region,
        name,
        token,
    } = p.clone()
    else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let welcome = ServerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        identity: identity.clone(),
        name,
        role,
        expires_at: token.expires_at,
        ice_servers: welcome_ice_servers(&s, &tenant_id, &identity, region.as_deref()).await,
    };
    if sink
        .send(Message::Text(welcome.text().into()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let reply = match serde_json::from_str::<ClientMsg>(&text) {
            Ok(ClientMsg::Join { room, .. }) => {
                if !grants.allows_room(&room) {
                    s.audit_denial(
                        &tenant_id,
                        &p.audit_actor(),
                        "room.join",
                        &format!("room/{room}"),
                        "not in grants",
                    )
                    .await;
                    error("not_found", "room not found")
                } else {
                    match s.store.get_room(&tenant_id, &room).await {
                        Err(_) => error("not_found", "room not found"),
                        Ok(r) if r.ended_at.is_some() => {
                            error("visit_ended", "this visit has ended")
                        }
                        Ok(r) => match placed(&s, &tenant_id, &r).await {
                            Ok(Some(redirect)) => redirect,
                            Ok(None) => {
                                error("media_unavailable", "this node runs no media worker")
                            }
                            Err(e) => e,
                        },
                    }
                }
            }
            Ok(ClientMsg::Resume { .. }) => error(
                "resume_refused",
                "this node holds no seats (no media worker): join again",
            ),
            Ok(_) => error("not_joined", "join a room first"),
            Err(e) => error("bad_message", e.to_string()),
        };
        if sink.send(Message::Text(reply.into())).await.is_err() {
            return;
        }
    }
}

async fn session(s: AppState, p: Principal, socket: WebSocket) {
    let Principal::Token {
        tenant_id,
        identity,
        role,
        grants,
        region,
        name,
        token,
    } = p.clone()
    else {
        return;
    };
    // Authority ends with the token: an idle connection is closed when it
    // expires; one in a call keeps its seat, but joining, resuming and
    // publishing anew need a valid token (`refresh`). A revoked token (or
    // key) ends the connection and its seat at once.
    let mut revoked = s.revocations.watch();
    let mut armed_for = token.expires_at;
    let expiry = tokio::time::sleep_until(deadline(armed_for));
    tokio::pin!(expiry);
    let mut expired = false;
    let media = s.media.clone().expect("checked before upgrade");
    let (mut sink, mut stream) = socket.split();
    let (to_client, mut from_media) = tokio::sync::mpsc::unbounded_channel();
    let mut stop = s.shutdown.subscribe();
    // First, who we are and the ICE servers: a client creates its peer
    // connection with them, so TURN candidates are gathered from the first
    // offer on (a network that passes nothing but TURN connects at once).
    let welcome = ServerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        identity: identity.clone(),
        name: name.clone(),
        role,
        expires_at: token.expires_at,
        ice_servers: welcome_ice_servers(&s, &tenant_id, &identity, region.as_deref()).await,
    };
    if sink
        .send(Message::Text(welcome.text().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut conn = Connection {
        s,
        audit_actor: p.audit_actor(),
        tenant_id,
        identity,
        name,
        role,
        grants,
        region,
        token,
        media,
        to_client,
        participant: None,
        lobby: None,
        waiting: None,
        introduced: false,
        chat: None,
        chat_introduced: true,
    };
    // A `leave` ends the seat; a dropped connection leaves it for a resume.
    let mut leaving = false;
    loop {
        let step = tokio::select! {
            _ = stop.changed() => break,
            _ = revoked.changed() => match conn.s.revocations.check(&conn.tenant_id, &conn.token) {
                Ok(()) => Step::Reply(None),
                Err(reason) => {
                    let _ = sink.send(Message::Text(error("token_revoked", reason).into())).await;
                    let _ = sink.send(close(4003, "token revoked")).await;
                    leaving = true;
                    break;
                }
            },
            _ = &mut expiry, if !expired => {
                expired = true;
                if conn.participant.is_none() {
                    let _ = sink.send(Message::Text(error("token_expired", "the access token expired; connect again with a new one").into())).await;
                    let _ = sink.send(close(4001, "token expired")).await;
                    break;
                }
                Step::Reply(Some(ServerMsg::TokenExpired { message: "the access token expired: the call goes on; send `refresh` with a new token to join, resume or publish again" }.text()))
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMsg>(&text) {
                    Err(e) => Step::Reply(Some(error("bad_message", format!("unrecognised signaling message: {e}")))),
                    Ok(msg) => conn.handle(msg).await,
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => Step::Reply(None),
            },
            notice = next_notice(&mut conn.lobby) => conn.on_notice(notice).await,
            out = from_media.recv() => conn.on_media(out),
            out = chat_next(&mut conn.chat, &conn.s) => Step::Replies(out),
        };
        // A `refresh` moved the token's expiry.
        if conn.token.expires_at != armed_for {
            armed_for = conn.token.expires_at;
            expired = false;
            expiry.as_mut().reset(deadline(armed_for));
        }
        let (reply, end) = match step {
            Step::Reply(reply) => (reply, None),
            Step::End { last, leave } => (last, Some(leave)),
            Step::Replies(replies) => {
                let mut gone = false;
                for text in replies {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break;
                }
                (None, None)
            }
        };
        if let Some(text) = reply
            && sink.send(Message::Text(text.into())).await.is_err()
        {
            break;
        }
        if let Some(leave) = end {
            leaving = leave;
            break;
        }
        for text in conn.introduction() {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        if let Some(text) = conn.chat_introduction().await
            && sink.send(Message::Text(text.into())).await.is_err()
        {
            break;
        }
    }
    conn.finish(leaving || *stop.borrow());
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// What handling one input leaves the connection to do.
enum Step {
    /// Send this (if anything) and go on.
    Reply(Option<String>),
    /// Send `last` (if anything) and close; `leave`: give the seat up
    /// (otherwise it waits for a resume, or is gone already).
    End { last: Option<String>, leave: bool },
    /// Send these, in order, and go on.
    Replies(Vec<String>),
}

/// One signaling connection's state, between the socket loop (`session`)
/// and the handlers: who it speaks for, its seat, its room.
struct Connection {
    s: AppState,
    audit_actor: String,
    tenant_id: String,
    identity: String,
    name: Option<String>,
    role: Role,
    grants: continuum_core::Grants,
    region: Option<String>,
    token: continuum_core::TokenMeta,
    media: crate::media::Media,
    /// The link the media thread talks to this connection on.
    to_client: tokio::sync::mpsc::UnboundedSender<ToClient>,
    participant: Option<continuum_sfu::ParticipantId>,
    /// The room this connection is in or waits for, and what it hears from it.
    lobby: Option<(RoomKey, tokio::sync::broadcast::Receiver<LobbyNotice>)>,
    /// A patient in the waiting room: the ticket, and the join to make once admitted.
    waiting: Option<(String, Room, String)>,
    /// Whether the roster was sent since this connection took its seat.
    introduced: bool,
    /// Chat on the room's conversation (when the token grants it), from
    /// `join` or `resume` on.
    chat: Option<ChatLink>,
    /// Whether everyone's receipts were sent since the chat opened.
    chat_introduced: bool,
}

impl Connection {
    /// One client message.
    async fn handle(&mut self, msg: ClientMsg) -> Step {
        let reply = match msg {
            ClientMsg::Refresh { token } => Some(self.refresh(&token)),
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } | ClientMsg::Offer { .. }
                if self.token.expires_at <= continuum_core::clock::unix_secs() =>
            {
                Some(error(
                    "token_expired",
                    "the access token expired: send `refresh` with a new token first",
                ))
            }
            ClientMsg::Join { .. } if self.participant.is_some() => Some(error(
                "already_joined",
                "this connection has already joined a room",
            )),
            ClientMsg::Join { .. } if self.waiting.is_some() => Some(error(
                "already_joined",
                "this connection is already waiting to be admitted",
            )),
            ClientMsg::Join { room, sdp } => Some(self.join(room, sdp).await),
            ClientMsg::Admit { ticket } => match (&self.lobby, self.participant) {
                (Some((key, _)), Some(_)) if self.role.is_staff() => {
                    match self.s.lobby.admit(key, &ticket, &self.identity) {
                        Some(_) => None,
                        None => Some(error(
                            "not_found",
                            "nobody waits with that ticket (admitted already, or gone)",
                        )),
                    }
                }
                (_, Some(_)) => Some(error("forbidden", "only staff in the room admit patients")),
                _ => Some(error("not_joined", "join the room first")),
            },
            ClientMsg::EndVisit => match (&self.lobby, self.participant) {
                (Some((key, _)), Some(_)) if self.role.is_staff() => {
                    end_visit(&self.s, key, &self.audit_actor, &self.identity)
                        .await
                        .err()
                        .map(|e| error("end_refused", e))
                }
                (_, Some(_)) => Some(error("forbidden", "only staff in the room end the visit")),
                _ => Some(error("not_joined", "join the room first")),
            },
            ClientMsg::Answer { sdp } => match self.participant {
                None => Some(error("not_joined", "join a room first")),
                Some(id) => self
                    .media
                    .answer(id, sdp)
                    .await
                    .err()
                    .map(|e| error("bad_answer", e.to_string())),
            },
            ClientMsg::Offer { sdp } => match self.participant {
                None => Some(error("not_joined", "join a room first")),
                Some(id) => Some(match self.media.offer(id, sdp).await {
                    Ok(answer) => ServerMsg::Answer { sdp: answer }.text(),
                    Err(e) => error("bad_offer", e.to_string()),
                }),
            },
            ClientMsg::Resume { .. } if self.participant.is_some() => Some(error(
                "already_joined",
                "this connection has already joined a room",
            )),
            ClientMsg::Resume { participant, token } => {
                Some(self.resume(&participant, token).await)
            }
            ClientMsg::Leave => {
                return Step::End {
                    last: None,
                    leave: true,
                };
            }
            ClientMsg::Candidate { candidate } => match self.participant {
                None => Some(error("not_joined", "join a room first")),
                Some(id) => self
                    .media
                    .candidate(id, candidate)
                    .await
                    .err()
                    .map(|e| error("bad_candidate", e.to_string())),
            },
            ClientMsg::Mute { kind, .. } if kind != "audio" && kind != "video" => {
                Some(error("bad_message", "mute.kind must be `audio` or `video`"))
            }
            ClientMsg::Mute { kind, muted } => match self.participant {
                None => Some(error("not_joined", "join a room first")),
                Some(id) => {
                    if let Some((key, _)) = &self.lobby {
                        self.s.lobby.set_muted(key, &id.to_string(), &kind, muted);
                    }
                    self.media.mute(id, kind, muted);
                    None
                }
            },
            ClientMsg::Layer {
                participant: origin,
                quality,
            } => {
                let origin = origin.as_deref().map(parse_participant);
                match (self.participant, layer_of(&quality), origin) {
                    (None, _, _) => Some(error("not_joined", "join a room first")),
                    (_, None, _) => Some(error(
                        "bad_message",
                        "layer.quality must be `low`, `medium` or `high`",
                    )),
                    (_, _, Some(None)) => Some(error(
                        "bad_message",
                        "layer.participant must be a participant id such as `p3`",
                    )),
                    (Some(id), Some(layer), origin) => {
                        match self.media.set_max_layer(id, origin.flatten(), layer).await {
                            Ok(_) => None,
                            Err(e) => Some(error("bad_layer", e.to_string())),
                        }
                    }
                }
            }
            ClientMsg::Subscribe {
                participant: origin,
                kind,
            } => {
                let me = self.participant;
                subscribe(&self.media, me, &origin, kind.as_deref(), true).await
            }
            ClientMsg::Unsubscribe {
                participant: origin,
                kind,
            } => {
                let me = self.participant;
                subscribe(&self.media, me, &origin, kind.as_deref(), false).await
            }
            ClientMsg::Chat { body, client_id } => {
                let client = client_id.clone();
                self.chat_in(ChatIn::Message { body, client_id })
                    .await
                    .map_err(|(code, message)| {
                        ServerMsg::ChatError {
                            code,
                            message: message.into(),
                            client_id: Some(client),
                        }
                        .text()
                    })
                    .unwrap_or_else(Some)
            }
            ClientMsg::Typing { active } => self
                .chat_in(ChatIn::Typing { active })
                .await
                .unwrap_or_else(|(code, m)| Some(error(code, m))),
            ClientMsg::ChatDelivered { seq } => self
                .chat_in(ChatIn::Delivered(seq))
                .await
                .unwrap_or_else(|(code, m)| Some(error(code, m))),
            ClientMsg::ChatRead { seq } => self
                .chat_in(ChatIn::Read(seq))
                .await
                .unwrap_or_else(|(code, m)| Some(error(code, m))),
        };
        Step::Reply(reply)
    }

    /// A chat message from the client: handled by the room's chat link, or
    /// refused (code, message) when there is none.
    async fn chat_in(
        &mut self,
        msg: ChatIn,
    ) -> Result<Option<String>, (&'static str, &'static str)> {
        match self.chat.as_mut() {
            Some(link) => Ok(link.handle(&self.s, msg).await),
            None if self.lobby.is_none() => Err((
                "not_joined",
                "join a room first: chat is on the room's conversation",
            )),
            None => Err((
                "not_found",
                "chat is on the room's conversation, which this token does not grant (grants.conversations)",
            )),
        }
    }

    /// Opens chat on the room's conversation when the token grants it (and
    /// its role reads timelines): what the room's people say in the chat
    /// comes over this connection from now on.
    async fn open_chat(&mut self, conversation: &str) {
        if self
            .chat
            .as_ref()
            .is_some_and(|c| c.conversation() == conversation)
        {
            return;
        }
        let principal = Principal::Token {
            tenant_id: self.tenant_id.clone(),
            identity: self.identity.clone(),
            role: self.role,
            grants: self.grants.clone(),
            region: self.region.clone(),
            name: self.name.clone(),
            token: self.token.clone(),
        };
        if !principal.may(Permission::ReadTimeline)
            || !principal.may_access_conversation(conversation)
        {
            self.chat = None;
            return;
        }
        let Some(person) = Person::of(&principal) else {
            return;
        };
        match ChatLink::open(&self.s, person, conversation, VISIT_CHANNELS).await {
            Ok((link, _)) => {
                self.chat = Some(link);
                self.chat_introduced = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "chat could not open on the room's conversation");
                self.chat = None;
            }
        }
    }

    /// Just opened chat: everyone's receipts, so ticks show at once.
    async fn chat_introduction(&mut self) -> Option<String> {
        if self.chat_introduced {
            return None;
        }
        self.chat_introduced = true;
        self.chat.as_ref()?.receipts(&self.s).await
    }

    /// `refresh`: a new token for the same tenant, identity and role.
    fn refresh(&mut self, fresh: &str) -> String {
        match refreshed(&self.s, fresh, &self.tenant_id, &self.identity, self.role) {
            Ok(c) => {
                let exp = c.exp;
                let Principal::Token {
                    grants,
                    region,
                    token,
                    ..
                } = c.principal()
                else {
                    unreachable!("claims make tokens")
                };
                (self.grants, self.region, self.token) = (grants, region, token);
                // Chat goes on only if the new token grants the conversation too.
                if let Some(link) = &self.chat
                    && self.role != Role::Admin
                    && !self.grants.allows_conversation(link.conversation())
                {
                    self.chat = None;
                }
                ServerMsg::Refreshed { expires_at: exp }.text()
            }
            Err(reason) => error("refresh_refused", reason),
        }
    }

    /// `join`: into the room, or into its waiting room (patients).
    async fn join(&mut self, room: String, sdp: String) -> String {
        if !self.grants.allows_room(&room) {
            let object = format!("room/{room}");
            self.s
                .audit_denial(
                    &self.tenant_id,
                    &self.audit_actor,
                    "room.join",
                    &object,
                    "not in grants",
                )
                .await;
            return error("not_found", "room not found");
        }
        let r = match self.s.store.get_room(&self.tenant_id, &room).await {
            Err(_) => return error("not_found", "room not found"),
            Ok(r) if r.ended_at.is_some() => return error("visit_ended", "this visit has ended"),
            Ok(r) => r,
        };
        match placed(&self.s, &self.tenant_id, &r).await {
            Ok(None) => {}
            Ok(Some(redirect)) => return redirect,
            Err(e) => return e,
        }
        let key = RoomKey::new(&self.tenant_id, &r.id);
        let rx = self.s.lobby.subscribe(&key);
        self.lobby = Some((key.clone(), rx));
        self.open_chat(&r.conversation_id).await;
        if r.waiting_room
            && self.role == Role::Patient
            && self.s.lobby.must_wait(&key, &self.identity)
        {
            let ticket = self.s.lobby.wait(&key, &self.identity, self.name.clone());
            self.waiting = Some((ticket.clone(), r, sdp));
            return ServerMsg::Waiting {
                ticket,
                message: "the clinician will let you in shortly",
            }
            .text();
        }
        self.take_seat(r, sdp).await
    }

    /// `resume`: take our seat over after the signaling connection dropped.
    async fn resume(&mut self, participant: &str, token: String) -> String {
        let Some(id) = parse_participant(participant) else {
            return error(
                "bad_message",
                "resume.participant must be a participant id such as `p3`",
            );
        };
        let (tenant, identity) = (self.tenant_id.clone(), self.identity.clone());
        let owns = move |seat: &Seat| seat.room.tenant_id == tenant && seat.identity == identity;
        match self
            .media
            .resume(id, token, owns, self.to_client.clone())
            .await
        {
            Ok(seat) => {
                // Hear the room again (roster, waiting room, the end),
                // and get the roster anew after `resumed`.
                let rx = self.s.lobby.subscribe(&seat.room);
                self.lobby = Some((seat.room, rx));
                self.introduced = false;
                self.participant = Some(id);
                self.open_chat(&seat.conversation_id).await;
                ServerMsg::Resumed {
                    protocol: PROTOCOL_VERSION,
                    participant: id.to_string(),
                    ice_servers: ice_servers(
                        &self.s,
                        &self.tenant_id,
                        &self.identity,
                        self.region.as_deref(),
                    ),
                }
                .text()
            }
            Err(e) => error("resume_refused", e.to_string()),
        }
    }

    /// Seats the connection in room `r` with its offer: `joined`, or the refusal.
    async fn take_seat(&mut self, r: Room, sdp: String) -> String {
        let conversation = r.conversation_id.clone();
        let resume = hex::encode(rand::random::<[u8; 16]>());
        let seat = Seat {
            room: RoomKey::new(&self.tenant_id, r.id),
            conversation_id: r.conversation_id,
            identity: self.identity.clone(),
            name: self.name.clone(),
            role: self.role,
            max_participants: r.max_participants.max(0) as usize,
            phone: false,
        };
        let joining = seat.joining(sdp, continuum_sfu::Mode::Full, Some(resume.clone()));
        match self.media.join(joining, self.to_client.clone()).await {
            Ok((id, answer)) => {
                self.participant = Some(id);
                if matches!(self.role, Role::Clinician | Role::Agent) {
                    assign_on_join(&self.s, &self.tenant_id, &conversation, &self.identity);
                }
                ServerMsg::Joined {
                    protocol: PROTOCOL_VERSION,
                    resume,
                    participant: id.to_string(),
                    conversation,
                    sdp: answer,
                    ice_servers: ice_servers(
                        &self.s,
                        &self.tenant_id,
                        &self.identity,
                        self.region.as_deref(),
                    ),
                }
                .text()
            }
            Err(e) => error("join_refused", e.to_string()),
        }
    }

    /// A notice from the room (roster, waiting room, the end).
    async fn on_notice(&mut self, notice: Option<LobbyNotice>) -> Step {
        let reply = match notice {
            None => None,
            Some(LobbyNotice::Ended { by }) => {
                return Step::End {
                    last: Some(ServerMsg::VisitEnded { by }.text()),
                    leave: true,
                };
            }
            Some(LobbyNotice::Admitted { ticket, .. }) => match self.waiting.take() {
                Some((mine, r, sdp)) if mine == ticket => Some(self.take_seat(r, sdp).await),
                other => {
                    self.waiting = other;
                    None
                }
            },
            Some(LobbyNotice::Resync) => {
                self.introduced = false;
                None
            }
            Some(LobbyNotice::MovedToPhone(details)) => {
                (self.participant.is_some() && self.role.is_staff()).then(|| {
                    ServerMsg::PatientOnPhone {
                        details: (*details).clone(),
                    }
                    .text()
                })
            }
            Some(n) => self
                .participant
                .and_then(|id| roster_notice(n, id, self.role)),
        };
        Step::Reply(reply)
    }

    /// What the media thread says about our seat.
    fn on_media(&mut self, out: Option<ToClient>) -> Step {
        let msg = match out {
            Some(ToClient::Offer(sdp)) => ServerMsg::Offer { sdp },
            Some(ToClient::Speaker {
                participant,
                identity,
            }) => ServerMsg::Speaker {
                participant: participant.map(|p| p.to_string()),
                identity,
            },
            Some(ToClient::Notice(n)) => notice_msg(n),
            Some(ToClient::Muted {
                participant,
                identity,
                kind,
                muted,
            }) => ServerMsg::Muted {
                participant: participant.to_string(),
                identity,
                kind,
                muted,
            },
            Some(ToClient::Closed) | None => {
                self.participant = None;
                return Step::End {
                    last: Some(ServerMsg::Left.text()),
                    leave: false,
                };
            }
        };
        Step::Reply(Some(msg.text()))
    }

    /// Just seated: who is here already (and, for staff, who waits).
    fn introduction(&mut self) -> Vec<String> {
        let (Some(me), false) = (self.participant, self.introduced) else {
            return Vec::new();
        };
        self.introduced = true;
        let Some((key, _)) = &self.lobby else {
            return Vec::new();
        };
        let me = me.to_string();
        let (members, waiters) = self.s.lobby.snapshot(key);
        let others: Vec<_> = members
            .into_iter()
            .filter(|m| m.participant != me)
            .collect();
        let mut intro = vec![
            ServerMsg::Roster {
                participants: others,
            }
            .text(),
        ];
        if self.role.is_staff() {
            intro.push(ServerMsg::WaitingRoom { waiting: waiters }.text());
        }
        intro
    }

    /// The connection is gone: out of the waiting room, and the seat left
    /// (`leave`) or kept for a resume.
    fn finish(self, leave: bool) {
        if let (Some((ticket, _, _)), Some((key, _))) = (&self.waiting, &self.lobby) {
            self.s.lobby.stop_waiting(key, ticket);
        }
        match self.participant {
            Some(id) if leave => self.media.leave(id),
            Some(id) => self.media.detach(id, self.to_client),
            None => {}
        }
    }
}

/// A clinician joining a visit takes the conversation, unless someone has it
/// already (or it is closed): the `assigned` event tells the timeline.
fn assign_on_join(s: &AppState, tenant_id: &str, conversation: &str, identity: &str) {
    let (s, t, c, who) = (
        s.clone(),
        tenant_id.to_owned(),
        conversation.to_owned(),
        identity.to_owned(),
    );
    tokio::spawn(async move {
        let Ok(conv) = s.store.get_conversation(&t, &c).await else {
            return;
        };
        if conv.assignee.is_some() || conv.state == continuum_core::ConversationState::Closed {
            return;
        }
        let params = continuum_store::TransitionParams {
            assignee: Some(who.clone()),
            queue: None,
            reason: Some("joined the video visit".into()),
        };
        let actor = continuum_core::Actor {
            actor_type: continuum_core::ActorType::Staff,
            id: Some(who.clone()),
        };
        if let Err(e) = s
            .store
            .transition(
                &t,
                &c,
                continuum_core::Transition::Assign,
                params,
                actor,
                &format!("clinician:{who}"),
            )
            .await
        {
            tracing::debug!(error = %e, "no assignment on joining the visit");
        }
    });
}

/// Ends a visit for everyone: recorded (room `ended_at`, audit), then every
/// connection of the room is told and leaves.
pub async fn end_visit(
    s: &AppState,
    key: &RoomKey,
    audit_actor: &str,
    by: &str,
) -> Result<(), String> {
    s.store
        .end_room(&key.tenant_id, &key.room_id, audit_actor)
        .await
        .map_err(|e| e.to_string())?;
    s.lobby.end(key, by);
    Ok(())
}

/// What the room's chat has for the client next (never, without chat).
async fn chat_next(link: &mut Option<ChatLink>, s: &AppState) -> Vec<String> {
    match link {
        Some(link) => link.next(s).await,
        None => std::future::pending().await,
    }
}

/// The next notice of the room a connection listens to (never, if none).
async fn next_notice(
    lobby: &mut Option<(RoomKey, tokio::sync::broadcast::Receiver<LobbyNotice>)>,
) -> Option<LobbyNotice> {
    use tokio::sync::broadcast::error::RecvError;
    let Some((_, rx)) = lobby.as_mut() else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(n) => Some(n),
        // Fell behind (a slow client): the roster is resent whole.
        Err(RecvError::Lagged(_)) => Some(LobbyNotice::Resync),
        Err(RecvError::Closed) => {
            *lobby = None;
            None
        }
    }
}

/// A roster notice as the message a seated participant gets (its own join is
/// in `joined`; the waiting list is for staff).
fn roster_notice(n: LobbyNotice, me: continuum_sfu::ParticipantId, role: Role) -> Option<String> {
    match n {
        LobbyNotice::Joined(m) if m.participant != me.to_string() => Some(
            ServerMsg::ParticipantJoined {
                participant: m.participant,
                identity: m.identity,
                name: m.name,
                role: m.role,
                muted: m.muted,
                phone: m.phone,
            }
            .text(),
        ),
        LobbyNotice::Left { participant } => {
            Some(ServerMsg::ParticipantLeft { participant }.text())
        }
        LobbyNotice::Waiting(list) if role.is_staff() => {
            Some(ServerMsg::WaitingRoom { waiting: list }.text())
        }
        _ => None,
    }
}
