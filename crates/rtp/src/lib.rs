//! Continuum's voice media plane for phone calls, sans-IO: what bridges a
//! G.711 call leg from a SIP trunk or phone into a room.
//!
//! - [`packet`]: RTP and RTCP (SR, RR, SDES, BYE) codecs;
//! - [`g711`]: μ-law and A-law;
//! - [`jitter`]: an adaptive jitter buffer; [`plc`]: loss concealment;
//! - [`dtmf`]: RFC 4733 telephone-events, both ways;
//! - [`resample`]: 8 kHz ↔ 48 kHz; [`mixer`]: mix-minus with levels;
//! - [`session`]: one call leg's media, with symmetric RTP latching.
//!
//! Nothing here does IO or reads the clock: callers feed datagrams, PCM and
//! `Instant`s, and send what comes out.

pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod mixer;
pub mod packet;
pub mod plc;
pub mod reception;
pub mod resample;
pub mod session;
pub mod srtp;

pub mod goertzel;

pub use session::{
    Direction, Dropped, Event, MediaSession, Output, SessionConfig, SessionError, SessionStats,
    Socket, SrtpKeys, Transmit,
};
