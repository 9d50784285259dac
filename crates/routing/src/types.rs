//! The engine's vocabulary: identifiers, channels, configuration, inputs,
//! outputs, errors and the serializable views of its state.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (an `Arc<str>`); serializes as a plain string;
        /// dereferences to `str`, so `&id` is accepted wherever the engine
        /// takes `&str`.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl AsRef<str>) -> Self {
                Self(Arc::from(s.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

string_id!(
    /// A task (one call, chat, SMS thread or video-visit request), named by the host.
    TaskId
);
string_id!(
    /// A staff member, named by the host.
    AgentId
);
string_id!(
    /// A queue, named by the host.
    QueueId
);

/// A reservation: one offer of one task to one agent. Engine-assigned,
/// never reused within an engine's life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}
impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The medium of a task. Capacity is counted per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Voice,
    Video,
    Chat,
    Sms,
    WhatsApp,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Voice,
        Channel::Video,
        Channel::Chat,
        Channel::Sms,
        Channel::WhatsApp,
    ];
    pub(crate) fn index(self) -> usize {
        self as usize
    }
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Durations in configuration (de)serialize as seconds (a number, fractions allowed).
pub mod secs {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// `Option<Duration>` as seconds, `null`/absent = `None`.
pub mod opt_secs {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(v) => Duration::try_from_secs_f64(v)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
}
fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis().min(u64::MAX as u128) as u64)),
        None => s.serialize_none(),
    }
}

/// Engine-wide policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Channels whose task occupies the agent: while an agent holds (reserved
    /// or assigned) a task on one of these, they are offered nothing else.
    /// Default: voice and video (a call occupies the agent).
    pub exclusive: Vec<Channel>,
    /// Consecutive missed (timed-out) reservations after which the agent is
    /// put Away, so calls don't keep ringing an empty desk. 0 = never.
    /// Default 1. An accept resets the streak.
    pub missed_before_away: u32,
    /// Wrap-up after a completed task when neither the agent nor the queue
    /// sets one. Default 30 s; zero = none.
    #[serde(with = "secs")]
    pub wrap_up: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            exclusive: vec![Channel::Voice, Channel::Video],
            missed_before_away: 1,
            wrap_up: Duration::from_secs(30),
        }
    }
}

/// What happens to a task that has waited `after` in a queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Overflow {
    /// Relax the requirement: these skills are no longer required of the
    /// agent for this task (queue's or task's own).
    WidenSkills { drop: Vec<String> },
    /// Move to another queue. The task keeps its original `enqueued_at`
    /// (ordering and service level); the other queue's overflow rules count
    /// from the move.
    Queue { to: QueueId },
    /// The task leaves the engine: the host sends it to voicemail.
    Voicemail,
    /// The task leaves the engine: the host offers a callback.
    Callback,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverflowRule {
    /// Time waited in this queue (since the task entered it) before the
    /// rule fires. Rules fire in list order; each at most once per stay.
    #[serde(with = "secs")]
    pub after: Duration,
    #[serde(flatten)]
    pub action: Overflow,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub id: QueueId,
    #[serde(default)]
    pub name: String,
    /// Skills an agent must have to be offered this queue's tasks.
    #[serde(default)]
    pub skills: Vec<String>,
    /// How long an agent has to accept an offer. Default 15 s.
    #[serde(default = "QueueConfig::default_reservation_timeout", with = "secs")]
    pub reservation_timeout: Duration,
    /// Answer-within target for the service-level metric. Default 20 s.
    #[serde(default = "QueueConfig::default_service_level_target", with = "secs")]
    pub service_level_target: Duration,
    /// Wrap-up after a task of this queue completes (the agent's own setting
    /// wins; then this; then the engine's).
    #[serde(default, with = "opt_secs")]
    pub wrap_up: Option<Duration>,
    /// Applied in order, by time waited in this queue. Keep `after` increasing.
    #[serde(default)]
    pub overflow: Vec<OverflowRule>,
}

impl QueueConfig {
    pub fn new(id: impl Into<QueueId>) -> Self {
        Self {
            id: id.into(),
            name: String::new(),
            skills: Vec::new(),
            reservation_timeout: Self::default_reservation_timeout(),
            service_level_target: Self::default_service_level_target(),
            wrap_up: None,
            overflow: Vec::new(),
        }
    }
    fn default_reservation_timeout() -> Duration {
        Duration::from_secs(15)
    }
    fn default_service_level_target() -> Duration {
        Duration::from_secs(20)
    }
}

/// Simultaneous tasks (reserved + assigned) an agent takes per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capacity {
    pub voice: u16,
    pub video: u16,
    pub chat: u16,
    pub sms: u16,
    pub whatsapp: u16,
}

impl Default for Capacity {
    /// Voice 1, video 1, chat 3, SMS 5, WhatsApp 5.
    fn default() -> Self {
        Self {
            voice: 1,
            video: 1,
            chat: 3,
            sms: 5,
            whatsapp: 5,
        }
    }
}

impl Capacity {
    pub fn get(&self, ch: Channel) -> u16 {
        match ch {
            Channel::Voice => self.voice,
            Channel::Video => self.video,
            Channel::Chat => self.chat,
            Channel::Sms => self.sms,
            Channel::WhatsApp => self.whatsapp,
        }
    }
    pub(crate) fn array(&self) -> [u16; 5] {
        Channel::ALL.map(|c| self.get(c))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub id: AgentId,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub capacity: Capacity,
    /// Overrides the queue's and the engine's wrap-up.
    #[serde(default, with = "opt_secs")]
    pub wrap_up: Option<Duration>,
}

impl AgentConfig {
    pub fn new(id: impl Into<AgentId>) -> Self {
        Self {
            id: id.into(),
            skills: Vec::new(),
            capacity: Capacity::default(),
            wrap_up: None,
        }
    }
}

/// A task to route.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub queue: QueueId,
    pub channel: Channel,
    /// Higher first.
    pub priority: i32,
    /// Required of the agent on top of the queue's skills.
    pub skills: Vec<String>,
    pub conversation_id: String,
    /// When the patient started waiting. Re-enqueuing a task (say after
    /// its agent logged out) with its original time keeps its place.
    pub enqueued_at: Instant,
}

/// What an agent declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Available,
    Away,
}

/// An agent's state. `Busy` is derived: the agent is Available but holds an
/// exclusive task (voice, video by default) or has no spare capacity on any
/// channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentState {
    Offline,
    Available,
    Busy,
    WrapUp { until: Instant },
    Away,
}

impl AgentState {
    pub fn status(&self) -> AgentStatus {
        match self {
            AgentState::Offline => AgentStatus::Offline,
            AgentState::Available => AgentStatus::Available,
            AgentState::Busy => AgentStatus::Busy,
            AgentState::WrapUp { .. } => AgentStatus::WrapUp,
            AgentState::Away => AgentStatus::Away,
        }
    }
}

/// [`AgentState`] without its time, for views and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Offline,
    Available,
    Busy,
    WrapUp,
    Away,
}

/// Why a task left the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskLeftReason {
    /// Overflow rule: to voicemail.
    Voicemail,
    /// Overflow rule: offer a callback.
    Callback,
    /// Cancelled (caller hung up) while waiting or reserved.
    Abandoned,
    /// `complete` (or `cancel` of an assigned task).
    Completed,
    /// Its agent logged out while it was assigned. The host may enqueue it
    /// again (with its original `enqueued_at` to keep its place).
    AgentLoggedOut,
}

/// Why a pending reservation was withdrawn (neither accepted, rejected nor
/// timed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The task was cancelled (caller hung up).
    TaskCancelled,
    /// The task was transferred to another queue.
    TaskTransferred,
    AgentLoggedOut,
    AgentAway,
}

/// What the engine tells its host. Drained with [`crate::Engine::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Offer `task` to `agent` (ring the phone, flash the console) until
    /// `expires_at`; answer with `accept` or `reject`.
    Reserved {
        reservation: ReservationId,
        task: TaskId,
        agent: AgentId,
        queue: QueueId,
        channel: Channel,
        conversation_id: Arc<str>,
        expires_at: Instant,
    },
    /// The agent did not answer in time; the task is offered elsewhere.
    ReservationTimedOut {
        reservation: ReservationId,
        task: TaskId,
        agent: AgentId,
    },
    /// Withdrawn: stop ringing.
    ReservationCancelled {
        reservation: ReservationId,
        task: TaskId,
        agent: AgentId,
        reason: CancelReason,
    },
    /// An accepted reservation: the conversation is the agent's.
    Assigned {
        reservation: ReservationId,
        task: TaskId,
        agent: AgentId,
        queue: QueueId,
        channel: Channel,
        conversation_id: Arc<str>,
    },
    /// Overflow rule `rule` (index in the queue's list) of `queue` fired.
    Overflowed {
        task: TaskId,
        queue: QueueId,
        rule: usize,
        action: Overflow,
        conversation_id: Arc<str>,
    },
    /// The task is gone from the engine.
    TaskLeft {
        task: TaskId,
        queue: QueueId,
        reason: TaskLeftReason,
        conversation_id: Arc<str>,
    },
    AgentStateChanged {
        agent: AgentId,
        from: AgentState,
        to: AgentState,
    },
}

/// What `accept` returns (also emitted as [`Output::Assigned`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub reservation: ReservationId,
    pub task: TaskId,
    pub agent: AgentId,
    pub queue: QueueId,
    pub channel: Channel,
    pub conversation_id: Arc<str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReservationView {
    pub reservation: ReservationId,
    pub task: TaskId,
    pub agent: AgentId,
    pub expires_at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RoutingError {
    #[error("unknown queue {0}")]
    UnknownQueue(String),
    #[error("queue {0} still has tasks")]
    QueueNotEmpty(String),
    #[error("queue {queue}: {reason}")]
    InvalidQueue { queue: String, reason: String },
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    #[error("agent {0} is already logged in")]
    AgentAlreadyLoggedIn(String),
    #[error("agent {0} holds more tasks than the new capacity allows")]
    CapacityBelowLoad(String),
    #[error("unknown task {0}")]
    UnknownTask(String),
    #[error("task {0} is already in the engine")]
    DuplicateTask(String),
    #[error("task {0} is not assigned")]
    TaskNotAssigned(String),
    #[error("unknown reservation {0}")]
    UnknownReservation(ReservationId),
    #[error("reservation {0} expired")]
    ReservationExpired(ReservationId),
    #[error("reservation {0} was already accepted")]
    ReservationAlreadyAccepted(ReservationId),
    #[error("reservation {0} was rejected")]
    ReservationRejected(ReservationId),
    #[error("reservation {0} was withdrawn")]
    ReservationCancelled(ReservationId),
    #[error("more than {max} distinct skills")]
    TooManySkills { max: usize },
}

/// Serializable view of one queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueStats {
    pub id: QueueId,
    pub name: String,
    pub waiting: usize,
    /// Oldest waiting task's wait (since its original `enqueued_at`).
    #[serde(rename = "longest_wait_ms", serialize_with = "ms")]
    pub longest_wait: Duration,
    pub reserved: usize,
    pub assigned: usize,
    /// Answered within the queue's target ÷ (answered + abandoned +
    /// overflowed to voicemail/callback), over the last 15 minutes; `None`
    /// when nothing ended in that window.
    pub service_level_15m: Option<f64>,
    pub answered_15m: usize,
    pub answered_within_target_15m: usize,
    pub abandoned_15m: usize,
    /// Left by a voicemail or callback overflow rule.
    pub overflowed_15m: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentCounts {
    pub available: usize,
    pub busy: usize,
    pub wrap_up: usize,
    pub away: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentView {
    pub id: AgentId,
    pub state: AgentStatus,
    /// Assigned tasks.
    pub tasks: Vec<TaskId>,
    /// The task of the pending reservation, if any.
    pub reserved: Option<TaskId>,
    /// How long the agent has been free (no task, ready for one); `None`
    /// while they hold a task or are away / wrapping up.
    #[serde(rename = "idle_ms", serialize_with = "opt_ms")]
    pub idle_for: Option<Duration>,
    #[serde(rename = "wrap_up_remaining_ms", serialize_with = "opt_ms")]
    pub wrap_up_remaining: Option<Duration>,
    /// Reservations that timed out, all time.
    pub missed: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub queues: Vec<QueueStats>,
    pub agents_by_state: AgentCounts,
    pub agents: Vec<AgentView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TaskStatus {
    Waiting,
    Reserved { agent: AgentId },
    Assigned { agent: AgentId },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskView {
    pub id: TaskId,
    pub queue: QueueId,
    pub channel: Channel,
    pub priority: i32,
    /// 1-based rank among the queue's waiting tasks (the next to be offered
    /// is 1); `None` unless waiting.
    pub position: Option<usize>,
    /// Since the original `enqueued_at`.
    #[serde(rename = "waiting_ms", serialize_with = "ms")]
    pub waiting_for: Duration,
    #[serde(flatten)]
    pub state: TaskStatus,
}
