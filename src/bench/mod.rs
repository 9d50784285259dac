//! `continuum bench ...`: measurements on this machine, reported as tables and
//! JSON (the JSON feeds capacity planning).

mod attachments;
mod bridged;
mod events;
mod ivr;
mod messaging;
mod reminders;
mod routing;
mod server;
mod sfu;
mod turn;
mod voice;

use clap::Subcommand;
use continuum_server::Config;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable appends/s at 1, 8 and 64 writers; timeline page latency with
    /// many events stored; server memory idle and loaded.
    Events(events::EventsArgs),
    /// SFU forwarding: egress packets/s per core, loss, forwarding delay and
    /// memory per participant, for 1:1 visits and a large fan-out.
    Sfu(sfu::SfuArgs),
    /// TURN: user-space memory per live allocation (relaying speed against
    /// coturn: bench/turn-vs-coturn.sh).
    Turn(turn::TurnArgs),
    /// SIP gateway: calls set up and torn down per second (sipp as the load,
    /// against the server and against sipp's own UAS side by side), CPU and
    /// memory per call; then phone calls bridged into SFU rooms at real time
    /// (late frames, CPU and memory per call, the most calls under 1% late).
    Voice(voice::VoiceArgs),
    /// Messaging: signed inbound webhooks validated and stored per second;
    /// outbound messages per second through the durable outbox to a local
    /// provider stand-in (and that none is sent twice).
    Messaging(messaging::MessagingArgs),
    /// Attachments: upload and download throughput over HTTP with sealing,
    /// and the server's peak memory at each size (flat in the file size).
    Attachments(attachments::AttachmentsArgs),
    /// Appointment reminders per hour: N appointments scheduled (patients
    /// found or created, reminders planned), then dispatched through the
    /// scheduler and the outbox to a Twilio-shaped stand-in on loopback.
    Reminders(reminders::RemindersArgs),
    /// Routing decisions per second and their latency with many tasks
    /// waiting and many agents (the routing engine alone).
    Routing(routing::RoutingArgs),
    /// IVR calls handled at once: sipp callers through the example flow
    /// (spoken prompts, RFC 4733 digits) into a queue, with the media
    /// clock's lateness, CPU and memory.
    Ivr(ivr::IvrArgs),
}

pub fn run(cmd: BenchCommand, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Events(args) => events::run(args, cfg),
        BenchCommand::Sfu(args) => sfu::run(args),
        BenchCommand::Turn(args) => turn::run(args),
        BenchCommand::Voice(args) => voice::run(args),
        BenchCommand::Messaging(args) => messaging::run(args),
        BenchCommand::Attachments(args) => attachments::run(args),
        BenchCommand::Reminders(args) => reminders::run(args, cfg),
        BenchCommand::Routing(args) => routing::run(args),
        BenchCommand::Ivr(args) => ivr::run(args),
    }
}
