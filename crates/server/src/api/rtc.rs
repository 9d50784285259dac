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
    let left = exp.saturating_sub(crate::auth::unix_now());
    tokio::time::Instant::now() + std::time::Duration::from_secs(left)
}

/// Checks a `refresh` token: ours, unexpired, unrevoked, and the same
/// tenant, identity and role as the connection's.
fn refreshed(
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

async fn session(s: AppState, p: Principal, socket: WebSocket) {
    let Principal::Token {
        tenant_id,
        identity,
        role,
        mut grants,
        mut region,
        name,
        mut token,
    } = p.clone()
    else {
        return;
    };
    // Authority ends with the token: an idle connection is closed when it
    // expires; one in a call keeps its seat, but joining, resuming and
    // publishing anew need a valid token (`refresh`). A revoked token (or
    // key) ends the connection and its seat at once.
    let mut revoked = s.revocations.watch();
    let expiry = tokio::time::sleep_until(deadline(token.expires_at));
    tokio::pin!(expiry);
    let mut expired = false;
    let media = s.media.clone().expect("checked before upgrade");
    let (mut sink, mut stream) = socket.split();
    let (to_client, mut from_media) = tokio::sync::mpsc::unbounded_channel();
    let mut participant = None;
    // A `leave` ends the seat; a dropped connection leaves it for a resume.
    let mut leaving = false;
    // Whether the roster was sent since this connection took its seat.
    let mut introduced = false;
    let mut stop = s.shutdown.subscribe();
    // The room this connection is in or waits for, and what it hears from it.
    let mut lobby: Option<(RoomKey, tokio::sync::broadcast::Receiver<LobbyNotice>)> = None;
    // A patient in the waiting room: the ticket, and the join to make once admitted.
    let mut waiting: Option<(String, Room, String)> = None;
    // First, who we are and the ICE servers: a client creates its peer
    // connection with them, so TURN candidates are gathered from the first
    // offer on (a network that passes nothing but TURN connects at once).
    let welcome = ServerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        identity: identity.clone(),
        name: name.clone(),
        role,
        expires_at: token.expires_at,
        ice_servers: ice_servers(&s, &tenant_id, &identity, region.as_deref()),
    };
    if sink
        .send(Message::Text(welcome.text().into()))
        .await
        .is_err()
    {
        return;
    }
    let me = Caller {
        tenant_id: &tenant_id,
        identity: &identity,
        name: name.as_deref(),
        role,
    };
    loop {
        let reply: Option<String> = tokio::select! {
            _ = stop.changed() => break,
            _ = revoked.changed() => match s.revocations.check(&tenant_id, &token) {
                Ok(()) => None,
                Err(reason) => {
                    let _ = sink.send(Message::Text(error("token_revoked", reason).into())).await;
                    let _ = sink.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: 4003, reason: "token revoked".into() }))).await;
                    leaving = true;
                    break;
                }
            },
            _ = &mut expiry, if !expired => {
                expired = true;
                if participant.is_none() {
                    let _ = sink.send(Message::Text(error("token_expired", "the access token expired; connect again with a new one").into())).await;
                    let _ = sink.send(Message::Close(Some(axum::extract::ws::CloseFrame { code: 4001, reason: "token expired".into() }))).await;
                    break;
                }
                Some(ServerMsg::TokenExpired { message: "the access token expired: the call goes on; send `refresh` with a new token to join, resume or publish again" }.text())
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMsg>(&text) {
                    Err(e) => Some(error("bad_message", format!("unrecognised signaling message: {e}"))),
                    Ok(ClientMsg::Refresh { token: fresh }) => match refreshed(&s, &fresh, &tenant_id, &identity, role) {
                        Ok(c) => {
                            let exp = c.exp;
                            let Principal::Token { grants: g, region: r, token: t, .. } = c.principal() else { unreachable!("claims make tokens") };
                            (grants, region, token) = (g, r, t);
                            expired = false;
                            expiry.as_mut().reset(deadline(exp));
                            Some(ServerMsg::Refreshed { expires_at: exp }.text())
                        }
                        Err(reason) => Some(error("refresh_refused", reason)),
                    },
                    Ok(ClientMsg::Join { .. } | ClientMsg::Resume { .. } | ClientMsg::Offer { .. }) if token.expires_at <= crate::auth::unix_now() => {
                        Some(error("token_expired", "the access token expired: send `refresh` with a new token first"))
                    }
                    Ok(ClientMsg::Join { .. }) if participant.is_some() => Some(error("already_joined", "this connection has already joined a room")),
                    Ok(ClientMsg::Join { .. }) if waiting.is_some() => Some(error("already_joined", "this connection is already waiting to be admitted")),
                    Ok(ClientMsg::Join { room, sdp }) => {
                        if !grants.allows_room(&room) {
                            s.audit_denial(&tenant_id, &p.audit_actor(), "room.join", &format!("room/{room}"), "not in grants").await;
                            Some(error("not_found", "room not found"))
                        } else {
                            match s.store.get_room(&tenant_id, &room).await {
                                Err(_) => Some(error("not_found", "room not found")),
                                Ok(r) if r.ended_at.is_some() => Some(error("visit_ended", "this visit has ended")),
                                Ok(r) => {
                                    let key: RoomKey = (tenant_id.clone(), r.id.clone());
                                    let rx = s.lobby.subscribe(&key);
                                    lobby = Some((key.clone(), rx));
                                    if r.waiting_room && role == Role::Patient && s.lobby.must_wait(&key, &identity) {
                                        let ticket = s.lobby.wait(&key, &identity, name.clone());
                                        waiting = Some((ticket.clone(), r, sdp));
                                        Some(ServerMsg::Waiting { ticket, message: "the clinician will let you in shortly" }.text())
                                    } else {
                                        let (seated, reply) = take_seat(&s, &media, &me, r, sdp, &to_client, region.as_deref()).await;
                                        participant = seated.or(participant);
                                        Some(reply)
                                    }
                                }
                            }
                        }
                    }
                    Ok(ClientMsg::Admit { ticket }) => match (&lobby, participant) {
                        (Some((key, _)), Some(_)) if role.is_staff() => match s.lobby.admit(key, &ticket, &identity) {
                            Some(_) => None,
                            None => Some(error("not_found", "nobody waits with that ticket (admitted already, or gone)")),
                        },
                        (_, Some(_)) => Some(error("forbidden", "only staff in the room admit patients")),
                        _ => Some(error("not_joined", "join the room first")),
                    },
                    Ok(ClientMsg::EndVisit) => match (&lobby, participant) {
                        (Some((key, _)), Some(_)) if role.is_staff() => {
                            end_visit(&s, key, &p.audit_actor(), &identity).await.err().map(|e| error("end_refused", e))
                        }
                        (_, Some(_)) => Some(error("forbidden", "only staff in the room end the visit")),
                        _ => Some(error("not_joined", "join the room first")),
                    },
                    Ok(ClientMsg::Answer { sdp }) => match participant {
                        None => Some(error("not_joined", "join a room first")),
                        Some(id) => media.answer(id, sdp).await.err().map(|e| error("bad_answer", e.to_string())),
                    },
                    Ok(ClientMsg::Offer { sdp }) => match participant {
                        None => Some(error("not_joined", "join a room first")),
                        Some(id) => Some(match media.offer(id, sdp).await {
                            Ok(answer) => ServerMsg::Answer { sdp: answer }.text(),
                            Err(e) => error("bad_offer", e.to_string()),
                        }),
                    },
                    Ok(ClientMsg::Resume { .. }) if participant.is_some() => Some(error("already_joined", "this connection has already joined a room")),
                    Ok(ClientMsg::Resume { participant: id, token }) => match parse_participant(&id) {
                        None => Some(error("bad_message", "resume.participant must be a participant id such as `p3`")),
                        Some(id) => match media.resume(id, token, tenant_id.clone(), identity.clone(), to_client.clone()).await {
                            Ok(room) => {
                                // Hear the room again (roster, waiting room, the end),
                                // and get the roster anew after `resumed`.
                                let key: RoomKey = (tenant_id.clone(), room);
                                let rx = s.lobby.subscribe(&key);
                                lobby = Some((key, rx));
                                introduced = false;
                                participant = Some(id);
                                Some(ServerMsg::Resumed { protocol: PROTOCOL_VERSION, participant: id.to_string(), ice_servers: ice_servers(&s, &tenant_id, &identity, region.as_deref()) }.text())
                            }
                            Err(e) => Some(error("resume_refused", e.to_string())),
                        },
                    },
                    Ok(ClientMsg::Leave) => {
                        leaving = true;
                        break;
                    }
                    Ok(ClientMsg::Candidate { candidate }) => match participant {
                        None => Some(error("not_joined", "join a room first")),
                        Some(id) => media.candidate(id, candidate).await.err().map(|e| error("bad_candidate", e.to_string())),
                    },
                    Ok(ClientMsg::Mute { kind, .. }) if kind != "audio" && kind != "video" => {
                        Some(error("bad_message", "mute.kind must be `audio` or `video`"))
                    }
                    Ok(ClientMsg::Layer { participant: origin, quality }) => match (participant, layer_of(&quality), origin.as_deref().map(parse_participant)) {
                        (None, _, _) => Some(error("not_joined", "join a room first")),
                        (_, None, _) => Some(error("bad_message", "layer.quality must be `low`, `medium` or `high`")),
                        (_, _, Some(None)) => Some(error("bad_message", "layer.participant must be a participant id such as `p3`")),
                        (Some(id), Some(layer), origin) => match media.set_max_layer(id, origin.flatten(), layer).await {
                            Ok(_) => None,
                            Err(e) => Some(error("bad_layer", e.to_string())),
                        },
                    },
                    Ok(ClientMsg::Subscribe { participant: origin, kind }) => subscribe(&media, participant, &origin, kind.as_deref(), true).await,
                    Ok(ClientMsg::Unsubscribe { participant: origin, kind }) => subscribe(&media, participant, &origin, kind.as_deref(), false).await,
                    Ok(ClientMsg::Mute { kind, muted }) => match participant {
                        None => Some(error("not_joined", "join a room first")),
                        Some(id) => {
                            if let Some((key, _)) = &lobby {
                                s.lobby.set_muted(key, &id.to_string(), &kind, muted);
                            }
                            media.mute(id, kind, muted);
                            None
                        }
                    },
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => None,
            },
            notice = next_notice(&mut lobby) => match notice {
                None => None,
                Some(LobbyNotice::Ended { by }) => {
                    let _ = sink.send(Message::Text(ServerMsg::VisitEnded { by }.text().into())).await;
                    leaving = true;
                    break;
                }
                Some(LobbyNotice::Admitted { ticket, .. }) => match waiting.take() {
                    Some((mine, r, sdp)) if mine == ticket => {
                        let (seated, reply) = take_seat(&s, &media, &me, r, sdp, &to_client, region.as_deref()).await;
                        participant = seated.or(participant);
                        Some(reply)
                    }
                    other => {
                        waiting = other;
                        None
                    }
                },
                Some(LobbyNotice::Resync) => {
                    introduced = false;
                    None
                }
                Some(n) => participant.and_then(|id| roster_notice(n, id, role)),
            },
            out = from_media.recv() => match out {
                Some(ToClient::Offer(sdp)) => Some(ServerMsg::Offer { sdp }.text()),
                Some(ToClient::Speaker { participant, identity }) => {
                    Some(ServerMsg::Speaker { participant, identity }.text())
                }
                Some(ToClient::Notice(n)) => Some(notice_msg(n).text()),
                Some(ToClient::Muted { participant, identity, kind, muted }) => Some(
                    ServerMsg::Muted { participant, identity, kind, muted }.text(),
                ),
                Some(ToClient::Closed) | None => {
                    let _ = sink.send(Message::Text(ServerMsg::Left.text().into())).await;
                    participant = None;
                    break;
                }
            },
        };
        if let Some(text) = reply
            && sink.send(Message::Text(text.into())).await.is_err()
        {
            break;
        }
        // Just seated: who is here already (and, for staff, who waits).
        if participant.is_some() && !introduced {
            introduced = true;
            if let (Some((key, _)), Some(me)) = (&lobby, participant) {
                let me = me.to_string();
                let (members, waiters) = s.lobby.snapshot(key);
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
                if role.is_staff() {
                    intro.push(ServerMsg::WaitingRoom { waiting: waiters }.text());
                }
                for text in intro {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if let (Some((ticket, _, _)), Some((key, _))) = (&waiting, &lobby) {
        s.lobby.stop_waiting(key, ticket);
    }
    match participant {
        Some(id) if leaving || *stop.borrow() => media.leave(id),
        Some(id) => media.detach(id, to_client),
        None => {}
    }
}

/// Who a signaling connection speaks for.
struct Caller<'a> {
    tenant_id: &'a str,
    identity: &'a str,
    name: Option<&'a str>,
    role: Role,
}

/// Seats the caller in room `r` with its offer: the participant id (when
/// seated) and the reply (`joined`, or the refusal).
async fn take_seat(
    s: &AppState,
    media: &crate::media::Media,
    me: &Caller<'_>,
    r: Room,
    sdp: String,
    to_client: &tokio::sync::mpsc::UnboundedSender<ToClient>,
    region: Option<&str>,
) -> (Option<continuum_sfu::ParticipantId>, String) {
    let conversation = r.conversation_id.clone();
    let resume = hex::encode(rand::random::<[u8; 16]>());
    let seat = Seat {
        tenant_id: me.tenant_id.to_owned(),
        conversation_id: r.conversation_id,
        room_id: r.id,
        identity: me.identity.to_owned(),
        name: me.name.map(str::to_owned),
        role: me.role,
        max_participants: r.max_participants.max(0) as usize,
        resume_token: Some(resume.clone()),
    };
    match media
        .join(seat, sdp, continuum_sfu::Mode::Full, to_client.clone())
        .await
    {
        Ok((id, answer)) => {
            if matches!(me.role, Role::Clinician | Role::Agent) {
                assign_on_join(s, me.tenant_id, &conversation, me.identity);
            }
            let joined = ServerMsg::Joined {
                protocol: PROTOCOL_VERSION,
                resume,
                participant: id.to_string(),
                conversation,
                sdp: answer,
                ice_servers: ice_servers(s, me.tenant_id, me.identity, region),
            };
            (Some(id), joined.text())
        }
        Err(e) => (None, error("join_refused", e.to_string())),
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
        .end_room(&key.0, &key.1, audit_actor)
        .await
        .map_err(|e| e.to_string())?;
    s.lobby.end(key, by);
    Ok(())
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
