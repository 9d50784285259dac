//! IVR flows and business-hours calendars: a tenant's call flows and the
//! opening hours they can name, kept as the YAML they were written in (the
//! server validates it with `continuum-ivr` before it is stored, and parses
//! it again when a call starts). All SQL of these tables is here. They hold
//! the clinic's prompts, menus and hours, not PHI: in clear.

use crate::audit::{AuditEntry, Outcome};
use crate::db::{OptionalExtension, params};
use crate::error::{Result, StoreError};
use crate::routing::valid_name;
use crate::time_fmt::Timestamp;
use crate::{Store, now_micros};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IvrFlow {
    pub name: String,
    /// The flow as written (YAML).
    pub source: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The largest flow accepted (a big clinic's tree is a few KiB).
pub const MAX_FLOW_BYTES: usize = 256 * 1024;

impl Store {
    /// Stores (or replaces) a flow the caller has validated; `true` when new.
    pub async fn put_ivr_flow(
        &self,
        tenant_id: &str,
        name: &str,
        source: &str,
        actor: &str,
    ) -> Result<(IvrFlow, bool)> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(
                "name: 1-64 letters, digits, `.`, `-` or `_`".into(),
            ));
        }
        if source.len() > MAX_FLOW_BYTES {
            return Err(StoreError::Invalid(format!(
                "the flow is {} bytes; at most {MAX_FLOW_BYTES}",
                source.len()
            )));
        }
        let (t, n, src, actor) = (
            tenant_id.to_owned(),
            name.to_owned(),
            source.to_owned(),
            actor.to_owned(),
        );
        self.write(move |ctx| {
            let existed = flow_in(ctx.conn, &t, &n)?.is_some();
            ctx.conn.execute(
                "INSERT INTO ivr_flows (tenant_id, name, source, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(tenant_id, name) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at",
                params![t, n, src, now_micros()],
            )?;
            let action = if existed { "ivr_flow.update" } else { "ivr_flow.create" };
            ctx.audit(&t, &AuditEntry::new(actor, action, format!("ivr_flow/{n}"), Outcome::Ok))?;
            Ok((flow_in(ctx.conn, &t, &n)?.ok_or(StoreError::NotFound("flow"))?, !existed))
        })
        .await
    }

    pub async fn get_ivr_flow(&self, tenant_id: &str, name: &str) -> Result<Option<IvrFlow>> {
        let (t, n) = (tenant_id.to_owned(), name.to_owned());
        self.read(move |c| flow_in(c, &t, &n)).await
    }

    pub async fn list_ivr_flows(&self, tenant_id: &str) -> Result<Vec<IvrFlow>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT name, source, created_at, updated_at FROM ivr_flows WHERE tenant_id = ?1 ORDER BY name",
            )?;
            let rows = st.query_map(params![t], flow_row)?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }

    pub async fn delete_ivr_flow(&self, tenant_id: &str, name: &str, actor: &str) -> Result<()> {
        let (t, n, actor) = (tenant_id.to_owned(), name.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let gone = ctx.conn.execute(
                "DELETE FROM ivr_flows WHERE tenant_id = ?1 AND name = ?2",
                params![t, n],
            )?;
            if gone == 0 {
                return Err(StoreError::NotFound("flow"));
            }
            ctx.audit(
                &t,
                &AuditEntry::new(
                    actor,
                    "ivr_flow.delete",
                    format!("ivr_flow/{n}"),
                    Outcome::Ok,
                ),
            )?;
            Ok(())
        })
        .await
    }
}

/// A calendar, as written (`time_zone`, `weekly`, `holidays`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BusinessCalendar {
    pub name: String,
    pub source: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Store {
    /// Stores (or replaces) a calendar the caller has validated; `true` when new.
    pub async fn put_calendar(
        &self,
        tenant_id: &str,
        name: &str,
        source: &str,
        actor: &str,
    ) -> Result<(BusinessCalendar, bool)> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(
                "name: 1-64 letters, digits, `.`, `-` or `_`".into(),
            ));
        }
        if source.len() > 64 * 1024 {
            return Err(StoreError::Invalid("a calendar is at most 64 KiB".into()));
        }
        let (t, n, src, actor) = (
            tenant_id.to_owned(),
            name.to_owned(),
            source.to_owned(),
            actor.to_owned(),
        );
        self.write(move |ctx| {
            let existed = calendar_in(ctx.conn, &t, &n)?.is_some();
            ctx.conn.execute(
                "INSERT INTO business_calendars (tenant_id, name, source, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(tenant_id, name) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at",
                params![t, n, src, now_micros()],
            )?;
            let action = if existed { "calendar.update" } else { "calendar.create" };
            ctx.audit(&t, &AuditEntry::new(actor, action, format!("calendar/{n}"), Outcome::Ok))?;
            Ok((calendar_in(ctx.conn, &t, &n)?.ok_or(StoreError::NotFound("calendar"))?, !existed))
        })
        .await
    }

    pub async fn get_calendar(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<BusinessCalendar>> {
        let (t, n) = (tenant_id.to_owned(), name.to_owned());
        self.read(move |c| calendar_in(c, &t, &n)).await
    }

    pub async fn list_calendars(&self, tenant_id: &str) -> Result<Vec<BusinessCalendar>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT name, source, created_at, updated_at FROM business_calendars WHERE tenant_id = ?1 ORDER BY name",
            )?;
            let rows = st.query_map(params![t], calendar_row)?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }

    pub async fn delete_calendar(&self, tenant_id: &str, name: &str, actor: &str) -> Result<()> {
        let (t, n, actor) = (tenant_id.to_owned(), name.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let gone = ctx.conn.execute(
                "DELETE FROM business_calendars WHERE tenant_id = ?1 AND name = ?2",
                params![t, n],
            )?;
            if gone == 0 {
                return Err(StoreError::NotFound("calendar"));
            }
            ctx.audit(
                &t,
                &AuditEntry::new(
                    actor,
                    "calendar.delete",
                    format!("calendar/{n}"),
                    Outcome::Ok,
                ),
            )?;
            Ok(())
        })
        .await
    }
}

fn calendar_row(r: &crate::db::Row<'_>) -> crate::db::Result<BusinessCalendar> {
    Ok(BusinessCalendar {
        name: r.get(0)?,
        source: r.get(1)?,
        created_at: Timestamp(r.get(2)?),
        updated_at: Timestamp(r.get(3)?),
    })
}

fn calendar_in(c: &crate::db::Conn, t: &str, n: &str) -> Result<Option<BusinessCalendar>> {
    Ok(c.prepare_cached(
        "SELECT name, source, created_at, updated_at FROM business_calendars WHERE tenant_id = ?1 AND name = ?2",
    )?
    .query_row(params![t, n], calendar_row)
    .optional()?)
}

fn flow_row(r: &crate::db::Row<'_>) -> crate::db::Result<IvrFlow> {
    Ok(IvrFlow {
        name: r.get(0)?,
        source: r.get(1)?,
        created_at: Timestamp(r.get(2)?),
        updated_at: Timestamp(r.get(3)?),
    })
}

fn flow_in(c: &crate::db::Conn, t: &str, n: &str) -> Result<Option<IvrFlow>> {
    Ok(c.prepare_cached(
        "SELECT name, source, created_at, updated_at FROM ivr_flows WHERE tenant_id = ?1 AND name = ?2",
    )?
    .query_row(params![t, n], flow_row)
    .optional()?)
}
