//! The visit page (`/visit`) as patients and clinicians use it: headless
//! Chromium (tests/browser/visit_ux.mjs) takes a patient on a phone and a
//! clinician on a desktop through the pre-call check, the waiting room, the
//! call, the clinician's live context panel, chat, leaving and rejoining, and
//! the end of the visit; and opens links that cannot work (broken, expired)
//! and a browser that blocks the camera. Screenshots of every state land in
//! target/screenshots/ for people to look at.

mod common;
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// An access token for `identity` with a display name, granting the
/// conversation and its room; `ttl_seconds` when given.
async fn mint(
    s: &Server,
    key: &str,
    (identity, role, name): (&str, &str, &str),
    conv: &str,
    room: &str,
    ttl_seconds: Option<u64>,
) -> String {
    let mut body = json!({"identity": identity, "role": role, "name": name,
        "grants": {"conversations": [conv], "rooms": [room]}});
    if let Some(ttl) = ttl_seconds {
        body["ttl_seconds"] = json!(ttl);
    }
    s.ok("POST", "/v1/tokens", key, Some(body)).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What `POST /v1/visit-help` (no credentials) says about a link's token.
async fn link_help(s: &Server, token: &str) -> Value {
    let r = s
        .client
        .post(s.url("/v1/visit-help"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visit_page_takes_a_patient_and_a_clinician_through_a_visit() {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "run scripts/test (it installs playwright-core)"
    );
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    s.ok(
        "PUT",
        "/v1/settings/visits",
        &key,
        Some(json!({"waiting_room": true, "support_contact": "the front desk, +1 415 555 0100"})),
    )
    .await;
    let contact = s
        .ok(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": "Ana Souza", "date_of_birth": "1980-04-02", "phone": "+14155550123"})),
        )
        .await;
    let conv = s
        .ok(
            "POST",
            "/v1/conversations",
            &key,
            Some(json!({"contact_id": contact["id"], "subject": "Rash follow-up"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"waiting_room": true})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ana = ("patient-ana", "patient", "Ana Souza");
    let patient = mint(&s, &key, ana, &conv, &room, None).await;
    let clinician = mint(
        &s,
        &key,
        ("dr-lee", "clinician", "Dr. Maya Lee"),
        &conv,
        &room,
        None,
    )
    .await;
    let interpreter = mint(
        &s,
        &key,
        ("interpreter", "agent", "Luis Ortega (interpreter)"),
        &conv,
        &room,
        None,
    )
    .await;
    // A link that has run out: wait until the server says so.
    let expired = mint(&s, &key, ana, &conv, &room, Some(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let help = link_help(&s, &expired).await;
        if help["status"] == "expired" {
            assert_eq!(help["support_contact"], "the front desk, +1 415 555 0100");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 1 s token never expired: {help}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A room without a waiting room, for the patient whose network blocks media.
    let open_room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"waiting_room": false})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let open_patient = mint(&s, &key, ana, &conv, &open_room, None).await;

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let cfg = json!({"base": s.base, "room": room, "conversation": conv, "patient": patient,
        "clinician": clinician, "interpreter": interpreter, "expired": expired,
        "open_room": open_room, "open_patient": open_patient, "shots": shots});
    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir().join("visit_ux.mjs"))
        .arg(cfg.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the visit page scenario");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("reading the scenario") {
            eprintln!("{line}");
            // Mid-call, a message on another channel: the clinician's context
            // panel must show it without a reload.
            if line.contains("\"step\":\"append-sms\"") {
                s.ok(
                    "POST",
                    &format!("/v1/conversations/{conv}/events"),
                    &key,
                    Some(
                        json!({"channel": "sms", "kind": "message", "body": "Running 5 min late"}),
                    ),
                )
                .await;
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        child.wait().await.expect("the scenario exits")
    };
    let status = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the scenario finishes within 5 minutes");
    assert!(status.success(), "visit page scenario failed:\n{stdout}");
    for check in [
        "denied camera shows help and a way to continue (phone)",
        "denied camera shows help and a way to continue (desktop)",
        "a broken link says it is not valid (phone)",
        "a broken link says it is not valid (desktop)",
        "an expired link says so and who to contact",
        "a network that blocks signaling says what to do",
        "a network that blocks media says what to do",
        "patient sees the pre-call check",
        "accessibility: pre-call check (phone)",
        "accessibility: waiting room (phone)",
        "accessibility: clinician in a call with the context panel (desktop)",
        "accessibility: patient in a call (phone)",
        "accessibility: expired link (phone)",
        "patient waits in the waiting room",
        "clinician alone sees waiting for the patient",
        "clinician sees the patient in the waiting room",
        "admitted: patient and clinician decode each other",
        "clinician's tile names the patient",
        "context panel shows the patient",
        "context panel shows a new SMS live",
        "clinician gets the patient's chat with the name",
        "the patient's message is ticked read once the clinician saw it",
        "typing shows and the answer is ticked read",
        "a dropped connection says reconnecting, then recovers",
        "three people: a labelled grid",
        "the grid goes back to one tile when the interpreter leaves",
        "patient leaves: end screen, camera and microphone off",
        "clinician is told the patient left",
        "patient rejoins without waiting again",
        "patient alone sees waiting for the clinician",
        "clinician rejoins",
        "clinician ends the visit for everyone",
        "a join after the end shows the visit ended",
    ] {
        assert!(
            stdout.contains(&format!("\"check\":\"{check}\",\"ok\":true")),
            "missing check {check}:\n{stdout}"
        );
    }
    for shot in [
        "patient-phone-precall.png",
        "patient-phone-waiting.png",
        "patient-phone-call.png",
        "patient-phone-chat.png",
        "patient-phone-chat-typing.png",
        "patient-phone-landscape.png",
        "patient-phone-left.png",
        "patient-phone-alone.png",
        "patient-phone-ended.png",
        "patient-phone-denied.png",
        "patient-desktop-denied.png",
        "patient-phone-invalid.png",
        "patient-desktop-invalid.png",
        "patient-phone-expired.png",
        "patient-phone-network-blocked.png",
        "patient-phone-media-blocked.png",
        "clinician-desktop-waiting-room.png",
        "clinician-desktop-call.png",
        "clinician-desktop-grid.png",
        "patient-phone-grid.png",
        "clinician-desktop-confirm-end.png",
        "clinician-desktop-ended.png",
    ] {
        let png = std::fs::read(shots.join(shot)).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "no screenshot {shot}");
    }

    // What the page did is on the record: the clinician took the
    // conversation by joining, the chat is on the timeline as the patient's,
    // and the room is ended for good.
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            &key,
            None,
        )
        .await;
    assert_eq!(ctx["conversation"]["assignee"], "dr-lee", "{ctx}");
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events?limit=500"),
            &key,
            None,
        )
        .await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["channel"] == "chat"
                && e["body"] == "I can see you now"
                && e["actor"]["id"] == "patient-ana"
                && e["actor"]["type"] == "patient"),
        "{events}"
    );
    let room_now = s.ok("GET", &format!("/v1/rooms/{room}"), &key, None).await;
    assert!(room_now["ended_at"].is_string(), "{room_now}");
}
