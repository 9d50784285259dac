//! The product's signature moment, end to end with real peers: a clinician
//! and a patient in a video visit (headless Chromium); the patient's browser
//! is killed; Continuum dials the patient's phone (baresip, a real SIP
//! phone playing 440 Hz and recording what it hears) through the outbound
//! trunk into the same room; the clinician's page shows the switch with the
//! context, hears the phone, and the phone hears the clinician's 1000 Hz.
//! Measures the switch: cut → INVITE at the trunk, and cut → answered.

mod common;
use common::phone::{baresip, tone, tone_share, wav_samples};
use common::sipp::{free_udp_port, voice_server};
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
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

#[tokio::test]
async fn a_failing_video_visit_moves_to_the_patients_phone_in_the_same_room() {
    let dir = tempdir();
    let (s, _sip) = voice_server(dir.path());
    let key = s.key().to_owned();
    let phone_port = free_udp_port();
    let work = dir.path().join("peers");
    std::fs::create_dir_all(&work).unwrap();
    let (t440, t1000, rec) = (
        work.join("tone440.wav"),
        work.join("tone1000.wav"),
        work.join("rec"),
    );
    tone(&t440, 440, 8000, 60);
    tone(&t1000, 1000, 48000, 60);
    let mut phone = baresip(&work, phone_port, "+14155550126", &t440, &rec, None);

    s.ok(
        "POST",
        "/v1/sip/trunks",
        &key,
        Some(json!({"name": "carrier out", "direction": "outbound", "address": format!("127.0.0.1:{phone_port}"),
            "caller_ids": ["+14155550100"], "max_concurrent_calls": 4})),
    )
    .await;
    let (_, conv) = s.patient_conversation(&key, "+14155550126").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "chat", "kind": "message", "body": "The rash spread to my left arm since Monday", "actor": {"type": "patient"}})),
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
    let token = |identity: &str, role: &str, name: &str| {
        let body = json!({"identity": identity, "role": role, "name": name, "grants": grants, "ttl_seconds": 1800});
        let (s, key) = (&s, &key);
        async move {
            s.ok("POST", "/v1/tokens", key, Some(body)).await["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let dr = token("dr-ng", "clinician", "Dr. Ng").await;
    let patient = token("pat-ana", "patient", "Ana Ruiz").await;
    let shots: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let out = browser_scenario(
        "fallback.mjs",
        &[
            &s.base,
            &room,
            &conv,
            &dr,
            &patient,
            t1000.to_str().unwrap(),
            shots.to_str().unwrap(),
        ],
        &[
            "both connected".into(),
            "the clinician's page says the patient moved to phone".into(),
            "with what was just discussed".into(),
            "the phone's 440 Hz reaches the clinician through the room".into(),
            "the phone participant has a phone badge".into(),
        ],
    )
    .await;
    let cut_at: i64 = out
        .lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()?
                .get("cut_at")?
                .as_i64()
        })
        .expect("the scenario printed the cut time");

    // The switch on the timeline, on the same conversation.
    let calls = eventually(&s, &key, &format!("/v1/conversations/{conv}/calls"), |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let call = &calls[0];
    assert_eq!(call["room_id"], room.as_str(), "{call}");
    let micros = |v: &Value| {
        let t = v.as_str().unwrap();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp_nanos()
            / 1_000_000
    };
    let invite_ms = micros(&call["created_at"]) as i64 - cut_at;
    let answered_ms = call.get("answered_at").map(|a| micros(a) as i64 - cut_at);
    println!("SWITCH: cut → INVITE {invite_ms} ms; cut → answered {answered_ms:?} ms");
    assert!(
        invite_ms < 5_000,
        "INVITE within 5 s of the cut (default settings): {invite_ms} ms"
    );
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
        .await;
    let list = events["events"].as_array().unwrap();
    let has = |kind: &str, channel: &str| {
        list.iter()
            .any(|e| e["kind"] == kind && e["channel"] == channel)
    };
    assert!(has("call.failed", "video"), "{events}");
    assert!(has("channel.switched", "voice"), "{events}");
    assert!(has("call.started", "voice"), "{events}");
    let failed = list
        .iter()
        .find(|e| e["kind"] == "call.failed" && e["channel"] == "video")
        .unwrap();
    assert_eq!(failed["meta"]["reason"], "media_stalled");

    // The phone heard the clinician: 1000 Hz in baresip's recording.
    let id = call["id"].as_str().unwrap();
    s.ok("POST", &format!("/v1/calls/{id}/hangup"), &key, None)
        .await;
    let ended = eventually(&s, &key, &format!("/v1/calls/{id}"), |c| {
        c["state"] == "ended"
    })
    .await;
    assert_eq!(ended["state"], "ended");
    let _ = phone.kill();
    let _ = phone.wait();
    let dump = std::fs::read_dir(&rec)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip recorded what it heard");
    let (rate, samples) = wav_samples(&dump);
    // The last seconds: the clinician speaking through the room.
    let tail = &samples[samples.len().saturating_sub(rate as usize * 3)..];
    let share = tone_share(rate, tail, 1000.0);
    println!(
        "PHONE HEARD: 1000 Hz share {share:.2} over {} samples",
        tail.len()
    );
    assert!(
        share > 0.3,
        "the clinician's 1000 Hz tone reaches the phone: share {share:.2}"
    );
}
