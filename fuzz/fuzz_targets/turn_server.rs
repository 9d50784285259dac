//! Anything a client or a peer can send the TURN server: the STUN/ChannelData
//! codec and the allocation core must answer or drop it, never panic. The
//! input is split in two: a first message (which, when it happens to be a
//! valid authenticated Allocate, opens a relay) and what follows.
#![no_main]
use continuum_turn::auth::Credentials;
use continuum_turn::server::{Client, Config, Relays, Server, Transport};
use continuum_turn::stun::Message;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Instant;

struct FakeRelays(u16);
impl Relays for FakeRelays {
    fn open(&mut self, _: bool, _: bool, _: bool) -> std::io::Result<SocketAddr> {
        self.0 += 2;
        Ok(SocketAddr::from(([203, 0, 113, 1], 40000 + self.0)))
    }
    fn open_reserved(&mut self, a: SocketAddr) -> std::io::Result<SocketAddr> {
        Ok(a)
    }
    fn open_tcp(&mut self, _: bool) -> std::io::Result<SocketAddr> {
        self.open(false, false, false)
    }
    fn close(&mut self, _: SocketAddr) {}
}

fuzz_target!(|data: &[u8]| {
    let _ = Message::parse(data);
    let mut server = Server::new(Config::new("fuzz", Credentials::default(), [1; 32]));
    // Odd first bytes come over a stream (TCP relays, RFC 6062 requests).
    let transport = match data.first() {
        Some(b) if b & 1 == 1 => Transport::Stream(1),
        _ => Transport::Udp,
    };
    let client = Client {
        transport,
        addr: "198.51.100.7:5000".parse().unwrap(),
    };
    let (first, rest) = data.split_at(data.len() / 2);
    let mut out = Vec::new();
    let mut relays = FakeRelays(0);
    let now = Instant::now();
    server.handle_client(now, 1_000_000, client, first, &mut relays, &mut out);
    server.handle_client(now, 1_000_000, client, rest, &mut relays, &mut out);
    server.handle_peer(
        now,
        "203.0.113.1:40002".parse().unwrap(),
        "8.8.8.8:53".parse().unwrap(),
        rest,
        &mut out,
    );
    // Outputs only ever point inside the input.
    for o in &out {
        if let continuum_turn::Output::ToPeer { range, .. } = o {
            assert!(range.end <= first.len().max(rest.len()));
        }
    }
    server.expire(now, &mut relays);
});
