//! Queues and agents' profiles (admin): what the routing engine works with.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::Permission;
use continuum_store::{Agent, AgentSpec, Queue, QueueSpec};

/// Create or replace a queue.
#[utoipa::path(put, path = "/v1/queues/{name}", tag = "queues", operation_id = "putQueue", request_body = QueueSpec,
    params(("name" = String, Path, description = "the queue's name (letters, digits, `.`, `-`, `_`); conversations and IVR flows name it")),
    responses((status = 201, body = Queue, description = "created"), (status = 200, body = Queue, description = "replaced"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 422, body = ErrorBody, description = "a setting out of range (the message names it)")),
    security(("bearer" = [])))]
pub async fn put_queue(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    Json(spec): Json<QueueSpec>,
) -> ApiResult<(StatusCode, Json<Queue>)> {
    s.require(&p, Permission::ManageRouting, "queues").await?;
    let (queue, created) = s
        .store
        .put_queue(p.tenant_id(), &name, &spec, &p.audit_actor())
        .await?;
    s.queues.queue_changed(p.tenant_id(), &queue);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(queue)))
}

/// The tenant's queues.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", operation_id = "listQueues",
    responses((status = 200, body = Vec<Queue>, description = "by name"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "a patient token")),
    security(("bearer" = [])))]
pub async fn list_queues(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Vec<Queue>>> {
    s.require(&p, Permission::ListConversations, "queues")
        .await?;
    Ok(Json(s.store.list_queues(p.tenant_id()).await?))
}

/// One queue.
#[utoipa::path(get, path = "/v1/queues/{name}", tag = "queues", operation_id = "getQueue",
    params(("name" = String, Path, description = "the queue's name")),
    responses((status = 200, body = Queue, description = "the queue"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "a patient token"),
        (status = 404, body = ErrorBody, description = "no such queue")),
    security(("bearer" = [])))]
pub async fn get_queue(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<Queue>> {
    s.require(&p, Permission::ListConversations, "queues")
        .await?;
    s.store
        .get_queue(p.tenant_id(), &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("queue"))
}

/// Delete a queue (refused while work waits in it).
#[utoipa::path(delete, path = "/v1/queues/{name}", tag = "queues", operation_id = "deleteQueue",
    params(("name" = String, Path, description = "the queue's name")),
    responses((status = 204, description = "deleted"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody, description = "no such queue"),
        (status = 409, body = ErrorBody, description = "tasks are still open in it")),
    security(("bearer" = [])))]
pub async fn delete_queue(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageRouting, "queues").await?;
    s.store
        .delete_queue(p.tenant_id(), &name, &p.audit_actor())
        .await?;
    s.queues.queue_removed(p.tenant_id(), &name);
    Ok(StatusCode::NO_CONTENT)
}

/// Create or replace an agent's profile: a staff identity's skills and
/// capacity per channel.
#[utoipa::path(put, path = "/v1/agents/{id}", tag = "queues", operation_id = "putAgent", request_body = AgentSpec,
    params(("id" = String, Path, description = "the staff identity (the `subject` of their tokens)")),
    responses((status = 201, body = Agent, description = "created"), (status = 200, body = Agent, description = "replaced"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 422, body = ErrorBody, description = "a setting out of range (the message names it)")),
    security(("bearer" = [])))]
pub async fn put_agent(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(spec): Json<AgentSpec>,
) -> ApiResult<(StatusCode, Json<Agent>)> {
    s.require(&p, Permission::ManageRouting, "agents").await?;
    let (agent, created) = s
        .store
        .put_agent(p.tenant_id(), &id, &spec, &p.audit_actor())
        .await?;
    s.queues.agent_changed(p.tenant_id(), &agent);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(agent)))
}

/// The tenant's agents' profiles.
#[utoipa::path(get, path = "/v1/agents", tag = "queues", operation_id = "listAgents",
    responses((status = 200, body = Vec<Agent>, description = "by id"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin")),
    security(("bearer" = [])))]
pub async fn list_agents(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Vec<Agent>>> {
    s.require(&p, Permission::ManageRouting, "agents").await?;
    Ok(Json(s.store.list_agents(p.tenant_id()).await?))
}

/// Remove an agent's profile (they are signed out of the queues).
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "queues", operation_id = "deleteAgent",
    params(("id" = String, Path, description = "the staff identity")),
    responses((status = 204, description = "deleted"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 404, body = ErrorBody, description = "no such agent")),
    security(("bearer" = [])))]
pub async fn delete_agent(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.require(&p, Permission::ManageRouting, "agents").await?;
    s.store
        .delete_agent(p.tenant_id(), &id, &p.audit_actor())
        .await?;
    s.queues.agent_removed(p.tenant_id(), &id);
    Ok(StatusCode::NO_CONTENT)
}
