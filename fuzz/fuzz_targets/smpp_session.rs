//! Anything an SMSC can send: the SMPP codec, the receipt parser, the text
//! decoders and the sans-IO session must answer or drop it, never panic.
//! The session is bound first and has a long message in flight, so the
//! input reaches submit_sm_resp, throttling, deliver_sm (receipts and
//! concatenated parts) and the timers. The input is fed in chunks whose
//! sizes come from the input, with time moving between them; whatever the
//! session writes must decode, and the window must hold.
#![no_main]
use continuum_smpp::pdu::{Body, Pdu, Status, frame_len};
use continuum_smpp::{Config, Session, State, SubmitRequest, receipt, text};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    let _ = Pdu::decode(data);
    let _ = receipt::parse_text(&String::from_utf8_lossy(data));
    if let Some((&dcs, rest)) = data.split_first() {
        let _ = text::decode(dcs, rest);
        let _ = text::parse_udh(rest);
    }

    let mut config = Config::new("fuzz", "pw");
    config.window = 3;
    let window = config.window;
    let mut s: Session<u32> = Session::new(config).unwrap();
    let mut now = Instant::now();
    s.bind(now);
    let bind_resp = Pdu {
        sequence: 1,
        status: Status::OK,
        body: Body::BindTransceiverResp {
            system_id: "smsc".into(),
            tlvs: vec![],
        },
    };
    s.handle_input(now, &bind_resp.encode().unwrap());
    let _ = s.submit(
        now,
        1,
        SubmitRequest {
            source: "+15550001111".into(),
            destination: "+15550002222".into(),
            text: "fuzz ".repeat(70),
            registered_delivery: true,
        },
    );
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let len = (n as usize % 64 + 1).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        s.handle_input(now, chunk);
        now += Duration::from_millis(u64::from(n) * 97);
        s.handle_timeout(now);
        assert!(s.in_flight() <= window);
        while let Some(bytes) = s.poll_transmit() {
            assert!(Pdu::decode(&bytes).is_ok());
        }
        while s.poll_event().is_some() {}
        if s.state() == State::Closed {
            assert!(s.poll_timeout().is_none());
            break;
        }
    }
});
