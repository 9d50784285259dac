//! One participant: its `Rtc`, the tracks it publishes, and the tracks it
//! receives from others (with their negotiation state).

use crate::quality::{QualityChange, QualityMonitor, QualitySample, QualityThresholds};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, Mid, Rid,
};
use str0m::{Event, IceConnectionState, Output, Rtc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// How a participant takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Publishes and subscribes; renegotiates over signaling as tracks come and go.
    Full,
    /// WHIP: publishes only, never renegotiated.
    PublishOnly,
    /// WHEP: receives the room's tracks in the m-lines of its own offer; no
    /// renegotiation, so tracks published after it joined do not reach it.
    SubscribeOnly,
}

/// A track published by a participant; others hold weak references, so a
/// departed publisher's tracks disappear from everyone.
#[derive(Debug)]
pub(crate) struct TrackIn {
    pub origin: ParticipantId,
    pub mid: Mid,
    pub kind: MediaKind,
}

#[derive(Debug)]
pub(crate) struct TrackInEntry {
    pub track: Arc<TrackIn>,
    pub last_keyframe_request: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    NegotiatingStop(Mid),
}

#[derive(Debug)]
pub(crate) struct TrackOut {
    pub track: Weak<TrackIn>,
    pub state: OutState,
}

impl TrackOut {
    pub fn mid(&self) -> Option<Mid> {
        match self.state {
            OutState::ToOpen => None,
            OutState::Negotiating(m)
            | OutState::Open(m)
            | OutState::ToStop(m)
            | OutState::NegotiatingStop(m) => Some(m),
        }
    }
}

/// What polling a participant produced for the worker to route.
#[allow(clippy::large_enum_variant)] // MediaData is moved straight through, never stored.
pub(crate) enum Polled {
    Nothing,
    Timeout(Instant),
    Transmit(std::net::SocketAddr, Vec<u8>),
    TrackOpen(Weak<TrackIn>),
    Media(MediaData),
    KeyframeRequest {
        req: KeyframeRequest,
        origin: ParticipantId,
        mid_in: Mid,
    },
    Connected,
    Disconnected,
    Quality {
        sample: QualitySample,
        change: Option<QualityChange>,
    },
    /// New RTCP feedback since the last stats: `sent` (to publishers) or received.
    Rtcp(RtcpDelta),
    /// A data-channel message for the rest of the room.
    Data {
        binary: bool,
        data: Vec<u8>,
    },
}

/// NACK, PLI and FIR counts since the previous stats report of a stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtcpDelta {
    /// True when we sent them (ingress stream), false when we received them.
    pub sent: bool,
    pub nacks: u64,
    pub plis: u64,
    pub firs: u64,
}

pub(crate) struct Participant {
    pub id: ParticipantId,
    /// Shared, so routing a frame to the room costs no allocation.
    pub room: Arc<str>,
    pub identity: String,
    pub rtc: Rtc,
    pub tracks_in: Vec<TrackInEntry>,
    pub tracks_out: Vec<TrackOut>,
    /// Our renegotiation offer awaiting the client's answer.
    pub pending: Option<SdpPendingOffer>,
    /// When our pending offer was sent (a client that never answers is dropped).
    pub pending_since: Option<Instant>,
    pub chosen_rid: Option<Rid>,
    pub connected: bool,
    pub mode: Mode,
    quality: QualityMonitor,
    thresholds: QualityThresholds,
    /// Worst jitter seen on this participant's incoming media since the last sample.
    jitter: Option<Duration>,
    last_rx: Option<(Instant, u64)>,
    /// Since when ICE has been disconnected (awaiting a restart), if it is.
    pub disconnected_at: Option<Instant>,
    /// Last cumulative [nacks, plis, firs] per (mid, ingress?) stream.
    rtcp_seen: std::collections::HashMap<(Mid, bool), [u64; 3]>,
    /// The participant's data channel, once open.
    channel: Option<str0m::channel::ChannelId>,
}

const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);
/// Larger data-channel messages are dropped rather than relayed.
pub(crate) const MAX_DATA_MESSAGE: usize = 16 * 1024;

impl Participant {
    pub fn new(
        id: ParticipantId,
        room: String,
        identity: String,
        rtc: Rtc,
        mode: Mode,
        thresholds: QualityThresholds,
    ) -> Self {
        Participant {
            id,
            room: room.into(),
            identity,
            rtc,
            tracks_in: Vec::new(),
            tracks_out: Vec::new(),
            pending: None,
            pending_since: None,
            chosen_rid: None,
            connected: false,
            mode,
            quality: QualityMonitor::default(),
            thresholds,
            jitter: None,
            last_rx: None,
            disconnected_at: None,
            rtcp_seen: Default::default(),
            channel: None,
        }
    }

    pub fn poll(&mut self) -> Polled {
        if !self.rtc.is_alive() {
            return Polled::Disconnected;
        }
        match self.rtc.poll_output() {
            Ok(Output::Timeout(t)) => Polled::Timeout(t),
            Ok(Output::Transmit(t)) => Polled::Transmit(t.destination, t.contents.into()),
            Ok(Output::Event(e)) => self.on_event(e),
            Err(e) => {
                tracing::info!(participant = %self.id, error = ?e, "participant failed; disconnecting");
                self.rtc.disconnect();
                Polled::Disconnected
            }
        }
    }

    fn on_event(&mut self, e: Event) -> Polled {
        match e {
            Event::Connected => {
                self.connected = true;
                Polled::Connected
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // Keep the seat (identity, subscriptions) for an ICE restart; the
                // worker ends it if the participant stays away too long.
                self.disconnected_at.get_or_insert_with(Instant::now);
                Polled::Nothing
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                self.disconnected_at = None;
                Polled::Nothing
            }
            Event::MediaIngressStats(s) => {
                let clock = match self
                    .tracks_in
                    .iter()
                    .find(|t| t.track.mid == s.mid)
                    .map(|t| t.track.kind)
                {
                    Some(MediaKind::Audio) => 48_000.0,
                    _ => 90_000.0,
                };
                let j = Duration::from_secs_f64(s.jitter as f64 / clock);
                self.jitter = Some(self.jitter.map_or(j, |prev| prev.max(j)));
                // What we asked of this publisher: retransmissions and keyframes.
                Polled::Rtcp(self.rtcp_delta(s.mid, true, [s.nacks, s.plis, s.firs]))
            }
            Event::ChannelOpen(id, _) => {
                self.channel = Some(id);
                Polled::Nothing
            }
            Event::ChannelData(d)
                if Some(d.id) == self.channel && d.data.len() <= MAX_DATA_MESSAGE =>
            {
                Polled::Data {
                    binary: d.binary,
                    data: d.data,
                }
            }
            Event::MediaEgressStats(s) => {
                // What this subscriber asked of us.
                Polled::Rtcp(self.rtcp_delta(s.mid, false, [s.nacks, s.plis, s.firs]))
            }
            Event::PeerStats(s) => {
                let ingress_bps = self.last_rx.and_then(|(at, bytes)| {
                    let secs = s.timestamp.saturating_duration_since(at).as_secs_f64();
                    (secs > 0.0)
                        .then(|| (s.peer_bytes_rx.saturating_sub(bytes) as f64 * 8.0 / secs) as u64)
                });
                self.last_rx = Some((s.timestamp, s.peer_bytes_rx));
                let loss = match (s.ingress_loss_fraction, s.egress_loss_fraction) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let sample = QualitySample {
                    loss,
                    rtt: s.rtt,
                    jitter: self.jitter.take(),
                    ingress_bps,
                    egress_estimate_bps: s.bwe_tx.map(|b| b.as_u64()),
                };
                let change = self.quality.observe(s.timestamp, &sample, &self.thresholds);
                Polled::Quality { sample, change }
            }
            Event::MediaAdded(m)
                if self.mode == Mode::SubscribeOnly && m.direction == Direction::SendOnly =>
            {
                // A WHEP viewer's m-line: bind the first room track of its kind.
                let slot = self.tracks_out.iter_mut().find(|t| {
                    t.state == OutState::ToOpen
                        && t.track.upgrade().is_some_and(|tr| tr.kind == m.kind)
                });
                if let Some(t) = slot {
                    t.state = OutState::Open(m.mid);
                }
                Polled::Nothing
            }
            Event::MediaAdded(m)
                if matches!(m.direction, Direction::RecvOnly | Direction::SendRecv) =>
            {
                let track = Arc::new(TrackIn {
                    origin: self.id,
                    mid: m.mid,
                    kind: m.kind,
                });
                let weak = Arc::downgrade(&track);
                self.tracks_in.push(TrackInEntry {
                    track,
                    last_keyframe_request: None,
                });
                Polled::TrackOpen(weak)
            }
            Event::MediaData(data) => {
                if !data.contiguous {
                    self.request_keyframe(data.mid, data.rid, KeyframeRequestKind::Fir);
                }
                Polled::Media(data)
            }
            Event::KeyframeRequest(mut req) => {
                let Some(out) = self.tracks_out.iter().find(|t| t.mid() == Some(req.mid)) else {
                    return Polled::Nothing;
                };
                let Some(track) = out.track.upgrade() else {
                    return Polled::Nothing;
                };
                req.rid = self.chosen_rid;
                Polled::KeyframeRequest {
                    req,
                    origin: track.origin,
                    mid_in: track.mid,
                }
            }
            _ => Polled::Nothing,
        }
    }

    fn rtcp_delta(&mut self, mid: Mid, sent: bool, now: [u64; 3]) -> RtcpDelta {
        let before = self.rtcp_seen.insert((mid, sent), now).unwrap_or([0; 3]);
        RtcpDelta {
            sent,
            nacks: now[0].saturating_sub(before[0]),
            plis: now[1].saturating_sub(before[1]),
            firs: now[2].saturating_sub(before[2]),
        }
    }

    /// Relays a data-channel message from another participant; false if the
    /// channel is not open yet or its buffer is full (messages are not queued).
    pub fn send_data(&mut self, binary: bool, data: &[u8]) -> bool {
        let Some(mut ch) = self.channel.and_then(|id| self.rtc.channel(id)) else {
            return false;
        };
        ch.write(binary, data).unwrap_or(false)
    }

    /// Asks this participant (a publisher) for a keyframe, at most every 500 ms
    /// per track. Returns whether a request was sent.
    pub fn request_keyframe(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    ) -> bool {
        let Some(entry) = self.tracks_in.iter_mut().find(|t| t.track.mid == mid) else {
            return false;
        };
        if entry
            .last_keyframe_request
            .is_some_and(|t| t.elapsed() < KEYFRAME_THROTTLE)
        {
            return false;
        }
        let Some(mut w) = self.rtc.writer(mid) else {
            return false;
        };
        let sent = w.request_keyframe(rid, kind).is_ok();
        entry.last_keyframe_request = Some(Instant::now());
        sent
    }

    pub fn add_track_out(&mut self, track: Weak<TrackIn>) {
        if self.mode == Mode::PublishOnly {
            return;
        }
        self.tracks_out.push(TrackOut {
            track,
            state: OutState::ToOpen,
        });
    }

    /// Builds a renegotiation offer when tracks came or went, unless one is in flight.
    pub fn offer_if_needed(&mut self) -> Option<SdpOffer> {
        if self.mode != Mode::Full || self.pending.is_some() || !self.connected {
            return None;
        }
        for t in &mut self.tracks_out {
            if let OutState::Open(m) = t.state
                && t.track.upgrade().is_none()
            {
                t.state = OutState::ToStop(m);
            }
        }
        let mut change = self.rtc.sdp_api();
        for t in &mut self.tracks_out {
            match t.state {
                OutState::ToOpen => {
                    if let Some(track) = t.track.upgrade() {
                        let stream_id = track.origin.to_string();
                        let mid = change.add_media(
                            track.kind,
                            Direction::SendOnly,
                            Some(stream_id),
                            None,
                            None,
                        );
                        t.state = OutState::Negotiating(mid);
                    }
                }
                OutState::ToStop(mid) => {
                    change.stop_media(mid);
                    t.state = OutState::NegotiatingStop(mid);
                }
                _ => {}
            }
        }
        if !change.has_changes() {
            return None;
        }
        let (offer, pending) = change.apply()?;
        self.pending = Some(pending);
        self.pending_since = Some(Instant::now());
        Some(offer)
    }

    pub fn accept_answer(&mut self, answer: SdpAnswer) -> Result<(), str0m::RtcError> {
        self.pending_since = None;
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        for t in &mut self.tracks_out {
            if let OutState::Negotiating(m) = t.state {
                t.state = OutState::Open(m);
            }
        }
        self.tracks_out
            .retain(|t| !matches!(t.state, OutState::NegotiatingStop(_)));
        Ok(())
    }

    /// The client renegotiates (e.g. it started publishing): answer, and redo
    /// any offer of ours that this one overtook.
    pub fn accept_offer(&mut self, offer: SdpOffer) -> Result<SdpAnswer, str0m::RtcError> {
        self.pending = None;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        for t in &mut self.tracks_out {
            match t.state {
                OutState::Negotiating(_) => t.state = OutState::ToOpen,
                OutState::NegotiatingStop(m) => t.state = OutState::ToStop(m),
                _ => {}
            }
        }
        Ok(answer)
    }

    /// Writes media from another participant into the matching outgoing track;
    /// returns whether it was written.
    pub fn write_media(&mut self, origin: ParticipantId, data: &MediaData) -> bool {
        let Some(mid) = self
            .tracks_out
            .iter()
            .find(|o| {
                o.track
                    .upgrade()
                    .is_some_and(|i| i.origin == origin && i.mid == data.mid)
            })
            .and_then(|o| match o.state {
                OutState::Open(m) => Some(m),
                _ => None,
            })
        else {
            return false;
        };
        // Without a layer policy yet, forward the top simulcast layer or the only one.
        if data.rid.is_some() && data.rid != Some("h".into()) {
            return false;
        }
        self.chosen_rid = data.rid;
        let Some(writer) = self.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = writer.match_params(data.params) else {
            return false;
        };
        match writer.write(pt, data.network_time, data.time, data.data.clone()) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(participant = %self.id, error = ?e, "write failed; disconnecting");
                self.rtc.disconnect();
                false
            }
        }
    }
}
