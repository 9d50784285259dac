//! Continuum's STUN/TURN server (RFC 8489, RFC 8656, RFC 6156): a zero-copy
//! codec ([`stun`]), long-term and TURN REST credentials ([`auth`]), the peer
//! policy that keeps relays out of private networks ([`policy`]), a sans-IO
//! allocation core ([`server`]) and thin tokio IO loops ([`io`]).

pub mod auth;
pub mod io;
pub mod ledger;
mod metrics;
pub mod policy;
pub mod server;
pub mod stun;

pub use server::{Client, Config, Output, Relays, Server, Transport};
