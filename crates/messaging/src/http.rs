//! What the HTTP providers share: one client per provider with bounded
//! timeouts, `Retry-After`, bounded response bodies, and how transport
//! failures map onto [`SendError`].

use crate::provider::SendError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Largest response body read from a provider. Their answers are a few
/// hundred bytes; a misconfigured base URL must not make us buffer a page.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Timeouts of one provider's HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpTimeouts {
    /// Establishing TCP + TLS. A send that fails here never reached the
    /// provider, so it is safely retryable.
    pub connect_ms: u64,
    /// The whole request. Past it the message may have been sent.
    pub request_ms: u64,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect_ms: 5_000,
            request_ms: 20_000,
        }
    }
}

impl HttpTimeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms.max(1))
    }

    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms.max(1))
    }
}

/// Why a provider could not be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be an http(s) URL without query or fragment")]
    BaseUrl { field: &'static str },
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} has a character not allowed in a URL path segment")]
    PathSegment { field: &'static str },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the HTTP client could not be built (TLS backend unavailable)")]
    Client,
}

/// The providers' HTTP client settings, for a caller to add to (a resolver).
pub fn client_builder(t: &HttpTimeouts) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(t.connect())
        .timeout(t.request())
        // Credentials go in every request: never follow a redirect with
        // them to wherever a compromised or misconfigured endpoint points.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("continuum-messaging/", env!("CARGO_PKG_VERSION")))
}

/// Checks a configured base URL and drops its trailing slashes so paths can
/// be appended with `/`.
pub(crate) fn base_url(raw: &str, field: &'static str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw).map_err(|_| ConfigError::BaseUrl { field })?;
    if !matches!(url.scheme(), "http" | "https")
        || url.query().is_some()
        || url.fragment().is_some()
        || url.host().is_none()
    {
        return Err(ConfigError::BaseUrl { field });
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// A configured value that is put into a URL path (account SID, phone
/// number id, API version): refused if it could change the path.
pub(crate) fn path_segment(raw: &str, field: &'static str) -> Result<String, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::Empty { field });
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ConfigError::PathSegment { field });
    }
    Ok(raw.to_owned())
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A transport failure. Only a failure to connect proves the provider never
/// saw the request; anything later (a timeout waiting for the answer, a
/// connection reset mid-response) may follow a send.
pub(crate) fn transport_error(provider: &str, e: &reqwest::Error) -> SendError {
    if e.is_connect() {
        SendError::retryable(format!("could not connect to {provider}"))
    } else if e.is_timeout() {
        SendError::unconfirmed(format!("{provider} did not answer in time"))
    } else {
        SendError::unconfirmed(format!("connection to {provider} failed mid-request"))
    }
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of a response body; the rest is
/// dropped with the connection.
pub(crate) async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:50:07 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO), "in the past");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn base_urls_and_path_segments() {
        assert_eq!(
            base_url("https://api.twilio.com/", "api_base").unwrap(),
            "https://api.twilio.com"
        );
        assert_eq!(
            base_url("http://127.0.0.1:8080/prefix", "api_base").unwrap(),
            "http://127.0.0.1:8080/prefix"
        );
        for bad in ["ftp://x", "https://x/?a=1", "not a url", "https://x/#f"] {
            assert_eq!(
                base_url(bad, "api_base"),
                Err(ConfigError::BaseUrl { field: "api_base" })
            );
        }
        assert!(path_segment("AC123abc", "account_sid").is_ok());
        assert!(path_segment("v23.0", "api_version").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a b"] {
            assert!(path_segment(bad, "account_sid").is_err(), "{bad:?}");
        }
    }
}
