//! The timeline: append, page, stream live, and the context snapshot.

use super::conversations::principal_actor;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use continuum_core::{Actor, Channel, EventKind, NewEvent, Permission, Principal, Role};
use continuum_store::{Context, Event};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendEventRequest {
    pub channel: Channel,
    /// What happened; the engine's own kinds (`state.changed`, `assigned`) are refused.
    #[schema(schema_with = super::doc::appendable_event_kinds)]
    pub kind: EventKind,
    /// Who caused it. API-key callers say who (default `system`); token holders
    /// are the actor themselves and may omit it.
    pub actor: Option<Actor>,
    /// Message text or other free text; sealed at rest.
    pub body: Option<String>,
    /// Structured details (session ids, delivery status, triage level…); sealed at rest.
    #[serde(default)]
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// Retrying with the same key returns the original event instead of a duplicate.
    /// The `Idempotency-Key` header works too.
    pub idempotency_key: Option<String>,
}

/// The request's idempotency key: the body's field or the `Idempotency-Key`
/// header (both only if they agree).
pub(crate) fn idempotency_key(
    in_body: Option<String>,
    headers: &HeaderMap,
) -> ApiResult<Option<String>> {
    let header_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match (in_body, header_key) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            "idempotency_key and the Idempotency-Key header differ",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// Kinds a patient may write about themselves.
fn patient_may_write(kind: EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        Message | Attachment | CallbackRequested | ConsentGranted | ConsentRevoked | OptOut | OptIn
    )
}

/// What a reader may see: patients never see internal notes.
fn visible_to(p: &Principal, e: &Event) -> bool {
    !(matches!(
        p,
        Principal::Token {
            role: Role::Patient,
            ..
        }
    ) && e.kind == EventKind::Note)
}

fn resolve_actor(p: &Principal, requested: Option<Actor>, kind: EventKind) -> ApiResult<Actor> {
    match p {
        Principal::ApiKey { .. } => Ok(requested.unwrap_or_else(Actor::system)),
        Principal::Token { role, .. } => {
            let me = principal_actor(p);
            if let Some(r) = requested
                && r != me
            {
                return Err(ApiError::invalid(format!(
                    "actor is taken from your access token ({}:{}); omit it",
                    me.actor_type.as_str(),
                    me.id.as_deref().unwrap_or("")
                )));
            }
            if *role == Role::Patient && !patient_may_write(kind) {
                return Err(ApiError::forbidden(format!(
                    "patients may not append `{kind}` events"
                )));
            }
            Ok(me)
        }
    }
}

/// Append an event to the conversation's timeline (any channel).
#[utoipa::path(post, path = "/v1/conversations/{id}/events", tag = "timeline", operation_id = "appendEvent", params(("id" = String, Path, description = "the conversation's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "same as `idempotency_key` in the body")),
    request_body = AppendEventRequest,
    responses(
        (status = 201, body = Event, description = "appended"),
        (status = 200, body = Event, description = "the idempotency key matched an earlier append of the same request; that event is returned"),
        (status = 409, body = ErrorBody, description = "the idempotency key was used for a different request (`idempotency_key_reused`)")),
    security(("bearer" = [])))]
pub async fn append(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<AppendEventRequest>,
) -> ApiResult<(StatusCode, Json<Event>)> {
    let object = format!("conversation/{id}");
    s.require(&p, Permission::AppendEvent, &object).await?;
    s.require_conversation(&p, &id).await?;
    let idempotency_key = idempotency_key(req.idempotency_key, &headers)?;
    let actor = resolve_actor(&p, req.actor, req.kind)?;
    let ev = NewEvent {
        channel: req.channel,
        kind: req.kind,
        actor,
        body: req.body,
        meta: req.meta,
        idempotency_key,
    };
    match s
        .store
        .append_event(p.tenant_id(), &id, ev, &p.audit_actor())
        .await
    {
        Ok(a) => Ok((
            if a.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(a.event),
        )),
        Err(e) => Err(s.audit_failure(&p, "event.append", &object, e).await),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Return events with `seq` greater than this (default 0: from the start).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `after` for the next page; absent when this page reached the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// Page through the timeline in `seq` order.
#[utoipa::path(get, path = "/v1/conversations/{id}/events", tag = "timeline", operation_id = "listEvents", params(("id" = String, Path, description = "the conversation's id"), PageQuery),
    responses((status = 200, body = EventPage, description = "events in `seq` order"),
        (status = 422, body = ErrorBody, description = "limit out of range")),
    security(("bearer" = [])))]
pub async fn page(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<EventPage>> {
    s.require(&p, Permission::ReadTimeline, &format!("conversation/{id}"))
        .await?;
    s.require_conversation(&p, &id).await?;
    let limit = super::limit(q.limit, 50, 500)?;
    let after = q.after.unwrap_or(0).max(0);
    let mut events = s
        .store
        .list_events(p.tenant_id(), &id, after, limit, &p.audit_actor())
        .await?;
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    events.retain(|e| visible_to(&p, e));
    Ok(Json(EventPage { events, next_after }))
}

#[derive(Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Resume after this `seq` (the `Last-Event-ID` header does the same).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// Server-sent events: every new timeline event as it is committed, after
/// replaying those since `after`. Event ids are `seq`s, so a reconnecting
/// EventSource resumes exactly where it left off, with no gaps or repeats.
#[utoipa::path(get, path = "/v1/conversations/{id}/events/stream", tag = "timeline", operation_id = "streamEvents", params(("id" = String, Path, description = "the conversation's id"), StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "resume after this `seq` (EventSource sends it on reconnect)")),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "Server-sent events: `event: timeline`, `id: <seq>`, `data: <Event JSON>`; replays after `after`, then follows live. Also, live only and without an id (not timeline events): `event: receipt` (someone's chat markers moved: `{conversation, identity, role, delivered_seq, read_seq, updated_at}`) and `event: typing` (`{conversation, identity, name, role, active, expires_in}`)")),
    security(("bearer" = []), ("streamToken" = [])))]
pub async fn stream(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    s.require(&p, Permission::ReadTimeline, &format!("conversation/{id}"))
        .await?;
    s.require_conversation(&p, &id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = last_event_id.or(q.after).unwrap_or(0).max(0);
    s.store
        .open_stream(p.tenant_id(), &id, after, &p.audit_actor())
        .await?;

    // Subscribe before reading the backlog so nothing committed in between is
    // missed; the cluster feed has what every node commits.
    let mut live = s.store.subscribe_cluster();
    let mut resyncs = s.store.resyncs();
    // Chat receipts and typing: not timeline events, announced live only.
    let mut chat = s.chat.subscribe(p.tenant_id(), &id);
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    let tenant = p.tenant_id().to_owned();
    let mut stop = s.shutdown.subscribe();
    // A stream lives only as long as its credential: revoking the token (or
    // the API key behind it) ends it.
    let mut revoked = s.revocations.watch();
    tokio::spawn(async move {
        let mut last = after;
        let send = |e: &Event| {
            SseEvent::default()
                .id(e.seq.to_string())
                .event("timeline")
                .json_data(e)
                .ok()
        };
        // Replays from the store everything after `last`.
        macro_rules! catch_up {
            () => {
                loop {
                    let page = match s.store.stream_page(&tenant, &id, last, 500).await {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "live stream could not read the timeline");
                            return;
                        }
                    };
                    let n = page.len();
                    for e in page {
                        last = e.seq;
                        if visible_to(&p, &e)
                            && let Some(ev) = send(&e)
                            && tx.send(ev).await.is_err()
                        {
                            return;
                        }
                    }
                    if n < 500 {
                        break;
                    }
                }
            };
        }
        catch_up!();
        loop {
            let got = tokio::select! {
                _ = tx.closed() => return,
                _ = stop.wait_for(|stopping| *stopping) => return,
                _ = revoked.changed() => {
                    if s.revocations.principal_revoked(&p) {
                        return;
                    }
                    continue;
                }
                notice = chat.recv() => {
                    use crate::chat::Notice;
                    // Missed ones (a slow reader) are gone: GET …/chat/receipts has them all.
                    let Ok(m) = notice else { continue };
                    let ev = match &m.notice {
                        Notice::Receipt(r) => SseEvent::default().event("receipt").json_data(r),
                        Notice::Typing(t) => SseEvent::default().event("typing").json_data(t),
                    };
                    match ev {
                        Ok(ev) => Err(ev),
                        Err(_) => continue,
                    }
                }
                got = live.recv() => Ok(got),
                // Live delivery may have missed events (the bus was away):
                // read the store from where this stream is.
                _ = resyncs.changed() => Ok(Err(RecvError::Lagged(0))),
            };
            // A chat notice (not a timeline event): passed on as it is.
            let got = match got {
                Ok(got) => got,
                Err(ev) => {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match got {
                Ok(e) if e.tenant_id == tenant && e.conversation_id == id => {
                    if e.seq <= last {
                        continue;
                    }
                    if e.seq > last + 1 {
                        catch_up!();
                        continue;
                    }
                    last = e.seq;
                    if visible_to(&p, &e)
                        && let Some(ev) = send(&e)
                        && tx.send(ev).await.is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => catch_up!(),
                Err(RecvError::Closed) => return,
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContextQuery {
    /// How many recent events to include (default `context.recent_events`,
    /// at most `context.max_recent_events`, 200 by default).
    #[param(minimum = 0, maximum = 200)]
    pub events: Option<usize>,
}

/// Everything the next clinician or agent needs: patient, state, pending items,
/// open calls, last triage, the last N events across every channel.
#[utoipa::path(get, path = "/v1/conversations/{id}/context", tag = "timeline", operation_id = "getContext", params(("id" = String, Path, description = "the conversation's id"), ContextQuery),
    responses((status = 200, body = Context, description = "patient, state, pending items, open sessions, last triage and recent events"),
        (status = 422, body = ErrorBody, description = "events above context.max_recent_events")),
    security(("bearer" = [])))]
pub async fn context(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<ContextQuery>,
) -> ApiResult<Json<Context>> {
    s.require(&p, Permission::ReadContext, &format!("conversation/{id}"))
        .await?;
    s.require_conversation(&p, &id).await?;
    let cfg = &s.config.context;
    let n = q.events.unwrap_or(cfg.recent_events);
    if n > cfg.max_recent_events {
        return Err(ApiError::invalid(format!(
            "events must be at most {} (context.max_recent_events)",
            cfg.max_recent_events
        )));
    }
    Ok(Json(
        s.store
            .context(p.tenant_id(), &id, n, &p.audit_actor())
            .await?,
    ))
}
