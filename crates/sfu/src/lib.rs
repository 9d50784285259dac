//! Continuum's SFU: rooms of participants, each a sans-IO str0m `Rtc`, with
//! media fanned out between them. [`Worker`] owns every room of one media
//! thread: feed it datagrams, time and signaling; it returns datagrams to send,
//! signaling messages for participants, and room events for the timeline.
//!
//! Status: forwarding is frame-level (str0m's depacketized `MediaData`) for
//! now; RTP-mode forwarding, simulcast layer choice and BWE are the next steps
//! of the video issue.

mod participant;
pub mod quality;
mod speaker;
mod stun;
mod worker;

pub use participant::{Mode, ParticipantId};
pub use worker::{
    JoinError, JoinRequest, RoomEvent, SfuOutput, SignalError, Worker, WorkerConfig, WorkerStats,
};

/// Installs str0m's crypto provider (aws-lc-rs) for the process; idempotent.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}
