//! `continuum bench events`.

use super::server::ServerProcess;
use anyhow::{Context, bail};
use clap::Args;
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent};
use continuum_server::Config;
use continuum_store::{ContactInput, NewConversation, Store, StoreOptions};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct EventsArgs {
    /// Concurrent writers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 64])]
    pub writers: Vec<usize>,
    /// Seconds to run each writer level.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Events to store before measuring timeline pages.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Conversations those events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub conversations: usize,
    /// Timeline pages (50 events each) to time.
    #[arg(long, default_value_t = 5_000)]
    pub pages: usize,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct WriterResult {
    writers: usize,
    appends: u64,
    appends_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_us_per_append: f64,
}

#[derive(Serialize)]
struct Report {
    machine_cores: usize,
    idle_rss_mib: f64,
    appends: Vec<WriterResult>,
    events_stored: usize,
    bulk_load_events_per_sec: f64,
    rss_with_events_mib: f64,
    rss_after_reads_mib: f64,
    page_size: usize,
    page_p50_ms: f64,
    page_p99_ms: f64,
    page_p999_ms: f64,
    database_mib: f64,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub fn run(args: EventsArgs, _cfg: Config) -> anyhow::Result<()> {
    if args.writers.is_empty() || args.writers.contains(&0) {
        bail!("--writers needs positive counts, e.g. --writers 1,8,64");
    }
    if args.conversations == 0 || args.events < args.conversations * 60 {
        bail!("--events must be at least 60 per conversation so 50-event pages fit");
    }
    let dir = tempfile::Builder::new()
        .prefix("continuum-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "continuum bench events — {} cores, data in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display()
    );

    // 1. Idle memory and durable append throughput on a fresh server.
    let server = ServerProcess::start(dir.path())?;
    let key = server
        .api_key
        .clone()
        .context("the fresh server printed no dev API key")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    rt.block_on(wait_ready(&client, &server.base))?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = server.rss_bytes();
    println!("idle server RSS: {:.1} MiB", mib(idle_rss));

    let convs = rt.block_on(setup_conversations(&client, &server.base, &key, 64))?;
    let mut appends = Vec::new();
    for &w in &args.writers {
        let cpu_before = server.cpu_seconds();
        let r = rt.block_on(measure_appends(
            &client,
            &server.base,
            &key,
            &convs,
            w,
            Duration::from_secs(args.seconds),
        ))?;
        let cpu = server.cpu_seconds() - cpu_before;
        let per = if r.appends > 0 {
            cpu * 1e6 / r.appends as f64
        } else {
            0.0
        };
        println!(
            "{:>3} writers: {:>9.0} durable appends/s  (p50 {:.2} ms, p99 {:.2} ms, server CPU {:.1} µs/append)",
            w, r.appends_per_sec, r.p50_ms, r.p99_ms, per
        );
        appends.push(WriterResult {
            server_cpu_us_per_append: per,
            ..r
        });
    }
    server.stop()?;

    // 2. Bulk-load events through the store's own append path (sealed, audited).
    let (loaded, load_rate) =
        rt.block_on(bulk_load(dir.path(), args.events, args.conversations))?;

    // 3. Memory with the events stored, and timeline page latency.
    let server = ServerProcess::start(dir.path())?;
    rt.block_on(wait_ready(&client, &server.base))?;
    std::thread::sleep(Duration::from_millis(500));
    let loaded_rss = server.rss_bytes();
    println!(
        "server RSS with {} events stored: {:.1} MiB",
        loaded,
        mib(loaded_rss)
    );
    let hist = rt.block_on(measure_pages(
        &client,
        &server.base,
        &key,
        &loaded_conversations(dir.path(), &rt)?,
        args.events / args.conversations,
        args.pages,
    ))?;
    let after_rss = server.rss_bytes();
    println!(
        "timeline page (50 events): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms over {} pages; RSS after reads {:.1} MiB",
        ms(&hist, 0.5),
        ms(&hist, 0.99),
        ms(&hist, 0.999),
        args.pages,
        mib(after_rss)
    );
    server.stop()?;
    let db = std::fs::metadata(continuum_store::database_path(dir.path()))
        .map(|m| m.len())
        .unwrap_or(0);

    let report = Report {
        machine_cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        idle_rss_mib: mib(idle_rss),
        appends,
        events_stored: loaded,
        bulk_load_events_per_sec: load_rate,
        rss_with_events_mib: mib(loaded_rss),
        rss_after_reads_mib: mib(after_rss),
        page_size: 50,
        page_p50_ms: ms(&hist, 0.5),
        page_p99_ms: ms(&hist, 0.99),
        page_p999_ms: ms(&hist, 0.999),
        database_mib: mib(db),
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        println!("results written to {}", out.display());
    } else {
        println!("{json}");
    }
    Ok(())
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server at {base} never became ready")
}

async fn setup_conversations(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let contact: serde_json::Value = client
        .post(format!("{base}/v1/contacts"))
        .bearer_auth(key)
        .json(&json!({"display_name": "Bench Patient", "phone": "+14155550100"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let contact_id = contact["id"].as_str().context("contact id")?.to_owned();
    let mut ids = Vec::new();
    for _ in 0..n {
        let c: serde_json::Value = client
            .post(format!("{base}/v1/conversations"))
            .bearer_auth(key)
            .json(&json!({"contact_id": contact_id}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(c["id"].as_str().context("conversation id")?.to_owned());
    }
    Ok(ids)
}

async fn measure_appends(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    convs: &[String],
    writers: usize,
    run_for: Duration,
) -> anyhow::Result<WriterResult> {
    let started = Instant::now();
    let deadline = started + run_for;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, url, key) = (
            client.clone(),
            format!("{base}/v1/conversations/{}/events", convs[w % convs.len()]),
            key.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"channel": "chat", "kind": "message", "actor": {"type": "patient", "id": "p1"},
                        "body": "I have had a mild headache since this morning and would like to talk to someone."}))
                    .send()
                    .await?;
                if r.status() != reqwest::StatusCode::CREATED {
                    bail!("append answered {}: {}", r.status(), r.text().await.unwrap_or_default());
                }
                h.record(t.elapsed().as_micros() as u64)?;
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        hist.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(WriterResult {
        writers,
        appends: total,
        appends_per_sec: total as f64 / secs,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        server_cpu_us_per_append: 0.0,
    })
}

fn sample_event(i: usize) -> NewEvent {
    let (channel, kind, actor, body, meta) = match i % 10 {
        0 => (
            Channel::Sms,
            EventKind::Message,
            ActorType::Patient,
            Some("Running 10 minutes late, sorry!"),
            json!({}),
        ),
        1 => (
            Channel::Sms,
            EventKind::DeliveryStatus,
            ActorType::System,
            None,
            json!({"status": "delivered", "provider_id": "SM8f2c"}),
        ),
        2 => (
            Channel::Video,
            EventKind::CallStarted,
            ActorType::Staff,
            None,
            json!({"session_id": format!("room-{i}")}),
        ),
        3 => (
            Channel::Video,
            EventKind::QualityDegraded,
            ActorType::System,
            None,
            json!({"session_id": format!("room-{}", i - 1), "loss": 0.07, "rtt_ms": 310}),
        ),
        4 => (
            Channel::Video,
            EventKind::CallEnded,
            ActorType::Staff,
            None,
            json!({"session_id": format!("room-{}", i - 2)}),
        ),
        5 => (
            Channel::Chat,
            EventKind::Message,
            ActorType::Staff,
            Some("Thanks — can you describe where the pain is and rate it from 1 to 10?"),
            json!({}),
        ),
        6 => (
            Channel::Chat,
            EventKind::Message,
            ActorType::Patient,
            Some("Left side of the head, about a 6. It gets worse with bright light."),
            json!({}),
        ),
        7 => (
            Channel::Ivr,
            EventKind::IvrInput,
            ActorType::Patient,
            None,
            json!({"digits": "2", "menu": "main"}),
        ),
        8 => (
            Channel::Voice,
            EventKind::Note,
            ActorType::Staff,
            Some("Advised hydration and rest; follow up in 48 h if no improvement."),
            json!({}),
        ),
        _ => (
            Channel::Whatsapp,
            EventKind::Message,
            ActorType::Patient,
            Some("Feeling better today, thank you."),
            json!({}),
        ),
    };
    NewEvent {
        channel,
        kind,
        actor: Actor {
            actor_type: actor,
            id: Some("bench".into()),
        },
        body: body.map(str::to_owned),
        meta: meta.as_object().cloned().unwrap_or_default(),
        idempotency_key: None,
    }
}

fn open_bench_store(dir: &std::path::Path) -> anyhow::Result<Store> {
    let key = std::fs::read_to_string(dir.join("master.key"))
        .context("the bench data dir has no master.key")?;
    Ok(Store::open(
        dir,
        continuum_store::SecretKey::parse(&key)?,
        StoreOptions::default(),
    )?)
}

async fn bulk_load(
    dir: &std::path::Path,
    events: usize,
    conversations: usize,
) -> anyhow::Result<(usize, f64)> {
    let store = open_bench_store(dir)?;
    let tenant = store.find_tenant("dev").await?;
    let contact = store
        .create_contact(
            &tenant.id,
            ContactInput {
                display_name: Some("Bulk Patient".into()),
                ..Default::default()
            },
            "bench",
        )
        .await?;
    let per_conv = events / conversations;
    let bar = ProgressBar::new((per_conv * conversations) as u64).with_style(
        ProgressStyle::with_template("loading events {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template"),
    );
    let started = Instant::now();
    let store = Arc::new(store);
    const BATCH: usize = 500;
    let mut ids = Vec::with_capacity(conversations);
    for _ in 0..conversations {
        let c = store
            .create_conversation(
                &tenant.id,
                NewConversation {
                    contact_id: contact.id.clone(),
                    subject: Some("headache".into()),
                    queue: None,
                    tags: vec![],
                },
                "bench",
            )
            .await?;
        ids.push(c.id);
    }
    // A few conversations load at once so group commit batches their writes.
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for id in ids {
        let (store, tenant, bar, sem) =
            (store.clone(), tenant.id.clone(), bar.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let mut done = 0;
            while done < per_conv {
                let n = BATCH.min(per_conv - done);
                let batch = (done..done + n).map(sample_event).collect();
                store
                    .append_events_bulk(&tenant, &id, batch, "bench")
                    .await?;
                done += n;
                bar.inc(n as u64);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish();
    let total = per_conv * conversations;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "bulk-loaded {total} events in {:.1} s ({rate:.0}/s)",
        started.elapsed().as_secs_f64()
    );
    let store = Arc::try_unwrap(store).ok().context("store still shared")?;
    store.shutdown();
    Ok((total, rate))
}

/// Conversation ids holding the bulk-loaded events.
fn loaded_conversations(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<String>> {
    let store = open_bench_store(dir)?;
    let tenant = rt.block_on(store.find_tenant("dev"))?;
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = rt.block_on(store.list_conversations(
            &tenant.id,
            continuum_store::ConversationFilter {
                cursor: cursor.clone(),
                limit: 200,
                ..Default::default()
            },
        ))?;
        out.extend(
            page.conversations
                .into_iter()
                .filter(|c| c.last_seq >= 60)
                .map(|c| c.id),
        );
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    store.shutdown();
    Ok(out)
}

async fn measure_pages(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    convs: &[String],
    per_conv: usize,
    pages: usize,
) -> anyhow::Result<Histogram<u64>> {
    if convs.is_empty() {
        bail!("no loaded conversations found");
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let bar = ProgressBar::new(pages as u64).with_style(
        ProgressStyle::with_template("timeline pages {bar:40} {pos}/{len}").expect("template"),
    );
    for _ in 0..pages {
        let conv = &convs[(next() as usize) % convs.len()];
        let after = (next() as usize) % (per_conv - 50);
        let t = Instant::now();
        let r = client
            .get(format!(
                "{base}/v1/conversations/{conv}/events?after={after}&limit=50"
            ))
            .bearer_auth(key)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        hist.record(t.elapsed().as_micros() as u64)?;
        if !status.is_success() {
            bail!(
                "page read answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(hist)
}
