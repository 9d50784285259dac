//! Continuum messaging: SMS/MMS and WhatsApp providers behind one
//! [`Provider`] trait, their webhooks, and the pure rules the server's
//! outbox and webhook handlers apply.
//!
//! - [`twilio`]: Twilio (or a Twilio-compatible API): REST send,
//!   `X-Twilio-Signature`, inbound and status-callback parsing.
//! - [`meta`]: Meta's WhatsApp Cloud API: Graph send, the GET handshake,
//!   `X-Hub-Signature-256`, `messages[]` / `statuses[]` parsing.
//! - [`policy`]: retry with backoff and jitter, failover along a tenant's
//!   chain, dead-letter.
//! - [`health`]: per-provider metrics and the rolling error rate failover
//!   reads; [`ProviderSet`] holds a tenant's providers.
//! - [`keywords`]: STOP/START/HELP and reminder replies.
//! - [`whatsapp_window`]: the 24-hour customer-service window.
//!
//! No storage and no tasks here: the server owns the outbox rows, the
//! worker loop and the HTTP routes, and calls these. SMPP lives in its own
//! crate and implements the same trait.

pub mod config;
pub mod health;
pub mod http;
pub mod keywords;
pub mod meta;
pub mod policy;
pub mod provider;
pub mod secret;
pub mod twilio;
pub mod types;
pub mod whatsapp_window;

pub use config::{Chains, ProviderConfig};
pub use health::{Health, HealthSnapshot, Instrumented, Outcome, ProviderSet};
pub use http::{ConfigError, HttpTimeouts};
pub use keywords::{Keyword, ReminderReply};
pub use meta::{MetaConfig, MetaWhatsAppProvider};
pub use policy::{Attempt, DeadLetterReason, Failure, Next, RetryPolicy, UnconfirmedAction};
pub use provider::{
    FailureClass, PermanentCause, Provider, ProviderId, SendError, SendFuture, Sent,
};
pub use secret::Secret;
pub use twilio::{TwilioConfig, TwilioProvider};
pub use types::{
    Address, AddressError, DeliveryStatus, Form, InboundMessage, Media, MediaSource,
    MessageChannel, OutboundMessage, StatusUpdate, Template,
};
