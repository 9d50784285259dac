//! Continuum's SIP core (RFC 3261), sans-IO like the rest of the media
//! stack: [`Endpoint`] is fed bytes and time and answers with datagrams to
//! send and call events; no sockets, no clocks, no tasks. The IO loop and
//! the B2BUA glue live elsewhere.
//!
//! Built on `rsip` 0.4 for parsing and generation (see [`message`] for the
//! gaps it has and how they are worked around). rsipstack was not used: its
//! endpoint owns tokio transports, which defeats sans-IO testing and fuzzing.

pub mod auth;
pub mod dialog;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod transaction;

pub use auth::{DigestCredentials, Secret};
pub use endpoint::{
    CallId, Config, EndCause, Endpoint, InviteRequest, LiveState, Output, SipError, SipEvent,
    Transport, TransportKind,
};
pub use sdp::Sdp;
