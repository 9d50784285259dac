//! Two gateways back to back on an in-memory network with a fake clock:
//! a dial-out with SDES-SRTP (`RTP/SAVP`) answered by the other gateway,
//! tones both ways through encrypted media, and offers or answers without
//! a usable crypto suite refused (488 with a Warning, or a failed call).

use continuum_rtp::packet::RtpPacket;
use continuum_sip::{Transport, TransportKind};
use continuum_voice::gateway::{CallEvent, Dial, MediaEncryption, Output, Transmit};
use continuum_voice::{CallId, Gateway};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::{addr, gateway, power, sine};

const A: &str = "10.0.0.1:5060";
const B: &str = "10.0.0.2:5060";
const A_RTP: &str = "10.0.0.1:30000";
const B_RTP: &str = "10.0.0.2:40000";

type Mangle = Box<dyn Fn(String) -> String>;

struct Net {
    a: Gateway,
    b: Gateway,
    now: Instant,
    /// SIP texts (from A?, text) and media datagrams (from A?, RTCP?, bytes).
    sip: Vec<(bool, String)>,
    media: Vec<(bool, bool, Vec<u8>)>,
    events_a: Vec<CallEvent>,
    events_b: Vec<CallEvent>,
    /// Rewrites SIP from A before B gets it.
    mangle: Option<Mangle>,
}

impl Net {
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(o) = self.a.poll_output() {
                moved = true;
                self.route(true, o);
            }
            while let Some(o) = self.b.poll_output() {
                moved = true;
                self.route(false, o);
            }
            if !moved {
                return;
            }
        }
    }

    fn route(&mut self, from_a: bool, o: Output) {
        let now = self.now;
        let (me, peer, my_rtp) = if from_a { (A, B, A_RTP) } else { (B, A, B_RTP) };
        match o {
            Output::Transmit(Transmit::Sip {
                destination, bytes, ..
            }) => {
                assert_eq!(destination, addr(peer));
                let mut text = String::from_utf8(bytes).unwrap();
                if from_a && let Some(m) = &self.mangle {
                    text = m(text);
                }
                self.sip.push((from_a, text.clone()));
                let t = Transport {
                    kind: TransportKind::Udp,
                    local: addr(peer),
                    remote: addr(me),
                };
                let to = if from_a { &mut self.b } else { &mut self.a };
                to.handle_sip(now, t, text.as_bytes());
            }
            Output::Transmit(Transmit::Media {
                local,
                rtcp,
                destination,
                bytes,
            }) => {
                assert_eq!(local, addr(my_rtp));
                self.media.push((from_a, rtcp, bytes.clone()));
                let source = SocketAddr::new(local.ip(), local.port() + u16::from(rtcp));
                let to = if from_a { &mut self.b } else { &mut self.a };
                to.handle_media(now, destination, source, &bytes);
            }
            Output::Transmit(Transmit::Room { .. }) => unreachable!("no rooms here"),
            Output::Trunk(_) => unreachable!("no keepalive here"),
            Output::Event(CallEvent::Incoming(i)) if !from_a => {
                let call = i.call;
                self.events_b.push(CallEvent::Incoming(i));
                let _ = self.b.accept(now, call, addr(B_RTP), false);
            }
            Output::Event(e) => {
                if from_a {
                    self.events_a.push(e)
                } else {
                    self.events_b.push(e)
                }
            }
        }
    }
}

fn net() -> Net {
    Net {
        a: gateway(A, 1, Duration::from_secs(30)),
        b: gateway(B, 2, Duration::from_secs(30)),
        now: Instant::now(),
        sip: Vec::new(),
        media: Vec::new(),
        events_a: Vec::new(),
        events_b: Vec::new(),
        mangle: None,
    }
}

fn dial(net: &mut Net, media_encryption: MediaEncryption) -> CallId {
    let call = net
        .a
        .dial(
            net.now,
            Dial {
                target: "sip:+14155550100@10.0.0.2".into(),
                from: "sip:+14155550199@10.0.0.1".into(),
                destination: addr(B),
                transport: TransportKind::Udp,
                credentials: None,
                local_rtp: addr(A_RTP),
                media_encryption,
            },
        )
        .unwrap();
    net.pump();
    call
}

fn b_call(net: &Net) -> CallId {
    net.events_b
        .iter()
        .find_map(|e| match e {
            CallEvent::Incoming(i) => Some(i.call),
            _ => None,
        })
        .expect("B saw the INVITE")
}

#[test]
fn sdes_dial_out_carries_tones_both_ways_encrypted() {
    let mut net = net();
    let call_a = dial(&mut net, MediaEncryption::Sdes);
    let invite = net.sip[0].1.clone();
    assert!(
        invite.contains("m=audio 30000 RTP/SAVP 0 8 101"),
        "{invite}"
    );
    assert!(invite.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    let ok = net
        .sip
        .iter()
        .find(|(a, t)| !a && t.starts_with("SIP/2.0 200"))
        .map(|(_, t)| t.clone())
        .expect("B answered");
    assert!(ok.contains("RTP/SAVP") && ok.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80"));
    assert!(net.events_a.contains(&CallEvent::Answered { call: call_a }));
    // Keys on the wire (SDES), never in what the gateway reports.
    for text in [invite.as_str(), ok.as_str()] {
        let at = text.find("inline:").unwrap() + "inline:".len();
        let key = &text[at..at + 40];
        let shown = format!("{:?}{:?}", net.events_a, net.events_b);
        assert!(!shown.contains(key), "a key in {shown}");
    }
    let call_b = b_call(&net);
    let (mut heard_a, mut heard_b) = (Vec::new(), Vec::new());
    for i in 0..250usize {
        net.now += Duration::from_millis(20);
        net.a.say(call_a, sine(160 * i, 440.0));
        net.b.say(call_b, sine(160 * i, 1000.0));
        let now = net.now;
        net.a.handle_timeout(now);
        net.b.handle_timeout(now);
        net.pump();
        heard_a.extend(net.a.heard(call_a).unwrap_or([0; 160]));
        heard_b.extend(net.b.heard(call_b).unwrap_or([0; 160]));
    }
    let (tail_a, tail_b) = (&heard_a[8000..], &heard_b[8000..]);
    assert!(power(tail_b, 440.0) > 1e6, "B hears A's 440 Hz");
    assert!(power(tail_b, 440.0) > 100.0 * power(tail_b, 1000.0));
    assert!(power(tail_a, 1000.0) > 1e6, "A hears B's 1000 Hz");
    assert!(power(tail_a, 1000.0) > 100.0 * power(tail_a, 440.0));
    // On the wire: RTP carries 160 bytes of audio and an 80-bit tag, and
    // SRTCP flows too.
    let rtp: Vec<_> = net.media.iter().filter(|m| !m.1).collect();
    assert!(rtp.len() > 400, "{}", rtp.len());
    for (_, _, bytes) in &rtp {
        let p = RtpPacket::parse(bytes).unwrap();
        assert_eq!(p.payload.len(), 170, "audio and tag");
    }
    assert!(net.media.iter().any(|m| m.1), "SRTCP flowed");
    net.a.hangup(net.now, call_a).unwrap();
    net.pump();
    assert!(
        net.events_b
            .iter()
            .any(|e| matches!(e, CallEvent::Ended { .. }))
    );
}

#[test]
fn plain_dial_out_is_unchanged() {
    let mut net = net();
    let call_a = dial(&mut net, MediaEncryption::None);
    assert!(net.sip[0].1.contains("RTP/AVP 0 8 101"));
    assert!(!net.sip[0].1.contains("a=crypto"));
    assert!(net.events_a.contains(&CallEvent::Answered { call: call_a }));
    for _ in 0..10 {
        net.now += Duration::from_millis(20);
        let now = net.now;
        net.a.handle_timeout(now);
        net.b.handle_timeout(now);
        net.pump();
    }
    let p = net.media.iter().find(|m| !m.1).expect("RTP flowed");
    assert_eq!(RtpPacket::parse(&p.2).unwrap().payload.len(), 160);
}

#[test]
fn an_offer_without_a_usable_suite_is_488_with_a_warning() {
    let mut net = net();
    // The same length, so Content-Length still holds: a suite nobody has.
    net.mangle = Some(Box::new(|t| t.replace("HMAC_SHA1_80", "HMAC_SHA9_80")));
    let call_a = dial(&mut net, MediaEncryption::Sdes);
    let refusal = net
        .sip
        .iter()
        .find(|(a, t)| !a && t.starts_with("SIP/2.0 488"))
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| panic!("a 488: {:?}", net.sip));
    let warning = refusal
        .lines()
        .find(|l| l.starts_with("Warning:"))
        .unwrap_or_else(|| panic!("a Warning: {refusal}"));
    assert!(
        warning.contains("399") && warning.contains("crypto suite"),
        "{warning}"
    );
    assert!(
        net.events_a
            .iter()
            .any(|e| matches!(e, CallEvent::Failed { call, status: 488, .. } if *call == call_a))
    );
    assert!(net.events_b.iter().any(
        |e| matches!(e, CallEvent::Failed { status: 488, reason, .. } if reason.contains("crypto"))
    ));
}

#[test]
fn a_plain_answer_to_an_sdes_offer_fails_the_call() {
    let mut net = net();
    // B sees a plain offer (and answers RTP/AVP); A required SRTP.
    net.mangle = Some(Box::new(|t| {
        let Some(at) = t.find("a=crypto") else {
            return t;
        };
        let end = at + t[at..].find("\r\n").unwrap() + 2;
        let removed = end - at;
        let text = format!("{}{}", &t[..at], &t[end..]).replace("RTP/SAVP", "RTP/AVP ");
        let len = text.split("\r\n\r\n").nth(1).unwrap().len();
        text.replace(
            &format!("Content-Length: {}", len + removed),
            &format!("Content-Length: {len}"),
        )
    }));
    let call_a = dial(&mut net, MediaEncryption::Sdes);
    assert!(
        net.events_a.iter().any(
            |e| matches!(e, CallEvent::Failed { call, status: 488, reason }
            if *call == call_a && reason.contains("crypto"))
        ),
        "{:?}",
        net.events_a
    );
    assert!(net.sip.iter().any(|(a, t)| *a && t.starts_with("BYE")));
}
