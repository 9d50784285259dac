//! Refusals in the audit chain at bounded cost. The first refusal of a kind
//! (chain, actor, action, reason) in a minute is recorded at once, as before;
//! the repeats of that minute become one summary record with their count when
//! the minute is over. So a flood of bad requests costs at most two audit rows
//! per source, reason and minute, whatever its size, and nothing is silent.

use continuum_store::{AuditEntry, Outcome};
use parking_lot::Mutex;
use std::collections::HashMap;

/// The aggregation window.
pub const WINDOW_SECS: u64 = 60;
/// Distinct kinds tracked at once; beyond it, new actors fold into one.
const MAX_KINDS: usize = 10_000;
/// Longest object name stored (route templates and object ids are short;
/// anything longer was not ours to begin with).
const MAX_OBJECT: usize = 200;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Kind {
    chain: String,
    actor: String,
    action: String,
    reason: String,
}

struct Tally {
    window: u64,
    object: String,
    repeats: u64,
}

/// An audit record to write into `chain`.
pub type Record = (String, AuditEntry);

#[derive(Default)]
pub struct Refusals {
    tallies: Mutex<HashMap<Kind, Tally>>,
}

impl Refusals {
    /// Notes one refusal at `now` (Unix seconds); returns the records to write.
    pub fn note(
        &self,
        chain: &str,
        actor: &str,
        action: &str,
        object: &str,
        reason: &str,
        now: u64,
    ) -> Vec<Record> {
        let window = now / WINDOW_SECS;
        let object = bounded(object);
        let mut kind = Kind {
            chain: chain.to_owned(),
            actor: bounded(actor),
            action: bounded(action),
            reason: bounded(reason),
        };
        let mut tallies = self.tallies.lock();
        if !tallies.contains_key(&kind) && tallies.len() >= MAX_KINDS {
            kind.actor = "(many actors)".into();
        }
        let mut out = Vec::new();
        match tallies.get_mut(&kind) {
            Some(t) if t.window == window => {
                t.repeats += 1;
                return out;
            }
            Some(t) => {
                if let Some(r) = summary(&kind, t) {
                    out.push(r);
                }
                *t = Tally {
                    window,
                    object: object.clone(),
                    repeats: 0,
                };
            }
            None => {
                tallies.insert(
                    kind.clone(),
                    Tally {
                        window,
                        object: object.clone(),
                        repeats: 0,
                    },
                );
            }
        }
        let entry = AuditEntry::new(kind.actor.clone(), &kind.action, object, Outcome::Denied)
            .with_detail(serde_json::json!({ "reason": kind.reason }));
        out.push((kind.chain, entry));
        out
    }

    /// Summaries of every window that ended before `now` (all of them with
    /// `everything`, at shutdown); forgets kinds that were quiet.
    pub fn flush(&self, now: u64, everything: bool) -> Vec<Record> {
        let window = now / WINDOW_SECS;
        let mut out = Vec::new();
        self.tallies.lock().retain(|kind, t| {
            if t.window < window || everything {
                out.extend(summary(kind, t));
                return false;
            }
            true
        });
        out
    }

    /// Kinds currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.tallies.lock().len()
    }
}

fn summary(kind: &Kind, t: &Tally) -> Option<Record> {
    (t.repeats > 0).then(|| {
        let entry = AuditEntry::new(kind.actor.clone(), &kind.action, &t.object, Outcome::Denied)
            .with_detail(serde_json::json!({
                "reason": kind.reason,
                "repeats": t.repeats,
                "window_start": t.window * WINDOW_SECS,
                "window_secs": WINDOW_SECS,
            }));
        (kind.chain.clone(), entry)
    })
}

fn bounded(s: &str) -> String {
    if s.len() <= MAX_OBJECT {
        return s.to_owned();
    }
    let mut end = MAX_OBJECT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_two_records_per_kind_and_minute() {
        let r = Refusals::default();
        let t0 = 6_000;
        let mut written = 0;
        for i in 0..10_000 {
            written += r
                .note(
                    "-",
                    "anonymous@203.0.113.9",
                    "authenticate",
                    "/v1/contacts",
                    "no credentials",
                    t0 + i % 60,
                )
                .len();
        }
        assert_eq!(written, 1, "the first at once, the rest counted");
        let summaries = r.flush(t0 + 60, false);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].1.detail["repeats"], 9_999);
        assert_eq!(r.tracked(), 0);
        assert!(r.flush(t0 + 120, false).is_empty());
    }

    #[test]
    fn a_new_minute_writes_the_last_summary_and_the_new_first() {
        let r = Refusals::default();
        r.note("t", "a", "room.join", "room/1", "not in grants", 60);
        r.note("t", "a", "room.join", "room/2", "not in grants", 61);
        let out = r.note("t", "a", "room.join", "room/3", "not in grants", 120);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.detail["repeats"], 1);
        assert_eq!(out[1].1.object, "room/3");
    }

    #[test]
    fn long_objects_are_cut_and_actors_folded_beyond_the_cap() {
        let r = Refusals::default();
        let path = "/".repeat(60_000);
        let out = r.note("-", "x", "authenticate", &path, "no credentials", 0);
        assert!(out[0].1.object.len() < 300);
        for i in 0..(MAX_KINDS + 50) {
            r.note(
                "-",
                &format!("anonymous@{i}"),
                "authenticate",
                "/",
                "no credentials",
                0,
            );
        }
        assert!(r.tracked() <= MAX_KINDS + 1);
    }
}
