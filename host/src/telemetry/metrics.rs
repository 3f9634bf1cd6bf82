//! Prometheus metrics (`GET /metrics`). Counters end in `_total`; labels are bounded (a campaign
//! id, an error kind, a delivery outcome — never an event id).
//!
//! Nothing on the event path takes a lock to record: counters and gauges are atomics, and the
//! histograms here are [`AtomicHistogram`]s (fixed buckets of atomic counters) instead of
//! prometheus-client's `Histogram`, which write-locks on every observation. Per-campaign handles
//! are looked up once, when a campaign version is activated ([`CampaignTelemetry`]).

use crate::campaigns::registry::Registry as Campaigns;
use crate::telemetry::stats::CampaignStats;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use rtcrm_sandbox::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CampaignLabel {
    pub campaign: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub campaign: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A histogram whose observations are lock-free: one atomic add for the bucket, the count and
/// the sum. Values are integers in the histogram's own unit (nanoseconds, fuel); `per_unit`
/// converts them to the exported unit (1e9 nanoseconds per second).
#[derive(Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

struct HistogramInner {
    /// Upper bounds, ascending (the `+Inf` bucket is implicit, at `counts[bounds.len()]`).
    bounds: Vec<u64>,
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    per_unit: f64,
}

impl AtomicHistogram {
    /// Buckets `start, start·2, start·4, ...` (`n` of them), in integer units.
    pub fn exponential(start: u64, n: usize, per_unit: f64) -> AtomicHistogram {
        let bounds: Vec<u64> = (0..n).map(|i| start << i).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram { inner: Arc::new(HistogramInner { bounds, counts, sum: AtomicU64::new(0), per_unit }) }
    }

    pub fn observe(&self, value: u64) {
        let i = self.inner.bounds.partition_point(|b| *b < value);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram").field("count", &self.count()).finish()
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let per_unit = inner.per_unit;
        let mut buckets: Vec<(f64, u64)> =
            inner.bounds.iter().zip(&inner.counts).map(|(b, c)| (*b as f64 / per_unit, c.load(Ordering::Relaxed))).collect();
        buckets.push((f64::MAX, inner.counts[inner.bounds.len()].load(Ordering::Relaxed)));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 / per_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn fuel_histogram() -> AtomicHistogram {
    // 1k .. ~16M fuel
    AtomicHistogram::exponential(1_000, 15, 1.0)
}

/// Every metric of the processor.
pub struct Metrics {
    registry: Registry,
    pub events: Counter,
    pub dead_letters: Counter,
    pub triggers: Counter,
    pub evaluations: Family<CampaignLabel, Counter>,
    pub matches: Family<CampaignLabel, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub fuel: Family<CampaignLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    /// One filter evaluation, in nanoseconds (exported in seconds).
    pub latency: AtomicHistogram,
    pub campaigns: Family<StateLabel, Gauge>,
    pub assigned_partitions: Gauge,
    pub consumer_lag: Gauge,
    /// Filter instances alive (all campaigns), bounded by `max_filter_instances`.
    pub filter_instances: Gauge,
    /// Times a producer's queue was full and a send waited for room.
    pub queue_full_waits: Counter,
    /// Failed deliveries by kind: `retried` (sent again), `dead_lettered`, `lost_dead_letter`.
    pub delivery_failures: Family<KindLabel, Counter>,
    /// Kafka transactions by outcome: `committed`, `aborted`.
    pub transactions: Family<KindLabel, Counter>,
    /// Events consumed but not yet finished (evaluated and delivered).
    pub in_flight_events: Gauge,
    /// Would-be triggers of control-group players (spec §12), by campaign.
    pub control_matches: Family<CampaignLabel, Counter>,
    /// Matches that did not trigger, by campaign and reason (`cooldown`, `cap`, `count`).
    pub suppressed: Family<ReasonLabels, Counter>,
    /// Events a campaign with per-player controls could not consider: no `player_id`.
    pub no_player: Family<CampaignLabel, Counter>,
    /// Armed inactivity timers, by campaign.
    pub timers_pending: Family<CampaignLabel, Gauge>,
    /// Per-player states held by this instance, by campaign.
    pub state_entries: Family<CampaignLabel, Gauge>,
    /// Their size (JSON), by campaign.
    pub state_bytes: Family<CampaignLabel, Gauge>,
    /// Events forwarded to the repartition topic.
    pub repartitioned: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub campaign: String,
    pub reason: String,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            events: Counter::default(),
            dead_letters: Counter::default(),
            triggers: Counter::default(),
            evaluations: Family::default(),
            matches: Family::default(),
            errors: Family::default(),
            fuel: Family::new_with_constructor(fuel_histogram),
            // 1 µs .. ~16 ms
            latency: AtomicHistogram::exponential(1_000, 15, 1e9),
            campaigns: Family::default(),
            assigned_partitions: Gauge::default(),
            consumer_lag: Gauge::default(),
            filter_instances: Gauge::default(),
            queue_full_waits: Counter::default(),
            delivery_failures: Family::default(),
            transactions: Family::default(),
            in_flight_events: Gauge::default(),
            control_matches: Family::default(),
            suppressed: Family::default(),
            no_player: Family::default(),
            timers_pending: Family::default(),
            state_entries: Family::default(),
            state_bytes: Family::default(),
            repartitioned: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("rtcrm_events", "Events consumed", m.events.clone());
        registry.register("rtcrm_dead_letters", "Events sent to the dead-letter topic", m.dead_letters.clone());
        registry.register("rtcrm_triggers", "Triggers produced", m.triggers.clone());
        registry.register("rtcrm_evaluations", "Filter evaluations by campaign", m.evaluations.clone());
        registry.register("rtcrm_matches", "Filter matches by campaign", m.matches.clone());
        registry.register("rtcrm_evaluation_errors", "Failed evaluations by campaign and kind", m.errors.clone());
        registry.register("rtcrm_fuel_used", "Fuel used per evaluation, by campaign", m.fuel.clone());
        registry.register("rtcrm_evaluation_duration_seconds", "Time of one filter evaluation", m.latency.clone());
        registry.register("rtcrm_campaigns", "Campaigns by state", m.campaigns.clone());
        registry.register("rtcrm_assigned_partitions", "Events-topic partitions this process owns", m.assigned_partitions.clone());
        registry.register("rtcrm_consumer_lag", "Events not yet consumed on the owned partitions", m.consumer_lag.clone());
        registry.register("rtcrm_filter_instances", "Filter instances alive, all campaigns", m.filter_instances.clone());
        registry.register("rtcrm_producer_queue_full_waits", "Sends that waited for room in the producer queue", m.queue_full_waits.clone());
        registry.register("rtcrm_delivery_failures", "Failed deliveries by what was done about them", m.delivery_failures.clone());
        registry.register("rtcrm_transactions", "Kafka transactions by outcome (exactly-once)", m.transactions.clone());
        registry.register("rtcrm_in_flight_events", "Events consumed and not yet finished", m.in_flight_events.clone());
        registry.register("rtcrm_control_matches", "Would-be triggers of control-group players, by campaign", m.control_matches.clone());
        registry.register("rtcrm_suppressed", "Matches that did not trigger, by campaign and reason (cooldown, cap, count)", m.suppressed.clone());
        registry.register("rtcrm_no_player", "Events without player_id, for campaigns with per-player controls", m.no_player.clone());
        registry.register("rtcrm_timers_pending", "Armed inactivity timers, by campaign", m.timers_pending.clone());
        registry.register("rtcrm_state_entries", "Per-player states held by this instance, by campaign", m.state_entries.clone());
        registry.register("rtcrm_state_bytes", "Bytes of the per-player states held by this instance, by campaign", m.state_bytes.clone());
        registry.register("rtcrm_repartitioned_events", "Events forwarded to the repartition topic", m.repartitioned.clone());
        Arc::new(Metrics { registry, ..m })
    }

    /// Refreshes the campaign gauges from the registry.
    pub fn update_campaigns(&self, campaigns: &Campaigns) {
        for (state, n) in campaigns.counts() {
            self.campaigns.get_or_create(&StateLabel { state: state.as_str().into() }).set(n as i64);
        }
    }

    /// Counts one failed delivery of `kind`.
    pub fn delivery_failed(&self, kind: &str) {
        self.delivery_failures.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    /// Counts one transaction outcome.
    pub fn transaction(&self, outcome: &str) {
        self.transactions.get_or_create(&KindLabel { kind: outcome.into() }).inc();
    }

    /// Campaign `id`'s per-player control counters (spec §12), read from its series of
    /// `rtcrm_control_matches`, `rtcrm_suppressed`, `rtcrm_no_player`, `rtcrm_timers_pending`,
    /// `rtcrm_state_entries` and `rtcrm_state_bytes` (0 where a series does not exist; none is
    /// created).
    pub fn control_counters(&self, id: i64) -> ControlCounters {
        let label = CampaignLabel { campaign: id.to_string() };
        let counter = |family: &Family<CampaignLabel, Counter>| family.get(&label).map_or(0, |c| c.get());
        let gauge = |family: &Family<CampaignLabel, Gauge>| family.get(&label).map_or(0, |g| g.get());
        let reason = |reason: &str| self.suppressed.get(&ReasonLabels { campaign: label.campaign.clone(), reason: reason.into() }).map_or(0, |c| c.get());
        ControlCounters {
            control_matches: counter(&self.control_matches),
            suppressed: Suppressed { cooldown: reason("cooldown"), cap: reason("cap"), count: reason("count") },
            no_player: counter(&self.no_player),
            timers_pending: gauge(&self.timers_pending),
            state_entries: gauge(&self.state_entries),
            state_bytes: gauge(&self.state_bytes),
        }
    }

    /// The Prometheus text exposition.
    /// The metrics in OpenMetrics text format 1.0.0.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// The metrics in Prometheus text exposition format 0.0.4 (`text/plain; version=0.0.4`).
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4, which differs in what a family is
/// called: an OpenMetrics counter family `x` has samples `x_total` (and `x_created`), while in
/// 0.0.4 the `# TYPE` and `# HELP` lines name the samples themselves (`x_total`). Also: no
/// `# UNIT` and no `# EOF` lines, no exemplars, `unknown` is `untyped`, and `info` and
/// `stateset` families are gauges (an info family's samples are `x_info`).
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // Families whose samples end in `_total` or `_info` in 0.0.4.
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind.trim());
            }
        }
    }
    let renamed = |name: &str| -> String {
        match types.get(name).copied() {
            Some("counter") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_owned(),
        }
    };
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind.trim() {
                "counter" | "gauge" | "histogram" | "summary" => kind.trim(),
                "info" | "stateset" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        // `x_created` of a counter family has no place in 0.0.4.
        if let Some(family) = name.strip_suffix("_created") {
            if types.get(family).is_some_and(|k| *k == "counter" || *k == "histogram" || *k == "summary") {
                continue;
            }
        }
        // Exemplars follow ` # ` after the value (past the labels, whose values may hold anything).
        let labels_end = if line[name_end..].starts_with('{') { labels_end(line, name_end) } else { name_end };
        let sample = match line[labels_end..].find(" # ") {
            Some(i) => &line[..labels_end + i],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// One campaign's per-player control counters (spec §12), as `/api/campaigns` shows them:
/// the same series as `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlCounters {
    /// Would-be triggers of control-group players (`rtcrm_control_matches`).
    pub control_matches: u64,
    /// Matches that did not trigger, by reason (`rtcrm_suppressed`).
    pub suppressed: Suppressed,
    /// Events without `player_id` (`rtcrm_no_player`).
    pub no_player: u64,
    /// Armed inactivity timers held by this instance (`rtcrm_timers_pending`).
    pub timers_pending: i64,
    /// Per-player states held by this instance (`rtcrm_state_entries`) and their bytes.
    pub state_entries: i64,
    pub state_bytes: i64,
}

/// Matches that did not trigger, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppressed {
    pub cooldown: u64,
    pub cap: u64,
    /// Matches counted toward `count` that did not reach it.
    pub count: u64,
}

/// One campaign's metric and counter handles, looked up once per version and shared by every
/// worker (each record is an atomic add).
pub struct CampaignTelemetry {
    pub label: CampaignLabel,
    pub evaluations: Counter,
    pub matches: Counter,
    /// Per error kind, in [`ErrorKind::ALL`] order.
    pub errors: [Counter; ErrorKind::ALL.len()],
    pub fuel: AtomicHistogram,
    pub stats: Arc<CampaignStats>,
    /// Per-player controls (spec §12).
    pub control_matches: Counter,
    pub cooldown: Counter,
    pub cap: Counter,
    pub counting: Counter,
    pub no_player: Counter,
    pub timers: Gauge,
    pub state_entries: Gauge,
    pub state_bytes: Gauge,
}

impl CampaignTelemetry {
    /// The handles of campaign `id` in `metrics` and `stats`.
    pub fn new(metrics: &Metrics, stats: &crate::telemetry::stats::Stats, id: i64) -> CampaignTelemetry {
        let label = CampaignLabel { campaign: id.to_string() };
        // One handle per statement: a family's lookup guard lives to the end of its statement,
        // and a second lookup that creates a series would wait for it.
        let counter = |family: &Family<CampaignLabel, Counter>| family.get_or_create(&label).clone();
        let gauge = |family: &Family<CampaignLabel, Gauge>| family.get_or_create(&label).clone();
        let reason = |reason: &str| {
            let handle = metrics.suppressed.get_or_create(&ReasonLabels { campaign: label.campaign.clone(), reason: reason.into() }).clone();
            handle
        };
        let errors = ErrorKind::ALL.map(|kind| {
            let handle = metrics.errors.get_or_create(&ErrorLabels { campaign: label.campaign.clone(), kind: kind.as_str().into() }).clone();
            handle
        });
        let fuel = metrics.fuel.get_or_create(&label).clone();
        CampaignTelemetry {
            evaluations: counter(&metrics.evaluations),
            matches: counter(&metrics.matches),
            errors,
            fuel,
            stats: stats.entry(id),
            control_matches: counter(&metrics.control_matches),
            cooldown: reason("cooldown"),
            cap: reason("cap"),
            counting: reason("count"),
            no_player: counter(&metrics.no_player),
            timers: gauge(&metrics.timers_pending),
            state_entries: gauge(&metrics.state_entries),
            state_bytes: gauge(&metrics.state_bytes),
            label,
        }
    }

    /// Handles registered nowhere (tools such as the backtest, and unit tests).
    #[allow(dead_code)]
    pub fn detached(id: i64) -> CampaignTelemetry {
        CampaignTelemetry {
            label: CampaignLabel { campaign: id.to_string() },
            evaluations: Counter::default(),
            matches: Counter::default(),
            errors: std::array::from_fn(|_| Counter::default()),
            fuel: fuel_histogram(),
            stats: Arc::default(),
            control_matches: Counter::default(),
            cooldown: Counter::default(),
            cap: Counter::default(),
            counting: Counter::default(),
            no_player: Counter::default(),
            timers: Gauge::default(),
            state_entries: Gauge::default(),
            state_bytes: Gauge::default(),
        }
    }

    /// The counter of error `kind`.
    pub fn error(&self, kind: ErrorKind) -> &Counter {
        &self.errors[ErrorKind::ALL.iter().position(|k| *k == kind).expect("every kind is in ALL")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_handles_register_every_series_and_are_shared_by_versions() {
        let metrics = Metrics::new();
        let stats = crate::telemetry::stats::Stats::default();
        let v1 = CampaignTelemetry::new(&metrics, &stats, 7);
        let v2 = CampaignTelemetry::new(&metrics, &stats, 7);
        v1.cooldown.inc();
        v2.cooldown.inc();
        v1.state_entries.inc_by(3);
        let text = metrics.encode();
        assert!(text.contains("rtcrm_suppressed_total{campaign=\"7\",reason=\"cooldown\"} 2"), "{text}");
        assert!(text.contains("rtcrm_suppressed_total{campaign=\"7\",reason=\"cap\"} 0"), "{text}");
        assert!(text.contains("rtcrm_state_entries{campaign=\"7\"} 3"), "{text}");
        assert!(text.contains("rtcrm_evaluation_errors_total{campaign=\"7\",kind=\"fuel\"} 0"), "{text}");
    }

    #[test]
    fn control_counters_read_the_same_series_without_creating_any() {
        let metrics = Metrics::new();
        let stats = crate::telemetry::stats::Stats::default();
        assert_eq!(metrics.control_counters(9), ControlCounters::default());
        assert!(!metrics.encode().contains("campaign=\"9\""), "reading created no series");
        let t = CampaignTelemetry::new(&metrics, &stats, 9);
        t.control_matches.inc_by(4);
        t.cooldown.inc_by(19);
        t.cap.inc_by(17);
        t.counting.inc_by(2);
        t.no_player.inc();
        t.timers.inc_by(3);
        t.state_entries.inc_by(12);
        t.state_bytes.inc_by(3_400);
        t.timers.dec();
        let got = metrics.control_counters(9);
        assert_eq!(
            got,
            ControlCounters {
                control_matches: 4,
                suppressed: Suppressed { cooldown: 19, cap: 17, count: 2 },
                no_player: 1,
                timers_pending: 2,
                state_entries: 12,
                state_bytes: 3_400
            }
        );
        assert_eq!(metrics.control_counters(10), ControlCounters::default(), "per campaign");
    }

    #[test]
    fn atomic_histograms_export_cumulative_buckets_and_scaled_sums() {
        let metrics = Metrics::new();
        for v in [500, 1_000, 1_500, 3_000_000_000] {
            metrics.latency.observe(v);
        }
        let text = metrics.encode();
        let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {text}")).to_owned();
        assert_eq!(line("rtcrm_evaluation_duration_seconds_count"), "rtcrm_evaluation_duration_seconds_count 4");
        assert!(line("rtcrm_evaluation_duration_seconds_sum").ends_with(" 3.000003"), "{text}");
        assert!(text.contains("rtcrm_evaluation_duration_seconds_bucket{le=\"0.000001\"} 2"), "{text}");
        assert!(text.contains("rtcrm_evaluation_duration_seconds_bucket{le=\"0.000002\"} 3"), "{text}");
        assert!(text.contains("rtcrm_evaluation_duration_seconds_bucket{le=\"+Inf\"} 4"), "{text}");
        assert_eq!(metrics.latency.count(), 4);
    }
}

/// The index just past the `}` that closes the label set opening at `open` (quotes and escapes
/// respected); the line's end when there is none.
fn labels_end(line: &str, open: usize) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return open + i + 1,
            _ => {}
        }
    }
    line.len()
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\n# UNIT a_events events\na_events_total 3\na_events_created 1.7e9\n\
                  # HELP b Lag.\n# TYPE b gauge\nb{p=\"0\"} 1\n# TYPE c histogram\nc_bucket{le=\"+Inf\"} 2 # {id=\"x\"} 1.0\nc_sum 1.0\nc_count 2\n\
                  # TYPE d info\nd_info{v=\"1\"} 1\n# TYPE e unknown\ne 1\n# TYPE f gauge\nf{x=\"a # {b}\"} 2\n# EOF\n";
        let text = openmetrics_to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n\
             # HELP b Lag.\n# TYPE b gauge\nb{p=\"0\"} 1\n# TYPE c histogram\nc_bucket{le=\"+Inf\"} 2\nc_sum 1.0\nc_count 2\n\
             # TYPE d_info gauge\nd_info{v=\"1\"} 1\n# TYPE e untyped\ne 1\n# TYPE f gauge\nf{x=\"a # {b}\"} 2\n"
        );
    }
}
