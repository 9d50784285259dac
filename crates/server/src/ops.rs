//! Health, readiness, metrics and the OpenAPI document.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: started, not shutting down, the database answers and (in a
/// cluster) the bus is connected. The body names what is missing.
pub async fn readyz(State(s): State<AppState>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    let store = tokio::time::timeout(std::time::Duration::from_secs(3), s.store.ping()).await;
    let mut problems = Vec::new();
    match store {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            problems.push(format!("database unavailable ({})", s.store.location()));
        }
        Err(_) => problems.push(format!(
            "database unavailable ({}: no answer in 3 s)",
            s.store.location()
        )),
    }
    if let Some(bus) = &s.bus
        && !bus.is_connected()
    {
        problems.push("bus disconnected (NATS; reconnecting)".into());
    }
    if problems.is_empty() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("; ")),
        )
            .into_response()
    }
}

/// Prometheus metrics. They name tenants, rooms' load and traffic, so off a
/// loopback listener they need `server.metrics_token` (and refuse everyone
/// until one is set).
pub async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match &s.config.server.metrics_token {
        Some(expected) => {
            use subtle::ConstantTimeEq;
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                return ApiError::unauthorized(
                    "metrics need `Authorization: Bearer <server.metrics_token>`",
                )
                .into_response();
            }
        }
        None if !s.config.server.listen.ip().is_loopback() => {
            return ApiError::unauthorized(
                "metrics need a token when the server listens beyond loopback: set server.metrics_token \
                 (CONTINUUM_SERVER__METRICS_TOKEN) and send `Authorization: Bearer <token>`",
            )
            .into_response();
        }
        None => {}
    }
    let Some(handle) = &s.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response();
    };
    if let Ok(depth) = s.store.outbox_depth().await {
        metrics::gauge!("continuum_outbox_depth").set(depth as f64);
    }
    metrics::gauge!("continuum_store_write_queue_depth").set(s.store.write_queue_depth() as f64);
    if let Some(placement) = &s.placement
        && let Ok(nodes) = placement.live_nodes().await
    {
        // The cluster as this node sees it: live media nodes per region.
        let mut per_region: std::collections::BTreeMap<&str, (usize, u32, u32)> =
            Default::default();
        for n in &nodes {
            let r = per_region.entry(n.region.as_str()).or_default();
            r.0 += 1;
            r.1 += n.rooms;
            r.2 += n.capacity;
        }
        for (region, (count, rooms, capacity)) in per_region {
            let region = region.to_owned();
            metrics::gauge!("continuum_cluster_media_nodes", "region" => region.clone())
                .set(count as f64);
            metrics::gauge!("continuum_cluster_media_rooms", "region" => region.clone())
                .set(rooms as f64);
            metrics::gauge!("continuum_cluster_media_capacity", "region" => region)
                .set(capacity as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

pub async fn openapi(
    State(doc): State<std::sync::Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}
