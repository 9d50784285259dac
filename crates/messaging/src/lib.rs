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
//!
//! # The outbox worker, one attempt
//!
//! ```no_run
//! use continuum_messaging::{whatsapp_window, *};
//! use std::time::{Instant, SystemTime};
//!
//! async fn attempt(
//!     set: &ProviderSet,          // built once per tenant config
//!     chains: &Chains,
//!     policy: &RetryPolicy,
//!     mut msg: OutboundMessage,   // from the outbox row
//!     provider: ProviderId,       // the row's next provider (policy.first() when queued)
//!     earlier: &[Attempt],        // the row's failed attempts
//!     enqueued_at: SystemTime,
//!     last_inbound_at: Option<SystemTime>, // the contact's, for WhatsApp
//! ) {
//!     let now = SystemTime::now();
//!     if msg.channel == MessageChannel::Whatsapp {
//!         let open = whatsapp_window::is_open(last_inbound_at, now);
//!         match whatsapp_window::choose_form(open, msg.template.is_some()) {
//!             Ok(form) => msg.form = form,
//!             Err(e) => return dead_letter(&e.to_string()),
//!         }
//!     }
//!     let Some(p) = set.get(&provider) else { return dead_letter("provider gone") };
//!     match p.send(&msg).await {
//!         Ok(sent) => { /* store sent.provider_message_id; status callbacks name it */ }
//!         Err(error) => {
//!             let unhealthy = set.unhealthy(Instant::now());
//!             let failure = Failure {
//!                 chain: chains.for_channel(msg.channel),
//!                 earlier,
//!                 provider: &provider,
//!                 error: &error,
//!                 has_template: msg.template.is_some(),
//!                 enqueued_at,
//!                 now,
//!                 unhealthy: &unhealthy,
//!             };
//!             // Store Attempt { provider, failure: FailureClass::of(&error) } too.
//!             match policy.next(&failure, &mut rand::thread_rng()) {
//!                 Next::RetryAt { provider, at } | Next::Failover { provider, at } => {
//!                     /* row: next provider and due time */
//!                 }
//!                 Next::DeadLetter { reason } => dead_letter(&reason.to_string()),
//!             }
//!         }
//!     }
//! }
//! # fn dead_letter(_: &str) {}
//! ```

pub mod config;
pub mod health;
pub mod http;
pub mod keywords;
pub mod meta;
pub mod policy;
pub mod provider;
pub mod secret;
pub mod smpp;
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
