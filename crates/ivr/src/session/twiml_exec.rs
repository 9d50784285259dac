//! Running TwiML: verbs in order, webhook requests for Gather/Record/Dial
//! results and Redirect, hang-up at the end of the document (as Twilio).

use super::*;
use crate::twiml::{self, Verb};

impl Session {
    /// Resolves `raw` against the current document and asks the host for it.
    pub(super) fn fetch(
        &mut self,
        raw: &str,
        method: Method,
        params: Vec<(String, String)>,
        now: Instant,
    ) {
        let url = match self.resolve(raw) {
            Ok(u) => u,
            Err(e) => return self.fail(e, now),
        };
        self.fetches += 1;
        self.idle_fetches += 1;
        if self.fetches > limits::MAX_FETCHES {
            return self.fail(
                SessionError::LoopLimit {
                    limit: limits::MAX_FETCHES,
                },
                now,
            );
        }
        if self.idle_fetches > limits::MAX_IDLE_FETCHES {
            let count = self.idle_fetches - 1;
            return self.fail(SessionError::FetchLoop { count }, now);
        }
        self.out.push_back(Action::Fetch {
            url: url.clone(),
            method,
            params,
        });
        self.mode = Mode::Fetching {
            url,
            deadline: now + limits::FETCH_GUARD,
        };
    }

    /// An absolute http(s) URL, relative ones against the current document.
    fn resolve(&self, raw: &str) -> Result<String, SessionError> {
        let bad = |reason: String| SessionError::BadUrl {
            url: raw.chars().take(200).collect(),
            reason,
        };
        let parsed = match self.doc.as_ref().map(|d| d.url.as_str()) {
            Some(base) => url::Url::parse(base).and_then(|b| b.join(raw.trim())),
            None => url::Url::parse(raw.trim()),
        }
        .map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(bad("only http and https URLs can be used".into()));
        }
        Ok(parsed.to_string())
    }

    pub(super) fn on_fetched(&mut self, result: Result<FetchedDoc, FetchError>, now: Instant) {
        let Mode::Fetching { url, .. } = &self.mode else {
            return;
        };
        let url = url.clone();
        let doc = match result {
            Ok(doc) => doc,
            Err(error) => return self.fail(SessionError::Fetch { url, error }, now),
        };
        if let Some(ct) = &doc.content_type {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let xml = mime.is_empty()
                || mime == "text/xml"
                || mime == "application/xml"
                || mime.ends_with("+xml");
            if !xml {
                let content_type = mime.chars().take(80).collect();
                return self.fail(SessionError::NotTwiml { url, content_type }, now);
            }
        }
        match twiml::parse(&doc.body) {
            Ok(verbs) => {
                if !self.count_transition(now) {
                    return;
                }
                self.doc = Some(Doc { url, verbs, pc: 0 });
                self.mode = Mode::Run(Next::Twiml);
            }
            Err(error) => self.fail(
                SessionError::Twiml {
                    url,
                    error: Box::new(error),
                },
                now,
            ),
        }
    }

    /// Executes the next verb of the document.
    pub(super) fn twiml_step(&mut self, now: Instant) {
        let Some(doc) = self.doc.as_mut() else {
            return self.hang_up();
        };
        let Some(verb) = doc.verbs.get(doc.pc).cloned() else {
            // End of the document: Twilio hangs up.
            return self.hang_up();
        };
        doc.pc += 1;
        let url = doc.url.clone();
        self.event(IvrEvent::Verb {
            verb: verb.name(),
            url,
        });
        self.mode = Mode::Run(Next::Twiml);
        match verb {
            Verb::Say { .. } | Verb::Play { .. } | Verb::Pause { .. } => {
                if let Err(e) = self.queue_verb_audio(&verb) {
                    self.fail(e, now);
                }
            }
            Verb::Gather(g) => {
                for v in &g.nested {
                    if let Err(e) = self.queue_verb_audio(v) {
                        return self.fail(e, now);
                    }
                }
                self.mode = Mode::Collect(Box::new(Collecting {
                    num_digits: g.num_digits.unwrap_or(u32::MAX),
                    timeout: g.timeout,
                    inter_digit: g.timeout,
                    finish: g.finish_on_key,
                    mask: false,
                    attempt: 0,
                    digits: String::new(),
                    deadline: None,
                    origin: Origin::Twiml(g),
                }));
            }
            Verb::Redirect { url, method } => {
                let params = call_params(&self.facts.call, "in-progress");
                self.fetch(&url, method, params, now);
            }
            Verb::Hangup | Verb::Reject { .. } => self.hang_up(),
            Verb::Enqueue {
                queue, wait_url, ..
            } => {
                let wait_url = match wait_url.map(|w| self.resolve(&w)).transpose() {
                    Ok(w) => w,
                    Err(e) => return self.fail(e, now),
                };
                self.out.push_back(Action::Enqueue {
                    queue,
                    priority: 0,
                    skills: Vec::new(),
                    triage: None,
                    wait_url,
                });
                self.mode = Mode::Done;
            }
            Verb::Dial(d) => {
                self.out.push_back(Action::Dial {
                    targets: d.targets,
                    timeout: d.timeout,
                    time_limit: d.time_limit,
                    caller_id: d.caller_id,
                });
                self.mode = Mode::Dialing {
                    action: d.action.map(|a| (a, d.method)),
                };
            }
            Verb::Record(r) => {
                self.out.push_back(Action::StartRecording {
                    max: r.max_length,
                    finish_on_key: r.finish_on_key.clone(),
                    beep: r.play_beep,
                    silence_timeout: r.timeout,
                    triage: None,
                });
                self.mode = Mode::Recording {
                    deadline: now + r.max_length + Duration::from_secs(1),
                    stopping: false,
                    finish: r.finish_on_key,
                    key: None,
                    after: AfterRecord::Twiml {
                        action: r.action,
                        method: r.method,
                    },
                };
            }
            Verb::Message { to, from, body } => {
                self.out.push_back(Action::SendSms {
                    template: None,
                    body: Some(body),
                    to,
                    from,
                });
            }
        }
    }

    fn queue_verb_audio(&mut self, verb: &Verb) -> Result<(), SessionError> {
        match verb {
            Verb::Say {
                text,
                voice,
                language,
                loop_,
            } => {
                for _ in 0..*loop_ {
                    self.audio.push_back(Audio::Say {
                        text: text.clone(),
                        language: language.clone(),
                        voice: voice.clone(),
                    });
                }
            }
            Verb::Play { url, loop_, digits } => {
                if let Some(d) = digits {
                    self.audio.push_back(Audio::Digits(d.clone()));
                }
                if !url.is_empty() {
                    let source = AudioSource::Url(self.resolve(url)?);
                    for _ in 0..*loop_ {
                        self.audio.push_back(Audio::Play(source.clone()));
                    }
                }
            }
            Verb::Pause { length } => self.audio.push_back(Audio::Pause(*length)),
            _ => {}
        }
        Ok(())
    }

    fn doc_url(&self) -> String {
        self.doc.as_ref().map(|d| d.url.clone()).unwrap_or_default()
    }

    pub(super) fn twiml_gathered(
        &mut self,
        g: &twiml::Gather,
        digits: &str,
        finished: Option<char>,
        now: Instant,
    ) {
        if digits.is_empty() && !g.action_on_empty_result {
            // No input: go on with the verb after the Gather (Twilio).
            self.event(IvrEvent::Timeout {
                node: "<Gather>".into(),
            });
            self.mode = Mode::Run(Next::Twiml);
            return;
        }
        let mut params = call_params(&self.facts.call, "in-progress");
        params.push(("Digits".into(), digits.to_string()));
        params.push((
            "FinishedOnKey".into(),
            finished.map(String::from).unwrap_or_default(),
        ));
        let target = g.action.clone().unwrap_or_else(|| self.doc_url());
        self.fetch(&target, g.method, params, now);
    }

    pub(super) fn twiml_recorded(
        &mut self,
        action: Option<String>,
        method: Method,
        duration: Duration,
        reference: String,
        key: Option<char>,
        now: Instant,
    ) {
        if duration.is_zero() || reference.is_empty() {
            // Nothing recorded: the next verb (Twilio).
            self.mode = Mode::Run(Next::Twiml);
            return;
        }
        let mut params = call_params(&self.facts.call, "in-progress");
        params.push(("RecordingUrl".into(), reference));
        params.push(("RecordingDuration".into(), duration.as_secs().to_string()));
        params.push(("Digits".into(), key.map(String::from).unwrap_or_default()));
        let target = action.unwrap_or_else(|| self.doc_url());
        self.fetch(&target, method, params, now);
    }

    pub(super) fn on_dial_done(&mut self, status: DialStatus, duration: Duration, now: Instant) {
        if !matches!(self.mode, Mode::Dialing { .. }) {
            return;
        }
        let Mode::Dialing { action } = std::mem::replace(&mut self.mode, Mode::Run(Next::Twiml))
        else {
            return;
        };
        self.idle_fetches = 0;
        if let Some((url, method)) = action {
            let mut params = call_params(&self.facts.call, "in-progress");
            params.push(("DialCallStatus".into(), status.as_str().into()));
            params.push(("DialCallDuration".into(), duration.as_secs().to_string()));
            self.fetch(&url, method, params, now);
        }
    }
}
