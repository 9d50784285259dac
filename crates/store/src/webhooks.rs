//! Webhook endpoints and the durable outbox. Deliveries are inserted in the same
//! transaction as the change they announce, so a committed event always gets
//! announced (at least once), even across a crash; the dispatcher in the server
//! sends them and records every attempt here.

use crate::audit::{AuditEntry, Outcome};
use crate::db::params;
use crate::error::{Result, StoreError};
use crate::time_fmt::Timestamp;
use crate::{Store, TenantKeys, now_micros};
use rand::RngCore;
use serde::Serialize;

/// The event types a webhook can subscribe to.
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "event.created",
    "conversation.created",
    "conversation.updated",
];

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub payload: WebhookPayload,
    pub created_at: Timestamp,
}

/// What a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WebhookPayload {
    /// The whole object (message bodies included).
    #[default]
    Full,
    /// Ids, kinds, states and times only: no PHI leaves; the receiver fetches
    /// the object with its own credentials.
    Thin,
}

impl WebhookPayload {
    fn as_str(self) -> &'static str {
        match self {
            WebhookPayload::Full => "full",
            WebhookPayload::Thin => "thin",
        }
    }
    fn parse(s: &str) -> Self {
        if s == "thin" {
            WebhookPayload::Thin
        } else {
            WebhookPayload::Full
        }
    }
}

/// The fields a thin delivery keeps: identifiers, kinds, states and times.
const THIN_FIELDS: &[&str] = &[
    "id",
    "conversation_id",
    "contact_id",
    "seq",
    "at",
    "channel",
    "kind",
    "state",
    "created_at",
    "updated_at",
    "last_seq",
];

fn thin(data: &serde_json::Value) -> serde_json::Value {
    match data {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .filter(|(k, _)| THIN_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => serde_json::Value::Null,
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    pub outbox_id: i64,
    pub attempt: i64,
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// One delivery ready to send.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub outbox_id: i64,
    pub tenant_id: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub event_type: String,
    pub body: Vec<u8>,
    pub attempts: i64,
}

fn secret_aad(id: &str) -> Vec<u8> {
    format!("webhook-secret:{id}").into_bytes()
}
fn payload_aad(tenant_id: &str, webhook_id: &str) -> Vec<u8> {
    format!("outbox:{tenant_id}:{webhook_id}").into_bytes()
}

/// A live webhook of a tenant, as `enqueue` matches it: (id, subscribed
/// event types as stored, payload kind as stored).
pub(crate) type LiveHook = (String, String, String);

/// The tenant's webhooks that are not deleted.
pub(crate) fn live_hooks(conn: &crate::db::Conn, tenant_id: &str) -> Result<Vec<LiveHook>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_types, payload FROM webhooks WHERE tenant_id = ?1 AND deleted_at IS NULL",
    )?;
    let hooks = stmt
        .query_map([tenant_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<crate::db::Result<_>>()?;
    Ok(hooks)
}

/// The sealed outbox payloads, one per hook subscribed to `event_type`, as
/// (webhook id, sealed body). `data` is only built when some hook wants it.
pub(crate) fn deliveries_for(
    keys: &TenantKeys,
    tenant_id: &str,
    hooks: &[LiveHook],
    event_type: &str,
    now: i64,
    data: impl FnOnce() -> serde_json::Value,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut data = Some(data);
    let mut built = serde_json::Value::Null;
    for (id, types, payload) in hooks {
        let types: Vec<String> = serde_json::from_str(types).unwrap_or_default();
        if !types.iter().any(|t| t == "*" || t == event_type) {
            continue;
        }
        if let Some(make) = data.take() {
            built = make();
        }
        let body = serde_json::json!({
            "id": uuid::Uuid::now_v7().to_string(),
            "type": event_type,
            "tenant_id": tenant_id,
            "created_at": Timestamp(now),
            "data": match WebhookPayload::parse(payload) {
                WebhookPayload::Full => built.clone(),
                WebhookPayload::Thin => thin(&built),
            },
        });
        let sealed = keys
            .data
            .seal(body.to_string().as_bytes(), &payload_aad(tenant_id, id));
        out.push((id.clone(), sealed));
    }
    out
}

/// PostgreSQL: the live webhooks of several tenants (`$1`, an array), as
/// (tenant id, then a [`LiveHook`]).
pub(crate) const LIVE_HOOKS_MANY_SQL: &str =
    "SELECT tenant_id, id, event_types, payload FROM webhooks
     WHERE tenant_id = ANY($1) AND deleted_at IS NULL";

/// The outbox rows of one batch of appends (PostgreSQL), in one statement.
#[derive(Default)]
pub(crate) struct OutboxRows {
    tenant_ids: Vec<String>,
    webhook_ids: Vec<String>,
    event_types: Vec<&'static str>,
    payloads: Vec<Vec<u8>>,
    at: Vec<i64>,
}

impl OutboxRows {
    pub fn push(
        &mut self,
        tenant_id: &str,
        event_type: &'static str,
        now: i64,
        d: Vec<(String, Vec<u8>)>,
    ) {
        for (webhook_id, sealed) in d {
            self.tenant_ids.push(tenant_id.to_owned());
            self.webhook_ids.push(webhook_id);
            self.event_types.push(event_type);
            self.payloads.push(sealed);
            self.at.push(now);
        }
    }

    pub fn len(&self) -> usize {
        self.tenant_ids.len()
    }

    /// The insert (for a pipeline).
    pub fn statement(
        &self,
    ) -> (
        &'static str,
        Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
    ) {
        (
            "INSERT INTO outbox (tenant_id, webhook_id, event_type, payload, created_at, next_attempt_at)
             SELECT t, w, e, p, a, a FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int8[]) AS r(t, w, e, p, a)",
            vec![&self.tenant_ids, &self.webhook_ids, &self.event_types, &self.payloads, &self.at],
        )
    }
}

/// Queues `data` for every webhook of the tenant subscribed to `event_type`.
/// `data` is only built when some webhook wants it (most appends have none).
pub(crate) fn enqueue(
    conn: &crate::db::Conn,
    keys: &TenantKeys,
    tenant_id: &str,
    event_type: &str,
    data: impl FnOnce() -> serde_json::Value,
) -> Result<usize> {
    let hooks = live_hooks(conn, tenant_id)?;
    let now = now_micros();
    let deliveries = deliveries_for(keys, tenant_id, &hooks, event_type, now, data);
    for (id, sealed) in &deliveries {
        conn.prepare_cached(
            "INSERT INTO outbox (tenant_id, webhook_id, event_type, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute(params![tenant_id, id, event_type, sealed, now])?;
    }
    Ok(deliveries.len())
}

/// How long [`Store::due_deliveries`] leaves the deliveries it claims to
/// the node that claimed them (PostgreSQL).
pub const DELIVERY_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

/// The deliveries due at `now`, oldest first, unsealed; `lock` follows the
/// query (the claim's row locks on PostgreSQL).
fn due_in(
    c: &crate::db::Conn,
    store: &Store,
    now: i64,
    limit: usize,
    lock: &str,
) -> Result<Vec<DueDelivery>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT o.id, o.tenant_id, o.webhook_id, w.url, w.secret, o.event_type, o.payload, o.attempts
         FROM outbox o JOIN webhooks w ON w.id = o.webhook_id
         WHERE o.state = 'pending' AND o.next_attempt_at <= ?1
         ORDER BY o.next_attempt_at, o.id LIMIT ?2{lock}"
    ))?;
    let mut rows = stmt.query(params![now, limit as i64])?;
    let mut out = Vec::new();
    while let Some(ref r) = rows.next()? {
        let tenant_id: String = r.get(1)?;
        let webhook_id: String = r.get(2)?;
        let keys = store.keys_for(c, &tenant_id)?;
        let secret = keys
            .data
            .open(&r.get::<_, Vec<u8>>(4)?, &secret_aad(&webhook_id))?;
        let body = keys.data.open(
            &r.get::<_, Vec<u8>>(6)?,
            &payload_aad(&tenant_id, &webhook_id),
        )?;
        out.push(DueDelivery {
            outbox_id: r.get(0)?,
            url: r.get(3)?,
            secret: String::from_utf8_lossy(&secret).into_owned(),
            event_type: r.get(5)?,
            body,
            attempts: r.get(7)?,
            tenant_id,
            webhook_id,
        });
    }
    Ok(out)
}

impl Store {
    /// Registers an endpoint. The signing secret is returned once.
    pub async fn create_webhook(
        &self,
        tenant_id: &str,
        url: &str,
        event_types: Vec<String>,
        payload: WebhookPayload,
        actor: &str,
    ) -> Result<(Webhook, String)> {
        let event_types = if event_types.is_empty() {
            vec!["*".to_owned()]
        } else {
            event_types
        };
        for t in &event_types {
            if t != "*" && !WEBHOOK_EVENT_TYPES.contains(&t.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "unknown webhook event type `{t}`; expected `*` or one of {}",
                    WEBHOOK_EVENT_TYPES.join(", ")
                )));
            }
        }
        let mut raw = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("whsec_{}", hex::encode(raw));
        let hook = Webhook {
            id: uuid::Uuid::now_v7().to_string(),
            url: url.to_owned(),
            event_types,
            payload,
            created_at: Timestamp(now_micros()),
        };
        let (h, tenant_id, actor, store, s) = (
            hook.clone(),
            tenant_id.to_owned(),
            actor.to_owned(),
            self.clone(),
            secret.clone(),
        );
        self.write(move |ctx| {
            let keys = store.keys_for(ctx.conn, &tenant_id)?;
            ctx.conn.execute(
                "INSERT INTO webhooks (id, tenant_id, url, event_types, secret, created_at, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![h.id, tenant_id, h.url, serde_json::to_string(&h.event_types).unwrap_or_default(), keys.data.seal(s.as_bytes(), &secret_aad(&h.id)), h.created_at.0, h.payload.as_str()],
            )?;
            ctx.audit(&tenant_id, &AuditEntry::new(actor, "webhook.create", format!("webhook/{}", h.id), Outcome::Ok))?;
            Ok(())
        })
        .await?;
        Ok((hook, secret))
    }

    pub async fn list_webhooks(&self, tenant_id: &str) -> Result<Vec<Webhook>> {
        let t = tenant_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, url, event_types, created_at, payload FROM webhooks WHERE tenant_id = ?1 AND deleted_at IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([t], |r| {
                Ok(Webhook {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    event_types: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                    payload: WebhookPayload::parse(&r.get::<_, String>(4)?),
                    created_at: Timestamp(r.get(3)?),
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    pub async fn delete_webhook(&self, tenant_id: &str, id: &str, actor: &str) -> Result<()> {
        let (t, id, actor) = (tenant_id.to_owned(), id.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let n = ctx.conn.execute(
                "UPDATE webhooks SET deleted_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND deleted_at IS NULL",
                params![id, t, now_micros()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("webhook"));
            }
            ctx.conn.execute(
                "UPDATE outbox SET state = 'cancelled' WHERE webhook_id = ?1 AND state = 'pending'",
                [&id],
            )?;
            ctx.audit(&t, &AuditEntry::new(actor, "webhook.delete", format!("webhook/{id}"), Outcome::Ok))?;
            Ok(())
        })
        .await
    }

    /// Deliveries whose time has come, oldest first, claimed for
    /// [`DELIVERY_LEASE`]: see [`Store::claim_due_deliveries`].
    pub async fn due_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>> {
        self.claim_due_deliveries(limit, DELIVERY_LEASE).await
    }

    /// Deliveries whose time has come, oldest first, for this node to send.
    ///
    /// On PostgreSQL every node runs a dispatcher, so this is a claim: the
    /// rows are taken `FOR UPDATE SKIP LOCKED` (a claim running at the same
    /// moment on another node passes them over) and their next attempt is
    /// pushed `lease` ahead, so no other node finds them due while this one
    /// sends them; [`Store::record_delivery`] then sets what really comes
    /// next. A node that dies mid-delivery leaves them to be sent again once
    /// the lease runs out (deliveries are at least once). Make `lease`
    /// longer than a batch takes to send.
    ///
    /// On SQLite the one process has one dispatcher, which sends a batch
    /// before it asks again: this only reads.
    pub async fn claim_due_deliveries(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<DueDelivery>> {
        let store = self.clone();
        if !matches!(self.0.engine, crate::Engine::Postgres { .. }) {
            return self
                .read(move |c| due_in(c, &store, now_micros(), limit, ""))
                .await;
        }
        let lease = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        self.write(move |ctx| {
            let now = now_micros();
            // Only the outbox rows are locked: two nodes delivering to the
            // same endpoint take different deliveries of it.
            let due = due_in(ctx.conn, &store, now, limit, " FOR UPDATE OF o SKIP LOCKED")?;
            let mut lease_out = ctx.conn.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?2, claimed_by = ?3 WHERE id = ?1",
            )?;
            for d in &due {
                lease_out.execute(params![
                    d.outbox_id,
                    now.saturating_add(lease),
                    store.0.node
                ])?;
            }
            Ok(due)
        })
        .await
    }

    /// PostgreSQL: this node (re)starting gives back the deliveries it had
    /// leased before it stopped, so they go out now rather than when the
    /// lease ends. Returns how many. (SQLite leases nothing.)
    pub async fn release_my_deliveries(&self) -> Result<usize> {
        if !matches!(self.0.engine, crate::Engine::Postgres { .. }) {
            return Ok(0);
        }
        let me = self.0.node.clone();
        self.write(move |ctx| {
            let now = now_micros();
            Ok(ctx.conn.execute(
                "UPDATE outbox SET next_attempt_at = ?2, claimed_by = NULL
                 WHERE claimed_by = ?1 AND state = 'pending' AND next_attempt_at > ?2",
                params![me, now],
            )?)
        })
        .await
    }

    /// When the next pending delivery is due (micros), if any.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'",
                params![],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records one attempt. `next_attempt_at`: when to retry; `None` after a
    /// success or when retries are exhausted (then the delivery is dead).
    pub async fn record_delivery(
        &self,
        d: &DueDelivery,
        status: Option<u16>,
        error: Option<String>,
        duration_ms: i64,
        next_attempt_at: Option<i64>,
    ) -> Result<()> {
        let (outbox_id, webhook_id, attempt, tenant_id) = (
            d.outbox_id,
            d.webhook_id.clone(),
            d.attempts + 1,
            d.tenant_id.clone(),
        );
        let ok = error.is_none() && status.is_some_and(|s| (200..300).contains(&s));
        let state = if ok {
            "delivered"
        } else if next_attempt_at.is_some() {
            "pending"
        } else {
            "dead"
        };
        self.write(move |ctx| {
            ctx.conn.execute(
                "UPDATE outbox SET attempts = ?2, state = ?3, next_attempt_at = COALESCE(?4, next_attempt_at), last_error = ?5 WHERE id = ?1",
                params![outbox_id, attempt, state, next_attempt_at, error],
            )?;
            ctx.conn.execute(
                "INSERT INTO deliveries (outbox_id, webhook_id, attempt, at, status, error, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![outbox_id, webhook_id, attempt, now_micros(), status, error, duration_ms],
            )?;
            if ok {
                // The payload (PHI) has left for the customer's endpoint: a disclosure.
                ctx.audit(
                    &tenant_id,
                    &AuditEntry::new("system:webhooks", "webhook.deliver", format!("webhook/{webhook_id}/delivery/{outbox_id}"), Outcome::Ok),
                )?;
            }
            Ok(())
        })
        .await
    }

    pub async fn list_deliveries(
        &self,
        tenant_id: &str,
        webhook_id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let (t, w) = (tenant_id.to_owned(), webhook_id.to_owned());
        self.read(move |c| {
            c.query_row("SELECT 1 FROM webhooks WHERE id = ?1 AND tenant_id = ?2", params![w, t], |_| Ok(()))
                .map_err(|_| StoreError::NotFound("webhook"))?;
            let mut stmt = c.prepare(
                "SELECT outbox_id, attempt, at, status, error, duration_ms FROM deliveries WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![w, limit as i64], |r| {
                Ok(Delivery {
                    outbox_id: r.get(0)?,
                    attempt: r.get(1)?,
                    at: Timestamp(r.get(2)?),
                    status: r.get(3)?,
                    error: r.get(4)?,
                    duration_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Pending deliveries (for `/metrics`).
    pub async fn outbox_depth(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending'",
                params![],
                |r| r.get(0),
            )?)
        })
        .await
    }
}
