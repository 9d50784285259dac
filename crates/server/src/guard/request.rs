//! Who is asking, from where: the source address (the peer, or the client a
//! trusted proxy names), the route template, and, once authenticated, the
//! credential. One access-log line per request, and security headers on
//! every HTML page.

use crate::state::AppState;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Request facts handlers and the `Auth` extractor read.
#[derive(Clone)]
pub struct RequestInfo {
    pub source: IpAddr,
    /// The route template (`/v1/contacts/{id}`), never the raw path: raw paths
    /// carry patient ids and are unbounded.
    pub route: Arc<str>,
    credential: Arc<Mutex<Option<(String, String)>>>,
}

impl RequestInfo {
    /// For requests that did not pass the middleware (in-process tests).
    pub fn unknown() -> Self {
        RequestInfo {
            source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            route: "unmatched".into(),
            credential: Arc::default(),
        }
    }

    /// Records who the request authenticated as, for the access log.
    pub fn set_credential(&self, tenant_id: &str, credential: String) {
        *self.credential.lock() = Some((tenant_id.to_owned(), credential));
    }
}

/// The client's address: the TCP peer, or, when the peer is one of
/// `server.trusted_proxies`, the nearest address in `X-Forwarded-For` that is
/// not a trusted proxy itself.
fn source_of(req: &Request, trusted: &[IpAddr]) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
}

/// Content-Security-Policy of our pages: scripts and styles only from this
/// origin (the pages' own inline code included), media from the camera, no
/// framing by other sites.
const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; \
    connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub async fn request_context(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let source = source_of(&req, &s.config.server.trusted_proxies);
    let route: Arc<str> = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .into();
    let method = req.method().clone();
    let info = RequestInfo {
        source,
        route: route.clone(),
        credential: Arc::default(),
    };
    req.extensions_mut().insert(info.clone());
    let mut response = next.run(req).await;

    let headers = response.headers_mut();
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(
            header::HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
        );
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if s.config.server.tls_cert.is_some() {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }

    if s.config.log.access {
        let (tenant, credential) = info.credential.lock().take().unwrap_or_default();
        tracing::info!(
            target: "continuum::access",
            method = %method,
            route = %route,
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            tenant = %tenant,
            credential = %credential,
            source = %source,
            "request"
        );
    }
    response
}
