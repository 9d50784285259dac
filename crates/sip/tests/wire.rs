//! Hand-written messages (sipp's default scenarios, RFC 3261 error cases)
//! and arbitrary bytes fed to one endpoint.

mod harness;

use continuum_sip::{Endpoint, Output, SipEvent, Transport, TransportKind};
use harness::*;
use proptest::prelude::*;
use std::time::{Duration, Instant};

/// What `sipp -sn uac` sends first (its template with values filled in).
const SIPP_INVITE: &str = "INVITE sip:service@10.0.0.2:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0\r\n\
From: sipp <sip:sipp@10.0.0.1:5060>;tag=4242SIPpTag001\r\n\
To: service <sip:service@10.0.0.2:5060>\r\n\
Call-ID: 1-4242@10.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@10.0.0.1:5060\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 127\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 10.0.0.1\r\n\
s=-\r\n\
c=IN IP4 10.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

fn uas() -> (Endpoint, Transport, Instant) {
    let ep = Endpoint::new(config(B, 9));
    let t = Transport {
        kind: TransportKind::Udp,
        local: addr(B),
        remote: addr(A),
    };
    (ep, t, Instant::now())
}

fn drain(ep: &mut Endpoint) -> (Vec<String>, Vec<SipEvent>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(o) = ep.poll_output() {
        match o {
            Output::Transmit { bytes, .. } => sent.push(String::from_utf8(bytes).unwrap()),
            Output::Event(e) => events.push(e),
        }
    }
    (sent, events)
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("{name} in {msg}"))
}

#[test]
fn sipp_default_uac_scenario() {
    let (mut ep, t, now) = uas();
    ep.handle_input(now, t, SIPP_INVITE.as_bytes());
    let (sent, events) = drain(&mut ep);
    assert!(sent[0].starts_with("SIP/2.0 100 Trying\r\n"));
    let SipEvent::IncomingCall {
        call,
        called,
        offer,
        ..
    } = &events[0]
    else {
        panic!()
    };
    assert_eq!(called.as_deref(), Some("service"));
    let offer = offer.clone().unwrap();
    let answer = continuum_sip::sdp::answer(
        &offer,
        &continuum_sip::sdp::LocalMedia {
            addr: "10.0.0.2".parse().unwrap(),
            port: 7000,
            session_id: 1,
            version: 1,
            direction: continuum_sip::sdp::Direction::SendRecv,
            ptime: None,
        },
    )
    .unwrap();
    assert_eq!(answer.codec, 0);
    ep.ring(now, *call).unwrap();
    ep.answer(now, *call, &answer.sdp).unwrap();
    let (sent, _) = drain(&mut ep);
    assert!(sent[0].starts_with("SIP/2.0 180 Ringing\r\n"));
    let ok = &sent[1];
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(
        header(ok, "Via"),
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0"
    );
    assert_eq!(header(ok, "CSeq"), "1 INVITE");
    let to = header(ok, "To");
    assert!(to.starts_with("service <sip:service@10.0.0.2:5060>;tag="));
    let tag = to.rsplit("tag=").next().unwrap();
    assert_eq!(header(&sent[0], "To"), to, "same tag on 180 and 200");

    // sipp's ACK: new branch, its [peer_tag_param] is our tag.
    let ack = format!(
        "ACK sip:service@10.0.0.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-5\r\nFrom: sipp <sip:sipp@10.0.0.1:5060>;tag=4242SIPpTag001\r\nTo: service <sip:service@10.0.0.2:5060>;tag={tag}\r\nCall-ID: 1-4242@10.0.0.1\r\nCSeq: 1 ACK\r\nContact: sip:sipp@10.0.0.1:5060\r\nMax-Forwards: 70\r\nSubject: Performance Test\r\nContent-Length: 0\r\n\r\n"
    );
    ep.handle_input(now, t, ack.as_bytes());
    let (sent, events) = drain(&mut ep);
    assert!(sent.is_empty());
    assert_eq!(events, vec![SipEvent::Confirmed { call: *call }]);
    // No 2xx retransmission after the ACK.
    let later = now + Duration::from_secs(2);
    ep.handle_timeout(later);
    assert!(drain(&mut ep).0.is_empty());

    let bye = ack
        .replace("ACK sip:", "BYE sip:")
        .replace("CSeq: 1 ACK", "CSeq: 2 BYE")
        .replace("z9hG4bK-4242-1-5", "z9hG4bK-4242-1-7");
    ep.handle_input(later, t, bye.as_bytes());
    let (sent, events) = drain(&mut ep);
    assert!(sent[0].starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(header(&sent[0], "CSeq"), "2 BYE");
    assert!(matches!(
        events[..],
        [SipEvent::Ended {
            by_remote: true,
            ..
        }]
    ));
    // sipp retransmits the BYE if our 200 was lost: same answer again.
    ep.handle_input(later, t, bye.as_bytes());
    let (sent, events) = drain(&mut ep);
    assert!(sent[0].starts_with("SIP/2.0 200 OK\r\n") && events.is_empty());
}

#[test]
fn sipp_default_uas_scenario_answers_our_invite() {
    // sipp -sn uas: 180 and 200 built from [last_*] headers, Contact with
    // transport param, no Max-Forwards; then our ACK and BYE.
    let mut ep = Endpoint::new(config(A, 4));
    let now = Instant::now();
    let call = ep
        .invite(
            now,
            continuum_sip::InviteRequest {
                target: "sip:service@10.0.0.2:5060".into(),
                from: "sip:continuum@10.0.0.1".into(),
                from_display: None,
                sdp: Some(local_sdp(4000, 1)),
                credentials: None,
                destination: addr(B),
                transport: TransportKind::Udp,
                route: vec![],
                extra_headers: vec![],
            },
        )
        .unwrap();
    let (sent, _) = drain(&mut ep);
    let invite = &sent[0];
    let last = |name: &str| format!("{name}: {}", header(invite, name));
    let t = Transport {
        kind: TransportKind::Udp,
        local: addr(A),
        remote: addr(B),
    };
    for (status, extra) in [
        ("180 Ringing", ""),
        ("200 OK", "Content-Type: application/sdp\r\n"),
    ] {
        let body = if extra.is_empty() {
            String::new()
        } else {
            local_sdp(6000, 1)
        };
        let msg = format!(
            "SIP/2.0 {status}\r\n{}\r\n{}\r\n{};tag=4242SIPpTag011\r\n{}\r\n{}\r\nContact: <sip:10.0.0.2:5060;transport=UDP>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            last("Via"),
            last("From"),
            last("To"),
            last("Call-ID"),
            last("CSeq"),
            body.len()
        );
        ep.handle_input(now, t, msg.as_bytes());
    }
    let (sent, events) = drain(&mut ep);
    assert!(
        matches!(
            &events[..],
            [
                SipEvent::Ringing { .. },
                SipEvent::Answered {
                    answer: Some(_),
                    ..
                }
            ]
        ),
        "{events:?}"
    );
    assert!(
        sent[0].starts_with("ACK sip:10.0.0.2:5060;transport=UDP SIP/2.0\r\n"),
        "{}",
        sent[0]
    );
    assert_eq!(header(&sent[0], "CSeq"), "1 ACK");
    ep.hangup(now, call).unwrap();
    let (sent, _) = drain(&mut ep);
    assert!(sent[0].starts_with("BYE sip:10.0.0.2:5060;transport=UDP SIP/2.0\r\n"));
    assert!(header(&sent[0], "To").ends_with(";tag=4242SIPpTag011"));
    assert_eq!(header(&sent[0], "CSeq"), "2 BYE");
}

fn answer_to(msg: &str) -> String {
    let (mut ep, t, now) = uas();
    ep.handle_input(now, t, msg.as_bytes());
    let (sent, _) = drain(&mut ep);
    sent.into_iter().last().unwrap_or_default()
}

#[test]
fn error_responses() {
    let cases: [(String, &str); 8] = [
        (
            SIPP_INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0"),
            "SIP/2.0 483 Too Many Hops\r\n",
        ),
        (
            SIPP_INVITE.replace("Subject: Performance Test", "Require: 100rel, timer"),
            "SIP/2.0 420 Bad Extension\r\n",
        ),
        (
            SIPP_INVITE
                .replace("INVITE sip:service", "FROB sip:service")
                .replace("CSeq: 1 INVITE", "CSeq: 1 FROB"),
            "SIP/2.0 501 Not Implemented\r\n",
        ),
        (
            SIPP_INVITE
                .replace("INVITE sip:service", "SUBSCRIBE sip:service")
                .replace("CSeq: 1 INVITE", "CSeq: 1 SUBSCRIBE"),
            "SIP/2.0 405 Method Not Allowed\r\n",
        ),
        (
            SIPP_INVITE.replace("CSeq: 1 INVITE", "CSeq: one INVITE"),
            "SIP/2.0 400 Bad CSeq Header (bad sequence number)\r\n",
        ),
        (
            SIPP_INVITE.replace("Content-Length: 127", "Content-Length: 900"),
            "SIP/2.0 400 Body Shorter Than Content-Length\r\n",
        ),
        (
            SIPP_INVITE.replace(
                "To: service <sip:service@10.0.0.2:5060>",
                "To: service <sip:service@10.0.0.2:5060>;tag=nope",
            ),
            "SIP/2.0 481 Call/Transaction Does Not Exist\r\n",
        ),
        (
            SIPP_INVITE.replace(
                "Subject: Performance Test",
                &format!("Subject: {}", "x".repeat(70_000)),
            ),
            "SIP/2.0 513 Message Too Large\r\n",
        ),
    ];
    for (msg, want) in cases {
        let got = answer_to(&msg);
        assert!(got.starts_with(want), "want {want:?} got {got:?}");
        assert!(got.contains("Call-ID: 1-4242@10.0.0.1\r\n"));
    }
    assert!(
        answer_to(&SIPP_INVITE.replace("Subject: Performance Test", "Require: 100rel, timer"))
            .contains("Unsupported: 100rel\r\n")
    );
    assert!(
        answer_to(
            &SIPP_INVITE
                .replace("INVITE sip:service", "FROB sip:service")
                .replace("CSeq: 1 INVITE", "CSeq: 1 FROB")
        )
        .contains("Allow: INVITE")
    );
    // Unanswerable (no Via) or a response: silence, never a panic.
    assert_eq!(
        answer_to(&SIPP_INVITE.replace(
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0\r\n",
            ""
        )),
        ""
    );
    assert_eq!(answer_to("SIP/2.0 200 OK\r\n\r\n"), "");
    assert_eq!(answer_to("\r\n\r\n"), "");
}

#[test]
fn merged_invite_is_482_and_cancel_unknown_is_481() {
    let (mut ep, t, now) = uas();
    ep.handle_input(now, t, SIPP_INVITE.as_bytes());
    drain(&mut ep);
    // Same INVITE by another path: new branch.
    ep.handle_input(
        now,
        t,
        SIPP_INVITE
            .replace("z9hG4bK-4242-1-0", "z9hG4bK-other")
            .as_bytes(),
    );
    let (sent, events) = drain(&mut ep);
    assert!(sent[0].starts_with("SIP/2.0 482 Loop Detected\r\n") && events.is_empty());
    let cancel = SIPP_INVITE
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace("z9hG4bK-4242-1-0", "z9hG4bK-unknown");
    ep.handle_input(now, t, cancel.as_bytes());
    assert!(drain(&mut ep).0[0].starts_with("SIP/2.0 481 "));
}

#[test]
fn tcp_framing_keepalive_and_split_messages() {
    let mut ep = Endpoint::new(config(B, 9));
    let t = Transport {
        kind: TransportKind::Tcp,
        local: addr(B),
        remote: addr(A),
    };
    let now = Instant::now();
    let msg = SIPP_INVITE.replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let all = format!("\r\n\r\n{msg}");
    for chunk in all.as_bytes().chunks(7) {
        ep.handle_input(now, t, chunk);
    }
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent[0], "\r\n", "pong for the ping");
    assert!(sent[1].starts_with("SIP/2.0 100 Trying"));
    assert_eq!(events.len(), 1);
    ep.handle_input(
        now,
        t,
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n",
    );
    let (_, events) = drain(&mut ep);
    assert_eq!(events, vec![SipEvent::StreamError { transport: t }]);
}

fn mutate(base: &str, pos: usize, len: usize, with: &[u8]) -> Vec<u8> {
    let mut b = base.as_bytes().to_vec();
    let p = pos % (b.len() + 1);
    let e = (p + len).min(b.len());
    b.splice(p..e, with.iter().copied());
    b
}

fn feed(ep: &mut Endpoint, now: Instant, kind: TransportKind, bytes: &[u8]) {
    let t = Transport {
        kind,
        local: addr(B),
        remote: addr(A),
    };
    ep.handle_input(now, t, bytes);
    // Act on whatever came out, as a glue would, to reach deeper states.
    while let Some(o) = ep.poll_output() {
        if let Output::Event(SipEvent::IncomingCall { call, .. }) = o {
            let _ = ep.ring(now, call);
            let _ = ep.answer(now, call, &local_sdp(5000, 1));
        }
    }
    ep.handle_timeout(now + Duration::from_secs(1));
    while ep.poll_output().is_some() {}
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut ep = Endpoint::new(config(B, 9));
        let now = Instant::now();
        feed(&mut ep, now, TransportKind::Udp, &data);
        feed(&mut ep, now, TransportKind::Tcp, &data);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<usize>(), 0usize..8, proptest::collection::vec(any::<u8>(), 0..8)), 1..4),
        ascii in proptest::collection::vec((any::<usize>(), 0usize..8, "[ -~\r\n]{0,8}"), 0..3),
    ) {
        let ack = SIPP_INVITE.replace("INVITE sip:", "ACK sip:").replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
        let bye = SIPP_INVITE.replace("INVITE sip:", "BYE sip:").replace("CSeq: 1 INVITE", "CSeq: 2 BYE");
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContact: <sip:10.0.0.1>\r\nSession-Expires: 90;refresher=uac\r\nContent-Length: 0\r\n\r\n";
        let bases = [SIPP_INVITE, &ack, &bye, resp];
        let mut msg = bases[which].to_string();
        let mut bytes = msg.as_bytes().to_vec();
        for (pos, len, rep) in &ascii {
            bytes = mutate(&msg, *pos, *len, rep.as_bytes());
            msg = String::from_utf8_lossy(&bytes).into_owned();
        }
        for (pos, len, rep) in &edits {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            bytes = mutate(&text, *pos, *len, rep);
        }
        let mut ep = Endpoint::new(config(B, 9));
        let now = Instant::now();
        // The valid message first (to create state), then the mutant.
        feed(&mut ep, now, TransportKind::Udp, SIPP_INVITE.as_bytes());
        feed(&mut ep, now, TransportKind::Udp, &bytes);
        feed(&mut ep, now, TransportKind::Tcp, &bytes);
        ep.handle_timeout(now + Duration::from_secs(100));
        while ep.poll_output().is_some() {}
    }
}
