//! Live delivery of committed events, on this node and across the cluster.
//!
//! Two feeds: `local` carries what this node committed (for work that must
//! happen once, where the write happened: fallback, chat fan-out triggers),
//! `cluster` carries that plus what other nodes committed, as the bus brings
//! it (for what people watch: timelines, the inbox). Neither is the record:
//! a subscriber that falls behind, sees a `seq` skip ahead, or is told to
//! [`Store::resyncs`] re-reads the store.
//!
//! On the bus an event travels as [`WireEvent`]: what its timeline row holds
//! in clear, with the body and meta sealed under the tenant's data key, so
//! NATS never carries PHI in clear.

use crate::Store;
use crate::error::{Result, StoreError};
use crate::events::Event;
use crate::time_fmt::Timestamp;
use base64::Engine as _;
use continuum_core::{Actor, Channel, EventKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

#[derive(Clone)]
pub(crate) struct Live {
    pub local: broadcast::Sender<Arc<Event>>,
    pub cluster: broadcast::Sender<Arc<Event>>,
    pub resync: Arc<watch::Sender<u64>>,
}

impl Live {
    pub fn new(buffer: usize) -> Live {
        Live {
            local: broadcast::channel(buffer).0,
            cluster: broadcast::channel(buffer).0,
            resync: Arc::new(watch::channel(0).0),
        }
    }

    pub fn send(&self, e: Arc<Event>) {
        // No subscribers is fine: live streams are an optimisation over re-reading.
        let _ = self.local.send(e.clone());
        let _ = self.cluster.send(e);
    }
}

#[derive(Serialize, Deserialize)]
struct WireEvent {
    tenant: String,
    conversation: String,
    seq: i64,
    at: i64,
    channel: Channel,
    kind: EventKind,
    actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    /// `{body, meta}` sealed (base64).
    sealed: String,
}

#[derive(Serialize, Deserialize)]
struct WireBody {
    body: Option<String>,
    meta: serde_json::Map<String, serde_json::Value>,
}

fn wire_aad(tenant: &str, conversation: &str, seq: i64) -> Vec<u8> {
    format!("bus|{tenant}|{conversation}|{seq}").into_bytes()
}

impl Store {
    /// Events committed on this node, in commit order. A receiver that lags
    /// re-reads from the store; nothing is lost.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.live.local.subscribe()
    }

    /// Events committed on any node of the cluster (this one's, and those
    /// the bus brings). Per conversation in `seq` order as far as one node
    /// sees it; a subscriber repairs any gap from the store.
    pub fn subscribe_cluster(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.live.cluster.subscribe()
    }

    /// Changes when live delivery may have missed events (the bus was away):
    /// every stream re-reads the store from where it is.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.0.live.resync.subscribe()
    }

    pub fn request_resync(&self) {
        self.0.live.resync.send_modify(|n| *n += 1);
    }

    /// Hands an event another node committed to this node's cluster feed.
    pub fn deliver_remote(&self, e: Event) {
        let _ = self.0.live.cluster.send(Arc::new(e));
    }

    /// The event as it goes on the bus (body and meta sealed).
    pub async fn event_to_wire(&self, e: &Event) -> Result<Vec<u8>> {
        let keys = self.tenant_keys(&e.tenant_id).await?;
        let body = serde_json::to_vec(&WireBody {
            body: e.body.clone(),
            meta: e.meta.clone(),
        })
        .map_err(|err| StoreError::Invalid(err.to_string()))?;
        let sealed = keys
            .data
            .seal(&body, &wire_aad(&e.tenant_id, &e.conversation_id, e.seq));
        serde_json::to_vec(&WireEvent {
            tenant: e.tenant_id.clone(),
            conversation: e.conversation_id.clone(),
            seq: e.seq,
            at: e.at.0,
            channel: e.channel,
            kind: e.kind,
            actor: e.actor.clone(),
            idempotency_key: e.idempotency_key.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        })
        .map_err(|err| StoreError::Invalid(err.to_string()))
    }

    /// An event from the bus, opened with its tenant's key. Refuses anything
    /// that does not open (not ours, altered, another deployment's key).
    pub async fn event_from_wire(&self, bytes: &[u8]) -> Result<Event> {
        let w: WireEvent = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Invalid(format!("not a bus event: {e}")))?;
        let keys = self.tenant_keys(&w.tenant).await?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&w.sealed)
            .map_err(|e| StoreError::Invalid(format!("bus event `sealed` is not base64: {e}")))?;
        let body = keys
            .data
            .open(&sealed, &wire_aad(&w.tenant, &w.conversation, w.seq))?;
        let body: WireBody = serde_json::from_slice(&body)
            .map_err(|e| StoreError::Invalid(format!("bus event body: {e}")))?;
        Ok(Event {
            conversation_id: w.conversation,
            seq: w.seq,
            at: Timestamp(w.at),
            channel: w.channel,
            kind: w.kind,
            actor: w.actor,
            body: body.body,
            meta: body.meta,
            idempotency_key: w.idempotency_key,
            tenant_id: w.tenant,
        })
    }
}
