//! `rtcrm run`: the processor, until SIGTERM or SIGINT (then: stop consuming, finish in-flight
//! events, flush, commit, exit 0), or until one of its tasks cannot go on (then: exit non-zero
//! with the reason; see `supervisor.rs`).
//!
//! Start-up order: the HTTP server first (so `/healthz` answers from the start), then the
//! cluster is probed — an unreachable one is reported within [`crate::kafka::CONNECT_TIMEOUT`],
//! naming the address and librdkafka's error — then topics are created, and the campaigns
//! reader, the event path and the health probe start under the supervisor.

use crate::campaigns::instances::InstanceBudget;
use crate::campaigns::registry::Registry;
use crate::config::Settings;
use crate::events::sink::RecordLimits;
use crate::health::Health;
use crate::kafka::{ClientErrors, KafkaContext};
use crate::supervisor::Supervisor;
use crate::telemetry::filter_log::FilterLog;
use crate::telemetry::logging::LogLimiter;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::stats::Stats;
use anyhow::{Context, Result};
use rdkafka::producer::{FutureProducer, Producer};
use rtcrm_sandbox::{Sandbox, SandboxConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the cluster is probed for `/healthz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// What the processor's tasks and threads share.
pub struct Processor {
    pub settings: Settings,
    pub sandbox: Sandbox,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Per-campaign counters for the HTTP API and the console.
    pub stats: Stats,
    /// The cap on filter instances alive, all campaigns together.
    pub instances: Arc<InstanceBudget>,
    /// Status messages, and what the HTTP API publishes (campaigns, events).
    pub producer: FutureProducer<KafkaContext>,
    /// The last error each Kafka client reported.
    pub kafka_errors: ClientErrors,
    pub health: Arc<Health>,
    /// Largest trigger and dead letter the event path sends (read from the topics at start).
    pub record_limits: std::sync::Mutex<RecordLimits>,
    /// Rate limit of the warnings for failed evaluations, per campaign.
    pub evaluation_errors_log: LogLimiter,
    /// Filters' output and evaluation errors, to the filter log topic.
    pub filter_log: Arc<FilterLog>,
    /// The tokio runtime, for work started from worker threads.
    pub runtime: tokio::runtime::Handle,
    /// The owned partitions' per-player state stores, once the event path has opened them (for
    /// `GET /api/campaigns/{id}/players/{player}`).
    pub states: arc_swap::ArcSwapOption<crate::state::stores::States>,
}

/// Builds the tokio runtime and runs the processor until a signal.
pub fn run(settings: Settings) -> Result<()> {
    runtime()?.block_on(async move { serve(settings, signal_watch()).await })
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
}

/// Turns true on SIGTERM or SIGINT.
pub fn signal_watch() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Runs the processor with `settings` until `signal` turns true or a task fails.
pub async fn serve(settings: Settings, signal: watch::Receiver<bool>) -> Result<()> {
    tracing::info!(
        bootstrap = %settings.bootstrap_servers, group = %settings.group_id, events = %settings.event_topic,
        campaigns = %settings.campaign_topic, triggers = %settings.trigger_topic, workers = settings.workers,
        clock = ?settings.clock, delivery = ?settings.delivery, instance = %settings.instance_id,
        static_member = settings.instance_id_explicit, kafka = ?settings.kafka, limits = ?settings.limits.to_user_units(), "starting rtcrm"
    );
    let filter_log = Arc::new(FilterLog::new(&settings.filter_log_topic, &settings.instance_id));
    let sandbox_config = SandboxConfig { log_sink: filter_log.clone(), ..SandboxConfig::from_limits(&settings.limits) };
    let sandbox = tokio::task::spawn_blocking(move || Sandbox::new(sandbox_config))
        .await?
        .context("starting the filter sandbox")?;
    let instance_rss = sandbox.js_instance_rss_bytes();
    let max_instances = settings.max_filter_instances.unwrap_or_else(|| crate::campaigns::instances::default_max_instances(instance_rss));
    match sandbox.residency() {
        rtcrm_sandbox::Residency::TouchedPagesOnly => tracing::info!(
            max_filter_instances = max_instances,
            instance_kib = instance_rss / 1024,
            "filter instances keep to the pages they touch"
        ),
        rtcrm_sandbox::Residency::FaultAround(why) => tracing::warn!(
            max_filter_instances = max_instances,
            instance_kib = instance_rss / 1024,
            reason = %why,
            "filter instances map their whole memory image (fault-around stays on): each costs more memory"
        ),
    }
    let kafka_errors = ClientErrors::default();
    let producer = crate::kafka::control_producer(&settings, &kafka_errors)?;
    filter_log.connect(producer.clone());
    let health = Arc::new(Health::default());
    let processor = Arc::new(Processor {
        instances: InstanceBudget::new(max_instances),
        settings,
        sandbox,
        registry: Registry::default(),
        metrics: Metrics::new(),
        stats: Default::default(),
        producer,
        kafka_errors,
        health: health.clone(),
        record_limits: Default::default(),
        evaluation_errors_log: LogLimiter::default(),
        filter_log,
        runtime: tokio::runtime::Handle::current(),
        states: Default::default(),
    });
    processor.metrics.update_campaigns(&processor.registry);
    let mut supervisor = Supervisor::new(health.clone());
    let stop = supervisor.stop_signal();
    let http = crate::http::bind(processor.clone(), stop.clone()).await?;
    supervisor.spawn("HTTP server", http);

    // The cluster must answer before anything else is tried.
    health.set_kafka_unreachable(Some(format!("connecting to the Kafka cluster at {}", processor.settings.bootstrap_servers)));
    let p = processor.clone();
    tokio::task::spawn_blocking(move || crate::kafka::probe(p.producer.client(), &p.settings, &p.kafka_errors, crate::kafka::CONNECT_TIMEOUT))
        .await??;
    health.set_kafka_unreachable(None);
    if processor.settings.create_topics {
        crate::kafka::create_topics(&processor.settings, &processor.kafka_errors).await?;
    }
    let (s, errors) = (&processor.settings, &processor.kafka_errors);
    let limits = if s.create_topics {
        RecordLimits::from_topics(
            crate::kafka::max_message_bytes(s, errors, &s.trigger_topic).await,
            crate::kafka::max_message_bytes(s, errors, &s.dlq_topic).await,
        )
    } else {
        // The embedded broker (rtcrm dev) answers no DescribeConfigs: Kafka's default, at once
        // (instead of two 6 s timeouts before the campaigns are read).
        RecordLimits::from_topics(crate::kafka::DEFAULT_MAX_MESSAGE_BYTES, crate::kafka::DEFAULT_MAX_MESSAGE_BYTES)
    };
    tracing::debug!(?limits, "record size limits of the output topics");
    *processor.record_limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;

    supervisor.spawn("campaigns reader", crate::campaigns::loader::run(processor.clone(), stop.clone()));
    supervisor.spawn("Kafka health probe", probe_forever(processor.clone(), stop.clone()));
    let (p, s) = (processor.clone(), stop.clone());
    supervisor.spawn_thread("event path", move || crate::events::run(p, s))?;
    let result = supervisor.run(signal).await;
    let p = processor.clone();
    let _ = tokio::task::spawn_blocking(move || p.producer.flush(Duration::from_secs(10))).await;
    match &result {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => tracing::error!(error = format!("{e:#}"), "stopped after a failure"),
    }
    result
}

/// Watches the cluster: `/healthz` answers 503 with the reason while it does not answer (an
/// instance that cannot reach Kafka consumes nothing). A client's "all brokers down" report
/// turns it unhealthy at once; a metadata request every [`PROBE_INTERVAL`] confirms either way.
async fn probe_forever(processor: Arc<Processor>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut last_probe = std::time::Instant::now();
    // Whether this watch said the cluster does not answer (other reasons can make the
    // process unhealthy too; "answers again" is logged only after "does not answer").
    let mut down = false;
    loop {
        tokio::select! {
            _ = crate::supervisor::stopped(&mut stop) => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if processor.kafka_errors.all_brokers_down() && !down {
            down = true;
            let reason = processor.kafka_errors.last().unwrap_or_else(|| "all brokers are down".into());
            tracing::warn!(error = %reason, "the Kafka cluster does not answer");
            processor.health.set_kafka_unreachable(Some(format!("the Kafka cluster at {} does not answer: {reason}", processor.settings.bootstrap_servers)));
        }
        if last_probe.elapsed() < PROBE_INTERVAL {
            continue;
        }
        last_probe = std::time::Instant::now();
        let p = processor.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            crate::kafka::probe(p.producer.client(), &p.settings, &p.kafka_errors, Duration::from_secs(3))
        })
        .await?;
        match verdict {
            Ok(()) => {
                if std::mem::take(&mut down) {
                    tracing::info!("the Kafka cluster answers again");
                }
                processor.health.set_kafka_unreachable(None);
            }
            Err(e) => {
                if !std::mem::replace(&mut down, true) {
                    tracing::warn!(error = format!("{e:#}"), "the Kafka cluster does not answer");
                }
                processor.health.set_kafka_unreachable(Some(format!("{e:#}")));
            }
        }
    }
}
