//! `X-Twilio-Signature`: HMAC over the exact public URL Twilio requested
//! followed by every POST parameter, name then value, sorted by name.
//!
//! Written to match the official helper libraries (twilio-python's
//! `RequestValidator`), which the tests run against:
//! - names are sorted by code point and each name is signed once; its values
//!   are sorted and deduplicated (`sorted(set(values))`), so a repeated
//!   `Digits=1234` counts once;
//! - the URL is checked as given and, because Twilio's own signing is
//!   inconsistent about ports, also with the port removed and with the
//!   scheme's default port added;
//! - HMAC-SHA1 keyed with the account's auth token, base64; HMAC-SHA256
//!   with a webhook SharedKey when `X-Twilio-Webhooks-Signature-Settings`
//!   says so.
//!
//! Deployments behind a proxy must sign against the URL Twilio used, not the
//! one the server saw: build it with [`public_url`] from the configured
//! public base URL.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use std::collections::{BTreeMap, BTreeSet};
use subtle::ConstantTimeEq;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// The header naming a SharedKey and algorithm (absent: auth token, SHA-1).
pub const SIGNATURE_SETTINGS_HEADER: &str = "X-Twilio-Webhooks-Signature-Settings";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// The default: keyed with the account's auth token.
    #[default]
    HmacSha1,
    /// Keyed with a webhook SharedKey secret.
    HmacSha256,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("X-Twilio-Signature header is missing")]
    Missing,
    #[error("X-Twilio-Signature header is not a base64 {expected_bytes}-byte HMAC")]
    Malformed { expected_bytes: usize },
    #[error(
        "X-Twilio-Signature does not match the URL and parameters (is the public base URL the one configured at Twilio?)"
    )]
    Mismatch,
    #[error(
        "X-Twilio-Webhooks-Signature-Settings names an unsupported algorithm (expected HMAC_SHA1 or HMAC_SHA256)"
    )]
    UnsupportedAlgorithm,
    /// Anyone can compute an HMAC keyed with nothing.
    #[error("no auth token is configured to check X-Twilio-Signature: every request is refused")]
    NoSecret,
}

/// Reads `X-Twilio-Webhooks-Signature-Settings`
/// (`key=<id>,algorithm=HMAC_SHA256`). Absent, or without `algorithm=`:
/// the auth token and HMAC-SHA1.
pub fn algorithm_from_settings(header: Option<&str>) -> Result<Algorithm, SignatureError> {
    let named = header
        .unwrap_or("")
        .split(',')
        .filter_map(|part| part.split_once('='))
        .find(|(k, v)| k.trim() == "algorithm" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_ascii_uppercase());
    match named.as_deref() {
        None | Some("HMAC_SHA1") => Ok(Algorithm::HmacSha1),
        Some("HMAC_SHA256") => Ok(Algorithm::HmacSha256),
        Some(_) => Err(SignatureError::UnsupportedAlgorithm),
    }
}

/// The URL Twilio requested: the configured public base URL (scheme, host,
/// optional port and path prefix, as entered in Twilio's console) followed
/// by the request's path and query exactly as received.
pub fn public_url(public_base: &str, path_and_query: &str) -> String {
    let base = public_base.trim_end_matches('/');
    if path_and_query.starts_with('/') {
        format!("{base}{path_and_query}")
    } else {
        format!("{base}/{path_and_query}")
    }
}

/// The signature Twilio sends for `url` and `params` (HMAC-SHA1, auth token).
pub fn signature<K: AsRef<str>, V: AsRef<str>>(
    auth_token: &str,
    url: &str,
    params: &[(K, V)],
) -> String {
    signature_with(Algorithm::HmacSha1, auth_token, url, params)
}

pub fn signature_with<K: AsRef<str>, V: AsRef<str>>(
    algorithm: Algorithm,
    secret: &str,
    url: &str,
    params: &[(K, V)],
) -> String {
    STANDARD.encode(mac(algorithm, secret, url, &sorted(params)))
}

/// Checks `X-Twilio-Signature` (`header`, `None` when absent) against the
/// URL and the form parameters (decoded, repeated names allowed).
pub fn validate<K: AsRef<str>, V: AsRef<str>>(
    auth_token: &str,
    url: &str,
    params: &[(K, V)],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    validate_with(Algorithm::HmacSha1, auth_token, url, params, header)
}

pub fn validate_with<K: AsRef<str>, V: AsRef<str>>(
    algorithm: Algorithm,
    secret: &str,
    url: &str,
    params: &[(K, V)],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let expected_bytes = match algorithm {
        Algorithm::HmacSha1 => 20,
        Algorithm::HmacSha256 => 32,
    };
    let given = STANDARD
        .decode(header)
        .ok()
        .filter(|b| b.len() == expected_bytes)
        .ok_or(SignatureError::Malformed { expected_bytes })?;
    let params = sorted(params);
    let mut ok = subtle::Choice::from(0);
    for candidate in url_variants(url) {
        ok |= mac(algorithm, secret, &candidate, &params)
            .as_slice()
            .ct_eq(&given);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

type Sorted<'a> = BTreeMap<&'a str, BTreeSet<&'a str>>;

fn sorted<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> Sorted<'_> {
    let mut m: Sorted<'_> = BTreeMap::new();
    for (k, v) in params {
        m.entry(k.as_ref()).or_default().insert(v.as_ref());
    }
    m
}

fn mac(algorithm: Algorithm, secret: &str, url: &str, params: &Sorted<'_>) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(
        secret: &str,
        url: &str,
        params: &Sorted<'_>,
    ) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        m.update(url.as_bytes());
        for (name, values) in params {
            for value in values {
                m.update(name.as_bytes());
                m.update(value.as_bytes());
            }
        }
        m.finalize().into_bytes().to_vec()
    }
    match algorithm {
        Algorithm::HmacSha1 => run::<Hmac<sha1::Sha1>>(secret, url, params),
        Algorithm::HmacSha256 => run::<Hmac<sha2::Sha256>>(secret, url, params),
    }
}

/// The URL as given, without its port, and with the scheme's default port:
/// the forms the helper libraries accept. Plain string surgery, never a URL
/// parser, which would normalise (case, escapes) what Twilio signed as is.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let auth_start = scheme_end + 3;
    let auth_end = url[auth_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| auth_start + i);
    let authority = &url[auth_start..auth_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    let port_colon = host_port
        .rfind(':')
        .filter(|&i| !host_port[i..].contains(']'))
        .filter(|&i| {
            let p = &host_port[i + 1..];
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        });
    match port_colon {
        Some(i) => {
            let colon = auth_start + host_start + i;
            out.push(format!("{}{}", &url[..colon], &url[auth_end..]));
        }
        None => {
            let port = if url[..scheme_end].eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            out.push(format!("{}:{port}{}", &url[..auth_end], &url[auth_end..]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const PARAMS: [(&str, &str); 5] = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ];

    #[test]
    fn twilio_documentation_vector() {
        assert_eq!(
            signature("12345", URL, &PARAMS),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            validate("12345", URL, &PARAMS, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")),
            Ok(())
        );
    }

    /// twilio-python's repeated-parameter vector: values of one name are
    /// sorted and deduplicated.
    #[test]
    fn repeated_parameters() {
        let params = [
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ];
        assert_eq!(
            signature("12345", URL, &params),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
    }

    #[test]
    fn port_variants() {
        assert_eq!(
            url_variants("https://h.example/p?q=1"),
            ["https://h.example/p?q=1", "https://h.example:443/p?q=1"]
        );
        assert_eq!(
            url_variants("http://h.example:8080/p"),
            ["http://h.example:8080/p", "http://h.example/p"]
        );
        assert_eq!(
            url_variants("https://[::1]:8443/x"),
            ["https://[::1]:8443/x", "https://[::1]/x"]
        );
        assert_eq!(
            url_variants("https://[::1]/x"),
            ["https://[::1]/x", "https://[::1]:443/x"]
        );
        assert_eq!(
            url_variants("https://h.example"),
            ["https://h.example", "https://h.example:443"]
        );
        assert_eq!(url_variants("no scheme"), ["no scheme"]);
        // Signed with the port, requested without: accepted.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let sig = signature("12345", with_port, &PARAMS);
        assert_eq!(validate("12345", URL, &PARAMS, Some(&sig)), Ok(()));
    }

    #[test]
    fn rejections() {
        let sig = signature("12345", URL, &PARAMS);
        assert_eq!(
            validate("12345", URL, &PARAMS, None),
            Err(SignatureError::Missing)
        );
        for garbled in ["", "not base64!", "AAAA", "RSOYDt4T1cUTdK1PDd93/VVr8B8"] {
            assert_eq!(
                validate("12345", URL, &PARAMS, Some(garbled)),
                Err(SignatureError::Malformed { expected_bytes: 20 }),
                "{garbled:?}"
            );
        }
        let mut tampered = PARAMS.to_vec();
        tampered[2].1 = "9999";
        assert_eq!(
            validate("12345", URL, &tampered, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            validate("12345", &format!("{URL}&x=1"), &PARAMS, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            validate("54321", URL, &PARAMS, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        let keyless = signature("", URL, &PARAMS);
        assert_eq!(
            validate("", URL, &PARAMS, Some(&keyless)),
            Err(SignatureError::NoSecret)
        );
        let extra = [PARAMS.as_slice(), &[("Body", "hi")]].concat();
        assert_eq!(
            validate("12345", URL, &extra, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn settings_header() {
        assert_eq!(algorithm_from_settings(None), Ok(Algorithm::HmacSha1));
        assert_eq!(
            algorithm_from_settings(Some("key=abc,algorithm=HMAC_SHA256")),
            Ok(Algorithm::HmacSha256)
        );
        assert_eq!(
            algorithm_from_settings(Some("key=abc")),
            Ok(Algorithm::HmacSha1)
        );
        assert_eq!(
            algorithm_from_settings(Some("algorithm=MD5")),
            Err(SignatureError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn public_url_joins_without_double_slashes() {
        assert_eq!(
            public_url("https://care.example/", "/webhooks/twilio?t=1"),
            "https://care.example/webhooks/twilio?t=1"
        );
        assert_eq!(
            public_url("https://care.example/base", "webhooks"),
            "https://care.example/base/webhooks"
        );
    }
}
