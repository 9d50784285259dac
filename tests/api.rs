//! The REST API end to end, against the real binary.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn walkthrough_two_channels_into_one_context() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (contact, conv) = s.patient_conversation(&key, "+1 (415) 555-2671").await;

    // The phone binding finds the patient, however the number is written.
    let found = s
        .ok("GET", "/v1/contacts?phone=%2B14155552671", &key, None)
        .await;
    assert_eq!(found["contacts"][0]["id"], contact);
    // Unescaped, as people type it: the `+` arrives as a space and still works.
    let found = s
        .ok("GET", "/v1/contacts?phone=+14155552671", &key, None)
        .await;
    assert_eq!(found["contacts"][0]["id"], contact);
    let none = s
        .ok("GET", "/v1/contacts?phone=%2B14155552672", &key, None)
        .await;
    assert_eq!(none["contacts"].as_array().unwrap().len(), 0);

    let path = format!("/v1/conversations/{conv}/events");
    s.ok("POST", &path, &key, Some(json!({"channel": "video", "kind": "call.started", "actor": {"type": "staff", "id": "dr-lee"}, "meta": {"session_id": "room-1"}}))).await;
    s.ok("POST", &path, &key, Some(json!({"channel": "chat", "kind": "message", "actor": {"type": "patient"}, "body": "the rash is spreading"}))).await;
    s.ok("POST", &path, &key, Some(json!({"channel": "video", "kind": "call.failed", "actor": {"type": "system"}, "meta": {"session_id": "room-1", "reason": "ice_failed"}}))).await;
    s.ok("POST", &path, &key, Some(json!({"channel": "voice", "kind": "channel.switched", "actor": {"type": "system"}, "meta": {"from": "video", "to": "voice", "reason": "video failed"}}))).await;
    s.ok("POST", &path, &key, Some(json!({"channel": "ivr", "kind": "triage.result", "actor": {"type": "bot", "id": "ivr"}, "meta": {"level": "urgent", "summary": "spreading rash"}}))).await;

    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context?events=3"),
            &key,
            None,
        )
        .await;
    assert_eq!(ctx["patient"]["display_name"], "Test Patient");
    assert_eq!(ctx["patient"]["bindings"]["phone"], "+14155552671");
    assert_eq!(ctx["conversation"]["state"], "open");
    assert_eq!(ctx["recent_events"].as_array().unwrap().len(), 3);
    assert_eq!(ctx["recent_events"][2]["kind"], "triage.result");
    assert_eq!(ctx["last_triage"]["meta"]["level"], "urgent");
    assert_eq!(ctx["last_channel_switch"]["meta"]["to"], "voice");
    // The failed video session is closed and shows as pending, with the unanswered message.
    assert_eq!(ctx["open_media_sessions"].as_array().unwrap().len(), 0);
    let pending: Vec<&str> = ctx["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        ["awaiting_assignment", "unanswered_messages", "call_failed"],
        "{}",
        ctx["pending"]
    );
    let channels: Vec<&str> = ctx["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert!(
        channels.contains(&"video") && channels.contains(&"chat") && channels.contains(&"voice")
    );
}

#[tokio::test]
async fn timeline_pages_are_gap_free_and_idempotent() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550101").await;
    let path = format!("/v1/conversations/{conv}/events");
    for i in 0..120 {
        s.ok("POST", &path, &key, Some(json!({"channel": "sms", "kind": "message", "body": format!("m{i}"), "idempotency_key": format!("k{i}")}))).await;
    }
    // A retried append returns the original event with 200, not a new one
    // (a different request under the same key is a 409: tests/security.rs).
    let (status, again) = s
        .call(
            "POST",
            &path,
            &key,
            Some(
                json!({"channel": "sms", "kind": "message", "body": "m7", "idempotency_key": "k7"}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["seq"], 8);
    assert_eq!(again["body"], "m7");

    let mut after = 0;
    let mut seqs = Vec::new();
    loop {
        let page = s
            .ok("GET", &format!("{path}?after={after}&limit=50"), &key, None)
            .await;
        for e in page["events"].as_array().unwrap() {
            seqs.push(e["seq"].as_i64().unwrap());
        }
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seqs, (1..=120).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_appends_with_one_key_make_one_event() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550102").await;
    let path = format!("/v1/conversations/{conv}/events");
    let calls = (0..16).map(|_| s.call("POST", &path, &key, Some(json!({"channel": "chat", "kind": "message", "body": "once", "idempotency_key": "same"}))));
    let results = futures::future::join_all(calls).await;
    let created = results.iter().filter(|(st, _)| *st == 201).count();
    assert_eq!(created, 1, "exactly one append creates the event");
    assert!(results.iter().all(|(_, v)| v["seq"] == 1));
    let conv_now = s
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await;
    assert_eq!(conv_now["last_seq"], 1);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_writes_nothing() {
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![("CONTINUUM_SERVER__MAX_BODY_BYTES".into(), "100000".into())],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550103").await;
    let path = format!("/v1/conversations/{conv}/events");

    let raw = |body: &'static str| {
        s.client
            .post(s.url(&path))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = raw("{\"channel\": ").await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "malformed_json");

    let cases = [
        (
            json!({"channel": "fax", "kind": "message", "body": "x"}),
            422,
            "unknown variant `fax`",
        ),
        (
            json!({"channel": "sms", "kind": "message.exploded", "body": "x"}),
            422,
            "unknown event kind",
        ),
        (
            json!({"channel": "sms", "kind": "state.changed"}),
            422,
            "written by Continuum itself",
        ),
        (
            json!({"channel": "sms", "kind": "message", "body": ""}),
            422,
            "non-empty body",
        ),
        (
            json!({"channel": "video", "kind": "call.started"}),
            422,
            "meta.session_id",
        ),
        (
            json!({"channel": "sms", "kind": "message", "body": "x", "surprise": 1}),
            422,
            "unknown field",
        ),
        (
            json!({"channel": "sms", "kind": "message", "body": "x".repeat(70_000)}),
            422,
            "limit is 65536",
        ),
    ];
    for (body, status, needle) in cases {
        let (st, v) = s.call("POST", &path, &key, Some(body.clone())).await;
        assert_eq!(st, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    // Over the server's body limit: 413.
    let (st, v) = s
        .call(
            "POST",
            &path,
            &key,
            Some(json!({"channel": "sms", "kind": "message", "body": "x".repeat(200_000)})),
        )
        .await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    // Wrong content type.
    let r = s
        .client
        .post(s.url(&path))
        .bearer_auth(&key)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let (st, v) = s
        .call(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": "X", "phone": "555-1234"})),
        )
        .await;
    assert_eq!(st, 422);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("E.164"),
        "{v}"
    );
    let (st, _) = s
        .call(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": "Dup", "phone": "+14155550103"})),
        )
        .await;
    assert_eq!(st, 409, "a phone binds to one contact");
    let (st, _) = s
        .call(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": "X", "date_of_birth": "1990-02-31"})),
        )
        .await;
    assert_eq!(st, 422);

    // Invalid transitions.
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/reopen"),
            &key,
            None,
        )
        .await;
    assert_eq!(st, 409);
    assert_eq!(v["error"]["code"], "invalid_transition");
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/close"),
        &key,
        None,
    )
    .await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/assign"),
            &key,
            Some(json!({"assignee": "dr"})),
        )
        .await;
    assert_eq!(st, 409);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reopen it first")
    );
    let (st, _) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/queue"),
            &key,
            None,
        )
        .await;
    assert_eq!(st, 422, "queue needs a name");

    // Nothing but the close was written.
    let c = s
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await;
    assert_eq!(
        c["last_seq"], 1,
        "only the state change is on the timeline: {c}"
    );
    assert_eq!(c["state"], "closed");

    // Unknown routes and methods answer JSON too.
    let (st, v) = s.call("GET", "/v1/nothing-here", &key, None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, v) = s.call("PUT", "/v1/contacts", &key, None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (st, _) = s.call("GET", "/v1/conversations?limit=0", &key, None).await;
    assert_eq!(st, 422);
    // An unknown enum value in the query is malformed (400), and says which field.
    let (st, v) = s
        .call("GET", "/v1/conversations?state=sleeping", &key, None)
        .await;
    assert_eq!(st, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("state") && msg.contains("sleeping"), "{msg}");
}

#[tokio::test]
async fn lifecycle_and_reopen_on_inbound() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550104").await;
    let c = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/queue"),
            &key,
            Some(json!({"queue": "triage"})),
        )
        .await;
    assert_eq!(
        (c["state"].as_str(), c["queue"].as_str()),
        (Some("queued"), Some("triage"))
    );
    let c = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/assign"),
            &key,
            Some(json!({"assignee": "dr-lee"})),
        )
        .await;
    assert_eq!(c["state"], "active");
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/close"),
        &key,
        Some(json!({"reason": "resolved"})),
    )
    .await;
    // Staff writing to a closed conversation does not reopen it; the patient does.
    s.ok("POST", &format!("/v1/conversations/{conv}/events"), &key, Some(json!({"channel": "chat", "kind": "note", "actor": {"type": "staff", "id": "dr-lee"}, "body": "filed"}))).await;
    assert_eq!(
        s.ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
            .await["state"],
        "closed"
    );
    let e = s.ok("POST", &format!("/v1/conversations/{conv}/events"), &key, Some(json!({"channel": "sms", "kind": "message", "actor": {"type": "patient"}, "body": "it came back"}))).await;
    let c = s
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await;
    assert_eq!(c["state"], "open");
    let page = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
        .await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "state.changed",
            "assigned",
            "state.changed",
            "assigned",
            "state.changed",
            "note",
            "state.changed",
            "message"
        ]
    );
    assert_eq!(e["seq"], 8);

    // Filters.
    let open = s
        .ok("GET", "/v1/conversations?state=open", &key, None)
        .await;
    assert_eq!(open["conversations"].as_array().unwrap().len(), 1);
    let closed = s
        .ok("GET", "/v1/conversations?state=closed", &key, None)
        .await;
    assert_eq!(closed["conversations"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn tokens_roles_and_bad_jwts() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550105").await;
    let (_, other) = s.patient_conversation(&key, "+14155550106").await;
    let events = format!("/v1/conversations/{conv}/events");
    s.ok("POST", &events, &key, Some(json!({"channel": "chat", "kind": "note", "actor": {"type": "staff", "id": "dr"}, "body": "internal only"}))).await;

    let patient = s.mint(&key, "patient-7", "patient", &[&conv]).await;
    // The patient writes as themselves and never sees internal notes.
    let e = s
        .ok(
            "POST",
            &events,
            &patient,
            Some(json!({"channel": "chat", "kind": "message", "body": "hi doctor"})),
        )
        .await;
    assert_eq!(e["actor"], json!({"type": "patient", "id": "patient-7"}));
    let page = s.ok("GET", &events, &patient, None).await;
    assert!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "note")
    );
    let (st, _) = s
        .call(
            "POST",
            &events,
            &patient,
            Some(json!({"channel": "chat", "kind": "note", "body": "x"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = s.call("POST", &events, &patient, Some(json!({"channel": "chat", "kind": "message", "body": "x", "actor": {"type": "staff", "id": "dr"}}))).await;
    assert_eq!(st, 422, "actor spoofing is refused");
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            &patient,
            None,
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/conversations/{other}/events"),
            &patient,
            None,
        )
        .await;
    assert_eq!(
        st, 404,
        "an ungranted conversation looks like a missing one"
    );
    let (st, _) = s
        .call(
            "POST",
            "/v1/tokens",
            &patient,
            Some(json!({"identity": "x", "role": "admin"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .call(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": "x", "role": "patient", "grants": {"conversations": ["*"]}})),
        )
        .await;
    assert_eq!(st, 422, "patients never get wildcard grants");
    let (st, _) = s
        .call(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": "x", "role": "clinician", "ttl_seconds": 7200})),
        )
        .await;
    assert_eq!(st, 422, "ttl over the maximum is refused");

    // Clinicians read context; auditors read the audit log and nothing else.
    let clinician = s.mint(&key, "dr-lee", "clinician", &["*"]).await;
    s.ok(
        "GET",
        &format!("/v1/conversations/{conv}/context"),
        &clinician,
        None,
    )
    .await;
    let auditor = s.mint(&key, "aud-1", "auditor", &[]).await;
    let (st, _) = s.call("GET", &events, &auditor, None).await;
    assert_eq!(st, 403);
    let audit = s.ok("GET", "/v1/audit?limit=1000", &auditor, None).await;
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"timeline.read")
            && actions.contains(&"context.read")
            && actions.contains(&"event.append")
    );
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "denied"),
        "denials are audited"
    );

    // Forged: a valid token with one byte of the signature changed.
    let mut forged = clinician.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let (st, v) = s
        .call("GET", &events, &String::from_utf8(forged).unwrap(), None)
        .await;
    assert_eq!(st, 401, "{v}");
    // Another server's token (its own master key) is refused.
    let dir2 = tempdir();
    let s2 = Server::start(dir2.path());
    let foreign = s2.mint(s2.key(), "dr-lee", "clinician", &["*"]).await;
    let (st, _) = s.call("GET", &events, &foreign, None).await;
    assert_eq!(st, 401);
    // Expired: minted with a 1 s lifetime, checked after expiry plus leeway.
    let (_, out) = cli(
        dir.path(),
        &[
            "token",
            "--tenant",
            "dev",
            "--identity",
            "late",
            "--role",
            "clinician",
            "--conversation",
            "*",
            "--ttl",
            "1",
        ],
    );
    let expired = out.lines().next().unwrap().trim().to_owned();
    s.ok("GET", &events, &expired, None).await;
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let (st, v) = s.call("GET", &events, &expired, None).await;
    assert_eq!(st, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    let (st, _) = s.call("GET", &events, "garbage", None).await;
    assert_eq!(st, 401);
    let r = s.client.get(s.url(&events)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn api_keys_can_be_created_and_revoked() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let created = s
        .ok("POST", "/v1/api-keys", &key, Some(json!({"name": "crm"})))
        .await;
    let new_key = created["key"].as_str().unwrap().to_owned();
    s.ok("GET", "/v1/conversations", &new_key, None).await;
    let list = s.ok("GET", "/v1/api-keys", &key, None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(&new_key),
        "secrets are never listed"
    );
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/api-keys/{}", created["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s.call("GET", "/v1/conversations", &new_key, None).await;
    assert_eq!(st, 401, "a revoked key stops working at once");
}

#[tokio::test]
async fn live_stream_replays_then_follows() {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550107").await;
    let events = format!("/v1/conversations/{conv}/events");
    for i in 0..3 {
        s.ok(
            "POST",
            &events,
            &key,
            Some(json!({"channel": "sms", "kind": "message", "body": format!("before {i}")})),
        )
        .await;
    }
    // Resume after seq 1: the stream replays 2 and 3, then follows live.
    let resp = s
        .client
        .get(s.url(&format!("{events}/stream")))
        .bearer_auth(&key)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream().eventsource();
    for i in 0..3 {
        s.ok(
            "POST",
            &events,
            &key,
            Some(json!({"channel": "whatsapp", "kind": "message", "body": format!("live {i}")})),
        )
        .await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("stream event within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(ev.event, "timeline");
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id, v["seq"].to_string());
        seqs.push(v["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, [2, 3, 4, 5, 6]);
    // Another tenant's conversation id cannot be streamed.
    let (st, _) = s
        .call(
            "GET",
            "/v1/conversations/00000000-0000-0000-0000-000000000000/events/stream",
            &key,
            None,
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn operations_endpoints() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, conv) = s.patient_conversation(&key, "+14155550108").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "sms", "kind": "message", "body": "x"})),
    )
    .await;
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "continuum_http_requests_total",
        "continuum_http_request_duration_seconds_bucket",
        "continuum_events_written_total",
        "continuum_outbox_depth",
        "continuum_audit_records_total",
        "continuum_store_commit_seconds_bucket",
    ] {
        assert!(metrics.contains(m), "metrics lack {m}");
    }
    let doc: serde_json::Value = s
        .client
        .get(s.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/tokens",
        "/v1/contacts",
        "/v1/conversations/{id}/events",
        "/v1/conversations/{id}/context",
        "/v1/conversations/{id}/events/stream",
        "/v1/audit",
        "/v1/webhooks",
    ] {
        assert!(doc["paths"][p].is_object(), "openapi lacks {p}");
    }
    assert!(doc["components"]["schemas"]["Event"].is_object());
}

#[tokio::test]
async fn staff_and_contact_updates() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let st = s.ok("POST", "/v1/staff", &key, Some(json!({"display_name": "Dr. Grace Lee", "role": "clinician", "email": "lee@example.org"}))).await;
    assert_eq!(st["role"], "clinician");
    let (code, _) = s
        .call(
            "POST",
            "/v1/staff",
            &key,
            Some(json!({"display_name": "P", "role": "patient"})),
        )
        .await;
    assert_eq!(code, 422, "patients are not staff");
    let list = s.ok("GET", "/v1/staff", &key, None).await;
    assert_eq!(list[0]["display_name"], "Dr. Grace Lee");
    let clinician = s.mint(&key, "dr-lee", "clinician", &["*"]).await;
    let (code, _) = s.call("GET", "/v1/staff", &clinician, None).await;
    assert_eq!(code, 403, "managing staff is for admins");

    let c = s
        .ok(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": "Ada", "phone": "+14155550600", "app_user_id": "u-1"})),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    let c = s
        .ok(
            "PATCH",
            &format!("/v1/contacts/{id}"),
            &key,
            Some(json!({"phone": "", "whatsapp": "+44 7911 123456"})),
        )
        .await;
    assert_eq!(
        c["bindings"],
        json!({"whatsapp": "+447911123456", "app_user_id": "u-1"})
    );
    assert_eq!(c["display_name"], "Ada", "absent fields are kept");
    // The old number no longer finds her; the new WhatsApp id does.
    assert_eq!(
        s.ok("GET", "/v1/contacts?phone=%2B14155550600", &key, None)
            .await["contacts"],
        json!([])
    );
    let found = s
        .ok("GET", "/v1/contacts?whatsapp=%2B447911123456", &key, None)
        .await;
    assert_eq!(found["contacts"][0]["id"], id);
    let found = s
        .ok("GET", "/v1/contacts?app_user_id=u-1", &key, None)
        .await;
    assert_eq!(found["contacts"][0]["id"], id);
    let (code, _) = s
        .call(
            "GET",
            "/v1/contacts?phone=%2B14155550600&app_user_id=u-1",
            &key,
            None,
        )
        .await;
    assert_eq!(code, 422, "one binding at a time");

    // Cursor pagination over contacts.
    for i in 0..5 {
        s.ok(
            "POST",
            "/v1/contacts",
            &key,
            Some(json!({"display_name": format!("P{i}")})),
        )
        .await;
    }
    let page1 = s.ok("GET", "/v1/contacts?limit=4", &key, None).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = s
        .ok(
            "GET",
            &format!("/v1/contacts?limit=4&cursor={cursor}"),
            &key,
            None,
        )
        .await;
    assert_eq!(
        page1["contacts"].as_array().unwrap().len() + page2["contacts"].as_array().unwrap().len(),
        6
    );
    assert!(page2["next_cursor"].is_null());
}

#[tokio::test]
async fn conversation_list_filters_and_pages() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (contact, first) = s.patient_conversation(&key, "+14155550700").await;
    let mut ids = vec![first.clone()];
    for _ in 0..4 {
        let c = s
            .ok(
                "POST",
                "/v1/conversations",
                &key,
                Some(json!({"contact_id": contact, "tags": ["follow-up"]})),
            )
            .await;
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    let since = s
        .ok("GET", &format!("/v1/conversations/{}", ids[4]), &key, None)
        .await["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    s.ok(
        "POST",
        &format!("/v1/conversations/{first}/assign"),
        &key,
        Some(json!({"assignee": "dr-lee"})),
    )
    .await;

    let mine = s
        .ok("GET", "/v1/conversations?assignee=dr-lee", &key, None)
        .await;
    assert_eq!(mine["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(mine["conversations"][0]["id"], first);
    let recent = s
        .ok(
            "GET",
            &format!(
                "/v1/conversations?updated_since={}",
                since.replace('+', "%2B")
            ),
            &key,
            None,
        )
        .await;
    assert_eq!(
        recent["conversations"].as_array().unwrap().len(),
        2,
        "the newest and the one just assigned"
    );
    let (code, _) = s
        .call(
            "GET",
            "/v1/conversations?updated_since=yesterday",
            &key,
            None,
        )
        .await;
    assert_eq!(code, 422);

    // Pages of 2 cover all 5 exactly once, most recently updated first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page = s
            .ok(
                "GET",
                &format!("/v1/conversations?limit=2{q}&contact_id={contact}"),
                &key,
                None,
            )
            .await;
        seen.extend(
            page["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen[0], first,
        "the assignment made it the most recently updated"
    );
    // A token granted one conversation lists only that one.
    let narrow = s.mint(&key, "agent-1", "agent", &[&ids[2]]).await;
    let list = s.ok("GET", "/v1/conversations", &narrow, None).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(list["conversations"][0]["id"], ids[2]);
}
