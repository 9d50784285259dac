//! IVR flows: upload (validated, errors with line and column), read, list,
//! delete; a check without saving; the key TwiML requests are signed with.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::Permission;
use continuum_ivr::{Diagnostic, Severity};
use continuum_store::{BusinessCalendar, IvrFlow};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct FlowProblem {
    pub line: usize,
    pub column: usize,
    /// `error` or `warning`.
    pub severity: &'static str,
    pub message: String,
}

fn problem(d: &Diagnostic) -> FlowProblem {
    FlowProblem {
        line: d.line,
        column: d.column,
        severity: match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        },
        message: d.message.clone(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct FlowCheck {
    pub ok: bool,
    pub errors: Vec<FlowProblem>,
    pub warnings: Vec<FlowProblem>,
    /// Every text the flow can say.
    pub prompts: Vec<String>,
}

fn check(body: &[u8]) -> ApiResult<(String, FlowCheck)> {
    let src = std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid("the flow is not UTF-8 text (YAML)"))?;
    if src.len() > continuum_store::MAX_FLOW_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the flow is {} bytes; at most {}",
                src.len(),
                continuum_store::MAX_FLOW_BYTES
            ),
        ));
    }
    let report = continuum_ivr::check(src);
    Ok((
        src.to_owned(),
        FlowCheck {
            ok: report.errors.is_empty(),
            errors: report.errors.iter().map(problem).collect(),
            warnings: report.warnings.iter().map(problem).collect(),
            prompts: report.prompts,
        },
    ))
}

/// The first errors, one per line, `LINE:COLUMN: reason`.
fn refusal(c: &FlowCheck) -> ApiError {
    let lines: Vec<String> = c
        .errors
        .iter()
        .take(20)
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
        .collect();
    ApiError::invalid(format!(
        "the flow has {} error(s):\n{}",
        c.errors.len(),
        lines.join("\n")
    ))
}

#[derive(Serialize, ToSchema)]
pub struct SavedFlow {
    #[serde(flatten)]
    pub flow: IvrFlow,
    pub warnings: Vec<FlowProblem>,
}

/// Upload (or replace) a flow: YAML in the body. Refused with every error's
/// line, column and reason.
#[utoipa::path(put, path = "/v1/ivr/flows/{name}", tag = "ivr", operation_id = "putIvrFlow",
    params(("name" = String, Path, description = "the flow's name (a dispatch rule's `action.flow`)")),
    request_body(content = String, content_type = "application/yaml", description = "the flow (docs/ivr.md)"),
    responses((status = 201, body = SavedFlow, description = "stored"), (status = 200, body = SavedFlow, description = "replaced"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 413, body = ErrorBody, description = "larger than 256 KiB"),
        (status = 422, body = ErrorBody, description = "the flow has errors: each as `LINE:COLUMN: reason`")),
    security(("bearer" = [])))]
pub async fn put_flow(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<SavedFlow>)> {
    s.require(&p, Permission::ManageRouting, "ivr_flows")
        .await?;
    let (src, c) = check(&body)?;
    if !c.ok {
        return Err(refusal(&c));
    }
    if let Ok(parsed) = continuum_ivr::Flow::from_yaml(&src)
        && let Some(continuum_ivr::flow::Hours::Named(cal)) = &parsed.hours
        && s.store.get_calendar(p.tenant_id(), cal).await?.is_none()
    {
        return Err(ApiError::invalid(format!(
            "hours.calendar: no business-hours calendar named `{cal}`; create it first with PUT /v1/ivr/calendars/{{name}}"
        )));
    }
    let (flow, created) = s
        .store
        .put_ivr_flow(p.tenant_id(), &name, &src, &p.audit_actor())
        .await?;
    let FlowCheck {
        warnings, prompts, ..
    } = c;
    // Speech rendered now, in the background: the first caller does not wait.
    if let (Some(host), Ok(parsed)) = (s.ivr.clone(), continuum_ivr::Flow::from_yaml(&src)) {
        tokio::spawn(async move {
            for text in &prompts {
                if host.prompts.say(text, &parsed.language).await.is_err() {
                    break;
                }
            }
        });
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SavedFlow { flow, warnings })))
}

/// Check a flow without saving it.
#[utoipa::path(post, path = "/v1/ivr/check", tag = "ivr", operation_id = "checkIvrFlow",
    request_body(content = String, content_type = "application/yaml", description = "the flow"),
    responses((status = 200, body = FlowCheck, description = "errors and warnings with line and column (`ok` when none are errors)"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 413, body = ErrorBody, description = "larger than 256 KiB"),
        (status = 422, body = ErrorBody, description = "not UTF-8")),
    security(("bearer" = [])))]
pub async fn check_flow(
    State(s): State<AppState>,
    Auth(p): Auth,
    body: Bytes,
) -> ApiResult<Json<FlowCheck>> {
    s.require(&p, Permission::ManageRouting, "ivr_flows")
        .await?;
    Ok(Json(check(&body)?.1))
}

/// The tenant's flows.
#[utoipa::path(get, path = "/v1/ivr/flows", tag = "ivr", operation_id = "listIvrFlows",
    responses((status = 200, body = Vec<IvrFlow>, description = "by name"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin")),
    security(("bearer" = [])))]
pub async fn list_flows(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Vec<IvrFlow>>> {
    s.require(&p, Permission::ManageRouting, "ivr_flows")
        .await?;
    Ok(Json(s.store.list_ivr_flows(p.tenant_id()).await?))
}

/// One flow, as written.
#[utoipa::path(get, path = "/v1/ivr/flows/{name}", tag = "ivr", operation_id = "getIvrFlow",
    params(("name" = String, Path, description = "the flow's name")),
    responses((status = 200, body = IvrFlow, description = "the flow"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody, description = "no such flow")),
    security(("bearer" = [])))]
pub async fn get_flow(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<IvrFlow>> {
    s.require(&p, Permission::ManageRouting, "ivr_flows")
        .await?;
    s.store
        .get_ivr_flow(p.tenant_id(), &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("flow"))
}

/// Delete a flow (numbers whose rule names it get 503 until it is back).
#[utoipa::path(delete, path = "/v1/ivr/flows/{name}", tag = "ivr", operation_id = "deleteIvrFlow",
    params(("name" = String, Path, description = "the flow's name")),
    responses((status = 204, description = "deleted"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody, description = "no such flow")),
    security(("bearer" = [])))]
pub async fn delete_flow(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageRouting, "ivr_flows")
        .await?;
    s.store
        .delete_ivr_flow(p.tenant_id(), &name, &p.audit_actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct SigningKey {
    /// Configure your TwiML app's request validation with this as the
    /// "auth token" (e.g. twilio's `RequestValidator(key)`).
    pub key: String,
}

/// The key Continuum signs TwiML webhook requests with (`X-Twilio-Signature`).
#[utoipa::path(get, path = "/v1/ivr/webhook-signing-key", tag = "ivr", operation_id = "getIvrSigningKey",
    responses((status = 200, body = SigningKey, description = "the tenant's key"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 503, body = ErrorBody, description = "no IVR on this node (SIP is off)")),
    security(("bearer" = [])))]
pub async fn signing_key(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<SigningKey>> {
    s.require(&p, Permission::ManageRouting, "ivr_flows")
        .await?;
    let host = s.ivr.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_ivr",
            "this node runs no IVR (sip.enabled = false)",
        )
    })?;
    Ok(Json(SigningKey {
        key: host.signing_key(p.tenant_id()).await?,
    }))
}

/// Create or replace a business-hours calendar flows can name
/// (`hours: { calendar: NAME }`): `time_zone`, `weekly`, `holidays`, as in
/// a flow's `hours` (YAML or JSON).
#[utoipa::path(put, path = "/v1/ivr/calendars/{name}", tag = "ivr", operation_id = "putCalendar",
    params(("name" = String, Path, description = "the calendar's name")),
    request_body(content = String, content_type = "application/yaml", description = "time_zone, weekly, holidays (docs/ivr.md)"),
    responses((status = 201, body = BusinessCalendar, description = "stored"), (status = 200, body = BusinessCalendar, description = "replaced"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 422, body = ErrorBody, description = "errors, each as `LINE:COLUMN: reason`")),
    security(("bearer" = [])))]
pub async fn put_calendar(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<BusinessCalendar>)> {
    s.require(&p, Permission::ManageRouting, "calendars")
        .await?;
    let src = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("the calendar is not UTF-8 text (YAML or JSON)"))?;
    if let Err(errors) = continuum_ivr::load_calendar(src) {
        let lines: Vec<String> = errors
            .iter()
            .take(20)
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect();
        return Err(ApiError::invalid(format!(
            "the calendar has {} error(s):\n{}",
            errors.len(),
            lines.join("\n")
        )));
    }
    let (cal, created) = s
        .store
        .put_calendar(p.tenant_id(), &name, src, &p.audit_actor())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(cal)))
}

/// The tenant's calendars.
#[utoipa::path(get, path = "/v1/ivr/calendars", tag = "ivr", operation_id = "listCalendars",
    responses((status = 200, body = Vec<BusinessCalendar>, description = "by name"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin")),
    security(("bearer" = [])))]
pub async fn list_calendars(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<BusinessCalendar>>> {
    s.require(&p, Permission::ManageRouting, "calendars")
        .await?;
    Ok(Json(s.store.list_calendars(p.tenant_id()).await?))
}

/// One calendar, as written.
#[utoipa::path(get, path = "/v1/ivr/calendars/{name}", tag = "ivr", operation_id = "getCalendar",
    params(("name" = String, Path, description = "the calendar's name")),
    responses((status = 200, body = BusinessCalendar, description = "the calendar"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody, description = "no such calendar")),
    security(("bearer" = [])))]
pub async fn get_calendar(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<BusinessCalendar>> {
    s.require(&p, Permission::ManageRouting, "calendars")
        .await?;
    s.store
        .get_calendar(p.tenant_id(), &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("calendar"))
}

/// Delete a calendar (flows naming it count the clinic as open, with an
/// `ivr.error` on each call's timeline, until it is back).
#[utoipa::path(delete, path = "/v1/ivr/calendars/{name}", tag = "ivr", operation_id = "deleteCalendar",
    params(("name" = String, Path, description = "the calendar's name")),
    responses((status = 204, description = "deleted"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody, description = "no such calendar")),
    security(("bearer" = [])))]
pub async fn delete_calendar(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageRouting, "calendars")
        .await?;
    s.store
        .delete_calendar(p.tenant_id(), &name, &p.audit_actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
