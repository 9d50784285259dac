//! What the gateway's sans-IO tests share: addresses, a gateway with a
//! fixed seed, tones and their power.
#![allow(dead_code)]

use continuum_sip::{Config, TransportKind};
use continuum_voice::{Gateway, GatewayConfig};
use std::net::SocketAddr;
use std::time::Duration;

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A gateway at `me` (UDP), its randomness seeded, keepalive off.
pub fn gateway(me: &str, seed: u64, ring_timeout: Duration) -> Gateway {
    let mut sip = Config::new("example.test", vec![(TransportKind::Udp, addr(me))]);
    sip.rng_seed = Some(seed);
    Gateway::new(GatewayConfig {
        sip,
        ring_timeout,
        media_timeout: Duration::from_secs(10),
        trunk_keepalive: None,
    })
}

/// 20 ms of a sine at `hz` (8 kHz), from sample `start`.
pub fn sine(start: usize, hz: f64) -> [i16; 160] {
    std::array::from_fn(|i| {
        let n = (start + i) as f64;
        (8000.0 * (2.0 * std::f64::consts::PI * hz * n / 8000.0).sin()) as i16
    })
}

/// The power of `hz` in 8 kHz `samples`.
pub fn power(samples: &[i16], hz: f64) -> f64 {
    continuum_rtp::goertzel::power(samples, hz, 8000.0)
}
