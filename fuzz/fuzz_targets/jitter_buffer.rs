//! The jitter buffer fed arbitrary packet sequences (any order, repeats,
//! gaps, wraps, SSRC and timestamp jumps) and pops at arbitrary times.
//!
//! Checked besides "never panics": memory stays bounded, and between
//! stream restarts frames come out in extended sequence order, each at most
//! once.
#![no_main]
use continuum_rtp::jitter::{Frame, JitterBuffer, JitterConfig, Packet};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let cfg = JitterConfig::default();
    let cap = cfg.max_packets;
    let mut jb = JitterBuffer::new(cfg);
    let t0 = Instant::now();
    let mut now = t0;
    let mut last: Option<u64> = None;
    let mut resets = 0;
    for op in data.chunks(6) {
        let b = |i: usize| op.get(i).copied().unwrap_or(0);
        now += Duration::from_millis(u64::from(b(0) % 32));
        if b(0) & 0x80 == 0 {
            let sequence = u16::from_be_bytes([b(1), b(2)]);
            jb.push(
                now,
                Packet {
                    sequence,
                    // Mostly consistent with the sequence, sometimes not.
                    timestamp: if b(3) < 240 {
                        u32::from(sequence) * 160
                    } else {
                        u32::from_be_bytes([b(3), b(4), b(5), 0])
                    },
                    ssrc: u32::from(b(4) >= 250),
                    marker: b(5) & 1 == 1,
                    payload_type: 0,
                    payload: vec![0; usize::from(b(5) % 4) * 40],
                },
            );
            assert!(jb.len() <= cap);
        } else if let Frame::Audio(p) = jb.pop(now) {
            let stats = jb.stats();
            if stats.resets != resets {
                resets = stats.resets;
                last = None;
            }
            let ext = jb.last_played().expect("a frame was just played");
            assert_eq!(ext as u16, p.sequence);
            if let Some(last) = last {
                assert!(ext > last, "{last} then {ext}");
            }
            last = Some(ext);
        }
    }
});
