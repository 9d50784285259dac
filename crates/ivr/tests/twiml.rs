//! TwiML parsing and webhook-driven calls, including webhooks that time out
//! or answer garbage.

mod common;

use common::*;
use continuum_ivr::twiml::{self, DialTarget, TwimlError, Verb};
use continuum_ivr::{
    Action, AudioSource, DialStatus, Facts, FetchError, FetchedDoc, Flow, Input, IvrEvent, Method,
    Program, SessionError,
};
use std::sync::Arc;
use std::time::Duration;

const URL: &str = "https://customer.example/ivr/start";

fn webhook_call() -> Call {
    let facts = Facts::new(OPEN_AT.parse().unwrap(), call_info());
    Call::new(
        Program::Webhook {
            url: URL.into(),
            method: Method::Post,
        },
        facts,
    )
}

fn reply(call: &mut Call, body: &str) {
    call.input(Input::Fetched(Ok(FetchedDoc {
        body: body.into(),
        content_type: Some("text/xml; charset=utf-8".into()),
    })));
}

fn errors(call: &Call) -> Vec<SessionError> {
    call.events()
        .into_iter()
        .filter_map(|e| match e {
            IvrEvent::Error { error } => Some(error),
            _ => None,
        })
        .collect()
}

#[test]
fn parses_the_subset_with_twilios_defaults() {
    let verbs = twiml::parse(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Say voice="alice" language="en-US" loop="2">Hello <break time="1s"/> there</Say>
  <Gather numDigits="1" action="/menu"><Play>prompt.wav</Play></Gather>
  <Pause/>
  <Record maxLength="30"/>
  <Dial callerId="+15550001111"><Number>+1 (555) 123-4567</Number><Sip>sip:desk@pbx.example</Sip></Dial>
  <Enqueue waitUrl="/hold">nurse</Enqueue>
  <Message to="+15551230000">Your link: https://x.example/v</Message>
  <Redirect method="GET">next.xml</Redirect>
  <Hangup/>
</Response>"#,
    )
    .unwrap();
    assert_eq!(verbs.len(), 9);
    assert_eq!(
        verbs[0],
        Verb::Say {
            text: "Hello there".into(),
            voice: Some("alice".into()),
            language: Some("en-US".into()),
            loop_: 2
        }
    );
    let Verb::Gather(g) = &verbs[1] else { panic!() };
    assert_eq!(
        (g.num_digits, g.timeout, g.finish_on_key),
        (Some(1), Duration::from_secs(5), Some('#'))
    );
    assert_eq!(g.method, Method::Post);
    assert_eq!(
        verbs[2],
        Verb::Pause {
            length: Duration::from_secs(1)
        }
    );
    let Verb::Record(r) = &verbs[3] else { panic!() };
    assert_eq!(
        (r.max_length, r.timeout, r.play_beep),
        (Duration::from_secs(30), Duration::from_secs(5), true)
    );
    assert_eq!(r.finish_on_key, "1234567890*#");
    let Verb::Dial(d) = &verbs[4] else { panic!() };
    assert_eq!(
        d.targets,
        [
            DialTarget::Number("+15551234567".into()),
            DialTarget::Sip("sip:desk@pbx.example".into())
        ]
    );
    assert_eq!(d.timeout, Duration::from_secs(30));
    assert_eq!(verbs[8], Verb::Hangup);
}

#[test]
fn refusals_say_what_and_where() {
    let e =
        twiml::parse("<Response>\n  <Say>hi</Say>\n  <Conference>room</Conference>\n</Response>")
            .unwrap_err();
    assert!(
        matches!(e, TwimlError::UnknownVerb { line: 3, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(
            "unsupported TwiML verb <Conference> at line 3, column 3 (supported: Say, Play"
        ),
        "{e}"
    );
    let e = twiml::parse("<html><body>Not found</body></html>").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the root element is <html> (line 1), TwiML needs <Response>"
    );
    let e = twiml::parse("{\"error\": true}").unwrap_err();
    assert!(matches!(e, TwimlError::NotXml { line: 1, .. }), "{e:?}");
    let e = twiml::parse("<Response><Gather timeout=\"soon\"/></Response>").unwrap_err();
    assert_eq!(
        e.to_string(),
        "<Gather> at line 1: attribute timeout=\"soon\": expected a whole number from 1 to 600"
    );
    let e = twiml::parse("<Response><Gather><Dial>+1555</Dial></Gather></Response>").unwrap_err();
    assert!(
        e.to_string()
            .contains("<Dial> cannot be nested in <Gather>"),
        "{e}"
    );
    let e = twiml::parse("<Response><Gather input=\"speech\"/></Response>").unwrap_err();
    assert!(
        e.to_string().contains("only dtmf input is supported"),
        "{e}"
    );
}

#[test]
fn dtds_entities_and_huge_documents_are_refused() {
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><Response><Say>&lol2;</Say></Response>"#;
    assert!(matches!(twiml::parse(bomb), Err(TwimlError::NotXml { .. })));
    let big = format!("<Response>{}</Response>", "<Pause/>".repeat(20_000));
    assert!(matches!(
        twiml::parse(&big),
        Err(TwimlError::TooLarge { .. })
    ));
    let many = format!("<Response>{}</Response>", "<Hangup/>".repeat(500));
    assert!(matches!(
        twiml::parse(&many),
        Err(TwimlError::TooManyVerbs { .. })
    ));
}

#[test]
fn a_webhook_call_gathers_posts_digits_and_follows_relative_urls() {
    let mut call = webhook_call();
    let (url, params) = call.fetches()[0].clone();
    assert_eq!(url, URL);
    assert!(params.contains(&("CallSid".into(), "CA0001".into())));
    assert!(params.contains(&("CallStatus".into(), "ringing".into())));
    reply(
        &mut call,
        r#"<Response><Gather numDigits="2" action="menu?step=2"><Say>Enter two digits</Say><Play>/audio/beep.wav</Play></Gather><Say>Nothing?</Say></Response>"#,
    );
    assert_eq!(call.expect_say(), "Enter two digits");
    call.digit('4'); // barge-in
    assert!(call.actions.contains(&Action::StopPlayback));
    assert!(
        !call
            .actions
            .iter()
            .any(|a| matches!(a, Action::Play { .. })),
        "the rest of the prompt is dropped"
    );
    call.digit('2');
    let (url, params) = call.fetches()[1].clone();
    assert_eq!(url, "https://customer.example/ivr/menu?step=2");
    assert!(params.contains(&("Digits".into(), "42".into())));
    assert!(params.contains(&("CallStatus".into(), "in-progress".into())));
    reply(
        &mut call,
        "<Response><Play>../media/bye.wav</Play></Response>",
    );
    assert!(call.actions.iter().any(|a| matches!(a, Action::Play { source: AudioSource::Url(u), .. } if u == "https://customer.example/media/bye.wav")));
    call.finish_playback();
    assert!(call.session.is_done(), "end of the document hangs up");
    assert_eq!(call.actions.last(), Some(&Action::Hangup));
}

#[test]
fn a_gather_without_input_goes_on_with_the_next_verb() {
    let mut call = webhook_call();
    reply(
        &mut call,
        r#"<Response><Gather timeout="3"><Say>Press a key</Say></Gather><Say>We didn't get anything</Say><Pause length="2"/><Hangup/></Response>"#,
    );
    call.finish_playback();
    assert_eq!(
        call.session.poll_timeout(),
        Some(call.now + Duration::from_secs(3))
    );
    call.advance(Duration::from_secs(3));
    assert_eq!(call.expect_say(), "We didn't get anything");
    call.finish_playback();
    assert_eq!(
        call.session.poll_timeout(),
        Some(call.now + Duration::from_secs(2)),
        "Pause is a timer"
    );
    assert!(!call.session.is_done());
    call.advance(Duration::from_secs(2));
    assert!(call.session.is_done());
    assert_eq!(call.fetches().len(), 1);
}

#[test]
fn a_webhook_that_times_out_is_a_clear_error_then_the_apology() {
    let mut call = webhook_call();
    call.input(Input::Fetched(Err(FetchError::Timeout)));
    let errs = errors(&call);
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        format!("fetching TwiML from {URL} failed: timed out")
    );
    call.finish_all_playback();
    assert!(call.session.is_done());
    assert_eq!(call.actions.last(), Some(&Action::Hangup));
}

#[test]
fn a_host_that_never_answers_trips_the_session_guard() {
    let mut call = webhook_call();
    call.advance(Duration::from_secs(31));
    assert!(matches!(
        &errors(&call)[..],
        [SessionError::Fetch {
            error: FetchError::Timeout,
            ..
        }]
    ));
}

#[test]
fn garbage_html_and_unknown_verbs_are_errors_on_the_timeline() {
    for (body, ct, expect) in [
        ("<<<garbage", None, "is not XML"),
        (
            "<html>oops</html>",
            Some("text/html"),
            "answered text/html, not TwiML",
        ),
        (
            "<Response><Conference>x</Conference></Response>",
            Some("application/xml"),
            "unsupported TwiML verb <Conference>",
        ),
    ] {
        let mut call = webhook_call();
        call.input(Input::Fetched(Ok(FetchedDoc {
            body: body.into(),
            content_type: ct.map(Into::into),
        })));
        let errs = errors(&call);
        assert_eq!(errs.len(), 1, "{body}");
        assert!(errs[0].to_string().contains(expect), "{}", errs[0]);
        call.finish_all_playback();
        assert!(call.session.is_done());
    }
}

#[test]
fn a_flow_webhook_error_falls_back_to_on_error() {
    let flow = Flow::from_yaml(
        "name: t\nstart: hook\nnodes:\n  hook:\n    webhook: { url: \"https://c.example/ivr\", on_error: desk }\n  desk:\n    queue: front-desk\n",
    )
    .unwrap();
    let mut call = Call::new(
        Program::Flow(Arc::new(flow)),
        Facts::new(OPEN_AT.parse().unwrap(), call_info()),
    );
    assert_eq!(call.fetches()[0].0, "https://c.example/ivr");
    call.input(Input::Fetched(Ok(FetchedDoc {
        body: "oops".into(),
        content_type: None,
    })));
    assert_eq!(errors(&call).len(), 1);
    assert!(call.session.is_done());
    assert!(
        matches!(call.actions.last(), Some(Action::Enqueue { queue, .. }) if queue == "front-desk")
    );
}

#[test]
fn a_redirect_loop_is_stopped() {
    let mut call = webhook_call();
    for _ in 0..50 {
        if call.session.is_done() || !errors(&call).is_empty() {
            break;
        }
        reply(
            &mut call,
            "<Response><Redirect>/ivr/start</Redirect></Response>",
        );
    }
    assert!(
        matches!(&errors(&call)[..], [SessionError::FetchLoop { .. }]),
        "{:?}",
        errors(&call)
    );
    call.finish_all_playback();
    assert!(call.session.is_done());
}

#[test]
fn record_and_dial_post_their_results() {
    let mut call = webhook_call();
    reply(
        &mut call,
        r##"<Response><Record action="/vm" finishOnKey="#"/><Dial action="/after">+15551112222</Dial></Response>"##,
    );
    assert!(call.actions.iter().any(
        |a| matches!(a, Action::StartRecording { max, .. } if *max == Duration::from_secs(3600))
    ));
    call.digit('#');
    assert!(call.actions.contains(&Action::StopRecording));
    call.input(Input::RecordingDone {
        duration: Duration::from_secs(9),
        reference: "att_9".into(),
    });
    let (url, params) = call.fetches().last().cloned().unwrap();
    assert_eq!(url, "https://customer.example/vm");
    assert!(params.contains(&("RecordingUrl".into(), "att_9".into())));
    assert!(params.contains(&("RecordingDuration".into(), "9".into())));
    assert!(params.contains(&("Digits".into(), "#".into())));
    reply(
        &mut call,
        r#"<Response><Dial action="/after" timeout="20">+15551112222</Dial></Response>"#,
    );
    assert!(
        call.actions.iter().any(
            |a| matches!(a, Action::Dial { timeout, .. } if *timeout == Duration::from_secs(20))
        )
    );
    call.input(Input::DialDone {
        status: DialStatus::NoAnswer,
        duration: Duration::ZERO,
    });
    let (url, params) = call.fetches().last().cloned().unwrap();
    assert_eq!(url, "https://customer.example/after");
    assert!(params.contains(&("DialCallStatus".into(), "no-answer".into())));
}

#[test]
fn enqueue_and_message_map_to_actions() {
    let mut call = webhook_call();
    reply(
        &mut call,
        r#"<Response><Sms>See you soon</Sms><Enqueue waitUrl="hold.xml">nurse</Enqueue></Response>"#,
    );
    assert!(
        call.actions
            .iter()
            .any(|a| matches!(a, Action::SendSms { body: Some(b), .. } if b == "See you soon"))
    );
    assert!(call.session.is_done());
    assert!(
        matches!(call.actions.last(), Some(Action::Enqueue { queue, wait_url: Some(w), .. }) if queue == "nurse" && w == "https://customer.example/ivr/hold.xml")
    );
}

#[test]
fn play_urls_must_be_http() {
    let mut call = webhook_call();
    reply(
        &mut call,
        "<Response><Play>file:///etc/passwd</Play></Response>",
    );
    assert!(
        matches!(&errors(&call)[..], [SessionError::BadUrl { .. }]),
        "{:?}",
        errors(&call)
    );
    assert!(
        !call
            .actions
            .iter()
            .any(|a| matches!(a, Action::Play { .. }))
    );
}
