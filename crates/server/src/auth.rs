//! Who is calling: a tenant API key (`ck_...`) or a JWT access token, both as
//! `Authorization: Bearer ...` (or `?access_token=` where headers cannot be
//! set, e.g. EventSource and WebSocket). Every failure is audited.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use continuum_core::{Grants, Permission, Principal, Role};
use continuum_store::{AuditEntry, Outcome, SERVER_CHAIN};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ISSUER: &str = "continuum";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// Tenant id: a token is only ever valid inside its tenant.
    pub tid: String,
    pub role: Role,
    #[serde(default)]
    pub grants: Grants,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The participant's region: TURN nodes there come first in the
    /// `ice_servers` of the signaling `joined` reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// What a token says about its holder beyond identity and role.
#[derive(Debug, Clone, Default)]
pub struct About {
    /// Display name shown to other participants.
    pub name: Option<String>,
    /// Region, for the order of `ice_servers`.
    pub region: Option<String>,
}

/// Mints and checks access tokens (HS256 under a key derived from the master key).
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenIssuer {
    pub fn new(master: &continuum_store::SecretKey) -> Self {
        let key = master.derive("jwt-hs256");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        TokenIssuer {
            encoding: EncodingKey::from_secret(key.as_bytes()),
            decoding: DecodingKey::from_secret(key.as_bytes()),
            validation,
        }
    }

    pub fn mint(
        &self,
        tenant_id: &str,
        identity: &str,
        role: Role,
        grants: Grants,
        about: About,
        ttl: Duration,
    ) -> (String, u64) {
        let now = unix_now();
        let exp = now + ttl.as_secs();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: identity.into(),
            tid: tenant_id.into(),
            role,
            grants,
            iat: now,
            exp,
            jti: uuid::Uuid::now_v7().to_string(),
            name: about.name,
            region: about.region,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail");
        (token, exp)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims)
    }

    /// The tenant a token claims, read without trusting it: only to know whose
    /// audit chain a refused token belongs in.
    pub fn unverified_tenant(token: &str) -> Option<String> {
        use base64::Engine;
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some(v.get("tid")?.as_str()?.to_owned())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verified API keys, briefly cached so that hot clients cost no database read.
/// Revocation through the API clears the entry at once; through the CLI of
/// another process it takes effect within the TTL.
pub struct KeyCache {
    entries: Mutex<HashMap<String, (String, String, Instant)>>,
    ttl: Duration,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }
    fn get(&self, key: &str) -> Option<(String, String)> {
        let map = self.entries.lock();
        let (t, k, at) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| (t.clone(), k.clone()))
    }
    fn put(&self, key: &str, tenant: String, key_id: String) {
        let mut map = self.entries.lock();
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(key.to_owned(), (tenant, key_id, Instant::now()));
    }
    pub fn forget_key_id(&self, key_id: &str) {
        self.entries.lock().retain(|_, (_, k, _)| k != key_id);
    }
}

/// The authenticated caller. Extracting it rejects (and audits) bad credentials.
pub struct Auth(pub Principal);

fn bearer(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let v = h.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned());
    }
    let query = parts.uri.query()?;
    query.split('&').find_map(|kv| {
        kv.strip_prefix("access_token=")
            .or_else(|| kv.strip_prefix("token="))
            .map(|v| v.to_owned())
    })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let object = parts.uri.path().to_owned();
        let Some(token) = bearer(parts) else {
            state
                .audit_denial(
                    SERVER_CHAIN,
                    "anonymous",
                    "authenticate",
                    &object,
                    "no credentials",
                )
                .await;
            return Err(ApiError::unauthorized(
                "missing credentials: send `Authorization: Bearer <API key or access token>`",
            ));
        };
        if token.starts_with("ck_") {
            if let Some((tenant_id, key_id)) = state.keys.get(&token) {
                return Ok(Auth(Principal::ApiKey { tenant_id, key_id }));
            }
            return match state.store.verify_api_key(&token).await? {
                Some((tenant_id, key_id)) => {
                    state.keys.put(&token, tenant_id.clone(), key_id.clone());
                    Ok(Auth(Principal::ApiKey { tenant_id, key_id }))
                }
                None => {
                    state
                        .audit_denial(
                            SERVER_CHAIN,
                            "api_key:?",
                            "authenticate",
                            &object,
                            "unknown or revoked API key",
                        )
                        .await;
                    Err(ApiError::unauthorized("the API key is unknown or revoked"))
                }
            };
        }
        match state.tokens.verify(&token) {
            Ok(c) => Ok(Auth(Principal::Token {
                tenant_id: c.tid,
                identity: c.sub,
                role: c.role,
                grants: c.grants,
                region: c.region,
            })),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        "the access token has expired; mint a new one with POST /v1/tokens"
                    }
                    ErrorKind::InvalidSignature => "the access token's signature is invalid",
                    _ => "the access token is malformed or not issued by this server",
                };
                // Only a token that really was ours (signature fine) is charged to its tenant.
                let chain = match e.kind() {
                    ErrorKind::ExpiredSignature => TokenIssuer::unverified_tenant(&token)
                        .unwrap_or_else(|| SERVER_CHAIN.into()),
                    _ => SERVER_CHAIN.into(),
                };
                state
                    .audit_denial(&chain, "token:?", "authenticate", &object, reason)
                    .await;
                Err(ApiError::unauthorized(reason))
            }
        }
    }
}

impl AppState {
    /// Records a refusal; failures to record are logged, never shown to the caller.
    pub async fn audit_denial(
        &self,
        tenant_id: &str,
        actor: &str,
        action: &str,
        object: &str,
        reason: &str,
    ) {
        let entry = AuditEntry::new(actor, action, object, Outcome::Denied)
            .with_detail(serde_json::json!({ "reason": reason }));
        if let Err(e) = self.store.audit(tenant_id, entry).await {
            tracing::warn!(error = %e, "could not record a denial in the audit chain");
        }
    }

    /// Refuses (403, audited) unless `p` may do `perm`.
    pub async fn require(
        &self,
        p: &Principal,
        perm: Permission,
        object: &str,
    ) -> Result<(), ApiError> {
        if p.may(perm) {
            return Ok(());
        }
        let what = format!("{perm:?}");
        self.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            &what,
            object,
            "role lacks permission",
        )
        .await;
        Err(ApiError::forbidden(format!(
            "this credential may not {}",
            describe(perm)
        )))
    }

    /// Refuses with 404 (audited) unless `p` may touch this conversation: a
    /// conversation outside one's grants is indistinguishable from a missing one.
    pub async fn require_conversation(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        if p.may_access_conversation(id) {
            return Ok(());
        }
        self.audit_denial(
            p.tenant_id(),
            &p.audit_actor(),
            "conversation.access",
            &format!("conversation/{id}"),
            "not in grants",
        )
        .await;
        Err(ApiError::not_found("conversation"))
    }
}

fn describe(p: Permission) -> &'static str {
    use Permission::*;
    match p {
        ManageTenant => "manage the tenant",
        MintTokens => "mint access tokens (use the tenant API key or an admin token)",
        ReadContacts => "read contacts",
        WriteContacts => "create or change contacts",
        ManageStaff => "manage staff",
        ListConversations => "list conversations",
        ReadConversation => "read conversations",
        WriteConversation => "create conversations",
        ChangeConversationState => "change a conversation's state",
        ReadTimeline => "read the timeline",
        AppendEvent => "append events",
        ReadContext => "read the context snapshot",
        ReadAudit => "read the audit log (auditor or admin role needed)",
        ManageWebhooks => "manage webhooks",
    }
}

impl AppState {
    /// Turns a failed write into its API error, auditing attempts on objects
    /// that do not exist (or belong to another tenant).
    pub async fn audit_failure(
        &self,
        p: &Principal,
        action: &str,
        object: &str,
        e: continuum_store::StoreError,
    ) -> ApiError {
        if let continuum_store::StoreError::NotFound(_) = e {
            let entry = AuditEntry::new(p.audit_actor(), action, object, Outcome::NotFound);
            if let Err(err) = self.store.audit(p.tenant_id(), entry).await {
                tracing::warn!(error = %err, "could not record a failed attempt in the audit chain");
            }
        }
        e.into()
    }
}
