//! Tenants, their API keys, and staff records.

use crate::audit::{AuditEntry, Outcome};
use crate::crypto::{SecretKey, TenantKeys};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, now_micros};
use base64::Engine;
use continuum_core::Role;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Data-residency tag; TURN and media nodes of this region are preferred.
    pub region: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Staff {
    pub id: String,
    pub role: Role,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct StaffData {
    display_name: String,
    email: Option<String>,
}

/// A tenant's name (inside a read or write).
pub(crate) fn name_in(conn: &crate::db::Conn, tenant_id: &str) -> Result<String> {
    conn.prepare_cached("SELECT name FROM tenants WHERE id = ?1")?
        .query_row([tenant_id], |r| r.get(0))
        .map_err(|e| match e {
            crate::db::DbError::NoRows => StoreError::NotFound("tenant"),
            e => e.into(),
        })
}

pub(crate) fn wrap_aad(tenant_id: &str) -> String {
    format!("tenant-data-key:{tenant_id}")
}

const KEY_PREFIX: &str = "ck_";

fn hash_key(full: &str) -> Vec<u8> {
    Sha256::digest(full.as_bytes()).to_vec()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn tenant_row(r: &crate::db::Row<'_>) -> crate::db::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        region: r.get(2)?,
        created_at: Timestamp(r.get(3)?),
    })
}

impl Store {
    pub async fn create_tenant(&self, name: &str, region: &str, actor: &str) -> Result<Tenant> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > 100 {
            return Err(StoreError::Invalid(
                "tenant name must be 1..=100 characters".into(),
            ));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let data_key = SecretKey::generate();
        let wrapped = self
            .master_key()
            .seal(data_key.as_bytes(), wrap_aad(&id).as_bytes());
        let tenant = Tenant {
            id,
            name,
            region: region.to_owned(),
            created_at: Timestamp(now_micros()),
        };
        let t = tenant.clone();
        let actor = actor.to_owned();
        self.write(move |ctx| {
            let exists: bool = ctx
                .conn
                .query_row("SELECT 1 FROM tenants WHERE name = ?1", [&t.name], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            let taken_msg = || format!("a tenant named `{}` already exists", t.name);
            if exists {
                return Err(StoreError::Conflict(taken_msg()));
            }
            ctx.conn
                .execute(
                    "INSERT INTO tenants (id, name, region, wrapped_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.id, t.name, t.region, wrapped, t.created_at.0],
                )
                .map_err(|e| StoreError::unique_as_conflict(e, taken_msg))?;
            ctx.audit(&t.id, &AuditEntry::new(actor, "tenant.create", format!("tenant/{}", t.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        self.0.tenant_keys.write().insert(
            tenant.id.clone(),
            Arc::new(TenantKeys::from_data_key(data_key)),
        );
        Ok(tenant)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT id, name, region, created_at FROM tenants ORDER BY created_at")?;
            let rows = stmt.query_map(params![], tenant_row)?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// By id or by name.
    pub async fn find_tenant(&self, id_or_name: &str) -> Result<Tenant> {
        let key = id_or_name.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, region, created_at FROM tenants WHERE id = ?1 OR name = ?1",
                [&key],
                tenant_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound("tenant"))
        })
        .await
    }

    /// Creates an API key; the returned secret is shown once and stored only as a hash.
    pub async fn create_api_key(
        &self,
        tenant_id: &str,
        name: &str,
        actor: &str,
    ) -> Result<(ApiKeyInfo, String)> {
        let mut id_bytes = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let id = hex::encode(id_bytes);
        let full = format!(
            "{KEY_PREFIX}{id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let info = ApiKeyInfo {
            id: id.clone(),
            name: name.to_owned(),
            created_at: Timestamp(now_micros()),
            revoked_at: None,
        };
        let (i, tenant_id, actor, hash) = (
            info.clone(),
            tenant_id.to_owned(),
            actor.to_owned(),
            hash_key(&full),
        );
        self.write(move |ctx| {
            ctx.conn.execute(
                "INSERT INTO api_keys (id, tenant_id, name, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i.id, tenant_id, i.name, hash, i.created_at.0],
            )?;
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "api_key.create", format!("api_key/{}", i.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok((info, full))
    }

    pub async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyInfo>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, name, created_at, revoked_at FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at",
            )?;
            let rows = stmt.query_map([tenant_id], |r| {
                Ok(ApiKeyInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: Timestamp(r.get(2)?),
                    revoked_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    pub async fn revoke_api_key(&self, tenant_id: &str, key_id: &str, actor: &str) -> Result<()> {
        let (tenant_id, key_id, actor) =
            (tenant_id.to_owned(), key_id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let n = ctx.conn.execute(
                "UPDATE api_keys SET revoked_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND revoked_at IS NULL",
                params![key_id, tenant_id, now_micros()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("api key"));
            }
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "api_key.revoke", format!("api_key/{key_id}"), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    /// The ids of every revoked API key: tokens minted under them die with them.
    pub async fn revoked_key_ids(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL")?;
            let rows = stmt.query_map(params![], |r| r.get(0))?;
            Ok(rows.collect::<crate::db::Result<Vec<String>>>()?)
        })
        .await
    }

    /// Checks a presented key. `Ok(None)` for unknown, malformed or revoked keys.
    pub async fn verify_api_key(&self, presented: &str) -> Result<Option<(String, String)>> {
        let Some(rest) = presented.strip_prefix(KEY_PREFIX) else {
            return Ok(None);
        };
        let Some((id, _)) = rest.split_once('_') else {
            return Ok(None);
        };
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let (id, hash) = (id.to_owned(), hash_key(presented));
        self.read(move |c| {
            let row: Option<(String, Vec<u8>)> = c
                .query_row(
                    "SELECT tenant_id, secret_hash FROM api_keys WHERE id = ?1 AND revoked_at IS NULL",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.and_then(|(tenant, stored)| ct_eq(&stored, &hash).then_some((tenant, id))))
        })
        .await
    }

    pub async fn create_staff(
        &self,
        tenant_id: &str,
        role: Role,
        display_name: &str,
        email: Option<String>,
        actor: &str,
    ) -> Result<Staff> {
        if display_name.trim().is_empty() || display_name.len() > 200 {
            return Err(StoreError::Invalid(
                "display_name must be 1..=200 characters".into(),
            ));
        }
        let staff = Staff {
            id: uuid::Uuid::now_v7().to_string(),
            role,
            display_name: display_name.trim().to_owned(),
            email,
            created_at: Timestamp(now_micros()),
        };
        let (s, tenant_id, actor, store) = (
            staff.clone(),
            tenant_id.to_owned(),
            actor.to_owned(),
            self.clone(),
        );
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            let data = serde_json::to_vec(&StaffData { display_name: s.display_name.clone(), email: s.email.clone() })
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let sealed = keys.data.seal(&data, format!("staff:{}", s.id).as_bytes());
            ctx.conn.execute(
                "INSERT INTO staff (id, tenant_id, role, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id, tenant_id, s.role.as_str(), sealed, s.created_at.0],
            )?;
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "staff.create", format!("staff/{}", s.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok(staff)
    }

    pub async fn list_staff(&self, tenant_id: &str) -> Result<Vec<Staff>> {
        let (tenant_id, store) = (tenant_id.to_owned(), self.clone());
        self.read(move |c| {
            let keys = store.keys_for(c, &tenant_id)?;
            let mut stmt = c.prepare(
                "SELECT id, role, data, created_at FROM staff WHERE tenant_id = ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query([&tenant_id])?;
            let mut out = Vec::new();
            while let Some(ref r) = rows.next()? {
                let id: String = r.get(0)?;
                let role: String = r.get(1)?;
                let sealed: Vec<u8> = r.get(2)?;
                let data: StaffData = serde_json::from_slice(
                    &keys.data.open(&sealed, format!("staff:{id}").as_bytes())?,
                )
                .map_err(|e| StoreError::Integrity(e.to_string()))?;
                out.push(Staff {
                    id,
                    role: role.parse().map_err(StoreError::Integrity)?,
                    display_name: data.display_name,
                    email: data.email,
                    created_at: Timestamp(r.get(3)?),
                });
            }
            Ok(out)
        })
        .await
    }
}
