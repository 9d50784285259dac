//! Conversations and their lifecycle.

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use continuum_core::{Actor, ActorType, ConversationState, Permission, Principal, Transition};
use continuum_store::{
    AuditEntry, Conversation, ConversationFilter, ConversationList, NewConversation, Outcome,
    Timestamp, TransitionParams,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

/// Open a conversation with a patient.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", operation_id = "createConversation", request_body = NewConversation,
    responses((status = 201, body = Conversation, description = "the conversation, `open`"),
        (status = 404, body = ErrorBody, description = "no such contact in this tenant, or outside the credential's reach")),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    Json(new): Json<NewConversation>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    s.require(&p, Permission::WriteConversation, "conversations")
        .await?;
    s.require_contact(&p, &new.contact_id).await?;
    let object = format!("contact/{}", new.contact_id);
    match s
        .store
        .create_conversation(p.tenant_id(), new, &p.audit_actor())
        .await
    {
        Ok(c) => Ok((StatusCode::CREATED, Json(c))),
        Err(e) => Err(s.audit_failure(&p, "conversation.create", &object, e).await),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<ConversationState>,
    /// Only the conversations of this patient.
    pub contact_id: Option<String>,
    /// Only those assigned to this staff identity.
    #[param(max_length = 128)]
    pub assignee: Option<String>,
    /// RFC 3339; only conversations updated at or after this time.
    #[param(format = DateTime)]
    pub updated_since: Option<String>,
    /// `next_cursor` of the previous page, unchanged.
    pub cursor: Option<String>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

/// List conversations, most recently updated first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", operation_id = "listConversations", params(ListQuery),
    responses((status = 200, body = ConversationList, description = "a page of conversations, most recently updated first"),
        (status = 422, body = ErrorBody, description = "limit out of range, updated_since not RFC 3339, or cursor not one this endpoint handed out")),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ConversationList>> {
    s.require(&p, Permission::ListConversations, "conversations")
        .await?;
    let state = q.state;
    let updated_since = q
        .updated_since
        .map(|v| {
            Timestamp::parse_rfc3339(&v).ok_or_else(|| {
                ApiError::invalid(format!("updated_since `{v}` is not an RFC 3339 time"))
            })
        })
        .transpose()?;
    let only = match &p {
        Principal::Token { grants, .. } if !p.sees_all_conversations() => {
            Some(grants.conversations.clone())
        }
        _ => None,
    };
    let filter = ConversationFilter {
        state,
        contact_id: q.contact_id,
        assignee: q.assignee,
        queue: None,
        updated_since,
        only,
        cursor: q.cursor,
        limit: super::limit(q.limit, 50, 200)?,
    };
    let list = s.store.list_conversations(p.tenant_id(), filter).await?;
    // Conversations carry a sealed subject: listing them is a PHI read.
    let entry = AuditEntry::new(
        p.audit_actor(),
        "conversation.list",
        "conversations",
        Outcome::Ok,
    )
    .with_detail(serde_json::json!({ "count": list.conversations.len() }));
    s.store.audit(p.tenant_id(), entry).await?;
    Ok(Json(list))
}

/// Get one conversation.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations", operation_id = "getConversation", params(("id" = String, Path, description = "the conversation's id")),
    responses((status = 200, body = Conversation, description = "the conversation")), security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Conversation>> {
    s.require(
        &p,
        Permission::ReadConversation,
        &format!("conversation/{id}"),
    )
    .await?;
    s.require_conversation(&p, &id).await?;
    let object = format!("conversation/{id}");
    match s.store.get_conversation(p.tenant_id(), &id).await {
        Ok(c) => {
            let entry = AuditEntry::new(p.audit_actor(), "conversation.read", &object, Outcome::Ok);
            s.store.audit(p.tenant_id(), entry).await?;
            Ok(Json(c))
        }
        Err(e) => Err(s.audit_failure(&p, "conversation.read", &object, e).await),
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    /// Required for assign: the staff identity taking the conversation.
    #[schema(pattern = r"^[A-Za-z0-9._:@+-]{1,128}$")]
    pub assignee: Option<String>,
    /// Required for queue; optional with assign. A code, never PHI.
    #[schema(pattern = r"^[A-Za-z0-9._:/-]{1,64}$")]
    pub queue: Option<String>,
    /// Why, recorded on the timeline (sealed).
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// The engine's actor for a principal acting directly (not through a channel).
pub fn principal_actor(p: &Principal) -> Actor {
    match p {
        Principal::ApiKey { key_id, .. } => Actor {
            actor_type: ActorType::System,
            id: Some(format!("api_key:{key_id}")),
        },
        Principal::Token { identity, role, .. } => Actor {
            actor_type: if role.is_staff() {
                ActorType::Staff
            } else {
                ActorType::Patient
            },
            id: Some(identity.clone()),
        },
    }
}

async fn transition(
    s: AppState,
    p: Principal,
    id: String,
    t: Transition,
    body: Bytes,
) -> ApiResult<Json<Conversation>> {
    let object = format!("conversation/{id}");
    s.require(&p, Permission::ChangeConversationState, &object)
        .await?;
    s.require_conversation(&p, &id).await?;
    let req: TransitionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TransitionRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?
    };
    if t == Transition::Enqueue && req.queue.is_none() {
        return Err(ApiError::invalid("queue needs a `queue` name"));
    }
    if req.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::invalid("reason must be at most 500 bytes"));
    }
    if req.reason.as_ref().is_some_and(|r| r.contains('\0')) {
        return Err(ApiError::invalid(
            "reason must not contain NUL characters (U+0000)",
        ));
    }
    if let Some(a) = &req.assignee {
        super::check_identity("assignee", a)?;
    }
    let params = TransitionParams {
        assignee: req.assignee,
        queue: req.queue,
        reason: req.reason,
    };
    match s
        .store
        .transition(
            p.tenant_id(),
            &id,
            t,
            params,
            principal_actor(&p),
            &p.audit_actor(),
        )
        .await
    {
        Ok((c, _)) => Ok(Json(c)),
        Err(e) => Err(s
            .audit_failure(&p, &format!("conversation.{}", t.as_str()), &object, e)
            .await),
    }
}

/// Put the conversation in a queue (`open|queued → queued`).
#[utoipa::path(post, path = "/v1/conversations/{id}/queue", tag = "conversations", operation_id = "enqueueConversation", params(("id" = String, Path, description = "the conversation's id")), request_body = TransitionRequest,
    responses((status = 200, body = Conversation, description = "the conversation, queued"),
        (status = 409, body = ErrorBody, description = "not allowed from the conversation's current state (the message says why)")),
    security(("bearer" = [])))]
pub async fn enqueue(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Conversation>> {
    transition(s, p, id, Transition::Enqueue, body).await
}

/// Assign to staff (`open|queued|active → active`).
#[utoipa::path(post, path = "/v1/conversations/{id}/assign", tag = "conversations", operation_id = "assignConversation", params(("id" = String, Path, description = "the conversation's id")), request_body = TransitionRequest,
    responses((status = 200, body = Conversation, description = "the conversation, assigned and `active`"),
        (status = 409, body = ErrorBody, description = "not allowed from the conversation's current state (the message says why)")),
    security(("bearer" = [])))]
pub async fn assign(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Conversation>> {
    transition(s, p, id, Transition::Assign, body).await
}

/// Close (`open|queued|active → closed`).
#[utoipa::path(post, path = "/v1/conversations/{id}/close", tag = "conversations", operation_id = "closeConversation", params(("id" = String, Path, description = "the conversation's id")), request_body = TransitionRequest,
    responses((status = 200, body = Conversation, description = "the conversation, closed"),
        (status = 409, body = ErrorBody, description = "not allowed from the conversation's current state (the message says why)")),
    security(("bearer" = [])))]
pub async fn close(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Conversation>> {
    transition(s, p, id, Transition::Close, body).await
}

/// Reopen (`closed → open`). New inbound patient contact does this by itself.
#[utoipa::path(post, path = "/v1/conversations/{id}/reopen", tag = "conversations", operation_id = "reopenConversation", params(("id" = String, Path, description = "the conversation's id")), request_body = TransitionRequest,
    responses((status = 200, body = Conversation, description = "the conversation, open again"),
        (status = 409, body = ErrorBody, description = "not allowed from the conversation's current state (the message says why)")),
    security(("bearer" = [])))]
pub async fn reopen(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Conversation>> {
    transition(s, p, id, Transition::Reopen, body).await
}
