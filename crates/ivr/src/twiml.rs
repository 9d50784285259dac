//! The TwiML subset a webhook may answer with, parsed into [`Verb`]s.
//!
//! `roxmltree` because it is small, read-only and refuses DTDs by default
//! (no external entities, no entity expansion bombs); on top of that the
//! document is capped at [`MAX_BYTES`], its XML nodes at [`MAX_XML_NODES`]
//! and its verbs at [`MAX_VERBS`]. The documents come from the customer's
//! servers, so every refusal says what and where (line and column) but
//! never echoes more than a short piece of the input.
//!
//! Defaults follow Twilio's documentation: Gather timeout 5 s, finishOnKey
//! `#`, method POST; Record maxLength 3600 s, timeout 5 s, finishOnKey
//! `1234567890*#`, playBeep true; Dial timeout 30 s, timeLimit 14400 s;
//! Pause length 1 s; `loop="0"` means "repeat until hangup", capped at
//! [`LOOP_FOREVER`]. Unknown attributes are ignored (as Twilio does: a
//! migrating customer's `statusCallback` must not break the call); unknown
//! verbs and nouns are errors.

use crate::Method;
use roxmltree::{Document, Node, ParsingOptions};
use std::time::Duration;
use thiserror::Error;

pub const MAX_BYTES: usize = 64 * 1024;
pub const MAX_XML_NODES: u32 = 10_000;
pub const MAX_VERBS: usize = 200;
/// What `loop="0"` (forever) becomes.
pub const LOOP_FOREVER: u32 = 100;

pub const SUPPORTED: &str =
    "Say, Play, Gather, Pause, Redirect, Hangup, Reject, Enqueue, Dial, Record, Sms, Message";

#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    Say {
        text: String,
        voice: Option<String>,
        language: Option<String>,
        loop_: u32,
    },
    Play {
        /// Empty when only `digits` is given.
        url: String,
        loop_: u32,
        /// DTMF to send (`w` is a half-second wait).
        digits: Option<String>,
    },
    Gather(Gather),
    Pause {
        length: Duration,
    },
    Redirect {
        url: String,
        method: Method,
    },
    Hangup,
    Reject {
        reason: String,
    },
    Enqueue {
        queue: String,
        wait_url: Option<String>,
        action: Option<String>,
        method: Method,
    },
    Dial(Dial),
    Record(Record),
    Message {
        to: Option<String>,
        from: Option<String>,
        body: String,
    },
}

impl Verb {
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Say { .. } => "Say",
            Verb::Play { .. } => "Play",
            Verb::Gather(_) => "Gather",
            Verb::Pause { .. } => "Pause",
            Verb::Redirect { .. } => "Redirect",
            Verb::Hangup => "Hangup",
            Verb::Reject { .. } => "Reject",
            Verb::Enqueue { .. } => "Enqueue",
            Verb::Dial(_) => "Dial",
            Verb::Record(_) => "Record",
            Verb::Message { .. } => "Message",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gather {
    pub num_digits: Option<u32>,
    pub timeout: Duration,
    pub action: Option<String>,
    pub method: Method,
    pub finish_on_key: Option<char>,
    pub action_on_empty_result: bool,
    /// Say, Play and Pause only: the barge-in prompt.
    pub nested: Vec<Verb>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTarget {
    Number(String),
    Sip(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dial {
    pub targets: Vec<DialTarget>,
    pub timeout: Duration,
    pub time_limit: Duration,
    pub caller_id: Option<String>,
    pub action: Option<String>,
    pub method: Method,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub max_length: Duration,
    /// Silence that ends the recording (zero: none).
    pub timeout: Duration,
    pub finish_on_key: String,
    pub play_beep: bool,
    pub action: Option<String>,
    pub method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TwimlError {
    #[error("the TwiML document is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("the answer is not XML (line {line}, column {column}): {reason}")]
    NotXml {
        line: u32,
        column: u32,
        reason: String,
    },
    #[error("the root element is <{found}> (line {line}), TwiML needs <Response>")]
    NotResponse { found: String, line: u32 },
    #[error(
        "unsupported TwiML verb <{verb}> at line {line}, column {column} (supported: {SUPPORTED})"
    )]
    UnknownVerb {
        verb: String,
        line: u32,
        column: u32,
    },
    #[error("<{verb}> at line {line}: attribute {attribute}=\"{value}\": {reason}")]
    BadAttribute {
        verb: String,
        attribute: String,
        value: String,
        reason: String,
        line: u32,
    },
    #[error("<{verb}> at line {line}: {reason}")]
    Invalid {
        verb: String,
        reason: String,
        line: u32,
    },
    #[error("the TwiML document has more than {max} verbs")]
    TooManyVerbs { max: usize },
}

pub fn parse(src: &str) -> Result<Vec<Verb>, TwimlError> {
    if src.len() > MAX_BYTES {
        return Err(TwimlError::TooLarge {
            size: src.len(),
            max: MAX_BYTES,
        });
    }
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(src, opts).map_err(|e| {
        let pos = e.pos();
        TwimlError::NotXml {
            line: pos.row,
            column: pos.col,
            reason: e.to_string(),
        }
    })?;
    let root = doc.root_element();
    let p = Parser { doc: &doc };
    if root.tag_name().name() != "Response" {
        return Err(TwimlError::NotResponse {
            found: short(root.tag_name().name()),
            line: p.line(root),
        });
    }
    let mut verbs = Vec::new();
    let mut count = 0usize;
    for el in root.children().filter(Node::is_element) {
        verbs.push(p.verb(el, false, &mut count)?);
    }
    Ok(verbs)
}

struct Parser<'a, 'i> {
    doc: &'a Document<'i>,
}

impl Parser<'_, '_> {
    fn line(&self, n: Node) -> u32 {
        self.doc.text_pos_at(n.range().start).row
    }

    fn verb(&self, el: Node, in_gather: bool, count: &mut usize) -> Result<Verb, TwimlError> {
        *count += 1;
        if *count > MAX_VERBS {
            return Err(TwimlError::TooManyVerbs { max: MAX_VERBS });
        }
        let name = el.tag_name().name();
        if in_gather && !matches!(name, "Say" | "Play" | "Pause") {
            return Err(self.invalid(
                el,
                format!(
                    "<{}> cannot be nested in <Gather> (only Say, Play and Pause)",
                    short(name)
                ),
            ));
        }
        let v = match name {
            "Say" => Verb::Say {
                text: self.text(el, true)?,
                voice: attr(el, "voice"),
                language: attr(el, "language"),
                loop_: self.loop_(el)?,
            },
            "Play" => {
                let url = text(el);
                let digits = attr(el, "digits");
                if let Some(d) = &digits
                    && let Some(c) = d.chars().find(|c| !(crate::flow_is_key(*c) || *c == 'w'))
                {
                    return Err(self.bad(
                        el,
                        "digits",
                        d,
                        format!("'{c}' is not a key (0-9, *, #, w)"),
                    ));
                }
                if url.is_empty() && digits.is_none() {
                    return Err(self.invalid(el, "no URL to play".into()));
                }
                Verb::Play {
                    url,
                    loop_: self.loop_(el)?,
                    digits,
                }
            }
            "Gather" => self.gather(el, count)?,
            "Pause" => Verb::Pause {
                length: Duration::from_secs(self.int(el, "length", 1, 0, 600)?),
            },
            "Redirect" => Verb::Redirect {
                url: self.text(el, false)?,
                method: self.method(el)?,
            },
            "Hangup" => Verb::Hangup,
            "Reject" => Verb::Reject {
                reason: attr(el, "reason").unwrap_or_else(|| "rejected".into()),
            },
            "Enqueue" => {
                let queue = self.text(el, false)?;
                if queue.chars().count() > 64 {
                    return Err(
                        self.invalid(el, "the queue name is longer than 64 characters".into())
                    );
                }
                Verb::Enqueue {
                    queue,
                    wait_url: attr(el, "waitUrl"),
                    action: attr(el, "action"),
                    method: self.method(el)?,
                }
            }
            "Dial" => self.dial(el)?,
            "Record" => Verb::Record(Record {
                max_length: Duration::from_secs(self.int(el, "maxLength", 3600, 1, 14_400)?),
                timeout: Duration::from_secs(self.int(el, "timeout", 5, 0, 3600)?),
                finish_on_key: self.keys(el, "finishOnKey", "1234567890*#")?,
                play_beep: self.bool(el, "playBeep", true)?,
                action: attr(el, "action"),
                method: self.method(el)?,
            }),
            "Sms" | "Message" => {
                let mut body = text(el);
                for child in el.children().filter(Node::is_element) {
                    match child.tag_name().name() {
                        "Body" => body.push_str(&text(child)),
                        other => {
                            return Err(self.invalid(
                                el,
                                format!(
                                    "<{}> is not supported inside <{name}> (only <Body>)",
                                    short(other)
                                ),
                            ));
                        }
                    }
                }
                if body.trim().is_empty() {
                    return Err(self.invalid(el, "the message has no body".into()));
                }
                Verb::Message {
                    to: attr(el, "to"),
                    from: attr(el, "from"),
                    body: body.trim().to_string(),
                }
            }
            other => {
                let pos = self.doc.text_pos_at(el.range().start);
                return Err(TwimlError::UnknownVerb {
                    verb: short(other),
                    line: pos.row,
                    column: pos.col,
                });
            }
        };
        Ok(v)
    }

    fn gather(&self, el: Node, count: &mut usize) -> Result<Verb, TwimlError> {
        let input = attr(el, "input").unwrap_or_else(|| "dtmf".into());
        if !input.split_whitespace().any(|i| i == "dtmf") {
            return Err(self.bad(
                el,
                "input",
                &input,
                "only dtmf input is supported (no speech recognition)".into(),
            ));
        }
        let num_digits = match attr(el, "numDigits") {
            None => None,
            Some(_) => Some(self.int(el, "numDigits", 1, 1, 64)? as u32),
        };
        let finish = self.keys(el, "finishOnKey", "#")?;
        if finish.chars().count() > 1 {
            return Err(self.bad(
                el,
                "finishOnKey",
                &finish,
                "one key, or empty for none".into(),
            ));
        }
        let mut nested = Vec::new();
        for child in el.children().filter(Node::is_element) {
            nested.push(self.verb(child, true, count)?);
        }
        Ok(Verb::Gather(Gather {
            num_digits,
            timeout: Duration::from_secs(self.int(el, "timeout", 5, 1, 600)?),
            action: attr(el, "action"),
            method: self.method(el)?,
            finish_on_key: finish.chars().next(),
            action_on_empty_result: self.bool(el, "actionOnEmptyResult", false)?,
            nested,
        }))
    }

    fn dial(&self, el: Node) -> Result<Verb, TwimlError> {
        let mut targets = Vec::new();
        let bare = text(el);
        if !bare.is_empty() {
            targets.push(self.target(el, &bare)?);
        }
        for child in el.children().filter(Node::is_element) {
            let t = text(child);
            match child.tag_name().name() {
                "Number" => targets.push(DialTarget::Number(self.number(child, &t)?)),
                "Sip" => {
                    if !(t.starts_with("sip:") || t.starts_with("sips:")) {
                        return Err(
                            self.invalid(child, format!("\"{}\" is not a sip: URI", short(&t)))
                        );
                    }
                    targets.push(DialTarget::Sip(t));
                }
                other => {
                    return Err(self.invalid(
                        el,
                        format!(
                            "<Dial><{}> is not supported (Number and Sip only)",
                            short(other)
                        ),
                    ));
                }
            }
        }
        if targets.is_empty() {
            return Err(self.invalid(el, "nothing to dial".into()));
        }
        Ok(Verb::Dial(Dial {
            targets,
            timeout: Duration::from_secs(self.int(el, "timeout", 30, 5, 600)?),
            time_limit: Duration::from_secs(self.int(el, "timeLimit", 14_400, 1, 86_400)?),
            caller_id: attr(el, "callerId"),
            action: attr(el, "action"),
            method: self.method(el)?,
        }))
    }

    fn target(&self, el: Node, t: &str) -> Result<DialTarget, TwimlError> {
        if t.starts_with("sip:") || t.starts_with("sips:") {
            Ok(DialTarget::Sip(t.to_string()))
        } else {
            Ok(DialTarget::Number(self.number(el, t)?))
        }
    }

    fn number(&self, el: Node, t: &str) -> Result<String, TwimlError> {
        let digits: String = t
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
            .collect();
        let body = digits.strip_prefix('+').unwrap_or(&digits);
        if body.is_empty() || body.len() > 20 || !body.chars().all(|c| c.is_ascii_digit()) {
            return Err(self.invalid(el, format!("\"{}\" is not a phone number", short(t))));
        }
        Ok(digits)
    }

    /// The element's text, required non-empty.
    fn text(&self, el: Node, deep: bool) -> Result<String, TwimlError> {
        let t = if deep {
            // Say may hold SSML (<break/>, <prosody>): keep its words.
            el.descendants()
                .filter(Node::is_text)
                .filter_map(|n| n.text())
                .collect::<Vec<_>>()
                .join(" ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            text(el)
        };
        if t.is_empty() {
            return Err(self.invalid(el, "is empty".into()));
        }
        Ok(t)
    }

    fn loop_(&self, el: Node) -> Result<u32, TwimlError> {
        let n = self.int(el, "loop", 1, 0, 1000)? as u32;
        Ok(if n == 0 {
            LOOP_FOREVER
        } else {
            n.min(LOOP_FOREVER)
        })
    }

    fn int(
        &self,
        el: Node,
        name: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, TwimlError> {
        let Some(v) = attr(el, name) else {
            return Ok(default);
        };
        match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.bad(
                el,
                name,
                &v,
                format!("expected a whole number from {min} to {max}"),
            )),
        }
    }

    fn bool(&self, el: Node, name: &str, default: bool) -> Result<bool, TwimlError> {
        match attr(el, name).as_deref() {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(self.bad(el, name, v, "expected true or false".into())),
        }
    }

    fn keys(&self, el: Node, name: &str, default: &str) -> Result<String, TwimlError> {
        let v = attr(el, name).unwrap_or_else(|| default.to_string());
        if let Some(c) = v.chars().find(|c| !crate::flow_is_key(*c)) {
            return Err(self.bad(el, name, &v, format!("'{c}' is not a key (0-9, *, #)")));
        }
        Ok(v)
    }

    fn method(&self, el: Node) -> Result<Method, TwimlError> {
        match attr(el, "method") {
            None => Ok(Method::Post),
            Some(m) if m.eq_ignore_ascii_case("POST") => Ok(Method::Post),
            Some(m) if m.eq_ignore_ascii_case("GET") => Ok(Method::Get),
            Some(m) => Err(self.bad(el, "method", &m, "expected GET or POST".into())),
        }
    }

    fn bad(&self, el: Node, attribute: &str, value: &str, reason: String) -> TwimlError {
        TwimlError::BadAttribute {
            verb: short(el.tag_name().name()),
            attribute: attribute.to_string(),
            value: short(value),
            reason,
            line: self.line(el),
        }
    }

    fn invalid(&self, el: Node, reason: String) -> TwimlError {
        TwimlError::Invalid {
            verb: short(el.tag_name().name()),
            reason,
            line: self.line(el),
        }
    }
}

fn attr(el: Node, name: &str) -> Option<String> {
    el.attribute(name).map(str::to_string)
}

/// The element's own text (not its children's), trimmed.
fn text(el: Node) -> String {
    el.children()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect::<String>()
        .trim()
        .to_string()
}

/// At most 40 characters of customer input in a message.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}
