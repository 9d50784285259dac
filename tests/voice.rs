//! The SIP gateway against sipp (a SIP implementation we did not write):
//! inbound calls routed by trunk and dispatch rule onto the caller's
//! conversation, refusals (wrong source, unknown number, no common codec,
//! malformed SIP) with clear SIP answers, and dial-out through an outbound
//! trunk answered by a sipp UAS, hung up through the API. The timeline and
//! the call records are checked.

mod common;
use common::*;
use serde_json::{Value, json};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server whose SIP gateway listens on a known UDP port and may call loopback trunks.
fn voice_server(dir: &Path) -> (Server, u16) {
    let port = free_udp_port();
    let rtp = free_udp_port() & !1;
    let s = Server::start_with(
        dir,
        Opts {
            env: vec![
                (
                    "CONTINUUM_SIP__UDP_LISTEN".into(),
                    format!("127.0.0.1:{port}"),
                ),
                ("CONTINUUM_SIP__ALLOW_PRIVATE_TRUNKS".into(), "true".into()),
                (
                    "CONTINUUM_LOG".into(),
                    std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
                ),
                // A small range near a free port: tests run side by side.
                ("CONTINUUM_SIP__RTP_PORT_MIN".into(), rtp.to_string()),
                ("CONTINUUM_SIP__RTP_PORT_MAX".into(), (rtp + 19).to_string()),
            ],
            ..Default::default()
        },
    );
    (s, port)
}

/// A UAC scenario: INVITE from `caller` with `sdp_media` (an `m=` line and
/// its attributes), expecting final status `expect`; on 200 it ACKs, waits
/// `hold_ms`, and hangs up.
fn uac_scenario(caller: &str, sdp_media: &str, expect: u16, hold_ms: u64) -> String {
    let invite = format!(
        r#"<send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Patient" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:{caller}@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
{sdp_media}
]]></send>
<recv response="100" optional="true"/>
<recv response="180" optional="true"/>
<recv response="183" optional="true"/>
"#
    );
    let tail = if expect == 200 {
        format!(
            r#"<recv response="200" rtd="true"/>
<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Patient" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
]]></send>
<pause milliseconds="{hold_ms}"/>
<send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Patient" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0
]]></send>
<recv response="200" crlf="true"/>
"#
        )
    } else {
        // A failure final response is ACKed by the transaction (same branch).
        format!(
            r#"<recv response="{expect}"/>
<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Patient" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
]]></send>
"#
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"continuum uac\">\n{invite}{tail}</scenario>\n"
    )
}

const PCMU: &str = "m=audio [media_port] RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15";

/// Runs sipp as a UAC calling `called` at the gateway; returns its output.
fn sipp_call(dir: &Path, name: &str, scenario: &str, sip_port: u16, called: &str) -> Output {
    let file = dir.join(format!("{name}.xml"));
    std::fs::write(&file, scenario).unwrap();
    let local = free_udp_port().to_string();
    let media = free_udp_port().to_string();
    Command::new("sipp")
        .args([
            &format!("127.0.0.1:{sip_port}"),
            "-sf",
            file.to_str().unwrap(),
            "-s",
            called,
            "-i",
            "127.0.0.1",
            "-p",
            &local,
            "-mp",
            &media,
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-trace_err",
            "-error_file",
            dir.join(format!("{name}.errors.log")).to_str().unwrap(),
        ])
        .current_dir(dir)
        .output()
        .expect("sipp runs (Debian package sip-tester)")
}

fn assert_sipp_ok(out: &Output, dir: &Path, name: &str) {
    let errors =
        std::fs::read_to_string(dir.join(format!("{name}.errors.log"))).unwrap_or_default();
    assert!(
        out.status.success(),
        "sipp {name} failed ({}):\n{}\n{errors}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Polls `GET path` until `done` holds (15 s); returns the last answer.
async fn eventually(s: &Server, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = s.ok("GET", path, key, None).await;
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kinds(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

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
    let uas_port = free_udp_port();
    let uas = Command::new("sipp")
        .args([
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-mp",
            &free_udp_port().to_string(),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "40s",
            "-timeout_error",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sipp runs");
    let trunk = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "carrier out", "direction": "outbound", "address": format!("127.0.0.1:{uas_port}"),
                "caller_ids": ["+14155550100"], "max_concurrent_calls": 1})),
        )
        .await;
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
    let out = uas.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the sipp UAS saw a complete call ({})",
        out.status
    );
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
    let uas_port = free_udp_port();
    let uas = Command::new("sipp")
        .args([
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-mp",
            &free_udp_port().to_string(),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "40s",
            "-timeout_error",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sipp runs");
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(json!({"name": "carrier out", "direction": "outbound", "address": format!("127.0.0.1:{uas_port}"),
            "caller_ids": ["+14155550100"], "max_concurrent_calls": 4})),
    )
    .await;
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
    assert!(uas.wait_with_output().unwrap().status.success());
}

#[tokio::test]
async fn a_caller_keys_in_the_visit_pin_and_joins_the_room_by_phone() {
    let dir = tempdir();
    let (s, sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(json!({"name": "carrier", "direction": "inbound", "numbers": ["+14155550200"], "allowed_sources": ["127.0.0.1/32"]})),
    )
    .await;
    s.ok(
        "POST",
        "/v1/sip/dispatch-rules",
        &key,
        Some(json!({"number": "+14155550200", "action": {"type": "room_pin"}})),
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
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
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
    let port = free_udp_port();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: vec![
                (
                    "CONTINUUM_SIP__UDP_LISTEN".into(),
                    format!("127.0.0.1:{port}"),
                ),
                ("CONTINUUM_SIP__ALLOW_PRIVATE_TRUNKS".into(), "true".into()),
                ("CONTINUUM_SIP__RING_TIMEOUT_SECS".into(), "2".into()),
            ],
            ..Default::default()
        },
    );
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
    // The INVITE did reach the trunk (and was retransmitted over UDP).
    black_hole
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = black_hole
        .recv_from(&mut buf)
        .expect("an INVITE reached the trunk");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("INVITE sip:+14155550128@"));
}
