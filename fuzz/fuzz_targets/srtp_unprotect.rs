//! SRTP and SRTCP from the network into `continuum_rtp::srtp`: arbitrary
//! datagrams, and datagrams that were protected under the right key and
//! then mutated (so the fuzzer gets past the tag and reaches the replay
//! window and rollover estimation).
//!
//! Checked besides "never panics": whatever unprotects is exactly what was
//! protected (a mutation never authenticates), and nothing is accepted twice.
#![no_main]
use continuum_rtp::packet::RtpHeader;
use continuum_rtp::srtp::{MasterKey, SrtpContext, Suite};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let suite = Suite::ALL[usize::from(mode & 1)];
    let key = MasterKey::new([7; 30]);
    let mut tx = SrtpContext::new(suite, &key);
    let mut rx = SrtpContext::new(suite, &key);
    let mut accepted = HashSet::new();
    for chunk in rest.chunks(24) {
        let op = chunk[0];
        let body = &chunk[1..];
        let (original, mut wire) = match op % 4 {
            // Raw bytes.
            0 => (None, body.to_vec()),
            // Protected RTP with a chosen sequence number, maybe mutated.
            1 | 2 if body.len() >= 4 => {
                let plain = RtpHeader {
                    sequence: u16::from_be_bytes([body[0], body[1]]),
                    ssrc: u32::from(body[2] % 2),
                    payload_type: 0,
                    ..Default::default()
                }
                .to_vec(&body[4..])
                .unwrap();
                let mut p = plain.clone();
                tx.protect_rtp(&mut p).unwrap();
                (Some(plain), p)
            }
            // Protected RTCP.
            _ if body.len() >= 8 => {
                let mut plain = body.to_vec();
                plain[0] = 0x80;
                plain[1] = 200;
                let mut p = plain.clone();
                tx.protect_rtcp(&mut p).unwrap();
                (Some(plain), p)
            }
            _ => (None, body.to_vec()),
        };
        let mutate = op & 0x80 != 0 && !wire.is_empty();
        if mutate {
            let at = usize::from(op & 0x3f) % wire.len();
            wire[at] ^= 1 << (op & 7);
        }
        let is_rtcp = wire.len() > 1 && wire[1] == 200;
        let result = if is_rtcp {
            rx.unprotect_rtcp(&wire)
        } else {
            rx.unprotect_rtp(&wire)
        };
        if let Ok(plain) = result {
            assert!(!mutate, "a mutated packet authenticated");
            if let Some(original) = original {
                assert_eq!(plain, original);
            }
            assert!(accepted.insert(wire), "accepted twice");
        }
    }
});
