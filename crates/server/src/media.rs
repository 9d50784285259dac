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
    /// The display name from the token, for the roster.
    pub name: Option<String>,
    pub role: Role,
    pub max_participants: usize,
    /// The secret a new signaling connection shows to take this seat over
    /// (`resume`); none for WHIP/WHEP sessions.
    pub resume_token: Option<String>,
}

/// Why a `resume` was refused (one reason only: no hints for guessers).
#[derive(Debug, thiserror::Error)]
#[error("no such session to resume (it ended, or the token is wrong): join again")]
pub struct ResumeRefused;

/// Messages the media thread sends a participant's signaling connection.
#[derive(Debug)]
pub enum ToClient {
    Offer(String),
    /// The room's active speaker changed.
    Speaker {
        participant: Option<String>,
        identity: Option<String>,
    },
    /// Tracks, quality, layers to pause (see [`continuum_sfu::Notice`]).
    Notice(continuum_sfu::Notice),
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
    Layer {
        id: ParticipantId,
        origin: Option<ParticipantId>,
        max_layer: usize,
        reply: oneshot::Sender<Result<usize, SignalError>>,
    },
    Subscribe {
        id: ParticipantId,
        origin: ParticipantId,
        kind: Option<continuum_sfu::MediaKind>,
        subscribed: bool,
        reply: oneshot::Sender<Result<usize, SignalError>>,
    },
    /// The signaling connection `link` dropped: the seat waits for a resume.
    Detach {
        id: ParticipantId,
        link: mpsc::UnboundedSender<ToClient>,
    },
    Resume {
        id: ParticipantId,
        token: String,
        tenant_id: String,
        identity: String,
        to_client: mpsc::UnboundedSender<ToClient>,
        /// The room of the seat taken over.
        reply: oneshot::Sender<Result<String, ResumeRefused>>,
    },
}

/// Seats whose signaling connection dropped, and when their grace ends.
type Detached = HashMap<ParticipantId, Instant>;

/// Handle to the media workers: one thread and one UDP port each; a room
/// lives on one worker (chosen by hashing its key), and a participant id
/// names its worker (`(id - 1) % workers`), so commands need no lookup table.
#[derive(Clone)]
pub struct Media {
    shards: std::sync::Arc<[crossbeam_channel::Sender<Command>]>,
    /// The advertised media address of each worker.
    pub udp_addrs: Vec<SocketAddr>,
}

impl Media {
    pub fn start(
        cfg: &RtcConfig,
        store: Store,
        lobby: crate::lobby::Lobby,
    ) -> anyhow::Result<Media> {
        let workers = match cfg.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(record_room_events(store, lobby, events_rx));
        let mut shards = Vec::with_capacity(workers);
        let mut udp_addrs = Vec::with_capacity(workers);
        for index in 0..workers {
            let mut listen = cfg.udp_listen;
            if listen.port() != 0 {
                listen.set_port(listen.port().checked_add(index as u16).with_context(|| {
                    format!("rtc.udp_listen port + {index} workers exceeds 65535")
                })?);
            }
            let socket = UdpSocket::bind(listen).with_context(|| {
                format!(
                    "cannot bind the media UDP port {listen} (worker {index}); set rtc.udp_listen \
                     (worker i listens on its port + i) or rtc.workers"
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
                first_participant_id: index as u64 + 1,
                participant_id_stride: workers as u64,
                pacing: cfg.pacing,
                initial_bwe_bps: continuum_sfu::INITIAL_BWE_BPS,
            });
            let (commands, rx) = crossbeam_channel::unbounded();
            let events = events_tx.clone();
            let grace = Duration::from_secs(cfg.resume_grace_secs);
            std::thread::Builder::new()
                .name(format!("continuum-media-{index}"))
                .spawn(move || run(index, socket, worker, rx, events, grace))
                .context("spawning a media thread")?;
            tracing::info!(worker = index, %bound, %public, "media worker listening");
            shards.push(commands);
            udp_addrs.push(public);
        }
        Ok(Media {
            shards: shards.into(),
            udp_addrs,
        })
    }

    fn for_room(&self, seat: &Seat) -> &crossbeam_channel::Sender<Command> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&seat.tenant_id, &seat.room_id).hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    fn for_participant(&self, id: ParticipantId) -> &crossbeam_channel::Sender<Command> {
        &self.shards[(id.0.saturating_sub(1) % self.shards.len() as u64) as usize]
    }

    pub async fn join(
        &self,
        seat: Seat,
        sdp: String,
        mode: Mode,
        to_client: mpsc::UnboundedSender<ToClient>,
    ) -> Result<(ParticipantId, String), JoinError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.for_room(&seat).send(Command::Join {
            seat,
            sdp,
            mode,
            to_client,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err(JoinError::Refused("the media worker is not running".into())))
    }

    /// Sends `id`'s media thread the command `make` builds around a reply
    /// channel, and waits for the answer (a participant gone meanwhile is
    /// unknown).
    async fn ask<T>(
        &self,
        id: ParticipantId,
        make: impl FnOnce(oneshot::Sender<Result<T, SignalError>>) -> Command,
    ) -> Result<T, SignalError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.for_participant(id).send(make(reply));
        rx.await.unwrap_or(Err(SignalError::UnknownParticipant))
    }

    pub async fn answer(&self, id: ParticipantId, sdp: String) -> Result<(), SignalError> {
        self.ask(id, |reply| Command::Answer { id, sdp, reply })
            .await
    }

    pub async fn offer(&self, id: ParticipantId, sdp: String) -> Result<String, SignalError> {
        self.ask(id, |reply| Command::Offer { id, sdp, reply })
            .await
    }

    pub async fn candidate(&self, id: ParticipantId, candidate: String) -> Result<(), SignalError> {
        self.ask(id, |reply| Command::Candidate {
            id,
            candidate,
            reply,
        })
        .await
    }

    /// Subscribes `id` to `origin`'s tracks (of `kind`, or all) or unsubscribes it.
    pub async fn set_subscribed(
        &self,
        id: ParticipantId,
        origin: ParticipantId,
        kind: Option<continuum_sfu::MediaKind>,
        subscribed: bool,
    ) -> Result<usize, SignalError> {
        self.ask(id, |reply| Command::Subscribe {
            id,
            origin,
            kind,
            subscribed,
            reply,
        })
        .await
    }

    /// The subscriber's requested quality for `origin`'s video (or everyone's).
    pub async fn set_max_layer(
        &self,
        id: ParticipantId,
        origin: Option<ParticipantId>,
        max_layer: usize,
    ) -> Result<usize, SignalError> {
        self.ask(id, |reply| Command::Layer {
            id,
            origin,
            max_layer,
            reply,
        })
        .await
    }

    pub fn mute(&self, id: ParticipantId, kind: String, muted: bool) {
        let _ = self
            .for_participant(id)
            .send(Command::Mute { id, kind, muted });
    }

    pub fn leave(&self, id: ParticipantId) {
        let _ = self.for_participant(id).send(Command::Leave { id });
    }

    /// The signaling connection `link` of participant `id` dropped: it keeps
    /// its seat for `rtc.resume_grace_secs` (unless another connection has
    /// already taken it over), then leaves.
    pub fn detach(&self, id: ParticipantId, link: mpsc::UnboundedSender<ToClient>) {
        let _ = self.for_participant(id).send(Command::Detach { id, link });
    }

    /// A new signaling connection takes over participant `id`'s seat: same
    /// tenant, identity and resume token. A connection still attached is
    /// closed (`left`). Returns the seat's room.
    pub async fn resume(
        &self,
        id: ParticipantId,
        token: String,
        tenant_id: String,
        identity: String,
        to_client: mpsc::UnboundedSender<ToClient>,
    ) -> Result<String, ResumeRefused> {
        let (reply, rx) = oneshot::channel();
        let _ = self.for_participant(id).send(Command::Resume {
            id,
            token,
            tenant_id,
            identity,
            to_client,
            reply,
        });
        rx.await.unwrap_or(Err(ResumeRefused))
    }
}

fn run(
    index: usize,
    socket: UdpSocket,
    mut worker: Worker,
    commands: crossbeam_channel::Receiver<Command>,
    events: mpsc::UnboundedSender<(Seat, RoomEvent)>,
    grace: Duration,
) {
    let local = socket.local_addr().expect("bound socket");
    let label = index.to_string();
    metrics::gauge!("continuum_sfu_udp_port", "worker" => label.clone()).set(local.port() as f64);
    let mut reported = continuum_sfu::WorkerStats::default();
    let mut last_gauges = Instant::now();
    let mut tenants_seen: HashSet<String> = HashSet::new();
    let mut seats: HashMap<ParticipantId, (Seat, mpsc::UnboundedSender<ToClient>)> = HashMap::new();
    let mut detached = Detached::new();
    // Batched IO: one recvmmsg per wake-up, one sendmmsg per drive.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    if let Err(e) = socket.set_nonblocking(true) {
        tracing::error!(error = %e, "media socket cannot be made non-blocking");
        return;
    }
    let mut batch = continuum_udp::Batch::new();
    loop {
        loop {
            match commands.try_recv() {
                Ok(cmd) => handle_command(&mut worker, &mut seats, &mut detached, grace, cmd),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        if !detached.is_empty() {
            detached.retain(|id, until| {
                let waiting = *until > now;
                if !waiting {
                    worker.leave(*id); // nobody resumed it in time
                }
                waiting
            });
        }
        let next = worker.drive(now);
        while let Some(out) = worker.poll_output() {
            match out {
                SfuOutput::Transmit {
                    destination,
                    contents,
                } => batch.send_owned(fd, destination, contents),
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
                SfuOutput::Notice { to, notice } => {
                    if let Some((_, tx)) = seats.get(&to) {
                        let _ = tx.send(ToClient::Notice(notice));
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
        let dropped = batch.flush();
        if dropped > 0 {
            // The kernel refused them (socket buffer full): this worker is saturated.
            metrics::counter!("continuum_sfu_send_dropped_total", "worker" => label.clone())
                .increment(dropped as u64);
        }
        export_stats(&worker.stats, &mut reported);
        // Gauges once a second, not on every wake-up.
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = Instant::now();
            metrics::gauge!("continuum_sfu_rooms", "worker" => label.clone())
                .set(worker.room_count() as f64);
            metrics::gauge!("continuum_sfu_participants", "worker" => label.clone())
                .set(worker.participant_count() as f64);
            export_tenant_gauges(&label, &seats, &mut tenants_seen);
        }
        // Wake for the next timer, a datagram, or (at most 5 ms later) a command.
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(5));
        match continuum_udp::wait_readable(fd, wait) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "media poll failed");
                continue;
            }
        }
        // Take what is queued, up to a batch, before driving again:
        // subscribers are serviced once per batch, and a packet waits for
        // at most one batch.
        match batch.recv(fd) {
            Ok(n) => {
                let now = Instant::now();
                for i in 0..n {
                    let (source, slot, len) = batch.slot(i);
                    let data = &slot[continuum_udp::HEADROOM..continuum_udp::HEADROOM + len];
                    worker.handle_datagram(now, source, local, data);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(error = %e, "media receive failed"),
        }
    }
}

fn handle_command(
    worker: &mut Worker,
    seats: &mut HashMap<ParticipantId, (Seat, mpsc::UnboundedSender<ToClient>)>,
    detached: &mut Detached,
    grace: Duration,
    cmd: Command,
) {
    match cmd {
        Command::Detach { id, link } => {
            if seats.get(&id).is_some_and(|(_, tx)| tx.same_channel(&link)) {
                detached.insert(id, Instant::now() + grace);
            }
        }
        Command::Resume {
            id,
            token,
            tenant_id,
            identity,
            to_client,
            reply,
        } => {
            let result = match seats.get_mut(&id) {
                Some((seat, tx))
                    if seat.tenant_id == tenant_id
                        && seat.identity == identity
                        && seat.resume_token.as_deref().is_some_and(|t| {
                            // Constant time: no hint of where a guess differs.
                            subtle::ConstantTimeEq::ct_eq(t.as_bytes(), token.as_bytes()).into()
                        }) =>
                {
                    let old = std::mem::replace(tx, to_client);
                    let _ = old.send(ToClient::Closed);
                    detached.remove(&id);
                    Ok(seat.room_id.clone())
                }
                _ => Err(ResumeRefused),
            };
            let _ = reply.send(result);
        }
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
        Command::Layer {
            id,
            origin,
            max_layer,
            reply,
        } => {
            let _ = reply.send(worker.set_max_layer(id, origin, max_layer));
        }
        Command::Candidate {
            id,
            candidate,
            reply,
        } => {
            let _ = reply.send(worker.candidate(id, &candidate));
        }
        Command::Subscribe {
            id,
            origin,
            kind,
            subscribed,
            reply,
        } => {
            let _ = reply.send(worker.set_subscribed(id, origin, kind, subscribed));
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
async fn record_room_events(
    store: Store,
    lobby: crate::lobby::Lobby,
    mut rx: mpsc::UnboundedReceiver<(Seat, RoomEvent)>,
) {
    let mut started: HashSet<String> = HashSet::new();
    while let Some((seat, ev)) = rx.recv().await {
        let room_key = (seat.tenant_id.clone(), seat.room_id.clone());
        match &ev {
            RoomEvent::Joined { participant, .. } => lobby.joined(
                &room_key,
                crate::lobby::Member {
                    participant: participant.to_string(),
                    identity: seat.identity.clone(),
                    name: seat.name.clone(),
                    role: seat.role,
                    muted: Default::default(),
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
            "continuum_sfu_packets_forwarded_total",
            now.packets_forwarded,
            reported.packets_forwarded,
        ),
        (
            "continuum_sfu_packets_not_forwarded_total",
            now.packets_not_forwarded,
            reported.packets_not_forwarded,
        ),
        (
            "continuum_sfu_layer_switches_total",
            now.layer_switches,
            reported.layer_switches,
        ),
        (
            "continuum_sfu_rtx_sent_total",
            now.rtx_sent,
            reported.rtx_sent,
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
            "continuum_sfu_layers_paused_total",
            now.layers_paused,
            reported.layers_paused,
        ),
        (
            "continuum_sfu_layers_resumed_total",
            now.layers_resumed,
            reported.layers_resumed,
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
    for (i, reason) in continuum_sfu::TIMER_REASONS.iter().enumerate() {
        let (value, before) = (now.timer_reasons[i], reported.timer_reasons[i]);
        if value > before {
            metrics::counter!("continuum_sfu_timer_wakeups_total", "reason" => *reason)
                .increment(value - before);
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
    worker: &str,
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
            metrics::gauge!("continuum_sfu_tenant_participants", "tenant" => tenant.clone(), "worker" => worker.to_owned())
                .set(0.0);
            metrics::gauge!("continuum_sfu_tenant_rooms", "tenant" => tenant.clone(), "worker" => worker.to_owned()).set(0.0);
        }
    }
    for (tenant, (participants, rooms)) in &per_tenant {
        metrics::gauge!("continuum_sfu_tenant_participants", "tenant" => tenant.to_string(), "worker" => worker.to_owned())
            .set(*participants as f64);
        metrics::gauge!("continuum_sfu_tenant_rooms", "tenant" => tenant.to_string(), "worker" => worker.to_owned())
            .set(rooms.len() as f64);
        tenants_seen.insert(tenant.to_string());
    }
}
