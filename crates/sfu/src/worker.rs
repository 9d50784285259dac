//! One media worker: every room on one thread and one UDP port.

use crate::participant::{Mode, Participant, ParticipantId, Polled};
use crate::quality::{QualityChange, QualitySample, QualityThresholds};
use crate::sdp_problem::{plain_reason, sdp_problem};
use crate::stun;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, IceCreds, Input, Rtc};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The address advertised to clients as our host candidate.
    pub public_addr: SocketAddr,
    /// Participants per room before joins are refused.
    pub max_participants_per_room: usize,
    pub quality: QualityThresholds,
    /// A participant that leaves our renegotiation offer unanswered this long is
    /// disconnected (it would otherwise never see new tracks).
    pub answer_timeout: Duration,
    /// Participant ids are `first_participant_id + k * participant_id_stride`,
    /// so ids from several workers never collide and name their worker.
    pub first_participant_id: u64,
    pub participant_id_stride: u64,
    /// Send subscribers' media through str0m's pacer (smooths keyframe
    /// bursts, costs a wake-up every few ms per subscriber). Off by default,
    /// like mediasoup: packets leave as they arrive; the bandwidth estimate
    /// still drives simulcast layer choice.
    pub pacing: bool,
    /// Where each subscriber's bandwidth estimate starts.
    pub initial_bwe_bps: u64,
    /// Nothing at all received from a connected participant (no media, no
    /// RTCP, no ICE) for this long is a [`RoomEvent::MediaStalled`]: its
    /// device or network is gone, long before ICE gives up. What PSTN
    /// fallback starts from.
    pub media_stall_after: Duration,
    /// A participant from which nothing at all has arrived this long after
    /// it joined (ICE or DTLS never got through: a firewall, no TURN) is a
    /// [`RoomEvent::ConnectFailed`]: video is not viable for it.
    pub connect_timeout: Duration,
}

impl WorkerConfig {
    /// Defaults for one worker advertising `public_addr`.
    pub fn new(public_addr: SocketAddr) -> Self {
        WorkerConfig {
            public_addr,
            max_participants_per_room: 16,
            quality: QualityThresholds::default(),
            answer_timeout: Duration::from_secs(10),
            first_participant_id: 1,
            participant_id_stride: 1,
            pacing: false,
            initial_bwe_bps: INITIAL_BWE_BPS,
            media_stall_after: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

pub struct JoinRequest {
    pub room: String,
    pub identity: String,
    pub offer_sdp: String,
    pub mode: Mode,
    /// This room's own limit (never above the worker's).
    pub max_participants: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the SDP offer could not be parsed: {0}")]
    BadOffer(String),
    #[error("the offer was refused: {0}")]
    Refused(String),
    #[error("room `{room}` is full ({limit} participants)")]
    RoomFull { room: String, limit: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("no such participant (it left or was disconnected)")]
    UnknownParticipant,
    #[error("malformed SDP: {0}")]
    BadSdp(String),
    #[error("SDP refused: {0}")]
    Refused(String),
}

/// Something that happened in a room, for the conversation timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    Joined {
        room: String,
        participant: ParticipantId,
        identity: String,
    },
    Connected {
        room: String,
        participant: ParticipantId,
        identity: String,
    },
    Left {
        room: String,
        participant: ParticipantId,
        identity: String,
        room_now_empty: bool,
    },
    /// Quality crossed the thresholds for the hold time (see [`crate::quality`]).
    QualityDegraded {
        room: String,
        participant: ParticipantId,
        identity: String,
        reasons: Vec<&'static str>,
        held: Duration,
        sample: QualitySample,
    },
    QualityRecovered {
        room: String,
        participant: ParticipantId,
        identity: String,
        held: Duration,
        sample: QualitySample,
    },
    /// Nothing has come from the participant for `silent` (see
    /// [`WorkerConfig::media_stall_after`]); it keeps its seat.
    MediaStalled {
        room: String,
        participant: ParticipantId,
        identity: String,
        silent: Duration,
    },
    /// Nothing has ever arrived from the participant, `waited` after it
    /// joined (see [`WorkerConfig::connect_timeout`]); it keeps its seat,
    /// and a later packet reports [`RoomEvent::MediaResumed`].
    ConnectFailed {
        room: String,
        participant: ParticipantId,
        identity: String,
        waited: Duration,
    },
    /// Packets from a stalled participant again.
    MediaResumed {
        room: String,
        participant: ParticipantId,
        identity: String,
    },
    /// The participant's signaling link dropped and no link resumed its seat
    /// within the grace: it leaves next (reported by the IO host, which
    /// holds the grace; `Left` follows).
    SignalingLost {
        room: String,
        participant: ParticipantId,
        identity: String,
        grace: Duration,
    },
}

impl RoomEvent {
    /// The participant the event is about.
    pub fn participant(&self) -> ParticipantId {
        match self {
            RoomEvent::Joined { participant, .. }
            | RoomEvent::Connected { participant, .. }
            | RoomEvent::Left { participant, .. }
            | RoomEvent::QualityDegraded { participant, .. }
            | RoomEvent::QualityRecovered { participant, .. }
            | RoomEvent::MediaStalled { participant, .. }
            | RoomEvent::MediaResumed { participant, .. }
            | RoomEvent::ConnectFailed { participant, .. }
            | RoomEvent::SignalingLost { participant, .. } => *participant,
        }
    }
}

/// What a client is told about the room, beyond media (routed to its signaling).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// `origin` publishes a track (its m-line `mid` on the publisher's side):
    /// sent to everyone else when it opens, and to a newcomer for each track
    /// already in the room.
    TrackPublished {
        origin: ParticipantId,
        identity: String,
        kind: str0m::media::MediaKind,
        mid: String,
    },
    /// `origin`'s track is gone (it left).
    TrackUnpublished { origin: ParticipantId, mid: String },
    /// Stop sending the `paused` simulcast layers (rids) of your track `mid`
    /// and send the others: nobody takes the paused ones (see
    /// `Worker::dynacast`). Layers we never saw are not named.
    PauseLayers { mid: String, paused: Vec<String> },
    /// `origin`'s connection quality: to itself with every sample (about once
    /// a second), to the others when its rating changes.
    Quality {
        origin: ParticipantId,
        identity: String,
        rating: crate::quality::Rating,
        sample: QualitySample,
    },
}

#[derive(Debug)]
pub enum SfuOutput {
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// A renegotiation offer for the participant (tracks came or went).
    Offer {
        participant: ParticipantId,
        sdp: String,
    },
    /// The room's active speaker changed (`None`: nobody is speaking).
    Speaker {
        room: String,
        participant: Option<ParticipantId>,
    },
    /// Something participant `to`'s client is told about the room.
    Notice {
        to: ParticipantId,
        notice: Notice,
    },
    /// A quality measurement (about once a second per participant), for metrics.
    Quality {
        participant: ParticipantId,
        sample: QualitySample,
    },
    Event(RoomEvent),
}

/// How long a participant whose ICE connection dropped keeps its seat,
/// waiting for an ICE restart (network change, Wi-Fi to cellular).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(15);

/// Datagrams an IO loop should hand the worker before driving it and sending
/// its output: subscribers fed by those packets are serviced once per batch
/// (cheaper), and a packet waits for at most one batch (bounded delay).
pub const RECV_BATCH: usize = 32;

/// Where a subscriber's bandwidth estimate starts by default: enough for a
/// middle simulcast layer; TWCC feedback moves it within seconds.
pub const INITIAL_BWE_BPS: u64 = 800_000;

pub struct Worker {
    cfg: WorkerConfig,
    next_id: u64,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<String, Vec<ParticipantId>>,
    speakers: HashMap<String, crate::speaker::SpeakerDetector>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
    outputs: VecDeque<SfuOutput>,
    /// Participants to give time and poll (see [`Worker::service`]).
    queue: VecDeque<ParticipantId>,
    /// Participants whose `Rtc` died, to remove at the end of `drive`.
    gone: Vec<ParticipantId>,
    /// Participants' timers, earliest first, so `drive` touches only those
    /// due (not every participant per drive: a worker holds hundreds and is
    /// driven thousands of times a second). Moving a timer pushes a new
    /// entry; the old one goes stale and is skipped when it comes up (live
    /// entries match the participant's `next_timeout`).
    timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
    /// When grace periods and speakers are next checked (see [`HOUSEKEEPING`]).
    next_housekeeping: Option<Instant>,
    /// When publishers' simulcast layers are next reviewed (see [`Worker::dynacast`]).
    next_dynacast: Option<Instant>,
    pub stats: WorkerStats,
}

/// How often `drive` checks the second-scale deadlines (reconnect grace,
/// answer timeout) and the active speaker, rather than on every drive.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How often publishers' simulcast layers are reviewed (subscribers
/// re-choose layers twice a second).
const DYNACAST_EVERY: Duration = Duration::from_millis(500);
/// A layer nobody has wanted for this long is paused at the publisher;
/// one that is wanted again resumes at once.
const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// str0m's reasons for waking a participant's `Rtc`, as metric labels.
pub const TIMER_REASONS: [&str; 9] = [
    "ice_dtls_sctp",
    "rtcp_feedback",
    "nack",
    "twcc",
    "pacer",
    "bwe",
    "receive_reorder",
    "stats",
    "other",
];

/// Index into [`TIMER_REASONS`].
pub(crate) fn timer_reason(r: str0m::Reason) -> u8 {
    use str0m::Reason::*;
    match r {
        Ice | DTLS | Sctp | Channel => 0,
        Feedback => 1,
        Nack => 2,
        Twcc => 3,
        Pacer(_) => 4,
        BweDelayControl | BweProbeControl => 5,
        ReceiveReorder => 6,
        Stats => 7,
        _ => 8,
    }
}

/// Monotonic counters, exported by the IO loop as Prometheus counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    /// Datagrams no participant would take (garbage, stale, wrong credentials).
    pub unknown_datagrams: u64,
    /// RTP packets written to subscribers, and their payload bytes.
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    /// Packets not forwarded to a subscriber (another simulcast layer, waiting
    /// for a keyframe, a codec it did not accept).
    pub packets_not_forwarded: u64,
    /// Simulcast layer switches made for subscribers.
    pub layer_switches: u64,
    /// Times a participant's `Rtc` was given time and polled (its timer was
    /// due or it had packets to send): the SFU's main per-participant cost.
    pub services: u64,
    /// Of those, the ones due to the participant's own timer.
    pub timer_services: u64,
    /// Timer services by str0m's reason for the timer (see [`TIMER_REASONS`]):
    /// where the per-participant cost that is not forwarding comes from.
    pub timer_reasons: [u64; TIMER_REASONS.len()],
    /// Packets sent to subscribers beyond those forwarded: NACK-driven
    /// retransmissions (RTX) and BWE probing padding.
    pub rtx_sent: u64,
    /// Keyframe requests relayed from subscribers to publishers.
    pub keyframe_requests: u64,
    /// Simulcast layers publishers were asked to pause (nobody took them)
    /// and to resume.
    pub layers_paused: u64,
    pub layers_resumed: u64,
    pub participants_joined: u64,
    pub joins_refused: u64,
    /// RTCP feedback received from subscribers (they lost packets or need a keyframe).
    pub nacks_received: u64,
    pub plis_received: u64,
    pub firs_received: u64,
    /// Data-channel messages delivered to other participants.
    pub data_messages_relayed: u64,
    /// RTCP feedback sent to publishers.
    pub nacks_sent: u64,
    pub plis_sent: u64,
    pub firs_sent: u64,
}

impl Worker {
    pub fn new(cfg: WorkerConfig) -> Self {
        crate::init_crypto();
        Worker {
            next_id: cfg.first_participant_id.max(1),
            cfg,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            speakers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            outputs: VecDeque::new(),
            queue: VecDeque::new(),
            gone: Vec::new(),
            timers: BinaryHeap::new(),
            next_housekeeping: None,
            next_dynacast: None,
            stats: WorkerStats::default(),
        }
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Admits a participant with its SDP offer; returns its id and our answer.
    pub fn join(
        &mut self,
        now: Instant,
        req: JoinRequest,
    ) -> Result<(ParticipantId, String), JoinError> {
        let result = self.admit(now, req);
        match &result {
            Ok(_) => self.stats.participants_joined += 1,
            Err(_) => self.stats.joins_refused += 1,
        }
        result
    }

    fn admit(
        &mut self,
        now: Instant,
        req: JoinRequest,
    ) -> Result<(ParticipantId, String), JoinError> {
        let members = self.rooms.get(&req.room).map_or(0, Vec::len);
        let limit = req
            .max_participants
            .map_or(self.cfg.max_participants_per_room, |m| {
                m.min(self.cfg.max_participants_per_room)
            });
        if members >= limit {
            return Err(JoinError::RoomFull {
                room: req.room,
                limit,
            });
        }
        let offer = SdpOffer::from_sdp_string(&req.offer_sdp)
            .map_err(|_| JoinError::BadOffer(sdp_problem(&req.offer_sdp)))?;
        let creds = IceCreds::new();
        let mut rtc = Rtc::builder()
            // RTP-level forwarding: packets go out as they came in (numbers
            // rewritten), never depacketized into frames and packetized again.
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_vp9(true)
            .enable_bwe(Some(str0m::bwe::Bitrate::bps(self.cfg.initial_bwe_bps)))
            .set_ice_lite(true)
            .set_local_ice_credentials(creds.clone())
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let candidate = Candidate::host(self.cfg.public_addr, "udp").map_err(|e| {
            JoinError::Refused(plain_reason(e.to_string(), "the offer was refused"))
        })?;
        rtc.add_local_candidate(candidate);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| {
            JoinError::Refused(plain_reason(e.to_string(), "the offer was refused"))
        })?;

        let id = ParticipantId(self.next_id);
        self.next_id += self.cfg.participant_id_stride.max(1);
        let mut p = Participant::new(
            id,
            req.room.clone(),
            req.identity.clone(),
            rtc,
            req.mode,
            self.cfg.quality,
        );
        p.pacing = self.cfg.pacing;
        p.joined_at = now;
        p.next_timeout = now;
        p.timer_armed = true;
        self.timers.push(Reverse((now, id)));
        // Everything already published in the room is offered to the newcomer.
        for other in self.rooms.get(&req.room).into_iter().flatten() {
            if let Some(o) = self.participants.get(other) {
                for t in &o.tracks_in {
                    p.add_track_out(std::sync::Arc::downgrade(&t.track));
                    self.outputs.push_back(SfuOutput::Notice {
                        to: id,
                        notice: Notice::TrackPublished {
                            origin: o.id,
                            identity: o.identity.clone(),
                            kind: t.track.kind,
                            mid: t.track.mid.to_string(),
                        },
                    });
                }
            }
        }
        self.by_ufrag.insert(creds.ufrag, id);
        self.participants.insert(id, p);
        self.rooms.entry(req.room.clone()).or_default().push(id);
        self.outputs.push_back(SfuOutput::Event(RoomEvent::Joined {
            room: req.room,
            participant: id,
            identity: req.identity,
        }));
        Ok((id, answer.to_sdp_string()))
    }

    pub fn leave(&mut self, id: ParticipantId) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        p.rtc.disconnect();
        self.by_addr.retain(|_, v| *v != id);
        self.by_ufrag.retain(|_, v| *v != id);
        let room_now_empty = match self.rooms.get_mut(&*p.room) {
            Some(members) => {
                members.retain(|m| *m != id);
                // Its tracks go away: everyone else renegotiates.
                for m in members.iter() {
                    if let Some(o) = self.participants.get_mut(m) {
                        o.renegotiate = true;
                    }
                    for t in &p.tracks_in {
                        self.outputs.push_back(SfuOutput::Notice {
                            to: *m,
                            notice: Notice::TrackUnpublished {
                                origin: id,
                                mid: t.track.mid.to_string(),
                            },
                        });
                    }
                }
                members.is_empty()
            }
            None => true,
        };
        if room_now_empty {
            self.rooms.remove(&*p.room);
            self.speakers.remove(&*p.room);
        } else if let Some(d) = self.speakers.get_mut(&*p.room) {
            d.forget(id);
        }
        self.outputs.push_back(SfuOutput::Event(RoomEvent::Left {
            room: p.room.to_string(),
            participant: id,
            identity: p.identity,
            room_now_empty,
        }));
    }

    /// The client's answer to our renegotiation offer.
    pub fn answer(&mut self, id: ParticipantId, sdp: &str) -> Result<(), SignalError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SignalError::UnknownParticipant)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|_| SignalError::BadSdp(sdp_problem(sdp)))?;
        p.accept_answer(answer).map_err(|e| {
            SignalError::Refused(plain_reason(
                e.to_string(),
                "the answer does not match our offer",
            ))
        })
    }

    /// The subscriber's requested video quality (its rendered size): the
    /// highest simulcast layer it gets from `origin`'s tracks (or everyone's),
    /// 0 being the lowest. Returns how many tracks it applies to now.
    pub fn set_max_layer(
        &mut self,
        id: ParticipantId,
        origin: Option<ParticipantId>,
        max_layer: usize,
    ) -> Result<usize, SignalError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SignalError::UnknownParticipant)?;
        Ok(p.set_max_layer(origin, max_layer))
    }

    /// Subscribes `id` to `origin`'s tracks (of `kind`, or all of them) or
    /// unsubscribes it: nothing of them is forwarded until it subscribes
    /// again (video then restarts at a keyframe). Returns the tracks affected.
    pub fn set_subscribed(
        &mut self,
        id: ParticipantId,
        origin: ParticipantId,
        kind: Option<str0m::media::MediaKind>,
        subscribed: bool,
    ) -> Result<usize, SignalError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SignalError::UnknownParticipant)?;
        let n = p.set_subscribed(origin, kind, subscribed);
        if !p.queued {
            p.queued = true;
            self.queue.push_back(id);
        }
        Ok(n)
    }

    /// A trickled remote candidate (`candidate:...` or `a=candidate:...`). An
    /// ICE-lite server learns addresses from the client's checks, so this is
    /// only validated and recorded; an empty string is end-of-candidates.
    pub fn candidate(&mut self, id: ParticipantId, candidate: &str) -> Result<(), SignalError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SignalError::UnknownParticipant)?;
        let line = candidate.trim().trim_start_matches("a=");
        if line.is_empty() {
            return Ok(());
        }
        let c = Candidate::from_sdp_string(line).map_err(|_| {
            SignalError::BadSdp(
                "the candidate is not an ICE candidate line (`candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>`)".into(),
            )
        })?;
        p.rtc.add_remote_candidate(c);
        Ok(())
    }

    /// A client-initiated renegotiation (it added or removed its own tracks).
    pub fn offer(&mut self, id: ParticipantId, sdp: &str) -> Result<String, SignalError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SignalError::UnknownParticipant)?;
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|_| SignalError::BadSdp(sdp_problem(sdp)))?;
        let answer = p
            .accept_offer(offer)
            .map_err(|e| {
                SignalError::Refused(plain_reason(e.to_string(), "the offer was refused"))
            })?
            .to_sdp_string();
        // An ICE restart gives us new local credentials: checks from the
        // client's new address will carry the new ufrag.
        if let Some(ufrag) = answer
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        {
            self.by_ufrag.retain(|_, v| *v != id);
            self.by_ufrag.insert(ufrag.to_owned(), id);
        }
        Ok(answer)
    }

    /// Routes one datagram to its participant: by remote address once known,
    /// else by the ICE ufrag of a STUN binding request. Returns false if nobody
    /// took it (counted in `unknown_datagrams`).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let Ok(contents) = data.try_into() else {
            self.stats.unknown_datagrams += 1;
            return false;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let id = match self.by_addr.get(&source) {
            Some(id) => Some(*id),
            None => stun::local_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied()),
        };
        let Some(p) = id.and_then(|id| self.participants.get_mut(&id)) else {
            self.stats.unknown_datagrams += 1;
            return false;
        };
        if !p.rtc.accepts(&input) {
            self.stats.unknown_datagrams += 1;
            return false;
        }
        self.by_addr.insert(source, p.id);
        p.last_heard = Some(now);
        let id = p.id;
        if let Err(e) = p.rtc.handle_input(input) {
            tracing::info!(participant = %p.id, error = ?e, "bad input; disconnecting");
            p.rtc.disconnect();
        }
        // Poll now: in RTP mode str0m holds a single received packet. The
        // subscribers it fed are serviced once per batch, in `drive`.
        self.poll_participant(id, now);
        true
    }

    /// Polls queued participants until none has anything left: a
    /// publisher's packets mark its subscribers, whose `Rtc`s then need time
    /// and polling to put them on the wire (str0m's RTP mode holds one
    /// received packet at a time, so a participant is polled right after
    /// every datagram).
    fn service(&mut self, now: Instant) {
        while let Some(id) = self.queue.pop_front() {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            p.queued = false;
            self.stats.services += 1;
            if p.rtc.is_alive() {
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
            self.poll_participant(id, now);
        }
    }

    fn poll_participant(&mut self, id: ParticipantId, now: Instant) {
        while let Some(p) = self.participants.get_mut(&id) {
            if let Some(offer) = p.offer_if_needed(now) {
                self.outputs.push_back(SfuOutput::Offer {
                    participant: id,
                    sdp: offer.to_sdp_string(),
                });
            }
            match p.poll(now) {
                Polled::Timeout(t) => {
                    // (Coalescing these timers was tried: a 10–20 ms floor
                    // halves services but holds packets in str0m's queues and
                    // starves BWE, so str0m gets exactly the wake-ups it asks for.)
                    if t != p.next_timeout || !p.timer_armed {
                        p.next_timeout = t;
                        p.timer_armed = true;
                        self.timers.push(Reverse((t, id)));
                    }
                    p.next_reason = timer_reason(p.rtc.last_timeout_reason());
                    break;
                }
                Polled::Nothing => {}
                Polled::Data { binary, data } => {
                    let (room, stats) = (p.room.clone(), &mut self.stats);
                    each_other(
                        &self.rooms,
                        &mut self.participants,
                        &mut self.queue,
                        &room,
                        id,
                        |o| {
                            let sent = o.send_data(binary, &data);
                            stats.data_messages_relayed += sent as u64;
                            sent
                        },
                    );
                }
                Polled::Rtcp(d) => {
                    let s = &mut self.stats;
                    let (nacks, plis, firs) = if d.sent {
                        (&mut s.nacks_sent, &mut s.plis_sent, &mut s.firs_sent)
                    } else {
                        (
                            &mut s.nacks_received,
                            &mut s.plis_received,
                            &mut s.firs_received,
                        )
                    };
                    *nacks += d.nacks;
                    *plis += d.plis;
                    *firs += d.firs;
                }
                Polled::Transmit(destination, contents) => {
                    self.outputs.push_back(SfuOutput::Transmit {
                        destination,
                        contents,
                    });
                }
                Polled::Quality {
                    sample,
                    change,
                    rtx_delta,
                } => {
                    self.stats.rtx_sent += rtx_delta;
                    self.outputs.push_back(SfuOutput::Quality {
                        participant: id,
                        sample,
                    });
                    let rating = sample.rating(&p.thresholds);
                    let changed = p.last_rating.replace(rating) != Some(rating);
                    let notice = Notice::Quality {
                        origin: id,
                        identity: p.identity.clone(),
                        rating,
                        sample,
                    };
                    let members = self.rooms.get(&*p.room).map(Vec::as_slice).unwrap_or(&[]);
                    for to in members {
                        if *to == id || changed {
                            self.outputs.push_back(SfuOutput::Notice {
                                to: *to,
                                notice: notice.clone(),
                            });
                        }
                    }
                    let (room, identity) = (p.room.to_string(), p.identity.clone());
                    match change {
                        Some(QualityChange::Degraded { reasons, held }) => {
                            self.outputs
                                .push_back(SfuOutput::Event(RoomEvent::QualityDegraded {
                                    room,
                                    participant: id,
                                    identity,
                                    reasons,
                                    held,
                                    sample,
                                }));
                        }
                        Some(QualityChange::Recovered { held }) => {
                            self.outputs
                                .push_back(SfuOutput::Event(RoomEvent::QualityRecovered {
                                    room,
                                    participant: id,
                                    identity,
                                    held,
                                    sample,
                                }));
                        }
                        None => {}
                    }
                }
                Polled::Connected => {
                    let (room, identity) = (p.room.to_string(), p.identity.clone());
                    self.outputs
                        .push_back(SfuOutput::Event(RoomEvent::Connected {
                            room,
                            participant: id,
                            identity,
                        }));
                }
                Polled::Disconnected => {
                    // No timer entry: it is removed at the end of this drive.
                    p.next_timeout = now + Duration::from_secs(3600);
                    self.gone.push(id);
                    break;
                }
                Polled::TrackOpen(track) => {
                    let room = p.room.clone();
                    let identity = p.identity.clone();
                    let published = track.upgrade().map(|t| (t.kind, t.mid.to_string()));
                    let outputs = &mut self.outputs;
                    each_other(
                        &self.rooms,
                        &mut self.participants,
                        &mut self.queue,
                        &room,
                        id,
                        |o| {
                            o.add_track_out(track.clone());
                            if let Some((kind, mid)) = &published {
                                outputs.push_back(SfuOutput::Notice {
                                    to: o.id,
                                    notice: Notice::TrackPublished {
                                        origin: id,
                                        identity: identity.clone(),
                                        kind: *kind,
                                        mid: mid.clone(),
                                    },
                                });
                            }
                            true
                        },
                    );
                }
                Polled::Rtp(inc) => {
                    let room = p.room.clone();
                    if let Some(level) = inc.pkt.header.ext_vals.audio_level {
                        match self.speakers.get_mut(&*room) {
                            Some(d) => d.observe(id, level, now),
                            None => self
                                .speakers
                                .entry(room.to_string())
                                .or_default()
                                .observe(id, level, now),
                        }
                    }
                    let stats = &mut self.stats;
                    let size = inc.pkt.payload.len() as u64;
                    each_other(
                        &self.rooms,
                        &mut self.participants,
                        &mut self.queue,
                        &room,
                        id,
                        |o| {
                            let switches = o.layer_switches;
                            let written = o.forward_rtp(id, &inc);
                            if written {
                                stats.packets_forwarded += 1;
                                stats.bytes_forwarded += size;
                            } else {
                                stats.packets_not_forwarded += 1;
                            }
                            stats.layer_switches += o.layer_switches - switches;
                            written
                        },
                    );
                }
                Polled::KeyframeRequest {
                    origin,
                    mid_in,
                    rid,
                    kind,
                } => {
                    if let Some(o) = self.participants.get_mut(&origin)
                        && o.request_keyframe(mid_in, rid, kind, now)
                    {
                        self.stats.keyframe_requests += 1;
                        if !o.queued {
                            o.queued = true;
                            self.queue.push_back(origin);
                        }
                    }
                }
            }
        }
    }

    /// Advances every participant whose timer is due to `now`, routes what
    /// they produce, and returns when it next needs to be called.
    pub fn drive(&mut self, now: Instant) -> Instant {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            if p.next_timeout != at || !p.timer_armed {
                continue; // stale: the timer moved since
            }
            p.timer_armed = false;
            if !p.queued {
                p.queued = true;
                self.stats.timer_services += 1;
                self.stats.timer_reasons[p.next_reason as usize] += 1;
                self.queue.push_back(p.id);
            }
        }
        self.service(now);
        if self.next_housekeeping.is_none_or(|t| t <= now) {
            self.next_housekeeping = Some(now + HOUSEKEEPING);
            self.housekeeping(now);
        }
        for id in std::mem::take(&mut self.gone) {
            self.leave(id);
        }
        self.next_wake(now)
    }

    /// A stall: nothing at all from a connected participant (its last
    /// datagram, exactly) for `media_stall_after`; checked every
    /// [`HOUSEKEEPING`], so it is reported within 50 ms of the mark.
    fn detect_stalls(&mut self, now: Instant) {
        let after = self.cfg.media_stall_after;
        for p in self.participants.values_mut() {
            let Some(heard) = p.last_heard else {
                let waited = now.saturating_duration_since(p.joined_at);
                if waited >= self.cfg.connect_timeout && !p.stall_reported {
                    p.stall_reported = true;
                    self.outputs
                        .push_back(SfuOutput::Event(RoomEvent::ConnectFailed {
                            room: p.room.to_string(),
                            participant: p.id,
                            identity: p.identity.clone(),
                            waited,
                        }));
                }
                continue;
            };
            let silent = now.saturating_duration_since(heard);
            let event = if silent >= after && !p.stall_reported {
                p.stall_reported = true;
                RoomEvent::MediaStalled {
                    room: p.room.to_string(),
                    participant: p.id,
                    identity: p.identity.clone(),
                    silent,
                }
            } else if silent < after && p.stall_reported {
                p.stall_reported = false;
                RoomEvent::MediaResumed {
                    room: p.room.to_string(),
                    participant: p.id,
                    identity: p.identity.clone(),
                }
            } else {
                continue;
            };
            self.outputs.push_back(SfuOutput::Event(event));
        }
    }

    /// The second-scale work of [`Worker::drive`], every [`HOUSEKEEPING`].
    fn housekeeping(&mut self, now: Instant) {
        // Stale entries leave the heap when their time comes; a participant
        // whose timer keeps moving earlier leaves a trail, so rebuild from
        // the live timers when the trail gets long.
        if self.timers.len() > 4 * self.participants.len() + 1024 {
            self.timers = self
                .participants
                .values()
                .filter(|p| p.timer_armed)
                .map(|p| Reverse((p.next_timeout, p.id)))
                .collect();
        }
        // ICE lost and not restarted within the grace period: the participant is gone.
        let gone: Vec<ParticipantId> = self
            .participants
            .values()
            .filter(|p| {
                p.disconnected_at
                    .is_some_and(|t| now.saturating_duration_since(t) > RECONNECT_GRACE)
                    || p.pending_since
                        .is_some_and(|t| now.saturating_duration_since(t) > self.cfg.answer_timeout)
            })
            .map(|p| p.id)
            .collect();
        self.gone.extend(gone);
        for id in std::mem::take(&mut self.gone) {
            self.leave(id);
        }
        self.detect_stalls(now);
        if self.next_dynacast.is_none_or(|t| t <= now) {
            self.next_dynacast = Some(now + DYNACAST_EVERY);
            self.dynacast(now);
        }
        for (room, detector) in &mut self.speakers {
            if let Some(participant) = detector.tick(now) {
                self.outputs.push_back(SfuOutput::Speaker {
                    room: room.clone(),
                    participant,
                });
            }
        }
    }

    /// Pauses simulcast layers nobody takes ("dynacast"): for each video
    /// track a participant publishes over signaling (WHIP publishers have no
    /// channel to be asked on), the highest layer any subscriber would take
    /// if it ran ([`crate::forward::Forwarder::want`]) and every layer below
    /// it keep running; a layer above it for [`PAUSE_AFTER`] is paused, and
    /// resumes as soon as someone wants it. The lowest layer always runs
    /// (a subscriber whose bandwidth drops needs it at once). Saves the
    /// publisher's uplink and this worker the ingress it would drop.
    fn dynacast(&mut self, now: Instant) {
        let mut wants: HashMap<(ParticipantId, str0m::media::Mid), usize> = HashMap::new();
        for p in self.participants.values() {
            for o in &p.tracks_out {
                if matches!(o.state, crate::participant::OutState::Open(_))
                    && o.kind == str0m::media::MediaKind::Video
                    && !o.fwd.is_paused()
                {
                    let w = wants.entry((o.origin, o.mid_in)).or_default();
                    *w = (*w).max(o.fwd.want);
                }
            }
        }
        for p in self.participants.values_mut() {
            if p.mode != Mode::Full {
                continue;
            }
            for t in &mut p.tracks_in {
                let layers = t.meter.layers;
                if t.track.kind != str0m::media::MediaKind::Video
                    || !layers.is_simulcast()
                    || !layers.all_known()
                {
                    continue;
                }
                let want = wants.get(&(p.id, t.track.mid)).copied().unwrap_or(0);
                let mut paused = Vec::new();
                for i in 1..layers.len as usize {
                    let rid = layers.rids[i];
                    if i <= want {
                        t.unwanted_since.retain(|(r, _)| *r != rid);
                        continue;
                    }
                    let since = match t.unwanted_since.iter().find(|(r, _)| *r == rid) {
                        Some((_, at)) => *at,
                        None => {
                            t.unwanted_since.push((rid, now));
                            now
                        }
                    };
                    let was_paused = t.paused.contains(&rid);
                    if was_paused || now.saturating_duration_since(since) >= PAUSE_AFTER {
                        paused.push(rid);
                    }
                }
                if paused == t.paused {
                    continue;
                }
                self.stats.layers_paused +=
                    paused.iter().filter(|r| !t.paused.contains(r)).count() as u64;
                self.stats.layers_resumed +=
                    t.paused.iter().filter(|r| !paused.contains(r)).count() as u64;
                t.paused = paused;
                self.outputs.push_back(SfuOutput::Notice {
                    to: p.id,
                    notice: Notice::PauseLayers {
                        mid: t.track.mid.to_string(),
                        paused: t.paused.iter().flatten().map(|r| r.to_string()).collect(),
                    },
                });
            }
        }
    }

    /// The earliest timer (possibly a stale one: an early wake-up is
    /// harmless), or the next housekeeping.
    fn next_wake(&self, now: Instant) -> Instant {
        let housekeeping = self.next_housekeeping.unwrap_or(now);
        match self.timers.peek() {
            Some(Reverse((at, _))) => (*at).min(housekeeping),
            None => housekeeping,
        }
    }

    pub fn poll_output(&mut self) -> Option<SfuOutput> {
        self.outputs.pop_front()
    }
}

/// Applies `f` to every participant of `room` but `except`; those for which
/// it returns true (it gave them something to send) are queued for service.
fn each_other(
    rooms: &HashMap<String, Vec<ParticipantId>>,
    participants: &mut HashMap<ParticipantId, Participant>,
    queue: &mut VecDeque<ParticipantId>,
    room: &str,
    except: ParticipantId,
    mut f: impl FnMut(&mut Participant) -> bool,
) {
    for other in rooms
        .get(room)
        .into_iter()
        .flatten()
        .filter(|o| **o != except)
    {
        if let Some(o) = participants.get_mut(other)
            && f(o)
            && !o.queued
        {
            o.queued = true;
            queue.push_back(o.id);
        }
    }
}
