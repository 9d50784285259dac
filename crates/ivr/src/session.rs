//! The sans-IO interpreter for one call. The host feeds it what happened
//! ([`Session::handle`]: a digit, the end of a prompt, a fetched document,
//! a finished recording, the caller hanging up) and the time
//! ([`Session::handle_timeout`]), and carries out what it asks
//! ([`Session::poll_output`]): play this, fetch that, enqueue the call.
//!
//! Audio: one prompt at a time. Every `Say`/`Play`/`SendDigits` carries an
//! id and is answered by `PlaybackFinished { id }`; a finish for any other
//! id (a prompt that was stopped) is ignored, so late events from the
//! media path can never be mistaken for the current prompt.
//!
//! Input: digits count only while a menu or gather is listening (its
//! prompt is interruptible: a digit stops it and counts, "barge-in") or
//! while recording (a finish key ends it). Digits during a node's own
//! `say` (the emergency notice) are on the timeline but otherwise dropped,
//! as Twilio drops digits pressed before a `<Gather>`.
//!
//! Errors (a webhook that fails or answers garbage, the loop guard…) are a
//! timeline event, then a defined fallback: the webhook node's `on_error`,
//! else the flow's `on_error`, else the apology (`error_message`) and
//! hang up. A second error after a fallback always ends with the apology.

mod flow_exec;
mod twiml_exec;

use crate::flow::{Flow, Prompt};
use crate::hours::Calendar;
use crate::params::{CallInfo, call_params};
use crate::twiml::{DialTarget, TwimlError};
use crate::{Method, flow};
use jiff::Timestamp;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The guards; the host may want them in its own docs.
pub mod limits {
    use std::time::Duration;
    /// Node entries plus TwiML documents per call before the loop guard
    /// trips (a bad flow or webhook can't spin forever).
    pub const MAX_TRANSITIONS: u32 = 200;
    /// Webhook fetches per call.
    pub const MAX_FETCHES: u32 = 100;
    /// Fetches in a row without the caller doing anything (a Redirect
    /// loop).
    pub const MAX_IDLE_FETCHES: u32 = 20;
    /// If the host never answers a Fetch (it should time out sooner,
    /// Twilio uses 15 s).
    pub const FETCH_GUARD: Duration = Duration::from_secs(30);
    /// How long after StopRecording the RecordingDone may take.
    pub const RECORDING_GRACE: Duration = Duration::from_secs(10);
}

/// What the session runs.
#[derive(Debug, Clone)]
pub enum Program {
    Flow(Arc<Flow>),
    /// A number pointing straight at a customer's TwiML webhook.
    Webhook {
        url: String,
        method: Method,
    },
}

/// What the host knows about the call when it starts.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Wall-clock time at `now` of [`Session::new`]; the session advances
    /// it with the `Instant`s it is given.
    pub now_utc: Timestamp,
    /// "Open" decided by the host (e.g. a tenant override); wins over any
    /// calendar.
    pub open: Option<bool>,
    /// The tenant's calendar; wins over the flow's inline `hours`, and is
    /// what a flow's `hours: { calendar: NAME }` expects the host to supply.
    /// With no calendar at all the clinic counts as open.
    pub calendar: Option<Arc<Calendar>>,
    /// What the conversation already knows: "unanswered_message",
    /// "open_conversation", "known_caller"…
    pub context: BTreeSet<String>,
    pub call: CallInfo,
}

impl Facts {
    pub fn new(now_utc: Timestamp, call: CallInfo) -> Facts {
        Facts {
            now_utc,
            open: None,
            calendar: None,
            context: BTreeSet::new(),
            call,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A DTMF key: 0-9, *, # (anything else is ignored).
    Digit(char),
    /// The prompt with this id finished playing (not sent for stopped ones;
    /// if it is, it is ignored).
    PlaybackFinished {
        id: u64,
    },
    /// The answer to [`Action::Fetch`].
    Fetched(Result<FetchedDoc, FetchError>),
    /// The recording started by [`Action::StartRecording`] ended and is
    /// stored (`reference`: the attachment id or URL).
    RecordingDone {
        duration: Duration,
        reference: String,
    },
    /// The call started by [`Action::Dial`] ended.
    DialDone {
        status: DialStatus,
        duration: Duration,
    },
    HungUp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDoc {
    pub body: String,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
}

/// Why the host could not fetch a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FetchError {
    #[error("timed out")]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    /// The host's URL policy (https only, no private addresses…).
    #[error("refused by policy: {0}")]
    Refused(String),
    #[error("the answer is too large")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus {
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl DialStatus {
    /// Twilio's DialCallStatus value.
    pub fn as_str(self) -> &'static str {
        match self {
            DialStatus::Completed => "completed",
            DialStatus::Busy => "busy",
            DialStatus::NoAnswer => "no-answer",
            DialStatus::Failed => "failed",
            DialStatus::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// A prompt file of the flow (8 kHz audio, in the flow's prompt dir).
    File(String),
    /// An absolute http(s) URL (TwiML `<Play>`, or a flow's `play: {url}`).
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Render (espeak-ng, cached) and play; answer PlaybackFinished.
    Say {
        id: u64,
        text: String,
        language: String,
        voice: Option<String>,
    },
    Play {
        id: u64,
        source: AudioSource,
    },
    /// Play DTMF tones (`w`: half a second of silence); answer
    /// PlaybackFinished.
    SendDigits {
        id: u64,
        digits: String,
    },
    /// Stop what is playing (barge-in); no PlaybackFinished for it.
    StopPlayback,
    /// The call leaves the IVR for a queue; the session is done.
    Enqueue {
        queue: String,
        priority: i32,
        skills: Vec<String>,
        triage: Option<String>,
        wait_url: Option<String>,
    },
    /// Fire and forget; `to: None` is the caller.
    SendSms {
        template: Option<String>,
        body: Option<String>,
        to: Option<String>,
        from: Option<String>,
    },
    /// Record the caller (after a beep if asked) until StopRecording, the
    /// silence timeout or hang-up; answer RecordingDone. `triage` is the
    /// label for the stored voicemail.
    StartRecording {
        max: Duration,
        finish_on_key: String,
        beep: bool,
        silence_timeout: Duration,
        triage: Option<String>,
    },
    StopRecording,
    /// Blind transfer; the call leaves the IVR and the session is done.
    Transfer {
        to: String,
        caller_id: Option<String>,
        timeout: Duration,
    },
    /// Bridge the caller to a new call (TwiML `<Dial>`); answer DialDone,
    /// after which the session goes on.
    Dial {
        targets: Vec<DialTarget>,
        timeout: Duration,
        time_limit: Duration,
        caller_id: Option<String>,
    },
    /// Request the webhook (sign it as Twilio does, apply a timeout and the
    /// URL policy); answer Fetched.
    Fetch {
        url: String,
        method: Method,
        params: Vec<(String, String)>,
    },
    /// Hang up; the session is done.
    Hangup,
    /// For the conversation's timeline.
    Event(IvrEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrEvent {
    NodeEntered {
        node: String,
    },
    /// `None` when the gather is masked (a date of birth…).
    Digit {
        digit: Option<char>,
    },
    MenuChoice {
        node: String,
        choice: char,
        next: String,
    },
    /// A gather's digits (empty when masked), under its `store_as` name.
    Gathered {
        node: String,
        name: Option<String>,
        digits: String,
    },
    Invalid {
        node: String,
        input: String,
    },
    Timeout {
        node: String,
    },
    Exhausted {
        node: String,
    },
    /// For the context snapshot.
    Triage {
        label: String,
    },
    /// A TwiML verb started (`url`: its document).
    Verb {
        verb: &'static str,
        url: String,
    },
    Recorded {
        reference: String,
        duration: Duration,
    },
    Error {
        error: SessionError,
    },
    CallerHungUp,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("fetching TwiML from {url} failed: {error}")]
    Fetch { url: String, error: FetchError },
    #[error("TwiML from {url}: {error}")]
    Twiml { url: String, error: Box<TwimlError> },
    #[error("{url} answered {content_type}, not TwiML (text/xml)")]
    NotTwiml { url: String, content_type: String },
    #[error("\"{url}\" is not a usable http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the call went through {limit} steps without ending (a loop?)")]
    LoopLimit { limit: u32 },
    #[error("{count} webhook requests without the caller doing anything (a Redirect loop?)")]
    FetchLoop { count: u32 },
    #[error("the flow has no node \"{node}\"")]
    UnknownNode { node: String },
    #[error("the recording never ended")]
    RecordingLost,
}

/// One thing to play, in order.
#[derive(Debug, Clone)]
enum Audio {
    Say {
        text: String,
        language: Option<String>,
        voice: Option<String>,
    },
    Play(AudioSource),
    Digits(String),
    Pause(Duration),
}

/// What to do once the audio queue has drained.
#[derive(Debug, Clone)]
enum Next {
    /// Execute this flow node's step (its prompts have played).
    FlowStep(String),
    /// Go on with the current TwiML document.
    Twiml,
    Hangup,
}

#[derive(Debug, Clone)]
enum Origin {
    Flow { node: String },
    Twiml(crate::twiml::Gather),
}

#[derive(Debug, Clone)]
struct Collecting {
    origin: Origin,
    num_digits: u32,
    timeout: Duration,
    inter_digit: Duration,
    finish: Option<char>,
    mask: bool,
    attempt: u32,
    digits: String,
    /// None while the prompt plays.
    deadline: Option<Instant>,
}

#[derive(Debug, Clone)]
enum AfterRecord {
    Flow {
        next: Option<String>,
    },
    Twiml {
        action: Option<String>,
        method: Method,
    },
}

#[derive(Debug, Clone)]
enum Mode {
    Run(Next),
    Collect(Box<Collecting>),
    Fetching {
        url: String,
        deadline: Instant,
    },
    Recording {
        deadline: Instant,
        stopping: bool,
        finish: String,
        key: Option<char>,
        after: AfterRecord,
    },
    Dialing {
        action: Option<(String, Method)>,
    },
    Done,
}

/// The TwiML document being executed.
#[derive(Debug, Clone)]
struct Doc {
    url: String,
    verbs: Vec<crate::twiml::Verb>,
    pc: usize,
}

pub struct Session {
    flow: Option<Arc<Flow>>,
    facts: Facts,
    started: Instant,
    language: String,
    error_message: String,
    out: VecDeque<Action>,
    audio: VecDeque<Audio>,
    /// The prompt waiting for its PlaybackFinished.
    playing: Option<u64>,
    pause_until: Option<Instant>,
    next_id: u64,
    mode: Mode,
    doc: Option<Doc>,
    /// Where an error in the current TwiML goes (the webhook node's
    /// on_error, or the flow's).
    doc_on_error: Option<String>,
    transitions: u32,
    transition_limit: u32,
    fetches: u32,
    idle_fetches: u32,
    fell_back: bool,
}

impl Session {
    pub fn new(program: Program, facts: Facts, now: Instant) -> Session {
        let (flow, language, error_message) = match &program {
            Program::Flow(f) => (Some(f.clone()), f.language.clone(), f.error_message.clone()),
            Program::Webhook { .. } => (
                None,
                "en".to_string(),
                flow::DEFAULT_ERROR_MESSAGE.to_string(),
            ),
        };
        let mut s = Session {
            flow,
            facts,
            started: now,
            language,
            error_message,
            out: VecDeque::new(),
            audio: VecDeque::new(),
            playing: None,
            pause_until: None,
            next_id: 1,
            mode: Mode::Run(Next::Hangup),
            doc: None,
            doc_on_error: None,
            transitions: 0,
            transition_limit: limits::MAX_TRANSITIONS,
            fetches: 0,
            idle_fetches: 0,
            fell_back: false,
        };
        match program {
            Program::Flow(f) => s.enter(&f.start.clone(), now),
            Program::Webhook { url, method } => {
                let params = call_params(&s.facts.call, "ringing");
                s.fetch(&url, method, params, now);
            }
        }
        s.pump(now);
        s
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        if self.is_done() {
            return;
        }
        match input {
            Input::Digit(d) => self.on_digit(d, now),
            Input::PlaybackFinished { id } => {
                if self.playing == Some(id) {
                    self.playing = None;
                    self.idle_fetches = 0;
                }
            }
            Input::Fetched(result) => self.on_fetched(result, now),
            Input::RecordingDone {
                duration,
                reference,
            } => self.on_recording_done(duration, reference, now),
            Input::DialDone { status, duration } => self.on_dial_done(status, duration, now),
            Input::HungUp => {
                self.event(IvrEvent::CallerHungUp);
                if let Mode::Recording {
                    stopping: false, ..
                } = self.mode
                {
                    self.out.push_back(Action::StopRecording);
                }
                self.mode = Mode::Done;
            }
        }
        self.pump(now);
    }

    pub fn poll_output(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mode = match &self.mode {
            Mode::Collect(c) => c.deadline,
            Mode::Fetching { deadline, .. } | Mode::Recording { deadline, .. } => Some(*deadline),
            Mode::Done => return None,
            _ => None,
        };
        [self.pause_until, mode].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        if self.pause_until.is_some_and(|t| t <= now) {
            self.pause_until = None;
        }
        match &mut self.mode {
            Mode::Collect(c) if c.deadline.is_some_and(|t| t <= now) => {
                c.deadline = None;
                self.collect_ended(None, now);
            }
            Mode::Fetching { url, deadline } if *deadline <= now => {
                let url = url.clone();
                self.fail(
                    SessionError::Fetch {
                        url,
                        error: FetchError::Timeout,
                    },
                    now,
                );
            }
            Mode::Recording {
                deadline, stopping, ..
            } if *deadline <= now => {
                if *stopping {
                    self.fail(SessionError::RecordingLost, now);
                } else {
                    *stopping = true;
                    *deadline = now + limits::RECORDING_GRACE;
                    self.out.push_back(Action::StopRecording);
                }
            }
            _ => {}
        }
        self.pump(now);
    }

    /// Hung up, enqueued, transferred: nothing more will come out.
    pub fn is_done(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }

    fn event(&mut self, e: IvrEvent) {
        self.out.push_back(Action::Event(e));
    }

    fn now_utc(&self, now: Instant) -> Timestamp {
        let elapsed = now.saturating_duration_since(self.started);
        let span = jiff::SignedDuration::try_from(elapsed).unwrap_or(jiff::SignedDuration::ZERO);
        self.facts
            .now_utc
            .checked_add(span)
            .unwrap_or(self.facts.now_utc)
    }

    fn queue_prompts(&mut self, prompts: &[Prompt]) {
        for p in prompts {
            self.audio.push_back(match p {
                Prompt::Say(t) => Audio::Say {
                    text: t.clone(),
                    language: None,
                    voice: None,
                },
                Prompt::Play(s) if s.contains("://") => Audio::Play(AudioSource::Url(s.clone())),
                Prompt::Play(s) => Audio::Play(AudioSource::File(s.clone())),
                Prompt::Pause(d) => Audio::Pause(*d),
            });
        }
    }

    fn stop_audio(&mut self) {
        if self.playing.take().is_some() {
            self.out.push_back(Action::StopPlayback);
        }
        self.pause_until = None;
        self.audio.clear();
    }

    /// Runs until the session waits for something.
    fn pump(&mut self, now: Instant) {
        // Every pass either starts audio (and then waits), ends, or counts
        // a transition / TwiML verb, which are bounded; this is a backstop.
        for _ in 0..100_000 {
            if self.is_done() || self.playing.is_some() || self.pause_until.is_some() {
                return;
            }
            if !matches!(self.mode, Mode::Run(_) | Mode::Collect(_)) {
                return;
            }
            if let Some(a) = self.audio.pop_front() {
                self.start_audio(a, now);
                continue;
            }
            match &mut self.mode {
                Mode::Collect(c) => {
                    if c.deadline.is_none() && c.digits.is_empty() {
                        c.deadline = Some(now + c.timeout);
                    }
                    return;
                }
                Mode::Run(next) => {
                    let next = std::mem::replace(next, Next::Hangup);
                    match next {
                        Next::FlowStep(node) => self.flow_step(&node, now),
                        Next::Twiml => self.twiml_step(now),
                        Next::Hangup => self.hang_up(),
                    }
                }
                _ => return,
            }
        }
        self.fail(
            SessionError::LoopLimit {
                limit: self.transition_limit,
            },
            now,
        );
        self.hang_up();
    }

    fn start_audio(&mut self, a: Audio, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let action = match a {
            Audio::Pause(d) => {
                if !d.is_zero() {
                    self.pause_until = Some(now + d);
                }
                return;
            }
            Audio::Say {
                text,
                language,
                voice,
            } => Action::Say {
                id,
                text,
                language: language.unwrap_or_else(|| self.language.clone()),
                voice,
            },
            Audio::Play(source) => Action::Play { id, source },
            Audio::Digits(digits) => Action::SendDigits { id, digits },
        };
        self.playing = Some(id);
        self.out.push_back(action);
    }

    fn hang_up(&mut self) {
        self.stop_audio();
        self.out.push_back(Action::Hangup);
        self.mode = Mode::Done;
    }

    /// Counts a node entry or a TwiML document; false (after failing) once
    /// over the limit.
    fn count_transition(&mut self, now: Instant) -> bool {
        self.transitions += 1;
        if self.transitions > self.transition_limit {
            self.fail(
                SessionError::LoopLimit {
                    limit: limits::MAX_TRANSITIONS,
                },
                now,
            );
            return false;
        }
        true
    }

    fn on_digit(&mut self, d: char, now: Instant) {
        if !flow::is_key(d) {
            return;
        }
        self.idle_fetches = 0;
        let masked = matches!(&self.mode, Mode::Collect(c) if c.mask);
        self.event(IvrEvent::Digit {
            digit: if masked { None } else { Some(d) },
        });
        match &mut self.mode {
            Mode::Collect(_) => {
                // Barge-in: the prompt stops and the digit counts.
                self.stop_audio();
                let Mode::Collect(c) = &mut self.mode else {
                    return;
                };
                c.deadline = None;
                if c.finish == Some(d) {
                    self.collect_ended(Some(d), now);
                    return;
                }
                c.digits.push(d);
                if c.digits.chars().count() as u32 >= c.num_digits {
                    self.collect_ended(None, now);
                } else {
                    c.deadline = Some(now + c.inter_digit);
                }
            }
            Mode::Recording {
                stopping: stopping @ false,
                finish,
                key,
                deadline,
                ..
            } if finish.contains(d) => {
                *stopping = true;
                *key = Some(d);
                *deadline = now + limits::RECORDING_GRACE;
                self.out.push_back(Action::StopRecording);
            }
            _ => {}
        }
    }

    /// The gather ended: enough digits, the finish key (`finished`), or a
    /// timeout.
    fn collect_ended(&mut self, finished: Option<char>, now: Instant) {
        if !matches!(self.mode, Mode::Collect(_)) {
            return;
        }
        let Mode::Collect(c) = std::mem::replace(&mut self.mode, Mode::Run(Next::Hangup)) else {
            return;
        };
        match c.origin.clone() {
            Origin::Flow { node } => self.flow_collected(*c, &node, now),
            Origin::Twiml(g) => self.twiml_gathered(&g, &c.digits, finished, now),
        }
    }

    /// Reports the error and takes the fallback.
    fn fail(&mut self, error: SessionError, now: Instant) {
        self.event(IvrEvent::Error { error });
        self.stop_audio();
        let target = self
            .doc_on_error
            .take()
            .or_else(|| self.flow.as_ref().and_then(|f| f.on_error.clone()));
        self.doc = None;
        match target {
            Some(node) if !self.fell_back => {
                self.fell_back = true;
                // A fresh budget for the fallback path, once.
                self.transition_limit = self.transitions + limits::MAX_TRANSITIONS;
                self.enter(&node, now);
            }
            _ => {
                self.audio.push_back(Audio::Say {
                    text: self.error_message.clone(),
                    language: None,
                    voice: None,
                });
                self.mode = Mode::Run(Next::Hangup);
            }
        }
    }
}
