//! Campaign status messages (spec §2): `{"campaign_id", "state", "error", "digest", "instance",
//! "at"}`, keyed by the campaign id, on the compacted status topic.

use crate::campaigns::registry::State;
use crate::processor::Processor;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use std::time::Duration;

/// Most bytes of an error in a status message (a filter controls its error texts).
const MAX_ERROR_BYTES: usize = 2048;

fn status_json(processor: &Processor, id: Option<i64>, state: State, error: Option<&str>, digest: &str) -> String {
    let error = error.map(|e| {
        if e.len() <= MAX_ERROR_BYTES {
            return e.to_owned();
        }
        let mut cut = MAX_ERROR_BYTES;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}… (truncated)", &e[..cut])
    });
    serde_json::json!({
        "campaign_id": id,
        "state": state.as_str(),
        "error": error,
        "digest": digest,
        "instance": processor.settings.instance_id,
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string()
}

/// Enqueues a status message without waiting for its delivery (waits only while the
/// producer's queue is full).
pub fn send(processor: &Processor, id: Option<i64>, state: State, error: Option<&str>, digest: &str) -> Option<DeliveryFuture> {
    let key = id.map(|i| i.to_string()).unwrap_or_default();
    let payload = status_json(processor, id, state, error, digest);
    let mut record = FutureRecord::to(&processor.settings.status_topic).key(&key).payload(&payload);
    loop {
        match processor.producer.send_result(record) {
            Ok(delivery) => return Some(delivery),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, campaign = ?id, "publishing a campaign status failed");
                return None;
            }
        }
    }
}

/// Waits for status deliveries, logging failures.
pub async fn delivered(deliveries: Vec<DeliveryFuture>) {
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => tracing::warn!(error = %e, "publishing a campaign status failed"),
            Err(_) => tracing::warn!("publishing a campaign status was cancelled"),
        }
    }
}

/// Publishes one status message and waits for its delivery.
pub async fn publish(processor: &Processor, id: Option<i64>, state: State, error: Option<&str>, digest: &str) {
    if let Some(delivery) = send(processor, id, state, error, digest) {
        delivered(vec![delivery]).await;
    }
}
