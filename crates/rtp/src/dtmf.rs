//! RFC 4733 telephone-events (DTMF over RTP): the 4-byte payload, a receiver
//! that turns the redundant packet stream into one digit per event, and the
//! packet schedule a sender follows.
//!
//! An event is identified by its RTP timestamp (all of its packets carry
//! the event's start time). The receiver therefore reports a digit when the
//! first end packet for a timestamp arrives, ignores the retransmitted end
//! packets and anything older, and still reports an event whose start or
//! end packets were all lost (when the next event begins, or after a quiet
//! timeout).

use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DtmfError {
    #[error("telephone-event payload of {0} bytes, expected at least 4")]
    TooShort(usize),
    #[error("{0:?} is not a DTMF digit")]
    NotADigit(char),
}

/// The payload of one telephone-event packet (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// 0-9, 10 `*`, 11 `#`, 12-15 `A`-`D`, 16 flash.
    pub event: u8,
    pub end: bool,
    /// Power level in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        // Several events may be stacked (redundancy, RFC 4733 §2.5.1.5 is
        // not used for DTMF in practice); the first is the one that counts.
        let b = payload.get(..4).ok_or(DtmfError::TooShort(payload.len()))?;
        Ok(TelephoneEvent {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// The event code of a DTMF digit (`0-9 * # A-D`, case-insensitive).
pub fn event_for_digit(digit: char) -> Result<u8, DtmfError> {
    Ok(match digit.to_ascii_uppercase() {
        c @ '0'..='9' => c as u8 - b'0',
        '*' => 10,
        '#' => 11,
        c @ 'A'..='D' => c as u8 - b'A' + 12,
        _ => return Err(DtmfError::NotADigit(digit)),
    })
}

/// The digit of an event code, `None` for flash and non-DTMF events.
pub fn digit_for_event(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// One completed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDigit {
    pub event: u8,
    /// The digit, if the event is one (flash and others are not).
    pub digit: Option<char>,
    pub duration: Duration,
}

/// A finished event's timestamp seen again after this long starts a new
/// event (see [`DtmfReceiver::push`]); end packets are retransmitted within
/// tens of milliseconds.
const REPLAY_GAP: Duration = Duration::from_millis(300);
/// Gives up waiting for an event's end packets after this much silence.
const END_TIMEOUT: Duration = Duration::from_millis(500);
/// A timestamp this far behind the current event is a restarted sender,
/// not a stale packet.
const RESTART_BACK: i64 = 10 * 8000;

#[derive(Debug, Clone)]
struct Current {
    timestamp: u32,
    event: u8,
    /// Timestamp units of earlier segments of a long event (RFC 4733 §2.5.2.3).
    earlier: u32,
    duration: u16,
    last_seen: Instant,
    reported: bool,
}

#[derive(Debug, Clone)]
pub struct DtmfReceiver {
    clock_rate: u32,
    current: Option<Current>,
    ready: std::collections::VecDeque<DtmfDigit>,
}

impl DtmfReceiver {
    pub fn new(clock_rate: u32) -> Self {
        DtmfReceiver {
            clock_rate,
            current: None,
            ready: Default::default(),
        }
    }

    /// Feeds one telephone-event packet's RTP timestamp and payload.
    pub fn push(&mut self, now: Instant, timestamp: u32, payload: &[u8]) -> Result<(), DtmfError> {
        let te = TelephoneEvent::parse(payload)?;
        if let Some(cur) = &mut self.current {
            let ahead = i64::from(timestamp.wrapping_sub(cur.timestamp) as i32);
            // A finished event's timestamp again, well after its end: not a
            // late end packet but a sender reusing timestamps (a replayed
            // capture, a gateway that restarts its clock per digit). RFC 4733
            // forbids it; phones and test tools do it anyway, and dropping
            // the digit would lose a PIN.
            let replay = cur.reported
                && !te.end
                && ahead <= 0
                && ahead > -RESTART_BACK
                && now.saturating_duration_since(cur.last_seen) > REPLAY_GAP;
            if replay {
                self.current = None;
                return self.push(now, timestamp, payload);
            }
            if ahead == 0 {
                if !cur.reported {
                    cur.duration = cur.duration.max(te.duration);
                    cur.last_seen = now;
                    if te.end {
                        self.report();
                    }
                }
                return Ok(());
            }
            if ahead < 0 && ahead > -RESTART_BACK {
                // An older event's packet, already reported or given up on.
                return Ok(());
            }
            let continues = !cur.reported
                && te.event == cur.event
                && cur.duration >= 0xff00
                && ahead == i64::from(cur.duration);
            if continues {
                // A long event goes on in a new segment.
                cur.earlier += u32::from(cur.duration);
                cur.timestamp = timestamp;
                cur.duration = te.duration;
                cur.last_seen = now;
                if te.end {
                    self.report();
                }
                return Ok(());
            }
            if !cur.reported {
                // Its end packets were all lost.
                self.report();
            }
        }
        self.current = Some(Current {
            timestamp,
            event: te.event,
            earlier: 0,
            duration: te.duration,
            last_seen: now,
            reported: false,
        });
        if te.end {
            self.report();
        }
        Ok(())
    }

    fn report(&mut self) {
        let Some(cur) = &mut self.current else { return };
        cur.reported = true;
        let units = cur.earlier + u32::from(cur.duration);
        self.ready.push_back(DtmfDigit {
            event: cur.event,
            digit: digit_for_event(cur.event),
            duration: Duration::from_secs_f64(f64::from(units) / f64::from(self.clock_rate)),
        });
    }

    /// A completed event, if any.
    pub fn poll(&mut self) -> Option<DtmfDigit> {
        self.ready.pop_front()
    }

    /// When an event without its end packets will be reported.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .filter(|c| !c.reported)
            .map(|c| c.last_seen + END_TIMEOUT)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.report();
        }
    }

    /// Forgets the current event (a new stream).
    pub fn reset(&mut self) {
        self.current = None;
    }
}

/// One packet of an outgoing event, `offset` after the event starts. All of
/// an event's packets carry the event's start timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    pub offset: Duration,
    pub marker: bool,
    pub event: TelephoneEvent,
}

/// Update interval while the tone lasts (RFC 4733 §2.5.1.2 suggests 50 ms).
const UPDATE_EVERY: Duration = Duration::from_millis(50);
/// Spacing of the three end packets, so one short burst of loss does not
/// take all three.
const END_SPACING: Duration = Duration::from_millis(20);
pub const MIN_DURATION: Duration = Duration::from_millis(40);
/// The longest event one segment can describe at 8 kHz.
pub const MAX_DURATION: Duration = Duration::from_millis(8000);

/// The packets for one event: a start packet with the marker bit, updates
/// every 50 ms, then the end packet three times, each carrying the full
/// duration. `duration` is clamped to 40 ms..8 s.
pub fn event_packets(
    event: u8,
    duration: Duration,
    volume: u8,
    clock_rate: u32,
) -> Vec<DtmfPacket> {
    let duration = duration.clamp(MIN_DURATION, MAX_DURATION);
    let units = |d: Duration| {
        (d.as_secs_f64() * f64::from(clock_rate))
            .round()
            .min(65535.0) as u16
    };
    let te = |end, d| TelephoneEvent {
        event,
        end,
        volume: volume.min(63),
        duration: d,
    };
    let mut out = vec![DtmfPacket {
        offset: Duration::ZERO,
        marker: true,
        // The first packet covers one 20 ms frame.
        event: te(false, units(Duration::from_millis(20))),
    }];
    let mut at = UPDATE_EVERY;
    while at < duration {
        out.push(DtmfPacket {
            offset: at,
            marker: false,
            event: te(false, units(at)),
        });
        at += UPDATE_EVERY;
    }
    for i in 0..3 {
        out.push(DtmfPacket {
            offset: duration + END_SPACING * i,
            marker: false,
            event: te(true, units(duration)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn payload_round_trip_and_known_bytes() {
        let te = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(te.to_bytes(), [11, 0x8a, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&te.to_bytes()), Ok(te));
        assert_eq!(TelephoneEvent::parse(&[1, 2]), Err(DtmfError::TooShort(2)));
    }

    #[test]
    fn digits_map_both_ways() {
        for (c, e) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
        ] {
            assert_eq!(event_for_digit(c), Ok(e));
            assert_eq!(digit_for_event(e), Some(c.to_ascii_uppercase()));
        }
        assert_eq!(event_for_digit('x'), Err(DtmfError::NotADigit('x')));
        assert_eq!(digit_for_event(16), None);
    }

    #[test]
    fn sender_schedule() {
        let p = event_packets(5, ms(120), 10, 8000);
        let offsets: Vec<_> = p.iter().map(|p| p.offset.as_millis()).collect();
        assert_eq!(offsets, [0, 50, 100, 120, 140, 160]);
        assert!(p[0].marker && p[1..].iter().all(|p| !p.marker));
        assert!(
            p[3..]
                .iter()
                .all(|p| p.event.end && p.event.duration == 960)
        );
        assert!(p[..3].iter().all(|p| !p.event.end));
    }

    /// Feeds `packets` (already as the receiver would see them) and returns
    /// the digits reported, timing out at the end.
    fn receive(packets: &[(u64, u32, TelephoneEvent)]) -> Vec<DtmfDigit> {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        let mut out = Vec::new();
        for &(at, ts, te) in packets {
            rx.handle_timeout(t0 + ms(at));
            rx.push(t0 + ms(at), ts, &te.to_bytes()).unwrap();
            out.extend(std::iter::from_fn(|| rx.poll()));
        }
        rx.handle_timeout(t0 + ms(100_000));
        out.extend(std::iter::from_fn(|| rx.poll()));
        out
    }

    fn stream(events: &[(char, u32, u64)]) -> Vec<(u64, u32, TelephoneEvent)> {
        let mut out = Vec::new();
        for &(digit, ts, start_ms) in events {
            let e = event_for_digit(digit).unwrap();
            for p in event_packets(e, ms(100), 10, 8000) {
                out.push((start_ms + p.offset.as_millis() as u64, ts, p.event));
            }
        }
        out
    }

    #[test]
    fn one_digit_per_event() {
        let got = receive(&stream(&[('1', 1000, 0), ('#', 5000, 500)]));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].digit, Some('1'));
        assert_eq!(got[0].duration, ms(100));
        assert_eq!(got[1].digit, Some('#'));
    }

    #[test]
    fn survives_lost_start_and_lost_end() {
        let s = stream(&[('7', 1000, 0), ('8', 5000, 500)]);
        // Drop the first two packets of 7 and all three end packets of 8.
        let kept: Vec<_> = s
            .iter()
            .enumerate()
            .filter(|(i, p)| *i >= 2 && !(p.1 == 5000 && p.2.end))
            .map(|(_, p)| *p)
            .collect();
        let got = receive(&kept);
        assert_eq!(
            got.iter().map(|d| d.digit).collect::<Vec<_>>(),
            [Some('7'), Some('8')]
        );
        assert_eq!(got[0].duration, ms(100));
        // 8's duration is what its last update said.
        assert_eq!(got[1].duration, ms(50));
    }

    #[test]
    fn a_sender_reusing_timestamps_still_gets_each_digit() {
        // A replayed capture: the same digit twice with the same timestamp,
        // then an older timestamp (as sipp's dtmf_2833_*.pcap files do).
        let got = receive(&stream(&[
            ('9', 67840, 0),
            ('9', 67840, 600),
            ('0', 17632, 1200),
        ]));
        assert_eq!(
            got.iter().map(|d| d.digit).collect::<Vec<_>>(),
            [Some('9'), Some('9'), Some('0')]
        );
        // Retransmitted end packets right after the end stay one digit.
        let mut s = stream(&[('5', 1000, 0)]);
        let end = *s.last().unwrap();
        s.push((end.0 + 40, end.1, end.2));
        assert_eq!(receive(&s).len(), 1);
    }

    #[test]
    fn late_end_retransmission_after_next_event_is_ignored() {
        let mut s = stream(&[('1', 1000, 0), ('2', 5000, 500)]);
        let stale = s[3];
        s.push((900, stale.1, stale.2));
        assert_eq!(receive(&s).len(), 2);
    }

    #[test]
    fn long_event_segments_add_up() {
        let te = |end, duration| TelephoneEvent {
            event: 3,
            end,
            volume: 0,
            duration,
        };
        let got = receive(&[
            (0, 0, te(false, 160)),
            (100, 0, te(false, 0xffff)),
            (150, 0xffff, te(false, 800)),
            (200, 0xffff, te(true, 1600)),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].duration,
            Duration::from_secs_f64((65535.0 + 1600.0) / 8000.0)
        );
    }

    proptest! {
        /// However packets are lost (never all of one event), duplicated or
        /// reordered within an event, each event gives exactly one digit.
        #[test]
        fn exactly_one_digit_per_event(
            digits in proptest::collection::vec(0u8..16, 1..8),
            fate in proptest::collection::vec((0u8..4, 0u8..3), 64),
        ) {
            let mut packets = Vec::new();
            let mut k = 0;
            for (n, &e) in digits.iter().enumerate() {
                let ts = 1000 + 8000 * n as u32;
                let start = 1000 * n as u64;
                let mut mine = Vec::new();
                for p in event_packets(e, ms(150), 10, 8000) {
                    let (loss, dup) = fate[k % fate.len()];
                    k += 1;
                    let at = start + p.offset.as_millis() as u64;
                    if loss != 0 {
                        mine.push((at, ts, p.event));
                    }
                    if dup == 0 {
                        mine.push((at + 3, ts, p.event));
                    }
                }
                if mine.is_empty() {
                    let p = event_packets(e, ms(150), 10, 8000)[1];
                    mine.push((start + 50, ts, p.event));
                }
                mine.sort_by_key(|m| m.0);
                packets.extend(mine);
            }
            let got = receive(&packets);
            let expect: Vec<_> = digits.to_vec();
            prop_assert_eq!(got.iter().map(|d| d.event).collect::<Vec<_>>(), expect);
        }
    }
}
