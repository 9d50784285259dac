//! Patients and their channel bindings. Everything about a patient is sealed;
//! bindings are found through a keyed blind index, so the database never holds
//! a phone number in clear yet `GET /v1/contacts?phone=` is an index lookup.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, TenantKeys, now_micros};
use continuum_core::{BindingKind, Channel};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bindings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_user_id: Option<String>,
}

impl Bindings {
    fn get(&self, kind: BindingKind) -> Option<&String> {
        match kind {
            BindingKind::Phone => self.phone.as_ref(),
            BindingKind::Whatsapp => self.whatsapp.as_ref(),
            BindingKind::AppUserId => self.app_user_id.as_ref(),
        }
    }
    fn slot(&mut self, kind: BindingKind) -> &mut Option<String> {
        match kind {
            BindingKind::Phone => &mut self.phone,
            BindingKind::Whatsapp => &mut self.whatsapp,
            BindingKind::AppUserId => &mut self.app_user_id,
        }
    }
}

/// A patient.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    pub id: String,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub bindings: Bindings,
    /// Where to reach the patient when a message names no channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_channel: Option<Channel>,
    /// IANA time zone (`America/Chicago`): quiet hours are the patient's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Fields to set on create or update. On update, absent fields stay as they
/// are and an empty string removes a binding.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub display_name: Option<String>,
    /// `YYYY-MM-DD`.
    pub date_of_birth: Option<String>,
    pub external_id: Option<String>,
    /// E.164 (`+14155552671`); spaces and dashes are accepted and removed.
    pub phone: Option<String>,
    pub whatsapp: Option<String>,
    pub app_user_id: Option<String>,
    /// `sms`, `whatsapp` or `chat`; an empty string clears it.
    pub preferred_channel: Option<String>,
    /// An IANA time zone such as `Europe/Paris`; an empty string clears it.
    pub time_zone: Option<String>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContactList {
    pub contacts: Vec<Contact>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SealedContact {
    display_name: String,
    date_of_birth: Option<String>,
    external_id: Option<String>,
    bindings: Bindings,
    #[serde(default)]
    preferred_channel: Option<Channel>,
    #[serde(default)]
    time_zone: Option<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

fn aad(id: &str) -> Vec<u8> {
    format!("contact:{id}").into_bytes()
}

fn valid_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &format).is_ok()
}

fn apply(input: ContactInput, data: &mut SealedContact) -> Result<()> {
    if let Some(name) = input.display_name {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid(
                "display_name must be 1..=200 characters".into(),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "display_name must not contain NUL or other control characters".into(),
            ));
        }
        data.display_name = name;
    }
    if let Some(dob) = input.date_of_birth {
        if !valid_date(&dob) {
            return Err(StoreError::Invalid(format!(
                "date_of_birth `{dob}` is not a date in YYYY-MM-DD form"
            )));
        }
        data.date_of_birth = Some(dob);
    }
    if let Some(ext) = input.external_id {
        if ext.len() > 128 {
            return Err(StoreError::Invalid(
                "external_id must be at most 128 characters".into(),
            ));
        }
        if ext.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "external_id must not contain NUL or other control characters".into(),
            ));
        }
        data.external_id = Some(ext);
    }
    for (kind, raw) in [
        (BindingKind::Phone, input.phone),
        (BindingKind::Whatsapp, input.whatsapp),
        (BindingKind::AppUserId, input.app_user_id),
    ] {
        if let Some(raw) = raw {
            *data.bindings.slot(kind) = if raw.is_empty() {
                None
            } else {
                Some(kind.normalize(&raw)?)
            };
        }
    }
    if let Some(ch) = input.preferred_channel {
        data.preferred_channel = match ch.as_str() {
            "" => None,
            "sms" => Some(Channel::Sms),
            "whatsapp" => Some(Channel::Whatsapp),
            "chat" => Some(Channel::Chat),
            other => {
                return Err(StoreError::Invalid(format!(
                    "preferred_channel `{}` must be sms, whatsapp or chat",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
    }
    if let Some(tz) = input.time_zone {
        data.time_zone = if tz.is_empty() {
            None
        } else if jiff::tz::TimeZone::get(&tz).is_ok() {
            Some(tz)
        } else {
            return Err(StoreError::Invalid(format!(
                "time_zone `{}` is not an IANA time zone (such as America/Chicago)",
                tz.chars()
                    .take(64)
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            )));
        };
    }
    if let Some(meta) = input.metadata {
        if serde_json::to_vec(&meta).map_or(0, |v| v.len()) > 16 * 1024 {
            return Err(StoreError::Invalid(
                "metadata must be at most 16 KiB of JSON".into(),
            ));
        }
        data.metadata = meta;
    }
    Ok(())
}

fn write_bindings(
    conn: &crate::db::Conn,
    tenant_id: &str,
    id: &str,
    keys: &TenantKeys,
    b: &Bindings,
) -> Result<()> {
    conn.execute("DELETE FROM contact_bindings WHERE contact_id = ?1", [id])?;
    for kind in BindingKind::ALL {
        if let Some(value) = b.get(kind) {
            let lookup = keys.blind_index(kind.as_str(), value);
            let taken: Option<String> = conn
                .query_row(
                    "SELECT contact_id FROM contact_bindings WHERE tenant_id = ?1 AND kind = ?2 AND lookup = ?3",
                    params![tenant_id, kind.as_str(), lookup],
                    |r| r.get(0),
                )
                .optional()?;
            let taken_msg = || {
                format!(
                    "{} {value} is already bound to another contact",
                    kind.as_str()
                )
            };
            if taken.is_some() {
                return Err(StoreError::Conflict(taken_msg()));
            }
            conn.execute(
                "INSERT INTO contact_bindings (tenant_id, kind, lookup, contact_id) VALUES (?1, ?2, ?3, ?4)",
                params![tenant_id, kind.as_str(), lookup, id],
            )
            .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
        }
    }
    Ok(())
}

pub(crate) fn load(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
) -> Result<Contact> {
    load_with(conn, keys, tenant_id, id, "")
}

/// [`load`] for a write that changes the contact from what it read: the
/// row stays locked (PostgreSQL) until the write commits.
fn lock(conn: &crate::db::Conn, keys: &TenantKeys, tenant_id: &str, id: &str) -> Result<Contact> {
    load_with(conn, keys, tenant_id, id, conn.row_lock())
}

fn load_with(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    id: &str,
    lock: &str,
) -> Result<Contact> {
    let row: Option<(Vec<u8>, i64, i64)> = conn
        .prepare_cached(&format!(
            "SELECT data, created_at, updated_at FROM contacts WHERE id = ?1 AND tenant_id = ?2{lock}"
        ))?
        .query_row(params![id, tenant_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let (sealed, created, updated) = row.ok_or(StoreError::NotFound("contact"))?;
    to_contact(keys, id.to_owned(), &sealed, created, updated)
}

fn to_contact(
    keys: &TenantKeys,
    id: String,
    sealed: &[u8],
    created: i64,
    updated: i64,
) -> Result<Contact> {
    let d: SealedContact = serde_json::from_slice(&keys.data.open(sealed, &aad(&id))?)
        .map_err(|e| StoreError::Integrity(format!("contact {id}: {e}")))?;
    Ok(Contact {
        id,
        display_name: d.display_name,
        date_of_birth: d.date_of_birth,
        external_id: d.external_id,
        bindings: d.bindings,
        preferred_channel: d.preferred_channel,
        time_zone: d.time_zone,
        metadata: d.metadata,
        created_at: Timestamp(created),
        updated_at: Timestamp(updated),
    })
}

impl Store {
    pub async fn create_contact(
        &self,
        tenant_id: &str,
        input: ContactInput,
        actor: &str,
    ) -> Result<Contact> {
        let mut data = SealedContact {
            display_name: String::new(),
            date_of_birth: None,
            external_id: None,
            bindings: Bindings::default(),
            preferred_channel: None,
            time_zone: None,
            metadata: Default::default(),
        };
        if input.display_name.is_none() {
            return Err(StoreError::Invalid("display_name is required".into()));
        }
        apply(input, &mut data)?;
        let id = uuid::Uuid::now_v7().to_string();
        let (tenant_id, actor, store) = (tenant_id.to_owned(), actor.to_owned(), self.clone());
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let now = now_micros();
            let plain = serde_json::to_vec(&data).map_err(|e| StoreError::Invalid(e.to_string()))?;
            ctx.conn.execute(
                "INSERT INTO contacts (id, tenant_id, data, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![id, tenant_id, keys.data.seal(&plain, &aad(&id)), now],
            )?;
            write_bindings(ctx.conn, &tenant_id, &id, &keys, &data.bindings)?;
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "contact.create", format!("contact/{id}"), Outcome::Ok))?;
            load(ctx.conn, &keys, &tenant_id, &id)
        })
        .await
    }

    pub async fn update_contact(
        &self,
        tenant_id: &str,
        id: &str,
        input: ContactInput,
        actor: &str,
    ) -> Result<Contact> {
        let (tenant_id, id, actor, store) = (
            tenant_id.to_owned(),
            id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let current = lock(ctx.conn, &keys, &tenant_id, &id)?;
            let mut data = SealedContact {
                display_name: current.display_name,
                date_of_birth: current.date_of_birth,
                external_id: current.external_id,
                bindings: current.bindings,
                preferred_channel: current.preferred_channel,
                time_zone: current.time_zone,
                metadata: current.metadata,
            };
            apply(input, &mut data)?;
            let plain =
                serde_json::to_vec(&data).map_err(|e| StoreError::Invalid(e.to_string()))?;
            ctx.conn.execute(
                "UPDATE contacts SET data = ?3, updated_at = ?4 WHERE id = ?1 AND tenant_id = ?2",
                params![
                    id,
                    tenant_id,
                    keys.data.seal(&plain, &aad(&id)),
                    now_micros()
                ],
            )?;
            write_bindings(ctx.conn, &tenant_id, &id, &keys, &data.bindings)?;
            ctx.audit(
                &tenant_id,
                &AuditEntry::new(
                    actor,
                    "contact.update",
                    format!("contact/{id}"),
                    Outcome::Ok,
                ),
            )?;
            load(ctx.conn, &keys, &tenant_id, &id)
        })
        .await
    }

    pub async fn get_contact(&self, tenant_id: &str, id: &str, actor: &str) -> Result<Contact> {
        let entry = AuditEntry::new(actor, "contact.read", format!("contact/{id}"), Outcome::Ok);
        let (t, id, store) = (tenant_id.to_owned(), id.to_owned(), self.clone());
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            load(c, &keys, &t, &id)
        })
        .await
    }

    /// Finds the patient an inbound message or call belongs to.
    pub async fn find_contact_by_binding(
        &self,
        tenant_id: &str,
        kind: BindingKind,
        raw: &str,
        actor: &str,
    ) -> Result<Contact> {
        let value = kind.normalize(raw)?;
        let entry = AuditEntry::new(
            actor,
            "contact.lookup",
            format!("binding/{}", kind.as_str()),
            Outcome::Ok,
        );
        let (t, store) = (tenant_id.to_owned(), self.clone());
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            let lookup = keys.blind_index(kind.as_str(), &value);
            let id: String = c
                .query_row(
                    "SELECT contact_id FROM contact_bindings WHERE tenant_id = ?1 AND kind = ?2 AND lookup = ?3",
                    params![t, kind.as_str(), lookup],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(StoreError::NotFound("contact"))?;
            load(c, &keys, &t, &id)
        })
        .await
    }

    pub async fn list_contacts(
        &self,
        tenant_id: &str,
        cursor: Option<String>,
        limit: usize,
        actor: &str,
    ) -> Result<ContactList> {
        let entry = AuditEntry::new(actor, "contact.list", "contacts", Outcome::Ok);
        let (t, store) = (tenant_id.to_owned(), self.clone());
        self.read_audited(tenant_id, entry, move |c| {
            let keys = store.keys_for(c, &t)?;
            let mut stmt = c.prepare_cached(
                "SELECT id, data, created_at, updated_at FROM contacts
                 WHERE tenant_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![t, cursor.unwrap_or_default(), limit as i64 + 1])?;
            let mut contacts = Vec::new();
            while let Some(ref r) = rows.next()? {
                contacts.push(to_contact(
                    &keys,
                    r.get(0)?,
                    &r.get::<_, Vec<u8>>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                )?);
            }
            let next_cursor = if contacts.len() > limit {
                contacts.truncate(limit);
                contacts.last().map(|c| c.id.clone())
            } else {
                None
            };
            Ok(ContactList {
                contacts,
                next_cursor,
            })
        })
        .await
    }
}
