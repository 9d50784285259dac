//! Glue between this node's store and the cluster bus: events committed
//! here go out on the bus; events other nodes committed come in to the
//! store's cluster feed (timelines, the inbox, chat); anything that may have
//! made live delivery miss events asks every stream to re-read the store.

use bytes::Bytes;
use continuum_bus::Bus;
use continuum_store::Store;
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// Where events travel: `<cluster>.events.<tenant>.<conversation>`.
pub const EVENTS: &str = "events";
/// Someone dropped events before the bus (a lagging relay): all re-read.
pub const RESYNC: &str = "resync";

/// This node's name: `node.name`, else the host name and listen port.
pub fn node_name(cfg: &crate::config::Config) -> String {
    if let Some(n) = &cfg.node.name {
        return n.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", cfg.server.listen.port())
}

/// Starts the relay tasks; they run until the process ends.
pub async fn start(store: Store, bus: Bus) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut incoming = bus.subscribe(&format!("{EVENTS}.>")).await?;
    let mut resync_requests = bus.subscribe(RESYNC).await?;
    let mut tasks = Vec::new();

    // Out: what this node commits, in commit order.
    let (s, b) = (store.clone(), bus.clone());
    tasks.push(tokio::spawn(async move {
        let mut local = s.subscribe();
        loop {
            let e = match local.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "bus relay fell behind: asking every node to re-read"
                    );
                    metrics::counter!("continuum_bus_resyncs_total", "cause" => "relay_lag")
                        .increment(1);
                    let _ = b.publish(RESYNC.into(), Bytes::new()).await;
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let wire = match s.event_to_wire(&e).await {
                Ok(w) => w,
                Err(err) => {
                    tracing::warn!(error = %err, "an event could not be sealed for the bus");
                    continue;
                }
            };
            let subject = format!("{EVENTS}.{}.{}", e.tenant_id, e.conversation_id);
            match b.publish(subject, wire.into()).await {
                Ok(()) => metrics::counter!("continuum_bus_published_total").increment(1),
                // Streams on other nodes repair from the store when the
                // next event (or the reconnect) shows the gap.
                Err(err) => tracing::debug!(error = %err, "bus publish failed"),
            }
        }
    }));

    // In: what other nodes commit.
    let (s, me) = (store.clone(), bus.node().to_owned());
    tasks.push(tokio::spawn(async move {
        while let Some(m) = incoming.next().await {
            if m.from.as_deref() == Some(me.as_str()) {
                continue;
            }
            match s.event_from_wire(&m.payload).await {
                Ok(e) => {
                    metrics::counter!("continuum_bus_received_total").increment(1);
                    s.deliver_remote(e);
                }
                Err(err) => {
                    metrics::counter!("continuum_bus_refused_total").increment(1);
                    tracing::warn!(error = %err, subject = %m.subject, "refused a bus event");
                }
            }
        }
    }));

    let s = store.clone();
    tasks.push(tokio::spawn(async move {
        while resync_requests.next().await.is_some() {
            metrics::counter!("continuum_bus_resyncs_total", "cause" => "request").increment(1);
            s.request_resync();
        }
    }));

    // A reconnect (NATS restarted, the network blinked): what was published
    // meanwhile is gone, so every stream re-reads.
    let s = store.clone();
    let mut reconnects = bus.reconnects();
    tasks.push(tokio::spawn(async move {
        reconnects.borrow_and_update();
        while reconnects.changed().await.is_ok() {
            metrics::counter!("continuum_bus_resyncs_total", "cause" => "reconnect").increment(1);
            s.request_resync();
        }
    }));
    Ok(tasks)
}
