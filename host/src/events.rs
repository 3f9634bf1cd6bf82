//! The event path (spec §3–4, §8–9).
//!
//! ```text
//! consumer task ──(partition % workers)──▶ worker threads ──(delivery futures, in order)──▶ ackers
//!   recv events                              parse once, match, evaluate,           await deliveries,
//!                                            produce triggers / dead letters         store the offset
//! ```
//!
//! - Evaluation runs on dedicated threads, never on the tokio reactor.
//! - A partition always goes to the same worker, which handles its events in order, so the
//!   triggers of one partition keep their order.
//! - At-least-once: an event's offset is stored (and then committed) only after every trigger
//!   it produced is acknowledged; an acker handles one worker's events in order, so an offset is
//!   never stored past an event whose triggers are still in flight.

use crate::campaign::parse_time;
use crate::config::Clock;
use crate::metrics::{CampaignLabel, ErrorLabels};
use crate::stats::CampaignStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use crate::registry::{LiveCampaign, State};
use crate::Shared;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use rtcrm_sandbox::{Event, Filter};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One consumed event, detached from the consumer.
pub(crate) struct Job {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Job {
    /// Copies what the event path needs out of a consumed message; a consumer error is logged
    /// and gives `None` (the consumer goes on).
    pub(crate) fn received<M: Message>(message: Result<M, rdkafka::error::KafkaError>) -> Option<Job> {
        match message {
            Ok(m) => Some(Job {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "consuming events");
                None
            }
        }
    }
}

/// An event handled by a worker: its offset may be stored once `deliveries` complete.
struct Done {
    partition: i32,
    offset: i64,
    deliveries: Vec<DeliveryFuture>,
}

/// Tracks the assignment, for readiness and the `rtcrm_assigned_partitions` gauge.
pub struct EventsContext {
    shared: Arc<Shared>,
}

impl ClientContext for EventsContext {}

impl ConsumerContext for EventsContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        record_assignment(&self.shared, consumer, rebalance);
    }
}

/// After a rebalance of the events consumer (either delivery mode): the owned-partitions gauge,
/// and readiness once the group has been joined.
pub(crate) fn record_assignment<C: ConsumerContext>(shared: &Shared, consumer: &BaseConsumer<C>, rebalance: &Rebalance<'_>) {
    if let Rebalance::Error(e) = rebalance {
        tracing::warn!(error = %e, "consumer group rebalance failed");
        return;
    }
    let owned = consumer.assignment().map(|tpl| tpl.count()).unwrap_or(0);
    shared.metrics.assigned_partitions.set(owned as i64);
    tracing::info!(partitions = owned, "rebalanced: events partitions owned now");
    shared.events_assigned.store(true, Ordering::SeqCst);
}

type EventConsumer = StreamConsumer<EventsContext>;

/// Consumes events until `shutdown`, then drains: every consumed event is finished, its
/// triggers delivered and its offset committed.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    // No event is evaluated before every campaign in the topic is loaded.
    while !shared.campaigns_loaded.load(Ordering::SeqCst) {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    if shared.settings.delivery == crate::config::Delivery::ExactlyOnce {
        return crate::eos::run(shared, shutdown).await;
    }
    let settings = &shared.settings;
    let consumer: Arc<EventConsumer> = Arc::new(
        crate::kafka::event_consumer_config(settings)
            .create_with_context(EventsContext { shared: shared.clone() })
            .context("creating the events consumer")?,
    );
    consumer
        .subscribe(&[&settings.event_topic])
        .with_context(|| format!("subscribing to `{}`", settings.event_topic))?;

    let mut senders = Vec::new();
    let mut threads = Vec::new();
    let mut ackers = Vec::new();
    for n in 0..settings.workers {
        let (job_tx, job_rx) = mpsc::channel::<Job>(1024);
        let (done_tx, done_rx) = mpsc::channel::<Done>(4096);
        let worker = Worker::new(shared.clone(), shared.producer.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("rtcrm-worker-{n}"))
                .spawn(move || worker.run(job_rx, done_tx))
                .context("starting a worker thread")?,
        );
        ackers.push(tokio::spawn(acker(shared.clone(), consumer.clone(), done_rx)));
        senders.push(job_tx);
    }
    let lag = tokio::spawn(track_lag(shared.clone(), consumer.clone(), shutdown.clone()));

    loop {
        let message = tokio::select! {
            _ = shutdown.changed() => break,
            m = consumer.recv() => m,
        };
        let Some(job) = Job::received(message) else { continue };
        let worker = job.partition.unsigned_abs() as usize % senders.len();
        if senders[worker].send(job).await.is_err() {
            anyhow::bail!("worker {worker} stopped");
        }
    }

    tracing::info!("stopping: finishing in-flight events");
    drop(senders);
    for t in threads {
        tokio::task::spawn_blocking(move || t.join()).await.ok();
    }
    for a in ackers {
        a.await.ok();
    }
    lag.await.ok();
    shared.producer_flush();
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        // Nothing stored since the last automatic commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => tracing::info!("offsets already committed"),
        Err(e) => tracing::warn!(error = %e, "committing offsets at shutdown"),
    }
    consumer.unsubscribe();
    Ok(())
}

/// Awaits each event's deliveries in order, then stores its offset.
async fn acker(shared: Arc<Shared>, consumer: Arc<EventConsumer>, mut rx: mpsc::Receiver<Done>) {
    let topic = shared.settings.event_topic.clone();
    while let Some(done) = rx.recv().await {
        for delivery in done.deliveries {
            shared.deliver(delivery).await;
        }
        // librdkafka stores offset + 1, the next one to read. A revoked partition is skipped:
        // its new owner re-reads from the last commit (at-least-once).
        if let Err(e) = consumer.store_offset(&topic, done.partition, done.offset) {
            tracing::debug!(error = %e, partition = done.partition, "offset not stored");
        }
    }
}

/// Updates `rtcrm_consumer_lag` every few seconds.
async fn track_lag(shared: Arc<Shared>, consumer: Arc<EventConsumer>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (c, topic) = (consumer.clone(), shared.settings.event_topic.clone());
        let lag = tokio::task::spawn_blocking(move || -> i64 {
            // The list is dropped here, before the consumer can be (librdkafka #3796).
            let Ok(positions) = c.position() else { return 0 };
            let mut lag = 0;
            for elem in positions.elements_for_topic(&topic) {
                if let (Ok((_, high)), Some(pos)) =
                    (c.fetch_watermarks(&topic, elem.partition(), Duration::from_secs(2)), elem.offset().to_raw())
                {
                    lag += (high - pos.max(0)).max(0);
                }
            }
            lag
        })
        .await
        .unwrap_or(0);
        shared.metrics.consumer_lag.set(lag);
    }
}

/// One evaluation thread, with its own filter instance per campaign.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    /// Where triggers and dead letters go (the transactional producer in exactly-once mode).
    producer: FutureProducer,
    campaigns: HashMap<i64, CampaignSlot>,
}

/// A worker's state for one campaign id: its filter instance (for the version it was built
/// from) and its metric and counter handles, looked up once rather than per evaluation.
struct CampaignSlot {
    /// The instance and the campaign version (generation) it runs; `None` until built.
    filter: Option<(u64, Filter)>,
    label: CampaignLabel,
    evaluations: Counter,
    matches: Counter,
    fuel: Histogram,
    stats: Arc<CampaignStats>,
}

impl CampaignSlot {
    fn new(shared: &Shared, id: i64) -> CampaignSlot {
        let metrics = &shared.metrics;
        let label = CampaignLabel { campaign: id.to_string() };
        CampaignSlot {
            filter: None,
            evaluations: metrics.evaluations.get_or_create(&label).clone(),
            matches: metrics.matches.get_or_create(&label).clone(),
            fuel: metrics.fuel.get_or_create(&label).clone(),
            stats: shared.stats.entry(id),
            label,
        }
    }
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>, producer: FutureProducer) -> Worker {
        Worker { shared, producer, campaigns: HashMap::new() }
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>, done: mpsc::Sender<Done>) {
        while let Some(job) = jobs.blocking_recv() {
            let (partition, offset) = (job.partition, job.offset);
            let deliveries = self.process(job);
            if done.blocking_send(Done { partition, offset, deliveries }).is_err() {
                return;
            }
        }
    }

    /// Enqueues a record, waiting while the producer's queue is full.
    fn send<K, P>(&self, mut record: FutureRecord<'_, K, P>) -> DeliveryFuture
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return delivery,
                Err((e, back)) => {
                    tracing::debug!(error = %e, "producer queue full; waiting");
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Matches, evaluates and produces for one event; returns the deliveries to await.
    pub(crate) fn process(&mut self, job: Job) -> Vec<DeliveryFuture> {
        let metrics = &self.shared.metrics;
        metrics.events.inc();
        let Some(payload) = job.payload.clone() else {
            return vec![self.dead_letter(&job, "empty message: an event must be a JSON object")];
        };
        let event = match Event::parse(payload) {
            Ok(e) => e,
            Err(e) => return vec![self.dead_letter(&job, &e.to_string())],
        };
        let (Some(game), Some(event_name)) = (event.str_field("game"), event.str_field("event_name")) else {
            return Vec::new();
        };
        let t = event_time(&event, self.shared.settings.clock);
        let snapshot = self.shared.registry.snapshot();
        let mut deliveries = Vec::new();
        for campaign in snapshot.candidates(&game, &event_name) {
            if !campaign.def.enabled || campaign.is_quarantined() || !campaign.def.in_window(t) {
                continue;
            }
            if self.evaluate(campaign, &event) {
                deliveries.push(self.trigger(campaign, &event, &job));
            }
        }
        // Instances of campaigns no longer in force are dropped.
        if self.campaigns.len() > snapshot.len() {
            self.campaigns.retain(|id, _| snapshot.get(*id).is_some());
        }
        deliveries
    }

    /// Runs the campaign's filter; a failure counts toward quarantine.
    fn evaluate(&mut self, campaign: &Arc<LiveCampaign>, event: &Event) -> bool {
        let id = campaign.def.id;
        let shared = &self.shared;
        let slot = self.campaigns.entry(id).or_insert_with(|| CampaignSlot::new(shared, id));
        slot.evaluations.inc();
        let started = Instant::now();
        let result = match &mut slot.filter {
            Some((generation, filter)) if *generation == campaign.generation => filter.eval(event),
            _ => match shared.sandbox.filter(&campaign.compiled, &slot.label.campaign, campaign.limits) {
                Ok(mut filter) => {
                    let r = filter.eval(event);
                    slot.filter = Some((campaign.generation, filter));
                    r
                }
                Err(e) => Err(e),
            },
        };
        shared.metrics.latency.observe(started.elapsed().as_secs_f64());
        slot.stats.record(&result);
        match result {
            Ok(verdict) => {
                campaign.succeeded();
                slot.fuel.observe(verdict.fuel_used as f64);
                if verdict.matched {
                    slot.matches.inc();
                }
                verdict.matched
            }
            Err(err) => {
                let kind = err.kind();
                shared.metrics.errors.get_or_create(&ErrorLabels { campaign: slot.label.campaign.clone(), kind: kind.as_str().into() }).inc();
                // A deadline on a healthy filter means the host is overloaded: worth a warning.
                if kind == rtcrm_sandbox::ErrorKind::Deadline {
                    tracing::warn!(campaign = id, error = %err, "evaluation stopped by its wall-clock deadline");
                } else {
                    tracing::debug!(campaign = id, kind = %kind, error = %err, "evaluation failed");
                }
                let threshold = shared.settings.quarantine_after;
                if campaign.failed(threshold) {
                    tracing::warn!(campaign = id, kind = %kind, error = %err, "campaign quarantined after {threshold} consecutive failures");
                    shared.registry.quarantine(id, &err);
                    slot.filter = None;
                    let reason = format!("{threshold} consecutive failed evaluations; last: {kind}: {err}");
                    let (shared, digest) = (shared.clone(), campaign.def.digest.clone());
                    self.shared.runtime.spawn(async move {
                        crate::loader::publish_status(&shared, Some(id), State::Quarantined, Some(&reason), &digest).await;
                        shared.metrics.update_campaigns(&shared.registry);
                    });
                }
                false
            }
        }
    }

    fn trigger(&self, campaign: &LiveCampaign, event: &Event, job: &Job) -> DeliveryFuture {
        let settings = &self.shared.settings;
        let trigger_id = match event.str_field("event_id") {
            Some(event_id) => format!("{}:{event_id}", campaign.def.id),
            None => format!("{}:{}-{}-{}", campaign.def.id, settings.event_topic, job.partition, job.offset),
        };
        let event_json = std::str::from_utf8(event.as_bytes()).expect("a parsed event is UTF-8");
        let payload = format!(
            r#"{{"campaign":{},"event":{},"trigger_id":{},"triggered_at":"{}"}}"#,
            campaign.trigger_json.get(),
            event_json,
            serde_json::Value::String(trigger_id),
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let key = player_key(event);
        self.shared.metrics.triggers.inc();
        self.send(FutureRecord::to(&settings.trigger_topic).key(&key).payload(&payload))
    }

    fn dead_letter(&self, job: &Job, reason: &str) -> DeliveryFuture {
        let settings = &self.shared.settings;
        tracing::warn!(partition = job.partition, offset = job.offset, reason, "event sent to the dead-letter topic");
        self.shared.metrics.dead_letters.inc();
        let (partition, offset) = (job.partition.to_string(), job.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "rtcrm.error", value: Some(reason) })
            .insert(Header { key: "rtcrm.source.topic", value: Some(settings.event_topic.as_str()) })
            .insert(Header { key: "rtcrm.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "rtcrm.source.offset", value: Some(offset.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&settings.dlq_topic).headers(headers);
        if let Some(key) = &job.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &job.payload {
            record = record.payload(payload.as_slice());
        }
        self.send(record)
    }
}

/// The time an event's campaign windows are checked against (spec §4).
fn event_time(event: &Event, clock: Clock) -> DateTime<Utc> {
    if clock == Clock::Event {
        for field in ["created_at", "received_at"] {
            if let Some(t) = event.str_field(field).as_deref().and_then(parse_time) {
                return t;
            }
        }
    }
    Utc::now()
}

/// The trigger key: the player id as text, empty when the event has none.
pub(crate) fn player_key(event: &Event) -> String {
    match event.field("player_id") {
        Some(raw) if raw.first() == Some(&b'"') => serde_json::from_slice::<String>(raw).unwrap_or_default(),
        Some(raw) if raw != b"null" => String::from_utf8_lossy(raw).into_owned(),
        _ => String::new(),
    }
}

/// Producer helpers shared by the workers, ackers and loader.
impl Shared {
    /// Waits for a delivery; a failed one is sent again until it is delivered.
    pub async fn deliver(&self, delivery: DeliveryFuture) {
        let mut result = delivery.await;
        loop {
            match result {
                Ok(Ok(_)) => return,
                Ok(Err((e, message))) => {
                    tracing::warn!(error = %e, topic = message.topic(), "delivery failed; sending again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(message.topic());
                    if let Some(k) = message.key() {
                        record = record.key(k);
                    }
                    if let Some(p) = message.payload() {
                        record = record.payload(p);
                    }
                    if let Some(h) = message.headers() {
                        record = record.headers(h.clone());
                    }
                    result = Ok(self.producer.send(record, Timeout::Never).await);
                }
                Err(_canceled) => {
                    tracing::error!("a delivery was cancelled (producer gone)");
                    return;
                }
            }
        }
    }

    /// Sends everything still queued (at shutdown).
    pub fn producer_flush(&self) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "flushing the producer at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> Event {
        Event::parse(json.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_event_clock_prefers_created_at_then_received_at() {
        let t = event_time(&ev(r#"{"created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02Z"}"#), Clock::Event);
        assert_eq!(t, parse_time("2023-11-20T11:00:00Z").unwrap());
        let t = event_time(&ev(r#"{"created_at":"garbage","received_at":"2023-11-20T11:00:02Z"}"#), Clock::Event);
        assert_eq!(t, parse_time("2023-11-20T11:00:02Z").unwrap());
        let before = Utc::now();
        assert!(event_time(&ev(r#"{"created_at":"2023-11-20T11:00:00Z"}"#), Clock::Processing) >= before);
        assert!(event_time(&ev("{}"), Clock::Event) >= before);
    }

    #[test]
    fn the_trigger_key_is_the_player_id_as_text() {
        assert_eq!(player_key(&ev(r#"{"player_id":12345}"#)), "12345");
        assert_eq!(player_key(&ev(r#"{"player_id":"p-9"}"#)), "p-9");
        assert_eq!(player_key(&ev(r#"{"player_id":null}"#)), "");
        assert_eq!(player_key(&ev("{}")), "");
    }
}
