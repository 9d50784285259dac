//! The flow model: what a YAML flow file decodes into once it is valid.
//! Loading ([`Flow::from_yaml`], [`check`]) decodes the spanned YAML tree
//! ([`decode`]) and then checks the graph ([`graph`]); every problem is a
//! [`Diagnostic`] with a 1-based line and column. The full reference is
//! docs/ivr.md.

mod decode;
pub(crate) use decode::is_key;
mod graph;

use crate::hours::{Calendar, TimeRange};
use jiff::civil::Weekday;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a flow file, printed by the CLI as
/// `FLOW.yaml:12:5: error: node "urgent": unknown field "queu" (…)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}: {sev}: {}", self.line, self.column, self.message)
    }
}

/// What `continuum ivr check` prints, and what `render-prompts` renders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// Every text the flow can say (deduplicated, in file order), including
    /// the error apology: what render-prompts renders ahead of time.
    pub prompts: Vec<String>,
    /// Every audio file or URL the flow can play.
    pub audio: Vec<String>,
    /// Every webhook URL, for the host's URL policy (https only, …).
    pub webhooks: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Validates a flow file without keeping the flow.
/// A tenant's business-hours calendar from YAML (or JSON): `time_zone`,
/// `weekly`, `holidays`, as in a flow's `hours`; every error with its line.
pub fn load_calendar(src: &str) -> Result<Calendar, Vec<Diagnostic>> {
    decode::load_calendar(src)
}

pub fn check(src: &str) -> Report {
    match Flow::from_yaml(src) {
        Ok(flow) => Report {
            errors: Vec::new(),
            warnings: flow.warnings.clone(),
            prompts: flow.prompts(),
            audio: flow.audio(),
            webhooks: flow.webhooks(),
        },
        Err(e) => Report {
            errors: e.errors,
            warnings: e.warnings,
            ..Report::default()
        },
    }
}

/// A flow file that did not load.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} error(s) in the flow, the first: {}", .errors.len(), .errors.first().map(|d| d.to_string()).unwrap_or_default())]
pub struct FlowError {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// The apology played when the session falls back after an error and the
/// flow has no `error_message`.
pub const DEFAULT_ERROR_MESSAGE: &str =
    "We are sorry, we cannot take your call right now. Please call again later. Goodbye.";

#[derive(Debug, Clone)]
pub struct Flow {
    pub name: String,
    pub start: String,
    /// Language for `say` (espeak-ng voice), e.g. "en", "es".
    pub language: String,
    pub hours: Option<Hours>,
    /// Where the call goes after an error (bad webhook, loop guard…).
    pub on_error: Option<String>,
    pub error_message: String,
    pub nodes: BTreeMap<String, Node>,
    /// Unreachable nodes and such; the flow still runs.
    pub warnings: Vec<Diagnostic>,
}

impl Flow {
    pub fn from_yaml(src: &str) -> Result<Flow, FlowError> {
        decode::load(src)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The flow's own calendar when it has one inline.
    pub fn calendar(&self) -> Option<&Calendar> {
        match &self.hours {
            Some(Hours::Inline(c)) => Some(c),
            _ => None,
        }
    }

    pub fn prompts(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |p: &Prompt| {
            if let Prompt::Say(t) = p
                && !out.contains(t)
            {
                out.push(t.clone());
            }
        };
        self.walk_prompts(&mut push);
        if !out.contains(&self.error_message) {
            out.push(self.error_message.clone());
        }
        out
    }

    pub fn audio(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk_prompts(&mut |p| {
            if let Prompt::Play(s) = p
                && !out.contains(s)
            {
                out.push(s.clone());
            }
        });
        out
    }

    pub fn webhooks(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter_map(|n| match &n.step {
                Step::Webhook(w) => Some(w.url.clone()),
                _ => None,
            })
            .collect()
    }

    fn walk_prompts(&self, f: &mut dyn FnMut(&Prompt)) {
        let mut nodes: Vec<&Node> = self.nodes.values().collect();
        nodes.sort_by_key(|n| n.line);
        for n in nodes {
            n.prompts.iter().for_each(&mut *f);
            if let Step::Collect(c) = &n.step {
                c.prompt.iter().for_each(&mut *f);
                for r in [&c.invalid, &c.no_input] {
                    r.prompt.iter().for_each(&mut *f);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Hours {
    Inline(Calendar),
    /// A tenant calendar by name; the host resolves it into
    /// [`crate::Facts::calendar`].
    Named(String),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// Where the node's key is, for runtime errors that point at the file.
    pub line: usize,
    /// Played in order (not interruptible) before the step.
    pub prompts: Vec<Prompt>,
    /// Emitted as a triage event when the node is entered.
    pub triage: Option<String>,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Say(String),
    /// A file name (relative to the flow's prompt directory) or a URL.
    Play(String),
    Pause(Duration),
}

#[derive(Debug, Clone)]
pub enum Step {
    /// Prompts only; then `next`, or hang up when there is none.
    Continue {
        next: Option<String>,
    },
    Hangup,
    /// A menu or a digit gather.
    Collect(Collect),
    Branch(Vec<Rule>),
    Queue(Queue),
    Sms {
        sms: Sms,
        next: Option<String>,
    },
    Record {
        record: Record,
        next: Option<String>,
    },
    Transfer(Transfer),
    Webhook(Webhook),
}

/// A menu (`options`) or a gather (`next` with the digits); one engine.
#[derive(Debug, Clone)]
pub struct Collect {
    /// Interruptible by a digit (barge-in), replayed on each attempt.
    pub prompt: Vec<Prompt>,
    pub kind: CollectKind,
    /// Digits at most (a menu: 1); reaching it completes the input.
    pub num_digits: u32,
    /// Fewer digits than this (but some) count as invalid.
    pub min_digits: u32,
    /// Waiting for the first digit, from the end of the prompt.
    pub timeout: Duration,
    /// Waiting for each further digit.
    pub inter_digit_timeout: Duration,
    pub finish_on_key: Option<char>,
    /// Further attempts after the first.
    pub retries: u32,
    pub invalid: Retry,
    pub no_input: Retry,
    /// After the last attempt; `None`: hang up.
    pub exhausted: Option<String>,
}

#[derive(Debug, Clone)]
pub enum CollectKind {
    Menu {
        options: BTreeMap<char, String>,
    },
    Gather {
        next: String,
        store_as: Option<String>,
        /// Digits on the timeline are shown as '*'.
        mask: bool,
    },
}

/// What happens on an invalid entry (or no entry): a prompt before the next
/// attempt, or straight to `next`.
#[derive(Debug, Clone, Default)]
pub struct Retry {
    pub prompt: Vec<Prompt>,
    pub next: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub when: Condition,
    pub next: String,
}

/// All the given tests must hold; an empty condition always holds.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    pub open: Option<bool>,
    pub holiday: Option<bool>,
    /// Facts that must all be known (e.g. "unanswered_message").
    pub context: Vec<String>,
    /// Facts that must all be absent.
    pub not_context: Vec<String>,
    /// On the calendar's wall clock.
    pub time: Option<TimeRange>,
    pub days: Option<Vec<Weekday>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub name: String,
    pub priority: i32,
    pub skills: Vec<String>,
    pub triage: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sms {
    pub template: Option<String>,
    pub body: Option<String>,
    /// Default: the caller.
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub max: Duration,
    /// Keys that end the recording ("#" by default; empty: none).
    pub finish_on_key: String,
    pub beep: bool,
    /// Silence that ends the recording (the host measures it).
    pub silence_timeout: Duration,
    pub triage: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// `+15551230000` or `sip:user@host`.
    pub to: String,
    pub caller_id: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// Absolute http(s) URL; whether plain http is allowed is the host's
    /// policy ([`Report::webhooks`] lists them).
    pub url: String,
    pub method: crate::Method,
    /// Where the call goes if the webhook fails (else the flow's on_error).
    pub on_error: Option<String>,
}
