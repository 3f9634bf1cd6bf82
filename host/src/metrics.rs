//! Prometheus metrics (`GET /metrics`). Counters end in `_total`; labels are bounded (a campaign
//! id and an error kind, never an event id).

use crate::registry::Registry as Campaigns;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
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

fn latency_histogram() -> Histogram {
    // 1 µs .. ~16 ms
    Histogram::new(exponential_buckets(1e-6, 2.0, 15))
}

fn fuel_histogram() -> Histogram {
    // 1k .. ~16M fuel
    Histogram::new(exponential_buckets(1_000.0, 2.0, 15))
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
    pub fuel: Family<CampaignLabel, Histogram, fn() -> Histogram>,
    pub latency: Histogram,
    pub campaigns: Family<StateLabel, Gauge>,
    pub assigned_partitions: Gauge,
    pub consumer_lag: Gauge,
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
            latency: latency_histogram(),
            campaigns: Family::default(),
            assigned_partitions: Gauge::default(),
            consumer_lag: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("rtcrm_events", "Events consumed", m.events.clone());
        registry.register("rtcrm_dead_letters", "Malformed events sent to the dead-letter topic", m.dead_letters.clone());
        registry.register("rtcrm_triggers", "Triggers produced", m.triggers.clone());
        registry.register("rtcrm_evaluations", "Filter evaluations by campaign", m.evaluations.clone());
        registry.register("rtcrm_matches", "Filter matches by campaign", m.matches.clone());
        registry.register("rtcrm_evaluation_errors", "Failed evaluations by campaign and kind", m.errors.clone());
        registry.register("rtcrm_fuel_used", "Fuel used per evaluation, by campaign", m.fuel.clone());
        registry.register("rtcrm_evaluation_duration_seconds", "Time of one filter evaluation", m.latency.clone());
        registry.register("rtcrm_campaigns", "Campaigns by state", m.campaigns.clone());
        registry.register("rtcrm_assigned_partitions", "Events-topic partitions this process owns", m.assigned_partitions.clone());
        registry.register("rtcrm_consumer_lag", "Events not yet consumed on the owned partitions", m.consumer_lag.clone());
        Arc::new(Metrics { registry, ..m })
    }

    /// Refreshes the campaign gauges from the registry.
    pub fn update_campaigns(&self, campaigns: &Campaigns) {
        for (state, n) in campaigns.counts() {
            self.campaigns.get_or_create(&StateLabel { state: state.as_str().into() }).set(n as i64);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
