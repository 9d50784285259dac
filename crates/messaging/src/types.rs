//! The messages every provider speaks: addresses, outbound and inbound
//! messages, and delivery status updates with their ordering rule.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::SystemTime;

/// Longest body accepted from a provider webhook, in bytes. Twilio caps an
/// SMS body at 1,600 characters and WhatsApp a text at 4,096; this leaves
/// room for multi-byte scripts while keeping a hostile request bounded.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Longest identifier (message id, media id, profile name, URL) accepted
/// from a webhook, in bytes.
pub const MAX_FIELD_BYTES: usize = 2048;

/// The messaging channels these adapters carry (a subset of
/// [`continuum_core::Channel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageChannel {
    Sms,
    Whatsapp,
}

impl MessageChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageChannel::Sms => "sms",
            MessageChannel::Whatsapp => "whatsapp",
        }
    }
}

impl fmt::Display for MessageChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<MessageChannel> for continuum_core::Channel {
    fn from(c: MessageChannel) -> Self {
        match c {
            MessageChannel::Sms => continuum_core::Channel::Sms,
            MessageChannel::Whatsapp => continuum_core::Channel::Whatsapp,
        }
    }
}

/// Why a string is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The value is not echoed: it is a patient's number.
    #[error(
        "{field} is not an E.164 number (`+` and 7 to 15 digits), a short code (3 to 8 digits) or `whatsapp:` and an E.164 number"
    )]
    Invalid { field: &'static str },
}

/// One end of a message. Numbers are kept in E.164 (`+14155552671`) whatever
/// the provider's spelling (Twilio's `whatsapp:+1…`, Meta's bare digits).
///
/// Only a syntactic check is made: inbound numbers from newly allocated
/// ranges must not be refused because a numbering-plan table is old. The
/// server normalises numbers it binds to patients with
/// `continuum_core::binding::normalize_phone`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Address {
    /// An E.164 phone number, reached by SMS/MMS.
    Phone(String),
    /// An SMS short code (only ever our side of a conversation).
    ShortCode(String),
    /// A WhatsApp user or business number, in E.164.
    Whatsapp(String),
    /// A WhatsApp user known only by Meta's business-scoped user id (BSUID,
    /// `US.13491208655302741918`): users who adopt a username may withhold
    /// their number. Received, and bindable; sending to one is not
    /// supported yet (the providers refuse it as a recipient error).
    WhatsappUser(String),
}

impl Address {
    /// An E.164 phone number for SMS.
    pub fn phone(e164: &str, field: &'static str) -> Result<Self, AddressError> {
        if is_e164(e164) {
            Ok(Address::Phone(e164.to_owned()))
        } else {
            Err(AddressError::Invalid { field })
        }
    }

    /// A WhatsApp number given in E.164 (`+…`) or as Meta's bare digits.
    pub fn whatsapp(number: &str, field: &'static str) -> Result<Self, AddressError> {
        let e164 = if number.starts_with('+') {
            number.to_owned()
        } else {
            format!("+{number}")
        };
        if is_e164(&e164) {
            Ok(Address::Whatsapp(e164))
        } else {
            Err(AddressError::Invalid { field })
        }
    }

    /// Parses Twilio's spelling: `+14155552671`, a short code, or
    /// `whatsapp:+14155552671`.
    pub fn parse_twilio(raw: &str, field: &'static str) -> Result<Self, AddressError> {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("whatsapp:") {
            return if is_e164(rest) {
                Ok(Address::Whatsapp(rest.to_owned()))
            } else {
                Err(AddressError::Invalid { field })
            };
        }
        if is_e164(raw) {
            Ok(Address::Phone(raw.to_owned()))
        } else if is_short_code(raw) {
            Ok(Address::ShortCode(raw.to_owned()))
        } else {
            Err(AddressError::Invalid { field })
        }
    }

    /// A WhatsApp business-scoped user id: two-letter country code, `.`,
    /// then letters, digits and dots (`US.ENT.…` for parent ids).
    pub fn whatsapp_user(bsuid: &str, field: &'static str) -> Result<Self, AddressError> {
        let b = bsuid.as_bytes();
        let ok = (4..=160).contains(&b.len())
            && b[..2].iter().all(u8::is_ascii_uppercase)
            && b[2] == b'.'
            && b[3..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'.');
        if ok {
            Ok(Address::WhatsappUser(bsuid.to_owned()))
        } else {
            Err(AddressError::Invalid { field })
        }
    }

    /// Twilio's spelling (`whatsapp:` prefix for WhatsApp).
    pub fn to_twilio(&self) -> String {
        match self {
            Address::Phone(n) | Address::ShortCode(n) => n.clone(),
            Address::Whatsapp(n) | Address::WhatsappUser(n) => format!("whatsapp:{n}"),
        }
    }

    /// Meta's spelling: the digits without `+` (a WhatsApp id).
    pub fn to_wa_id(&self) -> &str {
        let n = self.number();
        n.strip_prefix('+').unwrap_or(n)
    }

    /// The number itself, E.164 or short code.
    pub fn number(&self) -> &str {
        match self {
            Address::Phone(n)
            | Address::ShortCode(n)
            | Address::Whatsapp(n)
            | Address::WhatsappUser(n) => n,
        }
    }

    /// The channel a message to or from this address travels on.
    pub fn channel(&self) -> MessageChannel {
        match self {
            Address::Phone(_) | Address::ShortCode(_) => MessageChannel::Sms,
            Address::Whatsapp(_) | Address::WhatsappUser(_) => MessageChannel::Whatsapp,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_twilio())
    }
}

/// `+` then 7 to 15 digits, the first not zero (E.164 allows at most 15
/// digits; no country code starts with 0).
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn is_short_code(s: &str) -> bool {
    (3..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// A pre-approved WhatsApp template: the only form Meta delivers outside the
/// 24-hour customer-service window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Meta: the template name. Twilio: the Content SID (`HX…`) of the
    /// approved content template.
    pub name: String,
    /// Meta's language code (`en_US`); unused by Twilio (the Content SID
    /// names one language already).
    pub language: String,
    /// Body parameters in order: Meta's `{{1}}`, `{{2}}`…; Twilio's
    /// `ContentVariables` `{"1": …, "2": …}`.
    pub params: Vec<String>,
}

/// How a WhatsApp message goes out. Chosen per attempt by
/// [`crate::whatsapp_window::choose_form`], since the window can close
/// between two attempts of the same message. SMS ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// Free-form text (and media), allowed inside the window.
    #[default]
    Session,
    /// The message's [`Template`].
    Template,
}

/// A message for a provider to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// Our id for the message (the outbox row). Providers that deduplicate
    /// by a client key get it as that key; status callback URLs may carry it
    /// so a callback can be matched even when the send was unconfirmed.
    pub id: String,
    pub channel: MessageChannel,
    /// Our number; `None` uses the provider's configured sender (Twilio's
    /// messaging service or default number; Meta always sends from its
    /// configured phone number id).
    pub from: Option<Address>,
    pub to: Address,
    /// The text. For a template send it is the rendered text, kept for the
    /// conversation record and for SMS fallback.
    pub body: String,
    /// Public URLs the provider fetches (MMS, WhatsApp media).
    pub media_urls: Vec<String>,
    pub template: Option<Template>,
    pub form: Form,
    /// Where the provider posts delivery updates (Twilio `StatusCallback`).
    pub status_callback: Option<String>,
}

/// Where a received attachment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum MediaSource {
    /// A URL to fetch (Twilio `MediaUrlN`; fetched with the account's Basic
    /// auth when the account enforces it). Fetch through the SSRF guard.
    Url(String),
    /// A Meta media id: resolve with `GET /{version}/{id}` then download.
    MetaId(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub source: MediaSource,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// A message received from a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub channel: MessageChannel,
    pub from: Address,
    pub to: Address,
    /// The text, or a media caption, or a quick-reply button's text.
    pub body: String,
    pub provider_message_id: String,
    pub media: Vec<Media>,
    /// The sender's WhatsApp profile name (untrusted: the user chooses it).
    pub profile_name: Option<String>,
    /// The sender's WhatsApp id (digits).
    pub wa_id: Option<String>,
    /// The sender's business-scoped user id (Meta `from_user_id`), sent
    /// whether or not the number is also given.
    pub wa_user_id: Option<String>,
    /// The provider message this replies to (Meta `context.id`, Twilio
    /// `OriginalRepliedMessageSid`), e.g. a reminder.
    pub in_reply_to: Option<String>,
    /// A quick-reply button's payload (Meta `button.payload`,
    /// `interactive.button_reply.id`; Twilio `ButtonPayload`).
    pub button_payload: Option<String>,
    /// When the provider says it was sent (Meta only; Twilio gives none).
    pub at: Option<SystemTime>,
}

/// Delivery states, in the order a message moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Queued,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    Read,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Queued,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Undelivered,
        DeliveryStatus::Failed,
        DeliveryStatus::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Read => "read",
        }
    }

    /// The strength of the evidence a status carries. Callbacks arrive out
    /// of order (Meta documents it; Twilio's come over separate requests),
    /// so the stored status is the strongest one seen, never the latest:
    ///
    /// queued < sent < undelivered < failed < delivered < read
    ///
    /// A late `sent` never overwrites `delivered`, `read`, `failed` or
    /// `undelivered`, and nothing reopens a failure except proof that the
    /// message arrived: Meta documents `delivered` following `failed` when
    /// the user has several devices, and `read` implies delivery. `failed`
    /// ranks above `undelivered` only so that the order is total and the
    /// result does not depend on arrival order.
    fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Queued => 0,
            DeliveryStatus::Sent => 1,
            DeliveryStatus::Undelivered => 2,
            DeliveryStatus::Failed => 3,
            DeliveryStatus::Delivered => 4,
            DeliveryStatus::Read => 5,
        }
    }

    /// Whether `self`, arriving after `other` was stored, replaces it.
    pub fn supersedes(self, other: DeliveryStatus) -> bool {
        self.rank() > other.rank()
    }

    /// Failed or undelivered: nothing short of proof of delivery follows.
    pub fn is_failure(self) -> bool {
        matches!(self, DeliveryStatus::Failed | DeliveryStatus::Undelivered)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's report on a message we sent: a delivery update of the same
/// conversation event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub provider_message_id: String,
    pub status: DeliveryStatus,
    /// The provider's error code (Twilio `ErrorCode` 30003…, Meta 131026…).
    pub error_code: Option<String>,
    /// When the provider says the status changed (Meta); `None` for Twilio,
    /// whose callbacks carry no time: use the time of receipt.
    pub at: Option<SystemTime>,
    /// The patient's address, when the provider names it.
    pub recipient: Option<Address>,
}

impl StatusUpdate {
    /// Whether this update, arriving after `stored`, replaces it (see
    /// [`DeliveryStatus::supersedes`]).
    pub fn supersedes(&self, stored: &StatusUpdate) -> bool {
        self.status.supersedes(stored.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn twilio_addresses() {
        assert_eq!(
            Address::parse_twilio("whatsapp:+14155238886", "From").unwrap(),
            Address::Whatsapp("+14155238886".into())
        );
        assert_eq!(
            Address::parse_twilio("+14155238886", "From").unwrap(),
            Address::Phone("+14155238886".into())
        );
        assert_eq!(
            Address::parse_twilio("12345", "To").unwrap(),
            Address::ShortCode("12345".into())
        );
        for bad in [
            "",
            "+",
            "+0123456789",
            "whatsapp:",
            "whatsapp:14155238886",
            "abc",
            "+1415 5238886",
            "+1234567890123456",
        ] {
            let err = Address::parse_twilio(bad, "From").unwrap_err();
            assert!(err.to_string().starts_with("From "), "{err}");
        }
        let a = Address::Whatsapp("+16505551234".into());
        assert_eq!(a.to_twilio(), "whatsapp:+16505551234");
        assert_eq!(a.to_wa_id(), "16505551234");
        assert_eq!(
            Address::whatsapp("16505551234", "wa_id").unwrap(),
            a,
            "Meta's bare digits"
        );
    }

    #[test]
    fn late_sent_never_overwrites() {
        use DeliveryStatus::*;
        assert!(Sent.supersedes(Queued));
        assert!(!Sent.supersedes(Delivered));
        assert!(!Sent.supersedes(Read));
        assert!(!Sent.supersedes(Failed));
        assert!(!Queued.supersedes(Undelivered));
        assert!(Read.supersedes(Delivered));
        assert!(!Delivered.supersedes(Read));
        assert!(Failed.supersedes(Sent));
        assert!(!Failed.supersedes(Delivered));
        // Proof of arrival reopens a failure (several devices).
        assert!(Delivered.supersedes(Failed));
        for s in DeliveryStatus::ALL {
            assert!(!s.supersedes(s), "{s} must not replace itself");
        }
    }

    proptest! {
        /// Whatever order the callbacks arrive in, the stored status is the
        /// same: the strongest.
        #[test]
        fn stored_status_does_not_depend_on_arrival_order(
            seq in prop::collection::vec(prop::sample::select(DeliveryStatus::ALL.to_vec()), 1..12)
        ) {
            let fold = |seq: &[DeliveryStatus]| {
                let mut stored = seq[0];
                for &s in &seq[1..] {
                    if s.supersedes(stored) { stored = s; }
                }
                stored
            };
            let mut reversed = seq.clone();
            reversed.reverse();
            let mut sorted = seq.clone();
            sorted.sort_by_key(|s| s.as_str());
            prop_assert_eq!(fold(&seq), fold(&reversed));
            prop_assert_eq!(fold(&seq), fold(&sorted));
        }

        #[test]
        fn twilio_address_parsing_never_panics(s in "\\PC{0,40}") {
            if let Ok(a) = Address::parse_twilio(&s, "From") {
                prop_assert_eq!(Address::parse_twilio(&a.to_twilio(), "From").unwrap(), a);
            }
        }
    }
}
