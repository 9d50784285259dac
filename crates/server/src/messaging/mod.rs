//! Glue between the messaging providers (`continuum-messaging`) and the
//! conversation: the outbox sender (claims due messages, sends them down the
//! tenant's failover chain, records outcomes), inbound messages and receipts
//! onto the timeline, and opt-out keywords.

mod chain;
mod inbound;
mod providers;
mod sender;

pub use inbound::{Received, state_of};

use crate::config::MessagingConfig;
use chain::Chain;
use continuum_store::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// How long WhatsApp lets a business answer freely after the patient wrote.
pub const WHATSAPP_WINDOW_MICROS: i64 = 24 * 3600 * 1_000_000;

/// Whether the 24-hour customer-service window is open, given when the
/// patient last wrote (micros).
pub fn whatsapp_window_open(last_inbound_at: Option<i64>) -> bool {
    last_inbound_at
        .is_some_and(|t| continuum_core::clock::unix_micros() - t < WHATSAPP_WINDOW_MICROS)
}

pub struct MessagingService {
    pub(crate) store: Store,
    pub(crate) config: MessagingConfig,
    /// `server.public_url`: the base of Twilio status callback URLs.
    pub(crate) public_base: String,
    /// Each tenant's chain, built on first use.
    chains: Mutex<HashMap<String, Arc<Chain>>>,
    pub(crate) policy: continuum_messaging::RetryPolicy,
    /// Itself, for tasks that outlive a call (SMPP binds' incoming streams).
    me: std::sync::Weak<MessagingService>,
    /// Receipts being retried because they beat the send's answer.
    late_receipts: std::sync::atomic::AtomicUsize,
    /// Where inbound media (MMS, WhatsApp) is stored.
    pub(crate) attachments: Option<Arc<crate::attachments::Attachments>>,
    /// Inbound messages on a queued conversation route to its queue.
    pub(crate) queues: std::sync::OnceLock<Arc<crate::queues::Queues>>,
}

impl MessagingService {
    pub fn new(
        store: Store,
        config: MessagingConfig,
        public_base: String,
        attachments: Option<Arc<crate::attachments::Attachments>>,
    ) -> Arc<Self> {
        let policy = continuum_messaging::RetryPolicy {
            base_delay: std::time::Duration::from_millis(config.backoff_base_ms.max(1)),
            max_delay: std::time::Duration::from_secs(config.backoff_max_secs.max(1)),
            attempts_per_provider: config.attempts_per_provider.max(1),
            max_attempts: config.max_attempts.max(1),
            max_age: std::time::Duration::from_secs(config.max_age_secs.max(1)),
            ..Default::default()
        };
        Arc::new_cyclic(|me| MessagingService {
            store,
            config,
            public_base,
            chains: Mutex::default(),
            policy,
            me: me.clone(),
            late_receipts: Default::default(),
            attachments,
            queues: std::sync::OnceLock::new(),
        })
    }

    /// Wires the routing engines in (once, at startup).
    pub fn set_queues(&self, queues: Arc<crate::queues::Queues>) {
        let _ = self.queues.set(queues);
    }

    /// A tenant's chain changed: its binds go, and it is built again now
    /// (an SMPP provider must be bound to receive).
    pub fn providers_changed(&self, tenant_id: &str) {
        if let Some(old) = self.chains.lock().remove(tenant_id) {
            old.unbind();
        }
        if let Some(me) = self.me.upgrade() {
            let tenant = tenant_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = me.chain(&tenant).await {
                    tracing::warn!(tenant, error = %e, "cannot build the messaging chain");
                }
            });
        }
    }

    /// At start: builds every tenant's chain that has an SMPP provider, so
    /// its bind is up to receive before anything is sent.
    pub async fn start_links(&self) {
        let tenants = match self.store.list_tenants().await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot list tenants for SMPP binds");
                return;
            }
        };
        for t in tenants {
            let has_smpp = self
                .store
                .list_messaging_providers(&t.id)
                .await
                .map(|ps| {
                    ps.iter()
                        .any(|p| p.kind == continuum_store::ProviderKind::Smpp)
                })
                .unwrap_or(false);
            if has_smpp && let Err(e) = self.chain(&t.id).await {
                tracing::warn!(tenant = %t.id, error = %e, "cannot bind the tenant's SMPP provider");
            }
        }
    }
}
