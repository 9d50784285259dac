//! Video visits around their rooms: a tenant's visit settings, a room's state
//! and roster, ending a visit for everyone, and the help a patient gets for a
//! link that no longer works.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::lobby::Member;
use crate::state::AppState;
use axum::extract::State;
use continuum_core::{Permission, Principal};
use continuum_store::{Room, VisitSettings};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The tenant's visit settings.
#[utoipa::path(get, path = "/v1/settings/visits", tag = "video", operation_id = "getVisitSettings",
    responses((status = 200, body = VisitSettings, description = "the settings (defaults until changed)"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage settings")),
    security(("bearer" = [])))]
pub async fn get_settings(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<VisitSettings>> {
    s.require(&p, Permission::ManageTenant, "settings/visits")
        .await?;
    Ok(Json(s.store.visit_settings(p.tenant_id()).await?))
}

/// Replace the tenant's visit settings (waiting room by default, who patients contact about a bad link).
#[utoipa::path(put, path = "/v1/settings/visits", tag = "video", operation_id = "setVisitSettings", request_body = VisitSettings,
    responses((status = 200, body = VisitSettings, description = "the settings, as stored"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage settings"),
        (status = 422, body = ErrorBody, description = "a field is invalid (the message names it)")),
    security(("bearer" = [])))]
pub async fn set_settings(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(settings): Json<VisitSettings>,
) -> ApiResult<Json<VisitSettings>> {
    s.require(&p, Permission::ManageTenant, "settings/visits")
        .await?;
    if let Some(c) = &settings.support_contact
        && (c.trim().is_empty() || c.chars().count() > 200 || c.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "support_contact must be 1..=200 characters of text, without control characters",
        ));
    }
    s.store
        .set_visit_settings(p.tenant_id(), &settings, &p.audit_actor())
        .await?;
    Ok(Json(settings))
}

#[derive(Serialize, ToSchema)]
pub struct RoomView {
    #[serde(flatten)]
    pub room: Room,
    /// Who is in the room now (on this node), with names and roles.
    #[schema(value_type = Vec<Object>)]
    pub participants: Vec<Member>,
}

/// Checks that `p` may act on room `id`: a token needs the room in its grants
/// (and, for the conversation behind it, the conversation too); an API key
/// reaches every room of its tenant.
pub(crate) async fn room_in_reach(s: &AppState, p: &Principal, id: &str) -> ApiResult<Room> {
    if let Principal::Token { grants, .. } = p
        && !grants.allows_room(id)
    {
        s.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "room.read",
            &format!("room/{id}"),
            "not in grants",
        )
        .await;
        return Err(ApiError::not_found("room"));
    }
    let room = s.store.get_room(p.tenant_id(), id).await?;
    Ok(room)
}

/// A visit room: whether it waits patients, whether it ended, who is in it.
#[utoipa::path(get, path = "/v1/rooms/{id}", tag = "video", operation_id = "getRoom", params(("id" = String, Path, description = "the room's id")),
    responses((status = 200, body = RoomView, description = "the room and its participants"),
        (status = 404, body = ErrorBody, description = "no such room in your grants")),
    security(("bearer" = [])))]
pub async fn get_room(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<RoomView>> {
    let room = room_in_reach(&s, &p, &id).await?;
    let participants = s
        .lobby
        .members(&crate::lobby::RoomKey::new(p.tenant_id(), &room.id));
    Ok(Json(RoomView { room, participants }))
}

/// End the visit for everyone: all participants leave (told `visit_ended`), nobody joins again.
#[utoipa::path(post, path = "/v1/rooms/{id}/end", tag = "video", operation_id = "endRoom", params(("id" = String, Path, description = "the room's id")),
    responses((status = 200, body = RoomView, description = "the room, ended (ending it again changes nothing)"),
        (status = 403, body = ErrorBody, description = "patients cannot end a visit"),
        (status = 404, body = ErrorBody, description = "no such room in your grants")),
    security(("bearer" = [])))]
pub async fn end_room(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<RoomView>> {
    let room = room_in_reach(&s, &p, &id).await?;
    s.require(
        &p,
        Permission::ChangeConversationState,
        &format!("room/{id}"),
    )
    .await?;
    let by = match &p {
        Principal::Token { identity, .. } => identity.clone(),
        Principal::ApiKey { .. } => "api".into(),
    };
    let key = crate::lobby::RoomKey::new(p.tenant_id(), &room.id);
    super::rtc::end_visit(&s, &key, &p.audit_actor(), &by)
        .await
        .map_err(ApiError::bad_request)?;
    let room = s.store.get_room(p.tenant_id(), &id).await?;
    Ok(Json(RoomView {
        participants: s.lobby.members(&key),
        room,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkHelpRequest {
    /// The access token of the visit link, even an expired one.
    #[schema(max_length = 4096)]
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct LinkHelp {
    /// `valid`, `expired` or `revoked`.
    pub status: String,
    /// The clinic (tenant) that sent the link.
    pub clinic: String,
    /// Who to contact for a new link, from the tenant's visit settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_contact: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What a visit page tells a patient whose link does not work: whether it
/// expired, and who to contact. Takes the link's token (expired ones too:
/// the signature must be ours); answers nothing else about the tenant.
#[utoipa::path(post, path = "/v1/visit-help", tag = "video", operation_id = "visitLinkHelp", request_body = LinkHelpRequest,
    responses((status = 200, body = LinkHelp, description = "the link's status and who to contact"),
        (status = 404, body = ErrorBody, description = "not a token this server issued (the link is broken)")),
    security(()))]
pub async fn link_help(
    State(s): State<AppState>,
    Json(req): Json<LinkHelpRequest>,
) -> ApiResult<Json<LinkHelp>> {
    let not_ours = || ApiError::not_found("visit link");
    let claims = s
        .tokens
        .verify_ignoring_expiry(&req.token)
        .map_err(|_| not_ours())?;
    let tenant = s
        .store
        .find_tenant(&claims.tid)
        .await
        .map_err(|_| not_ours())?;
    let settings = s.store.visit_settings(&claims.tid).await?;
    let status = if s.revocations.check(&claims.tid, &claims.meta()).is_err() {
        "revoked"
    } else if claims.exp <= continuum_core::clock::unix_secs() {
        "expired"
    } else {
        "valid"
    };
    Ok(Json(LinkHelp {
        status: status.into(),
        clinic: tenant.name,
        support_contact: settings.support_contact,
        expires_at: claims.exp,
    }))
}
