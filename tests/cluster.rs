//! Several `continuum serve` processes as one deployment: one PostgreSQL,
//! one NATS (both started by the test, on free ports), nodes on loopback.

mod common;
use axum::body::Bytes;
use axum::http::StatusCode;
use common::sse::Sse;
use common::*;
use continuum_testkit::{Nats, Postgres};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MASTER_KEY: &str = "7f3a9c2e5b8d1f4a6c0e9b2d5f8a1c4e7b0d3f6a9c2e5b8d1f4a6c0e9b2d5f8a";

/// One PostgreSQL database and one NATS server for a cluster.
struct Backing {
    pg: Postgres,
    nats: Nats,
    db_url: String,
}

/// One cluster at a time: each is a PostgreSQL, a NATS and up to four
/// servers (and in one test two browsers), which together fill a 2-core
/// runner; side by side they would time out rather than test anything.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

fn backing() -> Backing {
    let pg = Postgres::start().expect("starting PostgreSQL for the cluster");
    let db_url = pg.create_database("continuum").unwrap();
    let nats = Nats::start().expect("starting nats-server -js for the cluster");
    Backing { pg, nats, db_url }
}

/// A node of the cluster: its own data directory (blobs, prompts) and
/// listen port, the shared database and bus.
fn node(b: &Backing, name: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> Server {
    let mut env: Vec<(String, String)> = vec![
        ("CONTINUUM_STORE__URL".into(), b.db_url.clone()),
        ("CONTINUUM_BUS__URL".into(), b.nats.url()),
        ("CONTINUUM_SECURITY__MASTER_KEY".into(), MASTER_KEY.into()),
        ("CONTINUUM_NODE__NAME".into(), name.into()),
        ("CONTINUUM_WEBHOOKS__BACKOFF_BASE_MS".into(), "50".into()),
        ("CONTINUUM_WEBHOOKS__BACKOFF_MAX_SECS".into(), "1".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Server::start_with(
        dir,
        Opts {
            env,
            ..Default::default()
        },
    )
}

struct Cluster {
    nodes: Vec<Server>,
    key: String,
    _dirs: Vec<tempfile::TempDir>,
}

/// Starts `n` nodes one after another (the first creates the dev tenant).
fn cluster(b: &Backing, n: usize) -> Cluster {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempdir();
        nodes.push(node(
            b,
            &format!("node-{}", (b'a' + i as u8) as char),
            dir.path(),
            &[],
        ));
        dirs.push(dir);
    }
    let key = nodes[0].key().to_owned();
    Cluster {
        nodes,
        key,
        _dirs: dirs,
    }
}

async fn append(s: &Server, key: &str, conv: &str, body: &str) -> (u16, Value) {
    s.call(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        key,
        Some(json!({"channel": "chat", "kind": "note", "body": body})),
    )
    .await
}

/// Webhook deliveries not yet made, cluster-wide (the outbox is in the
/// shared database), from a node's /metrics.
async fn outbox_depth(s: &Server) -> i64 {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("continuum_outbox_depth "))
        .map(|v| v.trim().parse::<f64>().unwrap() as i64)
        .expect("continuum_outbox_depth in /metrics")
}

/// The `seq`s a timeline stream delivers, until `until` of them arrived.
async fn stream_seqs(sse: &mut Sse, until: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.len() < until {
        let e = sse.next("timeline", Duration::from_secs(30)).await;
        seqs.push(e["seq"].as_i64().unwrap());
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_on_one_node_sees_every_nodes_events_in_order_and_webhooks_fire_once() {
    let _turn = one_at_a_time().await;
    let b = backing();
    let c = cluster(&b, 3);
    let (a, bn, cn) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let key = c.key.clone();

    // A webhook receiver counting deliveries per event.
    let seen: Arc<Mutex<HashMap<String, usize>>> = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let counts = counts.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                let id = format!("{}#{}", v["data"]["conversation_id"], v["data"]["seq"]);
                *counts.lock().unwrap().entry(id).or_default() += 1;
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    a.ok(
        "POST",
        "/v1/webhooks",
        &key,
        Some(json!({"url": format!("http://127.0.0.1:{port}/hook"), "event_types": ["event.created"]})),
    )
    .await;

    let (_, conv) = a.patient_conversation(&key, "+14155550170").await;
    let start = a
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await["last_seq"]
        .as_i64()
        .unwrap();
    // Watched on node C, written on nodes A and B at once.
    let token = cn.mint(&key, "nurse-watcher", "clinician", &[&conv]).await;
    let mut sse = Sse::open(
        &cn.client,
        &cn.url(&format!(
            "/v1/conversations/{conv}/events/stream?after={start}&access_token={token}"
        )),
    )
    .await;
    const EACH: usize = 40;
    let writers = [a, bn].map(|s| {
        let (client, base, key, conv) =
            (s.client.clone(), s.base.clone(), key.clone(), conv.clone());
        tokio::spawn(async move {
            for i in 0..EACH {
                let r = client
                    .post(format!("{base}/v1/conversations/{conv}/events"))
                    .bearer_auth(&key)
                    .json(
                        &json!({"channel": "chat", "kind": "note", "body": format!("{base} {i}")}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
            }
        })
    });
    for w in writers {
        w.await.unwrap();
    }
    let seqs = stream_seqs(&mut sse, 2 * EACH).await;
    let expected: Vec<i64> = (start + 1..=start + 2 * EACH as i64).collect();
    assert_eq!(
        seqs, expected,
        "node C's stream: every event of A and B, in seq order, once"
    );

    // Each event was delivered to the webhook exactly once, by whichever
    // node's worker claimed it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = seen.lock().unwrap().len();
        if delivered >= 2 * EACH {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {delivered} of {} events reached the webhook",
            2 * EACH
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait until no node has anything left to deliver, then count.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let depth = outbox_depth(a).await;
        if depth == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never drained: {depth} left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each node's metrics say which node they are from.
    let metrics = cn
        .client
        .get(cn.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("continuum_node_info{")
                && l.contains(r#"node="node-c""#)
                && l.contains(r#"store="postgres""#)),
        "continuum_node_info names node-c"
    );
    let counts = seen.lock().unwrap().clone();
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    assert_eq!(counts.len(), 2 * EACH);
}

/// Every event of a conversation, in `seq` order.
async fn timeline(s: &Server, key: &str, conv: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .ok(
                "GET",
                &format!("/v1/conversations/{conv}/events?after={after}&limit=500"),
                key,
                None,
            )
            .await;
        let events = page["events"].as_array().unwrap().clone();
        all.extend(events);
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => return all,
        }
    }
}

/// The timeline holds every acknowledged key exactly once, with the `seq`
/// it was acknowledged with, and its `seq`s have no gap.
fn check_acknowledged(events: &[Value], acked: &HashMap<String, i64>) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "gap-free seqs");
    let mut by_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for e in events {
        if let Some(k) = e["idempotency_key"].as_str() {
            by_key
                .entry(k)
                .or_default()
                .push(e["seq"].as_i64().unwrap());
        }
    }
    for (k, seq) in acked {
        assert_eq!(
            by_key.get(k.as_str()).map(Vec::as_slice),
            Some(&[*seq][..]),
            "acknowledged event {k} is stored exactly once, at the seq it was acknowledged with"
        );
    }
}

/// Writers appending with idempotency keys, as a client behind a load
/// balancer would: a request that fails (node gone, 503) is retried with the
/// same key on the next node, until it is acknowledged.
async fn writers(
    bases: Vec<String>,
    key: String,
    conv: String,
    writers: usize,
    each: usize,
    acked_so_far: Arc<std::sync::atomic::AtomicUsize>,
) -> (HashMap<String, i64>, Vec<u16>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (client, bases, key, conv, counter) = (
                client.clone(),
                bases.clone(),
                key.clone(),
                conv.clone(),
                acked_so_far.clone(),
            );
            tokio::spawn(async move {
                let mut acked = HashMap::new();
                let mut refusals = Vec::new();
                for i in 0..each {
                    let idem = format!("w{w}-{i}");
                    let mut attempt = w;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
                    loop {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "{idem} never acknowledged; refusals {refusals:?}"
                        );
                        let base = &bases[attempt % bases.len()];
                        attempt += 1;
                        let r = client
                            .post(format!("{base}/v1/conversations/{conv}/events"))
                            .bearer_auth(&key)
                            .header("Idempotency-Key", &idem)
                            .json(&json!({"channel": "chat", "kind": "note", "body": idem}))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => {
                                let v: Value = r.json().await.unwrap();
                                acked.insert(idem.clone(), v["seq"].as_i64().unwrap());
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                break;
                            }
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.text().await.unwrap_or_default();
                                assert_eq!(
                                    status, 503,
                                    "only 503 while a dependency is down: {body}"
                                );
                                assert!(body.contains("database"), "the 503 says why: {body}");
                                refusals.push(status);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            // The node is gone (killed): the next one.
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                }
                (acked, refusals)
            })
        })
        .collect();
    let mut acked = HashMap::new();
    let mut refusals = Vec::new();
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refusals.extend(r);
    }
    (acked, refusals)
}

async fn wait_for_count(counter: &std::sync::atomic::AtomicUsize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while counter.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writers stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_node_killed_under_load_loses_no_acknowledged_event() {
    let _turn = one_at_a_time().await;
    let b = backing();
    let mut c = cluster(&b, 2);
    let key = c.key.clone();
    let (_, conv) = c.nodes[0].patient_conversation(&key, "+14155550171").await;
    // Start from an empty timeline count: the conversation's own events are
    // not the writers'.
    let before = timeline(&c.nodes[0], &key, &conv).await.len();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bases: Vec<String> = c.nodes.iter().map(|n| n.base.clone()).collect();
    let load = tokio::spawn(writers(
        bases,
        key.clone(),
        conv.clone(),
        8,
        40,
        counter.clone(),
    ));
    wait_for_count(&counter, 60).await;
    c.nodes.remove(1).kill9();
    let (acked, _) = load.await.unwrap();
    assert_eq!(acked.len(), 8 * 40);
    let events = timeline(&c.nodes[0], &key, &conv).await;
    assert_eq!(
        events.len(),
        before + 8 * 40,
        "nothing lost, nothing doubled"
    );
    check_acknowledged(&events, &acked);
    // The audit chains still verify, on PostgreSQL, from the CLI.
    let dir = tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["audit", "verify"])
        .env("CONTINUUM_STORE__URL", &b.db_url)
        .env("CONTINUUM_SECURITY__MASTER_KEY", MASTER_KEY)
        .env("CONTINUUM_SERVER__DATA_DIR", dir.path())
        .env("CONTINUUM_LOG", "warn")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "audit verify on PostgreSQL: {text}");
    assert!(text.contains("intact"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarting_gives_503_then_recovers_with_nothing_lost() {
    let _turn = one_at_a_time().await;
    let mut b = backing();
    let c = cluster(&b, 1);
    let key = c.key.clone();
    let a = &c.nodes[0];
    let (_, conv) = a.patient_conversation(&key, "+14155550172").await;
    let before = timeline(a, &key, &conv).await.len();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = tokio::spawn(writers(
        vec![a.base.clone()],
        key.clone(),
        conv.clone(),
        8,
        30,
        counter.clone(),
    ));
    wait_for_count(&counter, 40).await;
    b.pg.stop().unwrap();
    // While it is down: a clear 503, and /readyz says the database is away.
    let (status, body) = append(a, &key, &conv, "while down").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    let ready = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().await.unwrap().contains("database unavailable"));
    b.pg.start_again().unwrap();
    let (acked, refusals) = load.await.unwrap();
    assert!(!refusals.is_empty(), "the writers saw the outage as 503s");
    assert_eq!(acked.len(), 8 * 30);
    let ready = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "ready again by itself");
    let events = timeline(a, &key, &conv).await;
    assert_eq!(events.len(), before + 8 * 30);
    check_acknowledged(&events, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_resume_without_gaps_after_nats_restarts() {
    let _turn = one_at_a_time().await;
    let mut b = backing();
    let c = cluster(&b, 2);
    let key = c.key.clone();
    let (a, bn) = (&c.nodes[0], &c.nodes[1]);
    let (_, conv) = a.patient_conversation(&key, "+14155550173").await;
    let start = a
        .ok("GET", &format!("/v1/conversations/{conv}"), &key, None)
        .await["last_seq"]
        .as_i64()
        .unwrap();
    let token = bn.mint(&key, "nurse-watcher", "clinician", &[&conv]).await;
    let mut sse = Sse::open(
        &bn.client,
        &bn.url(&format!(
            "/v1/conversations/{conv}/events/stream?after={start}&access_token={token}"
        )),
    )
    .await;
    for i in 0..5 {
        assert_eq!(append(a, &key, &conv, &format!("before {i}")).await.0, 201);
    }
    assert_eq!(
        stream_seqs(&mut sse, 5).await,
        (start + 1..=start + 5).collect::<Vec<_>>()
    );
    // NATS goes away: writes on A go on (the store is the record) ...
    b.nats.stop().unwrap();
    for i in 0..5 {
        assert_eq!(append(a, &key, &conv, &format!("during {i}")).await.0, 201);
    }
    let ready = bn.client.get(bn.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "readyz reports the bus");
    assert!(ready.text().await.unwrap().contains("bus"));
    // ... and when it is back, B's stream catches up from the store, with
    // no gap and no repeat, and goes on live.
    b.nats.start_again().unwrap();
    let seqs = stream_seqs(&mut sse, 5).await;
    assert_eq!(seqs, (start + 6..=start + 10).collect::<Vec<_>>());
    assert_eq!(append(a, &key, &conv, "after").await.0, 201);
    assert_eq!(stream_seqs(&mut sse, 1).await, vec![start + 11]);
}

/// A node with roles and a region of its own.
fn node_with(b: &Backing, name: &str, dir: &std::path::Path, roles: &str, region: &str) -> Server {
    node(
        b,
        name,
        dir,
        &[
            ("CONTINUUM_NODE__ROLES", roles),
            ("CONTINUUM_SERVER__REGION", region),
        ],
    )
}

/// An API node (eu, where the tenant is pinned: it creates the dev tenant),
/// two eu media nodes and one us media node.
fn regional_cluster(b: &Backing) -> (Cluster, Vec<String>) {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    let layout = [
        ("api-eu", r#"["api","worker"]"#, "eu"),
        ("media-eu-1", r#"["api","media","turn"]"#, "eu"),
        ("media-eu-2", r#"["api","media","turn"]"#, "eu"),
        ("media-us-1", r#"["api","media","turn"]"#, "us"),
    ];
    for (name, roles, region) in layout {
        let dir = tempdir();
        nodes.push(node_with(b, name, dir.path(), roles, region));
        dirs.push(dir);
    }
    let key = nodes[0].key().to_owned();
    let names = layout.iter().map(|(n, _, _)| n.to_string()).collect();
    (
        Cluster {
            nodes,
            key,
            _dirs: dirs,
        },
        names,
    )
}

/// Sends `join` for `room` on a signaling connection to `base` and returns
/// the first answer that is not chat or roster noise.
async fn join_answer(base: &str, token: &str, room: &str) -> Value {
    use futures::{SinkExt, StreamExt};
    let url = format!("{}/v1/rtc?token={token}", base.replace("http", "ws"));
    let (mut ws, _) = connect_signaling(&url).await;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "join", "room": room, "sdp": "v=0\r\n"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("an answer to join within 30 s")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v["type"] == "redirect" || v["type"] == "error" {
            return v;
        }
    }
}

/// Waits until `n` media nodes are announced (each announces once it
/// serves), as a node's /metrics shows the cluster.
async fn wait_for_media_nodes(s: &Server, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let live: f64 = text
            .lines()
            .filter(|l| l.starts_with("continuum_cluster_media_nodes{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if live as usize >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {live} of {n} media nodes announced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_pinned_to_eu_is_never_placed_on_a_us_node() {
    let _turn = one_at_a_time().await;
    let b = backing();
    let (mut c, names) = regional_cluster(&b);
    let key = c.key.clone();
    wait_for_media_nodes(&c.nodes[0], 3).await;
    // Twenty rooms, each joined through a different node: all land on an
    // eu media node, spread over both.
    let mut hosts: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        let v = c.nodes[0]
            .visit(
                &key,
                &format!("+1415555{:04}", 2000 + i),
                &[("dr", "clinician")],
            )
            .await;
        let via = &c.nodes[i % c.nodes.len()];
        let answer = join_answer(&via.base, &v.tokens[0], &v.room).await;
        let host = match answer["type"].as_str() {
            Some("redirect") => answer["node"].as_str().unwrap().to_owned(),
            // Joined where it asked: that node hosts the room (an `error`
            // about the dummy SDP means it got as far as the SFU).
            _ => names[i % c.nodes.len()].clone(),
        };
        *hosts.entry(host).or_default() += 1;
    }
    assert!(
        !hosts.contains_key("media-us-1"),
        "placed in the us: {hosts:?}"
    );
    assert!(
        !hosts.contains_key("api-eu"),
        "placed on a node without media: {hosts:?}"
    );
    assert!(
        hosts.contains_key("media-eu-1") && hosts.contains_key("media-eu-2"),
        "both eu nodes take rooms: {hosts:?}"
    );
    // TURN credentials come from the tenant's region only: the us node's
    // welcome has none for it, an eu media node's has them.
    let v = c.nodes[0]
        .visit(&key, "+14155552999", &[("dr", "clinician")])
        .await;
    let ws_url = |s: &Server| {
        format!(
            "{}/v1/rtc?token={}",
            s.base.replace("http", "ws"),
            v.tokens[0]
        )
    };
    let (_, welcome_us) = connect_signaling(ws_url(&c.nodes[3])).await;
    assert_eq!(welcome_us["ice_servers"], json!([]), "{welcome_us}");
    let (_, welcome_eu) = connect_signaling(ws_url(&c.nodes[1])).await;
    assert!(
        welcome_eu["ice_servers"].to_string().contains("turn:"),
        "{welcome_eu}"
    );
    // With no eu media node left, a new room is refused with the reason,
    // rather than placed in the us.
    c.nodes.remove(2).kill9();
    c.nodes.remove(1).kill9();
    let v = c.nodes[0]
        .visit(&key, "+14155553000", &[("dr", "clinician")])
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = join_answer(&c.nodes[0].base, &v.tokens[0], &v.room).await;
        if answer["type"] == "error" || tokio::time::Instant::now() > deadline {
            break answer;
        }
        // The killed nodes' announcements have not expired yet.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(answer["code"], "media_unavailable", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("region `eu`"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_media_node_rooms_move_and_browsers_come_back() {
    let _turn = one_at_a_time().await;
    use tokio::io::AsyncBufReadExt;
    let b = backing();
    let (mut c, names) = regional_cluster(&b);
    let key = c.key.clone();
    wait_for_media_nodes(&c.nodes[0], 3).await;
    let v = c.nodes[0]
        .visit(
            &key,
            "+14155550174",
            &[("dr-lee", "clinician"), ("pat", "patient")],
        )
        .await;
    let _browsers = browsers().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/cluster.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        // Each browser enters through a different node: the eu API node, and
        // the us node (any node takes signaling and redirects; the room
        // still goes to the tenant's region).
        .args([
            &c.nodes[0].base,
            &c.nodes[3].base,
            &v.room,
            &v.tokens[0],
            &v.tokens[1],
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the browser scenario");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = String::new();
    let mut killed_at = None;
    let mut recovered = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await
    {
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["check"] == "joined" {
            let host = v["node"].as_str().unwrap();
            assert!(host.starts_with("media-eu"), "{line}");
            let i = names.iter().position(|n| n == host).unwrap();
            c.nodes.remove(i).kill9();
            killed_at = Some(std::time::Instant::now());
        }
        if v["check"] == "recovered" {
            recovered = killed_at.map(|k| k.elapsed());
        }
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "cluster.mjs failed:\n{output}");
    let recovered = recovered.expect("the browsers came back");
    println!(
        "media node kill -9 → both browsers with video again: {} ms",
        recovered.as_millis()
    );
    // The timeline says what happened.
    let events = timeline(&c.nodes[0], &key, &v.conv).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "note" && e["meta"]["reason"] == "media_node_lost"),
        "the interruption is on the timeline"
    );
}
