//! Appointment rows as the customer's system sends them: one in a
//! `POST /v1/appointments`, many in an import (CSV or JSON). Parsing and the
//! field checks are pure and shared by the API and the CLI, so a row is
//! judged the same way everywhere and every error names its row and field.
//!
//! Row numbers are what a person finds the row by: in a CSV file the
//! spreadsheet's row (the header is row 1, the first appointment row 2);
//! in a JSON array the item's position from 1.

use continuum_core::normalize_phone;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most rows one import request takes (the CLI sends 500 at a time).
pub const MAX_ROWS: usize = 5000;

/// An appointment as the customer's system describes it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentRequest {
    /// The customer's own id for the appointment (e.g. the EHR's). Sending
    /// the same id again updates that appointment (a new `start_time`
    /// reschedules it) instead of creating another. Required in imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 128)]
    pub external_id: Option<String>,
    /// The patient's phone number (E.164; spaces and dashes are removed):
    /// their contact and conversation are found, or created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32)]
    pub phone: Option<String>,
    /// Instead of `phone`: an existing conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub conversation_id: Option<String>,
    /// The patient's name (a new contact's display name; `{{patient_first_name}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub patient_name: Option<String>,
    /// IANA zone for this appointment's reminders and its local
    /// `start_time`; absent: the patient's, else the tenant's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub time_zone: Option<String>,
    /// RFC 3339 (`2026-12-01T10:00:00-06:00`), or a local date-time
    /// (`2026-12-01 10:00`) when `time_zone` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub clinician: Option<String>,
    /// The reminder template's name; absent: the template named `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub template: Option<String>,
    /// `scheduled` (default) or `cancelled` (cancels it and its reminders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 16)]
    pub status: Option<String>,
}

/// Rows as read, by row number: each an appointment or what is wrong with it.
pub type Parsed = Vec<(usize, Result<AppointmentRequest, RowError>)>;

/// The columns (CSV header) and JSON fields a row may have.
pub const FIELDS: &[&str] = &[
    "external_id",
    "phone",
    "conversation_id",
    "patient_name",
    "time_zone",
    "start_time",
    "location",
    "clinician",
    "template",
    "status",
];

/// What is wrong with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RowError {
    /// CSV: the spreadsheet row (header = 1); JSON: the item, from 1.
    pub row: usize,
    /// The column or field (absent: the row as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) if !self.message.starts_with(field.as_str()) => {
                write!(f, "row {}: {field}: {}", self.row, self.message)
            }
            _ => write!(f, "row {}: {}", self.row, self.message),
        }
    }
}

fn err(row: usize, field: &str, message: impl Into<String>) -> RowError {
    RowError {
        row,
        field: (!field.is_empty()).then(|| field.to_owned()),
        message: message.into(),
    }
}

/// A value as safe to echo in an error: at most 40 characters, no controls.
pub fn shown(v: &str) -> String {
    let s: String = v.chars().filter(|c| !c.is_control()).take(40).collect();
    if v.chars().count() > 40 {
        format!("{s}…")
    } else {
        s
    }
}

/// The rows of a CSV file (comma-separated, a header row naming the
/// columns, UTF-8), at most `max_rows`. A problem with the file as a whole
/// is one error for row 1.
pub fn parse_csv(bytes: &[u8], max_rows: usize) -> Result<Parsed, RowError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = rdr
        .headers()
        .map_err(|e| err(1, "", format!("the header row is not CSV: {e}")))?
        .clone();
    if headers.iter().all(|h| h.is_empty()) {
        return Err(err(
            1,
            "",
            "the file is empty: the first row must name the columns",
        ));
    }
    let mut columns = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let name = h.trim_start_matches('\u{feff}').to_ascii_lowercase();
        if !FIELDS.contains(&name.as_str()) {
            return Err(err(
                1,
                "",
                format!(
                    "column {} `{}` is not one we know; the columns are {}",
                    i + 1,
                    shown(h),
                    FIELDS.join(", ")
                ),
            ));
        }
        if columns.contains(&name) {
            return Err(err(1, "", format!("column `{name}` appears twice")));
        }
        columns.push(name);
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let row = i + 2;
        if out.len() >= max_rows {
            return Err(err(
                row,
                "",
                format!("more than {max_rows} rows in one request; send the rest in another"),
            ));
        }
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { len, .. } => {
                        format!("has {len} fields but the header names {}", columns.len())
                    }
                    csv::ErrorKind::Utf8 { .. } => "is not UTF-8 text".to_owned(),
                    _ => format!("is not valid CSV: {e}"),
                };
                out.push((row, Err(err(row, "", message))));
                continue;
            }
        };
        let mut req = AppointmentRequest::default();
        for (name, value) in columns.iter().zip(rec.iter()) {
            let v = (!value.is_empty()).then(|| value.to_owned());
            match name.as_str() {
                "external_id" => req.external_id = v,
                "phone" => req.phone = v,
                "conversation_id" => req.conversation_id = v,
                "patient_name" => req.patient_name = v,
                "time_zone" => req.time_zone = v,
                "start_time" => req.start_time = v,
                "location" => req.location = v,
                "clinician" => req.clinician = v,
                "template" => req.template = v,
                "status" => req.status = v,
                _ => {}
            }
        }
        out.push((row, Ok(req)));
    }
    Ok(out)
}

/// The rows of a JSON body: an array of appointments, or
/// `{"appointments": [...]}`, at most `max_rows`.
pub fn parse_json(bytes: &[u8], max_rows: usize) -> Result<Parsed, RowError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| err(1, "", format!("the body is not JSON: {e}")))?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("appointments") => {
            match o.remove("appointments") {
                Some(serde_json::Value::Array(a)) => a,
                _ => return Err(err(1, "", "`appointments` must be an array")),
            }
        }
        _ => {
            return Err(err(
                1,
                "",
                "the body must be an array of appointments, or {\"appointments\": [...]}",
            ));
        }
    };
    if items.len() > max_rows {
        return Err(err(
            1,
            "",
            format!("more than {max_rows} rows in one request; send the rest in another"),
        ));
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let row = i + 1;
            let r = match item {
                serde_json::Value::Object(o) => {
                    // Name the first field that is not a string (or null).
                    let bad = o.iter().find(|(k, v)| {
                        FIELDS.contains(&k.as_str()) && !(v.is_string() || v.is_null())
                    });
                    match bad {
                        Some((k, _)) => Err(err(row, k, format!("{k} must be a string"))),
                        None => serde_json::from_value::<AppointmentRequest>(
                            serde_json::Value::Object(o),
                        )
                        .map_err(|e| {
                            let m = e.to_string();
                            match m.split_once("unknown field `") {
                                Some((_, rest)) => {
                                    let f = rest.split('`').next().unwrap_or_default();
                                    err(
                                        row,
                                        "",
                                        format!(
                                            "unknown field `{}`; the fields are {}",
                                            shown(f),
                                            FIELDS.join(", ")
                                        ),
                                    )
                                }
                                None => err(row, "", m),
                            }
                        }),
                    }
                }
                _ => Err(err(row, "", "each appointment must be a JSON object")),
            };
            (row, r)
        })
        .collect())
}

/// A row that passed every check that needs no database.
#[derive(Debug, Clone)]
pub struct Checked {
    pub row: usize,
    pub external_id: Option<String>,
    /// E.164.
    pub phone: Option<String>,
    pub conversation_id: Option<String>,
    pub patient_name: Option<String>,
    pub time_zone: Option<String>,
    /// Micros (UTC).
    pub start_at: i64,
    pub location: Option<String>,
    pub clinician: Option<String>,
    pub template: String,
    pub cancelled: bool,
}

/// Parses a start time: RFC 3339, or a local date-time in `tz`.
pub fn parse_start(v: &str, tz: Option<&str>) -> Result<i64, String> {
    let t = v.trim();
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    let example = "use RFC 3339, e.g. 2026-12-01T10:00:00-06:00";
    match t.parse::<jiff::civil::DateTime>() {
        Ok(dt) => match tz.and_then(|z| jiff::tz::TimeZone::get(z).ok()) {
            Some(zone) => zone
                .to_ambiguous_zoned(dt)
                .compatible()
                .map(|z| z.timestamp().as_microsecond())
                .map_err(|e| format!("`{}` is not a time in {}: {e}", shown(t), tz.unwrap_or(""))),
            None => Err(format!(
                "`{}` has no UTC offset: add one ({example}) or give the row a time_zone",
                shown(t)
            )),
        },
        Err(_) => Err(format!("`{}` is not a date-time ({example})", shown(t))),
    }
}

/// Every check of one row that needs no database. `import`: rows of an
/// import need an external_id and a phone (or a conversation).
pub fn check(row: usize, r: &AppointmentRequest, import: bool) -> Result<Checked, Vec<RowError>> {
    let mut errors = Vec::new();
    let text = |errors: &mut Vec<RowError>, field: &str, v: &Option<String>, max: usize| {
        if let Some(v) = v
            && (v.trim().is_empty() || v.chars().count() > max || v.chars().any(char::is_control))
        {
            errors.push(err(
                row,
                field,
                format!("{field} must be 1..={max} characters without control characters"),
            ));
        }
    };
    text(&mut errors, "external_id", &r.external_id, 128);
    text(&mut errors, "patient_name", &r.patient_name, 200);
    text(&mut errors, "location", &r.location, 200);
    text(&mut errors, "clinician", &r.clinician, 200);
    if import && r.external_id.is_none() {
        errors.push(err(
            row,
            "external_id",
            "external_id is required in an import (re-imports update by it)",
        ));
    }
    let phone = match (&r.phone, &r.conversation_id) {
        (Some(_), Some(_)) => {
            errors.push(err(row, "phone", "give phone or conversation_id, not both"));
            None
        }
        (None, None) => {
            errors.push(err(
                row,
                "phone",
                "phone is required (the patient's number, E.164 such as +14155552671)",
            ));
            None
        }
        (Some(p), None) => match normalize_phone(p) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(err(row, "phone", format!("phone: {e}")));
                None
            }
        },
        (None, Some(_)) => None,
    };
    if let Some(c) = &r.conversation_id
        && uuid::Uuid::parse_str(c).is_err()
    {
        errors.push(err(
            row,
            "conversation_id",
            format!("conversation_id `{}` is not a conversation id", shown(c)),
        ));
    }
    let mut tz_ok = true;
    if let Some(tz) = &r.time_zone
        && (tz.len() > 64 || jiff::tz::TimeZone::get(tz).is_err())
    {
        tz_ok = false;
        errors.push(err(
            row,
            "time_zone",
            format!(
                "time_zone `{}` is not an IANA time zone (such as America/Chicago)",
                shown(tz)
            ),
        ));
    }
    let start_at = match &r.start_time {
        None => {
            errors.push(err(
                row,
                "start_time",
                "start_time is required (RFC 3339, e.g. 2026-12-01T10:00:00-06:00)",
            ));
            0
        }
        Some(v) => match parse_start(v, r.time_zone.as_deref().filter(|_| tz_ok)) {
            Ok(t) if (946_684_800_000_000..=7_258_118_400_000_000).contains(&t) => t,
            Ok(_) => {
                errors.push(err(
                    row,
                    "start_time",
                    format!(
                        "start_time `{}` is not between the years 2000 and 2200",
                        shown(v)
                    ),
                ));
                0
            }
            Err(e) => {
                errors.push(err(row, "start_time", format!("start_time {e}")));
                0
            }
        },
    };
    let template = r.template.clone().unwrap_or_else(|| "default".into());
    if template.is_empty()
        || template.len() > 64
        || !template
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        errors.push(err(
            row,
            "template",
            format!("template `{}` is not a template name", shown(&template)),
        ));
    }
    let cancelled = match r.status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("scheduled") => false,
        Some("cancelled" | "canceled") => true,
        Some(other) => {
            errors.push(err(
                row,
                "status",
                format!("status `{}` must be scheduled or cancelled", shown(other)),
            ));
            false
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Checked {
        row,
        external_id: r.external_id.clone(),
        phone,
        conversation_id: r.conversation_id.clone(),
        patient_name: r.patient_name.clone(),
        time_zone: r.time_zone.clone(),
        start_at,
        location: r.location.clone(),
        clinician: r.clinician.clone(),
        template,
        cancelled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_numbered_as_a_spreadsheet_shows_them() {
        let csv = "external_id,phone,start_time,time_zone,patient_name\n\
                   A1,+14155550100,2026-12-01T10:00:00-06:00,,Ada Lovelace\n\
                   A2,+1 415 555 0101,2026-12-01 10:00,America/Chicago,\n\
                   A3,+14155550102,2026-13-01 10:00,,\n\
                   A4,+14155550103\n";
        let rows = parse_csv(csv.as_bytes(), MAX_ROWS).unwrap();
        assert_eq!(rows.len(), 4);
        let a1 = check(2, rows[0].1.as_ref().unwrap(), true).unwrap();
        assert_eq!(a1.start_at, 1_796_140_800_000_000);
        let a2 = check(3, rows[1].1.as_ref().unwrap(), true).unwrap();
        assert_eq!(a2.start_at, a1.start_at, "local time in the row's zone");
        assert_eq!(a2.phone.as_deref(), Some("+14155550101"));
        let e = check(4, rows[2].1.as_ref().unwrap(), true).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "row 4: start_time `2026-13-01 10:00` is not a date-time (use RFC 3339, e.g. 2026-12-01T10:00:00-06:00)"
        );
        let e = rows[3].1.as_ref().unwrap_err();
        assert_eq!(e.to_string(), "row 5: has 2 fields but the header names 5");
    }

    #[test]
    fn unknown_columns_and_fields_are_named() {
        let e = parse_csv(b"external_id,phone,start,when\n", MAX_ROWS).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("row 1: column 3 `start` is not one we know"),
            "{e}"
        );
        let rows = parse_json(
            br#"[{"external_id": "x", "phone": 5}, {"nope": "1"}, 3]"#,
            MAX_ROWS,
        )
        .unwrap();
        assert_eq!(
            rows[0].1.as_ref().unwrap_err().to_string(),
            "row 1: phone must be a string"
        );
        assert!(
            rows[1]
                .1
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("row 2: unknown field `nope`")
        );
        assert_eq!(
            rows[2].1.as_ref().unwrap_err().to_string(),
            "row 3: each appointment must be a JSON object"
        );
    }

    #[test]
    fn field_checks() {
        let mut r = AppointmentRequest {
            phone: Some("+14155550100".into()),
            start_time: Some("2026-12-01T10:00:00Z".into()),
            ..Default::default()
        };
        let e = check(7, &r, true).unwrap_err();
        assert_eq!(e[0].field.as_deref(), Some("external_id"));
        assert!(check(7, &r, false).is_ok());
        r.start_time = Some("2026-12-01 10:00".into());
        let e = check(7, &r, false).unwrap_err();
        assert!(e[0].message.contains("has no UTC offset"), "{e:?}");
        r.start_time = Some("1999-12-01T10:00:00Z".into());
        r.status = Some("maybe".into());
        r.time_zone = Some("Mars/Olympus".into());
        let e = check(7, &r, false).unwrap_err();
        let fields: Vec<_> = e.iter().filter_map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, ["time_zone", "start_time", "status"]);
    }
}
