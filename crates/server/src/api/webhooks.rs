//! Webhook endpoints and their delivery log.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::Permission;
use continuum_store::{Delivery, Webhook, WebhookPayload};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// An https URL (plain http only to hosts in `webhooks.allow_http_hosts`).
    /// Private and loopback targets are refused unless
    /// `webhooks.allow_private_targets` is set.
    #[schema(max_length = 2048)]
    pub url: String,
    /// `event.created`, `conversation.created`, `conversation.updated`, or `*` (default).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// `full` (default) or `thin`: ids, kinds and states only, no PHI; the
    /// receiver fetches the rest with its own credentials.
    #[serde(default)]
    pub payload: WebhookPayload,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// HMAC-SHA256 signing secret. Shown once. Verify `Continuum-Signature:
    /// t=<unix>,v1=<hex(HMAC(secret, "<t>.<body>"))>` on every delivery.
    pub secret: String,
}

/// Register a webhook endpoint.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", operation_id = "createWebhook", request_body = CreateWebhookRequest,
    responses((status = 201, body = CreatedWebhook, description = "the endpoint and its signing secret, shown once")), security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<CreateWebhookRequest>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    s.require(&p, Permission::ManageWebhooks, "webhooks")
        .await?;
    let cfg = &s.config.webhooks;
    crate::dispatch::check_target(&req.url, cfg.allow_private_targets, &cfg.allow_http_hosts)
        .await
        .map_err(ApiError::invalid)?;
    let (webhook, secret) = s
        .store
        .create_webhook(
            p.tenant_id(),
            &req.url,
            req.event_types,
            req.payload,
            &p.audit_actor(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook, secret }),
    ))
}

/// List webhook endpoints.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", operation_id = "listWebhooks",
    responses((status = 200, body = Vec<Webhook>, description = "the tenant's endpoints")), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Vec<Webhook>>> {
    s.require(&p, Permission::ManageWebhooks, "webhooks")
        .await?;
    Ok(Json(s.store.list_webhooks(p.tenant_id()).await?))
}

/// Remove a webhook endpoint; its pending deliveries are cancelled.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "deleteWebhook", params(("id" = String, Path, description = "the endpoint's id")),
    responses((status = 204, description = "removed; its pending deliveries are cancelled")), security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageWebhooks, "webhooks")
        .await?;
    s.store
        .delete_webhook(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The most recent delivery attempts to this endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "listDeliveries", params(("id" = String, Path, description = "the endpoint's id")),
    responses((status = 200, body = Vec<Delivery>, description = "the 100 most recent attempts")), security(("bearer" = [])))]
pub async fn deliveries(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Delivery>>> {
    s.require(&p, Permission::ManageWebhooks, "webhooks")
        .await?;
    Ok(Json(
        s.store.list_deliveries(p.tenant_id(), &id, 100).await?,
    ))
}
