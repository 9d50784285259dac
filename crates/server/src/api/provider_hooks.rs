//! Webhooks that messaging providers call: inbound messages and delivery
//! receipts. No bearer token: each is authenticated by the provider's
//! signature (Twilio's `X-Twilio-Signature`, Meta's `X-Hub-Signature-256`)
//! over the exact bytes received, checked before anything is parsed or
//! stored. The URL names the provider (`/v1/messaging/twilio/{id}/…`), which
//! gives the credentials to check with and the tenant.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Path;
use crate::guard::RequestInfo;
use crate::messaging::MessagingService;
use crate::state::AppState;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use continuum_messaging::{meta, twilio};
use continuum_store::{ProviderKind, ProviderWithSecret, StoreError};
use std::sync::Arc;

/// Twilio's "no reply" answer.
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

fn service(s: &AppState) -> ApiResult<Arc<MessagingService>> {
    s.messaging.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "messaging_disabled",
            "messaging is not enabled on this node (messaging.enabled)",
        )
    })
}

/// The provider a webhook URL names, of the kind the route expects. An
/// unknown or malformed id is a 404 that costs one indexed read.
async fn provider(s: &AppState, id: &str, kind: ProviderKind) -> ApiResult<ProviderWithSecret> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("messaging provider"));
    }
    match s.store.messaging_provider(id).await {
        Ok(p) if p.provider.kind == kind => Ok(p),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(ApiError::not_found("messaging provider")),
        Err(e) => Err(e.into()),
    }
}

fn secret<'a>(p: &'a ProviderWithSecret, field: &str) -> ApiResult<&'a str> {
    p.secret
        .get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::internal(format!("provider has no {field}")))
}

/// A bad signature: 403, recorded at bounded cost (the refusal aggregator).
async fn forged(s: &AppState, info: &RequestInfo, p: &ProviderWithSecret, why: String) -> ApiError {
    if let Err(wait) = s.limits.refusal(info.source) {
        return ApiError::too_many(wait);
    }
    let actor = format!("anonymous@{}", crate::guard::limits::bucket(info.source));
    s.audit_denial(
        &p.tenant_id,
        &actor,
        "provider_webhook",
        &format!("messaging_provider/{}", p.provider.id),
        "signature check failed",
    )
    .await;
    metrics::counter!("continuum_messaging_webhooks_refused_total", "provider" => p.provider.kind.as_str()).increment(1);
    ApiError::forbidden(why)
}

/// Twilio posts inbound messages (SMS, MMS, WhatsApp) and delivery receipts.
#[utoipa::path(post, path = "/v1/messaging/twilio/{id}/{hook}", tag = "messaging", operation_id = "twilioWebhook",
    params(("id" = String, Path, description = "the messaging provider's id"),
        ("hook" = String, Path, description = "`inbound` or `status` (either accepts both kinds of post)")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "Twilio's form parameters"),
    responses((status = 200, description = "stored (or a re-sent message already stored); an empty TwiML answer", content_type = "text/xml"),
        (status = 403, body = ErrorBody, description = "X-Twilio-Signature is missing or does not match the URL and parameters"),
        (status = 404, body = ErrorBody, description = "no such Twilio provider"),
        (status = 413, body = ErrorBody, description = "the body is larger than Twilio ever sends"),
        (status = 422, body = ErrorBody, description = "a signed post that is not a valid message or receipt (the message names the field)"),
        (status = 429, body = ErrorBody, description = "too many refused requests from this source")),
    security(()))]
pub async fn twilio_webhook(
    State(s): State<AppState>,
    Extension(info): Extension<RequestInfo>,
    Path((id, hook)): Path<(String, String)>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    if !matches!(hook.as_str(), "inbound" | "status") {
        return Err(ApiError::not_found("webhook"));
    }
    let m = service(&s)?;
    let p = provider(&s, &id, ProviderKind::Twilio).await?;
    let params = twilio::parse_form(&body)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()))?;
    let path_and_query = uri.0.path_and_query().map_or(uri.0.path(), |x| x.as_str());
    let url = twilio::public_url(&s.config.server.public_base(), path_and_query);
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = twilio::validate(secret(&p, "auth_token")?, &url, &params, sig) {
        return Err(forged(&s, &info, &p, format!("X-Twilio-Signature: {e} (signed URL must be {url}; set server.public_url if a proxy changes it)")).await);
    }
    match twilio::parse_webhook(&params).map_err(|e| ApiError::invalid(e.to_string()))? {
        twilio::TwilioWebhook::Inbound(msg) => {
            m.receive(&p.tenant_id, &p.provider.id, &msg).await?;
        }
        twilio::TwilioWebhook::Status(st) => {
            // Our id, from the StatusCallback URL we gave with the message.
            let ours = uri
                .0
                .query()
                .and_then(|q| form_value(q, "message"))
                .filter(|v| uuid::Uuid::parse_str(v).is_ok());
            match m
                .receipt(
                    &p.tenant_id,
                    &p.provider.id,
                    ours,
                    &st.provider_message_id,
                    st.status,
                    st.error_code.as_deref(),
                )
                .await
            {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response())
}

/// The first value of `name` in a query string.
fn form_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Meta's subscription handshake: echo `hub.challenge` when `hub.verify_token` matches.
#[utoipa::path(get, path = "/v1/messaging/meta/{id}/webhook", tag = "messaging", operation_id = "metaWebhookVerify",
    params(("id" = String, Path, description = "the messaging provider's id")),
    responses((status = 200, description = "the challenge, echoed", content_type = "text/plain"),
        (status = 403, body = ErrorBody, description = "hub.mode is not subscribe or hub.verify_token does not match"),
        (status = 404, body = ErrorBody, description = "no such Meta provider"),
        (status = 429, body = ErrorBody, description = "too many refused requests from this source")),
    security(()))]
pub async fn meta_verify(
    State(s): State<AppState>,
    Extension(info): Extension<RequestInfo>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let p = provider(&s, &id, ProviderKind::MetaWhatsapp).await?;
    let query = query.unwrap_or_default();
    let pairs: Vec<(String, String)> = form_urlencoded_pairs(&query);
    match meta::verify_handshake(&pairs, secret(&p, "verify_token")?) {
        Ok(challenge) => Ok(([(header::CONTENT_TYPE, "text/plain")], challenge).into_response()),
        Err(e) => Err(forged(&s, &info, &p, e.to_string()).await),
    }
}

fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    twilio::parse_form(q.as_bytes()).unwrap_or_default()
}

/// Meta posts WhatsApp messages and statuses (several per post, any order).
#[utoipa::path(post, path = "/v1/messaging/meta/{id}/webhook", tag = "messaging", operation_id = "metaWebhook",
    params(("id" = String, Path, description = "the messaging provider's id")),
    request_body(content = Object, description = "Meta's webhook JSON, signed over its raw bytes"),
    responses((status = 200, description = "every message and status stored or already known"),
        (status = 403, body = ErrorBody, description = "X-Hub-Signature-256 is missing or does not match the body"),
        (status = 404, body = ErrorBody, description = "no such Meta provider"),
        (status = 422, body = ErrorBody, description = "a signed body that is not Meta's webhook JSON (the message says where)"),
        (status = 429, body = ErrorBody, description = "too many refused requests from this source")),
    security(()))]
pub async fn meta_webhook(
    State(s): State<AppState>,
    Extension(info): Extension<RequestInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let m = service(&s)?;
    let p = provider(&s, &id, ProviderKind::MetaWhatsapp).await?;
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = meta::verify_signature(secret(&p, "app_secret")?, &body, sig) {
        return Err(forged(&s, &info, &p, format!("X-Hub-Signature-256: {e}")).await);
    }
    let events = meta::parse_webhook(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
    for ev in events {
        match ev.item {
            meta::WebhookItem::Inbound(msg) => {
                m.receive(&p.tenant_id, &p.provider.id, &msg).await?;
            }
            meta::WebhookItem::Status(st) => {
                match m
                    .receipt(
                        &p.tenant_id,
                        &p.provider.id,
                        None,
                        &st.provider_message_id,
                        st.status,
                        st.error_code.as_deref(),
                    )
                    .await
                {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            meta::WebhookItem::Unsupported { kind, .. } => {
                tracing::info!(provider = %p.provider.id, kind, "WhatsApp message of a type not carried");
                metrics::counter!("continuum_messaging_inbound_unsupported_total").increment(1);
            }
            meta::WebhookItem::Invalid { reason } => {
                tracing::warn!(provider = %p.provider.id, reason, "unreadable item in a Meta webhook");
            }
            meta::WebhookItem::Error { code } => {
                tracing::warn!(provider = %p.provider.id, code = code.as_deref().unwrap_or(""), "Meta reported an error");
            }
        }
    }
    Ok(StatusCode::OK)
}
