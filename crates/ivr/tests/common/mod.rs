//! A scripted caller and host around a Session.
#![allow(dead_code)]

use continuum_ivr::{Action, CallInfo, Facts, Flow, Input, IvrEvent, Program, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const HEALTHCARE: &str = include_str!("../../../../examples/ivr/healthcare.yaml");
/// Tuesday 2026-03-10 15:00 UTC = 11:00 in New York: open.
pub const OPEN_AT: &str = "2026-03-10T15:00:00Z";

pub fn call_info() -> CallInfo {
    CallInfo {
        call_sid: "CA0001".into(),
        account_sid: "AC0001".into(),
        from: "+15551230000".into(),
        to: "+15559870000".into(),
        direction: "inbound".into(),
        ..CallInfo::default()
    }
}

pub struct Call {
    pub session: Session,
    pub now: Instant,
    pub actions: Vec<Action>,
    /// Ids of prompts started and not yet finished or stopped, in order.
    pub playing: Vec<u64>,
}

impl Call {
    pub fn new(program: Program, facts: Facts) -> Call {
        let now = Instant::now();
        let session = Session::new(program, facts, now);
        let mut c = Call {
            session,
            now,
            actions: Vec::new(),
            playing: Vec::new(),
        };
        c.drain();
        c
    }

    pub fn healthcare_at(at: &str, context: &[&str]) -> Call {
        let flow = Arc::new(Flow::from_yaml(HEALTHCARE).expect("example flow"));
        let mut facts = Facts::new(at.parse().unwrap(), call_info());
        facts.context = context.iter().map(|s| s.to_string()).collect();
        Call::new(Program::Flow(flow), facts)
    }

    pub fn healthcare_open() -> Call {
        Call::healthcare_at(OPEN_AT, &[])
    }

    pub fn drain(&mut self) {
        while let Some(a) = self.session.poll_output() {
            match &a {
                Action::Say { id, .. }
                | Action::Play { id, .. }
                | Action::SendDigits { id, .. } => self.playing.push(*id),
                Action::StopPlayback => self.playing.clear(),
                _ => {}
            }
            self.actions.push(a);
        }
    }

    pub fn input(&mut self, i: Input) {
        self.session.handle(i, self.now);
        self.drain();
    }

    pub fn digit(&mut self, d: char) {
        self.input(Input::Digit(d));
    }

    /// The oldest prompt playing finishes.
    pub fn finish_playback(&mut self) {
        assert!(
            !self.playing.is_empty(),
            "nothing is playing: {:#?}",
            self.actions
        );
        let id = self.playing.remove(0);
        self.input(Input::PlaybackFinished { id });
    }

    pub fn finish_all_playback(&mut self) {
        for _ in 0..100 {
            if self.playing.is_empty() {
                return;
            }
            self.finish_playback();
        }
    }

    /// Moves the clock and fires due timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
            self.session.handle_timeout(self.now);
        }
        self.drain();
    }

    /// The text of the prompt playing now.
    pub fn expect_say(&self) -> String {
        let id = *self.playing.first().expect("a prompt is playing");
        self.actions
            .iter()
            .find_map(|a| match a {
                Action::Say { id: i, text, .. } if *i == id => Some(text.clone()),
                _ => None,
            })
            .expect("the playing prompt is a Say")
    }

    pub fn events(&self) -> Vec<IvrEvent> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn fetches(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { url, params, .. } => Some((url.clone(), params.clone())),
                _ => None,
            })
            .collect()
    }
}
