//! SMS and WhatsApp end to end over real sockets: provider webhooks signed by
//! the official `twilio` package, the durable outbox against a scripted
//! provider stand-in (failures, rate limits, timeouts, failover, a kill -9
//! mid-batch), opt-out keywords, Meta's handshake and signatures.

mod common;
#[path = "../crates/smpp/tests/smsc/mod.rs"]
#[allow(dead_code)]
mod smsc;

use common::providers::{Behaviour, StandIn, twilio_signature};
use common::sipp::eventually;
use common::{Opts, Server, tempdir};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const PATIENT: &str = "+14155550100";
const CLINIC: &str = "+14155559999";
const TOKEN: &str = "twilio-auth-token-for-tests";

fn opts() -> Opts {
    Opts {
        env: common::providers::local_providers_env(&[
            ("CONTINUUM_MESSAGING__BACKOFF_BASE_MS", "50"),
            ("CONTINUUM_MESSAGING__BACKOFF_MAX_SECS", "1"),
            ("CONTINUUM_MESSAGING__REQUEST_TIMEOUT_SECS", "2"),
        ]),
        ..Default::default()
    }
}

async fn twilio_provider(s: &Server, stand_in: &StandIn, name: &str, priority: i64) -> Value {
    s.ok(
        "POST",
        "/v1/messaging/providers",
        s.key(),
        Some(json!({
            "name": name, "kind": "twilio", "priority": priority,
            "channels": ["sms", "whatsapp"], "senders": [CLINIC],
            "spec": {"account_sid": "AC0123", "base_url": stand_in.base},
            "credentials": {"auth_token": TOKEN},
        })),
    )
    .await
}

/// Posts a Twilio webhook signed by the official library; returns the status.
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

async fn send_sms(s: &Server, conv: &str, body: &str) -> (u16, Value) {
    s.call(
        "POST",
        &format!("/v1/conversations/{conv}/messages"),
        s.key(),
        Some(json!({"channel": "sms", "body": body})),
    )
    .await
}

async fn message_state(s: &Server, id: &str) -> String {
    s.ok("GET", &format!("/v1/messages/{id}"), s.key(), None)
        .await["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_state(s: &Server, id: &str, want: &str) -> Value {
    let v = eventually(s, s.key(), &format!("/v1/messages/{id}"), |m| {
        m["state"] == want
    })
    .await;
    assert_eq!(v["state"], want, "message {id}: {v}");
    v
}

#[tokio::test]
async fn inbound_sms_signed_by_twilio_lands_once_and_forgeries_are_refused() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    let p = twilio_provider(&s, &stand_in, "twilio", 1).await;
    let url = p["inbound_url"].as_str().unwrap().to_owned();
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    let params = [
        ("From", PATIENT),
        ("To", CLINIC),
        ("Body", "My rash is worse today"),
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("AccountSid", "AC0123"),
        ("NumMedia", "0"),
    ];
    assert_eq!(post_signed(&s, &url, &params).await, 200);
    // Twilio re-sends on a timeout: the same MessageSid is stored once.
    assert_eq!(post_signed(&s, &url, &params).await, 200);
    let events = timeline(&s, &conv).await;
    let messages: Vec<&Value> = events.iter().filter(|e| e["kind"] == "message").collect();
    assert_eq!(messages.len(), 1, "{events:?}");
    assert_eq!(messages[0]["channel"], "sms");
    assert_eq!(messages[0]["body"], "My rash is worse today");
    assert_eq!(messages[0]["actor"]["type"], "patient");

    // Tampered body: signed params, different Body sent.
    let sig = twilio_signature(TOKEN, &url, &params);
    let mut tampered = params;
    tampered[2] = ("Body", "Call me at midnight");
    let r = s
        .client
        .post(&url)
        .header("x-twilio-signature", &sig)
        .form(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Twilio-Signature"),
        "{body}"
    );
    // Signed for another URL.
    let other = twilio_signature(TOKEN, "https://evil.example/hook", &params);
    let r = s
        .client
        .post(&url)
        .header("x-twilio-signature", other)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // No header; garbage header.
    let r = s.client.post(&url).form(&params).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .client
        .post(&url)
        .header("x-twilio-signature", "%%%")
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another auth token (another tenant's) does not sign for this provider.
    let wrong = {
        let sig = common::providers::twilio_signature("someone-elses-token", &url, &params);
        s.client
            .post(&url)
            .header("x-twilio-signature", sig)
            .form(&params)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(wrong.status(), 403);
    // Unknown provider id.
    let unknown = url.replace(
        p["id"].as_str().unwrap(),
        "0190aaaa-0000-7000-8000-000000000000",
    );
    assert_eq!(post_signed(&s, &unknown, &params).await, 404);
    let events = timeline(&s, &conv).await;
    assert_eq!(events.iter().filter(|e| e["kind"] == "message").count(), 1);

    // A number nobody knows gets a contact and a conversation of its own.
    let stranger = [
        ("From", "+14155550177"),
        ("To", CLINIC),
        ("Body", "hello?"),
        ("MessageSid", "SM00000000000000000000000000000002"),
    ];
    assert_eq!(post_signed(&s, &url, &stranger).await, 200);
    let found = s
        .ok("GET", "/v1/contacts?phone=%2B14155550177", s.key(), None)
        .await;
    assert_eq!(found["contacts"].as_array().unwrap().len(), 1, "{found}");
}

#[tokio::test]
async fn outbound_sms_goes_through_the_outbox_and_receipts_update_it_in_any_order() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    let p = twilio_provider(&s, &stand_in, "twilio", 1).await;
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    let (status, m) = send_sms(&s, &conv, "Your results are ready").await;
    assert_eq!(status, 202, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.field("To"), Some(PATIENT));
    assert_eq!(r.field("From"), Some(CLINIC));
    assert_eq!(r.field("Body"), Some("Your results are ready"));
    assert!(r.authorization.as_deref().unwrap().starts_with("Basic "));
    assert_eq!(r.our_id().as_deref(), Some(id.as_str()));
    let sent = wait_state(&s, &id, "sent").await;
    let sid = sent["provider_message_id"].as_str().unwrap().to_owned();

    // Receipts, out of order: delivered, then a late sent.
    let cb = r.field("StatusCallback").unwrap().to_owned();
    assert!(cb.starts_with(p["status_url"].as_str().unwrap()), "{cb}");
    for status in ["delivered", "sent"] {
        let params = [
            ("MessageSid", sid.as_str()),
            ("MessageStatus", status),
            ("From", CLINIC),
            ("To", PATIENT),
        ];
        assert_eq!(post_signed(&s, &cb, &params).await, 200);
    }
    assert_eq!(message_state(&s, &id).await, "delivered");
    let events = timeline(&s, &conv).await;
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "delivery.status")
        .map(|e| e["meta"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "delivered"], "{events:?}");
    let msg_event = events.iter().find(|e| e["kind"] == "message").unwrap();
    assert_eq!(msg_event["meta"]["message_id"], id.as_str());
    // Exactly one request reached the provider.
    assert_eq!(stand_in.requests().len(), 1);

    // Idempotency: the same key returns the same message, sends nothing new.
    let body = json!({"channel": "sms", "body": "once", "idempotency_key": "k-1"});
    let path = format!("/v1/conversations/{conv}/messages");
    let (a, first) = s.call("POST", &path, s.key(), Some(body.clone())).await;
    let (b, second) = s.call("POST", &path, s.key(), Some(body)).await;
    assert_eq!((a, b), (202, 200));
    assert_eq!(first["id"], second["id"]);
    stand_in.wait_for(|r| r.len() >= 2).await;
    wait_state(&s, first["id"].as_str().unwrap(), "sent").await;
    assert_eq!(stand_in.requests().len(), 2);
}

#[tokio::test]
async fn retries_fail_over_and_dead_letter_without_sending_twice() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let broken = StandIn::start().await;
    broken.set_default(Behaviour::Fail);
    let healthy = StandIn::start().await;
    let primary = twilio_provider(&s, &broken, "primary", 1).await;
    twilio_provider(&s, &healthy, "secondary", 2).await;
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (st, m) = send_sms(&s, &conv, &format!("reminder {i}")).await;
        assert_eq!(st, 202, "{m}");
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    let got = healthy.wait_for(|r| r.len() >= 10).await;
    assert_eq!(got.len(), 10);
    for id in &ids {
        wait_state(&s, id, "sent").await;
    }
    // Each message: at most 3 tries on the primary (messaging.attempts_per_
    // provider; fewer once the primary is known to be down), one on the secondary.
    let per_message = |reqs: &[common::providers::Request]| {
        let mut n: HashMap<String, usize> = HashMap::new();
        for r in reqs {
            *n.entry(r.our_id().unwrap()).or_default() += 1;
        }
        n
    };
    let on_primary = per_message(&broken.requests());
    assert!(
        on_primary.values().all(|n| (1..=3).contains(n)),
        "{on_primary:?}"
    );
    assert!(
        per_message(&healthy.requests()).values().all(|n| *n == 1),
        "sent twice"
    );
    let metrics = common::sipp::metrics(&s).await;
    assert!(
        metrics.contains("continuum_messaging_provider_requests_total"),
        "{metrics}"
    );
    let primary_id = primary["id"].as_str().unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("continuum_messaging_provider_requests_total")
                && l.contains(&format!(r#"provider="{primary_id}""#))
                && l.contains(r#"outcome="retryable""#)
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("continuum_messaging_provider_error_rate")
                && l.contains(primary_id)
                && l.ends_with(" 1")),
        "the primary's error rate is 100%: {metrics}"
    );

    // Rate limited, then accepted: retried after Retry-After, sent once.
    // (The primary failed every recent request: new messages start on the
    // secondary now.)
    healthy.plan([Behaviour::RateLimit(1)]);
    let (_, m) = send_sms(&s, &conv, "after a 429").await;
    let id = m["id"].as_str().unwrap().to_owned();
    wait_state(&s, &id, "sent").await;
    let tries: Vec<String> = healthy
        .requests()
        .iter()
        .filter(|r| r.our_id().as_deref() == Some(&id))
        .map(|r| r.answered.clone())
        .collect();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[0], "429");
}

#[tokio::test]
async fn permanent_errors_and_hangs_are_not_failed_over() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let first = StandIn::start().await;
    let second = StandIn::start().await;
    twilio_provider(&s, &first, "first", 1).await;
    twilio_provider(&s, &second, "second", 2).await;
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    // A recipient the provider refuses for good: dead-lettered, not retried
    // anywhere (no provider reaches an invalid number).
    first.plan([Behaviour::Reject(400, 21211)]);
    let (_, m) = send_sms(&s, &conv, "to a bad number").await;
    let failed = wait_state(&s, m["id"].as_str().unwrap(), "failed").await;
    assert!(
        failed["last_error"].as_str().unwrap().contains("21211"),
        "{failed}"
    );
    let events = timeline(&s, &conv).await;
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "delivery.status");
    assert_eq!(last["meta"]["status"], "failed");
    // A provider that takes the request and never answers: unconfirmed, and
    // never sent again (here or through the next provider).
    first.plan([Behaviour::Hang]);
    let (_, m) = send_sms(&s, &conv, "into the void").await;
    let id = m["id"].as_str().unwrap().to_owned();
    wait_state(&s, &id, "unconfirmed").await;
    assert_eq!(first.requests().len(), 2);
    assert!(second.requests().is_empty(), "{:?}", second.requests());
    // Its receipt arrives after all: the provider had it.
    let hung = &first.requests()[1];
    let cb = hung.field("StatusCallback").unwrap().to_owned();
    let params = [
        ("MessageSid", "SM99"),
        ("MessageStatus", "delivered"),
        ("From", CLINIC),
        ("To", PATIENT),
    ];
    assert_eq!(post_signed(&s, &cb, &params).await, 200);
    assert_eq!(message_state(&s, &id).await, "delivered");
}

#[tokio::test]
async fn stop_suppresses_every_send_until_start() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    let p = twilio_provider(&s, &stand_in, "twilio", 1).await;
    let url = p["inbound_url"].as_str().unwrap().to_owned();
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    let inbound = |body: &'static str, sid: &'static str| {
        [
            ("From", PATIENT),
            ("To", CLINIC),
            ("Body", body),
            ("MessageSid", sid),
        ]
    };
    assert_eq!(
        post_signed(
            &s,
            &url,
            &inbound(" Stop. ", "SM0000000000000000000000000000000a")
        )
        .await,
        200
    );
    // One confirmation, sent despite the opt-out.
    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].field("Body").unwrap().contains("unsubscribed"));
    // A second STOP changes nothing and is not answered again.
    assert_eq!(
        post_signed(
            &s,
            &url,
            &inbound("STOP", "SM0000000000000000000000000000000b")
        )
        .await,
        200
    );
    let (st, err) = send_sms(&s, &conv, "Reminder: visit tomorrow").await;
    assert_eq!(st, 409, "{err}");
    assert_eq!(err["error"]["code"], "opted_out");
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            s.key(),
            None,
        )
        .await;
    assert_eq!(ctx["opted_out"], json!(["sms"]), "{ctx}");
    let audit = s.ok("GET", "/v1/audit?limit=500", s.key(), None).await;
    assert!(
        audit.to_string().contains("message.suppressed"),
        "suppression must be audited"
    );
    assert_eq!(stand_in.requests().len(), 1);

    assert_eq!(
        post_signed(
            &s,
            &url,
            &inbound("start", "SM0000000000000000000000000000000c")
        )
        .await,
        200
    );
    stand_in.wait_for(|r| r.len() >= 2).await;
    let (st, m) = send_sms(&s, &conv, "Welcome back").await;
    assert_eq!(st, 202, "{m}");
    stand_in.wait_for(|r| r.len() >= 3).await;
    let kinds: Vec<String> = timeline(&s, &conv)
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"opt_out".to_owned()) && kinds.contains(&"opt_in".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn kill_9_mid_batch_loses_nothing_and_sends_nothing_twice() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let key = s.key().to_owned();
    let stand_in = StandIn::start().await;
    stand_in.set_default(Behaviour::SlowAccept(Duration::from_millis(100)));
    twilio_provider(&s, &stand_in, "twilio", 1).await;
    let (_, conv) = s.patient_conversation(&key, PATIENT).await;
    const N: usize = 300;
    // Queued 16 at a time, faster than the slow provider takes them: a
    // backlog, and a full window of requests in flight at the kill.
    use futures::StreamExt;
    let statuses: Vec<u16> = futures::stream::iter(0..N)
        .map(|i| {
            let (s, conv) = (&s, &conv);
            async move { send_sms(s, conv, &format!("batch {i}")).await.0 }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    stand_in.wait_for(|r| r.len() >= 50).await;
    s.kill9();
    let s = Server::start_with(dir.path(), opts());
    let done = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .all(|m| !matches!(m["state"].as_str(), Some("queued" | "sending")))
    };
    let path = format!("/v1/conversations/{conv}/messages");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let messages = loop {
        let v = s.ok("GET", &path, &key, None).await;
        if done(&v) || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), N);
    let mut received: HashMap<String, usize> = HashMap::new();
    for r in stand_in.requests() {
        *received.entry(r.our_id().unwrap()).or_default() += 1;
    }
    assert!(
        received.values().all(|n| *n == 1),
        "a message reached the provider twice"
    );
    let mut unconfirmed = 0;
    for m in messages {
        let id = m["id"].as_str().unwrap();
        match m["state"].as_str().unwrap() {
            "sent" => assert_eq!(received.get(id), Some(&1), "sent but never received: {m}"),
            // Claimed when the process died: flagged, not re-sent.
            "unconfirmed" => unconfirmed += 1,
            other => panic!("message {id} ended {other}: {m}"),
        }
    }
    assert!(
        unconfirmed <= 64,
        "{unconfirmed} unconfirmed: more than were in flight"
    );
    println!(
        "kill -9 mid-batch: {} received once, {unconfirmed} unconfirmed",
        received.len()
    );
}

#[tokio::test]
async fn whatsapp_needs_a_template_outside_the_window() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    let p = twilio_provider(&s, &stand_in, "twilio", 1).await;
    let (contact, conv) = s.patient_conversation(s.key(), PATIENT).await;
    s.ok(
        "PATCH",
        &format!("/v1/contacts/{contact}"),
        s.key(),
        Some(json!({"whatsapp": PATIENT})),
    )
    .await;
    let path = format!("/v1/conversations/{conv}/messages");
    let (st, err) = s
        .call(
            "POST",
            &path,
            s.key(),
            Some(json!({"channel": "whatsapp", "body": "hi"})),
        )
        .await;
    assert_eq!(st, 422, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("template"),
        "{err}"
    );
    // The patient writes on WhatsApp: the window opens.
    let url = p["inbound_url"].as_str().unwrap().to_owned();
    let wa_from = format!("whatsapp:{PATIENT}");
    let wa_to = format!("whatsapp:{CLINIC}");
    let params = [
        ("From", wa_from.as_str()),
        ("To", wa_to.as_str()),
        ("Body", "Is my appointment still on?"),
        ("MessageSid", "SM000000000000000000000000000000wa"),
        ("WaId", &PATIENT[1..]),
        ("ProfileName", "Pat"),
    ];
    assert_eq!(post_signed(&s, &url, &params).await, 200);
    let (st, m) = s
        .call(
            "POST",
            &path,
            s.key(),
            Some(json!({"channel": "whatsapp", "body": "Yes, 3 pm."})),
        )
        .await;
    assert_eq!(st, 202, "{m}");
    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    assert_eq!(reqs[0].field("To"), Some(wa_from.as_str()));
    let events = timeline(&s, &conv).await;
    assert!(events.iter().any(|e| e["kind"] == "message"
        && e["channel"] == "whatsapp"
        && e["actor"]["type"] == "patient"));
}

#[tokio::test]
async fn meta_handshake_and_signed_webhooks() {
    use hmac::{Hmac, Mac};
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    let p = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            s.key(),
            Some(json!({
                "name": "meta", "kind": "meta_whatsapp", "channels": ["whatsapp"], "senders": [CLINIC],
                "spec": {"phone_number_id": "1234567890", "base_url": stand_in.base},
                "credentials": {"access_token": "EAAB", "app_secret": "app-secret", "verify_token": "verify-me"},
            })),
        )
        .await;
    let hook = p["inbound_url"].as_str().unwrap().to_owned();
    let ok = s
        .client
        .get(format!(
            "{hook}?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let bad = s
        .client
        .get(format!(
            "{hook}?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);

    let (contact, conv) = s.patient_conversation(s.key(), PATIENT).await;
    s.ok(
        "PATCH",
        &format!("/v1/contacts/{contact}"),
        s.key(),
        Some(json!({"whatsapp": PATIENT})),
    )
    .await;
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": &CLINIC[1..], "phone_number_id": "1234567890"},
        "contacts": [{"profile": {"name": "Pat"}, "wa_id": &PATIENT[1..]}],
        "messages": [{"from": &PATIENT[1..], "id": "wamid.IN1", "timestamp": "1700000000", "type": "text", "text": {"body": "Photo of my knee coming"}}]
    }}]}]})
    .to_string();
    let sign = |b: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(b.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let post = |b: String, sig: String| {
        s.client
            .post(&hook)
            .header("x-hub-signature-256", sig)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    assert_eq!(post(body.clone(), sign(&body)).await.unwrap().status(), 200);
    assert_eq!(post(body.clone(), sign(&body)).await.unwrap().status(), 200);
    let tampered = body.replace("knee", "neck");
    assert_eq!(post(tampered, sign(&body)).await.unwrap().status(), 403);
    let events = timeline(&s, &conv).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "message" && e["channel"] == "whatsapp")
            .count(),
        1,
        "{events:?}"
    );
    // Inside the window now: a session message goes out through Meta.
    let (st, m) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/messages"),
            s.key(),
            Some(json!({"channel": "whatsapp", "body": "Thanks, received."})),
        )
        .await;
    assert_eq!(st, 202, "{m}");
    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    let sent = reqs[0].json.clone().unwrap();
    assert_eq!(sent["type"], "text", "{sent}");
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer EAAB"));
    let id = m["id"].as_str().unwrap().to_owned();
    let sent_state = wait_state(&s, &id, "sent").await;
    let wamid = sent_state["provider_message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Statuses out of order: read before delivered.
    let statuses = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": &CLINIC[1..], "phone_number_id": "1234567890"},
        "statuses": [
            {"id": wamid, "status": "read", "timestamp": "1700000300", "recipient_id": &PATIENT[1..]},
            {"id": wamid, "status": "delivered", "timestamp": "1700000200", "recipient_id": &PATIENT[1..]}
        ]
    }}]}]})
    .to_string();
    assert_eq!(
        post(statuses.clone(), sign(&statuses))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(message_state(&s, &id).await, "read");
}

#[tokio::test]
async fn smpp_aggregator_sends_receives_and_reports_receipts() {
    let mut smsc = smsc::Smsc::start(&["--system-id", "continuum", "--password", "pw"]).await;
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let p = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            s.key(),
            Some(json!({
                "name": "aggregator", "kind": "smpp", "channels": ["sms"], "senders": [CLINIC],
                "spec": {"host": "127.0.0.1", "port": smsc.port, "system_id": "continuum"},
                "credentials": {"password": "pw"},
            })),
        )
        .await;
    assert!(
        p.get("inbound_url").is_none(),
        "SMPP receives on its bind: {p}"
    );
    smsc.wait_for("bind", |v| {
        v["event"] == "pdu" && v["command"] == "bind_transceiver"
    })
    .await;
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    // A long message: concatenated segments through the aggregator.
    let long = "Your lab results are ready. ".repeat(8);
    let (st, m) = send_sms(&s, &conv, &long).await;
    assert_eq!(st, 202, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let first = smsc
        .wait_for("submit_sm", |v| {
            v["event"] == "pdu" && v["command"] == "submit_sm"
        })
        .await;
    assert_eq!(first["destination_addr"], &PATIENT[1..], "{first}");
    // The receipt (sent by the stand-in after the submit) moves it to delivered.
    wait_state(&s, &id, "delivered").await;
    assert!(
        smsc.pdus("submit_sm").len() >= 2,
        "a 224-character message is two segments or more"
    );
    // A handset message arrives on the bind and lands on the conversation.
    smsc.command(json!({"cmd": "mo", "from": &PATIENT[1..], "to": &CLINIC[1..], "text": "Thanks, see you Tuesday"}))
        .await;
    let events = eventually(
        &s,
        s.key(),
        &format!("/v1/conversations/{conv}/events?limit=100"),
        |v| {
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["body"] == "Thanks, see you Tuesday")
        },
    )
    .await;
    let mo = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["body"] == "Thanks, see you Tuesday")
        .cloned()
        .expect("the handset message on the timeline");
    assert_eq!(mo["channel"], "sms");
    assert_eq!(mo["actor"]["type"], "patient");
}

#[tokio::test]
async fn messaging_endpoints_keep_tenants_and_grants_apart() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let a = s.key().to_owned();
    let b = common::second_tenant(dir.path(), "clinic-b");
    let stand_in = StandIn::start().await;
    let p = twilio_provider(&s, &stand_in, "twilio", 1).await;
    let (_, conv) = s.patient_conversation(&a, PATIENT).await;
    let (_, other_conv) = s.patient_conversation(&a, "+14155550111").await;
    let (st, m) = send_sms(&s, &conv, "for A's patient").await;
    assert_eq!(st, 202, "{m}");
    let mid = m["id"].as_str().unwrap().to_owned();
    let pid = p["id"].as_str().unwrap().to_owned();

    // Tenant B: A's providers, conversation and message do not exist.
    let (st, list) = s.call("GET", "/v1/messaging/providers", &b, None).await;
    assert_eq!((st, list.as_array().map(Vec::len)), (200, Some(0)));
    for (method, path, body) in [
        ("DELETE", format!("/v1/messaging/providers/{pid}"), None),
        (
            "POST",
            format!("/v1/conversations/{conv}/messages"),
            Some(json!({"channel": "sms", "body": "x"})),
        ),
        ("GET", format!("/v1/conversations/{conv}/messages"), None),
        ("GET", format!("/v1/messages/{mid}"), None),
        (
            "POST",
            format!("/v1/conversations/{conv}/visit-link"),
            Some(json!({})),
        ),
    ] {
        let (st, v) = s.call(method, &path, &b, body).await;
        assert_eq!(st, 404, "tenant B {method} {path}: {v}");
    }

    // A clinician granted another conversation: 404 for this one.
    let clinician = s.mint(&a, "dr-b", "clinician", &[&other_conv]).await;
    for (method, path, body) in [
        (
            "POST",
            format!("/v1/conversations/{conv}/messages"),
            Some(json!({"channel": "sms", "body": "x"})),
        ),
        ("GET", format!("/v1/conversations/{conv}/messages"), None),
        ("GET", format!("/v1/messages/{mid}"), None),
        (
            "POST",
            format!("/v1/conversations/{conv}/visit-link"),
            Some(json!({})),
        ),
    ] {
        let (st, v) = s.call(method, &path, &clinician, body).await;
        assert_eq!(st, 404, "ungranted clinician {method} {path}: {v}");
    }
    // Granted, a clinician may send; providers stay admin business.
    let granted = s.mint(&a, "dr-a", "clinician", &[&conv]).await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/messages"),
            &granted,
            Some(json!({"channel": "sms", "body": "from the nurse"})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["from"], CLINIC);
    let (st, _) = s
        .call("GET", "/v1/messaging/providers", &granted, None)
        .await;
    assert_eq!(st, 403);
    // A patient cannot send texts as the clinic.
    let patient = s.mint(&a, "pat", "patient", &[&conv]).await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/messages"),
            &patient,
            Some(json!({"channel": "sms", "body": "x"})),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    // Field errors name the field.
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/messages"),
            &a,
            Some(json!({"channel": "sms", "body": "x", "from": "+19999999999"})),
        )
        .await;
    assert_eq!(st, 422);
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("from:"),
        "{v}"
    );
    let (st, v) = s
        .call("POST", "/v1/messaging/providers", &a, Some(json!({"name": "x", "kind": "twilio", "channels": ["sms"], "senders": [CLINIC], "spec": {}, "credentials": {"auth_token": "t"}})))
        .await;
    assert_eq!(st, 422);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.account_sid"),
        "{v}"
    );
}

#[tokio::test]
async fn visit_link_by_text_joins_the_conversations_room() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts());
    let stand_in = StandIn::start().await;
    twilio_provider(&s, &stand_in, "twilio", 1).await;
    let (_, conv) = s.patient_conversation(s.key(), PATIENT).await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/visit-link"),
            s.key(),
            Some(json!({"ttl_secs": 600})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    let reqs = stand_in.wait_for(|r| !r.is_empty()).await;
    let body = reqs[0].field("Body").unwrap().to_owned();
    assert!(body.starts_with("Join your video visit: http"), "{body}");
    assert!(
        body.contains(&format!("/visit?room={room}&conversation={conv}#token=")),
        "{body}"
    );
    // The texted token opens this room and conversation, as a patient.
    let token = body.split("#token=").nth(1).unwrap();
    let (st, r) = s
        .call("GET", &format!("/v1/rooms/{room}"), token, None)
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            token,
            None,
        )
        .await;
    assert_eq!(st, 200);
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            s.key(),
            None,
        )
        .await;
    assert_eq!(
        ctx["last_handoff"]["meta"]["handoff"], "visit_link",
        "{ctx}"
    );
    assert_eq!(ctx["last_handoff"]["meta"]["room_id"], room.as_str());
}
