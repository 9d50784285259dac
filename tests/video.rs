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
            env: vec![("CONTINUUM_RTC__UDP_LISTEN".into(), "127.0.0.1:0".into())],
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550800").await;
    let room = s
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/rooms"),
            &key,
            Some(json!({})),
        )
        .await;
    let room_id = room["id"].as_str().unwrap().to_owned();
    let mut tokens = Vec::new();
    for (who, role) in [
        ("dr-lee", "clinician"),
        ("patient-1", "patient"),
        ("interpreter", "clinician"),
    ] {
        let t = s
            .ok("POST", "/v1/tokens", &key, Some(json!({"identity": who, "role": role, "grants": {"conversations": [conv], "rooms": [room_id]}})))
            .await;
        tokens.push(t["token"].as_str().unwrap().to_owned());
    }

    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("visit.mjs"))
        .args([&s.base, &room_id, &conv, &tokens[0], &tokens[1], &tokens[2]])
        .output()
        .await
        .expect("node runs the browser scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "A decodes B",
        "B decodes A",
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
