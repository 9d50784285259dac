//! Continuum's SFU: rooms of participants, each a sans-IO str0m `Rtc`, with
//! media fanned out between them. [`Worker`] owns every room of one media
//! thread: feed it datagrams, time and signaling; it returns datagrams to send,
//! signaling messages for participants, and room events for the timeline.
//!
//! Forwarding is RTP-level (str0m's RTP mode): a published packet's payload
//! is shared (`Arc`) by every subscriber's copy, with sequence numbers,
//! timestamps and VP8 picture ids rewritten per subscriber ([`forward`]) so
//! simulcast layer switches stay invisible to the receiver.

pub mod forward;
pub mod host;
mod metrics;
mod participant;
pub mod quality;
mod sdp_problem;
pub mod sim;
mod speaker;
mod stun;
mod worker;

pub use participant::{Mode, ParticipantId};
pub use str0m::media::MediaKind;
pub use worker::{
    INITIAL_BWE_BPS, JoinError, JoinRequest, Notice, RECV_BATCH, RoomEvent, SfuOutput, SignalError,
    TIMER_REASONS, Worker, WorkerConfig, WorkerStats,
};

/// Installs str0m's crypto provider (aws-lc-rs) for the process; idempotent.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}
