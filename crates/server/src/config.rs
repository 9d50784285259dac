//! Configuration: embedded defaults, then an optional TOML file, then
//! `CONTINUUM_<SECTION>__<KEY>` environment variables, then CLI flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub security: SecurityConfig,
    pub context: ContextConfig,
    pub webhooks: WebhookConfig,
    pub log: LogConfig,
    pub dev: DevConfig,
    pub rtc: RtcConfig,
    pub turn: TurnConfig,
    pub sip: SipConfig,
    pub messaging: MessagingConfig,
    pub attachments: AttachmentsConfig,
    pub ivr: IvrConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub node: NodeConfig,
}

/// Where state lives. Unset `url`: SQLite in `server.data_dir` (one node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`: every node of a
    /// cluster points at the same database.
    pub url: Option<String>,
    /// PostgreSQL connections this node keeps, and writes it runs at once.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            pool_size: 32,
        }
    }
}

/// The live bus between nodes. Unset `url`: in-process (one node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `nats://HOST:PORT` of a NATS server (or cluster) with JetStream.
    pub url: Option<String>,
    /// This deployment's name on the bus: its subjects and buckets are
    /// namespaced by it, so deployments sharing one NATS stay apart.
    pub cluster: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: None,
            cluster: "continuum".into(),
        }
    }
}

/// What this process does in a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name on the bus and in placement (unique in the cluster).
    /// Unset: the host name and listen port.
    pub name: Option<String>,
    /// Any of `api` (the HTTP API and signaling), `media` (the SFU), `turn`,
    /// `sip` (the SIP gateway and IVR) and `worker` (webhook delivery, the
    /// messaging outbox, reminders). All by default: one node does everything.
    pub roles: Vec<NodeRole>,
    /// Media nodes: the URL clients reach this node's signaling at, as
    /// announced to the cluster. Unset: `server.public_url`.
    pub media_url: Option<String>,
    /// Media nodes: rooms this node takes before placement prefers others.
    pub media_capacity: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Api,
    Media,
    Turn,
    Sip,
    Worker,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            roles: vec![
                NodeRole::Api,
                NodeRole::Media,
                NodeRole::Turn,
                NodeRole::Sip,
                NodeRole::Worker,
            ],
            media_url: None,
            media_capacity: 200,
        }
    }
}

impl NodeConfig {
    pub fn has(&self, role: NodeRole) -> bool {
        self.roles.contains(&role)
    }
}

/// The IVR: prompts, TwiML webhooks, what callers waiting in a queue hear.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IvrConfig {
    /// Where a flow's `play:` prompt files are (default `<data_dir>/prompts`).
    pub prompts_dir: Option<PathBuf>,
    /// Where rendered speech is cached (default `<data_dir>/prompt-cache`).
    pub cache_dir: Option<PathBuf>,
    /// A TwiML webhook that has not answered in this long is an error on the
    /// timeline, and the flow's `on_error` takes the call.
    pub webhook_timeout_secs: u64,
    /// Allow TwiML webhooks and `<Play>` URLs on private, loopback and other
    /// special-purpose addresses (SSRF protection; testing only).
    pub allow_private_webhooks: bool,
    /// Allow plain-http TwiML webhooks (they carry the caller's number).
    pub allow_http_webhooks: bool,
    /// Said to callers waiting in a queue, every `hold_every_secs`.
    pub hold_message: String,
    pub hold_every_secs: u64,
    /// The longest voicemail taken when a queue overflows to voicemail
    /// (a flow's `record` step sets its own).
    pub voicemail_max_secs: u64,
    /// Timeline events one call's IVR may write (digits, steps); past it
    /// they are dropped (a key storm costs no more writes).
    pub max_events_per_call: u32,
}

impl Default for IvrConfig {
    fn default() -> Self {
        IvrConfig {
            prompts_dir: None,
            cache_dir: None,
            webhook_timeout_secs: 10,
            allow_private_webhooks: false,
            allow_http_webhooks: false,
            hold_message: "Thank you for holding. Someone will be with you shortly.".into(),
            hold_every_secs: 30,
            voicemail_max_secs: 120,
            max_events_per_call: 500,
        }
    }
}

/// Store-and-forward attachments: sealed with the tenant's key, kept in a
/// local directory or an S3-compatible bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// Where sealed attachments are kept (default `<data_dir>/attachments`);
    /// ignored when `s3` is set.
    pub dir: Option<PathBuf>,
    /// The largest upload accepted, in bytes.
    pub max_bytes: u64,
    /// Types accepted (sniffed from the content), as MIME types; empty: the
    /// default set (JPEG, PNG, GIF, WebP, HEIC/HEIF, PDF, MP4/3GP, WAV, OGG,
    /// MP3, AMR, M4A).
    pub allowed_types: Vec<String>,
    /// Remove Exif (GPS), XMP and comments from JPEG, PNG and WebP images.
    pub strip_metadata: bool,
    /// Inbound MMS and WhatsApp media fetches give up after this long.
    pub fetch_timeout_secs: u64,
    /// Media URLs may point at private or loopback addresses (testing only).
    pub allow_private_media: bool,
    pub s3: Option<S3Settings>,
}

/// An S3-compatible bucket for attachments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// e.g. `https://s3.eu-central-1.amazonaws.com`; AWS's for `region` when absent.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub prefix: Option<String>,
    /// Plain-http endpoints (a local test server).
    #[serde(default)]
    pub allow_http: bool,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            dir: None,
            max_bytes: 25 << 20,
            allowed_types: Vec::new(),
            strip_metadata: true,
            fetch_timeout_secs: 30,
            allow_private_media: false,
            s3: None,
        }
    }
}

/// SMS and WhatsApp (providers are configured per tenant through the API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// Run the outbox sender on this node.
    pub enabled: bool,
    /// Provider base URLs may be private or loopback addresses (testing only).
    pub allow_private_providers: bool,
    /// Hosts provider base URLs may reach over plain http (testing only).
    pub allow_http_hosts: Vec<String>,
    /// Requests to providers in flight at once, over every tenant.
    pub concurrency: usize,
    /// A provider request that takes longer is abandoned (and the message
    /// is `unconfirmed` if the request had been sent).
    pub request_timeout_secs: u64,
    /// Retries of a retryable error on one provider before failing over.
    pub attempts_per_provider: u32,
    /// Attempts of one message across every provider before it is dead-lettered.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
    /// A message still unsent this long after it was queued is dead-lettered.
    pub max_age_secs: u64,
    /// The one reply to STOP (and its synonyms).
    pub stop_reply: String,
    /// The one reply to START (and its synonyms).
    pub start_reply: String,
    /// The one reply to HELP / INFO.
    pub help_reply: String,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            enabled: true,
            allow_private_providers: false,
            allow_http_hosts: Vec::new(),
            concurrency: 64,
            request_timeout_secs: 15,
            attempts_per_provider: 3,
            max_attempts: 10,
            backoff_base_ms: 1000,
            backoff_max_secs: 300,
            max_age_secs: 24 * 3600,
            stop_reply: "You are unsubscribed and will receive no more messages from this number. Reply START to resubscribe.".into(),
            start_reply: "You are subscribed again. Reply STOP to unsubscribe, HELP for help.".into(),
            help_reply: "Messages from your care team. Reply STOP to unsubscribe. For emergencies call your local emergency number.".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the STUN/TURN server inside `continuum serve`.
    pub enabled: bool,
    /// UDP and TCP listen addresses (RFC 8656 §3.1); either may be unset.
    pub udp_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    /// TURN over TLS (`turns:`), e.g. 0.0.0.0:5349 or :443; needs tls_cert/tls_key.
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Local address relay sockets bind to.
    pub relay_ip: std::net::IpAddr,
    /// Also relay over IPv6 (RFC 6156) from this local address.
    pub relay_ip_v6: Option<std::net::IpAddr>,
    /// Host or IP clients reach this TURN server at (in `ice_servers`);
    /// defaults to the UDP listen IP.
    pub public_host: Option<String>,
    pub realm: String,
    /// This node's region tag (metrics label; `ice_servers` order).
    pub region: String,
    /// Static long-term users (`name = "password"`), e.g. for test tools.
    pub users: std::collections::BTreeMap<String, String>,
    /// TURN REST shared secrets, newest first; several are accepted at once so
    /// they can be rotated. Empty: one derived from the master key.
    pub rest_secrets: Vec<String>,
    /// Lifetime of the credentials handed out in `ice_servers`.
    pub credential_ttl_secs: u64,
    /// Peers always allowed / always refused (CIDR). Special-purpose ranges and
    /// the server's own addresses are refused unless allowed here.
    pub allow_peers: Vec<String>,
    pub deny_peers: Vec<String>,
    /// Allow relaying to this node's own SFU media addresses (their exact
    /// ports: the rest of the host stays refused).
    pub allow_own_sfu: bool,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_allocations_per_tenant: usize,
    pub max_lifetime_secs: u64,
    /// Per allocation, both directions together (0 = unlimited).
    pub bandwidth_kbps: u64,
    /// Relay worker threads sharing the listen ports (SO_REUSEPORT);
    /// 0 = one per core.
    pub threads: usize,
    /// Other TURN nodes (e.g. `continuum turn` at the edge, sharing
    /// `rest_secrets`), handed out in `ice_servers` with the participant's
    /// region first.
    pub nodes: Vec<TurnNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnNode {
    pub region: String,
    /// e.g. `["turn:turn-eu.example.org:3478?transport=udp", "turns:turn-eu.example.org:443?transport=tcp"]`
    pub urls: Vec<String>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            udp_listen: Some(([127, 0, 0, 1], 3478).into()),
            tcp_listen: Some(([127, 0, 0, 1], 3478).into()),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            relay_ip: [127, 0, 0, 1].into(),
            relay_ip_v6: None,
            public_host: None,
            realm: "continuum".into(),
            region: "default".into(),
            users: Default::default(),
            rest_secrets: Vec::new(),
            credential_ttl_secs: 3600,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            allow_own_sfu: true,
            max_allocations: 100_000,
            max_allocations_per_user: 10,
            max_allocations_per_tenant: 10_000,
            max_lifetime_secs: 3600,
            bandwidth_kbps: 0,
            threads: 0,
            nodes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Run the SIP gateway inside `continuum serve` (also runnable alone: `continuum sip`).
    pub enabled: bool,
    /// SIP over UDP and TCP (either may be unset).
    pub udp_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    /// SIP over TLS, e.g. 0.0.0.0:5061; needs tls_cert/tls_key (PEM).
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// TLS trunks' certificates are checked against the CAs in this PEM
    /// file when set, else against the public web PKI roots.
    pub tls_ca: Option<PathBuf>,
    /// OPTIONS to every outbound trunk this often (up/down, skipped by
    /// dial-out and fallback while down); 0: off.
    pub trunk_keepalive_secs: u64,
    /// The address carriers reach us at (Via, Contact, SDP); defaults to the listen IP.
    pub public_ip: Option<std::net::IpAddr>,
    /// RTP ports for call media (each call takes an even port, RTCP the next).
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Allow outbound trunks to private, loopback and other special-purpose
    /// addresses (an SBC inside your network; tests).
    pub allow_private_trunks: bool,
    /// An INVITE unanswered this long is cancelled (`no_answer`).
    pub ring_timeout_secs: u64,
    /// No RTP from the phone this long ends the call (`media_timeout`).
    pub media_timeout_secs: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            udp_listen: Some(([127, 0, 0, 1], 5060).into()),
            tcp_listen: Some(([127, 0, 0, 1], 5060).into()),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            trunk_keepalive_secs: 30,
            public_ip: None,
            rtp_port_min: 20000,
            rtp_port_max: 29999,
            allow_private_trunks: false,
            ring_timeout_secs: 45,
            media_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    /// UDP address of the media worker.
    pub udp_listen: SocketAddr,
    /// Address advertised to clients as our ICE candidate; defaults to the
    /// listen address (required when listening on 0.0.0.0).
    pub public_ip: Option<std::net::IpAddr>,
    pub max_participants_per_room: usize,
    /// Media worker threads (0 = one per core). Each has its own UDP port:
    /// `udp_listen`'s port + its index (or a random port when that is 0).
    pub workers: usize,
    /// Pace subscribers' media through str0m's pacer (smoother, more CPU).
    pub pacing: bool,
    /// `quality.degraded` thresholds: loss fraction, round-trip and jitter
    /// limits, and how long they must be exceeded without interruption.
    pub quality_max_loss: f32,
    pub quality_max_rtt_ms: u64,
    pub quality_max_jitter_ms: u64,
    pub quality_hold_secs: u64,
    /// A participant that leaves a renegotiation offer unanswered this long is disconnected.
    pub answer_timeout_secs: u64,
    /// A participant whose signaling connection drops keeps its seat this long
    /// for a `resume` on a new connection (network change), then leaves.
    pub resume_grace_secs: u64,
    /// Nothing received from a participant for this long is a media stall
    /// (its device or network is gone): what PSTN fallback starts from.
    pub media_stall_secs: u64,
    /// Nothing at all from a participant this long after it joined (ICE or
    /// DTLS never got through) is a failed connection: what PSTN fallback
    /// starts from when video was never viable.
    pub connect_timeout_secs: u64,
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            udp_listen: ([127, 0, 0, 1], 7401).into(),
            public_ip: None,
            max_participants_per_room: 16,
            workers: 0,
            pacing: false,
            quality_max_loss: 0.05,
            quality_max_rtt_ms: 400,
            quality_max_jitter_ms: 50,
            quality_hold_secs: 5,
            answer_timeout_secs: 10,
            resume_grace_secs: 15,
            media_stall_secs: 3,
            connect_timeout_secs: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub region: String,
    pub metrics_token: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for rate
    /// limits, refusals and the access log). Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The one-click demo visit (`/` and `POST /dev/demo-visit`): served only
    /// on a loopback listen address, to requests whose Host is a loopback name.
    pub demo: bool,
    /// The address patients and providers reach this server at (e.g.
    /// `https://care.example.com`), behind any proxy: what provider webhook
    /// signatures are computed over, and the base of links sent by text.
    /// Absent: `http(s)://<listen>`.
    pub public_url: Option<String>,
}

impl ServerConfig {
    /// `public_url` without a trailing slash, or one made from `listen`.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", self.listen)
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    pub master_key: Option<String>,
    pub token_default_ttl_secs: u64,
    pub token_max_ttl_secs: u64,
    /// Refused requests (bad or missing credentials) one source address (an
    /// IPv6 /64) may cause per minute before it is answered 429 (0: no limit).
    pub refusals_per_minute_per_source: u32,
    /// Requests per second one access token may make, bursts twice that (0: no limit).
    pub requests_per_second_per_token: u32,
    /// Requests per second one API key may make (0: no limit; keys are your
    /// backends, sized by you).
    pub requests_per_second_per_api_key: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextConfig {
    pub recent_events: usize,
    pub max_recent_events: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    pub allow_private_targets: bool,
    /// Hosts (names or addresses, no port) webhooks may reach over plain
    /// http; every other target must be https.
    pub allow_http_hosts: Vec<String>,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
    pub timeout_secs: u64,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: String,
    pub level: String,
    /// One line per request (target `continuum::access`): method, route
    /// template, status, latency, tenant, credential id, source. Never PHI.
    pub access: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    pub bootstrap_tenant: bool,
    /// Serve the staff console's files from this directory instead of the
    /// copies built into the binary (working on the console without rebuilding).
    pub console_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 7400).into(),
            data_dir: PathBuf::from("./continuum-data"),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 256 * 1024,
            region: "local".into(),
            metrics_token: None,
            trusted_proxies: Vec::new(),
            demo: true,
            public_url: None,
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            master_key: None,
            token_default_ttl_secs: 900,
            token_max_ttl_secs: 3600,
            refusals_per_minute_per_source: 60,
            requests_per_second_per_token: 50,
            requests_per_second_per_api_key: 0,
        }
    }
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            recent_events: 20,
            max_recent_events: 200,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private_targets: false,
            allow_http_hosts: Vec::new(),
            max_attempts: 15,
            backoff_base_ms: 1000,
            backoff_max_secs: 3600,
            timeout_secs: 10,
            concurrency: 16,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
            access: true,
        }
    }
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            bootstrap_tenant: true,
            console_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}\n  (run `continuum config example` for a documented file)")]
    Invalid(Box<figment::Error>),
    #[error("{0}")]
    Inconsistent(String),
}

impl Config {
    /// Defaults ← `file` ← `CONTINUUM_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Missing(f.to_owned()));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only section-qualified names: CONTINUUM_KEY and friends are for clients, not us.
        fig = fig.merge(
            Env::prefixed("CONTINUUM_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(ConfigError::Inconsistent(
                "server.tls_cert and server.tls_key must be set together".into(),
            ));
        }
        if self.sip.tls_cert.is_some() != self.sip.tls_key.is_some() {
            return Err(ConfigError::Inconsistent(
                "sip.tls_cert and sip.tls_key must be set together".into(),
            ));
        }
        if self.sip.enabled && self.sip.tls_listen.is_some() && self.sip.tls_cert.is_none() {
            return Err(ConfigError::Inconsistent(
                "sip.tls_listen needs sip.tls_cert and sip.tls_key (PEM files): set them, or unset sip.tls_listen".into(),
            ));
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Inconsistent(format!(
                    "store.url must be a postgres:// URL (got `{}`); leave it unset for the embedded SQLite store",
                    url.split('@').next_back().unwrap_or("")
                )));
            }
            if self.security.master_key.is_none() {
                return Err(ConfigError::Inconsistent(
                    "store.url is PostgreSQL: set security.master_key (CONTINUUM_SECURITY__MASTER_KEY), the same on every node; \
                     a key generated into one node's data_dir could not be read by the others"
                        .into(),
                ));
            }
        }
        if let Some(url) = &self.bus.url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            return Err(ConfigError::Inconsistent(format!(
                "bus.url must be a nats:// URL (got `{url}`); leave it unset for a single node"
            )));
        }
        if self.node.roles.is_empty() {
            return Err(ConfigError::Inconsistent(
                "node.roles is empty: name at least one of api, media, turn, sip, worker".into(),
            ));
        }
        if self.security.token_default_ttl_secs > self.security.token_max_ttl_secs {
            return Err(ConfigError::Inconsistent(
                "security.token_default_ttl_secs must not exceed security.token_max_ttl_secs"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A documented configuration file with every default.
pub const EXAMPLE: &str = r#"# Continuum configuration. Every key is optional; shown values are the defaults.
# Any key can also be set from the environment: CONTINUUM_<SECTION>__<KEY>,
# e.g. CONTINUUM_SERVER__LISTEN=0.0.0.0:7400 or CONTINUUM_SECURITY__MASTER_KEY=...

[server]
# HTTP (and WebSocket) listen address.
listen = "127.0.0.1:7400"
# SQLite database, dev master key and other state live here.
data_dir = "./continuum-data"
# Serve HTTPS with these PEM files (browsers need a secure context for cameras
# anywhere but localhost). Both or neither.
# tls_cert = "/etc/continuum/cert.pem"
# tls_key = "/etc/continuum/key.pem"
# Largest accepted request body; bigger requests get 413.
max_body_bytes = 262144
# This node's region tag (data residency, TURN/media node choice).
region = "local"
# If set, GET /metrics requires `Authorization: Bearer <metrics_token>`.
# Required whenever `listen` is not a loopback address (/metrics refuses
# everyone until it is set).
# metrics_token = "..."
# Reverse proxies (exact addresses) whose X-Forwarded-For names the client.
trusted_proxies = []
# The one-click demo visit at / (its own `demo` tenant; tokens limited to the
# demo conversation). Only ever served on a loopback listen address and to
# requests whose Host header is a loopback name or address.
demo = true

[store]
# PostgreSQL for a cluster: every node points at the same database (and then
# security.master_key must be set, the same on every node). Unset: SQLite in
# server.data_dir, one node. `continuum migrate` copies one to the other.
# url = "postgres://continuum:secret@db.internal:5432/continuum"
# PostgreSQL connections this node keeps (and writes it runs at once).
pool_size = 32

[bus]
# NATS (with JetStream, `nats-server -js`) carrying live events between
# nodes and the media nodes' announcements. Unset: in-process, one node.
# url = "nats://nats.internal:4222"
# This deployment's name on the bus (letters, digits, _ and -): subjects and
# key-value buckets are namespaced by it, so staging and production can share
# one NATS.
cluster = "continuum"

[node]
# This node's name in the cluster. Unset: host name and listen port.
# name = "api-1"
# What this node does: api, media (SFU), turn, sip (gateway and IVR) and
# worker (webhooks, messaging outbox, reminders). All by default.
roles = ["api", "media", "turn", "sip", "worker"]
# Media nodes: the URL clients reach this node's signaling at (unset:
# server.public_url), and the rooms it takes before placement prefers others.
# media_url = "https://media-1.example.com"
media_capacity = 200

[security]
# 32-byte master key (64 hex chars or base64) that wraps every tenant's data
# key. Unset: a key is generated into <data_dir>/master.key (mode 0600) — fine
# for development, but in production keep it in a secret manager and set
# CONTINUUM_SECURITY__MASTER_KEY. Losing it makes all PHI unreadable.
# master_key = "..."
# Lifetime of access tokens minted by POST /v1/tokens when none is asked for,
# and the most a caller may ask for.
token_default_ttl_secs = 900
token_max_ttl_secs = 3600
# Rate limits (429 with Retry-After; 0 turns one off). Refused requests per
# source address (IPv6: per /64) per minute: past it, a source's bad requests
# cost the server no database work and leave one summary audit record.
refusals_per_minute_per_source = 60
# Requests per second of one access token (a browser, an app), bursts of twice.
requests_per_second_per_token = 50
# Requests per second of one API key (your backends; sized by you).
requests_per_second_per_api_key = 0

[context]
# How many recent events the context snapshot returns by default (?events=N
# overrides, up to max_recent_events).
recent_events = 20
max_recent_events = 200

[webhooks]
# Refuse webhook URLs that resolve to private, loopback, link-local and other
# special-purpose addresses (SSRF protection). Set true only for testing.
allow_private_targets = false
# Targets must be https (deliveries carry patient data) except these hosts
# (names or addresses, no port), e.g. a receiver inside a private network.
allow_http_hosts = []
# Attempts before a delivery is declared dead; retries back off exponentially
# from backoff_base_ms up to backoff_max_secs, with jitter.
max_attempts = 15
backoff_base_ms = 1000
backoff_max_secs = 3600
timeout_secs = 10
concurrency = 16

[log]
# "text" or "json".
format = "text"
# tracing filter, e.g. "info" or "continuum_server=debug,info".
level = "info"
# One line per request (target continuum::access): method, route template,
# status, latency, tenant, credential id, source address. Never PHI or raw paths.
access = true

[dev]
# On first start with an empty database, create a `dev` tenant and print its API key.
bootstrap_tenant = true

[rtc]
# UDP address the SFU's media worker listens on (WebRTC media, ICE, DTLS).
udp_listen = "127.0.0.1:7401"
# The address browsers are told to send media to. Defaults to the listen
# address; required when listening on 0.0.0.0 (use the node's reachable IP).
# public_ip = "203.0.113.10"
# Participants per room before further joins are refused.
max_participants_per_room = 16
# media worker threads, 0 = one per core; worker i listens on udp_listen's port + i
workers = 0
# pace subscribers' media (smooths keyframe bursts; costs CPU). Off: forward as received
pacing = false
# A participant's connection is `quality.degraded` (on the timeline; what PSTN
# fallback listens to) when loss, round-trip time or jitter exceed these for
# quality_hold_secs without interruption, and `quality.recovered` when all are
# back under them for as long.
quality_max_loss = 0.05
quality_max_rtt_ms = 400
quality_max_jitter_ms = 50
quality_hold_secs = 5
# A participant that does not answer the SFU's renegotiation offer within this
# many seconds is disconnected (it would never receive new tracks otherwise).
answer_timeout_secs = 10
# A participant whose signaling connection drops (Wi-Fi to LTE) keeps its seat,
# subscriptions and layer choices this long for a `resume` on a new connection.
resume_grace_secs = 15
# Nothing at all from a participant (no media, RTCP or ICE) for this long is a
# media stall: its device or network is gone. A patient's stall starts PSTN
# fallback when the tenant's visit settings ask for it.
media_stall_secs = 3
# Nothing at all from a participant this long after it joined (ICE or DTLS
# never got through: a firewall, no TURN) is a failed connection; for a
# patient it starts PSTN fallback like a stall.
connect_timeout_secs = 15

[turn]
# STUN/TURN server for clients behind UDP-blocking or strict NAT networks
# (also runnable alone on edge nodes: `continuum turn`).
enabled = true
udp_listen = "127.0.0.1:3478"
tcp_listen = "127.0.0.1:3478"
# TURN over TLS for networks that only pass TLS (PEM files):
# tls_listen = "0.0.0.0:5349"
# tls_cert = "/etc/continuum/turn.crt"
# tls_key = "/etc/continuum/turn.key"
# local address relay sockets bind to
relay_ip = "127.0.0.1"
# relay_ip_v6 = "::1"   # also offer IPv6 relays (REQUESTED-ADDRESS-FAMILY)
# public_host = "turn.example.org"   # what clients are told; defaults to udp_listen's IP
realm = "continuum"
region = "default"
# Static long-term users, e.g. for test tools: { alice = "secret" }
users = {}
# TURN REST secrets (newest first; older ones still accepted while rotating).
# Empty: one derived from the master key.
rest_secrets = []
credential_ttl_secs = 3600
# Peers: special-purpose ranges (private, loopback, link-local, ...) and this
# server's own addresses are refused unless listed in allow_peers (CIDR).
allow_peers = []
deny_peers = []
# relaying to this node's own SFU media ports (only those) is allowed
allow_own_sfu = true
max_allocations = 100000
max_allocations_per_user = 10
max_allocations_per_tenant = 10000
max_lifetime_secs = 3600
# per allocation, 0 = unlimited
bandwidth_kbps = 0
# relay worker threads sharing the listen ports (SO_REUSEPORT), 0 = one per core
threads = 0
# Other TURN nodes sharing rest_secrets, offered with the participant's region
# first (POST /v1/tokens `region`):
# nodes = [{ region = "eu", urls = ["turn:turn-eu.example.org:3478?transport=udp"] }]
nodes = []

[sip]
# SIP gateway: phone calls in and out through your carriers' trunks (set up
# with /v1/sip/trunks), bridged into visits (also runnable alone on edge
# nodes: `continuum sip`).
enabled = true
udp_listen = "127.0.0.1:5060"
tcp_listen = "127.0.0.1:5060"
# SIP over TLS (off unless set; PEM certificate chain and private key):
# tls_listen = "0.0.0.0:5061"
# tls_cert = "/etc/continuum/sip.crt"
# tls_key = "/etc/continuum/sip.key"
# TLS trunks' certificates are checked against the public web PKI roots, or
# only against the CAs in this PEM file when set (a carrier's private CA, an
# SBC's self-signed certificate):
# tls_ca = "/etc/continuum/carrier-ca.pem"
# OPTIONS keepalive to every outbound trunk this often (0 = off): a trunk is
# up after any answer and down after two probes in a row go unanswered;
# dial-out and fallback skip down trunks while another is up.
trunk_keepalive_secs = 30
# public_ip = "203.0.113.10"   # what carriers are told (Via, Contact, SDP); defaults to the listen IP
# RTP ports for call media (each call takes an even port and the next)
rtp_port_min = 20000
rtp_port_max = 29999
# Outbound trunks to private/loopback addresses are refused unless true
# (an SBC inside your network; tests).
allow_private_trunks = false
# An unanswered dial-out is cancelled after this long (no_answer).
ring_timeout_secs = 45
# No RTP from the phone for this long ends the call (media_timeout).
media_timeout_secs = 30

[ivr]
# IVR flows (PUT /v1/ivr/flows/{name}) and TwiML webhooks drive calls whose
# dispatch rule says so. Prompt files for `play:` live in prompts_dir
# (default <data_dir>/prompts); text is spoken with espeak-ng and cached in
# cache_dir (default <data_dir>/prompt-cache).
# prompts_dir = "/var/lib/continuum/prompts"
# cache_dir = "/var/cache/continuum/prompts"
# A TwiML webhook that does not answer in time is a timeline error and the
# flow's on_error takes the call.
webhook_timeout_secs = 10
# TwiML webhooks must be https and public unless these are set (testing only).
allow_private_webhooks = false
allow_http_webhooks = false
# What callers waiting in a queue hear, and how often.
hold_message = "Thank you for holding. Someone will be with you shortly."
hold_every_secs = 30
# The longest voicemail taken when a queue overflows to voicemail.
voicemail_max_secs = 120
# Timeline events (digits, steps) one call's IVR may write.
max_events_per_call = 500
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_to_the_defaults() {
        let from_example: Config = toml::from_str(EXAMPLE).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&from_example).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[server]\nlisten_port = 1\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"));
    }
}
