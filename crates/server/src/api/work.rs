//! An agent's work: presence, live offers (reservations) to accept or
//! reject, the tasks they hold; tasks put into queues; the supervisor's
//! live view of queues and agents.

use crate::auth::{About, Auth};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::queues::{HistoryPoint, QueueError, state_name};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use continuum_core::{Grants, Permission, Principal, Role};
use continuum_routing::AgentState;
use continuum_store::{NewRoutingTask, RoutingTask};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        use continuum_routing::RoutingError as R;
        match e {
            QueueError::Store(s) => s.into(),
            QueueError::NotAnAgent => ApiError::forbidden(e.to_string()),
            QueueError::UnknownQueue(_) => ApiError::invalid(e.to_string()),
            QueueError::NoReservation => ApiError::not_found("reservation"),
            QueueError::NoTask => ApiError::not_found("task"),
            QueueError::Routing(
                r @ (R::ReservationExpired(_)
                | R::ReservationAlreadyAccepted(_)
                | R::ReservationRejected(_)
                | R::ReservationCancelled(_)),
            ) => ApiError::new(StatusCode::CONFLICT, "reservation_closed", r.to_string()),
            QueueError::Routing(r) => ApiError::new(StatusCode::CONFLICT, "routing", r.to_string()),
        }
    }
}

/// The staff identity working queues (a staff token that sees every
/// conversation: queue work can be any patient's).
fn agent_of(p: &Principal) -> Result<String, ApiError> {
    match p {
        Principal::Token { identity, role, .. } if role.is_staff() => {
            if !p.sees_all_conversations() {
                return Err(ApiError::forbidden(
                    "working queues needs a token granted every conversation (`conversations: [\"*\"]`): queue work can be any patient's",
                ));
            }
            Ok(identity.clone())
        }
        _ => Err(ApiError::forbidden(
            "only staff tokens (clinician, agent, admin) work queues; API keys and patients do not",
        )),
    }
}

#[derive(Serialize, ToSchema)]
pub struct ReservationInfo {
    pub id: u64,
    pub task_id: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// The whole offer, as the `reservation` event carried it (conversation,
    /// channel, queue, priority, triage, recent messages, context).
    #[schema(value_type = Object)]
    pub offer: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentMe {
    pub id: String,
    /// `offline`, `available`, `busy`, `wrap_up`, `away`.
    pub state: String,
    /// Unix milliseconds, while in wrap-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap_up_until: Option<i64>,
    pub reservation: Option<ReservationInfo>,
    /// The tasks they hold.
    pub tasks: Vec<RoutingTask>,
}

async fn me_view(s: &AppState, tenant: &str, agent: &str) -> ApiResult<AgentMe> {
    let (state, r) = s.queues.agent_state(tenant, agent);
    let wrap_up_until = match state {
        AgentState::WrapUp { until } => Some(s.queues.wall(until)),
        _ => None,
    };
    let tasks = s.store.agent_tasks(tenant, agent).await?;
    Ok(AgentMe {
        id: agent.to_owned(),
        state: state_name(&state).to_owned(),
        wrap_up_until,
        reservation: r.map(|r| ReservationInfo {
            id: r.id,
            task_id: r.task_id,
            expires_at: s.queues.wall(r.expires),
            offer: s.queues.pending_offer(tenant, agent),
        }),
        tasks,
    })
}

/// The caller's own agent state, pending offer and tasks.
#[utoipa::path(get, path = "/v1/agents/me", tag = "queues", operation_id = "getAgentMe",
    responses((status = 200, body = AgentMe, description = "state, offer, tasks"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation")),
    security(("bearer" = [])))]
pub async fn get_me(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<AgentMe>> {
    let agent = agent_of(&p)?;
    Ok(Json(me_view(&s, p.tenant_id(), &agent).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    /// `available`, `away` or `offline`.
    pub state: String,
}

/// Go available (offers start), away (offers stop; a pending one is
/// withdrawn) or offline.
#[utoipa::path(post, path = "/v1/agents/me/state", tag = "queues", operation_id = "setAgentState", request_body = PresenceRequest,
    responses((status = 200, body = AgentMe, description = "the new state"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation, or no agent profile"),
        (status = 422, body = ErrorBody, description = "state is not available, away or offline")),
    security(("bearer" = [])))]
pub async fn set_state(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<PresenceRequest>,
) -> ApiResult<Json<AgentMe>> {
    let agent = agent_of(&p)?;
    if !matches!(req.state.as_str(), "available" | "away" | "offline") {
        return Err(ApiError::invalid("state: one of available, away, offline"));
    }
    s.queues
        .set_presence(p.tenant_id(), &agent, &req.state)
        .await?;
    Ok(Json(me_view(&s, p.tenant_id(), &agent).await?))
}

/// The agent's live feed: `reservation` (an offer with the caller's
/// context), `reservation_timed_out`, `reservation_cancelled`, `assigned`,
/// `state`.
#[utoipa::path(get, path = "/v1/agents/me/events", tag = "queues", operation_id = "streamAgentEvents",
    responses((status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events: `event: reservation` (`{id, task_id, conversation_id, channel, queue, priority, triage, expires_at, context}`), `reservation_timed_out` / `reservation_cancelled` (`{id, task_id, reason?}`), `assigned` (`{task_id, conversation_id, channel}`), `state` (`{state, wrap_up_until}`)"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation")),
    security(("bearer" = []), ("streamToken" = [])))]
pub async fn events(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let agent = agent_of(&p)?;
    let tenant = p.tenant_id().to_owned();
    let mut notices = s.queues.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    let mut stop = s.shutdown.subscribe();
    let mut revoked = s.revocations.watch();
    // The offer pending now (a console that reconnects sees it again).
    let current = me_view(&s, &tenant, &agent).await?;
    let first = SseEvent::default().event("hello").json_data(&current).ok();
    tokio::spawn(async move {
        if let Some(ev) = first
            && tx.send(ev).await.is_err()
        {
            return;
        }
        enum Wake {
            Notice(Result<std::sync::Arc<crate::queues::Notice>, RecvError>),
            Revoked,
            Stop,
        }
        loop {
            let wake = tokio::select! {
                _ = tx.closed() => Wake::Stop,
                _ = stop.wait_for(|stopping| *stopping) => Wake::Stop,
                _ = revoked.changed() => Wake::Revoked,
                n = notices.recv() => Wake::Notice(n),
            };
            match wake {
                Wake::Stop => return,
                Wake::Revoked if s.revocations.principal_revoked(&p) => return,
                Wake::Revoked => {}
                Wake::Notice(Ok(n)) => {
                    if n.tenant_id != tenant || n.agent.as_deref() != Some(agent.as_str()) {
                        continue;
                    }
                    let Ok(ev) = SseEvent::default().event(n.event).json_data(&n.data) else {
                        continue;
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Wake::Notice(Err(RecvError::Lagged(_))) => {
                    let ev = SseEvent::default().event("resync").data("{}");
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Wake::Notice(Err(RecvError::Closed)) => return,
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A reservation's number; anything else names no reservation.
fn reservation_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("reservation"))
}

/// A phone call taken: the room it joins and a token for the agent's
/// browser to join it (audio through the SFU).
#[derive(Serialize, ToSchema)]
pub struct CallJoin {
    /// The call record.
    pub id: String,
    pub room_id: String,
    /// For `/v1/rtc` (the agent's identity, this room and conversation only).
    pub join_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub task_id: String,
    pub conversation_id: String,
    pub channel: String,
    pub queue: String,
    /// For a phone call: how to reach the caller.
    pub call: Option<CallJoin>,
}

/// Accept an offer: the conversation becomes the agent's. For a phone call,
/// the caller is put in a room the agent's browser joins with `call.join_token`.
#[utoipa::path(post, path = "/v1/reservations/{id}/accept", tag = "queues", operation_id = "acceptReservation",
    params(("id" = String, Path, description = "the reservation's id (from the `reservation` event)")),
    responses((status = 200, body = Accepted, description = "assigned to the caller"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation"),
        (status = 404, body = ErrorBody, description = "no such reservation for this agent"),
        (status = 409, body = ErrorBody, description = "the offer expired, was withdrawn, or was already accepted or rejected")),
    security(("bearer" = [])))]
pub async fn accept(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Accepted>> {
    let agent = agent_of(&p)?;
    let id = reservation_id(&id)?;
    let tenant = p.tenant_id();
    let a = s.queues.accept(tenant, &agent, id).await?;
    let task = s
        .store
        .get_routing_task(tenant, &a.task)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))?;
    let mut call = None;
    if let Some(call_id) = task.call_id.clone().filter(|_| task.channel == "voice") {
        let room = s
            .store
            .create_room(
                tenant,
                &task.conversation_id,
                s.config.rtc.max_participants_per_room as i64,
                false,
                &p.audit_actor(),
            )
            .await?;
        if !s.queues.call_answered(&task.id, &room.id) {
            return Err(ApiError::new(
                StatusCode::GONE,
                "caller_gone",
                "the caller hung up before the call could be joined",
            ));
        }
        let (name, region, key_id) = match &p {
            Principal::Token {
                name,
                region,
                token,
                ..
            } => (name.clone(), region.clone(), token.key_id.clone()),
            Principal::ApiKey { key_id, .. } => (None, None, Some(key_id.clone())),
        };
        let grants = Grants {
            conversations: vec![task.conversation_id.clone()],
            rooms: vec![room.id.clone()],
            contacts: vec![],
        };
        let role = match &p {
            Principal::Token { role, .. } => *role,
            Principal::ApiKey { .. } => Role::Agent,
        };
        let (join_token, _) = s.tokens.mint(
            tenant,
            &agent,
            role,
            grants,
            About {
                name,
                region,
                key_id,
            },
            Duration::from_secs(4 * 3600),
        );
        call = Some(CallJoin {
            id: call_id,
            room_id: room.id,
            join_token,
        });
    }
    Ok(Json(Accepted {
        task_id: a.task.to_string(),
        conversation_id: a.conversation_id.to_string(),
        channel: task.channel,
        queue: a.queue.to_string(),
        call,
    }))
}

/// Turn an offer down: it goes to the next agent.
#[utoipa::path(post, path = "/v1/reservations/{id}/reject", tag = "queues", operation_id = "rejectReservation",
    params(("id" = String, Path, description = "the reservation's id")),
    responses((status = 204, description = "rejected"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation"),
        (status = 404, body = ErrorBody, description = "no such pending reservation for this agent"),
        (status = 409, body = ErrorBody, description = "the offer is no longer pending")),
    security(("bearer" = [])))]
pub async fn reject(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let agent = agent_of(&p)?;
    s.queues
        .reject(p.tenant_id(), &agent, reservation_id(&id)?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub conversation_id: String,
    pub queue: String,
    /// `chat`, `sms`, `whatsapp`, `video` (a visit request) or `voice`.
    pub channel: String,
    /// Higher first (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Required of the agent on top of the queue's.
    #[serde(default)]
    pub skills: Vec<String>,
}

/// Route a conversation's work to a queue (a chat, an SMS thread, a video
/// visit request). One open task per conversation.
#[utoipa::path(post, path = "/v1/tasks", tag = "queues", operation_id = "createTask", request_body = NewTask,
    responses((status = 201, body = RoutingTask, description = "waiting in the queue"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "the credential may not change conversations"),
        (status = 404, body = ErrorBody, description = "no such conversation (or outside the credential's grants)"),
        (status = 409, body = ErrorBody, description = "the conversation already has an open task"),
        (status = 422, body = ErrorBody, description = "no such queue, or a bad channel, priority or skill")),
    security(("bearer" = [])))]
pub async fn create_task(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(req): Json<NewTask>,
) -> ApiResult<(StatusCode, Json<RoutingTask>)> {
    s.require(&p, Permission::ChangeConversationState, "tasks")
        .await?;
    s.require_conversation(&p, &req.conversation_id).await?;
    s.store
        .get_conversation(p.tenant_id(), &req.conversation_id)
        .await?;
    if !(-1000..=1000).contains(&req.priority) {
        return Err(ApiError::invalid("priority: -1000 to 1000"));
    }
    if req.skills.len() > 16 || req.skills.iter().any(|k| !continuum_store::valid_name(k)) {
        return Err(ApiError::invalid(
            "skills: at most 16 names of 1-64 letters, digits, `.`, `-` or `_`",
        ));
    }
    if req.channel == "voice" {
        return Err(ApiError::invalid(
            "channel: voice tasks come from calls (the IVR's queue step); use chat, sms, whatsapp or video",
        ));
    }
    let task = s
        .queues
        .enqueue(
            p.tenant_id(),
            NewRoutingTask {
                queue: req.queue,
                conversation_id: req.conversation_id,
                channel: req.channel,
                priority: req.priority,
                skills: req.skills,
                call_id: None,
                triage: None,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(task)))
}

#[derive(Serialize, ToSchema)]
pub struct TaskStatusView {
    #[serde(flatten)]
    pub task: RoutingTask,
    /// 1-based place in its queue while waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

/// A task and its place in line.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "queues", operation_id = "getTask",
    params(("id" = String, Path, description = "the task's id")),
    responses((status = 200, body = TaskStatusView, description = "the task"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 404, body = ErrorBody, description = "no such task (or its conversation is outside the credential's grants)")),
    security(("bearer" = [])))]
pub async fn get_task(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskStatusView>> {
    s.require(&p, Permission::ReadConversation, "tasks").await?;
    let task = s
        .store
        .get_routing_task(p.tenant_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))?;
    s.require_conversation(&p, &task.conversation_id)
        .await
        .map_err(|_| ApiError::not_found("task"))?;
    let position = s
        .queues
        .task_view(p.tenant_id(), &id)
        .and_then(|v| v.position);
    Ok(Json(TaskStatusView { task, position }))
}

/// The agent is done with a task they hold (wrap-up starts).
#[utoipa::path(post, path = "/v1/tasks/{id}/complete", tag = "queues", operation_id = "completeTask",
    params(("id" = String, Path, description = "the task's id")),
    responses((status = 204, description = "completed"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation"),
        (status = 404, body = ErrorBody, description = "no task of this agent's with that id")),
    security(("bearer" = [])))]
pub async fn complete_task(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let agent = agent_of(&p)?;
    s.queues.complete(p.tenant_id(), &agent, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub queue: String,
}

/// Move a task to another queue (the agent's own task, or any task with an
/// API key or admin token).
#[utoipa::path(post, path = "/v1/tasks/{id}/transfer", tag = "queues", operation_id = "transferTask", request_body = TransferRequest,
    params(("id" = String, Path, description = "the task's id")),
    responses((status = 204, description = "waiting in the other queue"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not a staff token granted every conversation"),
        (status = 404, body = ErrorBody, description = "no such open task (of this agent's)"),
        (status = 422, body = ErrorBody, description = "no such queue")),
    security(("bearer" = [])))]
pub async fn transfer_task(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<TransferRequest>,
) -> ApiResult<StatusCode> {
    let agent = match &p {
        Principal::ApiKey { .. } => None,
        Principal::Token {
            role: Role::Admin, ..
        } => None,
        _ => Some(agent_of(&p)?),
    };
    s.queues
        .transfer(p.tenant_id(), agent.as_deref(), &id, &req.queue)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct RoutingStats {
    /// Per queue: waiting, longest wait, reserved, assigned, and over the
    /// last 15 minutes answered, abandoned, overflowed, service level.
    #[schema(value_type = Vec<Object>)]
    pub queues: serde_json::Value,
    #[schema(value_type = Object)]
    pub agents_by_state: serde_json::Value,
    /// Each agent: id, display_name, state, tasks, idle and wrap-up times.
    #[schema(value_type = Vec<Object>)]
    pub agents: serde_json::Value,
    /// The last hour, a point every 30 s.
    pub history: Vec<HistoryPoint>,
}

async fn stats(s: &AppState, tenant: &str) -> RoutingStats {
    let (snap, history) = s.queues.snapshot(tenant);
    let names: std::collections::HashMap<String, String> = s
        .store
        .list_agents(tenant)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.id, a.display_name))
        .collect();
    let mut agents = serde_json::to_value(&snap.agents).unwrap_or_default();
    if let Some(list) = agents.as_array_mut() {
        for a in list {
            let name = a["id"].as_str().and_then(|id| names.get(id)).cloned();
            a["display_name"] = name.map_or(serde_json::Value::Null, Into::into);
        }
    }
    RoutingStats {
        queues: serde_json::to_value(&snap.queues).unwrap_or_default(),
        agents_by_state: serde_json::to_value(&snap.agents_by_state).unwrap_or_default(),
        agents,
        history,
    }
}

fn supervisor(p: &Principal) -> Result<(), ApiError> {
    match p {
        Principal::ApiKey { .. } => Ok(()),
        Principal::Token { role, .. } if role.is_staff() => Ok(()),
        _ => Err(ApiError::forbidden("only staff see the queues")),
    }
}

/// Queues and agents now, and the last hour (the supervisor's view).
#[utoipa::path(get, path = "/v1/routing/stats", tag = "queues", operation_id = "getRoutingStats",
    responses((status = 200, body = RoutingStats, description = "queues, agents, history"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not staff")),
    security(("bearer" = [])))]
pub async fn get_stats(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<RoutingStats>> {
    supervisor(&p)?;
    Ok(Json(stats(&s, p.tenant_id()).await))
}

/// The same, live: `event: stats` every two seconds.
#[utoipa::path(get, path = "/v1/routing/stream", tag = "queues", operation_id = "streamRoutingStats",
    responses((status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events: `event: stats` with the RoutingStats object, every 2 s"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not staff")),
    security(("bearer" = []), ("streamToken" = [])))]
pub async fn stream_stats(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    supervisor(&p)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(4);
    let mut stop = s.shutdown.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            if s.revocations.principal_revoked(&p) {
                return;
            }
            let Ok(ev) = SseEvent::default()
                .event("stats")
                .json_data(stats(&s, p.tenant_id()).await)
            else {
                continue;
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
