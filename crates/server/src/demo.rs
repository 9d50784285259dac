//! The development front page: one click creates a demo visit in a `demo`
//! tenant of its own so a newcomer can try a call in two tabs. Routed only
//! when the server listens on loopback and `server.demo` is on (see
//! `app::build`), and answered only to requests whose Host is a loopback name
//! or address: neither a reverse proxy on the same host nor a DNS-rebinding
//! page reaches it. Its tokens are limited to the demo conversation and room.

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use continuum_core::{Grants, Role};
use continuum_store::{ContactInput, NewConversation};
use serde_json::{Value, json};
use std::time::Duration;

pub async fn index() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../../web/index.html"))
}

/// Whether a Host header names this machine's loopback: `localhost`,
/// `127.x.x.x` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Answers 404 (as if the demo did not exist) unless the Host is loopback.
pub async fn loopback_host_only(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !is_loopback_host(host) {
        return ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such route; see /v1/openapi.json",
        )
        .into_response();
    }
    next.run(req).await
}

/// The demo tenant, created on first use (kept apart from `dev` and every
/// real tenant: a demo token reaches nothing else).
async fn demo_tenant(s: &AppState) -> ApiResult<continuum_store::Tenant> {
    if let Ok(t) = s.store.find_tenant(DEMO_TENANT).await {
        return Ok(t);
    }
    match s
        .store
        .create_tenant(DEMO_TENANT, &s.config.server.region, "system:demo")
        .await
    {
        Ok(t) => Ok(t),
        // Two first clicks at once: the other one created it.
        Err(_) => Ok(s.store.find_tenant(DEMO_TENANT).await?),
    }
}

const DEMO_TENANT: &str = "demo";

pub async fn demo_visit(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let tenant = demo_tenant(&s).await?;
    let actor = "system:demo";
    let contact = s
        .store
        .create_contact(
            &tenant.id,
            ContactInput {
                display_name: Some("Demo Patient".into()),
                ..Default::default()
            },
            actor,
        )
        .await?;
    let conv = s
        .store
        .create_conversation(
            &tenant.id,
            NewConversation {
                contact_id: contact.id,
                subject: Some("Demo visit".into()),
                queue: None,
                tags: vec!["demo".into()],
            },
            actor,
        )
        .await?;
    let room = s
        .store
        .create_room(
            &tenant.id,
            &conv.id,
            s.config.rtc.max_participants_per_room as i64,
            true, // the patient waits until the clinician admits them
            actor,
        )
        .await?;
    let grants = Grants {
        conversations: vec![conv.id.clone()],
        rooms: vec![room.id.clone()],
        contacts: vec![],
    };
    let hour = Duration::from_secs(s.config.security.token_max_ttl_secs.min(3600));
    let (clinician, _) = s.tokens.mint(
        &tenant.id,
        "demo-clinician",
        Role::Clinician,
        grants.clone(),
        crate::auth::About {
            name: Some("Dr. Demo".into()),
            region: None,
            key_id: None,
        },
        hour,
    );
    let (patient, _) = s.tokens.mint(
        &tenant.id,
        "demo-patient",
        Role::Patient,
        grants,
        crate::auth::About {
            name: Some("Demo Patient".into()),
            region: None,
            key_id: None,
        },
        hour,
    );
    // The token rides in the fragment: never sent to a server, never in
    // access logs or Referer headers; the page removes it from the address bar.
    let url = |token: &str| {
        format!(
            "/visit?room={}&conversation={}#token={token}",
            room.id, conv.id
        )
    };
    Ok(Json(json!({
        "tenant": DEMO_TENANT,
        "conversation_id": conv.id,
        "room_id": room.id,
        "clinician_url": url(&clinician),
        "patient_url": url(&patient),
    })))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_hosts_pass() {
        for h in [
            "localhost",
            "localhost:7400",
            "127.0.0.1:7400",
            "127.1.2.3",
            "[::1]:7400",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "example.org",
            "evil.localhost.example.org",
            "10.0.0.1:7400",
            "[::2]:80",
            "localhost.",
            "127.0.0.1.nip.io",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
