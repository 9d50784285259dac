//! The staff console (`/console`) in headless Chromium against the real
//! server: sign-in (a wrong, a mistaken and a revoked token each refused in
//! words), the inbox of seeded conversations, keyboard navigation, a
//! conversation's timeline across channels with its context panel, an
//! inbound SMS (a Twilio webhook signed by the official library) arriving
//! live, a reply by SMS through a provider stand-in with its delivery state,
//! a patient who opted out of SMS, attachment review, phone and desktop
//! sizes, session expiry; a phone call taken from the nurse queue: a real
//! SIP phone (baresip, playing 440 Hz and recording what it hears) dials
//! the clinic number, the IVR flow queues it with its triage, the nurse
//! (Chromium, a fake microphone playing 1000 Hz) is offered it with the
//! caller's context, accepts, hears 440 Hz, the phone hears 1000 Hz; mute,
//! DTMF, hold, hang up, wrap-up; the supervisor's live view of the queue; a
//! 10,000-conversation inbox's first render and per-update cost (generated
//! data) and 300 real conversations (the real server). See
//! tests/browser/console.mjs; by hand without cargo:
//! tests/browser/console-dev.mjs. Screenshots in target/screenshots/console/.

mod common;
use common::phone::{heard_file, tone, tone_share, wav_samples};
use common::providers::{StandIn, twilio_signature};
use common::sipp::{free_udp_port, inbound_route, voice_server_with};
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const CLINIC: &str = "+14155559999";
const TWILIO_TOKEN: &str = "twilio-auth-token-for-tests";

/// A patient's conversation: (contact id, conversation id).
async fn patient(
    s: &Server,
    key: &str,
    name: &str,
    phone: &str,
    subject: &str,
) -> (String, String) {
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
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        key,
        Some(body),
    )
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

/// The clinic's phone line (the IVR flow `nurse-line` answers it).
const CLINIC_LINE: &str = "+14155550300";
/// The caller: a known patient, her number, what she wrote before calling.
const CALLER: (&str, &str, &str) = (
    "Maria Lopez",
    "+14155550131",
    "My fever is 39.4 °C since last night and the cough is worse.",
);

/// A one-node flow: a word, then the nurse queue with priority and triage.
const NURSE_LINE: &str = "name: nurse-line\nstart: q\nnodes:\n  q:\n    say: \"Connecting you to a nurse.\"\n    queue: { name: nurse, priority: 10, triage: urgent_symptoms }\n";

/// baresip as the caller (tests/common/phone.rs `baresip` is the callee):
/// its configuration in `dir`/baresip-caller, the account `user`, playing
/// `wav`, recording into `rec`. The scenario starts it (`-e "/dial …"`) once
/// the nurse is available. Returns the configuration folder.
fn baresip_caller(dir: &Path, user: &str, wav: &Path, rec: &Path) -> PathBuf {
    let conf = dir.join("baresip-caller");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(rec).unwrap();
    std::fs::write(
        conf.join("config"),
        format!(
            "sip_listen 127.0.0.1:{}\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule account.so\nmodule menu.so\naudio_source aufile,{}\naudio_player aufile,/dev/null\naudio_alert aufile,/dev/null\nsnd_path {}\n",
            free_udp_port(),
            wav.display(),
            rec.display()
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{user}@127.0.0.1>;regint=0\n"),
    )
    .unwrap();
    std::fs::write(conf.join("contacts"), "").unwrap();
    conf
}

/// The best share of `hz` over 2-second windows of what a baresip heard
/// (the call also had muted, held and queued stretches).
fn best_tone_share(rec: &Path, hz: f64) -> f64 {
    let Some(file) = heard_file(rec) else {
        return 0.0;
    };
    let (rate, samples) = wav_samples(&file);
    samples
        .chunks_exact(rate as usize * 2)
        .map(|w| tone_share(rate, w, hz))
        .fold(0.0, f64::max)
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
    // The SIP gateway too (the phone call), and messaging providers on loopback.
    let env = common::providers::local_providers_env(&[
        ("CONTINUUM_MESSAGING__BACKOFF_BASE_MS", "50"),
        ("CONTINUUM_MESSAGING__BACKOFF_MAX_SECS", "1"),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (s, sip) = voice_server_with(dir.path(), &env);
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
    let (ben_contact, ben) = patient(
        &s,
        &key,
        "Ben Okafor",
        "+14155550143",
        "Medication question",
    )
    .await;
    let (_, chloe) = patient(&s, &key, "Chloé Martin", "+14155550144", "Post-op check").await;
    let (dev_contact, dev) =
        patient(&s, &key, "Dev Patel", "+14155550145", "Chest pain callback").await;

    // Ana: phoned the nurse line (IVR, triage), moved to SMS, texted, sent a photo; queued.
    append(&s, &key, &ana, json!({"channel": "ivr", "kind": "ivr.input", "body": "1", "meta": {"menu": "main", "digit": "1", "label": "Nurse line"}, "actor": {"type": "system"}})).await;
    append(&s, &key, &ana, json!({"channel": "ivr", "kind": "triage.result", "body": "Urgent: same-day callback", "meta": {"level": "urgent", "disposition": "nurse callback"}, "actor": {"type": "bot", "id": "triage"}})).await;
    append(&s, &key, &ana, json!({"channel": "voice", "kind": "call.started", "meta": {"session_id": "s1", "direction": "inbound"}, "actor": {"type": "system"}})).await;
    append(&s, &key, &ana, json!({"channel": "voice", "kind": "call.ended", "meta": {"session_id": "s1", "direction": "inbound", "duration_secs": 134}, "actor": {"type": "system"}})).await;
    append(&s, &key, &ana, json!({"channel": "voice", "kind": "channel.switched", "meta": {"from": "voice", "to": "sms", "reason": "patient asked to text"}, "actor": {"type": "system"}})).await;
    let first = [
        ("From", "+14155550142"),
        ("To", CLINIC),
        (
            "Body",
            "Hi, the rash is spreading to my arm. Should I come in?",
        ),
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("AccountSid", "AC0123"),
        ("NumMedia", "0"),
    ];
    assert_eq!(post_signed(&s, &inbound_url, &first).await, 200);
    let ana_patient = s
        .mint(&key, "patient-ana", "patient", &[ana.as_str()])
        .await;
    let r = s
        .client
        .post(s.url(&format!(
            "/v1/conversations/{ana}/attachments?filename=rash.jpg"
        )))
        .bearer_auth(&ana_patient)
        .header("content-type", "image/jpeg")
        .body(rash_jpeg())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    s.ok(
        "POST",
        &format!("/v1/conversations/{ana}/queue"),
        &key,
        Some(json!({"queue": "nurse-line"})),
    )
    .await;

    // Ben: consented to WhatsApp, asked in chat; queued for the pharmacy.
    append(&s, &key, &ben, json!({"channel": "whatsapp", "kind": "consent.granted", "body": "Agreed to WhatsApp messages", "meta": {"channel": "whatsapp"}, "actor": {"type": "patient", "id": ben_contact}})).await;
    append(&s, &key, &ben, json!({"channel": "chat", "kind": "message", "body": "Can I take ibuprofen with my new prescription?", "actor": {"type": "patient", "id": ben_contact}})).await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{ben}/queue"),
        &key,
        Some(json!({"queue": "pharmacy"})),
    )
    .await;

    // Chloé: had a video visit, has a staff note; assigned to the nurse.
    append(&s, &key, &chloe, json!({"channel": "video", "kind": "call.started", "meta": {"session_id": "r1"}, "actor": {"type": "system"}})).await;
    append(&s, &key, &chloe, json!({"channel": "video", "kind": "call.ended", "meta": {"session_id": "r1", "duration_secs": 620}, "actor": {"type": "system"}})).await;
    append(&s, &key, &chloe, json!({"channel": "video", "kind": "note", "body": "Wound healing well. Review in 2 weeks.", "actor": {"type": "staff", "id": "dr-lee"}})).await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{chloe}/assign"),
        &key,
        Some(json!({"assignee": "nurse-kim"})),
    )
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
        .ok(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": "old-nurse", "role": "clinician", "ttl_seconds": 600})),
        )
        .await;
    let (st, _) = s
        .call(
            "POST",
            "/v1/tokens/revoke",
            &key,
            Some(json!({"jti": old["jti"]})),
        )
        .await;
    assert_eq!(st, 204);

    // The phone line: the nurse queue (triage skill, a short wrap-up), Joy's
    // agent profile, the flow, the number routed to it.
    s.ok(
        "PUT",
        "/v1/queues/nurse",
        &key,
        Some(json!({"skills": ["triage"], "reservation_timeout_secs": 60, "wrap_up_secs": 20})),
    )
    .await;
    s.ok(
        "PUT",
        "/v1/agents/nurse-joy",
        &key,
        Some(json!({"display_name": "Joy Adams, RN", "skills": ["triage"]})),
    )
    .await;
    let (code, saved) = put_flow(&s, &key, "nurse-line", NURSE_LINE).await;
    assert_eq!(code, 201, "{saved}");
    inbound_route(
        &s,
        &key,
        CLINIC_LINE,
        json!({"type": "ivr", "flow": "nurse-line"}),
    )
    .await;
    // The caller is a known patient who wrote before calling: her call lands
    // on that conversation, and the offer's context shows the message.
    let (caller_contact, caller_conv) =
        patient(&s, &key, CALLER.0, CALLER.1, "Fever and cough").await;
    append(&s, &key, &caller_conv, json!({"channel": "chat", "kind": "message", "body": CALLER.2, "actor": {"type": "patient", "id": caller_contact}})).await;
    let joy = s
        .ok("POST", "/v1/tokens", &key, Some(json!({"identity": "nurse-joy", "role": "clinician", "name": "Joy Adams, RN", "ttl_seconds": 3600, "grants": all})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The caller's phone plays 440 Hz; the nurse's fake microphone 1000 Hz.
    let peers = dir.path().join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    let (t440, t1000, rec) = (
        peers.join("tone440.wav"),
        peers.join("tone1000.wav"),
        peers.join("rec"),
    );
    tone(&t440, 440, 8000, 300);
    tone(&t1000, 1000, 48000, 60);
    let caller_conf = baresip_caller(&peers, CALLER.1, &t440, &rec);

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
    // The caller's phone, started by the scenario once the nurse is available.
    let dial = format!("/dial sip:{CLINIC_LINE}@127.0.0.1:{sip}");
    let caller = json!({
        "cmd": "baresip", "args": ["-f", caller_conf, "-e", dial, "-t", "900"],
        "log": peers.join("baresip-caller.log"), "rec": rec,
        "name": CALLER.0, "phone": CALLER.1, "earlier": CALLER.2,
    });
    let cfg = json!({
        "base": s.base, "staff": staff, "admin": admin, "api_key": key, "revoked": old["token"],
        "conv": {"id": ana, "name": "Ana Souza"}, "opted_out": {"id": dev, "name": "Dev Patel"},
        "names": ["Ana Souza", "Ben Okafor", "Chloé Martin", "Dev Patel"], "attachment": "rash.jpg",
        "inbound": {"url": inbound_url, "params": live, "signature": live_signature, "body": live_body},
        "agent": {"token": joy, "name": "Joy Adams, RN"}, "tone": t1000, "caller": caller,
        "shots": shots, "perf": true, "perf_real": 300,
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
        "agent: the status selector goes Available (POST /v1/agents/me/state)",
        "incoming call: the reservation dialog shows the caller, triage, their context and a countdown",
        "accessibility: incoming call dialog (desktop)",
        "accept: the call bar says connected, the caller's conversation opens, audio only",
        "the page hears the caller's 440 Hz through the room",
        "the caller's phone hears the nurse's 1000 Hz",
        "mute: the microphone track is disabled and the phone stops hearing the nurse",
        "keypad: DTMF 5 reaches the caller's phone",
        "hold: the caller is held (the room stops hearing them) and resumed",
        "supervisor: the nurse queue and the nurse (busy) from /v1/routing/stats, live from /v1/routing/stream, with the last-hour chart",
        "accessibility: supervisor (desktop)",
        "hang up: the call ends on the phone, the task completes, wrap-up counts down",
        "after the call: the bar closes, the supervisor's live view shows it answered and nobody on it",
        "wrap-up ends: available again (the `state` event)",
        "an expired session returns to sign-in and says so; the unsent reply comes back",
        "perf (generated data): 10,000 conversations render (virtualized)",
        "perf (generated data): live updates patch one row each, without jank",
        "perf (real server): 300 real conversations load and render; live rows arrive through the stream",
    ]
    .map(String::from);
    let out = browser_scenario("console.mjs", &[arg.as_str()], &checks).await;
    // Every check the scenario ran passed.
    for line in out.lines().filter(|l| l.starts_with("{\"check\"")) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["ok"], true, "{line}");
    }

    // What the browser did landed on the server.
    let sent = stand_in.wait_for(|r| !r.is_empty()).await;
    assert!(
        sent.iter().any(|r| r.field("Body")
            == Some("Thanks Ana. Please send a photo of your arm today.")
            && r.field("To") == Some("+14155550142")),
        "the reply went out by SMS: {sent:?}"
    );
    let reviewed = s
        .ok(
            "GET",
            &format!("/v1/attachments?conversation={ana}"),
            &key,
            None,
        )
        .await;
    let reviewed = &reviewed.as_array().unwrap()[0];
    assert_eq!(reviewed["review"], "reviewed", "{reviewed}");
    assert_eq!(reviewed["reviewed_by"], "nurse-kim", "{reviewed}");

    // The call: answered and ended from the console, the conversation Joy's,
    // the task completed; the phone heard her 1000 Hz.
    let calls = s
        .ok(
            "GET",
            &format!("/v1/conversations/{caller_conv}/calls"),
            &key,
            None,
        )
        .await;
    let call = calls
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["direction"] == "inbound")
        .unwrap_or_else(|| panic!("no inbound call: {calls}"));
    assert_eq!(call["state"], "ended", "{call}");
    assert!(call.get("answered_at").is_some(), "{call}");
    let c = s
        .ok(
            "GET",
            &format!("/v1/conversations/{caller_conv}"),
            &key,
            None,
        )
        .await;
    assert_eq!(c["assignee"], "nurse-joy", "{c}");
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{caller_conv}/events?limit=500"),
            &key,
            None,
        )
        .await;
    let routing: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "routing")
        .filter_map(|e| e["meta"]["action"].as_str())
        .collect();
    for action in ["queued", "reserved", "completed"] {
        assert!(routing.contains(&action), "routing {action}: {routing:?}");
    }
    let share = best_tone_share(&rec, 1000.0);
    println!("PHONE HEARD: best 1000 Hz share over 2 s windows {share:.2}");
    assert!(
        share > 0.3,
        "the nurse's 1000 Hz reached the caller's phone: share {share:.2}"
    );

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
        "console-desktop-inbox-real.png",
        "console-phone-signin.png",
        "console-phone-inbox.png",
        "console-phone-conversation.png",
        "console-phone-context.png",
    ]
    .into_iter()
    .map(String::from)
    .chain(
        [
            "available",
            "incoming-call",
            "call-connected",
            "call-keypad",
            "call-held",
            "call-ended",
            "supervisor",
        ]
        .iter()
        .flat_map(|n| {
            [
                format!("console-desktop-{n}.png"),
                format!("console-phone-{n}.png"),
            ]
        }),
    ) {
        let png = std::fs::read(shots.join(&shot)).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "no screenshot {shot}");
    }
}
