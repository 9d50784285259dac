//! Opt-out, opt-in and help keywords (CTIA and carrier rules; the same words
//! Twilio's Advanced Opt-Out recognises), and replies to appointment
//! reminders.
//!
//! A keyword is the whole message: one word, any case, with surrounding
//! whitespace, punctuation or emoji tolerated (`Stop.`, ` STOP! `).
//! Anything more is conversation (`stop it`, `please stop texting`): a
//! person wrote it and staff should read it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keyword {
    /// STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT.
    OptOut,
    /// START, YES, UNSTOP.
    OptIn,
    /// HELP, INFO.
    Help,
}

impl Keyword {
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::OptOut => "opt_out",
            Keyword::OptIn => "opt_in",
            Keyword::Help => "help",
        }
    }

    /// The one confirmation sent back, prefixed with the sender's name as
    /// carriers require. A default: tenants may have their own text.
    pub fn default_reply(self, sender_name: &str) -> String {
        match self {
            Keyword::OptOut => format!(
                "{sender_name}: You are unsubscribed and will get no more messages from this number. Reply START to resubscribe."
            ),
            Keyword::OptIn => format!(
                "{sender_name}: You are subscribed again. Reply HELP for help, STOP to unsubscribe."
            ),
            Keyword::Help => format!(
                "{sender_name}: For help, contact your care team. Reply STOP to unsubscribe."
            ),
        }
    }
}

/// The keyword a message is, if it is exactly one. Run it before anything
/// else on an inbound SMS: an opt-out wins over every other reading
/// (a reminder reply of "cancel" is an opt-out, so reminders must never
/// ask patients to reply CANCEL).
pub fn classify(body: &str) -> Option<Keyword> {
    let word = single_word(body)?;
    Some(match word.as_str() {
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" => Keyword::OptOut,
        "START" | "YES" | "UNSTOP" => Keyword::OptIn,
        "HELP" | "INFO" => Keyword::Help,
        _ => return None,
    })
}

/// A patient's answer to an appointment reminder ("Reply C to confirm or R
/// to reschedule").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReminderReply {
    Confirm,
    Reschedule,
}

/// `C` or `CONFIRM`, `R` or `RESCHEDULE`: one word, any case, punctuation
/// tolerated like keywords. The spelled-out words are accepted because
/// patients type what the reminder says rather than the letter. `YES` is
/// not a confirmation: it is an opt-in keyword, and [`classify`] runs
/// first. Anything else is conversation routed to staff.
pub fn reminder_reply(body: &str) -> Option<ReminderReply> {
    match single_word(body)?.as_str() {
        "C" | "CONFIRM" => Some(ReminderReply::Confirm),
        "R" | "RESCHEDULE" => Some(ReminderReply::Reschedule),
        _ => None,
    }
}

/// The message as one upper-cased word, or `None` if it is more than one.
fn single_word(body: &str) -> Option<String> {
    // Keywords are short; a long message is never one (and is not scanned).
    if body.len() > 64 {
        return None;
    }
    let word = body.trim_matches(|c: char| !c.is_alphanumeric());
    if word.is_empty() || !word.chars().all(char::is_alphanumeric) {
        return None;
    }
    Some(word.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keywords() {
        for (body, want) in [
            ("STOP", Keyword::OptOut),
            ("stop", Keyword::OptOut),
            ("Stop.", Keyword::OptOut),
            ("  StOp!!  ", Keyword::OptOut),
            ("\"stop\"", Keyword::OptOut),
            ("stopall", Keyword::OptOut),
            ("Unsubscribe", Keyword::OptOut),
            ("cancel", Keyword::OptOut),
            ("END", Keyword::OptOut),
            ("quit\n", Keyword::OptOut),
            ("STOP 🛑", Keyword::OptOut),
            ("start", Keyword::OptIn),
            ("Yes!", Keyword::OptIn),
            ("UNSTOP", Keyword::OptIn),
            ("help?", Keyword::Help),
            ("info", Keyword::Help),
        ] {
            assert_eq!(classify(body), Some(want), "{body:?}");
        }
        for body in [
            "stop it",
            "please stop",
            "STOP STOP",
            "s.t.o.p",
            "st-op",
            "stopp",
            "",
            "   ",
            "...",
            "yes please",
            "I need help",
            "C",
        ] {
            assert_eq!(classify(body), None, "{body:?}");
        }
    }

    #[test]
    fn reminder_replies() {
        for (body, want) in [
            ("C", ReminderReply::Confirm),
            ("c", ReminderReply::Confirm),
            (" c. ", ReminderReply::Confirm),
            ("Confirm", ReminderReply::Confirm),
            ("R", ReminderReply::Reschedule),
            ("r!", ReminderReply::Reschedule),
            ("reschedule", ReminderReply::Reschedule),
        ] {
            assert_eq!(reminder_reply(body), Some(want), "{body:?}");
        }
        for body in [
            "yes",
            "CR",
            "c r",
            "confirmed please",
            "cancel",
            "",
            "see you",
        ] {
            assert_eq!(reminder_reply(body), None, "{body:?}");
        }
    }

    #[test]
    fn replies_name_the_sender() {
        let r = Keyword::OptOut.default_reply("Acme Clinic");
        assert!(r.starts_with("Acme Clinic: ") && r.contains("START"), "{r}");
        assert!(Keyword::Help.default_reply("Acme").contains("STOP"));
    }

    proptest! {
        #[test]
        fn never_panics_and_multi_word_is_never_a_keyword(a in "\\PC{0,20}", b in "[a-zA-Z]{1,8}") {
            let _ = classify(&a);
            let _ = reminder_reply(&a);
            let two = format!("stop {b}");
            prop_assert_eq!(classify(&two), None);
        }
    }
}
