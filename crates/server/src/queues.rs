//! Queues and agents on this node: the glue between the routing engine
//! (`continuum-routing`, sans-IO, one per tenant) and everything around it.
//!
//! - Work comes in as tasks ([`Queues::enqueue`]): a call out of the IVR, a
//!   chat or an SMS thread routed to a queue, a video-visit request. Each is
//!   a `routing_tasks` row first, then a task in the engine.
//! - The engine's outputs are applied in order by one task: the row's state,
//!   the conversation's timeline (`routing` events), the assignment of the
//!   conversation, and notices to the agents' live feeds.
//! - A waiting phone call hears hold audio from the IVR host, which
//!   registered a channel for it ([`Queues::hold_call`]): an accepted
//!   reservation tells it to join the agent's room, an overflow to take a
//!   voicemail or promise a call back.
//!
//! Presence (who is available) lives in memory on this node; a restarted
//! node re-offers the work that was waiting (calls excepted: they ended with
//! the process).

use continuum_core::{Actor, ActorType, Channel as EventChannel, EventKind, NewEvent, Transition};
use continuum_routing::{
    AgentConfig, AgentState, Capacity, Channel, Engine, EngineConfig, Output, Overflow,
    OverflowRule, Presence, QueueConfig, ReservationId, RoutingError, Snapshot, Task,
    TaskLeftReason,
};
use continuum_store::{
    Agent, NewRoutingTask, OverflowAction, Queue, RoutingTask, Store, TaskState, TransitionParams,
};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc};

/// What a waiting phone call is told to do.
#[derive(Debug, Clone)]
pub enum CallOrder {
    /// An agent took it: join this room (the agent joins it from the console).
    Join { room_id: String },
    /// Nobody in time: take a voicemail.
    Voicemail,
    /// Nobody in time: promise a call back and hang up.
    Callback,
    /// The agent sent the answered call back to a queue: leave the room and
    /// wait again.
    Requeue,
}

/// Something an agent's console (or a supervisor's) should hear about.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    #[serde(skip)]
    pub tenant_id: String,
    /// `None`: for supervisors.
    #[serde(skip)]
    pub agent: Option<String>,
    /// The SSE event name (`reservation`, `reservation_timed_out`, …).
    #[serde(skip)]
    pub event: &'static str,
    pub data: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Store(#[from] continuum_store::StoreError),
    #[error("{0}")]
    Routing(#[from] RoutingError),
    #[error(
        "you have no agent profile in this tenant: an admin adds one with PUT /v1/agents/{{your id}}"
    )]
    NotAnAgent,
    #[error("no queue named `{0}`: create it with PUT /v1/queues/{{name}}")]
    UnknownQueue(String),
    #[error("no such reservation for you")]
    NoReservation,
    #[error("no such task for you")]
    NoTask,
}

/// One point of the supervisor's chart.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// Unix milliseconds.
    pub at: i64,
    pub waiting: usize,
    /// Over every queue, the last 15 minutes (`null`: nothing ended).
    pub service_level: Option<f64>,
}

/// Chart points kept per tenant: an hour at one per 30 s.
const HISTORY_POINTS: usize = 120;
const HISTORY_EVERY: Duration = Duration::from_secs(30);

struct Tenant {
    engine: Engine,
    /// Pending reservations' wall-clock expiry, for the console's countdown.
    history: VecDeque<HistoryPoint>,
}

pub struct Queues {
    store: Store,
    tenants: Mutex<HashMap<String, Tenant>>,
    wake: Notify,
    outputs: mpsc::UnboundedSender<(String, Output)>,
    notices: broadcast::Sender<Arc<Notice>>,
    /// Waiting phone calls, by task id.
    calls: Mutex<HashMap<String, mpsc::UnboundedSender<CallOrder>>>,
    /// Answered phone calls (with an agent), by task id: a transfer sends
    /// them back to wait.
    answered: Mutex<HashMap<String, mpsc::UnboundedSender<CallOrder>>>,
    /// The offer each agent has pending, as its `reservation` notice said
    /// (a console that reloads shows it again), by (tenant, agent).
    offers: Mutex<HashMap<(String, String), serde_json::Value>>,
    /// The monotonic clock's origin against the wall clock (reservations'
    /// expiry for clients).
    epoch: (Instant, i64),
}

fn now_micros() -> i64 {
    wall_ms() * 1_000
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The engine's channel for a task's.
pub fn channel_of(name: &str) -> Option<Channel> {
    Some(match name {
        "voice" => Channel::Voice,
        "video" => Channel::Video,
        "chat" => Channel::Chat,
        "sms" => Channel::Sms,
        "whatsapp" => Channel::WhatsApp,
        _ => return None,
    })
}

fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Voice => "voice",
        Channel::Video => "video",
        Channel::Chat => "chat",
        Channel::Sms => "sms",
        Channel::WhatsApp => "whatsapp",
    }
}

/// A stored queue as the engine's configuration.
pub fn queue_config(q: &Queue) -> QueueConfig {
    let mut c = QueueConfig::new(q.name.as_str());
    c.name = q.name.clone();
    c.skills = q.skills.clone();
    c.reservation_timeout = Duration::from_secs(q.reservation_timeout_secs.into());
    c.service_level_target = Duration::from_secs(q.service_level_secs.into());
    c.wrap_up = Some(Duration::from_secs(q.wrap_up_secs.into()));
    c.overflow = q
        .overflow
        .iter()
        .map(|r| OverflowRule {
            after: Duration::from_secs(r.after_secs.into()),
            action: match &r.action {
                OverflowAction::WidenSkills { drop } => {
                    Overflow::WidenSkills { drop: drop.clone() }
                }
                OverflowAction::Queue { to } => Overflow::Queue {
                    to: to.as_str().into(),
                },
                OverflowAction::Voicemail => Overflow::Voicemail,
                OverflowAction::Callback => Overflow::Callback,
            },
        })
        .collect();
    c
}

fn agent_config(a: &Agent) -> AgentConfig {
    let mut c = AgentConfig::new(a.id.as_str());
    c.skills = a.skills.clone();
    let mut cap = Capacity::default();
    for (channel, n) in &a.capacity {
        let n = (*n).min(u16::MAX as u32) as u16;
        match channel.as_str() {
            "voice" => cap.voice = n,
            "video" => cap.video = n,
            "chat" => cap.chat = n,
            "sms" => cap.sms = n,
            "whatsapp" => cap.whatsapp = n,
            _ => {}
        }
    }
    c.capacity = cap;
    c
}

/// The agent's state as the console shows it.
pub fn state_name(s: &AgentState) -> &'static str {
    match s {
        AgentState::Offline => "offline",
        AgentState::Available => "available",
        AgentState::Busy => "busy",
        AgentState::WrapUp { .. } => "wrap_up",
        AgentState::Away => "away",
    }
}

impl Queues {
    pub fn new(store: Store) -> Arc<Queues> {
        let (outputs, rx) = mpsc::unbounded_channel();
        let q = Arc::new(Queues {
            store,
            tenants: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            outputs,
            notices: broadcast::channel(1024).0,
            calls: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            offers: Mutex::new(HashMap::new()),
            epoch: (Instant::now(), wall_ms()),
        });
        tokio::spawn(q.clone().apply_outputs(rx));
        tokio::spawn(q.clone().run_timers());
        q
    }

    /// Loads every tenant's queues and re-offers the work that was waiting
    /// (a restart). Calls that were waiting ended with the old process.
    pub async fn restore(&self) -> Result<(), continuum_store::StoreError> {
        for (tenant, queue) in self.store.all_queues().await? {
            self.queue_changed(&tenant, &queue);
        }
        let now = Instant::now();
        for (tenant, task) in self.store.open_routing_tasks().await? {
            if task.channel == "voice" || task.state == TaskState::Assigned {
                if task.channel == "voice" {
                    let _ = self
                        .store
                        .set_task_state(&tenant, &task.id, TaskState::Abandoned, None, None)
                        .await;
                }
                continue;
            }
            if task.state == TaskState::Reserved {
                let _ = self
                    .store
                    .set_task_state(&tenant, &task.id, TaskState::Waiting, None, None)
                    .await;
            }
            let waited = Duration::from_micros((now_micros() - task.created_at.0).max(0) as u64);
            let enqueued_at = now.checked_sub(waited).unwrap_or(now);
            let _ = self.with_engine(&tenant, |e| e.enqueue(engine_task(&task, enqueued_at), now));
        }
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.notices.subscribe()
    }

    /// An instant as unix milliseconds.
    pub fn wall(&self, at: Instant) -> i64 {
        let (base, wall) = self.epoch;
        match at.checked_duration_since(base) {
            Some(d) => wall + d.as_millis() as i64,
            None => wall - base.duration_since(at).as_millis() as i64,
        }
    }

    /// Runs `f` on the tenant's engine, then hands its outputs on.
    fn with_engine<T>(&self, tenant: &str, f: impl FnOnce(&mut Engine) -> T) -> T {
        let mut tenants = self.tenants.lock();
        let t = tenants.entry(tenant.to_owned()).or_insert_with(|| Tenant {
            engine: Engine::new(EngineConfig::default()),
            history: VecDeque::new(),
        });
        let out = f(&mut t.engine);
        while let Some(o) = t.engine.poll_output() {
            let _ = self.outputs.send((tenant.to_owned(), o));
        }
        drop(tenants);
        self.wake.notify_one();
        out
    }

    pub fn queue_changed(&self, tenant: &str, queue: &Queue) {
        let cfg = queue_config(queue);
        if let Err(e) = self.with_engine(tenant, |e| e.upsert_queue(cfg, Instant::now())) {
            tracing::warn!(queue = %queue.name, error = %e, "the routing engine refused a queue");
        }
    }

    pub fn queue_removed(&self, tenant: &str, name: &str) {
        let _ = self.with_engine(tenant, |e| e.remove_queue(name));
    }

    pub fn agent_changed(&self, tenant: &str, agent: &Agent) {
        let cfg = agent_config(agent);
        let _ = self.with_engine(tenant, |e| {
            if e.agent_state(&agent.id).is_some() {
                e.update_agent(cfg, Instant::now())
            } else {
                Ok(())
            }
        });
    }

    pub fn agent_removed(&self, tenant: &str, id: &str) {
        let _ = self.with_engine(tenant, |e| e.agent_logout(id, Instant::now()));
    }

    /// Puts a piece of work in a queue: its row, then the engine.
    pub async fn enqueue(
        &self,
        tenant: &str,
        new: NewRoutingTask,
    ) -> Result<RoutingTask, QueueError> {
        if channel_of(&new.channel).is_none() {
            return Err(QueueError::Store(continuum_store::StoreError::Invalid(
                "channel: one of voice, video, chat, sms, whatsapp".into(),
            )));
        }
        if self.store.get_queue(tenant, &new.queue).await?.is_none() {
            return Err(QueueError::UnknownQueue(new.queue));
        }
        let task = self.store.create_routing_task(tenant, new).await?;
        metrics::counter!("continuum_routing_tasks_total", "channel" => channel_name(channel_of(&task.channel).unwrap_or(Channel::Chat))).increment(1);
        let now = Instant::now();
        if let Err(e) = self.with_engine(tenant, |e| e.enqueue(engine_task(&task, now), now)) {
            let _ = self
                .store
                .set_task_state(tenant, &task.id, TaskState::Abandoned, None, None)
                .await;
            return Err(e.into());
        }
        self.timeline(
            tenant,
            &task.conversation_id,
            serde_json::json!({"action": "queued", "queue": task.queue, "task_id": task.id, "channel": task.channel, "priority": task.priority}),
        )
        .await;
        Ok(task)
    }

    /// Routes a conversation that waits in a queue (its `queue`, a queue of
    /// the engine's) and is nobody's yet: a task on `channel` unless one is
    /// open already. Quietly nothing otherwise.
    pub async fn route_conversation(&self, tenant: &str, conversation_id: &str, channel: &str) {
        use continuum_core::ConversationState;
        let Ok(conv) = self.store.get_conversation(tenant, conversation_id).await else {
            return;
        };
        let (Some(queue), None) = (conv.queue.clone(), conv.assignee.as_ref()) else {
            return;
        };
        if !matches!(
            conv.state,
            ConversationState::Open | ConversationState::Queued
        ) || channel_of(channel).is_none()
        {
            return;
        }
        match self.store.get_queue(tenant, &queue).await {
            Ok(Some(_)) => {}
            _ => return,
        }
        let new = NewRoutingTask {
            queue,
            conversation_id: conversation_id.to_owned(),
            channel: channel.to_owned(),
            priority: 0,
            skills: Vec::new(),
            call_id: None,
            triage: None,
        };
        match self.enqueue(tenant, new).await {
            Ok(_) | Err(QueueError::Store(continuum_store::StoreError::Conflict(_))) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a queued conversation's message could not be routed")
            }
        }
    }

    /// The agent's pending offer, as its `reservation` notice carried it.
    pub fn pending_offer(&self, tenant: &str, agent: &str) -> Option<serde_json::Value> {
        let (state, r) = self.agent_state(tenant, agent);
        let _ = state;
        let key = (tenant.to_owned(), agent.to_owned());
        let mut offers = self.offers.lock();
        match r {
            Some(r) => offers
                .get(&key)
                .filter(|o| o["id"].as_u64() == Some(r.id))
                .cloned(),
            None => {
                offers.remove(&key);
                None
            }
        }
    }

    /// A waiting call's orders arrive on `tx` until it leaves the queue.
    pub fn hold_call(&self, task_id: &str, tx: mpsc::UnboundedSender<CallOrder>) {
        self.calls.lock().insert(task_id.to_owned(), tx);
    }

    /// An answered call's orders (a transfer back to a queue) arrive on `tx`
    /// until it ends.
    pub fn call_joined(&self, task_id: &str, tx: mpsc::UnboundedSender<CallOrder>) {
        self.answered.lock().insert(task_id.to_owned(), tx);
    }

    /// An answered call ended.
    pub fn call_gone(&self, task_id: &str) {
        self.answered.lock().remove(task_id);
    }

    /// The caller hung up (or the work was withdrawn).
    pub fn cancel(&self, tenant: &str, task_id: &str) {
        self.calls.lock().remove(task_id);
        let _ = self.with_engine(tenant, |e| e.cancel(task_id, Instant::now()));
    }

    /// The agent says available, away or offline. Going available needs an
    /// agent profile.
    pub async fn set_presence(
        &self,
        tenant: &str,
        agent: &str,
        state: &str,
    ) -> Result<(), QueueError> {
        let now = Instant::now();
        if state == "offline" {
            let _ = self.with_engine(tenant, |e| e.agent_logout(agent, now));
            return Ok(());
        }
        let profile = self
            .store
            .get_agent(tenant, agent)
            .await?
            .ok_or(QueueError::NotAnAgent)?;
        let presence = if state == "away" {
            Presence::Away
        } else {
            Presence::Available
        };
        let cfg = agent_config(&profile);
        self.with_engine(tenant, |e| {
            if e.agent_state(agent).is_none() {
                e.agent_login(cfg, now)?;
            }
            e.set_agent_state(agent, presence, now)
        })?;
        Ok(())
    }

    pub fn agent_state(&self, tenant: &str, agent: &str) -> (AgentState, Option<AgentReservation>) {
        let mut tenants = self.tenants.lock();
        let Some(t) = tenants.get_mut(tenant) else {
            return (AgentState::Offline, None);
        };
        let state = t.engine.agent_state(agent).unwrap_or(AgentState::Offline);
        let r = t
            .engine
            .reservations()
            .into_iter()
            .find(|r| r.agent.as_str() == agent)
            .map(|r| AgentReservation {
                id: r.reservation.0,
                task_id: r.task.to_string(),
                expires_at_ms: 0,
                expires: r.expires_at,
            });
        (state, r)
    }

    /// Accepts a reservation of `agent`'s (only theirs: another agent's is
    /// "no such reservation", like a made-up id). The task's row and the
    /// conversation's assignment are written before this returns.
    pub async fn accept(
        &self,
        tenant: &str,
        agent: &str,
        reservation: u64,
    ) -> Result<continuum_routing::Assignment, QueueError> {
        let id = ReservationId(reservation);
        let a = self.with_engine(tenant, |e| {
            if e.reservation(id).is_some_and(|r| r.agent.as_str() != agent) {
                return Err(QueueError::NoReservation);
            }
            e.accept(id, Instant::now()).map_err(|err| match err {
                RoutingError::UnknownReservation(_) => QueueError::NoReservation,
                other => QueueError::Routing(other),
            })
        })?;
        self.store
            .set_task_state(tenant, &a.task, TaskState::Assigned, Some(agent), None)
            .await?;
        let params = TransitionParams {
            assignee: Some(agent.to_owned()),
            queue: Some(a.queue.to_string()),
            reason: Some("routing".into()),
        };
        let actor = Actor {
            actor_type: ActorType::Staff,
            id: Some(agent.to_owned()),
        };
        if let Err(e) = self
            .store
            .transition(
                tenant,
                &a.conversation_id,
                Transition::Assign,
                params,
                actor,
                "system:routing",
            )
            .await
        {
            tracing::warn!(error = %e, "an accepted task's conversation could not be assigned");
        }
        Ok(a)
    }

    pub fn reject(&self, tenant: &str, agent: &str, reservation: u64) -> Result<(), QueueError> {
        let id = ReservationId(reservation);
        self.with_engine(tenant, |e| {
            match e.reservation(id) {
                Some(r) if r.agent.as_str() == agent => {}
                _ => return Err(QueueError::NoReservation),
            }
            e.reject(id, Instant::now()).map_err(QueueError::Routing)
        })?;
        Ok(())
    }

    /// The agent is done with a task they hold.
    pub async fn complete(
        &self,
        tenant: &str,
        agent: &str,
        task_id: &str,
    ) -> Result<(), QueueError> {
        let task = self
            .store
            .get_routing_task(tenant, task_id)
            .await?
            .filter(|t| t.agent.as_deref() == Some(agent) && t.state == TaskState::Assigned)
            .ok_or(QueueError::NoTask)?;
        // The engine's record (when it has one: not after a restart), then
        // the row, before answering (the agent's next read agrees).
        let _ = self.with_engine(tenant, |e| e.complete(&task.id, Instant::now()));
        self.store
            .set_task_state(tenant, &task.id, TaskState::Completed, None, None)
            .await?;
        Ok(())
    }

    /// Moves a task (waiting, or the caller's own) to another queue.
    pub async fn transfer(
        &self,
        tenant: &str,
        agent: Option<&str>,
        task_id: &str,
        to: &str,
    ) -> Result<(), QueueError> {
        let task = self
            .store
            .get_routing_task(tenant, task_id)
            .await?
            .filter(|t| t.state.is_open())
            .filter(|t| agent.is_none() || t.agent.as_deref() == agent)
            .ok_or(QueueError::NoTask)?;
        if self.store.get_queue(tenant, to).await?.is_none() {
            return Err(QueueError::UnknownQueue(to.to_owned()));
        }
        self.with_engine(tenant, |e| e.transfer(&task.id, to, Instant::now()))?;
        self.store
            .set_task_state(tenant, &task.id, TaskState::Waiting, None, Some(to))
            .await?;
        // A call an agent had: out of their room, back to hold audio.
        if let Some(tx) = self.answered.lock().remove(&task.id) {
            let _ = tx.send(CallOrder::Requeue);
        }
        self.timeline(
            tenant,
            &task.conversation_id,
            serde_json::json!({"action": "transferred", "queue": to, "from_queue": task.queue, "task_id": task.id}),
        )
        .await;
        Ok(())
    }

    pub fn snapshot(&self, tenant: &str) -> (Snapshot, Vec<HistoryPoint>) {
        let mut tenants = self.tenants.lock();
        match tenants.get_mut(tenant) {
            Some(t) => (
                t.engine.snapshot(Instant::now()),
                t.history.iter().cloned().collect(),
            ),
            None => (Engine::default().snapshot(Instant::now()), Vec::new()),
        }
    }

    /// Where a task is (position in its queue, state), if the engine has it.
    pub fn task_view(&self, tenant: &str, task: &str) -> Option<continuum_routing::TaskView> {
        self.tenants.lock().get(tenant)?.engine.task(task)
    }

    async fn run_timers(self: Arc<Self>) {
        let mut next_sample = Instant::now() + HISTORY_EVERY;
        loop {
            let next = {
                let tenants = self.tenants.lock();
                tenants
                    .values()
                    .filter_map(|t| t.engine.poll_timeout())
                    .min()
            };
            let until = next.map_or(next_sample, |n| n.min(next_sample));
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = self.wake.notified() => continue,
            }
            let now = Instant::now();
            let names: Vec<String> = self.tenants.lock().keys().cloned().collect();
            for t in &names {
                self.with_engine(t, |e| {
                    if e.poll_timeout().is_some_and(|at| at <= now) {
                        e.handle_timeout(now);
                    }
                });
            }
            if now >= next_sample {
                next_sample = now + HISTORY_EVERY;
                self.sample(now);
            }
        }
    }

    /// A chart point per tenant, and the gauges.
    fn sample(&self, now: Instant) {
        let at = self.wall(now);
        let mut tenants = self.tenants.lock();
        for (name, t) in tenants.iter_mut() {
            let snap = t.engine.snapshot(now);
            let waiting: usize = snap.queues.iter().map(|q| q.waiting).sum();
            let (within, ended) = snap.queues.iter().fold((0, 0), |(w, e), q| {
                (
                    w + q.answered_within_target_15m,
                    e + q.answered_15m + q.abandoned_15m + q.overflowed_15m,
                )
            });
            if t.history.len() >= HISTORY_POINTS {
                t.history.pop_front();
            }
            t.history.push_back(HistoryPoint {
                at,
                waiting,
                service_level: (ended > 0).then(|| within as f64 / ended as f64),
            });
            for q in &snap.queues {
                let labels = [("tenant", name.clone()), ("queue", q.name.clone())];
                metrics::gauge!("continuum_queue_waiting", &labels).set(q.waiting as f64);
                metrics::gauge!("continuum_queue_longest_wait_seconds", &labels)
                    .set(q.longest_wait.as_secs_f64());
                if let Some(sl) = q.service_level_15m {
                    metrics::gauge!("continuum_queue_service_level", &labels).set(sl);
                }
            }
            let a = &snap.agents_by_state;
            for (state, n) in [
                ("available", a.available),
                ("busy", a.busy),
                ("wrap_up", a.wrap_up),
                ("away", a.away),
            ] {
                metrics::gauge!("continuum_agents", "tenant" => name.clone(), "state" => state)
                    .set(n as f64);
            }
        }
    }

    fn notify(
        &self,
        tenant: &str,
        agent: Option<&str>,
        event: &'static str,
        data: serde_json::Value,
    ) {
        let _ = self.notices.send(Arc::new(Notice {
            tenant_id: tenant.to_owned(),
            agent: agent.map(str::to_owned),
            event,
            data,
        }));
    }

    async fn timeline(&self, tenant: &str, conversation: &str, meta: serde_json::Value) {
        let ev = NewEvent {
            channel: EventChannel::System,
            kind: EventKind::Routing,
            actor: Actor::system(),
            body: None,
            meta: meta.as_object().cloned().unwrap_or_default(),
            idempotency_key: None,
        };
        if let Err(e) = self
            .store
            .append_system_event(tenant, conversation, ev, "system:routing")
            .await
        {
            tracing::warn!(error = %e, "a routing event could not be recorded");
        }
    }

    fn order_call(&self, task: &str, order: CallOrder) -> bool {
        let tx = self.calls.lock().remove(task);
        tx.is_some_and(|tx| tx.send(order).is_ok())
    }

    /// Applies the engines' decisions, in order.
    async fn apply_outputs(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, Output)>) {
        while let Some((tenant, out)) = rx.recv().await {
            self.apply(&tenant, out).await;
        }
    }

    async fn apply(&self, tenant: &str, out: Output) {
        let set = |task: String, state: TaskState, agent: Option<String>, queue: Option<String>| {
            let store = self.store.clone();
            let tenant = tenant.to_owned();
            async move {
                if let Err(e) = store
                    .set_task_state(&tenant, &task, state, agent.as_deref(), queue.as_deref())
                    .await
                {
                    tracing::warn!(task = %task, error = %e, "a routing task's row could not be updated");
                }
            }
        };
        match out {
            Output::Reserved {
                reservation,
                task,
                agent,
                queue,
                channel,
                conversation_id,
                expires_at,
            } => {
                set(
                    task.to_string(),
                    TaskState::Reserved,
                    Some(agent.to_string()),
                    None,
                )
                .await;
                let row = self
                    .store
                    .get_routing_task(tenant, &task)
                    .await
                    .ok()
                    .flatten();
                // What the agent sees before accepting: the caller and
                // what already happened (read on their behalf, audited).
                let context = self
                    .store
                    .context(tenant, &conversation_id, 50, &format!("agent:{agent}"))
                    .await
                    .ok();
                // The patient's own words first: a long IVR menu must not
                // push them out of the offer.
                let recent_messages: Vec<&continuum_store::Event> = context
                    .as_ref()
                    .map(|c| {
                        let m: Vec<_> = c
                            .recent_events
                            .iter()
                            .filter(|e| e.kind == EventKind::Message)
                            .collect();
                        m[m.len().saturating_sub(5)..].to_vec()
                    })
                    .unwrap_or_default();
                let offer = serde_json::json!({
                    "id": reservation.0,
                    "task_id": task.to_string(),
                    "conversation_id": &*conversation_id,
                    "channel": channel_name(channel),
                    "queue": queue.to_string(),
                    "priority": row.as_ref().map(|r| r.priority),
                    "triage": row.as_ref().and_then(|r| r.triage.clone()),
                    "expires_at": self.wall(expires_at),
                    "recent_messages": recent_messages,
                    "context": context,
                });
                self.offers
                    .lock()
                    .insert((tenant.to_owned(), agent.to_string()), offer.clone());
                self.notify(tenant, Some(&agent), "reservation", offer);
                self.timeline(
                    tenant,
                    &conversation_id,
                    serde_json::json!({"action": "reserved", "queue": queue.to_string(), "agent": agent.to_string(), "task_id": task.to_string()}),
                )
                .await;
            }
            Output::ReservationTimedOut {
                reservation,
                task,
                agent,
            } => {
                metrics::counter!("continuum_routing_reservations_missed_total").increment(1);
                set(task.to_string(), TaskState::Waiting, None, None).await;
                self.notify(
                    tenant,
                    Some(&agent),
                    "reservation_timed_out",
                    serde_json::json!({"id": reservation.0, "task_id": task.to_string()}),
                );
                if let Ok(Some(row)) = self.store.get_routing_task(tenant, &task).await {
                    self.timeline(
                        tenant,
                        &row.conversation_id,
                        serde_json::json!({"action": "timed_out", "agent": agent.to_string(), "task_id": task.to_string()}),
                    )
                    .await;
                }
            }
            Output::ReservationCancelled {
                reservation,
                task,
                agent,
                reason,
            } => {
                self.notify(
                    tenant,
                    Some(&agent),
                    "reservation_cancelled",
                    serde_json::json!({"id": reservation.0, "task_id": task.to_string(), "reason": reason}),
                );
                if let Ok(Some(row)) = self.store.get_routing_task(tenant, &task).await
                    && row.state == TaskState::Reserved
                {
                    set(task.to_string(), TaskState::Waiting, None, None).await;
                }
            }
            // `accept` wrote the row and the assignment before answering.
            Output::Assigned {
                task,
                agent,
                channel,
                conversation_id,
                ..
            } => {
                metrics::counter!("continuum_routing_assigned_total", "channel" => channel_name(channel))
                    .increment(1);
                self.notify(
                    tenant,
                    Some(&agent),
                    "assigned",
                    serde_json::json!({"task_id": task.to_string(), "conversation_id": &*conversation_id, "channel": channel_name(channel)}),
                );
            }
            Output::Overflowed {
                task,
                queue,
                action,
                conversation_id,
                ..
            } => {
                metrics::counter!("continuum_routing_overflows_total").increment(1);
                if let Overflow::Queue { to } = &action {
                    set(
                        task.to_string(),
                        TaskState::Waiting,
                        None,
                        Some(to.to_string()),
                    )
                    .await;
                }
                self.timeline(
                    tenant,
                    &conversation_id,
                    serde_json::json!({"action": "overflowed", "queue": queue.to_string(), "rule": action, "task_id": task.to_string()}),
                )
                .await;
            }
            Output::TaskLeft {
                task,
                queue,
                reason,
                conversation_id,
            } => {
                let (state, action) = match reason {
                    TaskLeftReason::Voicemail => (TaskState::Voicemail, "voicemail"),
                    TaskLeftReason::Callback => (TaskState::Callback, "callback"),
                    TaskLeftReason::Abandoned => (TaskState::Abandoned, "abandoned"),
                    TaskLeftReason::Completed => (TaskState::Completed, "completed"),
                    TaskLeftReason::AgentLoggedOut => (TaskState::Waiting, "requeued"),
                };
                set(task.to_string(), state, None, None).await;
                match reason {
                    TaskLeftReason::Voicemail => {
                        self.order_call(&task, CallOrder::Voicemail);
                    }
                    TaskLeftReason::Callback => {
                        self.order_call(&task, CallOrder::Callback);
                    }
                    TaskLeftReason::AgentLoggedOut => {
                        // Back in line, keeping its place.
                        if let Ok(Some(row)) = self.store.get_routing_task(tenant, &task).await {
                            let waited = Duration::from_micros(
                                (now_micros() - row.created_at.0).max(0) as u64,
                            );
                            let now = Instant::now();
                            let at = now.checked_sub(waited).unwrap_or(now);
                            let _ =
                                self.with_engine(tenant, |e| e.enqueue(engine_task(&row, at), now));
                        }
                    }
                    _ => {
                        self.calls.lock().remove(task.as_str());
                    }
                }
                self.timeline(
                    tenant,
                    &conversation_id,
                    serde_json::json!({"action": action, "queue": queue.to_string(), "task_id": task.to_string()}),
                )
                .await;
            }
            Output::AgentStateChanged { agent, to, .. } => {
                let until = match to {
                    AgentState::WrapUp { until } => Some(self.wall(until)),
                    _ => None,
                };
                self.notify(
                    tenant,
                    Some(&agent),
                    "state",
                    serde_json::json!({"state": state_name(&to), "wrap_up_until": until}),
                );
            }
        }
    }

    /// Tells a waiting call an agent took it (the room they meet in).
    pub fn call_answered(&self, task: &str, room_id: &str) -> bool {
        self.order_call(
            task,
            CallOrder::Join {
                room_id: room_id.to_owned(),
            },
        )
    }
}

/// A pending reservation of an agent's.
#[derive(Debug, Clone)]
pub struct AgentReservation {
    pub id: u64,
    pub task_id: String,
    pub expires_at_ms: i64,
    pub expires: Instant,
}

fn engine_task(t: &RoutingTask, enqueued_at: Instant) -> Task {
    Task {
        id: t.id.as_str().into(),
        queue: t.queue.as_str().into(),
        channel: channel_of(&t.channel).unwrap_or(Channel::Chat),
        priority: t.priority,
        skills: t.skills.clone(),
        conversation_id: t.conversation_id.clone(),
        enqueued_at,
    }
}
