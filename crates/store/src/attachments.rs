//! Store-and-forward attachments: the record of each sealed blob (its bytes
//! live in the blob store, `continuum-blob`), the `attachment` event on the
//! timeline, and the clinician review queue. SQL for the table lives here.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::events::{Appended, append_in_tx, publish};
use crate::time_fmt::Timestamp;
use crate::{Store, TenantKeys, now_micros};
use continuum_core::{Actor, Channel, EventKind, NewEvent};
use serde::{Deserialize, Serialize};

/// Where a clinician is with an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Pending,
    Reviewed,
}

impl ReviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Pending => "pending",
            ReviewState::Reviewed => "reviewed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ReviewState::Pending),
            "reviewed" => Some(ReviewState::Reviewed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    pub id: String,
    pub conversation_id: String,
    /// The `attachment` event on the timeline.
    pub event_seq: i64,
    /// Sniffed from the content (never taken from the upload's headers).
    pub content_type: String,
    pub size: i64,
    /// SHA-256 of the content as stored (after metadata stripping), hex.
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// EXIF/GPS and other metadata were removed from the image.
    pub metadata_stripped: bool,
    /// `upload`, `mms` or `whatsapp`.
    pub source: String,
    pub uploaded_by: Actor,
    pub review: ReviewState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_note: Option<String>,
    pub created_at: Timestamp,
    /// Where the bytes are in the blob store (not shown).
    #[serde(skip)]
    pub blob_key: String,
}

/// A stored blob to record.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub id: String,
    pub blob_key: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub filename: Option<String>,
    pub metadata_stripped: bool,
    pub source: String,
    pub channel: Channel,
    pub actor: Actor,
    /// Text that came with it (an MMS body, a caption).
    pub caption: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    filename: Option<String>,
    uploaded_by: Actor,
    review_note: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, conversation_id, event_seq, blob_key, content_type, size, sha256, stripped, source, data, review_state, reviewed_by, reviewed_at, created_at";

fn aad(tenant_id: &str, id: &str) -> String {
    format!("attachment:{tenant_id}:{id}")
}

fn row(keys: &TenantKeys, r: &crate::db::Row<'_>) -> Result<Attachment> {
    let id: String = r.get(0)?;
    let tenant_id: String = r.get(1)?;
    let sealed: Sealed = serde_json::from_slice(
        &keys
            .data
            .open(&r.get::<_, Vec<u8>>(10)?, aad(&tenant_id, &id).as_bytes())?,
    )
    .map_err(|e| StoreError::Integrity(format!("attachment {id}: {e}")))?;
    let review: String = r.get(11)?;
    Ok(Attachment {
        conversation_id: r.get(2)?,
        event_seq: r.get(3)?,
        blob_key: r.get(4)?,
        content_type: r.get(5)?,
        size: r.get(6)?,
        sha256: r.get(7)?,
        metadata_stripped: r.get(8)?,
        source: r.get(9)?,
        filename: sealed.filename,
        uploaded_by: sealed.uploaded_by,
        review_note: sealed.review_note,
        review: ReviewState::parse(&review)
            .ok_or_else(|| StoreError::Integrity(format!("attachment {id}: review `{review}`")))?,
        reviewed_by: r.get(12)?,
        reviewed_at: r.get::<_, Option<i64>>(13)?.map(Timestamp),
        created_at: Timestamp(r.get(14)?),
        id,
    })
}

/// One attachment by id; inside a write, its row stays locked (PostgreSQL)
/// until the write commits (a review reads it to change it).
fn load(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<Attachment> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM attachments WHERE id = ?1 AND tenant_id = ?2{}",
        conn.row_lock()
    ))?
    .query_row(params![id, tenant_id], |r| Ok(row(keys, r)))
    .optional()?
    .ok_or(StoreError::NotFound("attachment"))?
}

/// Which attachments to list.
#[derive(Debug, Clone, Default)]
pub struct AttachmentFilter {
    pub conversation_id: Option<String>,
    pub review: Option<ReviewState>,
    /// Only ids after this one (the previous page's last).
    pub after: Option<String>,
    pub limit: usize,
}

impl Store {
    /// The key attachments of this tenant are sealed under (derived from its
    /// data key, so it never leaves the process and rotates with it).
    /// A tenant secret for `purpose`, derived from its key (never stored).
    pub async fn derived_secret(&self, tenant_id: &str, purpose: &str) -> Result<crate::SecretKey> {
        let (t, store, purpose) = (tenant_id.to_owned(), self.clone(), purpose.to_owned());
        self.read(move |c| Ok(store.keys_for(c, &t)?.data.derive(&purpose)))
            .await
    }

    pub async fn attachment_key(&self, tenant_id: &str) -> Result<crate::SecretKey> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        self.read(move |c| Ok(store.keys_for(c, &t)?.data.derive("attachments")))
            .await
    }

    /// Records a stored blob as an attachment of the conversation: the row
    /// and its `attachment` event in one transaction.
    pub async fn record_attachment(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        new: NewAttachment,
        audit_actor: &str,
    ) -> Result<(Attachment, Appended)> {
        let (t, conv, actor, store) = (
            tenant_id.to_owned(),
            conversation_id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let mut meta = serde_json::Map::new();
                meta.insert("attachment_id".into(), new.id.as_str().into());
                meta.insert("content_type".into(), new.content_type.as_str().into());
                meta.insert("size".into(), new.size.into());
                meta.insert("sha256".into(), new.sha256.as_str().into());
                meta.insert("source".into(), new.source.as_str().into());
                if let Some(f) = &new.filename {
                    meta.insert("filename".into(), f.as_str().into());
                }
                let ev = NewEvent {
                    channel: new.channel,
                    kind: EventKind::Attachment,
                    actor: new.actor.clone(),
                    body: new.caption.clone(),
                    meta,
                    idempotency_key: None,
                };
                let appended = append_in_tx(ctx, &keys, &t, &conv, &ev, &actor)?;
                let sealed = serde_json::to_vec(&Sealed {
                    filename: new.filename.clone(),
                    uploaded_by: new.actor.clone(),
                    review_note: None,
                })
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
                let now = now_micros();
                ctx.conn
                    .prepare_cached(&format!(
                        "INSERT INTO attachments ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', NULL, NULL, ?12)"
                    ))?
                    .execute(params![
                        new.id,
                        t,
                        conv,
                        appended.event.seq,
                        new.blob_key,
                        new.content_type,
                        new.size,
                        new.sha256,
                        new.metadata_stripped,
                        new.source,
                        keys.data.seal(&sealed, aad(&t, &new.id).as_bytes()),
                        now
                    ])?;
                ctx.audit(
                    &t,
                    &AuditEntry::new(&actor, "attachment.create", format!("attachment/{}", new.id), Outcome::Ok)
                        .with_detail(serde_json::json!({ "size": new.size, "sha256": new.sha256 })),
                )?;
                Ok((load(ctx.conn, &keys, &t, &new.id)?, appended))
            },
            move |(_, a): &(Attachment, Appended)| {
                publish(&live, &a.also_written);
                publish(&live, std::slice::from_ref(&a.event));
            },
        )
        .await
    }

    /// One attachment's record, audited as a PHI read (`action`:
    /// `attachment.read`, or `attachment.download` before its bytes go out).
    pub async fn get_attachment(
        &self,
        tenant_id: &str,
        id: &str,
        action: &'static str,
        audit_actor: &str,
    ) -> Result<Attachment> {
        let (t, aid, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        let entry = AuditEntry::new(audit_actor, action, format!("attachment/{id}"), Outcome::Ok);
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            load(c, &keys, &t, &aid)
        })
        .await
    }

    /// Which conversation an attachment belongs to (no PHI: for the grant
    /// check before the audited read).
    pub async fn attachment_conversation(&self, tenant_id: &str, id: &str) -> Result<String> {
        let (t, aid) = (tenant_id.to_owned(), id.to_owned());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT conversation_id FROM attachments WHERE id = ?1 AND tenant_id = ?2",
            )?
            .query_row(params![aid, t], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::NotFound("attachment"))
        })
        .await
    }

    /// The review queue (or a conversation's attachments), oldest first,
    /// audited as a PHI read.
    pub async fn list_attachments(
        &self,
        tenant_id: &str,
        filter: AttachmentFilter,
        audit_actor: &str,
    ) -> Result<Vec<Attachment>> {
        let (t, store) = (tenant_id.to_owned(), self.clone());
        let entry = AuditEntry::new(audit_actor, "attachment.list", "attachments", Outcome::Ok)
            .with_detail(serde_json::json!({
                "conversation": filter.conversation_id,
                "review": filter.review.map(ReviewState::as_str),
            }));
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            // (The casts type the parameters for PostgreSQL, which cannot
            // tell the type of a bare `?2 IS NULL`.)
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM attachments WHERE tenant_id = ?1
                   AND (CAST(?2 AS TEXT) IS NULL OR conversation_id = ?2)
                   AND (CAST(?3 AS TEXT) IS NULL OR review_state = ?3)
                   AND (CAST(?4 AS TEXT) IS NULL OR id > ?4)
                 ORDER BY id LIMIT ?5"
            ))?;
            let mut rows = stmt.query(params![
                t,
                filter.conversation_id,
                filter.review.map(ReviewState::as_str),
                filter.after,
                filter.limit.clamp(1, 500) as i64
            ])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                out.push(row(&keys, r)?);
            }
            Ok(out)
        })
        .await
    }

    /// Marks an attachment reviewed, with the clinician's note: the record,
    /// and a staff-only `note` event on the timeline, in one transaction.
    pub async fn review_attachment(
        &self,
        tenant_id: &str,
        id: &str,
        note: Option<String>,
        reviewer: Actor,
        audit_actor: &str,
    ) -> Result<(Attachment, Appended)> {
        let (t, aid, actor, store) = (
            tenant_id.to_owned(),
            id.to_owned(),
            audit_actor.to_owned(),
            self.clone(),
        );
        let live = self.0.live.clone();
        self.write_then(
            move |ctx| {
                let keys = store.keys_for(ctx.conn, &t)?;
                let current = load(ctx.conn, &keys, &t, &aid)?;
                if current.review == ReviewState::Reviewed {
                    return Err(StoreError::Conflict(format!(
                        "attachment {aid} was already reviewed by {}",
                        current.reviewed_by.as_deref().unwrap_or("someone")
                    )));
                }
                let who = reviewer.id.clone().unwrap_or_else(|| reviewer.actor_type.as_str().to_owned());
                let sealed = serde_json::to_vec(&Sealed {
                    filename: current.filename.clone(),
                    uploaded_by: current.uploaded_by.clone(),
                    review_note: note.clone(),
                })
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
                ctx.conn
                    .prepare_cached(
                        "UPDATE attachments SET review_state = 'reviewed', reviewed_by = ?3, reviewed_at = ?4, data = ?5
                         WHERE id = ?1 AND tenant_id = ?2",
                    )?
                    .execute(params![aid, t, who, now_micros(), keys.data.seal(&sealed, aad(&t, &aid).as_bytes())])?;
                let mut meta = serde_json::Map::new();
                meta.insert("attachment_id".into(), aid.as_str().into());
                meta.insert("review".into(), "reviewed".into());
                meta.insert("of_seq".into(), current.event_seq.into());
                let ev = NewEvent {
                    channel: Channel::Async,
                    kind: EventKind::Note,
                    actor: reviewer.clone(),
                    body: Some(note.clone().unwrap_or_else(|| "Reviewed.".into())),
                    meta,
                    idempotency_key: None,
                };
                let appended = append_in_tx(ctx, &keys, &t, &current.conversation_id, &ev, &actor)?;
                ctx.audit(&t, &AuditEntry::new(&actor, "attachment.review", format!("attachment/{aid}"), Outcome::Ok))?;
                Ok((load(ctx.conn, &keys, &t, &aid)?, appended))
            },
            move |(_, a): &(Attachment, Appended)| {
                publish(&live, &a.also_written);
                publish(&live, std::slice::from_ref(&a.event));
            },
        )
        .await
    }
}
