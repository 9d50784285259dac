//! Voice as API objects: a tenant's SIP trunks and dispatch rules (admins),
//! and the phone calls of a conversation.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::{Permission, normalize_phone};
use continuum_store::{Call, DispatchAction, DispatchRule, Trunk, TrunkSpec, TrunkStatus};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DigestCredentials {
    #[schema(max_length = 128)]
    pub username: String,
    /// Sealed at rest; never shown again.
    #[schema(max_length = 256)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateTrunkRequest {
    #[schema(max_length = 100)]
    pub name: String,
    /// `inbound` (numbers, allowed_sources) or `outbound` (address, transport,
    /// caller_ids, max_concurrent_calls).
    #[serde(flatten)]
    pub spec: TrunkSpec,
    /// Inbound: INVITEs must authenticate with these (401 challenge).
    /// Outbound: what we answer the carrier's 401/407 with.
    pub credentials: Option<DigestCredentials>,
}

pub(crate) fn printable(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "{field} must be 1..={max} characters, without control characters"
        )));
    }
    Ok(())
}

pub(crate) fn e164_list(field: &str, numbers: &[String], max: usize) -> ApiResult<Vec<String>> {
    if numbers.is_empty() || numbers.len() > max {
        return Err(ApiError::invalid(format!(
            "{field} must list 1..={max} numbers"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(numbers.len());
    for (i, n) in numbers.iter().enumerate() {
        let n = normalize_phone(n).map_err(|e| ApiError::invalid(format!("{field}[{i}]: {e}")))?;
        if out.contains(&n) {
            return Err(ApiError::invalid(format!(
                "{field}[{i}]: {n} is listed twice"
            )));
        }
        out.push(n);
    }
    Ok(out)
}

/// `host` or `host:port` of an outbound trunk; special-purpose addresses
/// only when `sip.allow_private_trunks` is set.
fn check_trunk_address(address: &str, allow_private: bool) -> ApiResult<()> {
    check_host("address", address, allow_private)
}

/// `host` or `host:port` (`field` names it in errors); special-purpose
/// addresses only when `sip.allow_private_trunks` is set.
pub(crate) fn check_host(field: &str, address: &str, allow_private: bool) -> ApiResult<()> {
    let bad = |why: &str| ApiError::invalid(format!("{field}: {why}"));
    if address.is_empty()
        || address.len() > 255
        || address.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            "must be `host` or `host:port` (1..=255 characters, no spaces)",
        ));
    }
    let (host, port) = match address.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), Some(a.port())),
        Err(_) => match address.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                h.to_owned(),
                Some(
                    p.parse::<u16>()
                        .map_err(|_| bad("the port must be 1..=65535"))?,
                ),
            ),
            _ => (
                address
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                None,
            ),
        },
    };
    if port == Some(0) {
        return Err(bad("the port must be 1..=65535"));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        if !allow_private && continuum_core::netpolicy::is_special_purpose(ip) {
            return Err(bad(&format!(
                "{ip} is a private or special-purpose address; set sip.allow_private_trunks = true to allow it"
            )));
        }
    } else if !host.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }) {
        return Err(bad("the host must be an IP address or a DNS name"));
    }
    Ok(())
}

/// Add a SIP trunk (inbound numbers, or an outbound carrier).
#[utoipa::path(post, path = "/v1/sip/trunks", tag = "voice", operation_id = "createTrunk", request_body = CreateTrunkRequest,
    responses((status = 201, body = Trunk, description = "the trunk (its password is never shown)"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage trunks"),
        (status = 409, body = ErrorBody, description = "a number is already carried by another inbound trunk"),
        (status = 422, body = ErrorBody, description = "a field is invalid (the message names it)")),
    security(("bearer" = [])))]
pub async fn create_trunk(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<CreateTrunkRequest>,
) -> ApiResult<(StatusCode, Json<Trunk>)> {
    s.require(&p, Permission::ManageTenant, "sip/trunks")
        .await?;
    printable("name", &req.name, 100)?;
    let spec = match req.spec {
        TrunkSpec::Inbound {
            numbers,
            allowed_sources,
        } => {
            if allowed_sources.len() > 100 {
                return Err(ApiError::invalid(
                    "allowed_sources must list at most 100 CIDRs",
                ));
            }
            for (i, c) in allowed_sources.iter().enumerate() {
                c.parse::<continuum_turn::policy::Cidr>()
                    .map_err(|e| ApiError::invalid(format!("allowed_sources[{i}]: {e}")))?;
            }
            if allowed_sources.is_empty() && req.credentials.is_none() {
                return Err(ApiError::invalid(
                    "allowed_sources: an inbound trunk needs source addresses, credentials, or both \
                     (otherwise anyone could call in as the carrier)",
                ));
            }
            TrunkSpec::Inbound {
                numbers: e164_list("numbers", &numbers, 1000)?,
                allowed_sources,
            }
        }
        TrunkSpec::Outbound {
            address,
            transport,
            caller_ids,
            max_concurrent_calls,
            media_encryption,
        } => {
            check_trunk_address(&address, s.config.sip.allow_private_trunks)?;
            if !(1..=100_000).contains(&max_concurrent_calls) {
                return Err(ApiError::invalid("max_concurrent_calls must be 1..=100000"));
            }
            TrunkSpec::Outbound {
                address,
                transport,
                caller_ids: e164_list("caller_ids", &caller_ids, 100)?,
                max_concurrent_calls,
                media_encryption,
            }
        }
    };
    let credentials = match req.credentials {
        Some(c) => {
            printable("credentials.username", &c.username, 128)?;
            printable("credentials.password", &c.password, 256)?;
            Some((c.username, c.password))
        }
        None => None,
    };
    let trunk = s
        .store
        .create_trunk(
            p.tenant_id(),
            req.name.trim(),
            spec,
            credentials,
            &p.audit_actor(),
        )
        .await?;
    if let Some(v) = &s.voice {
        v.trunks_changed();
    }
    Ok((StatusCode::CREATED, Json(with_health(&s, trunk))))
}

/// An outbound trunk with what the keepalive says of it.
fn with_health(s: &AppState, mut trunk: Trunk) -> Trunk {
    if matches!(trunk.spec, TrunkSpec::Outbound { .. }) {
        let (status, last_checked) = match &s.voice {
            Some(v) => v.trunk_health(&trunk.id),
            None => (TrunkStatus::Unknown, None),
        };
        trunk.status = Some(status);
        trunk.last_checked = last_checked;
    }
    trunk
}

/// The tenant's SIP trunks.
#[utoipa::path(get, path = "/v1/sip/trunks", tag = "voice", operation_id = "listTrunks",
    responses((status = 200, body = Vec<Trunk>, description = "the trunks, oldest first (passwords never shown)"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage trunks")),
    security(("bearer" = [])))]
pub async fn list_trunks(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Vec<Trunk>>> {
    s.require(&p, Permission::ManageTenant, "sip/trunks")
        .await?;
    let trunks = s.store.list_trunks(p.tenant_id()).await?;
    Ok(Json(
        trunks.into_iter().map(|t| with_health(&s, t)).collect(),
    ))
}

/// One SIP trunk.
#[utoipa::path(get, path = "/v1/sip/trunks/{id}", tag = "voice", operation_id = "getTrunk", params(("id" = String, Path, description = "the trunk's id")),
    responses((status = 200, body = Trunk, description = "the trunk"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage trunks"),
        (status = 404, body = ErrorBody, description = "no such trunk in this tenant")),
    security(("bearer" = [])))]
pub async fn get_trunk(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Trunk>> {
    s.require(&p, Permission::ManageTenant, "sip/trunks")
        .await?;
    let trunk = s.store.get_trunk(p.tenant_id(), &id).await?;
    Ok(Json(with_health(&s, trunk)))
}

/// Remove a SIP trunk: its numbers take no more calls; calls up now go on.
#[utoipa::path(delete, path = "/v1/sip/trunks/{id}", tag = "voice", operation_id = "deleteTrunk", params(("id" = String, Path, description = "the trunk's id")),
    responses((status = 204, description = "removed"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage trunks"),
        (status = 404, body = ErrorBody, description = "no such trunk in this tenant")),
    security(("bearer" = [])))]
pub async fn delete_trunk(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageTenant, "sip/trunks")
        .await?;
    s.store
        .delete_trunk(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    if let Some(v) = &s.voice {
        v.trunks_changed();
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDispatchRuleRequest {
    /// The called number (E.164), or `*`: any number of the tenant without a rule of its own.
    pub number: String,
    pub action: DispatchAction,
}

/// Add a dispatch rule: what a call to a number does.
#[utoipa::path(post, path = "/v1/sip/dispatch-rules", tag = "voice", operation_id = "createDispatchRule", request_body = CreateDispatchRuleRequest,
    responses((status = 201, body = DispatchRule, description = "the rule"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage dispatch rules"),
        (status = 409, body = ErrorBody, description = "the number has a rule already"),
        (status = 422, body = ErrorBody, description = "a field is invalid (the message names it)")),
    security(("bearer" = [])))]
pub async fn create_dispatch_rule(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<CreateDispatchRuleRequest>,
) -> ApiResult<(StatusCode, Json<DispatchRule>)> {
    s.require(&p, Permission::ManageTenant, "sip/dispatch-rules")
        .await?;
    let number = if req.number == "*" {
        req.number
    } else {
        normalize_phone(&req.number).map_err(|e| ApiError::invalid(format!("number: {e}")))?
    };
    match &req.action {
        DispatchAction::Conversation { queue: Some(q) } => printable("action.queue", q, 100)?,
        DispatchAction::Target { name, sip_uri } => {
            printable("action.name", name, 64)?;
            check_sip_uri("action.sip_uri", sip_uri)?;
            // Rung like a trunk: the same rule for private addresses.
            let rest = sip_uri
                .strip_prefix("sips:")
                .or_else(|| sip_uri.strip_prefix("sip:"))
                .unwrap_or(sip_uri);
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            let host = host.split([';', '?']).next().unwrap_or(host);
            check_host("action.sip_uri", host, s.config.sip.allow_private_trunks)?;
        }
        DispatchAction::Ivr { flow }
            if s.store.get_ivr_flow(p.tenant_id(), flow).await?.is_none() =>
        {
            return Err(ApiError::invalid(format!(
                "action.flow: no IVR flow named `{}`; upload it first with PUT /v1/ivr/flows/{{name}}",
                flow.chars().take(64).collect::<String>()
            )));
        }
        DispatchAction::Twiml { url, method } => {
            if let Some(host) = &s.ivr {
                host.check_url(url)
                    .await
                    .map_err(|e| ApiError::invalid(format!("action.url: {e}")))?;
            }
            if method.as_deref().is_some_and(|m| m != "GET" && m != "POST") {
                return Err(ApiError::invalid("action.method: GET or POST"));
            }
        }
        _ => {}
    }
    let rule = s
        .store
        .create_dispatch_rule(p.tenant_id(), &number, req.action, &p.audit_actor())
        .await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

/// A `sip:` / `sips:` URI with a user or host, no spaces or controls.
pub(crate) fn check_sip_uri(field: &str, uri: &str) -> ApiResult<()> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .ok_or_else(|| ApiError::invalid(format!("{field} must start with `sip:` or `sips:`")))?;
    if rest.is_empty()
        || uri.len() > 256
        || uri
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(ApiError::invalid(format!(
            "{field} must be a SIP URI such as `sip:desk@pbx.example.org` (at most 256 characters, no spaces)"
        )));
    }
    Ok(())
}

/// The tenant's dispatch rules.
#[utoipa::path(get, path = "/v1/sip/dispatch-rules", tag = "voice", operation_id = "listDispatchRules",
    responses((status = 200, body = Vec<DispatchRule>, description = "the rules, oldest first"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage dispatch rules")),
    security(("bearer" = [])))]
pub async fn list_dispatch_rules(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<DispatchRule>>> {
    s.require(&p, Permission::ManageTenant, "sip/dispatch-rules")
        .await?;
    Ok(Json(s.store.list_dispatch_rules(p.tenant_id()).await?))
}

/// Remove a dispatch rule.
#[utoipa::path(delete, path = "/v1/sip/dispatch-rules/{id}", tag = "voice", operation_id = "deleteDispatchRule", params(("id" = String, Path, description = "the rule's id")),
    responses((status = 204, description = "removed"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage dispatch rules"),
        (status = 404, body = ErrorBody, description = "no such rule in this tenant")),
    security(("bearer" = [])))]
pub async fn delete_dispatch_rule(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageTenant, "sip/dispatch-rules")
        .await?;
    s.store
        .delete_dispatch_rule(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A phone call.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "voice", operation_id = "getCall", params(("id" = String, Path, description = "the call's id")),
    responses((status = 200, body = Call, description = "the call"),
        (status = 404, body = ErrorBody, description = "no such call within reach (tenant and grants)")),
    security(("bearer" = [])))]
pub async fn get_call(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Call>> {
    let object = format!("call/{id}");
    s.require(&p, Permission::ReadConversation, &object).await?;
    let call = s.store.get_call(p.tenant_id(), &id).await?;
    // A call outside the caller's grants looks like no call at all.
    if !p.may_access_conversation(&call.conversation_id) {
        s.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "call.read",
            &object,
            "not in grants",
        )
        .await;
        return Err(ApiError::not_found("call"));
    }
    // The remote party is PHI: its reads are in the audit chain.
    let entry = continuum_store::AuditEntry::new(
        p.audit_actor(),
        "call.read",
        object,
        continuum_store::Outcome::Ok,
    );
    s.store.audit(p.tenant_id(), entry).await?;
    Ok(Json(call))
}

/// The phone calls of a conversation, oldest first.
#[utoipa::path(get, path = "/v1/conversations/{id}/calls", tag = "voice", operation_id = "listCalls", params(("id" = String, Path, description = "the conversation's id")),
    responses((status = 200, body = Vec<Call>, description = "the calls (at most 500)"),
        (status = 404, body = ErrorBody, description = "no such conversation within reach")),
    security(("bearer" = [])))]
pub async fn list_calls(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Call>>> {
    s.require(
        &p,
        Permission::ReadConversation,
        &format!("conversation/{id}"),
    )
    .await?;
    s.require_conversation(&p, &id).await?;
    s.store.get_conversation(p.tenant_id(), &id).await?;
    let calls = s.store.list_calls(p.tenant_id(), &id).await?;
    let entry = continuum_store::AuditEntry::new(
        p.audit_actor(),
        "call.list",
        format!("conversation/{id}"),
        continuum_store::Outcome::Ok,
    );
    s.store.audit(p.tenant_id(), entry).await?;
    Ok(Json(calls))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DialRequestBody {
    /// The conversation the call belongs to (its timeline gets the call's events).
    pub conversation_id: String,
    /// An E.164 number (through an outbound trunk) or a `sip:` URI (called directly).
    #[schema(max_length = 256)]
    pub to: String,
    /// The outbound trunk; default: the tenant's first.
    pub trunk_id: Option<String>,
    /// A video room of the conversation the call joins.
    pub room_id: Option<String>,
}

fn voice_service(s: &AppState) -> ApiResult<std::sync::Arc<crate::voice::VoiceService>> {
    s.voice.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "voice_unavailable",
            "this node runs no SIP gateway (sip.enabled = false)",
        )
    })
}

/// Place a phone call (dial-out) in a conversation.
#[utoipa::path(post, path = "/v1/calls", tag = "voice", operation_id = "createCall", request_body = DialRequestBody,
    responses((status = 201, body = Call, description = "the call, dialling; follow it with GET /v1/calls/{id} or the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation, room or trunk within reach"),
        (status = 422, body = ErrorBody, description = "a field is invalid (the message names it)"),
        (status = 503, body = ErrorBody, description = "no SIP gateway on this node, no outbound trunk, or the trunk is at its call limit")),
    security(("bearer" = [])))]
pub async fn create_call(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<DialRequestBody>,
) -> ApiResult<(StatusCode, Json<Call>)> {
    let object = format!("conversation/{}", req.conversation_id);
    s.require(&p, Permission::WriteConversation, &object)
        .await?;
    s.require_conversation(&p, &req.conversation_id).await?;
    s.store
        .get_conversation(p.tenant_id(), &req.conversation_id)
        .await?;
    if req.to.starts_with("sip:") || req.to.starts_with("sips:") {
        check_sip_uri("to", &req.to)?;
    } else {
        normalize_phone(&req.to).map_err(|e| ApiError::invalid(format!("to: {e}")))?;
    }
    if let Some(room) = &req.room_id {
        let r = s.store.get_room(p.tenant_id(), room).await?;
        if r.conversation_id != req.conversation_id {
            return Err(ApiError::invalid(
                "room_id: the room belongs to another conversation",
            ));
        }
    }
    let voice = voice_service(&s)?;
    let dial = crate::voice::DialRequest {
        conversation_id: req.conversation_id,
        to: req.to,
        trunk_id: req.trunk_id,
        room_id: req.room_id,
    };
    match voice.dial(p.tenant_id(), dial).await {
        Ok(call) => {
            let entry = continuum_store::AuditEntry::new(
                p.audit_actor(),
                "call.dial",
                format!("call/{}", call.id),
                continuum_store::Outcome::Ok,
            );
            s.store.audit(p.tenant_id(), entry).await?;
            Ok((StatusCode::CREATED, Json(call)))
        }
        Err(crate::voice::DialError::Invalid(m)) => Err(ApiError::invalid(m)),
        Err(crate::voice::DialError::Unavailable(m)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "voice_unavailable",
            m,
        )),
        Err(crate::voice::DialError::Store(e)) => Err(e.into()),
    }
}

/// A call within reach of `p` that is up now, with the gateway's handle.
async fn live_call(
    s: &AppState,
    p: &continuum_core::Principal,
    id: &str,
) -> ApiResult<(
    std::sync::Arc<crate::voice::VoiceService>,
    continuum_voice::CallId,
)> {
    let object = format!("call/{id}");
    s.require(p, Permission::WriteConversation, &object).await?;
    let call = s.store.get_call(p.tenant_id(), id).await?;
    if !p.may_access_conversation(&call.conversation_id) {
        s.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "call.control",
            &object,
            "not in grants",
        )
        .await;
        return Err(ApiError::not_found("call"));
    }
    let voice = voice_service(s)?;
    let handle = voice.active(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "call_not_active",
            format!("the call is {:?}: nothing to control", call.state).to_lowercase(),
        )
    })?;
    Ok((voice, handle))
}

fn gateway_error(e: continuum_voice::GatewayError) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "call_not_active", e.to_string())
}

/// Hang up a call (or cancel it while it rings).
#[utoipa::path(post, path = "/v1/calls/{id}/hangup", tag = "voice", operation_id = "hangupCall", params(("id" = String, Path, description = "the call's id")),
    responses((status = 204, description = "hung up; `call.ended` (or `call.failed`) follows on the timeline"),
        (status = 404, body = ErrorBody, description = "no such call within reach"),
        (status = 409, body = ErrorBody, description = "the call is not up (it ended)"),
        (status = 503, body = ErrorBody, description = "no SIP gateway on this node")),
    security(("bearer" = [])))]
pub async fn hangup_call(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (voice, call) = live_call(&s, &p, &id).await?;
    voice.voice.hangup(call).await.map_err(gateway_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// `true`: the phone hears the hold tone and the room hears nothing from
    /// it; `false`: back to the conversation.
    pub held: bool,
}

/// Put a call on hold, or take it off.
#[utoipa::path(post, path = "/v1/calls/{id}/hold", tag = "voice", operation_id = "holdCall", params(("id" = String, Path, description = "the call's id")), request_body = HoldRequest,
    responses((status = 204, description = "done"),
        (status = 404, body = ErrorBody, description = "no such call within reach"),
        (status = 409, body = ErrorBody, description = "the call is not answered (or it ended)"),
        (status = 503, body = ErrorBody, description = "no SIP gateway on this node")),
    security(("bearer" = [])))]
pub async fn hold_call(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<HoldRequest>,
) -> ApiResult<StatusCode> {
    let (voice, call) = live_call(&s, &p, &id).await?;
    voice
        .voice
        .hold(call, req.held)
        .await
        .map_err(gateway_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DtmfRequest {
    /// `0-9`, `*`, `#`, `A-D`; at most 32.
    #[schema(max_length = 32)]
    pub digits: String,
}

/// Send DTMF digits on a call (RFC 4733, or SIP INFO when the phone did not offer telephone-events).
#[utoipa::path(post, path = "/v1/calls/{id}/dtmf", tag = "voice", operation_id = "sendCallDtmf", params(("id" = String, Path, description = "the call's id")), request_body = DtmfRequest,
    responses((status = 204, description = "queued"),
        (status = 404, body = ErrorBody, description = "no such call within reach"),
        (status = 409, body = ErrorBody, description = "the call is not answered"),
        (status = 422, body = ErrorBody, description = "digits are not DTMF digits"),
        (status = 503, body = ErrorBody, description = "no SIP gateway on this node")),
    security(("bearer" = [])))]
pub async fn send_dtmf(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<DtmfRequest>,
) -> ApiResult<StatusCode> {
    if req.digits.is_empty()
        || req.digits.len() > 32
        || !req
            .digits
            .chars()
            .all(|c| c.is_ascii_digit() || "*#ABCD".contains(c))
    {
        return Err(ApiError::invalid(
            "digits must be 1..=32 of 0-9 * # A B C D",
        ));
    }
    let (voice, call) = live_call(&s, &p, &id).await?;
    voice
        .voice
        .send_dtmf(call, req.digits)
        .await
        .map_err(gateway_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Where the phone should call instead: a `sip:` URI (REFER's Refer-To).
    #[schema(max_length = 256)]
    pub target: String,
}

/// Blind transfer: ask the phone side to call another target (SIP REFER).
#[utoipa::path(post, path = "/v1/calls/{id}/transfer", tag = "voice", operation_id = "transferCall", params(("id" = String, Path, description = "the call's id")), request_body = TransferRequest,
    responses((status = 202, description = "REFER sent; the outcome lands on the call"),
        (status = 404, body = ErrorBody, description = "no such call within reach"),
        (status = 409, body = ErrorBody, description = "the call is not answered"),
        (status = 422, body = ErrorBody, description = "target is not a SIP URI"),
        (status = 503, body = ErrorBody, description = "no SIP gateway on this node")),
    security(("bearer" = [])))]
pub async fn transfer_call(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<TransferRequest>,
) -> ApiResult<StatusCode> {
    check_sip_uri("target", &req.target)?;
    let (voice, call) = live_call(&s, &p, &id).await?;
    voice
        .voice
        .transfer(call, req.target)
        .await
        .map_err(gateway_error)?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct FallbackRequest {
    /// The video room the phone call joins; default: the conversation's most recent open room.
    pub room_id: Option<String>,
}

/// Call the patient's phone into the visit (PSTN fallback on request): the
/// clinician stays in the room and the call joins it.
#[utoipa::path(post, path = "/v1/conversations/{id}/fallback", tag = "voice", operation_id = "startFallback", params(("id" = String, Path, description = "the conversation's id")), request_body = FallbackRequest,
    responses((status = 201, body = Call, description = "the call to the patient's phone, dialling; staff in the room get `patient_on_phone` with the context"),
        (status = 404, body = ErrorBody, description = "no such conversation or room within reach"),
        (status = 409, body = ErrorBody, description = "a call to the patient is already being placed"),
        (status = 422, body = ErrorBody, description = "the patient has no phone number, or the room is of another conversation"),
        (status = 503, body = ErrorBody, description = "no SIP gateway or outbound trunk")),
    security(("bearer" = [])))]
pub async fn start_fallback(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<FallbackRequest>,
) -> ApiResult<(StatusCode, Json<Call>)> {
    let object = format!("conversation/{id}");
    s.require(&p, Permission::WriteConversation, &object)
        .await?;
    s.require_conversation(&p, &id).await?;
    if let continuum_core::Principal::Token { role, .. } = &p
        && !role.is_staff()
    {
        return Err(ApiError::forbidden("only staff call a patient's phone"));
    }
    s.store.get_conversation(p.tenant_id(), &id).await?;
    let room = match &req.room_id {
        Some(r) => {
            let room = s.store.get_room(p.tenant_id(), r).await?;
            if room.conversation_id != id {
                return Err(ApiError::invalid(
                    "room_id: the room belongs to another conversation",
                ));
            }
            room
        }
        None => s
            .store
            .latest_open_room(p.tenant_id(), &id)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(
                    "room_id: the conversation has no open room; create one or name it",
                )
            })?,
    };
    let fallback = s.fallback.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "voice_unavailable",
            "PSTN fallback is not running on this node",
        )
    })?;
    let key = crate::lobby::RoomKey::new(p.tenant_id(), &room.id);
    let reason = crate::fallback::Reason::Requested {
        by: p.audit_actor(),
    };
    use crate::fallback::FallbackError as E;
    match fallback.start(&key, &id, None, reason).await {
        Ok(call) => Ok((StatusCode::CREATED, Json(call))),
        Err(E::InProgress) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "fallback_in_progress",
            E::InProgress.to_string(),
        )),
        Err(E::NoPhone) => Err(ApiError::invalid(E::NoPhone.to_string())),
        Err(E::Setup(m)) => Err(ApiError::invalid(m)),
        Err(e @ (E::NoGateway | E::Dial(_))) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "voice_unavailable",
            e.to_string(),
        )),
        Err(E::Store(e)) => Err(e.into()),
    }
}
