//! The cluster bus, on NATS: how the nodes of one Continuum deployment tell
//! each other what happened.
//!
//! - **Live events** go over core NATS subjects, at most once and with the
//!   lowest latency NATS has. Nothing depends on them arriving: the store
//!   (PostgreSQL) is the durable, ordered log, and every live stream repairs
//!   a gap by reading it (a `seq` that skips ahead, or [`Bus::reconnects`]
//!   after NATS was away). Keeping a second copy in a JetStream stream would
//!   double the write path for no guarantee the store does not already give.
//! - **Buckethip** (media nodes and their load) lives in a JetStream
//!   key-value bucket whose entries expire: a node that stops announcing
//!   itself (killed, partitioned) drops out of placement by itself.
//!
//! Every message carries the sending node's name in a header, so a node can
//! skip its own. Subjects and buckets are namespaced by the cluster's name
//! (`<cluster>.events…`, `<cluster>_media`), so several deployments (staging
//! and production, or parallel tests) can share one NATS without hearing
//! each other.

use async_nats::jetstream;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::time::Duration;
use tokio::sync::watch;

/// The header naming the node that published a message.
pub const NODE_HEADER: &str = "Continuum-Node";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot connect to NATS at {url}: {reason} (bus.url; is nats-server running with JetStream, `nats-server -js`?)"
    )]
    Connect { url: String, reason: String },
    #[error("NATS {op} failed: {reason}")]
    Nats { op: &'static str, reason: String },
}

fn nats(op: &'static str) -> impl FnOnce(String) -> BusError {
    move |reason| BusError::Nats { op, reason }
}

/// A connection to the bus, shared by a node's tasks.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    node: String,
    cluster: String,
    reconnects: watch::Receiver<u64>,
}

/// One message as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    /// The node that sent it ([`NODE_HEADER`]), if it said.
    pub from: Option<String>,
}

impl Bus {
    /// Connects as `node` of `cluster` (letters, digits, `_` and `-`). Fails
    /// if NATS cannot be reached now; once connected, the client reconnects
    /// by itself for as long as it takes.
    pub async fn connect(url: &str, cluster: &str, node: &str) -> Result<Bus, BusError> {
        if cluster.is_empty()
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(BusError::Connect {
                url: url.to_owned(),
                reason: format!(
                    "the cluster name `{cluster}` must be letters, digits, `_` and `-` (bus.cluster)"
                ),
            });
        }
        let (reconnects_tx, reconnects) = watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .name(format!("continuum {node}"))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // 50 ms, doubling, at most 2 s: back quickly after a restart.
                Duration::from_millis((50u64 << attempts.min(6)).min(2000))
            })
            .event_callback(move |event| {
                let reconnects_tx = reconnects_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("bus: connected to NATS");
                            reconnects_tx.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("bus: NATS connection lost; reconnecting");
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            // Messages were dropped for a slow subscriber:
                            // the same repair as after a reconnect.
                            tracing::warn!(
                                "bus: slow consumer, messages dropped; streams re-read the store"
                            );
                            reconnects_tx.send_modify(|n| *n += 1);
                        }
                        other => tracing::debug!(event = %other, "bus event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        // The callback may not have run yet for the first connection.
        let jetstream = jetstream::new(client.clone());
        Ok(Bus {
            client,
            jetstream,
            node: node.to_owned(),
            cluster: cluster.to_owned(),
            reconnects,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the connection is up right now (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Changes each time the connection is (re-)established or messages
    /// were dropped: whoever relies on live messages re-reads the store.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.clone()
    }

    /// Publishes `payload` on `subject` (in this cluster's namespace),
    /// marked as this node's.
    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(NODE_HEADER, self.node.as_str());
        self.client
            .publish_with_headers(format!("{}.{subject}", self.cluster), headers, payload)
            .await
            .map_err(|e| nats("publish")(e.to_string()))
    }

    /// Every message on `subject` (in this cluster's namespace; wildcards
    /// allowed) from now on. Deliveries name the subject without the
    /// namespace.
    pub async fn subscribe(
        &self,
        subject: &str,
    ) -> Result<impl Stream<Item = Delivery> + Send + Unpin + use<>, BusError> {
        let prefix = format!("{}.", self.cluster);
        let sub = self
            .client
            .subscribe(format!("{prefix}{subject}"))
            .await
            .map_err(|e| nats("subscribe")(e.to_string()))?;
        Ok(sub.map(move |m| Delivery {
            from: m
                .headers
                .as_ref()
                .and_then(|h| h.get(NODE_HEADER))
                .map(|v| v.as_str().to_owned()),
            subject: m
                .subject
                .strip_prefix(prefix.as_str())
                .unwrap_or(&m.subject)
                .to_owned(),
            payload: m.payload,
        }))
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| nats("flush")(e.to_string()))
    }

    /// A key-value bucket whose entries expire `ttl` after their last put
    /// (created if missing).
    pub async fn bucket(&self, bucket: &str, ttl: Duration) -> Result<Bucket, BusError> {
        let bucket = format!("{}_{bucket}", self.cluster);
        let bucket = bucket.as_str();
        let kv = match self.jetstream.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => self
                .jetstream
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("create key-value bucket")(e.to_string()))?,
        };
        Ok(Bucket { kv })
    }
}

/// A JetStream key-value bucket: entries live as long as they are renewed
/// (membership), or are changed only by compare-and-set (placements).
#[derive(Clone)]
pub struct Bucket {
    kv: jetstream::kv::Store,
}

impl Bucket {
    /// The value and its revision (for [`Bucket::replace`]), if any.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, u64)>, BusError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| nats("read entry")(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == jetstream::kv::Operation::Put)
            .map(|e| (e.value, e.revision)))
    }

    /// Sets `key` only if it has no value: false if someone else's is there.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<bool, BusError> {
        match self.kv.create(key, value).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(nats("create entry")(e.to_string())),
        }
    }

    /// Sets `key` only if it is still at `revision`: false if it moved on.
    pub async fn replace(&self, key: &str, value: Bytes, revision: u64) -> Result<bool, BusError> {
        match self.kv.update(key, value, revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(nats("update entry")(e.to_string())),
        }
    }

    /// Adds or renews `key`.
    pub async fn announce(&self, key: &str, value: Bytes) -> Result<(), BusError> {
        self.kv
            .put(key, value)
            .await
            .map(|_| ())
            .map_err(|e| nats("announce")(e.to_string()))
    }

    /// Removes `key` now (a clean shutdown), rather than at expiry.
    pub async fn withdraw(&self, key: &str) -> Result<(), BusError> {
        self.kv
            .delete(key)
            .await
            .map_err(|e| nats("withdraw")(e.to_string()))
    }

    /// Every live entry.
    pub async fn list(&self) -> Result<Vec<(String, Bytes)>, BusError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| nats("list keys")(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats("list keys")(e.to_string()))?;
            if let Some(value) = self
                .kv
                .get(key.clone())
                .await
                .map_err(|e| nats("read entry")(e.to_string()))?
            {
                out.push((key, value));
            }
        }
        Ok(out)
    }
}
