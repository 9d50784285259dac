//! Assembles the HTTP application.

use crate::api;
use crate::error::ApiError;
use crate::ops;
use crate::state::AppState;
use crate::telemetry::track_http;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

/// The OpenAPI document, as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::router().1
}

pub fn build(state: AppState) -> Router {
    let (api, doc) = api::router();
    let doc_json: Arc<String> = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let max_body = state.config.server.max_body_bytes;
    let demo = state.config.server.demo && state.config.server.listen.ip().is_loopback();
    let mut router = Router::new();
    if demo {
        router = router
            .route("/", get(crate::demo::index))
            .route(
                "/dev/demo-visit",
                axum::routing::post(crate::demo::demo_visit),
            )
            .route_layer(middleware::from_fn(crate::demo::loopback_host_only));
    }
    router
        .merge(api)
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc_json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }
            }),
        )
        .route(
            "/visit",
            get(|| async { axum::response::Html(include_str!("../../../web/visit.html")) }),
        )
        .route(
            "/chat",
            get(|| async { axum::response::Html(include_str!("../../../web/chat.html")) }),
        )
        .route("/console", get(crate::console::page))
        .route("/console/{file}", get(crate::console::asset))
        .route(
            "/sdk.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript")],
                    include_str!("../../../web/sdk.js"),
                )
            }),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see /v1/openapi.json",
            )
        })
        .layer(middleware::from_fn(track_http))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::guard::request_context,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::internal("the server hit an internal error; it has been logged")
                .into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
