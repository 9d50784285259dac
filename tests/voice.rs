//! The SIP gateway against sipp (a SIP implementation we did not write):
//! inbound calls routed by trunk and dispatch rule onto the caller's
//! conversation, refusals (wrong source, unknown number, no common codec,
//! malformed SIP) with clear SIP answers, and dial-out through an outbound
//! trunk answered by a sipp UAS, hung up through the API. The timeline and
//! the call records are checked.

mod common;
use common::sipp::*;
use common::*;
use serde_json::{Value, json};
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

#[tokio::test]
async fn inbound_calls_reach_the_callers_conversation_and_refusals_are_clear() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(json!({"name": "carrier", "direction": "inbound", "numbers": ["+14155550100"], "allowed_sources": ["127.0.0.1/32"]})),
    )
    .await;
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(json!({"name": "elsewhere", "direction": "inbound", "numbers": ["+14155550102"], "allowed_sources": ["203.0.113.0/24"]})),
    )
    .await;
    for n in ["+14155550100", "+14155550102"] {
        s.ok(
            "POST",
            "/v1/sip/dispatch-rules",
            &key,
            Some(json!({"number": n, "action": {"type": "conversation", "queue": "front-desk"}})),
        )
        .await;
    }
    // The patient is known: their conversation gets the call.
    let (contact, conv) = s.patient_conversation(&key, "+14155550123").await;

    let out = sipp_call(
        dir.path(),
        "answered",
        &uac_scenario("+14155550123", PCMU, 200, 1500),
        sip,
        "+14155550100",
    );
    assert_sipp_ok(&out, dir.path(), "answered");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    let k = kinds(&events);
    assert!(
        k.contains(&"call.started".to_owned()) && k.contains(&"call.ended".to_owned()),
        "the call is on the caller's timeline: {k:?}"
    );
    let ended = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "call.ended")
        .unwrap();
    assert_eq!(ended["channel"], "voice");
    assert_eq!(ended["meta"]["reason"], "remote_hangup", "{ended}");
    assert!(
        ended["meta"]["duration_secs"].as_u64().unwrap() >= 1,
        "{ended}"
    );
    let calls = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/calls"),
            &key,
            None,
        )
        .await;
    let call = &calls[0];
    assert_eq!(call["state"], "ended", "{calls}");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["remote"], "+14155550123");
    let _ = contact;

    // An unknown caller gets a new contact and conversation.
    let out = sipp_call(
        dir.path(),
        "stranger",
        &uac_scenario("+14155550999", PCMU, 200, 300),
        sip,
        "+14155550100",
    );
    assert_sipp_ok(&out, dir.path(), "stranger");
    let found = s
        .ok("GET", "/v1/contacts?phone=%2B14155550999", &key, None)
        .await;
    assert_eq!(
        found["contacts"].as_array().map(Vec::len),
        Some(1),
        "{found}"
    );

    // Refusals: each a clear SIP answer, nothing on any timeline.
    let before = s.ok("GET", "/v1/conversations", &key, None).await["conversations"]
        .as_array()
        .unwrap()
        .len();
    for (name, scenario, called) in [
        (
            "wrong_source",
            uac_scenario("+14155550123", PCMU, 403, 0),
            "+14155550102",
        ),
        (
            "unknown_number",
            uac_scenario("+14155550123", PCMU, 404, 0),
            "+14155550177",
        ),
        (
            "no_common_codec",
            uac_scenario(
                "+14155550123",
                "m=audio [media_port] RTP/AVP 18\na=rtpmap:18 G729/8000",
                488,
                0,
            ),
            "+14155550100",
        ),
    ] {
        let out = sipp_call(dir.path(), name, &scenario, sip, called);
        assert_sipp_ok(&out, dir.path(), name);
    }
    // SDES-SRTP offers (sipp speaks no SRTP: the answer's SDP is checked).
    // RTP/SAVP without a suite we speak: 488, and a Warning says why.
    let no_suite = uac_scenario(
        "+14155550123",
        "m=audio [media_port] RTP/SAVP 0\na=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBRPS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        488,
        0,
    )
    .replace(
        "<recv response=\"488\"/>",
        "<recv response=\"488\"><action><ereg regexp=\"399 .*crypto suite\" search_in=\"hdr\" header=\"Warning:\" check_it=\"true\" assign_to=\"w\"/></action></recv>",
    )
    .replace("</scenario>", "<Reference variables=\"w\"/>\n</scenario>");
    let out = sipp_call(
        dir.path(),
        "no_crypto_suite",
        &no_suite,
        sip,
        "+14155550100",
    );
    assert_sipp_ok(&out, dir.path(), "no_crypto_suite");
    // A usable suite (the second line): answered RTP/SAVP with that tag and
    // suite and a key of ours.
    let savp = uac_scenario(
        "+14155550123",
        "m=audio [media_port] RTP/SAVP 0\na=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBRPS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        200,
        200,
    )
    .replace(
        "<recv response=\"200\" rtd=\"true\"/>",
        "<recv response=\"200\" rtd=\"true\"><action><ereg regexp=\"m=audio [0-9]+ RTP/SAVP 0\" search_in=\"body\" check_it=\"true\" assign_to=\"m\"/><ereg regexp=\"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:[A-Za-z0-9+/]{40}\" search_in=\"body\" check_it=\"true\" assign_to=\"c\"/></action></recv>",
    )
    .replace("</scenario>", "<Reference variables=\"m,c\"/>\n</scenario>");
    let out = sipp_call(dir.path(), "savp_answered", &savp, sip, "+14155550100");
    assert_sipp_ok(&out, dir.path(), "savp_answered");
    let after = s.ok("GET", "/v1/conversations", &key, None).await["conversations"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "refused calls open no conversations");
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["source", "unknown_number", "no_crypto_suite"] {
        assert!(
            metrics.contains(&format!(
                "continuum_sip_calls_refused_total{{reason=\"{reason}\"}}"
            )),
            "refusals are counted by reason ({reason})"
        );
    }

    // Malformed SIP and garbage: a 400 naming the problem, no crash
    // (oversized messages, 513, are the SIP crate's unit tests: UDP cannot carry them).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A Max-Forwards that is no number (responses go where Via says: our socket).
    let via = sock.local_addr().unwrap();
    let bad = format!(
        "INVITE sip:+14155550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-bad\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: bad-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: lots\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(bad.as_bytes(), ("127.0.0.1", sip)).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("an answer to a malformed INVITE");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 400"), "{answer}");
    assert!(
        answer.to_lowercase().contains("call-id"),
        "the reason names the header: {answer}"
    );
    sock.send_to(&[0xffu8; 1200], ("127.0.0.1", sip)).unwrap();
    // Still serving: a good call goes through afterwards.
    let out = sipp_call(
        dir.path(),
        "after_garbage",
        &uac_scenario("+14155550123", PCMU, 200, 100),
        sip,
        "+14155550100",
    );
    assert_sipp_ok(&out, dir.path(), "after_garbage");
}

#[tokio::test]
async fn dial_out_through_a_trunk_reaches_a_sipp_phone_and_hangs_up() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    // The "carrier": a sipp UAS answering one call.
    let uas = Sipp::uas(dir.path(), "carrier", None);
    let trunk = outbound_trunk(&s, &key, uas.port, 1).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550124").await;
    // Bad targets are refused before anything is dialled.
    let (status, v) = s
        .call(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "call me"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("to"),
        "{v}"
    );

    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550124"})),
        )
        .await;
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["trunk_id"], trunk["id"]);
    let id = call["id"].as_str().unwrap().to_owned();
    let answered = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "answered"
    })
    .await;
    assert_eq!(answered["state"], "answered", "{answered}");
    // The trunk's limit is one call: a second is refused while this one is up.
    let (status, v) = s
        .call(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550125"})),
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_calls"),
        "{v}"
    );

    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    let ended = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "ended"
    })
    .await;
    assert_eq!(ended["state"], "ended", "{ended}");
    assert_eq!(ended["cause"], "hangup");
    let (status, _) = s
        .call("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    assert_eq!(status, 409, "an ended call cannot be hung up again");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    let k = kinds(&events);
    assert!(
        k.contains(&"call.started".to_owned()) && k.contains(&"call.ended".to_owned()),
        "{k:?}"
    );
    // sipp saw a whole call: INVITE, ACK, BYE.
    uas.assert_ok().await;
}

/// The next signaling message of one of `types` (others skipped), within 15 s.
async fn expect(sock: &mut Signaling, types: &[&str]) -> Value {
    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, sock.next())
            .await
            .unwrap_or_else(|_| panic!("no {types:?} within 15 s"))
            .expect("the socket stays open")
            .expect("a frame");
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if types.contains(&v["type"].as_str().unwrap_or("")) {
            return v;
        }
    }
}

#[tokio::test]
async fn a_clinician_calls_the_patients_phone_into_the_visit_with_the_context() {
    use futures::SinkExt;
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let uas = Sipp::uas(dir.path(), "carrier", None);
    outbound_trunk(&s, &key, uas.port, 4).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550126").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "chat", "kind": "message", "body": "The rash spread to my left arm since Monday",
            "actor": {"type": "patient"}})),
    )
    .await;
    let room = s
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
    let grants = json!({"conversations": [conv], "rooms": [room]});
    let dr = s
        .ok(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": "dr-ng", "role": "clinician", "grants": grants})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let patient = s
        .ok(
            "POST",
            "/v1/tokens",
            &key,
            Some(json!({"identity": "pat-1", "role": "patient", "grants": grants})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("{}/v1/rtc?token={dr}", s.base.replacen("http", "ws", 1));
    let (mut d, _) = connect_signaling(&url).await;
    let join = json!({"type": "join", "room": room, "sdp": audio_offer()});
    d.send(tokio_tungstenite::tungstenite::Message::Text(
        join.to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(expect(&mut d, &["joined", "error"]).await["type"], "joined");

    // Patients do not place calls; the clinician does.
    let path = format!("/v1/conversations/{conv}/fallback");
    let (status, _) = s
        .call("POST", &path, &patient, Some(json!({"room_id": room})))
        .await;
    assert_eq!(status, 403);
    let call = s
        .ok("POST", &path, &dr, Some(json!({"room_id": room})))
        .await;
    assert_eq!(call["room_id"], room.as_str(), "{call}");
    assert_eq!(call["remote"], "+14155550126");
    let (status, v) = s
        .call("POST", &path, &dr, Some(json!({"room_id": room})))
        .await;
    assert_eq!(status, 409, "one fallback at a time: {v}");

    // The clinician, still in the room, gets the context with the news.
    let moved = expect(&mut d, &["patient_on_phone"]).await;
    assert_eq!(moved["reason"], "requested");
    assert_eq!(moved["call"]["id"], call["id"]);
    assert!(
        moved["context"]["recent_events"]
            .to_string()
            .contains("rash spread"),
        "what was just discussed comes with it: {moved}"
    );
    // The timeline: the switch, then the voice call once answered.
    let id = call["id"].as_str().unwrap();
    let answered = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "answered"
    })
    .await;
    assert_eq!(answered["state"], "answered", "{answered}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.started".to_owned())
    })
    .await;
    let list = events["events"].as_array().unwrap();
    let find = |kind: &str, channel: &str| {
        list.iter()
            .find(|e| e["kind"] == kind && e["channel"] == channel)
            .unwrap_or_else(|| panic!("no {kind} on {channel}: {events}"))
            .clone()
    };
    assert_eq!(find("call.failed", "video")["meta"]["reason"], "requested");
    let switched = find("channel.switched", "voice");
    assert_eq!(switched["meta"]["from"], "video");
    assert_eq!(switched["meta"]["to"], "voice");
    assert!(
        switched["meta"]["requested_by"]
            .as_str()
            .unwrap()
            .contains("dr-ng")
    );
    find("call.started", "voice");
    let conv_after = s
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await;
    assert_eq!(
        conv_after["id"],
        conv.as_str(),
        "the same conversation carries on"
    );
    assert_eq!(
        conv_after["assignee"], "dr-ng",
        "the clinician who joined keeps it"
    );
    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    uas.assert_ok().await;
}

#[tokio::test]
async fn a_patient_whose_signaling_does_not_come_back_is_called_on_the_phone() {
    // A short resume grace; the other triggers out of the way (this test is
    // about the signaling link alone).
    patient_called_when(
        &[
            ("CONTINUUM_RTC__RESUME_GRACE_SECS", "1"),
            ("CONTINUUM_RTC__CONNECT_TIMEOUT_SECS", "600"),
        ],
        true,
        "signaling_lost",
    )
    .await;
}

#[tokio::test]
async fn a_patient_whose_video_never_connects_is_called_on_the_phone() {
    // The patient's browser joins, but nothing of its media ever reaches
    // the SFU (the test's "browser" never runs ICE): a firewall, no TURN.
    patient_called_when(
        &[("CONTINUUM_RTC__CONNECT_TIMEOUT_SECS", "2")],
        false,
        "media_never_connected",
    )
    .await;
}

/// A visit with a clinician and a patient (signaling only: neither runs
/// ICE); `drop_patient` closes the patient's connection. Checks the phone is
/// called into the room for `reason`, on the timeline and on the page.
async fn patient_called_when(env: &[(&str, &str)], drop_patient: bool, reason: &str) {
    use futures::SinkExt;
    let dir = tempdir();
    let (s, _sip) = voice_server_with(dir.path(), env);
    let key = s.key().to_owned();
    let uas = Sipp::uas(dir.path(), "carrier", None);
    outbound_trunk(&s, &key, uas.port, 4).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550127").await;
    let room = s
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
    let grants = json!({"conversations": [conv], "rooms": [room]});
    let token = |identity: &'static str, role: &'static str| {
        let (s, key, grants) = (&s, &key, grants.clone());
        async move {
            s.ok(
                "POST",
                "/v1/tokens",
                key,
                Some(json!({"identity": identity, "role": role, "grants": grants})),
            )
            .await["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (dr, patient) = (
        token("dr-ng", "clinician").await,
        token("pat-1", "patient").await,
    );
    let ws = |t: &str| format!("{}/v1/rtc?token={t}", s.base.replacen("http", "ws", 1));
    let join = json!({"type": "join", "room": room, "sdp": audio_offer()}).to_string();
    let (mut d, _) = connect_signaling(&ws(&dr)).await;
    d.send(tokio_tungstenite::tungstenite::Message::Text(
        join.clone().into(),
    ))
    .await
    .unwrap();
    assert_eq!(expect(&mut d, &["joined", "error"]).await["type"], "joined");
    let (mut p, _) = connect_signaling(&ws(&patient)).await;
    p.send(tokio_tungstenite::tungstenite::Message::Text(join.into()))
        .await
        .unwrap();
    assert_eq!(expect(&mut p, &["joined", "error"]).await["type"], "joined");

    if drop_patient {
        // The patient's connection goes and nothing resumes it.
        drop(p);
    }
    let moved = expect(&mut d, &["patient_on_phone"]).await;
    assert_eq!(moved["reason"], reason, "{moved}");
    let id = moved["call"]["id"].as_str().unwrap().to_owned();
    let answered = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "answered"
    })
    .await;
    assert_eq!(answered["state"], "answered", "{answered}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.started".to_owned())
    })
    .await;
    let list = events["events"].as_array().unwrap();
    let failed = list
        .iter()
        .find(|e| e["kind"] == "call.failed" && e["channel"] == "video")
        .unwrap_or_else(|| panic!("no video call.failed: {events}"));
    assert_eq!(failed["meta"]["reason"], reason);
    if drop_patient {
        let left = list
            .iter()
            .find(|e| e["kind"] == "participant.left" && e["actor"]["type"] == "patient")
            .unwrap_or_else(|| panic!("no participant.left for the patient: {events}"));
        assert_eq!(left["meta"]["reason"], "signaling_lost", "{left}");
    }
    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    uas.assert_ok().await;
}

#[tokio::test]
async fn a_caller_keys_in_the_visit_pin_and_joins_the_room_by_phone() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    inbound_route(&s, &key, "+14155550200", json!({"type": "room_pin"})).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550127").await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({"waiting_room": false})),
        )
        .await;
    let (room_id, pin) = (
        room["id"].as_str().unwrap().to_owned(),
        room["pin"].as_str().unwrap().to_owned(),
    );
    // The caller keys in a wrong PIN first (it is ignored), then the right one
    // as RFC 4733 events from sipp's shipped captures, and stays on the line.
    let wrong: String = pin
        .chars()
        .map(|c| if c == '9' { '0' } else { '9' })
        .collect();
    let mut keys = String::new();
    for d in wrong.chars().chain(pin.chars()) {
        keys.push_str(&format!(
            "<nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{d}.pcap\"/></action></nop>\n<pause milliseconds=\"600\"/>\n"
        ));
    }
    let media = "m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15";
    let scenario = uac_scenario("+14155550127", media, 200, 6000).replace(
        "<pause milliseconds=\"6000\"/>",
        &format!("{keys}<pause milliseconds=\"6000\"/>"),
    );
    let path = dir.path().to_owned();
    let caller = tokio::task::spawn_blocking(move || {
        sipp_call(&path, "pin", &scenario, sip, "+14155550200")
    });
    // The phone shows up in the room's roster, with its badge.
    let seen = eventually(&s, &key, &format!("/v1/rooms/{room_id}"), |r| {
        r["participants"]
            .as_array()
            .is_some_and(|p| p.iter().any(|m| m["phone"] == true))
    })
    .await;
    let out = caller.await.unwrap();
    assert_sipp_ok(&out, dir.path(), "pin");
    let phone = seen["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["phone"] == true)
        .unwrap_or_else(|| panic!("the caller joined the room by phone: {seen}"));
    assert_eq!(phone["role"], "patient");
    // On the room's conversation: the call, started and ended.
    let calls = eventually(&s, &key, &format!("/v1/conversations/{conv}/calls"), |v| {
        v[0]["state"] == "ended"
    })
    .await;
    assert_eq!(calls[0]["room_id"], room_id.as_str(), "{calls}");
    assert_eq!(calls[0]["state"], "ended", "{calls}");
    // The record's state is written before the timeline's event.
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    let k = kinds(&events);
    assert!(
        k.contains(&"call.started".to_owned()) && k.contains(&"call.ended".to_owned()),
        "{k:?}"
    );
}

#[tokio::test]
async fn a_trunk_that_never_answers_fails_the_call_as_no_answer() {
    let dir = tempdir();
    let (s, _sip) = voice_server_with(dir.path(), &[("CONTINUUM_SIP__RING_TIMEOUT_SECS", "2")]);
    let key = s.key().to_owned();
    // A "carrier" that swallows everything: not even 100 Trying.
    let black_hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(
            json!({"name": "silent", "direction": "outbound", "address": hole.to_string(),
            "caller_ids": ["+14155550100"], "max_concurrent_calls": 2}),
        ),
    )
    .await;
    let (_, conv) = s.patient_conversation(&key, "+14155550128").await;
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550128"})),
        )
        .await;
    let id = call["id"].as_str().unwrap();
    let failed = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "failed"
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["cause"], "no_answer", "{failed}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.failed".to_owned())
    })
    .await;
    let ev = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "call.failed")
        .unwrap_or_else(|| panic!("call.failed on the timeline: {events}"));
    assert_eq!(ev["meta"]["reason"], "no_answer");
    // The INVITE did reach the trunk (and was retransmitted over UDP), among
    // the keepalive's OPTIONS (unanswered too).
    black_hole
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let invite = loop {
        let Ok((n, _)) = black_hole.recv_from(&mut buf) else {
            break None;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("INVITE ") {
            break Some(text);
        }
        seen.push(text.lines().next().unwrap_or_default().to_owned());
    };
    let invite = invite.unwrap_or_else(|| panic!("no INVITE reached the trunk, only {seen:?}"));
    assert!(invite.starts_with("INVITE sip:+14155550128@"), "{invite}");
    assert!(
        seen.iter().all(|l| l.starts_with("OPTIONS ")),
        "only keepalives besides: {seen:?}"
    );
}

/// A sipp UAS that answers every OPTIONS with 200 (and nothing else).
const OPTIONS_UAS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options uas">
<recv request="OPTIONS"/>
<send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0
]]></send>
</scenario>
"#;

/// Polls the tenant's trunk list until trunk `id` has `status` (within `limit`).
async fn trunk_status(s: &Server, key: &str, id: &str, status: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let list = s.ok("GET", "/v1/sip/trunks", key, None).await;
        let trunk = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("trunk {id} listed: {list}"));
        if trunk["status"] == status || Instant::now() > deadline {
            return trunk;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn outbound_trunks_are_kept_alive_with_options_and_down_ones_are_skipped() {
    let dir = tempdir();
    let (s, _) = voice_server_with(dir.path(), &[("CONTINUUM_SIP__TRUNK_KEEPALIVE_SECS", "1")]);
    let key = s.key().to_owned();
    // The carrier: sipp answering OPTIONS.
    let file = dir.path().join("options_uas.xml");
    std::fs::write(&file, OPTIONS_UAS).unwrap();
    let uas_port = free_udp_port();
    let mut uas = Command::new("sipp")
        .args([
            "-sf",
            file.to_str().unwrap(),
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-nostdin",
            "-trace_msg",
            "-message_file",
            dir.path().join("uas.messages.log").to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sipp runs");
    // A second carrier that is gone: nothing listens on its TCP port.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "gone carrier", "direction": "outbound", "address": format!("127.0.0.1:{dead_port}"),
                "transport": "tcp", "caller_ids": ["+14155550100"], "max_concurrent_calls": 5})),
        )
        .await;
    let alive = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "carrier out", "direction": "outbound", "address": format!("127.0.0.1:{uas_port}"),
                "caller_ids": ["+14155550100"], "max_concurrent_calls": 5})),
        )
        .await;
    let (dead_id, alive_id) = (
        dead["id"].as_str().unwrap().to_owned(),
        alive["id"].as_str().unwrap().to_owned(),
    );
    let up = trunk_status(&s, &key, &alive_id, "up", Duration::from_secs(15)).await;
    assert_eq!(up["status"], "up", "sipp answers OPTIONS: {up}");
    let checked = up["last_checked"].as_str().expect("last_checked is set");
    assert!(checked.ends_with('Z') && checked.len() >= 20, "{checked}");
    // Refused connections count at once: two probes and it is down.
    let down = trunk_status(&s, &key, &dead_id, "down", Duration::from_secs(15)).await;
    assert_eq!(down["status"], "down", "{down}");
    let m = metrics(&s).await;
    for (id, value) in [(&alive_id, "1"), (&dead_id, "0")] {
        let line = m
            .lines()
            .find(|l| l.starts_with("continuum_sip_trunk_up{") && l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("continuum_sip_trunk_up for {id} in /metrics"));
        assert!(line.contains("tenant=\""), "{line}");
        assert!(line.ends_with(&format!(" {value}")), "{line}");
    }

    // Dial-out skips the down trunk (created first: the default otherwise).
    let (_, conv) = s.patient_conversation(&key, "+14155550131").await;
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550131"})),
        )
        .await;
    assert_eq!(call["trunk_id"], alive_id.as_str(), "{call}");
    let id = call["id"].as_str().unwrap();
    let _ = s
        .call("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;

    // The carrier stops: two probes time out (timer F, 32 s each, a probe a
    // second) and it is down.
    uas.kill().unwrap();
    uas.wait().unwrap();
    let gone = trunk_status(&s, &key, &alive_id, "down", Duration::from_secs(60)).await;
    assert_eq!(gone["status"], "down", "{gone}");
    assert_ne!(gone["last_checked"], up["last_checked"]);
    // All down: dial-out still tries (a carrier may simply ignore OPTIONS).
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550132"})),
        )
        .await;
    assert_eq!(call["trunk_id"], dead_id.as_str(), "{call}");
    let sent = std::fs::read_to_string(dir.path().join("uas.messages.log")).unwrap_or_default();
    assert!(
        sent.contains("OPTIONS sip:127.0.0.1:"),
        "sipp saw our OPTIONS"
    );
}

// ---------------------------------------------------------------- SIP over TLS
//
// Debian's sipp is built without TLS (`sipp -v`: SCTP, PCAP, RTPSTREAM; no
// `-t l1`), so these tests speak SIP over TLS themselves with tokio-rustls.

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A self-signed certificate for `localhost` / 127.0.0.1, written as PEM
/// files into `dir` (`{name}.crt`, `{name}.key`).
fn self_signed(dir: &Path, name: &str) -> (rcgen::CertifiedKey<rcgen::KeyPair>, String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (ck, crt.display().to_string(), key.display().to_string())
}

fn tls_acceptor(ck: &rcgen::CertifiedKey<rcgen::KeyPair>) -> tokio_rustls::TlsAcceptor {
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// SIP messages off a stream, framed by Content-Length.
struct SipStream<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SipStream<S> {
    async fn send(&mut self, msg: &str) {
        self.io.write_all(msg.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next message (None: the peer closed), within 10 s.
    async fn next(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Keepalive CRLFs between messages.
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        let k = k.trim().to_ascii_lowercase();
                        (k == "content-length" || k == "l")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    return Some(String::from_utf8_lossy(&msg).into_owned());
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut chunk))
                .await
                .expect("a SIP message within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A response to `req` copying its Via, From, To (tagged), Call-ID and CSeq.
fn respond(req: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        let v = header(req, name).unwrap_or_default();
        let v = if name == "To" && !v.contains("tag=") {
            format!("{v};tag=carrier")
        } else {
            v.to_owned()
        };
        out += &format!("{name}: {v}\r\n");
    }
    out + "Content-Length: 0\r\n\r\n"
}

/// A TLS "carrier": answers OPTIONS 200 and INVITEs 486; the first line and
/// Via of every request are kept.
fn tls_carrier(acceptor: tokio_rustls::TlsAcceptor) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut sip = SipStream {
                    io: tls,
                    buf: Vec::new(),
                };
                while let Some(msg) = sip.next().await {
                    if msg.starts_with("SIP/2.0") {
                        continue;
                    }
                    log.lock().unwrap().push(msg.clone());
                    if msg.starts_with("OPTIONS ") {
                        sip.send(&respond(&msg, "200 OK")).await;
                    } else if msg.starts_with("INVITE ") {
                        sip.send(&respond(&msg, "486 Busy Here")).await;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn sip_over_tls_calls_in_and_out() {
    let dir = tempdir();
    let (ours, crt, key_file) = self_signed(dir.path(), "sip");
    let tls_port = free_tcp_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let (s, _) = voice_server_with(
        dir.path(),
        &[
            ("CONTINUUM_SIP__TLS_LISTEN", &tls_listen),
            ("CONTINUUM_SIP__TLS_CERT", &crt),
            ("CONTINUUM_SIP__TLS_KEY", &key_file),
            // The carrier's certificate is ours (a private CA, in effect).
            ("CONTINUUM_SIP__TLS_CA", &crt),
            ("CONTINUUM_SIP__TRUNK_KEEPALIVE_SECS", "1"),
        ],
    );
    let key = s.key().to_owned();
    inbound_route(&s, &key, "+14155550140", json!({"type": "conversation"})).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550141").await;

    // Inbound: a phone calls over TLS, trusting exactly our certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ours.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    let me = tcp.local_addr().unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("the gateway's TLS handshake");
    let mut phone = SipStream {
        io: tls,
        buf: Vec::new(),
    };
    let rtp = free_udp_port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    let common = "From: <sip:+14155550141@127.0.0.1>;tag=tlsphone\r\nCall-ID: tls-call-1@test\r\nMax-Forwards: 70\r\n";
    phone
        .send(&format!(
            "INVITE sip:+14155550140@127.0.0.1:{tls_port};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {me};branch=z9hG4bKtls1\r\n{common}\
             To: <sip:+14155550140@127.0.0.1>\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:+14155550141@{me};transport=tls>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ))
        .await;
    let ok = loop {
        let msg = phone.next().await.expect("answers on the same connection");
        if msg.starts_with("SIP/2.0 200") {
            break msg;
        }
        assert!(
            msg.starts_with("SIP/2.0 1"),
            "only provisional responses before the answer: {msg}"
        );
    };
    assert_eq!(
        header(&ok, "Via"),
        Some(format!("SIP/2.0/TLS {me};branch=z9hG4bKtls1").as_str()),
        "{ok}"
    );
    let contact = header(&ok, "Contact").unwrap_or_default();
    assert!(
        contact.contains(&format!(":{tls_port};transport=tls")),
        "the Contact says TLS: {ok}"
    );
    let to = header(&ok, "To").unwrap().to_owned();
    assert!(to.contains("tag="), "{ok}");
    phone
        .send(&format!(
            "ACK sip:+14155550140@127.0.0.1:{tls_port};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {me};branch=z9hG4bKtls2\r\n{common}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    let answered = eventually(&s, &key, &format!("/v1/conversations/{conv}/calls"), |c| {
        c[0]["state"] == "answered"
    })
    .await;
    assert_eq!(answered[0]["state"], "answered", "{answered}");
    phone
        .send(&format!(
            "BYE sip:+14155550140@127.0.0.1:{tls_port};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {me};branch=z9hG4bKtls3\r\n{common}To: {to}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    let bye_ok = phone.next().await.expect("the BYE is answered");
    assert!(
        bye_ok.starts_with("SIP/2.0 200") && header(&bye_ok, "CSeq") == Some("2 BYE"),
        "{bye_ok}"
    );
    let ended = eventually(&s, &key, &format!("/v1/conversations/{conv}/calls"), |c| {
        c[0]["state"] == "ended"
    })
    .await;
    assert_eq!(ended[0]["cause"], "remote_hangup", "{ended}");

    // Outbound: a TLS trunk whose certificate sip.tls_ca trusts is up (its
    // OPTIONS go over TLS) and takes the call; one with a certificate
    // nobody vouches for is down.
    let (carrier_port, seen) = tls_carrier(tls_acceptor(&ours));
    let (stranger, _, _) = self_signed(dir.path(), "stranger");
    let (stranger_port, stranger_seen) = tls_carrier(tls_acceptor(&stranger));
    let trusted = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "tls carrier", "direction": "outbound", "address": format!("127.0.0.1:{carrier_port}"),
                "transport": "tls", "caller_ids": ["+14155550100"], "max_concurrent_calls": 5})),
        )
        .await;
    let untrusted = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "impostor", "direction": "outbound", "address": format!("127.0.0.1:{stranger_port}"),
                "transport": "tls", "caller_ids": ["+14155550100"], "max_concurrent_calls": 5})),
        )
        .await;
    let (trusted_id, untrusted_id) = (
        trusted["id"].as_str().unwrap(),
        untrusted["id"].as_str().unwrap(),
    );
    let up = trunk_status(&s, &key, trusted_id, "up", Duration::from_secs(15)).await;
    assert_eq!(up["status"], "up", "{up}");
    let down = trunk_status(&s, &key, untrusted_id, "down", Duration::from_secs(15)).await;
    assert_eq!(down["status"], "down", "{down}");
    assert!(
        stranger_seen.lock().unwrap().is_empty(),
        "nothing is sent to a trunk whose certificate fails"
    );
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550141", "trunk_id": trusted_id})),
        )
        .await;
    let id = call["id"].as_str().unwrap();
    let failed = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "failed"
    })
    .await;
    assert_eq!(
        failed["cause"], "busy",
        "the carrier's 486 came back over TLS: {failed}"
    );
    let seen = seen.lock().unwrap().clone();
    let invite = seen
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("the INVITE reached the TLS carrier: {seen:?}"));
    assert!(
        invite.starts_with(&format!(
            "INVITE sip:+14155550141@127.0.0.1:{carrier_port};transport=tls SIP/2.0"
        )),
        "{invite}"
    );
    assert!(
        header(invite, "Via")
            .is_some_and(|v| v.starts_with(&format!("SIP/2.0/TLS 127.0.0.1:{tls_port};"))),
        "{invite}"
    );
    assert!(
        header(invite, "Contact").is_some_and(|c| c.contains(";transport=tls")),
        "{invite}"
    );
    assert!(seen.iter().any(|m| m.starts_with("OPTIONS ")), "{seen:?}");
}

// ------------------------------------------------------------------
// Mid-call signalling and races against sipp; media from the test's own
// UDP sockets where the test must control what arrives from where.

/// A caller known by `phone` with a conversation, calling `number`
/// (routed to the caller's conversation); returns the conversation.
async fn caller_setup(s: &Server, key: &str, number: &str, phone: &str) -> String {
    inbound_number(s, key, number).await;
    s.patient_conversation(key, phone).await.1
}

/// The conversation's one call once `done` holds for it.
async fn the_call(s: &Server, key: &str, conv: &str, done: impl Fn(&Value) -> bool) -> Value {
    let calls = eventually(s, key, &format!("/v1/conversations/{conv}/calls"), |v| {
        v.as_array().is_some_and(|a| a.len() == 1 && done(&a[0]))
    })
    .await;
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{calls}");
    assert!(done(&calls[0]), "{calls}");
    calls[0].clone()
}

fn event<'a>(events: &'a Value, kind: &str) -> Option<&'a Value> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind)
}

/// Polls /metrics until `series` reaches `at_least` (15 s); returns its value.
async fn counter_reaches(s: &Server, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = counter(&metrics(s).await, series);
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An RTP packet (version 2, no CSRC or extension).
fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend(seq.to_be_bytes());
    p.extend(ts.to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend(payload);
    p
}

/// The next RTP datagram on `sock` within `secs` (RTCP is skipped): its source.
async fn next_rtp(sock: &tokio::net::UdpSocket, secs: u64) -> Option<std::net::SocketAddr> {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, from) = tokio::time::timeout(left, sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        // RTCP has payload types 200..=204 in its second byte.
        if n >= 12 && buf[0] >> 6 == 2 && !(200..=204).contains(&buf[1]) {
            return Some(from);
        }
    }
}

#[tokio::test]
async fn a_caller_puts_the_gateway_on_hold_and_back_with_reinvites() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = caller_setup(&s, &key, "+14155550302", "+14155550133").await;
    // Hold (a=sendonly) must be answered recvonly (or inactive), the resume
    // sendrecv: sipp checks each 200's SDP and fails the call otherwise.
    let hold = format!("{PCMU}\na=sendonly");
    let resume = format!("{PCMU}\na=sendrecv");
    let scenario = Uac::new("+14155550133")
        .invite(PCMU)
        .answered()
        .pause(400)
        .reinvite(&hold, "a=(recvonly|inactive)")
        .pause(700)
        .reinvite(&resume, "a=sendrecv")
        .pause(700)
        .bye()
        .build();
    Sipp::uac(dir.path(), "hold", &scenario, sip, "+14155550302")
        .assert_ok()
        .await;
    // The call stayed up through both re-INVITEs and ended by the caller's BYE.
    let call = the_call(&s, &key, &conv, |c| c["state"] == "ended").await;
    assert_eq!(call["cause"], "remote_hangup", "{call}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    let k = kinds(&events);
    assert!(k.contains(&"call.started".to_owned()), "{k:?}");
    assert!(!k.contains(&"call.failed".to_owned()), "{k:?}");
    let ended = event(&events, "call.ended").unwrap();
    assert_eq!(ended["meta"]["reason"], "remote_hangup", "{ended}");
    // 1.8 s of scenario pauses (hold time included): whole seconds, rounded down.
    let secs = ended["meta"]["duration_secs"].as_u64().unwrap();
    assert!((1..=10).contains(&secs), "{ended}");
}

#[tokio::test]
async fn a_reinvite_changes_the_codec_from_pcmu_to_pcma() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = caller_setup(&s, &key, "+14155550303", "+14155550134").await;
    // The caller starts on PCMU, then offers PCMA alone: the 200 must answer
    // PCMA (sipp checks it and fails the call otherwise).
    let pcma = "m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15";
    let scenario = Uac::new("+14155550134")
        .invite(PCMU)
        .answered_where(Some("m=audio [0-9]+ RTP/AVP 0"))
        .pause(300)
        .reinvite(pcma, "m=audio [0-9]+ RTP/AVP 8")
        .pause(300)
        .bye()
        .build();
    Sipp::uac(dir.path(), "codec", &scenario, sip, "+14155550303")
        .assert_ok()
        .await;
    let call = the_call(&s, &key, &conv, |c| c["state"] == "ended").await;
    assert_eq!(call["cause"], "remote_hangup", "{call}");
}

#[tokio::test]
async fn a_caller_who_cancels_at_once_leaves_no_call_up() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = caller_setup(&s, &key, "+14155550301", "+14155550132").await;
    // CANCEL right after the 100: the gateway is still routing the call
    // (store lookups, the call record); its 200 may cross the CANCEL, and
    // then sipp ACKs and hangs up instead (the scenario takes either way).
    let scenario = Uac::new("+14155550132").invite_and_cancel(PCMU).build();
    Sipp::uac(dir.path(), "cancel", &scenario, sip, "+14155550301")
        .assert_ok()
        .await;
    let call = the_call(&s, &key, &conv, |c| {
        c["state"] == "failed" || c["state"] == "ended"
    })
    .await;
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        let k = kinds(v);
        k.contains(&"call.failed".to_owned()) || k.contains(&"call.ended".to_owned())
    })
    .await;
    if call["state"] == "failed" {
        // The CANCEL won: 487, never answered.
        assert_eq!(call["cause"], "cancelled", "{call}");
        let failed = event(&events, "call.failed")
            .unwrap_or_else(|| panic!("call.failed on the timeline: {events}"));
        assert_eq!(failed["channel"], "voice");
        assert_eq!(failed["meta"]["reason"], "cancelled", "{failed}");
        assert_eq!(failed["meta"]["sip_status"], 487, "{failed}");
        assert!(event(&events, "call.started").is_none(), "{events}");
    } else {
        // The 200 crossed the CANCEL: answered, then the caller's BYE.
        assert_eq!(call["cause"], "remote_hangup", "{call}");
        assert!(event(&events, "call.started").is_some(), "{events}");
    }
    // Nothing is left up: the call cannot be hung up any more.
    let id = call["id"].as_str().unwrap();
    let (status, v) = s
        .call("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    assert_eq!(status, 409, "{v}");
}

#[tokio::test]
async fn hanging_up_while_ringing_acks_and_byes_a_200_that_crossed_the_cancel() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    // The carrier rings, and its 200 to the INVITE crosses our CANCEL (it
    // answers the CANCEL 200 too). RFC 3261 9.1: the caller must ACK that
    // 200 and end the call with a BYE.
    let scenario = Uas::ringing()
        .receive("CANCEL", None)
        .respond("200 OK")
        .answer()
        .receive("ACK", None)
        .respond_to("BYE", "200 OK")
        .build();
    let uas = Sipp::uas(dir.path(), "crossing", Some(&scenario));
    outbound_trunk(&s, &key, uas.port, 2).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550134").await;
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550134"})),
        )
        .await;
    let id = call["id"].as_str().unwrap().to_owned();
    let ringing = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "ringing"
    })
    .await;
    assert_eq!(ringing["state"], "ringing", "{ringing}");
    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    // sipp got its ACK and BYE (it fails on a missing one, after its timeout).
    uas.assert_ok().await;
    let ended = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "failed"
    })
    .await;
    assert_eq!(ended["state"], "failed", "never answered for us: {ended}");
    assert_eq!(ended["cause"], "cancelled", "{ended}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.failed".to_owned())
    })
    .await;
    let failed = event(&events, "call.failed").unwrap_or_else(|| panic!("{events}"));
    assert_eq!(failed["meta"]["reason"], "cancelled", "{failed}");
    let k = kinds(&events);
    assert!(
        !k.contains(&"call.started".to_owned()) && !k.contains(&"call.ended".to_owned()),
        "{k:?}"
    );
    let (status, _) = s
        .call("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    assert_eq!(status, 409, "nothing left up");
}

#[tokio::test]
async fn a_blind_transfer_refers_the_phone_and_ends_our_leg() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let target = "sip:desk@pbx.example.org";
    // The carrier answers, takes our REFER (202), reports the transfer's
    // success (NOTIFY, sipfrag 200) and expects our BYE.
    let scenario = Uas::ringing()
        .answer()
        .receive("ACK", None)
        .referred(&format!("<{target}>"), "SIP/2.0 200 OK")
        .respond_to("BYE", "200 OK")
        .build();
    let uas = Sipp::uas(dir.path(), "transferee", Some(&scenario));
    outbound_trunk(&s, &key, uas.port, 2).await;
    let (_, conv) = s.patient_conversation(&key, "+14155550135").await;
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550135"})),
        )
        .await;
    let id = call["id"].as_str().unwrap().to_owned();
    let answered = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "answered"
    })
    .await;
    assert_eq!(answered["state"], "answered", "{answered}");
    let (status, v) = s
        .call(
            "POST",
            &format!("/v1/calls/{id}/transfer"),
            &key,
            Some(json!({"target": target})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    uas.assert_ok().await;
    let ended = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "ended"
    })
    .await;
    assert_eq!(ended["state"], "ended", "{ended}");
    assert_eq!(ended["cause"], "transferred", "{ended}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    let e = event(&events, "call.ended").unwrap_or_else(|| panic!("{events}"));
    assert_eq!(e["meta"]["reason"], "transferred", "{e}");
}

#[tokio::test]
async fn rtp_from_a_second_source_is_dropped_and_the_call_stays_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = caller_setup(&s, &key, "+14155550303", "+14155550136").await;
    let bind = || tokio::net::UdpSocket::bind("127.0.0.1:0");
    // The SDP names one socket; the phone's media comes from another (as
    // behind NAT), so latching shows: the gateway's RTP moves to it.
    let (sdp, phone, intruder) = (
        bind().await.unwrap(),
        bind().await.unwrap(),
        bind().await.unwrap(),
    );
    let sdp_port = sdp.local_addr().unwrap().port();
    let scenario = Uac::new("+14155550136")
        .invite(&pcmu_at(sdp_port))
        .answered()
        .await_bye()
        .build();
    let uac = Sipp::uac(dir.path(), "latching", &scenario, sip, "+14155550303");
    let call = the_call(&s, &key, &conv, |c| c["state"] == "answered").await;
    let gateway = next_rtp(&sdp, 10)
        .await
        .expect("the gateway sends RTP to the SDP address");

    // The phone talks: 20 ms PCMU frames until the end of the test.
    let phone = Arc::new(phone);
    let talking = Arc::new(AtomicBool::new(true));
    let talker = {
        let (phone, talking) = (phone.clone(), talking.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut seq = 1000u16;
            while talking.load(Ordering::Relaxed) {
                tick.tick().await;
                let p = rtp(
                    0,
                    seq == 1000,
                    seq,
                    u32::from(seq) * 160,
                    0x1111,
                    &[0xff; 160],
                );
                let _ = phone.send_to(&p, gateway).await;
                seq = seq.wrapping_add(1);
            }
        })
    };
    assert!(
        next_rtp(&phone, 10).await == Some(gateway),
        "the gateway latched onto the phone's media"
    );

    // The intruder: the phone's own stream replayed, then a stream of its
    // own in sequence (what a legitimate move looks like, but the latched
    // source never went quiet).
    let dropped_before = counter(
        &metrics(&s).await,
        "continuum_sip_media_dropped_total{reason=\"wrong_source\"}",
    );
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u32;
    for i in 0..300u16 {
        tick.tick().await;
        let (ssrc, seq) = if i < 100 {
            (0x1111, 1000 + i)
        } else {
            (0x2222, i)
        };
        let p = rtp(0, false, seq, u32::from(seq) * 160, ssrc, &[0x7f; 160]);
        intruder.send_to(&p, gateway).await.unwrap();
        sent += 1;
    }
    let series = "continuum_sip_media_dropped_total{reason=\"wrong_source\"}";
    let dropped =
        counter_reaches(&s, series, dropped_before + f64::from(sent)).await - dropped_before;
    // Loopback loses nothing at this rate; allow a stray loss, not a miss.
    assert!(
        (f64::from(sent) * 0.97..=f64::from(sent)).contains(&dropped),
        "{dropped} of {sent} intruding packets counted as dropped"
    );
    // The gateway still sends to the phone, and nothing to the intruder.
    for _ in 0..10 {
        assert_eq!(
            next_rtp(&phone, 5).await,
            Some(gateway),
            "the phone keeps hearing the gateway"
        );
    }
    let mut buf = [0u8; 2048];
    assert!(
        intruder.try_recv_from(&mut buf).is_err(),
        "the intruder got media"
    );
    let id = call["id"].as_str().unwrap();
    let up = s.ok("GET", &format!("/v1/calls/{id}"), &key, None).await;
    assert_eq!(up["state"], "answered", "the call stays up: {up}");

    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    uac.assert_ok().await;
    talking.store(false, Ordering::Relaxed);
    talker.await.unwrap();
    let ended = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "ended"
    })
    .await;
    assert_eq!(ended["cause"], "hangup", "{ended}");
}

/// RFC 4733 events (one per `digits` char, 0-9) from `sock` to `to`: a
/// start packet and two end packets each; `paced`: a packet a millisecond,
/// else all at once.
async fn dtmf_storm(
    sock: &tokio::net::UdpSocket,
    to: std::net::SocketAddr,
    digits: &str,
    paced: bool,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut seq = 1u16;
    for (i, d) in digits.chars().enumerate() {
        let event = d.to_digit(10).expect("0-9") as u8;
        let ts = 8000 + i as u32 * 800;
        for (end, duration) in [(false, 160u16), (true, 400), (true, 400)] {
            if paced {
                tick.tick().await;
            }
            let flags = if end { 0x80 } else { 0 } | 10; // volume -10 dBm0
            let [hi, lo] = duration.to_be_bytes();
            let p = rtp(101, !end, seq, ts, 0x3333, &[event, flags, hi, lo]);
            let _ = sock.send_to(&p, to).await;
            seq = seq.wrapping_add(1);
        }
    }
}

#[tokio::test]
async fn a_dtmf_storm_leaves_the_call_up_and_the_timeline_bounded() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = caller_setup(&s, &key, "+14155550304", "+14155550137").await;
    let phone = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = phone.local_addr().unwrap().port();
    // 100 digits by SIP INFO from sipp, 400 by RFC 4733 from the test.
    let info: String = (0..100)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    let scenario = Uac::new("+14155550137")
        .invite(&pcmu_at(port))
        .answered()
        .info_dtmf(&info)
        .await_bye()
        .build();
    let uac = Sipp::uac(dir.path(), "storm", &scenario, sip, "+14155550304");
    let call = the_call(&s, &key, &conv, |c| c["state"] == "answered").await;
    let gateway = next_rtp(&phone, 10).await.expect("RTP from the gateway");
    let storm: String = (0..400)
        .map(|i| char::from(b'0' + (i * 7 % 10) as u8))
        .collect();
    dtmf_storm(&phone, gateway, &storm, true).await;
    let rfc4733 = counter_reaches(
        &s,
        "continuum_sip_dtmf_received_total{via=\"rfc4733\"}",
        400.0,
    )
    .await;
    assert!(
        (390.0..=400.0).contains(&rfc4733),
        "each event is one digit, once: {rfc4733}"
    );
    let by_info =
        counter_reaches(&s, "continuum_sip_dtmf_received_total{via=\"info\"}", 100.0).await;
    assert_eq!(by_info, 100.0, "every INFO digit (SIP retransmits)");
    let id = call["id"].as_str().unwrap();
    let up = s.ok("GET", &format!("/v1/calls/{id}"), &key, None).await;
    assert_eq!(up["state"], "answered", "the call stays up: {up}");
    // Digits in a conversation call are not timeline events: 500 of them
    // add nothing to it (only a PIN dial-in reads them).
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
        .await;
    let voice: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["channel"] == "voice")
        .collect();
    assert_eq!(voice.len(), 1, "only call.started: {voice:?}");
    assert_eq!(voice[0]["kind"], "call.started");

    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    uac.assert_ok().await;

    // A storm into a PIN dial-in: three wrong PINs hang up, and the digits
    // after them look nothing up.
    inbound_route(&s, &key, "+14155550305", json!({"type": "room_pin"})).await;
    let phone = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = phone.local_addr().unwrap().port();
    let scenario = Uac::new("+14155550137")
        .invite(&pcmu_at(port))
        .answered()
        .await_bye()
        .build();
    let uac = Sipp::uac(dir.path(), "pin_storm", &scenario, sip, "+14155550305");
    // The gateway's media comes first (answered); then the storm, at once:
    // digits queue up behind the PIN lookups.
    let gateway = next_rtp(&phone, 10).await.expect("RTP from the gateway");
    let storm: String = (0..300)
        .map(|i| char::from(b'0' + (i * 3 % 10) as u8))
        .collect();
    dtmf_storm(&phone, gateway, &storm, false).await;
    uac.assert_ok().await;
    let unmatched = counter_reaches(&s, "continuum_sip_pin_calls_unmatched_total", 1.0).await;
    assert_eq!(unmatched, 1.0, "the dial-in ended without a room");
    let m = metrics(&s).await;
    assert_eq!(
        counter(&m, "continuum_sip_pin_refused_total"),
        3.0,
        "three PIN lookups, not one per six digits of the storm"
    );
}

// ------------------------------------------------------------------
// Dispatch rule `target`: the gateway as a B2BUA between a sipp caller
// and a sipp phone (the target).

/// An inbound trunk for `number` (from loopback) whose dispatch rule rings
/// the target `front-desk` at `port` on loopback.
async fn target_number(s: &Server, key: &str, number: &str, port: u16) {
    inbound_route(
        s,
        key,
        number,
        json!({"type": "target", "name": "front-desk",
            "sip_uri": format!("sip:desk@127.0.0.1:{port}")}),
    )
    .await;
}

/// Whether `sock` gets RTP (PCMU) whose payload is `byte` over and over
/// (what the other side of the bridge talks) within `secs`.
async fn hears(sock: &tokio::net::UdpSocket, byte: u8, secs: u64) -> bool {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok((n, _))) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
            return false;
        };
        if n == 12 + 160
            && buf[0] >> 6 == 2
            && buf[1] & 0x7f == 0
            && buf[12..n].iter().filter(|b| **b == byte).count() > 150
        {
            return true;
        }
    }
}

/// Sends 20 ms PCMU frames of `byte` from `from` to `to` while `talking`
/// (SSRC 0x3333, as [`dtmf_storm`]'s events, sequence numbers from 100).
fn talk(
    from: Arc<tokio::net::UdpSocket>,
    to: std::net::SocketAddr,
    byte: u8,
    talking: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut seq = 100u16;
        while talking.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let p = rtp(
                0,
                seq == 100,
                seq,
                u32::from(seq) * 160,
                0x3333,
                &[byte; 160],
            );
            let _ = from.send_to(&p, to).await;
            seq = seq.wrapping_add(1);
        }
    })
}

#[tokio::test]
async fn a_target_rule_bridges_the_caller_to_a_sip_phone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();

    // 1. Audio crosses the bridge both ways; we hang up (the API): both
    // phones get a BYE. Media ends are the test's own sockets.
    let conv = s.patient_conversation(&key, "+14155550140").await.1;
    let bind = || tokio::net::UdpSocket::bind("127.0.0.1:0");
    let caller_media = Arc::new(bind().await.unwrap());
    let target_media = Arc::new(bind().await.unwrap());
    let desk = Uas::ringing()
        .answer_at(target_media.local_addr().unwrap().port())
        // From is the caller's number (the ACK carries the INVITE's From).
        .receive("ACK", Some(r"From: *<sip:\+14155550140@"))
        .respond_to("BYE", "200 OK")
        .build();
    let desk = Sipp::uas(dir.path(), "desk", Some(&desk));
    target_number(&s, &key, "+14155550310", desk.port).await;
    let caller = Uac::new("+14155550140")
        .invite(&pcmu_at(caller_media.local_addr().unwrap().port()))
        .answered()
        .await_bye()
        .build();
    let caller = Sipp::uac(dir.path(), "caller", &caller, sip, "+14155550310");
    let call = the_call(&s, &key, &conv, |c| c["state"] == "answered").await;
    let to_caller = next_rtp(&caller_media, 10)
        .await
        .expect("the gateway sends RTP to the caller");
    let to_target = next_rtp(&target_media, 10)
        .await
        .expect("the gateway sends RTP to the target");
    // DTMF keyed by the caller (RFC 4733) is sent on to the target (which
    // negotiated telephone-events too).
    dtmf_storm(&caller_media, to_caller, "5", true).await;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    let digit = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, target_media.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if n >= 16 && buf[1] & 0x7f == 101 => break Some(buf[12]),
            Ok(Ok(_)) => {}
            _ => break None,
        }
    };
    assert_eq!(digit, Some(5), "the caller's digit reaches the target");
    let talking = Arc::new(AtomicBool::new(true));
    let talkers = [
        talk(caller_media.clone(), to_caller, 0x20, talking.clone()),
        talk(target_media.clone(), to_target, 0x30, talking.clone()),
    ];
    assert!(
        hears(&target_media, 0x20, 10).await,
        "the target hears the caller"
    );
    assert!(
        hears(&caller_media, 0x30, 10).await,
        "the caller hears the target"
    );
    talking.store(false, Ordering::Relaxed);
    for t in talkers {
        t.await.unwrap();
    }
    let id = call["id"].as_str().unwrap();
    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    caller.assert_ok().await;
    desk.assert_ok().await;
    let ended = the_call(&s, &key, &conv, |c| c["state"] == "ended").await;
    assert_eq!(ended["cause"], "hangup", "{ended}");
    assert_eq!(ended["direction"], "inbound");
    assert_eq!(ended["remote"], "+14155550140");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    let started = event(&events, "call.started").unwrap_or_else(|| panic!("{events}"));
    assert_eq!(started["channel"], "voice");
    assert_eq!(started["meta"]["bridged_to"], "front-desk", "{started}");
    assert_eq!(started["meta"]["session_id"], call["id"], "{started}");
    let e = event(&events, "call.ended").unwrap();
    assert_eq!(e["meta"]["reason"], "hangup", "{e}");
    assert_eq!(e["meta"]["bridged_to"], "front-desk", "{e}");

    // 2. The caller hangs up: the BYE reaches the target.
    let conv = s.patient_conversation(&key, "+14155550141").await.1;
    let desk = Uas::ringing()
        .answer()
        .receive("ACK", None)
        .respond_to("BYE", "200 OK")
        .build();
    let desk = Sipp::uas(dir.path(), "desk_bye", Some(&desk));
    target_number(&s, &key, "+14155550311", desk.port).await;
    let caller = uac_scenario("+14155550141", PCMU, 200, 1500);
    Sipp::uac(dir.path(), "caller_bye", &caller, sip, "+14155550311")
        .assert_ok()
        .await;
    desk.assert_ok().await;
    let ended = the_call(&s, &key, &conv, |c| c["state"] == "ended").await;
    assert_eq!(ended["cause"], "remote_hangup", "{ended}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    assert!(event(&events, "call.started").is_some(), "{events}");
    let e = event(&events, "call.ended").unwrap();
    assert_eq!(e["meta"]["reason"], "remote_hangup", "{e}");
    assert!(e["meta"]["duration_secs"].as_u64().unwrap() >= 1, "{e}");

    // 3. The target hangs up: the BYE reaches the caller.
    let conv = s.patient_conversation(&key, "+14155550142").await.1;
    let desk = Uas::ringing().answer().acked_then_bye(1000).build();
    let desk = Sipp::uas(dir.path(), "desk_hangs_up", Some(&desk));
    target_number(&s, &key, "+14155550312", desk.port).await;
    let caller = Uac::new("+14155550142")
        .invite(PCMU)
        .answered()
        .await_bye()
        .build();
    Sipp::uac(dir.path(), "caller_hung_up", &caller, sip, "+14155550312")
        .assert_ok()
        .await;
    desk.assert_ok().await;
    let ended = the_call(&s, &key, &conv, |c| c["state"] == "ended").await;
    assert_eq!(ended["cause"], "target_hangup", "{ended}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.ended".to_owned())
    })
    .await;
    assert!(event(&events, "call.started").is_some(), "{events}");
    let e = event(&events, "call.ended").unwrap();
    assert_eq!(e["meta"]["reason"], "target_hangup", "{e}");
}

#[tokio::test]
async fn a_busy_target_answers_the_caller_busy() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = s.patient_conversation(&key, "+14155550143").await.1;
    let desk = Uas::ringing().reject("486 Busy Here").build();
    let desk = Sipp::uas(dir.path(), "busy_desk", Some(&desk));
    target_number(&s, &key, "+14155550313", desk.port).await;
    // The caller hears ringing (optional 180s), then 486.
    let caller = uac_scenario("+14155550143", PCMU, 486, 0);
    Sipp::uac(dir.path(), "caller_busy", &caller, sip, "+14155550313")
        .assert_ok()
        .await;
    desk.assert_ok().await;
    let call = the_call(&s, &key, &conv, |c| c["state"] == "failed").await;
    assert_eq!(call["cause"], "busy", "{call}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.failed".to_owned())
    })
    .await;
    let failed = event(&events, "call.failed").unwrap_or_else(|| panic!("{events}"));
    assert_eq!(failed["channel"], "voice");
    assert_eq!(failed["meta"]["reason"], "busy", "{failed}");
    assert_eq!(failed["meta"]["sip_status"], 486, "{failed}");
    assert_eq!(failed["meta"]["bridged_to"], "front-desk", "{failed}");
    assert!(event(&events, "call.started").is_none(), "{events}");

    // A target that is the gateway itself would bridge the call to itself
    // over and over: refused (503) before anything is dialled or recorded.
    target_number(&s, &key, "+14155550315", sip).await;
    let caller = uac_scenario("+14155550143", PCMU, 503, 0);
    Sipp::uac(dir.path(), "caller_loop", &caller, sip, "+14155550315")
        .assert_ok()
        .await;
    let series = "continuum_sip_calls_refused_total{reason=\"target_unreachable\"}";
    assert_eq!(counter(&metrics(&s).await, series), 1.0);
    let calls = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/calls"),
            &key,
            None,
        )
        .await;
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{calls}");
}

#[tokio::test]
async fn the_callers_cancel_cancels_the_ringing_target() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let conv = s.patient_conversation(&key, "+14155550144").await.1;
    // The target rings until it is cancelled: 200 to the CANCEL, 487 to
    // the INVITE (ACKed).
    let desk = Uas::rings_at_once()
        .receive("CANCEL", None)
        .respond("200 OK")
        .reject("487 Request Terminated")
        .build();
    let desk = Sipp::uas(dir.path(), "ringing_desk", Some(&desk));
    target_number(&s, &key, "+14155550314", desk.port).await;
    // The caller CANCELs at our 180. No race: the target's INVITE left
    // before that 180, and our CANCEL to the target waits for its 100/180
    // (RFC 3261 9.1). (The target's 180, relayed, is the same 180 again:
    // sipp takes it for a retransmission.) Steps: 0 INVITE, 1 an optional
    // 100, 2 the 180, 3 CANCEL, 4 its 200, 5 the 487, 6 its ACK.
    let caller = Uac::new("+14155550144")
        .invite(PCMU)
        .raw(
            r#"<send><![CDATA[
CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
From: "Patient" <sip:+14155550144@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]></send>
<recv response="200"/>
<recv response="487"/>
<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-6]
From: "Patient" <sip:+14155550144@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>"#,
        )
        .build()
        .replace(
            "<recv response=\"180\" optional=\"true\"/>",
            "<recv response=\"180\"/>",
        )
        .replace("<recv response=\"183\" optional=\"true\"/>\n", "");
    Sipp::uac(dir.path(), "caller_cancels", &caller, sip, "+14155550314")
        .assert_ok()
        .await;
    desk.assert_ok().await;
    let call = the_call(&s, &key, &conv, |c| c["state"] == "failed").await;
    assert_eq!(call["cause"], "cancelled", "{call}");
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        kinds(v).contains(&"call.failed".to_owned())
    })
    .await;
    let failed = event(&events, "call.failed").unwrap_or_else(|| panic!("{events}"));
    assert_eq!(failed["meta"]["reason"], "cancelled", "{failed}");
    assert_eq!(failed["meta"]["sip_status"], 487, "{failed}");
    assert_eq!(failed["meta"]["bridged_to"], "front-desk", "{failed}");
}

#[tokio::test]
async fn an_unanswered_fallback_call_texts_the_patient_a_link_back() {
    use common::providers::StandIn;
    let dir = tempdir();
    let (s, _sip) = voice_server_with(
        dir.path(),
        &[
            ("CONTINUUM_MESSAGING__ALLOW_PRIVATE_PROVIDERS", "true"),
            ("CONTINUUM_MESSAGING__ALLOW_HTTP_HOSTS", r#"["127.0.0.1"]"#),
        ],
    );
    let key = s.key().to_owned();
    let busy = Uas::ringing().reject("486 Busy Here").build();
    let carrier = Sipp::uas(dir.path(), "busy_patient", Some(&busy));
    outbound_trunk(&s, &key, carrier.port, 4).await;
    let sms = StandIn::start().await;
    s.ok(
        "POST",
        "/v1/messaging/providers",
        &key,
        Some(json!({"name": "sms", "kind": "twilio", "channels": ["sms"], "senders": ["+14155559999"],
            "spec": {"account_sid": "AC1", "base_url": sms.base}, "credentials": {"auth_token": "t"}})),
    )
    .await;
    let (_, conv) = s.patient_conversation(&key, "+14155550127").await;
    let room = s
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
    let call = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/fallback"),
            &key,
            Some(json!({"room_id": room})),
        )
        .await;
    let id = call["id"].as_str().unwrap();
    let failed = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "failed"
    })
    .await;
    assert_eq!(failed["cause"], "busy", "{failed}");
    // The patient gets one text with a link back into the same room.
    let reqs = sms.wait_for(|r| !r.is_empty()).await;
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].field("To"), Some("+14155550127"));
    let body = reqs[0].field("Body").unwrap();
    assert!(
        body.starts_with("We could not reach you by phone"),
        "{body}"
    );
    assert!(
        body.contains(&format!("/visit?room={room}&conversation={conv}#token=")),
        "{body}"
    );
    let ctx = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/context"),
            &key,
            None,
        )
        .await;
    assert_eq!(
        ctx["last_handoff"]["meta"]["handoff"], "after_failed_call",
        "{ctx}"
    );
    carrier.assert_ok().await;
}
