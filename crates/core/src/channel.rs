use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The channel an event arrived on or was sent over. Every channel writes into
/// the same conversation; the channel only says *how* the patient was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Video,
    Voice,
    Sms,
    Whatsapp,
    Chat,
    Ivr,
    /// Store-and-forward: images, forms and updates sent outside a live session.
    Async,
    /// Produced by Continuum itself (state changes, assignments, policies).
    System,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::Video,
        Channel::Voice,
        Channel::Sms,
        Channel::Whatsapp,
        Channel::Chat,
        Channel::Ivr,
        Channel::Async,
        Channel::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Video => "video",
            Channel::Voice => "voice",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Chat => "chat",
            Channel::Ivr => "ivr",
            Channel::Async => "async",
            Channel::System => "system",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown channel `{0}`; expected one of video, voice, sms, whatsapp, chat, ivr, async, system"
)]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownChannel(s.to_owned()))
    }
}
