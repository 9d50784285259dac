//! Two endpoints exchanging real SIP over a simulated network.

mod harness;

use continuum_sip::auth::Secret;
use continuum_sip::{CallId, DigestCredentials, EndCause, InviteRequest, SipEvent, TransportKind};
use harness::*;
use std::time::Duration;

fn request(sdp: Option<String>) -> InviteRequest {
    InviteRequest {
        target: "sip:+15550100@10.0.0.2".into(),
        from: "sip:+15550199@example.test".into(),
        from_display: Some("Clinic".into()),
        sdp,
        credentials: None,
        destination: addr(B),
        transport: TransportKind::Udp,
        route: vec![],
        extra_headers: vec![],
    }
}

fn incoming(events: &[SipEvent]) -> CallId {
    events
        .iter()
        .find_map(|e| match e {
            SipEvent::IncomingCall { call, .. } => Some(*call),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no IncomingCall in {events:?}"))
}

/// a calls b; b rings and answers. Returns (a's call, b's call).
fn connected(net: &mut Net) -> (CallId, CallId) {
    let now = net.now;
    let ac = net
        .a
        .invite(now, request(Some(local_sdp(4000, 1))))
        .unwrap();
    net.run(Duration::from_millis(10));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.ring(now, bc).unwrap();
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.run(Duration::from_millis(10));
    let ea = net.take_a();
    assert!(
        ea.iter()
            .any(|e| matches!(e, SipEvent::Answered { call, answer: Some(_) } if *call == ac)),
        "{ea:?}"
    );
    assert!(net.take_b().contains(&SipEvent::Confirmed { call: bc }));
    (ac, bc)
}

#[test]
fn full_call_invite_to_bye() {
    let mut net = Net::pair();
    let now = net.now;
    let ac = net
        .a
        .invite(now, request(Some(local_sdp(4000, 1))))
        .unwrap();
    net.run(Duration::from_millis(10));
    let eb = net.take_b();
    let SipEvent::IncomingCall {
        call: bc,
        called,
        from_user,
        offer,
        source,
        ..
    } = &eb[0]
    else {
        panic!("{eb:?}")
    };
    let bc = *bc;
    assert_eq!(called.as_deref(), Some("+15550100"));
    assert_eq!(from_user.as_deref(), Some("+15550199"));
    assert_eq!(*source, addr(A));
    assert_eq!(
        offer
            .as_ref()
            .unwrap()
            .audio
            .as_ref()
            .unwrap()
            .payload_types,
        vec![0, 8, 101]
    );
    let now = net.now;
    net.b.ring(now, bc).unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(net.take_a(), vec![SipEvent::Ringing { call: ac }]);
    let now = net.now;
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.run(Duration::from_secs(1));
    assert!(matches!(&net.take_a()[..], [SipEvent::Answered { .. }]));
    assert_eq!(net.take_b(), vec![SipEvent::Confirmed { call: bc }]);
    let now = net.now;
    net.a.hangup(now, ac).unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(
        net.take_b(),
        vec![SipEvent::Ended {
            call: bc,
            by_remote: true,
            cause: EndCause::Bye
        }]
    );
    assert_eq!(
        net.take_a(),
        vec![SipEvent::Ended {
            call: ac,
            by_remote: false,
            cause: EndCause::Bye
        }]
    );
    assert_eq!(
        net.flow(),
        [
            "a>INVITE",
            "b>100 INVITE",
            "b>180 INVITE",
            "b>200 INVITE",
            "a>ACK",
            "a>BYE",
            "b>200 BYE"
        ]
    );
    // Nothing retransmitted, and every transaction gone after the timers.
    net.run(Duration::from_secs(40));
    assert_eq!(net.flow().len(), 7);
    assert_eq!((net.a.call_count(), net.b.call_count()), (0, 0));
    assert_eq!(
        (net.a.transaction_count(), net.b.transaction_count()),
        (0, 0)
    );
    // In-dialog requests carry the dialog: a BYE now is 481.
}

#[test]
fn full_call_over_tcp_has_no_retransmissions() {
    let mut net = Net::pair();
    net.kind = TransportKind::Tcp;
    let now = net.now;
    let mut req = request(Some(local_sdp(4000, 1)));
    req.transport = TransportKind::Tcp;
    let ac = net.a.invite(now, req).unwrap();
    net.run(Duration::from_millis(10));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.run(Duration::from_secs(1));
    let now = net.now;
    net.b.hangup(now, bc).unwrap();
    net.run(Duration::from_secs(60));
    assert_eq!(
        net.flow(),
        [
            "a>INVITE",
            "b>100 INVITE",
            "b>200 INVITE",
            "a>ACK",
            "b>BYE",
            "a>200 BYE"
        ]
    );
    assert!(
        net.wire
            .iter()
            .all(|w| w.text.contains("SIP/2.0/TCP") || w.text.starts_with("SIP/2.0 "))
    );
    assert!(net.take_a().contains(&SipEvent::Ended {
        call: ac,
        by_remote: true,
        cause: EndCause::Bye
    }));
    assert_eq!(
        (net.a.transaction_count(), net.b.transaction_count()),
        (0, 0)
    );
}

#[test]
fn cancel_before_answer() {
    let mut net = Net::pair();
    let now = net.now;
    let ac = net
        .a
        .invite(now, request(Some(local_sdp(4000, 1))))
        .unwrap();
    net.run(Duration::from_millis(10));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.ring(now, bc).unwrap();
    net.run(Duration::from_millis(10));
    let now = net.now;
    net.a.cancel(now, ac).unwrap();
    net.run(Duration::from_secs(1));
    assert_eq!(
        net.take_b(),
        vec![SipEvent::Ended {
            call: bc,
            by_remote: true,
            cause: EndCause::Cancelled
        }]
    );
    let ea = net.take_a();
    assert!(
        matches!(
            &ea[..],
            [
                SipEvent::Ringing { .. },
                SipEvent::CallFailed { status: 487, .. }
            ]
        ),
        "{ea:?}"
    );
    assert_eq!(
        net.flow(),
        [
            "a>INVITE",
            "b>100 INVITE",
            "b>180 INVITE",
            "a>CANCEL",
            "b>200 CANCEL",
            "b>487 INVITE",
            "a>ACK"
        ]
    );
    net.run(Duration::from_secs(40));
    assert_eq!(
        (net.a.transaction_count(), net.b.transaction_count()),
        (0, 0)
    );
}

#[test]
fn cancel_waits_for_a_provisional() {
    let mut net = Net::pair();
    // Drop b's 100 so a sees no provisional until the 180.
    net.loss = Some(Box::new(|w| w.summary() == "100 INVITE"));
    let now = net.now;
    let ac = net.a.invite(now, request(None)).unwrap();
    net.a.cancel(now, ac).unwrap();
    net.run(Duration::from_millis(10));
    assert!(!net.flow().contains(&"a>CANCEL".to_string()));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.ring(now, bc).unwrap();
    net.run(Duration::from_secs(1));
    assert!(net.flow().contains(&"a>CANCEL".to_string()));
    assert!(
        net.take_a()
            .iter()
            .any(|e| matches!(e, SipEvent::CallFailed { status: 487, .. }))
    );
}

#[test]
fn cancel_race_both_ways() {
    // b answers while a's CANCEL is in flight: b answers the CANCEL 200 and
    // keeps the call (UAS side); a ACKs the 2xx and BYEs it (UAC side).
    let mut net = Net::pair();
    let now = net.now;
    let ac = net
        .a
        .invite(now, request(Some(local_sdp(4000, 1))))
        .unwrap();
    net.run(Duration::from_millis(10));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.ring(now, bc).unwrap();
    net.run(Duration::from_millis(10));
    let now = net.now;
    // Both act before either hears the other.
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.a.cancel(now, ac).unwrap();
    net.run(Duration::from_secs(1));
    let ea = net.take_a();
    assert!(
        ea.iter()
            .any(|e| matches!(e, SipEvent::CallFailed { status: 487, .. })),
        "{ea:?}"
    );
    assert!(!ea.iter().any(|e| matches!(e, SipEvent::Answered { .. })));
    let eb = net.take_b();
    assert!(eb.contains(&SipEvent::Confirmed { call: bc }), "{eb:?}");
    assert!(
        eb.contains(&SipEvent::Ended {
            call: bc,
            by_remote: true,
            cause: EndCause::Bye
        }),
        "{eb:?}"
    );
    let flow = net.flow();
    for m in [
        "a>CANCEL",
        "b>200 CANCEL",
        "b>200 INVITE",
        "a>ACK",
        "a>BYE",
        "b>200 BYE",
    ] {
        assert!(flow.contains(&m.to_string()), "{m} in {flow:?}");
    }
    assert!(!flow.contains(&"b>487 INVITE".to_string()));
    net.run(Duration::from_secs(40));
    assert_eq!((net.a.call_count(), net.b.call_count()), (0, 0));
}

#[test]
fn reinvite_glare_backs_off_and_both_succeed() {
    let mut net = Net::pair();
    let (ac, bc) = connected(&mut net);
    let now = net.now;
    net.a.reinvite(now, ac, &local_sdp(4000, 2)).unwrap();
    net.b.reinvite(now, bc, &local_sdp(5000, 2)).unwrap();
    let mut done = (false, false);
    for _ in 0..100 {
        net.run(Duration::from_millis(100));
        let now = net.now;
        for e in net.take_a() {
            match e {
                SipEvent::Reinvite { call, .. } => {
                    net.a.answer(now, call, &local_sdp(4000, 2)).unwrap()
                }
                SipEvent::ReinviteDone { .. } => done.0 = true,
                other => panic!("a: {other:?}"),
            }
        }
        for e in net.take_b() {
            match e {
                SipEvent::Reinvite { call, .. } => {
                    net.b.answer(now, call, &local_sdp(5000, 2)).unwrap()
                }
                SipEvent::ReinviteDone { .. } => done.1 = true,
                other => panic!("b: {other:?}"),
            }
        }
        if done == (true, true) {
            break;
        }
    }
    assert_eq!(done, (true, true));
    let flow = net.flow();
    assert_eq!(
        flow.iter()
            .filter(|m| *m == "a>491 INVITE" || *m == "b>491 INVITE")
            .count(),
        2,
        "{flow:?}"
    );
    // The retries came after the back-off: a (Call-ID owner) 2.1-4 s, b 0-2 s.
    let retry_a = net
        .wire
        .iter()
        .filter(|w| w.from_a && w.summary() == "INVITE")
        .nth(2)
        .unwrap();
    assert!(
        retry_a.at >= Duration::from_millis(2100),
        "{:?}",
        retry_a.at
    );
}

#[test]
fn digest_401_flow() {
    let mut cb = config(B, 2);
    cb.realm = Some("continuum".into());
    cb.nonce_key = [3; 32];
    let mut net = Net::new(config(A, 1), cb);
    let now = net.now;
    let mut req = request(Some(local_sdp(4000, 1)));
    req.credentials = Some(DigestCredentials {
        username: "trunk1".into(),
        password: "s3cret".into(),
    });
    let ac = net.a.invite(now, req).unwrap();
    net.run(Duration::from_millis(10));
    let eb = net.take_b();
    let SipEvent::IncomingCall {
        call: first,
        authorization: None,
        ..
    } = eb[0]
    else {
        panic!("{eb:?}")
    };
    let now = net.now;
    net.b.challenge(now, first, false).unwrap();
    net.run(Duration::from_millis(10));
    let eb = net.take_b();
    let SipEvent::IncomingCall {
        call: second,
        authorization: Some(auth),
        ..
    } = &eb[0]
    else {
        panic!("{eb:?}")
    };
    assert!(auth.contains("username=\"trunk1\""));
    let second = *second;
    let now = net.now;
    assert!(
        net.b
            .verify(now, second, Secret::Password("wrong"))
            .is_err()
    );
    assert_eq!(
        net.b
            .verify(now, second, Secret::Password("s3cret"))
            .unwrap()
            .username,
        "trunk1"
    );
    net.b.answer(now, second, &local_sdp(5000, 1)).unwrap();
    net.run(Duration::from_millis(10));
    assert!(
        net.take_a()
            .iter()
            .any(|e| matches!(e, SipEvent::Answered { call, .. } if *call == ac))
    );
    let flow = net.flow();
    assert_eq!(
        flow[..5],
        [
            "a>INVITE",
            "b>100 INVITE",
            "b>401 INVITE",
            "a>ACK",
            "a>INVITE"
        ]
    );
    let second_invite = net
        .wire
        .iter()
        .filter(|w| w.summary() == "INVITE")
        .nth(1)
        .unwrap();
    assert!(second_invite.text.contains("CSeq: 2 INVITE\r\n"));
    assert!(second_invite.text.contains("Authorization: Digest "));
}

#[test]
fn digest_407_flow_and_no_second_try() {
    let mut cb = config(B, 2);
    cb.realm = Some("proxy".into());
    let mut net = Net::new(config(A, 1), cb);
    let now = net.now;
    let mut req = request(None);
    req.credentials = Some(DigestCredentials {
        username: "u".into(),
        password: "bad".into(),
    });
    let ac = net.a.invite(now, req).unwrap();
    for _ in 0..2 {
        net.run(Duration::from_millis(10));
        let call = incoming(&net.take_b());
        let now = net.now;
        if let Some(SipEvent::IncomingCall {
            authorization: Some(h),
            ..
        }) = None::<SipEvent>
        {
            let _ = h;
        }
        assert!(net.b.verify(now, call, Secret::Password("good")).is_err());
        net.b.challenge(now, call, true).unwrap();
    }
    net.run(Duration::from_millis(10));
    assert!(net.take_b().is_empty(), "credentials are tried once");
    let ea = net.take_a();
    assert_eq!(
        ea,
        vec![SipEvent::CallFailed {
            call: ac,
            status: 407,
            reason: "Proxy Authentication Required".into()
        }]
    );
    let second = net
        .wire
        .iter()
        .filter(|w| w.summary() == "INVITE")
        .nth(1)
        .unwrap();
    assert!(second.text.contains("Proxy-Authorization: Digest "));
}

#[test]
fn session_timer_refreshes_then_expires() {
    let mut ca = config(A, 1);
    ca.session_expires = Some(90);
    let mut net = Net::new(ca, config(B, 2));
    let (ac, bc) = connected(&mut net);
    let ok = net
        .wire
        .iter()
        .find(|w| w.summary() == "200 INVITE")
        .unwrap();
    assert!(
        ok.text.contains("Session-Expires: 90;refresher=uac\r\n"),
        "{}",
        ok.text
    );
    assert!(ok.text.contains("Require: timer\r\n"));
    // a refreshes every 45 s; b answers by itself (same SDP), no events.
    net.run(Duration::from_secs(200));
    let refreshes = net
        .wire
        .iter()
        .filter(|w| w.from_a && w.summary() == "INVITE")
        .count();
    assert_eq!(refreshes, 1 + 4, "{:?}", net.flow());
    assert!(net.take_a().is_empty());
    assert!(net.take_b().is_empty());
    // Refreshes stop reaching b: it hangs up at 90 - 30 s after the last.
    net.loss = Some(Box::new(|w| w.from_a && w.summary() == "INVITE"));
    net.run(Duration::from_secs(100));
    assert!(net.take_b().contains(&SipEvent::Ended {
        call: bc,
        by_remote: false,
        cause: EndCause::SessionExpired
    }));
    assert!(
        net.take_a()
            .iter()
            .any(|e| matches!(e, SipEvent::Ended { call, by_remote: true, .. } if *call == ac))
    );
}

#[test]
fn retransmissions_survive_loss() {
    let mut net = Net::pair();
    // Lose the first INVITE, the first 200 and the first BYE.
    let mut lost = std::collections::HashSet::new();
    net.loss = Some(Box::new(move |w| {
        let s = w.summary();
        matches!(s.as_str(), "INVITE" | "200 INVITE" | "BYE") && lost.insert(s)
    }));
    let now = net.now;
    let ac = net
        .a
        .invite(now, request(Some(local_sdp(4000, 1))))
        .unwrap();
    net.run(Duration::from_secs(1));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.run(Duration::from_secs(2));
    assert!(
        net.take_a()
            .iter()
            .any(|e| matches!(e, SipEvent::Answered { .. }))
    );
    assert_eq!(net.take_b(), vec![SipEvent::Confirmed { call: bc }]);
    let now = net.now;
    net.a.hangup(now, ac).unwrap();
    net.run(Duration::from_secs(2));
    assert!(
        net.take_b()
            .iter()
            .any(|e| matches!(e, SipEvent::Ended { .. }))
    );
    assert!(
        net.take_a()
            .iter()
            .any(|e| matches!(e, SipEvent::Ended { .. }))
    );
    let dropped: Vec<String> = net
        .wire
        .iter()
        .filter(|w| w.dropped)
        .map(|w| w.summary())
        .collect();
    assert_eq!(dropped, ["INVITE", "200 INVITE", "BYE"]);
    // Exactly one IncomingCall despite the retransmitted INVITE.
    net.run(Duration::from_secs(40));
    assert_eq!(
        (net.a.transaction_count(), net.b.transaction_count()),
        (0, 0)
    );
}

#[test]
fn unacked_2xx_ends_the_call() {
    let mut net = Net::pair();
    net.loss = Some(Box::new(|w| w.summary() == "ACK"));
    let now = net.now;
    net.a.invite(now, request(None)).unwrap();
    net.run(Duration::from_millis(10));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.run(Duration::from_secs(40));
    assert!(net.take_b().contains(&SipEvent::Ended {
        call: bc,
        by_remote: false,
        cause: EndCause::NoAck
    }));
    let oks = net
        .wire
        .iter()
        .filter(|w| w.summary() == "200 INVITE")
        .count();
    assert!(oks >= 7, "2xx retransmitted until Timer L: {oks}");
}

#[test]
fn options_keepalive() {
    let mut net = Net::pair();
    let now = net.now;
    net.a.options(now, addr(B), TransportKind::Udp).unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(
        net.take_a(),
        vec![SipEvent::OptionsResult {
            peer: addr(B),
            transport: TransportKind::Udp,
            alive: true,
            status: Some(200)
        }]
    );
    let ok = &net.wire[1].text;
    assert!(ok.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY\r\n"));
    assert!(ok.contains("Accept: application/sdp\r\n"));
    net.loss = Some(Box::new(|_| true));
    let now = net.now;
    net.a.options(now, addr(B), TransportKind::Udp).unwrap();
    net.run(Duration::from_secs(33));
    assert_eq!(
        net.take_a(),
        vec![SipEvent::OptionsResult {
            peer: addr(B),
            transport: TransportKind::Udp,
            alive: false,
            status: None
        }]
    );
}

#[test]
fn a_transport_error_ends_the_options_probe_at_once() {
    let mut net = Net::pair();
    net.loss = Some(Box::new(|_| true));
    let now = net.now;
    net.a.options(now, addr(B), TransportKind::Tcp).unwrap();
    net.flush();
    assert!(net.take_a().is_empty(), "no result before the error");
    // Another flow's failure is not this probe's.
    net.a.transport_failed(now, TransportKind::Udp, addr(B));
    net.flush();
    assert!(net.take_a().is_empty());
    net.a.transport_failed(now, TransportKind::Tcp, addr(B));
    net.flush();
    assert_eq!(
        net.take_a(),
        vec![SipEvent::OptionsResult {
            peer: addr(B),
            transport: TransportKind::Tcp,
            alive: false,
            status: None
        }]
    );
    assert_eq!(net.a.transaction_count(), 0, "the transaction is gone");
}

#[test]
fn dtmf_info_refer_and_notify() {
    let mut net = Net::pair();
    let (ac, bc) = connected(&mut net);
    let now = net.now;
    net.a.send_dtmf_info(now, ac, '5').unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(
        net.take_b(),
        vec![SipEvent::Dtmf {
            call: bc,
            digit: '5',
            duration_ms: 160
        }]
    );
    let info = net.wire.iter().find(|w| w.summary() == "INFO").unwrap();
    assert!(
        info.text
            .contains("Content-Type: application/dtmf-relay\r\n")
    );
    assert!(info.text.ends_with("Signal=5\r\nDuration=160\r\n"));
    let now = net.now;
    net.b.refer(now, bc, "sip:+15550111@trunk.example").unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(
        net.take_a(),
        vec![SipEvent::Refer {
            call: ac,
            target: "sip:+15550111@trunk.example".into()
        }]
    );
    let eb = net.take_b();
    assert!(
        eb.contains(&SipEvent::ReferResult {
            call: bc,
            status: 202
        }),
        "{eb:?}"
    );
    assert!(
        eb.contains(&SipEvent::ReferProgress {
            call: bc,
            status: 100
        }),
        "{eb:?}"
    );
    let now = net.now;
    net.a.refer_progress(now, ac, 200).unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(
        net.take_b(),
        vec![SipEvent::ReferProgress {
            call: bc,
            status: 200
        }]
    );
}

#[test]
fn hold_reinvite_reaches_the_glue() {
    let mut net = Net::pair();
    let (ac, bc) = connected(&mut net);
    let hold = local_sdp(4000, 2).replace("a=sendrecv", "a=sendonly");
    let now = net.now;
    net.a.reinvite(now, ac, &hold).unwrap();
    net.run(Duration::from_millis(10));
    let eb = net.take_b();
    assert!(
        matches!(
            &eb[..],
            [SipEvent::Reinvite {
                hold: true,
                offer: Some(_),
                ..
            }]
        ),
        "{eb:?}"
    );
    let now = net.now;
    net.b.reject(now, bc, 488).unwrap();
    net.run(Duration::from_millis(10));
    assert_eq!(
        net.take_a(),
        vec![SipEvent::ReinviteFailed {
            call: ac,
            status: 488
        }]
    );
    // The call is still up.
    let now = net.now;
    net.a.hangup(now, ac).unwrap();
    net.run(Duration::from_millis(10));
    assert!(net.take_b().contains(&SipEvent::Ended {
        call: bc,
        by_remote: true,
        cause: EndCause::Bye
    }));
}

#[test]
fn answer_without_g711_is_488() {
    let mut net = Net::pair();
    let g729 = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    let now = net.now;
    let ac = net.a.invite(now, request(Some(g729.into()))).unwrap();
    net.run(Duration::from_millis(10));
    assert!(net.take_b().is_empty());
    assert_eq!(
        net.take_a(),
        vec![SipEvent::CallFailed {
            call: ac,
            status: 488,
            reason: "Not Acceptable Here".into()
        }]
    );
}

#[test]
fn uas_hangup_before_ack_waits_for_it() {
    let mut net = Net::pair();
    // Hold back the ACK once: b's hangup must wait for it.
    let mut first = true;
    net.loss = Some(Box::new(move |w| {
        let drop = first && w.summary() == "ACK";
        if drop {
            first = false;
        }
        drop
    }));
    let now = net.now;
    net.a.invite(now, request(None)).unwrap();
    net.run(Duration::from_millis(10));
    let bc = incoming(&net.take_b());
    let now = net.now;
    net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    net.b.hangup(now, bc).unwrap();
    net.run(Duration::from_millis(100));
    assert!(!net.flow().contains(&"b>BYE".to_string()));
    net.run(Duration::from_secs(2));
    let flow = net.flow();
    let ack = flow.iter().position(|m| m == "a>ACK").unwrap();
    let bye = flow.iter().position(|m| m == "b>BYE").unwrap();
    assert!(ack < bye, "{flow:?}");
}

/// Many calls of every common shape, then the timers: every table of both
/// endpoints is empty again (a leak per call shows up here first).
#[test]
fn many_calls_leave_no_state_behind() {
    let mut net = Net::pair();
    for i in 0..200u32 {
        let now = net.now;
        let ac = net
            .a
            .invite(now, request(Some(local_sdp(4000, 1))))
            .unwrap();
        net.run(Duration::from_millis(10));
        let bc = incoming(&net.take_b());
        let now = net.now;
        match i % 5 {
            // sipp's shape: answered, the caller hangs up.
            0 | 1 => {
                net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
                net.run(Duration::from_millis(10));
                let now = net.now;
                net.a.hangup(now, ac).unwrap();
            }
            // Answered, the callee hangs up.
            2 => {
                net.b.ring(now, bc).unwrap();
                net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
                net.run(Duration::from_millis(10));
                let now = net.now;
                net.b.hangup(now, bc).unwrap();
            }
            // Refused.
            3 => net.b.reject(now, bc, 486).unwrap(),
            // Cancelled while ringing.
            _ => {
                net.b.ring(now, bc).unwrap();
                net.run(Duration::from_millis(10));
                let now = net.now;
                net.a.cancel(now, ac).unwrap();
            }
        }
        net.run(Duration::from_millis(10));
        net.take_a();
        net.take_b();
    }
    net.run(Duration::from_secs(64));
    assert_eq!(net.a.live_state(), Default::default());
    assert_eq!(net.b.live_state(), Default::default());
}

/// A burst: a thousand calls set up and hung up within a second, so every
/// transaction lingers (Timer J/L) at once. Once the timers have run, the
/// tables give their peak memory back: hash tables never shrink by
/// themselves, and a burst looked like a leak of kilobytes per call.
#[test]
fn a_burst_of_calls_gives_its_table_memory_back() {
    let mut net = Net::pair();
    let idle = net.b.table_bytes();
    let now = net.now;
    let calls: Vec<CallId> = (0..1000)
        .map(|_| {
            net.a
                .invite(now, request(Some(local_sdp(4000, 1))))
                .unwrap()
        })
        .collect();
    net.flush();
    let incoming: Vec<CallId> = net
        .take_b()
        .iter()
        .filter_map(|e| match e {
            SipEvent::IncomingCall { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(incoming.len(), calls.len());
    for bc in incoming {
        net.b.answer(now, bc, &local_sdp(5000, 1)).unwrap();
    }
    net.flush();
    for ac in &calls {
        net.a.hangup(now, *ac).unwrap();
    }
    net.flush();
    let peak = net.b.table_bytes();
    assert_eq!(
        net.b.live_state().server_transactions,
        2000,
        "INVITE and BYE linger"
    );
    net.run(Duration::from_secs(64));
    assert!(net.a.live_state().is_empty(), "{:?}", net.a.live_state());
    assert!(net.b.live_state().is_empty(), "{:?}", net.b.live_state());
    let after = net.b.table_bytes();
    assert!(
        after < 64 * 1024 && after * 10 < peak,
        "tables hold {after} bytes after the burst (idle {idle}, peak {peak})"
    );
    assert!(net.a.table_bytes() < 64 * 1024, "{}", net.a.table_bytes());
}
