//! `continuum bench messaging`: inbound provider webhooks validated and
//! persisted per second, and outbound messages per second through the
//! durable outbox to a local provider stand-in (Twilio's REST shape), on a
//! real `continuum serve` child process.

use super::server::ServerProcess;
use anyhow::{Context, bail};
use axum::extract::State;
use clap::Args;
use continuum_messaging::twilio;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct MessagingArgs {
    /// Inbound webhooks to post (each signed, each a new MessageSid).
    #[arg(long, default_value_t = 20_000)]
    pub inbound: usize,
    /// Outbound messages to queue and send.
    #[arg(long, default_value_t = 20_000)]
    pub outbound: usize,
    /// Patients (conversations) the traffic is spread over.
    #[arg(long, default_value_t = 200)]
    pub patients: usize,
    /// Requests in flight from the load generator.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    machine_cores: usize,
    inbound_webhooks: usize,
    inbound_per_sec: f64,
    inbound_stored: u64,
    outbound_messages: usize,
    outbound_queue_per_sec: f64,
    outbound_sent_per_sec: f64,
    provider_requests: u64,
    duplicates_at_provider: u64,
    server_cpu_us_per_inbound: f64,
    server_cpu_us_per_outbound: f64,
    rss_mib_after: f64,
}

const TOKEN: &str = "bench-auth-token";
const CLINIC: &str = "+14155559999";

fn bar(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb
}

/// The provider stand-in: accepts every message, counts them and the
/// distinct ids it saw (a message sent twice would show as a duplicate).
#[derive(Default)]
struct StandIn {
    requests: AtomicU64,
    seen: parking_lot::Mutex<std::collections::HashSet<String>>,
    duplicates: AtomicU64,
}

async fn accept(
    State(s): State<Arc<StandIn>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    let ours = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "StatusCallback")
        .and_then(|(_, v)| v.split_once("message=").map(|(_, id)| id.to_owned()))
        .unwrap_or_default();
    if !s.seen.lock().insert(ours) {
        s.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    (
        axum::http::StatusCode::CREATED,
        axum::Json(json!({"sid": format!("SM{n:032}"), "status": "queued"})),
    )
        .into_response()
}

pub fn run(args: MessagingArgs) -> anyhow::Result<()> {
    if args.patients == 0 || args.concurrency == 0 {
        bail!("--patients and --concurrency must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("continuum-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "continuum bench messaging — {cores} cores, data in {}",
        dir.path().display()
    );
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            (
                "CONTINUUM_MESSAGING__ALLOW_PRIVATE_PROVIDERS",
                "true".into(),
            ),
            (
                "CONTINUUM_MESSAGING__ALLOW_HTTP_HOSTS",
                r#"["127.0.0.1"]"#.into(),
            ),
            ("CONTINUUM_MESSAGING__CONCURRENCY", "128".into()),
        ],
    )?;
    let key = server
        .api_key
        .clone()
        .context("the fresh server printed no dev API key")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let stand_in = Arc::new(StandIn::default());
    let base = server.base.clone();
    let report = rt.block_on(async {
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                axum::routing::post(accept),
            )
            .with_state(stand_in.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stand_in_base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let call = |method: reqwest::Method, path: String, body: Value| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            async move {
                let r = client
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!("{path} answered {status}: {v}");
                }
                anyhow::Ok(v)
            }
        };
        let provider = call(
            reqwest::Method::POST,
            "/v1/messaging/providers".into(),
            json!({"name": "stand-in", "kind": "twilio", "channels": ["sms"], "senders": [CLINIC],
                   "spec": {"account_sid": "ACbench", "base_url": stand_in_base, "max_in_flight": 128},
                   "credentials": {"auth_token": TOKEN}}),
        )
        .await?;
        let inbound_url = provider["inbound_url"]
            .as_str()
            .context("no inbound_url")?
            .to_owned();
        // Patients, each with a conversation.
        let mut convs = Vec::with_capacity(args.patients);
        for i in 0..args.patients {
            let phone = format!("+1415600{i:04}");
            let c = call(
                reqwest::Method::POST,
                "/v1/contacts".into(),
                json!({"display_name": format!("Patient {i}"), "phone": phone}),
            )
            .await?;
            let conv = call(
                reqwest::Method::POST,
                "/v1/conversations".into(),
                json!({"contact_id": c["id"]}),
            )
            .await?;
            convs.push((phone, conv["id"].as_str().unwrap_or_default().to_owned()));
        }

        // 1. Inbound: signed webhooks, validated and persisted.
        let pb = bar(args.inbound, "inbound");
        let cpu0 = server.cpu_seconds();
        let started = Instant::now();
        let failures = AtomicU64::new(0);
        futures::stream::iter(0..args.inbound)
            .map(|i| {
                let (client, url, convs, pb, failures) =
                    (&client, &inbound_url, &convs, &pb, &failures);
                async move {
                    let from = &convs[i % convs.len()].0;
                    let sid = format!("SM{i:032}");
                    let body = format!("Message {i} from the bench");
                    let params = [
                        ("From", from.as_str()),
                        ("To", CLINIC),
                        ("Body", body.as_str()),
                        ("MessageSid", sid.as_str()),
                        ("NumMedia", "0"),
                    ];
                    let sig = twilio::signature(TOKEN, url, &params);
                    let ok = client
                        .post(url)
                        .header("x-twilio-signature", sig)
                        .form(&params)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    pb.inc(1);
                }
            })
            .buffer_unordered(args.concurrency)
            .collect::<()>()
            .await;
        let inbound_secs = started.elapsed().as_secs_f64();
        let inbound_cpu = server.cpu_seconds() - cpu0;
        pb.finish();
        if failures.load(Ordering::Relaxed) > 0 {
            bail!("{} webhooks were refused", failures.load(Ordering::Relaxed));
        }
        let mut stored = 0u64;
        for (_, conv) in &convs {
            let page = call(
                reqwest::Method::GET,
                format!("/v1/conversations/{conv}/context?events=0"),
                Value::Null,
            )
            .await?;
            stored += page["channels"]
                .as_array()
                .and_then(|c| c.iter().find(|x| x["channel"] == "sms"))
                .and_then(|x| x["events"].as_u64())
                .unwrap_or(0);
        }

        // 2. Outbound: queued through the API, sent by the outbox.
        let pb = bar(args.outbound, "queued");
        let cpu0 = server.cpu_seconds();
        let started = Instant::now();
        futures::stream::iter(0..args.outbound)
            .map(|i| {
                let (call, convs, pb) = (&call, &convs, &pb);
                async move {
                    let conv = &convs[i % convs.len()].1;
                    let r = call(
                        reqwest::Method::POST,
                        format!("/v1/conversations/{conv}/messages"),
                        json!({"channel": "sms", "body": format!("Reminder {i}: your visit is tomorrow")}),
                    )
                    .await;
                    pb.inc(1);
                    r.map(|_| ())
                }
            })
            .buffer_unordered(args.concurrency)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<()>>()?;
        let queued_secs = started.elapsed().as_secs_f64();
        pb.finish();
        let pb = bar(args.outbound, "sent");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = stand_in.requests.load(Ordering::Relaxed);
            pb.set_position(n);
            if n as usize >= args.outbound {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {n} of {} messages reached the provider in 10 minutes", args.outbound);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sent_secs = started.elapsed().as_secs_f64();
        let outbound_cpu = server.cpu_seconds() - cpu0;
        pb.finish();
        anyhow::Ok(Report {
            machine_cores: cores,
            inbound_webhooks: args.inbound,
            inbound_per_sec: args.inbound as f64 / inbound_secs,
            inbound_stored: stored,
            outbound_messages: args.outbound,
            outbound_queue_per_sec: args.outbound as f64 / queued_secs,
            outbound_sent_per_sec: args.outbound as f64 / sent_secs,
            provider_requests: stand_in.requests.load(Ordering::Relaxed),
            duplicates_at_provider: stand_in.duplicates.load(Ordering::Relaxed),
            server_cpu_us_per_inbound: inbound_cpu * 1e6 / args.inbound.max(1) as f64,
            server_cpu_us_per_outbound: outbound_cpu * 1e6 / args.outbound.max(1) as f64,
            rss_mib_after: server.rss_bytes() as f64 / (1024.0 * 1024.0),
        })
    })?;
    println!();
    println!(
        "  inbound webhooks (signed, validated, stored): {:>9.0}/s   ({} stored of {}; {:.0} µs server CPU each)",
        report.inbound_per_sec,
        report.inbound_stored,
        report.inbound_webhooks,
        report.server_cpu_us_per_inbound
    );
    println!(
        "  outbound queued (API → outbox + timeline):     {:>9.0}/s",
        report.outbound_queue_per_sec
    );
    println!(
        "  outbound sent end to end (queued → provider):  {:>9.0}/s   ({} requests, {} duplicates; {:.0} µs server CPU each)",
        report.outbound_sent_per_sec,
        report.provider_requests,
        report.duplicates_at_provider,
        report.server_cpu_us_per_outbound
    );
    println!("  server RSS after: {:.1} MiB", report.rss_mib_after);
    if report.inbound_stored != report.inbound_webhooks as u64 {
        bail!(
            "{} webhooks stored of {} posted",
            report.inbound_stored,
            report.inbound_webhooks
        );
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
