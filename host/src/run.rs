//! `rtcrm run`: the processor, until SIGTERM or SIGINT (then: stop consuming, finish in-flight
//! events, flush, commit, exit 0).

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::Shared;
use anyhow::{Context, Result};
use rtcrm_sandbox::{Sandbox, SandboxConfig};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::watch;

/// Builds the tokio runtime and runs the processor until a signal.
pub fn run(settings: Settings) -> Result<()> {
    runtime()?.block_on(async move {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        serve(settings, rx).await
    })
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Runs the processor with `settings` until `shutdown` turns true.
pub async fn serve(settings: Settings, shutdown: watch::Receiver<bool>) -> Result<()> {
    tracing::info!(
        bootstrap = %settings.bootstrap_servers, group = %settings.group_id, events = %settings.event_topic,
        campaigns = %settings.campaign_topic, triggers = %settings.trigger_topic, workers = settings.workers,
        clock = ?settings.clock, instance = %settings.instance_id, "starting rtcrm"
    );
    let sandbox = tokio::task::spawn_blocking(|| Sandbox::new(SandboxConfig::default()))
        .await?
        .context("starting the filter sandbox")?;
    if settings.create_topics {
        crate::kafka::create_topics(&settings).await?;
    }
    let producer = crate::kafka::producer(&settings)?;
    let shared = Arc::new(Shared {
        settings,
        sandbox,
        registry: Registry::default(),
        metrics: Metrics::new(),
        stats: Default::default(),
        producer,
        campaigns_loaded: AtomicBool::new(false),
        events_assigned: AtomicBool::new(false),
        runtime: tokio::runtime::Handle::current(),
    });
    shared.metrics.update_campaigns(&shared.registry);
    let http = crate::http::bind(shared.clone(), shutdown.clone()).await?;
    let loader = tokio::spawn(crate::loader::run(shared.clone(), shutdown.clone()));
    let events = crate::events::run(shared.clone(), shutdown.clone()).await;
    let loaded = loader.await.context("the campaigns reader panicked")?;
    http.await.ok();
    events?;
    loaded?;
    shared.producer_flush();
    tracing::info!("stopped");
    Ok(())
}
