//! The staff console (`/console`) in headless Chromium against the real
//! server: sign-in (a wrong, a mistaken and a revoked token each refused in
//! words), the inbox of seeded conversations, keyboard navigation, a
//! conversation's timeline across channels with its context panel, an
//! inbound SMS (a Twilio webhook signed by the official library) arriving
//! live, a reply by SMS through a provider stand-in with its delivery state,
//! a patient who opted out of SMS, attachment review, phone and desktop
//! sizes, session expiry, and a 10,000-conversation inbox's first render and
//! per-update cost. Routing (agents, reservations, queue statistics) is
//! simulated by the scenario until the server has it; see
//! tests/browser/console.mjs. Screenshots in target/screenshots/console/.

mod common;
use common::providers::{StandIn, twilio_signature};
use common::*;
use serde_json::{Value, json};

const CLINIC: &str = "+14155559999";
const TWILIO_TOKEN: &str = "twilio-auth-token-for-tests";

/// A patient's conversation: (contact id, conversation id).
async fn patient(s: &Server, key: &str, name: &str, phone: &str, subject: &str) -> (String, String) {
    let contact = s
        .ok(
            "POST",
            "/v1/contacts",
            key,
            Some(json!({"display_name": name, "phone": phone, "whatsapp": phone})),
        )
        .await;
    let cid = contact["id"].as_str().unwrap().to_owned();
    let conv = s
        .ok(
            "POST",
            "/v1/conversations",
            key,
            Some(json!({"contact_id": cid, "subject": subject})),
        )
        .await;
    (cid, conv["id"].as_str().unwrap().to_owned())
}

async fn append(s: &Server, key: &str, conv: &str, body: Value) {
    s.ok("POST", &format!("/v1/conversations/{conv}/events"), key, Some(body))
        .await;
}

/// Posts a Twilio webhook signed by the official library; returns the status.
async fn post_signed(s: &Server, url: &str, params: &[(&str, &str)]) -> u16 {
    let sig = twilio_signature(TWILIO_TOKEN, url, params);
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

/// A photo of a rash, as a phone would send it (a JPEG).
fn rash_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(240, 180, |x, y| {
        let (dx, dy) = (x as i32 - 120, y as i32 - 90);
        let d = ((dx * dx + dy * dy) as f32).sqrt();
        let spot = ((x / 17 + y / 13) % 5 == 0) as u8;
        if d < 60.0 || spot == 1 {
            image::Rgb([200, 70 + (d as u8 / 2), 70])
        } else {
            image::Rgb([224, 172, 140])
        }
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staff_console_in_a_browser() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run scripts/test (it installs playwright-core)"
    );
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: common::providers::local_providers_env(&[
                ("CONTINUUM_MESSAGING__BACKOFF_BASE_MS", "50"),
                ("CONTINUUM_MESSAGING__BACKOFF_MAX_SECS", "1"),
            ]),
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let stand_in = StandIn::start().await;
    let provider = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            &key,
            Some(json!({
                "name": "twilio", "kind": "twilio", "priority": 1,
                "channels": ["sms", "whatsapp"], "senders": [CLINIC],
                "spec": {"account_sid": "AC0123", "base_url": stand_in.base},
                "credentials": {"auth_token": TWILIO_TOKEN},
            })),
        )
        .await;
    let inbound_url = provider["inbound_url"].as_str().unwrap().to_owned();

    // Four patients, each at another point of their care.
    let (_, ana) = patient(&s, &key, "Ana Souza", "+14155550142", "Rash follow-up").await;
    let (ben_contact, ben) = patient(&s, &key, "Ben Okafor", "+14155550143", "Medication question").await;
    let (_, chloe) = patient(&s, &key, "Chloé Martin", "+14155550144", "Post-op check").await;
    let (dev_contact, dev) = patient(&s, &key, "Dev Patel", "+14155550145", "Chest pain callback").await;

    // Ana: phoned the nurse line (IVR, triage), moved to SMS, texted, sent a photo; queued.
    append(&s, &key, &ana, json!({"channel": "ivr", "kind": "ivr.input", "body": "1", "meta": {"menu": "main", "digit": "1", "label": "Nurse line"}, "actor": {"type": "system"}})).await;
    append(&s, &key, &ana, json!({"channel": "ivr", "kind": "triage.result", "body": "Urgent: same-day callback", "meta": {"level": "urgent", "disposition": "nurse callback"}, "actor": {"type": "bot", "id": "triage"}})).await;
    append(&s, &key, &ana, json!({"channel": "voice", "kind": "call.started", "meta": {"session_id": "s1", "direction": "inbound"}, "actor": {"type": "system"}})).await;
    append(&s, &key, &ana, json!({"channel": "voice", "kind": "call.ended", "meta": {"session_id": "s1", "direction": "inbound", "duration_secs": 134}, "actor": {"type": "system"}})).await;
    append(&s, &key, &ana, json!({"channel": "voice", "kind": "channel.switched", "meta": {"from": "voice", "to": "sms", "reason": "patient asked to text"}, "actor": {"type": "system"}})).await;
    let first = [
        ("From", "+14155550142"),
        ("To", CLINIC),
        ("Body", "Hi, the rash is spreading to my arm. Should I come in?"),
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("AccountSid", "AC0123"),
        ("NumMedia", "0"),
    ];
    assert_eq!(post_signed(&s, &inbound_url, &first).await, 200);
    let ana_patient = s.mint(&key, "patient-ana", "patient", &[ana.as_str()]).await;
    let r = s
        .client
        .post(s.url(&format!("/v1/conversations/{ana}/attachments?filename=rash.jpg")))
        .bearer_auth(&ana_patient)
        .header("content-type", "image/jpeg")
        .body(rash_jpeg())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    s.ok("POST", &format!("/v1/conversations/{ana}/queue"), &key, Some(json!({"queue": "nurse-line"})))
        .await;

    // Ben: consented to WhatsApp, asked in chat; queued for the pharmacy.
    append(&s, &key, &ben, json!({"channel": "whatsapp", "kind": "consent.granted", "body": "Agreed to WhatsApp messages", "meta": {"channel": "whatsapp"}, "actor": {"type": "patient", "id": ben_contact}})).await;
    append(&s, &key, &ben, json!({"channel": "chat", "kind": "message", "body": "Can I take ibuprofen with my new prescription?", "actor": {"type": "patient", "id": ben_contact}})).await;
    s.ok("POST", &format!("/v1/conversations/{ben}/queue"), &key, Some(json!({"queue": "pharmacy"})))
        .await;

    // Chloé: had a video visit, has a staff note; assigned to the nurse.
    append(&s, &key, &chloe, json!({"channel": "video", "kind": "call.started", "meta": {"session_id": "r1"}, "actor": {"type": "system"}})).await;
    append(&s, &key, &chloe, json!({"channel": "video", "kind": "call.ended", "meta": {"session_id": "r1", "duration_secs": 620}, "actor": {"type": "system"}})).await;
    append(&s, &key, &chloe, json!({"channel": "video", "kind": "note", "body": "Wound healing well. Review in 2 weeks.", "actor": {"type": "staff", "id": "dr-lee"}})).await;
    s.ok("POST", &format!("/v1/conversations/{chloe}/assign"), &key, Some(json!({"assignee": "nurse-kim"})))
        .await;

    // Dev: texted STOP (opted out of SMS), asked for a callback.
    let stop = [
        ("From", "+14155550145"),
        ("To", CLINIC),
        ("Body", "STOP"),
        ("MessageSid", "SM00000000000000000000000000000002"),
        ("AccountSid", "AC0123"),
        ("NumMedia", "0"),
    ];
    assert_eq!(post_signed(&s, &inbound_url, &stop).await, 200);
    append(&s, &key, &dev, json!({"channel": "voice", "kind": "callback.requested", "body": "Please call after 3pm", "actor": {"type": "patient", "id": dev_contact}})).await;

    // The people: a nurse (every conversation), a lead (admin), a revoked token.
    let all = json!({"conversations": ["*"], "rooms": ["*"], "contacts": ["*"]});
    let staff = s
        .ok("POST", "/v1/tokens", &key, Some(json!({"identity": "nurse-kim", "role": "clinician", "name": "Kim Park, RN", "ttl_seconds": 3600, "grants": all})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = s
        .ok("POST", "/v1/tokens", &key, Some(json!({"identity": "lead-ortiz", "role": "admin", "name": "Sam Ortiz", "ttl_seconds": 3600})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = s
        .ok("POST", "/v1/tokens", &key, Some(json!({"identity": "old-nurse", "role": "clinician", "ttl_seconds": 600})))
        .await;
    let (st, _) = s
        .call("POST", "/v1/tokens/revoke", &key, Some(json!({"jti": old["jti"]})))
        .await;
    assert_eq!(st, 204);

    // What the scenario needs: a room of Ana's (the simulated call's audio
    // goes through it), her context (the simulated offer carries it), and
    // the inbound SMS it posts when it is watching.
    let room = s
        .ok("POST", &format!("/v1/conversations/{ana}/rooms"), &key, Some(json!({"waiting_room": false})))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let snapshot = s
        .ok("GET", &format!("/v1/conversations/{ana}/context?events=5"), &key, None)
        .await;
    let live_body = "It is itchy now and a bit swollen, photo coming.";
    let live = [
        ("From", "+14155550142"),
        ("To", CLINIC),
        ("Body", live_body),
        ("MessageSid", "SM00000000000000000000000000000009"),
        ("AccountSid", "AC0123"),
        ("NumMedia", "0"),
    ];
    let live_signature = twilio_signature(TWILIO_TOKEN, &inbound_url, &live);

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots/console");
    let cfg = json!({
        "base": s.base, "staff": staff, "admin": admin, "api_key": key, "revoked": old["token"],
        "conv": {"id": ana, "name": "Ana Souza"}, "opted_out": {"id": dev, "name": "Dev Patel"},
        "names": ["Ana Souza", "Ben Okafor", "Chloé Martin", "Dev Patel"], "attachment": "rash.jpg",
        "inbound": {"url": inbound_url, "params": live, "signature": live_signature, "body": live_body},
        "room": room, "context_snapshot": snapshot, "shots": shots, "perf": true,
    });
    let arg = cfg.to_string();
    let checks = [
        "a wrong token is refused with a clear reason",
        "signed in: the inbox lists the seeded conversations",
        "keyboard: / focuses filters, j/k/arrows move, Enter opens",
        "conversation: timeline across channels with marks, and the context panel",
        "accessibility: inbox and conversation (desktop)",
        "live: an inbound SMS appears on the open timeline and in its inbox row",
        "reply on the patient's channel (SMS) shows its delivery state",
        "opted out of SMS: the channel is disabled and the reason is shown",
        "attachment: image preview, marked reviewed with a note",
        "phone: signed in, the inbox fills the screen",
        "phone: conversation, context and back, one pane at a time",
        "accessibility: inbox (phone)",
        "an expired session returns to sign-in and says so; the unsent reply comes back",
        "perf: 10,000 conversations render (virtualized)",
        "perf: live updates patch one row each, without jank",
    ]
    .map(String::from);
    let out = browser_scenario("console.mjs", &[arg.as_str()], &checks).await;
    // Every check the scenario ran passed (it also runs routing checks,
    // simulated or real depending on the server).
    for line in out.lines().filter(|l| l.starts_with("{\"check\"")) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["ok"], true, "{line}");
    }

    // What the browser did landed on the server.
    let sent = stand_in.wait_for(|r| !r.is_empty()).await;
    assert!(
        sent.iter().any(|r| r.field("Body") == Some("Thanks Ana. Please send a photo of your arm today.") && r.field("To") == Some("+14155550142")),
        "the reply went out by SMS: {sent:?}"
    );
    let reviewed = s
        .ok("GET", &format!("/v1/attachments?conversation={ana}"), &key, None)
        .await;
    let reviewed = &reviewed.as_array().unwrap()[0];
    assert_eq!(reviewed["review"], "reviewed", "{reviewed}");
    assert_eq!(reviewed["reviewed_by"], "nurse-kim", "{reviewed}");

    for shot in [
        "console-desktop-signin.png",
        "console-desktop-signin-error.png",
        "console-desktop-inbox.png",
        "console-desktop-conversation.png",
        "console-desktop-live-sms.png",
        "console-desktop-reply-sent.png",
        "console-desktop-opted-out.png",
        "console-desktop-attachment.png",
        "console-desktop-attachment-reviewed.png",
        "console-desktop-session-expired.png",
        "console-desktop-inbox-10000.png",
        "console-phone-signin.png",
        "console-phone-inbox.png",
        "console-phone-conversation.png",
        "console-phone-context.png",
    ] {
        let png = std::fs::read(shots.join(shot)).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "no screenshot {shot}");
    }
}
