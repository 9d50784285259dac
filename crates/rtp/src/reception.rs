//! RFC 3550 receiver statistics (A.1, A.3, A.8) for the report blocks we
//! send, and the NTP clock that reports are stamped with.

use crate::jitter::JitterEstimator;
use crate::packet::ReportBlock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds from 1900 (NTP's epoch) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Maps the monotonic clock the session is fed to NTP wall-clock time, from
/// one reading of both taken together.
#[derive(Debug, Clone, Copy)]
pub struct NtpClock {
    at: Instant,
    wall: SystemTime,
}

impl NtpClock {
    pub fn new(at: Instant, wall: SystemTime) -> Self {
        NtpClock { at, wall }
    }

    /// 64-bit NTP timestamp (32.32 fixed point seconds since 1900).
    pub fn ntp(&self, now: Instant) -> u64 {
        let wall = self.wall + now.saturating_duration_since(self.at);
        let since_unix = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }

    /// The middle 32 bits, as LSR and RTT use.
    pub fn compact(&self, now: Instant) -> u32 {
        (self.ntp(now) >> 16) as u32
    }
}

/// Converts 1/65536 s units to a duration.
pub fn from_compact(units: u32) -> Duration {
    Duration::from_secs_f64(f64::from(units) / 65536.0)
}

#[derive(Debug, Clone)]
pub struct Reception {
    clock_rate: u32,
    base: u64,
    /// Highest extended sequence number received.
    max: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    estimator: JitterEstimator,
    /// The last SR: its compact NTP time and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl Reception {
    pub fn new(clock_rate: u32, sequence: u16) -> Self {
        let base = (1u64 << 32) | u64::from(sequence);
        Reception {
            clock_rate,
            base,
            max: base - 1,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            estimator: JitterEstimator::default(),
            last_sr: None,
        }
    }

    pub fn packet(&mut self, now: Instant, sequence: u16, timestamp: u32) {
        let delta = i64::from(sequence.wrapping_sub(self.max as u16) as i16);
        let ext = (self.max as i64 + delta) as u64;
        if ext > self.max {
            self.max = ext;
        }
        self.received += 1;
        self.estimator.update(now, timestamp, self.clock_rate);
    }

    pub fn sender_report(&mut self, now: Instant, ntp: u64) {
        self.last_sr = Some(((ntp >> 16) as u32, now));
    }

    pub fn expected(&self) -> u64 {
        (self.max + 1).saturating_sub(self.base)
    }

    /// Cumulative lost (negative with duplicates).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.estimator.jitter() / f64::from(self.clock_rate))
    }

    /// A report block on `ssrc`; starts a new reporting interval.
    pub fn report(&mut self, now: Instant, ssrc: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at).as_secs_f64() * 65536.0;
                (lsr, d.min(f64::from(u32::MAX)) as u32)
            }
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_sequence: self.max as u32,
            jitter: self.estimator.jitter() as u32,
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_across_wrap() {
        let t0 = Instant::now();
        let mut r = Reception::new(8000, 65530);
        for s in (65530u16..=65535).chain(0..10) {
            if s != 2 && s != 3 {
                r.packet(t0, s, 0);
            }
        }
        assert_eq!(r.expected(), 16);
        assert_eq!(r.lost(), 2);
        let b = r.report(t0, 1);
        assert_eq!(b.fraction_lost, (2 * 256 / 16) as u8);
        assert_eq!(b.highest_sequence, (1 << 16) | 9);
        // Nothing new: nothing lost in this interval.
        assert_eq!(r.report(t0, 1).fraction_lost, 0);
    }

    #[test]
    fn ntp_clock() {
        let t0 = Instant::now();
        let c = NtpClock::new(t0, UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(c.ntp(t0), (NTP_UNIX_OFFSET + 1) << 32);
        let half = c.ntp(t0 + Duration::from_millis(500));
        assert_eq!(half & 0xffff_ffff, 1 << 31);
        assert_eq!(
            c.compact(t0 + Duration::from_secs(2)) - c.compact(t0),
            2 << 16
        );
        assert_eq!(from_compact(65536 / 2), Duration::from_millis(500));
    }
}
