//! WHIP (RFC 9725) and WHEP: publish into, or watch, a visit room with one
//! HTTP request carrying an SDP offer, so a medical camera, an encoder or any
//! standard tool can join without our SDK. Authenticate with
//! `Authorization: Bearer <access token with a grant for the room>`.
//!
//! `POST /v1/rooms/{room}/whip` (publish) or `/whep` (watch), body
//! `application/sdp` → `201 Created`, `Location: /v1/rooms/{room}/sessions/{id}`,
//! body the SDP answer. `PATCH` the session with trickle ICE fragments (accepted;
//! this server is ICE-lite and needs none), `DELETE` it to leave.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Path;
use crate::media::Seat;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use continuum_core::Principal;
use continuum_sfu::{Mode, ParticipantId};
use parking_lot::Mutex;
use std::collections::HashMap;

/// One WHIP/WHEP session: bound to the tenant, identity and room that made
/// it; nobody else can see, change or end it.
struct Session {
    tenant_id: String,
    identity: String,
    room: String,
    participant: ParticipantId,
}

/// WHIP/WHEP sessions on this node, by their unguessable id (128 random bits,
/// hex): the URL in `Location` is the only handle on a session.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn new_session_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

async fn start(
    s: AppState,
    p: Principal,
    room: String,
    headers: HeaderMap,
    body: Bytes,
    mode: Mode,
) -> ApiResult<Response> {
    let Principal::Token {
        tenant_id,
        identity,
        role,
        grants,
        ..
    } = &p
    else {
        return Err(ApiError::forbidden(
            "use an access token with a grant for this room, not an API key",
        ));
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the SDP offer with `Content-Type: application/sdp`",
        ));
    }
    if !grants.allows_room(&room) {
        s.audit_denial(
            tenant_id,
            &p.audit_actor(),
            "room.join",
            &format!("room/{room}"),
            "not in grants",
        )
        .await;
        return Err(ApiError::not_found("room"));
    }
    let r = s.store.get_room(tenant_id, &room).await?;
    let sdp = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the SDP offer is not UTF-8"))?;
    let media = s.media.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media_unavailable",
            "this node runs no media worker",
        )
    })?;
    let seat = Seat {
        room: crate::lobby::RoomKey::new(tenant_id, &r.id),
        conversation_id: r.conversation_id,
        identity: identity.clone(),
        name: None,
        role: *role,
        max_participants: r.max_participants.max(0) as usize,
        phone: false,
    };
    // WHIP/WHEP sessions are never renegotiated; the channel only tells us when
    // the session ends (DELETE, ICE timeout, room closed) to forget it.
    let (to_client, mut from_media) = tokio::sync::mpsc::unbounded_channel();
    let (id, answer) = media
        .join(seat.joining(sdp, mode, None), to_client)
        .await
        .map_err(|e| match e {
            continuum_sfu::JoinError::RoomFull { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "room_full", e.to_string())
            }
            e => ApiError::bad_request(e.to_string()),
        })?;
    let session_id = new_session_id();
    s.whip.0.lock().insert(
        session_id.clone(),
        Session {
            tenant_id: tenant_id.clone(),
            identity: identity.clone(),
            room: room.clone(),
            participant: id,
        },
    );
    let sessions = s.whip.clone();
    let forget = session_id.clone();
    tokio::spawn(async move {
        while let Some(msg) = from_media.recv().await {
            if matches!(msg, crate::media::ToClient::Closed) {
                break;
            }
        }
        sessions.0.lock().remove(&forget);
    });
    let location = format!("/v1/rooms/{room}/sessions/{session_id}");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response())
}

/// Publish into a room (WHIP).
#[utoipa::path(post, path = "/v1/rooms/{room}/whip", tag = "video", operation_id = "whipPublish", params(("room" = String, Path, description = "the room's id")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer"),
    responses((status = 201, content_type = "application/sdp", body = String, description = "SDP answer; `Location` names the session",
            headers(("Location" = String, description = "/v1/rooms/{room}/sessions/{id}: the session's only handle"))),
        (status = 400, body = ErrorBody, description = "the offer is not valid SDP (the message names the line) or not UTF-8"),
        (status = 403, body = ErrorBody, description = "an API key cannot publish: use an access token with a grant for the room"),
        (status = 413, body = ErrorBody, description = "the offer is larger than server.max_body_bytes"),
        (status = 415, body = ErrorBody, description = "send the offer as `Content-Type: application/sdp`"),
        (status = 503, body = ErrorBody, description = "the room is full, or this node runs no media worker")),
    security(("bearer" = [])))]
pub async fn whip(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    start(s, p, room, headers, body, Mode::PublishOnly).await
}

/// Watch a room (WHEP): the offer's receive-only m-lines get the room's current tracks.
#[utoipa::path(post, path = "/v1/rooms/{room}/whep", tag = "video", operation_id = "whepWatch", params(("room" = String, Path, description = "the room's id")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer"),
    responses((status = 201, content_type = "application/sdp", body = String, description = "SDP answer; `Location` names the session",
            headers(("Location" = String, description = "/v1/rooms/{room}/sessions/{id}: the session's only handle"))),
        (status = 400, body = ErrorBody, description = "the offer is not valid SDP (the message names the line) or not UTF-8"),
        (status = 403, body = ErrorBody, description = "an API key cannot watch: use an access token with a grant for the room"),
        (status = 413, body = ErrorBody, description = "the offer is larger than server.max_body_bytes"),
        (status = 415, body = ErrorBody, description = "send the offer as `Content-Type: application/sdp`"),
        (status = 503, body = ErrorBody, description = "the room is full, or this node runs no media worker")),
    security(("bearer" = [])))]
pub async fn whep(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    start(s, p, room, headers, body, Mode::SubscribeOnly).await
}

/// The session's participant, if `p` made it (same tenant, identity and room);
/// anyone else gets 404, audited, exactly as for a session that never existed.
async fn owned(s: &AppState, p: &Principal, room: &str, id: &str) -> ApiResult<ParticipantId> {
    let found = match (p, s.whip.0.lock().get(id)) {
        (Principal::Token { identity, .. }, Some(session))
            if session.tenant_id == p.tenant_id()
                && &session.identity == identity
                && session.room == room =>
        {
            Some(session.participant)
        }
        _ => None,
    };
    match found {
        Some(participant) => Ok(participant),
        None => {
            s.audit_denial(
                p.tenant_id(),
                &p.audit_actor(),
                "media_session.access",
                &format!("room/{room}/session"),
                "not the session's owner, or no such session",
            )
            .await;
            Err(ApiError::not_found("session"))
        }
    }
}

/// End a WHIP/WHEP session (only its creator can).
#[utoipa::path(delete, path = "/v1/rooms/{room}/sessions/{id}", tag = "video", operation_id = "endMediaSession", params(("room" = String, Path, description = "the room's id"), ("id" = String, Path, description = "the session id from `Location`")),
    responses((status = 200, description = "the session ended")),
    security(("bearer" = [])))]
pub async fn end(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((room, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let participant = owned(&s, &p, &room, &id).await?;
    s.whip.0.lock().remove(&id);
    if let Some(media) = &s.media {
        media.leave(participant);
    }
    let entry = continuum_store::AuditEntry::new(
        p.audit_actor(),
        "media_session.end",
        format!("room/{room}/participant/{participant}"),
        continuum_store::Outcome::Ok,
    );
    s.store.audit(p.tenant_id(), entry).await?;
    Ok(StatusCode::OK)
}

/// Trickle ICE for a session: accepted and not needed (the server is ICE-lite).
#[utoipa::path(patch, path = "/v1/rooms/{room}/sessions/{id}", tag = "video", operation_id = "trickleMediaSession", params(("room" = String, Path, description = "the room's id"), ("id" = String, Path, description = "the session id from `Location`")),
    responses((status = 204, description = "accepted (the server is ICE-lite and needs no trickled candidates)")),
    security(("bearer" = [])))]
pub async fn trickle(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((room, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    owned(&s, &p, &room, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
