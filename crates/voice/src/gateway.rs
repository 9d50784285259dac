//! The voice gateway's sans-IO core: SIP signalling ([`continuum_sip`]) and
//! each call's media ([`continuum_rtp`]) behind one state machine. Fed SIP
//! bytes, RTP datagrams and time; returns datagrams to send and call events.
//! Decisions that need the database (which tenant a called number belongs
//! to, whether the source may call, where a call goes) are the owner's: an
//! incoming call is reported, and waits for [`Gateway::accept`] or
//! [`Gateway::reject`].
//!
//! Every call leg has a local RTP address chosen by the IO host (it binds
//! the socket; RTCP is the next port) and a 20 ms media clock: each tick
//! takes one decoded frame from the phone ([`Gateway::heard`]) and sends
//! one frame to it ([`Gateway::say`], silence when nothing is said).

use crate::keepalive::{Keepalive, TrunkCheck, TrunkProbe};
use crate::room::RoomLeg;
use continuum_rtp::g711::Law;
use continuum_rtp::session::FRAME_SAMPLES;
use continuum_rtp::srtp::MasterKey;
use continuum_rtp::{MediaSession, SessionConfig, Socket, SrtpKeys};
use continuum_sip::endpoint::{shrink_sparse, table_bytes};
use continuum_sip::sdp::{self, Direction, LocalMedia, Sdp};
use continuum_sip::{
    CallId, Endpoint, InviteRequest, Output as SipOutput, SipEvent, Transport, TransportKind,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One 20 ms frame of 8 kHz audio.
pub type Frame = [i16; FRAME_SAMPLES];
const TICK: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub sip: continuum_sip::Config,
    /// An outgoing call unanswered this long is cancelled (`no_answer`).
    pub ring_timeout: Duration,
    /// No RTP from the phone this long ends the call (`media_timeout`).
    pub media_timeout: Duration,
    /// OPTIONS to each outbound trunk this often ([`Gateway::set_trunks`]);
    /// none: no keepalive, trunks stay `unknown`.
    pub trunk_keepalive: Option<Duration>,
}

/// Why the gateway refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no such call (it ended)")]
    UnknownCall,
    #[error("the call is not in a state for this: {0}")]
    State(&'static str),
    #[error("SIP: {0}")]
    Sip(#[from] continuum_sip::SipError),
    #[error("DTMF: {0}")]
    Dtmf(String),
    #[error("room leg: {0}")]
    Room(String),
}

/// What happened to a call, for the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// An INVITE from outside: answer with [`Gateway::accept`] or [`Gateway::reject`].
    Incoming(Incoming),
    Ringing {
        call: CallId,
    },
    /// Both ways up (our answer ACKed, or their answer to our INVITE).
    Answered {
        call: CallId,
    },
    /// Never answered: `status` is the SIP final response (or 408 for our own timeout).
    Failed {
        call: CallId,
        status: u16,
        reason: String,
    },
    Ended {
        call: CallId,
        by_remote: bool,
        /// `hangup`, `remote_hangup`, `media_timeout`, `session_expired`, `lost`, `cancelled`,
        /// `target_hangup` (a bridged caller's target hung up: [`Gateway::bridge`]).
        cause: &'static str,
    },
    Dtmf {
        call: CallId,
        digit: char,
        duration_ms: u32,
    },
    /// The phone put us on hold, or took us off it.
    Hold {
        call: CallId,
        held: bool,
    },
    /// The other side asks to transfer the call (REFER).
    Refer {
        call: CallId,
        target: String,
    },
    /// The result of our REFER (a final SIP status).
    Transferred {
        call: CallId,
        status: u16,
    },
    /// Everything queued with [`Gateway::play`] has been played (not sent
    /// after [`Gateway::stop_playback`]).
    PlaybackFinished {
        call: CallId,
    },
    /// A recording ([`Gateway::start_recording`]) reached its length limit
    /// or was stopped: the caller's 8 kHz audio, as heard.
    Recorded {
        call: CallId,
        samples: std::sync::Arc<[i16]>,
        /// The limit, not [`Gateway::stop_recording`], ended it.
        full: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub call: CallId,
    /// The caller's number or user (From), as given.
    pub caller: Option<String>,
    /// The called number (Request-URI user), as given.
    pub called: Option<String>,
    pub source: SocketAddr,
    pub transport: continuum_sip::TransportKind,
    /// Whether the INVITE carries credentials (a retry after our 401).
    pub authorized: bool,
    /// Whether it offers a codec we speak (else accepting it answers 488).
    pub offers_g711: bool,
    /// Why the offer cannot be answered (no common codec, `RTP/SAVP`
    /// without a usable crypto suite, DTLS-SRTP...): refuse it with 488.
    pub media_refusal: Option<String>,
    /// Whether the offer is SDES-SRTP (`RTP/SAVP`).
    pub srtp: bool,
}

/// What the IO host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Sip {
        transport: Transport,
        destination: SocketAddr,
        bytes: Vec<u8>,
    },
    /// From the call's room leg socket (WebRTC to the SFU).
    Room {
        call: CallId,
        destination: SocketAddr,
        bytes: Vec<u8>,
    },
    /// From the call's RTP socket (`local`) or its RTCP socket (`local` + 1).
    Media {
        local: SocketAddr,
        rtcp: bool,
        destination: SocketAddr,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    Event(CallEvent),
    /// A keepalive probe's result for the trunks at one address.
    Trunk(TrunkCheck),
}

/// How a dial-out's media is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaEncryption {
    /// Plain RTP (`RTP/AVP`).
    #[default]
    None,
    /// SDES-SRTP (`RTP/SAVP` with `a=crypto`); an answer without it fails the call.
    Sdes,
}

/// A new outgoing call.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Request-URI, e.g. `sip:+14155550100@carrier.example`.
    pub target: String,
    /// From, e.g. `sip:+14155550199@clinic.example` (the caller id).
    pub from: String,
    pub destination: SocketAddr,
    pub transport: continuum_sip::TransportKind,
    pub credentials: Option<continuum_sip::DigestCredentials>,
    /// The call's RTP socket (bound by the host).
    pub local_rtp: SocketAddr,
    pub media_encryption: MediaEncryption,
}

struct Leg {
    local_rtp: SocketAddr,
    /// The SDP version we last sent (`o=` line).
    sdp_version: u64,
    session_id: u64,
    media: Option<MediaSession>,
    answered: bool,
    /// Outgoing: cancel at this time if still unanswered.
    ring_deadline: Option<Instant>,
    /// The last frame heard from the phone, and what to say next.
    heard: Option<Frame>,
    to_say: Option<Frame>,
    /// The call's participant in a video room, when it is bridged into one.
    room: Option<RoomLeg>,
    /// Our SDES key (offered on dial-out, or of our answer): SRTP when set.
    srtp_key: Option<MasterKey>,
    /// An incoming call (we are its UAS), not a dial-out of ours.
    incoming: bool,
    /// A bridged incoming call's offer, answered when its target answers.
    offer: Option<Sdp>,
    /// DTMF relayed onto this leg (B2BUA) keeps it busy until then.
    dtmf_relay_until: Option<Instant>,
    /// Prompts to play to the phone (IVR), and how far into the first.
    playback: VecDeque<std::sync::Arc<[i16]>>,
    played: usize,
    /// The caller's audio kept for a voicemail, up to `max` samples.
    recording: Option<Recording>,
    /// On hold by us: the phone hears the hold tone, its peer (room or
    /// bridge) hears nothing from it. Frames since hold began.
    held: Option<u32>,
}

struct Recording {
    samples: Vec<i16>,
    max: usize,
}

/// How many entries each of a [`Gateway`]'s tables holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveState {
    pub legs: usize,
    /// Incoming calls waiting for the owner's decision.
    pub pending: usize,
    pub by_media: usize,
    /// Outputs not yet polled.
    pub outputs: usize,
    pub sip: continuum_sip::LiveState,
}

impl LiveState {
    pub fn is_empty(&self) -> bool {
        *self == LiveState::default()
    }
}

impl Leg {
    fn new(local_rtp: SocketAddr, session_id: u64, incoming: bool) -> Self {
        Leg {
            local_rtp,
            sdp_version: 1,
            session_id,
            media: None,
            answered: false,
            ring_deadline: None,
            heard: None,
            to_say: None,
            room: None,
            srtp_key: None,
            incoming,
            offer: None,
            dtmf_relay_until: None,
            playback: VecDeque::new(),
            played: 0,
            recording: None,
            held: None,
        }
    }
}

/// At most this much relayed DTMF waits on a bridged leg: a caller keying
/// a storm does not queue digits without bound on the other side.
const DTMF_RELAY_BACKLOG: Duration = Duration::from_secs(2);

pub struct Gateway {
    cfg: GatewayConfig,
    endpoint: Endpoint,
    /// Boxed: a `Leg` (its media session and frames) is kilobytes, and a
    /// table keeps its buckets.
    legs: HashMap<CallId, Box<Leg>>,
    /// Incoming calls waiting for the owner's decision, with their offers.
    pending: HashMap<CallId, Option<Sdp>>,
    /// Which call a media socket belongs to (RTP port; RTCP is port + 1).
    by_media: HashMap<SocketAddr, CallId>,
    /// B2BUA pairs, both ways: each call's other leg ([`Gateway::bridge`]).
    bridges: HashMap<CallId, CallId>,
    out: VecDeque<Output>,
    next_tick: Option<Instant>,
    ssrc_seed: u64,
    keepalive: Option<Keepalive>,
}

impl Gateway {
    pub fn new(cfg: GatewayConfig) -> Self {
        let ssrc_seed = cfg.sip.rng_seed.unwrap_or_else(rand::random);
        let keepalive = cfg.trunk_keepalive.map(Keepalive::new);
        Gateway {
            endpoint: Endpoint::new(cfg.sip.clone()),
            cfg,
            legs: HashMap::new(),
            pending: HashMap::new(),
            by_media: HashMap::new(),
            bridges: HashMap::new(),
            out: VecDeque::new(),
            next_tick: None,
            ssrc_seed,
            keepalive,
        }
    }

    pub fn call_count(&self) -> usize {
        self.legs.len()
    }

    /// The size of every table, the SIP endpoint's included: all zero once
    /// the calls are over and the transaction timers have run.
    pub fn live_state(&self) -> LiveState {
        LiveState {
            legs: self.legs.len(),
            pending: self.pending.len(),
            by_media: self.by_media.len(),
            outputs: self.out.len(),
            sip: self.endpoint.live_state(),
        }
    }

    /// Bytes the tables hold for their buckets, the endpoint's included.
    pub fn table_bytes(&self) -> usize {
        table_bytes(&self.legs)
            + table_bytes(&self.pending)
            + table_bytes(&self.by_media)
            + self.out.capacity() * std::mem::size_of::<Output>()
            + self.endpoint.table_bytes()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let legs = self
            .legs
            .values()
            .flat_map(|l| {
                [
                    l.ring_deadline,
                    l.media.as_ref().and_then(|m| m.poll_timeout()),
                ]
            })
            .flatten();
        let keepalive = self.keepalive.as_ref().and_then(|k| k.poll_timeout());
        [self.endpoint.poll_timeout(), self.next_tick, keepalive]
            .into_iter()
            .flatten()
            .chain(legs)
            .min()
    }

    /// Bytes on a SIP transport.
    pub fn handle_sip(&mut self, now: Instant, transport: Transport, bytes: &[u8]) {
        self.endpoint.handle_input(now, transport, bytes);
        self.drain_sip(now);
    }

    /// A TCP/TLS connection closed.
    pub fn sip_closed(&mut self, now: Instant, transport: Transport) {
        self.endpoint.connection_closed(transport);
        self.drain_sip(now);
    }

    /// A TCP/TLS connection to `remote` could not be made: what waits on it
    /// fails now (a keepalive probe counts as failed, a call fails 503).
    pub fn sip_unreachable(&mut self, now: Instant, kind: TransportKind, remote: SocketAddr) {
        self.endpoint.transport_failed(now, kind, remote);
        self.drain_sip(now);
    }

    /// The outbound trunks to keep alive with OPTIONS (the whole set; a
    /// no-op when keepalive is off). New addresses are probed at once.
    pub fn set_trunks(&mut self, now: Instant, trunks: &[TrunkProbe]) {
        let Some(k) = self.keepalive.as_mut() else {
            return;
        };
        for check in k.set(now, trunks) {
            self.out.push_back(Output::Trunk(check));
        }
        self.probe_trunks(now);
    }

    /// Sends the keepalive probes that are due.
    fn probe_trunks(&mut self, now: Instant) {
        let Some(k) = self.keepalive.as_mut() else {
            return;
        };
        for (peer, kind) in k.due(now) {
            if let Err(e) = self.endpoint.options(now, peer, kind) {
                // No local address for that transport (a TLS trunk without
                // sip.tls_listen): it cannot be reached, say so.
                tracing::debug!(%peer, ?kind, error = %e, "no keepalive probe");
                if let Some(check) = self
                    .keepalive
                    .as_mut()
                    .and_then(|k| k.result(now, peer, kind, None))
                {
                    self.out.push_back(Output::Trunk(check));
                }
            }
        }
        self.drain_sip(now);
    }

    /// A datagram on a call's RTP (`local`) or RTCP (`local` + 1) socket.
    pub fn handle_media(
        &mut self,
        now: Instant,
        local: SocketAddr,
        source: SocketAddr,
        bytes: &[u8],
    ) {
        let rtp = SocketAddr::new(local.ip(), local.port() & !1);
        let Some(call) = self.by_media.get(&rtp).copied() else {
            return;
        };
        if let Some(media) = self.legs.get_mut(&call).and_then(|l| l.media.as_mut()) {
            let before = drops(media);
            media.handle_datagram(now, source, bytes);
            // Counted as they happen: an injection or a key mismatch shows on
            // /metrics while the call is up, not when it ends.
            for ((reason, after), (_, was)) in drops(media).into_iter().zip(before) {
                if after > was {
                    metrics::counter!("continuum_sip_media_dropped_total", "reason" => reason)
                        .increment(after - was);
                }
            }
        }
        self.drain_media(now, call);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.drain_sip(now);
        if self
            .keepalive
            .as_ref()
            .and_then(|k| k.poll_timeout())
            .is_some_and(|t| t <= now)
        {
            self.probe_trunks(now);
        }
        let expired: Vec<CallId> = self
            .legs
            .iter()
            .filter(|(_, l)| l.ring_deadline.is_some_and(|d| d <= now))
            .map(|(c, _)| *c)
            .collect();
        for call in expired {
            if let Some(leg) = self.legs.get_mut(&call) {
                leg.ring_deadline = None;
            }
            // The CANCEL's 487 comes back as CallFailed; say why first.
            let _ = self.endpoint.cancel(now, call);
            self.finish(call);
            self.report_end(
                now,
                CallEvent::Failed {
                    call,
                    status: 408,
                    reason: "no_answer".into(),
                },
            );
            self.drain_sip(now);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        shrink_sparse(&mut self.legs);
        shrink_sparse(&mut self.pending);
        shrink_sparse(&mut self.by_media);
        if self.out.capacity() > 64 && self.out.len() * 8 < self.out.capacity() {
            self.out.shrink_to((self.out.len() * 2).max(32));
        }
        let calls: Vec<CallId> = self.legs.keys().copied().collect();
        for call in calls {
            if let Some(m) = self.legs.get_mut(&call).and_then(|l| l.media.as_mut())
                && m.poll_timeout().is_some_and(|t| t <= now)
            {
                m.handle_timeout(now);
            }
            if let Some(r) = self.legs.get_mut(&call).and_then(|l| l.room.as_mut())
                && r.poll_timeout().is_some_and(|t| t <= now)
            {
                r.handle_timeout(now);
            }
            self.drain_media(now, call);
            self.drain_room(call);
        }
    }

    /// Bridges an answered call into a video room: the leg's socket is at
    /// `local` (bound by the host). Returns the join offer for the SFU.
    pub fn attach_room(
        &mut self,
        now: Instant,
        call: CallId,
        local: SocketAddr,
        identity: &str,
    ) -> Result<String, GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        if leg.room.is_some() {
            return Err(GatewayError::State("the call is in a room already"));
        }
        let (room, offer) =
            RoomLeg::new(now, local, identity).map_err(|e| GatewayError::Room(e.to_string()))?;
        leg.room = Some(room);
        Ok(offer)
    }

    /// Takes the call out of its room (back to prompts and hold audio).
    pub fn detach_room(&mut self, call: CallId) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        leg.room
            .take()
            .ok_or(GatewayError::State("the call is in no room"))?;
        Ok(())
    }

    /// The SFU's answer to the room leg's join offer; `sfu` is an address the
    /// host reaches the SFU at, when the advertised one may not be.
    pub fn room_answer(
        &mut self,
        now: Instant,
        call: CallId,
        sdp: &str,
        sfu: Option<SocketAddr>,
    ) -> Result<(), GatewayError> {
        let room = self.room_mut(call)?;
        room.accept_answer(sdp)
            .map_err(|e| GatewayError::Room(e.to_string()))?;
        if let Some(addr) = sfu {
            let _ = room.add_remote_candidate(addr);
        }
        room.handle_timeout(now);
        self.drain_room(call);
        Ok(())
    }

    /// A renegotiation offer from the SFU (others' tracks); returns the answer.
    pub fn room_offer(
        &mut self,
        now: Instant,
        call: CallId,
        sdp: &str,
    ) -> Result<String, GatewayError> {
        let room = self.room_mut(call)?;
        let answer = room
            .accept_offer(sdp)
            .map_err(|e| GatewayError::Room(e.to_string()))?;
        room.handle_timeout(now);
        self.drain_room(call);
        Ok(answer)
    }

    /// A datagram on a call's room leg socket.
    pub fn handle_room(&mut self, now: Instant, call: CallId, source: SocketAddr, bytes: &[u8]) {
        if let Ok(room) = self.room_mut(call) {
            room.handle_datagram(now, source, bytes);
            self.drain_room(call);
        }
    }

    fn room_mut(&mut self, call: CallId) -> Result<&mut RoomLeg, GatewayError> {
        self.legs
            .get_mut(&call)
            .ok_or(GatewayError::UnknownCall)?
            .room
            .as_mut()
            .ok_or(GatewayError::State("the call is in no room"))
    }

    fn drain_room(&mut self, call: CallId) {
        let Some(room) = self.legs.get_mut(&call).and_then(|l| l.room.as_mut()) else {
            return;
        };
        while let Some((destination, bytes)) = room.poll_transmit() {
            self.out.push_back(Output::Transmit(Transmit::Room {
                call,
                destination,
                bytes,
            }));
        }
    }

    /// One 20 ms media frame for every call with media up.
    fn tick(&mut self, now: Instant) {
        // Everything heard first: a bridged leg says what its peer heard.
        for leg in self.legs.values_mut() {
            if let Some(media) = leg.media.as_mut() {
                leg.heard = Some(media.pull_decoded(now));
            }
        }
        let peers: Vec<(CallId, Frame)> = self
            .bridges
            .iter()
            .filter_map(|(call, peer)| Some((*call, self.legs.get(peer)?.heard?)))
            .collect();
        for (call, frame) in peers {
            if let Some(leg) = self.legs.get_mut(&call) {
                leg.to_say = Some(frame);
            }
        }
        for (call, leg) in self.legs.iter_mut() {
            let Some(media) = leg.media.as_mut() else {
                continue;
            };
            let heard = leg.heard.unwrap_or([0; FRAME_SAMPLES]);
            if let Some(rec) = leg.recording.as_mut() {
                let room = rec.max - rec.samples.len();
                rec.samples
                    .extend_from_slice(&heard[..room.min(FRAME_SAMPLES)]);
                if rec.samples.len() >= rec.max {
                    let rec = leg.recording.take().expect("recording");
                    self.out.push_back(Output::Event(CallEvent::Recorded {
                        call: *call,
                        samples: rec.samples.into(),
                        full: true,
                    }));
                }
            }
            let mut frame = leg.to_say.take().unwrap_or_else(|| {
                let (frame, finished) = next_prompt_frame(&mut leg.playback, &mut leg.played);
                if finished {
                    self.out
                        .push_back(Output::Event(CallEvent::PlaybackFinished { call: *call }));
                }
                frame
            });
            // Bridged into a room: the phone talks to the room and hears its
            // mix (on hold: the room hears silence, the phone the hold tone).
            if let Some(room) = leg.room.as_mut().filter(|r| r.connected()) {
                let to_room = if leg.held.is_some() {
                    [0; FRAME_SAMPLES]
                } else {
                    heard
                };
                let _ = room.push_phone(now, &to_room);
                frame = room.pull_room(now);
            }
            if let Some(n) = leg.held.as_mut() {
                frame = hold_tone(*n);
                *n = n.wrapping_add(1);
            }
            media.push_pcm(now, &frame);
        }
        let bridged: Vec<CallId> = self
            .legs
            .iter()
            .filter(|(_, l)| l.room.is_some())
            .map(|(c, _)| *c)
            .collect();
        for call in bridged {
            self.drain_room(call);
        }
        // Keep the cadence: a late wake-up does not shift later frames.
        let mut next = self.next_tick.unwrap_or(now) + TICK;
        if next <= now {
            next = now + TICK;
        }
        self.next_tick = self
            .legs
            .values()
            .any(|l| l.media.is_some())
            .then_some(next);
    }

    /// Puts the call on hold (the phone hears a soft tone every few seconds
    /// and its room or bridge peer hears nothing from it), or takes it off.
    pub fn set_hold(&mut self, call: CallId, held: bool) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        if leg.media.is_none() {
            return Err(GatewayError::State("not answered"));
        }
        leg.held = if held {
            Some(leg.held.unwrap_or(0))
        } else {
            None
        };
        Ok(())
    }

    /// Queues 8 kHz audio to play to the phone after what is queued already
    /// (an IVR prompt); [`CallEvent::PlaybackFinished`] when all of it has
    /// been sent. A call bridged to a target or a room hears its peer instead.
    pub fn play(
        &mut self,
        call: CallId,
        samples: std::sync::Arc<[i16]>,
    ) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        if !samples.is_empty() {
            leg.playback.push_back(samples);
        } else if leg.playback.is_empty() {
            self.out
                .push_back(Output::Event(CallEvent::PlaybackFinished { call }));
        }
        Ok(())
    }

    /// Drops what is left to play (barge-in: the caller pressed a key).
    /// No [`CallEvent::PlaybackFinished`] follows.
    pub fn stop_playback(&mut self, call: CallId) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        leg.playback.clear();
        leg.played = 0;
        Ok(())
    }

    /// Keeps what the phone says from now on, up to `max` (a voicemail);
    /// ends with [`CallEvent::Recorded`].
    pub fn start_recording(&mut self, call: CallId, max: Duration) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        let max = (max.as_millis() as usize * 8).clamp(FRAME_SAMPLES, 8_000 * 3_600);
        leg.recording = Some(Recording {
            samples: Vec::with_capacity(max.min(8_000 * 60)),
            max,
        });
        Ok(())
    }

    /// Ends a recording now: [`CallEvent::Recorded`] with what was kept.
    pub fn stop_recording(&mut self, call: CallId) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        let rec = leg
            .recording
            .take()
            .ok_or(GatewayError::State("not recording"))?;
        self.out.push_back(Output::Event(CallEvent::Recorded {
            call,
            samples: rec.samples.into(),
            full: false,
        }));
        Ok(())
    }

    /// The last frame heard from the phone (8 kHz), once per tick.
    pub fn heard(&mut self, call: CallId) -> Option<Frame> {
        self.legs.get_mut(&call)?.heard.take()
    }

    /// The next frame to send to the phone (else silence).
    pub fn say(&mut self, call: CallId, frame: Frame) {
        if let Some(leg) = self.legs.get_mut(&call) {
            leg.to_say = Some(frame);
        }
    }

    /// Checks an incoming call's digest credentials against `username` and
    /// `password`; when they are missing or wrong the INVITE is challenged
    /// (401) and forgotten: the retry comes as a new incoming call. Call it
    /// before any work the call causes, so refusals stay cheap.
    pub fn authenticate(
        &mut self,
        now: Instant,
        call: CallId,
        username: &str,
        password: &str,
    ) -> bool {
        let ok = self
            .endpoint
            .verify(now, call, continuum_sip::Secret::Password(password))
            .is_ok_and(|v| v.username == username);
        if !ok {
            self.pending.remove(&call);
            let _ = self.endpoint.challenge(now, call, false);
            self.drain_sip(now);
        }
        ok
    }

    /// Answers an incoming call with media on `local_rtp` (180 first when
    /// `ring_first`); a call without a G.711 offer is refused with 488.
    pub fn accept(
        &mut self,
        now: Instant,
        call: CallId,
        local_rtp: SocketAddr,
        ring_first: bool,
    ) -> Result<(), GatewayError> {
        let offer = self.pending_offer(call).ok_or(GatewayError::UnknownCall)?;
        let (session_id, version) = (rand::random::<u32>() as u64, 1);
        let local = LocalMedia {
            addr: local_rtp.ip(),
            port: local_rtp.port(),
            session_id,
            version,
            direction: Direction::SendRecv,
            ptime: Some(20),
        };
        let negotiated = match offer.as_ref().map(|o| sdp::answer(o, &local)) {
            Some(Ok(n)) => n,
            // No offer (late offer) or nothing we speak.
            other => {
                let e = match other {
                    Some(Err(e)) => e,
                    _ => sdp::SdpError::NoAudio,
                };
                self.refuse_offer(now, call, e)?;
                return Ok(());
            }
        };
        if ring_first {
            self.endpoint.ring(now, call)?;
        }
        let remote = offer.as_ref().and_then(remote_rtp).unwrap_or(local_rtp);
        let srtp_key = negotiated.srtp.as_ref().map(|k| k.local.clone());
        let media = self.media_session(
            now,
            remote,
            negotiated.codec,
            negotiated.telephone_event,
            offer.as_ref(),
            negotiated.srtp.clone(),
        );
        self.endpoint.answer(now, call, &negotiated.sdp)?;
        let mut leg = Leg::new(local_rtp, session_id, true);
        leg.sdp_version = version;
        leg.media = Some(media);
        leg.srtp_key = srtp_key;
        self.add_leg(call, leg);
        self.next_tick.get_or_insert(now + TICK);
        self.drain_sip(now);
        Ok(())
    }

    /// Rings an incoming call that waits for the owner's decision (180).
    pub fn ring(&mut self, now: Instant, call: CallId) -> Result<(), GatewayError> {
        if !self.pending.contains_key(&call) {
            return Err(GatewayError::UnknownCall);
        }
        self.endpoint.ring(now, call)?;
        self.drain_sip(now);
        Ok(())
    }

    /// Refuses an incoming call with a SIP status (403, 404, 486, 488, 503
    /// ...); a 488 says in a Warning what in the offer we cannot take.
    pub fn reject(&mut self, now: Instant, call: CallId, status: u16) -> Result<(), GatewayError> {
        let problem = self
            .pending
            .remove(&call)
            .flatten()
            .and_then(|o| sdp::check_offer(&o).err());
        match problem {
            Some(e) if status == 488 => {
                let (code, text) = e.warning();
                self.endpoint
                    .reject_with_warning(now, call, status, code, &text)?
            }
            _ => self.endpoint.reject(now, call, status)?,
        }
        self.drain_sip(now);
        Ok(())
    }

    /// Refuses an incoming call's offer with 488 (a Warning says why) and reports it.
    fn refuse_offer(
        &mut self,
        now: Instant,
        call: CallId,
        e: sdp::SdpError,
    ) -> Result<(), GatewayError> {
        let (code, text) = e.warning();
        self.endpoint
            .reject_with_warning(now, call, 488, code, &text)?;
        self.out.push_back(Output::Event(CallEvent::Failed {
            call,
            status: 488,
            reason: text,
        }));
        self.drain_sip(now);
        Ok(())
    }

    /// B2BUA: rings the incoming `call` (180) and dials `dial` as its
    /// second leg, offering the G.711 codecs (and telephone-events) the
    /// caller offered. The caller is answered (media on `local_rtp`) when
    /// the target answers; from then on each leg hears the other (decoded
    /// PCM each 20 ms tick, so PCMU and PCMA legs mix) and DTMF keyed on one
    /// is sent on the other (RFC 4733, or SIP INFO when that leg has no
    /// telephone-events). The target's 180/183 ring the caller again. A
    /// hang-up on either side ends the other (the caller's call ends as
    /// `target_hangup` when the target hangs up), the caller's CANCEL
    /// cancels the target, and a target that fails answers the caller with
    /// the matching status (busy 486, no answer or ring timeout 480, not
    /// found 404, anything else 503), reported as the caller's `Failed`.
    ///
    /// Returns the target's leg (its events are reported like any call's),
    /// or none when the caller's offer cannot be answered: then it got 488,
    /// reported as `Failed`.
    pub fn bridge(
        &mut self,
        now: Instant,
        call: CallId,
        local_rtp: SocketAddr,
        dial: Dial,
    ) -> Result<Option<CallId>, GatewayError> {
        let offer = self.pending_offer(call).ok_or(GatewayError::UnknownCall)?;
        let offer = match offer.map(|o| sdp::check_offer(&o).map(|()| o)) {
            Some(Ok(o)) => o,
            other => {
                let e = match other {
                    Some(Err(e)) => e,
                    _ => sdp::SdpError::NoAudio,
                };
                self.refuse_offer(now, call, e)?;
                return Ok(None);
            }
        };
        let (codecs, te) = offer.audio.as_ref().map_or((Vec::new(), false), |a| {
            let codecs = a
                .payload_types
                .iter()
                .filter_map(|pt| match a.encoding(*pt).as_deref() {
                    Some("PCMU") => Some(0),
                    Some("PCMA") => Some(8),
                    _ => None,
                })
                .collect();
            (codecs, a.telephone_event().is_some())
        });
        let target = match self.dial_offering(now, dial, &codecs, te) {
            Ok(t) => t,
            Err(e) => {
                let _ = self.endpoint.reject(now, call, 503);
                self.drain_sip(now);
                return Err(e);
            }
        };
        let _ = self.endpoint.ring(now, call);
        let mut leg = Leg::new(local_rtp, rand::random::<u32>() as u64, true);
        leg.offer = Some(offer);
        self.add_leg(call, leg);
        self.bridges.insert(call, target);
        self.bridges.insert(target, call);
        self.out
            .push_back(Output::Event(CallEvent::Ringing { call }));
        self.drain_sip(now);
        Ok(Some(target))
    }

    /// The other leg of a bridged call ([`Gateway::bridge`]).
    pub fn bridged_to(&self, call: CallId) -> Option<CallId> {
        self.bridges.get(&call).copied()
    }

    /// The target of a bridged call answered: answer the caller.
    fn answer_bridged(&mut self, now: Instant, call: CallId) {
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        if leg.media.is_some() || !leg.incoming {
            return;
        }
        let Some(offer) = leg.offer.take() else {
            return;
        };
        let local_rtp = leg.local_rtp;
        let local = LocalMedia {
            addr: local_rtp.ip(),
            port: local_rtp.port(),
            session_id: leg.session_id,
            version: leg.sdp_version,
            direction: Direction::SendRecv,
            ptime: Some(20),
        };
        let negotiated = match sdp::answer(&offer, &local) {
            Ok(n) => n,
            // Checked when bridged: cannot happen, but never leave it ringing.
            Err(e) => {
                let (code, text) = e.warning();
                let _ = self
                    .endpoint
                    .reject_with_warning(now, call, 488, code, &text);
                self.finish(call);
                self.report_end(
                    now,
                    CallEvent::Failed {
                        call,
                        status: 488,
                        reason: text,
                    },
                );
                return;
            }
        };
        let remote = remote_rtp(&offer).unwrap_or(local_rtp);
        let media = self.media_session(
            now,
            remote,
            negotiated.codec,
            negotiated.telephone_event,
            Some(&offer),
            negotiated.srtp.clone(),
        );
        if self.endpoint.answer(now, call, &negotiated.sdp).is_err() {
            return; // the caller is gone: its end is on its way
        }
        if let Some(leg) = self.legs.get_mut(&call) {
            leg.srtp_key = negotiated.srtp.as_ref().map(|k| k.local.clone());
            leg.media = Some(media);
        }
        self.next_tick.get_or_insert(now + TICK);
    }

    /// A digit heard on a bridged leg, sent on the other.
    fn relay_dtmf(&mut self, now: Instant, from: CallId, digit: char, duration: Duration) {
        let Some(to) = self.bridges.get(&from).copied() else {
            return;
        };
        let Some(leg) = self.legs.get_mut(&to) else {
            return;
        };
        let Some(media) = leg.media.as_mut() else {
            return;
        };
        let busy = leg.dtmf_relay_until.filter(|t| *t > now).unwrap_or(now);
        if busy > now + DTMF_RELAY_BACKLOG {
            tracing::debug!(?from, "a relayed DTMF digit dropped (backlog)");
            return;
        }
        let duration = duration.clamp(Duration::from_millis(80), Duration::from_millis(1000));
        leg.dtmf_relay_until = Some(busy + duration + Duration::from_millis(60));
        match media.send_dtmf(now, digit, duration) {
            Ok(()) => {}
            Err(continuum_rtp::SessionError::NoTelephoneEvent) => {
                let _ = self.endpoint.send_dtmf_info(now, to, digit);
            }
            Err(e) => tracing::debug!(?to, error = %e, "a relayed DTMF digit not sent"),
        }
    }

    /// Reports a call event; a bridged call's end (`Failed`, `Ended`) takes
    /// its other leg down with it.
    fn report_end(&mut self, now: Instant, event: CallEvent) {
        let (call, failure) = match &event {
            CallEvent::Failed {
                call,
                status,
                reason,
            } => (*call, Some((*status, reason.clone()))),
            CallEvent::Ended { call, .. } => (*call, None),
            _ => {
                self.out.push_back(Output::Event(event));
                return;
            }
        };
        self.out.push_back(Output::Event(event));
        let Some(peer) = self.bridges.remove(&call) else {
            return;
        };
        self.bridges.remove(&peer);
        let Some(leg) = self.legs.get(&peer) else {
            return;
        };
        let end = if leg.media.is_some() {
            let _ = self.endpoint.hangup(now, peer);
            CallEvent::Ended {
                call: peer,
                by_remote: false,
                cause: if leg.incoming {
                    "target_hangup"
                } else {
                    "hangup"
                },
            }
        } else if leg.incoming {
            // The caller still rings: it hears what became of the target.
            let (status, reason) = failure.unwrap_or((480, "target ended".into()));
            let status = caller_status(status);
            let _ = self.endpoint.reject(now, peer, status);
            CallEvent::Failed {
                call: peer,
                status,
                reason,
            }
        } else {
            // The caller went away while the target rings: CANCEL it.
            let _ = self.endpoint.hangup(now, peer);
            CallEvent::Failed {
                call: peer,
                status: 487,
                reason: "cancelled".into(),
            }
        };
        self.finish(peer);
        self.out.push_back(Output::Event(end));
    }

    /// Places a call.
    pub fn dial(&mut self, now: Instant, dial: Dial) -> Result<CallId, GatewayError> {
        self.dial_offering(now, dial, &[0, 8], true)
    }

    /// Places a call offering the G.711 `codecs` (0, 8) and, with `te`, telephone-events.
    fn dial_offering(
        &mut self,
        now: Instant,
        dial: Dial,
        codecs: &[u8],
        te: bool,
    ) -> Result<CallId, GatewayError> {
        let session_id = rand::random::<u32>() as u64;
        let local = LocalMedia {
            addr: dial.local_rtp.ip(),
            port: dial.local_rtp.port(),
            session_id,
            version: 1,
            direction: Direction::SendRecv,
            ptime: Some(20),
        };
        let srtp_key = (dial.media_encryption == MediaEncryption::Sdes).then(MasterKey::random);
        let offer = sdp::offer_g711(&local, codecs, te, srtp_key.as_ref());
        let call = self.endpoint.invite(
            now,
            InviteRequest {
                target: dial.target,
                from: dial.from,
                from_display: None,
                sdp: Some(offer),
                credentials: dial.credentials,
                destination: dial.destination,
                transport: dial.transport,
                route: Vec::new(),
                extra_headers: Vec::new(),
            },
        )?;
        let mut leg = Leg::new(dial.local_rtp, session_id, false);
        leg.ring_deadline = Some(now + self.cfg.ring_timeout);
        leg.srtp_key = srtp_key;
        self.add_leg(call, leg);
        self.drain_sip(now);
        Ok(call)
    }

    /// Ends a call (BYE, or CANCEL before an answer).
    pub fn hangup(&mut self, now: Instant, call: CallId) -> Result<(), GatewayError> {
        if !self.legs.contains_key(&call) {
            return Err(GatewayError::UnknownCall);
        }
        // Our dial-out not answered yet (its media comes with the answer):
        // CANCELled, so it never started and fails as `cancelled`.
        // (A bridged caller still ringing is refused the same way: 480.)
        let unanswered_dial = self.legs.get(&call).is_some_and(|l| l.media.is_none());
        self.endpoint.hangup(now, call)?;
        self.finish(call);
        let event = if unanswered_dial {
            CallEvent::Failed {
                call,
                status: 487,
                reason: "cancelled".into(),
            }
        } else {
            CallEvent::Ended {
                call,
                by_remote: false,
                cause: "hangup",
            }
        };
        self.report_end(now, event);
        self.drain_sip(now);
        Ok(())
    }

    /// Sends DTMF digits: RFC 4733 events when the call negotiated them, else SIP INFO.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        call: CallId,
        digits: &str,
    ) -> Result<(), GatewayError> {
        let leg = self.legs.get_mut(&call).ok_or(GatewayError::UnknownCall)?;
        let media = leg
            .media
            .as_mut()
            .ok_or(GatewayError::State("not answered yet"))?;
        let mut info = false;
        for d in digits.chars() {
            match media.send_dtmf(now, d, Duration::from_millis(160)) {
                Ok(()) => {}
                Err(continuum_rtp::SessionError::NoTelephoneEvent) => info = true,
                Err(e) => return Err(GatewayError::Dtmf(e.to_string())),
            }
        }
        if info {
            for d in digits.chars() {
                self.endpoint.send_dtmf_info(now, call, d)?;
            }
            self.drain_sip(now);
        }
        self.drain_media(now, call);
        Ok(())
    }

    /// Blind transfer: asks the phone side to call `target` instead (REFER).
    pub fn transfer(
        &mut self,
        now: Instant,
        call: CallId,
        target: &str,
    ) -> Result<(), GatewayError> {
        if !self.legs.get(&call).is_some_and(|l| l.answered) {
            return Err(GatewayError::State(
                "only an answered call can be transferred",
            ));
        }
        self.endpoint.refer(now, call, target)?;
        self.drain_sip(now);
        Ok(())
    }

    fn add_leg(&mut self, call: CallId, leg: Leg) {
        self.by_media.insert(leg.local_rtp, call);
        self.legs.insert(call, Box::new(leg));
    }

    /// Forgets a call's media (its events were or will be reported).
    fn finish(&mut self, call: CallId) {
        self.pending.remove(&call);
        if let Some(mut leg) = self.legs.remove(&call) {
            self.by_media.remove(&leg.local_rtp);
            if let Some(m) = leg.media.as_mut() {
                m.close(Instant::now());
                count_media(m);
            }
            if let Some(r) = leg.room.as_mut() {
                r.close();
            }
        }
    }

    fn pending_offer(&mut self, call: CallId) -> Option<Option<Sdp>> {
        self.pending.remove(&call)
    }

    fn media_session(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        codec: u8,
        telephone_event: Option<u8>,
        offer: Option<&Sdp>,
        srtp: Option<SrtpKeys>,
    ) -> MediaSession {
        self.ssrc_seed = self
            .ssrc_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut cfg = SessionConfig::new(remote, (self.ssrc_seed >> 32) as u32);
        let law = if codec == 8 { Law::A } else { Law::Mu };
        cfg.codecs = vec![(codec, law)];
        cfg.telephone_event = telephone_event;
        cfg.initial_sequence = (self.ssrc_seed >> 8) as u16;
        cfg.initial_timestamp = self.ssrc_seed as u32;
        cfg.media_timeout = self.cfg.media_timeout;
        cfg.srtp = srtp;
        if let Some(port) = offer
            .and_then(|o| o.audio.as_ref())
            .and_then(|a| a.rtcp_port)
        {
            cfg.remote_rtcp = Some(SocketAddr::new(remote.ip(), port));
        }
        MediaSession::new(cfg, now)
    }

    fn drain_sip(&mut self, now: Instant) {
        while let Some(out) = self.endpoint.poll_output() {
            match out {
                SipOutput::Transmit {
                    transport,
                    destination,
                    bytes,
                } => self.out.push_back(Output::Transmit(Transmit::Sip {
                    transport,
                    destination,
                    bytes,
                })),
                SipOutput::Event(e) => self.sip_event(now, e),
            }
        }
    }

    fn sip_event(&mut self, now: Instant, e: SipEvent) {
        let event = match e {
            SipEvent::IncomingCall {
                call,
                from_user,
                called,
                source,
                transport,
                offer,
                authorization,
                ..
            } => {
                let offers_g711 = offer.as_ref().is_some_and(|o| {
                    o.audio.as_ref().is_some_and(|a| {
                        a.payload_types.iter().any(|pt| {
                            matches!(a.encoding(*pt).as_deref(), Some("PCMU") | Some("PCMA"))
                        })
                    })
                });
                let media_refusal = match &offer {
                    Some(o) => sdp::check_offer(o).err().map(|e| e.to_string()),
                    None => Some("no SDP offer (late offers are not supported)".into()),
                };
                let srtp = offer
                    .as_ref()
                    .and_then(|o| o.audio.as_ref())
                    .is_some_and(|a| a.proto.to_ascii_uppercase().contains("SAVP"));
                self.pending.insert(call, offer);
                CallEvent::Incoming(Incoming {
                    call,
                    caller: from_user,
                    called,
                    source,
                    transport,
                    authorized: authorization.is_some(),
                    offers_g711,
                    media_refusal,
                    srtp,
                })
            }
            SipEvent::Ringing { call } | SipEvent::EarlyMedia { call, .. } => {
                // A bridged target rings: so does its caller (180; the
                // target's early media is not relayed).
                if let Some(caller) = self.bridges.get(&call).copied()
                    && self
                        .legs
                        .get(&caller)
                        .is_some_and(|l| l.incoming && l.media.is_none())
                {
                    let _ = self.endpoint.ring(now, caller);
                }
                CallEvent::Ringing { call }
            }
            SipEvent::Answered { call, answer } => {
                let Some(leg) = self.legs.get_mut(&call) else {
                    return;
                };
                leg.ring_deadline = None;
                if leg.media.is_none() {
                    // Our offer was answered: media to where the answer says.
                    let key = leg.srtp_key.clone();
                    let negotiated = answer.as_ref().map(|a| {
                        let accepted = match &key {
                            Some(key) => sdp::accept_sdes_answer(a, key)
                                .map(|(codec, keys)| (codec, Some(keys))),
                            None => sdp::accept_answer(a).map(|codec| (codec, None)),
                        };
                        (accepted, remote_rtp(a))
                    });
                    match negotiated {
                        Some((Ok((codec, srtp)), Some(remote))) => {
                            let te = answer
                                .as_ref()
                                .and_then(|a| a.audio.as_ref())
                                .and_then(|a| a.telephone_event());
                            let media =
                                self.media_session(now, remote, codec, te, answer.as_ref(), srtp);
                            if let Some(leg) = self.legs.get_mut(&call) {
                                leg.media = Some(media);
                                leg.answered = true;
                            }
                            self.next_tick.get_or_insert(now + TICK);
                            // A bridged target answered: now the caller is.
                            if let Some(caller) = self.bridges.get(&call).copied() {
                                self.answer_bridged(now, caller);
                            }
                        }
                        other => {
                            // An answer we cannot use: hang up, say why.
                            let reason = match other {
                                Some((Err(e), _)) => format!("the answer is not usable: {e}"),
                                _ => "the answer has no PCMU/PCMA audio".into(),
                            };
                            let _ = self.endpoint.hangup(now, call);
                            self.finish(call);
                            self.report_end(
                                now,
                                CallEvent::Failed {
                                    call,
                                    status: 488,
                                    reason,
                                },
                            );
                            return;
                        }
                    }
                } else {
                    leg.answered = true;
                }
                CallEvent::Answered { call }
            }
            SipEvent::Confirmed { call } => {
                let Some(leg) = self.legs.get_mut(&call) else {
                    return;
                };
                leg.answered = true;
                CallEvent::Answered { call }
            }
            SipEvent::CallFailed {
                call,
                status,
                reason,
            } => {
                if !self.legs.contains_key(&call) && !self.pending.contains_key(&call) {
                    return; // we reported it already (our timeout, our hang-up)
                }
                self.finish(call);
                CallEvent::Failed {
                    call,
                    status,
                    reason,
                }
            }
            SipEvent::Ended {
                call,
                by_remote,
                cause,
            } => {
                if !self.legs.contains_key(&call) && !self.pending.contains_key(&call) {
                    return;
                }
                // A bridged caller that CANCELs while its target rings was never answered.
                let ringing = self
                    .legs
                    .get(&call)
                    .is_some_and(|l| l.incoming && l.media.is_none());
                self.finish(call);
                if ringing {
                    self.report_end(
                        now,
                        CallEvent::Failed {
                            call,
                            status: 487,
                            reason: "cancelled".into(),
                        },
                    );
                    return;
                }
                let cause = match cause {
                    continuum_sip::EndCause::Bye if by_remote => "remote_hangup",
                    continuum_sip::EndCause::Bye => "hangup",
                    continuum_sip::EndCause::Cancelled => "cancelled",
                    continuum_sip::EndCause::NoAck => "no_ack",
                    continuum_sip::EndCause::SessionExpired => "session_expired",
                    continuum_sip::EndCause::Lost => "lost",
                };
                CallEvent::Ended {
                    call,
                    by_remote,
                    cause,
                }
            }
            SipEvent::Reinvite { call, offer, hold } => {
                self.reinvite(now, call, offer, hold);
                CallEvent::Hold { call, held: hold }
            }
            SipEvent::Refer { call, target } => CallEvent::Refer { call, target },
            SipEvent::ReferResult { call, status } if status >= 300 => {
                CallEvent::Transferred { call, status }
            }
            SipEvent::ReferProgress { call, status } if status >= 200 => {
                if !self.legs.contains_key(&call) {
                    return;
                }
                self.out
                    .push_back(Output::Event(CallEvent::Transferred { call, status }));
                if (200..300).contains(&status) {
                    // A blind transfer succeeded: the phone talks to the
                    // target now; our leg ends (RFC 5589 2.4: the transferor BYEs).
                    let _ = self.endpoint.hangup(now, call);
                    self.finish(call);
                    self.report_end(
                        now,
                        CallEvent::Ended {
                            call,
                            by_remote: false,
                            cause: "transferred",
                        },
                    );
                }
                return;
            }
            SipEvent::Dtmf {
                call,
                digit,
                duration_ms,
            } => {
                metrics::counter!("continuum_sip_dtmf_received_total", "via" => "info")
                    .increment(1);
                self.relay_dtmf(
                    now,
                    call,
                    digit,
                    Duration::from_millis(u64::from(duration_ms)),
                );
                CallEvent::Dtmf {
                    call,
                    digit,
                    duration_ms,
                }
            }
            SipEvent::OptionsResult {
                peer,
                transport,
                status,
                ..
            } => {
                if let Some(check) = self
                    .keepalive
                    .as_mut()
                    .and_then(|k| k.result(now, peer, transport, status))
                {
                    self.out.push_back(Output::Trunk(check));
                }
                return;
            }
            _ => return,
        };
        self.report_end(now, event);
    }

    /// A re-INVITE: hold/unhold or a new codec; answered with our same address.
    fn reinvite(&mut self, now: Instant, call: CallId, offer: Option<Sdp>, hold: bool) {
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        leg.sdp_version += 1;
        let local = LocalMedia {
            addr: leg.local_rtp.ip(),
            port: leg.local_rtp.port(),
            session_id: leg.session_id,
            version: leg.sdp_version,
            direction: Direction::SendRecv,
            ptime: Some(20),
        };
        let answer = offer
            .as_ref()
            .map(|o| sdp::answer_with_key(o, &local, leg.srtp_key.as_ref()))
            // SRTP stays SRTP and plain stays plain for the whole call.
            .map(|r| {
                r.and_then(|n| {
                    if n.srtp.is_some() == leg.srtp_key.is_some() {
                        Ok(n)
                    } else {
                        Err(sdp::SdpError::NoCryptoSuite)
                    }
                })
            });
        match answer {
            Some(Ok(n)) => {
                let remote = offer.as_ref().and_then(remote_rtp);
                if let Some(media) = leg.media.as_mut() {
                    if let Some(keys) = n.srtp.clone() {
                        media.set_srtp_keys(keys);
                    }
                    if let Some(remote) = remote.filter(|r| !r.ip().is_unspecified()) {
                        media.set_remote(remote, None);
                    }
                    // A codec change (PCMU ↔ PCMA) applies from the next frame.
                    let law = if n.codec == 8 { Law::A } else { Law::Mu };
                    media.set_codec(n.codec, law, n.telephone_event);
                    let dir = if hold {
                        continuum_rtp::Direction::RecvOnly
                    } else {
                        continuum_rtp::Direction::SendRecv
                    };
                    media.set_direction(now, dir);
                }
                let _ = self.endpoint.answer(now, call, &n.sdp);
            }
            Some(Err(e)) => {
                let (code, text) = e.warning();
                let _ = self
                    .endpoint
                    .reject_with_warning(now, call, 488, code, &text);
            }
            // A re-INVITE without SDP (a session refresh): the endpoint answers it.
            None => {}
        }
    }

    fn drain_media(&mut self, now: Instant, call: CallId) {
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        let local = leg.local_rtp;
        let Some(media) = leg.media.as_mut() else {
            return;
        };
        let (mut timed_out, mut relay) = (false, Vec::new());
        while let Some(out) = media.poll_output() {
            match out {
                continuum_rtp::Output::Transmit(t) => {
                    self.out.push_back(Output::Transmit(Transmit::Media {
                        local,
                        rtcp: t.socket == Socket::Rtcp,
                        destination: t.dest,
                        bytes: t.bytes,
                    }))
                }
                continuum_rtp::Output::Dtmf(d) => {
                    tracing::debug!(?call, digit = ?d.digit, "DTMF (RFC 4733)");
                    if let Some(digit) = d.digit {
                        metrics::counter!("continuum_sip_dtmf_received_total", "via" => "rfc4733")
                            .increment(1);
                        relay.push((digit, d.duration));
                        self.out.push_back(Output::Event(CallEvent::Dtmf {
                            call,
                            digit,
                            duration_ms: d.duration.as_millis() as u32,
                        }));
                    }
                }
                continuum_rtp::Output::Event(continuum_rtp::Event::MediaTimeout) => {
                    timed_out = true
                }
                continuum_rtp::Output::Event(_) => {}
            }
        }
        for (digit, duration) in relay {
            self.relay_dtmf(now, call, digit, duration);
        }
        if timed_out {
            let _ = self.endpoint.hangup(now, call);
            self.finish(call);
            self.report_end(
                now,
                CallEvent::Ended {
                    call,
                    by_remote: false,
                    cause: "media_timeout",
                },
            );
            self.drain_sip(now);
        }
    }
}

/// What a bridged caller is answered when its target fails with `status`.
fn caller_status(status: u16) -> u16 {
    match status {
        486 | 600 => 486,
        408 | 480 => 480,
        404 | 484 | 604 => 404,
        603 => 603,
        488 | 606 => 488,
        _ => 503,
    }
}

/// A call's media dropped so far, by reason: from the wrong source
/// (injected, replayed or stray), not RTP or RTCP at all, or SRTP that
/// failed authentication or was replayed.
fn drops(m: &MediaSession) -> [(&'static str, u64); 4] {
    let st = m.dropped();
    [
        ("wrong_source", st.wrong_source),
        ("malformed", st.malformed),
        ("srtp_auth_failed", st.auth_failed),
        ("srtp_replayed", st.replayed),
    ]
}

/// A finished call's SRTP packets, for `/metrics`.
fn count_media(m: &MediaSession) {
    let st = m.stats();
    if m.is_srtp() {
        metrics::counter!("continuum_sip_srtp_packets_total", "direction" => "in")
            .increment(st.rtp_in);
        metrics::counter!("continuum_sip_srtp_packets_total", "direction" => "out")
            .increment(st.rtp_out);
    }
}

/// Where the SDP says to send RTP.
fn remote_rtp(sdp: &Sdp) -> Option<SocketAddr> {
    let (ip, port) = sdp.audio_addr()?;
    Some(SocketAddr::new(ip, port))
}

/// The hold tone: 400 Hz for 200 ms every 4 s, soft.
fn hold_tone(frame_no: u32) -> Frame {
    let mut f = [0; FRAME_SAMPLES];
    let pos = frame_no % 200;
    if pos < 10 {
        for (i, s) in f.iter_mut().enumerate() {
            let t = (pos as usize * FRAME_SAMPLES + i) as f32 / 8_000.0;
            *s = ((t * 2.0 * std::f32::consts::PI * 400.0).sin() * 3_000.0) as i16;
        }
    }
    f
}

/// The next 20 ms of queued prompts (silence-padded at the end of the last
/// one), and whether that was the end of everything queued.
fn next_prompt_frame(
    playback: &mut VecDeque<std::sync::Arc<[i16]>>,
    played: &mut usize,
) -> (Frame, bool) {
    let mut frame = [0; FRAME_SAMPLES];
    if playback.is_empty() {
        return (frame, false);
    }
    let mut filled = 0;
    while filled < FRAME_SAMPLES {
        let Some(prompt) = playback.front() else {
            break;
        };
        let take = (prompt.len() - *played).min(FRAME_SAMPLES - filled);
        frame[filled..filled + take].copy_from_slice(&prompt[*played..*played + take]);
        filled += take;
        *played += take;
        if *played >= prompt.len() {
            playback.pop_front();
            *played = 0;
        }
    }
    (frame, playback.is_empty())
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;
    use crate::keepalive::TrunkStatus;

    const ME: ([u8; 4], u16) = ([192, 0, 2, 10], 5060);

    fn gateway(keepalive: Option<Duration>) -> Gateway {
        let me = SocketAddr::from(ME);
        let mut sip = continuum_sip::Config::new(
            "test.invalid",
            vec![(TransportKind::Udp, me), (TransportKind::Tcp, me)],
        );
        sip.rng_seed = Some(7);
        Gateway::new(GatewayConfig {
            sip,
            ring_timeout: Duration::from_secs(45),
            media_timeout: Duration::from_secs(30),
            trunk_keepalive: keepalive,
        })
    }

    fn trunk(id: &str, port: u16, transport: TransportKind) -> TrunkProbe {
        TrunkProbe {
            trunk: id.into(),
            destination: SocketAddr::from(([198, 51, 100, 7], port)),
            transport,
        }
    }

    /// What the gateway sent (destination, text) and the trunk checks it reported.
    fn drain(g: &mut Gateway) -> (Vec<(SocketAddr, String)>, Vec<TrunkCheck>) {
        let (mut sent, mut checks) = (Vec::new(), Vec::new());
        while let Some(out) = g.poll_output() {
            match out {
                Output::Transmit(Transmit::Sip {
                    destination, bytes, ..
                }) => sent.push((destination, String::from_utf8(bytes).unwrap())),
                Output::Trunk(c) => checks.push(c),
                other => panic!("unexpected {other:?}"),
            }
        }
        (sent, checks)
    }

    /// The trunk's answer to a request: its Via, From, To (tagged), Call-ID, CSeq.
    fn answer(request: &str, status: u16) -> Vec<u8> {
        let mut out = format!("SIP/2.0 {status} Whatever\r\n");
        for line in request.lines() {
            let name = line.split(':').next().unwrap_or("");
            match name {
                "Via" | "From" | "Call-ID" | "CSeq" => out += &format!("{line}\r\n"),
                "To" => out += &format!("{line};tag=carrier\r\n"),
                _ => {}
            }
        }
        out += "Content-Length: 0\r\n\r\n";
        out.into_bytes()
    }

    fn udp_from(peer: SocketAddr) -> Transport {
        Transport {
            kind: TransportKind::Udp,
            local: SocketAddr::from(ME),
            remote: peer,
        }
    }

    /// Runs the gateway's timers up to `until` (fake time), answering nothing.
    fn run_until(g: &mut Gateway, until: Instant) -> (Vec<(SocketAddr, String)>, Vec<TrunkCheck>) {
        let (mut sent, mut checks) = (Vec::new(), Vec::new());
        while let Some(t) = g.poll_timeout().filter(|t| *t <= until) {
            g.handle_timeout(t);
            let (s, c) = drain(g);
            sent.extend(s);
            checks.extend(c);
        }
        (sent, checks)
    }

    #[test]
    fn options_make_a_trunk_up_and_two_timeouts_make_it_down() {
        let t0 = Instant::now();
        let mut g = gateway(Some(Duration::from_secs(30)));
        let t = trunk("carrier", 5060, TransportKind::Udp);
        g.set_trunks(t0, std::slice::from_ref(&t));
        let (sent, checks) = drain(&mut g);
        assert!(checks.is_empty(), "nothing known before an answer");
        assert_eq!(sent.len(), 1);
        let (to, options) = &sent[0];
        assert_eq!(*to, t.destination);
        assert!(
            options.starts_with("OPTIONS sip:198.51.100.7:5060 SIP/2.0\r\n"),
            "{options}"
        );
        assert!(options.contains("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"));
        // 404 is an answer: the trunk is alive.
        g.handle_sip(t0, udp_from(t.destination), &answer(options, 404));
        let (_, checks) = drain(&mut g);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].trunks, vec!["carrier".to_owned()]);
        assert_eq!(
            (checks[0].status, checks[0].changed),
            (TrunkStatus::Up, true)
        );
        assert_eq!(checks[0].sip_status, Some(404));

        // The carrier goes silent. Probes every 30 s, each retransmitted
        // (timer E) until timer F (32 s): the second timeout makes it down.
        let (sent, checks) = run_until(&mut g, t0 + Duration::from_secs(95));
        let probes: std::collections::HashSet<&str> = sent
            .iter()
            .filter_map(|(_, m)| m.lines().find(|l| l.starts_with("Call-ID:")))
            .collect();
        assert_eq!(probes.len(), 3, "probes at 30, 60 and 90 s");
        assert!(
            sent.len() > 3 * 3,
            "UDP probes are retransmitted: {}",
            sent.len()
        );
        let statuses: Vec<(TrunkStatus, bool)> =
            checks.iter().map(|c| (c.status, c.changed)).collect();
        assert_eq!(
            statuses,
            vec![(TrunkStatus::Up, false), (TrunkStatus::Down, true)],
            "the timeouts of the probes at 30 s (at 62 s) and 60 s (at 92 s)"
        );
        let down_at = checks[1].checked_at - t0;
        assert!(
            down_at >= Duration::from_secs(92) && down_at < Duration::from_secs(93),
            "{down_at:?}"
        );

        // It answers again: up at the next probe.
        let (sent, _) = run_until(&mut g, t0 + Duration::from_secs(120));
        let (_, last) = sent.last().unwrap();
        g.handle_sip(
            t0 + Duration::from_secs(120),
            udp_from(t.destination),
            &answer(last, 200),
        );
        let (_, checks) = drain(&mut g);
        assert_eq!(
            checks
                .iter()
                .map(|c| (c.status, c.changed))
                .collect::<Vec<_>>(),
            vec![(TrunkStatus::Up, true)]
        );
    }

    #[test]
    fn refused_connections_count_at_once_and_trunks_can_be_dropped() {
        let t0 = Instant::now();
        let mut g = gateway(Some(Duration::from_secs(5)));
        let t = trunk("tcp-carrier", 5062, TransportKind::Tcp);
        g.set_trunks(t0, std::slice::from_ref(&t));
        let (sent, _) = drain(&mut g);
        assert!(sent[0].1.contains("Via: SIP/2.0/TCP "), "{}", sent[0].1);
        g.sip_unreachable(t0, TransportKind::Tcp, t.destination);
        let (_, checks) = drain(&mut g);
        assert_eq!(
            checks.iter().map(|c| c.status).collect::<Vec<_>>(),
            vec![TrunkStatus::Unknown]
        );
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(g.poll_timeout(), Some(t1));
        g.handle_timeout(t1);
        let (sent, _) = drain(&mut g);
        assert_eq!(sent.len(), 1, "the next probe");
        g.sip_unreachable(t1, TransportKind::Tcp, t.destination);
        let (_, checks) = drain(&mut g);
        assert_eq!(
            checks
                .iter()
                .map(|c| (c.status, c.changed))
                .collect::<Vec<_>>(),
            vec![(TrunkStatus::Down, true)]
        );
        // A trunk taken out is probed no more.
        g.set_trunks(t1, &[]);
        let (sent, _) = run_until(&mut g, t1 + Duration::from_secs(60));
        assert!(sent.is_empty(), "{sent:?}");
    }

    #[test]
    fn keepalive_off_sends_nothing() {
        let t0 = Instant::now();
        let mut g = gateway(None);
        g.set_trunks(t0, &[trunk("carrier", 5060, TransportKind::Udp)]);
        assert_eq!(g.poll_output(), None);
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn a_trunk_over_a_transport_we_lack_is_down() {
        let t0 = Instant::now();
        let mut g = gateway(Some(Duration::from_secs(1)));
        g.set_trunks(t0, &[trunk("tls-carrier", 5061, TransportKind::Tls)]);
        g.handle_timeout(t0 + Duration::from_secs(1));
        let (sent, checks) = drain(&mut g);
        assert!(sent.is_empty());
        assert_eq!(checks.last().map(|c| c.status), Some(TrunkStatus::Down));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_sip::sdp::{Direction, LocalMedia};
    use continuum_sip::{Config, TransportKind};

    const GW: &str = "10.0.0.2:5060";
    const PHONE: &str = "10.0.0.1:5060";

    /// The gateway and a phone (a bare SIP endpoint) on an in-memory
    /// network with a fake clock.
    struct Net {
        gw: Gateway,
        phone: Endpoint,
        now: Instant,
        incoming: Vec<CallId>,
        answered: usize,
        ended: usize,
        /// Every other event, in order.
        events: Vec<CallEvent>,
    }

    fn flip(t: Transport) -> Transport {
        Transport {
            kind: t.kind,
            local: t.remote,
            remote: t.local,
        }
    }

    impl Net {
        fn new() -> Net {
            let config = |me: &str, seed| {
                let mut c = Config::new("test", vec![(TransportKind::Udp, me.parse().unwrap())]);
                c.rng_seed = Some(seed);
                c
            };
            Net {
                gw: Gateway::new(GatewayConfig {
                    sip: config(GW, 1),
                    ring_timeout: Duration::from_secs(30),
                    media_timeout: Duration::from_secs(30),
                    trunk_keepalive: None,
                }),
                phone: Endpoint::new(config(PHONE, 2)),
                now: Instant::now(),
                incoming: Vec::new(),
                answered: 0,
                ended: 0,
                events: Vec::new(),
            }
        }

        fn flush(&mut self) {
            loop {
                let mut moved = false;
                while let Some(out) = self.gw.poll_output() {
                    moved = true;
                    match out {
                        Output::Transmit(Transmit::Sip {
                            transport, bytes, ..
                        }) => self.phone.handle_input(self.now, flip(transport), &bytes),
                        Output::Transmit(_) => {}
                        Output::Event(CallEvent::Incoming(i)) => self.incoming.push(i.call),
                        Output::Event(CallEvent::Answered { .. }) => self.answered += 1,
                        Output::Event(CallEvent::Ended { .. }) => self.ended += 1,
                        Output::Event(e) => self.events.push(e),
                        Output::Trunk(_) => {}
                    }
                }
                while let Some(out) = self.phone.poll_output() {
                    moved = true;
                    if let SipOutput::Transmit {
                        transport, bytes, ..
                    } = out
                    {
                        self.gw.handle_sip(self.now, flip(transport), &bytes);
                    }
                }
                if !moved {
                    break;
                }
            }
        }

        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                self.flush();
                let next = [self.gw.poll_timeout(), self.phone.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        self.gw.handle_timeout(self.now);
                        self.phone.handle_timeout(self.now);
                    }
                    _ => break,
                }
            }
            self.now = end;
            self.flush();
        }

        /// `n` calls from the phone, answered by the gateway (the way the
        /// server answers a dispatch to a conversation).
        fn answered_calls(&mut self, n: u16) -> Vec<CallId> {
            let offer = sdp::offer(&LocalMedia {
                addr: "10.0.0.1".parse().unwrap(),
                port: 4000,
                session_id: 1,
                version: 1,
                direction: Direction::SendRecv,
                ptime: Some(20),
            });
            let calls: Vec<CallId> = (0..n)
                .map(|_| {
                    self.phone
                        .invite(
                            self.now,
                            InviteRequest {
                                target: format!("sip:+14155550100@{GW}"),
                                from: "sip:+14155550123@10.0.0.1".into(),
                                from_display: None,
                                sdp: Some(offer.clone()),
                                credentials: None,
                                destination: GW.parse().unwrap(),
                                transport: TransportKind::Udp,
                                route: vec![],
                                extra_headers: vec![],
                            },
                        )
                        .unwrap()
                })
                .collect();
            self.flush();
            let incoming = std::mem::take(&mut self.incoming);
            assert_eq!(incoming.len(), calls.len());
            for (i, call) in incoming.into_iter().enumerate() {
                let rtp = SocketAddr::from(([10, 0, 0, 2], 20_000 + 2 * i as u16));
                self.gw.accept(self.now, call, rtp, true).unwrap();
            }
            self.flush();
            calls
        }
    }

    #[test]
    fn prompts_play_in_order_then_say_so_once() {
        let mut net = Net::new();
        let call = net.answered_calls(1)[0];
        net.gw.play(call, vec![1i16; 1000].into()).unwrap();
        net.gw.play(call, vec![2i16; 100].into()).unwrap();
        net.run(Duration::from_millis(60));
        assert!(
            !net.events.contains(&CallEvent::PlaybackFinished { call }),
            "1,100 samples take 138 ms"
        );
        net.run(Duration::from_millis(200));
        let finished = net
            .events
            .iter()
            .filter(|e| **e == CallEvent::PlaybackFinished { call })
            .count();
        assert_eq!(finished, 1);
        // A stopped prompt never says it finished (barge-in).
        net.events.clear();
        net.gw.play(call, vec![3i16; 8000].into()).unwrap();
        net.run(Duration::from_millis(100));
        net.gw.stop_playback(call).unwrap();
        net.run(Duration::from_secs(2));
        assert!(!net.events.contains(&CallEvent::PlaybackFinished { call }));
    }

    #[test]
    fn a_recording_ends_at_its_limit_or_when_stopped() {
        let mut net = Net::new();
        let call = net.answered_calls(1)[0];
        net.gw
            .start_recording(call, Duration::from_millis(100))
            .unwrap();
        net.run(Duration::from_millis(500));
        let recorded: Vec<_> = net
            .events
            .iter()
            .filter_map(|e| match e {
                CallEvent::Recorded { samples, full, .. } => Some((samples.len(), *full)),
                _ => None,
            })
            .collect();
        assert_eq!(recorded, vec![(800, true)]);
        net.events.clear();
        net.gw
            .start_recording(call, Duration::from_secs(60))
            .unwrap();
        net.run(Duration::from_millis(200));
        net.gw.stop_recording(call).unwrap();
        net.flush();
        let Some(CallEvent::Recorded { samples, full, .. }) = net.events.last() else {
            panic!("no recording: {:?}", net.events);
        };
        assert!(!full);
        assert!(
            (1_200..=2_000).contains(&samples.len()),
            "{}",
            samples.len()
        );
        assert_eq!(
            net.gw.stop_recording(call),
            Err(GatewayError::State("not recording"))
        );
    }

    #[test]
    fn hold_is_for_answered_calls_and_plays_a_soft_periodic_tone() {
        let mut net = Net::new();
        let call = net.answered_calls(1)[0];
        assert_eq!(net.gw.set_hold(call, true), Ok(()));
        net.run(Duration::from_millis(200));
        assert_eq!(net.gw.set_hold(call, false), Ok(()));
        assert_eq!(
            net.gw.set_hold(CallId(u64::MAX), true),
            Err(GatewayError::UnknownCall)
        );
        // 200 ms of 400 Hz every 4 s, never loud.
        let tone: Vec<Frame> = (0..200).map(hold_tone).collect();
        let loud = tone.iter().filter(|f| f.iter().any(|s| *s != 0)).count();
        assert_eq!(loud, 10);
        assert!(tone.iter().flatten().all(|s| s.unsigned_abs() <= 3_000));
    }

    #[test]
    fn calls_leave_no_state_behind() {
        let mut net = Net::new();
        for round in 0..20 {
            let calls = net.answered_calls(10);
            net.run(Duration::from_millis(100));
            for call in calls {
                net.phone.hangup(net.now, call).unwrap();
            }
            net.run(Duration::from_millis(100));
            assert_eq!(net.ended, 10 * (round + 1));
        }
        assert_eq!(net.answered, 200);
        net.run(Duration::from_secs(64));
        assert!(net.gw.live_state().is_empty(), "{:?}", net.gw.live_state());
        assert!(net.phone.live_state().is_empty());
    }

    /// A burst of calls (the bench's 2000 calls/s): once they are over and the
    /// timers have run, the tables give their peak memory back. They did not:
    /// a `Leg` is 13 KiB inline, so the legs table alone kept megabytes of the
    /// peak (28 MiB after the bench's burst), and the lingering transactions'
    /// table another 9 MiB.
    #[test]
    fn a_burst_of_calls_gives_its_table_memory_back() {
        let mut net = Net::new();
        let calls = net.answered_calls(500);
        net.run(Duration::from_millis(50));
        assert_eq!(net.gw.live_state().legs, 500);
        let peak = net.gw.table_bytes();
        for call in calls {
            net.phone.hangup(net.now, call).unwrap();
        }
        net.run(Duration::from_millis(50));
        assert_eq!(net.ended, 500);
        net.run(Duration::from_secs(64));
        assert!(net.gw.live_state().is_empty(), "{:?}", net.gw.live_state());
        let after = net.gw.table_bytes();
        assert!(
            after < 64 * 1024,
            "tables hold {after} bytes after the burst (peak {peak})"
        );
    }
}
