use crate::bench;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use continuum_core::{Grants, Role};
use continuum_server::config::{Config, EXAMPLE};
use continuum_server::{serve, telemetry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "continuum",
    version,
    about = "Self-hosted real-time patient communication platform"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// TOML config file (see `continuum config example`).
    #[arg(long, global = true, env = "CONTINUUM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (HTTP API on 127.0.0.1:7400 by default).
    Serve {
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage a tenant's API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Mint an access token locally (same as POST /v1/tokens).
    Token {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        role: String,
        /// Conversation ids the token may touch (`*` for all); repeatable.
        #[arg(long = "conversation")]
        conversations: Vec<String>,
        /// Room ids the token may join (`*` for all); repeatable.
        #[arg(long = "room")]
        rooms: Vec<String>,
        #[arg(long, default_value_t = 900)]
        ttl: u64,
    },
    /// The audit chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Copy a single-node SQLite store into an empty PostgreSQL database,
    /// to run it as a cluster (`store.url`). Stop the server first: the copy
    /// takes the SQLite store's exclusive lock and is refused while a server
    /// holds it open. Every table is copied as it is (sealed data stays
    /// sealed, so the PostgreSQL nodes need this same master key), in one
    /// transaction (a failed copy leaves the target empty); the audit chains
    /// are verified on PostgreSQL at the end.
    Migrate {
        /// The SQLite store's data directory (default: server.data_dir).
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// The empty PostgreSQL database to fill,
        /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (default: store.url).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Run only the STUN/TURN server (`[turn]` config), e.g. on an edge node
    /// near the users. REST credentials must share `turn.rest_secrets` (or the
    /// master key) with the API nodes.
    Turn,
    /// Run only the SIP gateway (`[sip]` config) with the store: inbound
    /// calls are routed by trunk and dispatch rule onto conversations.
    /// Dial-out, PSTN fallback and calls in video rooms need `serve` (the
    /// API and the SFU on the same node).
    Sip,
    /// Capacity for the peak burst and the cost curve against a CPaaS, from
    /// a workload profile (examples/plan/profile.toml).
    Plan(crate::plan::PlanArgs),
    /// Appointments and their reminders (over a running server's API).
    Appointments {
        #[command(subcommand)]
        command: crate::appointments::AppointmentsCommand,
    },
    /// IVR flows: check one, render its prompts.
    Ivr {
        #[command(subcommand)]
        command: crate::ivr::IvrCommand,
    },
    /// Benchmarks (run on the machine you plan for).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print a commented config file with every default.
    Example,
    /// Print the effective configuration (file + environment), secrets hidden.
    Show,
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its first API key.
    Create {
        name: String,
        #[arg(long, default_value = "local")]
        region: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key (printed once).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    Revoke {
        #[arg(long)]
        tenant: String,
        key_id: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every tenant's audit chain and every event against it.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(g: &Global) -> anyhow::Result<Config> {
    let mut cfg = Config::load(g.config.as_deref())?;
    if let Some(d) = &g.data_dir {
        cfg.server.data_dir = d.clone();
    }
    Ok(cfg)
}

/// `continuum_process_heap_bytes`: the live heap as the counting allocator
/// sees it (RSS also holds allocator caches, so it cannot tell a leak from a
/// high-water mark), and beside it `continuum_store_sqlite_memory_bytes`
/// (SQLite allocates with libc's malloc, outside the counted heap: the two
/// add up, they do not nest). A gauge set once a second: the metrics recorder is
/// installed by `serve::run`; until then the sets go nowhere.
fn export_heap_gauge() {
    std::thread::Builder::new()
        .name("heap-gauge".into())
        .spawn(|| {
            loop {
                metrics::gauge!("continuum_process_heap_bytes")
                    .set(crate::alloc::live_bytes() as f64);
                metrics::gauge!("continuum_store_sqlite_memory_bytes")
                    .set(continuum_store::sqlite_memory_bytes() as f64);
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })
        .ok();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Turn => {
            let cfg = load_config(&g)?;
            telemetry::init_logging(&cfg.log.format, &cfg.log.level);
            runtime()?.block_on(async {
                let master = serve::load_master_key(&cfg)?;
                let turn =
                    continuum_server::turn::TurnService::start(&cfg.turn, &master, &[]).await?;
                println!(
                    "TURN listening: udp {} tcp {} (region {}); Ctrl-C stops",
                    turn.udp_addr.map_or("-".into(), |a| a.to_string()),
                    turn.tcp_addr.map_or("-".into(), |a| a.to_string()),
                    turn.region
                );
                tokio::signal::ctrl_c()
                    .await
                    .context("waiting for Ctrl-C")?;
                anyhow::Ok(())
            })?;
        }
        Command::Sip => {
            let cfg = load_config(&g)?;
            telemetry::init_logging(&cfg.log.format, &cfg.log.level);
            runtime()?.block_on(async {
                let store = serve::open_store(&cfg)?;
                let nonce_key = *store.master_key().derive("sip-nonce").as_bytes();
                let voice = continuum_server::voice::VoiceService::start(
                    &cfg.sip,
                    store.clone(),
                    nonce_key,
                    None,
                )
                .await?;
                println!(
                    "SIP listening: udp {} tcp {} tls {}; Ctrl-C stops",
                    voice.voice.udp_addr.map_or("-".into(), |a| a.to_string()),
                    voice.voice.tcp_addr.map_or("-".into(), |a| a.to_string()),
                    voice.voice.tls_addr.map_or("-".into(), |a| a.to_string()),
                );
                tokio::signal::ctrl_c()
                    .await
                    .context("waiting for Ctrl-C")?;
                tokio::task::spawn_blocking(move || store.shutdown()).await?;
                anyhow::Ok(())
            })?;
        }
        Command::Serve { listen } => {
            let mut cfg = load_config(&g)?;
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            telemetry::init_logging(&cfg.log.format, &cfg.log.level);
            export_heap_gauge();
            runtime()?.block_on(serve::run(cfg))?;
        }
        Command::Config {
            command: ConfigCommand::Example,
        } => print!("{EXAMPLE}"),
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            let mut cfg = load_config(&g)?;
            if cfg.security.master_key.is_some() {
                cfg.security.master_key = Some("<hidden>".into());
            }
            if cfg.server.metrics_token.is_some() {
                cfg.server.metrics_token = Some("<hidden>".into());
            }
            print!("{}", toml::to_string_pretty(&cfg)?);
        }
        Command::Tenant { command } => {
            let cfg = load_config(&g)?;
            runtime()?.block_on(async {
                let store = serve::open_store(&cfg)?;
                match command {
                    TenantCommand::Create { name, region } => {
                        let t = store.create_tenant(&name, &region, "cli").await?;
                        let (_, key) = store.create_api_key(&t.id, "initial", "cli").await?;
                        println!("tenant {} ({})", t.name, t.id);
                        println!("API key (shown once): {key}");
                    }
                    TenantCommand::List => {
                        for t in store.list_tenants().await? {
                            println!(
                                "{}\t{}\tregion={}\tcreated={}",
                                t.id,
                                t.name,
                                t.region,
                                t.created_at.to_rfc3339()
                            );
                        }
                    }
                }
                store.shutdown();
                anyhow::Ok(())
            })?;
        }
        Command::Key { command } => {
            let cfg = load_config(&g)?;
            runtime()?.block_on(async {
                let store = serve::open_store(&cfg)?;
                match command {
                    KeyCommand::Create { tenant, name } => {
                        let t = store
                            .find_tenant(&tenant)
                            .await
                            .with_context(|| format!("tenant `{tenant}`"))?;
                        let (info, key) = store.create_api_key(&t.id, &name, "cli").await?;
                        println!("key {} for tenant {} (shown once):\n{key}", info.id, t.name);
                    }
                    KeyCommand::List { tenant } => {
                        let t = store
                            .find_tenant(&tenant)
                            .await
                            .with_context(|| format!("tenant `{tenant}`"))?;
                        for k in store.list_api_keys(&t.id).await? {
                            let status = k
                                .revoked_at
                                .map(|r| format!("revoked {}", r.to_rfc3339()))
                                .unwrap_or_else(|| "active".into());
                            println!(
                                "{}\t{}\t{}\t{status}",
                                k.id,
                                k.name,
                                k.created_at.to_rfc3339()
                            );
                        }
                    }
                    KeyCommand::Revoke { tenant, key_id } => {
                        let t = store
                            .find_tenant(&tenant)
                            .await
                            .with_context(|| format!("tenant `{tenant}`"))?;
                        store
                            .revoke_api_key(&t.id, &key_id, "cli")
                            .await
                            .with_context(|| format!("key `{key_id}`"))?;
                        println!(
                            "revoked {key_id} (running servers stop accepting it within 30 s)"
                        );
                    }
                }
                store.shutdown();
                anyhow::Ok(())
            })?;
        }
        Command::Token {
            tenant,
            identity,
            role,
            conversations,
            rooms,
            ttl,
        } => {
            let cfg = load_config(&g)?;
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            if ttl == 0 || ttl > cfg.security.token_max_ttl_secs {
                bail!(
                    "--ttl must be 1..={} (security.token_max_ttl_secs)",
                    cfg.security.token_max_ttl_secs
                );
            }
            runtime()?.block_on(async {
                let store = serve::open_store(&cfg)?;
                let t = store
                    .find_tenant(&tenant)
                    .await
                    .with_context(|| format!("tenant `{tenant}`"))?;
                let issuer = continuum_server::auth::TokenIssuer::new(store.master_key());
                let (token, _) = issuer.mint(
                    &t.id,
                    &identity,
                    role,
                    Grants {
                        conversations,
                        rooms,
                        contacts: Vec::new(),
                    },
                    Default::default(),
                    std::time::Duration::from_secs(ttl),
                );
                store
                    .audit(
                        &t.id,
                        continuum_store::AuditEntry::new(
                            "cli",
                            "token.mint",
                            format!("identity/{identity}"),
                            continuum_store::Outcome::Ok,
                        ),
                    )
                    .await?;
                println!("{token}");
                store.shutdown();
                anyhow::Ok(())
            })?;
        }
        Command::Audit {
            command: AuditCommand::Verify { json },
        } => {
            let cfg = load_config(&g)?;
            let store = serve::open_store(&cfg)?;
            let report = store.verify_blocking()?;
            store.shutdown();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "checked {} chain(s), {} audit records, {} events",
                    report.chains_checked, report.audit_records, report.events_checked
                );
                for p in &report.problems {
                    println!(
                        "BROKEN tenant {} at {}: {}",
                        p.tenant_id, p.location, p.reason
                    );
                }
                if report.is_intact() {
                    println!("audit chain intact");
                }
            }
            return Ok(if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        Command::Migrate { from, to } => return migrate(&g, from, to),
        Command::Openapi => {
            println!("{}", continuum_server::app::openapi().to_pretty_json()?);
        }
        Command::Appointments { command } => return crate::appointments::run(command),
        Command::Bench { command } => bench::run(command, load_config(&g)?)?,
        Command::Ivr { command } => crate::ivr::run(command, load_config(&g)?)?,
        Command::Plan(args) => crate::plan::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `continuum migrate`: the copy with a progress bar per table, a summary,
/// and the verification of the PostgreSQL store's audit chains.
fn migrate(g: &Global, from: Option<PathBuf>, to: Option<String>) -> anyhow::Result<ExitCode> {
    use indicatif::{ProgressBar, ProgressStyle};
    let mut cfg = load_config(g)?;
    if let Some(from) = from {
        cfg.server.data_dir = from;
    }
    let from = cfg.server.data_dir.clone();
    let Some(to) = to.or_else(|| cfg.store.url.clone()) else {
        bail!(
            "no target: give --to postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (or set store.url)"
        );
    };
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        bail!("--to must be a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)");
    }
    if !continuum_store::database_path(&from).is_file() {
        bail!(
            "no Continuum store at {}: --from names the server's data directory (server.data_dir)",
            continuum_store::database_path(&from).display()
        );
    }
    let key_file = cfg.security.master_key.is_none();
    let master = serve::load_master_key(&cfg)?;
    println!(
        "copying the SQLite store in {} to {}",
        from.display(),
        describe_url(&to)
    );
    let style = ProgressStyle::with_template("{prefix:>20} {bar:30} {pos:>9}/{len:9} rows {msg}")
        .expect("template");
    let mut bar: Option<ProgressBar> = None;
    let started = std::time::Instant::now();
    let result = continuum_store::migrate::copy_sqlite_to_postgres(&from, master, &to, |p| {
        use continuum_store::migrate::Progress;
        match p {
            Progress::Checked { tenants } => {
                println!(
                    "source locked, {tenants} tenant key(s) open with the master key, target empty"
                );
            }
            Progress::Table { table, rows } => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                let b = ProgressBar::new(rows).with_style(style.clone());
                b.set_prefix(table.to_owned());
                bar = Some(b);
            }
            Progress::Copied { rows, .. } => {
                if let Some(b) = &bar {
                    b.set_position(rows);
                }
            }
            Progress::Finishing => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                println!("setting audit chain heads and id sequences, committing…");
            }
            Progress::Verifying => println!(
                "committed in {:.1} s; verifying the audit chains on PostgreSQL…",
                started.elapsed().as_secs_f64()
            ),
        }
    });
    if let Some(b) = bar.take() {
        b.abandon();
    }
    let report = result.context("the migration failed; the target database was left as it was")?;
    println!();
    println!("{:<22}{:>12}", "table", "rows");
    for (table, rows) in &report.tables {
        println!("{table:<22}{rows:>12}");
    }
    println!("{:<22}{:>12}", "total", report.rows());
    println!();
    println!(
        "copied {} rows of {} tenant(s) in {:.1} s",
        report.rows(),
        report.tenants,
        report.elapsed.as_secs_f64()
    );
    for (tenant, seq) in &report.audit_chains {
        println!("audit chain {tenant}: continues after record {seq}");
    }
    let v = &report.verify;
    println!(
        "PostgreSQL verification: checked {} chain(s), {} audit records, {} events",
        v.chains_checked, v.audit_records, v.events_checked
    );
    for p in &v.problems {
        println!(
            "BROKEN tenant {} at {}: {}",
            p.tenant_id, p.location, p.reason
        );
    }
    if !v.is_intact() {
        println!("audit chain NOT intact on PostgreSQL: keep serving from SQLite and report this");
        return Ok(ExitCode::from(2));
    }
    println!("audit chain intact");
    println!();
    println!(
        "next: start the nodes with store.url = {}",
        describe_url(&to)
    );
    if key_file {
        println!(
            "      and the master key of {} as security.master_key (CONTINUUM_SECURITY__MASTER_KEY) on every node",
            from.join("master.key").display()
        );
    } else {
        println!("      and the same security.master_key on every node");
    }
    println!(
        "      (the SQLite store in {} is unchanged: keep it as a backup, do not serve from it again)",
        from.display()
    );
    let blobs = from.join("attachments");
    let has_blobs = std::fs::read_dir(&blobs)
        .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() != ".tmp")))
        .unwrap_or(false);
    if has_blobs {
        println!(
            "attachments: their sealed files in {} are not in the database (rows only); give every node the same files: \
             attachments.s3 after `aws s3 sync {} s3://BUCKET[/PREFIX] --exclude '.tmp/*'` (the same layout), \
             or one attachments.dir that every node mounts",
            blobs.display(),
            blobs.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A PostgreSQL URL without its password, for messages.
fn describe_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
