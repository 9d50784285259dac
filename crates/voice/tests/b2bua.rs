//! The gateway as a B2BUA ([`Gateway::bridge`]), sans IO: a caller (a
//! gateway dialling out), our gateway bridging its call to a target, and
//! the target (a third gateway) on an in-memory network with a fake clock.
//! Tones cross the bridge both ways (PCMA on one leg, PCMU on the other),
//! DTMF is relayed, hang-ups and CANCEL cross it, and the target's
//! failures reach the caller as the matching SIP status.

use continuum_sip::{Transport, TransportKind};
use continuum_voice::gateway::{CallEvent, Dial, MediaEncryption, Output, Transmit};
use continuum_voice::{CallId, Gateway};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::{addr, gateway, power, sine};

const CALLER: &str = "10.0.0.1:5060";
const GW: &str = "10.0.0.2:5060";
const TARGET: &str = "10.0.0.3:5060";
const CALLER_RTP: &str = "10.0.0.1:30000";
const GW_A_RTP: &str = "10.0.0.2:40000";
const GW_B_RTP: &str = "10.0.0.2:40002";
const TARGET_RTP: &str = "10.0.0.3:50000";

/// What the target does with the INVITE it gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Answer,
    Reject(u16),
    /// Rings, and answers only when told ([`Net::answer_target`]).
    Ring,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Caller,
    Gw,
    Target,
}

type Mangle = Box<dyn Fn(Who, String) -> String>;

struct Net {
    caller: Gateway,
    gw: Gateway,
    target: Gateway,
    now: Instant,
    mode: Target,
    /// SIP texts: (from, to, text).
    sip: Vec<(Who, Who, String)>,
    /// RTP payload types seen on each leg's wire: (from, to, pt).
    rtp: Vec<(Who, Who, u8)>,
    events: Vec<(Who, CallEvent)>,
    /// The gateway's target leg, once bridged.
    b_leg: Option<CallId>,
    /// The target's incoming call.
    t_call: Option<CallId>,
    /// Rewrites SIP from one party before it is delivered.
    mangle: Option<Mangle>,
}

fn who(a: SocketAddr) -> Who {
    match a.ip().to_string().as_str() {
        "10.0.0.1" => Who::Caller,
        "10.0.0.2" => Who::Gw,
        _ => Who::Target,
    }
}

impl Net {
    fn new(mode: Target, ring_timeout: Duration) -> Net {
        Net {
            caller: gateway(CALLER, 1, Duration::from_secs(60)),
            gw: gateway(GW, 2, ring_timeout),
            target: gateway(TARGET, 3, Duration::from_secs(60)),
            now: Instant::now(),
            mode,
            sip: Vec::new(),
            rtp: Vec::new(),
            events: Vec::new(),
            b_leg: None,
            t_call: None,
            mangle: None,
        }
    }

    fn g(&mut self, w: Who) -> &mut Gateway {
        match w {
            Who::Caller => &mut self.caller,
            Who::Gw => &mut self.gw,
            Who::Target => &mut self.target,
        }
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for w in [Who::Caller, Who::Gw, Who::Target] {
                while let Some(o) = self.g(w).poll_output() {
                    moved = true;
                    self.route(w, o);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn route(&mut self, from: Who, o: Output) {
        let now = self.now;
        let me = match from {
            Who::Caller => CALLER,
            Who::Gw => GW,
            Who::Target => TARGET,
        };
        match o {
            Output::Transmit(Transmit::Sip {
                destination, bytes, ..
            }) => {
                let to = who(destination);
                let mut text = String::from_utf8(bytes).unwrap();
                if let Some(m) = &self.mangle {
                    text = m(from, text);
                }
                self.sip.push((from, to, text.clone()));
                let t = Transport {
                    kind: TransportKind::Udp,
                    local: destination,
                    remote: addr(me),
                };
                self.g(to).handle_sip(now, t, text.as_bytes());
            }
            Output::Transmit(Transmit::Media {
                local,
                rtcp,
                destination,
                bytes,
            }) => {
                let to = who(destination);
                if !rtcp && bytes.len() > 12 {
                    self.rtp.push((from, to, bytes[1] & 0x7f));
                }
                let source = SocketAddr::new(local.ip(), local.port() + u16::from(rtcp));
                self.g(to).handle_media(now, destination, source, &bytes);
            }
            Output::Transmit(Transmit::Room { .. }) => unreachable!("no rooms here"),
            Output::Trunk(_) => unreachable!("no keepalive here"),
            Output::Event(CallEvent::Incoming(i)) if from == Who::Gw => {
                let b = self
                    .gw
                    .bridge(
                        now,
                        i.call,
                        addr(GW_A_RTP),
                        Dial {
                            target: "sip:desk@10.0.0.3".into(),
                            from: "sip:+14155550123@10.0.0.2".into(),
                            destination: addr(TARGET),
                            transport: TransportKind::Udp,
                            credentials: None,
                            local_rtp: addr(GW_B_RTP),
                            media_encryption: MediaEncryption::None,
                        },
                    )
                    .unwrap();
                self.b_leg = b;
                self.events.push((from, CallEvent::Incoming(i)));
            }
            Output::Event(CallEvent::Incoming(i)) if from == Who::Target => {
                self.t_call = Some(i.call);
                match self.mode {
                    Target::Answer => self
                        .target
                        .accept(now, i.call, addr(TARGET_RTP), true)
                        .unwrap(),
                    Target::Reject(status) => self.target.reject(now, i.call, status).unwrap(),
                    Target::Ring => {}
                }
                self.events.push((from, CallEvent::Incoming(i)));
            }
            Output::Event(e) => self.events.push((from, e)),
        }
    }

    /// A target in [`Target::Ring`] mode rings, then answers.
    fn answer_target(&mut self) {
        let call = self.t_call.expect("the target got the INVITE");
        let now = self.now;
        let _ = self.target.ring(now, call);
        self.target
            .accept(now, call, addr(TARGET_RTP), false)
            .unwrap();
        self.pump();
    }

    fn dial(&mut self) -> CallId {
        let now = self.now;
        let call = self
            .caller
            .dial(
                now,
                Dial {
                    target: "sip:+14155550100@10.0.0.2".into(),
                    from: "sip:+14155550123@10.0.0.1".into(),
                    destination: addr(GW),
                    transport: TransportKind::Udp,
                    credentials: None,
                    local_rtp: addr(CALLER_RTP),
                    media_encryption: MediaEncryption::None,
                },
            )
            .unwrap();
        self.pump();
        call
    }

    /// Runs everyone's clock for `ms` in 20 ms steps.
    fn run(&mut self, ms: u64, mut each: impl FnMut(&mut Net, usize)) {
        for i in 0..(ms / 20) as usize {
            self.now += Duration::from_millis(20);
            each(self, i);
            let now = self.now;
            for w in [Who::Caller, Who::Gw, Who::Target] {
                self.g(w).handle_timeout(now);
                self.pump();
            }
        }
    }

    fn events_of(&self, w: Who) -> Vec<&CallEvent> {
        self.events
            .iter()
            .filter(|(x, _)| *x == w)
            .map(|(_, e)| e)
            .collect()
    }

    fn sip_first_line(&self, from: Who, to: Who) -> Vec<String> {
        self.sip
            .iter()
            .filter(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, s)| s.lines().next().unwrap_or("").to_owned())
            .collect()
    }

    /// The gateway's incoming (caller) leg.
    fn a_leg(&self) -> CallId {
        self.events_of(Who::Gw)
            .iter()
            .find_map(|e| match e {
                CallEvent::Incoming(i) => Some(i.call),
                _ => None,
            })
            .expect("the gateway got the call")
    }
}

#[test]
fn a_bridged_call_carries_audio_both_ways_across_codecs_and_relays_dtmf() {
    let mut net = Net::new(Target::Answer, Duration::from_secs(30));
    // The caller offers PCMA first (so its leg is PCMA); the gateway offers
    // the target what the caller offered, which this network turns back
    // into PCMU first (so the target's leg is PCMU): audio is transcoded.
    net.mangle = Some(Box::new(|from, t| match from {
        Who::Caller => t.replace("RTP/AVP 0 8 101", "RTP/AVP 8 0 101"),
        Who::Gw => t.replace("RTP/AVP 8 0 101", "RTP/AVP 0 8 101"),
        Who::Target => t,
    }));
    let call = net.dial();
    let invite_b = net
        .sip
        .iter()
        .find(|(f, t, s)| *f == Who::Gw && *t == Who::Target && s.starts_with("INVITE"))
        .map(|(_, _, s)| s.clone())
        .expect("the target was dialled");
    assert!(
        invite_b.starts_with("INVITE sip:desk@10.0.0.3 SIP/2.0"),
        "{invite_b}"
    );
    assert!(
        invite_b
            .lines()
            .any(|l| l.starts_with("From:") && l.contains("+14155550123")),
        "From is the caller: {invite_b}"
    );
    // The caller heard ringing before the answer.
    let to_caller = net.sip_first_line(Who::Gw, Who::Caller);
    let ring = to_caller.iter().position(|l| l.starts_with("SIP/2.0 180"));
    let ok = to_caller.iter().position(|l| l.starts_with("SIP/2.0 200"));
    assert!(ring.is_some() && ring < ok, "{to_caller:?}");
    assert!(
        net.events_of(Who::Caller)
            .contains(&&CallEvent::Answered { call }),
        "{:?}",
        net.events_of(Who::Caller)
    );
    let a = net.a_leg();
    let b = net.b_leg.expect("bridged");
    assert_eq!(net.gw.bridged_to(a), Some(b));
    assert_eq!(net.gw.bridged_to(b), Some(a));
    assert!(
        net.events_of(Who::Gw)
            .contains(&&CallEvent::Answered { call: a }),
        "the caller's leg is answered once the caller ACKs"
    );
    let t_call = net.t_call.unwrap();

    let (mut heard_caller, mut heard_target) = (Vec::new(), Vec::new());
    net.run(5000, |net, i| {
        net.caller.say(call, sine(160 * i, 440.0));
        net.target.say(t_call, sine(160 * i, 1000.0));
        if i == 150 {
            let now = net.now;
            net.caller.send_dtmf(now, call, "7").unwrap();
            net.target.send_dtmf(now, t_call, "#").unwrap();
        }
        heard_caller.extend(net.caller.heard(call).unwrap_or([0; 160]));
        heard_target.extend(net.target.heard(t_call).unwrap_or([0; 160]));
    });
    let (tc, tt) = (&heard_caller[8000..], &heard_target[8000..]);
    assert!(power(tt, 440.0) > 1e6, "the target hears the caller");
    assert!(power(tt, 440.0) > 100.0 * power(tt, 1000.0));
    assert!(power(tc, 1000.0) > 1e6, "the caller hears the target");
    assert!(power(tc, 1000.0) > 100.0 * power(tc, 440.0));
    // PCMA between the caller and us, PCMU between us and the target.
    let pts = |from, to| -> std::collections::BTreeSet<u8> {
        net.rtp
            .iter()
            .filter(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, pt)| *pt)
            .collect()
    };
    assert_eq!(pts(Who::Caller, Who::Gw), [8, 101].into());
    assert_eq!(pts(Who::Gw, Who::Target), [0, 101].into());
    assert_eq!(pts(Who::Target, Who::Gw), [0, 101].into());
    assert_eq!(pts(Who::Gw, Who::Caller), [8, 101].into());
    // The digits crossed: the caller's 7 at the target, the target's # at the caller.
    let digits = |w| -> Vec<char> {
        net.events_of(w)
            .iter()
            .filter_map(|e| match e {
                CallEvent::Dtmf { digit, .. } => Some(*digit),
                _ => None,
            })
            .collect()
    };
    assert_eq!(digits(Who::Target), vec!['7']);
    assert_eq!(digits(Who::Caller), vec!['#']);

    // The caller hangs up: the target gets a BYE, the gateway's legs end.
    let now = net.now;
    net.caller.hangup(now, call).unwrap();
    net.pump();
    assert!(
        net.sip_first_line(Who::Gw, Who::Target)
            .iter()
            .any(|l| l.starts_with("BYE ")),
        "the BYE crossed"
    );
    assert!(net.events_of(Who::Target).iter().any(|e| matches!(
        e,
        CallEvent::Ended {
            by_remote: true,
            ..
        }
    )));
    let gw = net.events_of(Who::Gw);
    assert!(gw.contains(&&CallEvent::Ended {
        call: a,
        by_remote: true,
        cause: "remote_hangup"
    }));
    assert!(gw.contains(&&CallEvent::Ended {
        call: b,
        by_remote: false,
        cause: "hangup"
    }));
    assert_eq!(net.gw.call_count(), 0);
    assert_eq!(net.gw.poll_timeout().filter(|t| *t <= net.now), None);
}

#[test]
fn the_target_hanging_up_ends_the_callers_call() {
    let mut net = Net::new(Target::Answer, Duration::from_secs(30));
    let call = net.dial();
    let a = net.a_leg();
    net.run(200, |_, _| {});
    let t_call = net.t_call.unwrap();
    let now = net.now;
    net.target.hangup(now, t_call).unwrap();
    net.pump();
    assert!(
        net.sip_first_line(Who::Gw, Who::Caller)
            .iter()
            .any(|l| l.starts_with("BYE ")),
        "{:?}",
        net.sip_first_line(Who::Gw, Who::Caller)
    );
    assert!(net.events_of(Who::Caller).contains(&&CallEvent::Ended {
        call,
        by_remote: true,
        cause: "remote_hangup"
    }));
    assert!(net.events_of(Who::Gw).contains(&&CallEvent::Ended {
        call: a,
        by_remote: false,
        cause: "target_hangup"
    }));
    assert_eq!(net.gw.call_count(), 0);
}

#[test]
fn a_busy_target_answers_the_caller_486() {
    let mut net = Net::new(Target::Reject(486), Duration::from_secs(30));
    let call = net.dial();
    let a = net.a_leg();
    assert!(
        net.sip_first_line(Who::Gw, Who::Caller)
            .iter()
            .any(|l| l.starts_with("SIP/2.0 486")),
        "{:?}",
        net.sip_first_line(Who::Gw, Who::Caller)
    );
    assert!(
        net.events_of(Who::Caller)
            .iter()
            .any(|e| matches!(e, CallEvent::Failed { call: c, status: 486, .. } if *c == call))
    );
    assert!(
        net.events_of(Who::Gw)
            .iter()
            .any(|e| matches!(e, CallEvent::Failed { call: c, status: 486, .. } if *c == a)),
        "{:?}",
        net.events_of(Who::Gw)
    );
    assert_eq!(net.gw.call_count(), 0);
}

#[test]
fn other_target_failures_map_to_the_callers_status() {
    for (target, caller) in [(404, 404), (603, 603), (500, 503), (403, 503), (480, 480)] {
        let mut net = Net::new(Target::Reject(target), Duration::from_secs(30));
        let call = net.dial();
        assert!(
            net.events_of(Who::Caller).iter().any(
                |e| matches!(e, CallEvent::Failed { call: c, status, .. } if *c == call && *status == caller)
            ),
            "{target} → {caller}: {:?}",
            net.events_of(Who::Caller)
        );
        assert_eq!(net.gw.call_count(), 0);
    }
}

#[test]
fn a_target_that_never_answers_gives_the_caller_480_and_is_cancelled() {
    let mut net = Net::new(Target::Ring, Duration::from_secs(5));
    let call = net.dial();
    let a = net.a_leg();
    // The target rings: the caller's phone rings (another 180).
    let now = net.now;
    let t = net.t_call.unwrap();
    net.target.ring(now, t).unwrap();
    net.pump();
    let rings = net
        .sip_first_line(Who::Gw, Who::Caller)
        .iter()
        .filter(|l| l.starts_with("SIP/2.0 180"))
        .count();
    assert_eq!(rings, 2, "our 180, and the target's relayed");
    net.run(5200, |_, _| {});
    assert!(
        net.sip_first_line(Who::Gw, Who::Target)
            .iter()
            .any(|l| l.starts_with("CANCEL ")),
        "the target leg is cancelled"
    );
    assert!(
        net.events_of(Who::Caller)
            .iter()
            .any(|e| matches!(e, CallEvent::Failed { call: c, status: 480, .. } if *c == call)),
        "{:?}",
        net.events_of(Who::Caller)
    );
    assert!(net.events_of(Who::Gw).iter().any(|e| matches!(
        e,
        CallEvent::Failed { call: c, status: 480, reason } if *c == a && reason == "no_answer"
    )));
    assert_eq!(net.gw.call_count(), 0);
}

#[test]
fn the_callers_cancel_cancels_the_target() {
    let mut net = Net::new(Target::Ring, Duration::from_secs(30));
    let call = net.dial();
    let a = net.a_leg();
    let now = net.now;
    let t = net.t_call.unwrap();
    net.target.ring(now, t).unwrap();
    net.pump();
    net.caller.hangup(now, call).unwrap();
    net.pump();
    assert!(
        net.sip_first_line(Who::Gw, Who::Target)
            .iter()
            .any(|l| l.starts_with("CANCEL ")),
        "{:?}",
        net.sip_first_line(Who::Gw, Who::Target)
    );
    assert!(net.events_of(Who::Gw).iter().any(|e| matches!(
        e,
        CallEvent::Failed { call: c, status: 487, reason } if *c == a && reason == "cancelled"
    )));
    assert!(
        net.events_of(Who::Target).iter().any(|e| matches!(
            e,
            CallEvent::Ended {
                cause: "cancelled",
                ..
            }
        )),
        "{:?}",
        net.events_of(Who::Target)
    );
    assert_eq!(net.gw.call_count(), 0);
    // A target answering now is too late: nothing comes up.
    net.run(200, |_, _| {});
    assert_eq!(net.gw.call_count(), 0);
}

#[test]
fn a_late_answer_answers_the_caller_then() {
    let mut net = Net::new(Target::Ring, Duration::from_secs(30));
    let call = net.dial();
    net.run(1000, |_, _| {});
    assert!(
        !net.sip_first_line(Who::Gw, Who::Caller)
            .iter()
            .any(|l| l.starts_with("SIP/2.0 200")),
        "not answered before the target"
    );
    net.answer_target();
    assert!(
        net.events_of(Who::Caller)
            .contains(&&CallEvent::Answered { call })
    );
}
