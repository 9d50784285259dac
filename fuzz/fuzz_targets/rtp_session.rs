//! A phone call leg's media session fed a script of datagrams from a few
//! sources (the SDP address, a NAT'ed one, strangers; RTP and RTCP ports),
//! PCM frames, pulls, DTMF, hold and time passing.
//!
//! Checked besides "never panics":
//! - media only goes to the SDP address or to a source that sent us RTP;
//! - every datagram is counted once at most (accepted or dropped);
//! - `poll_timeout` never lies in the past after `handle_timeout`.
#![no_main]
use continuum_rtp::packet::RtpHeader;
use continuum_rtp::{Direction, MediaSession, Output, SessionConfig};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

fuzz_target!(|data: &[u8]| {
    let sources: [SocketAddr; 4] = [
        "192.0.2.10:4000".parse().unwrap(),
        "198.51.100.7:31000".parse().unwrap(),
        "198.51.100.7:31001".parse().unwrap(),
        "203.0.113.5:9".parse().unwrap(),
    ];
    let t0 = Instant::now();
    let mut cfg = SessionConfig::new(sources[0], 0x1234_5678);
    cfg.wall_clock = SystemTime::UNIX_EPOCH;
    let mut s = MediaSession::new(cfg, t0);
    let mut now = t0;
    let mut rtp_sources: HashSet<SocketAddr> = HashSet::from([sources[0]]);
    let mut datagrams = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let arg = rest.first().copied().unwrap_or(0);
        match op % 8 {
            0 | 1 => {
                // A datagram: raw bytes, or a well-formed RTP header around
                // them so the session gets past parsing.
                let src = sources[usize::from(arg % 4)];
                let len = usize::from(rest.get(1).copied().unwrap_or(0))
                    .min(rest.len().saturating_sub(2));
                let body = &rest[rest.len().min(2)..rest.len().min(2) + len];
                rest = &rest[rest.len().min(2) + len..];
                let bytes = if op % 8 == 1 && body.len() >= 7 {
                    let h = RtpHeader {
                        marker: body[0] & 1 == 1,
                        payload_type: [0, 8, 101, 13][usize::from(body[0] >> 6)],
                        sequence: u16::from_be_bytes([body[1], body[2]]),
                        timestamp: u32::from_be_bytes([body[3], body[4], 0, 0]),
                        ssrc: u32::from(body[5] % 3),
                        ..Default::default()
                    };
                    h.to_vec(&body[6..]).unwrap()
                } else {
                    body.to_vec()
                };
                let before = s.stats();
                s.handle_datagram(now, src, &bytes);
                datagrams += 1;
                let after = s.stats();
                if after.rtp_in > before.rtp_in {
                    rtp_sources.insert(src);
                }
                let counted = after.rtp_in
                    + after.rtcp_in
                    + after.wrong_source
                    + after.malformed
                    + after.unknown_payload;
                assert!(counted <= datagrams);
            }
            2 => {
                now += Duration::from_millis(u64::from(arg) * 4);
                rest = rest.get(1..).unwrap_or_default();
            }
            3 => {
                s.push_pcm(now, &[i16::from(arg) * 100; 160]);
                rest = rest.get(1..).unwrap_or_default();
            }
            4 => {
                let _ = s.pull_decoded(now);
            }
            5 => {
                let digit = char::from(arg);
                let _ = s.send_dtmf(now, digit, Duration::from_millis(u64::from(arg)));
                rest = rest.get(1..).unwrap_or_default();
            }
            6 => {
                let d = [
                    Direction::SendRecv,
                    Direction::SendOnly,
                    Direction::RecvOnly,
                    Direction::Inactive,
                ];
                s.set_direction(now, d[usize::from(arg % 4)]);
                rest = rest.get(1..).unwrap_or_default();
            }
            _ => {
                if let Some(t) = s.poll_timeout() {
                    now = now.max(t);
                }
                s.handle_timeout(now);
                if let Some(t) = s.poll_timeout() {
                    assert!(t > now, "timeout {:?} not after {:?}", t - t0, now - t0);
                }
            }
        }
        while let Some(o) = s.poll_output() {
            if let Output::Transmit(t) = o {
                let media_host = rtp_sources.iter().any(|a| a.ip() == t.dest.ip());
                assert!(media_host, "sent to {} which never sent media", t.dest);
            }
        }
    }
    s.close(now);
    while s.poll_output().is_some() {}
});
