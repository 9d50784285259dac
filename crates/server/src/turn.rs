//! Wires the TURN server (`crates/turn`) into `continuum serve` / `continuum
//! turn`, and mints the short-lived `ice_servers` credentials the API hands
//! to participants (TURN REST scheme, bound to tenant and participant).

use crate::config::TurnConfig;
use anyhow::Context as _;
use continuum_store::crypto::SecretKey;
use continuum_turn::auth::{Credentials, rest_credentials};
use continuum_turn::policy::{Cidr, PeerPolicy};
use std::net::SocketAddr;
use std::time::Duration;

pub struct TurnService {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    public_host: String,
    secret: String,
    ttl: Duration,
    pub region: String,
    nodes: Vec<crate::config::TurnNode>,
    _running: continuum_turn::io::Running,
}

fn rest_secrets(cfg: &TurnConfig, master: &SecretKey) -> Vec<String> {
    if cfg.rest_secrets.is_empty() {
        vec![master.derive("turn-rest-secret").to_hex()]
    } else {
        cfg.rest_secrets.clone()
    }
}

pub fn build_config(
    cfg: &TurnConfig,
    master: &SecretKey,
    sfu_addrs: &[SocketAddr],
) -> anyhow::Result<continuum_turn::Config> {
    let credentials = Credentials {
        users: cfg.users.clone().into_iter().collect(),
        rest_secrets: rest_secrets(cfg, master),
    };
    let parse = |list: &[String], what: &str| -> anyhow::Result<Vec<Cidr>> {
        list.iter()
            .map(|s| {
                s.parse::<Cidr>()
                    .map_err(|e| anyhow::anyhow!("turn.{what}: {e}"))
            })
            .collect()
    };
    let allow = parse(&cfg.allow_peers, "allow_peers")?;
    // The SFU's media ports only, not the rest of its host.
    let allow_addrs = if cfg.allow_own_sfu {
        sfu_addrs.to_vec()
    } else {
        Vec::new()
    };
    let mut own: Vec<std::net::IpAddr> = vec![cfg.relay_ip];
    own.extend(cfg.relay_ip_v6);
    own.extend(cfg.udp_listen.map(|a| a.ip()));
    own.extend(cfg.tcp_listen.map(|a| a.ip()));
    let mut c = continuum_turn::Config::new(
        cfg.realm.clone(),
        credentials,
        *master.derive("turn-nonce").as_bytes(),
    );
    c.policy = PeerPolicy {
        allow,
        allow_addrs,
        deny: parse(&cfg.deny_peers, "deny_peers")?,
        own: own.into_iter().filter(|ip| !ip.is_unspecified()).collect(),
    };
    c.max_allocations = cfg.max_allocations;
    c.max_allocations_per_user = cfg.max_allocations_per_user;
    c.max_allocations_per_tenant = cfg.max_allocations_per_tenant;
    c.max_lifetime = Duration::from_secs(cfg.max_lifetime_secs.max(600));
    c.bandwidth_bytes_per_sec = cfg.bandwidth_kbps * 1000 / 8;
    Ok(c)
}

impl TurnService {
    pub async fn start(
        cfg: &TurnConfig,
        master: &SecretKey,
        sfu_addrs: &[SocketAddr],
    ) -> anyhow::Result<TurnService> {
        let server = build_config(cfg, master, sfu_addrs)?;
        let tls = match (cfg.tls_listen, &cfg.tls_cert, &cfg.tls_key) {
            (None, _, _) => None,
            (Some(a), Some(cert), Some(key)) => Some((
                a,
                continuum_turn::io::tls_config(cert, key).with_context(|| {
                    format!(
                        "turn.tls_cert {} / turn.tls_key {}",
                        cert.display(),
                        key.display()
                    )
                })?,
            )),
            (Some(_), _, _) => {
                anyhow::bail!("turn.tls_listen needs turn.tls_cert and turn.tls_key (PEM)")
            }
        };
        let running = continuum_turn::io::spawn(
            server,
            continuum_turn::io::Listen {
                udp: cfg.udp_listen,
                tcp: cfg.tcp_listen,
                tls,
                relay_ips: std::iter::once(cfg.relay_ip)
                    .chain(cfg.relay_ip_v6)
                    .collect(),
                region: cfg.region.clone(),
                threads: cfg.threads,
            },
        )
        .with_context(|| {
            format!(
                "cannot start TURN on udp {:?} / tcp {:?}: is another TURN server running? \
                 Set turn.udp_listen / turn.tcp_listen, or turn.enabled = false",
                cfg.udp_listen, cfg.tcp_listen
            )
        })?;
        let public_host = match (&cfg.public_host, running.udp_addr.or(running.tcp_addr)) {
            (Some(h), _) => h.clone(),
            (None, Some(a)) => a.ip().to_string(),
            (None, None) => anyhow::bail!("turn: set udp_listen or tcp_listen"),
        };
        tracing::info!(udp = ?running.udp_addr, tcp = ?running.tcp_addr, region = %cfg.region, relay_workers = running.threads, "TURN listening");
        for (proto, a) in [
            ("udp", running.udp_addr),
            ("tcp", running.tcp_addr),
            ("tls", running.tls_addr),
        ] {
            if let Some(a) = a {
                metrics::gauge!("continuum_turn_port", "transport" => proto, "region" => cfg.region.clone())
                    .set(a.port() as f64);
            }
        }
        Ok(TurnService {
            udp_addr: running.udp_addr,
            tcp_addr: running.tcp_addr,
            tls_addr: running.tls_addr,
            public_host,
            secret: rest_secrets(cfg, master).remove(0),
            ttl: Duration::from_secs(cfg.credential_ttl_secs),
            region: cfg.region.clone(),
            nodes: cfg.nodes.clone(),
            _running: running,
        })
    }

    /// WebRTC `iceServers` for one participant: TURN over UDP and TCP with
    /// REST credentials for `<tenant>.<participant>`, valid `credential_ttl_secs`.
    /// `region`: the participant's region; nodes tagged with it come first.
    pub fn ice_servers(
        &self,
        tenant: &str,
        participant: &str,
        region: Option<&str>,
    ) -> serde_json::Value {
        let (username, credential) =
            rest_credentials(&self.secret, &format!("{tenant}.{participant}"), self.ttl);
        let host = if self.public_host.contains(':') {
            format!("[{}]", self.public_host)
        } else {
            self.public_host.clone()
        };
        let mut urls = Vec::new();
        if let Some(a) = self.udp_addr {
            urls.push(format!("turn:{host}:{}?transport=udp", a.port()));
        }
        if let Some(a) = self.tcp_addr {
            urls.push(format!("turn:{host}:{}?transport=tcp", a.port()));
        }
        if let Some(a) = self.tls_addr {
            urls.push(format!("turns:{host}:{}?transport=tcp", a.port()));
        }
        let mut servers = vec![serde_json::json!({
            "urls": urls,
            "username": username,
            "credential": credential,
            "region": self.region,
        })];
        // Other TURN nodes sharing the REST secret (edge nodes run `continuum turn`).
        for n in &self.nodes {
            servers.push(serde_json::json!({
                "urls": n.urls,
                "username": username,
                "credential": credential,
                "region": n.region,
            }));
        }
        if let Some(r) = region {
            // Stable: the participant's region first, the rest in configured order.
            servers.sort_by_key(|s| s["region"] != r);
        }
        serde_json::Value::Array(servers)
    }
}
