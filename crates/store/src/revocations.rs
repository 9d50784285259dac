//! Revoked access tokens (by `jti`). A row lives until the token would have
//! expired anyway, so the table stays as small as the set of live revoked
//! tokens; every node loads it at start and on change.

use crate::audit::{AuditEntry, Outcome};
use crate::db::params;
use crate::error::Result;
use crate::{Store, now_micros};

/// One revoked token: `(tenant id, jti, until)` with `until` in Unix seconds.
pub type RevokedToken = (String, String, u64);

impl Store {
    /// Revokes the token `jti` of `tenant_id` until `until` (Unix seconds:
    /// when it expires at the latest). Revoking twice is not an error.
    pub async fn revoke_token(
        &self,
        tenant_id: &str,
        jti: &str,
        until: u64,
        actor: &str,
    ) -> Result<()> {
        let (tenant_id, jti, actor) = (tenant_id.to_owned(), jti.to_owned(), actor.to_owned());
        self.write(move |ctx| {
            let now = now_micros();
            ctx.conn.execute(
                "DELETE FROM revoked_tokens WHERE until < ?1",
                [now / 1_000_000],
            )?;
            ctx.conn.execute(
                "INSERT INTO revoked_tokens (tenant_id, jti, until, revoked_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, jti) DO UPDATE SET until = CASE WHEN excluded.until > revoked_tokens.until
                    THEN excluded.until ELSE revoked_tokens.until END",
                params![tenant_id, jti, until as i64, now],
            )?;
            ctx.audit(
                &tenant_id,
                &AuditEntry::new(actor, "token.revoke", format!("token/{jti}"), Outcome::Ok),
            )?;
            Ok(())
        })
        .await
    }

    /// Every token revocation still in force at `now` (Unix seconds).
    pub async fn revoked_tokens(&self, now: u64) -> Result<Vec<RevokedToken>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT tenant_id, jti, until FROM revoked_tokens WHERE until >= ?1",
            )?;
            let rows = stmt.query_map([now as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await
    }
}
