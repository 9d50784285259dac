//! `continuum bench reminders`: appointment reminders per hour, end to end.
//!
//! 1. Scheduling: N appointments (N patients, each found or created with
//!    a conversation) through the same import path as
//!    `POST /v1/appointments/import`, each planning its reminders
//!    (2 per appointment by default): reminders scheduled per hour.
//! 2. Dispatch, end to end: the real scheduler (due reminders claimed and
//!    queued in the outbox, one write per batch) and the real outbox sender
//!    (the tenant's failover chain, HTTP to a Twilio-shaped stand-in on
//!    loopback, each outcome recorded) run together, with the scheduler's
//!    clock moved ahead to each offset's wave in turn (the appointments are
//!    all within one minute: every T-24h reminder falls due, then every
//!    T-1h one, each before its appointment). Reported: the
//!    rate at which reminders reached the outbox, and the end-to-end rate
//!    at which they were accepted by the stand-in with their outcome
//!    durably recorded (`sent`).
//!
//! Everything runs in this process against a fresh data directory (sealed,
//! audited, fsynced like the server); only the HTTP API in front of the
//! import is left out.

use anyhow::{Context, bail};
use axum::Router;
use clap::Args;
use continuum_core::Channel;
use continuum_server::Config;
use continuum_server::messaging::MessagingService;
use continuum_server::reminders::rows::AppointmentRequest;
use continuum_server::reminders::{Scheduler, import};
use continuum_store::{
    NewMessagingProvider, ProviderKind, ReminderSettings, SecretKey, Store, StoreOptions,
    TemplateInput,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RemindersArgs {
    /// Appointments to schedule (each gets one reminder per offset).
    #[arg(long, default_value_t = 200_000)]
    pub appointments: usize,
    /// Reminder offsets of the template, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["-24h".to_owned(), "-1h".to_owned()])]
    pub offsets: Vec<String>,
    /// Rows per import request (as the CLI sends them).
    #[arg(long, default_value_t = 5000)]
    pub chunk: usize,
    /// Import requests in flight at once.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Provider requests in flight at once (messaging.concurrency).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Keep the data directory here (default: a temporary one, removed).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    command: String,
    machine_cores: usize,
    appointments: usize,
    reminders: usize,
    schedule_secs: f64,
    appointments_per_hour: f64,
    reminders_scheduled_per_hour: f64,
    to_outbox_secs: f64,
    reminders_to_outbox_per_hour: f64,
    end_to_end_secs: f64,
    reminders_end_to_end_per_hour: f64,
    provider_requests: u64,
    duplicates: u64,
    database_mib: f64,
}

fn per_hour(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 * 3600.0 / secs
    } else {
        0.0
    }
}

/// A Twilio-shaped stand-in on loopback: answers 201 with a sid, counts
/// requests, and notes a body seen twice.
async fn stand_in() -> anyhow::Result<(String, Arc<AtomicU64>, Arc<AtomicU64>)> {
    let count = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<u64>::new(),
    ));
    let (c, d) = (count.clone(), dups.clone());
    let app = Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (c, d, seen) = (c.clone(), d.clone(), seen.clone());
            async move {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                body.hash(&mut h);
                if !seen.lock().expect("not poisoned").insert(h.finish()) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                let n = c.fetch_add(1, Ordering::Relaxed) + 1;
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(
                        serde_json::json!({"sid": format!("SM{n:032}"), "status": "queued"}),
                    ),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, count, dups))
}

fn bar(len: usize, prefix: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:40.cyan/blue}] {pos}/{len} ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

async fn count(store: &Store, state: &str) -> anyhow::Result<i64> {
    Ok(store
        .reminder_counts()
        .await?
        .into_iter()
        .find(|(s, _)| s == state)
        .map_or(0, |(_, n)| n))
}

pub fn run(args: RemindersArgs, _cfg: Config) -> anyhow::Result<()> {
    if args.appointments == 0
        || args.appointments > 8_000_000
        || args.chunk == 0
        || args.parallel == 0
    {
        bail!("--appointments must be 1..=8000000, --chunk and --parallel positive");
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("continuum-bench-")
                .tempdir()
                .context("creating a temp dir")?;
            tmp.path().to_owned()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "continuum bench reminders — {cores} cores, {} appointments × {} reminders, data in {}",
        args.appointments,
        args.offsets.len(),
        dir.display()
    );
    rt.block_on(async move {
        let store = Store::open(&dir, SecretKey::generate(), StoreOptions::default())?;
        let (base, requests, dups) = stand_in().await?;
        let tenant = store.create_tenant("bench", "local", "bench").await?;
        let t = tenant.id.clone();
        let mut spec = serde_json::Map::new();
        spec.insert("account_sid".into(), "ACbench".into());
        spec.insert("base_url".into(), base.into());
        spec.insert("max_in_flight".into(), (args.concurrency as u64).into());
        let mut secret = serde_json::Map::new();
        secret.insert("auth_token".into(), "bench".into());
        store
            .create_messaging_provider(
                &t,
                NewMessagingProvider {
                    name: "stand-in".into(),
                    kind: ProviderKind::Twilio,
                    priority: 1,
                    channels: vec![Channel::Sms],
                    senders: vec!["+14155559999".into()],
                    spec,
                    secret,
                },
                "bench",
            )
            .await?;
        store
            .set_reminder_settings(&t, &ReminderSettings { quiet_hours: None, ..Default::default() }, "bench")
            .await?;
        store
            .create_reminder_template(
                &t,
                TemplateInput {
                    name: "default".into(),
                    offsets: args.offsets.clone(),
                    body: "Hi {{patient_first_name}}, your visit at {{clinic}} is {{weekday}} {{date}} at {{time}}. Reply C to confirm or R to reschedule.".into(),
                    channel: Default::default(),
                    whatsapp: None,
                    from: None,
                },
                "bench",
            )
            .await?;

        // 1. Scheduling: appointments two days out, within one minute (so
        // each offset's reminders fall due together: one wave per offset).
        let first = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48);
        let n = args.appointments;
        let pb = bar(n, "scheduling");
        let started = Instant::now();
        let chunks: Vec<std::ops::Range<usize>> = (0..n)
            .step_by(args.chunk)
            .map(|i| i..(i + args.chunk).min(n))
            .collect();
        let results: Vec<anyhow::Result<usize>> = futures::StreamExt::collect(
            futures::StreamExt::buffer_unordered(
                futures::stream::iter(chunks.into_iter().map(|range| {
                    let (store, t, pb) = (store.clone(), t.clone(), pb.clone());
                    async move {
                        let len = range.len();
                        let rows: Vec<(usize, Result<AppointmentRequest, _>)> = range
                            .enumerate()
                            .map(|(j, i)| {
                                let start = first + jiff::SignedDuration::from_secs((i % 60) as i64);
                                (j + 1, Ok(AppointmentRequest {
                                    external_id: Some(format!("B-{i}")),
                                    phone: Some(format!("+1415{}", 2_000_000 + i)),
                                    patient_name: Some(format!("Pat{i} Bench")),
                                    start_time: Some(start.to_string()),
                                    location: Some("Room 1".into()),
                                    ..Default::default()
                                }))
                            })
                            .collect();
                        let r = import(&store, &t, rows, false, "bench").await?;
                        let report = r.map_err(|e| anyhow::anyhow!("rows refused: {}", e[0]))?;
                        if !report.failed.is_empty() {
                            bail!("{} rows failed: {}", report.failed.len(), report.failed[0]);
                        }
                        pb.inc(len as u64);
                        Ok(report.created)
                    }
                })),
                args.parallel,
            ),
        )
        .await;
        let mut created = 0;
        for r in results {
            created += r?;
        }
        let schedule_secs = started.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let pending = count(&store, "pending").await? as usize;
        println!(
            "scheduled {created} appointments, {pending} reminders in {schedule_secs:.1} s: {:.0} appointments/h, {:.0} reminders/h",
            per_hour(created, schedule_secs),
            per_hour(pending, schedule_secs)
        );

        // 2. Dispatch end to end: the outbox sender throughout, and the
        // scheduler with its clock moved to a minute after each offset's
        // wave fell due (all T-24h reminders, then all T-1h), so every
        // reminder goes out before its appointment as it would in a day.
        let cfg = continuum_server::config::MessagingConfig {
            concurrency: args.concurrency,
            allow_private_providers: true,
            allow_http_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        };
        let messaging =
            MessagingService::new(store.clone(), cfg, "http://127.0.0.1:9".into(), None);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut waves: Vec<i64> = args
            .offsets
            .iter()
            .map(|o| continuum_store::plan::parse_offset(o).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        waves.sort_unstable();
        let pb = bar(pending, "dispatching");
        let started = Instant::now();
        let sender = tokio::spawn(messaging.run_sender(stop_rx));
        let first_us = first.as_microsecond();
        for off in waves {
            let wave_at = first_us + (off + 61) * 1_000_000;
            let mut scheduler = Scheduler::new(store.clone());
            scheduler.clock_offset_micros = wave_at - continuum_core::clock::unix_micros();
            let (wave_stop, wave_rx) = tokio::sync::watch::channel(false);
            let sched = tokio::spawn(Arc::new(scheduler).run(wave_rx));
            // This wave is claimed once nothing pending is due by its clock.
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                pb.set_position(requests.load(Ordering::Relaxed));
                let next = store.next_reminder_due().await?;
                if next.is_none_or(|d| d > wave_at + 60 * 1_000_000) {
                    break;
                }
            }
            let _ = wave_stop.send(true);
            let _ = sched.await;
        }
        let to_outbox = started.elapsed().as_secs_f64();
        let end_to_end;
        loop {
            let done = requests.load(Ordering::Relaxed) as usize;
            pb.set_position(done as u64);
            if done >= pending {
                // Accepted by the provider; wait for the outcomes' commits.
                let sent = store
                    .message_counts()
                    .await?
                    .into_iter()
                    .find(|(s, _)| s == "sent")
                    .map_or(0, |(_, n)| n) as usize;
                if sent >= pending {
                    end_to_end = started.elapsed().as_secs_f64();
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(3600) {
                bail!("dispatch did not finish within an hour ({done} of {pending} sent)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let not_sent = store
            .reminder_counts()
            .await?
            .into_iter()
            .filter(|(s, _)| s != "sent")
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>();
        if !not_sent.is_empty() {
            bail!("reminders not sent: {}", not_sent.join(", "));
        }
        pb.finish_and_clear();
        let _ = stop_tx.send(true);
        let _ = sender.await;
        println!(
            "dispatched {pending} reminders: to the outbox in {to_outbox:.1} s ({:.0}/h); accepted by the provider and recorded `sent` in {end_to_end:.1} s ({:.0}/h end to end)",
            per_hour(pending, to_outbox),
            per_hour(pending, end_to_end)
        );
        let dup = dups.load(Ordering::Relaxed);
        let db = std::fs::metadata(continuum_store::database_path(&dir)).map(|m| m.len()).unwrap_or(0);
        store.shutdown();
        let report = Report {
            command: command.clone(),
            machine_cores: cores,
            appointments: created,
            reminders: pending,
            schedule_secs,
            appointments_per_hour: per_hour(created, schedule_secs),
            reminders_scheduled_per_hour: per_hour(pending, schedule_secs),
            to_outbox_secs: to_outbox,
            reminders_to_outbox_per_hour: per_hour(pending, to_outbox),
            end_to_end_secs: end_to_end,
            reminders_end_to_end_per_hour: per_hour(pending, end_to_end),
            provider_requests: requests.load(Ordering::Relaxed),
            duplicates: dup,
            database_mib: db as f64 / (1024.0 * 1024.0),
        };
        println!();
        println!("summary ({command})");
        println!("  reminders scheduled:            {:>12.0} /h", report.reminders_scheduled_per_hour);
        println!("  reminders to the outbox:        {:>12.0} /h", report.reminders_to_outbox_per_hour);
        println!("  reminders end to end (sent):    {:>12.0} /h", report.reminders_end_to_end_per_hour);
        println!("  provider requests: {}, duplicates: {dup}", report.provider_requests);
        let json = serde_json::to_string_pretty(&report)?;
        if let Some(out) = &args.out {
            std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
            println!("results written to {}", out.display());
        } else {
            println!("{json}");
        }
        if dup > 0 {
            bail!("{dup} reminders reached the provider twice");
        }
        anyhow::Ok(())
    })
}
