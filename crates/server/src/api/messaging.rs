//! Messaging as API objects: a tenant's providers (its failover chain) and
//! the outbound messages of a conversation (SMS, WhatsApp), which are
//! commands: queued in the durable outbox with their timeline event, then
//! sent by [`crate::messaging`].

use super::conversations::principal_actor;
use super::voice::{e164_list, printable};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use continuum_core::{Channel, Permission, normalize_phone};
use continuum_store::{
    MessagingProvider, NewMessagingProvider, NewOutboundMessage, OutboundMessage, ProviderKind,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProviderRequest {
    #[schema(max_length = 100)]
    pub name: String,
    pub kind: ProviderKind,
    /// Position in the failover chain: lower is tried first (default 100).
    pub priority: Option<i64>,
    /// `sms`, `whatsapp` (Twilio carries both; Meta only WhatsApp; SMPP only SMS).
    pub channels: Vec<Channel>,
    /// The clinic's numbers (E.164) it sends from. Opt-outs are per sender.
    pub senders: Vec<String>,
    /// Twilio: `account_sid`, optional `base_url`. Meta: `phone_number_id`,
    /// optional `base_url`, `api_version`. SMPP: `host`, `port`, `system_id`,
    /// optional `system_type`, `window`, `max_per_second`. Any kind:
    /// optional `max_per_second` and `max_in_flight`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: serde_json::Map<String, serde_json::Value>,
    /// Twilio: `auth_token`. Meta: `access_token`, `app_secret`,
    /// `verify_token`. SMPP: `password`. Sealed at rest; never shown again.
    #[schema(value_type = Object)]
    pub credentials: serde_json::Map<String, serde_json::Value>,
}

/// A provider, and the addresses to give it for inbound messages and receipts.
#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    #[serde(flatten)]
    pub provider: MessagingProvider,
    /// Where the provider posts inbound messages (Twilio's "A message comes
    /// in" URL; Meta's callback URL, also used for the verify handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_url: Option<String>,
    /// Where Twilio posts delivery receipts (set per message automatically).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
}

/// What each kind needs: (spec fields, credential fields, channels it may carry).
fn required(
    kind: ProviderKind,
) -> (
    &'static [&'static str],
    &'static [&'static str],
    &'static [Channel],
) {
    match kind {
        ProviderKind::Twilio => (
            &["account_sid"],
            &["auth_token"],
            &[Channel::Sms, Channel::Whatsapp],
        ),
        ProviderKind::MetaWhatsapp => (
            &["phone_number_id"],
            &["access_token", "app_secret", "verify_token"],
            &[Channel::Whatsapp],
        ),
        ProviderKind::Smpp => (
            &["host", "port", "system_id"],
            &["password"],
            &[Channel::Sms],
        ),
    }
}

pub(crate) fn view(s: &AppState, provider: MessagingProvider) -> ProviderView {
    let base = s.config.server.public_base();
    let (inbound_url, status_url) = match provider.kind {
        ProviderKind::Twilio => (
            Some(format!(
                "{base}/v1/messaging/twilio/{}/inbound",
                provider.id
            )),
            Some(format!("{base}/v1/messaging/twilio/{}/status", provider.id)),
        ),
        ProviderKind::MetaWhatsapp => (
            Some(format!("{base}/v1/messaging/meta/{}/webhook", provider.id)),
            None,
        ),
        ProviderKind::Smpp => (None, None),
    };
    ProviderView {
        provider,
        inbound_url,
        status_url,
    }
}

/// Add a messaging provider to the tenant's failover chain.
#[utoipa::path(post, path = "/v1/messaging/providers", tag = "messaging", operation_id = "createMessagingProvider", request_body = CreateProviderRequest,
    responses((status = 201, body = ProviderView, description = "the provider (credentials are never shown) and the URLs to configure at the provider"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage providers"),
        (status = 409, body = ErrorBody, description = "a provider of that name exists"),
        (status = 422, body = ErrorBody, description = "a field is invalid or missing (the message names it)")),
    security(("bearer" = [])))]
pub async fn create_provider(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<CreateProviderRequest>,
) -> ApiResult<(StatusCode, Json<ProviderView>)> {
    s.require(&p, Permission::ManageTenant, "messaging/providers")
        .await?;
    printable("name", &req.name, 100)?;
    let (spec_fields, secret_fields, carries) = required(req.kind);
    for f in spec_fields {
        match req.spec.get(*f) {
            Some(serde_json::Value::String(v)) if !v.trim().is_empty() && v.len() <= 256 => {}
            Some(serde_json::Value::Number(_)) if *f == "port" => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "spec.{f} is required for a {} provider",
                    req.kind.as_str()
                )));
            }
        }
    }
    for f in secret_fields {
        match req.credentials.get(*f) {
            Some(serde_json::Value::String(v)) if !v.is_empty() && v.len() <= 1024 => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "credentials.{f} is required for a {} provider (a string of 1..=1024 characters)",
                    req.kind.as_str()
                )));
            }
        }
    }
    if req.channels.is_empty() {
        return Err(ApiError::invalid(
            "channels must list sms, whatsapp or both",
        ));
    }
    for (i, c) in req.channels.iter().enumerate() {
        if !carries.contains(c) {
            return Err(ApiError::invalid(format!(
                "channels[{i}]: a {} provider does not carry {c}",
                req.kind.as_str()
            )));
        }
    }
    let senders = e164_list("senders", &req.senders, 100)?;
    if let Some(base) = req.spec.get("base_url") {
        let url = base
            .as_str()
            .ok_or_else(|| ApiError::invalid("spec.base_url must be a string"))?;
        let m = &s.config.messaging;
        crate::dispatch::check_target(url, m.allow_private_providers, &m.allow_http_hosts)
            .await
            .map_err(|e| ApiError::invalid(format!("spec.base_url: {e}")))?;
    }
    if req.kind == ProviderKind::Smpp {
        let host = req.spec["host"].as_str().unwrap_or_default();
        let port = req.spec["port"]
            .as_u64()
            .or_else(|| req.spec["port"].as_str().and_then(|p| p.parse().ok()))
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| ApiError::invalid("spec.port must be 1..=65535"))?;
        super::voice::check_host(
            "spec.host",
            &format!("{host}:{port}"),
            s.config.messaging.allow_private_providers,
        )?;
    }
    for f in ["max_per_second", "max_in_flight"] {
        if let Some(v) = req.spec.get(f)
            && !v.as_u64().is_some_and(|n| (1..=100_000).contains(&n))
        {
            return Err(ApiError::invalid(format!("spec.{f} must be 1..=100000")));
        }
    }
    let priority = req.priority.unwrap_or(100);
    if !(0..=10_000).contains(&priority) {
        return Err(ApiError::invalid("priority must be 0..=10000"));
    }
    let provider = s
        .store
        .create_messaging_provider(
            p.tenant_id(),
            NewMessagingProvider {
                name: req.name.trim().to_owned(),
                kind: req.kind,
                priority,
                channels: req.channels,
                senders,
                spec: req.spec,
                secret: req.credentials,
            },
            &p.audit_actor(),
        )
        .await?;
    if let Some(m) = &s.messaging {
        m.providers_changed(p.tenant_id());
    }
    Ok((StatusCode::CREATED, Json(view(&s, provider))))
}

/// The tenant's messaging providers, in failover order.
#[utoipa::path(get, path = "/v1/messaging/providers", tag = "messaging", operation_id = "listMessagingProviders",
    responses((status = 200, body = Vec<ProviderView>, description = "the chain, first tried first (credentials never shown)"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage providers")),
    security(("bearer" = [])))]
pub async fn list_providers(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<ProviderView>>> {
    s.require(&p, Permission::ManageTenant, "messaging/providers")
        .await?;
    let list = s.store.list_messaging_providers(p.tenant_id()).await?;
    Ok(Json(list.into_iter().map(|x| view(&s, x)).collect()))
}

/// Remove a provider from the chain; messages queued for it move on to the next.
#[utoipa::path(delete, path = "/v1/messaging/providers/{id}", tag = "messaging", operation_id = "deleteMessagingProvider", params(("id" = String, Path, description = "the provider's id")),
    responses((status = 204, description = "removed"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage providers"),
        (status = 404, body = ErrorBody, description = "no such provider in this tenant")),
    security(("bearer" = [])))]
pub async fn delete_provider(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageTenant, "messaging/providers")
        .await?;
    s.store
        .delete_messaging_provider(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    if let Some(m) = &s.messaging {
        m.providers_changed(p.tenant_id());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A WhatsApp template (pre-approved by Meta): the only form WhatsApp
/// delivers outside the 24-hour window after the patient last wrote.
#[derive(Deserialize, Serialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    #[schema(max_length = 512)]
    pub name: String,
    /// e.g. `en_US` (default `en`).
    pub language: Option<String>,
    /// Body parameters, in order ({{1}}, {{2}}…).
    #[serde(default)]
    pub params: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// `sms` or `whatsapp`; absent: the patient's preferred channel, else
    /// SMS when they have a phone number, else WhatsApp.
    pub channel: Option<Channel>,
    /// The text (SMS longer than one segment is split by the provider).
    pub body: Option<String>,
    /// Public https URLs of media (MMS / WhatsApp media), at most 10.
    #[serde(default)]
    pub media_urls: Vec<String>,
    pub template: Option<TemplateRequest>,
    /// The clinic's sender number; absent: the first sender of the first
    /// provider carrying the channel.
    pub from: Option<String>,
    /// Retrying with the same key returns the original message (the
    /// `Idempotency-Key` header works too).
    pub idempotency_key: Option<String>,
}

/// The largest message body: ten concatenated SMS segments of UCS-2 text is
/// ~670 characters; WhatsApp allows 4096.
const MAX_BODY_CHARS: usize = 4096;

/// What a send resolves to before it is queued.
pub(crate) struct Resolved {
    pub channel: Channel,
    pub to: String,
    pub from: Option<String>,
}

/// The patient's address on the channel asked for (or their preferred one)
/// and the sender, with errors that say what to fix.
pub(crate) async fn resolve(
    store: &continuum_store::Store,
    tenant_id: &str,
    conversation_id: &str,
    channel: Option<Channel>,
    from: Option<&str>,
    audit_actor: &str,
) -> ApiResult<Resolved> {
    let conv = store.get_conversation(tenant_id, conversation_id).await?;
    let contact = store
        .get_contact(tenant_id, &conv.contact_id, audit_actor)
        .await?;
    let b = &contact.bindings;
    let channel = match channel.or(contact.preferred_channel) {
        Some(c @ (Channel::Sms | Channel::Whatsapp)) => c,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "channel `{other}` is not sent through a messaging provider; use sms or whatsapp \
                 (chat messages are appended to the timeline)"
            )));
        }
        None if b.phone.is_some() => Channel::Sms,
        None if b.whatsapp.is_some() => Channel::Whatsapp,
        None => {
            return Err(ApiError::invalid(
                "the patient has no phone or WhatsApp number; add one to the contact first",
            ));
        }
    };
    let to = match channel {
        Channel::Sms => b.phone.clone(),
        _ => b.whatsapp.clone().or_else(|| b.phone.clone()),
    }
    .ok_or_else(|| {
        ApiError::invalid(format!(
            "the patient has no number for {channel}; add `{}` to the contact first",
            if channel == Channel::Sms {
                "phone"
            } else {
                "whatsapp"
            }
        ))
    })?;
    let chain = store.list_messaging_providers(tenant_id).await?;
    let carriers: Vec<&MessagingProvider> = chain
        .iter()
        .filter(|p| p.channels.contains(&channel))
        .collect();
    if carriers.is_empty() {
        return Err(ApiError::invalid(format!(
            "no messaging provider of this tenant carries {channel}; add one with POST /v1/messaging/providers"
        )));
    }
    let from = match from {
        Some(f) => {
            let f = normalize_phone(f).map_err(|e| ApiError::invalid(format!("from: {e}")))?;
            if !carriers.iter().any(|p| p.senders.contains(&f)) {
                return Err(ApiError::invalid(format!(
                    "from: {f} is not a sender of any provider carrying {channel}"
                )));
            }
            Some(f)
        }
        None => carriers.iter().find_map(|p| p.senders.first().cloned()),
    };
    Ok(Resolved { channel, to, from })
}

/// Send an SMS or WhatsApp message to the conversation's patient.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "messaging", operation_id = "sendMessage", params(("id" = String, Path, description = "the conversation's id")), request_body = SendMessageRequest,
    responses((status = 202, body = OutboundMessage, description = "queued in the durable outbox; its `message` event is on the timeline and `delivery.status` events follow"),
        (status = 200, body = OutboundMessage, description = "the idempotency key matched an earlier send of the same request; that message is returned"),
        (status = 403, body = ErrorBody, description = "this credential may not send messages"),
        (status = 404, body = ErrorBody, description = "no such conversation (or not in your grants)"),
        (status = 409, body = ErrorBody, description = "the patient opted out of this channel from this sender (`opted_out`), or the idempotency key was used for another request"),
        (status = 422, body = ErrorBody, description = "a field is invalid, the patient has no number for the channel, no provider carries it, or WhatsApp needs a template outside the 24-hour window")),
    security(("bearer" = [])))]
pub async fn send(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<SendMessageRequest>,
) -> ApiResult<(StatusCode, Json<OutboundMessage>)> {
    s.require(
        &p,
        Permission::WriteConversation,
        &format!("conversation/{id}"),
    )
    .await?;
    s.require_conversation(&p, &id).await?;
    let idempotency_key = super::timeline::idempotency_key(req.idempotency_key, &headers)?;
    if req.body.as_deref().is_none_or(|b| b.trim().is_empty())
        && req.media_urls.is_empty()
        && req.template.is_none()
    {
        return Err(ApiError::invalid(
            "a message needs a body, media_urls or a template",
        ));
    }
    if let Some(b) = &req.body
        && (b.chars().count() > MAX_BODY_CHARS || b.contains('\0'))
    {
        return Err(ApiError::invalid(format!(
            "body must be at most {MAX_BODY_CHARS} characters, without NUL"
        )));
    }
    if req.media_urls.len() > 10 {
        return Err(ApiError::invalid("media_urls must list at most 10 URLs"));
    }
    for (i, u) in req.media_urls.iter().enumerate() {
        let ok = reqwest::Url::parse(u).is_ok_and(|u| u.scheme() == "https") && u.len() <= 2048;
        if !ok {
            return Err(ApiError::invalid(format!(
                "media_urls[{i}] must be an https URL of at most 2048 characters (the provider fetches it)"
            )));
        }
    }
    if let Some(t) = &req.template {
        printable("template.name", &t.name, 512)?;
        if t.params.len() > 20 || t.params.iter().any(|x| x.chars().count() > 1024) {
            return Err(ApiError::invalid(
                "template.params must be at most 20 strings of at most 1024 characters",
            ));
        }
    }
    let actor = p.audit_actor();
    let r = resolve(
        &s.store,
        p.tenant_id(),
        &id,
        req.channel,
        req.from.as_deref(),
        &actor,
    )
    .await?;
    if req.template.is_some() && r.channel != Channel::Whatsapp {
        return Err(ApiError::invalid("template is for WhatsApp messages only"));
    }
    if r.channel == Channel::Whatsapp && req.template.is_none() {
        let last = s
            .store
            .last_inbound_at(p.tenant_id(), Channel::Whatsapp, &r.to)
            .await?;
        if !crate::messaging::whatsapp_window_open(last) {
            return Err(ApiError::invalid(
                "template: the patient has not written on WhatsApp in the last 24 hours, and \
                 WhatsApp only delivers approved template messages outside that window",
            ));
        }
    }
    let new = NewOutboundMessage {
        channel: r.channel,
        to: r.to,
        from: r.from,
        body: req.body,
        media_urls: req.media_urls,
        template: req
            .template
            .map(|t| serde_json::to_value(t).unwrap_or_default()),
        idempotency_key,
        actor: principal_actor(&p),
        meta: Default::default(),
        compliance: false,
    };
    let (message, appended) = s
        .store
        .enqueue_message(p.tenant_id(), &id, new, &actor)
        .await?;
    let status = if appended.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(message)))
}

/// The outbound messages of a conversation, with their delivery state.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "messaging", operation_id = "listMessages", params(("id" = String, Path, description = "the conversation's id")),
    responses((status = 200, body = Vec<OutboundMessage>, description = "oldest first"),
        (status = 403, body = ErrorBody, description = "this credential may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation (or not in your grants)")),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<OutboundMessage>>> {
    s.require(&p, Permission::ReadTimeline, &format!("conversation/{id}"))
        .await?;
    s.require_conversation(&p, &id).await?;
    s.store.get_conversation(p.tenant_id(), &id).await?;
    Ok(Json(
        s.store
            .list_messages(p.tenant_id(), &id, &p.audit_actor())
            .await?,
    ))
}

/// One outbound message and its delivery state.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messaging", operation_id = "getMessage", params(("id" = String, Path, description = "the message's id")),
    responses((status = 200, body = OutboundMessage, description = "the message"),
        (status = 403, body = ErrorBody, description = "this credential may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such message (or its conversation is not in your grants)")),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<OutboundMessage>> {
    s.require(&p, Permission::ReadTimeline, &format!("message/{id}"))
        .await?;
    let conv = s.store.message_conversation(p.tenant_id(), &id).await?;
    s.require_conversation(&p, &conv)
        .await
        .map_err(|_| ApiError::not_found("message"))?;
    Ok(Json(
        s.store
            .get_message(p.tenant_id(), &id, &p.audit_actor())
            .await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VisitLinkRequest {
    /// The room to join; absent: the conversation's open room, or a new one.
    pub room_id: Option<String>,
    /// `sms` or `whatsapp`; absent: the patient's preferred channel, else SMS.
    pub channel: Option<Channel>,
    /// The words before the link (default "Join your video visit:").
    #[schema(max_length = 300)]
    pub text: Option<String>,
    /// How long the link works, 60..=86400 seconds (default 3600).
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct VisitLinkSent {
    pub message: OutboundMessage,
    pub room_id: String,
    /// When the link stops working (unix seconds).
    pub link_expires_at: u64,
}

/// Text the patient a link into the conversation's video room (e.g. to move
/// a phone call to video). The message's event carries `meta.handoff`.
#[utoipa::path(post, path = "/v1/conversations/{id}/visit-link", tag = "messaging", operation_id = "sendVisitLink", params(("id" = String, Path, description = "the conversation's id")), request_body = VisitLinkRequest,
    responses((status = 202, body = VisitLinkSent, description = "queued in the outbox; the link holds a patient token for this room and conversation only"),
        (status = 403, body = ErrorBody, description = "this credential may not send messages"),
        (status = 404, body = ErrorBody, description = "no such conversation or room (or not in your grants)"),
        (status = 409, body = ErrorBody, description = "the patient opted out of this channel (`opted_out`)"),
        (status = 422, body = ErrorBody, description = "a field is invalid, the patient has no number, no provider carries the channel, or the room has ended")),
    security(("bearer" = [])))]
pub async fn send_visit_link(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<VisitLinkRequest>,
) -> ApiResult<(StatusCode, Json<VisitLinkSent>)> {
    s.require(
        &p,
        Permission::WriteConversation,
        &format!("conversation/{id}"),
    )
    .await?;
    s.require_conversation(&p, &id).await?;
    if let Some(r) = &req.room_id {
        super::visits::room_in_reach(&s, &p, r).await?;
    }
    if let Some(t) = &req.text {
        printable("text", t, 300)?;
    }
    let ttl = req.ttl_secs.unwrap_or(3600);
    if !(60..=86_400).contains(&ttl) {
        return Err(ApiError::invalid("ttl_secs must be 60..=86400"));
    }
    let sent = s
        .handoffs
        .send_visit_link(
            p.tenant_id(),
            &id,
            req.room_id,
            req.channel,
            req.text,
            crate::handoff::HandoffKind::VisitLink,
            std::time::Duration::from_secs(ttl),
            principal_actor(&p),
            &p.audit_actor(),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(VisitLinkSent {
            message: sent.message,
            room_id: sent.room_id,
            link_expires_at: sent.link_expires_at,
        }),
    ))
}
