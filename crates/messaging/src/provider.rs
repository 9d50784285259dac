//! The one trait every provider adapter implements, and the typed outcome of
//! a send that the retry policy reads.

use crate::types::{MessageChannel, OutboundMessage};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

/// A provider's name in a tenant's configuration (`twilio`, `meta`,
/// `smpp-aggregator`…): what failover chains and metrics refer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderId(pub String);

impl ProviderId {
    pub fn new(id: impl Into<String>) -> Self {
        ProviderId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ProviderId {
    fn from(s: &str) -> Self {
        ProviderId(s.to_owned())
    }
}

/// A provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The provider's id for it (Twilio `SM…`, Meta `wamid.…`): what status
    /// callbacks name.
    pub provider_message_id: String,
}

/// Why a provider refused a message for good, which decides what the outbox
/// does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermanentCause {
    /// The recipient cannot be reached (invalid or non-mobile number, not on
    /// WhatsApp): no provider will do better. Dead-letter.
    Recipient,
    /// The recipient opted out at the provider (Twilio 21610, Meta 131050).
    /// Dead-letter and record the opt-out.
    OptedOut,
    /// WhatsApp's 24-hour window is closed (Meta 131047, Twilio 63016): our
    /// window record was wrong. Mark it closed; a template can still go.
    WindowClosed,
    /// The message itself is refused (too long, bad media, bad template
    /// parameters). Dead-letter.
    Content,
    /// This provider cannot send it (authentication, account or sender
    /// configuration, region not enabled): the next provider in the chain
    /// may. Fail over.
    Provider,
}

impl PermanentCause {
    pub fn as_str(self) -> &'static str {
        match self {
            PermanentCause::Recipient => "recipient",
            PermanentCause::OptedOut => "opted_out",
            PermanentCause::WindowClosed => "window_closed",
            PermanentCause::Content => "content",
            PermanentCause::Provider => "provider",
        }
    }

    /// Whether another provider might succeed where this one refused.
    pub fn is_provider_specific(self) -> bool {
        self == PermanentCause::Provider
    }
}

impl fmt::Display for PermanentCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a send failed. Reasons are written by us from the provider's code and
/// HTTP status, never copied from the provider's free text, which can carry
/// the patient's number: they go to logs and the outbox row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: the provider was unreachable, overloaded or rate
    /// limiting us, and did not take the message.
    #[error("temporary failure: {reason}")]
    Retryable {
        reason: String,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Trying again with the same input will fail the same way.
    #[error("refused ({cause}{}): {reason}", code.as_deref().map(|c| format!(", code {c}")).unwrap_or_default())]
    Permanent {
        cause: PermanentCause,
        /// The provider's error code (`21211`, `131026`).
        code: Option<String>,
        reason: String,
    },
    /// The request was written but no answer came (timeout, connection lost
    /// mid-response, an accepted answer we could not read): the provider may
    /// have sent the message. Resending could deliver it twice.
    #[error("unconfirmed (the provider may have sent it): {reason}")]
    Unconfirmed { reason: String },
}

impl SendError {
    pub(crate) fn retryable(reason: impl Into<String>) -> Self {
        SendError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub(crate) fn permanent(
        cause: PermanentCause,
        code: Option<String>,
        reason: impl Into<String>,
    ) -> Self {
        SendError::Permanent {
            cause,
            code,
            reason: reason.into(),
        }
    }

    pub(crate) fn unconfirmed(reason: impl Into<String>) -> Self {
        SendError::Unconfirmed {
            reason: reason.into(),
        }
    }

    /// The provider's error code, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            SendError::Permanent { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// What one failed attempt was, in the form the outbox stores per attempt
/// and [`crate::policy::RetryPolicy`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Retryable,
    /// Refused for a reason of this provider's (fail over, don't come back).
    ProviderRejected,
    /// Refused for the window being closed (at most one template retry).
    WindowClosed,
    /// Refused for a reason of the message's (recipient, content, opt-out).
    MessageRejected,
    Unconfirmed,
}

impl FailureClass {
    pub const ALL: [FailureClass; 5] = [
        FailureClass::Retryable,
        FailureClass::ProviderRejected,
        FailureClass::WindowClosed,
        FailureClass::MessageRejected,
        FailureClass::Unconfirmed,
    ];

    pub fn of(e: &SendError) -> Self {
        match e {
            SendError::Retryable { .. } => FailureClass::Retryable,
            SendError::Unconfirmed { .. } => FailureClass::Unconfirmed,
            SendError::Permanent { cause, .. } => match cause {
                PermanentCause::Provider => FailureClass::ProviderRejected,
                PermanentCause::WindowClosed => FailureClass::WindowClosed,
                PermanentCause::Recipient | PermanentCause::OptedOut | PermanentCause::Content => {
                    FailureClass::MessageRejected
                }
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retryable => "retryable",
            FailureClass::ProviderRejected => "provider_rejected",
            FailureClass::WindowClosed => "window_closed",
            FailureClass::MessageRejected => "message_rejected",
            FailureClass::Unconfirmed => "unconfirmed",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown failure class `{0}`; expected retryable, provider_rejected, window_closed, message_rejected or unconfirmed"
)]
pub struct UnknownFailureClass(pub String);

impl FromStr for FailureClass {
    type Err = UnknownFailureClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownFailureClass(s.chars().take(40).collect()))
    }
}

/// The future a [`Provider::send`] returns (boxed so the trait stays object
/// safe: a tenant's chain is a list of `Arc<dyn Provider>`).
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, SendError>> + Send + 'a>>;

/// A message provider: Twilio, Meta's WhatsApp Cloud API, an SMPP
/// aggregator. One instance per configured provider of a tenant, built once
/// (its HTTP client or bind lives inside).
pub trait Provider: Send + Sync {
    /// The configured name (what chains and metrics use).
    fn id(&self) -> &ProviderId;

    /// The channels it carries; a chain for a channel lists only these.
    fn channels(&self) -> &[MessageChannel];

    /// Sends one message. Never panics on what the network returns; every
    /// failure is classified for the retry policy.
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> SendFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_classes_round_trip_for_storage() {
        for c in FailureClass::ALL {
            assert_eq!(c.as_str().parse::<FailureClass>().unwrap(), c);
        }
        let err = "bogus".parse::<FailureClass>().unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn display_names_cause_and_code() {
        let e = SendError::permanent(
            PermanentCause::Recipient,
            Some("21211".into()),
            "invalid To number",
        );
        assert_eq!(
            e.to_string(),
            "refused (recipient, code 21211): invalid To number"
        );
        assert_eq!(FailureClass::of(&e), FailureClass::MessageRejected);
        let e = SendError::permanent(PermanentCause::Provider, None, "bad credentials");
        assert_eq!(e.to_string(), "refused (provider): bad credentials");
    }
}
