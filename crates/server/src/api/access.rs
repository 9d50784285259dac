//! Tokens, API keys and staff: how a tenant lets people in.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::{Grants, Permission, Principal, Role};
use continuum_store::{ApiKeyInfo, Staff, Timestamp};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintTokenRequest {
    /// Who the token is for: a staff id, your app's user id, a patient's contact id.
    #[schema(pattern = r"^[A-Za-z0-9._:@+-]{1,128}$")]
    pub identity: String,
    pub role: Role,
    /// Conversations and rooms the token may touch (`"*"` = all; not allowed for patients).
    #[serde(default)]
    pub grants: Grants,
    /// Lifetime; defaults to `security.token_default_ttl_secs`, at most
    /// `token_max_ttl_secs` (and, minted by a token, at most what it has left).
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
    /// Display name shown to other participants.
    #[schema(max_length = 100)]
    pub name: Option<String>,
    /// The participant's region (e.g. `eu`): TURN nodes there come first in
    /// `ice_servers`, here and in the signaling `joined` reply (the token
    /// carries it).
    #[schema(pattern = r"^[A-Za-z0-9-]{1,32}$")]
    pub region: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MintTokenResponse {
    pub token: String,
    /// The token's id, for `POST /v1/tokens/revoke`.
    pub jti: String,
    pub expires_at: Timestamp,
    pub identity: String,
    pub role: Role,
    pub grants: Grants,
    /// TURN servers (`RTCPeerConnection` `iceServers`) with short-lived
    /// credentials for this identity, when tokens grant rooms and this node
    /// runs TURN; the `joined` signaling reply carries them too.
    #[schema(value_type = Vec<Object>)]
    pub ice_servers: serde_json::Value,
}

/// Mint a short-lived access token for a clinician, agent, patient, admin or auditor.
#[utoipa::path(post, path = "/v1/tokens", tag = "access", operation_id = "mintToken", request_body = MintTokenRequest,
    responses((status = 201, body = MintTokenResponse, description = "the token, its `jti` and expiry, and TURN servers when it grants rooms"),
        (status = 403, body = ErrorBody, description = "this credential may not mint tokens, or not this role or these grants"),
        (status = 422, body = ErrorBody, description = "identity, role, grants or ttl_seconds invalid (the message names the field)")),
    security(("bearer" = [])))]
pub async fn mint_token(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<MintTokenRequest>,
) -> ApiResult<(StatusCode, Json<MintTokenResponse>)> {
    s.require(&p, Permission::MintTokens, "tokens").await?;
    super::check_identity("identity", &req.identity)?;
    if req
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 100 || n.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "name must be at most 100 characters, without control characters",
        ));
    }
    if req.region.as_ref().is_some_and(|r| {
        r.is_empty() || r.len() > 32 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        return Err(ApiError::invalid(
            "region must be 1..=32 letters, digits and dashes",
        ));
    }
    if req.role == Role::Patient
        && (req.grants.allows_all_conversations()
            || req.grants.rooms.iter().any(|r| r == "*")
            || !req.grants.contacts.is_empty())
    {
        return Err(ApiError::invalid(
            "patient tokens must name their conversations and rooms; `*` and contact grants are refused",
        ));
    }
    let sec = &s.config.security;
    let ttl = req.ttl_seconds.unwrap_or(sec.token_default_ttl_secs);
    if ttl == 0 || ttl > sec.token_max_ttl_secs {
        return Err(ApiError::invalid(format!(
            "ttl_seconds must be 1..={} (security.token_max_ttl_secs)",
            sec.token_max_ttl_secs
        )));
    }
    // A token hands on no more than it holds: not a longer life, not a
    // higher role, not wider grants; and it dies with the key it came from.
    let (ttl, key_id) = match &p {
        Principal::ApiKey { key_id, .. } => (ttl, Some(key_id.clone())),
        Principal::Token {
            role,
            grants,
            token,
            ..
        } => {
            if !p.may_mint_role(req.role) {
                return Err(ApiError::forbidden(format!(
                    "a {} token may not mint {} tokens",
                    role.as_str(),
                    req.role.as_str()
                )));
            }
            if *role != Role::Admin && !req.grants.within(grants) {
                return Err(ApiError::forbidden(
                    "grants must be within the minting token's own grants",
                ));
            }
            let left = token
                .expires_at
                .saturating_sub(continuum_core::clock::unix_secs());
            if req.ttl_seconds.is_some_and(|asked| asked > left) {
                return Err(ApiError::invalid(format!(
                    "ttl_seconds must be at most {left}: a token may not outlive the token that mints it"
                )));
            }
            if left == 0 {
                return Err(ApiError::unauthorized("the access token has expired"));
            }
            (ttl.min(left), token.key_id.clone())
        }
    };
    let (token, claims) = s.tokens.mint_claims(
        p.tenant_id(),
        &req.identity,
        req.role,
        req.grants.clone(),
        crate::auth::About {
            name: req.name,
            region: req.region.clone(),
            key_id,
        },
        Duration::from_secs(ttl),
    );
    let exp = claims.exp;
    let entry = continuum_store::AuditEntry::new(
        p.audit_actor(),
        "token.mint",
        format!("identity/{}", req.identity),
        continuum_store::Outcome::Ok,
    )
    .with_detail(serde_json::json!({ "role": req.role, "ttl_seconds": ttl }));
    s.store.audit(p.tenant_id(), entry).await?;
    Ok((
        StatusCode::CREATED,
        Json(MintTokenResponse {
            token,
            jti: claims.jti,
            expires_at: Timestamp(exp as i64 * 1_000_000),
            ice_servers: match (&s.turn, req.grants.rooms.is_empty()) {
                (Some(t), false) => {
                    t.ice_servers(p.tenant_id(), &req.identity, req.region.as_deref())
                }
                _ => serde_json::json!([]),
            },
            identity: req.identity,
            role: req.role,
            grants: req.grants,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The key itself. Shown once; only its hash is stored.
    pub key: String,
}

/// Create an API key for server-to-server calls.
#[utoipa::path(post, path = "/v1/api-keys", tag = "access", operation_id = "createApiKey", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey, description = "the new key, shown once"),
        (status = 403, body = ErrorBody, description = "only an API key creates API keys (never an access token)")),
    security(("bearer" = [])))]
pub async fn create_key(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    s.require(&p, Permission::ManageTenant, "api_keys").await?;
    if !matches!(p, Principal::ApiKey { .. }) {
        s.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "api_key.create",
            "api_keys",
            "access tokens may not create API keys",
        )
        .await;
        return Err(ApiError::forbidden(
            "API keys are created only with an API key (or `continuum key create`), never with an access token",
        ));
    }
    if req.name.is_empty() || req.name.len() > 100 || req.name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name must be 1..=100 characters, without control characters",
        ));
    }
    let (info, key) = s
        .store
        .create_api_key(p.tenant_id(), &req.name, &p.audit_actor())
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { info, key })))
}

/// List the tenant's API keys (never the secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "access", operation_id = "listApiKeys",
    responses((status = 200, body = Vec<ApiKeyInfo>, description = "the tenant's API keys, without secrets")), security(("bearer" = [])))]
pub async fn list_keys(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<ApiKeyInfo>>> {
    s.require(&p, Permission::ManageTenant, "api_keys").await?;
    Ok(Json(s.store.list_api_keys(p.tenant_id()).await?))
}

/// Revoke an API key; it stops working immediately on this node.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "access", operation_id = "revokeApiKey",
    params(("id" = String, Path, description = "the key's id")),
    responses((status = 204, description = "revoked: the key and every token minted under it stop working")), security(("bearer" = [])))]
pub async fn revoke_key(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageTenant, "api_keys").await?;
    s.store
        .revoke_api_key(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    s.keys.forget_key_id(&id);
    s.revocations.revoke_key(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeTokenRequest {
    /// The `jti` from the mint response (or the token's own claims).
    #[schema(min_length = 1, max_length = 64)]
    pub jti: String,
}

/// Revoke an access token by its `jti`: it stops working at once for REST, live
/// streams and signaling (open sockets and streams are closed). Needs the API
/// key or an admin token; any token may revoke itself (sign-out).
#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "access", operation_id = "revokeToken", request_body = RevokeTokenRequest,
    responses((status = 204, description = "revoked (also when it already was)"),
        (status = 403, body = ErrorBody, description = "the credential may not revoke other tokens"),
        (status = 422, body = ErrorBody, description = "jti missing or malformed")),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<RevokeTokenRequest>,
) -> ApiResult<StatusCode> {
    let own = matches!(&p, Principal::Token { token, .. } if token.jti == req.jti);
    if !own {
        s.require(&p, Permission::MintTokens, "tokens").await?;
    }
    if req.jti.is_empty()
        || req.jti.len() > 64
        || !req
            .jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::invalid(
            "jti must be 1..=64 letters, digits and dashes (the `jti` of POST /v1/tokens)",
        ));
    }
    // Kept until any token could have expired: its own exp is not needed.
    let until = continuum_core::clock::unix_secs() + s.config.security.token_max_ttl_secs + 60;
    s.store
        .revoke_token(p.tenant_id(), &req.jti, until, &p.audit_actor())
        .await?;
    s.revocations.revoke_token(p.tenant_id(), &req.jti, until);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStaffRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub display_name: String,
    pub role: Role,
    #[schema(max_length = 254)]
    pub email: Option<String>,
}

/// Add a clinician, agent, admin or auditor.
#[utoipa::path(post, path = "/v1/staff", tag = "access", operation_id = "createStaff", request_body = CreateStaffRequest,
    responses((status = 201, body = Staff, description = "the staff member")), security(("bearer" = [])))]
pub async fn create_staff(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<CreateStaffRequest>,
) -> ApiResult<(StatusCode, Json<Staff>)> {
    s.require(&p, Permission::ManageStaff, "staff").await?;
    if req.role == Role::Patient {
        return Err(ApiError::invalid(
            "staff role must be clinician, agent, admin or auditor",
        ));
    }
    let staff = s
        .store
        .create_staff(
            p.tenant_id(),
            req.role,
            &req.display_name,
            req.email,
            &p.audit_actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(staff)))
}

/// List staff.
#[utoipa::path(get, path = "/v1/staff", tag = "access", operation_id = "listStaff",
    responses((status = 200, body = Vec<Staff>, description = "the tenant's staff")), security(("bearer" = [])))]
pub async fn list_staff(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Vec<Staff>>> {
    s.require(&p, Permission::ManageStaff, "staff").await?;
    Ok(Json(s.store.list_staff(p.tenant_id()).await?))
}
