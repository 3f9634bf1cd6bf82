//! What `/healthz` and `/readyz` report.
//!
//! - `/healthz` is 200 while the processor can do its work: no task has failed, the Kafka cluster
//!   answers the periodic probe, (exactly-once) transactions are committing, and no assigned
//!   partition has waited long for its committed offset. Otherwise 503
//!   with the reason, so an instance that consumes nothing never looks healthy.
//! - `/readyz` is 200 when it is healthy, has read the campaigns topic to its end, and has joined
//!   the events consumer group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The processor's health, written by its tasks and read by the HTTP server.
#[derive(Default)]
pub struct Health {
    campaigns_loaded: AtomicBool,
    events_assigned: AtomicBool,
    /// Set once, by the supervisor: a task failed and the process is stopping.
    failure: Mutex<Option<String>>,
    /// Why the Kafka cluster is considered unreachable (the probe failed), if it is.
    kafka: Mutex<Option<String>>,
    /// Why the event path cannot deliver (e.g. transactions failing), if it cannot.
    delivery: Mutex<Option<String>>,
    /// Which assigned partitions have long waited for their committed offsets, if any.
    waiting: Mutex<Option<String>>,
}

fn get(slot: &Mutex<Option<String>>) -> Option<String> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Health {
    pub fn set_campaigns_loaded(&self) {
        self.campaigns_loaded.store(true, Ordering::SeqCst);
    }

    pub fn campaigns_loaded(&self) -> bool {
        self.campaigns_loaded.load(Ordering::SeqCst)
    }

    pub fn set_events_assigned(&self) {
        self.events_assigned.store(true, Ordering::SeqCst);
    }

    /// Records the failure that stops the process (the first one wins).
    pub fn fail(&self, reason: &str) {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| reason.to_owned());
    }

    pub fn failure(&self) -> Option<String> {
        get(&self.failure)
    }

    /// The probe's verdict on the cluster: `None` when it answered.
    pub fn set_kafka_unreachable(&self, reason: Option<String>) {
        set(&self.kafka, reason);
    }

    /// The event path's verdict on delivery: `None` when it delivers.
    pub fn set_delivery_failing(&self, reason: Option<String>) {
        set(&self.delivery, reason);
    }

    /// The event path's verdict on its assigned partitions: `None` when every one of them
    /// fetches (or has not waited long for its committed offset). A partition whose offset
    /// fetch the group coordinator keeps answering with UNSTABLE_OFFSET_COMMIT consumes
    /// nothing while everything else looks well.
    pub fn set_partitions_waiting(&self, reason: Option<String>) {
        set(&self.waiting, reason);
    }

    /// Why the processor is unhealthy (`/healthz` 503), if it is.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(f) = self.failure() {
            return Some(format!("stopping after a failure: {f}"));
        }
        get(&self.kafka).or_else(|| get(&self.delivery)).or_else(|| get(&self.waiting))
    }

    /// Why the processor is not ready (`/readyz` 503, `/api/info`), if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(reason) = self.unhealthy() {
            Some(reason)
        } else if !self.campaigns_loaded() {
            Some("reading the campaigns topic".into())
        } else if !self.events_assigned.load(Ordering::SeqCst) {
            Some("joining the events consumer group".into())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_loading_joining_and_health() {
        let h = Health::default();
        assert_eq!(h.not_ready().as_deref(), Some("reading the campaigns topic"));
        h.set_campaigns_loaded();
        assert_eq!(h.not_ready().as_deref(), Some("joining the events consumer group"));
        h.set_events_assigned();
        assert_eq!(h.not_ready(), None);
        h.set_kafka_unreachable(Some("Kafka at 127.0.0.1:1 does not answer".into()));
        assert_eq!(h.unhealthy().as_deref(), Some("Kafka at 127.0.0.1:1 does not answer"));
        assert!(h.not_ready().is_some());
        h.set_kafka_unreachable(None);
        assert_eq!(h.unhealthy(), None);
        h.set_partitions_waiting(Some("1 assigned partition(s) (events[0]) have waited 31 s".into()));
        assert_eq!(h.unhealthy().as_deref(), Some("1 assigned partition(s) (events[0]) have waited 31 s"));
        h.set_partitions_waiting(None);
        assert_eq!(h.not_ready(), None);
        h.fail("event path: fenced");
        h.fail("later");
        assert_eq!(h.unhealthy().as_deref(), Some("stopping after a failure: event path: fenced"));
    }
}
