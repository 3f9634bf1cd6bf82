//! The campaigns topic (the broadcast pattern, spec §8): every instance reads it from the
//! beginning, up to its end offsets, before evaluating any event, then follows new messages.
//!
//! - **Initial load**: the messages up to the end offsets are read first; each campaign id's
//!   history is reduced to its outcome (the version in force: its newest version after its last
//!   tombstone that compiles; the state of its newest message), the filters are compiled in
//!   parallel on `--workers` threads, everything is activated in one registry publication, and
//!   one status message per id is sent without waiting for each (the status topic is compacted:
//!   its last record per id is what readers see, the same as after applying the messages one by
//!   one).
//! - **Following**: each message is applied in order per campaign id; compilations run off the
//!   reactor, several at once (`--workers`), so a slow module delays only later versions of its
//!   own campaign. The version in force stays until its replacement has compiled.
//! - A campaigns topic that disappears stops the process (the supervisor reports it): an
//!   instance that can no longer see campaign updates must not keep running on a stale set.

use crate::campaigns::definition::{digest, id_from_key, CampaignDef, FilterSource};
use crate::campaigns::registry::{Change, LiveCampaign, State};
use crate::campaigns::status;
use crate::kafka::KafkaContext;
use crate::processor::Processor;
use crate::telemetry::logging::LogLimiter;
use crate::telemetry::metrics::CampaignTelemetry;
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rtcrm_sandbox::{CompileError, CompiledFilter, Sandbox, WasmError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

/// How long start-up waits for the campaigns topic to exist.
const TOPIC_WAIT: Duration = Duration::from_secs(30);
/// How often the reader checks that the campaigns topic still exists.
const TOPIC_CHECK: Duration = Duration::from_secs(5);

/// Why a campaign's filter was rejected.
#[derive(Debug)]
pub enum FilterRejection {
    /// The JavaScript does not compile (or yields no function).
    Js(CompileError),
    /// The WebAssembly module fails validation (`filter-sdk/ABI.md`).
    Wasm(WasmError),
}

impl std::fmt::Display for FilterRejection {
    /// The status-message text: a syntax error names its line and column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterRejection::Js(e) => f.write_str(&describe(e)),
            FilterRejection::Wasm(e) => write!(f, "filter_wasm: {e}"),
        }
    }
}

/// Compiles a campaign's filter, either kind: the one check every way in (the campaigns topic,
/// the HTTP API, `rtcrm campaign put`) runs. `stateful`: the campaign has `state` (spec §12),
/// so a Wasm module must implement filter ABI version 2. Blocking: call it off the async reactor.
pub fn compile_filter(sandbox: &Sandbox, filter: &FilterSource, stateful: bool) -> Result<CompiledFilter, FilterRejection> {
    let compiled = match filter {
        FilterSource::Js(source) => sandbox.compile_js(source).map(CompiledFilter::Js).map_err(FilterRejection::Js)?,
        FilterSource::Wasm(bytes) => sandbox.load_wasm(bytes).map(CompiledFilter::Wasm).map_err(FilterRejection::Wasm)?,
    };
    if stateful {
        compiled.check_state_support().map_err(FilterRejection::Wasm)?;
    }
    Ok(compiled)
}

/// A compile error for a status message: a syntax error names its line and column.
pub fn describe(err: &CompileError) -> String {
    match err {
        CompileError::Syntax { message, line, column } => format!("{message} at line {line}, column {column}"),
        other => other.to_string(),
    }
}

/// One message of the campaigns topic, parsed.
enum Parsed {
    /// A null value under a numeric key.
    Tombstone(i64),
    /// Failed validation (`id` when one could be read).
    Rejected { id: Option<i64>, reason: String, digest: String },
    Valid(CampaignDef),
}

fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<Parsed> {
    let Some(value) = value else {
        return match key.and_then(id_from_key) {
            Some(id) => Some(Parsed::Tombstone(id)),
            None => {
                tracing::warn!("ignoring a campaigns-topic tombstone without a numeric key");
                None
            }
        };
    };
    Some(match CampaignDef::parse(key, value) {
        Ok(def) => Parsed::Valid(def),
        Err(r) => Parsed::Rejected { id: r.id, reason: r.reason, digest: digest(value) },
    })
}

/// Reads the campaigns topic until `stop`; marks the campaigns loaded once it has applied the
/// messages up to the end offsets it saw at start.
pub async fn run(processor: Arc<Processor>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let settings = &processor.settings;
    let consumer: Arc<StreamConsumer<KafkaContext>> = Arc::new(
        crate::kafka::campaign_consumer_config(settings)
            .create_with_context(KafkaContext { errors: processor.kafka_errors.clone(), name: "campaigns reader" })
            .context("creating the campaigns consumer")?,
    );
    let topic = settings.campaign_topic.clone();
    let Some(ends) = wait_for_topic(&consumer, &topic, &mut stop).await? else { return Ok(()) };
    let mut tpl = TopicPartitionList::new();
    for partition in ends.keys() {
        tpl.add_partition_offset(&topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl).with_context(|| format!("reading the campaigns topic `{topic}`"))?;
    drop(tpl);

    let started = Instant::now();
    let Some(initial) = read_to_end(&consumer, &topic, ends, &mut stop).await? else { return Ok(()) };
    let count = initial.len();
    load_initial(&processor, initial).await;
    processor.health.set_campaigns_loaded();
    processor.metrics.update_campaigns(&processor.registry);
    tracing::info!(
        campaigns = processor.registry.snapshot().len(),
        messages = count,
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "campaigns loaded"
    );
    Follower::new(processor.clone()).run(&consumer, &topic, &mut stop).await
}

/// The end offsets of `topic`, waiting up to [`TOPIC_WAIT`] for it to exist (`None`: stopped).
async fn wait_for_topic(consumer: &Arc<StreamConsumer<KafkaContext>>, topic: &str, stop: &mut watch::Receiver<bool>) -> Result<Option<BTreeMap<i32, i64>>> {
    let deadline = Instant::now() + TOPIC_WAIT;
    loop {
        let (c, t) = (consumer.clone(), topic.to_owned());
        let ends = tokio::task::spawn_blocking(move || crate::kafka::end_offsets(&*c, &t)).await?;
        match ends {
            Ok(ends) if !ends.is_empty() => return Ok(Some(ends)),
            Ok(_) if Instant::now() > deadline => {
                bail!("the campaigns topic `{topic}` does not exist (and could not be created); create it, or check --campaign-topic")
            }
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("reading the campaigns topic `{topic}`"))),
            _ => {}
        }
        tokio::select! {
            _ = crate::supervisor::stopped(stop) => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The messages up to the end offsets (`None`: stopped first).
async fn read_to_end(
    consumer: &StreamConsumer<KafkaContext>,
    topic: &str,
    ends: BTreeMap<i32, i64>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<Parsed>>> {
    let mut pending: HashMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let limiter = LogLimiter::default();
    while !pending.is_empty() {
        let message = tokio::select! {
            _ = crate::supervisor::stopped(stop) => return Ok(None),
            m = consumer.recv() => m,
            _ = tick.tick() => {
                // Compaction can remove the last offsets before the end watermark: the position
                // says when a partition has nothing more to give.
                if let Ok(positions) = consumer.position() {
                    for elem in positions.elements_for_topic(topic) {
                        if let (Some(pos), Some(end)) = (elem.offset().to_raw(), pending.get(&elem.partition())) {
                            if pos >= *end {
                                pending.remove(&elem.partition());
                            }
                        }
                    }
                }
                continue;
            }
        };
        match message {
            Ok(m) => {
                if let Some(parsed) = parse(m.key(), m.payload()) {
                    out.push(parsed);
                }
                if pending.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    pending.remove(&m.partition());
                }
            }
            Err(e) => {
                if limiter.allow("read") {
                    tracing::warn!(error = %e, "reading the campaigns topic");
                }
            }
        }
    }
    Ok(Some(out))
}

/// The outcome of one campaign id's history at start.
struct Outcome {
    id: i64,
    /// The version in force, compiled.
    in_force: Option<(CampaignDef, CompiledFilter)>,
    /// The state and error of its newest message, and that message's digest.
    last: (State, Option<String>, String),
    /// The position of its newest message (statuses go out in message order).
    position: usize,
}

/// Applies the initial messages at once (see the module documentation).
async fn load_initial(processor: &Arc<Processor>, messages: Vec<Parsed>) {
    // Each id's messages after its last tombstone; the newest message decides the status.
    struct History {
        versions: Vec<CampaignDef>,
        last: (State, Option<String>, String),
        position: usize,
    }
    let mut histories: BTreeMap<i64, History> = BTreeMap::new();
    let mut deliveries = Vec::new();
    let fresh = |position| History { versions: Vec::new(), last: (State::Deleted, None, String::new()), position };
    for (position, parsed) in messages.into_iter().enumerate() {
        match parsed {
            Parsed::Tombstone(id) => {
                histories.insert(id, fresh(position));
            }
            Parsed::Rejected { id: None, reason, digest } => {
                tracing::warn!(reason = %reason, "campaign rejected");
                deliveries.extend(status::send(processor, None, State::Rejected, Some(&reason), &digest));
            }
            Parsed::Rejected { id: Some(id), reason, digest } => {
                let h = histories.entry(id).or_insert_with(|| fresh(position));
                h.last = (State::Rejected, Some(reason), digest);
                h.position = position;
            }
            Parsed::Valid(def) => {
                let h = histories.entry(def.id).or_insert_with(|| fresh(position));
                h.last = (State::Active, None, def.digest.clone());
                h.position = position;
                h.versions.push(def);
            }
        }
    }
    // Compile in parallel: for each id, the newest version first, older ones only if it fails.
    let work: Vec<(i64, History)> = histories.into_iter().collect();
    let sandbox = processor.sandbox.clone();
    let threads = processor.settings.workers.max(1);
    let outcomes = tokio::task::spawn_blocking(move || {
        let queue = std::sync::Mutex::new(work.into_iter());
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let Some((id, mut history)) = queue.lock().unwrap_or_else(|p| p.into_inner()).next() else { return };
                    let newest = history.versions.len();
                    let mut in_force = None;
                    while let Some(def) = history.versions.pop() {
                        match compile_filter(&sandbox, &def.filter, def.controls.state.is_some()) {
                            Ok(compiled) => {
                                in_force = Some((def, compiled));
                                break;
                            }
                            Err(rejection) if history.versions.len() + 1 == newest && history.last.0 == State::Active => {
                                history.last = (State::Rejected, Some(rejection.to_string()), def.digest.clone());
                            }
                            Err(_) => {}
                        }
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(Outcome { id, in_force, last: history.last, position: history.position });
                });
            }
        });
        results.into_inner().unwrap_or_else(|p| p.into_inner())
    })
    .await
    .unwrap_or_default();
    let mut outcomes = outcomes;
    outcomes.sort_unstable_by_key(|o| o.position);

    let mut changes = Vec::new();
    let mut rejected = Vec::new();
    for outcome in &outcomes {
        match &outcome.in_force {
            Some((def, compiled)) => changes.push(Change::Activate(live(processor, def.clone(), compiled.clone()))),
            None if outcome.last.0 == State::Deleted => changes.push(Change::Delete(outcome.id)),
            None => {}
        }
        if outcome.last.0 == State::Rejected {
            rejected.push((outcome.id, outcome.last.1.clone().unwrap_or_default()));
        }
    }
    processor.registry.apply(changes);
    for (id, reason) in &rejected {
        tracing::warn!(campaign = id, reason = %reason, "campaign rejected");
        processor.registry.reject(*id, reason);
    }
    for outcome in &outcomes {
        let (state, error, digest) = &outcome.last;
        deliveries.extend(status::send(processor, Some(outcome.id), *state, error.as_deref(), digest));
    }
    tokio::spawn(status::delivered(deliveries));
}

/// A compiled version ready to put in force, with its metric handles.
fn live(processor: &Processor, def: CampaignDef, compiled: CompiledFilter) -> Arc<LiveCampaign> {
    let limits = processor.sandbox.limits().lowered(def.fuel, def.memory_mb);
    let telemetry = CampaignTelemetry::new(&processor.metrics, &processor.stats, def.id);
    Arc::new(LiveCampaign::new(def, compiled, limits, telemetry))
}

/// A message of the follow phase on its way to being applied.
enum Step {
    /// Compiling (its result arrives on the follower's channel).
    Compiling(CampaignDef),
    Ready(Ready),
}

enum Ready {
    Tombstone(i64),
    Rejected { id: Option<i64>, reason: String, digest: String },
    Compiled { def: CampaignDef, result: Result<CompiledFilter, String> },
}

struct Entry {
    seq: u64,
    id: Option<i64>,
    arrived: Instant,
    step: Step,
}

struct Compiled {
    seq: u64,
    result: Result<CompiledFilter, String>,
}

/// How long a compilation may hold back the messages after it; then messages of other campaign
/// ids overtake it (a campaign id's own messages always apply in order).
const HEAD_OF_LINE: Duration = Duration::from_secs(1);

/// Applies new campaign messages as they arrive: in arrival order, except that a compilation
/// slower than [`HEAD_OF_LINE`] no longer holds back other campaigns.
struct Follower {
    processor: Arc<Processor>,
    queue: VecDeque<Entry>,
    next_seq: u64,
    slots: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<Compiled>,
    done_rx: mpsc::UnboundedReceiver<Compiled>,
}

impl Follower {
    fn new(processor: Arc<Processor>) -> Follower {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(processor.settings.workers.max(1)));
        Follower { processor, queue: VecDeque::new(), next_seq: 0, slots, done_tx, done_rx }
    }

    async fn run(mut self, consumer: &Arc<StreamConsumer<KafkaContext>>, topic: &str, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let mut check = tokio::time::interval(TOPIC_CHECK);
        let mut overdue = tokio::time::interval(HEAD_OF_LINE / 4);
        let mut missing = 0;
        let limiter = LogLimiter::default();
        loop {
            tokio::select! {
                _ = crate::supervisor::stopped(stop) => return Ok(()),
                m = consumer.recv() => match m {
                    Ok(m) => {
                        if let Some(parsed) = parse(m.key(), m.payload()) {
                            self.arrived(parsed);
                        }
                    }
                    Err(e) => {
                        if limiter.allow("recv") {
                            tracing::warn!(error = %e, "reading the campaigns topic");
                        }
                    }
                },
                Some(compiled) = self.done_rx.recv() => {
                    if let Some(entry) = self.queue.iter_mut().find(|e| e.seq == compiled.seq) {
                        if let Step::Compiling(def) = std::mem::replace(&mut entry.step, Step::Ready(Ready::Tombstone(0))) {
                            entry.step = Step::Ready(Ready::Compiled { def, result: compiled.result });
                        }
                    }
                }
                _ = overdue.tick() => {}
                _ = check.tick() => {
                    let (c, t) = (consumer.clone(), topic.to_owned());
                    match tokio::task::spawn_blocking(move || crate::kafka::end_offsets(&*c, &t)).await? {
                        Ok(ends) if ends.is_empty() => missing += 1,
                        _ => missing = 0,
                    }
                    if missing >= 2 {
                        bail!("the campaigns topic `{topic}` no longer exists: campaign updates cannot be followed");
                    }
                }
            }
            self.flush();
        }
    }

    fn arrived(&mut self, parsed: Parsed) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (id, step) = match parsed {
            Parsed::Tombstone(id) => (Some(id), Step::Ready(Ready::Tombstone(id))),
            Parsed::Rejected { id, reason, digest } => (id, Step::Ready(Ready::Rejected { id, reason, digest })),
            Parsed::Valid(def) => {
                let (slots, tx, sandbox, source) = (self.slots.clone(), self.done_tx.clone(), self.processor.sandbox.clone(), def.filter.clone());
                let stateful = def.controls.state.is_some();
                tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let result = tokio::task::spawn_blocking(move || compile_filter(&sandbox, &source, stateful).map_err(|e| e.to_string()))
                        .await
                        .unwrap_or_else(|join| Err(format!("compiling panicked: {join}")));
                    let _ = tx.send(Compiled { seq, result });
                });
                (Some(def.id), Step::Compiling(def))
            }
        };
        self.queue.push_back(Entry { seq, id, arrived: Instant::now(), step });
    }

    /// Applies every entry that may go now: ready, with no earlier entry of its campaign id
    /// pending, and behind no pending entry younger than [`HEAD_OF_LINE`].
    fn flush(&mut self) {
        let mut deliveries = Vec::new();
        let mut blocked_ids = std::collections::HashSet::new();
        let mut held_back = false;
        let mut i = 0;
        while i < self.queue.len() {
            let entry = &self.queue[i];
            let same_id_pending = entry.id.is_some_and(|id| blocked_ids.contains(&id));
            match &entry.step {
                Step::Ready(_) if !same_id_pending && !held_back => {
                    let entry = self.queue.remove(i).expect("in range");
                    if let Step::Ready(ready) = entry.step {
                        self.apply(ready, &mut deliveries);
                    }
                }
                _ => {
                    if let Some(id) = entry.id {
                        blocked_ids.insert(id);
                    }
                    if matches!(entry.step, Step::Compiling(_)) && entry.arrived.elapsed() < HEAD_OF_LINE {
                        held_back = true;
                    }
                    i += 1;
                }
            }
        }
        if !deliveries.is_empty() {
            tokio::spawn(status::delivered(deliveries));
        }
    }

    /// Applies one message; its status message is sent without waiting for the delivery.
    fn apply(&mut self, ready: Ready, deliveries: &mut Vec<rdkafka::producer::DeliveryFuture>) {
        let p = self.processor.clone();
        match ready {
            Ready::Tombstone(id) => {
                p.registry.apply(vec![Change::Delete(id)]);
                tracing::info!(campaign = id, "campaign deleted");
                deliveries.extend(status::send(&p, Some(id), State::Deleted, None, ""));
            }
            Ready::Rejected { id, reason, digest } => {
                tracing::warn!(campaign = ?id, reason = %reason, "campaign rejected");
                if let Some(id) = id {
                    p.registry.reject(id, &reason);
                }
                deliveries.extend(status::send(&p, id, State::Rejected, Some(&reason), &digest));
            }
            Ready::Compiled { def, result: Ok(filter) } => {
                let (id, digest) = (def.id, def.digest.clone());
                p.registry.apply(vec![Change::Activate(live(&p, def, filter))]);
                tracing::info!(campaign = id, "campaign active");
                deliveries.extend(status::send(&p, Some(id), State::Active, None, &digest));
            }
            Ready::Compiled { def, result: Err(reason) } => {
                tracing::warn!(campaign = def.id, reason = %reason, "campaign rejected");
                p.registry.reject(def.id, &reason);
                deliveries.extend(status::send(&p, Some(def.id), State::Rejected, Some(&reason), &def.digest));
            }
        }
        p.metrics.update_campaigns(&p.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcrm_sandbox::SandboxConfig;

    /// A filter module matching every event; `extra` adds exports (a version, state functions).
    fn module(extra: &str) -> FilterSource {
        FilterSource::Wasm(
            wat::parse_str(format!(
                r#"(module
                  (memory (export "memory") 1)
                  (func (export "rtcrm_alloc") (param i32) (result i32) (i32.const 1024))
                  (func (export "rtcrm_filter") (param i32 i32) (result i32) (i32.const 1))
                  {extra})"#
            ))
            .expect("valid WAT"),
        )
    }

    const VERSION_2: &str = r#"
        (func (export "rtcrm_abi_version") (result i32) (i32.const 2))
        (func (export "rtcrm_filter_state") (param i32 i32 i32 i32) (result i32) (i32.const 1))
        (func (export "rtcrm_state_ptr") (result i32) (i32.const 0))
        (func (export "rtcrm_state_len") (result i32) (i32.const -1))"#;

    #[test]
    fn a_version_1_module_in_a_campaign_with_state_is_rejected_naming_what_is_missing() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let declared_1 = r#"(func (export "rtcrm_abi_version") (result i32) (i32.const 1))"#;
        for v1 in [module(""), module(declared_1)] {
            let rejection = compile_filter(&sandbox, &v1, true).expect_err("a version 1 module cannot keep state");
            assert!(
                matches!(rejection, FilterRejection::Wasm(WasmError::StateNeedsAbiVersion2 { declared: 1 })),
                "{rejection:?}"
            );
            // The status message: what is missing, where it is described, what the SDKs offer.
            let message = rejection.to_string();
            assert!(message.starts_with("filter_wasm: the campaign has `state`, but its module implements filter ABI version 1"), "{message}");
            for needed in [
                "rtcrm_filter_state",
                "rtcrm_state_ptr",
                "rtcrm_state_len",
                "return 2 from rtcrm_abi_version",
                "filter-sdk/ABI.md §9",
                "#[filter] fn f(event: &Event, state: &mut State) -> bool",
                "RTCRM_FILTER_STATE(f)",
                "filter.HandleState(f)",
            ] {
                assert!(message.contains(needed), "missing {needed:?} in {message}");
            }
            // The same module in a campaign without `state` is fine.
            let compiled = compile_filter(&sandbox, &v1, false).expect("version 1 without state");
            assert!(!compiled.supports_state());
        }
    }

    #[test]
    fn a_version_2_module_and_javascript_are_accepted_with_or_without_state() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        for stateful in [true, false] {
            let compiled = compile_filter(&sandbox, &module(VERSION_2), stateful).expect("version 2");
            assert!(compiled.supports_state());
            let js = FilterSource::Js("(event, state) => true".into());
            assert!(compile_filter(&sandbox, &js, stateful).is_ok());
        }
    }
}
