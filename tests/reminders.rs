//! Appointment reminders end to end over real sockets: appointments by the
//! API and by `continuum appointments import` (CSV and JSON, row-numbered
//! errors), reminders at their offsets through the outbox to a scripted
//! Twilio stand-in with the template's variables filled in, reschedules
//! that cancel, STOP/START, replies (C, R) that confirm or ask to
//! reschedule, and a kill -9 mid-dispatch that sends no reminder twice.
//!
//! Times are near now so reminders are due at once (a T-24h reminder for
//! an appointment 24 h and 2 s away); quiet hours are off except where a
//! test sets them around the current hour. No sleeps: every wait is on a
//! condition, with a deadline.

mod common;

use common::providers::{Behaviour, StandIn, twilio_signature};
use common::{BIN, Opts, Server, tempdir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PATIENT: &str = "+14155550100";
const CLINIC: &str = "+14155559999";
const TOKEN: &str = "twilio-auth-token-for-tests";
const BODY: &str = "Hi {{patient_first_name}}, your visit with {{clinician}} at {{location}} is {{weekday}} {{date}} at {{time}} ({{clinic}}). Reply C to confirm or R to reschedule.";

fn opts() -> Opts {
    Opts {
        env: common::providers::local_providers_env(&[
            ("CONTINUUM_MESSAGING__BACKOFF_BASE_MS", "50"),
            ("CONTINUUM_MESSAGING__BACKOFF_MAX_SECS", "1"),
        ]),
        ..Default::default()
    }
}

/// A server with a Twilio provider (the stand-in), quiet hours off, and
/// the `default` template.
async fn setup() -> (tempfile::TempDir, Server, StandIn, String) {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    let p = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            s.key(),
            Some(json!({
                "name": "twilio", "kind": "twilio", "channels": ["sms", "whatsapp"], "senders": [CLINIC],
                "spec": {"account_sid": "AC0123", "base_url": stand_in.base, "max_in_flight": 32},
                "credentials": {"auth_token": TOKEN},
            })),
        )
        .await;
    s.ok(
        "PUT",
        "/v1/reminder-settings",
        s.key(),
        Some(json!({"quiet_hours": null, "clinic_name": "Northside Clinic"})),
    )
    .await;
    s.ok(
        "POST",
        "/v1/reminder-templates",
        s.key(),
        Some(json!({"name": "default", "offsets": ["-24h", "-1h"], "body": BODY})),
    )
    .await;
    let inbound = p["inbound_url"].as_str().unwrap().to_owned();
    (dir, s, stand_in, inbound)
}

fn at(from_now: Duration) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::try_from(from_now).unwrap();
    t.round(jiff::Unit::Second).unwrap().to_string()
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

/// Polls `path` until `done` holds (15 s at most); returns the last answer.
async fn until(s: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = s.ok("GET", path, s.key(), None).await;
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reminder<'a>(a: &'a Value, offset: &str) -> &'a Value {
    a["reminders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["offset"] == offset && r["state"] != "cancelled")
        .unwrap_or_else(|| panic!("no live {offset} reminder: {a}"))
}

async fn post_signed(s: &Server, url: &str, params: &[(&str, &str)]) -> u16 {
    let sig = twilio_signature(TOKEN, url, params);
    s.client
        .post(url)
        .header("x-twilio-signature", sig)
        .form(params)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn patient_says(s: &Server, inbound: &str, body: &str, sid: &str) {
    let params = [
        ("From", PATIENT),
        ("To", CLINIC),
        ("Body", body),
        ("MessageSid", sid),
    ];
    assert_eq!(post_signed(s, inbound, &params).await, 200);
}

async fn timeline(s: &Server, conv: &str) -> Vec<Value> {
    s.ok(
        "GET",
        &format!("/v1/conversations/{conv}/events?limit=500"),
        s.key(),
        None,
    )
    .await["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn reminders_go_out_at_their_offsets_filled_in_and_a_reschedule_cancels_them() {
    let (_dir, s, stand_in, _) = setup().await;
    let start = at(hours(24) + Duration::from_secs(2));
    let (st, a) = s
        .call(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({
                "external_id": "EHR-1", "phone": "+1 415 555 0100", "patient_name": "Ada Lovelace",
                "time_zone": "America/Chicago", "start_time": start,
                "location": "Main St, room 4", "clinician": "Dr. Grey",
            })),
        )
        .await;
    assert_eq!(st, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_owned();
    let conv = a["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(a["status"], "scheduled");
    // T-24h is due in 2 s; T-1h 23 h later.
    let start_ts: jiff::Timestamp = start.parse().unwrap();
    let due = |r: &Value| -> jiff::Timestamp { r["due_at"].as_str().unwrap().parse().unwrap() };
    assert_eq!(
        due(reminder(&a, "-24h")),
        start_ts - jiff::SignedDuration::from_hours(24)
    );
    assert_eq!(
        due(reminder(&a, "-1h")),
        start_ts - jiff::SignedDuration::from_hours(1)
    );

    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    assert_eq!(reqs.len(), 1, "only T-24h is due");
    let text = reqs[0].field("Body").unwrap();
    let local = start_ts.to_zoned(jiff::tz::TimeZone::get("America/Chicago").unwrap());
    let expected = format!(
        "Hi Ada, your visit with Dr. Grey at Main St, room 4 is {} {} at {} (Northside Clinic). Reply C to confirm or R to reschedule.",
        local.strftime("%A"),
        local.strftime("%B %-d, %Y"),
        local.strftime("%-I:%M %p")
    );
    assert_eq!(text, expected);
    assert_eq!(reqs[0].field("To"), Some(PATIENT));
    assert_eq!(reqs[0].field("From"), Some(CLINIC));
    let a = until(&s, &format!("/v1/appointments/{id}"), |a| {
        reminder(a, "-24h")["state"] == "sent"
    })
    .await;
    let sent = reminder(&a, "-24h");
    assert_eq!(sent["state"], "sent", "{a}");
    let message_id = sent["message_id"].as_str().unwrap();
    // The timeline's message event says which reminder and appointment.
    let events = timeline(&s, &conv).await;
    let m = events
        .iter()
        .find(|e| e["kind"] == "message" && e["meta"]["reminder_id"] == sent["id"])
        .expect("the reminder's message event");
    assert_eq!(m["meta"]["appointment_id"], id.as_str());
    assert_eq!(m["meta"]["message_id"], message_id);
    assert_eq!(m["actor"]["type"], "bot");

    // Reschedule by PATCH: the pending T-1h is cancelled, two new ones planned.
    let new_start = at(hours(48));
    let a = s
        .ok(
            "PATCH",
            &format!("/v1/appointments/{id}"),
            s.key(),
            Some(json!({"start_time": new_start})),
        )
        .await;
    let states: Vec<(String, String)> = a["reminders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["offset"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let count = |o: &str, st: &str| states.iter().filter(|(a, b)| a == o && b == st).count();
    assert_eq!(count("-24h", "sent"), 1, "{states:?}");
    assert_eq!(count("-1h", "cancelled"), 1, "{states:?}");
    assert_eq!(count("-24h", "pending"), 1, "{states:?}");
    assert_eq!(count("-1h", "pending"), 1, "{states:?}");
    // The same external id again with another time: a reschedule, not a new one.
    let (st, b) = s
        .call(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"external_id": "EHR-1", "phone": PATIENT, "start_time": at(hours(72))})),
        )
        .await;
    assert_eq!((st, b["id"].as_str()), (200, Some(id.as_str())), "{b}");
    let pending = b["reminders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "pending")
        .count();
    assert_eq!(pending, 2, "{b}");
    // Cancelling cancels what is pending.
    let c = s
        .ok(
            "PATCH",
            &format!("/v1/appointments/{id}"),
            s.key(),
            Some(json!({"status": "cancelled"})),
        )
        .await;
    assert_eq!(c["status"], "cancelled");
    assert!(
        c["reminders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] != "pending"),
        "{c}"
    );
    let listed = s
        .ok(
            "GET",
            &format!("/v1/appointments?conversation={conv}"),
            s.key(),
            None,
        )
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(stand_in.requests().len(), 1, "nothing else was sent");
}

#[tokio::test]
async fn quiet_hours_in_the_patients_zone_move_a_reminder_to_their_end() {
    let (_dir, s, _stand_in, _) = setup().await;
    // Quiet from the start of this UTC hour for three hours: a reminder due
    // in an hour moves to their end (in the patient's zone: UTC here).
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let h = now.hour() as i64;
    let (qs, qe) = (h, (h + 3) % 24);
    s.ok(
        "PUT",
        "/v1/reminder-settings",
        s.key(),
        Some(json!({"quiet_hours": {"start": format!("{qs:02}:00"), "end": format!("{qe:02}:00")}, "default_time_zone": "UTC"})),
    )
    .await;
    let a = s
        .ok(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"phone": PATIENT, "start_time": at(hours(6))})),
        )
        .await;
    let r = reminder(&a, "-1h"); // due in 5 h: not quiet, unmoved
    assert!(r["detail"].is_null(), "{a}");
    let a = s
        .ok(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"phone": PATIENT, "start_time": at(hours(2))})),
        )
        .await;
    let r = reminder(&a, "-1h"); // due in 1 h: quiet, moved to the end
    let end = now.start_of_day().unwrap().timestamp() + jiff::SignedDuration::from_hours(h + 3);
    let due: jiff::Timestamp = r["due_at"].as_str().unwrap().parse().unwrap();
    let start: jiff::Timestamp = a["start_time"].as_str().unwrap().parse().unwrap();
    if end < start {
        assert_eq!(due, end, "{a}");
        assert!(r["detail"].as_str().unwrap().contains("quiet hours"), "{a}");
    } else {
        // The quiet period outlasts the appointment and began before the
        // booking: nothing may go out before it, so it is skipped.
        assert_eq!(r["state"], "skipped", "{a}");
    }
}

#[tokio::test]
async fn stop_then_a_reminder_sends_nothing_and_logs_it_and_start_re_enables() {
    let (_dir, s, stand_in, inbound) = setup().await;
    patient_says(&s, &inbound, "STOP", "SM000000000000000000000000000000a1").await;
    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    assert!(reqs[0].field("Body").unwrap().contains("unsubscribed"));

    // T-1h due in 2 s (T-24h had passed at booking: skipped).
    let a = s
        .ok(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"external_id": "S-1", "phone": PATIENT, "start_time": at(hours(1) + Duration::from_secs(2))})),
        )
        .await;
    assert_eq!(reminder(&a, "-24h")["state"], "skipped", "{a}");
    let id = a["id"].as_str().unwrap();
    let conv = a["conversation_id"].as_str().unwrap();
    let a = until(&s, &format!("/v1/appointments/{id}"), |a| {
        reminder(a, "-1h")["state"] != "pending"
    })
    .await;
    let r = reminder(&a, "-1h");
    assert_eq!(r["state"], "suppressed", "{a}");
    assert!(r["detail"].as_str().unwrap().contains("opted out"), "{a}");
    assert!(r["message_id"].is_null());
    assert_eq!(
        stand_in.requests().len(),
        1,
        "only the STOP confirmation went out"
    );
    // Logged: in the audit chain, and on the timeline for staff.
    let audit = s.ok("GET", "/v1/audit?limit=1000", s.key(), None).await;
    assert!(
        audit.to_string().contains("message.suppressed"),
        "suppression audited"
    );
    let events = timeline(&s, conv).await;
    let note = events
        .iter()
        .find(|e| e["kind"] == "note" && e["meta"]["reminder_state"] == "suppressed")
        .expect("a note that the reminder was not sent");
    assert!(
        note["body"].as_str().unwrap().contains("not sent"),
        "{note}"
    );

    patient_says(&s, &inbound, "START", "SM000000000000000000000000000000a2").await;
    stand_in.wait_for(|r| r.len() >= 2).await;
    let b = s
        .ok(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"external_id": "S-2", "phone": PATIENT, "start_time": at(hours(1) + Duration::from_secs(2))})),
        )
        .await;
    let reqs = stand_in.wait_for(|r| r.len() >= 3).await;
    assert_eq!(reqs.len(), 3, "the reminder after START went out");
    assert!(
        reqs[2].field("Body").unwrap().starts_with("Hi "),
        "{:?}",
        reqs[2]
    );
    let b = until(
        &s,
        &format!("/v1/appointments/{}", b["id"].as_str().unwrap()),
        |b| reminder(b, "-1h")["state"] == "sent",
    )
    .await;
    assert_eq!(reminder(&b, "-1h")["state"], "sent");
}

#[tokio::test]
async fn a_reply_c_confirms_and_r_asks_to_reschedule() {
    let (_dir, s, stand_in, inbound) = setup().await;
    let a = s
        .ok(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"external_id": "R-1", "phone": PATIENT, "start_time": at(hours(24) + Duration::from_secs(2))})),
        )
        .await;
    let id = a["id"].as_str().unwrap().to_owned();
    let conv = a["conversation_id"].as_str().unwrap().to_owned();
    // A "C" before any reminder went out answers nothing.
    patient_says(&s, &inbound, "C", "SM000000000000000000000000000000b0").await;
    assert_eq!(
        s.ok("GET", &format!("/v1/appointments/{id}"), s.key(), None)
            .await["status"],
        "scheduled"
    );
    stand_in.wait_for(|r| !r.is_empty()).await;
    until(&s, &format!("/v1/appointments/{id}"), |a| {
        reminder(a, "-24h")["state"] == "sent"
    })
    .await;

    patient_says(&s, &inbound, "c.", "SM000000000000000000000000000000b1").await;
    let a = s
        .ok("GET", &format!("/v1/appointments/{id}"), s.key(), None)
        .await;
    assert_eq!(a["status"], "confirmed", "{a}");
    assert_eq!(
        reminder(&a, "-1h")["state"],
        "pending",
        "a confirmation keeps the day-of reminder"
    );
    let events = timeline(&s, &conv).await;
    let reply = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "message" && e["meta"]["reminder_reply"] == "confirm")
        .expect("the reply on the timeline");
    let note = events
        .iter()
        .find(|e| e["kind"] == "note" && e["meta"]["appointment_status"] == "confirmed")
        .expect("a note of the confirmation");
    assert_eq!(note["meta"]["reply_seq"], reply["seq"]);
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            s.key(),
            None,
        )
        .await;
    assert_eq!(ctx["appointments"][0]["status"], "confirmed", "{ctx}");

    patient_says(
        &s,
        &inbound,
        "RESCHEDULE",
        "SM000000000000000000000000000000b2",
    )
    .await;
    let a = s
        .ok("GET", &format!("/v1/appointments/{id}"), s.key(), None)
        .await;
    assert_eq!(a["status"], "reschedule_requested", "{a}");
    let day_of = a["reminders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["offset"] == "-1h")
        .unwrap();
    assert_eq!(day_of["state"], "cancelled", "{a}");
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            s.key(),
            None,
        )
        .await;
    assert_eq!(ctx["appointments"][0]["status"], "reschedule_requested");
    // Only the reminder went out: replies to C and R are for staff.
    assert_eq!(stand_in.requests().len(), 1);
}

fn import_cli(s: &Server, dir: &std::path::Path, file: &str, contents: &str) -> (i32, String) {
    let path = dir.join(file);
    std::fs::write(&path, contents).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["appointments", "import"])
        .arg(&path)
        .args(["--url", &s.base, "--chunk", "2"])
        .env("CONTINUUM_KEY", s.key())
        .env("CONTINUUM_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn csv_and_json_imports_report_errors_by_row_and_import_all_or_nothing() {
    let (dir, s, _stand_in, _) = setup().await;
    let t = |h: u64| at(hours(h));
    let bad = format!(
        "external_id,phone,patient_name,start_time,time_zone,location\n\
         I-1,+14155550101,Ann Lee,{},,Room 1\n\
         I-2,+14155550102,Bo Chen,2026-13-01 10:00,America/Chicago,Room 2\n\
         I-3,not-a-phone,Cy Diaz,{},,\n\
         I-1,+14155550104,Di Eng,{},,\n",
        t(30),
        t(31),
        t(32)
    );
    let (code, out) = import_cli(&s, dir.path(), "bad.csv", &bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("row 3: start_time `2026-13-01 10:00` is not a date-time (use RFC 3339, e.g. 2026-12-01T10:00:00-06:00)"),
        "{out}"
    );
    assert!(out.contains("row 4: phone"), "{out}");
    assert!(
        out.contains("row 5: external_id `I-1` is also on row 2"),
        "{out}"
    );
    assert!(out.contains("nothing was imported"), "{out}");
    // Nothing was imported: the first row's patient does not exist.
    let found = s
        .ok("GET", "/v1/contacts?phone=%2B14155550101", s.key(), None)
        .await;
    assert_eq!(found["contacts"].as_array().unwrap().len(), 0, "{found}");

    // An unknown template is found by the server's check, still by row.
    let unknown = format!(
        "external_id,phone,start_time,template\nI-9,+14155550109,{},nope\n",
        t(30)
    );
    let (code, out) = import_cli(&s, dir.path(), "unknown.csv", &unknown);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("row 2: template `nope` does not exist"),
        "{out}"
    );

    let good = format!(
        "external_id,phone,patient_name,start_time,time_zone,location\n\
         I-1,+14155550101,Ann Lee,{},,Room 1\n\
         I-2,+14155550102,Bo Chen,2030-12-01 10:00,America/Chicago,Room 2\n\
         I-3,+14155550103,\"Diaz, Cy\",{},,\"Room 3, east wing\"\n",
        t(30),
        t(32)
    );
    let (code, out) = import_cli(&s, dir.path(), "good.csv", &good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("imported 3 rows: 3 created"), "{out}");
    let (code, out) = import_cli(&s, dir.path(), "good.csv", &good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 unchanged"), "{out}");
    // The local time in its zone: 10:00 Chicago is 16:00 UTC in December.
    let c = s
        .ok("GET", "/v1/contacts?phone=%2B14155550102", s.key(), None)
        .await;
    let conv = s
        .ok(
            "GET",
            &format!(
                "/v1/conversations?contact_id={}",
                c["contacts"][0]["id"].as_str().unwrap()
            ),
            s.key(),
            None,
        )
        .await["conversations"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = s
        .ok(
            "GET",
            &format!("/v1/appointments?conversation={conv}"),
            s.key(),
            None,
        )
        .await;
    assert_eq!(listed[0]["start_time"], "2030-12-01T16:00:00Z", "{listed}");

    // JSON, by the CLI (a cancellation and a new one) and by the API.
    let json_file = json!([
        {"external_id": "I-2", "phone": "+14155550102", "start_time": "2030-12-01T16:00:00Z", "status": "cancelled"},
        {"external_id": "J-1", "phone": "+14155550105", "start_time": t(40)},
    ]);
    let (code, out) = import_cli(&s, dir.path(), "more.json", &json_file.to_string());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 created") && out.contains("1 cancelled"),
        "{out}"
    );
    let bad_json = json!([
        {"external_id": "J-2", "phone": "+14155550106", "start_time": t(40)},
        {"external_id": "J-3", "phone": "+14155550107", "start_time": "tomorrow"},
        {"external_id": "J-4", "phone": 14155550108u64, "start_time": t(40)},
    ]);
    let resp = s
        .client
        .post(s.url("/v1/appointments/import"))
        .bearer_auth(s.key())
        .json(&bad_json)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_rows");
    let rows: Vec<(u64, String)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap(),
                r["field"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(2, "start_time".to_owned()), (3, "phone".to_owned())],
        "{v}"
    );
    let found = s
        .ok("GET", "/v1/contacts?phone=%2B14155550106", s.key(), None)
        .await;
    assert_eq!(
        found["contacts"].as_array().unwrap().len(),
        0,
        "all or nothing"
    );
    // CSV straight to the API.
    let resp = s
        .client
        .post(s.url("/v1/appointments/import?dry_run=true"))
        .bearer_auth(s.key())
        .header("content-type", "text/csv")
        .body(format!(
            "external_id,phone,start_time\nK-1,+14155550110,{}\n",
            t(30)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            v["rows"].as_u64(),
            v["dry_run"].as_bool(),
            v["created"].as_u64()
        ),
        (Some(1), Some(true), Some(0))
    );
}

#[tokio::test]
async fn tenants_and_grants_keep_appointments_apart() {
    let (dir, s, _stand_in, _) = setup().await;
    let a = s
        .ok(
            "POST",
            "/v1/appointments",
            s.key(),
            Some(json!({"phone": PATIENT, "start_time": at(hours(30))})),
        )
        .await;
    let (id, conv) = (
        a["id"].as_str().unwrap(),
        a["conversation_id"].as_str().unwrap(),
    );
    let template = s.ok("GET", "/v1/reminder-templates", s.key(), None).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, out) = common::cli(dir.path(), &["tenant", "create", "clinic-b"]);
    assert_eq!(code, 0, "{out}");
    let b = out
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once): "))
        .unwrap()
        .trim()
        .to_owned();
    for (method, path, body) in [
        ("GET", format!("/v1/appointments/{id}"), None),
        (
            "PATCH",
            format!("/v1/appointments/{id}"),
            Some(json!({"status": "cancelled"})),
        ),
        ("GET", format!("/v1/appointments?conversation={conv}"), None),
        ("GET", format!("/v1/reminder-templates/{template}"), None),
        ("DELETE", format!("/v1/reminder-templates/{template}"), None),
    ] {
        let (st, v) = s.call(method, &path, &b, body).await;
        assert_eq!(st, 404, "{method} {path}: {v}");
    }
    assert_eq!(
        s.ok("GET", "/v1/reminder-templates", &b, None).await,
        json!([])
    );
    // Tenant B's appointment by A's conversation id is refused too.
    let (st, _) = s
        .call("POST", "/v1/appointments", &b, Some(json!({"conversation_id": conv, "start_time": at(hours(30)), "template": "default"})))
        .await;
    assert!(st == 404 || st == 422, "{st}");

    // A clinician granted another conversation sees nothing of this one,
    // and no clinician manages templates.
    let (_, other) = s.patient_conversation(s.key(), "+14155550111").await;
    let token = s.mint(s.key(), "dr-b", "clinician", &[&other]).await;
    for (method, path) in [
        ("GET", format!("/v1/appointments/{id}")),
        ("GET", format!("/v1/appointments?conversation={conv}")),
    ] {
        let (st, _) = s.call(method, &path, &token, None).await;
        assert_eq!(st, 404, "{method} {path}");
    }
    let (st, _) = s
        .call(
            "PATCH",
            &format!("/v1/appointments/{id}"),
            &token,
            Some(json!({"status": "cancelled"})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s.call("GET", "/v1/reminder-templates", &token, None).await;
    assert_eq!(st, 403);
    // Granted this conversation: it may read and change the appointment.
    let token = s.mint(s.key(), "dr-a", "clinician", &[conv]).await;
    let (st, v) = s
        .call(
            "GET",
            &format!("/v1/appointments?conversation={conv}"),
            &token,
            None,
        )
        .await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(1)));
    // …but not import (a tenant-wide act).
    let (st, _) = s
        .call("POST", "/v1/appointments/import", &token, Some(json!([])))
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn kill_9_mid_dispatch_sends_no_reminder_twice() {
    let (_dir, s, stand_in, _) = setup().await;
    // Every send is slow, so the kill lands with reminders queued and in flight.
    stand_in.set_default(Behaviour::SlowAccept(Duration::from_millis(40)));
    let n = 300;
    let start = at(hours(1) + Duration::from_secs(3));
    let rows: Vec<Value> = (0..n)
        .map(|i| json!({"external_id": format!("K-{i}"), "phone": format!("+1415555{:04}", 2000 + i), "patient_name": format!("P{i} X"), "start_time": start}))
        .collect();
    let r = s
        .ok(
            "POST",
            "/v1/appointments/import",
            s.key(),
            Some(json!(rows)),
        )
        .await;
    assert_eq!(r["created"], n);
    stand_in.wait_for(|r| r.len() >= 30).await;
    let data_dir = s.data_dir.clone();
    let key = s.key().to_owned();
    s.kill9();
    stand_in.set_default(Behaviour::Accept);
    let mut s2 = Server::start_with(&data_dir, opts());
    s2.key = Some(key);
    // Everything settles: every reminder dispatched once, every message
    // sent or (in flight at the kill) unconfirmed, never re-sent. Settled
    // means the stand-in heard nothing new for 3 s.
    loop {
        let seen = stand_in.requests().len();
        let more = tokio::time::timeout(Duration::from_secs(3), async {
            while stand_in.requests().len() == seen {
                stand_in.arrived.notified().await;
            }
        })
        .await;
        if more.is_err() {
            break;
        }
    }
    let (sent, unconfirmed) = message_counts(&s2).await;
    assert_eq!(
        sent + unconfirmed,
        n,
        "sent {sent}, unconfirmed {unconfirmed}"
    );
    let reqs = stand_in.requests();
    let mut bodies: Vec<&str> = reqs.iter().filter_map(|r| r.field("Body")).collect();
    let total = bodies.len();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), total, "a reminder went out twice");
    assert!(
        total >= sent && total <= n,
        "{total} requests for {sent} sent"
    );
}

/// (sent, unconfirmed) reminder messages, over every patient's conversation.
async fn message_counts(s: &Server) -> (usize, usize) {
    let mut sent = 0;
    let mut unconfirmed = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit=200&cursor={c}"),
            None => "/v1/conversations?limit=200".to_owned(),
        };
        let page = s.ok("GET", &path, s.key(), None).await;
        for c in page["conversations"].as_array().unwrap() {
            let list = s
                .ok(
                    "GET",
                    &format!(
                        "/v1/appointments?conversation={}",
                        c["id"].as_str().unwrap()
                    ),
                    s.key(),
                    None,
                )
                .await;
            for a in list.as_array().unwrap() {
                for r in a["reminders"].as_array().unwrap() {
                    assert_ne!(r["state"], "failed", "{a}");
                    if r["state"] != "sent" {
                        continue;
                    }
                    let m = s
                        .ok(
                            "GET",
                            &format!("/v1/messages/{}", r["message_id"].as_str().unwrap()),
                            s.key(),
                            None,
                        )
                        .await;
                    match m["state"].as_str().unwrap() {
                        "sent" | "delivered" => sent += 1,
                        "unconfirmed" => unconfirmed += 1,
                        _ => {}
                    }
                }
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    (sent, unconfirmed)
}
