//! HTTP Digest for SIP (RFC 2617 / RFC 7616 as used by RFC 3261 22): MD5
//! with `qop=auth` (and the qop-less RFC 2069 form some PBXes still send).
//!
//! Server nonces are stateless: `hex(time) || hex(HMAC-SHA256(key, time ||
//! realm))[..32]`, so any node holding the key verifies them and nothing is
//! stored per challenge. The price: a response can be replayed while its
//! nonce is fresh (we keep no nc table); nonces live `lifetime` (default 5
//! min), and an old one gets `stale=true` so clients retry silently.
//!
//! The header parser is ours (20 lines, fuzzed through the endpoint): rsip's
//! typed Authorization rejects parameters it does not know.

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("malformed Digest header")]
    Malformed,
    #[error("unsupported digest algorithm")]
    Algorithm,
    #[error("realm differs from ours")]
    Realm,
    #[error("nonce not issued by us")]
    Nonce,
    /// The nonce was ours but is too old: challenge again with stale=true.
    #[error("stale nonce")]
    Stale,
    #[error("wrong credentials")]
    Response,
}

/// The parameters of a `Digest ...` header, lowercased names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestParams(pub Vec<(String, String)>);

impl DigestParams {
    pub fn parse(value: &str) -> Result<DigestParams, AuthError> {
        let value = value.trim();
        let rest = match value.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("digest") => rest,
            _ => return Err(AuthError::Malformed),
        };
        let mut out = Vec::new();
        let mut s = rest.trim_start();
        while !s.is_empty() {
            let (name, after) = s.split_once('=').ok_or(AuthError::Malformed)?;
            let name = name.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (val, tail) = if let Some(q) = after.strip_prefix('"') {
                let end = q.find('"').ok_or(AuthError::Malformed)?;
                (&q[..end], &q[end + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim(), &after[end..])
            };
            out.push((name, val.to_string()));
            s = tail.trim_start();
            s = s.strip_prefix(',').unwrap_or(s).trim_start();
        }
        Ok(DigestParams(out))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// HA1 = H(username:realm:password): what a user store may keep instead of
/// the password.
pub fn ha1_md5(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}:{realm}:{password}"))
}

/// The secret a server checks against.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    Password(&'a str),
    /// Precomputed MD5 HA1, hex.
    Ha1(&'a str),
}

/// What a verified Authorization said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub username: String,
}

/// Stateless challenges and verification for one realm.
#[derive(Debug, Clone)]
pub struct DigestServer {
    realm: String,
    key: [u8; 32],
    lifetime: Duration,
    epoch: Instant,
}

impl DigestServer {
    /// `epoch` anchors nonce times (sans-IO: only `Instant`s come in), so
    /// nonces do not outlive the process that issued them.
    pub fn new(
        realm: impl Into<String>,
        key: [u8; 32],
        lifetime: Duration,
        epoch: Instant,
    ) -> Self {
        DigestServer {
            realm: realm.into(),
            key,
            lifetime,
            epoch,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, time: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&time.to_be_bytes());
        mac.update(self.realm.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    pub fn nonce(&self, now: Instant) -> String {
        let time = now.saturating_duration_since(self.epoch).as_secs();
        format!("{time:016x}{}", self.mac(time))
    }

    /// The WWW-Authenticate / Proxy-Authenticate value.
    pub fn challenge(&self, now: Instant, stale: bool) -> String {
        let mut v = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            self.realm,
            self.nonce(now)
        );
        if stale {
            v.push_str(", stale=true");
        }
        v
    }

    /// Checks an Authorization / Proxy-Authorization value for `method`.
    pub fn verify(
        &self,
        header: &str,
        method: &str,
        secret: Secret<'_>,
        now: Instant,
    ) -> Result<Verified, AuthError> {
        let p = DigestParams::parse(header)?;
        let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
            p.get("username"),
            p.get("realm"),
            p.get("nonce"),
            p.get("uri"),
            p.get("response"),
        ) else {
            return Err(AuthError::Malformed);
        };
        if !p
            .get("algorithm")
            .is_none_or(|a| a.eq_ignore_ascii_case("md5"))
        {
            return Err(AuthError::Algorithm);
        }
        if realm != self.realm {
            return Err(AuthError::Realm);
        }
        if nonce.len() != 48 || !nonce.is_ascii() {
            return Err(AuthError::Nonce);
        }
        let time = u64::from_str_radix(&nonce[..16], 16).map_err(|_| AuthError::Nonce)?;
        if !bool::from(self.mac(time).as_bytes().ct_eq(&nonce.as_bytes()[16..])) {
            return Err(AuthError::Nonce);
        }
        let ha1 = match secret {
            Secret::Password(pw) => ha1_md5(username, realm, pw),
            Secret::Ha1(h) => h.to_ascii_lowercase(),
        };
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let expected = match p.get("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (p.get("nc"), p.get("cnonce")) else {
                    return Err(AuthError::Malformed);
                };
                md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
            }
            Some(_) => return Err(AuthError::Algorithm),
            None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
        };
        let ok = bool::from(
            expected
                .as_bytes()
                .ct_eq(response.to_ascii_lowercase().as_bytes()),
        );
        if !ok {
            return Err(AuthError::Response);
        }
        // Only after the response checks: a stale flag must not tell an
        // attacker anything about a password guess.
        let age = now
            .saturating_duration_since(self.epoch)
            .as_secs()
            .saturating_sub(time);
        if age > self.lifetime.as_secs() {
            return Err(AuthError::Stale);
        }
        Ok(Verified {
            username: username.to_string(),
        })
    }
}

/// A user's credentials for answering challenges.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for DigestCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Client side: answers challenges, counting nc per nonce.
#[derive(Debug, Clone, Default)]
pub struct DigestClient {
    nonce: String,
    nc: u32,
}

impl DigestClient {
    /// The Authorization value for `challenge` (a WWW-/Proxy-Authenticate
    /// value). `cnonce` comes from the caller's RNG (sans-IO).
    pub fn authorize(
        &mut self,
        creds: &DigestCredentials,
        challenge: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Result<String, AuthError> {
        let p = DigestParams::parse(challenge)?;
        let realm = p.get("realm").ok_or(AuthError::Malformed)?;
        let nonce = p.get("nonce").ok_or(AuthError::Malformed)?;
        let algorithm = p.get("algorithm").unwrap_or("MD5");
        let hash: fn(&str) -> String = if algorithm.eq_ignore_ascii_case("md5") {
            md5_hex
        } else if algorithm.eq_ignore_ascii_case("sha-256") {
            sha256_hex
        } else {
            return Err(AuthError::Algorithm);
        };
        let qop_auth = p
            .get("qop")
            .map(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")));
        if qop_auth == Some(false) {
            return Err(AuthError::Algorithm); // auth-int only
        }
        if self.nonce != nonce {
            self.nonce = nonce.to_string();
            self.nc = 0;
        }
        self.nc += 1;
        let ha1 = hash(&format!("{}:{realm}:{}", creds.username, creds.password));
        let ha2 = hash(&format!("{method}:{uri}"));
        let mut v = format!(
            "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\"",
            creds.username
        );
        if qop_auth == Some(true) {
            let nc = format!("{:08x}", self.nc);
            let response = hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
            v.push_str(&format!(
                ", response=\"{response}\", algorithm={algorithm}, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
            ));
        } else {
            let response = hash(&format!("{ha1}:{nonce}:{ha2}"));
            v.push_str(&format!(", response=\"{response}\", algorithm={algorithm}"));
        }
        if let Some(opaque) = p.get("opaque") {
            v.push_str(&format!(", opaque=\"{opaque}\""));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> DigestCredentials {
        DigestCredentials {
            username: "bob".into(),
            password: "zanzibar".into(),
        }
    }

    #[test]
    fn rfc2617_vector() {
        // RFC 2617 3.5, with the SIP-style method.
        let mut c = DigestClient::default();
        let ch = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let creds = DigestCredentials {
            username: "Mufasa".into(),
            password: "Circle Of Life".into(),
        };
        let v = c
            .authorize(&creds, ch, "GET", "/dir/index.html", "0a4f113b")
            .unwrap();
        assert!(
            v.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{v}"
        );
        assert!(v.contains("nc=00000001"));
        let v = c
            .authorize(&creds, ch, "GET", "/dir/index.html", "0a4f113b")
            .unwrap();
        assert!(v.contains("nc=00000002"), "nc counts per nonce");
        assert!(v.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
    }

    #[test]
    fn server_round_trip_stale_and_wrong() {
        let t0 = Instant::now();
        let s = DigestServer::new("continuum", [7; 32], Duration::from_secs(300), t0);
        let ch = s.challenge(t0, false);
        let mut c = DigestClient::default();
        let auth = c
            .authorize(&creds(), &ch, "INVITE", "sip:1000@x", "abc")
            .unwrap();
        let ok = s
            .verify(&auth, "INVITE", Secret::Password("zanzibar"), t0)
            .unwrap();
        assert_eq!(ok.username, "bob");
        let ha1 = ha1_md5("bob", "continuum", "zanzibar");
        assert!(s.verify(&auth, "INVITE", Secret::Ha1(&ha1), t0).is_ok());
        assert_eq!(
            s.verify(&auth, "INVITE", Secret::Password("nope"), t0),
            Err(AuthError::Response)
        );
        assert_eq!(
            s.verify(&auth, "BYE", Secret::Password("zanzibar"), t0),
            Err(AuthError::Response)
        );
        let later = t0 + Duration::from_secs(301);
        assert_eq!(
            s.verify(&auth, "INVITE", Secret::Password("zanzibar"), later),
            Err(AuthError::Stale)
        );
        assert!(s.challenge(later, true).ends_with("stale=true"));
        let other = DigestServer::new("continuum", [8; 32], Duration::from_secs(300), t0);
        assert_eq!(
            other.verify(&auth, "INVITE", Secret::Password("zanzibar"), t0),
            Err(AuthError::Nonce)
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        let t0 = Instant::now();
        let s = DigestServer::new("r", [1; 32], Duration::from_secs(60), t0);
        for h in [
            "",
            "Basic abc",
            "Digest",
            "Digest username=\"a",
            "Digest realm=r, nonce=é",
            "Digest a=b",
        ] {
            assert!(
                s.verify(h, "INVITE", Secret::Password("x"), t0).is_err(),
                "{h}"
            );
        }
        let h = "Digest username=\"a\", realm=\"r\", nonce=\"ééééééééééééééééééééééééé\", uri=\"x\", response=\"0\"";
        assert!(s.verify(h, "INVITE", Secret::Password("x"), t0).is_err());
    }

    #[test]
    fn sha256_challenge_supported_on_client() {
        let mut c = DigestClient::default();
        let v = c
            .authorize(
                &creds(),
                "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\"",
                "INVITE",
                "sip:x",
                "c",
            )
            .unwrap();
        assert!(v.contains("algorithm=SHA-256"));
        assert!(
            c.authorize(
                &creds(),
                "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
                "INVITE",
                "sip:x",
                "c"
            )
            .is_err()
        );
    }
}
