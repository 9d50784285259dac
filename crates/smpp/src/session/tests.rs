//! The session against a scripted SMSC, with fake time.

use super::*;
use crate::pdu::{Tlv, tag};
use crate::receipt::MessageState;
use proptest::prelude::*;

const SECOND: Duration = Duration::from_secs(1);

fn config() -> Config {
    Config::new("esme", "secret")
}

fn req(text: &str) -> SubmitRequest {
    SubmitRequest {
        source: "Clinic".into(),
        destination: "+15551230000".into(),
        text: text.into(),
        registered_delivery: true,
    }
}

/// Everything the session wants written, decoded.
fn sent(s: &mut Session<u32>) -> Vec<Pdu> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|b| Pdu::decode(&b).expect("the session writes valid PDUs"))
        .collect()
}

fn events(s: &mut Session<u32>) -> Vec<Event<u32>> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn feed(s: &mut Session<u32>, now: Instant, sequence: u32, status: Status, body: Body) {
    let bytes = Pdu {
        sequence,
        status,
        body,
    }
    .encode()
    .unwrap();
    s.handle_input(now, &bytes);
}

fn submit_resp(id: &str) -> Body {
    Body::SubmitSmResp {
        message_id: id.into(),
    }
}

fn submits(pdus: &[Pdu]) -> Vec<(u32, Sm)> {
    pdus.iter()
        .filter_map(|p| match &p.body {
            Body::SubmitSm(sm) => Some((p.sequence, sm.clone())),
            _ => None,
        })
        .collect()
}

fn bound(config: Config) -> (Session<u32>, Instant) {
    let now = Instant::now();
    let mut s = Session::new(config).unwrap();
    s.bind(now);
    let bind = sent(&mut s);
    assert_eq!(bind.len(), 1);
    feed(
        &mut s,
        now,
        bind[0].sequence,
        Status::OK,
        Body::BindTransceiverResp {
            system_id: "smsc".into(),
            tlvs: vec![],
        },
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Bound {
            system_id: "smsc".into()
        }]
    );
    (s, now)
}

#[test]
fn binds_as_a_3_4_transceiver() {
    let now = Instant::now();
    let mut s: Session<u32> = Session::new(config()).unwrap();
    assert_eq!(s.state(), State::Unbound);
    s.bind(now);
    assert_eq!(s.state(), State::Binding);
    let pdus = sent(&mut s);
    let Body::BindTransceiver(b) = &pdus[0].body else {
        panic!("not a bind: {:?}", pdus[0]);
    };
    assert_eq!(
        (
            b.system_id.as_str(),
            b.password.as_str(),
            b.interface_version
        ),
        ("esme", "secret", 0x34)
    );
    assert_eq!(pdus[0].sequence, 1);
    // Submits made while binding wait for the bind.
    s.submit(now, 1, req("hi")).unwrap();
    assert!(sent(&mut s).is_empty());
    feed(
        &mut s,
        now,
        1,
        Status::OK,
        Body::BindTransceiverResp {
            system_id: "smsc".into(),
            tlvs: vec![],
        },
    );
    assert_eq!(s.state(), State::Bound);
    assert_eq!(submits(&sent(&mut s)).len(), 1);
}

#[test]
fn a_refused_bind_closes_and_returns_queued_messages() {
    let now = Instant::now();
    let mut s = Session::new(config()).unwrap();
    s.bind(now);
    s.submit(now, 7, req("hi")).unwrap();
    sent(&mut s);
    feed(
        &mut s,
        now,
        1,
        Status::INVPASWD,
        Body::BindTransceiverResp {
            system_id: String::new(),
            tlvs: vec![],
        },
    );
    assert_eq!(
        events(&mut s),
        vec![
            Event::BindFailed {
                status: Status::INVPASWD
            },
            Event::NotSent { msg_ref: 7 },
            Event::Closed {
                reason: CloseReason::BindRefused(Status::INVPASWD)
            },
        ]
    );
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.submit(now, 8, req("x")), Err(SubmitError::Closed));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn an_unanswered_bind_times_out() {
    let now = Instant::now();
    let mut s: Session<u32> = Session::new(config()).unwrap();
    s.bind(now);
    assert_eq!(s.poll_timeout(), Some(now + 10 * SECOND));
    s.handle_timeout(now + 9 * SECOND);
    assert!(events(&mut s).is_empty());
    s.handle_timeout(now + 10 * SECOND);
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            reason: CloseReason::BindTimeout
        }]
    );
}

#[test]
fn the_window_bounds_unanswered_submits() {
    let mut c = config();
    c.window = 2;
    let (mut s, now) = bound(c);
    for i in 0..5 {
        s.submit(now, i, req(&format!("message {i}"))).unwrap();
    }
    let first = submits(&sent(&mut s));
    assert_eq!(first.len(), 2);
    assert_eq!((s.in_flight(), s.queued()), (2, 3));
    // Nothing more goes out, whatever the time, until a response.
    s.handle_timeout(now + SECOND);
    assert!(submits(&sent(&mut s)).is_empty());
    feed(
        &mut s,
        now + SECOND,
        first[1].0,
        Status::OK,
        submit_resp("m1"),
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Submitted {
            msg_ref: 1,
            message_ids: vec!["m1".into()]
        }]
    );
    let next = submits(&sent(&mut s));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1.short_message, b"message 2");
    assert_eq!((s.in_flight(), s.queued()), (2, 2));
}

#[test]
fn a_long_message_goes_as_segments_and_succeeds_with_every_id() {
    let (mut s, now) = bound(config());
    let text = "Your appointment is confirmed. ".repeat(12);
    s.submit(now, 1, req(&text)).unwrap();
    let segs = submits(&sent(&mut s));
    assert_eq!(segs.len(), 3);
    let reference = segs[0].1.short_message[3];
    for (i, (_, sm)) in segs.iter().enumerate() {
        assert_eq!(sm.esm_class, esm::UDHI);
        assert_eq!(sm.data_coding, 0);
        assert_eq!(sm.registered_delivery, 1);
        assert_eq!((sm.source.ton, sm.source.addr.as_str()), (5, "Clinic"));
        assert_eq!(
            (
                sm.destination.ton,
                sm.destination.npi,
                sm.destination.addr.as_str()
            ),
            (1, 1, "15551230000")
        );
        assert_eq!(
            &sm.short_message[..6],
            &[5, 0, 3, reference, 3, i as u8 + 1]
        );
    }
    // Answers out of order; ids come back in segment order.
    feed(&mut s, now, segs[2].0, Status::OK, submit_resp("c"));
    feed(&mut s, now, segs[0].0, Status::OK, submit_resp("a"));
    assert!(events(&mut s).is_empty());
    feed(&mut s, now, segs[1].0, Status::OK, submit_resp("b"));
    assert_eq!(
        events(&mut s),
        vec![Event::Submitted {
            msg_ref: 1,
            message_ids: vec!["a".into(), "b".into(), "c".into()]
        }]
    );
    // The next long message gets another reference.
    s.submit(now, 2, req(&text)).unwrap();
    let segs = submits(&sent(&mut s));
    assert_eq!(segs[0].1.short_message[3], reference.wrapping_add(1));
}

#[test]
fn an_unanswered_submit_is_unconfirmed_and_the_link_is_probed() {
    let (mut s, now) = bound(config());
    s.submit(now, 1, req("hello")).unwrap();
    let seq = submits(&sent(&mut s))[0].0;
    assert_eq!(s.poll_timeout(), Some(now + 10 * SECOND));
    s.handle_timeout(now + 10 * SECOND);
    assert_eq!(events(&mut s), vec![Event::Unconfirmed { msg_ref: 1 }]);
    assert_eq!(s.in_flight(), 0);
    let probe = sent(&mut s);
    assert!(matches!(
        probe[..],
        [Pdu {
            body: Body::EnquireLink,
            ..
        }]
    ));
    // A late answer changes nothing.
    feed(
        &mut s,
        now + 11 * SECOND,
        seq,
        Status::OK,
        submit_resp("late"),
    );
    assert!(events(&mut s).is_empty());
    assert_eq!(s.state(), State::Bound);
}

#[test]
fn enquire_link_when_idle_and_a_dead_link_is_declared() {
    let mut c = config();
    c.enquire_link_interval = 30 * SECOND;
    let (mut s, now) = bound(c);
    assert_eq!(s.poll_timeout(), Some(now + 30 * SECOND));
    s.handle_timeout(now + 30 * SECOND);
    let e = sent(&mut s);
    assert!(matches!(
        e[..],
        [Pdu {
            body: Body::EnquireLink,
            ..
        }]
    ));
    feed(
        &mut s,
        now + 31 * SECOND,
        e[0].sequence,
        Status::OK,
        Body::EnquireLinkResp,
    );
    // Quiet again: the next one is due 30 s after the last byte received.
    assert_eq!(s.poll_timeout(), Some(now + 61 * SECOND));
    s.submit(now + 40 * SECOND, 1, req("in flight")).unwrap();
    sent(&mut s);
    s.handle_timeout(now + 61 * SECOND);
    assert!(matches!(
        sent(&mut s)[..],
        [Pdu {
            body: Body::EnquireLink,
            ..
        }]
    ));
    // The submit times out at 50 s; enquire_link is already outstanding.
    s.handle_timeout(now + 50 * SECOND);
    assert_eq!(events(&mut s), vec![Event::Unconfirmed { msg_ref: 1 }]);
    s.submit(now + 60 * SECOND, 2, req("queued?")).unwrap();
    sent(&mut s);
    s.handle_timeout(now + 71 * SECOND);
    assert_eq!(
        events(&mut s),
        vec![
            Event::Unconfirmed { msg_ref: 2 },
            Event::Closed {
                reason: CloseReason::LinkDead
            }
        ]
    );
}

#[test]
fn answers_the_smsc() {
    let (mut s, now) = bound(config());
    feed(&mut s, now, 77, Status::OK, Body::EnquireLink);
    let r = sent(&mut s);
    assert_eq!(
        r,
        vec![Pdu {
            sequence: 77,
            status: Status::OK,
            body: Body::EnquireLinkResp
        }]
    );
    // A receipt, correlated by the TLV.
    let receipt = Sm {
        esm_class: esm::DELIVERY_RECEIPT,
        short_message: b"id:xyz sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 text:hi".to_vec(),
        tlvs: vec![Tlv {
            tag: tag::RECEIPTED_MESSAGE_ID,
            value: b"xyz\0".to_vec(),
        }],
        ..Sm::default()
    };
    feed(&mut s, now, 78, Status::OK, Body::DeliverSm(receipt));
    assert_eq!(
        events(&mut s),
        vec![Event::Receipt(Receipt {
            message_id: "xyz".into(),
            state: MessageState::Delivered,
            error: None
        })]
    );
    assert_eq!(
        sent(&mut s),
        vec![Pdu {
            sequence: 78,
            status: Status::OK,
            body: Body::DeliverSmResp {
                message_id: String::new()
            }
        }]
    );
    // A concatenated UCS-2 message from a handset, parts out of order.
    let text = "Здравствуйте! ".repeat(6);
    let segs = text::split(&text, 9, 10).unwrap();
    assert_eq!(segs.parts.len(), 2);
    for (i, part) in segs.parts.iter().enumerate().rev() {
        let sm = Sm {
            source: Address {
                ton: 1,
                npi: 1,
                addr: "15557654321".into(),
            },
            destination: Address {
                ton: 0,
                npi: 1,
                addr: "12345".into(),
            },
            esm_class: esm::UDHI,
            data_coding: text::DCS_UCS2,
            short_message: part.clone(),
            ..Sm::default()
        };
        feed(&mut s, now, 80 + i as u32, Status::OK, Body::DeliverSm(sm));
    }
    assert_eq!(
        events(&mut s),
        vec![Event::Inbound(Inbound {
            from: "15557654321".into(),
            to: "12345".into(),
            text,
            incomplete: false
        })]
    );
    assert_eq!(sent(&mut s).len(), 2);
    // unbind from the SMSC.
    s.submit(now, 5, req("in flight")).unwrap();
    sent(&mut s);
    feed(&mut s, now, 90, Status::OK, Body::Unbind);
    assert_eq!(
        sent(&mut s),
        vec![Pdu {
            sequence: 90,
            status: Status::OK,
            body: Body::UnbindResp
        }]
    );
    assert_eq!(
        events(&mut s),
        vec![
            Event::Unconfirmed { msg_ref: 5 },
            Event::Closed {
                reason: CloseReason::UnbindByPeer
            }
        ]
    );
}

#[test]
fn sequence_numbers_wrap_to_one() {
    let (mut s, now) = bound(config());
    s.set_next_sequence(MAX_SEQUENCE);
    s.submit(now, 1, req("a")).unwrap();
    s.submit(now, 2, req("b")).unwrap();
    let seqs: Vec<u32> = submits(&sent(&mut s)).iter().map(|(q, _)| *q).collect();
    assert_eq!(seqs, vec![MAX_SEQUENCE, 1]);
    // A number still in flight is skipped.
    s.set_next_sequence(MAX_SEQUENCE);
    s.submit(now, 3, req("c")).unwrap();
    let seqs: Vec<u32> = submits(&sent(&mut s)).iter().map(|(q, _)| *q).collect();
    assert_eq!(seqs, vec![2]);
}

#[test]
fn throttling_requeues_and_pauses_within_the_window() {
    let mut c = config();
    c.window = 3;
    let (mut s, now) = bound(c);
    for i in 1..=4 {
        s.submit(now, i, req(&format!("m{i}"))).unwrap();
    }
    let first = submits(&sent(&mut s));
    assert_eq!(first.len(), 3);
    feed(&mut s, now, first[0].0, Status::THROTTLED, submit_resp(""));
    assert_eq!(
        events(&mut s),
        vec![Event::Throttled {
            status: Status::THROTTLED,
            pause: SECOND
        }]
    );
    // A second throttling answer during the pause does not lengthen it.
    feed(&mut s, now, first[1].0, Status::MSGQFUL, submit_resp(""));
    assert!(events(&mut s).is_empty());
    feed(&mut s, now, first[2].0, Status::OK, submit_resp("id3"));
    assert_eq!(
        events(&mut s),
        vec![Event::Submitted {
            msg_ref: 3,
            message_ids: vec!["id3".into()]
        }]
    );
    // Paused: the window has room but nothing goes out.
    assert!(submits(&sent(&mut s)).is_empty());
    assert_eq!(s.queued(), 3);
    assert_eq!(s.poll_timeout(), Some(now + SECOND));
    s.handle_timeout(now + SECOND);
    let again = submits(&sent(&mut s));
    let texts: Vec<&[u8]> = again.iter().map(|(_, sm)| &sm.short_message[..]).collect();
    assert_eq!(texts, vec![&b"m1"[..], b"m2", b"m4"]);
    for (seq, _) in &again {
        feed(&mut s, now + SECOND, *seq, Status::OK, submit_resp("ok"));
    }
    let done: Vec<u32> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            Event::Submitted { msg_ref, .. } => msg_ref,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(done, vec![1, 2, 4]);
}

#[test]
fn throttling_backs_off_and_gives_up() {
    let mut c = config();
    c.max_throttle_retries = 3;
    let (mut s, mut now) = bound(c);
    s.submit(now, 1, req("m")).unwrap();
    let mut pauses = Vec::new();
    loop {
        let sub = submits(&sent(&mut s));
        assert_eq!(sub.len(), 1);
        feed(&mut s, now, sub[0].0, Status::THROTTLED, submit_resp(""));
        match events(&mut s).pop() {
            Some(Event::Throttled { pause, .. }) => {
                pauses.push(pause);
                now += pause;
                s.handle_timeout(now);
            }
            Some(other) => {
                assert_eq!(
                    other,
                    Event::SubmitFailed {
                        msg_ref: 1,
                        status: Status::THROTTLED,
                        retryable: true
                    }
                );
                break;
            }
            None => panic!("no event"),
        }
    }
    assert_eq!(pauses, vec![SECOND, 2 * SECOND, 4 * SECOND]);
}

#[test]
fn a_permanent_refusal_fails_the_message_and_drops_its_other_segments() {
    let mut c = config();
    c.window = 1;
    let (mut s, now) = bound(c);
    s.submit(now, 1, req(&"long ".repeat(80))).unwrap();
    s.submit(now, 2, req("next")).unwrap();
    let first = submits(&sent(&mut s));
    // Segments 2 and 3, and the next message.
    assert_eq!(s.queued(), 3);
    feed(&mut s, now, first[0].0, Status::INVDSTADR, submit_resp(""));
    assert_eq!(
        events(&mut s),
        vec![Event::SubmitFailed {
            msg_ref: 1,
            status: Status::INVDSTADR,
            retryable: false
        }]
    );
    let next = submits(&sent(&mut s));
    assert_eq!(next[0].1.short_message, b"next");
    assert_eq!(s.queued(), 0);
}

#[test]
fn a_generic_nack_for_a_submit_fails_it() {
    let (mut s, now) = bound(config());
    s.submit(now, 1, req("m")).unwrap();
    let seq = submits(&sent(&mut s))[0].0;
    feed(&mut s, now, seq, Status::INVCMDLEN, Body::GenericNack);
    assert_eq!(
        events(&mut s),
        vec![Event::SubmitFailed {
            msg_ref: 1,
            status: Status::INVCMDLEN,
            retryable: false
        }]
    );
}

#[test]
fn submits_per_second_are_spaced() {
    let mut c = config();
    c.max_submits_per_sec = 4;
    let (mut s, now) = bound(c);
    for i in 0..3 {
        s.submit(now, i, req("x")).unwrap();
    }
    assert_eq!(submits(&sent(&mut s)).len(), 1);
    let quarter = SECOND / 4;
    assert_eq!(s.poll_timeout(), Some(now + quarter));
    s.handle_timeout(now + quarter - Duration::from_millis(1));
    assert!(submits(&sent(&mut s)).is_empty());
    s.handle_timeout(now + quarter);
    assert_eq!(submits(&sent(&mut s)).len(), 1);
    // A late timer keeps the schedule.
    s.handle_timeout(now + 2 * quarter + Duration::from_millis(10));
    assert_eq!(submits(&sent(&mut s)).len(), 1);
}

#[test]
fn closing_reports_in_flight_as_unconfirmed_and_queued_as_not_sent() {
    let mut c = config();
    c.window = 1;
    let (mut s, now) = bound(c);
    s.submit(now, 1, req("on the wire")).unwrap();
    s.submit(now, 2, req("waiting")).unwrap();
    sent(&mut s);
    s.connection_lost();
    assert_eq!(
        events(&mut s),
        vec![
            Event::Unconfirmed { msg_ref: 1 },
            Event::NotSent { msg_ref: 2 },
            Event::Closed {
                reason: CloseReason::ConnectionLost
            }
        ]
    );
    assert!(s.poll_transmit().is_none());
}

#[test]
fn a_partly_sent_message_is_unconfirmed() {
    let mut c = config();
    c.window = 1;
    let (mut s, now) = bound(c);
    s.submit(now, 1, req(&"long ".repeat(80))).unwrap();
    let seq = submits(&sent(&mut s))[0].0;
    feed(&mut s, now, seq, Status::OK, submit_resp("a"));
    sent(&mut s);
    s.connection_lost();
    assert_eq!(events(&mut s)[0], Event::Unconfirmed { msg_ref: 1 });
}

#[test]
fn our_unbind_waits_for_in_flight_answers() {
    let (mut s, now) = bound(config());
    s.submit(now, 1, req("m")).unwrap();
    let seq = submits(&sent(&mut s))[0].0;
    s.unbind(now);
    let u = sent(&mut s);
    assert!(matches!(
        u[..],
        [Pdu {
            body: Body::Unbind,
            ..
        }]
    ));
    assert_eq!(s.submit(now, 2, req("x")), Err(SubmitError::Unbinding));
    feed(&mut s, now, seq, Status::OK, submit_resp("a"));
    feed(&mut s, now, u[0].sequence, Status::OK, Body::UnbindResp);
    assert_eq!(
        events(&mut s),
        vec![
            Event::Submitted {
                msg_ref: 1,
                message_ids: vec!["a".into()]
            },
            Event::Closed {
                reason: CloseReason::Unbound
            }
        ]
    );
}

#[test]
fn undecodable_pdus_are_nacked_with_the_right_status() {
    let (mut s, now) = bound(config());
    // data_sm (0x103) is not supported.
    s.handle_input(now, &[0, 0, 0, 16, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 42]);
    assert_eq!(
        sent(&mut s),
        vec![Pdu {
            sequence: 42,
            status: Status::INVCMDID,
            body: Body::GenericNack
        }]
    );
    // A deliver_sm cut short.
    s.handle_input(
        now,
        &[0, 0, 0, 18, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 43, 0, 1],
    );
    assert_eq!(
        sent(&mut s),
        vec![Pdu {
            sequence: 43,
            status: Status::INVCMDLEN,
            body: Body::GenericNack
        }]
    );
    // Unknown responses and alert_notification are dropped.
    s.handle_input(now, &[0, 0, 0, 16, 0x80, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 44]);
    assert!(sent(&mut s).is_empty());
    assert_eq!(s.state(), State::Bound);
    // A command_length out of bounds cannot be framed past: nack and close.
    s.handle_input(now, &[0, 0, 0, 8, 0, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0, 45]);
    assert_eq!(
        sent(&mut s),
        vec![Pdu {
            sequence: 45,
            status: Status::INVCMDLEN,
            body: Body::GenericNack
        }]
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            reason: CloseReason::Protocol(DecodeError::LengthTooShort(8))
        }]
    );
}

#[test]
fn input_split_anywhere_is_reassembled() {
    let (mut s, now) = bound(config());
    let mut bytes = Vec::new();
    for seq in [10, 11] {
        bytes.extend(
            Pdu {
                sequence: seq,
                status: Status::OK,
                body: Body::EnquireLink,
            }
            .encode()
            .unwrap(),
        );
    }
    for b in &bytes {
        s.handle_input(now, std::slice::from_ref(b));
    }
    let seqs: Vec<u32> = sent(&mut s).iter().map(|p| p.sequence).collect();
    assert_eq!(seqs, vec![10, 11]);
}

#[test]
fn the_password_stays_out_of_debug_output() {
    let c = config();
    assert!(!format!("{c:?}").contains("secret"));
    let mut s: Session<u32> = Session::new(c).unwrap();
    s.bind(Instant::now());
    assert!(!format!("{:?}", sent(&mut s)).contains("secret"));
}

#[test]
fn bad_requests_are_typed_errors() {
    let (mut s, now) = bound(config());
    let mut r = req("x");
    r.destination = "Clinic".into();
    assert_eq!(
        s.submit(now, 1, r.clone()).unwrap_err().to_string(),
        "destination: not a phone number (+ and digits, or digits)"
    );
    r.destination = "+1".into();
    r.source = "A very long sender".into();
    assert!(matches!(
        s.submit(now, 1, r),
        Err(SubmitError::Address {
            field: "source",
            ..
        })
    ));
    assert_eq!(
        s.submit(now, 1, req(&"x".repeat(153 * 10 + 1))),
        Err(SubmitError::Split(SplitError::TooManySegments {
            needed: 11,
            max: 10
        }))
    );
    assert_eq!(
        Session::<u32>::new(Config::new("a-system-id-that-is-too-long", "pw"))
            .err()
            .unwrap()
            .to_string(),
        "system_id: longer than 15 characters"
    );
}

proptest! {
    #[test]
    fn any_input_from_the_smsc_is_handled(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12),
        steps in proptest::collection::vec(0u64..20_000, 12),
    ) {
        let (mut s, mut now) = bound(config());
        s.submit(now, 1, req(&"long ".repeat(80))).unwrap();
        for (chunk, step) in chunks.iter().zip(steps) {
            s.handle_input(now, chunk);
            now += Duration::from_millis(step);
            s.handle_timeout(now);
            while let Some(bytes) = s.poll_transmit() {
                prop_assert!(Pdu::decode(&bytes).is_ok());
            }
            while s.poll_event().is_some() {}
        }
    }
}
