//! Running flow nodes: entering a node plays its prompts, then its step.

use super::*;
use crate::flow::{Collect, CollectKind, Condition, Step};

impl Session {
    /// Enters `name`: timeline event, triage, its prompts, then its step.
    pub(super) fn enter(&mut self, name: &str, now: Instant) {
        let Some(flow) = self.flow.clone() else {
            return self.hang_up();
        };
        let Some(node) = flow.node(name) else {
            return self.fail(
                SessionError::UnknownNode {
                    node: name.to_string(),
                },
                now,
            );
        };
        if !self.count_transition(now) {
            return;
        }
        self.event(IvrEvent::NodeEntered {
            node: name.to_string(),
        });
        if let Some(label) = &node.triage {
            self.event(IvrEvent::Triage {
                label: label.clone(),
            });
        }
        self.queue_prompts(&node.prompts);
        self.mode = Mode::Run(Next::FlowStep(name.to_string()));
    }

    fn goto_or_hang_up(&mut self, next: Option<&str>, now: Instant) {
        match next {
            Some(n) => self.enter(n, now),
            None => self.hang_up(),
        }
    }

    pub(super) fn flow_step(&mut self, name: &str, now: Instant) {
        let Some(flow) = self.flow.clone() else {
            return self.hang_up();
        };
        let Some(node) = flow.node(name) else {
            return self.fail(
                SessionError::UnknownNode {
                    node: name.to_string(),
                },
                now,
            );
        };
        match &node.step {
            Step::Continue { next } => self.goto_or_hang_up(next.as_deref(), now),
            Step::Hangup => self.hang_up(),
            Step::Collect(c) => self.start_collect(name, c, 0, &[]),
            Step::Branch(rules) => {
                let next = rules
                    .iter()
                    .find(|r| self.holds(&r.when, now))
                    .map(|r| r.next.clone());
                self.goto_or_hang_up(next.as_deref(), now);
            }
            Step::Queue(q) => {
                if let Some(label) = &q.triage {
                    self.event(IvrEvent::Triage {
                        label: label.clone(),
                    });
                }
                self.out.push_back(Action::Enqueue {
                    queue: q.name.clone(),
                    priority: q.priority,
                    skills: q.skills.clone(),
                    triage: q.triage.clone(),
                    wait_url: None,
                });
                self.mode = Mode::Done;
            }
            Step::Sms { sms, next } => {
                self.out.push_back(Action::SendSms {
                    template: sms.template.clone(),
                    body: sms.body.clone(),
                    to: sms.to.clone(),
                    from: None,
                });
                self.goto_or_hang_up(next.as_deref(), now);
            }
            Step::Record { record, next } => {
                if let Some(label) = &record.triage {
                    self.event(IvrEvent::Triage {
                        label: label.clone(),
                    });
                }
                self.out.push_back(Action::StartRecording {
                    max: record.max,
                    finish_on_key: record.finish_on_key.clone(),
                    beep: record.beep,
                    silence_timeout: record.silence_timeout,
                    triage: record.triage.clone(),
                });
                self.mode = Mode::Recording {
                    // The host enforces `max` too; this is the backstop,
                    // a second later to leave it the first word.
                    deadline: now + record.max + Duration::from_secs(1),
                    stopping: false,
                    finish: record.finish_on_key.clone(),
                    key: None,
                    after: AfterRecord::Flow { next: next.clone() },
                };
            }
            Step::Transfer(t) => {
                self.out.push_back(Action::Transfer {
                    to: t.to.clone(),
                    caller_id: t.caller_id.clone(),
                    timeout: t.timeout,
                });
                self.mode = Mode::Done;
            }
            Step::Webhook(w) => {
                self.doc_on_error = w.on_error.clone().or_else(|| flow.on_error.clone());
                let params = call_params(&self.facts.call, "in-progress");
                self.fetch(&w.url, w.method, params, now);
            }
        }
    }

    /// Listens: the prompt (after `before`, e.g. "not an option") can be
    /// interrupted by a digit; the timeout starts when it has played.
    fn start_collect(&mut self, node: &str, c: &Collect, attempt: u32, before: &[Prompt]) {
        self.queue_prompts(before);
        self.queue_prompts(&c.prompt);
        let mask = matches!(c.kind, CollectKind::Gather { mask: true, .. });
        self.mode = Mode::Collect(Box::new(Collecting {
            origin: Origin::Flow {
                node: node.to_string(),
            },
            num_digits: c.num_digits,
            timeout: c.timeout,
            inter_digit: c.inter_digit_timeout,
            finish: c.finish_on_key,
            mask,
            attempt,
            digits: String::new(),
            deadline: None,
        }));
    }

    pub(super) fn flow_collected(&mut self, got: Collecting, node: &str, now: Instant) {
        let Some(flow) = self.flow.clone() else {
            return self.hang_up();
        };
        let Some(Step::Collect(c)) = flow.node(node).map(|n| &n.step) else {
            return self.fail(
                SessionError::UnknownNode {
                    node: node.to_string(),
                },
                now,
            );
        };
        let node_s = node.to_string();
        if got.digits.is_empty() {
            self.event(IvrEvent::Timeout { node: node_s });
            return self.retry(node, c, &c.no_input, got.attempt, now);
        }
        match &c.kind {
            CollectKind::Menu { options } => {
                let choice = got.digits.chars().next().unwrap_or('#');
                if let Some(next) = options.get(&choice) {
                    self.event(IvrEvent::MenuChoice {
                        node: node_s,
                        choice,
                        next: next.clone(),
                    });
                    return self.enter(next, now);
                }
            }
            CollectKind::Gather {
                next,
                store_as,
                mask,
            } => {
                if got.digits.chars().count() as u32 >= c.min_digits {
                    self.event(IvrEvent::Gathered {
                        node: node_s,
                        name: store_as.clone(),
                        digits: if *mask {
                            String::new()
                        } else {
                            got.digits.clone()
                        },
                    });
                    return self.enter(next, now);
                }
            }
        }
        let input = if got.mask {
            "*".repeat(got.digits.len())
        } else {
            got.digits
        };
        self.event(IvrEvent::Invalid {
            node: node.to_string(),
            input,
        });
        self.retry(node, c, &c.invalid, got.attempt, now)
    }

    fn retry(
        &mut self,
        node: &str,
        c: &Collect,
        on: &crate::flow::Retry,
        attempt: u32,
        now: Instant,
    ) {
        if let Some(next) = &on.next {
            return self.enter(next, now);
        }
        if attempt >= c.retries {
            self.event(IvrEvent::Exhausted {
                node: node.to_string(),
            });
            return self.goto_or_hang_up(c.exhausted.as_deref(), now);
        }
        self.start_collect(node, c, attempt + 1, &on.prompt);
    }

    /// All the tests of a branch condition hold.
    fn holds(&self, cond: &Condition, now: Instant) -> bool {
        let at = self.now_utc(now);
        let calendar: Option<&Calendar> = self
            .facts
            .calendar
            .as_deref()
            .or_else(|| self.flow.as_ref().and_then(|f| f.calendar()));
        if let Some(want) = cond.open {
            let open = self
                .facts
                .open
                .or_else(|| calendar.map(|c| c.is_open(at)))
                .unwrap_or(true);
            if open != want {
                return false;
            }
        }
        if let Some(want) = cond.holiday
            && calendar.is_some_and(|c| c.is_holiday(at)) != want
        {
            return false;
        }
        if cond.time.is_some() || cond.days.is_some() {
            // No calendar supplied for a named one: the clock is unknown.
            let Some(c) = calendar else { return false };
            let (day, minute) = c.local(at);
            if cond
                .time
                .is_some_and(|r| !crate::hours::range_contains(&r, minute))
            {
                return false;
            }
            if cond.days.as_ref().is_some_and(|d| !d.contains(&day)) {
                return false;
            }
        }
        cond.context.iter().all(|k| self.facts.context.contains(k))
            && !cond
                .not_context
                .iter()
                .any(|k| self.facts.context.contains(k))
    }

    pub(super) fn on_recording_done(
        &mut self,
        duration: Duration,
        reference: String,
        now: Instant,
    ) {
        if !matches!(self.mode, Mode::Recording { .. }) {
            return;
        }
        let Mode::Recording { after, key, .. } =
            std::mem::replace(&mut self.mode, Mode::Run(Next::Hangup))
        else {
            return;
        };
        self.idle_fetches = 0;
        if !reference.is_empty() {
            self.event(IvrEvent::Recorded {
                reference: reference.clone(),
                duration,
            });
        }
        match after {
            AfterRecord::Flow { next } => self.goto_or_hang_up(next.as_deref(), now),
            AfterRecord::Twiml { action, method } => {
                self.twiml_recorded(action, method, duration, reference, key, now)
            }
        }
    }
}
