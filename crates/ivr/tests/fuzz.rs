//! Random inputs and timeouts never panic a session, and a session always
//! ends within a bounded number of steps once the caller hangs up (or
//! even without that, by its own guards).

mod common;

use common::*;
use continuum_ivr::{
    Action, DialStatus, Facts, FetchError, FetchedDoc, Flow, Input, Method, Program, Session,
};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Step {
    Digit(char),
    FinishPlayback,
    StaleFinish(u64),
    Fetched(usize),
    FetchFailed,
    Recorded(u64),
    DialDone,
    Advance(u64),
}

const DOCS: &[&str] = &[
    r#"<Response><Gather numDigits="1" action="/g"><Say>menu</Say></Gather><Redirect>/start</Redirect></Response>"#,
    r#"<Response><Say loop="3">hi</Say><Pause length="2"/><Hangup/></Response>"#,
    r##"<Response><Record maxLength="5" finishOnKey="#"/><Say>after</Say></Response>"##,
    r#"<Response><Dial action="/d">+15551230000</Dial><Say>after dial</Say></Response>"#,
    r#"<Response><Redirect>/start</Redirect></Response>"#,
    r#"<Response><Enqueue>nurse</Enqueue></Response>"#,
    r#"<Response><Conference>x</Conference></Response>"#,
    "garbage <<<",
    "",
    r#"<Response><Gather><Play>a.wav</Play><Pause length="1"/></Gather></Response>"#,
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::sample::select(vec!['0', '1', '2', '3', '9', '*', '#', 'x']).prop_map(Step::Digit),
        4 => Just(Step::FinishPlayback),
        1 => (0u64..50).prop_map(Step::StaleFinish),
        3 => (0..DOCS.len()).prop_map(Step::Fetched),
        1 => Just(Step::FetchFailed),
        1 => (0u64..20).prop_map(Step::Recorded),
        1 => Just(Step::DialDone),
        3 => (0u64..40_000).prop_map(Step::Advance),
    ]
}

/// Plays the script, then hangs up; returns whether the session ended.
fn run(mut session: Session, script: &[Step]) -> bool {
    let mut now = Instant::now();
    let mut playing: Vec<u64> = Vec::new();
    let drain = |s: &mut Session, playing: &mut Vec<u64>| {
        let mut n = 0;
        while let Some(a) = s.poll_output() {
            n += 1;
            assert!(n < 10_000, "a single input produced endless output");
            match a {
                Action::Say { id, .. }
                | Action::Play { id, .. }
                | Action::SendDigits { id, .. } => playing.push(id),
                Action::StopPlayback => playing.clear(),
                _ => {}
            }
        }
    };
    drain(&mut session, &mut playing);
    for s in script {
        let input = match s {
            Step::Digit(d) => Some(Input::Digit(*d)),
            Step::FinishPlayback if !playing.is_empty() => Some(Input::PlaybackFinished {
                id: playing.remove(0),
            }),
            Step::FinishPlayback => None,
            Step::StaleFinish(id) => Some(Input::PlaybackFinished { id: *id }),
            Step::Fetched(i) => Some(Input::Fetched(Ok(FetchedDoc {
                body: DOCS[*i].into(),
                content_type: None,
            }))),
            Step::FetchFailed => Some(Input::Fetched(Err(FetchError::Timeout))),
            Step::Recorded(secs) => Some(Input::RecordingDone {
                duration: Duration::from_secs(*secs),
                reference: "r".into(),
            }),
            Step::DialDone => Some(Input::DialDone {
                status: DialStatus::Completed,
                duration: Duration::from_secs(3),
            }),
            Step::Advance(ms) => {
                now += Duration::from_millis(*ms);
                if session.poll_timeout().is_some_and(|t| t <= now) {
                    session.handle_timeout(now);
                }
                None
            }
        };
        if let Some(i) = input {
            session.handle(i, now);
        }
        drain(&mut session, &mut playing);
        if let Some(t) = session.poll_timeout() {
            assert!(
                t >= now - Duration::from_secs(120),
                "a deadline far in the past"
            );
        }
    }
    session.handle(Input::HungUp, now);
    drain(&mut session, &mut playing);
    session.is_done() && session.poll_timeout().is_none() && session.poll_output().is_none()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_example_flow_survives_anything(script in prop::collection::vec(step(), 0..80), open in any::<bool>(), unanswered in any::<bool>()) {
        let flow = Arc::new(Flow::from_yaml(HEALTHCARE).unwrap());
        let mut facts = Facts::new(OPEN_AT.parse().unwrap(), call_info());
        facts.open = Some(open);
        if unanswered {
            facts.context.insert("unanswered_message".into());
        }
        prop_assert!(run(Session::new(Program::Flow(flow), facts, Instant::now()), &script));
    }

    #[test]
    fn webhooks_survive_anything(script in prop::collection::vec(step(), 0..80)) {
        let facts = Facts::new(OPEN_AT.parse().unwrap(), call_info());
        let program = Program::Webhook { url: "https://c.example/start".into(), method: Method::Post };
        prop_assert!(run(Session::new(program, facts, Instant::now()), &script));
    }

    #[test]
    fn random_twiml_never_panics(body in "(<Response>)?(<(Say|Play|Gather|Pause|Redirect|Hangup|Dial|Record|Enqueue|Sms|Message|Foo)( (loop|numDigits|timeout|length|action|finishOnKey)=\"[0-9a-z/#]{0,4}\")?>[a-z0-9/ +]{0,8}(</(Say|Play|Gather|Pause|Redirect|Dial|Record|Enqueue|Sms|Message|Foo)>)?){0,6}(</Response>)?") {
        let _ = continuum_ivr::twiml::parse(&body);
        let facts = Facts::new(OPEN_AT.parse().unwrap(), call_info());
        let program = Program::Webhook { url: "https://c.example/start".into(), method: Method::Post };
        let mut s = Session::new(program, facts, Instant::now());
        s.handle(Input::Fetched(Ok(FetchedDoc { body, content_type: None })), Instant::now());
        while s.poll_output().is_some() {}
        s.handle(Input::HungUp, Instant::now());
        prop_assert!(s.is_done());
    }

    #[test]
    fn arbitrary_text_never_panics_the_flow_loader(src in "\\PC{0,300}") {
        let _ = continuum_ivr::check(&src);
    }
}

/// Without any input at all, a session of the example ends by itself
/// (timeouts, retries, exhausted → queue) in bounded time.
#[test]
fn a_silent_caller_is_routed_without_help() {
    let flow = Arc::new(Flow::from_yaml(HEALTHCARE).unwrap());
    let facts = Facts::new(OPEN_AT.parse().unwrap(), call_info());
    let mut now = Instant::now();
    let mut s = Session::new(Program::Flow(flow), facts, now);
    for _ in 0..1000 {
        while let Some(a) = s.poll_output() {
            if let Action::Say { id, .. } = a {
                s.handle(Input::PlaybackFinished { id }, now);
            }
        }
        if s.is_done() {
            return;
        }
        let t = s.poll_timeout().expect("waiting on a timer");
        now = t;
        s.handle_timeout(now);
    }
    panic!("never ended");
}
