//! Revoked access tokens and API keys, held in memory for a check on every
//! use (REST, live streams, signaling). Loaded from the store at start, kept
//! current by the API, and re-read periodically for revocations made by
//! another process (the CLI).

use continuum_core::TokenMeta;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use tokio::sync::watch;

pub struct Revocations {
    /// (tenant, jti) → until (Unix seconds).
    tokens: RwLock<HashMap<(String, String), u64>>,
    keys: RwLock<HashSet<String>>,
    /// Bumped on every new revocation: live streams and sockets re-check.
    changed: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            tokens: RwLock::default(),
            keys: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Revocations {
    /// Why a token is no longer good, if it is not.
    pub fn check(&self, tenant_id: &str, token: &TokenMeta) -> Result<(), &'static str> {
        if let Some(kid) = &token.key_id
            && self.keys.read().contains(kid)
        {
            return Err("the API key that minted this access token has been revoked");
        }
        if self
            .tokens
            .read()
            .contains_key(&(tenant_id.to_owned(), token.jti.clone()))
        {
            return Err("the access token has been revoked");
        }
        Ok(())
    }

    /// Whether a principal's credential was revoked since it authenticated.
    pub fn principal_revoked(&self, p: &continuum_core::Principal) -> bool {
        match p {
            continuum_core::Principal::ApiKey { key_id, .. } => self.keys.read().contains(key_id),
            continuum_core::Principal::Token {
                tenant_id, token, ..
            } => self.check(tenant_id, token).is_err(),
        }
    }

    pub fn revoke_token(&self, tenant_id: &str, jti: &str, until: u64) {
        self.tokens
            .write()
            .insert((tenant_id.to_owned(), jti.to_owned()), until);
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn revoke_key(&self, key_id: &str) {
        self.keys.write().insert(key_id.to_owned());
        self.changed.send_modify(|g| *g += 1);
    }

    /// Replaces the sets with what the store holds (tokens still in force at
    /// `now`), waking the watchers when something new appeared.
    pub fn replace(&self, tokens: Vec<continuum_store::RevokedToken>, keys: Vec<String>) {
        let tokens: HashMap<_, _> = tokens.into_iter().map(|(t, j, u)| ((t, j), u)).collect();
        let keys: HashSet<_> = keys.into_iter().collect();
        let grew = {
            let old_t = self.tokens.read();
            let old_k = self.keys.read();
            tokens.keys().any(|k| !old_t.contains_key(k)) || keys.iter().any(|k| !old_k.contains(k))
        };
        *self.tokens.write() = tokens;
        *self.keys.write() = keys;
        if grew {
            self.changed.send_modify(|g| *g += 1);
        }
    }

    /// Re-reads the store's revocations.
    pub async fn refresh(&self, store: &continuum_store::Store) -> continuum_store::Result<()> {
        let now = continuum_core::clock::unix_secs();
        let tokens = store.revoked_tokens(now).await?;
        let keys = store.revoked_key_ids().await?;
        self.replace(tokens, keys);
        Ok(())
    }

    /// Woken on every new revocation.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(jti: &str, kid: Option<&str>) -> TokenMeta {
        TokenMeta {
            jti: jti.into(),
            expires_at: 0,
            key_id: kid.map(str::to_owned),
        }
    }

    #[test]
    fn tokens_die_by_jti_within_their_tenant_and_with_their_key() {
        let r = Revocations::default();
        let w = r.watch();
        r.revoke_token("t1", "j1", 100);
        assert!(w.has_changed().unwrap());
        assert!(r.check("t1", &meta("j1", None)).is_err());
        assert!(
            r.check("t2", &meta("j1", None)).is_ok(),
            "another tenant's jti"
        );
        r.revoke_key("k1");
        assert!(r.check("t1", &meta("j9", Some("k1"))).is_err());
        assert!(r.check("t1", &meta("j9", Some("k2"))).is_ok());
    }
}
