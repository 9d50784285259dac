//! The front door over real sockets: sipp calls into the example IVR flow
//! (examples/ivr/healthcare.yaml) keying RFC 4733 digits from sipp's own
//! captures, waits in the nurse queue with priority, and an agent takes the
//! call (it joins the agent's room); a TwiML webhook stand-in drives a call
//! through Gather → Say → Enqueue with requests signed as Twilio signs them
//! (checked by the `twilio` PyPI package); TwiML that is garbage, uses an
//! unsupported verb or never comes is a clear error on the timeline and the
//! call ends politely; broken flows are refused with line and reason.

mod common;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use common::providers::twilio_signature;
use common::sipp::*;
use common::sse::Sse;
use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The example flow without its business hours (a test runs at any hour;
/// the hours are tested in crates/ivr).
fn example_flow_always_open() -> String {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/ivr/healthcare.yaml"
    ))
    .unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in src.lines() {
        if line.starts_with("hours:") {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with(' ') || line.is_empty()) {
            if line.is_empty() {
                skipping = false;
            }
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    assert!(!out.contains("time_zone"), "the hours were taken out");
    out
}

/// RFC 4733 digits from sipp's shipped captures, each followed by a pause.
fn dtmf(digits: &str, gap_ms: u64) -> String {
    digits
        .chars()
        .map(|d| {
            format!(
                "<nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{d}.pcap\"/></action></nop>\n<pause milliseconds=\"{gap_ms}\"/>\n"
            )
        })
        .collect()
}

const MEDIA: &str = "m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15";

/// The conversation of the patient calling from `phone` (once the call made one).
async fn conversation_of(s: &Server, key: &str, phone: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = s
            .ok(
                "GET",
                &format!("/v1/contacts?phone={}", phone.replace('+', "%2B")),
                key,
                None,
            )
            .await;
        if let Some(id) = found["contacts"][0]["id"].as_str() {
            let convs = s
                .ok(
                    "GET",
                    &format!("/v1/conversations?contact_id={id}"),
                    key,
                    None,
                )
                .await;
            if let Some(c) = convs["conversations"][0]["id"].as_str() {
                return c.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no conversation for {phone}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a phone participant is in `room` (or, `present` false, is
/// gone from it); the room as last seen.
async fn phone_in_room(s: &Server, key: &str, room: &str, present: bool) -> Value {
    let has_phone = |r: &Value| {
        r["participants"]
            .as_array()
            .is_some_and(|p| p.iter().any(|m| m["phone"] == true))
    };
    let seen = eventually(s, key, &format!("/v1/rooms/{room}"), |r| {
        has_phone(r) == present
    })
    .await;
    assert_eq!(
        has_phone(&seen),
        present,
        "phone in room {room} should be {present}: {seen}"
    );
    seen
}

/// Polls the timeline until `done` holds (within a minute: speech is
/// rendered on a loaded machine); returns the events.
async fn timeline_until(
    s: &Server,
    key: &str,
    conv: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = s
            .ok(
                "GET",
                &format!("/v1/conversations/{conv}/events?limit=500"),
                key,
                None,
            )
            .await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the timeline never got there: {}",
            serde_json::to_string_pretty(&events).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn has(events: &[Value], kind: &str, pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(|e| e["kind"] == kind && pred(&e["meta"]))
}

async fn setup_queues(s: &Server, key: &str) {
    s.ok(
        "PUT",
        "/v1/queues/nurse",
        key,
        Some(json!({"skills": ["triage"], "reservation_timeout_secs": 30, "wrap_up_secs": 5})),
    )
    .await;
    s.ok("PUT", "/v1/queues/front-desk", key, Some(json!({})))
        .await;
}

#[tokio::test]
async fn a_caller_presses_1_waits_in_the_nurse_queue_and_an_agent_takes_the_call() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    setup_queues(&s, &key).await;
    s.ok(
        "PUT",
        "/v1/agents/nurse-joy",
        &key,
        Some(json!({"display_name": "Nurse Joy", "skills": ["triage"]})),
    )
    .await;
    let (code, saved) = put_flow(&s, &key, "front-door", &example_flow_always_open()).await;
    assert_eq!(code, 201, "{saved}");
    inbound_route(
        &s,
        &key,
        "+14155550300",
        json!({"type": "ivr", "flow": "front-door"}),
    )
    .await;

    // The caller listens to the emergency notice, keys 1 during the menu
    // (barge-in), and stays on the line.
    let scenario = Uac::new("+14155550131")
        .invite(MEDIA)
        .answered()
        .pause(9_000)
        .raw(&dtmf("1", 500))
        .pause(15_000)
        // Audio now and then: a silent line would end the call (media timeout).
        .raw("<nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/g711a.pcap\"/></action></nop>\n")
        .pause(25_000)
        .bye()
        .build();
    let caller = Sipp::uac(dir.path(), "ivr-nurse", &scenario, sip, "+14155550300");
    let conv = conversation_of(&s, &key, "+14155550131").await;

    // The timeline: the notice, the menu, the digit, the triage, the queue.
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "routing", |m| m["action"] == "queued")
    })
    .await;
    assert!(
        has(&events, "ivr.step", |m| m["node"] == "welcome"),
        "{events:?}"
    );
    assert!(
        has(&events, "ivr.step", |m| m["node"] == "main_menu"),
        "{events:?}"
    );
    assert!(
        has(&events, "ivr.input", |m| m["digit"] == "1"),
        "{events:?}"
    );
    assert!(
        has(&events, "ivr.input", |m| m["node"] == "main_menu"
            && m["choice"] == "1"),
        "{events:?}"
    );
    assert!(
        has(&events, "triage.result", |m| m["level"]
            == "urgent_symptoms"),
        "{events:?}"
    );
    let queued = events
        .iter()
        .find(|e| e["kind"] == "routing" && e["meta"]["action"] == "queued")
        .unwrap();
    assert_eq!(queued["meta"]["queue"], "nurse", "{queued}");
    assert_eq!(queued["meta"]["priority"], 10, "{queued}");
    let task_id = queued["meta"]["task_id"].as_str().unwrap().to_owned();

    // Waiting, first in line, with the triage label; the context knows.
    let task = s
        .ok("GET", &format!("/v1/tasks/{task_id}"), &key, None)
        .await;
    assert_eq!(task["state"], "waiting", "{task}");
    assert_eq!(task["channel"], "voice");
    assert_eq!(task["priority"], 10);
    assert_eq!(task["triage"], "urgent_symptoms");
    assert_eq!(task["position"], 1, "{task}");
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            &key,
            None,
        )
        .await;
    assert_eq!(
        ctx["last_triage"]["meta"]["level"], "urgent_symptoms",
        "{ctx}"
    );
    let stats = s.ok("GET", "/v1/routing/stats", &key, None).await;
    let nurse = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "nurse")
        .unwrap();
    assert_eq!(nurse["waiting"], 1, "{stats}");

    // The nurse signs in: the call is offered with its context, she takes it.
    let nurse_token = s.mint(&key, "nurse-joy", "clinician", &["*"]).await;
    let mut feed = Sse::open(
        &s.client,
        &s.url(&format!("/v1/agents/me/events?access_token={nurse_token}")),
    )
    .await;
    feed.next("hello", WAIT).await;
    let me = s
        .ok(
            "POST",
            "/v1/agents/me/state",
            &nurse_token,
            Some(json!({"state": "available"})),
        )
        .await;
    assert!(me["state"] == "available" || me["state"] == "busy", "{me}");
    let offer = feed.next("reservation", WAIT).await;
    assert_eq!(offer["task_id"], task_id.as_str(), "{offer}");
    assert_eq!(offer["queue"], "nurse");
    assert_eq!(offer["channel"], "voice");
    assert_eq!(offer["triage"], "urgent_symptoms");
    assert_eq!(
        offer["context"]["patient"]["bindings"]["phone"], "+14155550131",
        "{offer}"
    );
    let rid = offer["id"].as_u64().unwrap();
    let accepted = s
        .ok(
            "POST",
            &format!("/v1/reservations/{rid}/accept"),
            &nurse_token,
            None,
        )
        .await;
    assert_eq!(accepted["conversation_id"], conv.as_str(), "{accepted}");
    let room = accepted["call"]["room_id"].as_str().unwrap().to_owned();
    assert!(
        accepted["call"]["join_token"]
            .as_str()
            .is_some_and(|t| t.len() > 20)
    );
    // Accepting twice is refused, never a second assignment.
    let (code, again) = s
        .call(
            "POST",
            &format!("/v1/reservations/{rid}/accept"),
            &nurse_token,
            None,
        )
        .await;
    assert_eq!(code, 409, "{again}");
    // The caller is in the nurse's room by phone; the conversation is hers.
    phone_in_room(&s, &key, &room, true).await;
    let c = s
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await;
    assert_eq!(c["assignee"], "nurse-joy", "{c}");
    assert_eq!(c["state"], "active", "{c}");

    // It is a front-desk matter: she sends the call back to a queue. The
    // caller leaves her room and waits again; she is in wrap-up.
    let code = s
        .client
        .post(s.url(&format!("/v1/tasks/{task_id}/transfer")))
        .bearer_auth(&nurse_token)
        .json(&json!({"queue": "front-desk"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(code.as_u16(), 204);
    phone_in_room(&s, &key, &room, false).await;
    // (`busy` came first, when she took the call.)
    let state = loop {
        let st = feed.next("state", WAIT).await;
        if st["state"] != "busy" {
            break st;
        }
    };
    assert_eq!(state["state"], "wrap_up", "{state}");
    assert!(state["wrap_up_until"].as_i64().is_some(), "{state}");
    let task = s
        .ok("GET", &format!("/v1/tasks/{task_id}"), &key, None)
        .await;
    assert_eq!(task["state"], "waiting", "{task}");
    assert_eq!(task["queue"], "front-desk", "{task}");

    // The front desk takes it (the task keeps the skill the IVR asked
    // for): the caller is in the new agent's room.
    s.ok(
        "PUT",
        "/v1/agents/desk-1",
        &key,
        Some(json!({"display_name": "Front desk", "skills": ["triage"]})),
    )
    .await;
    let desk = s.mint(&key, "desk-1", "agent", &["*"]).await;
    let mut desk_feed = Sse::open(
        &s.client,
        &s.url(&format!("/v1/agents/me/events?access_token={desk}")),
    )
    .await;
    desk_feed.next("hello", WAIT).await;
    s.ok(
        "POST",
        "/v1/agents/me/state",
        &desk,
        Some(json!({"state": "available"})),
    )
    .await;
    let offer = desk_feed.next("reservation", WAIT).await;
    assert_eq!(offer["task_id"], task_id.as_str(), "{offer}");
    assert_eq!(offer["queue"], "front-desk", "{offer}");
    let rid = offer["id"].as_u64().unwrap();
    let accepted = s
        .ok(
            "POST",
            &format!("/v1/reservations/{rid}/accept"),
            &desk,
            None,
        )
        .await;
    let desk_room = accepted["call"]["room_id"].as_str().unwrap().to_owned();
    assert_ne!(desk_room, room);
    phone_in_room(&s, &key, &desk_room, true).await;
    let c = s
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await;
    assert_eq!(c["assignee"], "desk-1", "{c}");
    caller.assert_ok().await;

    // The desk finishes.
    s.ok(
        "POST",
        &format!("/v1/tasks/{task_id}/complete"),
        &desk,
        None,
    )
    .await;
    let task = s
        .ok("GET", &format!("/v1/tasks/{task_id}"), &key, None)
        .await;
    assert_eq!(task["state"], "completed", "{task}");
}

/// A request the TwiML app got: path, `X-Twilio-Signature`, form.
type Seen = (String, Option<String>, Vec<(String, String)>);

/// A customer's TwiML app, scripted per path; every request is kept.
#[derive(Clone, Default)]
struct TwimlApp {
    docs: Arc<Mutex<Vec<(String, String)>>>,
    requests: Arc<Mutex<Vec<Seen>>>,
}

impl TwimlApp {
    async fn start(docs: &[(&str, &str)]) -> (TwimlApp, String) {
        let app = TwimlApp::default();
        *app.docs.lock().unwrap() = docs
            .iter()
            .map(|(p, d)| (p.to_string(), d.to_string()))
            .collect();
        let router = Router::new()
            .fallback(axum::routing::any(serve_twiml))
            .with_state(app.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (app, base)
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_twiml(
    State(app): State<TwimlApp>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path().to_owned();
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    app.requests.lock().unwrap().push((path.clone(), sig, form));
    let doc = app
        .docs
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, d)| d.clone());
    match doc.as_deref() {
        Some("HANG") => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "".into_response()
        }
        Some(d) if d.starts_with("<") => {
            ([("content-type", "text/xml")], d.to_owned()).into_response()
        }
        Some(d) => ([("content-type", "text/plain")], d.to_owned()).into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

fn twiml_server(dir: &std::path::Path) -> (Server, u16) {
    voice_server_with(
        dir,
        &[
            ("CONTINUUM_IVR__ALLOW_PRIVATE_WEBHOOKS", "true"),
            ("CONTINUUM_IVR__ALLOW_HTTP_WEBHOOKS", "true"),
            ("CONTINUUM_IVR__WEBHOOK_TIMEOUT_SECS", "2"),
        ],
    )
}

#[tokio::test]
async fn a_twiml_webhook_drives_the_call_gather_say_enqueue_with_twilio_signatures() {
    let dir = tempdir();
    let (s, sip) = twiml_server(dir.path());
    let key = s.key().to_owned();
    setup_queues(&s, &key).await;
    let (app, base) = TwimlApp::start(&[
        (
            "/voice",
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather input="dtmf" numDigits="1" timeout="10" action="/gathered">
    <Say>Press 1 to speak with a nurse.</Say>
  </Gather>
  <Say>We did not get your choice. Goodbye.</Say>
  <Hangup/>
</Response>"#,
        ),
        (
            "/gathered",
            r#"<Response><Say>Connecting you to a nurse.</Say><Enqueue>nurse</Enqueue></Response>"#,
        ),
    ])
    .await;
    let url = format!("{base}/voice");
    inbound_route(
        &s,
        &key,
        "+14155550301",
        json!({"type": "twiml", "url": url}),
    )
    .await;
    let signing_key = s.ok("GET", "/v1/ivr/webhook-signing-key", &key, None).await["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let scenario = Uac::new("+14155550132")
        .invite(MEDIA)
        .answered()
        .pause(2_500)
        .raw(&dtmf("1", 500))
        .pause(6_000)
        .bye()
        .build();
    let caller = Sipp::uac(dir.path(), "twiml", &scenario, sip, "+14155550301");
    let conv = conversation_of(&s, &key, "+14155550132").await;
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "routing", |m| m["action"] == "queued")
    })
    .await;
    caller.assert_ok().await;
    assert!(
        has(&events, "ivr.step", |m| m["verb"] == "Gather"),
        "{events:?}"
    );
    assert!(
        has(&events, "ivr.step", |m| m["verb"] == "Enqueue"),
        "{events:?}"
    );
    assert!(
        has(&events, "routing", |m| m["action"] == "queued"
            && m["queue"] == "nurse"),
        "{events:?}"
    );

    // The requests: Twilio's parameters, the digit, and signatures the
    // `twilio` package computes the same way.
    let reqs = app.requests();
    assert!(reqs.len() >= 2, "{reqs:?}");
    let (first_path, first_sig, first) = &reqs[0];
    assert_eq!(first_path, "/voice");
    let field = |form: &[(String, String)], k: &str| {
        form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(
        field(first, "From").as_deref(),
        Some("+14155550132"),
        "{first:?}"
    );
    assert_eq!(field(first, "To").as_deref(), Some("+14155550301"));
    assert!(field(first, "CallSid").is_some_and(|s| s.starts_with("CA")));
    let (second_path, second_sig, second) = &reqs[1];
    assert_eq!(second_path, "/gathered");
    assert_eq!(field(second, "Digits").as_deref(), Some("1"), "{second:?}");
    for ((path, sig, form), full) in [
        ((first_path, first_sig, first), url.clone()),
        (
            (second_path, second_sig, second),
            format!("{base}/gathered"),
        ),
    ] {
        let params: Vec<(&str, &str)> =
            form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let expected = twilio_signature(&signing_key, &full, &params);
        assert_eq!(
            sig.as_deref(),
            Some(expected.as_str()),
            "signature of {path}"
        );
    }
}

#[tokio::test]
async fn twiml_that_is_garbage_unsupported_or_never_comes_is_a_clear_error_and_the_call_ends() {
    let dir = tempdir();
    let (s, sip) = twiml_server(dir.path());
    let key = s.key().to_owned();
    let (_app, base) = TwimlApp::start(&[
        (
            "/conference",
            "<Response><Conference>room-1</Conference></Response>",
        ),
        ("/garbage", "this is not xml at all"),
        ("/slow", "HANG"),
    ])
    .await;
    let cases = [
        ("conference", "+14155550302", "+14155550133", "Conference"),
        ("garbage", "+14155550303", "+14155550134", "not TwiML"),
        ("slow", "+14155550304", "+14155550135", "timed out"),
    ];
    for (path, number, _, _) in &cases {
        inbound_route(
            &s,
            &key,
            number,
            json!({"type": "twiml", "url": format!("{base}/{path}")}),
        )
        .await;
    }
    let mut callers = Vec::new();
    for (path, number, from, _) in &cases {
        // The gateway apologises and hangs up: the caller waits for its BYE.
        let scenario = Uac::new(from).invite(MEDIA).answered().await_bye().build();
        callers.push(Sipp::uac(dir.path(), path, &scenario, sip, number));
    }
    for (path, _, from, reason) in &cases {
        let conv = conversation_of(&s, &key, from).await;
        let events = timeline_until(&s, &key, &conv, |ev| has(ev, "ivr.error", |_| true)).await;
        let error = events
            .iter()
            .find(|e| e["kind"] == "ivr.error")
            .map(|e| e["meta"]["error"].as_str().unwrap_or_default().to_owned())
            .unwrap();
        assert!(error.contains(reason), "{path}: {error}");
        assert!(
            error.contains(&format!("{base}/{path}")) || error.contains(path),
            "{path}: {error}"
        );
    }
    for c in callers {
        c.assert_ok().await;
    }
}

#[tokio::test]
async fn broken_flows_are_refused_with_line_and_reason_by_the_api_and_the_cli() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let broken = "name: x\nstart: a\nnodes:\n  a:\n    queu: { name: nurse }\n";
    let (code, body) = put_flow(&s, &key, "broken", broken).await;
    assert_eq!(code, 422, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("5:5") && msg.contains("unknown field \"queu\""),
        "{msg}"
    );
    let (code, _) = s.call("GET", "/v1/ivr/flows/broken", &key, None).await;
    assert_eq!(code, 404, "nothing was stored");
    // Checking without saving gives the same, structured.
    let check = s
        .client
        .post(s.url("/v1/ivr/check"))
        .bearer_auth(&key)
        .body(broken)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(check["ok"], false);
    assert_eq!(check["errors"][0]["line"], 5, "{check}");
    // A dispatch rule to a flow that does not exist is refused.
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(json!({"name": "in", "direction": "inbound", "numbers": ["+14155550310"], "allowed_sources": ["127.0.0.1/32"]})),
    )
    .await;
    let (code, body) = s
        .call(
            "POST",
            "/v1/sip/dispatch-rules",
            &key,
            Some(json!({"number": "+14155550310", "action": {"type": "ivr", "flow": "missing"}})),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("action.flow"),
        "{body}"
    );
    // The example flow is accepted; the CLI says where a broken file is wrong.
    let (code, saved) = put_flow(&s, &key, "front-door", &example_flow_always_open()).await;
    assert_eq!(code, 201, "{saved}");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let (code, out) = cli(dir.path(), &["ivr", "check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:5:5: error: node \"a\": unknown field \"queu\"",
            file.display()
        )),
        "{out}"
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ivr/healthcare.yaml");
    let (code, out) = cli(dir.path(), &["ivr", "check", example]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[tokio::test]
async fn queues_tasks_and_flows_stay_inside_their_tenant_and_grants() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let other = second_tenant(dir.path(), "other-clinic");
    setup_queues(&s, &key).await;
    s.ok(
        "PUT",
        "/v1/queues/chat",
        &key,
        Some(json!({"wrap_up_secs": 0})),
    )
    .await;
    for id in ["agent-a", "agent-b"] {
        s.ok(
            "PUT",
            &format!("/v1/agents/{id}"),
            &key,
            Some(json!({"display_name": id})),
        )
        .await;
    }
    let (code, _) = put_flow(&s, &key, "front-door", &example_flow_always_open()).await;
    assert_eq!(code, 201);
    let (_, conv) = s.patient_conversation(&key, "+14155550140").await;
    let (_, other_conv) = s.patient_conversation(&key, "+14155550141").await;

    // Another tenant sees none of it.
    for path in ["/v1/ivr/flows/front-door", "/v1/queues/nurse"] {
        let (code, _) = s.call("GET", path, &other, None).await;
        assert_eq!(code, 404, "{path}");
    }
    let (code, _) = s
        .call(
            "POST",
            "/v1/tasks",
            &other,
            Some(json!({"conversation_id": conv, "queue": "chat", "channel": "chat"})),
        )
        .await;
    assert_eq!(code, 404, "another tenant's conversation");

    // Staff who are not admins cannot change queues or flows.
    let a = s.mint(&key, "agent-a", "agent", &["*"]).await;
    let b = s.mint(&key, "agent-b", "agent", &["*"]).await;
    let (code, _) = s.call("PUT", "/v1/queues/x", &a, Some(json!({}))).await;
    assert_eq!(code, 403);
    let (code, _) = put_flow(&s, &a, "mine", &example_flow_always_open()).await;
    assert_eq!(code, 403);
    // An agent whose token reaches one conversation sees only it in the
    // inbox, and cannot work queues.
    let narrow = s.mint(&key, "agent-a", "agent", &[&conv]).await;
    let inbox = s.ok("GET", "/v1/inbox", &narrow, None).await;
    let ids: Vec<&str> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![conv.as_str()], "{inbox}");
    let (code, body) = s
        .call(
            "POST",
            "/v1/agents/me/state",
            &narrow,
            Some(json!({"state": "available"})),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let (code, _) = s
        .call(
            "POST",
            "/v1/tasks",
            &narrow,
            Some(json!({"conversation_id": other_conv, "queue": "chat", "channel": "chat"})),
        )
        .await;
    assert_eq!(code, 404, "a conversation outside the token's grants");
    let patient = s.mint(&key, "contact:x", "patient", &[&conv]).await;
    let (code, _) = s.call("GET", "/v1/inbox", &patient, None).await;
    assert_eq!(code, 403);

    // A chat routed to agent A: B cannot accept A's offer; A accepts once.
    let mut feed_a = Sse::open(
        &s.client,
        &s.url(&format!("/v1/agents/me/events?access_token={a}")),
    )
    .await;
    feed_a.next("hello", WAIT).await;
    s.ok(
        "POST",
        "/v1/agents/me/state",
        &a,
        Some(json!({"state": "available"})),
    )
    .await;
    let task = s
        .ok(
            "POST",
            "/v1/tasks",
            &key,
            Some(
                json!({"conversation_id": conv, "queue": "chat", "channel": "chat", "priority": 5}),
            ),
        )
        .await;
    let (code, _) = s
        .call(
            "POST",
            "/v1/tasks",
            &key,
            Some(json!({"conversation_id": conv, "queue": "chat", "channel": "chat"})),
        )
        .await;
    assert_eq!(code, 409, "one open task per conversation");
    let offer = feed_a.next("reservation", WAIT).await;
    assert_eq!(offer["task_id"], task["id"]);
    let rid = offer["id"].as_u64().unwrap();
    let (code, _) = s
        .call("POST", &format!("/v1/reservations/{rid}/accept"), &b, None)
        .await;
    assert_eq!(code, 404, "another agent's offer is not theirs to take");
    let accepted = s
        .ok("POST", &format!("/v1/reservations/{rid}/accept"), &a, None)
        .await;
    assert!(accepted["call"].is_null(), "a chat has no call: {accepted}");
    let me = s.ok("GET", "/v1/agents/me", &a, None).await;
    assert_eq!(me["tasks"][0]["id"], task["id"], "{me}");
    // B cannot complete A's task.
    let (code, _) = s
        .call(
            "POST",
            &format!("/v1/tasks/{}/complete", task["id"].as_str().unwrap()),
            &b,
            None,
        )
        .await;
    assert_eq!(code, 404);

    // The inbox follows changes live.
    let mut inbox = Sse::open(
        &s.client,
        &s.url(&format!("/v1/inbox/stream?access_token={a}")),
    )
    .await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "chat", "kind": "message", "actor": {"type": "patient"}, "body": "still dizzy"})),
    )
    .await;
    let row = inbox.next("conversation", WAIT).await;
    assert_eq!(row["conversation_id"], conv.as_str(), "{row}");
    assert_eq!(row["last_event"]["kind"], "message", "{row}");
    assert!(row["unread"].as_i64().unwrap() >= 1, "{row}");
    assert_eq!(row["patient"]["display_name"], "Test Patient");
}

#[tokio::test]
async fn nobody_takes_the_call_so_the_queue_overflows_to_a_voicemail_kept_on_the_timeline() {
    use common::phone::{baresip_dial, tone, tone_share};
    let dir = tempdir();
    let (s, sip) = voice_server_with(dir.path(), &[("CONTINUUM_IVR__VOICEMAIL_MAX_SECS", "3")]);
    let key = s.key().to_owned();
    s.ok(
        "PUT",
        "/v1/queues/nurse",
        &key,
        Some(json!({"overflow": [{"after_secs": 2, "action": {"type": "voicemail"}}]})),
    )
    .await;
    let flow = "name: vm\nstart: q\nnodes:\n  q:\n    say: \"Please hold.\"\n    queue: { name: nurse, priority: 1 }\n";
    let (code, body) = put_flow(&s, &key, "vm", flow).await;
    assert_eq!(code, 201, "{body}");
    inbound_route(
        &s,
        &key,
        "+14155550305",
        json!({"type": "ivr", "flow": "vm"}),
    )
    .await;
    // A real phone calls in, saying 440 Hz the whole time.
    let work = dir.path().join("phone");
    std::fs::create_dir_all(&work).unwrap();
    let (t440, rec) = (work.join("tone440.wav"), work.join("rec"));
    tone(&t440, 440, 8000, 120);
    let phone = baresip_dial(
        &work,
        "+14155550136",
        &t440,
        &rec,
        &format!("sip:+14155550305@127.0.0.1:{sip}"),
    );
    let conv = conversation_of(&s, &key, "+14155550136").await;
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "attachment", |_| true) && has(ev, "call.ended", |_| true)
    })
    .await;
    drop(phone);
    assert!(
        has(&events, "routing", |m| m["action"] == "queued"),
        "{events:?}"
    );
    assert!(
        has(&events, "routing", |m| m["action"] == "overflowed"
            && m["rule"]["action"] == "voicemail"),
        "{events:?}"
    );
    assert!(
        has(&events, "routing", |m| m["action"] == "voicemail"),
        "{events:?}"
    );
    // The voicemail: sealed like any attachment, and it is the caller's tone.
    let list = s
        .ok(
            "GET",
            &format!("/v1/attachments?conversation_id={conv}"),
            &key,
            None,
        )
        .await;
    let vm = list
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no voicemail attachment: {list}"));
    assert_eq!(vm["content_type"], "audio/wav", "{vm}");
    assert_eq!(vm["source"], "voicemail", "{vm}");
    let id = vm["id"].as_str().unwrap();
    let wav = s
        .client
        .get(s.url(&format!("/v1/attachments/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let path = work.join("voicemail.wav");
    std::fs::write(&path, &wav).unwrap();
    let (rate, samples) = common::phone::wav_samples(&path);
    assert_eq!(rate, 8000);
    assert!(samples.len() >= 8000 * 2, "{} samples", samples.len());
    let share = samples
        .chunks_exact(4000)
        .map(|w| tone_share(rate, w, 440.0))
        .fold(0.0, f64::max);
    assert!(
        share > 0.5,
        "the voicemail is not the caller's 440 Hz (share {share})"
    );
    let task_id = events
        .iter()
        .find(|e| e["kind"] == "routing" && e["meta"]["action"] == "queued")
        .unwrap()["meta"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = s
        .ok("GET", &format!("/v1/tasks/{task_id}"), &key, None)
        .await;
    assert_eq!(task["state"], "voicemail", "{task}");
}

#[tokio::test]
async fn a_text_on_a_queued_conversation_becomes_work_for_that_queue() {
    use common::providers::{StandIn, local_providers_env};
    let dir = tempdir();
    let provider = StandIn::start().await;
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: local_providers_env(&[]),
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    s.ok(
        "PUT",
        "/v1/queues/front-desk",
        &key,
        Some(json!({"wrap_up_secs": 0})),
    )
    .await;
    let token = "twilio-auth-token-for-tests";
    let p = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            &key,
            Some(json!({"name": "twilio", "kind": "twilio", "priority": 1,
                "channels": ["sms"], "senders": ["+14155550100"],
                "spec": {"account_sid": "AC0123", "base_url": provider.base},
                "credentials": {"auth_token": token}})),
        )
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550150").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/queue"),
        &key,
        Some(json!({"queue": "front-desk"})),
    )
    .await;
    // The patient texts: signed as Twilio signs.
    let url = s.url(&format!("/v1/messaging/twilio/{pid}/inbound"));
    let params = [
        ("MessageSid", "SM0001"),
        ("AccountSid", "AC0123"),
        ("From", "+14155550150"),
        ("To", "+14155550100"),
        ("Body", "Can someone call me about my results?"),
        ("NumMedia", "0"),
    ];
    let sig = twilio_signature(token, &url, &params);
    let resp = s
        .client
        .post(&url)
        .header("x-twilio-signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "routing", |m| m["action"] == "queued")
    })
    .await;
    let queued = events
        .iter()
        .find(|e| e["kind"] == "routing" && e["meta"]["action"] == "queued")
        .unwrap();
    assert_eq!(queued["meta"]["queue"], "front-desk", "{queued}");
    assert_eq!(queued["meta"]["channel"], "sms", "{queued}");
    let inbox = s.ok("GET", "/v1/inbox?queue=front-desk", &key, None).await;
    assert_eq!(
        inbox["items"][0]["conversation_id"],
        conv.as_str(),
        "{inbox}"
    );
    assert_eq!(inbox["items"][0]["task"]["state"], "waiting", "{inbox}");
    assert_eq!(
        inbox["items"][0]["last_activity"]["kind"], "message",
        "{inbox}"
    );
}

#[tokio::test]
async fn a_flow_follows_the_tenants_named_business_hours_calendar() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let flow = "name: cal\nstart: check\nhours: { calendar: main-clinic }\nnodes:\n  check:\n    branch:\n      - if: { open: false }\n        next: closed\n      - next: open\n  closed:\n    say: \"We are closed.\"\n    hangup: {}\n  open:\n    say: \"We are open.\"\n    hangup: {}\n";
    // A flow naming a calendar that does not exist is refused.
    let (code, body) = put_flow(&s, &key, "cal", flow).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hours.calendar"),
        "{body}"
    );
    // A broken calendar is refused with its line.
    let put_calendar = |src: &'static str| {
        s.client
            .put(s.url("/v1/ivr/calendars/main-clinic"))
            .bearer_auth(&key)
            .body(src)
            .send()
    };
    let resp = put_calendar("time_zone: Europe/Paris\nweekly:\n  someday: \"08:00-18:00\"\n")
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("3:"),
        "{body}"
    );
    // Closed every day: the caller hears the closed branch.
    let resp = put_calendar("time_zone: Europe/Paris\nweekly:\n  daily: closed\n")
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.text().await.unwrap()
    );
    let (code, body) = put_flow(&s, &key, "cal", flow).await;
    assert_eq!(code, 201, "{body}");
    inbound_route(
        &s,
        &key,
        "+14155550306",
        json!({"type": "ivr", "flow": "cal"}),
    )
    .await;
    let scenario = Uac::new("+14155550137")
        .invite(MEDIA)
        .answered()
        .await_bye()
        .build();
    let caller = Sipp::uac(dir.path(), "calendar", &scenario, sip, "+14155550306");
    let conv = conversation_of(&s, &key, "+14155550137").await;
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "ivr.step", |m| m["node"] == "closed")
    })
    .await;
    assert!(
        !has(&events, "ivr.step", |m| m["node"] == "open"),
        "{events:?}"
    );
    caller.assert_ok().await;
}

#[tokio::test]
async fn twiml_dial_bridges_the_caller_to_a_sip_desk_then_the_document_goes_on() {
    let dir = tempdir();
    let (s, sip) = twiml_server(dir.path());
    let key = s.key().to_owned();
    // The desk (sipp as a SIP phone) answers, talks two seconds, hangs up.
    let desk = Uas::ringing().answer().acked_then_bye(2000).build();
    let desk = Sipp::uas(dir.path(), "desk", Some(&desk));
    let (app, base) = TwimlApp::start(&[
        (
            "/voice",
            &*Box::leak(
                format!(
                    r#"<Response><Say>Connecting you.</Say><Dial timeout="20" action="/after">sip:desk@127.0.0.1:{}</Dial></Response>"#,
                    desk.port
                )
                .into_boxed_str(),
            ),
        ),
        ("/after", "<Response><Say>The desk hung up. Goodbye.</Say><Hangup/></Response>"),
    ])
    .await;
    inbound_route(
        &s,
        &key,
        "+14155550307",
        json!({"type": "twiml", "url": format!("{base}/voice")}),
    )
    .await;
    let scenario = Uac::new("+14155550138")
        .invite(MEDIA)
        .answered()
        .await_bye()
        .build();
    let caller = Sipp::uac(dir.path(), "dial-caller", &scenario, sip, "+14155550307");
    desk.assert_ok().await;
    caller.assert_ok().await;
    let reqs = app.requests();
    let after = reqs
        .iter()
        .find(|(p, _, _)| p == "/after")
        .unwrap_or_else(|| panic!("no request to the Dial action: {reqs:?}"));
    let status = after
        .2
        .iter()
        .find(|(k, _)| k == "DialCallStatus")
        .map(|(_, v)| v.as_str());
    assert_eq!(status, Some("completed"), "{after:?}");
    let conv = conversation_of(&s, &key, "+14155550138").await;
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "ivr.step", |m| m["verb"] == "Dial")
    })
    .await;
    assert!(!has(&events, "ivr.error", |_| true), "{events:?}");
}

#[tokio::test]
async fn a_patients_chat_on_a_queued_conversation_becomes_work_for_that_queue() {
    use futures::{SinkExt, StreamExt};
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    s.ok("PUT", "/v1/queues/front-desk", &key, Some(json!({})))
        .await;
    let (contact, conv) = s.patient_conversation(&key, "+14155550151").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/queue"),
        &key,
        Some(json!({"queue": "front-desk"})),
    )
    .await;
    let patient = s
        .ok(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": format!("contact:{contact}"), "role": "patient", "grants": {"conversations": [conv]}})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!(
        "{}/v1/conversations/{conv}/chat?token={patient}",
        s.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "chat", "body": "Can I get my lab results?", "client_id": "p-1"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    // Its ack, then the task.
    let deadline = Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("an ack within a minute")
            .unwrap()
            .unwrap();
        if m.to_text().unwrap_or_default().contains("\"p-1\"") {
            break;
        }
    }
    let events = timeline_until(&s, &key, &conv, |ev| {
        has(ev, "routing", |m| m["action"] == "queued")
    })
    .await;
    let queued = events
        .iter()
        .find(|e| e["kind"] == "routing" && e["meta"]["action"] == "queued")
        .unwrap();
    assert_eq!(queued["meta"]["channel"], "chat", "{queued}");
    assert_eq!(queued["meta"]["queue"], "front-desk", "{queued}");
}
