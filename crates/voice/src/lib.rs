//! Continuum's voice gateway, in the shape every media protocol here has
//! (docs/design-notes.md, "One shape for media protocols"):
//!
//! - [`gateway`]: the sans-IO core. SIP signalling from `continuum-sip` and
//!   each call's RTP media from `continuum-rtp`, fed bytes and time,
//!   returning datagrams and call events. The owner decides where calls go.
//! - [`io`]: the thin tokio host: SIP over UDP and TCP, one RTP socket pair
//!   per call from a port range, and an async handle ([`io::Voice`]) that
//!   speaks in opaque call tags.
//! - [`room`]: a call's leg in a video room, sans-IO: a str0m WebRTC
//!   participant of our SFU that publishes the phone's voice as Opus and
//!   decodes and mixes the room's audio tracks into what the phone hears.
//! - [`keepalive`]: OPTIONS probes to outbound trunks and what they say
//!   (up, down), driven by the gateway core.

pub mod gateway;
pub mod io;
pub mod keepalive;
pub mod room;

pub use continuum_sip::{CallId, TransportKind};
pub use gateway::{
    CallEvent, Dial, Frame, Gateway, GatewayConfig, GatewayError, Incoming, MediaEncryption,
};
pub use keepalive::{TrunkCheck, TrunkProbe, TrunkStatus};
