//! Whole TURN sessions against the allocation core: the input is a script of
//! operations (signed requests with chosen attributes, Send indications,
//! ChannelData, peer datagrams, time passing, raw bytes), so the fuzzer
//! reaches what `turn_server` cannot: every request here carries valid
//! MESSAGE-INTEGRITY, so allocations, permissions, channels, reservations
//! and RFC 6062 requests really happen.
//!
//! Checked besides "never panics":
//! - outputs only point inside the datagram handled;
//! - a relay is closed only once, and only if it was opened or held;
//! - once every lifetime has passed, no allocation is left and every relay
//!   and held port has been closed (nothing leaks).
#![no_main]
use continuum_turn::Output;
use continuum_turn::auth::{Credentials, long_term_key};
use continuum_turn::server::{Client, Config, Relays, Server, Transport};
use continuum_turn::stun::{Builder, Class, Message, attr, method};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Relays as the IO layer would keep them, checking the core's bookkeeping.
#[derive(Default)]
struct CheckedRelays {
    next: u16,
    open: HashSet<SocketAddr>,
    held: HashSet<SocketAddr>,
}

impl Relays for CheckedRelays {
    fn open(&mut self, ipv6: bool, _even: bool, reserve_next: bool) -> std::io::Result<SocketAddr> {
        if self.next > 20_000 {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        self.next += 2;
        let ip: std::net::IpAddr = if ipv6 {
            "2001:4860::1".parse().unwrap()
        } else {
            [8, 8, 4, 4].into()
        };
        let a = SocketAddr::new(ip, 40_000 + self.next);
        assert!(self.open.insert(a));
        if reserve_next {
            assert!(self.held.insert(SocketAddr::new(ip, a.port() + 1)));
        }
        Ok(a)
    }
    fn open_reserved(&mut self, a: SocketAddr) -> std::io::Result<SocketAddr> {
        assert!(self.held.remove(&a), "opened a port nobody held: {a}");
        self.open.insert(a);
        Ok(a)
    }
    fn open_tcp(&mut self, ipv6: bool) -> std::io::Result<SocketAddr> {
        self.open(ipv6, false, false)
    }
    fn close(&mut self, a: SocketAddr) {
        assert!(
            self.open.remove(&a) || self.held.remove(&a),
            "closed {a}, which is not open or held"
        );
    }
}

const PEERS: [&str; 8] = [
    "9.9.9.9:53",
    "9.9.9.9:54",
    "1.1.1.1:443",
    "10.0.0.1:80",           // private: refused
    "[::ffff:127.0.0.1]:80", // mapped loopback: refused
    "[2606:4700::1111]:53",
    "192.0.2.1:9",        // documentation range: refused
    "[64:ff9b::a00:1]:1", // NAT64 of 10.0.0.1: refused
];

const METHODS: [u16; 7] = [
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::CONNECT,
    method::CONNECTION_BIND,
    method::BINDING,
];

/// Reads the script; running out of bytes reads zeros.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.byte() as usize % (max + 1)).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b.to_vec()
    }
    fn peer(&mut self) -> SocketAddr {
        PEERS[self.byte() as usize % PEERS.len()].parse().unwrap()
    }
}

fn nonce(out: &[Output]) -> Option<String> {
    out.iter().rev().find_map(|o| match o {
        Output::ToClient { data, .. } => Message::parse(data)
            .ok()
            .and_then(|m| m.str_attr(attr::NONCE).map(str::to_owned)),
        _ => None,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mut creds = Credentials::default();
    creds.users.insert("u".into(), "p".into());
    let mut cfg = Config::new("fuzz", creds, [7; 32]);
    cfg.bandwidth_bytes_per_sec = 10_000;
    let mut server = Server::new(cfg);
    let key = long_term_key("u", "fuzz", "p");
    let clients = [
        Client {
            transport: Transport::Udp,
            addr: "203.0.113.7:5000".parse().unwrap(),
        },
        Client {
            transport: Transport::Stream(1),
            addr: "203.0.113.7:5001".parse().unwrap(),
        },
    ];
    let mut client = clients[0];
    let mut relays = CheckedRelays::default();
    let start = Instant::now();
    let mut now = start;
    let mut unix = 1_000_000u64;
    let mut out = Vec::new();
    let mut tx = 0u32;
    // The nonce a 401 hands out, as a real client would learn it.
    let hello = Builder::new(Class::Request, method::ALLOCATE, [0; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .fingerprint();
    server.handle_client(now, unix, client, &hello, &mut relays, &mut out);
    let mut nonce_text = nonce(&out).unwrap_or_default();
    let mut steps = 0;
    while !s.0.is_empty() && steps < 64 {
        steps += 1;
        out.clear();
        let datagram: Vec<u8> = match s.byte() % 8 {
            // A signed request with chosen attributes.
            0 | 7 => {
                tx += 1;
                let mut t = [0u8; 12];
                t[..4].copy_from_slice(&tx.to_be_bytes());
                let m = METHODS[s.byte() as usize % METHODS.len()];
                let mut b = Builder::new(Class::Request, m, t);
                for _ in 0..s.byte() % 5 {
                    b = match s.byte() % 11 {
                        0 => b.attr(attr::CHANNEL_NUMBER, &[0x40, s.byte() % 4, 0, 0]),
                        1 => b.u32_attr(attr::LIFETIME, s.byte() as u32 * 60),
                        2 => b.xor_address(attr::XOR_PEER_ADDRESS, s.peer()),
                        3 => b.attr(
                            attr::REQUESTED_TRANSPORT,
                            &[[17, 6][s.byte() as usize % 2], 0, 0, 0],
                        ),
                        4 => b.attr(
                            attr::REQUESTED_ADDRESS_FAMILY,
                            &[[1, 2][s.byte() as usize % 2], 0, 0, 0],
                        ),
                        5 => b.attr(attr::EVEN_PORT, &[s.byte() & 0x80]),
                        6 => b.attr(attr::RESERVATION_TOKEN, &s.bytes(8)),
                        7 => b.attr(attr::DONT_FRAGMENT, &[]),
                        8 => b.u32_attr(attr::CONNECTION_ID, s.byte() as u32),
                        9 => b.attr(attr::DATA, &s.bytes(32)),
                        _ => {
                            let kind = u16::from_be_bytes([s.byte(), s.byte()]);
                            b.attr(kind, &s.bytes(16))
                        }
                    };
                }
                let b = b
                    .attr(attr::USERNAME, b"u")
                    .attr(attr::REALM, b"fuzz")
                    .attr(attr::NONCE, nonce_text.as_bytes());
                // Now and then signed with the wrong key.
                let k = if s.byte() == 0xff { [0; 16] } else { key };
                b.integrity(&k).fingerprint()
            }
            1 => Builder::new(Class::Indication, method::SEND, [1; 12])
                .xor_address(attr::XOR_PEER_ADDRESS, s.peer())
                .attr(attr::DATA, &s.bytes(64))
                .fingerprint(),
            2 => {
                let mut v = vec![0x40, s.byte() % 4];
                let payload = s.bytes(64);
                v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                v.extend_from_slice(&payload);
                v
            }
            3 => {
                // A peer datagram to one of the relays (or nowhere).
                let relay = relays
                    .open
                    .iter()
                    .nth(s.byte() as usize % (relays.open.len() + 1))
                    .copied()
                    .unwrap_or_else(|| "8.8.4.4:1".parse().unwrap());
                let peer = s.peer();
                let payload = s.bytes(64);
                server.handle_peer(now, relay, peer, &payload, &mut out);
                check(&out, payload.len());
                continue;
            }
            4 => {
                let secs = s.byte() as u64 * 8;
                now += Duration::from_secs(secs);
                unix += secs;
                server.expire(now, &mut relays);
                continue;
            }
            5 => s.bytes(128),
            _ => {
                client = clients[s.byte() as usize % 2];
                continue;
            }
        };
        server.handle_client(now, unix, client, &datagram, &mut relays, &mut out);
        check(&out, datagram.len());
        // A stale nonce is answered with a fresh one (438): keep up.
        if let Some(n) = nonce(&out) {
            nonce_text = n;
        }
    }
    // Everything ends: past every lifetime, nothing is left.
    let later = now + Duration::from_secs(7200);
    server.expire(later, &mut relays);
    server.client_gone(clients[1], &mut relays);
    assert_eq!(server.allocation_count(), 0);
    assert!(
        relays.open.is_empty(),
        "relays left open: {:?}",
        relays.open
    );
    assert!(relays.held.is_empty(), "ports left held: {:?}", relays.held);
});

/// Outputs only ever point inside the datagram just handled.
fn check(out: &[Output], len: usize) {
    for o in out {
        if let Output::ToPeer { range, .. } = o {
            assert!(range.start <= range.end && range.end <= len);
        }
    }
}
