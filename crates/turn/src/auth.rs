//! Long-term credentials (RFC 8489 §9.2), the TURN REST scheme (username
//! `<unix-expiry>:<id>`, password `base64(HMAC-SHA1(secret, username))`),
//! stateless nonces, and a limit on unauthenticated challenges per source.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// The long-term key: MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The TURN REST password for `username` under `secret`.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Short-lived REST credentials for `id` (e.g. `tenant.participant`), valid `ttl`.
pub fn rest_credentials(secret: &str, id: &str, ttl: Duration) -> (String, String) {
    let expiry = now_unix() + ttl.as_secs();
    let username = format!("{expiry}:{id}");
    let password = rest_password(secret, &username);
    (username, password)
}

pub use continuum_core::clock::unix_secs as now_unix;

/// Who may allocate.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Static long-term users (username → password).
    pub users: HashMap<String, String>,
    /// TURN REST shared secrets; several at once so they can be rotated.
    pub rest_secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// Candidate keys to verify MESSAGE-INTEGRITY with (one per REST secret).
    Keys(Vec<[u8; 16]>),
    /// REST username whose expiry has passed.
    Expired,
    Unknown,
}

impl Credentials {
    /// The possible keys for `username` in `realm`.
    pub fn keys(&self, username: &str, realm: &str, now_unix: u64) -> KeyLookup {
        if let Some(p) = self.users.get(username) {
            return KeyLookup::Keys(vec![long_term_key(username, realm, p)]);
        }
        if self.rest_secrets.is_empty() {
            return KeyLookup::Unknown;
        }
        let Some(expiry) = username
            .split_once(':')
            .and_then(|(e, _)| e.parse::<u64>().ok())
        else {
            return KeyLookup::Unknown;
        };
        if expiry < now_unix {
            return KeyLookup::Expired;
        }
        KeyLookup::Keys(
            self.rest_secrets
                .iter()
                .map(|s| long_term_key(username, realm, &rest_password(s, username)))
                .collect(),
        )
    }
}

/// Stateless nonces: `<expiry hex>` + a MAC over it and the client address,
/// so a nonce cannot be replayed from elsewhere and expires on its own.
pub struct Nonces {
    key: [u8; 32],
    pub lifetime: Duration,
}

impl Nonces {
    pub fn new(key: [u8; 32], lifetime: Duration) -> Self {
        Nonces { key, lifetime }
    }

    fn mac(&self, expiry: u64, client: IpAddr) -> String {
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&self.key).expect("any key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let tag = mac.finalize().into_bytes();
        tag[..10].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn mint(&self, client: IpAddr, now_unix: u64) -> String {
        let expiry = now_unix + self.lifetime.as_secs();
        format!("{expiry:x}{}", self.mac(expiry, client))
    }

    /// Valid (ours, for this client, not expired)?
    pub fn check(&self, nonce: &str, client: IpAddr, now_unix: u64) -> NonceCheck {
        if nonce.len() <= 20 || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (exp, tag) = nonce.split_at(nonce.len() - 20);
        let Ok(expiry) = u64::from_str_radix(exp, 16) else {
            return NonceCheck::Invalid;
        };
        if self.mac(expiry, client) != tag {
            return NonceCheck::Invalid;
        }
        if expiry < now_unix {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    Stale,
    Invalid,
}

/// At most `per_second` unauthenticated challenges (401s) per source IP, so
/// the server cannot be used to reflect traffic at a spoofed address.
pub struct ChallengeLimiter {
    per_second: u32,
    windows: HashMap<IpAddr, (u64, u32)>,
}

impl ChallengeLimiter {
    pub fn new(per_second: u32) -> Self {
        ChallengeLimiter {
            per_second,
            windows: HashMap::new(),
        }
    }

    pub fn allow(&mut self, ip: IpAddr, now_unix: u64) -> bool {
        if self.windows.len() > 100_000 {
            self.windows.retain(|_, (t, _)| *t == now_unix);
        }
        let w = self.windows.entry(ip).or_insert((now_unix, 0));
        if w.0 != now_unix {
            *w = (now_unix, 0);
        }
        w.1 += 1;
        w.1 <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_verify_and_expire() {
        let creds = Credentials {
            users: HashMap::new(),
            rest_secrets: vec!["new".into(), "old".into()],
        };
        let (user, pass) = rest_credentials("old", "t1.p7", Duration::from_secs(60));
        let KeyLookup::Keys(keys) = creds.keys(&user, "r", now_unix()) else {
            panic!("a REST user");
        };
        assert!(
            keys.contains(&long_term_key(&user, "r", &pass)),
            "rotated secret still accepted"
        );
        assert_eq!(
            creds.keys(&user, "r", now_unix() + 3600),
            KeyLookup::Expired
        );
        assert_eq!(creds.keys("nobody", "r", now_unix()), KeyLookup::Unknown);
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let n = Nonces::new([9; 32], Duration::from_secs(600));
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let nonce = n.mint(a, 1_000);
        assert_eq!(n.check(&nonce, a, 1_500), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, a, 2_000), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, b, 1_500), NonceCheck::Invalid);
        assert_eq!(n.check("garbage", a, 1_500), NonceCheck::Invalid);
    }

    #[test]
    fn challenges_are_rate_limited_per_source() {
        let mut l = ChallengeLimiter::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow(ip, 10)));
        assert!(!l.allow(ip, 10));
        assert!(l.allow(ip, 11));
    }
}
