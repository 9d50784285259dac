//! `continuum migrate`: a single-node SQLite store moved into PostgreSQL,
//! then served from there by a node of a cluster.

mod common;
use common::*;
use continuum_testkit::Postgres;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MASTER_KEY: &str = "4b1e8a2f6c9d3e7a0b5f8c2d6e9a1b4f7c0d3e6a9b2c5f8e1d4a7b0c3f6e9d2a";
/// How many tables the target database has.
const TABLES: &str = "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'";
const OTHER_KEY: &str = "0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526272829";

/// Runs the binary with `args` and environment; (exit code, stdout + stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CONTINUUM_LOG", "warn")
        .env_remove("CONTINUUM_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("running continuum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn migrate(dir: &Path, url: &str, key: &str) -> (i32, String) {
    run(
        &["migrate", "--from", dir.to_str().unwrap(), "--to", url],
        &[("CONTINUUM_SECURITY__MASTER_KEY", key)],
    )
}

/// Every event of a conversation's timeline, oldest first.
async fn timeline(s: &Server, key: &str, conv: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .ok(
                "GET",
                &format!("/v1/conversations/{conv}/events?after={after}&limit=50"),
                key,
                None,
            )
            .await;
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

/// The tenant's audit records, oldest first (reading them adds one).
async fn audit(s: &Server, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .ok(
                "GET",
                &format!("/v1/audit?after={after}&limit=1000"),
                key,
                None,
            )
            .await;
        out.extend(page["records"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

/// Polls the webhook's delivery attempts until `ready` holds (30 s at most).
async fn deliveries_until(
    s: &Server,
    key: &str,
    hook: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = s
            .ok("GET", &format!("/v1/webhooks/{hook}/deliveries"), key, None)
            .await;
        let d = d.as_array().unwrap().clone();
        if ready(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never got there: {} attempts, of outbox ids {:?}",
            d.len(),
            d.iter()
                .map(|d| d["outbox_id"].as_i64())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn backoff_env() -> Vec<(String, String)> {
    vec![
        ("CONTINUUM_SECURITY__MASTER_KEY".into(), MASTER_KEY.into()),
        ("CONTINUUM_WEBHOOKS__BACKOFF_BASE_MS".into(), "50".into()),
        ("CONTINUUM_WEBHOOKS__BACKOFF_MAX_SECS".into(), "1".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_moves_to_postgres_and_its_timelines_and_audit_chains_go_on() {
    // 1. A single node on SQLite, with data of every common kind.
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        Opts {
            env: backoff_env(),
            ..Default::default()
        },
    );
    let key = s.key().to_owned();
    // A webhook nobody answers: outbox rows and failed delivery attempts.
    let hook = s
        .ok(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["event.created"]})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.ok(
        "POST",
        "/v1/messaging/providers",
        &key,
        Some(json!({
            "name": "twilio", "kind": "twilio", "priority": 1,
            "channels": ["sms"], "senders": ["+14155550000"],
            "spec": {"account_sid": "AC0123"},
            "credentials": {"auth_token": "secret-token"},
        })),
    )
    .await;
    s.ok(
        "POST",
        "/v1/staff",
        &key,
        Some(json!({"display_name": "Dr. Grace Lee", "role": "clinician"})),
    )
    .await;
    let (_, conv) = s.patient_conversation(&key, "+14155550181").await;
    let (_, other) = s.patient_conversation(&key, "+14155550182").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{conv}/rooms"),
        &key,
        Some(json!({"waiting_room": false})),
    )
    .await;
    for i in 0..120 {
        let (c, body) = if i % 3 == 0 {
            (
                &other,
                json!({"channel": "sms", "kind": "message", "actor": {"type": "patient"}, "body": format!("other {i}")}),
            )
        } else {
            (
                &conv,
                json!({"channel": "chat", "kind": "message", "actor": {"type": "staff", "id": "dr-lee"},
                "body": format!("message {i} — ünïcode ok"), "idempotency_key": format!("k{i}")}),
            )
        };
        s.ok(
            "POST",
            &format!("/v1/conversations/{c}/events"),
            &key,
            Some(body),
        )
        .await;
    }
    // An attachment: its row moves, its sealed file stays in the directory.
    let photo = {
        let img =
            image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 90]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode_image(&img)
            .unwrap();
        jpeg
    };
    let uploaded = reqwest::Client::new()
        .post(s.url(&format!(
            "/v1/conversations/{conv}/attachments?filename=rash.jpg"
        )))
        .bearer_auth(&key)
        .header("content-type", "image/jpeg")
        .body(photo)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 201);
    // A denial with a bad key: a record in the server's own chain.
    let (code, _) = s
        .call("GET", "/v1/contacts", "ck_0000000000000000_nope", None)
        .await;
    assert_eq!(code, 401);
    deliveries_until(&s, &key, &hook, |d| !d.is_empty()).await;
    let (code, out) = run(
        &[
            "tenant",
            "create",
            "clinic-b",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[("CONTINUUM_SECURITY__MASTER_KEY", MASTER_KEY)],
    );
    assert_eq!(code, 0, "{out}");
    let second_key = out
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once): "))
        .unwrap()
        .trim()
        .to_owned();
    let (_, second_conv) = s.patient_conversation(&second_key, "+14155550183").await;
    s.ok(
        "POST",
        &format!("/v1/conversations/{second_conv}/events"),
        &second_key,
        Some(json!({"channel": "chat", "kind": "note", "body": "tenant b's note"})),
    )
    .await;

    let before_conv = timeline(&s, &key, &conv).await;
    let before_other = timeline(&s, &key, &other).await;
    let before_second = timeline(&s, &second_key, &second_conv).await;
    let before_contacts = s.ok("GET", "/v1/contacts", &key, None).await;
    let before_audit = audit(&s, &key).await;
    assert_eq!(before_conv.len(), 81, "80 messages and the attachment");
    assert_eq!(before_other.len(), 40);

    // 2. Refused while the server runs.
    let pg = Postgres::start().expect("starting PostgreSQL");
    let url = pg.create_database("continuum").unwrap();
    let (code, out) = migrate(dir.path(), &url, MASTER_KEY);
    assert_ne!(code, 0, "a running server's store is not copied:\n{out}");
    assert!(
        out.contains("running Continuum server") && out.contains("stop it"),
        "{out}"
    );
    assert_eq!(
        pg.psql("continuum", TABLES).unwrap(),
        "0",
        "nothing written"
    );
    assert!(s.stop().success());

    // 3. Refused under another master key; nothing is written.
    let (code, out) = migrate(dir.path(), &url, OTHER_KEY);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not open with this master key"), "{out}");
    assert_eq!(
        pg.psql("continuum", TABLES).unwrap(),
        "0",
        "nothing written"
    );

    // 4. The copy.
    let source_rows = |table: &str| -> i64 {
        let c = rusqlite::Connection::open(dir.path().join("continuum.db")).unwrap();
        c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let outbox_max: i64 = rusqlite::Connection::open(dir.path().join("continuum.db"))
        .unwrap()
        .query_row("SELECT MAX(id) FROM outbox", [], |r| r.get(0))
        .unwrap();
    let (events, audits, outbox) = (
        source_rows("events"),
        source_rows("audit"),
        source_rows("outbox"),
    );
    assert!(outbox > 0 && source_rows("deliveries") > 0);
    let (code, out) = migrate(dir.path(), &url, MASTER_KEY);
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit chain intact"), "{out}");
    assert!(
        out.contains("attachments: their sealed files in") && out.contains("aws s3 sync"),
        "the files the copy leaves behind are named, with what to do: {out}"
    );
    for (table, n) in [("events", events), ("audit", audits), ("outbox", outbox)] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [table, &n.to_string()]),
            "the summary names {table}: {n}:\n{out}"
        );
        assert_eq!(
            pg.psql("continuum", &format!("SELECT COUNT(*) FROM {table}"))
                .unwrap(),
            n.to_string()
        );
    }
    // Three chains (two tenants and the server's), each as chain 0.
    assert_eq!(
        pg.psql(
            "continuum",
            "SELECT COUNT(*) FROM audit_heads WHERE chain = 0"
        )
        .unwrap(),
        "3"
    );

    // 5. A node on PostgreSQL reads the same timelines.
    let node_dir = tempdir();
    let mut env = backoff_env();
    env.push(("CONTINUUM_STORE__URL".into(), url.clone()));
    let n = Server::start_with(
        node_dir.path(),
        Opts {
            env,
            ..Default::default()
        },
    );
    assert!(
        n.key.is_none(),
        "no dev tenant bootstrapped: the copy has it"
    );
    assert_eq!(timeline(&n, &key, &conv).await, before_conv);
    assert_eq!(timeline(&n, &key, &other).await, before_other);
    assert_eq!(timeline(&n, &second_key, &second_conv).await, before_second);
    assert_eq!(
        n.ok("GET", "/v1/contacts", &key, None).await,
        before_contacts
    );
    let providers = n.ok("GET", "/v1/messaging/providers", &key, None).await;
    assert_eq!(providers.as_array().unwrap().len(), 1, "{providers}");

    // The audit records are the same records (same seq, MAC and position),
    // all in chain 0.
    let after_audit = audit(&n, &key).await;
    assert_eq!(after_audit[..before_audit.len()], before_audit[..]);
    let last = before_audit.last().unwrap().clone();

    // 6. Appends continue each timeline and the audit chain.
    let e = n
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            Some(json!({"channel": "chat", "kind": "note", "body": "written on PostgreSQL"})),
        )
        .await;
    assert_eq!(e["seq"], before_conv.len() as i64 + 1);
    let again = n
        .ok(
            "POST",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            Some(json!({"channel": "chat", "kind": "message", "actor": {"type": "staff", "id": "dr-lee"},
                "body": "message 1 — ünïcode ok", "idempotency_key": "k1"})),
        )
        .await;
    assert_eq!(
        again["seq"], before_conv[0]["seq"],
        "idempotency keys were copied"
    );
    let e2 = n
        .ok(
            "POST",
            &format!("/v1/conversations/{second_conv}/events"),
            &second_key,
            Some(json!({"channel": "chat", "kind": "note", "body": "tenant b on PostgreSQL"})),
        )
        .await;
    assert_eq!(e2["seq"], before_second.len() as i64 + 1);
    let now = timeline(&n, &key, &conv).await;
    assert_eq!(now[..before_conv.len()], before_conv[..]);
    assert_eq!(now[before_conv.len()]["body"], "written on PostgreSQL");
    let records = n
        .ok(
            "GET",
            &format!("/v1/audit?after={}&limit=1000", last["position"]),
            &key,
            None,
        )
        .await;
    let new: Vec<&Value> = records["records"].as_array().unwrap().iter().collect();
    let append = new
        .iter()
        .find(|r| r["action"] == "event.append")
        .expect("the new append is audited");
    assert_eq!(append["chain"], 0, "{append}");
    assert!(
        append["seq"].as_i64().unwrap() > last["seq"].as_i64().unwrap()
            && append["position"].as_i64().unwrap() > last["position"].as_i64().unwrap(),
        "the chain and the positions go on after {last}: {append}"
    );
    // The webhook worker on PostgreSQL delivers (and fails) the new event:
    // a new outbox id past the copied ones, and new delivery rows (identity
    // sequences restarted after the copied ids; a clash would fail them).
    deliveries_until(&n, &key, &hook, |d| {
        d.iter()
            .any(|d| d["outbox_id"].as_i64().unwrap() > outbox_max)
    })
    .await;

    // 7. The PostgreSQL store verifies, new records included.
    let (code, out) = run(
        &["audit", "verify"],
        &[
            ("CONTINUUM_SECURITY__MASTER_KEY", MASTER_KEY),
            ("CONTINUUM_STORE__URL", &url),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit chain intact"), "{out}");
    assert!(n.stop().success());

    // 8. A second copy into the now filled database is refused.
    let (code, out) = migrate(dir.path(), &url, MASTER_KEY);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("already holds 2 tenant(s)") && out.contains("CREATE DATABASE"),
        "{out}"
    );
}

#[tokio::test]
async fn a_missing_store_or_target_is_named() {
    let dir = tempdir();
    let (code, out) = migrate(
        dir.path(),
        "postgres://continuum@127.0.0.1:1/none",
        MASTER_KEY,
    );
    assert_ne!(code, 0);
    assert!(out.contains("no Continuum store at"), "{out}");

    let s = Server::start_with(
        dir.path(),
        Opts {
            env: backoff_env(),
            ..Default::default()
        },
    );
    // A store written and closed (the exit status is not the point here).
    s.stop();
    let port = continuum_testkit::free_port().unwrap();
    let (code, out) = migrate(
        dir.path(),
        &format!("postgres://continuum@127.0.0.1:{port}/none"),
        MASTER_KEY,
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("cannot connect to PostgreSQL") && out.contains("--to"),
        "{out}"
    );
}
