//! Reading the audit chain (auditors and admins).

use crate::auth::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Query};
use crate::state::AppState;
use axum::extract::State;
use continuum_core::Permission;
use continuum_store::AuditRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Records after this `position` (the previous page's `next_after`). On
    /// SQLite a tenant has one chain and `position` is its `seq`; on
    /// PostgreSQL records of the tenant's several chains interleave in
    /// commit order.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<AuditRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// The tenant's audit chain, oldest first. Reading it is itself audited.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "listAudit", params(AuditQuery),
    responses((status = 200, body = AuditPage, description = "audit records, oldest first"),
        (status = 403, body = ErrorBody, description = "only auditors, admins and API keys read the audit chain"),
        (status = 422, body = ErrorBody, description = "limit out of range")),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    s.require(&p, Permission::ReadAudit, "audit").await?;
    let limit = super::limit(q.limit, 100, 1000)?;
    let records = s
        .store
        .list_audit(p.tenant_id(), q.after.unwrap_or(0), limit)
        .await?;
    let entry = continuum_store::AuditEntry::new(
        p.audit_actor(),
        "audit.read",
        "audit",
        continuum_store::Outcome::Ok,
    )
    .with_detail(serde_json::json!({ "after": q.after.unwrap_or(0), "count": records.len() }));
    s.store.audit(p.tenant_id(), entry).await?;
    let next_after = (records.len() == limit)
        .then(|| records.last().map(|r| r.position))
        .flatten();
    Ok(Json(AuditPage {
        records,
        next_after,
    }))
}
