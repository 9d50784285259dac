//! Continuum's routing engine: queues with priorities and skills, agents
//! with availability and per-channel capacity, reservations an agent accepts
//! or rejects, overflow rules, and the metrics a supervisor watches. Calls,
//! video-visit requests, chats, SMS and WhatsApp threads all route through
//! the same [`Engine`].
//!
//! # Sans-IO
//!
//! The engine never reads a clock, spawns a task or touches a socket. Every
//! input carries `now`; outputs queue up for [`Engine::poll_output`];
//! [`Engine::poll_timeout`] says when to call [`Engine::handle_timeout`]
//! (reservation expiries, wrap-up ends, overflow rules). Every input first
//! processes the timers due by its `now`, each at its own due time, so
//! results depend on the inputs and their times only, not on how promptly
//! the host calls. Time never goes backwards: an earlier `now` is taken as
//! the latest seen.
//!
//! ```
//! use continuum_routing::*;
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now();
//! let s = |n| t0 + Duration::from_secs(n);
//! let mut e = Engine::new(EngineConfig::default());
//! e.upsert_queue(QueueConfig::new("triage"), t0).unwrap();
//! e.agent_login(AgentConfig::new("nurse-1"), t0).unwrap();
//! e.enqueue(
//!     Task {
//!         id: "call-1".into(),
//!         queue: "triage".into(),
//!         channel: Channel::Voice,
//!         priority: 0,
//!         skills: vec![],
//!         conversation_id: "conv-1".into(),
//!         enqueued_at: t0,
//!     },
//!     t0,
//! )
//! .unwrap();
//! let mut offer = None;
//! while let Some(out) = e.poll_output() {
//!     if let Output::Reserved { reservation, .. } = out {
//!         offer = Some(reservation); // ring nurse-1's phone
//!     }
//! }
//! let a = e.accept(offer.unwrap(), s(3)).unwrap();
//! assert_eq!(a.agent.as_str(), "nurse-1");
//! e.complete("call-1", s(300)).unwrap();
//! // 30 s of wrap-up: the engine wants the time again then.
//! assert_eq!(e.poll_timeout(), Some(s(330)));
//! e.handle_timeout(s(330));
//! assert_eq!(e.agent_state("nurse-1"), Some(AgentState::Available));
//! ```
//!
//! # What it decides
//!
//! After every input the engine makes every possible match, so a waiting
//! task never sits while a qualified agent is free for it
//! (work-conserving). The task first: highest `priority`, then oldest
//! `enqueued_at` (across queues), then arrival order. The agent: the
//! longest idle among the qualified ones. Idle since = the last time the
//! agent became free (login, Available, end of wrap-up, last task done with
//! no wrap-up) or was offered a task, whichever is later, so an agent who
//! just rejected an offer goes to the back of the line and a multitasking
//! chat agent goes behind fully idle ones.
//!
//! Qualified = every required skill (queue's + task's − the ones widened
//! away by overflow), Available (not Away, not wrapping up), no pending
//! reservation (one at a time, as TaskRouter does for voice), no exclusive
//! task held ([`EngineConfig::exclusive`], voice and video by default: a
//! call occupies the agent), spare capacity on the task's channel
//! (reserved + assigned < [`Capacity`], default voice 1, video 1, chat 3,
//! SMS 5, WhatsApp 5), and not having refused that task. A chatting agent
//! with voice capacity can be offered a call; while on it they get nothing
//! else.
//!
//! # Reservations
//!
//! A match is a reservation ([`Output::Reserved`]): the task is offered to
//! that agent only, until `expires_at` (the queue's `reservation_timeout`,
//! default 15 s; valid while `now < expires_at`). Then:
//! - `accept` → the task is assigned ([`Output::Assigned`]). Only a pending
//!   reservation can be accepted, once: a second accept, an accept after
//!   the timeout, after a reject or after a withdrawal is an error naming
//!   which, and changes nothing. As one task has at most one pending
//!   reservation, two agents can never both get it.
//! - `reject` → offered to the next agent.
//! - timeout → [`Output::ReservationTimedOut`], offered to the next agent;
//!   the agent's missed count goes up, and after
//!   [`EngineConfig::missed_before_away`] consecutive misses (default 1) the
//!   agent is put Away so calls don't keep ringing an empty desk.
//! - the agent goes Away or logs out, the task is cancelled or transferred →
//!   [`Output::ReservationCancelled`]; the task (if still there) waits again
//!   in its original place.
//!
//! A reject or a miss bars that agent from that task — even if they are the
//! only qualified agent — until the agent next declares themselves
//! Available ([`Engine::set_agent_state`] with [`Presence::Available`], which
//! an agent put Away by a miss does anyway). Overflow rules are the remedy
//! for a task nobody takes. Overflow rules don't fire while a task is
//! reserved; a rule that came due meanwhile fires when the task waits again.
//!
//! # Wrap-up
//!
//! `complete` puts the agent in wrap-up for the agent's, else the queue's,
//! else the engine's duration (default 30 s; zero = none). A wrapping-up
//! agent is offered nothing (they keep the tasks they hold) and is
//! Available again when it ends; setting Available ends it early.
//!
//! # Overflow
//!
//! Per queue, rules by time waited in that queue: widen skills, move to
//! another queue (keeping the original `enqueued_at` for order and service
//! level; the new queue's rules count from the move), voicemail or callback
//! (the task leaves with that reason; the host does the rest).
//!
//! # Complexity
//!
//! Waiting tasks are filed in buckets by (queue, channel, required skill
//! set), each a B-tree ordered by (priority, enqueued_at, arrival); ready
//! agents in classes by (skill set, channels with spare capacity), each a
//! B-tree ordered by idle-since. Skill sets are 256-bit masks. An agent
//! becoming free looks at the head of each bucket it qualifies for:
//! O(B · log n); a task becoming waiting looks at the head of each class
//! qualified for it: O(C · log a). B and C are the numbers of distinct
//! non-empty buckets and classes — small in practice, independent of the
//! number of tasks and agents. Skipping refusals adds at most the number of
//! refusals involved. Timers are a B-tree: O(log n). Queries (`task`'s
//! position, `snapshot`) are linear and not on the decision path. See
//! [`bench`] for the measured figures.
//!
//! # Metrics
//!
//! [`Engine::snapshot`]: per queue waiting, longest wait, reserved,
//! assigned, and over the last 15 minutes answered, abandoned, overflowed
//! out and the service level (answered within the queue's target ÷
//! answered + abandoned + overflowed out); agents by state. The host turns
//! outputs that concern a patient into timeline events.

pub mod bench;
mod engine;
mod types;

pub use engine::{Engine, MAX_SKILLS};
pub use types::*;
