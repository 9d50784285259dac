//! `continuum serve`: open the store, bootstrap a dev tenant on first start,
//! serve HTTP(S), deliver webhooks, and shut down without losing acknowledged
//! writes.

use crate::config::{Config, NodeRole};
use crate::dispatch::Dispatcher;
use crate::state::AppState;
use crate::{app, telemetry};
use anyhow::{Context as _, bail};
use continuum_store::{SecretKey, Store, StoreOptions, database_path};
use std::path::Path;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

const MASTER_KEY_FILE: &str = "master.key";

/// The master key: from config/env, else `<data_dir>/master.key` (created
/// with mode 0600 on first start of an empty data dir).
pub fn load_master_key(cfg: &Config) -> anyhow::Result<SecretKey> {
    if let Some(k) = &cfg.security.master_key {
        return SecretKey::parse(k).context("security.master_key (CONTINUUM_SECURITY__MASTER_KEY)");
    }
    let dir = &cfg.server.data_dir;
    let path = dir.join(MASTER_KEY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return SecretKey::parse(&text)
            .with_context(|| format!("{} is not a valid master key", path.display()));
    }
    if database_path(dir).exists() {
        bail!(
            "{} exists but there is no master key: set security.master_key (CONTINUUM_SECURITY__MASTER_KEY) \
             or restore {}; without it the stored PHI cannot be read",
            database_path(dir).display(),
            path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let key = SecretKey::generate();
    write_secret_file(&path, &key.to_hex())?;
    tracing::warn!(path = %path.display(), "generated a development master key; in production set CONTINUUM_SECURITY__MASTER_KEY from a secret manager");
    Ok(key)
}

fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }
    .with_context(|| format!("creating {}", path.display()))?;
    #[cfg(not(unix))]
    let mut f = std::fs::File::create(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn store_options(cfg: &Config) -> StoreOptions {
    StoreOptions {
        pg_connections: cfg.store.pool_size,
        node: crate::cluster::node_name(cfg),
        ..StoreOptions::default()
    }
}

/// Opens the store described by `cfg` (blocking: from the CLI, or a
/// blocking thread).
pub fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let master = load_master_key(cfg)?;
    match &cfg.store.url {
        Some(url) => Store::open_postgres(url, master, store_options(cfg))
            .context("opening the PostgreSQL store (store.url)"),
        None => Store::open(&cfg.server.data_dir, master, store_options(cfg))
            .with_context(|| format!("opening the database in {}", cfg.server.data_dir.display())),
    }
}

/// [`open_store`] from async code.
pub async fn connect_store(cfg: &Config) -> anyhow::Result<Store> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || open_store(&cfg)).await?
}

/// On an empty database, creates the `dev` tenant and prints its API key once.
async fn bootstrap(store: &Store, cfg: &Config) -> anyhow::Result<()> {
    if !cfg.dev.bootstrap_tenant || !store.list_tenants().await?.is_empty() {
        return Ok(());
    }
    let tenant = store
        .create_tenant("dev", &cfg.server.region, "system:bootstrap")
        .await?;
    let (_, key) = store
        .create_api_key(&tenant.id, "dev", "system:bootstrap")
        .await?;
    println!();
    println!(
        "  Created tenant `dev` ({}). Its API key, shown only this once:",
        tenant.id
    );
    println!();
    println!("    export CONTINUUM_KEY={key}");
    println!();
    println!("  More keys: `continuum key create --tenant dev`.");
    println!();
    Ok(())
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(mut cfg: Config) -> anyhow::Result<()> {
    let addr = cfg.server.listen;
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr}: is another server using it? Pick another with --listen or CONTINUUM_SERVER__LISTEN")
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr().unwrap_or(addr);
    if cfg.server.public_url.is_none() {
        // Provider signatures and texted links need the address actually bound (`:0` in tests).
        let scheme = if cfg.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        cfg.server.public_url = Some(format!("{scheme}://{bound}"));
    }
    let store = connect_store(&cfg).await?;
    if cfg.store.url.is_some() {
        // No database file here, but attachments and prompts are: the data
        // directory is the owner's alone, as with SQLite.
        let dir = &cfg.server.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to mode 700", dir.display()))?;
        }
    }
    tracing::info!(store = %store.location(), backend = store.backend(), "store open");
    bootstrap(&store, &cfg).await?;
    let metrics = telemetry::install_metrics();
    let mut state = crate::state::AppParts::new(store.clone(), cfg.clone(), metrics);
    let node = crate::cluster::node_name(&cfg);
    // Which node these metrics are from, for a cluster's dashboards.
    let roles: Vec<String> = cfg
        .node
        .roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect();
    metrics::gauge!(
        "continuum_node_info",
        "node" => node.clone(),
        "region" => cfg.server.region.clone(),
        "roles" => roles.join(","),
        "store" => store.backend()
    )
    .set(1.0);
    if let Some(url) = &cfg.bus.url {
        let bus = continuum_bus::Bus::connect(url, &cfg.bus.cluster, &node).await?;
        crate::cluster::start(store.clone(), bus.clone()).await?;
        tracing::info!(node = %node, "joined the cluster bus");
        state.bus = Some(bus);
    }
    let (fallback_triggers, fallback_rx) = tokio::sync::mpsc::unbounded_channel();
    if cfg.node.has(NodeRole::Media) {
        let media = crate::media::start(
            &cfg.rtc,
            store.clone(),
            state.lobby.clone(),
            fallback_triggers,
        )?;
        if cfg.turn.enabled && cfg.node.has(NodeRole::Turn) {
            let turn =
                crate::turn::TurnService::start(&cfg.turn, store.master_key(), media.udp_addrs())
                    .await?;
            state.turn = Some(std::sync::Arc::new(turn));
        }
        state.media = Some(media);
    }
    if let Some(bus) = &state.bus {
        let announce = state.media.as_ref().map(|_| {
            let public = cfg
                .node
                .media_url
                .clone()
                .unwrap_or_else(|| cfg.server.public_base());
            (
                crate::placement::MediaNode {
                    node: node.clone(),
                    region: cfg.server.region.clone(),
                    signaling: crate::placement::signaling_base(&public),
                    capacity: cfg.node.media_capacity,
                    rooms: 0,
                    participants: 0,
                },
                state.lobby.clone(),
            )
        });
        state.placement = Some(
            crate::placement::Placement::start(bus, store.clone(), announce, state.ready.clone())
                .await?,
        );
    }
    if cfg.sip.enabled && cfg.node.has(NodeRole::Sip) {
        let nonce_key = *store.master_key().derive("sip-nonce").as_bytes();
        let voice = crate::voice::VoiceService::start(
            &cfg.sip,
            store.clone(),
            nonce_key,
            state.media.clone(),
        )
        .await
        .context("starting the SIP gateway (sip.enabled)")?;
        state.voice = Some(voice);
    }
    let fallback = crate::fallback::Fallback::new(
        store.clone(),
        state.lobby.clone(),
        state.voice.clone(),
        std::time::Duration::from_secs(cfg.sip.ring_timeout_secs),
        state.handoffs.clone(),
    );
    fallback.serve(fallback_rx);
    state.fallback = Some(fallback);
    let attachments = std::sync::Arc::new(crate::attachments::Attachments::open(
        &cfg.attachments,
        &cfg.server.data_dir,
        store.clone(),
    )?);
    state.attachments = Some(attachments.clone());
    if cfg.messaging.enabled {
        state.messaging = Some(crate::messaging::MessagingService::new(
            store.clone(),
            cfg.messaging.clone(),
            cfg.server.public_base(),
            Some(attachments),
        ));
    }
    if let Some(m) = &state.messaging {
        m.set_queues(state.queues.clone());
    }
    if let Some(voice) = state.voice.clone() {
        // The IVR's view of the node: everything but itself.
        let host = crate::ivr::IvrHost::new(AppState::from(state.clone()));
        voice.set_ivr(host.clone());
        state.ivr = Some(host);
    }
    let state = AppState::from(state);
    state
        .queues
        .restore()
        .await
        .context("loading the queues and the work waiting in them")?;
    state
        .revocations
        .refresh(&store)
        .await
        .context("loading token and API key revocations")?;
    let router = app::build(state.clone());
    let housekeeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                state.housekeeping().await;
            }
        })
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(m) = state.messaging.clone() {
        tokio::spawn(async move { m.start_links().await });
    }
    // Outbox work (messages, reminders, webhooks) runs on worker nodes; on
    // PostgreSQL several claim it side by side without taking the same row.
    let worker = cfg.node.has(NodeRole::Worker);
    let sender = state
        .messaging
        .clone()
        .filter(|_| worker)
        .map(|m| tokio::spawn(m.run_sender(stop_rx.clone())));
    // Reminders become outbox messages: they run where the sender does.
    let scheduler = (state.messaging.is_some() && worker).then(|| {
        let s = std::sync::Arc::new(crate::reminders::Scheduler::new(store.clone()));
        tokio::spawn(s.run(stop_rx.clone()))
    });
    let dispatcher = worker
        .then(|| tokio::spawn(Dispatcher::new(store.clone(), cfg.webhooks.clone()).run(stop_rx)));

    let served = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            let stopping = state.shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stopping.send(true);
                h.graceful_shutdown(Some(std::time::Duration::from_secs(30)));
            });
            let server = axum_server::from_tcp_rustls(listener, tls).handle(handle);
            state.ready.store(true, Ordering::Relaxed);
            announce("https", bound);
            server
                .serve(router.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await
                .with_context(|| format!("serving HTTPS on {bound}"))
        }
        _ => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            state.ready.store(true, Ordering::Relaxed);
            announce("http", bound);
            let stopping = state.shutdown.clone();
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                let _ = stopping.send(true);
            })
            .await
            .context("serving HTTP")
        }
    };
    state.ready.store(false, Ordering::Relaxed);
    tracing::info!("shutting down: finishing queued writes");
    housekeeper.abort();
    state.flush_refusals().await;
    let _ = stop_tx.send(true);
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    if let Some(sender) = sender {
        let _ = sender.await;
    }
    // In-flight requests have finished; let the writer commit what is queued.
    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    tracing::info!("stopped");
    served
}

fn announce(scheme: &str, addr: std::net::SocketAddr) {
    println!(
        "Continuum listening on {scheme}://{addr}  (API docs: {scheme}://{addr}/v1/openapi.json)"
    );
    tracing::info!(%addr, "listening");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
