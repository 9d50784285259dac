//! One media worker: every room on one thread and one UDP port.

use crate::participant::{Mode, Participant, ParticipantId, Polled};
use crate::quality::{QualityChange, QualitySample, QualityThresholds};
use crate::stun;
use std::collections::{HashMap, VecDeque};
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

pub struct Worker {
    cfg: WorkerConfig,
    next_id: u64,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<String, Vec<ParticipantId>>,
    speakers: HashMap<String, crate::speaker::SpeakerDetector>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
    outputs: VecDeque<SfuOutput>,
    pub stats: WorkerStats,
}

/// Monotonic counters, exported by the IO loop as Prometheus counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    /// Datagrams no participant would take (garbage, stale, wrong credentials).
    pub unknown_datagrams: u64,
    /// Media frames written to subscribers, and their payload bytes.
    pub frames_forwarded: u64,
    pub bytes_forwarded: u64,
    /// Keyframe requests relayed from subscribers to publishers.
    pub keyframe_requests: u64,
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
            cfg,
            next_id: 1,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            speakers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            outputs: VecDeque::new(),
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
            .map_err(|e| JoinError::BadOffer(e.to_string()))?;
        let creds = IceCreds::new();
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds.clone())
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let candidate = Candidate::host(self.cfg.public_addr, "udp")
            .map_err(|e| JoinError::Refused(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::Refused(e.to_string()))?;

        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        let mut p = Participant::new(
            id,
            req.room.clone(),
            req.identity.clone(),
            rtc,
            req.mode,
            self.cfg.quality,
        );
        // Everything already published in the room is offered to the newcomer.
        for other in self.rooms.get(&req.room).into_iter().flatten() {
            if let Some(o) = self.participants.get(other) {
                for t in &o.tracks_in {
                    p.add_track_out(std::sync::Arc::downgrade(&t.track));
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
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        p.accept_answer(answer)
            .map_err(|e| SignalError::Refused(e.to_string()))
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
        let c = Candidate::from_sdp_string(line)
            .map_err(|e| SignalError::BadSdp(format!("bad candidate: {e}")))?;
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
            SdpOffer::from_sdp_string(sdp).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        let answer = p
            .accept_offer(offer)
            .map_err(|e| SignalError::Refused(e.to_string()))?
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
        if let Err(e) = p.rtc.handle_input(input) {
            tracing::info!(participant = %p.id, error = ?e, "bad input; disconnecting");
            p.rtc.disconnect();
        }
        true
    }

    /// Advances every participant to `now`, routes media between them, and
    /// returns when it next needs to be called.
    pub fn drive(&mut self, now: Instant) -> Instant {
        for p in self.participants.values_mut() {
            if p.rtc.is_alive() {
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
        }
        let mut next = now + Duration::from_millis(100);
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        let mut gone = Vec::new();
        for id in ids {
            while let Some(p) = self.participants.get_mut(&id) {
                if let Some(offer) = p.offer_if_needed() {
                    self.outputs.push_back(SfuOutput::Offer {
                        participant: id,
                        sdp: offer.to_sdp_string(),
                    });
                }
                match p.poll() {
                    Polled::Timeout(t) => {
                        next = next.min(t);
                        break;
                    }
                    Polled::Nothing => {}
                    Polled::Data { binary, data } => {
                        let (room, stats) = (p.room.clone(), &mut self.stats);
                        each_other(&self.rooms, &mut self.participants, &room, id, |o| {
                            if o.send_data(binary, &data) {
                                stats.data_messages_relayed += 1;
                            }
                        });
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
                    Polled::Quality { sample, change } => {
                        self.outputs.push_back(SfuOutput::Quality {
                            participant: id,
                            sample,
                        });
                        let (room, identity) = (p.room.to_string(), p.identity.clone());
                        match change {
                            Some(QualityChange::Degraded { reasons, held }) => {
                                self.outputs.push_back(SfuOutput::Event(
                                    RoomEvent::QualityDegraded {
                                        room,
                                        participant: id,
                                        identity,
                                        reasons,
                                        held,
                                        sample,
                                    },
                                ));
                            }
                            Some(QualityChange::Recovered { held }) => {
                                self.outputs.push_back(SfuOutput::Event(
                                    RoomEvent::QualityRecovered {
                                        room,
                                        participant: id,
                                        identity,
                                        held,
                                        sample,
                                    },
                                ));
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
                        gone.push(id);
                        break;
                    }
                    Polled::TrackOpen(track) => {
                        let room = p.room.clone();
                        each_other(&self.rooms, &mut self.participants, &room, id, |o| {
                            o.add_track_out(track.clone())
                        });
                    }
                    Polled::Media(data) => {
                        let room = p.room.clone();
                        if let Some(level) = data.ext_vals.audio_level {
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
                        each_other(&self.rooms, &mut self.participants, &room, id, |o| {
                            if o.write_media(id, &data) {
                                stats.frames_forwarded += 1;
                                stats.bytes_forwarded += data.data.len() as u64;
                            }
                        });
                    }
                    Polled::KeyframeRequest {
                        req,
                        origin,
                        mid_in,
                    } => {
                        if let Some(o) = self.participants.get_mut(&origin)
                            && o.request_keyframe(mid_in, req.rid, req.kind)
                        {
                            self.stats.keyframe_requests += 1;
                        }
                    }
                }
            }
        }
        // ICE lost and not restarted within the grace period: the participant is gone.
        gone.extend(
            self.participants
                .values()
                .filter(|p| {
                    p.disconnected_at
                        .is_some_and(|t| now.saturating_duration_since(t) > RECONNECT_GRACE)
                        || p.pending_since.is_some_and(|t| {
                            now.saturating_duration_since(t) > self.cfg.answer_timeout
                        })
                })
                .map(|p| p.id),
        );
        for id in gone {
            self.leave(id);
        }
        for (room, detector) in &mut self.speakers {
            if let Some(participant) = detector.tick(now) {
                self.outputs.push_back(SfuOutput::Speaker {
                    room: room.clone(),
                    participant,
                });
            }
        }
        next
    }

    pub fn poll_output(&mut self) -> Option<SfuOutput> {
        self.outputs.pop_front()
    }
}

/// Applies `f` to every participant of `room` but `except`.
fn each_other(
    rooms: &HashMap<String, Vec<ParticipantId>>,
    participants: &mut HashMap<ParticipantId, Participant>,
    room: &str,
    except: ParticipantId,
    mut f: impl FnMut(&mut Participant),
) {
    for other in rooms
        .get(room)
        .into_iter()
        .flatten()
        .filter(|o| **o != except)
    {
        if let Some(o) = participants.get_mut(other) {
            f(o);
        }
    }
}
