//! Store-and-forward attachments: uploads (streamed, sniffed, stripped,
//! sealed), audited downloads, and the clinician review queue.

use super::conversations::principal_actor;
use crate::attachments::{AttachmentError, Attachments};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use continuum_core::{Channel, Permission, Principal};
use continuum_store::{Attachment, AttachmentFilter, ReviewState};
use futures::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

fn service(s: &AppState) -> ApiResult<Arc<Attachments>> {
    s.attachments.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "attachments_disabled",
            "attachments are not available on this node",
        )
    })
}

impl From<AttachmentError> for ApiError {
    fn from(e: AttachmentError) -> Self {
        match e {
            AttachmentError::Ingest(i) => {
                let status =
                    StatusCode::from_u16(i.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
                if status.is_server_error() {
                    tracing::error!(error = %i, "attachment storage failed");
                    return ApiError::internal(
                        "the attachment could not be stored; it has been logged",
                    );
                }
                ApiError::new(status, i.code(), i.to_string())
            }
            AttachmentError::Store(s) => s.into(),
            AttachmentError::Fetch(m) => ApiError::new(StatusCode::BAD_GATEWAY, "media_fetch", m),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name as the sender knows it (kept sealed; never trusted for the type).
    pub filename: Option<String>,
}

/// Upload a file (a photo of a rash, a document) to the conversation. The
/// body is the file itself; its type is sniffed from the content.
#[utoipa::path(post, path = "/v1/conversations/{id}/attachments", tag = "attachments", operation_id = "uploadAttachment",
    params(("id" = String, Path, description = "the conversation's id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file, streamed (any declared type is ignored)"),
    responses((status = 201, body = Attachment, description = "stored sealed; the `attachment` event is on the timeline and it waits in the review queue"),
        (status = 400, body = ErrorBody, description = "empty, or the upload broke off (`attachment_truncated`): nothing was kept"),
        (status = 403, body = ErrorBody, description = "this credential may not add to the conversation"),
        (status = 404, body = ErrorBody, description = "no such conversation (or not in your grants)"),
        (status = 413, body = ErrorBody, description = "larger than `attachments.max_bytes` (`attachment_too_large`)"),
        (status = 415, body = ErrorBody, description = "a type not accepted, named as detected from the content (`attachment_type_not_allowed`)"),
        (status = 422, body = ErrorBody, description = "the file claims a type its content does not follow (`attachment_malformed`)")),
    security(("bearer" = [])))]
pub async fn upload(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    s.require(&p, Permission::AppendEvent, &format!("conversation/{id}"))
        .await?;
    s.require_conversation(&p, &id).await?;
    let a = service(&s)?;
    if let Some(f) = &q.filename
        && (f.is_empty() || f.chars().count() > 255 || f.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "filename must be 1..=255 characters without control characters",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    a.limits
        .check_declared_len(declared)
        .map_err(AttachmentError::from)?;
    // The conversation must exist before anything is stored.
    s.store.get_conversation(p.tenant_id(), &id).await?;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let stored = a
        .store_stream(
            p.tenant_id(),
            &id,
            stream,
            q.filename,
            "upload",
            Channel::Async,
            None,
            principal_actor(&p),
            &p.audit_actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// The attachment's conversation, once the caller may read it (404 otherwise).
async fn reachable(s: &AppState, p: &Principal, id: &str) -> ApiResult<()> {
    s.require(p, Permission::ReadTimeline, &format!("attachment/{id}"))
        .await?;
    let conv = s
        .store
        .attachment_conversation(p.tenant_id(), id)
        .await
        .map_err(|_| ApiError::not_found("attachment"))?;
    if !p.may_access_conversation(&conv) {
        s.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "attachment.read",
            &format!("attachment/{id}"),
            "not in grants",
        )
        .await;
        return Err(ApiError::not_found("attachment"));
    }
    Ok(())
}

/// An attachment's record: type, size, hash, review state.
#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "attachments", operation_id = "getAttachment", params(("id" = String, Path, description = "the attachment's id")),
    responses((status = 200, body = Attachment, description = "the record"),
        (status = 403, body = ErrorBody, description = "this credential may not read timelines"),
        (status = 404, body = ErrorBody, description = "no such attachment (or its conversation is not in your grants)")),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Attachment>> {
    reachable(&s, &p, &id).await?;
    Ok(Json(
        s.store
            .get_attachment(p.tenant_id(), &id, "attachment.read", &p.audit_actor())
            .await?,
    ))
}

/// Download an attachment's content (audited). Served as a download, never
/// rendered inline by the browser.
#[utoipa::path(get, path = "/v1/attachments/{id}/content", tag = "attachments", operation_id = "downloadAttachment", params(("id" = String, Path, description = "the attachment's id")),
    responses((status = 200, content_type = "application/octet-stream", description = "the content, with its sniffed Content-Type and Content-Length"),
        (status = 403, body = ErrorBody, description = "this credential may not read timelines"),
        (status = 404, body = ErrorBody, description = "no such attachment (or its conversation is not in your grants)"),
        (status = 500, body = ErrorBody, description = "the stored content failed its integrity check (logged)")),
    security(("bearer" = [])))]
pub async fn download(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    reachable(&s, &p, &id).await?;
    let svc = service(&s)?;
    let a = s
        .store
        .get_attachment(p.tenant_id(), &id, "attachment.download", &p.audit_actor())
        .await?;
    let plain = svc.open_stream(p.tenant_id(), &a).await?;
    let name = a.filename.as_deref().unwrap_or("attachment");
    // Only a safe subset of the name goes into the header.
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, a.content_type.clone()),
            (header::CONTENT_LENGTH, a.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
        ],
        Body::from_stream(plain),
    )
        .into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `pending` (the review queue) or `reviewed`.
    pub review: Option<ReviewState>,
    /// Only this conversation's.
    pub conversation: Option<String>,
    /// The last id of the previous page.
    pub after: Option<String>,
    /// 1..=500, default 100.
    pub limit: Option<usize>,
}

/// The review queue: attachments waiting for a clinician (or a
/// conversation's attachments), oldest first.
#[utoipa::path(get, path = "/v1/attachments", tag = "attachments", operation_id = "listAttachments", params(ListQuery),
    responses((status = 200, body = Vec<Attachment>, description = "oldest first"),
        (status = 403, body = ErrorBody, description = "this credential may not list conversations"),
        (status = 404, body = ErrorBody, description = "the conversation filter names a conversation outside your grants"),
        (status = 422, body = ErrorBody, description = "a filter is invalid, or a token limited to some conversations listed without `conversation`")),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Attachment>>> {
    s.require(&p, Permission::ListConversations, "attachments")
        .await?;
    match &q.conversation {
        Some(c) => s.require_conversation(&p, c).await?,
        None if !p.sees_all_conversations() => {
            return Err(ApiError::invalid(
                "conversation: this token reaches only some conversations; name one",
            ));
        }
        None => {}
    }
    if let Some(a) = &q.after {
        super::id_cursor(a)?;
    }
    let limit = super::limit(q.limit, 100, 500)?;
    let list = s
        .store
        .list_attachments(
            p.tenant_id(),
            AttachmentFilter {
                conversation_id: q.conversation,
                review: q.review,
                after: q.after,
                limit,
            },
            &p.audit_actor(),
        )
        .await?;
    Ok(Json(list))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// What the clinician concluded (a staff-only note on the timeline).
    #[schema(max_length = 4000)]
    pub note: Option<String>,
}

/// Mark an attachment reviewed, with a note (staff only).
#[utoipa::path(post, path = "/v1/attachments/{id}/review", tag = "attachments", operation_id = "reviewAttachment", params(("id" = String, Path, description = "the attachment's id")), request_body = ReviewRequest,
    responses((status = 200, body = Attachment, description = "reviewed; a `note` event records it on the timeline"),
        (status = 403, body = ErrorBody, description = "only staff review attachments"),
        (status = 404, body = ErrorBody, description = "no such attachment (or its conversation is not in your grants)"),
        (status = 409, body = ErrorBody, description = "already reviewed"),
        (status = 422, body = ErrorBody, description = "the note is too long")),
    security(("bearer" = [])))]
pub async fn review(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Json(req): Json<ReviewRequest>,
) -> ApiResult<Json<Attachment>> {
    s.require(
        &p,
        Permission::WriteConversation,
        &format!("attachment/{id}"),
    )
    .await?;
    reachable(&s, &p, &id).await?;
    if let Some(n) = &req.note
        && (n.chars().count() > 4000 || n.contains('\0'))
    {
        return Err(ApiError::invalid(
            "note must be at most 4000 characters, without NUL",
        ));
    }
    let (a, _) = s
        .store
        .review_attachment(
            p.tenant_id(),
            &id,
            req.note,
            principal_actor(&p),
            &p.audit_actor(),
        )
        .await?;
    Ok(Json(a))
}
