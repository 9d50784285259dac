//! Video rooms: each is a media session inside one conversation.

use crate::audit::{AuditEntry, Outcome};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, now_micros};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Room {
    pub id: String,
    pub conversation_id: String,
    pub max_participants: i64,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

impl Store {
    pub async fn create_room(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        max_participants: i64,
        actor: &str,
    ) -> Result<Room> {
        let room = Room {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: conversation_id.to_owned(),
            max_participants,
            created_at: Timestamp(now_micros()),
            ended_at: None,
        };
        let (r, t, actor) = (room.clone(), tenant_id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            ctx.conn
                .query_row("SELECT 1 FROM conversations WHERE id = ?1 AND tenant_id = ?2", params![r.conversation_id, t], |_| Ok(()))
                .optional()?
                .ok_or(StoreError::NotFound("conversation"))?;
            ctx.conn.execute(
                "INSERT INTO rooms (id, tenant_id, conversation_id, max_participants, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.id, t, r.conversation_id, r.max_participants, r.created_at.0],
            )?;
            ctx.audit(&t, &AuditEntry::new(actor, "room.create", format!("room/{}", r.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok(room)
    }

    pub async fn get_room(&self, tenant_id: &str, id: &str) -> Result<Room> {
        let (t, id) = (tenant_id.to_owned(), id.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT id, conversation_id, max_participants, created_at, ended_at FROM rooms WHERE id = ?1 AND tenant_id = ?2",
                params![id, t],
                |r| {
                    Ok(Room {
                        id: r.get(0)?,
                        conversation_id: r.get(1)?,
                        max_participants: r.get(2)?,
                        created_at: Timestamp(r.get(3)?),
                        ended_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
                    })
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound("room"))
        })
        .await
    }
}
