//! Crash safety: eight writers append while the server is killed with SIGKILL;
//! after a restart every acknowledged event is there exactly once, sequences
//! have no gaps, and the audit chain verifies.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_event() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv_a) = s.patient_conversation(&key, "+14155550300").await;
    let (_, conv_b) = s.patient_conversation(&key, "+14155550301").await;
    let convs = [conv_a.clone(), conv_b.clone()];

    let acked = Arc::new(parking_lot_free::Acked::default());
    let total = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, base, key, conv, acked, total) = (
            s.client.clone(),
            s.base.clone(),
            key.clone(),
            convs[w % 2].clone(),
            acked.clone(),
            total.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let idem = format!("w{w}-{i}");
                let r = client
                    .post(format!("{base}/v1/conversations/{conv}/events"))
                    .bearer_auth(&key)
                    .json(&json!({"channel": "chat", "kind": "message", "body": format!("writer {w} message {i}"), "idempotency_key": idem}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        acked.insert(idem);
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    // Kill mid-stream, once plenty has been acknowledged.
    while total.load(Ordering::SeqCst) < 400 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.take();
    assert!(acked.len() >= 400);

    // Restart on the same data and read everything back.
    let s = Server::start(dir.path());
    let mut seen = HashSet::new();
    for conv in &convs {
        let mut after = 0;
        let mut expected_seq = 1;
        loop {
            let page = s
                .ok(
                    "GET",
                    &format!("/v1/conversations/{conv}/events?after={after}&limit=500"),
                    &key,
                    None,
                )
                .await;
            for e in page["events"].as_array().unwrap() {
                assert_eq!(e["seq"].as_i64().unwrap(), expected_seq, "gap-free seq");
                expected_seq += 1;
                let idem = e["idempotency_key"].as_str().unwrap().to_owned();
                assert!(seen.insert(idem.clone()), "{idem} stored twice");
            }
            match page["next_after"].as_i64() {
                Some(n) => after = n,
                None => break,
            }
        }
        let c = s
            .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
            .await;
        assert_eq!(c["last_seq"].as_i64().unwrap(), expected_seq - 1);
    }
    let lost: Vec<_> = acked.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    drop(s);

    let (code, out) = cli(dir.path(), &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify after a crash: {out}");
    assert!(out.contains("audit chain intact"));
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempdir();
    let s = Server::start(dir.path());
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, "+14155550302").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        &key,
        Some(json!({"channel": "sms", "kind": "message", "body": "x"})),
    )
    .await;
    // An open live stream (a real client, curl) must not hold the shutdown open.
    let out = dir.path().join("stream.txt");
    let mut curl = std::process::Command::new("curl")
        .args([
            "-sN",
            "-H",
            &format!("Authorization: Bearer {key}"),
            &s.url(&format!("/v1/conversations/{conv}/events/stream")),
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .expect("curl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&out)
        .unwrap()
        .contains("event: timeline")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream replayed nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = s.stop();
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    // The WAL was checkpointed on the way out.
    let wal = dir.path().join("continuum.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    let s = Server::start(dir.path());
    assert!(s.key.is_none(), "no second dev tenant on restart");
    assert_eq!(
        s.ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
            .await["last_seq"],
        1
    );
}

mod parking_lot_free {
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<HashSet<String>>);
    impl Acked {
        pub fn insert(&self, k: String) {
            self.0.lock().unwrap().insert(k);
        }
        pub fn take(&self) -> HashSet<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }
}
