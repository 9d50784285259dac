//! Who am I, and the staff inbox: conversations by state and queue with
//! unread and waiting-time indicators, as a page and live (SSE).

use crate::auth::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use continuum_core::{ConversationState, Permission, Principal, Role};
use continuum_store::{AuditEntry, ConversationFilter, InboxItem, InboxPage, Outcome};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

/// The caller, as the console needs it.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub tenant_id: String,
    /// The token's identity (a staff id), or `api_key:<id>`.
    pub subject: String,
    /// `admin` for API keys.
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether list views show every conversation of the tenant.
    pub sees_all_conversations: bool,
    /// The caller's agent profile, when they work queues.
    pub agent: Option<continuum_store::Agent>,
}

/// Who is calling: identity, role and agent profile.
#[utoipa::path(get, path = "/v1/me", tag = "console", operation_id = "getMe",
    responses((status = 200, body = Me, description = "the caller"),
        (status = 401, body = ErrorBody, description = "no or a bad credential")),
    security(("bearer" = [])))]
pub async fn me(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<Me>> {
    let (subject, role, name) = match &p {
        Principal::ApiKey { key_id, .. } => (format!("api_key:{key_id}"), Role::Admin, None),
        Principal::Token {
            identity,
            role,
            name,
            ..
        } => (identity.clone(), *role, name.clone()),
    };
    let agent = match &p {
        Principal::Token { identity, .. } => s.store.get_agent(p.tenant_id(), identity).await?,
        Principal::ApiKey { .. } => None,
    };
    Ok(Json(Me {
        tenant_id: p.tenant_id().to_owned(),
        sees_all_conversations: p.sees_all_conversations(),
        subject,
        role,
        name,
        agent,
    }))
}

#[derive(Deserialize, IntoParams, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    pub state: Option<ConversationState>,
    /// Only conversations in this queue.
    #[param(max_length = 64)]
    pub queue: Option<String>,
    /// `me` for the caller's own, or a staff identity.
    #[param(max_length = 128)]
    pub assignee: Option<String>,
    /// `next_cursor` of the previous page, unchanged.
    pub cursor: Option<String>,
    /// Page size, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The stream's EventSource token (read by the authentication layer).
    #[serde(default, rename = "access_token")]
    #[param(ignore)]
    pub _access_token: Option<String>,
}

fn reader(p: &Principal) -> String {
    match p {
        Principal::Token { identity, .. } => identity.clone(),
        Principal::ApiKey { key_id, .. } => format!("api_key:{key_id}"),
    }
}

fn assignee(p: &Principal, q: &InboxQuery) -> Option<String> {
    match q.assignee.as_deref() {
        Some("me") => Some(reader(p)),
        other => other.map(str::to_owned),
    }
}

/// The inbox: conversations (most recently changed first) with the
/// patient's name, the last event's kind and channel (not its content),
/// unread patient events since the caller's read receipt, how long it has
/// waited, and its routing task.
#[utoipa::path(get, path = "/v1/inbox", tag = "console", operation_id = "getInbox", params(InboxQuery),
    responses((status = 200, body = InboxPage, description = "a page of the inbox"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "the credential may not list conversations"),
        (status = 422, body = ErrorBody, description = "limit out of range, or a cursor this endpoint did not hand out")),
    security(("bearer" = [])))]
pub async fn inbox(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<InboxQuery>,
) -> ApiResult<Json<InboxPage>> {
    s.require(&p, Permission::ListConversations, "conversations")
        .await?;
    let only = match &p {
        Principal::Token { grants, .. } if !p.sees_all_conversations() => {
            Some(grants.conversations.clone())
        }
        _ => None,
    };
    let filter = ConversationFilter {
        state: q.state,
        assignee: assignee(&p, &q),
        queue: q.queue.clone(),
        only,
        cursor: q.cursor.clone(),
        limit: super::limit(q.limit, 100, 500)?,
        ..Default::default()
    };
    let page = s.store.inbox(p.tenant_id(), filter, &reader(&p)).await?;
    // Patients' names: a PHI read.
    let entry = AuditEntry::new(p.audit_actor(), "inbox.list", "conversations", Outcome::Ok)
        .with_detail(serde_json::json!({ "count": page.items.len() }));
    s.store.audit(p.tenant_id(), entry).await?;
    Ok(Json(page))
}

/// How long changes to one conversation are gathered into one update.
const COALESCE: Duration = Duration::from_millis(200);

/// The inbox, live: `event: conversation` with an inbox row whenever one of
/// the caller's conversations changes (new event, state, queue, task),
/// filtered like `GET /v1/inbox`; `event: resync` when updates were missed
/// (reload the page).
#[utoipa::path(get, path = "/v1/inbox/stream", tag = "console", operation_id = "streamInbox", params(InboxQuery),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events: `event: conversation`, `data: <InboxItem JSON>`; `event: resync` (`{}`) after missed updates"),
        (status = 401, body = ErrorBody, description = "no or a bad credential"),
        (status = 403, body = ErrorBody, description = "the credential may not list conversations")),
    security(("bearer" = []), ("streamToken" = [])))]
pub async fn stream(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<InboxQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    s.require(&p, Permission::ListConversations, "conversations")
        .await?;
    let entry = AuditEntry::new(
        p.audit_actor(),
        "inbox.stream",
        "conversations",
        Outcome::Ok,
    );
    s.store.audit(p.tenant_id(), entry).await?;
    let mut live = s.store.subscribe_cluster();
    let mut resyncs = s.store.resyncs();
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    let mut stop = s.shutdown.subscribe();
    let mut revoked = s.revocations.watch();
    let want_assignee = assignee(&p, &q);
    tokio::spawn(async move {
        let tenant = p.tenant_id().to_owned();
        let me = reader(&p);
        let mut pending: BTreeSet<String> = BTreeSet::new();
        let mut flush = tokio::time::interval(COALESCE);
        enum Wake {
            Event(Result<std::sync::Arc<continuum_store::Event>, RecvError>),
            Flush,
            Revoked,
            Stop,
        }
        loop {
            let wake = tokio::select! {
                _ = tx.closed() => Wake::Stop,
                _ = stop.wait_for(|stopping| *stopping) => Wake::Stop,
                _ = revoked.changed() => Wake::Revoked,
                got = live.recv() => Wake::Event(got),
                // Live delivery may have missed events (the bus was away):
                // the same as falling behind.
                _ = resyncs.changed() => Wake::Event(Err(RecvError::Lagged(0))),
                _ = flush.tick() => Wake::Flush,
            };
            match wake {
                Wake::Stop => return,
                Wake::Revoked if s.revocations.principal_revoked(&p) => return,
                Wake::Revoked => {}
                Wake::Event(Ok(e)) => {
                    // Bounded: a flood of conversations waits for the next tick.
                    if e.tenant_id == tenant
                        && p.may_access_conversation(&e.conversation_id)
                        && pending.len() < 1_000
                    {
                        pending.insert(e.conversation_id.clone());
                    }
                }
                Wake::Event(Err(RecvError::Lagged(_))) => {
                    pending.clear();
                    let ev = SseEvent::default().event("resync").data("{}");
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Wake::Event(Err(RecvError::Closed)) => return,
                Wake::Flush => {
                    for id in std::mem::take(&mut pending) {
                        let item = match s.store.inbox_item(&tenant, &id, &me).await {
                            Ok(i) => i,
                            Err(e) => {
                                tracing::debug!(error = %e, "an inbox row could not be read");
                                continue;
                            }
                        };
                        if !matches(&item, &q, want_assignee.as_deref()) {
                            continue;
                        }
                        let Ok(ev) = SseEvent::default().event("conversation").json_data(&item)
                        else {
                            continue;
                        };
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Whether a changed row belongs to the stream's filter. A row that left
/// the filter (e.g. assigned away) is still sent once when the state filter
/// is absent, so the console can move it.
fn matches(item: &InboxItem, q: &InboxQuery, assignee: Option<&str>) -> bool {
    q.state.is_none_or(|s| s == item.state)
        && q.queue
            .as_deref()
            .is_none_or(|w| item.queue.as_deref() == Some(w))
        && assignee.is_none_or(|a| item.assignee.as_deref() == Some(a))
}
