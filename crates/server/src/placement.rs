//! Which media node hosts a room, in a cluster.
//!
//! Media nodes announce themselves every [`ANNOUNCE_EVERY`] in an expiring
//! bucket (`continuum_media`): name, region, signaling URL, capacity, load.
//! A node that stops (killed, partitioned) is gone from it after [`TTL`].
//!
//! A room is placed the first time someone joins it, on the least-loaded
//! live media node of its tenant's region, and only there (data residency:
//! a tenant pinned to `eu` never lands on a `us` node, and gets a clear error
//! when no `eu` node is up). The placement is a compare-and-set entry in
//! `continuum_rooms`, so two API nodes placing one room at once agree. When
//! the node holding a room is gone, the next join (or reconnect) re-places it
//! and the room's timeline records the interruption.
//!
//! The signaling connection reaches the hosting node by **redirect**: any
//! node answers `join` with `redirect` and the media node's URL, and the
//! client connects there. Relaying over the bus would put every signaling
//! message (SDP, candidates, layer choices) through NATS and a second hop for
//! the life of the call; the client must reach the media node's UDP ports
//! anyway, so it can reach its WebSocket too. One extra round trip at join.

use bytes::Bytes;
use continuum_bus::{Bucket, Bus};
use continuum_core::{Actor, Channel, EventKind, NewEvent};
use continuum_store::{Room, Store};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(500);
pub const TTL: Duration = Duration::from_secs(2);
/// `<cluster>_media` and `<cluster>_rooms` on the bus.
const MEDIA_BUCKET: &str = "media";
const ROOMS_BUCKET: &str = "rooms";

/// A media node as it announces itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MediaNode {
    pub node: String,
    pub region: String,
    /// Where clients open signaling: `ws(s)://host:port`.
    pub signaling: String,
    pub capacity: u32,
    pub rooms: u32,
    pub participants: u32,
}

/// Where a room lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    node: String,
    region: String,
}

pub enum Host {
    /// This node: go ahead.
    Here,
    /// Another node: the client reconnects to this signaling URL.
    There { node: String, signaling: String },
}

pub struct Placement {
    me: String,
    /// This node's own entry while it serves media: placement counts it live
    /// from the moment it is ready, before its first announcement lands.
    own: Option<(Arc<Mutex<MediaNode>>, Arc<std::sync::atomic::AtomicBool>)>,
    members: Bucket,
    rooms: Bucket,
    store: Store,
    /// Live media nodes, read at most every 500 ms.
    cache: Mutex<Option<(Instant, Vec<MediaNode>)>>,
    /// Rooms this node placed lately, per media node: they count as load
    /// before that node's next announcement shows them.
    recent: Mutex<Vec<(Instant, String)>>,
}

/// What a `ws(s)://` signaling base is made from (`http(s)://` → `ws(s)://`).
pub fn signaling_base(public: &str) -> String {
    let public = public.trim_end_matches('/');
    if let Some(rest) = public.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = public.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        public.to_owned()
    }
}

impl Placement {
    /// Joins placement; a media node (`announce` = its entry) also starts
    /// announcing itself, with its load from `load`.
    pub async fn start(
        bus: &Bus,
        store: Store,
        announce: Option<(MediaNode, crate::lobby::Lobby)>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<Arc<Placement>> {
        let members = bus.bucket(MEDIA_BUCKET, TTL).await?;
        let rooms = bus
            .bucket(ROOMS_BUCKET, Duration::from_secs(24 * 3600))
            .await?;
        let own = announce
            .as_ref()
            .map(|(entry, _)| (Arc::new(Mutex::new(entry.clone())), ready.clone()));
        let placement = Arc::new(Placement {
            me: bus.node().to_owned(),
            own: own.clone(),
            members: members.clone(),
            rooms,
            store,
            cache: Mutex::new(None),
            recent: Mutex::new(Vec::new()),
        });
        if let Some((mut entry, lobby)) = announce {
            let shared = own.map(|(e, _)| e);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
                let mut announced = false;
                loop {
                    tick.tick().await;
                    // Only while serving: not before the listener is up, and
                    // not once shutdown began (then withdrawn at once).
                    if !ready.load(std::sync::atomic::Ordering::Relaxed) {
                        if announced {
                            let _ = members.withdraw(&entry.node).await;
                            announced = false;
                        }
                        continue;
                    }
                    announced = true;
                    let (rooms, participants) = lobby
                        .tenant_counts()
                        .values()
                        .fold((0, 0), |(r, p), (rr, pp)| (r + rr, p + pp));
                    entry.rooms = rooms as u32;
                    entry.participants = participants as u32;
                    if let Some(shared) = &shared {
                        *shared.lock() = entry.clone();
                    }
                    metrics::gauge!("continuum_media_rooms").set(rooms as f64);
                    let value = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
                    if let Err(e) = members.announce(&entry.node, value).await {
                        tracing::debug!(error = %e, "media announcement failed");
                    }
                }
            });
        }
        Ok(placement)
    }

    /// Live media nodes (announced within the TTL).
    pub async fn live_nodes(&self) -> anyhow::Result<Vec<MediaNode>> {
        if let Some((at, nodes)) = &*self.cache.lock()
            && at.elapsed() < Duration::from_millis(500)
            && !nodes.is_empty()
        {
            return Ok(nodes.clone());
        }
        let mut nodes: Vec<MediaNode> = self
            .members
            .list()
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect();
        if let Some((entry, ready)) = &self.own
            && ready.load(std::sync::atomic::Ordering::Relaxed)
            && !nodes.iter().any(|n| n.node == self.me)
        {
            nodes.push(entry.lock().clone());
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        *self.cache.lock() = Some((Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    /// The least-loaded live node of `region`: fewest rooms for its
    /// capacity, counting rooms placed here lately.
    fn choose<'n>(&self, nodes: &'n [MediaNode], region: &str) -> Option<&'n MediaNode> {
        let mut recent = self.recent.lock();
        recent.retain(|(at, _)| at.elapsed() < ANNOUNCE_EVERY * 2);
        nodes.iter().filter(|n| n.region == region).min_by(|a, b| {
            let load = |n: &MediaNode| {
                let placed = recent.iter().filter(|(_, m)| *m == n.node).count() as f64;
                (n.rooms as f64 + placed) / n.capacity.max(1) as f64
            };
            load(a).total_cmp(&load(b)).then(a.node.cmp(&b.node))
        })
    }

    /// Where `room` of a tenant pinned to `region` is hosted, placing (or
    /// re-placing) it when it has no live node.
    pub async fn host_for(
        &self,
        tenant_id: &str,
        region: &str,
        room: &Room,
    ) -> Result<Host, String> {
        let key = format!("{tenant_id}.{}", room.id);
        for _ in 0..5 {
            let nodes = self
                .live_nodes()
                .await
                .map_err(|e| format!("the cluster bus is unavailable: {e}"))?;
            let current = self
                .rooms
                .get(&key)
                .await
                .map_err(|e| format!("the cluster bus is unavailable: {e}"))?;
            let placed: Option<(Placed, u64)> =
                current.and_then(|(v, rev)| serde_json::from_slice(&v).ok().map(|p| (p, rev)));
            if let Some((p, _)) = &placed
                && let Some(n) = nodes
                    .iter()
                    .find(|n| n.node == p.node && n.region == region)
            {
                return Ok(self.host(n));
            }
            let Some(target) = self.choose(&nodes, region) else {
                metrics::counter!("continuum_placement_refused_total").increment(1);
                return Err(format!(
                    "no media node in region `{region}` is available (the tenant's rooms stay in its region); try again shortly"
                ));
            };
            let value = Bytes::from(
                serde_json::to_vec(&Placed {
                    node: target.node.clone(),
                    region: region.to_owned(),
                })
                .unwrap_or_default(),
            );
            let won = match &placed {
                None => self.rooms.create(&key, value).await,
                Some((_, rev)) => self.rooms.replace(&key, value, *rev).await,
            }
            .map_err(|e| format!("the cluster bus is unavailable: {e}"))?;
            if !won {
                // Another node placed it first: use theirs.
                continue;
            }
            self.recent
                .lock()
                .push((Instant::now(), target.node.clone()));
            metrics::counter!("continuum_rooms_placed_total", "reason" => if placed.is_some() { "replaced" } else { "new" })
                .increment(1);
            if let Some((lost, _)) = &placed {
                self.record_interruption(tenant_id, room, &lost.node, &target.node)
                    .await;
            }
            return Ok(self.host(target));
        }
        Err("the room's placement kept changing; try again".into())
    }

    fn host(&self, n: &MediaNode) -> Host {
        if n.node == self.me {
            Host::Here
        } else {
            Host::There {
                node: n.node.clone(),
                signaling: n.signaling.clone(),
            }
        }
    }

    /// The room's media node went away: say so on the conversation.
    async fn record_interruption(&self, tenant_id: &str, room: &Room, lost: &str, to: &str) {
        tracing::warn!(room = %room.id, lost, to, "media node lost: room re-placed");
        let mut meta = serde_json::Map::new();
        meta.insert("reason".into(), "media_node_lost".into());
        meta.insert("room".into(), room.id.clone().into());
        meta.insert("from_node".into(), lost.into());
        meta.insert("to_node".into(), to.into());
        let ev = NewEvent {
            channel: Channel::Video,
            kind: EventKind::Note,
            actor: Actor::system(),
            body: Some(format!(
                "The video visit moved to another media server ({lost} stopped answering); participants reconnect on their own."
            )),
            meta,
            idempotency_key: Some(format!("replaced:{}:{lost}", room.id)),
        };
        if let Err(e) = self
            .store
            .append_system_event(tenant_id, &room.conversation_id, ev, "system:placement")
            .await
        {
            tracing::warn!(error = %e, "could not record the media interruption");
        }
    }
}
