//! Continuum's SMPP 3.4 client (ESME), in the shape of the media protocols:
//! a codec ([`pdu`]), message text ([`text`]: GSM-7 or UCS-2 per message,
//! concatenation), delivery receipts ([`receipt`]) and handset messages
//! ([`inbound`]), a sans-IO [`Session`] fed bytes and time, and a tokio
//! host ([`io`]) that connects, binds, reconnects with backoff and gives
//! the server a cloneable [`Client`] handle.
//!
//! The codec is our own rather than `rusmpp`'s: see "SMPP (issue 15)" in
//! docs/design-notes.md.

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
