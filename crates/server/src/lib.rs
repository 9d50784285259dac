//! The Continuum server: HTTP API, authentication, live streams, webhooks and
//! the wiring that turns the store and domain crates into one service.

pub mod api;
pub mod app;
pub mod attachments;
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod console;
pub mod demo;
pub mod dispatch;
pub mod error;
pub mod extract;
pub mod fallback;
pub mod guard;
pub mod handoff;
pub mod ivr;
pub mod lobby;
pub mod media;
pub mod messaging;
pub mod ops;
pub mod placement;
pub mod queues;
pub mod reminders;
pub mod routing;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod turn;
pub mod voice;

pub use config::Config;
pub use state::AppState;
