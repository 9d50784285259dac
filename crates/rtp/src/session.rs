//! The media side of one phone call leg, sans-IO: fed datagrams, PCM frames
//! and the time, it hands back datagrams to send, DTMF digits, events and
//! decoded PCM. The IO layer owns the RTP (and RTCP) sockets and a 20 ms
//! clock that calls [`MediaSession::pull_decoded`] and
//! [`MediaSession::push_pcm`].
//!
//! **Symmetric RTP latching.** Phones and trunks behind NAT advertise an
//! address in SDP that is not where their packets come from, so the first
//! valid RTP (an expected payload type) re-points our destination to its
//! source. After that, RTP from any other source is dropped and counted: an
//! injected stream must not take over the call. A legitimate move (a PBX
//! transfer or failover) is a *new* SSRC from a new source while the latched
//! source has gone quiet; it is followed after a few packets in sequence.

use crate::dtmf::{self, DtmfDigit, DtmfPacket, DtmfReceiver};
use crate::g711::Law;
use crate::jitter::{Frame, JitterBuffer, JitterConfig, JitterStats, Packet};
use crate::packet::{self, ReportBlock, RtcpPacket, RtpHeader, RtpPacket};
use crate::plc::Plc;
use crate::reception::{NtpClock, Reception, from_compact};
use crate::srtp::{MasterKey, SrtpContext, SrtpError, Suite};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
const CLOCK_RATE: u32 = 8000;
const FRAME: Duration = Duration::from_millis(20);
/// A gap in [`MediaSession::push_pcm`] calls longer than this is a pause:
/// the timestamp catches up with the time and the marker bit is set.
const PUSH_GAP: Duration = Duration::from_millis(60);
/// Packets in sequence a new source must send before it can take over.
const RELATCH_PACKETS: u32 = 5;
/// How long the latched source must have been silent for that.
const RELATCH_QUIET: Duration = Duration::from_millis(500);
/// Pause between two queued DTMF digits.
const DTMF_GAP: Duration = Duration::from_millis(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("no telephone-event payload type was negotiated")]
    NoTelephoneEvent,
    #[error("the session does not send in its current direction")]
    NotSending,
    #[error(transparent)]
    Dtmf(#[from] dtmf::DtmfError),
    #[error("the session is closed")]
    Closed,
}

/// SDP direction of the session, from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    /// We hold the remote party (music on hold may still flow from us).
    SendOnly,
    /// The remote party holds us.
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Negotiated audio payload types; the first is the one we send.
    pub codecs: Vec<(u8, Law)>,
    /// The telephone-event payload type (8 kHz), if negotiated.
    pub telephone_event: Option<u8>,
    /// The remote RTP address from SDP (until latching replaces it).
    pub remote_rtp: SocketAddr,
    /// The remote RTCP address (SDP `a=rtcp`); default: RTP port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    /// RTCP shares the RTP port (RFC 5761 `a=rtcp-mux`).
    pub rtcp_mux: bool,
    pub ssrc: u32,
    pub cname: String,
    /// Random initial sequence number and timestamp (RFC 3550 §5.1): the
    /// caller draws them, so the session stays deterministic.
    pub initial_sequence: u16,
    pub initial_timestamp: u32,
    pub direction: Direction,
    /// No RTP for this long while receiving raises [`Event::MediaTimeout`].
    pub media_timeout: Duration,
    pub rtcp_interval: Duration,
    pub jitter: JitterConfig,
    /// Wall-clock time at the `now` given to [`MediaSession::new`], for the
    /// NTP timestamps of sender reports.
    pub wall_clock: SystemTime,
    /// SDES-SRTP keys (`RTP/SAVP`); `None` for plain RTP.
    pub srtp: Option<SrtpKeys>,
}

/// The keys of an SDES-SRTP call: ours protect what we send, the peer's
/// unprotect what we receive. `Debug` shows no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: Suite,
    pub local: MasterKey,
    pub remote: MasterKey,
}

/// The two SRTP contexts of a session.
#[derive(Debug)]
struct Srtp {
    tx: SrtpContext,
    rx: SrtpContext,
}

impl SessionConfig {
    /// PCMU and PCMA (in that order of preference), telephone-event on 101,
    /// sendrecv, 30 s media timeout, RTCP every 5 s.
    pub fn new(remote_rtp: SocketAddr, ssrc: u32) -> Self {
        SessionConfig {
            codecs: vec![(0, Law::Mu), (8, Law::A)],
            telephone_event: Some(101),
            remote_rtp,
            remote_rtcp: None,
            rtcp_mux: false,
            ssrc,
            cname: format!("{ssrc:08x}@continuum"),
            initial_sequence: 0,
            initial_timestamp: 0,
            direction: Direction::SendRecv,
            media_timeout: Duration::from_secs(30),
            rtcp_interval: Duration::from_secs(5),
            jitter: JitterConfig::default(),
            wall_clock: SystemTime::now(),
            srtp: None,
        }
    }
}

/// Which of the session's local sockets a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Rtp,
    Rtcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub socket: Socket,
    pub dest: SocketAddr,
    pub bytes: Vec<u8>,
}

/// See [`MediaSession::dropped`]; the fields are those of [`SessionStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    pub wrong_source: u64,
    pub malformed: u64,
    pub auth_failed: u64,
    pub replayed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first valid RTP came from `addr`; media now goes there.
    Latched { addr: SocketAddr },
    /// A new stream from a new source took over (see the module docs).
    Relatched { from: SocketAddr, to: SocketAddr },
    /// No RTP for the configured timeout while receiving.
    MediaTimeout,
    /// RTP again after a timeout.
    MediaResumed,
    /// The remote party sent RTCP BYE.
    RemoteBye { reason: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    Dtmf(DtmfDigit),
    Event(Event),
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionStats {
    pub rtp_in: u64,
    pub bytes_in: u64,
    pub rtp_out: u64,
    pub bytes_out: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    /// Packets lost on the way to us (RFC 3550 cumulative count).
    pub lost: i64,
    /// Interarrival jitter of the stream we receive.
    pub jitter: Duration,
    /// The jitter buffer's own counts (late, concealed, ...).
    pub playout: JitterStats,
    /// RTP and RTCP dropped for coming from the wrong place.
    pub wrong_source: u64,
    /// Datagrams that were neither valid RTP nor valid RTCP.
    pub malformed: u64,
    /// RTP with a payload type that was not negotiated.
    pub unknown_payload: u64,
    /// SRTP/SRTCP that failed authentication (wrong key, tampered, forged).
    pub auth_failed: u64,
    /// SRTP/SRTCP replayed or older than the replay window.
    pub replayed: u64,
    /// Audio frames whose payload was not 20 ms long.
    pub odd_frame_size: u64,
    pub dtmf_in: u64,
    pub dtmf_out: u64,
    /// Round trip time from the peer's last report on our stream.
    pub rtt: Option<Duration>,
    /// What the peer last reported about our stream.
    pub remote_fraction_lost: Option<u8>,
    pub remote_jitter: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: SocketAddr,
    ssrc: u32,
    sequence: u16,
    count: u32,
}

#[derive(Debug, Clone)]
struct DtmfSend {
    timestamp: u32,
    started: Instant,
    packets: Vec<DtmfPacket>,
    next: usize,
}

#[derive(Debug)]
pub struct MediaSession {
    cfg: SessionConfig,
    ntp: NtpClock,
    closed: bool,
    out: VecDeque<Output>,
    stats: SessionStats,

    // Where media goes.
    rtp_dest: SocketAddr,
    rtcp_dest: SocketAddr,
    latched: bool,
    candidate: Option<Candidate>,

    // Receiving.
    remote_ssrc: Option<u32>,
    reception: Option<Reception>,
    jitter: JitterBuffer,
    plc: Plc,
    dtmf_rx: DtmfReceiver,
    last_rtp_in: Instant,
    timed_out: bool,

    // Sending.
    sequence: u16,
    timestamp: u32,
    last_push: Option<Instant>,
    talkspurt: bool,
    packets_sent: u32,
    octets_sent: u32,
    last_sent_at: Option<Instant>,
    last_sent_timestamp: u32,
    dtmf_queue: VecDeque<(u8, Duration)>,
    dtmf_send: Option<DtmfSend>,
    dtmf_ready_at: Instant,

    next_rtcp: Instant,
    rng: u32,
    srtp: Option<Srtp>,
}

impl MediaSession {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        let rtp_dest = cfg.remote_rtp;
        let rtcp_dest = rtcp_default(&cfg, rtp_dest);
        let jitter = JitterBuffer::new(cfg.jitter.clone());
        let mut s = MediaSession {
            ntp: NtpClock::new(now, cfg.wall_clock),
            closed: false,
            out: VecDeque::new(),
            stats: SessionStats::default(),
            rtp_dest,
            rtcp_dest,
            latched: false,
            candidate: None,
            remote_ssrc: None,
            reception: None,
            jitter,
            plc: Plc::new(),
            dtmf_rx: DtmfReceiver::new(CLOCK_RATE),
            last_rtp_in: now,
            timed_out: false,
            sequence: cfg.initial_sequence,
            timestamp: cfg.initial_timestamp,
            last_push: None,
            talkspurt: true,
            packets_sent: 0,
            octets_sent: 0,
            last_sent_at: None,
            last_sent_timestamp: cfg.initial_timestamp,
            dtmf_queue: VecDeque::new(),
            dtmf_send: None,
            dtmf_ready_at: now,
            next_rtcp: now,
            rng: cfg.ssrc | 1,
            srtp: cfg.srtp.as_ref().map(|k| Srtp {
                tx: SrtpContext::new(k.suite, &k.local),
                rx: SrtpContext::new(k.suite, &k.remote),
            }),
            cfg,
        };
        // RFC 3550 §6.2: the first report comes after half an interval.
        s.next_rtcp = now + s.rtcp_interval() / 2;
        s
    }

    pub fn stats(&self) -> SessionStats {
        let mut s = self.stats;
        if let Some(r) = &self.reception {
            s.lost = r.lost();
            s.jitter = r.jitter();
        }
        s.playout = self.jitter.stats();
        s
    }

    /// Datagrams dropped so far, by why (cheap, unlike [`Self::stats`]: the
    /// host compares it around every datagram to count drops as they happen).
    pub fn dropped(&self) -> Dropped {
        Dropped {
            wrong_source: self.stats.wrong_source,
            malformed: self.stats.malformed,
            auth_failed: self.stats.auth_failed,
            replayed: self.stats.replayed,
        }
    }

    /// Where RTP goes now (the SDP address until latching).
    pub fn remote(&self) -> SocketAddr {
        self.rtp_dest
    }

    pub fn direction(&self) -> Direction {
        self.cfg.direction
    }

    /// Hold and resume (a re-INVITE changed the SDP direction).
    pub fn set_direction(&mut self, now: Instant, direction: Direction) {
        if direction.receives() && !self.cfg.direction.receives() {
            // The media timeout counts from the resume, not from the hold.
            self.last_rtp_in = now;
            self.timed_out = false;
        }
        if !direction.sends() {
            self.dtmf_queue.clear();
            self.dtmf_send = None;
        }
        self.cfg.direction = direction;
    }

    /// A re-INVITE changed the codec (PCMU ↔ PCMA) or the telephone-event
    /// payload type: what we send uses it from the next frame, and what we
    /// accept is it alone (the old payload type in flight counts as unknown).
    pub fn set_codec(&mut self, payload_type: u8, law: Law, telephone_event: Option<u8>) {
        self.cfg.codecs = vec![(payload_type, law)];
        self.cfg.telephone_event = telephone_event;
        if telephone_event.is_none() {
            self.dtmf_queue.clear();
            self.dtmf_send = None;
        }
    }

    /// A re-INVITE changed SDES keys: the contexts of the side whose key
    /// changed start over (a plain session stays plain).
    pub fn set_srtp_keys(&mut self, keys: SrtpKeys) {
        let Some(srtp) = &mut self.srtp else {
            return;
        };
        let old = self.cfg.srtp.as_ref();
        if old.is_none_or(|o| o.suite != keys.suite || o.local != keys.local) {
            srtp.tx = SrtpContext::new(keys.suite, &keys.local);
        }
        if old.is_none_or(|o| o.suite != keys.suite || o.remote != keys.remote) {
            srtp.rx = SrtpContext::new(keys.suite, &keys.remote);
        }
        self.cfg.srtp = Some(keys);
    }

    /// Whether media is SRTP.
    pub fn is_srtp(&self) -> bool {
        self.srtp.is_some()
    }

    /// A re-INVITE gave a new remote address: latching starts over.
    pub fn set_remote(&mut self, rtp: SocketAddr, rtcp: Option<SocketAddr>) {
        self.cfg.remote_rtp = rtp;
        self.cfg.remote_rtcp = rtcp;
        self.rtp_dest = rtp;
        self.rtcp_dest = rtcp_default(&self.cfg, rtp);
        self.latched = false;
        self.candidate = None;
    }

    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        if self.closed {
            return;
        }
        if packet::is_rtcp(bytes) {
            self.handle_rtcp(now, source, bytes);
            return;
        }
        // SRTP: only what authenticates is media (it may latch, count, play).
        let plain;
        let bytes = match &mut self.srtp {
            Some(srtp) => match srtp.rx.unprotect_rtp(bytes) {
                Ok(p) => {
                    plain = p;
                    &plain[..]
                }
                Err(e) => {
                    self.srtp_dropped(e);
                    return;
                }
            },
            None => bytes,
        };
        let Ok(rtp) = RtpPacket::parse(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let law = self.law_for(rtp.payload_type);
        let is_dtmf = self.cfg.telephone_event == Some(rtp.payload_type);
        if law.is_none() && !is_dtmf {
            self.stats.unknown_payload += 1;
            return;
        }
        if is_dtmf && rtp.payload.len() < 4 {
            // Not a telephone-event: must not latch or count as media.
            self.stats.malformed += 1;
            return;
        }
        if !self.accept_source(now, source, &rtp) {
            self.stats.wrong_source += 1;
            return;
        }
        if self.remote_ssrc != Some(rtp.ssrc) {
            // A new stream: fresh statistics; the jitter buffer resets
            // itself on the SSRC change.
            self.remote_ssrc = Some(rtp.ssrc);
            self.reception = Some(Reception::new(CLOCK_RATE, rtp.sequence));
            self.dtmf_rx.reset();
        }
        self.stats.rtp_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        self.last_rtp_in = now;
        if self.timed_out {
            self.timed_out = false;
            self.event(Event::MediaResumed);
        }
        if let Some(r) = &mut self.reception {
            r.packet(now, rtp.sequence, rtp.timestamp);
        }
        if is_dtmf {
            // Length checked above: the payload parses.
            let _ = self.dtmf_rx.push(now, rtp.timestamp, rtp.payload);
            self.drain_dtmf();
            return;
        }
        self.jitter.push(
            now,
            Packet {
                sequence: rtp.sequence,
                timestamp: rtp.timestamp,
                ssrc: rtp.ssrc,
                marker: rtp.marker,
                payload_type: rtp.payload_type,
                payload: rtp.payload.to_vec(),
            },
        );
    }

    /// Symmetric RTP: whether RTP from `source` is the call's media.
    fn accept_source(&mut self, now: Instant, source: SocketAddr, rtp: &RtpPacket<'_>) -> bool {
        if !self.latched {
            self.latch(source);
            self.event(Event::Latched { addr: source });
            return true;
        }
        if source == self.rtp_dest {
            self.candidate = None;
            return true;
        }
        if self.remote_ssrc == Some(rtp.ssrc) {
            // The same stream from elsewhere: injected or replayed.
            return false;
        }
        let c = match self.candidate {
            Some(c)
                if c.addr == source
                    && c.ssrc == rtp.ssrc
                    && rtp.sequence == c.sequence.wrapping_add(1) =>
            {
                Candidate {
                    sequence: rtp.sequence,
                    count: c.count + 1,
                    ..c
                }
            }
            _ => Candidate {
                addr: source,
                ssrc: rtp.ssrc,
                sequence: rtp.sequence,
                count: 1,
            },
        };
        self.candidate = Some(c);
        let quiet = now.saturating_duration_since(self.last_rtp_in) >= RELATCH_QUIET;
        if c.count >= RELATCH_PACKETS && quiet {
            let from = self.rtp_dest;
            self.latch(source);
            self.candidate = None;
            self.event(Event::Relatched { from, to: source });
            return true;
        }
        false
    }

    fn latch(&mut self, source: SocketAddr) {
        self.latched = true;
        self.rtp_dest = source;
        self.rtcp_dest = if self.cfg.rtcp_mux {
            source
        } else {
            SocketAddr::new(source.ip(), source.port().wrapping_add(1))
        };
    }

    fn handle_rtcp(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        // RTCP from the media's host (any port: symmetric RTCP is rare), or
        // from the SDP address before anything latched.
        let ok = source.ip() == self.rtp_dest.ip() || source.ip() == self.cfg.remote_rtp.ip();
        if !ok {
            self.stats.wrong_source += 1;
            return;
        }
        let plain;
        let bytes = match &mut self.srtp {
            Some(srtp) => match srtp.rx.unprotect_rtcp(bytes) {
                Ok(p) => {
                    plain = p;
                    &plain[..]
                }
                Err(e) => {
                    self.srtp_dropped(e);
                    return;
                }
            },
            None => bytes,
        };
        let Ok(packets) = RtcpPacket::parse_compound(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.rtcp_in += 1;
        if self.latched && source.ip() == self.rtp_dest.ip() && !self.cfg.rtcp_mux {
            // Symmetric RTCP: answer where it comes from.
            self.rtcp_dest = source;
        }
        for p in packets {
            match p {
                RtcpPacket::SenderReport {
                    ssrc, ntp, reports, ..
                } => {
                    if Some(ssrc) == self.remote_ssrc
                        && let Some(r) = &mut self.reception
                    {
                        r.sender_report(now, ntp);
                    }
                    self.read_reports(now, &reports);
                }
                RtcpPacket::ReceiverReport { reports, .. } => self.read_reports(now, &reports),
                RtcpPacket::Bye { ssrcs, reason } => {
                    if self.remote_ssrc.is_none_or(|s| ssrcs.contains(&s)) {
                        self.event(Event::RemoteBye { reason });
                    }
                }
                RtcpPacket::SourceDescription(_) | RtcpPacket::Other { .. } => {}
            }
        }
    }

    fn srtp_dropped(&mut self, e: SrtpError) {
        match e {
            SrtpError::AuthFailed | SrtpError::NotEncrypted => self.stats.auth_failed += 1,
            SrtpError::Replayed | SrtpError::TooOld => self.stats.replayed += 1,
            SrtpError::TooShort(_)
            | SrtpError::BadVersion
            | SrtpError::BadHeader
            | SrtpError::KeyLength(_) => self.stats.malformed += 1,
            // Authenticated, but a seventeenth stream: not one we take.
            SrtpError::TooManySources => self.stats.wrong_source += 1,
        }
    }

    fn read_reports(&mut self, now: Instant, reports: &[ReportBlock]) {
        for r in reports.iter().filter(|r| r.ssrc == self.cfg.ssrc) {
            self.stats.remote_fraction_lost = Some(r.fraction_lost);
            self.stats.remote_jitter = Some(Duration::from_secs_f64(
                f64::from(r.jitter) / f64::from(CLOCK_RATE),
            ));
            if r.last_sr != 0 {
                // RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR.
                let rtt = self
                    .ntp
                    .compact(now)
                    .wrapping_sub(r.last_sr)
                    .wrapping_sub(r.delay_since_last_sr);
                if rtt < 1 << 31 {
                    self.stats.rtt = Some(from_compact(rtt));
                }
            }
        }
    }

    fn drain_dtmf(&mut self) {
        while let Some(d) = self.dtmf_rx.poll() {
            self.stats.dtmf_in += 1;
            self.out.push_back(Output::Dtmf(d));
        }
    }

    fn law_for(&self, payload_type: u8) -> Option<Law> {
        self.cfg
            .codecs
            .iter()
            .find(|(pt, _)| *pt == payload_type)
            .map(|&(_, law)| law)
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    /// One 20 ms frame of decoded audio (8 kHz); call every 20 ms. Gaps are
    /// concealed, and silence is returned when nothing plays.
    pub fn pull_decoded(&mut self, now: Instant) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        match self.jitter.pop(now) {
            Frame::Audio(p) => {
                let law = self.law_for(p.payload_type).unwrap_or(Law::Mu);
                if p.payload.len() != FRAME_SAMPLES {
                    self.stats.odd_frame_size += 1;
                }
                let n = p.payload.len().min(FRAME_SAMPLES);
                law.decode(&p.payload[..n], &mut frame[..n]);
                self.plc.good(&mut frame);
            }
            // An idle buffer fades out what was playing, then is silent.
            Frame::Lost | Frame::Empty => self.plc.conceal(&mut frame),
        }
        if !self.cfg.direction.receives() {
            frame = [0; FRAME_SAMPLES];
        }
        frame
    }

    /// One 20 ms frame of audio to send (8 kHz); call every 20 ms. Nothing
    /// is sent while on hold or while a DTMF event is being sent, but the
    /// timestamp keeps counting.
    pub fn push_pcm(&mut self, now: Instant, pcm: &[i16; FRAME_SAMPLES]) {
        if self.closed {
            return;
        }
        if let Some(last) = self.last_push {
            let gap = now.saturating_duration_since(last);
            if gap > PUSH_GAP {
                // Keep the timestamp on the wall clock across the pause.
                let frames = (gap.as_millis() / FRAME.as_millis()) as u32;
                self.timestamp = self
                    .timestamp
                    .wrapping_add((frames.saturating_sub(1)) * FRAME_SAMPLES as u32);
                self.talkspurt = true;
            }
        }
        self.last_push = Some(now);
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        if !self.cfg.direction.sends() {
            self.talkspurt = true;
            return;
        }
        if self.dtmf_send.is_some() {
            return;
        }
        let Some(&(pt, law)) = self.cfg.codecs.first() else {
            return;
        };
        let mut payload = [0u8; FRAME_SAMPLES];
        law.encode(pcm, &mut payload);
        let marker = std::mem::take(&mut self.talkspurt);
        self.send_rtp(now, marker, pt, timestamp, &payload);
    }

    fn send_rtp(&mut self, now: Instant, marker: bool, pt: u8, timestamp: u32, payload: &[u8]) {
        let header = RtpHeader {
            marker,
            payload_type: pt,
            sequence: self.sequence,
            timestamp,
            ssrc: self.cfg.ssrc,
            ..Default::default()
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut bytes = header.to_vec(payload).expect("no CSRC or extension");
        if let Some(srtp) = &mut self.srtp
            && srtp.tx.protect_rtp(&mut bytes).is_err()
        {
            return; // cannot happen: the header is ours
        }
        self.stats.rtp_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(payload.len() as u32);
        self.last_sent_at = Some(now);
        self.last_sent_timestamp = timestamp;
        self.out.push_back(Output::Transmit(Transmit {
            socket: Socket::Rtp,
            dest: self.rtp_dest,
            bytes,
        }));
    }

    /// Queues an RFC 4733 digit (`0-9 * # A-D`); `duration` is clamped to
    /// 40 ms..8 s. Digits are sent one after another.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        digit: char,
        duration: Duration,
    ) -> Result<(), SessionError> {
        if self.closed {
            return Err(SessionError::Closed);
        }
        if self.cfg.telephone_event.is_none() {
            return Err(SessionError::NoTelephoneEvent);
        }
        if !self.cfg.direction.sends() {
            return Err(SessionError::NotSending);
        }
        let event = dtmf::event_for_digit(digit)?;
        self.dtmf_queue.push_back((event, duration));
        self.run_dtmf(now);
        Ok(())
    }

    fn run_dtmf(&mut self, now: Instant) {
        let Some(pt) = self.cfg.telephone_event else {
            return;
        };
        loop {
            if self.dtmf_send.is_none() {
                if now < self.dtmf_ready_at {
                    return;
                }
                let Some((event, duration)) = self.dtmf_queue.pop_front() else {
                    return;
                };
                self.dtmf_send = Some(DtmfSend {
                    // The event starts where the next audio frame would.
                    timestamp: self.timestamp,
                    started: now,
                    packets: dtmf::event_packets(event, duration, 10, CLOCK_RATE),
                    next: 0,
                });
            }
            let send = self.dtmf_send.as_mut().expect("just set");
            let Some(&p) = send.packets.get(send.next) else {
                self.dtmf_send = None;
                self.stats.dtmf_out += 1;
                self.dtmf_ready_at = now + DTMF_GAP;
                // Audio after the event is a new talkspurt.
                self.talkspurt = true;
                continue;
            };
            if send.started + p.offset > now {
                return;
            }
            send.next += 1;
            let ts = send.timestamp;
            self.send_rtp(now, p.marker, pt, ts, &p.event.to_bytes());
        }
    }

    /// The next time [`MediaSession::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut t = self.next_rtcp;
        if let Some(d) = self.dtmf_rx.poll_timeout() {
            t = t.min(d);
        }
        match &self.dtmf_send {
            Some(s) => {
                if let Some(p) = s.packets.get(s.next) {
                    t = t.min(s.started + p.offset);
                }
            }
            None if !self.dtmf_queue.is_empty() => t = t.min(self.dtmf_ready_at),
            None => {}
        }
        if self.cfg.direction.receives() && !self.timed_out {
            t = t.min(self.last_rtp_in + self.cfg.media_timeout);
        }
        Some(t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.dtmf_rx.handle_timeout(now);
        self.drain_dtmf();
        self.run_dtmf(now);
        if self.cfg.direction.receives()
            && !self.timed_out
            && now.saturating_duration_since(self.last_rtp_in) >= self.cfg.media_timeout
        {
            self.timed_out = true;
            self.event(Event::MediaTimeout);
        }
        if now >= self.next_rtcp {
            let report = self.report(now);
            self.send_rtcp(report);
            self.next_rtcp = now + self.rtcp_interval();
        }
    }

    /// Ends the session: an RTCP BYE goes out, and nothing else after it.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let mut packets = self.report(now);
        packets.push(RtcpPacket::Bye {
            ssrcs: vec![self.cfg.ssrc],
            reason: None,
        });
        self.send_rtcp(packets);
        self.closed = true;
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// RFC 3550 §6.2: the interval is randomised to 0.5..1.5 of nominal so
    /// that reports from many sessions do not synchronise.
    fn rtcp_interval(&mut self) -> Duration {
        // xorshift32: deterministic per SSRC, good enough for spreading.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let factor = 0.5 + f64::from(self.rng) / f64::from(u32::MAX);
        self.cfg.rtcp_interval.mul_f64(factor)
    }

    /// SR if we sent RTP in the last two intervals, else RR; with SDES.
    fn report(&mut self, now: Instant) -> Vec<RtcpPacket> {
        let reports: Vec<ReportBlock> = match (&mut self.reception, self.remote_ssrc) {
            (Some(r), Some(ssrc)) => vec![r.report(now, ssrc)],
            _ => vec![],
        };
        let ssrc = self.cfg.ssrc;
        let recent = self
            .last_sent_at
            .is_some_and(|t| now.saturating_duration_since(t) < 2 * self.cfg.rtcp_interval);
        let first = if recent {
            // The RTP timestamp that corresponds to `now`.
            let since = now.saturating_duration_since(self.last_sent_at.expect("recent"));
            let rtp_timestamp = self
                .last_sent_timestamp
                .wrapping_add((since.as_secs_f64() * f64::from(CLOCK_RATE)) as u32);
            RtcpPacket::SenderReport {
                ssrc,
                ntp: self.ntp.ntp(now),
                rtp_timestamp,
                packet_count: self.packets_sent,
                octet_count: self.octets_sent,
                reports,
            }
        } else {
            RtcpPacket::ReceiverReport { ssrc, reports }
        };
        vec![
            first,
            RtcpPacket::SourceDescription(vec![(ssrc, Some(self.cfg.cname.clone()))]),
        ]
    }

    fn send_rtcp(&mut self, packets: Vec<RtcpPacket>) {
        let Ok(mut bytes) = RtcpPacket::write_compound(&packets) else {
            return;
        };
        if let Some(srtp) = &mut self.srtp
            && srtp.tx.protect_rtcp(&mut bytes).is_err()
        {
            return;
        }
        let (socket, dest) = if self.cfg.rtcp_mux {
            (Socket::Rtp, self.rtp_dest)
        } else {
            (Socket::Rtcp, self.rtcp_dest)
        };
        self.stats.rtcp_out += 1;
        self.out.push_back(Output::Transmit(Transmit {
            socket,
            dest,
            bytes,
        }));
    }
}

fn rtcp_default(cfg: &SessionConfig, rtp: SocketAddr) -> SocketAddr {
    if cfg.rtcp_mux {
        rtp
    } else {
        cfg.remote_rtcp
            .unwrap_or_else(|| SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)))
    }
}

#[cfg(test)]
mod tests;
