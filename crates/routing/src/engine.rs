//! The routing state machine. See the crate docs for the policy.

use crate::types::*;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHANNELS: usize = 5;
/// Distinct skill names an engine knows (bits of a [`SkillSet`]).
pub const MAX_SKILLS: usize = 256;
/// Finished reservations remembered to name the error of a late accept.
const FINISHED_MEMORY: usize = 65_536;
/// The metrics window.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Outcomes kept per queue for the window (a bound, not a sample size).
const OUTCOMES_MAX: usize = 50_000;

// ---------------------------------------------------------------- helpers

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
struct SkillSet([u64; MAX_SKILLS / 64]);

impl SkillSet {
    fn is_subset(&self, of: &SkillSet) -> bool {
        self.0.iter().zip(of.0.iter()).all(|(a, b)| a & !b == 0)
    }
    fn union(&self, o: &SkillSet) -> SkillSet {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0.iter()) {
            *a |= b;
        }
        r
    }
    fn minus(&self, o: &SkillSet) -> SkillSet {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0.iter()) {
            *a &= !b;
        }
        r
    }
}

#[derive(Default)]
struct Interner {
    names: HashMap<String, usize>,
}

impl Interner {
    fn set(&mut self, names: &[String]) -> Result<SkillSet, RoutingError> {
        let mut s = SkillSet::default();
        for n in names {
            let next = self.names.len();
            let i = match self.names.get(n.as_str()) {
                Some(&i) => i,
                None => {
                    if next >= MAX_SKILLS {
                        return Err(RoutingError::TooManySkills { max: MAX_SKILLS });
                    }
                    self.names.insert(n.clone(), next);
                    next
                }
            };
            s.0[i / 64] |= 1 << (i % 64);
        }
        Ok(s)
    }
}

/// Vec-backed slab with a free list; indexes are reused, so every reference
/// to a slot is removed eagerly when the slot is freed.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, v: T) -> usize {
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(v);
            i
        } else {
            self.items.push(Some(v));
            self.items.len() - 1
        }
    }
    fn remove(&mut self, i: usize) -> T {
        let v = self.items[i].take().expect("slab slot in use");
        self.free.push(i);
        v
    }
    fn get(&self, i: usize) -> &T {
        self.items[i].as_ref().expect("slab slot in use")
    }
    fn get_mut(&mut self, i: usize) -> &mut T {
        self.items[i].as_mut().expect("slab slot in use")
    }
    fn try_get(&self, i: usize) -> Option<&T> {
        self.items.get(i).and_then(|o| o.as_ref())
    }
    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().map(|v| (i, v)))
    }
}

// ---------------------------------------------------------------- state

/// Waiting order: priority (higher first), original enqueue time, arrival
/// sequence, slot.
type TaskKey = (Reverse<i32>, Instant, u64, usize);
/// Idle order: idle since (earlier first), login sequence, slot.
type AgentKey = (Instant, u64, usize);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    Reservation(u64),
    WrapUp(usize),
    Overflow(usize),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    AnsweredWithin,
    AnsweredLate,
    Abandoned,
    Overflowed,
}

struct QueueSlot {
    cfg: QueueConfig,
    skills: SkillSet,
    /// Per overflow rule: the skills a WidenSkills rule drops.
    drops: Vec<SkillSet>,
    waiting: usize,
    reserved: usize,
    assigned: usize,
    outcomes: VecDeque<(Instant, Outcome)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TState {
    /// In the bucket.
    Waiting(usize),
    Reserved(u64),
    Assigned(usize),
    /// Between states, inside one input.
    Limbo,
}

struct TaskSlot {
    id: TaskId,
    conversation_id: Arc<str>,
    channel: Channel,
    priority: i32,
    queue: usize,
    enqueued_at: Instant,
    /// Entered the current queue (overflow rules count from here).
    queued_at: Instant,
    seq: u64,
    skills: SkillSet,
    dropped: SkillSet,
    /// Requirement while waiting (queue ∪ task − dropped).
    req: SkillSet,
    next_rule: usize,
    overflow_due: Option<Instant>,
    state: TState,
    refused_by: Vec<usize>,
    answered: bool,
    dirty: bool,
}

impl TaskSlot {
    fn key(&self, idx: usize) -> TaskKey {
        (Reverse(self.priority), self.enqueued_at, self.seq, idx)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pres {
    Available,
    Away,
    WrapUp(Instant),
}

struct AgentSlot {
    id: AgentId,
    skills: SkillSet,
    capacity: [u16; CHANNELS],
    wrap_up: Option<Duration>,
    pres: Pres,
    load: [u16; CHANNELS],
    /// Exclusive-channel tasks held (reserved or assigned).
    exclusive: u16,
    pending: Option<u64>,
    assigned: Vec<usize>,
    refused: Vec<usize>,
    idle_since: Instant,
    /// Tasks held since `busy_since` (for the idle view).
    seq: u64,
    /// In the ready index: (class, key).
    ready: Option<(usize, AgentKey)>,
    last_state: AgentState,
    missed: u32,
    streak: u32,
    dirty: bool,
}

impl AgentSlot {
    fn free_mask(&self) -> u8 {
        let mut m = 0;
        for c in Channel::ALL {
            if self.load[c.index()] < self.capacity[c.index()] {
                m |= c.bit();
            }
        }
        m
    }
    fn holds(&self) -> usize {
        self.assigned.len() + usize::from(self.pending.is_some())
    }
}

struct Bucket {
    queue: usize,
    channel: Channel,
    req: SkillSet,
    tasks: BTreeSet<TaskKey>,
}

struct Class {
    skills: SkillSet,
    mask: u8,
    agents: BTreeSet<AgentKey>,
}

struct Resv {
    task: usize,
    agent: usize,
    expires_at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finished {
    Accepted,
    Rejected,
    TimedOut,
    Cancelled,
}

/// The routing engine. Feed it inputs and time; drain
/// [`poll_output`](Engine::poll_output); call
/// [`handle_timeout`](Engine::handle_timeout) at
/// [`poll_timeout`](Engine::poll_timeout).
pub struct Engine {
    cfg: EngineConfig,
    exclusive: [bool; CHANNELS],
    now: Option<Instant>,
    skills: Interner,
    queues: Slab<QueueSlot>,
    queue_ids: HashMap<QueueId, usize>,
    tasks: Slab<TaskSlot>,
    task_ids: HashMap<TaskId, usize>,
    agents: Slab<AgentSlot>,
    agent_ids: HashMap<AgentId, usize>,
    buckets: Slab<Bucket>,
    bucket_ids: HashMap<(usize, Channel, SkillSet), usize>,
    classes: Slab<Class>,
    class_ids: HashMap<(SkillSet, u8), usize>,
    reservations: HashMap<u64, Resv>,
    finished: HashMap<u64, Finished>,
    finished_order: VecDeque<u64>,
    next_reservation: u64,
    seq: u64,
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    dirty_agents: Vec<usize>,
    dirty_tasks: Vec<usize>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        let mut exclusive = [false; CHANNELS];
        for c in &cfg.exclusive {
            exclusive[c.index()] = true;
        }
        Self {
            cfg,
            exclusive,
            now: None,
            skills: Interner::default(),
            queues: Slab::default(),
            queue_ids: HashMap::new(),
            tasks: Slab::default(),
            task_ids: HashMap::new(),
            agents: Slab::default(),
            agent_ids: HashMap::new(),
            buckets: Slab::default(),
            bucket_ids: HashMap::new(),
            classes: Slab::default(),
            class_ids: HashMap::new(),
            reservations: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            next_reservation: 1,
            seq: 0,
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            dirty_agents: Vec::new(),
            dirty_tasks: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    // ------------------------------------------------------------ driving

    /// Next output, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Engine::handle_timeout) next has work: the
    /// earliest reservation expiry, wrap-up end or overflow rule.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Processes every timer due at or before `now`, each at its own due
    /// time (so results don't depend on how late the host calls). Every
    /// other input does this first too.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    fn advance(&mut self, now: Instant) -> Instant {
        let now = match self.now {
            Some(p) if p > now => p,
            _ => now,
        };
        while let Some(&(due, timer)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let at = match self.now {
                Some(p) if p > due => p,
                _ => due,
            };
            self.now = Some(at);
            match timer {
                Timer::Reservation(r) => self.expire_reservation(r, at),
                Timer::WrapUp(a) => self.end_wrap_up(a, at),
                Timer::Overflow(t) => {
                    let task = self.tasks.get_mut(t);
                    task.overflow_due = None;
                    self.take_from_waiting(t);
                    self.make_waiting(t, at);
                }
            }
            self.dispatch(at);
        }
        self.now = Some(now);
        now
    }

    // ------------------------------------------------------------ queues

    /// Adds a queue or changes one. A change re-files the queue's waiting
    /// tasks under the new skills and rules (overflow rules already applied
    /// stay applied). Refused: a zero reservation timeout, a rule moving
    /// tasks to the queue itself or a queue move with a zero `after`. A rule
    /// naming a queue that doesn't exist when it fires does nothing.
    pub fn upsert_queue(&mut self, cfg: QueueConfig, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let invalid = |reason: &str| RoutingError::InvalidQueue {
            queue: cfg.id.to_string(),
            reason: reason.into(),
        };
        if cfg.reservation_timeout.is_zero() {
            return Err(invalid("reservation_timeout must be above zero"));
        }
        for r in &cfg.overflow {
            if let Overflow::Queue { to } = &r.action {
                if *to == cfg.id {
                    return Err(invalid("an overflow rule moves tasks to the queue itself"));
                }
                // Rules count from the move, so a positive delay is what
                // keeps a cycle of queue moves from spinning.
                if r.after.is_zero() {
                    return Err(invalid("a queue overflow rule needs `after` above zero"));
                }
            }
        }
        let skills = self.skills.set(&cfg.skills)?;
        let mut drops = Vec::with_capacity(cfg.overflow.len());
        for r in &cfg.overflow {
            drops.push(match &r.action {
                Overflow::WidenSkills { drop } => self.skills.set(drop)?,
                _ => SkillSet::default(),
            });
        }
        if let Some(&q) = self.queue_ids.get(&cfg.id) {
            let slot = self.queues.get_mut(q);
            slot.cfg = cfg;
            slot.skills = skills;
            slot.drops = drops;
            let waiting: Vec<usize> = self
                .buckets
                .iter()
                .filter(|(_, b)| b.queue == q)
                .flat_map(|(_, b)| b.tasks.iter().map(|k| k.3))
                .collect();
            for t in waiting {
                self.take_from_waiting(t);
                let task = self.tasks.get_mut(t);
                task.overflow_due = None;
                self.make_waiting(t, now);
            }
        } else {
            let id = cfg.id.clone();
            let q = self.queues.insert(QueueSlot {
                cfg,
                skills,
                drops,
                waiting: 0,
                reserved: 0,
                assigned: 0,
                outcomes: VecDeque::new(),
            });
            self.queue_ids.insert(id, q);
        }
        self.dispatch(now);
        Ok(())
    }

    /// Removes an empty queue (no waiting, reserved or assigned task).
    pub fn remove_queue(&mut self, id: &str) -> Result<(), RoutingError> {
        let q = *self
            .queue_ids
            .get(id)
            .ok_or_else(|| RoutingError::UnknownQueue(id.into()))?;
        let slot = self.queues.get(q);
        if slot.waiting + slot.reserved + slot.assigned > 0 {
            return Err(RoutingError::QueueNotEmpty(id.into()));
        }
        self.queues.remove(q);
        self.queue_ids.remove(id);
        Ok(())
    }

    // ------------------------------------------------------------ agents

    /// Logs an agent in, Available.
    pub fn agent_login(&mut self, cfg: AgentConfig, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        if self.agent_ids.contains_key(&cfg.id) {
            return Err(RoutingError::AgentAlreadyLoggedIn(cfg.id.to_string()));
        }
        let skills = self.skills.set(&cfg.skills)?;
        self.seq += 1;
        let a = self.agents.insert(AgentSlot {
            id: cfg.id.clone(),
            skills,
            capacity: cfg.capacity.array(),
            wrap_up: cfg.wrap_up,
            pres: Pres::Available,
            load: [0; CHANNELS],
            exclusive: 0,
            pending: None,
            assigned: Vec::new(),
            refused: Vec::new(),
            idle_since: now,
            seq: self.seq,
            ready: None,
            last_state: AgentState::Offline,
            missed: 0,
            streak: 0,
            dirty: false,
        });
        self.agent_ids.insert(cfg.id, a);
        self.sync_agent(a);
        self.dispatch(now);
        Ok(())
    }

    /// Changes a logged-in agent's skills, capacity or wrap-up. Refused if
    /// the agent already holds more than the new capacity.
    pub fn update_agent(&mut self, cfg: AgentConfig, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let a = self.agent_index(&cfg.id)?;
        let capacity = cfg.capacity.array();
        if (0..CHANNELS).any(|c| self.agents.get(a).load[c] > capacity[c]) {
            return Err(RoutingError::CapacityBelowLoad(cfg.id.to_string()));
        }
        let skills = self.skills.set(&cfg.skills)?;
        let agent = self.agents.get_mut(a);
        agent.skills = skills;
        agent.capacity = capacity;
        agent.wrap_up = cfg.wrap_up;
        self.sync_agent(a);
        self.mark_agent(a);
        self.dispatch(now);
        Ok(())
    }

    /// Logs an agent out: a pending reservation is withdrawn (the task waits
    /// again, in its place); assigned tasks leave the engine with
    /// [`TaskLeftReason::AgentLoggedOut`].
    pub fn agent_logout(&mut self, agent: &str, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let a = self.agent_index(agent)?;
        if let Some(r) = self.agents.get(a).pending {
            let (t, _) = self.release(r, Finished::Cancelled);
            self.emit_cancelled(r, t, a, CancelReason::AgentLoggedOut);
            self.make_waiting(t, now);
        }
        let assigned = std::mem::take(&mut self.agents.get_mut(a).assigned);
        for t in assigned {
            let ch = self.tasks.get(t).channel;
            self.unload(a, ch);
            let q = self.tasks.get(t).queue;
            self.queues.get_mut(q).assigned -= 1;
            self.tasks.get_mut(t).state = TState::Limbo;
            self.leave(t, TaskLeftReason::AgentLoggedOut);
        }
        self.clear_refusals(a);
        if let Pres::WrapUp(until) = self.agents.get(a).pres {
            self.timers.remove(&(until, Timer::WrapUp(a)));
        }
        self.unindex_agent(a);
        let slot = self.agents.remove(a);
        self.agent_ids.remove(agent);
        self.outputs.push_back(Output::AgentStateChanged {
            agent: slot.id,
            from: slot.last_state,
            to: AgentState::Offline,
        });
        self.dispatch(now);
        Ok(())
    }

    /// Available (also ends a wrap-up early, resets the missed streak and
    /// lifts the agent's refusals: tasks they rejected or missed may be
    /// offered to them again) or Away (a pending reservation is withdrawn
    /// and the task re-offered; assigned tasks stay).
    pub fn set_agent_state(
        &mut self,
        agent: &str,
        presence: Presence,
        now: Instant,
    ) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let a = self.agent_index(agent)?;
        let old = self.agents.get(a).pres;
        if let Pres::WrapUp(until) = old {
            self.timers.remove(&(until, Timer::WrapUp(a)));
        }
        match presence {
            Presence::Available => {
                self.clear_refusals(a);
                let agent = self.agents.get_mut(a);
                agent.streak = 0;
                if old != Pres::Available {
                    agent.pres = Pres::Available;
                    agent.idle_since = now;
                }
                self.sync_agent(a);
                self.mark_agent(a);
            }
            Presence::Away => {
                if let Some(r) = self.agents.get(a).pending {
                    let (t, _) = self.release(r, Finished::Cancelled);
                    self.emit_cancelled(r, t, a, CancelReason::AgentAway);
                    self.make_waiting(t, now);
                }
                self.agents.get_mut(a).pres = Pres::Away;
                self.sync_agent(a);
            }
        }
        self.dispatch(now);
        Ok(())
    }

    // ------------------------------------------------------------ tasks

    /// Adds a task to its queue. It is offered at once if an agent fits.
    pub fn enqueue(&mut self, task: Task, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        if self.task_ids.contains_key(&task.id) {
            return Err(RoutingError::DuplicateTask(task.id.to_string()));
        }
        let q = *self
            .queue_ids
            .get(&task.queue)
            .ok_or_else(|| RoutingError::UnknownQueue(task.queue.to_string()))?;
        let skills = self.skills.set(&task.skills)?;
        self.seq += 1;
        let t = self.tasks.insert(TaskSlot {
            id: task.id.clone(),
            conversation_id: Arc::from(task.conversation_id),
            channel: task.channel,
            priority: task.priority,
            queue: q,
            enqueued_at: task.enqueued_at,
            queued_at: now,
            seq: self.seq,
            skills,
            dropped: SkillSet::default(),
            req: SkillSet::default(),
            next_rule: 0,
            overflow_due: None,
            state: TState::Limbo,
            refused_by: Vec::new(),
            answered: false,
            dirty: false,
        });
        self.task_ids.insert(task.id, t);
        self.make_waiting(t, now);
        self.dispatch(now);
        Ok(())
    }

    /// The caller hung up. Waiting or reserved: the task leaves, abandoned
    /// (counted). Assigned: same as [`complete`](Engine::complete).
    pub fn cancel(&mut self, task: &str, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let t = self.task_index(task)?;
        match self.tasks.get(t).state {
            TState::Waiting(_) => self.take_from_waiting(t),
            TState::Reserved(r) => {
                let (_, a) = self.release(r, Finished::Cancelled);
                self.emit_cancelled(r, t, a, CancelReason::TaskCancelled);
            }
            TState::Assigned(_) => return self.complete(task, now),
            TState::Limbo => unreachable!("task in limbo between inputs"),
        }
        let task = self.tasks.get(t);
        if !task.answered {
            self.record(task.queue, now, Outcome::Abandoned);
        }
        self.leave(t, TaskLeftReason::Abandoned);
        self.dispatch(now);
        Ok(())
    }

    /// Accepts a pending reservation: the task is the agent's. Only a pending
    /// reservation can be accepted, once; a late, repeated, rejected or
    /// withdrawn one is an error naming which, and nothing changes.
    pub fn accept(
        &mut self,
        reservation: ReservationId,
        now: Instant,
    ) -> Result<Assignment, RoutingError> {
        let now = self.advance(now);
        let r = reservation.0;
        if !self.reservations.contains_key(&r) {
            return Err(self.finished_error(reservation));
        }
        let (t, a) = self.release(r, Finished::Accepted);
        // `release` unloaded the agent; the assignment loads it again.
        let ch = self.tasks.get(t).channel;
        self.load(a, ch);
        let agent = self.agents.get_mut(a);
        agent.assigned.push(t);
        agent.streak = 0;
        let task = self.tasks.get_mut(t);
        task.state = TState::Assigned(a);
        let first = !task.answered;
        task.answered = true;
        let (q, waited) = (task.queue, now.saturating_duration_since(task.enqueued_at));
        let slot = self.queues.get_mut(q);
        slot.assigned += 1;
        if first {
            let o = if waited <= slot.cfg.service_level_target {
                Outcome::AnsweredWithin
            } else {
                Outcome::AnsweredLate
            };
            self.record(q, now, o);
        }
        let task = self.tasks.get(t);
        let asg = Assignment {
            reservation,
            task: task.id.clone(),
            agent: self.agents.get(a).id.clone(),
            queue: self.queues.get(q).cfg.id.clone(),
            channel: ch,
            conversation_id: task.conversation_id.clone(),
        };
        self.outputs.push_back(Output::Assigned {
            reservation,
            task: asg.task.clone(),
            agent: asg.agent.clone(),
            queue: asg.queue.clone(),
            channel: ch,
            conversation_id: asg.conversation_id.clone(),
        });
        self.sync_agent(a);
        self.dispatch(now);
        Ok(asg)
    }

    /// The agent declines: the task is offered to the next agent, never
    /// again to this one (until they next declare themselves Available).
    pub fn reject(&mut self, reservation: ReservationId, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let r = reservation.0;
        if !self.reservations.contains_key(&r) {
            return Err(self.finished_error(reservation));
        }
        let (t, a) = self.release(r, Finished::Rejected);
        self.refuse(t, a);
        self.make_waiting(t, now);
        self.sync_agent(a);
        self.mark_agent(a);
        self.dispatch(now);
        Ok(())
    }

    /// Ends an assigned task: it leaves ([`TaskLeftReason::Completed`]) and
    /// the agent wraps up (agent's, queue's or engine's duration; zero =
    /// none).
    pub fn complete(&mut self, task: &str, now: Instant) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let t = self.task_index(task)?;
        let TState::Assigned(a) = self.tasks.get(t).state else {
            return Err(RoutingError::TaskNotAssigned(task.into()));
        };
        self.unassign(t, a);
        let q = self.tasks.get(t).queue;
        let wrap = self
            .agents
            .get(a)
            .wrap_up
            .or(self.queues.get(q).cfg.wrap_up)
            .unwrap_or(self.cfg.wrap_up);
        self.leave(t, TaskLeftReason::Completed);
        self.after_task(a, wrap, now);
        self.dispatch(now);
        Ok(())
    }

    /// Moves a task to another queue, keeping its original `enqueued_at`. A
    /// pending reservation is withdrawn; an assigned task's agent is
    /// released (with wrap-up, as for `complete`) and the task waits in the
    /// new queue (its service level was counted when first answered).
    pub fn transfer(
        &mut self,
        task: &str,
        to_queue: &str,
        now: Instant,
    ) -> Result<(), RoutingError> {
        let now = self.advance(now);
        let t = self.task_index(task)?;
        let to = *self
            .queue_ids
            .get(to_queue)
            .ok_or_else(|| RoutingError::UnknownQueue(to_queue.into()))?;
        match self.tasks.get(t).state {
            TState::Waiting(_) => self.take_from_waiting(t),
            TState::Reserved(r) => {
                let (_, a) = self.release(r, Finished::Cancelled);
                self.emit_cancelled(r, t, a, CancelReason::TaskTransferred);
            }
            TState::Assigned(a) => {
                self.unassign(t, a);
                let q = self.tasks.get(t).queue;
                let wrap = self
                    .agents
                    .get(a)
                    .wrap_up
                    .or(self.queues.get(q).cfg.wrap_up)
                    .unwrap_or(self.cfg.wrap_up);
                self.after_task(a, wrap, now);
            }
            TState::Limbo => unreachable!("task in limbo between inputs"),
        }
        let task = self.tasks.get_mut(t);
        task.queue = to;
        task.queued_at = now;
        task.next_rule = 0;
        task.dropped = SkillSet::default();
        self.make_waiting(t, now);
        self.dispatch(now);
        Ok(())
    }

    // ------------------------------------------------------------ queries

    pub fn task(&self, id: &str) -> Option<TaskView> {
        let t = *self.task_ids.get(id)?;
        let task = self.tasks.get(t);
        let now = self.now.unwrap_or(task.enqueued_at);
        let (position, state) = match task.state {
            TState::Waiting(_) => {
                let key = task.key(t);
                let ahead: usize = self
                    .buckets
                    .iter()
                    .filter(|(_, b)| b.queue == task.queue)
                    .map(|(_, b)| b.tasks.range(..key).count())
                    .sum();
                (Some(ahead + 1), TaskStatus::Waiting)
            }
            TState::Reserved(r) => {
                let a = self.reservations[&r].agent;
                (
                    None,
                    TaskStatus::Reserved {
                        agent: self.agents.get(a).id.clone(),
                    },
                )
            }
            TState::Assigned(a) => (
                None,
                TaskStatus::Assigned {
                    agent: self.agents.get(a).id.clone(),
                },
            ),
            TState::Limbo => unreachable!("task in limbo between inputs"),
        };
        Some(TaskView {
            id: task.id.clone(),
            queue: self.queues.get(task.queue).cfg.id.clone(),
            channel: task.channel,
            priority: task.priority,
            position,
            waiting_for: now.saturating_duration_since(task.enqueued_at),
            state,
        })
    }

    pub fn agent(&self, id: &str) -> Option<AgentView> {
        let a = *self.agent_ids.get(id)?;
        Some(self.agent_view(a, self.now.unwrap_or(self.agents.get(a).idle_since)))
    }

    pub fn agent_state(&self, id: &str) -> Option<AgentState> {
        let a = *self.agent_ids.get(id)?;
        Some(self.state_of(a))
    }

    pub fn reservation(&self, id: ReservationId) -> Option<ReservationView> {
        let r = self.reservations.get(&id.0)?;
        Some(self.reservation_view(id.0, r))
    }

    /// Pending reservations, oldest first.
    pub fn reservations(&self) -> Vec<ReservationView> {
        let mut v: Vec<_> = self
            .reservations
            .iter()
            .map(|(&id, r)| self.reservation_view(id, r))
            .collect();
        v.sort_by_key(|r| r.reservation);
        v
    }

    /// Waiting tasks in all queues.
    pub fn waiting(&self) -> usize {
        self.buckets.iter().map(|(_, b)| b.tasks.len()).sum()
    }

    /// Metrics and views at `now` (pure: does not process timers).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut oldest: HashMap<usize, Instant> = HashMap::new();
        for (_, b) in self.buckets.iter() {
            for k in &b.tasks {
                let e = oldest.entry(b.queue).or_insert(k.1);
                if k.1 < *e {
                    *e = k.1;
                }
            }
        }
        let since = now.checked_sub(WINDOW);
        let mut queues: Vec<QueueStats> = self
            .queues
            .iter()
            .map(|(q, slot)| {
                let (mut within, mut late, mut abandoned, mut overflowed) = (0, 0, 0, 0);
                for (at, o) in &slot.outcomes {
                    if since.is_some_and(|s| *at <= s) || *at > now {
                        continue;
                    }
                    match o {
                        Outcome::AnsweredWithin => within += 1,
                        Outcome::AnsweredLate => late += 1,
                        Outcome::Abandoned => abandoned += 1,
                        Outcome::Overflowed => overflowed += 1,
                    }
                }
                let total = within + late + abandoned + overflowed;
                QueueStats {
                    id: slot.cfg.id.clone(),
                    name: slot.cfg.name.clone(),
                    waiting: slot.waiting,
                    longest_wait: oldest
                        .get(&q)
                        .map(|e| now.saturating_duration_since(*e))
                        .unwrap_or_default(),
                    reserved: slot.reserved,
                    assigned: slot.assigned,
                    service_level_15m: (total > 0).then(|| within as f64 / total as f64),
                    answered_15m: within + late,
                    answered_within_target_15m: within,
                    abandoned_15m: abandoned,
                    overflowed_15m: overflowed,
                }
            })
            .collect();
        queues.sort_by(|a, b| a.id.cmp(&b.id));
        let mut counts = AgentCounts::default();
        let mut agents: Vec<AgentView> = self
            .agents
            .iter()
            .map(|(a, _)| {
                let v = self.agent_view(a, now);
                match v.state {
                    AgentStatus::Available => counts.available += 1,
                    AgentStatus::Busy => counts.busy += 1,
                    AgentStatus::WrapUp => counts.wrap_up += 1,
                    AgentStatus::Away => counts.away += 1,
                    AgentStatus::Offline => {}
                }
                v
            })
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            queues,
            agents_by_state: counts,
            agents,
        }
    }

    // ------------------------------------------------------------ internals

    fn agent_index(&self, id: &str) -> Result<usize, RoutingError> {
        self.agent_ids
            .get(id)
            .copied()
            .ok_or_else(|| RoutingError::UnknownAgent(id.into()))
    }

    fn task_index(&self, id: &str) -> Result<usize, RoutingError> {
        self.task_ids
            .get(id)
            .copied()
            .ok_or_else(|| RoutingError::UnknownTask(id.into()))
    }

    fn finished_error(&self, id: ReservationId) -> RoutingError {
        match self.finished.get(&id.0) {
            Some(Finished::Accepted) => RoutingError::ReservationAlreadyAccepted(id),
            Some(Finished::Rejected) => RoutingError::ReservationRejected(id),
            Some(Finished::TimedOut) => RoutingError::ReservationExpired(id),
            Some(Finished::Cancelled) => RoutingError::ReservationCancelled(id),
            None => RoutingError::UnknownReservation(id),
        }
    }

    fn reservation_view(&self, id: u64, r: &Resv) -> ReservationView {
        ReservationView {
            reservation: ReservationId(id),
            task: self.tasks.get(r.task).id.clone(),
            agent: self.agents.get(r.agent).id.clone(),
            expires_at: r.expires_at,
        }
    }

    fn agent_view(&self, a: usize, now: Instant) -> AgentView {
        let agent = self.agents.get(a);
        let state = self.state_of(a);
        AgentView {
            id: agent.id.clone(),
            state: state.status(),
            tasks: agent
                .assigned
                .iter()
                .map(|&t| self.tasks.get(t).id.clone())
                .collect(),
            reserved: agent
                .pending
                .map(|r| self.tasks.get(self.reservations[&r].task).id.clone()),
            idle_for: (agent.holds() == 0 && agent.pres == Pres::Available)
                .then(|| now.saturating_duration_since(agent.idle_since)),
            wrap_up_remaining: match agent.pres {
                Pres::WrapUp(until) => Some(until.saturating_duration_since(now)),
                _ => None,
            },
            missed: agent.missed,
        }
    }

    fn state_of(&self, a: usize) -> AgentState {
        let agent = self.agents.get(a);
        match agent.pres {
            Pres::Away => AgentState::Away,
            Pres::WrapUp(until) => AgentState::WrapUp { until },
            Pres::Available => {
                if agent.exclusive > 0 || agent.free_mask() == 0 {
                    AgentState::Busy
                } else {
                    AgentState::Available
                }
            }
        }
    }

    fn ready_class(&self, a: usize) -> Option<(SkillSet, u8)> {
        let agent = self.agents.get(a);
        if agent.pres != Pres::Available || agent.pending.is_some() || agent.exclusive > 0 {
            return None;
        }
        let mask = agent.free_mask();
        (mask != 0).then_some((agent.skills, mask))
    }

    /// Re-files the agent in the ready index and reports a state change.
    fn sync_agent(&mut self, a: usize) {
        let want = self.ready_class(a);
        let agent = self.agents.get(a);
        let key = (agent.idle_since, agent.seq, a);
        let same = match (agent.ready, want) {
            (Some((c, k)), Some((s, m))) => {
                let class = self.classes.get(c);
                class.skills == s && class.mask == m && k == key
            }
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.unindex_agent(a);
            if let Some((s, m)) = want {
                let c = match self.class_ids.get(&(s, m)) {
                    Some(&c) => c,
                    None => {
                        let c = self.classes.insert(Class {
                            skills: s,
                            mask: m,
                            agents: BTreeSet::new(),
                        });
                        self.class_ids.insert((s, m), c);
                        c
                    }
                };
                self.classes.get_mut(c).agents.insert(key);
                self.agents.get_mut(a).ready = Some((c, key));
                self.mark_agent(a);
            }
        }
        let state = self.state_of(a);
        let agent = self.agents.get_mut(a);
        if state != agent.last_state {
            let from = std::mem::replace(&mut agent.last_state, state);
            self.outputs.push_back(Output::AgentStateChanged {
                agent: agent.id.clone(),
                from,
                to: state,
            });
        }
    }

    fn unindex_agent(&mut self, a: usize) {
        if let Some((c, k)) = self.agents.get_mut(a).ready.take() {
            let class = self.classes.get_mut(c);
            class.agents.remove(&k);
            if class.agents.is_empty() {
                let class = self.classes.remove(c);
                self.class_ids.remove(&(class.skills, class.mask));
            }
        }
    }

    fn mark_agent(&mut self, a: usize) {
        let agent = self.agents.get_mut(a);
        if !agent.dirty {
            agent.dirty = true;
            self.dirty_agents.push(a);
        }
    }

    fn load(&mut self, a: usize, ch: Channel) {
        let excl = self.exclusive[ch.index()];
        let agent = self.agents.get_mut(a);
        agent.load[ch.index()] += 1;
        if excl {
            agent.exclusive += 1;
        }
    }

    fn unload(&mut self, a: usize, ch: Channel) {
        let excl = self.exclusive[ch.index()];
        let agent = self.agents.get_mut(a);
        agent.load[ch.index()] -= 1;
        if excl {
            agent.exclusive -= 1;
        }
    }

    /// Files a task (Limbo, counted nowhere) as waiting: applies overflow
    /// rules already due, then indexes it and arms the next rule.
    fn make_waiting(&mut self, t: usize, now: Instant) {
        loop {
            let task = self.tasks.get(t);
            let rules = &self.queues.get(task.queue).cfg.overflow;
            let Some(rule) = rules.get(task.next_rule) else {
                break;
            };
            if task.queued_at + rule.after > now {
                break;
            }
            if !self.apply_overflow(t, now) {
                return;
            }
        }
        let task = self.tasks.get(t);
        let q = task.queue;
        let queue = self.queues.get(q);
        let req = queue.skills.union(&task.skills).minus(&task.dropped);
        let due = queue
            .cfg
            .overflow
            .get(task.next_rule)
            .map(|r| task.queued_at + r.after);
        let (channel, key) = (task.channel, task.key(t));
        let b = match self.bucket_ids.get(&(q, channel, req)) {
            Some(&b) => b,
            None => {
                let b = self.buckets.insert(Bucket {
                    queue: q,
                    channel,
                    req,
                    tasks: BTreeSet::new(),
                });
                self.bucket_ids.insert((q, channel, req), b);
                b
            }
        };
        self.buckets.get_mut(b).tasks.insert(key);
        self.queues.get_mut(q).waiting += 1;
        let task = self.tasks.get_mut(t);
        task.req = req;
        task.state = TState::Waiting(b);
        task.overflow_due = due;
        if let Some(due) = due {
            self.timers.insert((due, Timer::Overflow(t)));
        }
        if !task.dirty {
            task.dirty = true;
            self.dirty_tasks.push(t);
        }
    }

    /// Waiting → Limbo.
    fn take_from_waiting(&mut self, t: usize) {
        let task = self.tasks.get_mut(t);
        let TState::Waiting(b) = task.state else {
            unreachable!("take_from_waiting: task not waiting")
        };
        task.state = TState::Limbo;
        let key = task.key(t);
        if let Some(due) = task.overflow_due.take() {
            self.timers.remove(&(due, Timer::Overflow(t)));
        }
        let q = task.queue;
        self.queues.get_mut(q).waiting -= 1;
        let bucket = self.buckets.get_mut(b);
        bucket.tasks.remove(&key);
        if bucket.tasks.is_empty() {
            let bucket = self.buckets.remove(b);
            self.bucket_ids
                .remove(&(bucket.queue, bucket.channel, bucket.req));
        }
    }

    /// Applies the task's next overflow rule (task in Limbo). False if the
    /// task left the engine.
    fn apply_overflow(&mut self, t: usize, now: Instant) -> bool {
        let task = self.tasks.get_mut(t);
        let rule = task.next_rule;
        task.next_rule += 1;
        let q = task.queue;
        let queue = self.queues.get(q);
        let action = queue.cfg.overflow[rule].action.clone();
        if let Overflow::Queue { to } = &action {
            match self.queue_ids.get(to) {
                Some(&to) if to != q => {}
                // The target is gone: the rule does nothing.
                _ => return true,
            }
        }
        let task = self.tasks.get(t);
        self.outputs.push_back(Output::Overflowed {
            task: task.id.clone(),
            queue: queue.cfg.id.clone(),
            rule,
            action: action.clone(),
            conversation_id: task.conversation_id.clone(),
        });
        match action {
            Overflow::WidenSkills { .. } => {
                let drop = queue.drops[rule];
                let task = self.tasks.get_mut(t);
                task.dropped = task.dropped.union(&drop);
                true
            }
            Overflow::Queue { to } => {
                let to = self.queue_ids[&to];
                let task = self.tasks.get_mut(t);
                task.queue = to;
                task.queued_at = now;
                task.next_rule = 0;
                task.dropped = SkillSet::default();
                true
            }
            Overflow::Voicemail | Overflow::Callback => {
                if !task.answered {
                    self.record(q, now, Outcome::Overflowed);
                }
                let reason = if action == Overflow::Voicemail {
                    TaskLeftReason::Voicemail
                } else {
                    TaskLeftReason::Callback
                };
                self.leave(t, reason);
                false
            }
        }
    }

    /// A Limbo task leaves the engine.
    fn leave(&mut self, t: usize, reason: TaskLeftReason) {
        let task = self.tasks.remove(t);
        debug_assert_eq!(task.state, TState::Limbo);
        self.task_ids.remove(&task.id);
        for a in task.refused_by {
            self.agents.get_mut(a).refused.retain(|&x| x != t);
        }
        self.outputs.push_back(Output::TaskLeft {
            task: task.id,
            queue: self.queues.get(task.queue).cfg.id.clone(),
            reason,
            conversation_id: task.conversation_id,
        });
    }

    fn refuse(&mut self, t: usize, a: usize) {
        let task = self.tasks.get_mut(t);
        if !task.refused_by.contains(&a) {
            task.refused_by.push(a);
            self.agents.get_mut(a).refused.push(t);
        }
    }

    fn clear_refusals(&mut self, a: usize) {
        let refused = std::mem::take(&mut self.agents.get_mut(a).refused);
        for t in refused {
            self.tasks.get_mut(t).refused_by.retain(|&x| x != a);
        }
    }

    /// Ends a pending reservation: the agent is unloaded and free of it; the
    /// task is in Limbo.
    fn release(&mut self, r: u64, how: Finished) -> (usize, usize) {
        let resv = self.reservations.remove(&r).expect("pending reservation");
        self.timers
            .remove(&(resv.expires_at, Timer::Reservation(r)));
        if self.finished_order.len() >= FINISHED_MEMORY
            && let Some(old) = self.finished_order.pop_front()
        {
            self.finished.remove(&old);
        }
        self.finished.insert(r, how);
        self.finished_order.push_back(r);
        let (t, a) = (resv.task, resv.agent);
        let ch = self.tasks.get(t).channel;
        self.unload(a, ch);
        self.agents.get_mut(a).pending = None;
        let task = self.tasks.get_mut(t);
        task.state = TState::Limbo;
        let q = task.queue;
        self.queues.get_mut(q).reserved -= 1;
        (t, a)
    }

    fn emit_cancelled(&mut self, r: u64, t: usize, a: usize, reason: CancelReason) {
        self.outputs.push_back(Output::ReservationCancelled {
            reservation: ReservationId(r),
            task: self.tasks.get(t).id.clone(),
            agent: self.agents.get(a).id.clone(),
            reason,
        });
        self.sync_agent(a);
    }

    /// Assigned → Limbo, agent unloaded (not yet synced).
    fn unassign(&mut self, t: usize, a: usize) {
        let ch = self.tasks.get(t).channel;
        self.unload(a, ch);
        self.agents.get_mut(a).assigned.retain(|&x| x != t);
        let task = self.tasks.get_mut(t);
        task.state = TState::Limbo;
        let q = task.queue;
        self.queues.get_mut(q).assigned -= 1;
    }

    /// The agent finished a task: wrap-up, or free at once.
    fn after_task(&mut self, a: usize, wrap: Duration, now: Instant) {
        let agent = self.agents.get_mut(a);
        match agent.pres {
            Pres::Away => {}
            Pres::Available | Pres::WrapUp(_) if wrap.is_zero() => {
                if agent.holds() == 0 && agent.pres == Pres::Available {
                    agent.idle_since = now;
                }
            }
            Pres::Available | Pres::WrapUp(_) => {
                let until = now + wrap;
                match agent.pres {
                    Pres::WrapUp(old) if old >= until => {}
                    Pres::WrapUp(old) => {
                        self.timers.remove(&(old, Timer::WrapUp(a)));
                        agent.pres = Pres::WrapUp(until);
                        self.timers.insert((until, Timer::WrapUp(a)));
                    }
                    _ => {
                        agent.pres = Pres::WrapUp(until);
                        self.timers.insert((until, Timer::WrapUp(a)));
                    }
                }
            }
        }
        self.sync_agent(a);
        self.mark_agent(a);
    }

    fn end_wrap_up(&mut self, a: usize, at: Instant) {
        let agent = self.agents.get_mut(a);
        agent.pres = Pres::Available;
        agent.idle_since = at;
        self.sync_agent(a);
    }

    fn expire_reservation(&mut self, r: u64, at: Instant) {
        let (t, a) = self.release(r, Finished::TimedOut);
        self.outputs.push_back(Output::ReservationTimedOut {
            reservation: ReservationId(r),
            task: self.tasks.get(t).id.clone(),
            agent: self.agents.get(a).id.clone(),
        });
        self.refuse(t, a);
        let limit = self.cfg.missed_before_away;
        let agent = self.agents.get_mut(a);
        agent.missed += 1;
        agent.streak += 1;
        if limit > 0 && agent.streak >= limit {
            if let Pres::WrapUp(until) = agent.pres {
                self.timers.remove(&(until, Timer::WrapUp(a)));
            }
            agent.pres = Pres::Away;
        }
        self.make_waiting(t, at);
        self.sync_agent(a);
        self.mark_agent(a);
    }

    fn reserve(&mut self, t: usize, a: usize, now: Instant) {
        self.take_from_waiting(t);
        let task = self.tasks.get(t);
        let q = task.queue;
        let expires_at = now + self.queues.get(q).cfg.reservation_timeout;
        let r = self.next_reservation;
        self.next_reservation += 1;
        self.reservations.insert(
            r,
            Resv {
                task: t,
                agent: a,
                expires_at,
            },
        );
        self.timers.insert((expires_at, Timer::Reservation(r)));
        let ch = task.channel;
        self.load(a, ch);
        let agent = self.agents.get_mut(a);
        agent.pending = Some(r);
        agent.idle_since = now;
        self.tasks.get_mut(t).state = TState::Reserved(r);
        self.queues.get_mut(q).reserved += 1;
        let task = self.tasks.get(t);
        self.outputs.push_back(Output::Reserved {
            reservation: ReservationId(r),
            task: task.id.clone(),
            agent: self.agents.get(a).id.clone(),
            queue: self.queues.get(q).cfg.id.clone(),
            channel: ch,
            conversation_id: task.conversation_id.clone(),
            expires_at,
        });
        self.sync_agent(a);
    }

    fn record(&mut self, q: usize, now: Instant, o: Outcome) {
        let slot = self.queues.get_mut(q);
        while let Some(&(at, _)) = slot.outcomes.front() {
            if slot.outcomes.len() >= OUTCOMES_MAX || at + WINDOW <= now {
                slot.outcomes.pop_front();
            } else {
                break;
            }
        }
        slot.outcomes.push_back((now, o));
    }

    /// The best waiting task for a ready agent: highest priority, then
    /// oldest, among the buckets whose requirement and channel it meets.
    fn best_task_for(&self, a: usize) -> Option<usize> {
        let agent = self.agents.get(a);
        let mask = agent.free_mask();
        let mut best: Option<TaskKey> = None;
        for (_, b) in self.buckets.iter() {
            if mask & b.channel.bit() == 0 || !b.req.is_subset(&agent.skills) {
                continue;
            }
            for key in &b.tasks {
                if best.is_some_and(|best| *key >= best) {
                    break;
                }
                if agent.refused.contains(&key.3) {
                    continue;
                }
                best = Some(*key);
                break;
            }
        }
        best.map(|k| k.3)
    }

    /// The longest-idle ready agent qualified for a waiting task.
    fn best_agent_for(&self, t: usize) -> Option<usize> {
        let task = self.tasks.get(t);
        let bit = task.channel.bit();
        let mut best: Option<AgentKey> = None;
        for (_, c) in self.classes.iter() {
            if c.mask & bit == 0 || !task.req.is_subset(&c.skills) {
                continue;
            }
            for key in &c.agents {
                if best.is_some_and(|best| *key >= best) {
                    break;
                }
                if task.refused_by.contains(&key.2) {
                    continue;
                }
                best = Some(*key);
                break;
            }
        }
        best.map(|k| k.2)
    }

    /// Makes every possible match. Agents that became ready pick the best
    /// task they qualify for (longest-idle first), and that task goes to the
    /// longest-idle agent qualified for it; then tasks that became waiting,
    /// best first, go to the longest-idle qualified agent.
    fn dispatch(&mut self, now: Instant) {
        loop {
            if !self.dirty_agents.is_empty() {
                let mut list = std::mem::take(&mut self.dirty_agents);
                list.retain(|&a| match self.agents.items.get_mut(a) {
                    Some(Some(agent)) => {
                        agent.dirty = false;
                        agent.ready.is_some()
                    }
                    _ => false,
                });
                list.sort_by_key(|&a| self.agents.get(a).ready.map(|(_, k)| k));
                for a in list {
                    while self.agents.try_get(a).is_some_and(|x| x.ready.is_some()) {
                        let Some(t) = self.best_task_for(a) else {
                            break;
                        };
                        let x = self.best_agent_for(t);
                        debug_assert!(x.is_some(), "a ready agent qualifies");
                        let x = x.unwrap_or(a);
                        self.reserve(t, x, now);
                        if x == a {
                            break;
                        }
                    }
                }
                continue;
            }
            if !self.dirty_tasks.is_empty() {
                let mut list = std::mem::take(&mut self.dirty_tasks);
                list.retain(|&t| match self.tasks.items.get_mut(t) {
                    Some(Some(task)) => {
                        task.dirty = false;
                        matches!(task.state, TState::Waiting(_))
                    }
                    _ => false,
                });
                list.sort_by_key(|&t| self.tasks.get(t).key(t));
                for t in list {
                    if !matches!(self.tasks.get(t).state, TState::Waiting(_)) {
                        continue;
                    }
                    if let Some(a) = self.best_agent_for(t) {
                        self.reserve(t, a, now);
                    }
                }
                continue;
            }
            break;
        }
    }

    // ------------------------------------------------------------ checking

    /// Checks the engine's invariants; `Err` names the first broken one.
    /// O(tasks × agents): for tests and debug builds of hosts.
    ///
    /// 1. Every task is in exactly one state and every index agrees: a
    ///    waiting task is in its bucket only; a reserved one is in one
    ///    pending reservation whose agent holds it; an assigned one is in
    ///    its agent's list only.
    /// 2. No agent holds more than its capacity per channel; at most one
    ///    pending reservation each.
    /// 3. Work-conserving: no waiting task has a qualified agent that is
    ///    Available, has capacity on the channel, holds no exclusive task,
    ///    has no pending reservation and has not refused it.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_buckets = HashMap::new();
        for (b, bucket) in self.buckets.iter() {
            if bucket.tasks.is_empty() {
                return Err(format!("bucket {b} empty but kept"));
            }
            for k in &bucket.tasks {
                if in_buckets.insert(k.3, b).is_some() {
                    return Err(format!("task slot {} in two buckets", k.3));
                }
            }
        }
        let mut load: HashMap<usize, [u16; CHANNELS]> = HashMap::new();
        let mut queue_counts: HashMap<usize, [usize; 3]> = HashMap::new();
        for (t, task) in self.tasks.iter() {
            if self.task_ids.get(&task.id) != Some(&t) {
                return Err(format!("task {} not indexed", task.id));
            }
            let counts = queue_counts.entry(task.queue).or_default();
            match task.state {
                TState::Waiting(b) => {
                    counts[0] += 1;
                    if in_buckets.get(&t) != Some(&b) {
                        return Err(format!("waiting task {} not in its bucket", task.id));
                    }
                    let bucket = self.buckets.get(b);
                    if bucket.queue != task.queue
                        || bucket.channel != task.channel
                        || bucket.req != task.req
                        || !bucket.tasks.contains(&task.key(t))
                    {
                        return Err(format!("task {} in a wrong bucket", task.id));
                    }
                    let queue = self.queues.get(task.queue);
                    let want = queue.skills.union(&task.skills).minus(&task.dropped);
                    if want != task.req {
                        return Err(format!("task {} requirement stale", task.id));
                    }
                    let due = queue
                        .cfg
                        .overflow
                        .get(task.next_rule)
                        .map(|r| task.queued_at + r.after);
                    if due != task.overflow_due
                        || due.is_some_and(|d| !self.timers.contains(&(d, Timer::Overflow(t))))
                    {
                        return Err(format!("task {} overflow timer wrong", task.id));
                    }
                }
                TState::Reserved(r) => {
                    counts[1] += 1;
                    if in_buckets.contains_key(&t) {
                        return Err(format!("task {} both waiting and reserved", task.id));
                    }
                    let Some(resv) = self.reservations.get(&r) else {
                        return Err(format!("task {} reserved by a gone reservation", task.id));
                    };
                    if resv.task != t {
                        return Err(format!("reservation r{r} names another task"));
                    }
                    if self.agents.get(resv.agent).pending != Some(r) {
                        return Err(format!("r{r}'s agent does not hold it"));
                    }
                    load.entry(resv.agent).or_default()[task.channel.index()] += 1;
                }
                TState::Assigned(a) => {
                    counts[2] += 1;
                    if in_buckets.contains_key(&t) {
                        return Err(format!("task {} both waiting and assigned", task.id));
                    }
                    let Some(agent) = self.agents.try_get(a) else {
                        return Err(format!("task {} assigned to a gone agent", task.id));
                    };
                    if agent.assigned.iter().filter(|&&x| x == t).count() != 1 {
                        return Err(format!("task {} not once in its agent's list", task.id));
                    }
                    load.entry(a).or_default()[task.channel.index()] += 1;
                }
                TState::Limbo => return Err(format!("task {} in limbo", task.id)),
            }
            for &a in &task.refused_by {
                if !self.agents.get(a).refused.contains(&t) {
                    return Err(format!("refusal of {} one-sided", task.id));
                }
            }
        }
        if in_buckets.len()
            != self
                .tasks
                .iter()
                .filter(|(_, t)| matches!(t.state, TState::Waiting(_)))
                .count()
        {
            return Err("a bucket holds a task that is not waiting".into());
        }
        for (q, slot) in self.queues.iter() {
            let c = queue_counts.get(&q).copied().unwrap_or_default();
            if [slot.waiting, slot.reserved, slot.assigned] != c {
                return Err(format!(
                    "queue {} counters {:?} != {:?}",
                    slot.cfg.id,
                    [slot.waiting, slot.reserved, slot.assigned],
                    c
                ));
            }
        }
        let mut held_by: HashMap<usize, usize> = HashMap::new();
        for (&r, resv) in &self.reservations {
            if self.tasks.get(resv.task).state != TState::Reserved(r) {
                return Err(format!("reservation r{r}'s task is not reserved by it"));
            }
            if held_by.insert(resv.agent, resv.task).is_some() {
                return Err(format!(
                    "agent {} holds two reservations",
                    self.agents.get(resv.agent).id
                ));
            }
            if !self
                .timers
                .contains(&(resv.expires_at, Timer::Reservation(r)))
            {
                return Err(format!("reservation r{r} has no timer"));
            }
        }
        for (a, agent) in self.agents.iter() {
            if self.agent_ids.get(&agent.id) != Some(&a) {
                return Err(format!("agent {} not indexed", agent.id));
            }
            let want = load.get(&a).copied().unwrap_or_default();
            if want != agent.load {
                return Err(format!(
                    "agent {} load {:?} != {:?}",
                    agent.id, agent.load, want
                ));
            }
            for c in 0..CHANNELS {
                if agent.load[c] > agent.capacity[c] {
                    return Err(format!(
                        "agent {} over capacity on {:?}",
                        agent.id,
                        Channel::ALL[c]
                    ));
                }
            }
            let excl: u16 = (0..CHANNELS)
                .filter(|&c| self.exclusive[c])
                .map(|c| agent.load[c])
                .sum();
            if excl != agent.exclusive {
                return Err(format!("agent {} exclusive count wrong", agent.id));
            }
            // Offers go only to agents holding no exclusive task, so a call
            // is never joined by anything offered after it.
            if agent.exclusive > 1 {
                return Err(format!("agent {} holds two exclusive tasks", agent.id));
            }
            for &t in &agent.refused {
                if !self.tasks.get(t).refused_by.contains(&a) {
                    return Err(format!("agent {}'s refusal one-sided", agent.id));
                }
            }
            if agent.last_state != self.state_of(a) {
                return Err(format!("agent {} state not reported", agent.id));
            }
            match (agent.ready, self.ready_class(a)) {
                (None, None) => {}
                (Some((c, k)), Some((s, m))) => {
                    let class = self.classes.get(c);
                    if class.skills != s
                        || class.mask != m
                        || !class.agents.contains(&k)
                        || k != (agent.idle_since, agent.seq, a)
                    {
                        return Err(format!("agent {} in a wrong ready class", agent.id));
                    }
                }
                _ => return Err(format!("agent {} ready index wrong", agent.id)),
            }
            if let Pres::WrapUp(until) = agent.pres
                && !self.timers.contains(&(until, Timer::WrapUp(a)))
            {
                return Err(format!("agent {} wrap-up without a timer", agent.id));
            }
        }
        let indexed: usize = self.classes.iter().map(|(_, c)| c.agents.len()).sum();
        if indexed
            != self
                .agents
                .iter()
                .filter(|(_, a)| a.ready.is_some())
                .count()
        {
            return Err("ready index holds a stale agent".into());
        }
        // 3. work-conserving, by brute force.
        for (_, task) in self.tasks.iter() {
            if !matches!(task.state, TState::Waiting(_)) {
                continue;
            }
            for (a, agent) in self.agents.iter() {
                let ch = task.channel.index();
                if agent.pres == Pres::Available
                    && agent.pending.is_none()
                    && agent.exclusive == 0
                    && agent.load[ch] < agent.capacity[ch]
                    && task.req.is_subset(&agent.skills)
                    && !task.refused_by.contains(&a)
                {
                    return Err(format!(
                        "task {} waits while agent {} could take it",
                        task.id, agent.id
                    ));
                }
            }
        }
        Ok(())
    }
}
