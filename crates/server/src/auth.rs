//! Who is calling: a tenant API key (`ck_...`) or a JWT access token, as
//! `Authorization: Bearer ...`. Only where browsers cannot set headers (the
//! signaling WebSocket and the SSE stream) may an access token, never an API
//! key, come as `?access_token=` / `?token=`. Refusals are rate-limited per
//! source and recorded at bounded cost (see `guard`).

use crate::error::ApiError;
use crate::guard::RequestInfo;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use continuum_core::{Grants, Permission, Principal, Role, TokenMeta};
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
    /// The API key at the root of the minting chain: the token dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

impl Claims {
    pub fn meta(&self) -> TokenMeta {
        TokenMeta {
            jti: self.jti.clone(),
            expires_at: self.exp,
            key_id: self.kid.clone(),
        }
    }

    /// The principal this token makes its holder.
    pub fn principal(self) -> Principal {
        let token = self.meta();
        Principal::Token {
            tenant_id: self.tid,
            identity: self.sub,
            role: self.role,
            grants: self.grants,
            region: self.region,
            name: self.name,
            token,
        }
    }
}

/// What a token says about its holder beyond identity and role.
#[derive(Debug, Clone, Default)]
pub struct About {
    /// Display name shown to other participants.
    pub name: Option<String>,
    /// Region, for the order of `ice_servers`.
    pub region: Option<String>,
    /// The API key the minting chain started from (`None`: the server's own).
    pub key_id: Option<String>,
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
        let (token, claims) = self.mint_claims(tenant_id, identity, role, grants, about, ttl);
        (token, claims.exp)
    }

    /// Like [`TokenIssuer::mint`], returning the claims too (for the `jti`).
    pub fn mint_claims(
        &self,
        tenant_id: &str,
        identity: &str,
        role: Role,
        grants: Grants,
        about: About,
        ttl: Duration,
    ) -> (String, Claims) {
        let now = continuum_core::clock::unix_secs();
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
            kid: about.key_id,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail");
        (token, claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims)
    }

    /// A token's claims, its signature checked but not its expiry: only to
    /// tell a patient with an old link who to contact.
    pub fn verify_ignoring_expiry(
        &self,
        token: &str,
    ) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut v = self.validation.clone();
        v.validate_exp = false;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map(|d| d.claims)
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

/// The authenticated caller. Extracting it rejects (and records) bad credentials.
pub struct Auth(pub Principal);

/// Routes where browsers cannot set an `Authorization` header (WebSocket,
/// EventSource): only there may an access token come in the query string.
const QUERY_TOKEN_ROUTES: &[&str] = &[
    "/v1/rtc",
    "/v1/conversations/{id}/events/stream",
    "/v1/conversations/{id}/chat",
    "/v1/inbox/stream",
    "/v1/agents/me/events",
    "/v1/routing/stream",
];

enum Presented {
    Header(String),
    Query(String),
    None,
}

fn presented(parts: &Parts) -> Presented {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let bearer = h.to_str().ok().and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        });
        return bearer.map_or(Presented::None, Presented::Header);
    }
    let Some(query) = parts.uri.query() else {
        return Presented::None;
    };
    query
        .split('&')
        .find_map(|kv| {
            kv.strip_prefix("access_token=")
                .or_else(|| kv.strip_prefix("token="))
        })
        .map_or(Presented::None, |v| Presented::Query(v.to_owned()))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let info = parts
            .extensions
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_else(RequestInfo::unknown);
        let (token, in_query) = match presented(parts) {
            Presented::Header(t) => (t, false),
            Presented::Query(t) if QUERY_TOKEN_ROUTES.contains(&&*info.route) => (t, true),
            Presented::Query(_) => {
                return Err(state
                    .refuse(
                        &info,
                        SERVER_CHAIN,
                        "credentials in the URL are refused here: send `Authorization: Bearer <API key or access token>` \
                         (query tokens are accepted only on /v1/rtc, the events stream and the chat WebSocket)",
                    )
                    .await);
            }
            Presented::None => {
                return Err(state
                    .refuse(
                        &info,
                        SERVER_CHAIN,
                        "missing credentials: send `Authorization: Bearer <API key or access token>`",
                    )
                    .await);
            }
        };
        let principal = if token.starts_with("ck_") {
            if in_query {
                return Err(state
                    .refuse(
                        &info,
                        SERVER_CHAIN,
                        "API keys are never accepted in URLs: mint an access token (POST /v1/tokens) for the browser",
                    )
                    .await);
            }
            state.api_key(&info, &token).await?
        } else {
            match state.tokens.verify(&token) {
                Ok(c) => {
                    let p = c.principal();
                    if let Principal::Token {
                        tenant_id, token, ..
                    } = &p
                        && let Err(reason) = state.revocations.check(tenant_id, token)
                    {
                        return Err(state.refuse(&info, tenant_id, reason).await);
                    }
                    p
                }
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
                    return Err(state.refuse(&info, &chain, reason).await);
                }
            }
        };
        let (api_key, credential) = match &principal {
            Principal::ApiKey { key_id, .. } => (true, format!("api_key:{key_id}")),
            Principal::Token { token, .. } => (false, format!("token:{}", token.jti)),
        };
        state
            .limits
            .credential(api_key, &credential)
            .map_err(ApiError::too_many)?;
        info.set_credential(principal.tenant_id(), credential);
        Ok(Auth(principal))
    }
}

impl AppState {
    /// Checks an API key: from the cache, else (unless the source is being
    /// throttled: then no database work at all) from the store.
    async fn api_key(&self, info: &RequestInfo, key: &str) -> Result<Principal, ApiError> {
        if let Some((tenant_id, key_id)) = self.keys.get(key) {
            return Ok(Principal::ApiKey { tenant_id, key_id });
        }
        if let Some(wait) = self.limits.throttled(info.source) {
            return Err(self.throttle(info, SERVER_CHAIN, wait).await);
        }
        match self.store.verify_api_key(key).await? {
            Some((tenant_id, key_id)) => {
                self.keys.put(key, tenant_id.clone(), key_id.clone());
                Ok(Principal::ApiKey { tenant_id, key_id })
            }
            None => Err(self
                .refuse(info, SERVER_CHAIN, "the API key is unknown or revoked")
                .await),
        }
    }

    /// Refuses an unauthenticated request: 401, recorded under the route
    /// template (never the raw path) at bounded cost; 429 once the source has
    /// spent its refusals for the minute.
    pub async fn refuse(&self, info: &RequestInfo, chain: &str, reason: &str) -> ApiError {
        if let Err(wait) = self.limits.refusal(info.source) {
            return self.throttle(info, chain, wait).await;
        }
        let actor = format!("anonymous@{}", crate::guard::limits::bucket(info.source));
        self.audit_denial(chain, &actor, "authenticate", &info.route, reason)
            .await;
        ApiError::unauthorized(reason)
    }

    /// 429 for a source over its refusal budget: counted in the minute's
    /// summary (in memory; written once per source and minute).
    async fn throttle(&self, info: &RequestInfo, chain: &str, wait: u64) -> ApiError {
        metrics::counter!("continuum_http_refusals_throttled_total").increment(1);
        let actor = format!("anonymous@{}", crate::guard::limits::bucket(info.source));
        self.audit_denial(
            chain,
            &actor,
            "authenticate",
            &info.route,
            "rate limited: too many refused requests from this source",
        )
        .await;
        ApiError::too_many(wait)
    }

    /// Records a refusal through the aggregator (the first of its kind in a
    /// minute at once, the repeats as one summary); failures to record are
    /// logged, never shown to the caller.
    pub async fn audit_denial(
        &self,
        tenant_id: &str,
        actor: &str,
        action: &str,
        object: &str,
        reason: &str,
    ) {
        metrics::counter!("continuum_refusals_total", "action" => action.to_owned()).increment(1);
        let records = self.refusals.note(
            tenant_id,
            actor,
            action,
            object,
            reason,
            continuum_core::clock::unix_secs(),
        );
        self.write_records(records).await;
    }

    /// Writes refusal records (and summaries) to their chains.
    pub async fn write_records(&self, records: Vec<crate::guard::refusals::Record>) {
        for (chain, entry) in records {
            if let Err(e) = self.store.audit(&chain, entry).await {
                tracing::warn!(error = %e, "could not record a refusal in the audit chain");
            }
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
        ManageRouting => "manage queues, agents or IVR flows (admin role needed)",
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
