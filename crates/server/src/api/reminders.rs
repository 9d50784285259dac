//! Appointment reminders as API objects: the tenant's reminder settings and
//! templates (admin), appointments (created or updated by the customer's
//! own id, rescheduled, cancelled; listed per conversation) and bulk
//! imports (CSV or JSON; every row checked before anything is written).

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use crate::extract::{Json, Path, Query};
use crate::reminders::rows::{self, AppointmentRequest, RowError};
use crate::reminders::{ImportReport, template_ids};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use continuum_core::{Permission, Principal};
use continuum_store::{
    Appointment, AppointmentPatch, AppointmentStatus, ReminderSettings, ReminderTemplate,
    TemplateInput, UpsertOutcome,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

async fn admin(s: &AppState, p: &Principal, object: &str) -> ApiResult<()> {
    s.require(p, Permission::ManageTenant, object).await
}

/// The tenant's reminder settings.
#[utoipa::path(get, path = "/v1/reminder-settings", tag = "reminders", operation_id = "getReminderSettings",
    responses((status = 200, body = ReminderSettings, description = "quiet hours, default time zone, clinic name (defaults until set)"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders")),
    security(("bearer" = [])))]
pub async fn get_settings(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<ReminderSettings>> {
    admin(&s, &p, "settings/reminders").await?;
    Ok(Json(s.store.reminder_settings(p.tenant_id()).await?))
}

/// Replace the tenant's reminder settings. Reminders already planned keep
/// their times; a late one is still never sent inside quiet hours.
#[utoipa::path(put, path = "/v1/reminder-settings", tag = "reminders", operation_id = "setReminderSettings", request_body = ReminderSettings,
    responses((status = 200, body = ReminderSettings, description = "the settings now in force"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders"),
        (status = 422, body = ErrorBody, description = "quiet hours not HH:MM (or too long), or an unknown time zone")),
    security(("bearer" = [])))]
pub async fn set_settings(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(settings): Json<ReminderSettings>,
) -> ApiResult<Json<ReminderSettings>> {
    admin(&s, &p, "settings/reminders").await?;
    s.store
        .set_reminder_settings(p.tenant_id(), &settings, &p.audit_actor())
        .await?;
    Ok(Json(settings))
}

/// Create a reminder template: when reminders go (`-24h`, `-1h`), what
/// they say (`{{variables}}`), on which channel, and the WhatsApp template
/// for outside the 24-hour window.
#[utoipa::path(post, path = "/v1/reminder-templates", tag = "reminders", operation_id = "createReminderTemplate", request_body = TemplateInput,
    responses((status = 201, body = ReminderTemplate, description = "the template"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders"),
        (status = 409, body = ErrorBody, description = "a template of that name exists"),
        (status = 422, body = ErrorBody, description = "a field is invalid (an offset, an unknown {{variable}}, the WhatsApp template); the message names it")),
    security(("bearer" = [])))]
pub async fn create_template(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(input): Json<TemplateInput>,
) -> ApiResult<(StatusCode, Json<ReminderTemplate>)> {
    admin(&s, &p, "reminder_templates").await?;
    let t = s
        .store
        .create_reminder_template(p.tenant_id(), input, &p.audit_actor())
        .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// The tenant's reminder templates, by name.
#[utoipa::path(get, path = "/v1/reminder-templates", tag = "reminders", operation_id = "listReminderTemplates",
    responses((status = 200, body = Vec<ReminderTemplate>, description = "the templates (deleted ones are not listed)"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders")),
    security(("bearer" = [])))]
pub async fn list_templates(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<ReminderTemplate>>> {
    admin(&s, &p, "reminder_templates").await?;
    Ok(Json(s.store.list_reminder_templates(p.tenant_id()).await?))
}

/// One reminder template.
#[utoipa::path(get, path = "/v1/reminder-templates/{id}", tag = "reminders", operation_id = "getReminderTemplate", params(("id" = String, Path, description = "the template's id")),
    responses((status = 200, body = ReminderTemplate, description = "the template"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders"),
        (status = 404, body = ErrorBody, description = "no such template in this tenant")),
    security(("bearer" = [])))]
pub async fn get_template(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ReminderTemplate>> {
    admin(&s, &p, &format!("reminder_template/{id}")).await?;
    Ok(Json(
        s.store.get_reminder_template(p.tenant_id(), &id).await?,
    ))
}

/// Replace a reminder template. Reminders already planned keep their
/// times (reschedule an appointment to plan it anew); the text is read
/// when each reminder is sent.
#[utoipa::path(put, path = "/v1/reminder-templates/{id}", tag = "reminders", operation_id = "replaceReminderTemplate", params(("id" = String, Path, description = "the template's id")), request_body = TemplateInput,
    responses((status = 200, body = ReminderTemplate, description = "the template as it is now"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders"),
        (status = 404, body = ErrorBody, description = "no such template in this tenant"),
        (status = 409, body = ErrorBody, description = "another template has that name"),
        (status = 422, body = ErrorBody, description = "a field is invalid; the message names it")),
    security(("bearer" = [])))]
pub async fn replace_template(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(input): Json<TemplateInput>,
) -> ApiResult<Json<ReminderTemplate>> {
    admin(&s, &p, &format!("reminder_template/{id}")).await?;
    Ok(Json(
        s.store
            .update_reminder_template(p.tenant_id(), &id, input, &p.audit_actor())
            .await?,
    ))
}

/// Delete a reminder template: new appointments cannot name it; reminders
/// already planned from it still go out.
#[utoipa::path(delete, path = "/v1/reminder-templates/{id}", tag = "reminders", operation_id = "deleteReminderTemplate", params(("id" = String, Path, description = "the template's id")),
    responses((status = 204, description = "deleted"),
        (status = 403, body = ErrorBody, description = "only API keys and admins manage reminders"),
        (status = 404, body = ErrorBody, description = "no such template in this tenant")),
    security(("bearer" = [])))]
pub async fn delete_template(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    admin(&s, &p, &format!("reminder_template/{id}")).await?;
    s.store
        .delete_reminder_template(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn first_error(errors: Vec<RowError>) -> ApiError {
    let text: Vec<String> = errors
        .iter()
        .map(|e| match &e.field {
            Some(f) if !e.message.starts_with(f.as_str()) => format!("{f}: {}", e.message),
            _ => e.message.clone(),
        })
        .collect();
    ApiError::invalid(text.join("; "))
}

/// Create an appointment, or update the one with the same `external_id`
/// (a new `start_time` reschedules: its pending reminders are cancelled and
/// planned again). It joins the patient's conversation (found by `phone`,
/// created if new), and its reminders are planned at once.
#[utoipa::path(post, path = "/v1/appointments", tag = "reminders", operation_id = "createAppointment", request_body = AppointmentRequest,
    responses((status = 201, body = Appointment, description = "created, with its reminders planned (`pending`, or `skipped` with the reason)"),
        (status = 200, body = Appointment, description = "an appointment with this external_id existed: updated, rescheduled, cancelled or unchanged"),
        (status = 403, body = ErrorBody, description = "may not write conversations, or (with `phone`) lacks the tenant-wide contact grant"),
        (status = 404, body = ErrorBody, description = "conversation_id names no conversation in reach"),
        (status = 422, body = ErrorBody, description = "a field is invalid or missing, or the template does not exist (the message names it)")),
    security(("bearer" = [])))]
pub async fn create_appointment(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<AppointmentRequest>,
) -> ApiResult<(StatusCode, Json<Appointment>)> {
    s.require(&p, Permission::WriteConversation, "appointments")
        .await?;
    let checked = rows::check(1, &req, false).map_err(first_error)?;
    match &checked.conversation_id {
        Some(c) => s.require_conversation(&p, c).await?,
        None => {
            s.require(&p, Permission::WriteContacts, "contacts").await?;
            s.require_all_contacts(&p, "appointment.create").await?;
        }
    }
    let (templates, missing) =
        template_ids(&s.store, p.tenant_id(), std::slice::from_ref(&checked)).await?;
    if !missing.is_empty() {
        return Err(first_error(missing));
    }
    let actor = p.audit_actor();
    let mut out =
        crate::reminders::write_rows(&s.store, p.tenant_id(), vec![checked], &templates, &actor)
            .await;
    let (_, r) = out
        .pop()
        .ok_or_else(|| ApiError::internal("the appointment was not written"))?;
    let (a, outcome) = r?;
    let status = if outcome == UpsertOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(a)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AppointmentQuery {
    /// The conversation whose appointments to list.
    #[param(format = Uuid)]
    pub conversation: String,
}

/// A conversation's appointments with their reminders, soonest first.
#[utoipa::path(get, path = "/v1/appointments", tag = "reminders", operation_id = "listAppointments", params(AppointmentQuery),
    responses((status = 200, body = Vec<Appointment>, description = "the appointments (at most 500), each with its reminders and their states"),
        (status = 403, body = ErrorBody, description = "may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such conversation (or not in your grants)")),
    security(("bearer" = [])))]
pub async fn list_appointments(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<AppointmentQuery>,
) -> ApiResult<Json<Vec<Appointment>>> {
    s.require(
        &p,
        Permission::ReadTimeline,
        &format!("conversation/{}", q.conversation),
    )
    .await?;
    s.require_conversation(&p, &q.conversation).await?;
    Ok(Json(
        s.store
            .list_appointments(p.tenant_id(), &q.conversation, &p.audit_actor())
            .await?,
    ))
}

/// One appointment with its reminders.
#[utoipa::path(get, path = "/v1/appointments/{id}", tag = "reminders", operation_id = "getAppointment", params(("id" = String, Path, description = "the appointment's id")),
    responses((status = 200, body = Appointment, description = "the appointment"),
        (status = 403, body = ErrorBody, description = "may not read the timeline"),
        (status = 404, body = ErrorBody, description = "no such appointment (or its conversation is not in your grants)")),
    security(("bearer" = [])))]
pub async fn get_appointment(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Appointment>> {
    s.require(&p, Permission::ReadTimeline, &format!("appointment/{id}"))
        .await?;
    let a = s
        .store
        .get_appointment(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    s.require_conversation(&p, &a.conversation_id)
        .await
        .map_err(|_| ApiError::not_found("appointment"))?;
    Ok(Json(a))
}

/// A change to an appointment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentPatchRequest {
    /// A new time (RFC 3339, or local with the appointment's `time_zone`):
    /// pending reminders are cancelled and planned again.
    #[schema(max_length = 64)]
    pub start_time: Option<String>,
    /// `cancelled` cancels it and its pending reminders; `scheduled`
    /// reinstates a cancelled one; `confirmed` records a confirmation
    /// taken by staff.
    pub status: Option<AppointmentStatus>,
    /// IANA zone for its reminders; an empty string clears it.
    #[schema(max_length = 64)]
    pub time_zone: Option<String>,
    #[schema(max_length = 200)]
    pub location: Option<String>,
    #[schema(max_length = 200)]
    pub clinician: Option<String>,
    /// Another reminder template, by name (its reminders are planned anew).
    #[schema(max_length = 64)]
    pub template: Option<String>,
}

/// Reschedule, cancel, confirm or relabel an appointment.
#[utoipa::path(patch, path = "/v1/appointments/{id}", tag = "reminders", operation_id = "updateAppointment", params(("id" = String, Path, description = "the appointment's id")), request_body = AppointmentPatchRequest,
    responses((status = 200, body = Appointment, description = "the appointment as it is now, with its reminders"),
        (status = 403, body = ErrorBody, description = "may not write conversations"),
        (status = 404, body = ErrorBody, description = "no such appointment (or its conversation is not in your grants)"),
        (status = 409, body = ErrorBody, description = "the appointment is cancelled: set status to scheduled to reinstate it"),
        (status = 422, body = ErrorBody, description = "a field is invalid (status reschedule_requested is the patient's to set), or the template does not exist")),
    security(("bearer" = [])))]
pub async fn update_appointment(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<AppointmentPatchRequest>,
) -> ApiResult<Json<Appointment>> {
    s.require(
        &p,
        Permission::WriteConversation,
        &format!("appointment/{id}"),
    )
    .await?;
    let actor = p.audit_actor();
    let cur = s.store.get_appointment(p.tenant_id(), &id, &actor).await?;
    s.require_conversation(&p, &cur.conversation_id)
        .await
        .map_err(|_| ApiError::not_found("appointment"))?;
    let zone = match req.time_zone.as_deref() {
        Some("") => None,
        Some(z) => Some(z),
        None => cur.time_zone.as_deref(),
    };
    let start_at = match &req.start_time {
        Some(t) => {
            let at = rows::parse_start(t, zone)
                .map_err(|e| ApiError::invalid(format!("start_time {e}")))?;
            Some(at)
        }
        None => None,
    };
    let template_id = match &req.template {
        Some(name) => Some(
            s.store
                .list_reminder_templates(p.tenant_id())
                .await?
                .into_iter()
                .find(|t| t.name == *name)
                .map(|t| t.id)
                .ok_or_else(|| {
                    ApiError::invalid(format!("template `{}` does not exist", rows::shown(name)))
                })?,
        ),
        None => None,
    };
    if req.status == Some(AppointmentStatus::RescheduleRequested) {
        return Err(ApiError::invalid(
            "status reschedule_requested is set by the patient's reply; use scheduled, confirmed or cancelled",
        ));
    }
    let patch = AppointmentPatch {
        start_at,
        status: req.status,
        time_zone: req.time_zone,
        location: req.location,
        clinician: req.clinician,
        template_id,
    };
    let (a, _) = s
        .store
        .update_appointment(p.tenant_id(), &id, patch, &actor)
        .await?;
    Ok(Json(a))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Check every row and write nothing.
    pub dry_run: Option<bool>,
}

/// An import refused: every row that is wrong, and why.
#[derive(Serialize, ToSchema)]
pub struct ImportErrors {
    pub error: ErrorDetail,
    /// Each bad row (at most 1000 listed), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RowError>,
}

/// Import appointments in bulk, as CSV (`Content-Type: text/csv`, a header
/// row naming the columns) or JSON (an array of appointments). Columns and
/// fields are those of `POST /v1/appointments`; `external_id` and `phone`
/// are required. Every row is checked first: if any is wrong, nothing is
/// written and the answer lists every bad row by number (CSV: the
/// spreadsheet row, the header being 1; JSON: the item, from 1). Rows are
/// then written by `external_id`, so sending a file again updates rather
/// than duplicates (and completes an import that was cut short). At most
/// 5000 rows and `server.max_body_bytes` per request; `continuum
/// appointments import` sends a large file in parts.
#[utoipa::path(post, path = "/v1/appointments/import", tag = "reminders", operation_id = "importAppointments", params(ImportQuery),
    request_body(description = "CSV with a header row, or a JSON array of appointments", content(
        (Vec<AppointmentRequest> = "application/json"),
        (String = "text/csv"))),
    responses((status = 200, body = ImportReport, description = "every row checked and written (or, with `dry_run`, checked); `failed` lists rows a database error kept out, to send again"),
        (status = 403, body = ErrorBody, description = "needs to write conversations and the tenant-wide contact grant"),
        (status = 415, body = ErrorBody, description = "the body is neither `text/csv` nor `application/json`"),
        (status = 422, body = ImportErrors, description = "rows are wrong (each listed with its row number and field): nothing was written")),
    security(("bearer" = [])))]
pub async fn import(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ImportQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    s.require(&p, Permission::WriteConversation, "appointments")
        .await?;
    s.require(&p, Permission::WriteContacts, "contacts").await?;
    s.require_all_contacts(&p, "appointment.import").await?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this server accepts (server.max_body_bytes): send fewer rows per request",
            )
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let parsed = match ctype.as_str() {
        "text/csv" => rows::parse_csv(&body, rows::MAX_ROWS),
        "application/json" => rows::parse_json(&body, rows::MAX_ROWS),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the appointments as `Content-Type: text/csv` (a header row, then one appointment a row) or `application/json` (an array)",
            ));
        }
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(refused(vec![e])),
    };
    match crate::reminders::import(
        &s.store,
        p.tenant_id(),
        parsed,
        q.dry_run.unwrap_or(false),
        &p.audit_actor(),
    )
    .await?
    {
        Ok(report) => Ok((StatusCode::OK, Json(report)).into_response()),
        Err(errors) => Ok(refused(errors)),
    }
}

fn refused(mut errors: Vec<RowError>) -> Response {
    let n = errors.len();
    let rows_wrong = {
        let mut r: Vec<usize> = errors.iter().map(|e| e.row).collect();
        r.dedup();
        r.len()
    };
    errors.truncate(1000);
    let first = errors.first().map(|e| e.to_string()).unwrap_or_default();
    let body = ImportErrors {
        error: ErrorDetail {
            code: "invalid_rows".into(),
            message: format!(
                "{rows_wrong} row(s) are wrong ({n} problem(s)); nothing was imported. First: {first}"
            ),
        },
        rows: errors,
    };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}
