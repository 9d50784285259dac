//! Two endpoints back to back on an in-memory network with a fake clock and
//! a loss hook: no sockets, no sleeps.
#![allow(dead_code)]

use continuum_sip::sdp::{self, Direction, LocalMedia};
use continuum_sip::{Config, Endpoint, Output, SipEvent, Transport, TransportKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const A: &str = "10.0.0.1:5060";
pub const B: &str = "10.0.0.2:5060";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn config(me: &str, seed: u64) -> Config {
    let mut c = Config::new(
        "example.test",
        vec![
            (TransportKind::Udp, addr(me)),
            (TransportKind::Tcp, addr(me)),
        ],
    );
    c.rng_seed = Some(seed);
    c
}

pub fn local_sdp(port: u16, version: u64) -> String {
    sdp::offer(&LocalMedia {
        addr: "192.0.2.10".parse().unwrap(),
        port,
        session_id: u64::from(port),
        version,
        direction: Direction::SendRecv,
        ptime: Some(20),
    })
}

/// One datagram on the wire, for assertions.
#[derive(Debug, Clone)]
pub struct Wire {
    pub from_a: bool,
    pub at: Duration,
    pub text: String,
    pub dropped: bool,
}

impl Wire {
    /// "INVITE", "ACK", "100", "200 INVITE" style summary.
    pub fn summary(&self) -> String {
        let first = self.text.lines().next().unwrap_or("");
        if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let code = rest.split(' ').next().unwrap_or("");
            let cseq = self
                .text
                .lines()
                .find(|l| l.starts_with("CSeq:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .unwrap_or("");
            format!("{code} {cseq}")
        } else {
            first.split(' ').next().unwrap_or("").to_string()
        }
    }
}

pub type Loss = Box<dyn FnMut(&Wire) -> bool>;

pub struct Net {
    pub a: Endpoint,
    pub b: Endpoint,
    pub start: Instant,
    pub now: Instant,
    pub kind: TransportKind,
    pub wire: Vec<Wire>,
    pub events_a: Vec<SipEvent>,
    pub events_b: Vec<SipEvent>,
    pub loss: Option<Loss>,
}

impl Net {
    pub fn new(a: Config, b: Config) -> Net {
        let now = Instant::now();
        Net {
            a: Endpoint::new(a),
            b: Endpoint::new(b),
            start: now,
            now,
            kind: TransportKind::Udp,
            wire: Vec::new(),
            events_a: Vec::new(),
            events_b: Vec::new(),
            loss: None,
        }
    }

    pub fn pair() -> Net {
        Net::new(config(A, 1), config(B, 2))
    }

    /// Delivers everything pending, without moving the clock.
    pub fn flush(&mut self) {
        loop {
            let mut moved = false;
            while let Some(out) = self.a.poll_output() {
                moved = true;
                self.route(true, out);
            }
            while let Some(out) = self.b.poll_output() {
                moved = true;
                self.route(false, out);
            }
            if !moved {
                break;
            }
        }
    }

    fn route(&mut self, from_a: bool, out: Output) {
        match out {
            Output::Event(e) => {
                if from_a {
                    self.events_a.push(e)
                } else {
                    self.events_b.push(e)
                }
            }
            Output::Transmit {
                transport,
                destination,
                bytes,
            } => {
                let (me, peer) = if from_a { (A, B) } else { (B, A) };
                assert_eq!(destination, addr(peer), "sent to the peer");
                assert_eq!(transport.remote, addr(peer));
                let mut w = Wire {
                    from_a,
                    at: self.now - self.start,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                    dropped: false,
                };
                if let Some(loss) = self.loss.as_mut() {
                    w.dropped = loss(&w);
                }
                let dropped = w.dropped;
                self.wire.push(w);
                if dropped {
                    return;
                }
                let t = Transport {
                    kind: transport.kind,
                    local: addr(peer),
                    remote: addr(me),
                };
                let now = self.now;
                if from_a {
                    self.b.handle_input(now, t, &bytes)
                } else {
                    self.a.handle_input(now, t, &bytes)
                }
            }
        }
    }

    /// Runs the network and timers for `d` of fake time.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.a.handle_timeout(now);
                    self.b.handle_timeout(now);
                }
                _ => break,
            }
        }
        self.now = end;
        self.flush();
    }

    pub fn take_a(&mut self) -> Vec<SipEvent> {
        std::mem::take(&mut self.events_a)
    }

    pub fn take_b(&mut self) -> Vec<SipEvent> {
        std::mem::take(&mut self.events_b)
    }

    /// Summaries of delivered (not dropped) messages.
    pub fn flow(&self) -> Vec<String> {
        self.wire
            .iter()
            .filter(|w| !w.dropped)
            .map(|w| format!("{}{}", if w.from_a { "a>" } else { "b>" }, w.summary()))
            .collect()
    }
}
