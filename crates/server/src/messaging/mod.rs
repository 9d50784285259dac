//! Glue between the messaging providers (`continuum-messaging`) and the
//! conversation: the outbox sender (claims due messages, sends them down the
//! tenant's failover chain, records outcomes), provider webhooks (inbound
//! messages and receipts onto the timeline) and opt-out keywords.

use crate::config::MessagingConfig;
use continuum_store::Store;
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
}

impl MessagingService {
    pub fn new(store: Store, config: MessagingConfig) -> Arc<Self> {
        Arc::new(MessagingService { store, config })
    }

    /// A tenant's chain changed: drop what is cached of it.
    pub fn providers_changed(&self, _tenant_id: &str) {}
}
