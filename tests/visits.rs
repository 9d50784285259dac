//! Visits around the media, over the real signaling WebSocket: the welcome
//! (who we are, ICE servers before the first offer), the waiting room and
//! admission, the roster with names and roles, assignment on joining, ending
//! for everyone, visit settings, and the help a patient gets for a bad link.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The next message of one of `types` (others are skipped), within 10 s.
async fn expect(sock: &mut Signaling, types: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, sock.next())
            .await
            .unwrap_or_else(|_| panic!("no {types:?} within 10 s"))
            .expect("the socket stays open")
            .expect("a frame");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if types.contains(&v["type"].as_str().unwrap_or("")) {
            return v;
        }
    }
}

async fn send(sock: &mut Signaling, v: Value) {
    sock.send(Message::Text(v.to_string().into()))
        .await
        .unwrap();
}

fn rtc_url(s: &Server, token: &str) -> String {
    format!("{}/v1/rtc?token={token}", s.base.replacen("http", "ws", 1))
}

async fn mint(s: &Server, key: &str, body: Value) -> String {
    s.ok("POST", "/v1/tokens", key, Some(body)).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `GET path` until `done` holds (10 s).
async fn eventually(s: &Server, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = s.ok("GET", path, key, None).await;
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn patients_wait_until_admitted_and_the_visit_ends_for_everyone() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550900").await;
    // The tenant's default: rooms have a waiting room.
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(room["waiting_room"], true, "{room}");
    let room = room["id"].as_str().unwrap().to_owned();
    let grants = json!({"conversations": [conv], "rooms": [room]});
    let dr = mint(
        &s,
        &key,
        json!({"identity": "dr-ng", "role": "clinician", "name": "Dr. Ng", "grants": grants}),
    )
    .await;
    let pat = mint(
        &s,
        &key,
        json!({"identity": "pat-ana", "role": "patient", "name": "Ana Ruiz", "grants": grants}),
    )
    .await;

    // Welcome first: who we are and the ICE servers, before any offer.
    let (mut p, welcome) = connect_signaling(rtc_url(&s, &pat)).await;
    assert_eq!(welcome["identity"], "pat-ana");
    assert_eq!(welcome["name"], "Ana Ruiz");
    assert_eq!(welcome["role"], "patient");
    assert_eq!(welcome["protocol"], 1);
    let urls = welcome["ice_servers"][0]["urls"].to_string();
    assert!(
        urls.contains("transport=udp") && urls.contains("transport=tcp"),
        "{welcome}"
    );

    // The patient waits; staff-only messages are refused to them.
    send(
        &mut p,
        json!({"type": "join", "room": room, "sdp": audio_offer()}),
    )
    .await;
    let waiting = expect(&mut p, &["waiting", "joined", "error"]).await;
    assert_eq!(waiting["type"], "waiting", "{waiting}");
    let ticket = waiting["ticket"].as_str().unwrap().to_owned();
    send(&mut p, json!({"type": "admit", "ticket": ticket})).await;
    assert_eq!(expect(&mut p, &["error"]).await["code"], "not_joined");

    // The clinician joins straight in, sees who waits, and admits them.
    let (mut d, _) = connect_signaling(rtc_url(&s, &dr)).await;
    send(
        &mut d,
        json!({"type": "join", "room": room, "sdp": audio_offer()}),
    )
    .await;
    let joined = expect(&mut d, &["joined", "error", "waiting"]).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(expect(&mut d, &["roster"]).await["participants"], json!([]));
    let list = expect(&mut d, &["waiting_room"]).await;
    assert_eq!(list["waiting"][0]["ticket"], ticket.as_str(), "{list}");
    assert_eq!(list["waiting"][0]["name"], "Ana Ruiz");
    send(&mut d, json!({"type": "admit", "ticket": "w999"})).await;
    assert_eq!(expect(&mut d, &["error"]).await["code"], "not_found");
    send(&mut d, json!({"type": "admit", "ticket": ticket})).await;
    let admitted = expect(&mut p, &["joined", "error"]).await;
    assert_eq!(admitted["type"], "joined", "{admitted}");
    let roster = expect(&mut p, &["roster"]).await;
    assert_eq!(roster["participants"][0]["name"], "Dr. Ng", "{roster}");
    assert_eq!(roster["participants"][0]["role"], "clinician");
    assert_eq!(
        expect(&mut d, &["waiting_room"]).await["waiting"],
        json!([]),
        "the waiting list empties"
    );
    let arrived = expect(&mut d, &["participant_joined"]).await;
    assert_eq!(
        (&arrived["identity"], &arrived["name"], &arrived["role"]),
        (&json!("pat-ana"), &json!("Ana Ruiz"), &json!("patient")),
        "{arrived}"
    );

    // Joining took the conversation for the clinician (nobody had it).
    let c = eventually(&s, &key, &format!("/v1/conversations/{conv}"), |c| {
        c["assignee"] == "dr-ng"
    })
    .await;
    assert_eq!(c["assignee"], "dr-ng", "{c}");

    // The room's state over REST: who is in it.
    let r = s.ok("GET", &format!("/v1/rooms/{room}"), &dr, None).await;
    let names: Vec<_> = r["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{r}");

    // Admitted once: after leaving, the patient comes back without waiting.
    send(&mut p, json!({"type": "leave"})).await;
    assert_eq!(
        expect(&mut d, &["participant_left"]).await["participant"],
        admitted["participant"]
    );
    let (mut p, _) = connect_signaling(rtc_url(&s, &pat)).await;
    send(
        &mut p,
        json!({"type": "join", "room": room, "sdp": audio_offer()}),
    )
    .await;
    assert_eq!(
        expect(&mut p, &["joined", "waiting", "error"]).await["type"],
        "joined"
    );

    // Patients cannot end a visit; the clinician ends it for everyone.
    let (st, v) = s
        .call("POST", &format!("/v1/rooms/{room}/end"), &pat, None)
        .await;
    assert_eq!(st, 403, "{v}");
    send(&mut p, json!({"type": "end_visit"})).await;
    assert_eq!(expect(&mut p, &["error"]).await["code"], "forbidden");
    send(&mut d, json!({"type": "end_visit"})).await;
    for sock in [&mut p, &mut d] {
        let ended = expect(sock, &["visit_ended"]).await;
        assert_eq!(ended["by"], "dr-ng");
    }
    // Nobody joins an ended visit, and the room says so.
    let (mut again, _) = connect_signaling(rtc_url(&s, &pat)).await;
    send(
        &mut again,
        json!({"type": "join", "room": room, "sdp": audio_offer()}),
    )
    .await;
    assert_eq!(
        expect(&mut again, &["error", "joined", "waiting"]).await["code"],
        "visit_ended"
    );
    let r = s.ok("GET", &format!("/v1/rooms/{room}"), &dr, None).await;
    assert!(r["ended_at"].is_string(), "{r}");
    // The timeline: everyone left (the call itself never connected media
    // here, so there is no call to end; the browser test sees that part).
    let left = |v: &Value| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "participant.left")
            .count()
    };
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        left(v) == 3
    })
    .await;
    assert_eq!(left(&events), 3, "{events}");
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "assigned"),
        "the assignment is on the timeline"
    );
}

#[tokio::test]
async fn rooms_and_settings_stay_within_grants_and_tenants() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550901").await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"waiting_room": false})),
        )
        .await;
    assert_eq!(room["waiting_room"], false);
    let room = room["id"].as_str().unwrap().to_owned();
    // A clinician of another conversation: no such room.
    let (_, other) = s.patient_conversation(&key, "+14155550902").await;
    let outsider = mint(
        &s,
        &key,
        json!({"identity": "dr-x", "role": "clinician", "grants": {"conversations": [other]}}),
    )
    .await;
    for (method, path) in [
        ("GET", format!("/v1/rooms/{room}")),
        ("POST", format!("/v1/rooms/{room}/end")),
    ] {
        let (st, v) = s.call(method, &path, &outsider, None).await;
        assert_eq!(st, 404, "{method} {path}: {v}");
    }
    // Another tenant: no such room, and its own settings.
    let b = common::second_tenant(dir.path(), "clinic-b");
    let (st, _) = s.call("GET", &format!("/v1/rooms/{room}"), &b, None).await;
    assert_eq!(st, 404);
    let (st, _) = s
        .call("POST", &format!("/v1/rooms/{room}/end"), &b, None)
        .await;
    assert_eq!(st, 404);

    // Settings: defaults, changed by the API key, not by a clinician token.
    let defaults = s.ok("GET", "/v1/settings/visits", &key, None).await;
    assert_eq!(
        defaults,
        json!({"waiting_room": true, "fallback": {"automatic": true, "on_media_failure": true, "degraded_secs": 0, "text_on_failure": true}})
    );
    let mine = json!({"waiting_room": false, "support_contact": "the front desk, +1 415 555 0100",
        "fallback": {"automatic": false, "on_media_failure": true, "degraded_secs": 30, "text_on_failure": false}});
    s.ok("PUT", "/v1/settings/visits", &key, Some(mine.clone()))
        .await;
    assert_eq!(s.ok("GET", "/v1/settings/visits", &key, None).await, mine);
    let (st, _) = s
        .call("PUT", "/v1/settings/visits", &outsider, Some(json!({})))
        .await;
    assert_eq!(st, 403);
    let (st, v) = s
        .call(
            "PUT",
            "/v1/settings/visits",
            &key,
            Some(json!({"support_contact": "a\u{0}b"})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    let (st, v) = s
        .call(
            "PUT",
            "/v1/settings/visits",
            &key,
            Some(json!({"waiting_rooms": true})),
        )
        .await;
    assert_eq!(st, 422, "unknown fields are named: {v}");
    assert_eq!(
        s.ok("GET", "/v1/settings/visits", &b, None).await,
        defaults,
        "tenant B keeps its own"
    );
    // New rooms follow the tenant's setting.
    let r = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(r["waiting_room"], false);
}

#[tokio::test]
async fn a_bad_visit_link_says_why_and_who_to_contact() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550903").await;
    s.ok(
        "PUT",
        "/v1/settings/visits",
        &key,
        Some(json!({"waiting_room": true, "support_contact": "the front desk, +1 415 555 0100"})),
    )
    .await;
    let help = |token: &str| {
        let body = json!({"token": token});
        let s = &s;
        async move {
            let r = s
                .client
                .post(s.url("/v1/visit-help"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let grants = json!({"conversations": [conv]});
    let live = mint(
        &s,
        &key,
        json!({"identity": "pat-1", "role": "patient", "grants": grants}),
    )
    .await;
    let (st, v) = help(&live).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("valid")), "{v}");
    assert_eq!(v["clinic"], "dev");
    assert_eq!(v["support_contact"], "the front desk, +1 415 555 0100");

    let brief = mint(
        &s,
        &key,
        json!({"identity": "pat-1", "role": "patient", "grants": grants, "ttl_seconds": 1}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (st, v) = loop {
        let (st, v) = help(&brief).await;
        if v["status"] == "expired" || Instant::now() > deadline {
            break (st, v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((st, v["status"].as_str()), (200, Some("expired")), "{v}");

    let minted = s
        .ok(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": "pat-1", "role": "patient", "grants": grants})),
        )
        .await;
    s.ok(
        "POST",
        "/v1/tokens/revoke",
        &key,
        Some(json!({"jti": minted["jti"]})),
    )
    .await;
    let (_, v) = help(minted["token"].as_str().unwrap()).await;
    assert_eq!(v["status"], "revoked");

    // Not ours (garbage, or re-signed by someone else): a broken link, nothing more.
    for bad in [
        "garbage",
        "eyJhbGciOiJIUzI1NiJ9.eyJ0aWQiOiJ4In0.c2lnbmF0dXJl",
    ] {
        let (st, v) = help(bad).await;
        assert_eq!(st, 404, "{v}");
        assert!(v.get("clinic").is_none());
    }
}

#[tokio::test]
async fn a_resumed_connection_hears_the_room_again() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let Visit { room, tokens, .. } = s
        .visit(
            &key,
            "+14155550904",
            &[("dr-r", "clinician"), ("pat-r", "patient")],
        )
        .await;
    let join = json!({"type": "join", "room": room, "sdp": audio_offer()});
    let (mut d, _) = connect_signaling(rtc_url(&s, &tokens[0])).await;
    send(&mut d, join.clone()).await;
    assert_eq!(expect(&mut d, &["joined", "error"]).await["type"], "joined");
    // The clinician turned the camera off before the patient came: the
    // patient's roster says so at once.
    send(
        &mut d,
        json!({"type": "mute", "kind": "video", "muted": true}),
    )
    .await;
    // A connection's messages are handled in order: once this is refused,
    // the mute has been taken.
    send(&mut d, json!({"type": "ping"})).await;
    assert_eq!(expect(&mut d, &["error"]).await["code"], "bad_message");
    let (mut p, _) = connect_signaling(rtc_url(&s, &tokens[1])).await;
    send(&mut p, join).await;
    let joined = expect(&mut p, &["joined", "error"]).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let roster = expect(&mut p, &["roster"]).await;
    assert_eq!(
        roster["participants"][0]["muted"],
        json!({"audio": false, "video": true}),
        "{roster}"
    );
    drop(p); // the network changed

    let (mut p, _) = connect_signaling(rtc_url(&s, &tokens[1])).await;
    send(
        &mut p,
        json!({"type": "resume", "participant": joined["participant"], "token": joined["resume"]}),
    )
    .await;
    assert_eq!(
        expect(&mut p, &["resumed", "error"]).await["type"],
        "resumed"
    );
    let roster = expect(&mut p, &["roster"]).await;
    assert_eq!(roster["participants"][0]["identity"], "dr-r", "{roster}");
    send(&mut d, json!({"type": "end_visit"})).await;
    assert_eq!(expect(&mut p, &["visit_ended"]).await["by"], "dr-r");
}
