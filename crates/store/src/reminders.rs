//! Appointment reminders: a tenant's settings (quiet hours, default time
//! zone) and templates, appointments (from the customer's system, upserted by
//! its own id), and one row per reminder. SQL for these tables lives here only.
//!
//! Scheduling is part of the write that creates or changes an appointment:
//! a new start time cancels the pending reminders and plans new ones in the
//! same transaction ([`plan`] holds the rules: quiet hours in the patient's
//! zone, late bookings, DST).
//!
//! Dispatch is crash-safe without a `sending` state: one write transaction
//! claims the due reminders and turns each into an outbox message (its
//! `message` event and `messages` row) and marks it `sent` with the message's
//! id. Both commit or neither does, so a crash loses no reminder and sends
//! none twice (the message also carries the idempotency key
//! `reminder:<id>`, a second guard). The outbox sender then delivers the
//! message like any other, with its own crash rules.

pub mod plan;

use crate::audit::{AuditEntry, Outcome};
use crate::contacts;
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::events::{Appended, Event, append_in_tx, publish};
use crate::messaging::{default_sender, enqueue_in_tx, last_inbound_in_tx};
use crate::time_fmt::Timestamp;
use crate::{Contact, NewOutboundMessage, Store, TenantKeys, WriteCtx, now_micros};
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent};
use plan::{QuietWindow, Vars};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How long after a reminder went out a `C`/`R` reply still answers it.
const REPLY_WINDOW_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;
/// WhatsApp's customer-service window (free-form messages).
const WHATSAPP_WINDOW_MICROS: i64 = 24 * 3600 * 1_000_000;
const AUDIT_ACTOR: &str = "system:reminders";

/// Quiet hours: a daily window in the patient's own time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`, 24-hour clock: quiet from here (e.g. `21:00`).
    pub start: String,
    /// `HH:MM`: reminders may go again from here (e.g. `08:00`).
    pub end: String,
}

/// A tenant's reminder settings (no PHI: stored in clear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ReminderSettings {
    /// No reminder goes out inside these hours of the patient's day
    /// (default 21:00–08:00); `null` for none.
    pub quiet_hours: Option<QuietHours>,
    /// The zone for patients whose contact has no `time_zone` (IANA, e.g.
    /// `America/Chicago`); absent: UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_time_zone: Option<String>,
    /// `{{clinic}}` in templates; absent: the tenant's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clinic_name: Option<String>,
}

impl Default for ReminderSettings {
    fn default() -> Self {
        ReminderSettings {
            quiet_hours: Some(QuietHours {
                start: "21:00".into(),
                end: "08:00".into(),
            }),
            default_time_zone: None,
            clinic_name: None,
        }
    }
}

impl ReminderSettings {
    pub fn validate(&self) -> Result<()> {
        self.window()?;
        if let Some(tz) = &self.default_time_zone {
            check_zone("default_time_zone", tz)?;
        }
        if let Some(c) = &self.clinic_name {
            check_text("clinic_name", c, 100)?;
        }
        Ok(())
    }

    fn window(&self) -> Result<Option<QuietWindow>> {
        self.quiet_hours
            .as_ref()
            .map(|q| QuietWindow::parse(&q.start, &q.end))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("quiet_hours: {e}")))
    }
}

fn check_zone(field: &str, tz: &str) -> Result<()> {
    if tz.len() <= 64 && jiff::tz::TimeZone::get(tz).is_ok() {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "{field} `{}` is not an IANA time zone (such as America/Chicago)",
        tz.chars()
            .take(64)
            .filter(|c| !c.is_control())
            .collect::<String>()
    )))
}

fn check_text(field: &str, v: &str, max: usize) -> Result<()> {
    if v.trim().is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{field} must be 1..={max} characters without control characters"
        )));
    }
    Ok(())
}

/// Which channel a template's reminders go out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReminderChannel {
    /// The patient's preferred channel; else SMS when they have a phone
    /// number, else WhatsApp.
    #[default]
    Preferred,
    Sms,
    /// WhatsApp (the approved template outside the 24-hour window; SMS when
    /// there is none and the patient has a phone number).
    Whatsapp,
}

/// A WhatsApp template approved by Meta, for reminders outside the 24-hour
/// customer-service window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    /// The template's name at Meta (lowercase letters, digits, `_`).
    pub name: String,
    /// e.g. `en_US` (default `en`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The variables for its {{1}}, {{2}}…, in order (e.g.
    /// `["patient_first_name", "date", "time"]`).
    #[serde(default)]
    pub params: Vec<String>,
}

/// What a template is made of, as given (create or replace).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// Letters, digits, `.`, `_`, `-` (1..=64); appointments name it.
    pub name: String,
    /// When, before the appointment: `-24h`, `-1h`, `-30m`, `-2d`, `-1h30m`
    /// (1 to 6 of them, at most 30 days).
    pub offsets: Vec<String>,
    /// The text, with `{{patient_first_name}}`, `{{patient_name}}`,
    /// `{{date}}`, `{{time}}`, `{{weekday}}`, `{{clinic}}`, `{{location}}`,
    /// `{{clinician}}` (dates and times in the patient's zone). Never ask
    /// patients to reply CANCEL: it is an opt-out word; use C and R.
    pub body: String,
    #[serde(default)]
    pub channel: ReminderChannel,
    pub whatsapp: Option<WhatsappTemplate>,
    /// The clinic's sender number (E.164); absent: the first sender of the
    /// first provider carrying the channel.
    pub from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredTemplate {
    offsets: Vec<i64>,
    body: String,
    channel: ReminderChannel,
    whatsapp: Option<WhatsappTemplate>,
    from: Option<String>,
}

/// A reminder template.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReminderTemplate {
    pub id: String,
    pub name: String,
    pub offsets: Vec<String>,
    pub body: String,
    pub channel: ReminderChannel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsappTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl TemplateInput {
    fn check(&self) -> Result<StoredTemplate> {
        let invalid = |m: String| StoreError::Invalid(m);
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(invalid(
                "name must be 1..=64 letters, digits, `.`, `_` or `-`".into(),
            ));
        }
        if self.offsets.is_empty() || self.offsets.len() > 6 {
            return Err(invalid(
                "offsets must list 1 to 6 times before the appointment, e.g. [\"-24h\", \"-1h\"]"
                    .into(),
            ));
        }
        let mut offsets = Vec::with_capacity(self.offsets.len());
        for (i, o) in self.offsets.iter().enumerate() {
            let secs = plan::parse_offset(o).map_err(|e| invalid(format!("offsets[{i}]: {e}")))?;
            if offsets.contains(&secs) {
                return Err(invalid(format!("offsets[{i}]: `{o}` is listed twice")));
            }
            offsets.push(secs);
        }
        offsets.sort_unstable();
        if self.body.trim().is_empty()
            || self.body.chars().count() > 1600
            || self.body.contains('\0')
        {
            return Err(invalid(
                "body must be 1..=1600 characters, without NUL".into(),
            ));
        }
        plan::check_body(&self.body).map_err(invalid)?;
        if let Some(w) = &self.whatsapp {
            let ok = !w.name.is_empty()
                && w.name.len() <= 512
                && w.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(invalid(
                    "whatsapp.name must be a template name as Meta has it: 1..=512 lowercase letters, digits and `_`"
                        .into(),
                ));
            }
            if let Some(l) = &w.language
                && (l.is_empty()
                    || l.len() > 16
                    || !l.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'))
            {
                return Err(invalid(
                    "whatsapp.language must be a language code such as en or en_US".into(),
                ));
            }
            if w.params.len() > 10 {
                return Err(invalid("whatsapp.params lists at most 10 variables".into()));
            }
            for (i, p) in w.params.iter().enumerate() {
                if !plan::VARIABLES.contains(&p.as_str()) {
                    return Err(invalid(format!(
                        "whatsapp.params[{i}]: `{}` is not a variable; use one of {}",
                        p.chars().take(40).collect::<String>(),
                        plan::VARIABLES.join(", ")
                    )));
                }
            }
        }
        let from = match &self.from {
            Some(f) => Some(
                continuum_core::normalize_phone(f).map_err(|e| invalid(format!("from: {e}")))?,
            ),
            None => None,
        };
        Ok(StoredTemplate {
            offsets,
            body: self.body.clone(),
            channel: self.channel,
            whatsapp: self.whatsapp.clone(),
            from,
        })
    }
}

/// Where an appointment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Scheduled,
    /// The patient replied C to a reminder.
    Confirmed,
    /// The patient replied R to a reminder: staff should call them.
    RescheduleRequested,
    Cancelled,
}

impl AppointmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentStatus::Scheduled => "scheduled",
            AppointmentStatus::Confirmed => "confirmed",
            AppointmentStatus::RescheduleRequested => "reschedule_requested",
            AppointmentStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => AppointmentStatus::Scheduled,
            "confirmed" => AppointmentStatus::Confirmed,
            "reschedule_requested" => AppointmentStatus::RescheduleRequested,
            "cancelled" => AppointmentStatus::Cancelled,
            _ => return None,
        })
    }
}

/// Where a reminder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReminderState {
    /// Waiting for `due_at`.
    Pending,
    /// Queued in the outbox as `message_id` (its delivery is the message's).
    Sent,
    /// Not sent, by the rules (`detail` says which: time passed, quiet hours).
    Skipped,
    /// The appointment was rescheduled or cancelled first.
    Cancelled,
    /// The patient opted out of the channel: nothing sent (audited, and a
    /// note on the timeline).
    Suppressed,
    /// Could not be sent (no number, no provider; `detail`), noted on the timeline.
    Failed,
}

impl ReminderState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReminderState::Pending => "pending",
            ReminderState::Sent => "sent",
            ReminderState::Skipped => "skipped",
            ReminderState::Cancelled => "cancelled",
            ReminderState::Suppressed => "suppressed",
            ReminderState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => ReminderState::Pending,
            "sent" => ReminderState::Sent,
            "skipped" => ReminderState::Skipped,
            "cancelled" => ReminderState::Cancelled,
            "suppressed" => ReminderState::Suppressed,
            "failed" => ReminderState::Failed,
            other => {
                return Err(StoreError::Integrity(format!("reminder state `{other}`")));
            }
        })
    }
}

/// One reminder of an appointment.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reminder {
    pub id: String,
    /// Before the appointment, as the template says it (`-24h`).
    pub offset: String,
    /// When it goes (or went, or would have gone) out, after quiet hours.
    pub due_at: Timestamp,
    pub state: ReminderState,
    /// The outbox message it became (`GET /v1/messages/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Why it moved, was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub updated_at: Timestamp,
}

/// An appointment and its reminders.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Appointment {
    pub id: String,
    pub conversation_id: String,
    pub contact_id: String,
    /// The customer's own id for it (re-imports update rather than duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub start_time: Timestamp,
    /// The zone its reminders use (else the patient's, else the tenant's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clinician: Option<String>,
    /// The name reminders greet (`{{patient_first_name}}`); else the contact's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_name: Option<String>,
    pub template_id: String,
    pub status: AppointmentStatus,
    pub reminders: Vec<Reminder>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The fields of an appointment as the customer's system gives them.
#[derive(Debug, Clone, Default)]
pub struct AppointmentInput {
    pub external_id: Option<String>,
    /// Micros (UTC).
    pub start_at: i64,
    pub time_zone: Option<String>,
    pub location: Option<String>,
    pub clinician: Option<String>,
    pub patient_name: Option<String>,
    pub template_id: String,
    /// `Cancelled` cancels (an import's way to cancel); else scheduled.
    pub cancelled: bool,
}

impl AppointmentInput {
    /// Field checks (the same for one appointment and an import row).
    pub fn validate(&self) -> Result<()> {
        if let Some(x) = &self.external_id {
            check_text("external_id", x, 128)?;
        }
        if let Some(tz) = &self.time_zone {
            check_zone("time_zone", tz)?;
        }
        for (field, v) in [
            ("location", &self.location),
            ("clinician", &self.clinician),
            ("patient_name", &self.patient_name),
        ] {
            if let Some(v) = v {
                check_text(field, v, 200)?;
            }
        }
        // Years 2000..=2200: a typo'd year is an error, not a reminder in 9999.
        if !(946_684_800_000_000..=7_258_118_400_000_000).contains(&self.start_at) {
            return Err(StoreError::Invalid(
                "start_time must be between the years 2000 and 2200".into(),
            ));
        }
        Ok(())
    }
}

/// One appointment to create or update, already attached to its patient.
#[derive(Debug, Clone)]
pub struct AppointmentUpsert {
    pub conversation_id: String,
    pub contact_id: String,
    pub input: AppointmentInput,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpsertOutcome {
    Created,
    /// Labels changed; the reminders stand.
    Updated,
    /// New start time (or template, or zone): pending reminders cancelled
    /// and planned again.
    Rescheduled,
    Cancelled,
    /// Already exactly so: nothing written.
    Unchanged,
}

/// A change to an appointment (`PATCH`).
#[derive(Debug, Clone, Default)]
pub struct AppointmentPatch {
    pub start_at: Option<i64>,
    pub status: Option<AppointmentStatus>,
    pub time_zone: Option<String>,
    pub location: Option<String>,
    pub clinician: Option<String>,
    pub template_id: Option<String>,
}

/// A patient's answer to a reminder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReminderReplyKind {
    Confirm,
    Reschedule,
}

/// What one dispatch pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DispatchReport {
    pub claimed: usize,
    pub sent: usize,
    pub suppressed: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub failed: usize,
    /// Due inside quiet hours (a late dispatch): moved on, still pending.
    pub deferred: usize,
}

#[derive(Serialize, Deserialize, Default, PartialEq, Eq, Clone)]
struct SealedAppointment {
    external_id: Option<String>,
    time_zone: Option<String>,
    location: Option<String>,
    clinician: Option<String>,
    patient_name: Option<String>,
}

fn appointment_aad(tenant_id: &str, id: &str) -> Vec<u8> {
    format!("appointment:{tenant_id}:{id}").into_bytes()
}

const EXTERNAL_INDEX: &str = "appointment.external_id";
const APPT_COLUMNS: &str = "id, tenant_id, conversation_id, contact_id, template_id, start_at, status, data, created_at, updated_at";
const TEMPLATE_COLUMNS: &str = "id, name, spec, created_at, updated_at";

/// An appointment row, unsealed.
struct Row {
    a: Appointment,
    data: SealedAppointment,
}

fn appointment_row(keys: &TenantKeys, r: &crate::db::Row<'_>) -> Result<Row> {
    let id: String = r.get(0)?;
    let tenant_id: String = r.get(1)?;
    let data: SealedAppointment = serde_json::from_slice(
        &keys
            .data
            .open(&r.get::<_, Vec<u8>>(7)?, &appointment_aad(&tenant_id, &id))?,
    )
    .map_err(|e| StoreError::Integrity(format!("appointment {id}: {e}")))?;
    let status: String = r.get(6)?;
    Ok(Row {
        a: Appointment {
            conversation_id: r.get(2)?,
            contact_id: r.get(3)?,
            template_id: r.get(4)?,
            start_time: Timestamp(r.get(5)?),
            status: AppointmentStatus::parse(&status).ok_or_else(|| {
                StoreError::Integrity(format!("appointment {id}: status `{status}`"))
            })?,
            external_id: data.external_id.clone(),
            time_zone: data.time_zone.clone(),
            location: data.location.clone(),
            clinician: data.clinician.clone(),
            patient_name: data.patient_name.clone(),
            reminders: Vec::new(),
            created_at: Timestamp(r.get(8)?),
            updated_at: Timestamp(r.get(9)?),
            id,
        },
        data,
    })
}

fn load_row(conn: &crate::db::Conn, keys: &TenantKeys, tenant_id: &str, id: &str) -> Result<Row> {
    load_row_with(conn, keys, tenant_id, id, "")
}

/// [`load_row`] for a write that changes the appointment from what it read:
/// the row stays locked (PostgreSQL) until the write commits, so a write on
/// another node waits and then reads what this one wrote.
fn lock_row(conn: &crate::db::Conn, keys: &TenantKeys, tenant_id: &str, id: &str) -> Result<Row> {
    load_row_with(conn, keys, tenant_id, id, conn.row_lock())
}

fn load_row_with(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
    lock: &str,
) -> Result<Row> {
    conn.prepare_cached(&format!(
        "SELECT {APPT_COLUMNS} FROM appointments WHERE id = ?1 AND tenant_id = ?2{lock}"
    ))?
    .query_row(params![id, tenant_id], |r| Ok(appointment_row(keys, r)))
    .optional()?
    .ok_or(StoreError::NotFound("appointment"))?
}

fn reminders_of(conn: &crate::db::Conn, appointment_id: &str) -> Result<Vec<Reminder>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, offset_secs, due_at, state, message_id, detail, updated_at FROM reminders
         WHERE appointment_id = ?1 ORDER BY offset_secs, created_at",
    )?;
    let mut rows = stmt.query([appointment_id])?;
    let mut out = Vec::new();
    while let Some(ref r) = rows.next()? {
        out.push(Reminder {
            id: r.get(0)?,
            offset: plan::format_offset(r.get(1)?),
            due_at: Timestamp(r.get(2)?),
            state: ReminderState::parse(&r.get::<_, String>(3)?)?,
            message_id: r.get(4)?,
            detail: r.get(5)?,
            updated_at: Timestamp(r.get(6)?),
        });
    }
    Ok(out)
}

fn load(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<Appointment> {
    let mut a = load_row(conn, keys, tenant_id, id)?.a;
    a.reminders = reminders_of(conn, id)?;
    Ok(a)
}

fn settings_in(conn: &crate::db::Conn, tenant_id: &str) -> Result<ReminderSettings> {
    let json: Option<String> = conn
        .prepare_cached("SELECT settings FROM reminder_settings WHERE tenant_id = ?1")?
        .query_row([tenant_id], |r| r.get(0))
        .optional()?;
    Ok(json
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default())
}

fn template_from_row(r: &crate::db::Row<'_>) -> Result<(ReminderTemplate, StoredTemplate)> {
    let id: String = r.get(0)?;
    let spec: StoredTemplate = serde_json::from_str(&r.get::<_, String>(2)?)
        .map_err(|e| StoreError::Integrity(format!("reminder template {id}: {e}")))?;
    Ok((
        ReminderTemplate {
            name: r.get(1)?,
            offsets: spec
                .offsets
                .iter()
                .map(|o| plan::format_offset(*o))
                .collect(),
            body: spec.body.clone(),
            channel: spec.channel,
            whatsapp: spec.whatsapp.clone(),
            from: spec.from.clone(),
            created_at: Timestamp(r.get(3)?),
            updated_at: Timestamp(r.get(4)?),
            id,
        },
        spec,
    ))
}

/// A template by id, deleted or not (reminders planned from it still go out).
fn template_in(
    conn: &crate::db::Conn,
    tenant_id: &str,
    id: &str,
) -> Result<(ReminderTemplate, StoredTemplate)> {
    conn.prepare_cached(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM reminder_templates WHERE id = ?1 AND tenant_id = ?2"
    ))?
    .query_row(params![id, tenant_id], |r| Ok(template_from_row(r)))
    .optional()?
    .ok_or(StoreError::NotFound("reminder template"))?
}

fn live_template_exists(conn: &crate::db::Conn, tenant_id: &str, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM reminder_templates WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL",
        )?
        .query_row(params![id, tenant_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The zone an appointment's reminders use.
fn zone_for(
    data: &SealedAppointment,
    contact: &Contact,
    s: &ReminderSettings,
) -> jiff::tz::TimeZone {
    plan::zone(
        data.time_zone
            .as_deref()
            .or(contact.time_zone.as_deref())
            .or(s.default_time_zone.as_deref()),
    )
}

/// Cancels an appointment's pending reminders; returns how many.
fn cancel_pending(ctx: &WriteCtx<'_>, appointment_id: &str, why: &str) -> Result<usize> {
    Ok(ctx
        .conn
        .prepare_cached(
            "UPDATE reminders SET state = 'cancelled', detail = ?2, updated_at = ?3
             WHERE appointment_id = ?1 AND state = 'pending'",
        )?
        .execute(params![appointment_id, why, now_micros()])?)
}

/// Plans and inserts the reminders of an appointment; returns how many are pending.
#[allow(clippy::too_many_arguments)]
fn schedule(
    ctx: &WriteCtx<'_>,
    tenant_id: &str,
    appointment_id: &str,
    start: i64,
    offsets: &[i64],
    tz: &jiff::tz::TimeZone,
    quiet: Option<QuietWindow>,
    now: i64,
) -> Result<usize> {
    let mut pending = 0;
    let mut insert = ctx.conn.prepare_cached(
        "INSERT INTO reminders (id, tenant_id, appointment_id, offset_secs, due_at, state, detail, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
    )?;
    for p in plan::plan(start, offsets, tz, quiet, now) {
        let (state, detail) = match &p.skipped {
            None => {
                pending += 1;
                (ReminderState::Pending, p.detail.clone())
            }
            Some(why) => (ReminderState::Skipped, Some(why.clone())),
        };
        insert.execute(params![
            uuid::Uuid::now_v7().to_string(),
            tenant_id,
            appointment_id,
            p.offset_secs,
            p.due_at,
            state.as_str(),
            detail,
            now
        ])?;
    }
    Ok(pending)
}

/// A tenant's sender for a channel (and the template's own `from`), or why
/// there is none.
type SenderCache =
    HashMap<(String, Channel, Option<String>), std::result::Result<Option<String>, String>>;

/// Per-write caches of what every reminder of a tenant shares.
#[derive(Default)]
struct Shared {
    settings: HashMap<String, (ReminderSettings, Option<QuietWindow>)>,
    templates: HashMap<String, StoredTemplate>,
    senders: SenderCache,
    clinic: HashMap<String, String>,
}

impl Shared {
    fn settings(
        &mut self,
        conn: &crate::db::Conn,
        tenant_id: &str,
    ) -> Result<(ReminderSettings, Option<QuietWindow>)> {
        if let Some(s) = self.settings.get(tenant_id) {
            return Ok(s.clone());
        }
        let s = settings_in(conn, tenant_id)?;
        let w = s.window().unwrap_or(None);
        self.settings.insert(tenant_id.to_owned(), (s.clone(), w));
        Ok((s, w))
    }

    fn template(
        &mut self,
        conn: &crate::db::Conn,
        tenant_id: &str,
        id: &str,
    ) -> Result<StoredTemplate> {
        if let Some(t) = self.templates.get(id) {
            return Ok(t.clone());
        }
        let (_, spec) = template_in(conn, tenant_id, id)?;
        self.templates.insert(id.to_owned(), spec.clone());
        Ok(spec)
    }

    fn clinic(
        &mut self,
        conn: &crate::db::Conn,
        tenant_id: &str,
        s: &ReminderSettings,
    ) -> Result<String> {
        if let Some(c) = &s.clinic_name {
            return Ok(c.clone());
        }
        if let Some(c) = self.clinic.get(tenant_id) {
            return Ok(c.clone());
        }
        let name = crate::tenants::name_in(conn, tenant_id)?;
        self.clinic.insert(tenant_id.to_owned(), name.clone());
        Ok(name)
    }
}

/// Inserts or updates one appointment and (re)plans its reminders (inside
/// the caller's write). Returns the outcome and whether reminders are pending.
fn upsert_in_tx(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    up: &AppointmentUpsert,
    shared: &mut Shared,
    actor: &str,
) -> Result<(String, UpsertOutcome, usize)> {
    let input = &up.input;
    input.validate()?;
    if !live_template_exists(ctx.conn, tenant_id, &input.template_id)? {
        return Err(StoreError::NotFound("reminder template"));
    }
    let now = now_micros();
    let data = SealedAppointment {
        external_id: input.external_id.clone(),
        time_zone: input.time_zone.clone(),
        location: input.location.clone(),
        clinician: input.clinician.clone(),
        patient_name: input.patient_name.clone(),
    };
    let ext_idx = input
        .external_id
        .as_deref()
        .map(|x| keys.blind_index(EXTERNAL_INDEX, x));
    let by_external = |conn: &crate::db::Conn| -> Result<Option<String>> {
        Ok(match &ext_idx {
            Some(idx) => conn
                .prepare_cached(&format!(
                    "SELECT id FROM appointments WHERE tenant_id = ?1 AND external_idx = ?2{}",
                    conn.row_lock()
                ))?
                .query_row(params![tenant_id, idx], |r| r.get(0))
                .optional()?,
            None => None,
        })
    };
    let (settings, quiet) = shared.settings(ctx.conn, tenant_id)?;
    let contact = contacts::load(ctx.conn, keys, tenant_id, &up.contact_id)?;
    let tz = zone_for(&data, &contact, &settings);
    let spec = shared.template(ctx.conn, tenant_id, &input.template_id)?;
    let seal = |id: &str| -> Result<Vec<u8>> {
        let plain = serde_json::to_vec(&data).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(keys.data.seal(&plain, &appointment_aad(tenant_id, id)))
    };
    let id = match by_external(ctx.conn)? {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            let status = if input.cancelled {
                AppointmentStatus::Cancelled
            } else {
                AppointmentStatus::Scheduled
            };
            let inserted = ctx
                .conn
                .prepare_cached(
                    "INSERT INTO appointments (id, tenant_id, conversation_id, contact_id, external_idx, template_id, start_at, status, data, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    id,
                    tenant_id,
                    up.conversation_id,
                    up.contact_id,
                    ext_idx,
                    input.template_id,
                    input.start_at,
                    status.as_str(),
                    seal(&id)?,
                    now
                ])?;
            if inserted == 1 {
                let pending = if input.cancelled {
                    0
                } else {
                    schedule(
                        ctx,
                        tenant_id,
                        &id,
                        input.start_at,
                        &spec.offsets,
                        &tz,
                        quiet,
                        now,
                    )?
                };
                ctx.audit(
                    tenant_id,
                    &AuditEntry::new(
                        actor,
                        "appointment.create",
                        format!("appointment/{id}"),
                        Outcome::Ok,
                    )
                    .with_detail(
                        serde_json::json!({ "conversation": up.conversation_id, "reminders": pending }),
                    ),
                )?;
                return Ok((id, UpsertOutcome::Created, pending));
            }
            // Nothing inserted: a write that committed since the lookup (on
            // another node; this insert waited for it) imported the same
            // external id. Update that appointment, as a retry would.
            by_external(ctx.conn)?.ok_or_else(|| {
                StoreError::Conflict(
                    "the appointment's external_id is being imported concurrently; retry".into(),
                )
            })?
        }
    };
    let cur = lock_row(ctx.conn, keys, tenant_id, &id)?;
    let was_cancelled = cur.a.status == AppointmentStatus::Cancelled;
    let moved = cur.a.start_time.0 != input.start_at
        || cur.a.template_id != input.template_id
        || cur.data.time_zone != data.time_zone
        || cur.a.conversation_id != up.conversation_id;
    let outcome = if input.cancelled {
        if was_cancelled {
            UpsertOutcome::Unchanged
        } else {
            UpsertOutcome::Cancelled
        }
    } else if moved || was_cancelled {
        UpsertOutcome::Rescheduled
    } else {
        UpsertOutcome::Unchanged
    };
    let outcome = match outcome {
        UpsertOutcome::Unchanged if cur.data != data => UpsertOutcome::Updated,
        UpsertOutcome::Unchanged => return Ok((id, outcome, 0)),
        o => o,
    };
    let status = match outcome {
        UpsertOutcome::Cancelled => AppointmentStatus::Cancelled,
        UpsertOutcome::Rescheduled => AppointmentStatus::Scheduled,
        _ => cur.a.status,
    };
    ctx.conn
        .prepare_cached(
            "UPDATE appointments SET conversation_id = ?3, contact_id = ?4, template_id = ?5, start_at = ?6, status = ?7, data = ?8, updated_at = ?9
             WHERE id = ?1 AND tenant_id = ?2",
        )?
        .execute(params![
            id,
            tenant_id,
            up.conversation_id,
            up.contact_id,
            input.template_id,
            input.start_at,
            status.as_str(),
            seal(&id)?,
            now
        ])?;
    let mut pending = 0;
    match outcome {
        UpsertOutcome::Cancelled => {
            cancel_pending(ctx, &id, "the appointment was cancelled")?;
        }
        UpsertOutcome::Rescheduled => {
            cancel_pending(ctx, &id, "the appointment was rescheduled")?;
            pending = schedule(
                ctx,
                tenant_id,
                &id,
                input.start_at,
                &spec.offsets,
                &tz,
                quiet,
                now,
            )?;
        }
        _ => {}
    }
    ctx.audit(
        tenant_id,
        &AuditEntry::new(
            actor,
            "appointment.update",
            format!("appointment/{id}"),
            Outcome::Ok,
        )
        .with_detail(serde_json::json!({ "outcome": outcome, "reminders": pending })),
    )?;
    Ok((id, outcome, pending))
}

/// The appointments the context snapshot shows: not yet more than an hour
/// past, soonest first (at most 5).
pub(crate) fn for_context(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    conversation_id: &str,
) -> Result<Vec<Appointment>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {APPT_COLUMNS} FROM appointments WHERE conversation_id = ?1 AND tenant_id = ?2 AND start_at >= ?3
         ORDER BY start_at LIMIT 5"
    ))?;
    let mut rows = stmt.query(params![
        conversation_id,
        tenant_id,
        now_micros() - 3600 * 1_000_000
    ])?;
    let mut out = Vec::new();
    while let Some(ref r) = rows.next()? {
        out.push(appointment_row(keys, r)?.a);
    }
    for a in &mut out {
        a.reminders = reminders_of(conn, &a.id)?;
    }
    Ok(out)
}

impl Store {
    /// Woken when reminders are scheduled.
    pub fn reminders_ready(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.0.reminders_ready.clone()
    }

    pub async fn reminder_settings(&self, tenant_id: &str) -> Result<ReminderSettings> {
        let t = tenant_id.to_owned();
        self.read(move |c| settings_in(c, &t)).await
    }

    pub async fn set_reminder_settings(
        &self,
        tenant_id: &str,
        settings: &ReminderSettings,
        actor: &str,
    ) -> Result<()> {
        settings.validate()?;
        let (t, actor) = (tenant_id.to_owned(), actor.to_owned());
        let json =
            serde_json::to_string(settings).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write(move |ctx| {
            ctx.conn.execute(
                "INSERT INTO reminder_settings (tenant_id, settings, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                params![t, json, now_micros()],
            )?;
            ctx.audit(&t, &AuditEntry::new(actor, "settings.update", "settings/reminders".to_owned(), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    pub async fn create_reminder_template(
        &self,
        tenant_id: &str,
        input: TemplateInput,
        actor: &str,
    ) -> Result<ReminderTemplate> {
        let spec = input.check()?;
        let json = serde_json::to_string(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (t, actor, name) = (tenant_id.to_owned(), actor.to_owned(), input.name);
        self.write(move |ctx| {
            let taken = ctx
                .conn
                .prepare_cached("SELECT 1 FROM reminder_templates WHERE tenant_id = ?1 AND name = ?2 AND deleted_at IS NULL")?
                .query_row(params![t, name], |_| Ok(()))
                .optional()?;
            let taken_msg = || format!("a reminder template named `{name}` already exists");
            if taken.is_some() {
                return Err(StoreError::Conflict(taken_msg()));
            }
            let id = uuid::Uuid::now_v7().to_string();
            let now = now_micros();
            ctx.conn
                .execute(
                    "INSERT INTO reminder_templates (id, tenant_id, name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![id, t, name, json, now],
                )
                .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
            ctx.audit(&t, &AuditEntry::new(actor, "reminder_template.create", format!("reminder_template/{id}"), Outcome::Ok))?;
            Ok(template_in(ctx.conn, &t, &id)?.0)
        })
        .await
    }

    /// Replaces a template. Reminders already planned keep their times; the
    /// text (body, WhatsApp template, channel) is read when each is sent.
    pub async fn update_reminder_template(
        &self,
        tenant_id: &str,
        id: &str,
        input: TemplateInput,
        actor: &str,
    ) -> Result<ReminderTemplate> {
        let spec = input.check()?;
        let json = serde_json::to_string(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (t, id, actor, name) = (
            tenant_id.to_owned(),
            id.to_owned(),
            actor.to_owned(),
            input.name,
        );
        self.write(move |ctx| {
            let taken: Option<String> = ctx
                .conn
                .prepare_cached("SELECT id FROM reminder_templates WHERE tenant_id = ?1 AND name = ?2 AND deleted_at IS NULL")?
                .query_row(params![t, name], |r| r.get(0))
                .optional()?;
            let taken_msg = || format!("a reminder template named `{name}` already exists");
            if taken.as_ref().is_some_and(|other| *other != id) {
                return Err(StoreError::Conflict(taken_msg()));
            }
            let n = ctx
                .conn
                .execute(
                    "UPDATE reminder_templates SET name = ?3, spec = ?4, updated_at = ?5 WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL",
                    params![id, t, name, json, now_micros()],
                )
                .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
            if n == 0 {
                return Err(StoreError::NotFound("reminder template"));
            }
            ctx.audit(&t, &AuditEntry::new(actor, "reminder_template.update", format!("reminder_template/{id}"), Outcome::Ok))?;
            Ok(template_in(ctx.conn, &t, &id)?.0)
        })
        .await
    }

    pub async fn list_reminder_templates(&self, tenant_id: &str) -> Result<Vec<ReminderTemplate>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TEMPLATE_COLUMNS} FROM reminder_templates WHERE tenant_id = ?1 AND deleted_at IS NULL ORDER BY name"
            ))?;
            let mut rows = stmt.query([&t])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                out.push(template_from_row(r)?.0);
            }
            Ok(out)
        })
        .await
    }

    pub async fn get_reminder_template(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<ReminderTemplate> {
        let (t, id) = (tenant_id.to_owned(), id.to_owned());
        self.read(move |c| {
            if !live_template_exists(c, &t, &id)? {
                return Err(StoreError::NotFound("reminder template"));
            }
            Ok(template_in(c, &t, &id)?.0)
        })
        .await
    }

    /// Deletes a template for new appointments; reminders already planned
    /// from it still go out.
    pub async fn delete_reminder_template(
        &self,
        tenant_id: &str,
        id: &str,
        actor: &str,
    ) -> Result<()> {
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let n = ctx.conn.execute(
                "UPDATE reminder_templates SET deleted_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL",
                params![id, t, now_micros()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("reminder template"));
            }
            ctx.audit(&t, &AuditEntry::new(actor, "reminder_template.delete", format!("reminder_template/{id}"), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    /// Creates an appointment, or updates the one with the same
    /// `external_id`, and plans its reminders, in one write.
    pub async fn upsert_appointment(
        &self,
        tenant_id: &str,
        up: AppointmentUpsert,
        actor: &str,
    ) -> Result<(Appointment, UpsertOutcome)> {
        let mut out = self.upsert_appointments(tenant_id, vec![up], actor).await?;
        out.pop()
            .ok_or_else(|| StoreError::Database("an upsert returned nothing".into()))?
    }

    /// Many upserts in one write (an import's chunk): each row stands
    /// alone (its own savepoint), so one bad row fails only itself.
    pub async fn upsert_appointments(
        &self,
        tenant_id: &str,
        ups: Vec<AppointmentUpsert>,
        actor: &str,
    ) -> Result<Vec<Result<(Appointment, UpsertOutcome)>>> {
        let (t, actor, store) = (tenant_id.to_owned(), actor.to_owned(), self.clone());
        let notify = self.0.reminders_ready.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let mut shared = Shared::default();
                let mut out = Vec::with_capacity(ups.len());
                let mut pending = 0;
                for up in &ups {
                    let r = in_savepoint(ctx, |ctx| {
                        let (id, outcome, n) =
                            upsert_in_tx(ctx, &keys, &t, up, &mut shared, &actor)?;
                        Ok((load(ctx.conn, &keys, &t, &id)?, outcome, n))
                    });
                    out.push(r.map(|(a, o, n)| {
                        pending += n;
                        (a, o)
                    }));
                }
                Ok((out, pending))
            },
            move |(_, pending): &(Vec<Result<(Appointment, UpsertOutcome)>>, usize)| {
                if *pending > 0 {
                    notify.notify_one();
                }
            },
        )
        .await
        .map(|(out, _)| out)
    }

    /// Reschedules, cancels or relabels an appointment (its reminders are
    /// planned again when its time, zone or template changes).
    pub async fn update_appointment(
        &self,
        tenant_id: &str,
        id: &str,
        patch: AppointmentPatch,
        actor: &str,
    ) -> Result<(Appointment, UpsertOutcome)> {
        let (t, id, actor, store) = (
            tenant_id.to_owned(),
            id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        let notify = self.0.reminders_ready.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let cur = lock_row(ctx.conn, &keys, &t, &id)?;
                if let Some(s) = patch.status
                    && !matches!(
                        s,
                        AppointmentStatus::Scheduled
                            | AppointmentStatus::Cancelled
                            | AppointmentStatus::Confirmed
                    )
                {
                    return Err(StoreError::Invalid(
                        "status may be set to scheduled, confirmed or cancelled".into(),
                    ));
                }
                let mut shared = Shared::default();
                let input = AppointmentInput {
                    external_id: cur.data.external_id.clone(),
                    start_at: patch.start_at.unwrap_or(cur.a.start_time.0),
                    time_zone: match &patch.time_zone {
                        Some(z) if z.is_empty() => None,
                        Some(z) => Some(z.clone()),
                        None => cur.data.time_zone.clone(),
                    },
                    location: patch.location.clone().or(cur.data.location.clone()),
                    clinician: patch.clinician.clone().or(cur.data.clinician.clone()),
                    patient_name: cur.data.patient_name.clone(),
                    template_id: patch
                        .template_id
                        .clone()
                        .unwrap_or(cur.a.template_id.clone()),
                    cancelled: patch.status == Some(AppointmentStatus::Cancelled),
                };
                // An appointment without an external id is matched by its own id.
                let up = AppointmentUpsert {
                    conversation_id: cur.a.conversation_id.clone(),
                    contact_id: cur.a.contact_id.clone(),
                    input,
                };
                let (outcome, pending) =
                    patch_in_tx(ctx, &keys, &t, &cur, &up, patch.status, &mut shared, &actor)?;
                Ok(((load(ctx.conn, &keys, &t, &id)?, outcome), pending))
            },
            move |(_, pending): &((Appointment, UpsertOutcome), usize)| {
                if *pending > 0 {
                    notify.notify_one();
                }
            },
        )
        .await
        .map(|(r, _)| r)
    }

    /// One appointment with its reminders, audited as a PHI read.
    pub async fn get_appointment(
        &self,
        tenant_id: &str,
        id: &str,
        actor: &str,
    ) -> Result<Appointment> {
        let entry = AuditEntry::new(
            actor,
            "appointment.read",
            format!("appointment/{id}"),
            Outcome::Ok,
        );
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            load(c, &keys, &t, &id)
        })
        .await
    }

    /// A conversation's appointments, soonest first, audited as a PHI read.
    pub async fn list_appointments(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        actor: &str,
    ) -> Result<Vec<Appointment>> {
        let entry = AuditEntry::new(
            actor,
            "appointment.list",
            format!("conversation/{conversation_id}"),
            Outcome::Ok,
        );
        let (t, conv, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            c.prepare_cached("SELECT 1 FROM conversations WHERE id = ?1 AND tenant_id = ?2")?
                .query_row(params![conv, t], |_| Ok(()))
                .optional()?
                .ok_or(StoreError::NotFound("conversation"))?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {APPT_COLUMNS} FROM appointments WHERE conversation_id = ?1 AND tenant_id = ?2 ORDER BY start_at, id LIMIT 500"
            ))?;
            let mut rows = stmt.query(params![conv, t])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                out.push(appointment_row(&keys, r)?.a);
            }
            for a in &mut out {
                a.reminders = reminders_of(c, &a.id)?;
            }
            Ok(out)
        })
        .await
    }

    /// When the next pending reminder is due (micros), if any.
    pub async fn next_reminder_due(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(due_at) FROM reminders WHERE state = 'pending'",
                params![],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Counts by state (metrics and the bench).
    pub async fn reminder_counts(&self) -> Result<Vec<(String, i64)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM reminders GROUP BY state")?;
            let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Claims up to `limit` reminders due at `now` (micros) and turns each
    /// into an outbox message, in one write: see the module docs.
    pub async fn dispatch_due_reminders(&self, now: i64, limit: usize) -> Result<DispatchReport> {
        let store = self.clone();
        let live = self.0.live.clone();
        let messages = self.0.messages_ready.clone();
        self.write_then(
            move |ctx| {
                // On PostgreSQL the claimed rows stay locked until this
                // write commits, and other nodes' claims pass them over.
                let mut due: Vec<(String, String, String)> = ctx
                    .conn
                    .prepare_cached(&format!(
                        "SELECT id, tenant_id, (SELECT a.conversation_id FROM appointments a WHERE a.id = reminders.appointment_id)
                         FROM reminders WHERE state = 'pending' AND due_at <= ?1
                         ORDER BY due_at, id LIMIT ?2{}",
                        ctx.conn.claim_lock()
                    ))?
                    .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<crate::db::Result<_>>()?;
                // Each reminder sent locks its conversation (PostgreSQL):
                // every dispatcher takes them in one order, or two nodes'
                // dispatchers holding each other's next conversation would
                // deadlock (and one would fail its reminder). Stable: the
                // reminders of one appointment keep their due order.
                due.sort_by(|a, b| a.2.cmp(&b.2));
                let mut report = DispatchReport { claimed: due.len(), ..Default::default() };
                let mut events: Vec<Event> = Vec::new();
                let mut shared = Shared::default();
                for (id, tenant_id, _) in due {
                    let keys = store.keys_for(ctx.conn, &tenant_id)?;
                    let r = in_savepoint(ctx, |ctx| dispatch_one(ctx, &keys, &tenant_id, &id, now, &mut shared, &mut events));
                    match r {
                        Ok(state) => match state {
                            Dispatched::Sent => report.sent += 1,
                            Dispatched::Suppressed => report.suppressed += 1,
                            Dispatched::Skipped => report.skipped += 1,
                            Dispatched::Cancelled => report.cancelled += 1,
                            Dispatched::Failed => report.failed += 1,
                            Dispatched::Deferred => report.deferred += 1,
                        },
                        Err(StoreError::Unavailable(e)) => {
                            // Rolled back alone, and still pending: the next
                            // dispatch tries it again (a deadlock's victim, say).
                            tracing::warn!(reminder = %id, error = %e, "a reminder could not be dispatched now; it stays due");
                        }
                        Err(e) => {
                            // Rolled back alone; recorded so it is not claimed forever.
                            tracing::error!(reminder = %id, error = %e, "a reminder could not be dispatched");
                            set_reminder(ctx, &id, ReminderState::Failed, None, Some(&format!("could not be sent: {e}")))?;
                            report.failed += 1;
                        }
                    }
                }
                Ok((report, events))
            },
            move |(report, events): &(DispatchReport, Vec<Event>)| {
                publish(&live, events);
                if report.sent > 0 {
                    messages.notify_one();
                }
            },
        )
        .await
        .map(|(r, _)| r)
    }

    /// A patient's `C` / `R` reply: confirms the appointment (or asks for a
    /// new time, cancelling its pending reminders) whose reminder reached
    /// this conversation most recently (within 7 days, appointment not over
    /// and not cancelled), with a `note` on the timeline. `None`: no such
    /// appointment, or it already had that status.
    pub async fn apply_reminder_reply(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        reply: ReminderReplyKind,
        reply_seq: i64,
        actor: &str,
    ) -> Result<Option<Appointment>> {
        let (t, conv, actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let now = now_micros();
                let found: Option<String> = ctx
                    .conn
                    .prepare_cached(
                        "SELECT a.id FROM appointments a JOIN reminders r ON r.appointment_id = a.id
                         WHERE a.conversation_id = ?1 AND a.tenant_id = ?2 AND r.state = 'sent' AND r.updated_at >= ?3
                           AND a.status != 'cancelled' AND a.start_at >= ?4
                         ORDER BY r.updated_at DESC LIMIT 1",
                    )?
                    .query_row(params![conv, t, now - REPLY_WINDOW_MICROS, now - 3600 * 1_000_000], |r| r.get(0))
                    .optional()?;
                let Some(id) = found else { return Ok((None, Vec::new())) };
                let row = lock_row(ctx.conn, &keys, &t, &id)?;
                let status = match reply {
                    ReminderReplyKind::Confirm => AppointmentStatus::Confirmed,
                    ReminderReplyKind::Reschedule => AppointmentStatus::RescheduleRequested,
                };
                if row.a.status == status {
                    return Ok((None, Vec::new()));
                }
                ctx.conn
                    .prepare_cached("UPDATE appointments SET status = ?3, updated_at = ?4 WHERE id = ?1 AND tenant_id = ?2")?
                    .execute(params![id, t, status.as_str(), now])?;
                if status == AppointmentStatus::RescheduleRequested {
                    cancel_pending(ctx, &id, "the patient asked to reschedule")?;
                }
                ctx.audit(&t, &AuditEntry::new(&actor, "appointment.reply", format!("appointment/{id}"), Outcome::Ok)
                    .with_detail(serde_json::json!({ "status": status.as_str(), "reply_seq": reply_seq })))?;
                let (settings, _) = Shared::default().settings(ctx.conn, &t)?;
                let contact = contacts::load(ctx.conn, &keys, &t, &row.a.contact_id)?;
                let vars = Vars::at(row.a.start_time.0, &zone_for(&row.data, &contact, &settings));
                let when = format!("{} {} at {}", vars.weekday, vars.date, vars.time);
                let body = match status {
                    AppointmentStatus::Confirmed => format!("The patient confirmed the appointment on {when} (replied to a reminder)."),
                    _ => format!("The patient asked to reschedule the appointment on {when} (replied to a reminder); its remaining reminders are cancelled. Call or message them with a new time."),
                };
                let mut meta = serde_json::Map::new();
                meta.insert("appointment_id".into(), id.as_str().into());
                meta.insert("appointment_status".into(), status.as_str().into());
                meta.insert("reply_seq".into(), reply_seq.into());
                let ev = NewEvent { channel: Channel::System, kind: EventKind::Note, actor: Actor::system(), body: Some(body), meta, idempotency_key: None };
                let a = append_in_tx(ctx, &keys, &t, &conv, &ev, &actor)?;
                let mut events = a.also_written;
                events.push(a.event);
                Ok((Some(load(ctx.conn, &keys, &t, &id)?), events))
            },
            move |(_, events): &(Option<Appointment>, Vec<Event>)| publish(&live, events),
        )
        .await
        .map(|(a, _)| a)
    }
}

/// Runs `f` in a savepoint of its own inside the current write: an error
/// rolls back only what `f` wrote (and forgets cached audit heads).
fn in_savepoint<T>(
    ctx: &mut WriteCtx<'_>,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>,
) -> Result<T> {
    ctx.conn.execute_batch("SAVEPOINT item")?;
    match f(ctx) {
        Ok(v) => {
            ctx.conn.execute_batch("RELEASE item")?;
            Ok(v)
        }
        Err(e) => {
            ctx.conn.execute_batch("ROLLBACK TO item; RELEASE item")?;
            ctx.audit_heads.clear();
            Err(e)
        }
    }
}

/// A PATCH: the upsert rules, plus `confirmed` set by staff.
#[allow(clippy::too_many_arguments)]
fn patch_in_tx(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    cur: &Row,
    up: &AppointmentUpsert,
    status: Option<AppointmentStatus>,
    shared: &mut Shared,
    actor: &str,
) -> Result<(UpsertOutcome, usize)> {
    let input = &up.input;
    input.validate()?;
    if input.template_id != cur.a.template_id
        && !live_template_exists(ctx.conn, tenant_id, &input.template_id)?
    {
        return Err(StoreError::NotFound("reminder template"));
    }
    let id = &cur.a.id;
    let now = now_micros();
    let data = SealedAppointment {
        external_id: input.external_id.clone(),
        time_zone: input.time_zone.clone(),
        location: input.location.clone(),
        clinician: input.clinician.clone(),
        patient_name: input.patient_name.clone(),
    };
    let was_cancelled = cur.a.status == AppointmentStatus::Cancelled;
    let moved = cur.a.start_time.0 != input.start_at
        || cur.a.template_id != input.template_id
        || cur.data.time_zone != data.time_zone;
    let reinstated = was_cancelled
        && matches!(
            status,
            Some(AppointmentStatus::Scheduled | AppointmentStatus::Confirmed)
        );
    let outcome = if input.cancelled {
        if was_cancelled {
            UpsertOutcome::Unchanged
        } else {
            UpsertOutcome::Cancelled
        }
    } else if was_cancelled && !reinstated {
        return Err(StoreError::Conflict(
            "the appointment is cancelled: set status to scheduled to reinstate it (with a new start_time if it moved)".into(),
        ));
    } else if moved || reinstated {
        UpsertOutcome::Rescheduled
    } else if cur.data != data || status.is_some_and(|s| s != cur.a.status) {
        UpsertOutcome::Updated
    } else {
        UpsertOutcome::Unchanged
    };
    if outcome == UpsertOutcome::Unchanged {
        return Ok((outcome, 0));
    }
    let new_status = match outcome {
        UpsertOutcome::Cancelled => AppointmentStatus::Cancelled,
        UpsertOutcome::Rescheduled => status.unwrap_or(AppointmentStatus::Scheduled),
        _ => status.unwrap_or(cur.a.status),
    };
    let plain = serde_json::to_vec(&data).map_err(|e| StoreError::Invalid(e.to_string()))?;
    ctx.conn
        .prepare_cached(
            "UPDATE appointments SET template_id = ?3, start_at = ?4, status = ?5, data = ?6, updated_at = ?7 WHERE id = ?1 AND tenant_id = ?2",
        )?
        .execute(params![
            id,
            tenant_id,
            input.template_id,
            input.start_at,
            new_status.as_str(),
            keys.data.seal(&plain, &appointment_aad(tenant_id, id)),
            now
        ])?;
    let mut pending = 0;
    match outcome {
        UpsertOutcome::Cancelled => {
            cancel_pending(ctx, id, "the appointment was cancelled")?;
        }
        UpsertOutcome::Rescheduled => {
            cancel_pending(ctx, id, "the appointment was rescheduled")?;
            let (settings, quiet) = shared.settings(ctx.conn, tenant_id)?;
            let contact = contacts::load(ctx.conn, keys, tenant_id, &cur.a.contact_id)?;
            let tz = zone_for(&data, &contact, &settings);
            let spec = shared.template(ctx.conn, tenant_id, &input.template_id)?;
            pending = schedule(
                ctx,
                tenant_id,
                id,
                input.start_at,
                &spec.offsets,
                &tz,
                quiet,
                now,
            )?;
        }
        _ => {}
    }
    ctx.audit(
        tenant_id,
        &AuditEntry::new(
            actor,
            "appointment.update",
            format!("appointment/{id}"),
            Outcome::Ok,
        )
        .with_detail(serde_json::json!({ "outcome": outcome, "reminders": pending })),
    )?;
    Ok((outcome, pending))
}

fn set_reminder(
    ctx: &WriteCtx<'_>,
    id: &str,
    state: ReminderState,
    message_id: Option<&str>,
    detail: Option<&str>,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE reminders SET state = ?2, message_id = COALESCE(?3, message_id), detail = COALESCE(?4, detail), updated_at = ?5 WHERE id = ?1",
        )?
        .execute(params![id, state.as_str(), message_id, detail, now_micros()])?;
    Ok(())
}

enum Dispatched {
    Sent,
    Suppressed,
    Skipped,
    Cancelled,
    Failed,
    Deferred,
}

/// A timeline note that a reminder was not sent, so staff see it.
#[allow(clippy::too_many_arguments)]
fn note_not_sent(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    conversation_id: &str,
    reminder_id: &str,
    appointment_id: &str,
    state: ReminderState,
    text: String,
    events: &mut Vec<Event>,
) -> Result<()> {
    let mut meta = serde_json::Map::new();
    meta.insert("reminder_id".into(), reminder_id.into());
    meta.insert("appointment_id".into(), appointment_id.into());
    meta.insert("reminder_state".into(), state.as_str().into());
    let ev = NewEvent {
        channel: Channel::System,
        kind: EventKind::Note,
        actor: Actor::system(),
        body: Some(text),
        meta,
        idempotency_key: None,
    };
    let a: Appended = append_in_tx(ctx, keys, tenant_id, conversation_id, &ev, AUDIT_ACTOR)?;
    events.extend(a.also_written);
    events.push(a.event);
    Ok(())
}

/// One due reminder: re-checked, then an outbox message (or why not).
fn dispatch_one(
    ctx: &mut WriteCtx<'_>,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
    now: i64,
    shared: &mut Shared,
    events: &mut Vec<Event>,
) -> Result<Dispatched> {
    let (appointment_id, offset): (String, i64) = ctx
        .conn
        .prepare_cached("SELECT appointment_id, offset_secs FROM reminders WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    // Not locked: the claim holds this reminder's row, and a reschedule
    // or reply holds the appointment's before it changes its reminders;
    // locking the appointment here too would make the two wait on each
    // other. A change that commits after this one finds the reminder sent.
    let row = load_row(ctx.conn, keys, tenant_id, &appointment_id)?;
    let a = &row.a;
    if a.status == AppointmentStatus::Cancelled {
        set_reminder(
            ctx,
            id,
            ReminderState::Cancelled,
            None,
            Some("the appointment was cancelled"),
        )?;
        return Ok(Dispatched::Cancelled);
    }
    let start = a.start_time.0;
    if start <= now {
        set_reminder(
            ctx,
            id,
            ReminderState::Skipped,
            None,
            Some("the appointment time had passed when it was due (the server was not running?)"),
        )?;
        return Ok(Dispatched::Skipped);
    }
    // A later reminder of the same appointment is due too (the server was
    // down): only that one goes. (Or has gone already: another node's
    // dispatcher may have claimed and sent it first.)
    let superseded = ctx
        .conn
        .prepare_cached(
            "SELECT 1 FROM reminders WHERE appointment_id = ?1 AND state IN ('pending', 'sent') AND offset_secs > ?2 AND due_at <= ?3 LIMIT 1",
        )?
        .query_row(params![appointment_id, offset, now], |_| Ok(()))
        .optional()?
        .is_some();
    if superseded {
        set_reminder(
            ctx,
            id,
            ReminderState::Skipped,
            None,
            Some("a reminder nearer the appointment was due at the same time"),
        )?;
        return Ok(Dispatched::Skipped);
    }
    let (settings, quiet) = shared.settings(ctx.conn, tenant_id)?;
    let contact = contacts::load(ctx.conn, keys, tenant_id, &a.contact_id)?;
    let tz = zone_for(&row.data, &contact, &settings);
    // Late (or the patient's zone changed): never into quiet hours.
    match plan::place(now, start, &tz, quiet, now) {
        plan::Placed::At { at, .. } if at > now => {
            ctx.conn
                .prepare_cached(
                    "UPDATE reminders SET due_at = ?2, detail = ?3, updated_at = ?4 WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    at,
                    "due inside quiet hours when it was sent: moved to their end",
                    now
                ])?;
            return Ok(Dispatched::Deferred);
        }
        plan::Placed::At { .. } => {}
        plan::Placed::Skip(why) => {
            set_reminder(ctx, id, ReminderState::Skipped, None, Some(&why))?;
            return Ok(Dispatched::Skipped);
        }
    }
    let spec = shared.template(ctx.conn, tenant_id, &a.template_id)?;
    let mut vars = Vars::at(start, &tz);
    vars.patient_name = row
        .data
        .patient_name
        .clone()
        .unwrap_or_else(|| contact.display_name.clone());
    vars.clinic = shared.clinic(ctx.conn, tenant_id, &settings)?;
    vars.location = row.data.location.clone().unwrap_or_default();
    vars.clinician = row.data.clinician.clone().unwrap_or_default();
    let when = format!("{} {} at {}", vars.weekday, vars.date, vars.time);
    let label = plan::format_offset(offset);

    let failed =
        |ctx: &mut WriteCtx<'_>, events: &mut Vec<Event>, why: String| -> Result<Dispatched> {
            set_reminder(ctx, id, ReminderState::Failed, None, Some(&why))?;
            note_not_sent(
                ctx,
                keys,
                tenant_id,
                &a.conversation_id,
                id,
                &appointment_id,
                ReminderState::Failed,
                format!("Reminder ({label}) for the appointment on {when} was not sent: {why}."),
                events,
            )?;
            Ok(Dispatched::Failed)
        };
    let b = &contact.bindings;
    let mut channel = match spec.channel {
        ReminderChannel::Sms => Channel::Sms,
        ReminderChannel::Whatsapp => Channel::Whatsapp,
        ReminderChannel::Preferred => match contact.preferred_channel {
            Some(c @ (Channel::Sms | Channel::Whatsapp)) => c,
            _ if b.phone.is_some() => Channel::Sms,
            _ => Channel::Whatsapp,
        },
    };
    let mut template_json = None;
    if channel == Channel::Whatsapp {
        let to = b.whatsapp.clone().or_else(|| b.phone.clone());
        let open = match &to {
            Some(to) => last_inbound_in_tx(ctx.conn, keys, tenant_id, Channel::Whatsapp, to)?
                .is_some_and(|t| now - t < WHATSAPP_WINDOW_MICROS),
            None => false,
        };
        match (&spec.whatsapp, open) {
            (Some(w), _) => {
                template_json = Some(serde_json::json!({
                    "name": w.name,
                    "language": w.language.clone().unwrap_or_else(|| "en".into()),
                    "params": w.params.iter().map(|p| vars.get(p)).collect::<Vec<_>>(),
                }));
            }
            (None, true) => {}
            (None, false) if b.phone.is_some() => channel = Channel::Sms,
            (None, false) => {
                return failed(ctx, events, "WhatsApp delivers only approved templates outside the 24-hour window, and the reminder template has no `whatsapp` template".into());
            }
        }
    }
    let to = match channel {
        Channel::Sms => b.phone.clone(),
        _ => b.whatsapp.clone().or_else(|| b.phone.clone()),
    };
    let Some(to) = to else {
        return failed(
            ctx,
            events,
            format!("the patient has no number for {channel}"),
        );
    };
    let key = (tenant_id.to_owned(), channel, spec.from.clone());
    let sender = match shared.senders.get(&key) {
        Some(s) => s.clone(),
        None => {
            let s = match &spec.from {
                Some(f) => Ok(Some(f.clone())),
                None => match default_sender(ctx.conn, tenant_id, channel) {
                    Ok(s) => Ok(s),
                    Err(StoreError::Invalid(m)) => Err(m),
                    Err(e) => return Err(e),
                },
            };
            shared.senders.insert(key, s.clone());
            s
        }
    };
    let from = match sender {
        Ok(f) => f,
        Err(why) => return failed(ctx, events, why),
    };
    let mut meta = serde_json::Map::new();
    meta.insert("reminder_id".into(), id.into());
    meta.insert("appointment_id".into(), appointment_id.as_str().into());
    meta.insert("reminder_offset".into(), label.as_str().into());
    let new = NewOutboundMessage {
        channel,
        to,
        from,
        body: Some(plan::render(&spec.body, &vars)),
        media_urls: Vec::new(),
        template: template_json,
        idempotency_key: Some(format!("reminder:{id}")),
        actor: Actor {
            actor_type: ActorType::Bot,
            id: Some("reminders".into()),
        },
        meta,
        compliance: false,
    };
    match enqueue_in_tx(ctx, keys, tenant_id, &a.conversation_id, &new, AUDIT_ACTOR)? {
        Ok((message, appended)) => {
            set_reminder(ctx, id, ReminderState::Sent, Some(&message.id), None)?;
            if appended.created {
                events.extend(appended.also_written);
                events.push(appended.event);
            }
            Ok(Dispatched::Sent)
        }
        Err(why) => {
            set_reminder(ctx, id, ReminderState::Suppressed, None, Some(&why))?;
            note_not_sent(
                ctx,
                keys,
                tenant_id,
                &a.conversation_id,
                id,
                &appointment_id,
                ReminderState::Suppressed,
                format!("Reminder ({label}) for the appointment on {when} was not sent: {why}."),
                events,
            )?;
            Ok(Dispatched::Suppressed)
        }
    }
}
