//! Reminders through the store's API: planning on create, a reschedule that
//! cancels and plans again in one write, idempotent upserts by the
//! customer's id, due reminders claimed exactly once into the outbox,
//! suppression for opted-out patients (audited, noted), quiet hours at
//! dispatch, and replies.

use continuum_core::{Actor, Channel, EventKind};
use continuum_store::{
    AppointmentInput, AppointmentPatch, AppointmentStatus, AppointmentUpsert, ConsentChange,
    ContactInput, NewConversation, NewMessagingProvider, ProviderKind, QuietHours,
    ReminderReplyKind, ReminderSettings, ReminderState, TemplateInput, UpsertOutcome,
};
use support::{Backend, TestStore};

mod support;

both!(
    a_reschedule_cancels_pending_reminders_and_plans_new_ones,
    due_reminders_become_outbox_messages_exactly_once,
    an_opted_out_patient_gets_no_reminder_and_it_is_logged,
    a_late_dispatch_never_lands_in_quiet_hours,
    a_reply_confirms_the_appointment_whose_reminder_went_out,
    appointments_stay_in_their_tenant,
    whatsapp_reminders_use_the_approved_template_outside_the_window,
);

const PATIENT: &str = "+14155550100";
const CLINIC: &str = "+14155559999";
const H: i64 = 3600 * 1_000_000;

fn now() -> i64 {
    continuum_core::clock::unix_micros()
}

struct Fixture {
    store: TestStore,
    tenant: String,
    contact: String,
    conv: String,
    template: String,
}

async fn fixture(backend: Backend) -> Fixture {
    let store = support::open(backend).await;
    let tenant = store
        .create_tenant("clinic", "us", "test")
        .await
        .unwrap()
        .id;
    let contact = store
        .create_contact(
            &tenant,
            ContactInput {
                display_name: Some("Ada Lovelace".into()),
                phone: Some(PATIENT.into()),
                time_zone: Some("America/Chicago".into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    let conv = store
        .create_conversation(
            &tenant,
            NewConversation {
                contact_id: contact.clone(),
                subject: None,
                queue: None,
                tags: vec![],
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    let mut spec = serde_json::Map::new();
    spec.insert("account_sid".into(), "AC1".into());
    store
        .create_messaging_provider(
            &tenant,
            NewMessagingProvider {
                name: "twilio".into(),
                kind: ProviderKind::Twilio,
                priority: 1,
                channels: vec![Channel::Sms],
                senders: vec![CLINIC.into()],
                spec,
                secret: Default::default(),
            },
            "test",
        )
        .await
        .unwrap();
    store
        .set_reminder_settings(
            &tenant,
            &ReminderSettings {
                quiet_hours: None,
                clinic_name: Some("Northside".into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let template = store
        .create_reminder_template(
            &tenant,
            TemplateInput {
                name: "default".into(),
                offsets: vec!["-1h".into(), "-24h".into()],
                body: "Hi {{patient_first_name}}, {{clinic}} on {{date}} at {{time}}".into(),
                channel: Default::default(),
                whatsapp: None,
                from: None,
            },
            "test",
        )
        .await
        .unwrap()
        .id;
    Fixture {
        store,
        tenant,
        contact,
        conv,
        template,
    }
}

impl Fixture {
    fn up(&self, ext: &str, start: i64) -> AppointmentUpsert {
        AppointmentUpsert {
            conversation_id: self.conv.clone(),
            contact_id: self.contact.clone(),
            input: AppointmentInput {
                external_id: Some(ext.into()),
                start_at: start,
                template_id: self.template.clone(),
                location: Some("Room 4".into()),
                ..Default::default()
            },
        }
    }
}

fn states(a: &continuum_store::Appointment) -> Vec<(String, ReminderState)> {
    a.reminders
        .iter()
        .map(|r| (r.offset.clone(), r.state))
        .collect()
}

async fn a_reschedule_cancels_pending_reminders_and_plans_new_ones(backend: Backend) {
    let f = fixture(backend).await;
    let start = now() + 72 * H;
    let (a, o) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start), "test")
        .await
        .unwrap();
    assert_eq!(o, UpsertOutcome::Created);
    assert_eq!(
        states(&a),
        [
            ("-24h".into(), ReminderState::Pending),
            ("-1h".into(), ReminderState::Pending)
        ]
    );
    assert_eq!(a.reminders[0].due_at.0, start - 24 * H);
    // The same again changes nothing and writes nothing.
    let (b, o) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start), "test")
        .await
        .unwrap();
    assert_eq!(
        (o, b.id.as_str(), b.reminders.len()),
        (UpsertOutcome::Unchanged, a.id.as_str(), 2)
    );
    // A new time: the two pending are cancelled, two new ones planned.
    let (b, o) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start + 24 * H), "test")
        .await
        .unwrap();
    assert_eq!(o, UpsertOutcome::Rescheduled);
    let cancelled = b
        .reminders
        .iter()
        .filter(|r| r.state == ReminderState::Cancelled)
        .count();
    let pending: Vec<i64> = b
        .reminders
        .iter()
        .filter(|r| r.state == ReminderState::Pending)
        .map(|r| r.due_at.0)
        .collect();
    assert_eq!(cancelled, 2);
    assert_eq!(pending, [start, start + 23 * H]);
    // By PATCH, and a cancel.
    let (c, o) = f
        .store
        .update_appointment(
            &f.tenant,
            &a.id,
            AppointmentPatch {
                status: Some(AppointmentStatus::Cancelled),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(
        (o, c.status),
        (UpsertOutcome::Cancelled, AppointmentStatus::Cancelled)
    );
    assert!(
        c.reminders
            .iter()
            .all(|r| r.state == ReminderState::Cancelled)
    );
    // Nothing of a cancelled appointment is ever dispatched.
    let r = f
        .store
        .dispatch_due_reminders(start + 48 * H, 100)
        .await
        .unwrap();
    assert_eq!(r.claimed, 0);
}

async fn due_reminders_become_outbox_messages_exactly_once(backend: Backend) {
    let f = fixture(backend).await;
    let min = 60 * 1_000_000;
    let start = now() + 48 * H;
    let (a, _) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start), "test")
        .await
        .unwrap();
    let (b, _) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E2", start + H), "test")
        .await
        .unwrap();
    f.store
        .upsert_appointment(&f.tenant, f.up("E3", start + 10 * min), "test")
        .await
        .unwrap();
    // Half an hour after E1's T-24h: E1's and E3's T-24h are due.
    let at = start - 24 * H + 30 * min;
    // Many dispatchers at once (the writer serialises them): each reminder once.
    let runs =
        futures::future::join_all((0..8).map(|_| f.store.dispatch_due_reminders(at, 1))).await;
    let sent: usize = runs.iter().map(|r| r.as_ref().unwrap().sent).sum();
    assert_eq!(sent, 2);
    assert_eq!(
        f.store
            .dispatch_due_reminders(at, 100)
            .await
            .unwrap()
            .claimed,
        0
    );
    let messages = f
        .store
        .list_messages(&f.tenant, &f.conv, "test")
        .await
        .unwrap();
    assert_eq!(messages.len(), 2);
    let m = &messages[0];
    assert_eq!((m.to.as_str(), m.from.as_deref()), (PATIENT, Some(CLINIC)));
    assert!(
        m.body
            .as_deref()
            .unwrap()
            .starts_with("Hi Ada, Northside on "),
        "{m:?}"
    );
    let a = f
        .store
        .get_appointment(&f.tenant, &a.id, "test")
        .await
        .unwrap();
    let sent = &a.reminders[0];
    assert_eq!(
        (sent.offset.as_str(), sent.state),
        ("-24h", ReminderState::Sent)
    );
    assert!(
        messages
            .iter()
            .any(|m| Some(&m.id) == sent.message_id.as_ref())
    );
    // The server was down from then until after E1 and E3 began, and
    // through both times of E2: E1's and E3's T-1h are skipped (too late),
    // E2's T-24h too (its T-1h is due as well: only the nearer goes).
    let at = start + 30 * min;
    let r = f.store.dispatch_due_reminders(at, 100).await.unwrap();
    assert_eq!((r.sent, r.skipped), (1, 3), "{r:?}");
    let b = f
        .store
        .get_appointment(&f.tenant, &b.id, "test")
        .await
        .unwrap();
    assert_eq!(
        states(&b),
        [
            ("-24h".into(), ReminderState::Skipped),
            ("-1h".into(), ReminderState::Sent)
        ]
    );
    assert_eq!(f.store.next_reminder_due().await.unwrap(), None);
}

async fn an_opted_out_patient_gets_no_reminder_and_it_is_logged(backend: Backend) {
    let f = fixture(backend).await;
    f.store
        .set_consent(
            &f.tenant,
            &f.conv,
            ConsentChange {
                channel: Channel::Sms,
                sender: CLINIC.into(),
                recipient: PATIENT.into(),
                opted_out: true,
                source: "STOP".into(),
                actor: Actor::system(),
            },
            "test",
        )
        .await
        .unwrap();
    let start = now() + 48 * H;
    let (a, _) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start), "test")
        .await
        .unwrap();
    let r = f
        .store
        .dispatch_due_reminders(start - 23 * H, 100)
        .await
        .unwrap();
    assert_eq!((r.sent, r.suppressed), (0, 1));
    assert!(
        f.store
            .list_messages(&f.tenant, &f.conv, "test")
            .await
            .unwrap()
            .is_empty()
    );
    let a = f
        .store
        .get_appointment(&f.tenant, &a.id, "test")
        .await
        .unwrap();
    assert_eq!(a.reminders[0].state, ReminderState::Suppressed);
    let events = f
        .store
        .list_events(&f.tenant, &f.conv, 0, 100, "test")
        .await
        .unwrap();
    let note = events
        .iter()
        .find(|e| e.kind == EventKind::Note)
        .expect("a note");
    assert_eq!(note.meta["reminder_state"], "suppressed");
    let audit = f.store.list_audit(&f.tenant, 0, 1000).await.unwrap();
    assert!(audit.iter().any(|r| r.action == "message.suppressed"));
}

async fn a_late_dispatch_never_lands_in_quiet_hours(backend: Backend) {
    let f = fixture(backend).await;
    // Quiet all night in Chicago; the reminder is due at 16:00 Chicago but
    // the dispatcher only gets to it at 23:00 (the server was down).
    f.store
        .set_reminder_settings(
            &f.tenant,
            &ReminderSettings {
                quiet_hours: Some(QuietHours {
                    start: "21:00".into(),
                    end: "08:00".into(),
                }),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let chicago = jiff::tz::TimeZone::get("America/Chicago").unwrap();
    let day = jiff::Timestamp::now().to_zoned(chicago.clone()).date() + jiff::Span::new().days(3);
    let at = |h: i8| {
        day.at(h, 0, 0, 0)
            .to_zoned(chicago.clone())
            .unwrap()
            .timestamp()
            .as_microsecond()
    };
    let start = at(16) + 24 * H; // tomorrow 16:00: T-24h today 16:00
    let (a, _) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start), "test")
        .await
        .unwrap();
    assert_eq!(a.reminders[0].due_at.0, at(16));
    let r = f.store.dispatch_due_reminders(at(23), 100).await.unwrap();
    assert_eq!((r.sent, r.deferred), (0, 1), "{r:?}");
    let a = f
        .store
        .get_appointment(&f.tenant, &a.id, "test")
        .await
        .unwrap();
    assert_eq!(a.reminders[0].state, ReminderState::Pending);
    assert_eq!(
        a.reminders[0].due_at.0,
        at(8) + 24 * H,
        "the end of quiet hours, next morning"
    );
}

async fn a_reply_confirms_the_appointment_whose_reminder_went_out(backend: Backend) {
    let f = fixture(backend).await;
    let start = now() + 24 * H + 60 * 1_000_000;
    let (a, _) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", start), "test")
        .await
        .unwrap();
    // No reminder sent yet: nothing to answer.
    assert!(
        f.store
            .apply_reminder_reply(&f.tenant, &f.conv, ReminderReplyKind::Confirm, 1, "test")
            .await
            .unwrap()
            .is_none()
    );
    f.store
        .dispatch_due_reminders(now() + 2 * 60 * 1_000_000, 100)
        .await
        .unwrap();
    let c = f
        .store
        .apply_reminder_reply(&f.tenant, &f.conv, ReminderReplyKind::Confirm, 1, "test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.id.as_str(), c.status),
        (a.id.as_str(), AppointmentStatus::Confirmed)
    );
    // Twice is once.
    assert!(
        f.store
            .apply_reminder_reply(&f.tenant, &f.conv, ReminderReplyKind::Confirm, 2, "test")
            .await
            .unwrap()
            .is_none()
    );
    let r = f
        .store
        .apply_reminder_reply(&f.tenant, &f.conv, ReminderReplyKind::Reschedule, 3, "test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, AppointmentStatus::RescheduleRequested);
    assert_eq!(r.reminders[1].state, ReminderState::Cancelled, "{r:?}");
    let ctx = f
        .store
        .context(&f.tenant, &f.conv, 20, "test")
        .await
        .unwrap();
    assert_eq!(
        ctx.appointments[0].status,
        AppointmentStatus::RescheduleRequested
    );
}

async fn appointments_stay_in_their_tenant(backend: Backend) {
    let f = fixture(backend).await;
    let (a, _) = f
        .store
        .upsert_appointment(&f.tenant, f.up("E1", now() + 48 * H), "test")
        .await
        .unwrap();
    let other = f
        .store
        .create_tenant("other", "us", "test")
        .await
        .unwrap()
        .id;
    assert!(
        f.store
            .get_appointment(&other, &a.id, "test")
            .await
            .is_err()
    );
    assert!(
        f.store
            .list_appointments(&other, &f.conv, "test")
            .await
            .is_err()
    );
    assert!(
        f.store
            .get_reminder_template(&other, &f.template)
            .await
            .is_err()
    );
    // The same external id in another tenant is another appointment.
    let up = f.up("E1", now() + 48 * H);
    assert!(
        f.store
            .upsert_appointment(&other, up, "test")
            .await
            .is_err(),
        "another tenant's template and contact are not reachable"
    );
}

async fn whatsapp_reminders_use_the_approved_template_outside_the_window(backend: Backend) {
    let f = fixture(backend).await;
    let mut spec = serde_json::Map::new();
    spec.insert("phone_number_id".into(), "1".into());
    f.store
        .create_messaging_provider(
            &f.tenant,
            NewMessagingProvider {
                name: "meta".into(),
                kind: ProviderKind::MetaWhatsapp,
                priority: 2,
                channels: vec![Channel::Whatsapp],
                senders: vec![CLINIC.into()],
                spec,
                secret: Default::default(),
            },
            "test",
        )
        .await
        .unwrap();
    let input = |name: &str, whatsapp| TemplateInput {
        name: name.into(),
        offsets: vec!["-24h".into()],
        body: "Hi {{patient_first_name}}, see you at {{time}}".into(),
        channel: continuum_store::ReminderChannel::Whatsapp,
        whatsapp,
        from: None,
    };
    let wa = f
        .store
        .create_reminder_template(
            &f.tenant,
            input(
                "wa",
                Some(continuum_store::WhatsappTemplate {
                    name: "appointment_reminder".into(),
                    language: Some("en_US".into()),
                    params: vec!["patient_first_name".into(), "time".into()],
                }),
            ),
            "test",
        )
        .await
        .unwrap();
    let plain = f
        .store
        .create_reminder_template(&f.tenant, input("plain", None), "test")
        .await
        .unwrap();
    let start = now() + 48 * H;
    let mut up = f.up("W1", start);
    up.input.template_id = wa.id;
    f.store
        .upsert_appointment(&f.tenant, up, "test")
        .await
        .unwrap();
    let mut up = f.up("W2", start);
    up.input.template_id = plain.id;
    f.store
        .upsert_appointment(&f.tenant, up, "test")
        .await
        .unwrap();
    let r = f
        .store
        .dispatch_due_reminders(start - 23 * H, 100)
        .await
        .unwrap();
    assert_eq!(r.sent, 2, "{r:?}");
    let messages = f
        .store
        .list_messages(&f.tenant, &f.conv, "test")
        .await
        .unwrap();
    let wa = messages
        .iter()
        .find(|m| m.channel == Channel::Whatsapp)
        .expect("a WhatsApp message");
    let t = wa.template.as_ref().unwrap();
    assert_eq!(t["name"], "appointment_reminder");
    assert_eq!(t["language"], "en_US");
    assert_eq!(t["params"][0], "Ada");
    assert!(t["params"][1].as_str().unwrap().ends_with('M'), "{t}");
    // No approved template and no window: SMS, since the patient has a phone.
    assert!(
        messages
            .iter()
            .any(|m| m.channel == Channel::Sms && m.template.is_none())
    );
}
