//! The thin IO loop around the SFU's sans-IO worker: one thread, one UDP
//! socket; commands in from signaling, datagrams in and out, room events out
//! to the conversation timeline.

use crate::config::RtcConfig;
use anyhow::Context as _;
use continuum_core::{Actor, ActorType, Channel, EventKind, NewEvent, Role};
use continuum_sfu::{
    JoinError, JoinRequest, Mode, ParticipantId, RoomEvent, SfuOutput, SignalError, Worker,
    WorkerConfig,
};
use continuum_store::Store;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Who is joining, for the timeline.
#[derive(Debug, Clone)]
pub struct Seat {
    pub tenant_id: String,
    pub conversation_id: String,
    pub room_id: String,
    pub identity: String,
    pub role: Role,
    pub max_participants: usize,
}

/// Messages the media thread sends a participant's signaling connection.
#[derive(Debug)]
pub enum ToClient {
    Offer(String),
    /// The room's active speaker changed.
    Speaker {
        participant: Option<String>,
        identity: Option<String>,
    },
    /// Another participant muted or unmuted a track.
    Muted {
        participant: String,
        identity: String,
        kind: String,
        muted: bool,
    },
    Closed,
}

enum Command {
    Join {
        seat: Seat,
        sdp: String,
        mode: Mode,
        to_client: mpsc::UnboundedSender<ToClient>,
        reply: oneshot::Sender<Result<(ParticipantId, String), JoinError>>,
    },
    Answer {
        id: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    Offer {
        id: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<String, SignalError>>,
    },
    Candidate {
        id: ParticipantId,
        candidate: String,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    Mute {
        id: ParticipantId,
        kind: String,
        muted: bool,
    },
    Leave {
        id: ParticipantId,
    },
}

/// Handle to the media thread.
#[derive(Clone)]
pub struct Media {
    commands: crossbeam_channel::Sender<Command>,
    pub udp_addr: SocketAddr,
}

impl Media {
    pub fn start(cfg: &RtcConfig, store: Store) -> anyhow::Result<Media> {
        let socket = UdpSocket::bind(cfg.udp_listen).with_context(|| {
            format!(
                "cannot bind the media UDP port {}; set rtc.udp_listen",
                cfg.udp_listen
            )
        })?;
        let bound = socket.local_addr()?;
        let public_ip = match (cfg.public_ip, bound.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if ip.is_unspecified() => anyhow::bail!(
                "rtc.udp_listen is {bound}: set rtc.public_ip to the address browsers can reach"
            ),
            (None, ip) => ip,
        };
        let public = SocketAddr::new(public_ip, bound.port());
        let worker = Worker::new(WorkerConfig {
            public_addr: public,
            max_participants_per_room: cfg.max_participants_per_room,
            quality: continuum_sfu::quality::QualityThresholds {
                max_loss: cfg.quality_max_loss,
                max_rtt: Duration::from_millis(cfg.quality_max_rtt_ms),
                max_jitter: Duration::from_millis(cfg.quality_max_jitter_ms),
                hold: Duration::from_secs(cfg.quality_hold_secs),
            },
            answer_timeout: Duration::from_secs(cfg.answer_timeout_secs),
        });
        let (commands, rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(record_room_events(store, events_rx));
        std::thread::Builder::new()
            .name("continuum-media".into())
            .spawn(move || run(socket, worker, rx, events_tx))
            .context("spawning the media thread")?;
        tracing::info!(%bound, %public, "media worker listening");
        Ok(Media {
            commands,
            udp_addr: public,
        })
    }

    pub async fn join(
        &self,
        seat: Seat,
        sdp: String,
        mode: Mode,
        to_client: mpsc::UnboundedSender<ToClient>,
    ) -> Result<(ParticipantId, String), JoinError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Join {
            seat,
            sdp,
            mode,
            to_client,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err(JoinError::Refused("the media worker is not running".into())))
    }

    pub async fn answer(&self, id: ParticipantId, sdp: String) -> Result<(), SignalError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Answer { id, sdp, reply });
        rx.await.unwrap_or(Err(SignalError::UnknownParticipant))
    }

    pub async fn offer(&self, id: ParticipantId, sdp: String) -> Result<String, SignalError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Offer { id, sdp, reply });
        rx.await.unwrap_or(Err(SignalError::UnknownParticipant))
    }

    pub async fn candidate(&self, id: ParticipantId, candidate: String) -> Result<(), SignalError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Candidate {
            id,
            candidate,
            reply,
        });
        rx.await.unwrap_or(Err(SignalError::UnknownParticipant))
    }

    pub fn mute(&self, id: ParticipantId, kind: String, muted: bool) {
        let _ = self.commands.send(Command::Mute { id, kind, muted });
    }

    pub fn leave(&self, id: ParticipantId) {
        let _ = self.commands.send(Command::Leave { id });
    }
}

fn run(
    socket: UdpSocket,
    mut worker: Worker,
    commands: crossbeam_channel::Receiver<Command>,
    events: mpsc::UnboundedSender<(Seat, RoomEvent)>,
) {
    let local = socket.local_addr().expect("bound socket");
    metrics::gauge!("continuum_sfu_udp_port").set(local.port() as f64);
    let mut reported = continuum_sfu::WorkerStats::default();
    let mut last_gauges = Instant::now();
    let mut tenants_seen: HashSet<String> = HashSet::new();
    let mut seats: HashMap<ParticipantId, (Seat, mpsc::UnboundedSender<ToClient>)> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        loop {
            match commands.try_recv() {
                Ok(cmd) => handle_command(&mut worker, &mut seats, cmd),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        let next = worker.drive(now);
        while let Some(out) = worker.poll_output() {
            match out {
                SfuOutput::Transmit {
                    destination,
                    contents,
                } => {
                    if let Err(e) = socket.send_to(&contents, destination) {
                        tracing::debug!(%destination, error = %e, "media send failed");
                    }
                }
                SfuOutput::Quality { sample, .. } => record_quality(&sample),
                SfuOutput::Speaker { room, participant } => {
                    let identity = participant
                        .and_then(|p| seats.get(&p))
                        .map(|(s, _)| s.identity.clone());
                    for (seat, tx) in seats.values() {
                        if format!("{}/{}", seat.tenant_id, seat.room_id) == room {
                            let _ = tx.send(ToClient::Speaker {
                                participant: participant.map(|p| p.to_string()),
                                identity: identity.clone(),
                            });
                        }
                    }
                }
                SfuOutput::Offer { participant, sdp } => {
                    if let Some((_, tx)) = seats.get(&participant) {
                        let _ = tx.send(ToClient::Offer(sdp));
                    }
                }
                SfuOutput::Event(ev) => {
                    let id = match &ev {
                        RoomEvent::Joined { participant, .. }
                        | RoomEvent::Connected { participant, .. }
                        | RoomEvent::Left { participant, .. }
                        | RoomEvent::QualityDegraded { participant, .. }
                        | RoomEvent::QualityRecovered { participant, .. } => *participant,
                    };
                    let seat = match &ev {
                        RoomEvent::Left { .. } => seats.remove(&id).map(|(s, tx)| {
                            let _ = tx.send(ToClient::Closed);
                            s
                        }),
                        _ => seats.get(&id).map(|(s, _)| s.clone()),
                    };
                    if let Some(seat) = seat {
                        let _ = events.send((seat, ev));
                    }
                }
            }
        }
        export_stats(&worker.stats, &mut reported);
        // Gauges once a second, not on every wake-up.
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = Instant::now();
            metrics::gauge!("continuum_sfu_rooms").set(worker.room_count() as f64);
            metrics::gauge!("continuum_sfu_participants").set(worker.participant_count() as f64);
            export_tenant_gauges(&seats, &mut tenants_seen);
        }
        // Wake for the next timer, a datagram, or (at most 5 ms later) a command.
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(5));
        let _ = socket.set_read_timeout(Some(wait));
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                worker.handle_datagram(Instant::now(), source, local, &buf[..n]);
                // Drain whatever else is already queued before driving again.
                let _ = socket.set_nonblocking(true);
                while let Ok((n, source)) = socket.recv_from(&mut buf) {
                    worker.handle_datagram(Instant::now(), source, local, &buf[..n]);
                }
                let _ = socket.set_nonblocking(false);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => tracing::debug!(error = %e, "media receive failed"),
        }
    }
}

fn handle_command(
    worker: &mut Worker,
    seats: &mut HashMap<ParticipantId, (Seat, mpsc::UnboundedSender<ToClient>)>,
    cmd: Command,
) {
    match cmd {
        Command::Join {
            seat,
            sdp,
            mode,
            to_client,
            reply,
        } => {
            let room_key = format!("{}/{}", seat.tenant_id, seat.room_id);
            let result = worker.join(
                Instant::now(),
                JoinRequest {
                    room: room_key,
                    identity: seat.identity.clone(),
                    offer_sdp: sdp,
                    mode,
                    max_participants: Some(seat.max_participants),
                },
            );
            if let Ok((id, _)) = &result {
                seats.insert(*id, (seat, to_client));
            }
            let _ = reply.send(result);
        }
        Command::Answer { id, sdp, reply } => {
            let _ = reply.send(worker.answer(id, &sdp));
        }
        Command::Offer { id, sdp, reply } => {
            let _ = reply.send(worker.offer(id, &sdp));
        }
        Command::Leave { id } => worker.leave(id),
        Command::Candidate {
            id,
            candidate,
            reply,
        } => {
            let _ = reply.send(worker.candidate(id, &candidate));
        }
        Command::Mute { id, kind, muted } => {
            let Some((me, _)) = seats.get(&id) else {
                return;
            };
            let (tenant, room, identity) = (
                me.tenant_id.clone(),
                me.room_id.clone(),
                me.identity.clone(),
            );
            for (other, (seat, tx)) in seats.iter() {
                if *other != id && seat.tenant_id == tenant && seat.room_id == room {
                    let _ = tx.send(ToClient::Muted {
                        participant: id.to_string(),
                        identity: identity.clone(),
                        kind: kind.clone(),
                        muted,
                    });
                }
            }
        }
    }
}

/// Writes room activity onto the conversation's timeline: participants
/// joining and leaving, the call starting when the first participant's media
/// connects and ending when the room empties.
async fn record_room_events(store: Store, mut rx: mpsc::UnboundedReceiver<(Seat, RoomEvent)>) {
    let mut started: HashSet<String> = HashSet::new();
    while let Some((seat, ev)) = rx.recv().await {
        let actor = Actor {
            actor_type: if seat.role == Role::Patient {
                ActorType::Patient
            } else {
                ActorType::Staff
            },
            id: Some(seat.identity.clone()),
        };
        let session = serde_json::json!(seat.room_id);
        let mut writes: Vec<(EventKind, Actor, serde_json::Value)> = Vec::new();
        match &ev {
            RoomEvent::Joined { participant, .. } => {
                writes.push((EventKind::ParticipantJoined, actor, serde_json::json!({"session_id": session, "participant": participant.to_string(), "role": seat.role})));
            }
            RoomEvent::Connected { .. } => {
                let key = format!("{}/{}", seat.tenant_id, seat.room_id);
                if started.insert(key) {
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
                writes.push((EventKind::ParticipantLeft, actor, serde_json::json!({"session_id": session, "participant": participant.to_string()})));
                if *room_now_empty
                    && started.remove(&format!("{}/{}", seat.tenant_id, seat.room_id))
                {
                    writes.push((
                        EventKind::CallEnded,
                        Actor::system(),
                        serde_json::json!({"session_id": session, "reason": "room_empty"}),
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
                .append_event(&seat.tenant_id, &seat.conversation_id, ev, "system:sfu")
                .await
            {
                tracing::warn!(error = %e, "could not record a room event on the timeline");
            }
        }
    }
}

/// Adds what changed since the last export to the Prometheus counters.
fn export_stats(now: &continuum_sfu::WorkerStats, reported: &mut continuum_sfu::WorkerStats) {
    if now == reported {
        return;
    }
    let pairs = [
        (
            "continuum_sfu_datagrams_in_total",
            now.datagrams_in,
            reported.datagrams_in,
        ),
        (
            "continuum_sfu_bytes_in_total",
            now.bytes_in,
            reported.bytes_in,
        ),
        (
            "continuum_sfu_unknown_datagrams_total",
            now.unknown_datagrams,
            reported.unknown_datagrams,
        ),
        (
            "continuum_sfu_frames_forwarded_total",
            now.frames_forwarded,
            reported.frames_forwarded,
        ),
        (
            "continuum_sfu_bytes_forwarded_total",
            now.bytes_forwarded,
            reported.bytes_forwarded,
        ),
        (
            "continuum_sfu_keyframe_requests_total",
            now.keyframe_requests,
            reported.keyframe_requests,
        ),
        (
            "continuum_sfu_participants_joined_total",
            now.participants_joined,
            reported.participants_joined,
        ),
        (
            "continuum_sfu_joins_refused_total",
            now.joins_refused,
            reported.joins_refused,
        ),
        (
            "continuum_sfu_data_messages_relayed_total",
            now.data_messages_relayed,
            reported.data_messages_relayed,
        ),
        (
            "continuum_sfu_nacks_received_total",
            now.nacks_received,
            reported.nacks_received,
        ),
        (
            "continuum_sfu_plis_received_total",
            now.plis_received,
            reported.plis_received,
        ),
        (
            "continuum_sfu_firs_received_total",
            now.firs_received,
            reported.firs_received,
        ),
        (
            "continuum_sfu_nacks_sent_total",
            now.nacks_sent,
            reported.nacks_sent,
        ),
        (
            "continuum_sfu_plis_sent_total",
            now.plis_sent,
            reported.plis_sent,
        ),
        (
            "continuum_sfu_firs_sent_total",
            now.firs_sent,
            reported.firs_sent,
        ),
    ];
    for (name, value, before) in pairs {
        if value > before {
            metrics::counter!(name).increment(value - before);
        }
    }
    *reported = *now;
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

/// Per-participant quality samples as Prometheus histograms.
fn record_quality(s: &continuum_sfu::quality::QualitySample) {
    if let Some(rtt) = s.rtt {
        metrics::histogram!("continuum_sfu_rtt_seconds").record(rtt.as_secs_f64());
    }
    if let Some(loss) = s.loss {
        metrics::histogram!("continuum_sfu_loss_ratio").record(loss as f64);
    }
    if let Some(j) = s.jitter {
        metrics::histogram!("continuum_sfu_jitter_seconds").record(j.as_secs_f64());
    }
    if let Some(bps) = s.egress_estimate_bps {
        metrics::histogram!("continuum_sfu_egress_estimate_bps").record(bps as f64);
    }
}

/// Rooms and participants per tenant (a tenant that emptied out is set to 0).
fn export_tenant_gauges(
    seats: &HashMap<ParticipantId, (Seat, mpsc::UnboundedSender<ToClient>)>,
    tenants_seen: &mut HashSet<String>,
) {
    let mut per_tenant: HashMap<&str, (usize, HashSet<&str>)> = HashMap::new();
    for (seat, _) in seats.values() {
        let entry = per_tenant.entry(&seat.tenant_id).or_default();
        entry.0 += 1;
        entry.1.insert(&seat.room_id);
    }
    for tenant in tenants_seen.iter() {
        if !per_tenant.contains_key(tenant.as_str()) {
            metrics::gauge!("continuum_sfu_tenant_participants", "tenant" => tenant.clone())
                .set(0.0);
            metrics::gauge!("continuum_sfu_tenant_rooms", "tenant" => tenant.clone()).set(0.0);
        }
    }
    for (tenant, (participants, rooms)) in &per_tenant {
        metrics::gauge!("continuum_sfu_tenant_participants", "tenant" => tenant.to_string())
            .set(*participants as f64);
        metrics::gauge!("continuum_sfu_tenant_rooms", "tenant" => tenant.to_string())
            .set(rooms.len() as f64);
        tenants_seen.insert(tenant.to_string());
    }
}
