use crate::auth::{KeyCache, TokenIssuer};
use crate::config::Config;
use continuum_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Everything a request handler can reach, behind one `Arc`: axum clones
/// the state for every extractor and middleware of every request, and
/// cloning two dozen `Arc`s and the bus client each time was about a sixth
/// of the server's CPU per append (perf, `continuum bench events`).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl From<AppParts> for AppState {
    fn from(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

/// The parts of [`AppState`], set up one by one at start.
#[derive(Clone)]
pub struct AppParts {
    pub store: Store,
    pub tokens: Arc<TokenIssuer>,
    pub keys: Arc<KeyCache>,
    pub config: Arc<Config>,
    pub metrics: Option<PrometheusHandle>,
    /// False while starting and once shutdown begins (`/readyz` answers 503).
    pub ready: Arc<AtomicBool>,
    /// Flips to true when shutdown begins; long-lived responses (live streams)
    /// end on it so graceful shutdown is not held open by them.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    /// The SFU's media worker, when this node runs one.
    pub media: Option<crate::media::Media>,
    /// The TURN server, when this node runs one (for `ice_servers`).
    pub turn: Option<Arc<crate::turn::TurnService>>,
    /// The SIP gateway, when this node runs one (dial-out, hang-up).
    pub voice: Option<Arc<crate::voice::VoiceService>>,
    /// PSTN fallback (calling a patient whose video failed).
    pub fallback: Option<Arc<crate::fallback::Fallback>>,
    /// The SMS/WhatsApp outbox sender and provider webhooks.
    pub messaging: Option<Arc<crate::messaging::MessagingService>>,
    /// Store-and-forward attachments (the sealed blob store).
    pub attachments: Option<Arc<crate::attachments::Attachments>>,
    /// Visit links by text, and texts after unanswered fallback calls.
    pub handoffs: Arc<crate::handoff::Handoffs>,
    pub whip: Arc<crate::api::whip::Sessions>,
    pub limits: Arc<crate::guard::Limits>,
    pub refusals: Arc<crate::guard::Refusals>,
    pub revocations: Arc<crate::guard::Revocations>,
    /// Rosters, waiting rooms and ended visits of the rooms on this node.
    pub lobby: crate::lobby::Lobby,
    /// Chat typing and receipts of the conversations followed on this node.
    pub chat: Arc<crate::chat::ChatHub>,
    /// Queues and agents: the routing engines of this node.
    pub queues: Arc<crate::queues::Queues>,
    /// The IVR (with the SIP gateway).
    pub ivr: Option<Arc<crate::ivr::IvrHost>>,
    /// The cluster bus, when this node is one of several.
    pub bus: Option<continuum_bus::Bus>,
    /// Which media node hosts each room (with a bus).
    pub placement: Option<Arc<crate::placement::Placement>>,
}

impl AppParts {
    pub fn new(store: Store, config: Config, metrics: Option<PrometheusHandle>) -> Self {
        let sec = &config.security;
        let limits = crate::guard::Limits::new(
            sec.refusals_per_minute_per_source,
            sec.requests_per_second_per_token,
            sec.requests_per_second_per_api_key,
        );
        let tokens = Arc::new(TokenIssuer::new(store.master_key()));
        let handoffs = Arc::new(crate::handoff::Handoffs {
            store: store.clone(),
            tokens: tokens.clone(),
            public_base: config.server.public_base(),
            max_participants: config.rtc.max_participants_per_room as i64,
        });
        let queues = crate::queues::Queues::new(store.clone());
        AppParts {
            queues,
            limits: Arc::new(limits),
            refusals: Arc::default(),
            revocations: Arc::default(),
            tokens,
            handoffs,
            keys: Arc::new(KeyCache::new(std::time::Duration::from_secs(30))),
            store,
            config: Arc::new(config),
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
            media: None,
            turn: None,
            voice: None,
            fallback: None,
            messaging: None,
            attachments: None,
            whip: Arc::default(),
            lobby: crate::lobby::Lobby::default(),
            chat: Arc::default(),
            ivr: None,
            bus: None,
            placement: None,
        }
    }
}

impl AppState {
    /// Once a second-scale housekeeping: refusal summaries of ended minutes,
    /// idle rate-limit entries, revocations made by other processes.
    pub async fn housekeeping(&self) {
        let records = self
            .refusals
            .flush(continuum_core::clock::unix_secs(), false);
        self.write_records(records).await;
        self.limits.sweep();
        if let Err(e) = self.revocations.refresh(&self.store).await {
            tracing::warn!(error = %e, "could not re-read revocations");
        }
    }

    /// At shutdown: every pending refusal summary.
    pub async fn flush_refusals(&self) {
        let records = self
            .refusals
            .flush(continuum_core::clock::unix_secs(), true);
        self.write_records(records).await;
    }
}
