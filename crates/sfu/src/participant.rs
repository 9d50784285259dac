//! One participant: its `Rtc`, the tracks it publishes, and the tracks it
//! receives from others (with their negotiation state).

use crate::forward::{Forwarder, InPacket, LayerMeter, Layers, Verdict};
use crate::quality::{QualityChange, QualityMonitor, QualitySample, QualityThresholds};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
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
    /// Last keyframe request per layer (throttled).
    pub last_keyframe_request: Vec<(Option<Rid>, Instant)>,
    pub meter: LayerMeter,
    /// Layers we asked the publisher to stop sending (nobody takes them),
    /// and since when each layer has been unwanted (see `Worker::dynacast`).
    pub paused: Vec<Option<Rid>>,
    pub unwanted_since: Vec<(Option<Rid>, Instant)>,
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
    /// Copied from the track, so forwarding needs no `Weak::upgrade`.
    pub origin: ParticipantId,
    pub mid_in: Mid,
    pub kind: MediaKind,
    pub track: Weak<TrackIn>,
    pub state: OutState,
    pub fwd: Forwarder,
    /// Publisher payload type → ours, learned on first use.
    pt_map: Vec<(Pt, Option<Pt>)>,
    unpaced_set: bool,
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

/// One published RTP packet on its way to the room's subscribers.
pub(crate) struct Incoming {
    pub mid: Mid,
    pub params: PayloadParams,
    pub rid: Option<Rid>,
    pub keyframe: bool,
    pub layers: Layers,
    pub pkt: RtpPacket,
}

/// What polling a participant produced for the worker to route.
#[allow(clippy::large_enum_variant)] // Moved straight through, never stored.
pub(crate) enum Polled {
    Nothing,
    Timeout(Instant),
    Transmit(std::net::SocketAddr, Vec<u8>),
    TrackOpen(Weak<TrackIn>),
    Rtp(Incoming),
    KeyframeRequest {
        origin: ParticipantId,
        mid_in: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    },
    Connected,
    Disconnected,
    Quality {
        sample: QualitySample,
        change: Option<QualityChange>,
        /// Packets retransmitted (or padding) since the last sample.
        rtx_delta: u64,
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
    pub connected: bool,
    pub mode: Mode,
    quality: QualityMonitor,
    pub thresholds: QualityThresholds,
    /// Worst jitter seen on this participant's incoming media since the last sample.
    jitter: Option<Duration>,
    last_rx: Option<(Instant, u64)>,
    /// Since when ICE has been disconnected (awaiting a restart), if it is.
    pub disconnected_at: Option<Instant>,
    /// Last cumulative [nacks, plis, firs] per (mid, ingress?) stream.
    rtcp_seen: std::collections::HashMap<(Mid, bool), [u64; 3]>,
    /// The participant's data channel, once open.
    channel: Option<str0m::channel::ChannelId>,
    /// Incoming SSRC → (mid, rid), so a packet's track is one lookup.
    ssrcs: std::collections::HashMap<Ssrc, (Mid, Option<Rid>)>,
    /// Our latest bandwidth estimate towards this participant (TWCC).
    pub bwe: Option<Bitrate>,
    /// Keyframe requests to relay to publishers (layer switches, new subscriptions).
    keyframe_asks: Vec<(ParticipantId, Mid, Option<Rid>)>,
    /// A WHEP viewer's m-lines with no track yet (the room had none of that
    /// kind when it came): the next track of the kind published takes one.
    free_slots: Vec<(Mid, MediaKind)>,
    last_layer_choice: Option<Instant>,
    /// RTP packets written towards this subscriber, and the egress packet
    /// count str0m reported (which includes retransmissions and padding).
    pub packets_written: u64,
    egress_packets: std::collections::HashMap<Mid, u64>,
    pub rtx_reported: u64,
    rtx_unreported: u64,
    /// Simulcast layer switches made for this subscriber (all tracks).
    pub layer_switches: u64,
    /// When str0m next wants time, and whether the worker already queued us.
    pub next_timeout: Instant,
    /// The worker's timer heap holds a live entry for `next_timeout`.
    pub timer_armed: bool,
    /// The rating last sent to the room (others hear only of changes).
    pub last_rating: Option<crate::quality::Rating>,
    /// When its last datagram arrived, and whether its silence since was
    /// reported as a stall.
    pub last_heard: Option<Instant>,
    /// When it joined (for [`crate::WorkerConfig::connect_timeout`]).
    pub joined_at: Instant,
    pub stall_reported: bool,
    /// Why (index into `TIMER_REASONS`).
    pub next_reason: u8,
    pub queued: bool,
    /// Tracks came or went since our last offer (see `offer_if_needed`).
    pub renegotiate: bool,
    /// Whether our egress goes through str0m's pacer (see `WorkerConfig::pacing`).
    pub pacing: bool,
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
            connected: false,
            mode,
            quality: QualityMonitor::default(),
            thresholds,
            jitter: None,
            last_rx: None,
            disconnected_at: None,
            rtcp_seen: Default::default(),
            channel: None,
            ssrcs: Default::default(),
            bwe: None,
            keyframe_asks: Vec::new(),
            free_slots: Vec::new(),
            last_layer_choice: None,
            packets_written: 0,
            egress_packets: Default::default(),
            rtx_reported: 0,
            rtx_unreported: 0,
            layer_switches: 0,
            next_timeout: Instant::now(),
            timer_armed: false,
            last_rating: None,
            last_heard: None,
            joined_at: Instant::now(),
            stall_reported: false,
            next_reason: 0,
            queued: false,
            renegotiate: true,
            pacing: false,
        }
    }

    pub fn poll(&mut self, now: Instant) -> Polled {
        if !self.rtc.is_alive() {
            return Polled::Disconnected;
        }
        self.choose_layers(now);
        if let Some((origin, mid_in, rid)) = self.keyframe_asks.pop() {
            return Polled::KeyframeRequest {
                origin,
                mid_in,
                rid,
                kind: KeyframeRequestKind::Pli,
            };
        }
        match self.rtc.poll_output() {
            Ok(Output::Timeout(t)) => Polled::Timeout(t),
            Ok(Output::Transmit(t)) => Polled::Transmit(t.destination, t.contents.into()),
            Ok(Output::Event(e)) => self.on_event(e, now),
            Err(e) => {
                tracing::info!(participant = %self.id, error = ?e, "participant failed; disconnecting");
                self.rtc.disconnect();
                Polled::Disconnected
            }
        }
    }

    fn on_event(&mut self, e: Event, now: Instant) -> Polled {
        match e {
            Event::Connected => {
                self.connected = true;
                Polled::Connected
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // Keep the seat (identity, subscriptions) for an ICE restart; the
                // worker ends it if the participant stays away too long.
                self.disconnected_at.get_or_insert(now);
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
                self.egress_packets.insert(s.mid, s.packets);
                // Egress packets beyond those we forwarded: RTX (and BWE
                // padding). Packets still in the pacer make this undercount
                // by a few, never overcount.
                let sent: u64 = self.egress_packets.values().sum();
                let rtx = sent.saturating_sub(self.packets_written);
                if rtx > self.rtx_reported {
                    self.rtx_unreported += rtx - self.rtx_reported;
                    self.rtx_reported = rtx;
                }
                // What this subscriber asked of us.
                Polled::Rtcp(self.rtcp_delta(s.mid, false, [s.nacks, s.plis, s.firs]))
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.bwe = Some(estimate);
                Polled::Nothing
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
                let rtx_delta = std::mem::take(&mut self.rtx_unreported);
                Polled::Quality {
                    sample,
                    change,
                    rtx_delta,
                }
            }
            Event::MediaAdded(m)
                if self.mode == Mode::SubscribeOnly && m.direction == Direction::SendOnly =>
            {
                // A WHEP viewer's m-line: bind the first room track of its kind.
                let slot = self.tracks_out.iter_mut().find(|t| {
                    t.state == OutState::ToOpen
                        && t.track.upgrade().is_some_and(|tr| tr.kind == m.kind)
                });
                match slot {
                    Some(t) => {
                        t.state = OutState::Open(m.mid);
                        if t.kind == MediaKind::Video {
                            self.keyframe_asks.push((t.origin, t.mid_in, t.fwd.target));
                        }
                    }
                    None => self.free_slots.push((m.mid, m.kind)),
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
                    last_keyframe_request: Vec::new(),
                    meter: LayerMeter::default(),
                    paused: Vec::new(),
                    unwanted_since: Vec::new(),
                });
                Polled::TrackOpen(weak)
            }
            Event::RtpPacket(pkt) => self.on_rtp(pkt),
            Event::KeyframeRequest(req) => {
                let Some(out) = self.tracks_out.iter().find(|t| t.mid() == Some(req.mid)) else {
                    return Polled::Nothing;
                };
                let Some(track) = out.track.upgrade() else {
                    return Polled::Nothing;
                };
                // The subscriber's decoder needs a keyframe of the layer it gets.
                let rid = out.fwd.current().unwrap_or(out.fwd.target);
                Polled::KeyframeRequest {
                    origin: track.origin,
                    mid_in: track.mid,
                    rid,
                    kind: req.kind,
                }
            }
            _ => Polled::Nothing,
        }
    }

    /// A publisher's RTP packet: which track and layer, whether it starts a
    /// keyframe, and the track's layer rates, for the worker to fan out.
    fn on_rtp(&mut self, pkt: RtpPacket) -> Polled {
        let ssrc = pkt.header.ssrc;
        let (mid, rid) = match self.ssrcs.get(&ssrc) {
            Some(v) => *v,
            None => {
                let mut api = self.rtc.direct_api();
                let Some(s) = api.stream_rx(&ssrc) else {
                    return Polled::Nothing;
                };
                let v = (s.mid(), s.rid());
                self.ssrcs.insert(ssrc, v);
                v
            }
        };
        let pt = pkt.header.payload_type;
        let Some(params) = self.rtc.codec_config().find(|p| p.pt() == pt).copied() else {
            return Polled::Nothing;
        };
        let Some(entry) = self.tracks_in.iter_mut().find(|t| t.track.mid == mid) else {
            return Polled::Nothing;
        };
        let keyframe = entry.track.kind == MediaKind::Video
            && crate::forward::starts_keyframe(params.spec().codec, &pkt.payload);
        let size = pkt.payload.len() + pkt.header.header_len;
        if entry.meter.observe(rid, size, pkt.timestamp).is_none() {
            return Polled::Nothing; // more layers than any encoder sends
        }
        Polled::Rtp(Incoming {
            mid,
            params,
            rid,
            keyframe,
            layers: entry.meter.layers,
            pkt,
        })
    }

    /// Re-chooses every subscribed simulcast track's layer (twice a second):
    /// the bandwidth estimate, less audio, shared among the video tracks, each
    /// capped by the size the subscriber asked for. Also tells str0m's BWE
    /// what we would like to send, so it probes for it.
    fn choose_layers(&mut self, now: Instant) {
        if self
            .last_layer_choice
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(500))
        {
            return;
        }
        self.last_layer_choice = Some(now);
        const AUDIO_BPS: u64 = 64_000;
        let open = |o: &&mut TrackOut| matches!(o.state, OutState::Open(_));
        let audio = self
            .tracks_out
            .iter()
            .filter(|o| o.kind == MediaKind::Audio)
            .count() as u64
            * AUDIO_BPS;
        let videos = self
            .tracks_out
            .iter()
            .filter(|o| o.kind == MediaKind::Video && !o.fwd.is_paused())
            .count() as u64;
        if videos == 0 {
            return;
        }
        let budget = self.bwe.map(|b| b.as_u64().saturating_sub(audio) / videos);
        let (mut sending, mut desired) = (audio, audio);
        for o in self.tracks_out.iter_mut().filter(open) {
            if o.kind != MediaKind::Video || o.fwd.is_paused() {
                continue;
            }
            let target = o.fwd.choose(budget);
            let layers = o.fwd.layers;
            let top = o.fwd.max_layer.min((layers.len as usize).saturating_sub(1));
            // Priced as if running: BWE probes for a paused layer we would take.
            desired += layers.known[top].max(layers.bps[top]) as u64;
            sending += layers.index_of(target).map_or(0, |i| layers.bps[i] as u64);
            if o.fwd.awaiting_keyframe() {
                self.keyframe_asks.push((o.origin, o.mid_in, target));
            }
        }
        if self.bwe.is_some() && desired > 0 {
            self.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(sending.min(desired)), Bitrate::bps(desired));
        }
    }

    /// Stops or restarts `origin`'s tracks (of `kind`, or all) for this
    /// subscriber; returns how many tracks it applied to.
    pub fn set_subscribed(
        &mut self,
        origin: ParticipantId,
        kind: Option<MediaKind>,
        subscribed: bool,
    ) -> usize {
        let mut n = 0;
        for o in &mut self.tracks_out {
            if o.origin == origin && kind.is_none_or(|k| k == o.kind) {
                o.fwd.set_paused(!subscribed);
                n += 1;
            }
        }
        // Re-split the bandwidth, and ask resumed video for a keyframe now.
        self.last_layer_choice = None;
        n
    }

    /// Caps the simulcast layer this subscriber gets from a publisher (or from
    /// everyone): 0 = lowest. Returns how many tracks it applied to.
    pub fn set_max_layer(&mut self, origin: Option<ParticipantId>, max_layer: usize) -> usize {
        let mut n = 0;
        for o in &mut self.tracks_out {
            if o.kind == MediaKind::Video && origin.is_none_or(|p| p == o.origin) {
                o.fwd.max_layer = max_layer;
                n += 1;
            }
        }
        self.last_layer_choice = None;
        n
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

    /// Asks this participant (a publisher) for a keyframe of one layer, at
    /// most every 500 ms per layer. Returns whether a request was sent.
    pub fn request_keyframe(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        now: Instant,
    ) -> bool {
        let Some(entry) = self.tracks_in.iter_mut().find(|t| t.track.mid == mid) else {
            return false;
        };
        if entry.track.kind != MediaKind::Video {
            return false;
        }
        let last = entry
            .last_keyframe_request
            .iter_mut()
            .find(|(r, _)| *r == rid);
        if last
            .as_ref()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) < KEYFRAME_THROTTLE)
        {
            return false;
        }
        match last {
            Some((_, t)) => *t = now,
            None => entry.last_keyframe_request.push((rid, now)),
        }
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_rx_by_mid(mid, rid) else {
            return false;
        };
        stream.request_keyframe(kind);
        true
    }

    pub fn add_track_out(&mut self, track: Weak<TrackIn>) {
        if self.mode == Mode::PublishOnly {
            return;
        }
        let Some(t) = track.upgrade() else {
            return;
        };
        // A WHEP viewer cannot be renegotiated: a track published after it
        // came goes into one of its m-lines of that kind that has none.
        let free = self.free_slots.iter().position(|(_, k)| *k == t.kind);
        if free.is_none() && self.mode == Mode::SubscribeOnly && self.rebind_orphan(&track, &t) {
            return;
        }
        let mut out = TrackOut {
            origin: t.origin,
            mid_in: t.mid,
            kind: t.kind,
            track,
            state: OutState::ToOpen,
            fwd: Forwarder::new(t.kind),
            pt_map: Vec::new(),
            unpaced_set: false,
        };
        match free {
            Some(i) => {
                out.state = OutState::Open(self.free_slots.remove(i).0);
                if t.kind == MediaKind::Video {
                    self.keyframe_asks.push((t.origin, t.mid, out.fwd.target));
                }
            }
            None => self.renegotiate = true,
        }
        self.tracks_out.push(out);
    }

    /// A WHEP viewer's m-line whose publisher left takes a new track of its
    /// kind: the viewer sees the new publisher in the same stream, numbering
    /// continued, from a keyframe.
    fn rebind_orphan(&mut self, track: &Weak<TrackIn>, t: &TrackIn) -> bool {
        let orphan = self.tracks_out.iter_mut().find(|o| {
            o.kind == t.kind && matches!(o.state, OutState::Open(_)) && o.track.upgrade().is_none()
        });
        let Some(o) = orphan else {
            return false;
        };
        o.origin = t.origin;
        o.mid_in = t.mid;
        o.track = track.clone();
        o.pt_map.clear();
        o.fwd.restart();
        if t.kind == MediaKind::Video {
            self.keyframe_asks.push((t.origin, t.mid, o.fwd.target));
        }
        true
    }

    /// Builds a renegotiation offer when tracks came or went, unless one is in flight.
    pub fn offer_if_needed(&mut self, now: Instant) -> Option<SdpOffer> {
        // Checked on every poll, so the common case is one branch.
        if !self.renegotiate || self.mode != Mode::Full || self.pending.is_some() || !self.connected
        {
            return None;
        }
        self.renegotiate = false;
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
        self.pending_since = Some(now);
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
                // A new subscriber's decoder starts at a keyframe.
                if t.kind == MediaKind::Video {
                    self.keyframe_asks.push((t.origin, t.mid_in, t.fwd.target));
                }
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
        self.renegotiate = true;
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

    /// Forwards another participant's RTP packet into the matching outgoing
    /// track, if this subscriber's layer choice wants it.
    pub fn forward_rtp(&mut self, origin: ParticipantId, inc: &Incoming) -> bool {
        let Some(out) = self
            .tracks_out
            .iter_mut()
            .find(|o| o.origin == origin && o.mid_in == inc.mid)
        else {
            return false;
        };
        let OutState::Open(mid) = out.state else {
            return false;
        };
        let verdict = out.fwd.forward(
            &InPacket {
                rid: inc.rid,
                seq: *inc.pkt.seq_no,
                timestamp: inc.pkt.header.timestamp,
                arrival: inc.pkt.timestamp,
                keyframe: inc.keyframe,
                payload: &inc.pkt.payload,
                codec: inc.params.spec().codec,
            },
            inc.layers,
        );
        let Verdict::Write {
            seq,
            timestamp,
            vp8,
            switched,
        } = verdict
        else {
            return false;
        };
        let in_pt = inc.pkt.header.payload_type;
        let pt = match out.pt_map.iter().find(|(p, _)| *p == in_pt) {
            Some((_, pt)) => *pt,
            None => {
                let pt = self
                    .rtc
                    .codec_config()
                    .match_params(inc.params)
                    .map(|p| p.pt());
                out.pt_map.push((in_pt, pt));
                pt
            }
        };
        let Some(pt) = pt else {
            return false; // the subscriber did not accept this codec
        };
        let kind = out.kind;
        if switched && out.fwd.switches > 0 {
            self.layer_switches += 1;
        }
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        if !out.unpaced_set {
            out.unpaced_set = true;
            tx.set_unpaced(!self.pacing);
        }
        let h = &inc.pkt.header;
        let ext = ExtensionValues {
            audio_level: h.ext_vals.audio_level,
            voice_activity: h.ext_vals.voice_activity,
            video_orientation: h.ext_vals.video_orientation,
            ..Default::default()
        };
        let mut w = RtpWrite::new(
            pt,
            SeqNo::from(seq),
            timestamp,
            inc.pkt.timestamp,
            inc.pkt.payload.clone(),
        )
        .marker(h.marker)
        .ext_vals(ext)
        .nackable(kind == MediaKind::Video);
        if let Some(patch) = vp8 {
            w = w.vp8_patch(patch);
        }
        tx.write_rtp(w);
        self.packets_written += 1;
        true
    }
}
