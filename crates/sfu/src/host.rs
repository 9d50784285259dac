//! The SFU's IO host: one thread and one UDP socket per [`Worker`], fed
//! commands from signaling (through the async [`Sfu`] handle), datagrams
//! and time. It speaks in opaque participant tags (`T`): whoever hosts the
//! SFU (the server) attaches its own notion of a seat to each participant
//! and gets it back with every [`Outcome`], so this crate never learns about
//! tenants, conversations or timelines. Metrics are exported here
//! ([`crate::metrics`]), like the TURN host does.

use crate::metrics::Exported;
use crate::worker::{JoinError, JoinRequest, Notice, RoomEvent, SfuOutput, SignalError};
use crate::{MediaKind, ParticipantId, Worker, WorkerConfig};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How the host runs its workers.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Media threads (0: one per core). Worker `i` listens on `udp_listen`'s port + i.
    pub workers: usize,
    pub udp_listen: SocketAddr,
    /// The address browsers reach (needed when listening on 0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// Settings shared by every worker (its address and participant ids are set per worker).
    pub worker: WorkerConfig,
    /// How long a seat whose signaling link dropped waits for a resume.
    pub resume_grace: Duration,
}

/// Why the host could not start (each names the setting to change).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("rtc.udp_listen port + {index} workers exceeds 65535")]
    PortRange { index: usize },
    #[error(
        "cannot bind the media UDP port {addr} (worker {index}): {source}; set rtc.udp_listen \
         (worker i listens on its port + i) or rtc.workers"
    )]
    Bind {
        addr: SocketAddr,
        index: usize,
        source: std::io::Error,
    },
    #[error("rtc.udp_listen is {0}: set rtc.public_ip to the address browsers can reach")]
    NoPublicIp(SocketAddr),
    #[error("cannot start a media thread: {0}")]
    Thread(std::io::Error),
}

/// Why a `resume` was refused (one reason only: no hints for guessers).
#[derive(Debug, thiserror::Error)]
#[error("no such session to resume (it ended, or the token is wrong): join again")]
pub struct ResumeRefused;

/// What the host tells a participant's signaling link.
#[derive(Debug)]
pub enum ToParticipant {
    /// A renegotiation offer (tracks came or went).
    Offer(String),
    /// The room's active speaker changed.
    Speaker {
        participant: Option<ParticipantId>,
        identity: Option<String>,
    },
    /// Tracks, quality, layers to pause.
    Notice(Notice),
    /// Another participant muted or unmuted a track.
    Muted {
        participant: ParticipantId,
        identity: String,
        kind: String,
        muted: bool,
    },
    /// The seat is gone (left, timed out, or taken over by a resume).
    Closed,
}

/// A room event with the tag of the participant it is about: what the
/// host's owner records (timeline, roster).
#[derive(Debug)]
pub struct Outcome<T> {
    pub tag: T,
    pub event: RoomEvent,
}

/// A participant to seat: the owner's tag, the join itself, and the secret
/// a later signaling link shows to take the seat over (none: no resume).
pub struct Joining<T> {
    pub tag: T,
    pub request: JoinRequest,
    pub resume_token: Option<String>,
}

type Link = mpsc::UnboundedSender<ToParticipant>;
type Reply<T, E> = oneshot::Sender<Result<T, E>>;
/// Whether a resuming caller owns the seat (same tenant and identity).
type Owns<T> = Box<dyn FnOnce(&T) -> bool + Send>;

enum Command<T> {
    Join(Joining<T>, Link, Reply<(ParticipantId, String), JoinError>),
    Answer(ParticipantId, String, Reply<(), SignalError>),
    Offer(ParticipantId, String, Reply<String, SignalError>),
    Candidate(ParticipantId, String, Reply<(), SignalError>),
    Mute(ParticipantId, String, bool),
    Leave(ParticipantId),
    Layer(
        ParticipantId,
        Option<ParticipantId>,
        usize,
        Reply<usize, SignalError>,
    ),
    Subscribe {
        id: ParticipantId,
        origin: ParticipantId,
        kind: Option<MediaKind>,
        subscribed: bool,
        reply: Reply<usize, SignalError>,
    },
    /// The signaling link dropped: the seat waits for a resume.
    Detach(ParticipantId, Link),
    Resume {
        id: ParticipantId,
        token: String,
        owns: Owns<T>,
        link: Link,
        reply: Reply<T, ResumeRefused>,
    },
}

/// Handle to the media workers. A room lives on one worker (chosen by
/// hashing its name), and a participant id names its worker
/// (`(id - 1) % workers`), so commands need no lookup table.
pub struct Sfu<T> {
    shards: Arc<[crossbeam_channel::Sender<Command<T>>]>,
    udp_addrs: Arc<[SocketAddr]>,
}

impl<T> Clone for Sfu<T> {
    fn clone(&self) -> Self {
        Sfu {
            shards: self.shards.clone(),
            udp_addrs: self.udp_addrs.clone(),
        }
    }
}

impl<T: Clone + Send + 'static> Sfu<T> {
    /// Binds one socket per worker and starts their threads. Room events
    /// arrive on the returned receiver, tagged.
    pub fn start(
        cfg: HostConfig,
    ) -> Result<(Sfu<T>, mpsc::UnboundedReceiver<Outcome<T>>), HostError> {
        let workers = match cfg.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        let mut shards = Vec::with_capacity(workers);
        let mut udp_addrs = Vec::with_capacity(workers);
        for index in 0..workers {
            let mut listen = cfg.udp_listen;
            if listen.port() != 0 {
                let port = listen
                    .port()
                    .checked_add(index as u16)
                    .ok_or(HostError::PortRange { index })?;
                listen.set_port(port);
            }
            let socket = UdpSocket::bind(listen).map_err(|source| HostError::Bind {
                addr: listen,
                index,
                source,
            })?;
            let bound = socket.local_addr().map_err(HostError::Thread)?;
            let public_ip = match (cfg.public_ip, bound.ip()) {
                (Some(ip), _) => ip,
                (None, ip) if ip.is_unspecified() => return Err(HostError::NoPublicIp(bound)),
                (None, ip) => ip,
            };
            let public = SocketAddr::new(public_ip, bound.port());
            let worker = Worker::new(WorkerConfig {
                public_addr: public,
                first_participant_id: index as u64 + 1,
                participant_id_stride: workers as u64,
                ..cfg.worker.clone()
            });
            let (commands, rx) = crossbeam_channel::unbounded();
            let mut host = WorkerHost {
                label: index.to_string(),
                worker,
                seats: HashMap::new(),
                detached: HashMap::new(),
                grace: cfg.resume_grace,
                outcomes: outcomes.clone(),
            };
            std::thread::Builder::new()
                .name(format!("continuum-media-{index}"))
                .spawn(move || host.run(socket, rx))
                .map_err(HostError::Thread)?;
            tracing::info!(worker = index, %bound, %public, "media worker listening");
            shards.push(commands);
            udp_addrs.push(public);
        }
        let sfu = Sfu {
            shards: shards.into(),
            udp_addrs: udp_addrs.into(),
        };
        Ok((sfu, outcomes_rx))
    }

    /// The advertised media address of each worker.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    fn for_room(&self, room: &str) -> &crossbeam_channel::Sender<Command<T>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    fn for_participant(&self, id: ParticipantId) -> &crossbeam_channel::Sender<Command<T>> {
        &self.shards[(id.0.saturating_sub(1) % self.shards.len() as u64) as usize]
    }

    /// Seats a participant: its id and the SDP answer to its offer.
    pub async fn join(
        &self,
        joining: Joining<T>,
        link: Link,
    ) -> Result<(ParticipantId, String), JoinError> {
        let (reply, rx) = oneshot::channel();
        let _ = self
            .for_room(&joining.request.room)
            .send(Command::Join(joining, link, reply));
        rx.await
            .unwrap_or_else(|_| Err(JoinError::Refused("the media worker is not running".into())))
    }

    /// Sends `id`'s media thread the command `make` builds around a reply
    /// channel, and waits for the answer (a participant gone meanwhile is
    /// unknown).
    async fn ask<R>(
        &self,
        id: ParticipantId,
        make: impl FnOnce(Reply<R, SignalError>) -> Command<T>,
    ) -> Result<R, SignalError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.for_participant(id).send(make(reply));
        rx.await.unwrap_or(Err(SignalError::UnknownParticipant))
    }

    pub async fn answer(&self, id: ParticipantId, sdp: String) -> Result<(), SignalError> {
        self.ask(id, |reply| Command::Answer(id, sdp, reply)).await
    }

    pub async fn offer(&self, id: ParticipantId, sdp: String) -> Result<String, SignalError> {
        self.ask(id, |reply| Command::Offer(id, sdp, reply)).await
    }

    pub async fn candidate(&self, id: ParticipantId, candidate: String) -> Result<(), SignalError> {
        self.ask(id, |reply| Command::Candidate(id, candidate, reply))
            .await
    }

    /// Subscribes `id` to `origin`'s tracks (of `kind`, or all) or unsubscribes it.
    pub async fn set_subscribed(
        &self,
        id: ParticipantId,
        origin: ParticipantId,
        kind: Option<MediaKind>,
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
        self.ask(id, |reply| Command::Layer(id, origin, max_layer, reply))
            .await
    }

    /// Tells the others in the room that `id` muted or unmuted `kind`.
    pub fn mute(&self, id: ParticipantId, kind: String, muted: bool) {
        let _ = self
            .for_participant(id)
            .send(Command::Mute(id, kind, muted));
    }

    pub fn leave(&self, id: ParticipantId) {
        let _ = self.for_participant(id).send(Command::Leave(id));
    }

    /// The signaling link of participant `id` dropped: it keeps its seat for
    /// the resume grace (unless another link has already taken it over),
    /// then leaves.
    pub fn detach(&self, id: ParticipantId, link: Link) {
        let _ = self.for_participant(id).send(Command::Detach(id, link));
    }

    /// A new signaling link takes over participant `id`'s seat: it shows the
    /// seat's resume token, and `owns` accepts the seat's tag. A link still
    /// attached is told `Closed`. Returns the seat's tag.
    pub async fn resume(
        &self,
        id: ParticipantId,
        token: String,
        owns: impl FnOnce(&T) -> bool + Send + 'static,
        link: Link,
    ) -> Result<T, ResumeRefused> {
        let (reply, rx) = oneshot::channel();
        let _ = self.for_participant(id).send(Command::Resume {
            id,
            token,
            owns: Box::new(owns),
            link,
            reply,
        });
        rx.await.unwrap_or(Err(ResumeRefused))
    }
}

/// What the host keeps of a seated participant.
struct Seat<T> {
    tag: T,
    room: String,
    identity: String,
    resume_token: Option<String>,
    link: Link,
}

/// One worker with its seats, on its own thread.
struct WorkerHost<T> {
    label: String,
    worker: Worker,
    seats: HashMap<ParticipantId, Seat<T>>,
    /// Seats whose signaling link dropped, and when their grace ends.
    detached: HashMap<ParticipantId, Instant>,
    grace: Duration,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
}

impl<T: Clone + Send + 'static> WorkerHost<T> {
    fn run(&mut self, socket: UdpSocket, commands: crossbeam_channel::Receiver<Command<T>>) {
        let local = socket.local_addr().expect("bound socket");
        let mut exported = Exported::new(&self.label, local.port());
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
                    Ok(cmd) => self.command(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            let expired: Vec<ParticipantId> = self
                .detached
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                // Nobody resumed it in time: said first (PSTN fallback may
                // call the patient), then the seat goes.
                self.detached.remove(&id);
                if let Some(seat) = self.seats.get(&id) {
                    let event = RoomEvent::SignalingLost {
                        room: seat.room.clone(),
                        participant: id,
                        identity: seat.identity.clone(),
                        grace: self.grace,
                    };
                    let _ = self.outcomes.send(Outcome {
                        tag: seat.tag.clone(),
                        event,
                    });
                }
                self.worker.leave(id);
            }
            let next = self.worker.drive(now);
            while let Some(out) = self.worker.poll_output() {
                match out {
                    SfuOutput::Transmit {
                        destination,
                        contents,
                    } => batch.send_owned(fd, destination, contents),
                    other => self.output(other),
                }
            }
            exported.send_dropped(batch.flush());
            exported.export(&self.worker);
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
                        self.worker.handle_datagram(now, source, local, data);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::debug!(error = %e, "media receive failed"),
            }
        }
    }

    /// Everything the worker says but datagrams: to links, to the owner, to metrics.
    fn output(&mut self, out: SfuOutput) {
        match out {
            SfuOutput::Transmit { .. } => {}
            SfuOutput::Quality { sample, .. } => crate::metrics::record_quality(&sample),
            SfuOutput::Speaker { room, participant } => {
                let identity = participant
                    .and_then(|p| self.seats.get(&p))
                    .map(|s| s.identity.clone());
                for seat in self.seats.values().filter(|s| s.room == room) {
                    let _ = seat.link.send(ToParticipant::Speaker {
                        participant,
                        identity: identity.clone(),
                    });
                }
            }
            SfuOutput::Offer { participant, sdp } => {
                if let Some(seat) = self.seats.get(&participant) {
                    let _ = seat.link.send(ToParticipant::Offer(sdp));
                }
            }
            SfuOutput::Notice { to, notice } => {
                if let Some(seat) = self.seats.get(&to) {
                    let _ = seat.link.send(ToParticipant::Notice(notice));
                }
            }
            SfuOutput::Event(event) => {
                let id = event.participant();
                let tag = match &event {
                    RoomEvent::Left { .. } => self.seats.remove(&id).map(|seat| {
                        self.detached.remove(&id);
                        let _ = seat.link.send(ToParticipant::Closed);
                        seat.tag
                    }),
                    _ => self.seats.get(&id).map(|s| s.tag.clone()),
                };
                if let Some(tag) = tag {
                    let _ = self.outcomes.send(Outcome { tag, event });
                }
            }
        }
    }

    fn command(&mut self, cmd: Command<T>) {
        let worker = &mut self.worker;
        match cmd {
            Command::Join(joining, link, reply) => {
                let (room, identity) = (
                    joining.request.room.clone(),
                    joining.request.identity.clone(),
                );
                let result = worker.join(Instant::now(), joining.request);
                if let Ok((id, _)) = &result {
                    let seat = Seat {
                        tag: joining.tag,
                        room,
                        identity,
                        resume_token: joining.resume_token,
                        link,
                    };
                    self.seats.insert(*id, seat);
                }
                let _ = reply.send(result);
            }
            Command::Answer(id, sdp, reply) => {
                let _ = reply.send(worker.answer(id, &sdp));
            }
            Command::Offer(id, sdp, reply) => {
                let _ = reply.send(worker.offer(id, &sdp));
            }
            Command::Candidate(id, candidate, reply) => {
                let _ = reply.send(worker.candidate(id, &candidate));
            }
            Command::Leave(id) => worker.leave(id),
            Command::Layer(id, origin, max_layer, reply) => {
                let _ = reply.send(worker.set_max_layer(id, origin, max_layer));
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
            Command::Mute(id, kind, muted) => {
                let Some(me) = self.seats.get(&id) else {
                    return;
                };
                for (other, seat) in &self.seats {
                    if *other != id && seat.room == me.room {
                        let _ = seat.link.send(ToParticipant::Muted {
                            participant: id,
                            identity: me.identity.clone(),
                            kind: kind.clone(),
                            muted,
                        });
                    }
                }
            }
            Command::Detach(id, link) => {
                if self
                    .seats
                    .get(&id)
                    .is_some_and(|s| s.link.same_channel(&link))
                {
                    self.detached.insert(id, Instant::now() + self.grace);
                }
            }
            Command::Resume {
                id,
                token,
                owns,
                link,
                reply,
            } => {
                let result = match self.seats.get_mut(&id) {
                    Some(seat)
                        if seat.resume_token.as_deref().is_some_and(|t| {
                            // Constant time: no hint of where a guess differs.
                            subtle::ConstantTimeEq::ct_eq(t.as_bytes(), token.as_bytes()).into()
                        }) && owns(&seat.tag) =>
                    {
                        let old = std::mem::replace(&mut seat.link, link);
                        let _ = old.send(ToParticipant::Closed);
                        self.detached.remove(&id);
                        Ok(seat.tag.clone())
                    }
                    _ => Err(ResumeRefused),
                };
                let _ = reply.send(result);
            }
        }
    }
}
