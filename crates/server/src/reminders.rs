//! Appointment reminders: the scheduler loop (due reminders become outbox
//! messages, see `continuum_store`'s reminders module for the crash rules),
//! and appointments as rows from the customer's system (one by the API,
//! many by an import) attached to their patients' conversations.
//!
//! Import semantics: every row is checked (fields, templates, duplicate
//! ids) before anything is written, and one bad row means nothing is
//! written and every bad row is reported by number. The writes that follow
//! are idempotent per row (upsert by `external_id`), so an import cut short
//! (a crash, a dropped connection) is completed by sending it again.

pub mod rows;

use continuum_core::BindingKind;
use continuum_store::{
    Appointment, AppointmentInput, AppointmentUpsert, Store, StoreError, UpsertOutcome,
};
use futures::StreamExt;
use rows::{Checked, RowError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use utoipa::ToSchema;

/// Claims due reminders and queues them in the outbox, until stopped.
pub struct Scheduler {
    store: Store,
    /// Reminders claimed per write.
    pub batch: usize,
    /// Added to the clock: only the benchmark moves time (to make a day of
    /// reminders due now); zero in the server.
    pub clock_offset_micros: i64,
}

impl Scheduler {
    pub fn new(store: Store) -> Scheduler {
        Scheduler {
            store,
            batch: 256,
            clock_offset_micros: 0,
        }
    }

    fn now(&self) -> i64 {
        continuum_core::clock::unix_micros() + self.clock_offset_micros
    }

    /// Runs until `stop` flips: dispatches what is due, then sleeps until
    /// the next reminder is due (at most 2 s: another node may schedule),
    /// or one is scheduled here.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let ready = self.store.reminders_ready();
        loop {
            if *stop.borrow() {
                break;
            }
            let now = self.now();
            let claimed = match self.store.dispatch_due_reminders(now, self.batch).await {
                Ok(r) => {
                    if r.claimed > 0 {
                        for (state, n) in [
                            ("sent", r.sent),
                            ("suppressed", r.suppressed),
                            ("skipped", r.skipped),
                            ("cancelled", r.cancelled),
                            ("failed", r.failed),
                            ("deferred", r.deferred),
                        ] {
                            if n > 0 {
                                metrics::counter!("continuum_reminders_dispatched_total", "outcome" => state)
                                    .increment(n as u64);
                            }
                        }
                        tracing::debug!(?r, "reminders dispatched");
                    }
                    r.claimed
                }
                Err(StoreError::ShuttingDown) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot dispatch due reminders");
                    0
                }
            };
            if claimed >= self.batch {
                continue;
            }
            let wait = match self.store.next_reminder_due().await {
                Ok(Some(at)) => Duration::from_micros((at - self.now()).clamp(0, 2_000_000) as u64),
                _ => Duration::from_secs(2),
            };
            tokio::select! {
                _ = ready.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// What an import did (or, for a dry run, would check).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, ToSchema)]
#[serde(default)]
pub struct ImportReport {
    /// Rows in the request.
    pub rows: usize,
    pub created: usize,
    /// Labels changed (location, clinician, name); reminders untouched.
    pub updated: usize,
    /// New time, zone or template: pending reminders cancelled and planned again.
    pub rescheduled: usize,
    pub cancelled: usize,
    /// Already exactly so.
    pub unchanged: usize,
    /// Only checked, nothing written (`?dry_run=true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Rows that passed every check but could not be written (a database
    /// error, a patient changed meanwhile): send them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<RowError>,
}

impl ImportReport {
    fn count(&mut self, o: UpsertOutcome) {
        match o {
            UpsertOutcome::Created => self.created += 1,
            UpsertOutcome::Updated => self.updated += 1,
            UpsertOutcome::Rescheduled => self.rescheduled += 1,
            UpsertOutcome::Cancelled => self.cancelled += 1,
            UpsertOutcome::Unchanged => self.unchanged += 1,
        }
    }
}

/// The tenant's template ids by name, and the rows' errors for names it lacks.
pub async fn template_ids(
    store: &Store,
    tenant_id: &str,
    rows: &[Checked],
) -> Result<(HashMap<String, String>, Vec<RowError>), StoreError> {
    let ids: HashMap<String, String> = store
        .list_reminder_templates(tenant_id)
        .await?
        .into_iter()
        .map(|t| (t.name, t.id))
        .collect();
    let mut errors = Vec::new();
    for r in rows {
        if !ids.contains_key(&r.template) {
            errors.push(RowError {
                row: r.row,
                field: Some("template".into()),
                message: if r.template == "default" {
                    "template is not given and the tenant has no template named `default`; name one, or create `default` (POST /v1/reminder-templates)".into()
                } else {
                    format!(
                        "template `{}` does not exist (POST /v1/reminder-templates creates it)",
                        rows::shown(&r.template)
                    )
                },
            });
        }
    }
    Ok((ids, errors))
}

/// Rows giving the same external id twice (the later ones are errors).
pub fn duplicate_ids(rows: &[Checked]) -> Vec<RowError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut errors = Vec::new();
    for r in rows {
        if let Some(x) = r.external_id.as_deref() {
            if let Some(first) = seen.get(x) {
                errors.push(RowError {
                    row: r.row,
                    field: Some("external_id".into()),
                    message: format!("external_id `{}` is also on row {first}", rows::shown(x)),
                });
            } else {
                seen.insert(x, r.row);
            }
        }
    }
    errors
}

/// One row's write: its number and the appointment (or why not).
pub type Written = (usize, Result<(Appointment, UpsertOutcome), StoreError>);

/// Attaches checked rows to their patients (contact and conversation found
/// by phone, or created) and upserts them: `(row, result)` per row.
pub async fn write_rows(
    store: &Store,
    tenant_id: &str,
    rows: Vec<Checked>,
    templates: &HashMap<String, String>,
    actor: &str,
) -> Vec<Written> {
    // One lookup (or creation) per distinct patient, a few at once; two
    // rows of one new patient must not race to create them twice.
    let mut phones: Vec<(String, Option<String>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        if let Some(p) = &r.phone
            && seen.insert(p.clone())
        {
            phones.push((p.clone(), r.patient_name.clone()));
        }
    }
    let patients: HashMap<String, Result<(String, String), StoreError>> =
        futures::stream::iter(phones)
            .map(|(phone, name)| async move {
                let r = crate::routing::patient_for(
                    store,
                    tenant_id,
                    BindingKind::Phone,
                    Some(&phone),
                    name,
                    None,
                    actor,
                )
                .await;
                (phone, r)
            })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut out = Vec::with_capacity(rows.len());
    let mut ups = Vec::with_capacity(rows.len());
    for r in rows {
        let who = match (&r.phone, &r.conversation_id) {
            (Some(p), _) => patients
                .get(p)
                .cloned()
                .unwrap_or(Err(StoreError::NotFound("contact"))),
            (None, Some(c)) => store
                .get_conversation(tenant_id, c)
                .await
                .map(|conv| (conv.contact_id, conv.id)),
            (None, None) => Err(StoreError::Invalid("phone is required".into())),
        };
        let (contact_id, conversation_id) = match who {
            Ok(w) => w,
            Err(e) => {
                out.push((r.row, Err(e)));
                continue;
            }
        };
        let Some(template_id) = templates.get(&r.template).cloned() else {
            out.push((r.row, Err(StoreError::NotFound("reminder template"))));
            continue;
        };
        ups.push((
            r.row,
            AppointmentUpsert {
                conversation_id,
                contact_id,
                input: AppointmentInput {
                    external_id: r.external_id,
                    start_at: r.start_at,
                    time_zone: r.time_zone,
                    location: r.location,
                    clinician: r.clinician,
                    patient_name: r.patient_name,
                    template_id,
                    cancelled: r.cancelled,
                },
            },
        ));
    }
    // 250 rows a write: one commit (fsync) carries them all.
    let chunks: Vec<Vec<(usize, AppointmentUpsert)>> = {
        let mut v = Vec::new();
        let mut it = ups.into_iter().peekable();
        while it.peek().is_some() {
            v.push(it.by_ref().take(250).collect());
        }
        v
    };
    let written: Vec<Vec<Written>> = futures::stream::iter(chunks)
        .map(|chunk| async move {
            let (nums, ups): (Vec<usize>, Vec<AppointmentUpsert>) = chunk.into_iter().unzip();
            match store.upsert_appointments(tenant_id, ups, actor).await {
                Ok(results) => nums.into_iter().zip(results).collect(),
                Err(e) => nums.into_iter().map(|n| (n, Err(e.clone()))).collect(),
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    out.extend(written.into_iter().flatten());
    out.sort_by_key(|(n, _)| *n);
    out
}

/// Checks then writes an import (all rows checked first; see the module docs).
pub async fn import(
    store: &Store,
    tenant_id: &str,
    parsed: rows::Parsed,
    dry_run: bool,
    actor: &str,
) -> Result<Result<ImportReport, Vec<RowError>>, StoreError> {
    let mut errors = Vec::new();
    let mut checked = Vec::with_capacity(parsed.len());
    let n = parsed.len();
    for (row, r) in parsed {
        match r {
            Ok(req) => match rows::check(row, &req, true) {
                Ok(c) => checked.push(c),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(e),
        }
    }
    errors.extend(duplicate_ids(&checked));
    let (templates, missing) = template_ids(store, tenant_id, &checked).await?;
    errors.extend(missing);
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.row);
        return Ok(Err(errors));
    }
    let mut report = ImportReport {
        rows: n,
        dry_run,
        ..Default::default()
    };
    if dry_run {
        return Ok(Ok(report));
    }
    for (row, r) in write_rows(store, tenant_id, checked, &templates, actor).await {
        match r {
            Ok((_, o)) => report.count(o),
            Err(e) => report.failed.push(RowError {
                row,
                field: None,
                message: match e {
                    StoreError::Database(_) | StoreError::Integrity(_) | StoreError::Commit(_) => {
                        tracing::error!(error = %e, row, "an import row could not be written");
                        "could not be written (logged); send it again".into()
                    }
                    e => e.to_string(),
                },
            }),
        }
    }
    Ok(Ok(report))
}
