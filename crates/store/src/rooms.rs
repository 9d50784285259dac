//! Video rooms: each is a media session inside one conversation.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, now_micros};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Room {
    pub id: String,
    pub conversation_id: String,
    pub max_participants: i64,
    pub created_at: Timestamp,
    /// Patients wait until a clinician admits them.
    pub waiting_room: bool,
    /// The dial-in PIN: a caller to a `room_pin` number who enters it joins
    /// this room by phone (unique among the tenant's open rooms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// When someone ended the visit for everyone; nobody joins after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

impl Store {
    pub async fn create_room(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        max_participants: i64,
        waiting_room: bool,
        actor: &str,
    ) -> Result<Room> {
        let room = Room {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: conversation_id.to_owned(),
            max_participants,
            created_at: Timestamp(now_micros()),
            waiting_room,
            pin: None,
            ended_at: None,
        };
        let (r, t, actor) = (room.clone(), tenant_id.to_owned(), actor.to_owned());
        let pin = self.write(move |ctx| {
            ctx.conn
                .query_row("SELECT 1 FROM conversations WHERE id = ?1 AND tenant_id = ?2", params![r.conversation_id, t], |_| Ok(()))
                .optional()?
                .ok_or(StoreError::NotFound("conversation"))?;
            // A random 6-digit PIN, drawn again on the rare clash with
            // another open room of the tenant.
            let mut pin = String::new();
            for _ in 0..20 {
                let candidate = format!("{:06}", rand::random::<u32>() % 1_000_000);
                let taken = ctx
                    .conn
                    .query_row(
                        "SELECT 1 FROM rooms WHERE tenant_id = ?1 AND pin = ?2 AND ended_at IS NULL",
                        params![t, candidate],
                        |_| Ok(()),
                    )
                    .optional()?;
                if taken.is_none() {
                    pin = candidate;
                    break;
                }
            }
            if pin.is_empty() {
                return Err(StoreError::Conflict("no free dial-in PIN: end some open rooms".into()));
            }
            ctx.conn
                .execute(
                    "INSERT INTO rooms (id, tenant_id, conversation_id, max_participants, created_at, waiting_room, pin) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![r.id, t, r.conversation_id, r.max_participants, r.created_at.0, r.waiting_room, pin],
                )
                .map_err(|e| {
                    StoreError::unique_as_conflict(e, || {
                        "the dial-in PIN drawn was taken at the same moment by another room; retry".into()
                    })
                })?;
            ctx.audit(&t, &AuditEntry::new(actor, "room.create", format!("room/{}", r.id), Outcome::Ok))?;
            Ok(pin)
        })
        .await?;
        Ok(Room {
            pin: Some(pin),
            ..room
        })
    }

    pub async fn get_room(&self, tenant_id: &str, id: &str) -> Result<Room> {
        let (t, id) = (tenant_id.to_owned(), id.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT id, conversation_id, max_participants, created_at, ended_at, waiting_room, pin FROM rooms WHERE id = ?1 AND tenant_id = ?2",
                params![id, t],
                |r| {
                    Ok(Room {
                        id: r.get(0)?,
                        conversation_id: r.get(1)?,
                        max_participants: r.get(2)?,
                        created_at: Timestamp(r.get(3)?),
                        ended_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
                        waiting_room: r.get(5)?,
                        pin: r.get(6)?,
                    })
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound("room"))
        })
        .await
    }

    /// The conversation's most recent room not ended, if any.
    pub async fn latest_open_room(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Option<Room>> {
        let (t, c) = (tenant_id.to_owned(), conversation_id.to_owned());
        let id: Option<String> = self
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT id FROM rooms WHERE tenant_id = ?1 AND conversation_id = ?2 AND ended_at IS NULL ORDER BY created_at DESC LIMIT 1",
                        params![t, c],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
            .await?;
        match id {
            Some(id) => Ok(Some(self.get_room(tenant_id, &id).await?)),
            None => Ok(None),
        }
    }

    /// Ends the visit for everyone (idempotent: the first end is kept).
    /// Returns the room as it is now.
    pub async fn end_room(&self, tenant_id: &str, id: &str, actor: &str) -> Result<Room> {
        let (t, rid, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let changed = ctx.conn.execute(
                "UPDATE rooms SET ended_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND ended_at IS NULL",
                params![rid, t, now_micros()],
            )?;
            if changed > 0 {
                ctx.audit(&t, &AuditEntry::new(actor, "room.end", format!("room/{rid}"), Outcome::Ok))?;
            }
            Ok(())
        })
        .await?;
        self.get_room(tenant_id, id).await
    }
}

/// A tenant's visit settings (no PHI: they are stored in clear).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct VisitSettings {
    /// New rooms hold patients in a waiting room until a clinician admits
    /// them (a room can say otherwise when it is created).
    pub waiting_room: bool,
    /// Shown to patients whose visit link is expired or invalid: who to
    /// contact for a new one (e.g. "the front desk, +1 415 555 0100").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_contact: Option<String>,
    /// PSTN fallback: calling the patient's phone when their video fails.
    pub fallback: FallbackPolicy,
}

impl Default for VisitSettings {
    fn default() -> Self {
        VisitSettings {
            waiting_room: true,
            support_contact: None,
            fallback: FallbackPolicy::default(),
        }
    }
}

/// When Continuum calls a patient whose video failed, on the phone number
/// bound to their contact, and bridges the call into the same room. The
/// clinician's "Call the patient's phone" button works whatever this says.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct FallbackPolicy {
    /// Call automatically on the triggers below (else only on request).
    pub automatic: bool,
    /// Trigger: nothing arrives from the patient's device (its browser or
    /// network is gone) for `rtc.media_stall_secs`.
    pub on_media_failure: bool,
    /// Trigger: the patient's quality stays degraded this many seconds (0: never).
    pub degraded_secs: u32,
    /// When the fallback call fails or nobody answers, text the patient a
    /// link back into the visit (SMS or their preferred channel), if the
    /// tenant has a messaging provider.
    pub text_on_failure: bool,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        FallbackPolicy {
            automatic: true,
            on_media_failure: true,
            degraded_secs: 0,
            text_on_failure: true,
        }
    }
}

impl Store {
    pub async fn visit_settings(&self, tenant_id: &str) -> Result<VisitSettings> {
        let t = tenant_id.to_owned();
        let json: Option<String> = self
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT settings FROM tenant_settings WHERE tenant_id = ?1",
                    params![t],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default())
    }

    pub async fn set_visit_settings(
        &self,
        tenant_id: &str,
        settings: &VisitSettings,
        actor: &str,
    ) -> Result<()> {
        let (t, actor) = (tenant_id.to_owned(), actor.to_owned());
        let json =
            serde_json::to_string(settings).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write(move |ctx| {
            ctx.conn.execute(
                "INSERT INTO tenant_settings (tenant_id, settings, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                params![t, json, now_micros()],
            )?;
            ctx.audit(&t, &AuditEntry::new(actor, "settings.update", "settings/visits".to_owned(), Outcome::Ok))?;
            Ok(())
        })
        .await
    }
}
