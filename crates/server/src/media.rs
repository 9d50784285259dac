//! Glue between the SFU host (`continuum_sfu::host`, which runs the media
//! threads) and the conversation: the seat a signaling connection takes
//! (the tag the host carries for each participant), the host's settings from
//! `rtc.*`, and what room events become: timeline events, the lobby's
//! roster, per-tenant gauges.

use crate::config::RtcConfig;
use crate::lobby::{Lobby, RoomKey};
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Role};
use continuum_sfu::host::{HostConfig, Joining, Outcome, Sfu};
use continuum_sfu::{JoinRequest, Mode, ParticipantId, RoomEvent, WorkerConfig};
use continuum_store::Store;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;

pub use continuum_sfu::host::{ResumeRefused, ToParticipant as ToClient};

/// The media workers, their participants tagged with the server's seats.
pub type Media = Sfu<Seat>;

/// Who sits in a room, for the timeline and the roster.
#[derive(Debug, Clone)]
pub struct Seat {
    pub room: RoomKey,
    pub conversation_id: String,
    pub identity: String,
    /// The display name from the token, for the roster.
    pub name: Option<String>,
    pub role: Role,
    pub max_participants: usize,
    /// A phone call bridged into the room (the voice gateway's room leg).
    pub phone: bool,
}

impl Seat {
    /// The host's join for this seat: `resume_token` is the secret a later
    /// signaling connection shows to take the seat over (none for WHIP/WHEP).
    pub fn joining(self, sdp: String, mode: Mode, resume_token: Option<String>) -> Joining<Seat> {
        Joining {
            request: JoinRequest {
                room: self.room.to_string(),
                identity: self.identity.clone(),
                offer_sdp: sdp,
                mode,
                max_participants: Some(self.max_participants),
            },
            tag: self,
            resume_token,
        }
    }
}

/// Starts the media workers and the tasks that record what happens in their rooms.
pub fn start(
    cfg: &RtcConfig,
    store: Store,
    lobby: Lobby,
    fallback: crate::fallback::Triggers,
) -> anyhow::Result<Media> {
    let placeholder = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let worker = WorkerConfig {
        max_participants_per_room: cfg.max_participants_per_room,
        quality: continuum_sfu::quality::QualityThresholds {
            max_loss: cfg.quality_max_loss,
            max_rtt: Duration::from_millis(cfg.quality_max_rtt_ms),
            max_jitter: Duration::from_millis(cfg.quality_max_jitter_ms),
            hold: Duration::from_secs(cfg.quality_hold_secs),
        },
        answer_timeout: Duration::from_secs(cfg.answer_timeout_secs),
        pacing: cfg.pacing,
        media_stall_after: Duration::from_secs(cfg.media_stall_secs.max(1)),
        connect_timeout: Duration::from_secs(cfg.connect_timeout_secs.max(1)),
        ..WorkerConfig::new(placeholder)
    };
    let (media, outcomes) = Sfu::start(HostConfig {
        workers: cfg.workers,
        udp_listen: cfg.udp_listen,
        public_ip: cfg.public_ip,
        worker,
        resume_grace: Duration::from_secs(cfg.resume_grace_secs),
    })?;
    tokio::spawn(record_room_events(store, lobby.clone(), outcomes, fallback));
    tokio::spawn(export_tenant_gauges(lobby));
    Ok(media)
}

/// Writes room activity onto the conversation's timeline: participants
/// joining and leaving, the call starting when the first participant's media
/// connects and ending when the room empties.
async fn record_room_events(
    store: Store,
    lobby: Lobby,
    mut rx: mpsc::UnboundedReceiver<Outcome<Seat>>,
    fallback: crate::fallback::Triggers,
) {
    let mut started: HashSet<RoomKey> = HashSet::new();
    // Seats that leave because their signaling did not come back in time
    // (their `participant.left` says so).
    let mut signaling_lost: HashSet<continuum_sfu::ParticipantId> = HashSet::new();
    while let Some(Outcome {
        tag: seat,
        event: ev,
    }) = rx.recv().await
    {
        let room_key = seat.room.clone();
        // A patient's failing video: PSTN fallback decides whether to call.
        if seat.role == Role::Patient {
            use crate::fallback::{Reason, Trigger};
            let reason = match &ev {
                RoomEvent::MediaStalled { .. } => Some(Reason::MediaStalled),
                RoomEvent::SignalingLost { .. } => Some(Reason::SignalingLost),
                RoomEvent::ConnectFailed { .. } => Some(Reason::ConnectFailed),
                RoomEvent::QualityDegraded { held, .. } => Some(Reason::Degraded {
                    held_secs: held.as_secs(),
                }),
                RoomEvent::QualityRecovered { .. } | RoomEvent::Left { .. } => {
                    Some(Reason::Recovered)
                }
                _ => None,
            };
            if let Some(reason) = reason {
                let _ = fallback.send(Trigger {
                    room: room_key.clone(),
                    conversation_id: seat.conversation_id.clone(),
                    participant: ev.participant().to_string(),
                    reason,
                });
            }
        }
        match &ev {
            RoomEvent::Joined { participant, .. } => lobby.joined(
                &room_key,
                crate::lobby::Member {
                    participant: participant.to_string(),
                    identity: seat.identity.clone(),
                    name: seat.name.clone(),
                    role: seat.role,
                    muted: Default::default(),
                    phone: seat.phone,
                },
            ),
            RoomEvent::Left { participant, .. } => lobby.left(&room_key, &participant.to_string()),
            _ => {}
        }
        let actor = Actor {
            actor_type: if seat.role == Role::Patient {
                ActorType::Patient
            } else {
                ActorType::Staff
            },
            id: Some(seat.identity.clone()),
        };
        let session = serde_json::json!(seat.room.room_id);
        let mut writes: Vec<(EventKind, Actor, serde_json::Value)> = Vec::new();
        match &ev {
            RoomEvent::Joined { participant, .. } => {
                writes.push((EventKind::ParticipantJoined, actor, serde_json::json!({"session_id": session, "participant": participant.to_string(), "role": seat.role})));
            }
            RoomEvent::Connected { .. } => {
                if started.insert(room_key.clone()) {
                    writes.push((
                        EventKind::CallStarted,
                        Actor::system(),
                        serde_json::json!({"session_id": session, "backend": "self-hosted"}),
                    ));
                }
            }
            RoomEvent::Left {
                participant,
                room_now_empty,
                ..
            } => {
                let mut meta = serde_json::json!({"session_id": session, "participant": participant.to_string()});
                if signaling_lost.remove(participant) {
                    meta["reason"] = "signaling_lost".into();
                }
                writes.push((EventKind::ParticipantLeft, actor, meta));
                if *room_now_empty && started.remove(&room_key) {
                    let reason = if lobby.ended(&room_key) {
                        "ended_for_everyone"
                    } else {
                        "room_empty"
                    };
                    writes.push((
                        EventKind::CallEnded,
                        Actor::system(),
                        serde_json::json!({"session_id": session, "reason": reason}),
                    ));
                }
            }
            RoomEvent::QualityDegraded {
                participant,
                reasons,
                held,
                sample,
                ..
            } => {
                let mut meta = quality_meta(&session, *participant, sample, *held);
                meta["reasons"] = serde_json::json!(reasons);
                writes.push((EventKind::QualityDegraded, actor, meta));
            }
            RoomEvent::QualityRecovered {
                participant,
                held,
                sample,
                ..
            } => {
                writes.push((
                    EventKind::QualityRecovered,
                    actor,
                    quality_meta(&session, *participant, sample, *held),
                ));
            }
            // Fallback's business (above); the timeline hears of its outcome.
            RoomEvent::MediaStalled { .. }
            | RoomEvent::MediaResumed { .. }
            | RoomEvent::ConnectFailed { .. } => {}
            RoomEvent::SignalingLost { participant, .. } => {
                signaling_lost.insert(*participant);
            }
        }
        for (kind, actor, meta) in writes {
            let ev = NewEvent {
                channel: Channel::Video,
                kind,
                actor,
                body: None,
                meta: meta.as_object().cloned().unwrap_or_default(),
                idempotency_key: None,
            };
            if let Err(e) = store
                .append_event(
                    &seat.room.tenant_id,
                    &seat.conversation_id,
                    ev,
                    "system:sfu",
                )
                .await
            {
                tracing::warn!(error = %e, "could not record a room event on the timeline");
            }
        }
    }
}

/// The documented `meta` of `quality.degraded` / `quality.recovered` events.
fn quality_meta(
    session: &serde_json::Value,
    participant: ParticipantId,
    s: &continuum_sfu::quality::QualitySample,
    held: Duration,
) -> serde_json::Value {
    serde_json::json!({
        "session_id": session,
        "participant": participant.to_string(),
        "loss": s.loss,
        "rtt_ms": s.rtt.map(|d| d.as_millis() as u64),
        "jitter_ms": s.jitter.map(|d| d.as_millis() as u64),
        "ingress_bps": s.ingress_bps,
        "egress_estimate_bps": s.egress_estimate_bps,
        "held_secs": held.as_secs(),
    })
}

/// Rooms and participants per tenant, from the roster, once a second (a
/// tenant that emptied out is set to 0).
async fn export_tenant_gauges(lobby: Lobby) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now: HashMap<String, (usize, usize)> = lobby.tenant_counts();
        for tenant in seen.iter().filter(|t| !now.contains_key(*t)) {
            metrics::gauge!("continuum_sfu_tenant_participants", "tenant" => tenant.clone())
                .set(0.0);
            metrics::gauge!("continuum_sfu_tenant_rooms", "tenant" => tenant.clone()).set(0.0);
        }
        for (tenant, (rooms, participants)) in &now {
            metrics::gauge!("continuum_sfu_tenant_participants", "tenant" => tenant.clone())
                .set(*participants as f64);
            metrics::gauge!("continuum_sfu_tenant_rooms", "tenant" => tenant.clone())
                .set(*rooms as f64);
        }
        seen = now.into_keys().collect();
    }
}
