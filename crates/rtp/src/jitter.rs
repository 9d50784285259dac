//! An adaptive jitter buffer for one incoming stream of 20 ms frames.
//!
//! Packets are ordered by extended sequence number and played one per
//! [`JitterBuffer::pop`], which the caller runs on its own 20 ms clock. The
//! playout delay adapts to the network:
//! - **grows quickly**: when the next frame has not arrived and the buffer
//!   holds less than the target after it (an underrun), playout waits
//!   instead of skipping, so each underrun adds one frame of delay and the
//!   late packet still plays;
//! - **shrinks slowly**: once per second, if the buffer never ran lower than
//!   the target (k × the RFC 3550 jitter estimate, clamped to 20..200 ms)
//!   over that whole second, one frame is dropped.
//!
//! Memory is bounded by `max_packets`. A new SSRC, or a sequence or timestamp
//! jump that persists, starts the stream afresh.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The nominal frame duration the buffer plays at.
pub const FRAME: Duration = Duration::from_millis(20);

/// RFC 3550 A.1: a jump this far ahead is a restart or a loss burst; this far
/// behind is a stray old packet or a restart.
const MAX_DROPOUT: i64 = 3000;
const MAX_MISORDER: i64 = 100;
/// Pops in a shrink window (1 s).
const WINDOW_POPS: u32 = 50;
/// Underruns in a row after which the stream is taken to have paused
/// (silence suppression, hold): playout re-primes when it resumes.
const IDLE_AFTER_UNDERRUNS: u32 = 10;
/// Where extended sequence numbers start, so that unwrapping backwards
/// from the first packet never goes below zero.
const EXT_BASE: u64 = 1 << 32;

#[derive(Debug, Clone)]
pub struct JitterConfig {
    pub clock_rate: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Target delay = this × the interarrival jitter estimate.
    pub jitter_multiplier: f64,
    /// Packets held at most; past that the oldest is dropped.
    pub max_packets: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 8000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            jitter_multiplier: 4.0,
            // 640 ms of 20 ms frames: the maximum delay with room for a
            // burst, small enough to bound a hostile sender.
            max_packets: 32,
        }
    }
}

/// An RTP packet as the buffer keeps it (payload copied out of the datagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Vec<u8>,
}

/// What to play for the next 20 ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The frame's packet.
    Audio(Packet),
    /// Playing, but this frame's packet is missing: conceal it.
    Lost,
    /// Not playing (nothing received yet, priming, or the stream paused).
    Empty,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub pushed: u64,
    pub played: u64,
    /// Frames returned as [`Frame::Lost`] (missing packets and underruns).
    pub concealed: u64,
    /// Of those, frames that were missing while later ones had arrived.
    pub lost: u64,
    pub underruns: u64,
    /// Packets that arrived after their playout time.
    pub late: u64,
    pub duplicates: u64,
    /// Packets dropped because the buffer was full.
    pub overflow: u64,
    /// Frames dropped to bring the delay down.
    pub dropped_for_latency: u64,
    /// Packets refused as a sequence jump (RFC 3550 A.1 probation).
    pub out_of_sequence: u64,
    /// Streams restarted (new SSRC, sequence or timestamp jump).
    pub resets: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Priming { since: Instant },
    Playing,
}

/// RFC 3550 §6.4.1 / A.8 interarrival jitter, in timestamp units.
#[derive(Debug, Clone, Default)]
pub struct JitterEstimator {
    epoch: Option<Instant>,
    last: Option<(f64, u32)>,
    jitter: f64,
}

impl JitterEstimator {
    /// Feeds one packet's arrival time and RTP timestamp.
    pub fn update(&mut self, now: Instant, timestamp: u32, clock_rate: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let arrival = now.saturating_duration_since(epoch).as_secs_f64() * f64::from(clock_rate);
        if let Some((last_arrival, last_ts)) = self.last {
            let d = (arrival - last_arrival) - f64::from(timestamp.wrapping_sub(last_ts) as i32);
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.last = Some((arrival, timestamp));
    }

    /// The estimate in timestamp units (what RTCP reports carry).
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Forgets the last packet (keeps the estimate): a new stream follows.
    pub fn restart(&mut self) {
        self.last = None;
    }
}

#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    packets: BTreeMap<u64, Packet>,
    ssrc: Option<u32>,
    /// Highest extended sequence number accepted (the unwrapping reference).
    highest: Option<u64>,
    /// Extended sequence number and timestamp of the last accepted packet.
    reference: Option<(u64, u32)>,
    /// The next extended sequence number to play, once playing has begun.
    next: Option<u64>,
    phase: Phase,
    /// RFC 3550 A.1: the sequence number that would confirm a jump.
    probation: Option<u16>,
    estimator: JitterEstimator,
    /// Target delay in milliseconds.
    target_ms: f64,
    window_pops: u32,
    window_min_depth: u64,
    underrun_run: u32,
    /// Bit i set: extended sequence number `played_top - i` was played.
    played_mask: u64,
    played_top: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(cfg: JitterConfig) -> Self {
        let target_ms = cfg.min_delay.as_secs_f64() * 1000.0;
        JitterBuffer {
            cfg,
            packets: BTreeMap::new(),
            ssrc: None,
            highest: None,
            reference: None,
            next: None,
            phase: Phase::Idle,
            probation: None,
            estimator: JitterEstimator::default(),
            target_ms,
            window_pops: 0,
            window_min_depth: u64::MAX,
            underrun_run: 0,
            played_mask: 0,
            played_top: 0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The extended sequence number of the last frame played in this
    /// stream (it only grows until the stream restarts).
    pub fn last_played(&self) -> Option<u64> {
        (self.played_mask != 0).then_some(self.played_top)
    }

    /// The interarrival jitter estimate.
    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.estimator.jitter() / f64::from(self.cfg.clock_rate))
    }

    /// The delay the buffer aims for.
    pub fn target_delay(&self) -> Duration {
        Duration::from_secs_f64(self.target_ms / 1000.0)
    }

    fn target_frames(&self) -> u64 {
        (self.target_ms / 20.0).round().max(1.0) as u64
    }

    fn max_frames(&self) -> u64 {
        (self.cfg.max_delay.as_millis() / 20).max(1) as u64
    }

    /// Forgets the stream (packets, sequence state), keeping the stats.
    pub fn reset(&mut self) {
        self.packets.clear();
        self.highest = None;
        self.reference = None;
        self.next = None;
        self.phase = Phase::Idle;
        self.probation = None;
        self.estimator.restart();
        self.underrun_run = 0;
        self.played_mask = 0;
        self.played_top = 0;
        self.window_pops = 0;
        self.window_min_depth = u64::MAX;
    }

    fn restart(&mut self) {
        self.reset();
        self.stats.resets += 1;
    }

    pub fn push(&mut self, now: Instant, packet: Packet) {
        self.stats.pushed += 1;
        if self.ssrc != Some(packet.ssrc) {
            if self.ssrc.is_some() {
                self.restart();
            }
            self.ssrc = Some(packet.ssrc);
        }
        let ext = match self.highest {
            None => EXT_BASE | u64::from(packet.sequence),
            Some(h) => {
                let delta = i64::from(packet.sequence.wrapping_sub(h as u16) as i16);
                if !(-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
                    if self.probation != Some(packet.sequence) {
                        // One odd packet: wait for a second in sequence
                        // after it before believing the stream jumped.
                        self.probation = Some(packet.sequence.wrapping_add(1));
                        self.stats.out_of_sequence += 1;
                        return;
                    }
                    self.restart();
                    EXT_BASE | u64::from(packet.sequence)
                } else {
                    (h as i64 + delta) as u64
                }
            }
        };
        self.probation = None;
        let ext = match self.reference {
            Some((ref_ext, ref_ts)) if self.timestamp_jumped(ext, ref_ext, ref_ts, &packet) => {
                self.restart();
                EXT_BASE | u64::from(packet.sequence)
            }
            _ => ext,
        };
        if let Some(next) = self.next
            && ext < next
        {
            if self.was_played(ext) {
                self.stats.duplicates += 1;
            } else {
                self.stats.late += 1;
            }
            return;
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return;
        }
        if self.packets.len() >= self.cfg.max_packets {
            self.stats.overflow += 1;
            match self.packets.first_key_value() {
                Some((&oldest, _)) if oldest < ext => {
                    self.packets.remove(&oldest);
                }
                _ => return,
            }
        }
        if self.phase == Phase::Idle {
            // After a pause the timestamp leap says nothing about jitter.
            self.estimator.restart();
        }
        self.estimator
            .update(now, packet.timestamp, self.cfg.clock_rate);
        self.update_target();
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.reference = Some((ext, packet.timestamp));
        self.packets.insert(ext, packet);
        if self.phase == Phase::Idle {
            self.phase = Phase::Priming { since: now };
        }
    }

    /// A timestamp that disagrees with the sequence number by going backwards
    /// or leaping a minute ahead: the sender restarted its clock. (Forward
    /// leaps under a minute are silence suppression and are normal.)
    fn timestamp_jumped(&self, ext: u64, ref_ext: u64, ref_ts: u32, p: &Packet) -> bool {
        let frames = ext as i64 - ref_ext as i64;
        let rate = i64::from(self.cfg.clock_rate);
        let expected = i64::from(ref_ts) + frames * rate / 50;
        let diff = i64::from(p.timestamp.wrapping_sub(expected as u32) as i32);
        diff < -rate || diff > 60 * rate
    }

    fn update_target(&mut self) {
        let jitter_ms = self.estimator.jitter() * 1000.0 / f64::from(self.cfg.clock_rate);
        let raw = (self.cfg.jitter_multiplier * jitter_ms).clamp(
            self.cfg.min_delay.as_secs_f64() * 1000.0,
            self.cfg.max_delay.as_secs_f64() * 1000.0,
        );
        if raw > self.target_ms {
            self.target_ms = raw;
        } else {
            // About five seconds of packets to come down.
            self.target_ms += (raw - self.target_ms) / 256.0;
        }
    }

    fn was_played(&self, ext: u64) -> bool {
        ext <= self.played_top
            && self.played_top - ext < 64
            && (self.played_mask >> (self.played_top - ext)) & 1 == 1
    }

    fn mark_played(&mut self, ext: u64) {
        if ext > self.played_top {
            let shift = ext - self.played_top;
            self.played_mask = if shift >= 64 {
                0
            } else {
                self.played_mask << shift
            };
            self.played_top = ext;
        }
        self.played_mask |= 1 << (self.played_top - ext).min(63);
    }

    /// Frames held from the next one to play to the newest, inclusive.
    fn depth(&self, next: u64) -> u64 {
        self.packets
            .last_key_value()
            .map_or(0, |(&last, _)| (last + 1).saturating_sub(next))
    }

    /// The frame to play now; call once per 20 ms.
    pub fn pop(&mut self, now: Instant) -> Frame {
        match self.phase {
            Phase::Idle => return Frame::Empty,
            Phase::Priming { since } => {
                if now.saturating_duration_since(since) < self.target_delay() {
                    return Frame::Empty;
                }
                let Some((&first, _)) = self.packets.first_key_value() else {
                    self.phase = Phase::Idle;
                    return Frame::Empty;
                };
                self.next = Some(self.next.map_or(first, |n| n.max(first)));
                self.phase = Phase::Playing;
                self.window_pops = 0;
                self.window_min_depth = u64::MAX;
            }
            Phase::Playing => {}
        }
        let mut next = self.next.expect("set when playing");

        let depth = self.depth(next);
        self.window_min_depth = self.window_min_depth.min(depth);
        self.window_pops += 1;
        if self.window_pops >= WINDOW_POPS {
            // The buffer never ran below this over the last second: that
            // much beyond the target is delay nobody needed.
            if self.window_min_depth > self.target_frames() + 1 {
                self.packets.remove(&next);
                self.stats.dropped_for_latency += 1;
                next += 1;
            }
            self.window_pops = 0;
            self.window_min_depth = u64::MAX;
        }

        if let Some((&first, _)) = self.packets.first_key_value()
            && first > next + self.max_frames()
        {
            // A gap wider than any delay we keep (a long loss burst): play
            // on from what we have rather than conceal the whole gap.
            self.stats.lost += first - next;
            next = first;
        }
        let frame = if let Some(packet) = self.packets.remove(&next) {
            self.mark_played(next);
            next += 1;
            self.underrun_run = 0;
            self.stats.played += 1;
            Frame::Audio(packet)
        } else if self.depth(next) > self.target_frames() {
            // Missing while enough later frames are here that waiting for
            // it would exceed the target: lost (or too late to be of use).
            next += 1;
            self.underrun_run = 0;
            self.stats.lost += 1;
            self.stats.concealed += 1;
            Frame::Lost
        } else {
            // Nothing to play, or a gap in a buffer shallower than the
            // target: wait for it (this is how the delay grows).
            self.stats.underruns += 1;
            self.underrun_run += 1;
            if self.packets.is_empty() && self.underrun_run >= IDLE_AFTER_UNDERRUNS {
                self.phase = Phase::Idle;
                self.underrun_run = 0;
            }
            self.stats.concealed += 1;
            Frame::Lost
        };
        self.next = Some(next);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(seq: u16, ts: u32) -> Packet {
        Packet {
            sequence: seq,
            timestamp: ts,
            ssrc: 7,
            marker: false,
            payload_type: 0,
            payload: vec![seq as u8; 160],
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Seqs of played frames, `L` for lost, `E` for empty.
    fn label(f: &Frame) -> String {
        match f {
            Frame::Audio(p) => p.sequence.to_string(),
            Frame::Lost => "L".into(),
            Frame::Empty => "E".into(),
        }
    }

    #[test]
    fn steady_stream_plays_everything_in_order() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        for i in 0..100u16 {
            let now = t0 + ms(20 * u64::from(i));
            jb.push(now, packet(65500u16.wrapping_add(i), 160 * u32::from(i)));
            out.push(jb.pop(now + ms(5)));
        }
        let played: Vec<_> = out
            .iter()
            .filter(|f| matches!(f, Frame::Audio(_)))
            .collect();
        assert!(played.len() >= 98, "{}", played.len());
        assert_eq!(jb.stats().lost, 0);
        assert_eq!(jb.stats().underruns, 0);
        // In order across the sequence wrap.
        let seqs: Vec<u16> = out
            .iter()
            .filter_map(|f| match f {
                Frame::Audio(p) => Some(p.sequence),
                _ => None,
            })
            .collect();
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1));
        }
        assert_eq!(jb.jitter(), Duration::ZERO);
    }

    #[test]
    fn reorders_and_counts_duplicates_and_late() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(t0, packet(1, 160));
        jb.push(t0, packet(0, 0));
        jb.push(t0, packet(1, 160));
        jb.push(t0, packet(3, 480));
        assert_eq!(jb.stats().duplicates, 1);
        let now = t0 + ms(20);
        let got: Vec<_> = (0..4).map(|_| label(&jb.pop(now))).collect();
        assert_eq!(got, ["0", "1", "L", "3"]);
        // 2 comes too late; 1 again is a duplicate of a played frame.
        jb.push(now, packet(2, 320));
        jb.push(now, packet(1, 160));
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.stats().duplicates, 2);
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn underrun_waits_for_the_late_packet() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(t0, packet(0, 0));
        assert_eq!(jb.pop(t0 + ms(20)), Frame::Audio(packet(0, 0)));
        // 1 is late: the buffer conceals one frame, then plays it.
        assert_eq!(jb.pop(t0 + ms(40)), Frame::Lost);
        jb.push(t0 + ms(45), packet(1, 160));
        assert_eq!(label(&jb.pop(t0 + ms(60))), "1");
        assert_eq!(jb.stats().underruns, 1);
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn pause_goes_idle_and_reprimes() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(t0, packet(0, 0));
        assert_eq!(label(&jb.pop(t0 + ms(20))), "0");
        let mut now = t0 + ms(20);
        for _ in 0..IDLE_AFTER_UNDERRUNS {
            now += ms(20);
            assert_eq!(jb.pop(now), Frame::Lost);
        }
        now += ms(20);
        assert_eq!(jb.pop(now), Frame::Empty);
        // Silence suppression: the sequence goes on, the timestamp leaps.
        jb.push(now, packet(1, 16_000));
        assert_eq!(jb.pop(now + ms(1)), Frame::Empty, "priming");
        assert_eq!(label(&jb.pop(now + ms(20))), "1");
        assert_eq!(jb.stats().resets, 0);
    }

    #[test]
    fn new_ssrc_and_timestamp_jump_reset() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(t0, packet(10, 1600));
        let mut other = packet(500, 0);
        other.ssrc = 8;
        jb.push(t0, other);
        assert_eq!(jb.stats().resets, 1);
        assert_eq!(jb.len(), 1);
        // Same SSRC, next sequence, timestamp back by seconds.
        let mut back = packet(501, 0);
        back.ssrc = 8;
        back.timestamp = 0u32.wrapping_sub(80_000);
        jb.push(t0, back);
        assert_eq!(jb.stats().resets, 2);
        assert_eq!(jb.len(), 1);
    }

    #[test]
    fn sequence_jump_needs_confirmation() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(t0, packet(0, 0));
        jb.push(t0, packet(30_000, 0));
        assert_eq!(jb.stats().out_of_sequence, 1);
        assert_eq!(jb.len(), 1);
        jb.push(t0, packet(30_001, 160));
        assert_eq!(jb.stats().resets, 1);
        assert_eq!(jb.len(), 1);
        assert_eq!(label(&jb.pop(t0 + ms(40))), "30001");
    }

    #[test]
    fn delay_adapts_to_jitter() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.target_delay(), ms(20));
        // Packets arrive 0 or 60 ms late, alternately in bursts.
        let mut pushes: Vec<(Duration, u16)> = (0..500u16)
            .map(|i| {
                let extra = if (i / 3) % 2 == 0 { 0 } else { 60 };
                (ms(20 * u64::from(i) + extra), i)
            })
            .collect();
        pushes.sort();
        let mut it = pushes.into_iter().peekable();
        let mut lost_late = 0;
        for tick in 0..520u64 {
            let now = t0 + ms(20 * tick + 10);
            while let Some(&(at, seq)) = it.peek() {
                if t0 + at > now {
                    break;
                }
                jb.push(t0 + at, packet(seq, 160 * u32::from(seq)));
                it.next();
            }
            let f = jb.pop(now);
            if (200..480).contains(&tick) && f == Frame::Lost {
                lost_late += 1;
            }
        }
        let target = jb.target_delay();
        assert!(target >= ms(60) && target <= ms(200), "{target:?}");
        assert_eq!(lost_late, 0, "adapted buffer still concealing");
        assert!(jb.stats().late < 10, "{:?}", jb.stats());

        // Then the network calms down: the delay comes back down slowly.
        let mut depth_after = 0;
        for i in 500..1500u16 {
            let now = t0 + ms(20 * u64::from(i) + 10);
            jb.push(now, packet(i, 160 * u32::from(i)));
            jb.pop(now);
            depth_after = jb.len();
        }
        assert!(jb.target_delay() < ms(40), "{:?}", jb.target_delay());
        assert!(depth_after <= 3, "{depth_after}");
        assert!(jb.stats().dropped_for_latency > 0);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for i in 0..1000u16 {
            jb.push(t0, packet(i, 160 * u32::from(i)));
            assert!(jb.len() <= 32);
        }
        assert!(jb.stats().overflow > 900);
    }

    proptest! {
        /// Any mix of reordering, duplication and loss: frames come out in
        /// order, each at most once, and the buffer stays bounded.
        #[test]
        fn in_order_no_duplicates_bounded(
            start in any::<u16>(),
            delays in proptest::collection::vec((0u64..150, any::<bool>(), 0u8..10), 1..200),
        ) {
            let t0 = Instant::now();
            let mut events = Vec::new();
            for (i, &(delay, dup, loss)) in delays.iter().enumerate() {
                if loss == 0 {
                    continue;
                }
                let at = 20 * i as u64 + delay;
                events.push((at, i));
                if dup {
                    events.push((at + delay / 2 + 1, i));
                }
            }
            events.sort();
            let cfg = JitterConfig::default();
            let cap = cfg.max_packets;
            let mut jb = JitterBuffer::new(cfg);
            let mut ev = events.into_iter().peekable();
            let mut played: Vec<u64> = Vec::new();
            for tick in 0..(delays.len() as u64 + 20) {
                let now = 20 * tick + 7;
                while let Some(&(at, i)) = ev.peek() {
                    if at > now { break; }
                    let seq = start.wrapping_add(i as u16);
                    jb.push(t0 + ms(at), packet(seq, 160 * i as u32));
                    prop_assert!(jb.len() <= cap);
                    ev.next();
                }
                if let Frame::Audio(p) = jb.pop(t0 + ms(now)) {
                    // Back to the index in the stream.
                    played.push(u64::from(p.sequence.wrapping_sub(start)));
                }
            }
            for w in played.windows(2) {
                prop_assert!(w[0] < w[1], "out of order or repeated: {:?}", played);
            }
        }
    }
}
