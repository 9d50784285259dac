//! Video rooms and WebSocket signaling (`/v1/rtc`, protocol version 1).
//!
//! Client → server: `{"type":"join","room":ID,"sdp":OFFER}` (or, after the connection
//! dropped, `{"type":"resume","participant","token"}` → `{"type":"resumed","participant","ice_servers"}`),
//! `{"type":"answer","sdp"}`
//! (to our renegotiation offer), `{"type":"offer","sdp"}` (client renegotiation),
//! `{"type":"leave"}`.
//! Server → client: `{"type":"joined","protocol":1,"resume","participant","sdp":ANSWER,"ice_servers":[...]}`
//! (TURN over UDP and TCP with short-lived REST credentials for this tenant and
//! participant; `[]` when the node runs no TURN server),
//! `{"type":"offer","sdp"}` (tracks came or went), `{"type":"answer","sdp"}`,
//! `{"type":"error","code","message"}`, `{"type":"left"}`,
//! `{"type":"speaker","participant","identity"}` (active speaker changed; null: nobody),
//! `{"type":"muted","participant","identity","kind","muted"}` (another participant),
//! `{"type":"track_published","participant","identity","kind":"audio"|"video","track"}`
//! (another participant's track, also each one already in the room on joining; its
//! media arrives in a stream whose id is the participant id), `{"type":"track_unpublished",
//! "participant","track"}`, `{"type":"quality","participant","identity","rating":
//! "excellent"|"good"|"poor","loss","rtt_ms","jitter_ms"}` (one's own about once a
//! second, the others' when their rating changes),
//! `{"type":"publish_layers","mid","paused":["h","f"]}` (stop sending these simulcast
//! encodings, by rid, of the track in m-line `mid`, and send the others: nobody in
//! the room takes the paused ones now; a later message resumes them as soon as
//! someone does).
//! Client → server also: `{"type":"mute","kind":"audio"|"video","muted":bool}`,
//! `{"type":"candidate","candidate":"candidate:..."}` (trickle; optional with an
//! ICE-lite server, `""` ends them),
//! `{"type":"layer","participant":"p3"?,"quality":"low"|"medium"|"high"}` (the
//! highest simulcast layer wanted from one participant, or from everyone),
//! `{"type":"unsubscribe"|"subscribe","participant":"p3","kind":"audio"|"video"?}`
//! (stop or restart receiving one participant's tracks, of one kind or both).

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::media::{Seat, ToClient};
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use continuum_core::{Permission, Principal};
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
    match s
        .store
        .create_room(p.tenant_id(), &id, max, &p.audit_actor())
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

/// The signaling protocol's version, in the `joined` reply (the path's `/v1`
/// names the API; this changes only if messages change incompatibly, and new
/// message types are added without it: clients ignore types they do not know).
const PROTOCOL_VERSION: u32 = 1;

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
fn notice_json(n: continuum_sfu::Notice) -> String {
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
        } => json!({"type": "track_published", "participant": origin.to_string(), "identity": identity,
            "kind": kind(k), "track": format!("{origin}/{mid}")}),
        Notice::PauseLayers { mid, paused } => {
            json!({"type": "publish_layers", "mid": mid, "paused": paused})
        }
        Notice::TrackUnpublished { origin, mid } => {
            json!({"type": "track_unpublished", "participant": origin.to_string(), "track": format!("{origin}/{mid}")})
        }
        Notice::Quality {
            origin,
            identity,
            rating,
            sample,
        } => json!({"type": "quality", "participant": origin.to_string(), "identity": identity,
            "rating": rating.as_str(), "loss": sample.loss,
            "rtt_ms": sample.rtt.map(|d| d.as_millis() as u64),
            "jitter_ms": sample.jitter.map(|d| d.as_millis() as u64)}),
    }
    .to_string()
}

fn error(code: &str, message: impl Into<String>) -> String {
    json!({"type": "error", "code": code, "message": message.into()}).to_string()
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
    let mut stop = s.shutdown.subscribe();
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
                Some(json!({"type": "token_expired", "message": "the access token expired: the call goes on; send `refresh` with a new token to join, resume or publish again"}).to_string())
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
                            Some(json!({"type": "refreshed", "expires_at": exp}).to_string())
                        }
                        Err(reason) => Some(error("refresh_refused", reason)),
                    },
                    Ok(ClientMsg::Join { .. } | ClientMsg::Resume { .. } | ClientMsg::Offer { .. }) if token.expires_at <= crate::auth::unix_now() => {
                        Some(error("token_expired", "the access token expired: send `refresh` with a new token first"))
                    }
                    Ok(ClientMsg::Join { .. }) if participant.is_some() => Some(error("already_joined", "this connection has already joined a room")),
                    Ok(ClientMsg::Join { room, sdp }) => {
                        if !grants.allows_room(&room) {
                            s.audit_denial(&tenant_id, &p.audit_actor(), "room.join", &format!("room/{room}"), "not in grants").await;
                            Some(error("not_found", "room not found"))
                        } else {
                            match s.store.get_room(&tenant_id, &room).await {
                                Err(_) => Some(error("not_found", "room not found")),
                                Ok(r) => {
                                    let conversation = r.conversation_id.clone();
                                    let resume = hex::encode(rand::random::<[u8; 16]>());
                                    let seat = Seat { tenant_id: tenant_id.clone(), conversation_id: r.conversation_id, room_id: r.id, identity: identity.clone(), role, max_participants: r.max_participants.max(0) as usize, resume_token: Some(resume.clone()) };
                                    match media.join(seat, sdp, continuum_sfu::Mode::Full, to_client.clone()).await {
                                        Ok((id, answer)) => {
                                            participant = Some(id);
                                            Some(json!({"type": "joined", "protocol": PROTOCOL_VERSION, "resume": resume, "participant": id.to_string(), "conversation": conversation, "sdp": answer, "ice_servers": ice_servers(&s, &tenant_id, &identity, region.as_deref())}).to_string())
                                        }
                                        Err(e) => Some(error("join_refused", e.to_string())),
                                    }
                                }
                            }
                        }
                    }
                    Ok(ClientMsg::Answer { sdp }) => match participant {
                        None => Some(error("not_joined", "join a room first")),
                        Some(id) => media.answer(id, sdp).await.err().map(|e| error("bad_answer", e.to_string())),
                    },
                    Ok(ClientMsg::Offer { sdp }) => match participant {
                        None => Some(error("not_joined", "join a room first")),
                        Some(id) => Some(match media.offer(id, sdp).await {
                            Ok(answer) => json!({"type": "answer", "sdp": answer}).to_string(),
                            Err(e) => error("bad_offer", e.to_string()),
                        }),
                    },
                    Ok(ClientMsg::Resume { .. }) if participant.is_some() => Some(error("already_joined", "this connection has already joined a room")),
                    Ok(ClientMsg::Resume { participant: id, token }) => match parse_participant(&id) {
                        None => Some(error("bad_message", "resume.participant must be a participant id such as `p3`")),
                        Some(id) => match media.resume(id, token, tenant_id.clone(), identity.clone(), to_client.clone()).await {
                            Ok(()) => {
                                participant = Some(id);
                                Some(json!({"type": "resumed", "protocol": PROTOCOL_VERSION, "participant": id.to_string(), "ice_servers": ice_servers(&s, &tenant_id, &identity, region.as_deref())}).to_string())
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
                            media.mute(id, kind, muted);
                            None
                        }
                    },
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => None,
            },
            out = from_media.recv() => match out {
                Some(ToClient::Offer(sdp)) => Some(json!({"type": "offer", "sdp": sdp}).to_string()),
                Some(ToClient::Speaker { participant, identity }) => {
                    Some(json!({"type": "speaker", "participant": participant, "identity": identity}).to_string())
                }
                Some(ToClient::Notice(n)) => Some(notice_json(n)),
                Some(ToClient::Muted { participant, identity, kind, muted }) => Some(
                    json!({"type": "muted", "participant": participant, "identity": identity, "kind": kind, "muted": muted}).to_string(),
                ),
                Some(ToClient::Closed) | None => {
                    let _ = sink.send(Message::Text(json!({"type": "left"}).to_string().into())).await;
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
    }
    match participant {
        Some(id) if leaving || *stop.borrow() => media.leave(id),
        Some(id) => media.detach(id, to_client),
        None => {}
    }
}
