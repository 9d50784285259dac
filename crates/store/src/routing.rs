//! The front door's configuration and work: queues (name, required skills,
//! timers, overflow rules), agents (a staff identity's skills and capacity
//! per channel) and routing tasks (one row per piece of work routed: a call
//! out of the IVR, a chat, an SMS thread, a video-visit request). All SQL of
//! these tables is here.
//!
//! Queue and agent settings are the clinic's own (in clear). A task's queue,
//! skills, triage label and call are sealed (which queue a patient waits in
//! says something about them), with the queue also as a blind index. The
//! routing engine (`continuum-routing`) keeps the live state in
//! memory; the task rows let a restarted node pick up work that was waiting
//! and show supervisors what happened.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, TenantKeys, now_micros};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What happens to a task that has waited `after_secs` in its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OverflowSpec {
    pub after_secs: u32,
    pub action: OverflowAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OverflowAction {
    /// Offer the task to agents without these of the queue's skills too.
    WidenSkills { drop: Vec<String> },
    /// Move the task to another queue (it keeps its age).
    Queue { to: String },
    /// Take a voicemail from the caller instead (calls; other work stays).
    Voicemail,
    /// Offer the caller a call back (the conversation stays queued).
    Callback,
}

/// A queue's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Skills an agent needs for this queue's work (e.g. `triage`).
    #[serde(default)]
    pub skills: Vec<String>,
    /// How long an offered task waits for the agent's accept (default 15).
    #[serde(default = "default_reservation_secs")]
    pub reservation_timeout_secs: u32,
    /// Answered within this counts toward the service level (default 20).
    #[serde(default = "default_service_level_secs")]
    pub service_level_secs: u32,
    /// After a task ends, its agent is in wrap-up this long (default 30; 0: none).
    #[serde(default = "default_wrap_up_secs")]
    pub wrap_up_secs: u32,
    /// In order of `after_secs`.
    #[serde(default)]
    pub overflow: Vec<OverflowSpec>,
}

fn default_reservation_secs() -> u32 {
    15
}
fn default_service_level_secs() -> u32 {
    20
}
fn default_wrap_up_secs() -> u32 {
    30
}

impl Default for QueueSpec {
    fn default() -> Self {
        QueueSpec {
            skills: Vec::new(),
            reservation_timeout_secs: default_reservation_secs(),
            service_level_secs: default_service_level_secs(),
            wrap_up_secs: default_wrap_up_secs(),
            overflow: Vec::new(),
        }
    }
}

impl QueueSpec {
    /// Why the settings cannot work, naming the field.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::Invalid(m));
        if !(1..=600).contains(&self.reservation_timeout_secs) {
            return bad("reservation_timeout_secs: must be 1 to 600".into());
        }
        if !(1..=3_600).contains(&self.service_level_secs) {
            return bad("service_level_secs: must be 1 to 3600".into());
        }
        if self.wrap_up_secs > 3_600 {
            return bad("wrap_up_secs: at most 3600".into());
        }
        if self.skills.len() > 32 || self.skills.iter().any(|s| !valid_name(s)) {
            return bad("skills: at most 32 names of 1-64 letters, digits, `-` or `_`".into());
        }
        if self.overflow.len() > 16 {
            return bad("overflow: at most 16 rules".into());
        }
        for (i, rule) in self.overflow.iter().enumerate() {
            if rule.after_secs == 0 || rule.after_secs > 86_400 {
                return bad(format!("overflow[{i}].after_secs: must be 1 to 86400"));
            }
            match &rule.action {
                OverflowAction::Queue { to } if !valid_name(to) => {
                    return bad(format!("overflow[{i}].action.to: not a queue name"));
                }
                OverflowAction::WidenSkills { drop } if drop.is_empty() => {
                    return bad(format!(
                        "overflow[{i}].action.drop: name the skills to drop"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A name of a queue, skill or flow: what URLs and flows can carry as is.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A queue as stored: its name and settings (the fields of [`QueueSpec`],
/// written out so the API schema stays exact).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Queue {
    pub name: String,
    pub skills: Vec<String>,
    pub reservation_timeout_secs: u32,
    pub service_level_secs: u32,
    pub wrap_up_secs: u32,
    pub overflow: Vec<OverflowSpec>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Queue {
    fn new(name: String, spec: QueueSpec, created_at: Timestamp, updated_at: Timestamp) -> Queue {
        Queue {
            name,
            skills: spec.skills,
            reservation_timeout_secs: spec.reservation_timeout_secs,
            service_level_secs: spec.service_level_secs,
            wrap_up_secs: spec.wrap_up_secs,
            overflow: spec.overflow,
            created_at,
            updated_at,
        }
    }
}

/// What an agent (a staff identity) can take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Shown to supervisors and in the console.
    pub display_name: String,
    #[serde(default)]
    pub skills: Vec<String>,
    /// Work at once per channel (`voice`, `video`, `chat`, `sms`,
    /// `whatsapp`); absent channels take the defaults (one call or visit,
    /// three chats, five text threads).
    #[serde(default)]
    pub capacity: BTreeMap<String, u32>,
}

impl AgentSpec {
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(StoreError::Invalid(m.into()));
        if self.display_name.trim().is_empty() || self.display_name.len() > 128 {
            return bad("display_name: 1 to 128 characters");
        }
        if self.skills.len() > 32 || self.skills.iter().any(|s| !valid_name(s)) {
            return bad("skills: at most 32 names of 1-64 letters, digits, `-` or `_`");
        }
        for (channel, n) in &self.capacity {
            if !matches!(
                channel.as_str(),
                "voice" | "video" | "chat" | "sms" | "whatsapp"
            ) {
                return bad("capacity: channels are voice, video, chat, sms, whatsapp");
            }
            if *n > 50 {
                return bad("capacity: at most 50 per channel");
            }
        }
        Ok(())
    }
}

/// An agent's profile as stored (the fields of [`AgentSpec`] written out).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    /// The staff identity (a token's subject).
    pub id: String,
    pub display_name: String,
    pub skills: Vec<String>,
    pub capacity: BTreeMap<String, u32>,
    pub updated_at: Timestamp,
}

/// Where a routing task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Waiting,
    Reserved,
    Assigned,
    Completed,
    /// The caller hung up (or the work was withdrawn) before anyone took it.
    Abandoned,
    /// Left the queue for a voicemail.
    Voicemail,
    /// Left the queue with a call-back promised.
    Callback,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Reserved => "reserved",
            TaskState::Assigned => "assigned",
            TaskState::Completed => "completed",
            TaskState::Abandoned => "abandoned",
            TaskState::Voicemail => "voicemail",
            TaskState::Callback => "callback",
        }
    }
    fn parse(s: &str) -> TaskState {
        match s {
            "reserved" => TaskState::Reserved,
            "assigned" => TaskState::Assigned,
            "completed" => TaskState::Completed,
            "abandoned" => TaskState::Abandoned,
            "voicemail" => TaskState::Voicemail,
            "callback" => TaskState::Callback,
            _ => TaskState::Waiting,
        }
    }
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TaskState::Waiting | TaskState::Reserved | TaskState::Assigned
        )
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoutingTask {
    pub id: String,
    pub queue: String,
    pub conversation_id: String,
    /// `voice`, `video`, `chat`, `sms`, `whatsapp`.
    pub channel: String,
    pub priority: i32,
    pub skills: Vec<String>,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The phone call waiting in the queue, for voice tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The IVR's triage label, when it came through one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triage: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A task to record (the engine decides where it goes).
#[derive(Debug, Clone)]
pub struct NewRoutingTask {
    pub queue: String,
    pub conversation_id: String,
    pub channel: String,
    pub priority: i32,
    pub skills: Vec<String>,
    pub call_id: Option<String>,
    pub triage: Option<String>,
}

const TASK_COLUMNS: &str =
    "id, conversation_id, channel, priority, state, agent, data, created_at, updated_at";
const QUEUE_INDEX: &str = "routing_task.queue";

/// The sealed part of a task.
#[derive(Serialize, Deserialize)]
struct TaskData {
    queue: String,
    skills: Vec<String>,
    call_id: Option<String>,
    triage: Option<String>,
}

fn task_aad(id: &str) -> Vec<u8> {
    format!("routing_task:{id}").into_bytes()
}

fn seal_task(keys: &TenantKeys, id: &str, d: &TaskData) -> Vec<u8> {
    keys.data
        .seal(&serde_json::to_vec(d).unwrap_or_default(), &task_aad(id))
}

fn unseal_task(keys: &TenantKeys, id: &str, sealed: &[u8]) -> Result<TaskData> {
    serde_json::from_slice(&keys.data.open(sealed, &task_aad(id))?)
        .map_err(|e| StoreError::Integrity(format!("routing task {id}: {e}")))
}

fn task_row(keys: &TenantKeys, r: &crate::db::Row<'_>) -> Result<RoutingTask> {
    let id: String = r.get(0)?;
    let state: String = r.get(4)?;
    let sealed: Vec<u8> = r.get(6)?;
    let d = unseal_task(keys, &id, &sealed)?;
    Ok(RoutingTask {
        conversation_id: r.get(1)?,
        channel: r.get(2)?,
        priority: r.get(3)?,
        state: TaskState::parse(&state),
        agent: r.get(5)?,
        queue: d.queue,
        skills: d.skills,
        call_id: d.call_id,
        triage: d.triage,
        created_at: Timestamp(r.get(7)?),
        updated_at: Timestamp(r.get(8)?),
        id,
    })
}

fn json_of<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn json_col<T: serde::de::DeserializeOwned>(
    r: &crate::db::Row<'_>,
    i: usize,
) -> crate::db::Result<T> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s).map_err(|e| crate::db::DbError::conversion(i, e))
}

impl Store {
    /// Creates or replaces a queue; `true` when it is new.
    pub async fn put_queue(
        &self,
        tenant_id: &str,
        name: &str,
        spec: &QueueSpec,
        actor: &str,
    ) -> Result<(Queue, bool)> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(
                "name: 1-64 letters, digits, `.`, `-` or `_`".into(),
            ));
        }
        spec.check()?;
        let json = json_of(spec)?;
        let (t, n, actor) = (tenant_id.to_owned(), name.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let now = now_micros();
            let existed = ctx
                .conn
                .prepare_cached("SELECT 1 FROM queues WHERE tenant_id = ?1 AND name = ?2")?
                .query_row(params![t, n], |_| Ok(()))
                .optional()?
                .is_some();
            ctx.conn.execute(
                "INSERT INTO queues (tenant_id, name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(tenant_id, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                params![t, n, json, now],
            )?;
            let action = if existed { "queue.update" } else { "queue.create" };
            ctx.audit(&t, &AuditEntry::new(actor, action, format!("queue/{n}"), Outcome::Ok))?;
            let q = queue_in(ctx.conn, &t, &n)?.ok_or(StoreError::NotFound("queue"))?;
            Ok((q, !existed))
        })
        .await
    }

    pub async fn list_queues(&self, tenant_id: &str) -> Result<Vec<Queue>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT name, spec, created_at, updated_at FROM queues WHERE tenant_id = ?1 ORDER BY name",
            )?;
            let rows = st.query_map(params![t], queue_row)?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Every tenant's queues (a node starting its routing engines).
    pub async fn all_queues(&self) -> Result<Vec<(String, Queue)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT name, spec, created_at, updated_at, tenant_id FROM queues ORDER BY tenant_id, name",
            )?;
            let rows = st.query_map(params![], |r| Ok((r.get::<_, String>(4)?, queue_row(r)?)))?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }

    pub async fn get_queue(&self, tenant_id: &str, name: &str) -> Result<Option<Queue>> {
        let (t, n) = (tenant_id.to_owned(), name.to_owned());
        self.read(move |c| queue_in(c, &t, &n)).await
    }

    /// Removes a queue; refused while it has open tasks.
    pub async fn delete_queue(&self, tenant_id: &str, name: &str, actor: &str) -> Result<()> {
        let (t, n, actor) = (tenant_id.to_owned(), name.to_owned(), actor.to_owned());
        let store = self.clone();
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &t)?;
            let open: i64 = ctx.conn.query_row(
                "SELECT COUNT(*) FROM routing_tasks WHERE tenant_id = ?1 AND queue_idx = ?2 AND state IN ('waiting', 'reserved', 'assigned')",
                params![t, keys.blind_index(QUEUE_INDEX, &n)],
                |r| r.get(0),
            )?;
            if open > 0 {
                return Err(StoreError::Conflict(format!(
                    "queue `{n}` has {open} open tasks: move or finish them first"
                )));
            }
            let gone = ctx
                .conn
                .execute("DELETE FROM queues WHERE tenant_id = ?1 AND name = ?2", params![t, n])?;
            if gone == 0 {
                return Err(StoreError::NotFound("queue"));
            }
            ctx.audit(&t, &AuditEntry::new(actor, "queue.delete", format!("queue/{n}"), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    /// Creates or replaces an agent's profile; `true` when it is new.
    pub async fn put_agent(
        &self,
        tenant_id: &str,
        id: &str,
        spec: &AgentSpec,
        actor: &str,
    ) -> Result<(Agent, bool)> {
        if id.is_empty() || id.len() > 128 {
            return Err(StoreError::Invalid("id: 1 to 128 characters".into()));
        }
        spec.check()?;
        let json = json_of(spec)?;
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let existed = ctx
                .conn
                .prepare_cached("SELECT 1 FROM agents WHERE tenant_id = ?1 AND id = ?2")?
                .query_row(params![t, id], |_| Ok(()))
                .optional()?
                .is_some();
            ctx.conn.execute(
                "INSERT INTO agents (tenant_id, id, spec, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(tenant_id, id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                params![t, id, json, now_micros()],
            )?;
            let action = if existed { "agent.update" } else { "agent.create" };
            ctx.audit(&t, &AuditEntry::new(actor, action, format!("agent/{id}"), Outcome::Ok))?;
            let a = agent_in(ctx.conn, &t, &id)?.ok_or(StoreError::NotFound("agent"))?;
            Ok((a, !existed))
        })
        .await
    }

    pub async fn get_agent(&self, tenant_id: &str, id: &str) -> Result<Option<Agent>> {
        let (t, id) = (tenant_id.to_owned(), id.to_owned());
        self.read(move |c| agent_in(c, &t, &id)).await
    }

    pub async fn list_agents(&self, tenant_id: &str) -> Result<Vec<Agent>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, spec, updated_at FROM agents WHERE tenant_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map(params![t], agent_row)?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }

    pub async fn delete_agent(&self, tenant_id: &str, id: &str, actor: &str) -> Result<()> {
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let gone = ctx.conn.execute(
                "DELETE FROM agents WHERE tenant_id = ?1 AND id = ?2",
                params![t, id],
            )?;
            if gone == 0 {
                return Err(StoreError::NotFound("agent"));
            }
            ctx.audit(
                &t,
                &AuditEntry::new(actor, "agent.delete", format!("agent/{id}"), Outcome::Ok),
            )?;
            Ok(())
        })
        .await
    }

    /// Records a new task, `waiting`. A conversation has at most one open
    /// task: a second is refused (409) so the same work never waits twice.
    pub async fn create_routing_task(
        &self,
        tenant_id: &str,
        new: NewRoutingTask,
    ) -> Result<RoutingTask> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        self.write(move |ctx| {
            // The conversation's row is locked first (PostgreSQL): a second
            // task created at the same moment (on another node) waits, then
            // finds this one open.
            ctx.conn
                .prepare_cached(&format!(
                    "SELECT 1 FROM conversations WHERE id = ?1{}",
                    ctx.conn.row_lock()
                ))?
                .query_row(params![new.conversation_id], |_| Ok(()))
                .optional()?;
            let open = ctx
                .conn
                .prepare_cached(
                    "SELECT id FROM routing_tasks WHERE conversation_id = ?1 AND state IN ('waiting', 'reserved', 'assigned')",
                )?
                .query_row(params![new.conversation_id], |r| r.get::<_, String>(0))
                .optional()?;
            if let Some(open) = open {
                return Err(StoreError::Conflict(format!(
                    "the conversation already has an open task ({open})"
                )));
            }
            let keys = store.keys_for(ctx.conn, &t)?;
            let id = uuid::Uuid::now_v7().to_string();
            let now = now_micros();
            let data = TaskData {
                queue: new.queue,
                skills: new.skills,
                call_id: new.call_id,
                triage: new.triage,
            };
            ctx.conn.execute(
                "INSERT INTO routing_tasks (id, tenant_id, conversation_id, channel, priority, state, queue_idx, data, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'waiting', ?6, ?7, ?8, ?8)",
                params![
                    id,
                    t,
                    new.conversation_id,
                    new.channel,
                    new.priority,
                    keys.blind_index(QUEUE_INDEX, &data.queue),
                    seal_task(&keys, &id, &data),
                    now
                ],
            )?;
            task_in(ctx.conn, &keys, &t, &id)?.ok_or(StoreError::NotFound("task"))
        })
        .await
    }

    /// Moves a task on (the engine decided). `agent` is kept when `None`
    /// (and cleared when the task waits again); `queue` moves it.
    pub async fn set_task_state(
        &self,
        tenant_id: &str,
        id: &str,
        state: TaskState,
        agent: Option<&str>,
        queue: Option<&str>,
    ) -> Result<()> {
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        let (agent, queue) = (agent.map(str::to_owned), queue.map(str::to_owned));
        self.write(move |ctx| {
            let now = now_micros();
            if let Some(q) = queue {
                let keys = store.keys_for(ctx.conn, &t)?;
                let sealed: Vec<u8> = ctx
                    .conn
                    .query_row(
                        &format!(
                            "SELECT data FROM routing_tasks WHERE tenant_id = ?1 AND id = ?2{}",
                            ctx.conn.row_lock()
                        ),
                        params![t, id],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or(StoreError::NotFound("task"))?;
                let mut d = unseal_task(&keys, &id, &sealed)?;
                d.queue = q;
                ctx.conn.execute(
                    "UPDATE routing_tasks SET queue_idx = ?3, data = ?4 WHERE tenant_id = ?1 AND id = ?2",
                    params![t, id, keys.blind_index(QUEUE_INDEX, &d.queue), seal_task(&keys, &id, &d)],
                )?;
            }
            let n = ctx.conn.execute(
                "UPDATE routing_tasks SET state = ?3,
                    agent = CASE WHEN ?3 = 'waiting' THEN NULL ELSE COALESCE(?4, agent) END,
                    updated_at = ?5
                 WHERE tenant_id = ?1 AND id = ?2",
                params![t, id, state.as_str(), agent, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("task"));
            }
            Ok(())
        })
        .await
    }

    pub async fn get_routing_task(&self, tenant_id: &str, id: &str) -> Result<Option<RoutingTask>> {
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            task_in(c, &keys, &t, &id)
        })
        .await
    }

    /// Every open task of every tenant, oldest first (a node restarting).
    pub async fn open_routing_tasks(&self) -> Result<Vec<(String, RoutingTask)>> {
        let store = self.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT {TASK_COLUMNS}, tenant_id FROM routing_tasks WHERE state IN ('waiting', 'reserved', 'assigned') ORDER BY created_at"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                let t: String = r.get(9)?;
                let keys = store.keys_for(c, &t)?;
                out.push((t, task_row(&keys, r)?));
            }
            Ok(out)
        })
        .await
    }

    /// The tasks an agent holds, oldest first.
    pub async fn agent_tasks(&self, tenant_id: &str, agent: &str) -> Result<Vec<RoutingTask>> {
        let (t, a, store) = (tenant_id.to_owned(), agent.to_owned(), self.clone());
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM routing_tasks WHERE tenant_id = ?1 AND agent = ?2 AND state = 'assigned' ORDER BY created_at LIMIT 200"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![t, a])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                out.push(task_row(&keys, r)?);
            }
            Ok(out)
        })
        .await
    }

    /// A conversation's open task, if any.
    pub async fn open_task_of(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Option<RoutingTask>> {
        let (t, c, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            self.clone(),
        );
        self.read(move |conn| open_task_in(conn, &*store.keys_for(conn, &t)?, &t, &c))
            .await
    }
}

pub(crate) fn open_task_in(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    t: &str,
    conversation_id: &str,
) -> Result<Option<RoutingTask>> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM routing_tasks WHERE tenant_id = ?1 AND conversation_id = ?2 AND state IN ('waiting', 'reserved', 'assigned')"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(params![t, conversation_id])?;
    match rows.next()? {
        Some(ref r) => Ok(Some(task_row(keys, r)?)),
        None => Ok(None),
    }
}

fn queue_row(r: &crate::db::Row<'_>) -> crate::db::Result<Queue> {
    Ok(Queue::new(
        r.get(0)?,
        json_col(r, 1)?,
        Timestamp(r.get(2)?),
        Timestamp(r.get(3)?),
    ))
}

fn queue_in(c: &crate::db::Conn, t: &str, n: &str) -> Result<Option<Queue>> {
    Ok(c.prepare_cached(
        "SELECT name, spec, created_at, updated_at FROM queues WHERE tenant_id = ?1 AND name = ?2",
    )?
    .query_row(params![t, n], queue_row)
    .optional()?)
}

fn agent_row(r: &crate::db::Row<'_>) -> crate::db::Result<Agent> {
    let spec: AgentSpec = json_col(r, 1)?;
    Ok(Agent {
        id: r.get(0)?,
        display_name: spec.display_name,
        skills: spec.skills,
        capacity: spec.capacity,
        updated_at: Timestamp(r.get(2)?),
    })
}

fn agent_in(c: &crate::db::Conn, t: &str, id: &str) -> Result<Option<Agent>> {
    Ok(c.prepare_cached(
        "SELECT id, spec, updated_at FROM agents WHERE tenant_id = ?1 AND id = ?2",
    )?
    .query_row(params![t, id], agent_row)
    .optional()?)
}

fn task_in(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    t: &str,
    id: &str,
) -> Result<Option<RoutingTask>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM routing_tasks WHERE tenant_id = ?1 AND id = ?2");
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(params![t, id])?;
    match rows.next()? {
        Some(ref r) => Ok(Some(task_row(keys, r)?)),
        None => Ok(None),
    }
}
