//! Video visits with real browsers: headless Chromium (not our code) joins
//! `/visit` through the SFU; the call lands on the conversation's timeline.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

async fn timeline_kinds(s: &Server, key: &str, conv: &str) -> Vec<(String, Value)> {
    let page = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events?limit=500"),
            key,
            None,
        )
        .await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_browsers_see_and_hear_each_other() {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "run scripts/test (it installs playwright-core)"
    );
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![
                ("CONTINUUM_RTC__UDP_LISTEN".into(), "127.0.0.1:0".into()),
                // Three browsers on a 2-core CI runner starve each other of CPU:
                // frames arrive late (jitter) though nothing is lost in the SFU.
                // These limits still catch a monitor that misreads its samples
                // (e.g. loss counted from the wrong counter reads as ~100 %).
                ("CONTINUUM_RTC__QUALITY_MAX_LOSS".into(), "0.5".into()),
                ("CONTINUUM_RTC__QUALITY_MAX_RTT_MS".into(), "3000".into()),
                ("CONTINUUM_RTC__QUALITY_MAX_JITTER_MS".into(), "1000".into()),
            ],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let Visit {
        conv,
        room: room_id,
        tokens,
    } = s
        .visit(
            &key,
            "+14155550800",
            &[
                ("dr-lee", "clinician"),
                ("patient-1", "patient"),
                ("interpreter", "clinician"),
            ],
        )
        .await;

    let _browsers = common::browsers().await;

    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("visit.mjs"))
        .args([&s.base, &room_id, &conv, &tokens[0], &tokens[1], &tokens[2]])
        .output()
        .await
        .expect("node runs the browser scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "browser scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "A decodes B",
        "B decodes A",
        "B gets A's data-channel message",
        "A restarts ICE and keeps its seat",
        "A gets the simulcast layer it asks for",
        "B stops sending the layers nobody takes",
        "A unsubscribes from B's video and back",
        "A's signaling drops and it resumes its seat",
        "A is told the active speaker",
        "A is told B muted",
        "C decodes A and B",
        "A decodes B and C",
        "A still decodes after B left",
    ] {
        assert!(
            stdout.contains(&format!("\"check\":\"{check}\",\"ok\":true")),
            "missing check {check}:\n{stdout}"
        );
    }

    // The timeline: three joins, one call start, three leaves, one call end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = timeline_kinds(&s, &key, &conv).await;
        if events.iter().any(|(k, _)| k == "call.ended") || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count = |kind: &str| events.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count("participant.joined"), 3, "{events:?}");
    assert_eq!(count("participant.left"), 3, "{events:?}");
    assert_eq!(count("call.started"), 1);
    assert_eq!(count("call.ended"), 1);
    let started = events.iter().find(|(k, _)| k == "call.started").unwrap();
    assert_eq!(started.1["meta"]["session_id"], room_id);
    assert_eq!(started.1["channel"], "video");
    let patient_join = events
        .iter()
        .find(|(k, e)| k == "participant.joined" && e["actor"]["id"] == "patient-1")
        .unwrap();
    assert_eq!(patient_join.1["actor"]["type"], "patient");
    // SFU internals are exported.
    let m = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics_line(&m, "continuum_sfu_packets_forwarded_total").unwrap_or(0.0) > 100.0,
        "{m}"
    );
    assert!(metrics_line(&m, "continuum_sfu_bytes_forwarded_total").unwrap_or(0.0) > 10_000.0);
    assert!(
        metrics_line(&m, "continuum_sfu_packets_not_forwarded_total").unwrap_or(0.0) > 0.0,
        "the layers a subscriber does not get are counted"
    );
    assert_eq!(
        metrics_line(&m, "continuum_sfu_participants_joined_total"),
        Some(3.0)
    );
    // Quality samples (RTT, loss) flowed from str0m's stats (1 s interval) during the call.
    assert!(
        metrics_line(&m, "continuum_sfu_rtt_seconds_count").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        m.contains("continuum_sfu_tenant_participants{tenant="),
        "per-tenant gauges: {m}"
    );
    // RTCP feedback is counted: new subscribers ask for keyframes (PLI/FIR).
    let keyframe_feedback: f64 = ["plis_received", "firs_received", "plis_sent", "firs_sent"]
        .iter()
        .map(|n| metrics_line(&m, &format!("continuum_sfu_{n}_total")).unwrap_or(0.0))
        .sum();
    assert!(keyframe_feedback >= 1.0, "{m}");
    // Loopback is clean: no participant was reported degraded.
    let degraded: Vec<_> = events
        .iter()
        .filter(|(k, _)| k == "quality.degraded")
        .map(|(_, e)| e["meta"].clone())
        .collect();
    assert!(degraded.is_empty(), "degraded on loopback: {degraded:?}");
    // The call is no longer open in the context.
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            &key,
            None,
        )
        .await;
    assert_eq!(ctx["open_media_sessions"], json!([]));
}

#[tokio::test]
async fn the_demo_page_creates_a_working_visit_on_loopback_only() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let page = s
        .client
        .get(s.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Start a demo visit"));
    let v: Value = s
        .client
        .post(s.url("/dev/demo-visit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tenant"], "demo", "the demo has a tenant of its own");
    let url = v["clinician_url"].as_str().unwrap();
    let (url, token) = url
        .split_once("#token=")
        .expect("the token rides in the fragment");
    let conv = v["conversation_id"].as_str().unwrap();
    let c = s
        .ok("GET", &format!("/v1/conversations/{conv}"), token, None)
        .await;
    assert_eq!(c["subject"], "Demo visit");
    let visit = s
        .client
        .get(s.url(url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(visit.contains("import { Visit } from \"/sdk.js\""));
    drop(s);

    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            args: vec!["--listen".into(), "0.0.0.0:0".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        s.client.get(s.url("/")).send().await.unwrap().status(),
        404,
        "no demo page off loopback"
    );
    assert_eq!(
        s.client
            .post(s.url("/dev/demo-visit"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn signaling_refuses_bad_requests_clearly() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550801").await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"waiting_room": false})),
        )
        .await;
    let room_id = room["id"].as_str().unwrap();
    let (_, other_conv) = s.patient_conversation(&key, "+14155550802").await;
    let other_room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{other_conv}/rooms"),
            &key,
            Some(json!({"waiting_room": false})),
        )
        .await;
    let token = s
        .ok("POST", "/v1/tokens", &key, Some(json!({"identity": "dr", "role": "clinician", "grants": {"conversations": [conv], "rooms": [room_id]}})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // API keys never ride in URLs; bad tokens are refused before the upgrade.
    let ws_base = s.base.replacen("http", "ws", 1);
    for (credential, status) in [(key.as_str(), 401), ("garbage", 401)] {
        match tokio_tungstenite::connect_async(format!("{ws_base}/v1/rtc?token={credential}")).await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status)
            }
            other => panic!(
                "expected HTTP {status}, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }

    let url = format!("{}/v1/rtc?token={token}", s.base.replacen("http", "ws", 1));
    let (mut sock, _) = connect_signaling(url).await;
    for (msg, code) in [
        ("not json".to_owned(), "bad_message"),
        (json!({"type": "dance"}).to_string(), "bad_message"),
        (
            json!({"type": "answer", "sdp": "v=0"}).to_string(),
            "not_joined",
        ),
        (
            json!({"type": "unsubscribe", "participant": "p1"}).to_string(),
            "not_joined",
        ),
        (
            json!({"type": "join", "room": other_room["id"], "sdp": "v=0"}).to_string(),
            "not_found",
        ),
        (
            json!({"type": "join", "room": room_id, "sdp": "this is not sdp"}).to_string(),
            "join_refused",
        ),
    ] {
        sock.send(Message::Text(msg.clone().into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), sock.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert_eq!(v["type"], "error", "{msg} -> {v}");
        assert_eq!(v["code"], code, "{msg} -> {v}");
    }
    // Joined (an encoder-style audio offer), trickle is validated; a second join is refused.
    let join = json!({"type": "join", "room": room_id, "sdp": audio_offer()}).to_string();
    sock.send(Message::Text(join.clone().into())).await.unwrap();
    let joined = next_signal(&mut sock).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["protocol"], 1, "versioned: {joined}");
    assert_eq!(joined["conversation"], conv);
    assert!(joined["sdp"].as_str().unwrap().contains("a=ice-lite"));
    for candidate in ["candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", ""] {
        let msg = json!({"type": "candidate", "candidate": candidate}).to_string();
        sock.send(Message::Text(msg.into())).await.unwrap();
    }
    let msg = json!({"type": "candidate", "candidate": "candidate:garbage"}).to_string();
    sock.send(Message::Text(msg.into())).await.unwrap();
    assert_eq!(
        next_signal(&mut sock).await["code"],
        "bad_candidate",
        "valid candidates get no reply; the bad one does"
    );
    sock.send(Message::Text(join.into())).await.unwrap();
    assert_eq!(next_signal(&mut sock).await["code"], "already_joined");
    for (msg, code) in [
        (
            json!({"type": "unsubscribe", "participant": "dr-who"}),
            "bad_message",
        ),
        (
            json!({"type": "subscribe", "participant": "p1", "kind": "smell"}),
            "bad_message",
        ),
        (
            json!({"type": "unsubscribe", "participant": "p999", "kind": "video"}),
            "not_found",
        ),
    ] {
        sock.send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let v = next_signal(&mut sock).await;
        assert_eq!(v["code"], code, "{msg} -> {v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty());
    }

    // A room with a bad grant attempt is audited.
    let audit = s.ok("GET", "/v1/audit?limit=1000", &key, None).await;
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "room.join" && r["outcome"] == "denied")
    );
}

#[tokio::test]
async fn garbage_on_the_media_port_is_dropped_and_counted() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let metrics_before = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let udp = metrics_line(&metrics_before, "continuum_sfu_udp_port")
        .expect("the media port is exported") as u16;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stun_like = [
        0u8, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 6, 0, 4,
        b'n', b'o', b'n', b'e',
    ];
    for datagram in [
        &b"hello"[..],
        &[0x80; 200][..],
        &[22u8; 13][..],
        &stun_like[..],
        &[][..],
    ] {
        sock.send_to(datagram, ("127.0.0.1", udp)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics_line(&m, "continuum_sfu_unknown_datagrams_total").unwrap_or(0.0) >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unknown datagrams not counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server is unaffected.
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// The next signaling message (≤ 5 s) that is not a room notice (those may
/// come in between a request and its reply).
async fn next_signal<S>(sock: &mut S) -> Value
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), sock.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        // Room notices that come whenever the room changes; tests wait for replies.
        let notice = matches!(
            v["type"].as_str(),
            Some(
                "quality"
                    | "track_published"
                    | "roster"
                    | "participant_joined"
                    | "participant_left"
                    | "waiting_room"
                    | "chat_receipts"
            )
        );
        if !notice {
            return v;
        }
    }
}

fn metrics_line(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publishes_and_whep_watches() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let Visit {
        conv,
        room: room_id,
        tokens,
    } = s
        .visit(
            &key,
            "+14155550803",
            &[
                ("exam-room-camera", "clinician"),
                ("remote-specialist", "clinician"),
            ],
        )
        .await;
    let (camera, viewer) = (tokens[0].clone(), tokens[1].clone());

    // Refusals first: wrong content type, API keys, rooms outside the grant.
    let r = s
        .client
        .post(s.url(&format!("/v1/rooms/{room_id}/whip")))
        .bearer_auth(&camera)
        .body("v=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = s
        .client
        .post(s.url(&format!("/v1/rooms/{room_id}/whip")))
        .bearer_auth(&key)
        .header("content-type", "application/sdp")
        .body("v=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .client
        .post(s.url("/v1/rooms/not-my-room/whep"))
        .bearer_auth(&viewer)
        .header("content-type", "application/sdp")
        .body("v=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .client
        .post(s.url(&format!("/v1/rooms/{room_id}/whip")))
        .bearer_auth(&camera)
        .header("content-type", "application/sdp")
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "malformed SDP is a clear 400");

    let _browsers = common::browsers().await;

    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("whip.mjs"))
        .args([&s.base, &room_id, &camera, &viewer])
        .output()
        .await
        .expect("node runs the WHIP/WHEP scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "WHIP/WHEP scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "WHIP publish",
        "WHEP watch",
        "DELETE",
        "WHEP viewer gets a later publisher",
    ] {
        assert!(
            stdout.contains(&format!("\"check\":\"{check}\",\"ok\":true")),
            "missing {check}:\n{stdout}"
        );
    }
    // The camera is on the timeline like any participant.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = timeline_kinds(&s, &key, &conv).await;
        if events
            .iter()
            .any(|(k, e)| k == "participant.joined" && e["actor"]["id"] == "exam-room-camera")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_and_receives() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-peers/bin/python");
    assert!(
        python.exists(),
        "run scripts/test (it installs aiortc into .venv-peers)"
    );
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let Visit {
        room: room_id,
        tokens,
        ..
    } = s
        .visit(
            &key,
            "+14155550804",
            &[
                ("aiortc-camera", "clinician"),
                ("aiortc-viewer", "clinician"),
            ],
        )
        .await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aiortc_peer.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([&s.base, &room_id, &tokens[0], &tokens[1]])
        .output()
        .await
        .expect("python runs the aiortc peers");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aiortc scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"check\": \"aiortc receives (WHEP)\", \"ok\": true"),
        "{stdout}"
    );
}

#[tokio::test]
async fn rooms_refuse_joins_beyond_their_capacity() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550805").await;
    let (st, v) = s
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"max_participants": 1, "waiting_room": false})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"max_participants": 2, "waiting_room": false})),
        )
        .await;
    let room_id = room["id"].as_str().unwrap().to_owned();
    let body = json!({"identity": "encoder", "role": "clinician", "grants": {"conversations": [conv], "rooms": [room_id]}});
    let token = s.ok("POST", "/v1/tokens", &key, Some(body)).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let whip = |s: &Server| {
        s.client
            .post(s.url(&format!("/v1/rooms/{room_id}/whip")))
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body(audio_offer())
            .send()
    };
    let first = whip(&s).await.unwrap();
    assert_eq!(first.status(), 201, "{}", first.text().await.unwrap());
    assert_eq!(whip(&s).await.unwrap().status(), 201);
    let third = whip(&s).await.unwrap();
    assert_eq!(third.status(), 503);
    let v: Value = third.json().await.unwrap();
    assert_eq!(v["error"]["code"], "room_full");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 participants"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_answers_is_disconnected() {
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![("CONTINUUM_RTC__ANSWER_TIMEOUT_SECS".into(), "2".into())],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let Visit {
        conv,
        room: room_id,
        tokens,
    } = s
        .visit(
            &key,
            "+14155550806",
            &[("silent", "clinician"), ("other", "clinician")],
        )
        .await;
    let _browsers = common::browsers().await;
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("silent.mjs"))
        .args([&s.base, &room_id, &conv, &tokens[0], &tokens[1]])
        .output()
        .await
        .expect("node runs the scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The silent one is the first to leave (the other leaves only when the script closes its browser).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = timeline_kinds(&s, &key, &conv).await;
        if let Some((_, first_left)) = events.iter().find(|(k, _)| k == "participant.left") {
            assert_eq!(first_left["actor"]["id"], "silent", "{events:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A participant whose signaling connection drops (network change) keeps its
/// seat for `rtc.resume_grace_secs`: a new connection with its resume token
/// takes it back (same participant, no leave on the timeline); a wrong token,
/// another identity or an expired seat is refused, and an abandoned seat
/// leaves when the grace ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_signaling_connection_resumes_its_seat() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![("CONTINUUM_RTC__RESUME_GRACE_SECS".into(), "2".into())],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let Visit {
        conv,
        room: room_id,
        tokens,
    } = s
        .visit(
            &key,
            "+14155550807",
            &[("dr-a", "clinician"), ("dr-b", "clinician")],
        )
        .await;
    let ws = |token: &str| format!("{}/v1/rtc?token={token}", s.base.replacen("http", "ws", 1));
    let join = json!({"type": "join", "room": room_id, "sdp": audio_offer()}).to_string();
    let (mut first, _) = connect_signaling(ws(&tokens[0])).await;
    first
        .send(Message::Text(join.clone().into()))
        .await
        .unwrap();
    let joined = next_signal(&mut first).await;
    let (id, resume) = (
        joined["participant"].as_str().unwrap().to_owned(),
        joined["resume"].as_str().unwrap().to_owned(),
    );
    assert_eq!(resume.len(), 32, "{joined}");
    drop(first); // the network changed

    let (mut second, _) = connect_signaling(ws(&tokens[0])).await;
    for (msg, code) in [
        (
            json!({"type": "resume", "participant": id, "token": "0".repeat(32)}),
            "resume_refused",
        ),
        (
            json!({"type": "resume", "participant": "p999", "token": resume}),
            "resume_refused",
        ),
        (
            json!({"type": "resume", "participant": "me", "token": resume}),
            "bad_message",
        ),
    ] {
        second
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let v = next_signal(&mut second).await;
        assert_eq!(v["code"], code, "{msg} -> {v}");
    }
    // Another identity with the right token cannot take the seat.
    let (mut other, _) = connect_signaling(ws(&tokens[1])).await;
    let msg = json!({"type": "resume", "participant": id, "token": resume}).to_string();
    other.send(Message::Text(msg.clone().into())).await.unwrap();
    assert_eq!(next_signal(&mut other).await["code"], "resume_refused");
    // The owner can.
    second
        .send(Message::Text(msg.clone().into()))
        .await
        .unwrap();
    let resumed = next_signal(&mut second).await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["participant"], id.as_str());
    // Its seat holds while the connection lives, past the grace period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kinds =
        |events: &[(String, Value)], kind: &str| events.iter().filter(|(k, _)| k == kind).count();
    let events = timeline_kinds(&s, &key, &conv).await;
    assert_eq!(kinds(&events, "participant.joined"), 1, "{events:?}");
    assert_eq!(
        kinds(&events, "participant.left"),
        0,
        "resumed, not left: {events:?}"
    );
    // Abandoned: it leaves when the grace ends, and cannot be resumed after.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = timeline_kinds(&s, &key, &conv).await;
        if kinds(&events, "participant.left") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut third, _) = connect_signaling(ws(&tokens[0])).await;
    third.send(Message::Text(msg.into())).await.unwrap();
    assert_eq!(next_signal(&mut third).await["code"], "resume_refused");
}

/// A 1:1 visit on a good network reaches the top simulcast layer, at 720p
/// and at 480p (where Chromium sends only two layers): the viewer's decoded
/// frame width equals the sender's capture width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_visits_reach_the_top_layer() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    for (i, height) in ["720", "480"].into_iter().enumerate() {
        let Visit { room, tokens, .. } = s
            .visit(
                &key,
                &format!("+1415555097{i}"),
                &[("dr-hd", "clinician"), ("patient-hd", "patient")],
            )
            .await;
        common::browser_scenario(
            "quality.mjs",
            &[&s.base, &room, height, &tokens[0], &tokens[1]],
            &[format!("{height}p: each receives the other's top layer")],
        )
        .await;
    }
}

/// The capacity planner sizes 1:1 visits by the layers the browser SDK sends.
#[test]
fn the_planner_assumes_the_layers_the_sdk_sends() {
    let sdk = include_str!("../web/sdk.js");
    let video = continuum_plan::profile::Video::default();
    for kbps in &video.layers_kbps {
        // As written in JavaScript: 1_500_000.
        let digits = (*kbps as u64 * 1000).to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push('_');
            }
            grouped.push(c);
        }
        let bps = format!("maxBitrate: {grouped}");
        assert!(
            sdk.contains(&bps),
            "the SDK does not send {kbps} kbit/s ({bps})"
        );
    }
    assert_eq!(video.one_to_one_layer, video.layers_kbps.len() - 1);
}

/// Firefox (ESR, over WebDriver BiDi) as the patient, Chromium as the
/// clinician: each decodes the other, Firefox publishing simulcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_and_chromium_see_each_other() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let Visit { room, tokens, .. } = s
        .visit(
            &key,
            "+14155550980",
            &[("patient-ff", "patient"), ("dr-chromium", "clinician")],
        )
        .await;
    common::browser_scenario(
        "firefox.mjs",
        &[&s.base, &room, &tokens[0], &tokens[1]],
        &[
            "firefox decodes chromium".into(),
            "chromium decodes firefox".into(),
        ],
    )
    .await;
}
