//! Anything a SIP peer can send: the parser, the stream framer and the
//! endpoint's transaction/dialog logic must answer or drop it, never panic.
//! The input is cut at the first 0xFF into messages (0xFF never appears in
//! SIP text), fed over UDP and TCP, with the glue answering every call and
//! time moving on between messages so timers fire too.
#![no_main]
use continuum_sip::{Config, Endpoint, Output, SipEvent, Transport, TransportKind};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = "192.0.2.2:5060".parse().unwrap();
    let remote: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    let mut config = Config::new(
        "fuzz.test",
        vec![(TransportKind::Udp, local), (TransportKind::Tcp, local)],
    );
    config.rng_seed = Some(1);
    config.realm = Some("fuzz".into());
    let mut ep = Endpoint::new(config);
    let mut now = Instant::now();
    for (i, part) in data.split(|b| *b == 0xff).enumerate() {
        let kind = if i % 2 == 0 {
            TransportKind::Udp
        } else {
            TransportKind::Tcp
        };
        ep.handle_input(
            now,
            Transport {
                kind,
                local,
                remote,
            },
            part,
        );
        while let Some(out) = ep.poll_output() {
            if let Output::Event(SipEvent::IncomingCall { call, .. }) = out {
                let _ = ep.ring(now, call);
                let _ = ep.answer(now, call, SDP);
            }
        }
        now += Duration::from_millis(700);
        ep.handle_timeout(now);
        while ep.poll_output().is_some() {}
    }
});
