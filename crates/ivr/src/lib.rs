//! Continuum's IVR: what a phone call hears and where it goes before a
//! person picks up.
//!
//! - [`flow`]: declarative call flows in YAML (menus, digit gathers with
//!   timeouts and retries, queues with priority and skills, SMS handoff,
//!   voicemail, transfer, webhooks, conditions on business hours and on
//!   what the conversation already knows), validated at load with errors
//!   that name the line, the column and the field ([`check`]).
//! - [`hours`]: business-hours calendars in an IANA time zone (DST-correct).
//! - [`twiml`]: the TwiML subset a customer's webhook may answer with, so a
//!   customer migrating from a CPaaS keeps their call logic.
//! - [`params`]: the Twilio-style parameters posted to such webhooks.
//! - [`Session`]: the sans-IO interpreter that runs one call through a flow
//!   or TwiML, in the style of the SMPP and TURN sessions: fed inputs and
//!   time, it answers with [`Action`]s, and never blocks or reads a clock.
//!
//! Crate choices. YAML: `saphyr-parser`, the event parser of the maintained
//! saphyr project (YAML 1.2, pure Rust, no unsafe in the parser), used
//! without serde: every event carries a line and column, and decoding by
//! hand from a spanned tree lets each error name the exact place and field
//! (serde_yaml is archived, serde_yml is unsound, and serde's derive errors
//! lose positions and can't report duplicate keys or unknown fields all at
//! once). XML: `roxmltree`, small, read-only, refuses DTDs by default and
//! has a node limit, which is what untrusted webhook answers need. The full
//! reference is docs/ivr.md.

pub mod flow;
pub mod hours;
pub mod params;
mod session;
pub mod twiml;
mod yaml;

pub use flow::{Diagnostic, Flow, FlowError, Report, Severity, check, load_calendar};
pub use hours::Calendar;
pub use params::{CallInfo, call_params};
pub use session::{
    Action, AudioSource, DialStatus, Facts, FetchError, FetchedDoc, Input, IvrEvent, Program,
    Session, SessionError, limits,
};

/// HTTP method of a webhook request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    Get,
    #[default]
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

pub(crate) fn flow_is_key(c: char) -> bool {
    flow::is_key(c)
}
