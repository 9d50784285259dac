//! Signed webhooks: delivered from a durable outbox, retried with backoff,
//! logged, and never sent to private addresses unless allowed.

mod common;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver on `addr` that fails the first `fail_first` requests with 500.
async fn receiver(
    listener: tokio::net::TcpListener,
    fail_first: usize,
) -> mpsc::UnboundedReceiver<Received> {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (tx, seen) = (tx.clone(), seen.clone());
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if n < fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let _ = tx.send(Received { headers, body });
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    rx
}

fn check_signature(secret: &str, r: &Received) -> Value {
    let header = r
        .headers
        .get("continuum-signature")
        .unwrap()
        .to_str()
        .unwrap();
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(v1).unwrap())
        .expect("valid HMAC-SHA256 signature");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(t.parse::<u64>().unwrap()) < 60,
        "signature timestamp is fresh"
    );
    serde_json::from_slice(&r.body).unwrap()
}

fn fast_retries() -> Opts {
    Opts {
        env: vec![
            ("CONTINUUM_WEBHOOKS__BACKOFF_BASE_MS".into(), "50".into()),
            ("CONTINUUM_WEBHOOKS__BACKOFF_MAX_SECS".into(), "1".into()),
        ],
        ..Default::default()
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a delivery within 20 s")
        .unwrap()
}

#[tokio::test]
async fn deliveries_are_signed_retried_and_logged() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut rx = receiver(listener, 2).await;
    let dir = tempdir();
    let s = Server::start_with(dir.path(), fast_retries());
    let key = s.key().to_owned();
    let hook = s.ok("POST", "/v1/webhooks", &key, Some(json!({"url": format!("http://127.0.0.1:{port}/hook"), "event_types": ["event.created"]}))).await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let (_, conv) = s.patient_conversation(&key, "+14155550500").await;
    let ev = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            Some(json!({"channel": "sms", "kind": "message", "body": "hello"})),
        )
        .await;

    let got = recv(&mut rx).await;
    let payload = check_signature(&secret, &got);
    assert_eq!(payload["type"], "event.created");
    assert_eq!(payload["data"]["seq"], ev["seq"]);
    assert_eq!(payload["data"]["conversation_id"], conv);
    assert_eq!(payload["data"]["body"], "hello");
    assert_eq!(
        got.headers.get("continuum-event-type").unwrap(),
        "event.created"
    );

    // Two failures, then success, all in the delivery log.
    let log_path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    // The attempt is recorded right after the receiver answers; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let log = s.ok("GET", &log_path, &key, None).await;
        let statuses: Vec<i64> = log
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|d| d["status"].as_i64().unwrap())
            .collect();
        if statuses.len() == 3 || std::time::Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(statuses, [500, 500, 204]);
    // Handing PHI to the endpoint is a disclosure, and is in the audit chain.
    let audit = s.ok("GET", "/v1/audit?limit=1000", &key, None).await;
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "webhook.deliver")
    );
    // Only subscribed types are sent: the conversation.created before it was not.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_outbox_survives_a_restart() {
    // Reserve a port, then leave it closed so deliveries fail.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempdir();
    let s = Server::start_with(dir.path(), fast_retries());
    let key = s.key().to_owned();
    let hook = s
        .ok(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook")})),
        )
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550501").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "chat", "kind": "message", "body": "while the receiver is down"})),
    )
    .await;
    let log_path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    // Wait until at least one attempt failed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = s.ok("GET", &log_path, &key, None).await;
        if log
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["error"].is_string())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill9();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let mut rx = receiver(listener, 0).await;
    let _s = Server::start_with(dir.path(), fast_retries());
    let mut types = Vec::new();
    while !(types.contains(&"event.created".to_owned())
        && types.contains(&"conversation.created".to_owned()))
    {
        let got = recv(&mut rx).await;
        let payload = check_signature(&secret, &got);
        if payload["type"] == "event.created" {
            assert_eq!(payload["data"]["body"], "while the receiver is down");
        }
        types.push(payload["type"].as_str().unwrap().to_owned());
    }
}

#[tokio::test]
async fn private_targets_are_refused_by_default() {
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![(
                "CONTINUUM_WEBHOOKS__ALLOW_PRIVATE_TARGETS".into(),
                "false".into(),
            )],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    for url in [
        "https://127.0.0.1:9000/hook",
        "https://10.0.0.5/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest",
        "https://[::ffff:192.168.1.1]/",
        // IPv4 in IPv6 disguises: RFC 2765 translated, NAT64, 6to4, Teredo.
        "https://[::ffff:0:7f00:1]/",
        "https://[64:ff9b::a00:1]/",
        "https://[64:ff9b:1:7f00:0:100::]/",
        "https://[2002:7f00:1::]/",
        "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    ] {
        let (st, v) = s
            .call("POST", "/v1/webhooks", &key, Some(json!({"url": url})))
            .await;
        assert_eq!(st, 422, "{url}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("allow_private_targets")
        );
    }
    let (st, _) = s
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": "https://8.8.8.8/hook", "event_types": ["bogus.type"]})),
        )
        .await;
    assert_eq!(st, 422);
    // Deliveries carry patient data: https, unless the host is listed.
    let (st, v) = s
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": "http://8.8.8.8/hook"})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("https"),
        "{v}"
    );
    assert_eq!(s.ok("GET", "/v1/webhooks", &key, None).await, json!([]));
}

#[tokio::test]
async fn thin_webhooks_carry_ids_and_kinds_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut rx = receiver(listener, 0).await;
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let url = format!("http://127.0.0.1:{port}/hook");
    let hook = s
        .ok(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": url, "event_types": ["event.created"], "payload": "thin"})),
        )
        .await;
    assert_eq!(hook["payload"], "thin");
    let (_, conv) = s.patient_conversation(&key, "+14155550501").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "sms", "kind": "message", "body": "my HIV results?", "meta": {"provider_id": "SM1"}})),
    )
    .await;
    let body = check_signature(hook["secret"].as_str().unwrap(), &recv(&mut rx).await);
    let data = &body["data"];
    assert_eq!(data["conversation_id"], conv);
    assert_eq!(data["kind"], "message");
    assert_eq!(data["seq"], 1);
    let text = body.to_string();
    assert!(
        !text.contains("HIV") && !text.contains("SM1"),
        "no PHI in a thin delivery: {text}"
    );
}
