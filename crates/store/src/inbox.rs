//! The staff inbox: a page of conversations with what a nurse scans for —
//! the patient's name, the last thing that happened (kind and channel, not
//! its content), how many patient events they have not read, and how long
//! the conversation has waited. Reads only; the tables are the
//! conversations', contacts', events', receipts' and routing tasks' own.

use crate::contacts;
use crate::db::{OptionalExtension, params};
use crate::error::Result;
use crate::routing::open_task_in;
use crate::time_fmt::Timestamp;
use crate::{Conversation, ConversationFilter, Store, TenantKeys};
use continuum_core::ConversationState;
use serde::Serialize;

/// Unread counts stop here (the badge says `99+`).
pub const UNREAD_CAP: i64 = 99;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxItem {
    pub conversation_id: String,
    pub state: ConversationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    pub patient: InboxPatient,
    /// The conversation's subject (e.g. "Rash follow-up").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
    /// The last event a person would call news: a message, an attachment,
    /// a triage result, a callback request or a call (not bookkeeping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<LastEvent>,
    /// Patient events after the reader's read receipt (at most 99).
    pub unread: i64,
    /// Since when it waits for staff: its open routing task's creation, or
    /// for a queued conversation without one, its last change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<InboxTask>,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxPatient {
    pub id: String,
    pub display_name: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastEvent {
    pub seq: i64,
    pub kind: String,
    pub channel: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxTask {
    pub id: String,
    pub state: crate::TaskState,
    pub priority: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triage: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Store {
    /// A page of the inbox for `reader` (a staff identity: their read
    /// receipts make the unread counts). The caller audits the read.
    pub async fn inbox(
        &self,
        tenant_id: &str,
        filter: ConversationFilter,
        reader: &str,
    ) -> Result<InboxPage> {
        let list = self.list_conversations(tenant_id, filter).await?;
        let (t, r, store) = (tenant_id.to_owned(), reader.to_owned(), self.clone());
        let items = self
            .read(move |c| {
                let keys = store.keys_for(c, &t)?;
                list.conversations
                    .into_iter()
                    .map(|conv| item_in(c, &keys, &t, conv, &r))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        Ok(InboxPage {
            items,
            next_cursor: list.next_cursor,
        })
    }

    /// One conversation's inbox row (a live update).
    pub async fn inbox_item(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        reader: &str,
    ) -> Result<InboxItem> {
        let conv = self.get_conversation(tenant_id, conversation_id).await?;
        let (t, r, store) = (tenant_id.to_owned(), reader.to_owned(), self.clone());
        self.read(move |c| {
            let keys = store.keys_for(c, &t)?;
            item_in(c, &keys, &t, conv, &r)
        })
        .await
    }
}

fn item_in(
    c: &crate::db::Conn,
    keys: &TenantKeys,
    t: &str,
    conv: Conversation,
    reader: &str,
) -> Result<InboxItem> {
    let patient = contacts::load(c, keys, t, &conv.contact_id)?;
    let last_event = c
        .prepare_cached(
            "SELECT seq, kind, channel, at FROM events WHERE conversation_id = ?1 AND seq = ?2",
        )?
        .query_row(params![conv.id, conv.last_seq], |r| {
            Ok(LastEvent {
                seq: r.get(0)?,
                kind: r.get(1)?,
                channel: r.get(2)?,
                at: Timestamp(r.get(3)?),
            })
        })
        .optional()?;
    let last_activity = c
        .prepare_cached(
            "SELECT seq, kind, channel, at FROM events WHERE conversation_id = ?1
             AND kind IN ('message', 'attachment', 'triage.result', 'callback.requested', 'call.started', 'call.ended', 'call.failed')
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![conv.id], |r| {
            Ok(LastEvent {
                seq: r.get(0)?,
                kind: r.get(1)?,
                channel: r.get(2)?,
                at: Timestamp(r.get(3)?),
            })
        })
        .optional()?;
    let read_seq: i64 = c
        .prepare_cached(
            "SELECT read_seq FROM chat_receipts WHERE conversation_id = ?1 AND identity = ?2",
        )?
        .query_row(params![conv.id, reader], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let unread: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE conversation_id = ?1 AND seq > ?2 AND actor_type = 'patient' LIMIT ?3) AS unread",
        )?
        .query_row(params![conv.id, read_seq, UNREAD_CAP], |r| r.get(0))?;
    let task = open_task_in(c, keys, t, &conv.id)?;
    let waiting_since = match (&task, conv.state) {
        (Some(task), _) if task.state != crate::TaskState::Assigned => Some(task.created_at),
        (None, ConversationState::Queued) => Some(conv.updated_at),
        _ => None,
    };
    Ok(InboxItem {
        conversation_id: conv.id,
        state: conv.state,
        queue: conv.queue,
        assignee: conv.assignee,
        patient: InboxPatient {
            id: patient.id,
            display_name: patient.display_name,
        },
        subject: conv.subject,
        last_event,
        last_activity,
        unread,
        waiting_since,
        task: task.map(|t| InboxTask {
            id: t.id,
            state: t.state,
            priority: t.priority,
            triage: t.triage,
        }),
        updated_at: conv.updated_at,
    })
}
