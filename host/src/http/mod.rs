//! The HTTP server (spec §11): `GET /healthz`, `/readyz`, `/metrics`, the HTTP API under `/api`
//! (`api.rs`; one player's state in `players.rs`) and the console at `/` (`console/`).
//!
//! Security, applied to every request by [`guard`]:
//! - On a loopback bind (the default) the `Host` header must name a loopback host, so a web page
//!   cannot reach the API through DNS rebinding.
//! - POST and DELETE requests whose `Origin` header names another site are refused (CSRF).
//! - On any other bind, POST and DELETE require `Authorization: Bearer <api_token>`; without a
//!   configured token they are refused.
//!
//! Errors are JSON: `{"error": "..."}` with the matching status.

pub mod api;
pub mod backtest;
pub mod console;
pub mod players;

use crate::http::api::TriggerHub;
use crate::processor::Processor;
use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The state of every handler.
#[derive(Clone)]
pub struct Http {
    pub processor: Arc<Processor>,
    /// Tails the triggers topic for `GET /api/triggers/stream`.
    pub hub: Arc<TriggerHub>,
    /// Turns true at shutdown (ends the server-sent event streams).
    pub shutdown: watch::Receiver<bool>,
    /// Backtest jobs and explain slots (`backtest.rs`).
    pub dry: Arc<crate::http::backtest::DryRuns>,
}

/// Binds the address now (so a busy port fails the start); the future serves until `shutdown`.
pub async fn bind(processor: Arc<Processor>, mut shutdown: watch::Receiver<bool>) -> Result<impl std::future::Future<Output = Result<()>>> {
    let addr = processor.settings.http_addr;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the HTTP server to {addr}"))?;
    let local = listener.local_addr()?;
    if local.ip().is_loopback() {
        tracing::info!("console and HTTP API on http://{local}/");
    } else if processor.settings.api_token.is_some() {
        tracing::info!("console and HTTP API on http://{local}/ (POST and DELETE need the API token)");
    } else {
        tracing::warn!(
            "console and HTTP API on http://{local}/, a non-loopback address without an API token: \
             POST and DELETE requests are refused (set --api-token, RTCRM_API_TOKEN or api_token)"
        );
    }
    let app = router(Http { processor, hub: Arc::new(TriggerHub::default()), shutdown: shutdown.clone(), dry: Default::default() });
    Ok(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        axum::serve(listener, app).with_graceful_shutdown(stop).await.context("serving HTTP")
    })
}

/// Every route, behind the guard.
pub fn router(http: Http) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::http::api::routes())
        .merge(crate::http::backtest::routes())
        .merge(crate::http::players::routes())
        .merge(crate::http::console::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such resource; the API is under /api, the console at /") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this resource") })
        .layer(axum::middleware::from_fn_with_state(http.clone(), guard))
        .with_state(http)
}

async fn healthz(State(http): State<Http>) -> impl IntoResponse {
    match http.processor.health.unhealthy() {
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")),
        None => (StatusCode::OK, "ok\n".to_owned()),
    }
}

async fn readyz(State(http): State<Http>) -> impl IntoResponse {
    match http.processor.health.not_ready() {
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        None => (StatusCode::OK, "ready\n".to_owned()),
    }
}

/// `GET /metrics`, by content negotiation: OpenMetrics 1.0.0 when the `Accept` header prefers
/// `application/openmetrics-text` (as Prometheus's scraper asks), else Prometheus text format
/// 0.0.4 (`text/plain`: what curl, a browser and older scrapers get, and what
/// `Accept: text/plain;version=0.0.4` asks for).
async fn metrics(State(http): State<Http>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or("");
    if prefers_openmetrics(accept) {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], http.processor.metrics.encode())
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], http.processor.metrics.encode_prometheus_text())
    }
}

/// Whether an `Accept` header ranks `application/openmetrics-text` above `text/plain` (q values;
/// absent types rank 0, `*/*` ranks both alike, so it gets text/plain).
fn prefers_openmetrics(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts.find_map(|p| p.strip_prefix("q=")).and_then(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" => text = text.max(q),
            _ => {}
        }
    }
    om > text
}

/// An error answer: `{"error": message, ...extra fields}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), message.into().into());
        ApiError { status, body }
    }

    /// Adds a field next to `error`.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.body.insert(key.into(), value.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &self.body);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON answer.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}")).into_response(),
    }
}

/// Whether the request may change anything (and so needs the token off loopback).
fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The host part of a `Host` header or an origin's authority, lowercased, without the port.
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match a.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
        _ => a,
    }
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request is refused, if it is (see the module documentation).
fn refusal(http: &Http, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    let settings = &http.processor.settings;
    let loopback = settings.http_addr.ip().is_loopback();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if loopback {
        if let Some(host) = host {
            if !is_loopback_name(&host_name(host)) {
                return Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("Host `{host}` refused: rtcrm listens on loopback and answers only to localhost names"),
                ));
            }
        }
    }
    if !mutating(method) {
        return None;
    }
    if !loopback {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim);
        match (&settings.api_token, given) {
            (None, _) => {
                return Some(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "POST and DELETE are refused: rtcrm is bound to a non-loopback address and no API token is \
                     configured; a token must be configured (--api-token, RTCRM_API_TOKEN or api_token) and sent as \
                     `Authorization: Bearer <token>`",
                ))
            }
            (Some(_), None) => {
                return Some(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this request needs the API token: send `Authorization: Bearer <token>`",
                ))
            }
            (Some(token), Some(given)) if !same_secret(token.0.as_bytes(), given.as_bytes()) => {
                return Some(ApiError::new(StatusCode::UNAUTHORIZED, "the API token is wrong"))
            }
            _ => {}
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()) {
        let origin_authority = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
        let same = match (origin_authority, host) {
            (Some(o), Some(h)) => o.eq_ignore_ascii_case(h.trim()),
            _ => false,
        };
        if !same {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request refused: Origin `{origin}` is not this server"),
            ));
        }
    }
    None
}

/// The middleware in front of every route.
async fn guard(State(http): State<Http>, request: Request<Body>, next: Next) -> Response {
    match refusal(&http, request.method(), request.headers()) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(prefers_openmetrics(prometheus));
        assert!(prefers_openmetrics("application/openmetrics-text"));
        for text in ["text/plain;version=0.0.4", "", "*/*", "text/html,application/xhtml+xml,*/*;q=0.8", "text/plain;q=0.9,application/openmetrics-text;q=0.5"] {
            assert!(!prefers_openmetrics(text), "{text}");
        }
    }

    #[test]
    fn host_names_and_loopback() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("LocalHost"), "localhost");
        for ok in ["localhost", "app.localhost", "127.0.0.1", "127.1.2.3", "::1"] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in ["evil.com", "localhost.evil.com", "10.0.0.1", "0.0.0.0"] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }
}
