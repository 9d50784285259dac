//! SDES-SRTP with a real phone: an outbound trunk with
//! `media_encryption: "sdes"` dials baresip configured with `srtp-mand`
//! (SRTP required: it refuses plain RTP), playing 440 Hz. A second baresip,
//! plain RTP on a plain trunk, plays 1000 Hz. Both calls join the same room,
//! so each phone hears the other through the gateway and the SFU:
//!
//! - the plain phone hearing 440 Hz means the gateway authenticated and
//!   decrypted the SRTP phone's packets (libre's SRTP, not ours);
//! - the SRTP phone hearing 1000 Hz means it authenticated and decrypted
//!   what the gateway encrypted.
//!
//! The gateway's own counters back it up after the calls: SRTP packets in
//! and out, and no authentication failures. An sdes trunk to a phone that
//! does not do SRTP fails the call (never falls back to plain RTP).

mod common;
use common::phone::{baresip, heard_tone, tone};
use common::sipp::{free_udp_port, voice_server};
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn eventually(s: &Server, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = s.ok("GET", path, key, None).await;
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A phone process, stopped however the test ends.
struct Phone(std::process::Child);

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Prometheus counter's value (0 when absent).
fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_sdes_trunk_talks_srtp_with_a_real_phone_both_ways() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let (secure_dir, plain_dir) = (dir.path().join("secure"), dir.path().join("plain"));
    std::fs::create_dir_all(&secure_dir).unwrap();
    std::fs::create_dir_all(&plain_dir).unwrap();
    let (t440, t1000) = (secure_dir.join("440.wav"), plain_dir.join("1000.wav"));
    tone(&t440, 440, 8000, 60);
    tone(&t1000, 1000, 8000, 60);
    let (secure_rec, plain_rec) = (secure_dir.join("rec"), plain_dir.join("rec"));
    let (secure_port, plain_port) = (free_udp_port(), free_udp_port());
    let secure_phone = Phone(baresip(
        &secure_dir,
        secure_port,
        "+14155550130",
        &t440,
        &secure_rec,
        Some("srtp-mand"),
    ));
    let plain_phone = Phone(baresip(
        &plain_dir,
        plain_port,
        "+14155550131",
        &t1000,
        &plain_rec,
        None,
    ));

    let secure_trunk = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "srtp carrier", "direction": "outbound",
                "address": format!("127.0.0.1:{secure_port}"), "caller_ids": ["+14155550100"],
                "max_concurrent_calls": 2, "media_encryption": "sdes"})),
        )
        .await;
    assert_eq!(secure_trunk["media_encryption"], "sdes", "{secure_trunk}");
    let plain_trunk = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(json!({"name": "plain carrier", "direction": "outbound",
                "address": format!("127.0.0.1:{plain_port}"), "caller_ids": ["+14155550100"],
                "max_concurrent_calls": 2})),
        )
        .await;
    assert_eq!(plain_trunk["media_encryption"], "none", "{plain_trunk}");
    let (_, conv) = s.patient_conversation(&key, "+14155550130").await;
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
    let mut calls = Vec::new();
    for (to, trunk) in [
        ("+14155550130", &secure_trunk),
        ("+14155550131", &plain_trunk),
    ] {
        let call = s
            .ok(
                "POST",
                "/v1/calls",
                &key,
                Some(json!({"conversation_id": conv, "to": to, "trunk_id": trunk["id"], "room_id": room})),
            )
            .await;
        calls.push(call["id"].as_str().unwrap().to_owned());
    }
    for id in &calls {
        let c = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
            c["state"] == "answered"
        })
        .await;
        assert_eq!(
            c["state"],
            "answered",
            "{c}\nbaresip (srtp-mand): {}",
            std::fs::read_to_string(secure_dir.join("baresip.log")).unwrap_or_default()
        );
    }

    // Each phone hears the other's tone through the room: the last 2 s of
    // what it recorded, checked until both hold (30 s at most).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (secure_heard, plain_heard) = loop {
        let secure_heard = heard_tone(&secure_rec, 1000.0, 2);
        let plain_heard = heard_tone(&plain_rec, 440.0, 2);
        let done = secure_heard.0 > 0.3 && plain_heard.0 > 0.3;
        if done || Instant::now() > deadline {
            break (secure_heard, plain_heard);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "SRTP PHONE HEARD 1000 Hz: share {:.2} (rms {:.0}); PLAIN PHONE HEARD 440 Hz: share {:.2} (rms {:.0})",
        secure_heard.0, secure_heard.1, plain_heard.0, plain_heard.1
    );
    let log = std::fs::read_to_string(secure_dir.join("baresip.log")).unwrap_or_default();
    assert!(
        plain_heard.0 > 0.3,
        "the gateway decrypted the SRTP phone's 440 Hz: share {:.2}\n{log}",
        plain_heard.0
    );
    assert!(
        secure_heard.0 > 0.3,
        "the SRTP phone decrypted the gateway's 1000 Hz: share {:.2}\n{log}",
        secure_heard.0
    );

    for id in &calls {
        s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
            .await;
        let c = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
            c["state"] == "ended"
        })
        .await;
        assert_eq!(c["state"], "ended", "{c}");
    }
    // An sdes trunk to a phone without SRTP: the call fails, never plain.
    let mismatched = s
        .ok(
            "POST",
            "/v1/sip/trunks",
            &key,
            Some(
                json!({"name": "srtp to a plain phone", "direction": "outbound",
                "address": format!("127.0.0.1:{plain_port}"), "caller_ids": ["+14155550100"],
                "max_concurrent_calls": 2, "media_encryption": "sdes"}),
            ),
        )
        .await;
    let call = s
        .ok(
            "POST",
            "/v1/calls",
            &key,
            Some(json!({"conversation_id": conv, "to": "+14155550131", "trunk_id": mismatched["id"]})),
        )
        .await;
    let id = call["id"].as_str().unwrap();
    let c = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "failed" || c["state"] == "ended"
    })
    .await;
    assert_eq!(c["state"], "failed", "{c}");
    assert_eq!(c["cause"], "no_common_codec", "{c}");
    drop((secure_phone, plain_phone));
    // The gateway's view: SRTP both ways, nothing failed authentication.
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let srtp_in = counter(
        &metrics,
        "continuum_sip_srtp_packets_total{direction=\"in\"}",
    );
    let srtp_out = counter(
        &metrics,
        "continuum_sip_srtp_packets_total{direction=\"out\"}",
    );
    let failed = counter(
        &metrics,
        "continuum_sip_media_dropped_total{reason=\"srtp_auth_failed\"}",
    );
    println!("GATEWAY SRTP: {srtp_in} packets in, {srtp_out} out, {failed} failed authentication");
    assert!(
        srtp_in > 50.0 && srtp_out > 50.0,
        "one SRTP call's packets: {srtp_in} in, {srtp_out} out"
    );
    assert_eq!(failed, 0.0, "no SRTP packet failed authentication");
    // Keys never reach the server's log.
    let server_log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(!server_log.contains("inline:"), "an SDES key in the log");
}
