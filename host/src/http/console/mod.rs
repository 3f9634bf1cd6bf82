//! The operator console at `/`: static HTML, CSS and JavaScript compiled into the binary (no
//! CDN, nothing fetched from the network), talking to the HTTP API (`api.rs`).

use crate::http::Http;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");
const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");
/// Per-player controls without the DOM: checks, preview, table text (loaded before console.js).
const CONTROLS_JS: &str = include_str!("controls.js");
const ICON: &str = include_str!("favicon.svg");

/// Only this server's own files; no inline script, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/controls.js", get(|| async { asset("text/javascript; charset=utf-8", CONTROLS_JS) }))
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
}
