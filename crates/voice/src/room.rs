//! A phone call's leg in a video room, sans-IO: to our SFU the phone is a
//! WebRTC participant like a browser. [`RoomLeg`] is a str0m client (full
//! ICE, DTLS, SRTP; frame-level API) that publishes one Opus track, the
//! phone's voice, and decodes and mixes every other participant's audio into
//! what the phone hears.
//!
//! Signaling is the owner's: [`RoomLeg::new`] gives the join offer (for the
//! SFU's `JoinRequest::offer_sdp`), the SFU's answer goes to
//! [`RoomLeg::accept_answer`], and each renegotiation offer (others' tracks
//! come and go) to [`RoomLeg::accept_offer`], whose answer goes back to the
//! SFU. Media runs on the gateway's 20 ms clock: [`RoomLeg::push_phone`]
//! takes the frame heard from the phone, [`RoomLeg::pull_room`] gives the
//! frame to say to it.
//!
//! Also the owner's: the SFU forwards each camera on the video m-line the
//! leg declines (the leg drops it, but the bytes cross the network), so
//! unsubscribe the leg from video (`Sfu::set_subscribed(leg, origin,
//! Some(MediaKind::Video), false)` on each video `TrackPublished`); give
//! [`RoomLeg::add_remote_candidate`] the SFU's bound address when the
//! gateway cannot reach the advertised one; and rejoin a leg whose
//! connection died ([`RoomLeg::is_alive`]): there is no ICE restart here.
//!
//! Opus runs at 8 kHz on our side of libopus (its API takes 8 kHz in and out;
//! RTP still counts 48 kHz, RFC 7587): the phone's audio is narrowband
//! anyway, and this skips two resampling passes (CPU, and 5 ms of filter
//! delay each way) that would only shuttle samples through empty bands.

use continuum_rtp::mixer::{Mixer, dbov};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Samples in one 20 ms frame at the phone's 8 kHz.
pub const FRAME: usize = 160;
/// One 20 ms frame in Opus's RTP clock (always 48 kHz).
const RTP_FRAME: u64 = 960;
/// RTP clock ticks per 8 kHz sample.
const RTP_PER_SAMPLE: u64 = 6;
/// Opus frame durations are multiples of 2.5 ms (in RTP ticks).
const RTP_GRANULE: u64 = 120;
/// The most one Opus packet decodes to at 8 kHz (120 ms).
const MAX_PACKET_SAMPLES: usize = 960;

/// What the phone's voice is encoded at: plenty for narrowband speech, with
/// room for in-band FEC.
const OPUS_BITRATE: i32 = 24_000;
/// The loss the encoder plans FEC for (it adds redundancy only when this is
/// above zero).
const OPUS_EXPECTED_LOSS: i32 = 10;
/// libopus's default (9) costs about six times the CPU of 1 at 8 kHz for the
/// same bitrate: from 2 up, SILK's noise-shaping quantiser runs its delayed
/// decision search (`silk_NSQ_del_dec`, a quarter of a bridged call's CPU in
/// `perf`). Measured by `codec_cost_per_frame` (release): complexity 5 takes
/// 139 µs a frame, 2 takes 78, 1 takes 23. The source is a phone's G.711, so
/// the search buys nothing audible; a gateway full of calls gains cores.
const OPUS_COMPLEXITY: i32 = 1;
/// Below this level (dBov) the phone is not speaking (as the mixer's floor).
const SPEAKING_DBOV: f32 = -45.0;

/// Frames a remote track buffers before it starts playing (and after a
/// pause): absorbs one frame of arrival jitter for 20 ms of latency.
const PREBUFFER: usize = 2;
/// A track holding more frames than this skips ahead to [`PREBUFFER`]: after
/// a burst, latency comes back down instead of staying up for good.
const MAX_QUEUED: usize = 6;
/// Frames concealed in a row before a track counts as paused (its publisher
/// muted, left, or its packets stopped): silence instead of more PLC.
const MAX_CONCEALED: u32 = 5;
/// A frame this far (RTP ticks, 1 s) before or after the playout point is a
/// new stream (a publisher restarted), not a late or early frame.
const RESYNC: u64 = 48_000;
/// At most this many remote tracks are decoded (the SFU's rooms are
/// smaller); more are ignored, so memory stays bounded.
const MAX_TRACKS: usize = 32;
/// A track with no frame for this long is forgotten (its decoder freed).
const TRACK_IDLE: Duration = Duration::from_secs(10);
/// Datagrams waiting for [`RoomLeg::poll_transmit`]; beyond, new ones are
/// dropped (the host stopped sending; memory stays bounded).
const MAX_OUTBOX: usize = 1_024;
/// The mixer's id for the phone, which hears everyone (mix-minus of nothing).
const PHONE: u64 = 0;

/// Why the room leg refused something.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("the local address {0} cannot be an ICE host candidate: {1}")]
    Candidate(SocketAddr, String),
    #[error("malformed SDP: {0}")]
    BadSdp(String),
    #[error("SDP refused: {0}")]
    Refused(String),
    #[error("no offer of ours is waiting for an answer")]
    NoPendingOffer,
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

/// Counters for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoomLegStats {
    /// Phone frames encoded and written to the room.
    pub frames_sent: u64,
    /// Phone frames dropped because the connection was not up.
    pub frames_unsent: u64,
    /// Opus frames received from the room's tracks.
    pub frames_received: u64,
    pub frames_decoded: u64,
    /// Missing frames recovered from the next packet's in-band FEC.
    pub frames_recovered: u64,
    /// Missing frames concealed by the decoder (PLC).
    pub frames_concealed: u64,
    /// Frames dropped: late, over the queue bound, or when skipping ahead.
    pub frames_dropped: u64,
    /// Received frames libopus could not decode (concealed instead).
    pub decode_errors: u64,
    /// Datagrams str0m would not take (unknown source, garbage).
    pub datagrams_ignored: u64,
    /// Datagrams dropped because the outbox was full.
    pub transmits_dropped: u64,
}

/// A phone call's WebRTC participant in a room (see the module docs).
pub struct RoomLeg {
    rtc: Rtc,
    local: SocketAddr,
    identity: String,
    audio: Mid,
    pending: Option<SdpPendingOffer>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    next_timeout: Option<Instant>,
    encoder: opus::Encoder,
    /// RTP time of the next phone frame.
    send_time: u64,
    tracks: HashMap<Mid, Track>,
    mixer: Mixer,
    next_track_id: u64,
    stats: RoomLegStats,
}

impl std::fmt::Debug for RoomLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomLeg")
            .field("local", &self.local)
            .field("connected", &self.connected())
            .field("tracks", &self.tracks.len())
            .finish_non_exhaustive()
    }
}

impl RoomLeg {
    /// A leg whose datagrams are sent from and received at `local_addr`
    /// (a concrete address: it is our ICE host candidate), with its join
    /// offer for the SFU. `identity` only labels logs: it may be a phone
    /// number, so it is kept out of the SDP (which the SFU logs on errors
    /// and forwards to browsers).
    pub fn new(
        now: Instant,
        local_addr: SocketAddr,
        identity: impl Into<String>,
    ) -> Result<(RoomLeg, String), RoomError> {
        init_crypto();
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            // Hand every frame over as it arrives, in any order: the
            // per-track playout buffer orders them by RTP time and conceals
            // gaps, where str0m would otherwise hold frames after a loss
            // for up to 15 packets.
            .set_reordering_size_audio(0)
            .build(now);
        let candidate = Candidate::host(local_addr, "udp")
            .map_err(|e| RoomError::Candidate(local_addr, e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        // Send-only, as a browser's microphone: the SFU adds a send-only
        // m-line of its own per remote track by renegotiation. No data
        // channel: the phone has no use for the room's messages, and SCTP
        // would only cost timers.
        let audio = change.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("phone".into()),
            None,
            None,
        );
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| RoomError::Refused("no offer to make".into()))?;
        let mut encoder = opus::Encoder::new(8_000, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(OPUS_EXPECTED_LOSS)?;
        encoder.set_complexity(OPUS_COMPLEXITY)?;
        let mut mixer = Mixer::new(FRAME);
        mixer.add(PHONE).expect("an empty mixer");
        let leg = RoomLeg {
            rtc,
            local: local_addr,
            identity: identity.into(),
            audio,
            pending: Some(pending),
            outbox: VecDeque::new(),
            next_timeout: Some(now),
            encoder,
            // A random start, as RFC 3550 asks (str0m rewrites nothing).
            send_time: u64::from(rand::random::<u32>()),
            tracks: HashMap::new(),
            mixer,
            next_track_id: PHONE + 1,
            stats: RoomLegStats::default(),
        };
        Ok((leg, offer.to_sdp_string()))
    }

    /// The SFU's answer to the join offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), RoomError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| RoomError::BadSdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(RoomError::NoPendingOffer)?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| RoomError::Refused(e.to_string()))
    }

    /// A renegotiation offer from the SFU (others' tracks came or went);
    /// returns our answer for it.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, RoomError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| RoomError::BadSdp(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RoomError::Refused(e.to_string()))?;
        Ok(answer.to_sdp_string())
    }

    /// Another address of the SFU to try: the host candidate in its answer is
    /// the address browsers reach (`rtc.public_ip`), which the gateway's host
    /// may not (no NAT hairpin); its bound address may do.
    pub fn add_remote_candidate(&mut self, addr: SocketAddr) -> Result<(), RoomError> {
        let c =
            Candidate::host(addr, "udp").map_err(|e| RoomError::Candidate(addr, e.to_string()))?;
        self.rtc.add_remote_candidate(c);
        Ok(())
    }

    /// A datagram from `source` to our local address. Anything str0m does not
    /// recognise as this session's is dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        let Ok(contents) = bytes.try_into() else {
            self.stats.datagrams_ignored += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if !self.rtc.is_alive() || !self.rtc.accepts(&input) {
            self.stats.datagrams_ignored += 1;
            return;
        }
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(identity = %self.identity, error = %e, "room leg: bad datagram");
        }
        self.drain(now);
    }

    /// Gives str0m the time (ICE checks, DTLS retransmissions, RTCP).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.rtc.is_alive() {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(identity = %self.identity, error = %e, "room leg: timeout");
            }
            self.drain(now);
        }
    }

    /// When [`RoomLeg::handle_timeout`] is next due (`None`: the connection is closed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    /// The next datagram to send: its destination and contents.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// ICE, DTLS and SRTP are up (media flows).
    pub fn connected(&self) -> bool {
        self.rtc.is_alive() && self.rtc.is_connected()
    }

    /// False once the connection failed or was closed for good.
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Ends the session (no more datagrams are accepted or sent).
    pub fn close(&mut self) {
        self.rtc.disconnect();
        self.next_timeout = None;
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The SFU's remote audio tracks being decoded now.
    pub fn tracks(&self) -> usize {
        self.tracks.len()
    }

    pub fn stats(&self) -> RoomLegStats {
        self.stats
    }

    /// The phone's next 20 ms (8 kHz): encoded and sent to the room, with
    /// its level in the audio-level extension (the SFU's active speaker).
    /// Dropped (and counted) until the connection is up.
    pub fn push_phone(&mut self, now: Instant, frame: &[i16; FRAME]) -> Result<(), RoomError> {
        let rtp_time = self.send_time;
        // The clock runs whether or not the frame goes out, as a
        // microphone's does.
        self.send_time += RTP_FRAME;
        if !self.connected() {
            self.stats.frames_unsent += 1;
            return Ok(());
        }
        let mut packet = [0u8; 1_500];
        let len = self.encoder.encode(frame, &mut packet)?;
        let level = dbov(frame);
        let Some(writer) = self.rtc.writer(self.audio) else {
            self.stats.frames_unsent += 1;
            return Ok(());
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            self.stats.frames_unsent += 1;
            return Ok(());
        };
        let time = MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ);
        let written = writer
            .audio_level(level.round() as i8, level > SPEAKING_DBOV)
            .write(pt, now, time, &packet[..len]);
        match written {
            Ok(()) => self.stats.frames_sent += 1,
            Err(e) => {
                self.stats.frames_unsent += 1;
                tracing::debug!(identity = %self.identity, error = %e, "room leg: write");
            }
        }
        self.drain(now);
        Ok(())
    }

    /// The room's next 20 ms for the phone (8 kHz): every remote track's
    /// next frame, decoded (or concealed), mixed. Silence when nobody sends.
    pub fn pull_room(&mut self, now: Instant) -> [i16; FRAME] {
        for t in self.tracks.values_mut() {
            let mut frame = [0i16; FRAME];
            if t.play(&mut frame, &mut self.stats) {
                // The id is in the mixer: added with the track.
                let _ = self.mixer.push(t.id, &frame);
            }
        }
        let mut out = [0i16; FRAME];
        self.mixer.mix(|id, mix| {
            if id == PHONE {
                out.copy_from_slice(mix);
            }
        });
        let mixer = &mut self.mixer;
        self.tracks.retain(|_, t| {
            let keep = !t.frames.is_empty() || now.saturating_duration_since(t.heard) < TRACK_IDLE;
            if !keep {
                let _ = mixer.remove(t.id);
            }
            keep
        });
        out
    }

    /// Takes everything str0m has for us: datagrams, events, its next timeout.
    fn drain(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = Some(t);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if self.outbox.len() < MAX_OUTBOX {
                        self.outbox.push_back((t.destination, t.contents.into()));
                    } else {
                        self.stats.transmits_dropped += 1;
                    }
                }
                Ok(Output::Event(e)) => self.on_event(now, e),
                Err(e) => {
                    tracing::info!(identity = %self.identity, error = %e, "room leg failed");
                    self.close();
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::MediaData(d) => self.on_media(now, d),
            Event::MediaChanged(c) if c.direction == Direction::Inactive => {
                // The SFU stopped the m-line (its publisher left).
                if let Some(t) = self.tracks.remove(&c.mid) {
                    let _ = self.mixer.remove(t.id);
                }
            }
            _ => {}
        }
    }

    fn on_media(&mut self, now: Instant, d: MediaData) {
        if d.mid == self.audio || d.params.spec().codec != Codec::Opus {
            return;
        }
        self.stats.frames_received += 1;
        if !self.tracks.contains_key(&d.mid) {
            if self.tracks.len() >= MAX_TRACKS {
                self.stats.frames_dropped += 1;
                return;
            }
            let decoder = match opus::Decoder::new(8_000, opus::Channels::Mono) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "room leg: no opus decoder");
                    return;
                }
            };
            let id = self.next_track_id;
            self.next_track_id += 1;
            let _ = self.mixer.add(id);
            self.tracks.insert(d.mid, Track::new(id, decoder, now));
        }
        if let Some(t) = self.tracks.get_mut(&d.mid) {
            t.heard = now;
            t.push(d.time.numer(), d.data, &mut self.stats);
        }
    }
}

/// str0m's crypto provider (aws-lc-rs) for the process; idempotent, and
/// compatible with the SFU's own installation of the same provider.
fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}

/// One remote audio track: its Opus frames by RTP time, played out at the
/// gateway's pace through its own decoder (PLC and FEC need the stream's
/// history).
struct Track {
    /// Its id in the mixer.
    id: u64,
    decoder: opus::Decoder,
    frames: BTreeMap<u64, Arc<[u8]>>,
    /// RTP time of the next frame to play; `None` while (re)buffering.
    next: Option<u64>,
    /// Decoded samples not played yet (a packet may hold more than 20 ms).
    pcm: VecDeque<i16>,
    concealed_run: u32,
    heard: Instant,
}

impl Track {
    fn new(id: u64, decoder: opus::Decoder, now: Instant) -> Self {
        Track {
            id,
            decoder,
            frames: BTreeMap::new(),
            next: None,
            pcm: VecDeque::with_capacity(FRAME + MAX_PACKET_SAMPLES),
            concealed_run: 0,
            heard: now,
        }
    }

    fn push(&mut self, time: u64, data: Arc<[u8]>, stats: &mut RoomLegStats) {
        if let Some(next) = self.next {
            if time.abs_diff(next) > RESYNC {
                // Not this stream's neighbourhood: a new one starts.
                stats.frames_dropped += self.frames.len() as u64;
                self.frames.clear();
                self.pcm.clear();
                self.next = None;
                self.concealed_run = 0;
            } else if time < next {
                stats.frames_dropped += 1; // too late: its slot was played
                return;
            }
        }
        self.frames.insert(time, data);
        // Bounded even if nobody pulls: the newest frames matter.
        while self.frames.len() > 2 * MAX_QUEUED {
            self.frames.pop_first();
            stats.frames_dropped += 1;
        }
    }

    /// The next 20 ms into `out`; false while the track is silent (buffering
    /// or paused), leaving `out` untouched.
    fn play(&mut self, out: &mut [i16; FRAME], stats: &mut RoomLegStats) -> bool {
        let mut next = match self.next {
            Some(n) => n,
            None if self.frames.len() >= PREBUFFER => *self.frames.keys().next().expect("frames"),
            None => return false,
        };
        if self.frames.len() > MAX_QUEUED {
            // Skip ahead: keep the newest PREBUFFER frames.
            while self.frames.len() > PREBUFFER {
                self.frames.pop_first();
                stats.frames_dropped += 1;
            }
            next = *self.frames.keys().next().expect("frames");
        }
        let mut buf = [0i16; MAX_PACKET_SAMPLES];
        while self.pcm.len() < FRAME {
            while let Some(e) = self.frames.first_entry()
                && *e.key() < next
            {
                e.remove();
                stats.frames_dropped += 1;
            }
            let upcoming = self.frames.first_key_value().map(|(t, _)| *t);
            if upcoming == Some(next) {
                let data = self.frames.remove(&next).expect("the upcoming frame");
                match self.decoder.decode(&data, &mut buf, false) {
                    Ok(n) if n > 0 => {
                        stats.frames_decoded += 1;
                        self.pcm.extend(&buf[..n]);
                        next += n as u64 * RTP_PER_SAMPLE;
                        self.concealed_run = 0;
                        continue;
                    }
                    _ => {
                        // Garbage: conceal its slot as if it were lost.
                        stats.decode_errors += 1;
                    }
                }
            }
            if self.concealed_run >= MAX_CONCEALED {
                match upcoming {
                    // Paused: silence until it sends again, then rebuffer.
                    None => {
                        self.next = None;
                        self.pcm.clear();
                        self.concealed_run = 0;
                        return false;
                    }
                    // A long gap (e.g. discontinuous transmission): resume at
                    // the next frame rather than conceal all the way to it.
                    Some(t) if t > next => {
                        next = t;
                        self.concealed_run = 0;
                        continue;
                    }
                    Some(_) => {}
                }
            }
            let gap = upcoming.map(|t| t.saturating_sub(next));
            let (samples, fec) = match gap {
                // The next packet carries this slot's FEC (one frame back).
                Some(g) if g > 0 && g <= RTP_FRAME && g % RTP_GRANULE == 0 => {
                    ((g / RTP_PER_SAMPLE) as usize, true)
                }
                _ => (FRAME, false),
            };
            let input: &[u8] = match (fec, upcoming.and_then(|t| self.frames.get(&t))) {
                (true, Some(d)) => d,
                _ => &[],
            };
            let n = match self.decoder.decode(input, &mut buf[..samples], fec) {
                Ok(n) if n > 0 => n.min(samples),
                _ => {
                    // Even PLC failed (never expected): plain silence keeps
                    // the clock going.
                    buf[..samples].fill(0);
                    samples
                }
            };
            if fec {
                stats.frames_recovered += 1;
            } else {
                stats.frames_concealed += 1;
            }
            self.pcm.extend(&buf[..n]);
            next += n as u64 * RTP_PER_SAMPLE;
            self.concealed_run += 1;
        }
        self.next = Some(next);
        for (o, s) in out.iter_mut().zip(self.pcm.drain(..FRAME)) {
            *o = s;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_sfu::sim::{MediaSpec, SimPeer};
    use continuum_sfu::{JoinRequest, Mode, ParticipantId, SfuOutput, Worker, WorkerConfig};
    use proptest::prelude::*;

    use continuum_rtp::goertzel::power;

    /// Power of a sine of amplitude `amp` by [`power`].
    fn sine_power(amp: f64) -> f64 {
        (amp / 2.0).powi(2)
    }

    fn tone(freq: f64, frame_no: usize, amp: f64) -> [i16; FRAME] {
        let mut f = [0i16; FRAME];
        for (i, s) in f.iter_mut().enumerate() {
            let n = (frame_no * FRAME + i) as f64;
            *s = (amp * (2.0 * std::f64::consts::PI * freq * n / 8_000.0).sin()) as i16;
        }
        f
    }

    fn sfu_addr() -> SocketAddr {
        "10.0.0.1:3478".parse().unwrap()
    }

    /// Our SFU's worker and some room legs on one thread, over an in-memory
    /// network; signaling is instantaneous.
    struct Room {
        worker: Worker,
        legs: Vec<(ParticipantId, SocketAddr, RoomLeg)>,
        /// Browsers, in spirit: str0m clients publishing fake media.
        peers: Vec<(ParticipantId, SimPeer)>,
        /// Bytes the SFU sent each leg, and RTP packets of other than
        /// Opus (payload type 111 here) that are not padding (BWE probes).
        rx_bytes: Vec<u64>,
        rx_not_audio: Vec<u64>,
        now: Instant,
        /// Time spent in `push_phone` / `pull_room`, and calls, per leg.
        push_time: Vec<(Duration, u32)>,
        pull_time: Vec<(Duration, u32)>,
    }

    impl Room {
        fn new(legs: usize) -> Room {
            let now = Instant::now();
            let mut room = Room {
                worker: Worker::new(WorkerConfig::new(sfu_addr())),
                legs: Vec::new(),
                peers: Vec::new(),
                rx_bytes: vec![0; legs],
                rx_not_audio: vec![0; legs],
                now,
                push_time: vec![Default::default(); legs],
                pull_time: vec![Default::default(); legs],
            };
            for i in 0..legs {
                let addr: SocketAddr = format!("10.0.1.{}:4000", i + 2).parse().unwrap();
                let (mut leg, offer) = RoomLeg::new(now, addr, format!("phone-{i}")).unwrap();
                let (id, answer) = room.join(&format!("phone-{i}"), offer);
                leg.accept_answer(&answer).unwrap();
                room.legs.push((id, addr, leg));
            }
            room
        }

        fn join(&mut self, identity: &str, offer: String) -> (ParticipantId, String) {
            self.worker
                .join(
                    self.now,
                    JoinRequest {
                        room: "r".into(),
                        identity: identity.into(),
                        offer_sdp: offer,
                        mode: Mode::Full,
                        max_participants: None,
                    },
                )
                .unwrap()
        }

        /// A browser-like participant publishing microphone and simulcast
        /// camera (payloads are not real Opus or VP8).
        fn add_browser(&mut self) {
            let addr: SocketAddr = format!("10.0.2.{}:5000", self.peers.len() + 2)
                .parse()
                .unwrap();
            let spec = MediaSpec::camera_and_microphone();
            let (mut peer, offer) = SimPeer::new(addr, spec, self.now, self.now);
            let (id, answer) = self.join("browser", offer);
            peer.accept_answer(&answer).unwrap();
            self.peers.push((id, peer));
        }

        /// Moves datagrams and signaling until nothing is in flight.
        fn exchange(&mut self) {
            let now = self.now;
            let sfu = sfu_addr();
            for _ in 0..20 {
                let mut moved = false;
                for (_, addr, leg) in &mut self.legs {
                    if leg.poll_timeout().is_some_and(|t| t <= now) {
                        leg.handle_timeout(now);
                    }
                    while let Some((dest, bytes)) = leg.poll_transmit() {
                        moved = true;
                        if dest == sfu {
                            self.worker.handle_datagram(now, *addr, sfu, &bytes);
                        }
                    }
                }
                for (_, peer) in &mut self.peers {
                    let mut out = Vec::new();
                    peer.poll(now, &mut out);
                    for (_, bytes) in out {
                        moved = true;
                        self.worker.handle_datagram(now, peer.addr, sfu, &bytes);
                    }
                }
                self.worker.drive(now);
                while let Some(o) = self.worker.poll_output() {
                    match o {
                        SfuOutput::Transmit {
                            destination,
                            contents,
                        } => {
                            moved = true;
                            if let Some(i) = self.legs.iter().position(|l| l.1 == destination) {
                                self.rx_bytes[i] += contents.len() as u64;
                                // (The RTP header is in the clear under SRTP.)
                                let rtp = contents.len() >= 12
                                    && contents[0] >> 6 == 2
                                    && !(192..=223).contains(&contents[1]);
                                let padding = contents[0] & 0x20 != 0;
                                if rtp && !padding && contents[1] & 0x7f != 111 {
                                    self.rx_not_audio[i] += 1;
                                }
                                self.legs[i].2.handle_datagram(now, sfu, &contents);
                            }
                            if let Some((_, peer)) =
                                self.peers.iter_mut().find(|(_, p)| p.addr == destination)
                            {
                                peer.handle_datagram(now, sfu, &contents);
                            }
                        }
                        SfuOutput::Offer { participant, sdp } => {
                            moved = true;
                            let answer =
                                match self.legs.iter_mut().find(|(id, _, _)| *id == participant) {
                                    Some((_, _, leg)) => leg.accept_offer(&sdp).unwrap(),
                                    None => {
                                        let (_, peer) = self
                                            .peers
                                            .iter_mut()
                                            .find(|(id, _)| *id == participant)
                                            .unwrap();
                                        peer.accept_offer(&sdp).unwrap()
                                    }
                                };
                            self.worker.answer(participant, &answer).unwrap();
                        }
                        _ => {}
                    }
                }
                if !moved {
                    break;
                }
            }
        }

        /// 20 ms: each leg says `say(leg)` and hears what comes back, with the
        /// network exchanging at 5 ms steps.
        fn tick(&mut self, say: impl Fn(usize) -> [i16; FRAME]) -> Vec<[i16; FRAME]> {
            for (i, (_, _, leg)) in self.legs.iter_mut().enumerate() {
                let frame = say(i);
                let t = Instant::now();
                leg.push_phone(self.now, &frame).unwrap();
                self.push_time[i].0 += t.elapsed();
                self.push_time[i].1 += 1;
            }
            for _ in 0..4 {
                self.exchange();
                self.now += Duration::from_millis(5);
            }
            let mut heard = Vec::new();
            for (i, (_, _, leg)) in self.legs.iter_mut().enumerate() {
                let t = Instant::now();
                heard.push(leg.pull_room(self.now));
                self.pull_time[i].0 += t.elapsed();
                self.pull_time[i].1 += 1;
            }
            heard
        }

        /// Ticks in silence until every leg is connected and hears every other.
        fn connect(&mut self) {
            let others = self.legs.len() - 1;
            for _ in 0..250 {
                self.tick(|_| [0; FRAME]);
                if self
                    .legs
                    .iter()
                    .all(|(_, _, l)| l.connected() && l.tracks() == others)
                {
                    return;
                }
            }
            panic!(
                "not connected after 5 s: {:?}",
                self.legs.iter().map(|l| &l.2).collect::<Vec<_>>()
            );
        }

        fn report_cpu(&self) {
            for (i, ((push, n), (pull, m))) in
                self.push_time.iter().zip(&self.pull_time).enumerate()
            {
                println!(
                    "leg {i}: push_phone {:.1} µs/frame, pull_room {:.1} µs/frame ({} tracks)",
                    push.as_secs_f64() * 1e6 / f64::from((*n).max(1)),
                    pull.as_secs_f64() * 1e6 / f64::from((*m).max(1)),
                    self.legs[i].2.tracks(),
                );
            }
        }
    }

    #[test]
    fn tone_crosses_the_sfu_from_one_phone_to_another() {
        let mut room = Room::new(2);
        room.connect();
        let mut heard_by_b = Vec::new();
        let amp = 8_000.0;
        for f in 0..75 {
            let heard = room.tick(|i| {
                if i == 0 {
                    tone(440.0, f, amp)
                } else {
                    [0; FRAME]
                }
            });
            if f >= 25 {
                heard_by_b.extend_from_slice(&heard[1]);
            }
        }
        let p440 = power(&heard_by_b, 440.0, 8_000.0);
        let p1000 = power(&heard_by_b, 1_000.0, 8_000.0);
        let p700 = power(&heard_by_b, 700.0, 8_000.0);
        let expected = sine_power(amp);
        println!(
            "B hears: 440 Hz {:.1} dB re. sent, 700 Hz {:.1} dB, 1000 Hz {:.1} dB",
            10.0 * (p440 / expected).log10(),
            10.0 * (p700 / expected).log10(),
            10.0 * (p1000 / expected).log10(),
        );
        println!(
            "A {:?}\nB {:?}",
            room.legs[0].2.stats(),
            room.legs[1].2.stats()
        );
        room.report_cpu();
        assert!(p440 > expected * 0.5, "440 Hz {p440}, sent {expected}");
        assert!(p440 > 1_000.0 * p1000 && p440 > 1_000.0 * p700);
        let b = room.legs[1].2.stats();
        assert!(b.frames_decoded >= 50, "{b:?}");
        assert_eq!(b.decode_errors, 0);
    }

    #[test]
    fn two_talkers_are_mixed_and_nobody_hears_themself() {
        let mut room = Room::new(3);
        room.connect();
        let (mut heard_a, mut heard_c) = (Vec::new(), Vec::new());
        let amp = 6_000.0;
        for f in 0..75 {
            let heard = room.tick(|i| match i {
                0 => tone(440.0, f, amp),
                1 => tone(1_000.0, f, amp),
                _ => [0; FRAME],
            });
            if f >= 25 {
                heard_a.extend_from_slice(&heard[0]);
                heard_c.extend_from_slice(&heard[2]);
            }
        }
        let expected = sine_power(amp);
        let db = |p: f64| 10.0 * (p / expected).log10();
        let (c440, c1000) = (power(&heard_c, 440.0, 8e3), power(&heard_c, 1e3, 8e3));
        let (a440, a1000) = (power(&heard_a, 440.0, 8e3), power(&heard_a, 1e3, 8e3));
        println!(
            "C hears 440 Hz {:.1} dB, 1000 Hz {:.1} dB; A hears 440 Hz {:.1} dB, 1000 Hz {:.1} dB",
            db(c440),
            db(c1000),
            db(a440),
            db(a1000)
        );
        room.report_cpu();
        assert!(c440 > expected * 0.5 && c1000 > expected * 0.5);
        assert!(a1000 > expected * 0.5);
        assert!(a440 < a1000 / 1_000.0, "A hears itself");
    }

    #[test]
    fn a_browser_with_camera_in_the_room_and_one_leaving() {
        let mut room = Room::new(3);
        room.add_browser();
        // Each leg hears the other two legs and the browser's microphone;
        // the browser's camera m-line is declined (no video codec), so no
        // video reaches the phone.
        for _ in 0..250 {
            room.tick(|i| tone(440.0 * (i + 1) as f64, 0, 1_000.0));
            if room.legs.iter().all(|(_, _, l)| l.tracks() == 3) && room.peers[0].1.connected {
                break;
            }
        }
        for (_, _, leg) in &room.legs {
            assert!(leg.connected());
            assert_eq!(leg.tracks(), 3, "{:?}", leg.stats());
        }
        let second = |room: &mut Room| {
            let before = (room.rx_bytes[0], room.rx_not_audio[0]);
            for _ in 0..50 {
                room.tick(|i| tone(440.0 * (i + 1) as f64, 0, 1_000.0));
            }
            (
                (room.rx_bytes[0] - before.0) * 8,
                room.rx_not_audio[0] - before.1,
            )
        };
        // The SFU forwards the camera on the m-line the leg declined (the
        // leg drops it): the owner unsubscribes its legs from video.
        let with_video = second(&mut room);
        let browser = room.peers[0].0;
        for (id, _, _) in &room.legs {
            room.worker
                .set_subscribed(*id, browser, Some(MediaKind::Video), false)
                .unwrap();
        }
        second(&mut room);
        let audio_only = second(&mut room);
        println!(
            "leg 0 receives (bit/s, video packets) {with_video:?}, {audio_only:?} unsubscribed \
             from video; {:?}",
            room.legs[0].2.stats()
        );
        assert!(with_video.1 > 0);
        // Three Opus tracks and RTCP, not a camera.
        assert_eq!(audio_only.1, 0);
        assert!(audio_only.0 < 300_000, "{audio_only:?}");
        // The browser's fake Opus is garbage to a decoder: concealed, no panic.
        // Leg 1 leaves: the others renegotiate its track away.
        let gone = room.legs[1].0;
        room.worker.leave(gone);
        for _ in 0..25 {
            room.tick(|_| [0; FRAME]);
        }
        for i in [0, 2] {
            let leg = &room.legs[i].2;
            assert!(leg.connected());
            assert_eq!(leg.tracks(), 2, "leg {i}: {:?}", leg.stats());
        }
    }

    #[test]
    fn garbage_from_the_sfu_address_does_not_break_the_call() {
        let mut room = Room::new(2);
        room.connect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let sfu = sfu_addr();
        let now = room.now;
        for k in 0..3_000 {
            let len = (next() % 300) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Every class str0m demultiplexes: STUN, DTLS, RTP/RTCP.
            if let Some(b) = d.first_mut() {
                *b = [0, 1, 22, 23, 128, 129, 144, 200][k % 8];
            }
            if d.len() > 1 && k % 3 == 0 {
                d[1] = [72, 200, 201, 205, 206, 111][k % 6];
            }
            let source = if k % 5 == 0 {
                SocketAddr::from(([10, 9, 9, 9], 1000 + k as u16))
            } else {
                sfu
            };
            room.legs[1].2.handle_datagram(now, source, &d);
        }
        let mut heard = Vec::new();
        for f in 0..50 {
            let h = room.tick(|i| {
                if i == 0 {
                    tone(440.0, f, 8_000.0)
                } else {
                    [0; FRAME]
                }
            });
            if f >= 25 {
                heard.extend_from_slice(&h[1]);
            }
        }
        let p440 = power(&heard, 440.0, 8_000.0);
        println!(
            "after garbage: 440 Hz {:.1} dB re. sent; {:?}",
            10.0 * (p440 / sine_power(8e3)).log10(),
            room.legs[1].2.stats()
        );
        assert!(room.legs[1].2.connected());
        assert!(p440 > sine_power(8_000.0) * 0.5, "{p440}");
    }

    proptest! {
        #[test]
        fn garbage_before_connecting_is_ignored(
            datagrams in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..400), any::<u16>()),
                1..40,
            ),
        ) {
            let now = Instant::now();
            let local: SocketAddr = "10.0.1.2:4000".parse().unwrap();
            let (mut leg, _offer) = RoomLeg::new(now, local, "p").unwrap();
            for (k, (d, port)) in datagrams.iter().enumerate() {
                let at = now + Duration::from_millis(k as u64);
                leg.handle_datagram(at, SocketAddr::from(([10, 0, 0, 1], *port)), d);
                leg.handle_timeout(at);
                while leg.poll_transmit().is_some() {}
                let _ = leg.pull_room(at);
            }
            prop_assert!(!leg.connected());
        }

        #[test]
        fn playout_survives_any_arrival(
            ops in proptest::collection::vec(
                (any::<bool>(), -8i64..8, proptest::collection::vec(any::<u8>(), 0..60)),
                1..200,
            ),
        ) {
            let mut t = new_track();
            let mut stats = RoomLegStats::default();
            let mut base = 1_000_000u64;
            for (play, offset, data) in ops {
                if play {
                    let mut out = [0i16; FRAME];
                    t.play(&mut out, &mut stats);
                    base += RTP_FRAME;
                } else {
                    let time = base.saturating_add_signed(offset * RTP_FRAME as i64);
                    t.push(time, data.into(), &mut stats);
                }
                prop_assert!(t.frames.len() <= 2 * MAX_QUEUED);
                prop_assert!(t.pcm.len() <= MAX_PACKET_SAMPLES);
            }
        }
    }

    /// Opus frames of a 440 Hz tone, as a publisher sends them.
    fn encoded_tone(frames: usize) -> Vec<Vec<u8>> {
        let mut enc =
            opus::Encoder::new(8_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE)).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc.set_packet_loss_perc(OPUS_EXPECTED_LOSS).unwrap();
        enc.set_complexity(OPUS_COMPLEXITY).unwrap();
        (0..frames)
            .map(|f| enc.encode_vec(&tone(440.0, f, 8_000.0), 1_500).unwrap())
            .collect()
    }

    fn new_track() -> Track {
        Track::new(
            1,
            opus::Decoder::new(8_000, opus::Channels::Mono).unwrap(),
            Instant::now(),
        )
    }

    /// libopus alone, per 20 ms frame (printed, not asserted: timing
    /// depends on the build and the machine).
    #[test]
    fn codec_cost_per_frame() {
        let n = 250;
        let t = Instant::now();
        let frames = encoded_tone(n);
        let encode = t.elapsed() / n as u32;
        let mut track = new_track();
        let mut stats = RoomLegStats::default();
        let mut out = [0i16; FRAME];
        let t = Instant::now();
        for (f, data) in frames.iter().enumerate() {
            track.push(f as u64 * RTP_FRAME, data.as_slice().into(), &mut stats);
            track.play(&mut out, &mut stats);
        }
        let decode = t.elapsed() / n as u32;
        let bytes: usize = frames.iter().map(Vec::len).sum();
        println!(
            "opus at 8 kHz: encode {encode:?}/frame, decode+playout {decode:?}/frame, {} bit/s",
            bytes * 8 * 50 / n
        );
        assert_eq!(stats.frames_decoded, n as u64 - 1);
    }

    #[test]
    fn a_lost_frame_is_recovered_from_fec_and_order_is_restored() {
        let frames = encoded_tone(60);
        let mut t = new_track();
        let mut stats = RoomLegStats::default();
        let mut out = Vec::new();
        let start = 90_000u64;
        for (f, data) in frames.iter().enumerate() {
            let at = start + f as u64 * RTP_FRAME;
            match f {
                30 => {} // lost
                40 => {} // arrives after 41
                41 => {
                    t.push(at, data.as_slice().into(), &mut stats);
                    t.push(at - RTP_FRAME, frames[40].as_slice().into(), &mut stats);
                }
                _ => t.push(at, data.as_slice().into(), &mut stats),
            }
            let mut frame = [0i16; FRAME];
            if t.play(&mut frame, &mut stats) {
                out.extend_from_slice(&frame);
            }
        }
        println!("{stats:?}");
        assert_eq!(stats.frames_recovered, 1, "{stats:?}");
        assert_eq!(stats.frames_concealed, 0, "{stats:?}");
        assert_eq!(stats.frames_dropped, 0, "{stats:?}");
        let tail = &out[out.len() - 40 * FRAME..];
        assert!(power(tail, 440.0, 8e3) > sine_power(8e3) * 0.5);
    }

    #[test]
    fn bursts_are_bounded_and_gaps_resync() {
        let frames = encoded_tone(40);
        let mut t = new_track();
        let mut stats = RoomLegStats::default();
        // A burst of 10 frames: playout skips to the newest, not 200 ms late.
        let base = 1_000_000;
        for (f, data) in frames[..10].iter().enumerate() {
            t.push(
                base + f as u64 * RTP_FRAME,
                data.as_slice().into(),
                &mut stats,
            );
        }
        let mut out = [0i16; FRAME];
        assert!(t.play(&mut out, &mut stats));
        assert!(t.frames.len() < PREBUFFER, "{}", t.frames.len());
        assert_eq!(t.next, Some(base + 9 * RTP_FRAME));
        // Then nothing: the last frame, a few concealed, then silence.
        let played = (0..20).filter(|_| t.play(&mut out, &mut stats)).count();
        assert_eq!(played as u32, 1 + MAX_CONCEALED);
        assert_eq!(t.next, None);
        // A talk spurt 300 ms later rebuffers and plays.
        let later = base + 25 * RTP_FRAME;
        t.push(later, frames[25].as_slice().into(), &mut stats);
        assert!(!t.play(&mut out, &mut stats));
        t.push(later + RTP_FRAME, frames[26].as_slice().into(), &mut stats);
        assert!(t.play(&mut out, &mut stats));
        assert_eq!(t.next, Some(later + RTP_FRAME));
        // A publisher restart far back in RTP time starts a new stream.
        t.push(5, frames[27].as_slice().into(), &mut stats);
        assert_eq!(t.next, None);
        assert_eq!(t.frames.len(), 1);
    }
}
