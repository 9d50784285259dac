//! YAML tree → [`Flow`], collecting every problem rather than stopping at
//! the first: a flow author fixes a file in one pass.

use super::*;
use crate::hours;
use crate::yaml::{self, Key, Pos, Value};

type Y = yaml::Node;

const TOP: &[&str] = &[
    "name",
    "start",
    "language",
    "hours",
    "on_error",
    "error_message",
    "nodes",
];
const NODE: &[&str] = &[
    "say", "play", "prompt", "triage", "next", "menu", "gather", "branch", "queue", "sms",
    "record", "transfer", "webhook", "hangup",
];
const ACTIONS: &[&str] = &[
    "menu", "gather", "branch", "queue", "sms", "record", "transfer", "webhook", "hangup",
];
const PROMPT_KEYS: &[&str] = &["say", "play", "prompt"];

/// A reference to a node, checked once all nodes are known.
pub(super) struct Ref {
    pub from: String,
    pub target: String,
    pub pos: Pos,
}

#[derive(Default)]
pub(super) struct Decoder {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    pub refs: Vec<Ref>,
    pub node_pos: BTreeMap<String, Pos>,
    /// Conditions that need a time zone (time, days, holiday).
    pub clock_uses: Vec<(Pos, String)>,
}

pub(super) fn load(src: &str) -> Result<Flow, FlowError> {
    let mut d = Decoder::default();
    let flow = match yaml::parse(src) {
        Ok(root) => d.flow(&root),
        Err(e) => {
            d.err(e.pos, format!("YAML syntax: {}", e.message));
            None
        }
    };
    if let Some(flow) = &flow
        && d.errors.is_empty()
    {
        super::graph::check(flow, &mut d);
    }
    d.errors.sort_by_key(|e| (e.line, e.column));
    d.warnings.sort_by_key(|e| (e.line, e.column));
    match flow {
        Some(mut flow) if d.errors.is_empty() => {
            flow.warnings = d.warnings;
            Ok(flow)
        }
        _ => Err(FlowError {
            errors: d.errors,
            warnings: d.warnings,
        }),
    }
}

/// A tenant calendar on its own: the same fields as a flow's inline `hours`
/// (`time_zone`, `weekly`, `holidays`), with the same diagnostics.
pub(super) fn load_calendar(src: &str) -> Result<Calendar, Vec<Diagnostic>> {
    let mut d = Decoder::default();
    let cal = match yaml::parse(src) {
        Ok(root) => match d.hours(&root) {
            Some(Hours::Inline(c)) => Some(c),
            Some(Hours::Named(_)) => {
                d.err(
                    root.pos,
                    "a calendar cannot name another calendar: give time_zone, weekly and holidays",
                );
                None
            }
            None => None,
        },
        Err(e) => {
            d.err(e.pos, format!("YAML syntax: {}", e.message));
            None
        }
    };
    match cal {
        Some(c) if d.errors.is_empty() => Ok(c),
        _ => {
            d.errors.sort_by_key(|e| (e.line, e.column));
            Err(d.errors)
        }
    }
}

/// A mapping being read: which fields it has, where it is, what to call it.
struct Fields<'a> {
    what: String,
    pos: Pos,
    entries: &'a [(Key, Y)],
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Y> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    fn key_pos(&self, key: &str) -> Pos {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(k, _)| k.pos)
            .unwrap_or(self.pos)
    }
}

impl Decoder {
    pub(super) fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(diag(pos, Severity::Error, message));
    }

    pub(super) fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.warnings.push(diag(pos, Severity::Warning, message));
    }

    /// A mapping with only `allowed` keys (unknown ones are reported).
    fn map<'a>(&mut self, y: &'a Y, what: &str, allowed: &[&str]) -> Option<Fields<'a>> {
        let entries: &'a [(Key, Y)] = match &y.value {
            Value::Map(e) => e,
            Value::Null => &[],
            _ => {
                self.err(
                    y.pos,
                    format!("{what}: expected a mapping, found {}", y.kind()),
                );
                return None;
            }
        };
        for (k, _) in entries {
            if !allowed.contains(&k.text.as_str()) {
                self.err(
                    k.pos,
                    format!(
                        "{what}: unknown field \"{}\" (expected one of {})",
                        k.text,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Fields {
            what: what.to_string(),
            pos: y.pos,
            entries,
        })
    }

    fn missing(&mut self, f: &Fields, field: &str) {
        self.err(
            f.pos,
            format!("{}: missing required field \"{field}\"", f.what),
        );
    }

    fn scalar_of(&mut self, y: &Y, what: &str, field: &str) -> Option<String> {
        match &y.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.err(
                    y.pos,
                    format!("{what}: \"{field}\" must be a string, found {}", y.kind()),
                );
                None
            }
        }
    }

    fn str(&mut self, f: &Fields, field: &str) -> Option<String> {
        let y = f.get(field)?;
        let s = self.scalar_of(y, &f.what, field)?;
        if s.trim().is_empty() {
            self.err(y.pos, format!("{}: \"{field}\" is empty", f.what));
            return None;
        }
        Some(s)
    }

    fn req_str(&mut self, f: &Fields, field: &str) -> Option<String> {
        if f.get(field).is_none() {
            self.missing(f, field);
            return None;
        }
        self.str(f, field)
    }

    /// A reference to another node, checked later.
    fn node_ref(&mut self, f: &Fields, field: &str) -> Option<String> {
        let y = f.get(field)?;
        let s = self.str(f, field)?;
        self.refs.push(Ref {
            from: format!("{}: \"{field}\"", f.what),
            target: s.clone(),
            pos: y.pos,
        });
        Some(s)
    }

    fn int(&mut self, f: &Fields, field: &str, min: i64, max: i64) -> Option<i64> {
        let y = f.get(field)?;
        let s = self.scalar_of(y, &f.what, field)?;
        match s.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                self.err(
                    y.pos,
                    format!(
                        "{}: \"{field}\" {n} is out of range ({min} to {max})",
                        f.what
                    ),
                );
                None
            }
            Err(_) => {
                self.err(
                    y.pos,
                    format!(
                        "{}: \"{field}\" must be a whole number, found \"{s}\"",
                        f.what
                    ),
                );
                None
            }
        }
    }

    fn bool(&mut self, f: &Fields, field: &str) -> Option<bool> {
        let y = f.get(field)?;
        match &y.value {
            Value::Scalar {
                text,
                quoted: false,
            } if text == "true" => Some(true),
            Value::Scalar {
                text,
                quoted: false,
            } if text == "false" => Some(false),
            _ => {
                self.err(
                    y.pos,
                    format!("{}: \"{field}\" must be true or false", f.what),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        f: &Fields,
        field: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let y = f.get(field)?;
        let s = self.scalar_of(y, &f.what, field)?;
        let Some(d) = parse_duration(&s) else {
            self.err(
                y.pos,
                format!(
                    "{}: \"{field}\" must be a duration such as 5s, 500ms or 2m, found \"{s}\"",
                    f.what
                ),
            );
            return None;
        };
        if d < min || d > max {
            self.err(
                y.pos,
                format!(
                    "{}: \"{field}\" {s} is out of range ({} to {})",
                    f.what,
                    show_duration(min),
                    show_duration(max)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn strings(&mut self, f: &Fields, field: &str) -> Vec<String> {
        let Some(y) = f.get(field) else {
            return Vec::new();
        };
        let items: Vec<&Y> = match &y.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![y],
        };
        items
            .into_iter()
            .filter_map(|i| self.scalar_of(i, &f.what, field))
            .collect()
    }

    fn keys(&mut self, f: &Fields, field: &str, default: &str) -> Option<String> {
        let Some(y) = f.get(field) else {
            return Some(default.to_string());
        };
        let s = match &y.value {
            Value::Null => String::new(),
            _ => self.scalar_of(y, &f.what, field)?,
        };
        if let Some(c) = s.chars().find(|c| !is_key(*c)) {
            self.err(
                y.pos,
                format!(
                    "{}: \"{field}\" has '{c}', not a phone key (0-9, *, #)",
                    f.what
                ),
            );
            return None;
        }
        Some(s)
    }

    fn flow(&mut self, root: &Y) -> Option<Flow> {
        let f = self.map(root, "flow", TOP)?;
        let name = self.req_str(&f, "name");
        let start = self.node_ref(&f, "start");
        if f.get("start").is_none() {
            self.missing(&f, "start");
        }
        let language = self.str(&f, "language").unwrap_or_else(|| "en".into());
        let hours = f.get("hours").and_then(|y| self.hours(y));
        let on_error = self.node_ref(&f, "on_error");
        let error_message = self
            .str(&f, "error_message")
            .unwrap_or_else(|| DEFAULT_ERROR_MESSAGE.into());
        let mut nodes = BTreeMap::new();
        match f.get("nodes") {
            None => self.missing(&f, "nodes"),
            Some(y) => match &y.value {
                Value::Map(entries) if !entries.is_empty() => {
                    for (k, v) in entries {
                        self.node_pos.insert(k.text.clone(), k.pos);
                        if let Some(n) = self.node(k, v) {
                            nodes.insert(k.text.clone(), n);
                        }
                    }
                }
                _ => self.err(
                    y.pos,
                    "flow: \"nodes\" must be a mapping of node names to nodes",
                ),
            },
        }
        if hours.is_none() {
            for (pos, what) in std::mem::take(&mut self.clock_uses) {
                self.err(
                    pos,
                    format!("{what} needs the flow's \"hours\" (for its time zone)"),
                );
            }
        }
        Some(Flow {
            name: name?,
            start: start?,
            language,
            hours,
            on_error,
            error_message,
            nodes,
            warnings: Vec::new(),
        })
    }

    fn hours(&mut self, y: &Y) -> Option<Hours> {
        let f = self.map(y, "hours", &["time_zone", "weekly", "holidays", "calendar"])?;
        if let Some(name) = self.str(&f, "calendar") {
            if let Some(k) = ["time_zone", "weekly", "holidays"]
                .iter()
                .find(|k| f.get(k).is_some())
            {
                self.err(
                    f.key_pos(k),
                    format!("hours: \"{k}\" cannot be combined with \"calendar\" (a named tenant calendar)"),
                );
            }
            return Some(Hours::Named(name));
        }
        let tz = self.req_str(&f, "time_zone")?;
        let mut cal = match Calendar::new(&tz) {
            Ok(c) => c,
            Err(e) => {
                self.err(
                    f.get("time_zone").map_or(f.pos, |y| y.pos),
                    format!("hours: \"time_zone\": {e}"),
                );
                return None;
            }
        };
        if let Some(w) = f.get("weekly") {
            let entries = match &w.value {
                Value::Map(e) => e.as_slice(),
                _ => {
                    self.err(
                        w.pos,
                        "hours: \"weekly\" must map days (mon-fri, sat…) to hours",
                    );
                    &[]
                }
            };
            let mut seen: [Option<Pos>; 7] = [None; 7];
            for (k, v) in entries {
                let days = match hours::parse_days(&k.text) {
                    Ok(d) => d,
                    Err(e) => {
                        self.err(k.pos, format!("hours.weekly: {e}"));
                        continue;
                    }
                };
                let ranges = self.ranges(v, &format!("hours.weekly \"{}\"", k.text));
                for d in days {
                    let i = d.to_monday_zero_offset() as usize;
                    if let Some(first) = seen[i] {
                        self.err(
                            k.pos,
                            format!(
                                "hours.weekly: {} is already given at line {}",
                                k.text, first.line
                            ),
                        );
                        break;
                    }
                    seen[i] = Some(k.pos);
                    cal.open_on(d, &ranges);
                }
            }
        }
        if let Some(h) = f.get("holidays") {
            let items = match &h.value {
                Value::Seq(items) => items.as_slice(),
                _ => {
                    self.err(h.pos, "hours: \"holidays\" must be a list of dates");
                    &[]
                }
            };
            for item in items {
                let (date_y, ranges) = match &item.value {
                    Value::Map(_) => {
                        let Some(hf) = self.map(item, "hours.holidays", &["date", "hours"]) else {
                            continue;
                        };
                        let ranges = hf
                            .get("hours")
                            .map(|r| self.ranges(r, "hours.holidays \"hours\""));
                        match hf.get("date") {
                            Some(d) => (d, ranges.unwrap_or_default()),
                            None => {
                                self.missing(&hf, "date");
                                continue;
                            }
                        }
                    }
                    _ => (item, Vec::new()),
                };
                let Some(text) = self.scalar_of(date_y, "hours.holidays", "date") else {
                    continue;
                };
                match hours::parse_date(&text) {
                    Ok(date) => cal.holiday(date, ranges),
                    Err(e) => self.err(date_y.pos, format!("hours.holidays: {e}")),
                }
            }
        }
        Some(Hours::Inline(cal))
    }

    /// `"08:00-18:00"`, `"08:00-12:00, 13:00-17:00"`, `closed`, or a list.
    fn ranges(&mut self, y: &Y, what: &str) -> Vec<hours::TimeRange> {
        let items: Vec<&Y> = match &y.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![y],
        };
        let mut out = Vec::new();
        for i in items {
            let Some(s) = self.scalar_of(i, what, "hours") else {
                continue;
            };
            match hours::parse_ranges(&s) {
                Ok(r) => out.extend(r),
                Err(e) => self.err(i.pos, format!("{what}: {e}")),
            }
        }
        out
    }

    fn node(&mut self, key: &Key, y: &Y) -> Option<Node> {
        let what = format!("node \"{}\"", key.text);
        let f = self.map(y, &what, NODE)?;
        let prompts = self.prompts_in(&f);
        let triage = self.str(&f, "triage");
        // In file order, so that the error points at the second one.
        let actions: Vec<&str> = f
            .entries
            .iter()
            .map(|(k, _)| k.text.as_str())
            .filter(|k| ACTIONS.contains(k))
            .collect();
        if actions.len() > 1 {
            self.err(
                f.key_pos(actions[1]),
                format!(
                    "{what}: \"{}\" and \"{}\" cannot both be set (one action per node)",
                    actions[0], actions[1]
                ),
            );
            return None;
        }
        let action = actions.first().copied();
        let takes_next = matches!(action, None | Some("sms") | Some("record"));
        if !takes_next && f.get("next").is_some() {
            self.err(
                f.key_pos("next"),
                format!(
                    "{what}: \"next\" has no effect with \"{}\"{}",
                    action.unwrap_or_default(),
                    if action == Some("gather") {
                        " (put it inside \"gather\")"
                    } else {
                        ""
                    }
                ),
            );
        }
        let next = if takes_next {
            self.node_ref(&f, "next")
        } else {
            None
        };
        let step = match action {
            None => {
                if prompts.is_empty() && next.is_none() {
                    self.err(
                        f.pos,
                        format!("{what}: does nothing (give it say/play, an action, or next)"),
                    );
                    return None;
                }
                Step::Continue { next }
            }
            Some(a) => {
                let y = f.get(a)?;
                let sub = format!("{what} {a}");
                match a {
                    "hangup" => match &y.value {
                        Value::Null | Value::Map(_) => {
                            self.map(y, &sub, &[])?;
                            Step::Hangup
                        }
                        Value::Scalar { text, .. } if text == "true" => Step::Hangup,
                        _ => {
                            self.err(y.pos, format!("{sub}: write \"hangup: {{}}\""));
                            return None;
                        }
                    },
                    "menu" | "gather" => Step::Collect(self.collect(y, &sub, a == "menu")?),
                    "branch" => Step::Branch(self.branch(y, &sub)?),
                    "queue" => Step::Queue(self.queue(y, &sub)?),
                    "sms" => Step::Sms {
                        sms: self.sms(y, &sub)?,
                        next,
                    },
                    "record" => Step::Record {
                        record: self.record(y, &sub)?,
                        next,
                    },
                    "transfer" => Step::Transfer(self.transfer(y, &sub)?),
                    _ => Step::Webhook(self.webhook(y, &sub)?),
                }
            }
        };
        Some(Node {
            name: key.text.clone(),
            line: key.pos.line,
            prompts,
            triage,
            step,
        })
    }

    /// `say`, `play` or `prompt` in a mapping (at most one of them).
    fn prompts_in(&mut self, f: &Fields) -> Vec<Prompt> {
        let given: Vec<&str> = PROMPT_KEYS
            .iter()
            .copied()
            .filter(|k| f.get(k).is_some())
            .collect();
        if given.len() > 1 {
            self.err(
                f.key_pos(given[1]),
                format!(
                    "{}: \"{}\" and \"{}\" cannot both be set (use a \"prompt\" list to mix them)",
                    f.what, given[0], given[1]
                ),
            );
            return Vec::new();
        }
        let Some(k) = given.first() else {
            return Vec::new();
        };
        let y = f.get(k).expect("present");
        let items: Vec<&Y> = match &y.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![y],
        };
        let mut out = Vec::new();
        for i in items {
            let p = match *k {
                "say" => self.say(i, &f.what),
                "play" => self.play(i, &f.what),
                _ => self.prompt_item(i, &f.what),
            };
            out.extend(p);
        }
        out
    }

    fn say(&mut self, y: &Y, what: &str) -> Option<Prompt> {
        let s = self.scalar_of(y, what, "say")?;
        if s.trim().is_empty() {
            self.err(y.pos, format!("{what}: \"say\" is empty"));
            return None;
        }
        Some(Prompt::Say(s))
    }

    fn play(&mut self, y: &Y, what: &str) -> Option<Prompt> {
        if let Value::Map(_) = y.value {
            let f = self.map(y, &format!("{what} play"), &["url"])?;
            let url = self.req_str(&f, "url")?;
            let pos = f.get("url").map_or(f.pos, |u| u.pos);
            self.absolute_url(&url, pos, &f.what)?;
            return Some(Prompt::Play(url));
        }
        let s = self.scalar_of(y, what, "play")?;
        if s.trim().is_empty() {
            self.err(y.pos, format!("{what}: \"play\" is empty"));
            return None;
        }
        Some(Prompt::Play(s))
    }

    /// In a `prompt` list: a string (said), or {say}, {play} or {pause}.
    fn prompt_item(&mut self, y: &Y, what: &str) -> Option<Prompt> {
        if let Value::Scalar { .. } = y.value {
            return self.say(y, what);
        }
        let f = self.map(y, &format!("{what} prompt"), &["say", "play", "pause"])?;
        let (k, v) = match f.entries {
            [(k, v)] => (k.text.as_str(), v),
            _ => {
                self.err(
                    f.pos,
                    format!("{}: each item is one of say, play or pause", f.what),
                );
                return None;
            }
        };
        match k {
            "say" => self.say(v, what),
            "play" => self.play(v, what),
            _ => self
                .duration(&f, "pause", Duration::ZERO, Duration::from_secs(60))
                .map(Prompt::Pause),
        }
    }

    fn collect(&mut self, y: &Y, what: &str, menu: bool) -> Option<Collect> {
        let allowed: &[&str] = if menu {
            &[
                "prompt",
                "say",
                "play",
                "options",
                "timeout",
                "retries",
                "invalid",
                "no_input",
                "exhausted",
            ]
        } else {
            &[
                "prompt",
                "say",
                "play",
                "num_digits",
                "min_digits",
                "timeout",
                "inter_digit_timeout",
                "finish_on_key",
                "retries",
                "invalid",
                "no_input",
                "exhausted",
                "store_as",
                "mask",
                "next",
            ]
        };
        let f = self.map(y, what, allowed)?;
        let prompt = self.prompts_in(&f);
        let timeout = self
            .duration(
                &f,
                "timeout",
                Duration::from_secs(1),
                Duration::from_secs(60),
            )
            .unwrap_or(Duration::from_secs(5));
        let retries = self.int(&f, "retries", 0, 10).unwrap_or(2) as u32;
        let invalid = self.retry(&f, "invalid");
        let no_input = self.retry(&f, "no_input");
        let exhausted = self.node_ref(&f, "exhausted");
        if menu {
            let options = self.options(&f)?;
            return Some(Collect {
                prompt,
                kind: CollectKind::Menu { options },
                num_digits: 1,
                min_digits: 1,
                timeout,
                inter_digit_timeout: timeout,
                finish_on_key: None,
                retries,
                invalid,
                no_input,
                exhausted,
            });
        }
        let num_digits = self.int(&f, "num_digits", 1, 32).unwrap_or(32) as u32;
        let min_digits = self.int(&f, "min_digits", 1, 32).unwrap_or(1) as u32;
        if min_digits > num_digits {
            self.err(
                f.key_pos("min_digits"),
                format!("{what}: \"min_digits\" is more than \"num_digits\""),
            );
        }
        let inter = self
            .duration(
                &f,
                "inter_digit_timeout",
                Duration::from_secs(1),
                Duration::from_secs(30),
            )
            .unwrap_or(timeout);
        let finish = self.keys(&f, "finish_on_key", "#")?;
        if finish.chars().count() > 1 {
            self.err(
                f.key_pos("finish_on_key"),
                format!("{what}: \"finish_on_key\" is one key (or empty for none)"),
            );
        }
        let next = self.node_ref(&f, "next");
        if f.get("next").is_none() {
            self.missing(&f, "next");
        }
        let store_as = self.str(&f, "store_as");
        let mask = self.bool(&f, "mask").unwrap_or(false);
        Some(Collect {
            prompt,
            kind: CollectKind::Gather {
                next: next?,
                store_as,
                mask,
            },
            num_digits,
            min_digits,
            timeout,
            inter_digit_timeout: inter,
            finish_on_key: finish.chars().next(),
            retries,
            invalid,
            no_input,
            exhausted,
        })
    }

    fn options(&mut self, f: &Fields) -> Option<BTreeMap<char, String>> {
        let Some(y) = f.get("options") else {
            self.missing(f, "options");
            return None;
        };
        let Value::Map(entries) = &y.value else {
            self.err(
                y.pos,
                format!("{}: \"options\" must map keys to nodes", f.what),
            );
            return None;
        };
        if entries.is_empty() {
            self.err(y.pos, format!("{}: \"options\" is empty", f.what));
        }
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let mut chars = k.text.chars();
            let key = match (chars.next(), chars.next()) {
                (Some(c), None) if is_key(c) => c,
                _ => {
                    self.err(
                        k.pos,
                        format!(
                            "{}: option \"{}\" is not a single phone key (0-9, *, #)",
                            f.what, k.text
                        ),
                    );
                    continue;
                }
            };
            let Some(target) = self.scalar_of(v, &f.what, &format!("option {key}")) else {
                continue;
            };
            self.refs.push(Ref {
                from: format!("{}: option \"{key}\"", f.what),
                target: target.clone(),
                pos: v.pos,
            });
            out.insert(key, target);
        }
        Some(out)
    }

    fn retry(&mut self, f: &Fields, field: &str) -> Retry {
        let Some(y) = f.get(field) else {
            return Retry::default();
        };
        let what = format!("{} {field}", f.what);
        let Some(rf) = self.map(y, &what, &["say", "play", "prompt", "next"]) else {
            return Retry::default();
        };
        Retry {
            prompt: self.prompts_in(&rf),
            next: self.node_ref(&rf, "next"),
        }
    }

    fn branch(&mut self, y: &Y, what: &str) -> Option<Vec<Rule>> {
        let Value::Seq(items) = &y.value else {
            self.err(
                y.pos,
                format!(
                    "{what}: expected a list of {{if, next}}, found {}",
                    y.kind()
                ),
            );
            return None;
        };
        let mut rules = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rw = format!("{what} rule {}", i + 1);
            let Some(f) = self.map(item, &rw, &["if", "next"]) else {
                continue;
            };
            let when = match f.get("if") {
                Some(c) => self.condition(c, &rw).unwrap_or_default(),
                None => Condition::default(),
            };
            if f.get("next").is_none() {
                self.missing(&f, "next");
            }
            let unconditional = f.get("if").is_none();
            if let Some(next) = self.node_ref(&f, "next") {
                rules.push(Rule { when, next });
            }
            if unconditional && i + 1 < items.len() {
                self.err(
                    item.pos,
                    format!("{rw}: a rule without \"if\" must be the last one"),
                );
            }
        }
        if items.last().and_then(|l| match &l.value {
            Value::Map(e) => Some(e.iter().any(|(k, _)| k.text == "if")),
            _ => None,
        }) != Some(false)
        {
            self.err(
                y.pos,
                format!("{what}: the last rule must have no \"if\" (the default)"),
            );
        }
        Some(rules)
    }

    fn condition(&mut self, y: &Y, what: &str) -> Option<Condition> {
        let f = self.map(
            y,
            &format!("{what} if"),
            &["open", "holiday", "context", "not_context", "time", "days"],
        )?;
        let time = f.get("time").and_then(|t| {
            let s = self.scalar_of(t, &f.what, "time")?;
            hours::TimeRange::parse(&s)
                .map_err(|e| self.err(t.pos, format!("{}: {e}", f.what)))
                .ok()
        });
        let days = f.get("days").and_then(|t| {
            let s = self.scalar_of(t, &f.what, "days")?;
            hours::parse_days(&s)
                .map_err(|e| self.err(t.pos, format!("{}: {e}", f.what)))
                .ok()
        });
        for k in ["time", "days", "holiday"] {
            if f.get(k).is_some() {
                self.clock_uses
                    .push((f.key_pos(k), format!("{}: \"{k}\"", f.what)));
            }
        }
        Some(Condition {
            open: self.bool(&f, "open"),
            holiday: self.bool(&f, "holiday"),
            context: self.strings(&f, "context"),
            not_context: self.strings(&f, "not_context"),
            time,
            days,
        })
    }

    fn queue(&mut self, y: &Y, what: &str) -> Option<Queue> {
        if let Value::Scalar { .. } = y.value {
            let name = self.scalar_of(y, what, "queue")?;
            return Some(Queue {
                name,
                priority: 0,
                skills: Vec::new(),
                triage: None,
            });
        }
        let f = self.map(y, what, &["name", "priority", "skills", "triage"])?;
        let name = self.req_str(&f, "name");
        let priority = self.int(&f, "priority", -1000, 1000).unwrap_or(0) as i32;
        let skills = self.strings(&f, "skills");
        let triage = self.str(&f, "triage");
        Some(Queue {
            name: name?,
            priority,
            skills,
            triage,
        })
    }

    fn sms(&mut self, y: &Y, what: &str) -> Option<Sms> {
        let f = self.map(y, what, &["template", "body", "to"])?;
        let template = self.str(&f, "template");
        let body = self.str(&f, "body");
        if template.is_some() == body.is_some() {
            self.err(
                f.pos,
                format!("{what}: give exactly one of \"template\" or \"body\""),
            );
            return None;
        }
        Some(Sms {
            template,
            body,
            to: self.str(&f, "to"),
        })
    }

    fn record(&mut self, y: &Y, what: &str) -> Option<Record> {
        let f = self.map(
            y,
            what,
            &["max", "finish_on_key", "beep", "silence_timeout", "triage"],
        )?;
        Some(Record {
            max: self
                .duration(&f, "max", Duration::from_secs(1), Duration::from_secs(3600))
                .unwrap_or(Duration::from_secs(120)),
            finish_on_key: self.keys(&f, "finish_on_key", "#")?,
            beep: self.bool(&f, "beep").unwrap_or(true),
            silence_timeout: self
                .duration(
                    &f,
                    "silence_timeout",
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                )
                .unwrap_or(Duration::from_secs(5)),
            triage: self.str(&f, "triage"),
        })
    }

    fn transfer(&mut self, y: &Y, what: &str) -> Option<Transfer> {
        let f = self.map(y, what, &["to", "caller_id", "timeout"])?;
        let to = self.req_str(&f, "to")?;
        let ok = to.starts_with("sip:")
            || to.starts_with("sips:")
            || (to.len() > 1
                && to
                    .trim_start_matches('+')
                    .chars()
                    .all(|c| c.is_ascii_digit())
                && to.chars().filter(|c| *c == '+').count() <= 1);
        if !ok {
            let pos = f.get("to").map_or(f.pos, |t| t.pos);
            self.err(pos, format!("{what}: \"to\" must be a phone number (+15551230000) or a sip: URI, found \"{to}\""));
            return None;
        }
        Some(Transfer {
            to,
            caller_id: self.str(&f, "caller_id"),
            timeout: self
                .duration(
                    &f,
                    "timeout",
                    Duration::from_secs(5),
                    Duration::from_secs(600),
                )
                .unwrap_or(Duration::from_secs(30)),
        })
    }

    fn webhook(&mut self, y: &Y, what: &str) -> Option<Webhook> {
        let f = self.map(y, what, &["url", "method", "on_error"])?;
        let url = self.req_str(&f, "url")?;
        let pos = f.get("url").map_or(f.pos, |u| u.pos);
        self.absolute_url(&url, pos, what)?;
        let method = match self.str(&f, "method").as_deref() {
            None | Some("POST") => crate::Method::Post,
            Some("GET") => crate::Method::Get,
            Some(other) => {
                self.err(
                    f.get("method").map_or(f.pos, |m| m.pos),
                    format!("{what}: \"method\" must be GET or POST, found \"{other}\""),
                );
                return None;
            }
        };
        Some(Webhook {
            url,
            method,
            on_error: self.node_ref(&f, "on_error"),
        })
    }

    fn absolute_url(&mut self, s: &str, pos: Pos, what: &str) -> Option<()> {
        match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(()),
            Ok(_) => {
                self.err(pos, format!("{what}: \"{s}\" is not an http(s) URL"));
                None
            }
            Err(e) => {
                self.err(pos, format!("{what}: \"{s}\" is not a URL ({e})"));
                None
            }
        }
    }
}

fn diag(pos: Pos, severity: Severity, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        line: pos.line,
        column: pos.column,
        severity,
        message: message.into(),
    }
}

pub(crate) fn is_key(c: char) -> bool {
    c.is_ascii_digit() || c == '*' || c == '#'
}

/// `5s`, `500ms`, `2m`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}
