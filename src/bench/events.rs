//! `continuum bench events`: durable appends, timeline pages with many
//! events stored, memory; on SQLite (one node) and on PostgreSQL + NATS (a
//! cluster: also cross-node delivery and CPU per append of each component),
//! side by side when both run.

use super::server::{ServerProcess, proc_cpu_seconds};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent};
use continuum_server::Config;
use continuum_store::{ContactInput, NewConversation, SecretKey, Store, StoreOptions};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One node, SQLite in its data directory.
    Sqlite,
    /// Nodes on one PostgreSQL database and one NATS server.
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Args)]
pub struct EventsArgs {
    /// Stores to measure, comma-separated: sqlite, postgres. Each gets the
    /// same phases and one column of the closing table. Default: sqlite, or
    /// postgres alone when --postgres or --store is given.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub backends: Vec<Backend>,
    /// Measure PostgreSQL on a server of the bench's own (continuum-testkit:
    /// a fresh cluster on a free loopback port, fsync on, so commits are
    /// durable like SQLite's). Needs Debian's postgresql package.
    #[arg(long)]
    pub postgres: bool,
    /// Measure PostgreSQL on this database instead
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE; it must be empty:
    /// the bench writes a million events into it).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The PostgreSQL nodes' bus: this NATS server (with JetStream) instead
    /// of one of the bench's own.
    #[arg(long, value_name = "URL")]
    pub bus: Option<String>,
    /// Start a nats-server of the bench's own for the PostgreSQL nodes (the
    /// default when --bus is not given). Needs Debian's nats-server package.
    #[arg(long)]
    pub nats: bool,
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
    /// Cross-node delivery (PostgreSQL): appends per second on node A,
    /// spread over --latency-conversations, each streamed from node B.
    #[arg(long, default_value_t = 500)]
    pub latency_rate: u32,
    #[arg(long, default_value_t = 16)]
    pub latency_conversations: usize,
    /// Seconds of the cross-node delivery run.
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// CPU spent per append, in microseconds, by each process that took part.
#[derive(Serialize, Clone, Default)]
struct CpuPerAppend {
    /// The continuum server process(es).
    server_us: f64,
    /// Every process of the PostgreSQL cluster (postmaster, backends,
    /// WAL writer, checkpointer, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_us: Option<f64>,
}

impl CpuPerAppend {
    fn describe(&self) -> String {
        let mut s = format!("server {:.1}", self.server_us);
        if let Some(p) = self.postgres_us {
            s.push_str(&format!(", postgres {p:.1}"));
        }
        if let Some(n) = self.nats_us {
            s.push_str(&format!(", nats {n:.1}"));
        }
        s + " µs CPU/append"
    }
}

#[derive(Serialize)]
struct WriterResult {
    writers: usize,
    appends: u64,
    appends_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: CpuPerAppend,
}

#[derive(Serialize)]
struct CrossNode {
    /// Appends sent to node A, and how many node B's streams delivered.
    appends: u64,
    delivered: u64,
    appends_per_sec: f64,
    /// From sending the append to node A until node B's SSE stream has it.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The append request's own round trip on node A (durable commit).
    append_p50_ms: f64,
    append_p99_ms: f64,
    /// Both nodes' CPU together under `server_us`.
    cpu: CpuPerAppend,
}

#[derive(Serialize)]
struct Report {
    backend: Backend,
    idle_rss_mib: f64,
    appends: Vec<WriterResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cross_node: Option<CrossNode>,
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

#[derive(Serialize)]
struct Reports {
    machine_cores: usize,
    runs: Vec<Report>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The processes whose CPU a phase is charged with.
#[derive(Clone, Default)]
struct Meter {
    servers: Vec<u32>,
    postmaster: Option<u32>,
    nats: Option<u32>,
}

#[derive(Clone, Copy)]
struct CpuSample {
    server: f64,
    postgres: Option<f64>,
    nats: Option<f64>,
}

impl Meter {
    fn sample(&self) -> CpuSample {
        CpuSample {
            server: self
                .servers
                .iter()
                .map(|&p| proc_cpu_seconds(p, false).unwrap_or(0.0))
                .sum(),
            postgres: self.postmaster.map(postgres_cpu_seconds),
            nats: self.nats.and_then(|p| proc_cpu_seconds(p, true)),
        }
    }

    fn per_append(&self, before: CpuSample, appends: u64) -> CpuPerAppend {
        let after = self.sample();
        let per = |a: f64, b: f64| {
            if appends > 0 {
                (a - b).max(0.0) * 1e6 / appends as f64
            } else {
                0.0
            }
        };
        CpuPerAppend {
            server_us: per(after.server, before.server),
            postgres_us: after.postgres.zip(before.postgres).map(|(a, b)| per(a, b)),
            nats_us: after.nats.zip(before.nats).map(|(a, b)| per(a, b)),
        }
    }
}

/// Every process of the PostgreSQL cluster under `postmaster`: its own CPU
/// and its children's, live ones read directly, exited ones (closed
/// connections) through the postmaster's `cutime`.
fn postgres_cpu_seconds(postmaster: u32) -> f64 {
    let mut total = proc_cpu_seconds(postmaster, true).unwrap_or(0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != postmaster && super::server::parent_of(pid) == Some(postmaster) {
            total += proc_cpu_seconds(pid, true).unwrap_or(0.0);
        }
    }
    total
}

/// The nats-server process serving `port` on this machine (by its command
/// line), or the only nats-server there is.
fn find_nats_server(port: u16) -> Option<u32> {
    let port = port.to_string();
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .first()
            .is_none_or(|a| a.rsplit('/').next() != Some("nats-server"))
        {
            continue;
        }
        if args.iter().any(|a| {
            *a == port || a.ends_with(&format!("={port}")) || a.ends_with(&format!(":{port}"))
        }) {
            return Some(pid);
        }
        all.push(pid);
    }
    (all.len() == 1).then(|| all[0])
}

/// Where the PostgreSQL run's nodes keep their state, and the processes
/// that serve it.
struct Cluster {
    url: String,
    bus: String,
    master: SecretKey,
    postmaster: Option<u32>,
    nats: Option<u32>,
    /// Dropped (stopped and removed) after the run.
    _pg: Option<continuum_testkit::Postgres>,
    _nats: Option<continuum_testkit::Nats>,
}

impl Cluster {
    fn start(args: &EventsArgs) -> anyhow::Result<Cluster> {
        let (pg, url) = match &args.store {
            Some(url) => (None, url.clone()),
            None => {
                let pg = continuum_testkit::Postgres::builder()
                    .fsync(true)
                    .start()
                    .context("starting PostgreSQL for the bench (continuum-testkit; apt-get install postgresql)")?;
                let url = pg.create_database("bench")?;
                println!(
                    "PostgreSQL {} of the bench's own (fsync on), data in {}",
                    pg.url_for("bench"),
                    pg.data_dir().display()
                );
                (Some(pg), url)
            }
        };
        let (nats, bus) = match &args.bus {
            Some(bus) => (None, bus.clone()),
            None => {
                let nats = continuum_testkit::Nats::start()
                    .context("starting nats-server for the bench (continuum-testkit; apt-get install nats-server)")?;
                let url = nats.url();
                println!("nats-server {url} of the bench's own");
                (Some(nats), url)
            }
        };
        let master = SecretKey::generate();
        // Migrations now (the nodes would run them), the target's emptiness,
        // and the postmaster: the parent of this connection's backend.
        let store = Store::open_postgres(&url, master.clone(), StoreOptions::default())
            .with_context(|| format!("connecting to {url}"))?;
        let (tenants, backend_pid): (i64, i64) = store.read_blocking(|c| {
            let t = c.query_row("SELECT COUNT(*) FROM tenants", [0i64; 0], |r| r.get(0))?;
            let p = c.query_row("SELECT CAST(pg_backend_pid() AS BIGINT)", [0i64; 0], |r| {
                r.get(0)
            })?;
            Ok((t, p))
        })?;
        store.shutdown();
        drop(store);
        if tenants > 0 {
            bail!(
                "{url} already holds {tenants} tenant(s): the bench needs an empty database (it writes a million events); create one (CREATE DATABASE …) or use --postgres"
            );
        }
        // Only if that pid is a PostgreSQL backend here (a remote server's
        // pid may be anything on this machine).
        let local = std::fs::read_to_string(format!("/proc/{backend_pid}/comm"))
            .is_ok_and(|c| c.starts_with("postgres"));
        let postmaster = local
            .then(|| super::server::parent_of(backend_pid as u32))
            .flatten();
        if postmaster.is_none() {
            println!("(PostgreSQL is not a process of this machine: its CPU is not measured)");
        }
        let nats_port = bus
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(4222);
        let nats_pid = find_nats_server(nats_port);
        if nats_pid.is_none() {
            println!("(nats-server is not a process of this machine: its CPU is not measured)");
        }
        Ok(Cluster {
            url,
            bus,
            master,
            postmaster,
            nats: nats_pid,
            _pg: pg,
            _nats: nats,
        })
    }

    fn node_env(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CONTINUUM_STORE__URL", self.url.clone()),
            ("CONTINUUM_BUS__URL", self.bus.clone()),
            ("CONTINUUM_SECURITY__MASTER_KEY", self.master.to_hex()),
            ("CONTINUUM_NODE__NAME", name.to_owned()),
        ]
    }
}

/// One backend's run: its server processes, store and meters.
struct Target<'c> {
    backend: Backend,
    dir: tempfile::TempDir,
    cluster: Option<&'c Cluster>,
}

impl Target<'_> {
    fn start_node(&self, name: &str) -> anyhow::Result<ServerProcess> {
        match self.cluster {
            None => ServerProcess::start(self.dir.path()),
            Some(c) => {
                let dir = self.dir.path().join(name);
                std::fs::create_dir_all(&dir)?;
                ServerProcess::start_with(&dir, &c.node_env(name))
            }
        }
    }

    fn meter(&self, servers: &[&ServerProcess]) -> Meter {
        Meter {
            servers: servers.iter().map(|s| s.pid()).collect(),
            postmaster: self.cluster.and_then(|c| c.postmaster),
            nats: self.cluster.and_then(|c| c.nats),
        }
    }

    /// The store itself, for the bulk load (no server running).
    async fn open_store(&self) -> anyhow::Result<Store> {
        match self.cluster {
            None => {
                let key = std::fs::read_to_string(self.dir.path().join("master.key"))
                    .context("the bench data dir has no master.key")?;
                Ok(Store::connect(
                    &self.dir.path().display().to_string(),
                    SecretKey::parse(&key)?,
                    StoreOptions::default(),
                )
                .await?)
            }
            Some(c) => Ok(Store::connect(
                &c.url,
                c.master.clone(),
                StoreOptions {
                    pg_connections: 16,
                    ..Default::default()
                },
            )
            .await?),
        }
    }

    /// Conversations loaded at once: enough to keep the store busy.
    fn load_concurrency(&self) -> usize {
        match self.backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 8,
        }
    }
}

pub fn run(args: EventsArgs, _cfg: Config) -> anyhow::Result<()> {
    if args.writers.is_empty() || args.writers.contains(&0) {
        bail!("--writers needs positive counts, e.g. --writers 1,8,64");
    }
    if args.conversations == 0 || args.events < args.conversations * 60 {
        bail!("--events must be at least 60 per conversation so 50-event pages fit");
    }
    if let Some(url) = &args.store
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        bail!("--store takes a PostgreSQL URL: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE");
    }
    if let Some(bus) = &args.bus
        && !bus.starts_with("nats://")
    {
        bail!("--bus takes a NATS URL: nats://HOST:PORT");
    }
    let mut backends = args.backends.clone();
    if (args.postgres || args.store.is_some()) && !backends.contains(&Backend::Postgres) {
        backends.push(Backend::Postgres);
    }
    if backends.is_empty() {
        backends.push(Backend::Sqlite);
    }
    backends.dedup();
    if args.latency_conversations == 0 || args.latency_rate == 0 {
        bail!("--latency-rate and --latency-conversations must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "continuum bench events — {cores} cores; {}",
        backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(" then ")
    );
    let mut runs = Vec::new();
    for backend in backends {
        println!();
        println!("== {} ==", backend.name());
        let cluster = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Cluster::start(&args)?),
        };
        let dir = tempfile::Builder::new()
            .prefix("continuum-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        println!("server data in {}", dir.path().display());
        let target = Target {
            backend,
            dir,
            cluster: cluster.as_ref(),
        };
        runs.push(run_backend(&args, &target, &rt)?);
    }
    if runs.len() > 1 {
        print_comparison(&runs);
    }
    let json = serde_json::to_string_pretty(&Reports {
        machine_cores: cores,
        runs,
    })?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        println!("results written to {}", out.display());
    } else {
        println!("{json}");
    }
    Ok(())
}

fn run_backend(
    args: &EventsArgs,
    target: &Target<'_>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Report> {
    // 1. Idle memory and durable append throughput on a fresh server.
    let server = target.start_node("node-a")?;
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
    let meter = target.meter(&[&server]);
    let mut appends = Vec::new();
    for &w in &args.writers {
        let before = meter.sample();
        let r = rt.block_on(measure_appends(
            &client,
            &server.base,
            &key,
            &convs,
            w,
            Duration::from_secs(args.seconds),
        ))?;
        let cpu = meter.per_append(before, r.appends);
        println!(
            "{:>3} writers: {:>9.0} durable appends/s  (p50 {:.2} ms, p99 {:.2} ms; {})",
            w,
            r.appends_per_sec,
            r.p50_ms,
            r.p99_ms,
            cpu.describe()
        );
        appends.push(WriterResult { cpu, ..r });
    }

    // 2. PostgreSQL: a second node; node B streams what node A appends.
    let cross_node = if target.cluster.is_some() {
        let b = target.start_node("node-b")?;
        rt.block_on(wait_ready(&client, &b.base))?;
        let meter = target.meter(&[&server, &b]);
        let convs = &convs[..args.latency_conversations.min(convs.len())];
        let before = meter.sample();
        let mut r = rt.block_on(cross_node(
            &client,
            &server.base,
            &b.base,
            &key,
            convs,
            args.latency_rate,
            Duration::from_secs(args.latency_seconds),
        ))?;
        r.cpu = meter.per_append(before, r.appends);
        println!(
            "cross-node: {} appends on node A at {:.0}/s, {} seen on node B's streams: append→SSE p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (append itself p50 {:.2} ms, p99 {:.2} ms; {}, both nodes)",
            r.appends,
            r.appends_per_sec,
            r.delivered,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.append_p50_ms,
            r.append_p99_ms,
            r.cpu.describe()
        );
        b.stop()?;
        Some(r)
    } else {
        None
    };
    server.stop()?;

    // 3. Bulk-load events through the store's own append path (sealed, audited).
    let (loaded, load_rate, ids) =
        rt.block_on(bulk_load(target, args.events, args.conversations))?;

    // 4. Memory with the events stored, and timeline page latency.
    let server = target.start_node("node-a")?;
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
        &ids,
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
    let db = match target.cluster {
        None => std::fs::metadata(continuum_store::database_path(target.dir.path()))
            .map(|m| m.len())
            .unwrap_or(0),
        Some(c) => {
            let store = Store::open_postgres(&c.url, c.master.clone(), StoreOptions::default())?;
            let size = store.read_blocking(|c| {
                Ok(c.query_row(
                    "SELECT CAST(pg_database_size(current_database()) AS BIGINT)",
                    [0i64; 0],
                    |r| r.get::<_, i64>(0),
                )?)
            })?;
            store.shutdown();
            size as u64
        }
    };
    println!("database size: {:.0} MiB", mib(db));

    Ok(Report {
        backend: target.backend,
        idle_rss_mib: mib(idle_rss),
        appends,
        cross_node,
        events_stored: loaded,
        bulk_load_events_per_sec: load_rate,
        rss_with_events_mib: mib(loaded_rss),
        rss_after_reads_mib: mib(after_rss),
        page_size: 50,
        page_p50_ms: ms(&hist, 0.5),
        page_p99_ms: ms(&hist, 0.99),
        page_p999_ms: ms(&hist, 0.999),
        database_mib: mib(db),
    })
}

/// The backends side by side.
fn print_comparison(runs: &[Report]) {
    println!();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, f: &dyn Fn(&Report) -> String| {
        rows.push((label, runs.iter().map(f).collect()));
    };
    let levels: Vec<usize> = runs[0].appends.iter().map(|a| a.writers).collect();
    for (i, w) in levels.iter().enumerate() {
        row(format!("durable appends/s, {w} writer(s)"), &|r| {
            r.appends.get(i).map_or("-".into(), |a| {
                format!("{:.0} (p99 {:.1} ms)", a.appends_per_sec, a.p99_ms)
            })
        });
        row(format!("  CPU µs/append at {w}: server"), &|r| {
            r.appends
                .get(i)
                .map_or("-".into(), |a| format!("{:.1}", a.cpu.server_us))
        });
        row("                       postgres".into(), &|r| {
            r.appends
                .get(i)
                .and_then(|a| a.cpu.postgres_us)
                .map_or("-".into(), |v| format!("{v:.1}"))
        });
        row("                       nats".into(), &|r| {
            r.appends
                .get(i)
                .and_then(|a| a.cpu.nats_us)
                .map_or("-".into(), |v| format!("{v:.1}"))
        });
    }
    row("cross-node append→SSE p50 / p99".into(), &|r| {
        r.cross_node.as_ref().map_or("-".into(), |c| {
            format!("{:.2} / {:.2} ms", c.p50_ms, c.p99_ms)
        })
    });
    row("timeline page p50 / p99 / p99.9".into(), &|r| {
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            r.page_p50_ms, r.page_p99_ms, r.page_p999_ms
        )
    });
    row("events stored".into(), &|r| r.events_stored.to_string());
    row("bulk load events/s".into(), &|r| {
        format!("{:.0}", r.bulk_load_events_per_sec)
    });
    row("server RSS idle / loaded / after reads".into(), &|r| {
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            r.idle_rss_mib, r.rss_with_events_mib, r.rss_after_reads_mib
        )
    });
    row("database size".into(), &|r| {
        format!("{:.0} MiB", r.database_mib)
    });
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    print!("{:width$}", "");
    for r in runs {
        print!("  {:>28}", r.backend.name());
    }
    println!();
    for (label, cells) in rows {
        print!("{label:width$}");
        for c in cells {
            print!("  {c:>28}");
        }
        println!();
    }
    println!();
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
        cpu: CpuPerAppend::default(),
    })
}

/// Appends on node A at a steady `rate`, each conversation streamed from
/// node B; the time from sending an append until B's stream delivers it.
async fn cross_node(
    client: &reqwest::Client,
    a: &str,
    b: &str,
    key: &str,
    convs: &[String],
    rate: u32,
    run_for: Duration,
) -> anyhow::Result<CrossNode> {
    // Send times ride in the bodies, as microseconds since `epoch` (one
    // monotonic clock: sender and streams are this process).
    let epoch = Instant::now();
    let seen = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for conv in convs {
        let c: serde_json::Value = client
            .get(format!("{a}/v1/conversations/{conv}"))
            .bearer_auth(key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let after = c["last_seq"].as_i64().context("last_seq")?;
        let resp = client
            .get(format!(
                "{b}/v1/conversations/{conv}/events/stream?after={after}"
            ))
            .bearer_auth(key)
            .send()
            .await?
            .error_for_status()
            .context("node B's stream")?;
        let (seen, delivered) = (seen.clone(), delivered.clone());
        readers.push(tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if !block.lines().any(|l| l.trim() == "event: timeline") {
                        continue;
                    }
                    let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let Ok(e) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                        continue;
                    };
                    let Some(sent) = e["body"]
                        .as_str()
                        .and_then(|b| b.strip_prefix("sent at "))
                        .and_then(|t| t.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let now = epoch.elapsed().as_micros() as u64;
                    let _ = seen.lock().record(now.saturating_sub(sent).max(1));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let bar = ProgressBar::new(run_for.as_secs()).with_style(
        ProgressStyle::with_template("cross-node {bar:40} {pos}/{len} s").expect("template"),
    );
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.tick().await;
            loop {
                t.tick().await;
                bar.inc(1);
            }
        })
    };
    let started = Instant::now();
    let deadline = started + run_for;
    let period = Duration::from_secs_f64(convs.len() as f64 / rate as f64);
    let mut writers = Vec::new();
    let spread = period / convs.len() as u32;
    for (i, conv) in convs.iter().enumerate() {
        let (client, url, key) = (
            client.clone(),
            format!("{a}/v1/conversations/{conv}/events"),
            key.to_owned(),
        );
        writers.push(tokio::spawn(async move {
            // Writers spread over the period rather than all at once.
            tokio::time::sleep(spread * i as u32).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let t = Instant::now();
                let body = format!("sent at {}", epoch.elapsed().as_micros());
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"channel": "chat", "kind": "message", "actor": {"type": "patient", "id": "p1"}, "body": body}))
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
    let mut sent = 0;
    let mut appended = Histogram::<u64>::new(3)?;
    for w in writers {
        let (n, h) = w.await??;
        sent += n;
        appended.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    // Whatever is still in flight arrives within a moment.
    let wait = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in readers {
        r.abort();
    }
    let h = seen.lock().clone();
    Ok(CrossNode {
        appends: sent,
        delivered: delivered.load(Ordering::Relaxed),
        appends_per_sec: sent as f64 / secs,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        max_ms: h.max() as f64 / 1000.0,
        append_p50_ms: ms(&appended, 0.5),
        append_p99_ms: ms(&appended, 0.99),
        cpu: CpuPerAppend::default(),
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

/// Loads `events` events over `conversations` new conversations through the
/// store's append path (sealed, audited, as appends over the API write
/// them; several conversations at once so commits overlap); returns the
/// count, the rate and the conversations.
async fn bulk_load(
    target: &Target<'_>,
    events: usize,
    conversations: usize,
) -> anyhow::Result<(usize, f64, Vec<String>)> {
    let store = target.open_store().await?;
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
    let sem = Arc::new(tokio::sync::Semaphore::new(target.load_concurrency()));
    let mut tasks = Vec::new();
    for id in ids.clone() {
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
    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    Ok((total, rate, ids))
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
