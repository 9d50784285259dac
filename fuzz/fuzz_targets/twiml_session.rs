//! TwiML comes from customers' webhooks (any bytes): parsing must never
//! panic, and a call driven by whatever comes back must end once the caller
//! hangs up, whatever digits and timeouts happen on the way.
#![no_main]
use continuum_ivr::{CallInfo, Facts, FetchedDoc, Input, Method, Program, Session};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let (doc, script) = data.split_at(data.len() / 2);
    let body = String::from_utf8_lossy(doc).into_owned();
    let _ = continuum_ivr::twiml::parse(&body);
    let call = CallInfo {
        call_sid: "CA1".into(),
        account_sid: "AC1".into(),
        from: "+14155550100".into(),
        to: "+14155550101".into(),
        direction: "inbound".into(),
        caller_name: None,
        forwarded_from: None,
    };
    let start = Instant::now();
    let facts = Facts::new(jiff::Timestamp::UNIX_EPOCH, call);
    let program = Program::Webhook {
        url: "https://example.org/voice".into(),
        method: Method::Post,
    };
    let mut s = Session::new(program, facts, start);
    let mut now = start;
    let mut last_prompt = None;
    for &b in script.iter().take(200) {
        while let Some(a) = s.poll_output() {
            match a {
                continuum_ivr::Action::Say { id, .. }
                | continuum_ivr::Action::Play { id, .. }
                | continuum_ivr::Action::SendDigits { id, .. } => last_prompt = Some(id),
                continuum_ivr::Action::Fetch { .. } => s.handle(
                    Input::Fetched(Ok(FetchedDoc {
                        body: body.clone(),
                        content_type: Some("text/xml".into()),
                    })),
                    now,
                ),
                _ => {}
            }
        }
        match b % 4 {
            0 => s.handle(Input::Digit(char::from(b'0' + b % 10)), now),
            1 => {
                if let Some(id) = last_prompt.take() {
                    s.handle(Input::PlaybackFinished { id }, now);
                }
            }
            _ => {
                now += Duration::from_millis(u64::from(b) * 40);
                s.handle_timeout(now);
            }
        }
    }
    s.handle(Input::HungUp, now);
    for _ in 0..1000 {
        if s.poll_output().is_none() {
            break;
        }
    }
    assert!(s.is_done(), "a hung-up call's session did not end");
});
