//! The HTTP server: `GET /healthz`, `/readyz`, `/metrics` (spec §11).

use crate::Shared;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Binds the address now (so a busy port fails the start) and serves until `shutdown`.
pub async fn bind(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Result<tokio::task::JoinHandle<()>> {
    let addr = shared.settings.http_addr;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the HTTP server to {addr}"))?;
    tracing::info!("HTTP on http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    Ok(tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if !shared.campaigns_loaded.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: reading the campaigns topic\n")
    } else if !shared.events_assigned.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: joining the events consumer group\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.encode(),
    )
}
