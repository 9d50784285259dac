//! Continuum's SMPP 3.4 client (ESME), in the shape of the media protocols:
//! a codec ([`pdu`]), message text ([`text`]: GSM-7 or UCS-2 per message,
//! concatenation), delivery receipts ([`receipt`]) and handset messages
//! ([`inbound`]), a sans-IO [`Session`] fed bytes and time, and a tokio
//! host ([`io`]) that connects, binds, reconnects with backoff and gives
//! the server a cloneable [`Client`] handle.
//!
//! The codec is our own rather than `rusmpp`'s: see "SMPP (issue 15)" in
//! docs/design-notes.md.
//!
//! Wiring it to an outbox:
//!
//! ```no_run
//! use continuum_smpp::io::Disposition;
//! use continuum_smpp::{Client, ClientConfig, Incoming, SubmitRequest};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new("smsc.example.net", 2775, "continuum", "secret");
//! config.session.window = 20;
//! config.session.max_submits_per_sec = 30;
//! let (client, mut incoming) = Client::start(config)?;
//!
//! // A worker leasing an outbox row:
//! let req = SubmitRequest {
//!     source: "Clinic".into(),
//!     destination: "+15551230000".into(),
//!     text: "Your visit is confirmed for 10:30.".into(),
//!     registered_delivery: true,
//! };
//! match client.submit(req).await {
//!     // Store every id with the row: each segment gets its own receipt.
//!     Ok(outcome) => println!("sent as {:?}", outcome.message_ids),
//!     Err(e) => match e.disposition() {
//!         Disposition::Retry => { /* release the lease with a backoff */ }
//!         Disposition::Permanent => { /* mark failed: e names the status */ }
//!         Disposition::Unconfirmed => { /* may have gone: the outbox's policy */ }
//!     },
//! }
//!
//! // One task reading what the SMSC delivers:
//! while let Some(item) = incoming.recv().await {
//!     match item {
//!         // Find the row by r.message_id; r.state is final unless Enroute/Accepted.
//!         Incoming::Receipt(r) => println!("{} is {}", r.message_id, r.state.as_str()),
//!         Incoming::Message(m) => println!("{} wrote to {}: {}", m.from, m.to, m.text),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod inbound;
pub mod io;
pub mod pdu;
pub mod receipt;
pub mod session;
pub mod text;

pub use inbound::Inbound;
pub use io::{Client, ClientConfig, Incoming, LinkState, LinkStatus, SmppError, SubmitOutcome};
pub use pdu::Status;
pub use receipt::{MessageState, Receipt};
pub use session::{
    CloseReason, Config, ConfigError, Event, Session, State, SubmitError, SubmitRequest,
};
pub use text::Coding;
