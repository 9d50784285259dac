//! A synthetic WebRTC endpoint for tests and `continuum bench sfu`: a real
//! str0m `Rtc` (ICE, DTLS, SRTP, RTCP, NACK/RTX: the same stack as a browser's
//! in spirit, not our forwarding code) that publishes Opus-sized audio and
//! three-layer VP8-shaped simulcast video at realistic packet sizes and
//! rates, and measures what it receives: packets, loss per stream, and the
//! delay from the publisher's write to its own read (a timestamp rides in
//! every payload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// One simulcast layer the synthetic camera sends.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    pub rid: &'static str,
    pub bps: u32,
}

/// What a synthetic participant sends.
#[derive(Debug, Clone)]
pub struct MediaSpec {
    pub audio: bool,
    /// Empty: no video.
    pub video_layers: Vec<LayerSpec>,
    pub fps: u32,
    /// A keyframe on every layer this often (and whenever one is requested).
    pub keyframe_interval: Duration,
}

impl MediaSpec {
    /// Opus at 50 packets/s, and VP8 simulcast 150 / 500 / 1,500 kbit/s at 30 fps
    /// (the layers browsers send for 720p).
    pub fn camera_and_microphone() -> Self {
        MediaSpec {
            audio: true,
            video_layers: vec![
                LayerSpec {
                    rid: "q",
                    bps: 150_000,
                },
                LayerSpec {
                    rid: "h",
                    bps: 500_000,
                },
                LayerSpec {
                    rid: "f",
                    bps: 1_500_000,
                },
            ],
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
        }
    }

    pub fn nothing() -> Self {
        MediaSpec {
            audio: false,
            video_layers: Vec::new(),
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
        }
    }
}

const MTU_PAYLOAD: usize = 1_100;
const AUDIO_PAYLOAD: usize = 110;
/// Offset of the send timestamp in every payload (after a VP8 descriptor and header).
const STAMP_AT: usize = 5;

struct VideoLayer {
    rid: Rid,
    bytes_per_frame: usize,
    seq: u64,
    pic: u16,
    keyframe_wanted: bool,
    /// Like a browser encoding's `active`: the SFU may pause a layer.
    active: bool,
}

/// Received-side accounting for one incoming SSRC.
#[derive(Debug, Default, Clone, Copy)]
struct RxStream {
    video: bool,
    first: u64,
    last: u64,
    received: u64,
}

pub struct SimPeer {
    pub addr: SocketAddr,
    pub rtc: Rtc,
    epoch: Instant,
    spec: MediaSpec,
    audio: Option<Mid>,
    video: Option<Mid>,
    layers: Vec<VideoLayer>,
    audio_seq: u64,
    next_audio: Instant,
    next_frame: Instant,
    next_keyframe: Instant,
    frame_no: u32,
    pending: Option<SdpPendingOffer>,
    pub connected: bool,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    rx: HashMap<Ssrc, RxStream>,
    /// Write-to-read delays of received packets, microseconds.
    pub delays_us: Vec<u32>,
    pub keyframe_requests: u64,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
}

fn count<'a>(streams: impl Iterator<Item = &'a RxStream>) -> (u64, u64) {
    streams.fold((0, 0), |(r, e), s| {
        (r + s.received, e + (s.last - s.first + 1))
    })
}

impl SimPeer {
    /// A peer at `addr` with its join offer (send it to the SFU, then give
    /// the answer to [`SimPeer::accept_answer`]).
    pub fn new(addr: SocketAddr, spec: MediaSpec, epoch: Instant, now: Instant) -> (Self, String) {
        crate::init_crypto();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        let mut change = rtc.sdp_api();
        let audio = spec.audio.then(|| {
            change.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("cam".into()),
                None,
                None,
            )
        });
        let video = (!spec.video_layers.is_empty()).then(|| {
            let mut sim = Simulcast::new();
            for l in &spec.video_layers {
                sim.add_send_layer(SimulcastLayer::new(l.rid));
            }
            let sim = (spec.video_layers.len() > 1).then_some(sim);
            change.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("cam".into()),
                None,
                sim,
            )
        });
        change.add_channel("continuum".into());
        let (offer, pending) = change.apply().expect("an offer");
        let layers = spec
            .video_layers
            .iter()
            .enumerate()
            .map(|(i, l)| VideoLayer {
                rid: l.rid.into(),
                bytes_per_frame: (l.bps / 8 / spec.fps.max(1)) as usize,
                seq: 1_000 + i as u64 * 20_000,
                pic: 0,
                keyframe_wanted: true,
                active: true,
            })
            .collect();
        let peer = SimPeer {
            addr,
            rtc,
            epoch,
            spec,
            audio,
            video,
            layers,
            audio_seq: 7_000,
            next_audio: now,
            next_frame: now,
            next_keyframe: now,
            frame_no: 0,
            pending: Some(pending),
            connected: false,
            packets_sent: 0,
            packets_received: 0,
            bytes_received: 0,
            rx: HashMap::new(),
            delays_us: Vec::new(),
            keyframe_requests: 0,
            outbox: Vec::new(),
        };
        (peer, offer.to_sdp_string())
    }

    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let pending = self.pending.take().ok_or("no offer pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())
    }

    /// The SFU's renegotiation offer (others' tracks); returns our answer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| e.to_string())?;
        Ok(answer.to_sdp_string())
    }

    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let _ = self.rtc.handle_input(Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.addr,
                contents,
            },
        ));
        // Drain now: in RTP mode str0m holds a single received packet.
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => self.outbox.push((t.destination, t.contents.into())),
                Ok(Output::Event(e)) => self.on_event(e, now),
                Err(_) => return now + Duration::from_millis(50),
            }
        }
    }

    /// Writes whatever media is due at `now`, gives str0m the time, and
    /// collects datagrams to send. Returns when it next wants to be called.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) -> Instant {
        if self.connected {
            self.write_due(now);
        }
        let _ = self.rtc.handle_input(Input::Timeout(now));
        let mut next = self.drain(now).min(now + Duration::from_millis(50));
        out.append(&mut self.outbox);
        if self.connected {
            next = next.min(self.next_audio).min(self.next_frame);
        }
        next
    }

    fn on_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected => self.connected = true,
            Event::RtpPacket(p) => {
                self.packets_received += 1;
                self.bytes_received += p.payload.len() as u64;
                let seq = *p.seq_no;
                let s = self.rx.entry(p.header.ssrc).or_insert(RxStream {
                    video: p.time.frequency().get() == 90_000,
                    first: seq,
                    last: seq,
                    received: 0,
                });
                s.first = s.first.min(seq);
                s.last = s.last.max(seq);
                s.received += 1;
                if let Some(stamp) = p.payload.get(STAMP_AT..STAMP_AT + 8) {
                    let nanos = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
                    let sent = self.epoch + Duration::from_nanos(nanos);
                    // Real time when the clock is real (bench), else the simulated one.
                    let read = now.max(Instant::now().min(now + Duration::from_secs(1)));
                    let d = read.saturating_duration_since(sent).as_micros();
                    self.delays_us.push(d.min(u32::MAX as u128) as u32);
                }
            }
            Event::KeyframeRequest(r) => {
                self.keyframe_requests += 1;
                for l in &mut self.layers {
                    if r.rid.is_none() || r.rid == Some(l.rid) {
                        l.keyframe_wanted = true;
                    }
                }
            }
            _ => {}
        }
    }

    /// Stops sending the `paused` simulcast layers and sends the others (the
    /// SFU's `publish_layers` request); a resumed layer starts with a
    /// keyframe, as an encoder does.
    pub fn set_paused_layers(&mut self, paused: &[String]) {
        for l in &mut self.layers {
            let on = !paused.iter().any(|r| r.as_str() == &*l.rid);
            if on && !l.active {
                l.keyframe_wanted = true;
            }
            l.active = on;
        }
    }

    /// Whether the simulcast layer `rid` is being sent.
    pub fn layer_active(&self, rid: &str) -> Option<bool> {
        self.layers
            .iter()
            .find(|l| &*l.rid == rid)
            .map(|l| l.active)
    }

    /// Packets received and expected (from the sequence ranges) over all
    /// incoming streams; RTX repairs count as received.
    pub fn received_and_expected(&self) -> (u64, u64) {
        count(self.rx.values())
    }

    /// [`SimPeer::received_and_expected`] for video only: audio has no
    /// NACK/RTX (Opus conceals loss instead), so repair is a video figure.
    pub fn video_received_and_expected(&self) -> (u64, u64) {
        count(self.rx.values().filter(|s| s.video))
    }

    fn stamp(&self, now: Instant, payload: &mut [u8]) {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        payload[STAMP_AT..STAMP_AT + 8].copy_from_slice(&nanos.to_be_bytes());
    }

    fn pt(&mut self, mid: Mid, codec: Codec) -> Option<Pt> {
        // (`Rtc::writer` is off limits in RTP mode.)
        let remote = self.rtc.media(mid)?.remote_pts().to_vec();
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
            .map(|p| p.pt())
    }

    fn write_due(&mut self, now: Instant) {
        if let Some(mid) = self.audio
            && now >= self.next_audio
        {
            self.next_audio += Duration::from_millis(20);
            if let Some(pt) = self.pt(mid, Codec::Opus) {
                let mut payload = vec![0x55u8; AUDIO_PAYLOAD];
                self.stamp(now, &mut payload);
                self.audio_seq += 1;
                let seq = self.audio_seq;
                let ts = (seq as u32).wrapping_mul(960);
                let ext = ExtensionValues {
                    audio_level: Some(-30),
                    voice_activity: Some(true),
                    ..Default::default()
                };
                if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                    tx.write_rtp(
                        RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload).ext_vals(ext),
                    );
                    self.packets_sent += 1;
                }
            }
        }
        if let Some(mid) = self.video
            && now >= self.next_frame
        {
            let frame = Duration::from_secs(1) / self.spec.fps.max(1);
            self.next_frame += frame;
            self.frame_no += 1;
            if now >= self.next_keyframe {
                self.next_keyframe = now + self.spec.keyframe_interval;
                self.layers
                    .iter_mut()
                    .for_each(|l| l.keyframe_wanted = true);
            }
            let Some(pt) = self.pt(mid, Codec::Vp8) else {
                return;
            };
            let simulcast = self.layers.len() > 1;
            let ts = self.frame_no.wrapping_mul(90_000 / self.spec.fps.max(1));
            for i in 0..self.layers.len() {
                if !self.layers[i].active {
                    continue;
                }
                let (rid, bytes, key, pic) = {
                    let l = &mut self.layers[i];
                    l.pic = (l.pic + 1) & 0x7fff;
                    let key = std::mem::take(&mut l.keyframe_wanted);
                    // Keyframes are about 4× a delta frame.
                    let bytes = if key {
                        l.bytes_per_frame * 4
                    } else {
                        l.bytes_per_frame
                    };
                    (l.rid, bytes.max(STAMP_AT + 8 + 1), key, l.pic)
                };
                let packets = bytes.div_ceil(MTU_PAYLOAD);
                let size = (bytes / packets).max(STAMP_AT + 9);
                for k in 0..packets {
                    let mut payload = vec![0u8; size];
                    // VP8 payload descriptor: X=1, S on the first packet,
                    // 15-bit picture id; then the VP8 header (bit 0 = inter frame).
                    payload[0] = if k == 0 { 0x90 } else { 0x80 };
                    payload[1] = 0x80;
                    payload[2] = 0x80 | (pic >> 8) as u8;
                    payload[3] = pic as u8;
                    payload[4] = if key { 0x00 } else { 0x01 };
                    self.stamp(now, &mut payload);
                    let l = &mut self.layers[i];
                    l.seq += 1;
                    let seq = l.seq;
                    let rid = simulcast.then_some(rid);
                    if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(mid, rid) {
                        tx.write_rtp(
                            RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload)
                                .marker(k + 1 == packets)
                                .nackable(true),
                        );
                        self.packets_sent += 1;
                    }
                }
            }
        }
    }
}

/// The [`Worker`] and many [`SimPeer`]s on one thread, joined by an
/// in-memory network with optional random loss, or (with
/// [`SimNet::with_loopback`]) through real UDP sockets on 127.0.0.1 so the
/// SFU's side pays its `recv`/`send` system calls like in production. Time
/// spent inside the worker (and its socket calls) is measured separately
/// from the peers' own work.
pub struct SimNet {
    pub worker: crate::Worker,
    pub peers: Vec<SimPeer>,
    sfu: SocketAddr,
    by_id: HashMap<crate::ParticipantId, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Loss applied to datagrams towards each peer index (downlink), 0..1.
    pub downlink_loss: Vec<f64>,
    rng: u64,
    pub epoch: Instant,
    pub worker_time: Duration,
    pub sfu_datagrams_out: u64,
    pub dropped_by_net: u64,
    loopback: Option<Loopback>,
    pending_offers: Vec<(usize, crate::ParticipantId, String)>,
    pub events: Vec<crate::RoomEvent>,
    /// What clients were told ([`crate::SfuOutput::Notice`]), by recipient.
    pub notices: Vec<(crate::ParticipantId, crate::Notice)>,
    batch_rtp_in: Vec<Instant>,
    /// Loopback mode: for each media datagram, its receive time to the moment
    /// its batch's output was all sent (an upper bound of its forwarding delay), µs.
    pub sfu_delays_us: Vec<u32>,
    /// Datagrams handled per worker drive (default [`RECV_BATCH`]).
    pub recv_batch: usize,
}

pub use crate::worker::RECV_BATCH;

/// RTP, not RTCP (RFC 5761 §4: RTCP packet types 192–223).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}

struct Loopback {
    peers_side: std::net::UdpSocket,
    sfu_side: std::net::UdpSocket,
    sink: std::net::UdpSocket,
    in_flight: std::collections::VecDeque<SocketAddr>,
    buf: Vec<u8>,
    /// The SFU side's batched IO, as in production (`recvmmsg`/`sendmmsg`).
    batch: continuum_udp::Batch,
}

impl SimNet {
    pub fn new(worker: crate::Worker, sfu: SocketAddr) -> Self {
        SimNet {
            worker,
            peers: Vec::new(),
            sfu,
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            downlink_loss: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            epoch: Instant::now(),
            worker_time: Duration::ZERO,
            sfu_datagrams_out: 0,
            dropped_by_net: 0,
            loopback: None,
            pending_offers: Vec::new(),
            events: Vec::new(),
            notices: Vec::new(),
            batch_rtp_in: Vec::new(),
            sfu_delays_us: Vec::new(),
            recv_batch: RECV_BATCH,
        }
    }

    /// Routes every datagram through UDP sockets on loopback (see the type docs).
    pub fn with_loopback(mut self) -> std::io::Result<Self> {
        let bind = || std::net::UdpSocket::bind("127.0.0.1:0");
        let (peers_side, sfu_side, sink) = (bind()?, bind()?, bind()?);
        sfu_side.set_nonblocking(true)?;
        sink.set_nonblocking(true)?;
        self.loopback = Some(Loopback {
            peers_side,
            sfu_side,
            sink,
            in_flight: Default::default(),
            buf: vec![0; 2048],
            // All output goes to one sink here, while real subscribers are
            // many destinations: no GSO runs, as in production.
            batch: continuum_udp::Batch::new().without_gso(),
        });
        Ok(self)
    }

    /// Joins a new peer to `room` (its address: 10.x.y.z derived from its index).
    pub fn join(&mut self, room: &str, spec: MediaSpec, now: Instant) -> Result<usize, String> {
        let i = self.peers.len();
        let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8 + 2], 5000));
        let (mut peer, offer) = SimPeer::new(addr, spec, self.epoch, now);
        let (id, answer) = self
            .worker
            .join(
                now,
                crate::JoinRequest {
                    room: room.into(),
                    identity: format!("peer-{i}"),
                    offer_sdp: offer,
                    mode: crate::Mode::Full,
                    max_participants: None,
                },
            )
            .map_err(|e| e.to_string())?;
        peer.accept_answer(&answer)?;
        self.by_id.insert(id, i);
        self.by_addr.insert(addr, i);
        self.peers.push(peer);
        self.downlink_loss.push(0.0);
        Ok(i)
    }

    pub fn participant(&self, peer: usize) -> Option<crate::ParticipantId> {
        self.by_id
            .iter()
            .find(|(_, i)| **i == peer)
            .map(|(id, _)| *id)
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: deterministic loss patterns for tests.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Drives the worker and sends its output; records the forwarding delay
    /// of the media packets received since the last flush.
    fn flush(&mut self, now: Instant, to_peers: &mut Vec<(SocketAddr, Vec<u8>)>) {
        self.worker.drive(now);
        while let Some(o) = self.worker.poll_output() {
            match o {
                crate::SfuOutput::Transmit {
                    destination,
                    contents,
                } => {
                    if let Some(lo) = &mut self.loopback {
                        let sink = lo.sink.local_addr().expect("bound");
                        lo.batch
                            .send_owned(lo.sink.as_raw_fd(), sink, contents.clone());
                    }
                    self.sfu_datagrams_out += 1;
                    to_peers.push((destination, contents));
                }
                crate::SfuOutput::Offer { participant, sdp } => {
                    if let Some(&i) = self.by_id.get(&participant) {
                        self.pending_offers.push((i, participant, sdp));
                    }
                }
                crate::SfuOutput::Event(e) => self.events.push(e),
                crate::SfuOutput::Notice {
                    to,
                    notice: crate::Notice::PauseLayers { paused, .. },
                } => {
                    if let Some(&i) = self.by_id.get(&to) {
                        self.peers[i].set_paused_layers(&paused);
                    }
                }
                crate::SfuOutput::Notice { to, notice } => self.notices.push((to, notice)),
                _ => {}
            }
        }
        if let Some(lo) = &mut self.loopback {
            lo.batch.flush();
        }
        let sent = Instant::now();
        for t_in in self.batch_rtp_in.drain(..) {
            let us = sent.saturating_duration_since(t_in).as_micros();
            self.sfu_delays_us.push(us.min(u32::MAX as u128) as u32);
        }
    }

    /// One round: every peer sends what it has, the SFU handles it and runs
    /// its timers, and its output reaches the peers (minus injected loss).
    pub fn step(&mut self, now: Instant) {
        let mut out = Vec::new();
        let mut from = Vec::new();
        for p in &mut self.peers {
            let before = out.len();
            p.poll(now, &mut out);
            from.extend(std::iter::repeat_n(p.addr, out.len() - before));
        }
        let mut to_peers = Vec::new();
        // Like the production IO loop: take up to a batch of datagrams, then
        // drive the worker and send what it produced, so a packet waits for
        // at most one batch.
        let batch = self.recv_batch.max(1);
        for (chunk, sources) in out.chunks(batch).zip(from.chunks(batch)) {
            let t = Instant::now();
            let mut excluded = Duration::ZERO;
            match &mut self.loopback {
                None => {
                    for ((_, d), source) in chunk.iter().zip(sources) {
                        self.worker.handle_datagram(now, *source, self.sfu, d);
                    }
                }
                Some(lo) => {
                    // The peers' sends are not the SFU's cost.
                    let sfu_addr = lo.sfu_side.local_addr().expect("bound");
                    let t_send = Instant::now();
                    for ((_, d), source) in chunk.iter().zip(sources) {
                        if lo.peers_side.send_to(d, sfu_addr).is_ok() {
                            lo.in_flight.push_back(*source);
                        }
                    }
                    excluded = t_send.elapsed();
                    let fd = lo.sfu_side.as_raw_fd();
                    'recv: while let Ok(n) = lo.batch.recv(fd) {
                        for i in 0..n {
                            // The real source is the simulated peer's address.
                            let Some(source) = lo.in_flight.pop_front() else {
                                break 'recv;
                            };
                            let (_, slot, len) = lo.batch.slot(i);
                            let data = &slot[continuum_udp::HEADROOM..][..len];
                            if is_rtp(data) {
                                self.batch_rtp_in.push(Instant::now());
                            }
                            self.worker.handle_datagram(now, source, self.sfu, data);
                        }
                        if n < continuum_udp::BATCH {
                            break;
                        }
                    }
                    // Whatever the kernel dropped is lost.
                    self.dropped_by_net += lo.in_flight.len() as u64;
                    lo.in_flight.clear();
                }
            }
            self.flush(now, &mut to_peers);
            self.worker_time += t.elapsed().saturating_sub(excluded);
        }
        if out.is_empty() {
            let t = Instant::now();
            self.flush(now, &mut to_peers);
            self.worker_time += t.elapsed();
        }
        if let Some(lo) = &mut self.loopback {
            while lo.sink.recv(&mut lo.buf).is_ok() {}
        }
        // Signaling is instantaneous here.
        for (i, participant, sdp) in std::mem::take(&mut self.pending_offers) {
            if let Ok(answer) = self.peers[i].accept_offer(&sdp) {
                let _ = self.worker.answer(participant, &answer);
            }
        }
        for (destination, contents) in to_peers {
            let Some(&i) = self.by_addr.get(&destination) else {
                continue;
            };
            if self.downlink_loss[i] > 0.0 && self.random() < self.downlink_loss[i] {
                self.dropped_by_net += 1;
                continue;
            }
            self.peers[i].handle_datagram(now, self.sfu, &contents);
        }
    }
}
