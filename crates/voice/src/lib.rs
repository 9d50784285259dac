//! Continuum's voice gateway, in the shape every media protocol here has
//! (docs/design-notes.md, "One shape for media protocols"):
//!
//! - [`gateway`]: the sans-IO core. SIP signalling from `continuum-sip` and
//!   each call's RTP media from `continuum-rtp`, fed bytes and time,
//!   returning datagrams and call events. The owner decides where calls go.
//! - [`io`]: the thin tokio host: SIP over UDP and TCP, one RTP socket pair
//!   per call from a port range, and an async handle ([`io::Voice`]) that
//!   speaks in opaque call tags.

pub mod gateway;
pub mod io;

pub use continuum_sip::{CallId, TransportKind};
pub use gateway::{CallEvent, Dial, Frame, Gateway, GatewayConfig, GatewayError, Incoming};
