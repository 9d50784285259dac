//! Voice as API objects: trunks (inbound numbers and sources, outbound
//! carriers with sealed digest passwords), dispatch rules, call records and
//! room PINs — validated field by field, kept within their tenant, and
//! closed to non-admin tokens.

mod common;
use common::sipp::{Sipp, eventually, kinds, outbound_trunk, voice_server};
use common::*;
use serde_json::{Value, json};

fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn trunks_and_rules_are_validated_sealed_and_kept_within_their_tenant() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let a = s.key().to_owned();
    let b = second_tenant(dir.path(), "clinic-b");

    // Inbound: numbers normalised to E.164, sources as CIDRs.
    let inbound = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &a,
            Some(json!({"name": "carrier in", "direction": "inbound",
                "numbers": ["+1 415 555 0100", "+14155550101"],
                "allowed_sources": ["203.0.113.0/24"]})),
        )
        .await;
    assert_eq!(inbound["direction"], "inbound", "{inbound}");
    assert_eq!(inbound["numbers"], json!(["+14155550100", "+14155550101"]));
    assert_eq!(inbound["has_password"], false);

    // Outbound with digest credentials: the password is never shown.
    let password = "s3cret-trunk-pass-0451";
    let outbound = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &a,
            Some(json!({"name": "carrier out", "direction": "outbound",
                "address": "sip.carrier.example:5060", "transport": "tcp",
                "caller_ids": ["+14155550100"], "max_concurrent_calls": 10,
                "credentials": {"username": "clinic-a", "password": password}})),
        )
        .await;
    assert_eq!(outbound["transport"], "tcp");
    // Not probed (its name does not resolve here): the keepalive knows nothing.
    assert_eq!(outbound["status"], "unknown", "{outbound}");
    assert!(
        inbound.get("status").is_none(),
        "inbound trunks are not probed: {inbound}"
    );
    assert_eq!(outbound["media_encryption"], "none", "plain RTP by default");
    assert_eq!(outbound["username"], "clinic-a");
    assert_eq!(outbound["has_password"], true);
    let out_id = outbound["id"].as_str().unwrap().to_owned();
    let listed = s.ok("GET", "/v1/sip/trunks", &a, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(password));
    assert!(
        !s.ok("GET", &format!("/v1/sip/trunks/{out_id}"), &a, None)
            .await
            .to_string()
            .contains(password)
    );
    // Sealed at rest: not in the database file in clear.
    let db = std::fs::read(dir.path().join("continuum.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("continuum.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the trunk password is in the database in clear"
        );
    }

    // Bad input: the message names the field and the reason.
    for (body, field) in [
        (
            json!({"name": "x", "direction": "inbound", "numbers": ["not a number"], "allowed_sources": ["10.0.0.0/8"]}),
            "numbers[0]",
        ),
        (
            json!({"name": "x", "direction": "inbound", "numbers": ["+14155550199"], "allowed_sources": ["10.0.0.0/33"]}),
            "allowed_sources[0]",
        ),
        (
            json!({"name": "x", "direction": "inbound", "numbers": ["+14155550199"]}),
            "allowed_sources",
        ),
        (
            json!({"name": "x", "direction": "inbound", "numbers": [], "allowed_sources": ["10.0.0.0/8"]}),
            "numbers",
        ),
        (
            json!({"name": "x", "direction": "outbound", "address": "127.0.0.1:5060", "caller_ids": ["+14155550100"], "max_concurrent_calls": 1}),
            "allow_private_trunks",
        ),
        (
            json!({"name": "x", "direction": "outbound", "address": "carrier.example:99999", "caller_ids": ["+14155550100"], "max_concurrent_calls": 1}),
            "address",
        ),
        (
            json!({"name": "x", "direction": "outbound", "address": "carrier.example", "caller_ids": ["+14155550100"], "max_concurrent_calls": 0}),
            "max_concurrent_calls",
        ),
        (
            json!({"name": "x", "direction": "outbound", "address": "carrier.example", "caller_ids": [], "max_concurrent_calls": 1}),
            "caller_ids",
        ),
        (
            json!({"name": "x", "direction": "outbound", "address": "carrier.example", "caller_ids": ["+14155550100"], "max_concurrent_calls": 1, "media_encryption": "zrtp"}),
            "media_encryption",
        ),
        (
            json!({"name": "", "direction": "outbound", "address": "carrier.example", "caller_ids": ["+14155550100"], "max_concurrent_calls": 1}),
            "name",
        ),
        (
            json!({"name": "x", "direction": "outbound", "address": "carrier.example", "caller_ids": ["+14155550100"], "max_concurrent_calls": 1, "credentials": {"username": "u", "password": ""}}),
            "credentials.password",
        ),
    ] {
        let (status, v) = s
            .call("POST", "/v1/sip/trunks", &a, Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} → {v}");
        assert!(
            error_message(&v).contains(field),
            "{body}: `{}` should name {field}",
            error_message(&v)
        );
    }
    let (status, v) = s
        .call(
            "POST",
            "/v1/sip/trunks",
            &a,
            Some(json!({"name": "x", "direction": "sideways"})),
        )
        .await;
    assert!(status == 400 || status == 422, "{status} {v}");
    assert!(
        !error_message(&v).contains("TrunkSpec"),
        "no Debug output: {v}"
    );

    // A number routes to one tenant: B cannot claim A's.
    let (status, v) = s
        .call(
            "POST",
            "/v1/sip/trunks",
            &b,
            Some(json!({"name": "b in", "direction": "inbound", "numbers": ["+14155550100"], "allowed_sources": ["198.51.100.7/32"]})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(error_message(&v).contains("+14155550100"), "{v}");

    // Tenant isolation: B sees none of A's trunks, and cannot delete them.
    assert_eq!(s.ok("GET", "/v1/sip/trunks", &b, None).await, json!([]));
    let (status, _) = s
        .call("GET", &format!("/v1/sip/trunks/{out_id}"), &b, None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call("DELETE", &format!("/v1/sip/trunks/{out_id}"), &b, None)
        .await;
    assert_eq!(status, 404);

    // Dispatch rules: one per number, `*` as the tenant's default.
    let rule = s
        .ok(
            "POST",
            "/v1/sip/dispatch-rules",
            &a,
            Some(json!({"number": "+1 (415) 555-0100", "action": {"type": "conversation", "queue": "front-desk"}})),
        )
        .await;
    assert_eq!(rule["number"], "+14155550100");
    let (status, v) = s
        .call(
            "POST",
            "/v1/sip/dispatch-rules",
            &a,
            Some(json!({"number": "+14155550100", "action": {"type": "room_pin"}})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    s.ok(
        "POST",
        "/v1/sip/dispatch-rules",
        &a,
        Some(json!({"number": "*", "action": {"type": "room_pin"}})),
    )
    .await;
    for (body, field) in [
        (
            json!({"number": "+14155550101", "action": {"type": "target", "name": "desk", "sip_uri": "http://x"}}),
            "action.sip_uri",
        ),
        (
            // Rung like a trunk: a private address needs sip.allow_private_trunks.
            json!({"number": "+14155550101", "action": {"type": "target", "name": "desk", "sip_uri": "sip:desk@10.0.0.5:5060"}}),
            "allow_private_trunks",
        ),
        (
            json!({"number": "555", "action": {"type": "room_pin"}}),
            "number",
        ),
    ] {
        let (status, v) = s
            .call("POST", "/v1/sip/dispatch-rules", &a, Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} → {v}");
        assert!(error_message(&v).contains(field), "{v}");
    }
    assert_eq!(
        s.ok("GET", "/v1/sip/dispatch-rules", &a, None)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.ok("GET", "/v1/sip/dispatch-rules", &b, None).await,
        json!([])
    );
    let rule_id = rule["id"].as_str().unwrap();
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/v1/sip/dispatch-rules/{rule_id}"),
            &b,
            None,
        )
        .await;
    assert_eq!(status, 404);
    s.ok(
        "DELETE",
        &format!("/v1/sip/dispatch-rules/{rule_id}"),
        &a,
        None,
    )
    .await;

    // Grants: a clinician's token manages no trunks or rules.
    let (_, conv) = s.patient_conversation(&a, "+14155550900").await;
    let token = s.ok("POST", "/v1/tokens", &a, Some(json!({"identity": "dr-ng", "role": "clinician", "grants": {"conversations": [conv]}}))).await["token"].as_str().unwrap().to_owned();
    for (method, path) in [("GET", "/v1/sip/trunks"), ("GET", "/v1/sip/dispatch-rules")] {
        let (status, _) = s.call(method, path, &token, None).await;
        assert_eq!(status, 403, "{method} {path}");
    }
    let (status, _) = s
        .call("POST", "/v1/sip/trunks", &token, Some(json!({"name": "x", "direction": "inbound", "numbers": ["+14155550177"], "allowed_sources": ["10.0.0.0/8"]})))
        .await;
    assert_eq!(status, 403);

    // Deleting a trunk frees its numbers.
    let in_id = inbound["id"].as_str().unwrap();
    s.ok("DELETE", &format!("/v1/sip/trunks/{in_id}"), &a, None)
        .await;
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &b,
        Some(json!({"name": "b in", "direction": "inbound", "numbers": ["+14155550100"], "allowed_sources": ["198.51.100.7/32"]})),
    )
    .await;
}

#[tokio::test]
async fn rooms_get_dial_in_pins_and_calls_stay_within_reach() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let a = s.key().to_owned();
    let b = second_tenant(dir.path(), "clinic-b");
    let (_, conv) = s.patient_conversation(&a, "+14155550901").await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &a,
            Some(json!({})),
        )
        .await;
    let pin = room["pin"].as_str().expect("a room has a dial-in PIN");
    assert!(
        pin.len() == 6 && pin.bytes().all(|c| c.is_ascii_digit()),
        "{pin}"
    );
    // Calls of a conversation: none yet; others' conversations are not found.
    assert_eq!(
        s.ok("GET", &format!("/v1/conversations/{conv}/calls"), &a, None)
            .await,
        json!([])
    );
    let (status, _) = s
        .call("GET", &format!("/v1/conversations/{conv}/calls"), &b, None)
        .await;
    assert_eq!(status, 404);
    let missing = "01a00000-0000-7000-8000-000000000000";
    let (status, v) = s
        .call("GET", &format!("/v1/calls/{missing}"), &a, None)
        .await;
    assert_eq!(status, 404, "{v}");
}

/// `method path` answers `token` exactly as it answers for a missing object.
async fn looks_missing(
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    real: &str,
) {
    let missing = "01a00000-0000-7000-8000-000000000000";
    let (status, v) = s.call(method, path, token, body.clone()).await;
    let (status_m, v_m) = s
        .call(method, &path.replace(real, missing), token, body)
        .await;
    assert_eq!(status, 404, "{method} {path}: {v}");
    assert_eq!(
        (status, &v),
        (status_m, &v_m),
        "{method} {path} must look exactly like a missing object"
    );
}

#[tokio::test]
async fn call_control_stays_within_its_tenant_and_grants() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let a = s.key().to_owned();
    let b = second_tenant(dir.path(), "clinic-b");
    // A's carrier: sipp's own UAS, which answers one call and fails on
    // anything but INVITE, ACK and BYE (a REFER would fail it).
    let uas = Sipp::uas(dir.path(), "carrier", None);
    outbound_trunk(&s, &a, uas.port, 4).await;
    let (_, conv) = s.patient_conversation(&a, "+14155550910").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/rooms"),
        &a,
        Some(json!({"waiting_room": false})),
    )
    .await;
    let (_, elsewhere) = s.patient_conversation(&a, "+14155550911").await;
    // Same tenant, short of what it takes: a patient of the conversation
    // (may not place or control calls: 403) and a clinician granted another
    // conversation (this one is out of reach: 404).
    let patient = s.mint(&a, "pat-1", "patient", &[&conv]).await;
    let stranger = s.mint(&a, "dr-other", "clinician", &[&elsewhere]).await;
    let calls_path = format!("/v1/conversations/{conv}/calls");

    // Dial-out into A's conversation.
    let dial = json!({"conversation_id": conv, "to": "+14155550910"});
    looks_missing(&s, &b, "POST", "/v1/calls", Some(dial.clone()), &conv).await;
    let (status, v) = s
        .call("POST", "/v1/calls", &patient, Some(dial.clone()))
        .await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = s
        .call("POST", "/v1/calls", &stranger, Some(dial.clone()))
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        s.ok("GET", &calls_path, &a, None).await,
        json!([]),
        "no call record was written"
    );

    // A call of A's, answered.
    let call = s.ok("POST", "/v1/calls", &a, Some(dial)).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let answered = eventually(&s, &a, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "answered"
    })
    .await;
    assert_eq!(answered["state"], "answered", "{answered}");
    for (what, body) in [
        ("hangup", None),
        ("dtmf", Some(json!({"digits": "123#"}))),
        (
            "transfer",
            Some(json!({"target": "sip:desk@pbx.example.org"})),
        ),
    ] {
        let path = format!("/v1/calls/{id}/{what}");
        looks_missing(&s, &b, "POST", &path, body.clone(), &id).await;
        let (status, v) = s.call("POST", &path, &patient, body.clone()).await;
        assert_eq!(status, 403, "{path}: {v}");
        let (status, v) = s.call("POST", &path, &stranger, body).await;
        assert_eq!(status, 404, "{path}: {v}");
    }
    let still = s.ok("GET", &format!("/v1/calls/{id}"), &a, None).await;
    assert_eq!(
        still["state"], "answered",
        "nothing happened to the call: {still}"
    );

    // Calling the patient's phone into the visit (PSTN fallback).
    let fallback = format!("/v1/conversations/{conv}/fallback");
    looks_missing(&s, &b, "POST", &fallback, Some(json!({})), &conv).await;
    let (status, v) = s.call("POST", &fallback, &patient, Some(json!({}))).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = s.call("POST", &fallback, &stranger, Some(json!({}))).await;
    assert_eq!(status, 404, "{v}");
    let calls = s.ok("GET", &calls_path, &a, None).await;
    assert_eq!(
        calls.as_array().map(Vec::len),
        Some(1),
        "no new call: {calls}"
    );
    let events = s
        .ok("GET", &format!("/v1/conversations/{conv}/events"), &a, None)
        .await;
    let k = kinds(&events);
    assert!(
        !k.contains(&"channel.switched".to_owned()) && !k.contains(&"call.failed".to_owned()),
        "no fallback on the timeline: {k:?}"
    );
    // B sees nothing of it.
    let (status, _) = s.call("GET", &calls_path, &b, None).await;
    assert_eq!(status, 404);

    // A ends its call; the carrier saw INVITE, ACK and BYE, nothing else.
    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &a, None)
        .await;
    uas.assert_ok().await;
}
