//! The staff console (`/console`): a web app of plain HTML, CSS and ES
//! modules, embedded in the binary so `cargo run` serves it with no build
//! step. `dev.console_dir` serves the same files from disk instead, so the
//! console can be worked on without rebuilding the server.

use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The console's files: name, content type, contents.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/console/app.css"),
    ),
];

/// What the console's pages may load and connect to: only this server.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn page(State(s): State<AppState>) -> Response {
    serve(&s, "index.html").await
}

pub async fn asset(State(s): State<AppState>, Path(file): Path<String>) -> Response {
    serve(&s, &file).await
}

async fn serve(s: &AppState, name: &str) -> Response {
    let Some((name, content_type, embedded)) = FILES.iter().find(|(n, ..)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    let body = match &s.config.dev.console_dir {
        Some(dir) => match tokio::fs::read_to_string(dir.join(name)).await {
            Ok(b) => b,
            Err(e) => {
                return (
                    StatusCode::NOT_FOUND,
                    format!("dev.console_dir: {name}: {e}"),
                )
                    .into_response();
            }
        },
        None => (*embedded).to_owned(),
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
