//! WhatsApp's customer-service window: for 24 hours after a user's last
//! message a business may send free-form ("session") messages; outside it
//! only pre-approved templates. Tracked per contact by the server (the time
//! of the contact's last inbound WhatsApp message); these are the rules.

use crate::types::Form;
use std::time::{Duration, SystemTime};

/// The window's length.
pub const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How far in the future a last-inbound time may lie and still count (clock
/// differences between hosts). Anything further is a bad record, not a
/// reason to hold the window open.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Whether a session message may go to a contact whose last inbound message
/// was at `last_inbound_at` (`None`: never wrote).
///
/// Record the time of receipt, not the provider's timestamp: a sender-side
/// time could be set to keep the window open.
pub fn is_open(last_inbound_at: Option<SystemTime>, now: SystemTime) -> bool {
    let Some(last) = last_inbound_at else {
        return false;
    };
    match now.duration_since(last) {
        Ok(elapsed) => elapsed < WINDOW,
        Err(ahead) => ahead.duration() <= MAX_CLOCK_SKEW,
    }
}

/// When the window opened by a message at `last_inbound_at` closes.
pub fn closes_at(last_inbound_at: SystemTime) -> SystemTime {
    last_inbound_at + WINDOW
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the WhatsApp 24-hour window is closed and the message has no template: only a pre-approved template can reach this contact"
)]
pub struct NeedsTemplate;

/// The form of a WhatsApp send, decided before every attempt (the window
/// can close between two attempts of one message): a session message while
/// the window is open, the template once it is closed, and an error when it
/// is closed and there is no template.
pub fn choose_form(window_open: bool, has_template: bool) -> Result<Form, NeedsTemplate> {
    match (window_open, has_template) {
        (true, _) => Ok(Form::Session),
        (false, true) => Ok(Form::Template),
        (false, false) => Err(NeedsTemplate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        assert!(!is_open(None, t0));
        assert!(is_open(Some(t0), t0));
        assert!(is_open(Some(t0), t0 + WINDOW - Duration::from_secs(1)));
        assert!(!is_open(Some(t0), t0 + WINDOW));
        assert!(
            is_open(Some(t0 + Duration::from_secs(60)), t0),
            "small skew"
        );
        assert!(
            !is_open(Some(t0 + Duration::from_secs(3600)), t0),
            "bad record"
        );
        assert_eq!(closes_at(t0), t0 + WINDOW);
    }

    #[test]
    fn forms() {
        assert_eq!(choose_form(true, false), Ok(Form::Session));
        assert_eq!(choose_form(true, true), Ok(Form::Session));
        assert_eq!(choose_form(false, true), Ok(Form::Template));
        assert_eq!(choose_form(false, false), Err(NeedsTemplate));
        assert!(NeedsTemplate.to_string().contains("template"));
    }
}
