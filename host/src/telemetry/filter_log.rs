//! The filter log topic (`--filter-log-topic`, default `rtcrm-filter-logs`): what filters print
//! (`console.log`, a Wasm filter's stdout and stderr) and their evaluation errors, keyed by
//! campaign id, so `rtcrm campaign logs ID [--follow]` shows a campaign's output from every
//! instance, as Redpanda's transform logs do.
//!
//! Bounded at each level: the sandbox cuts each line at 512 bytes and allows each filter instance
//! 20 lines per second ([`rtcrm_sandbox::LogCaps`]); the evaluation errors come at most once per
//! campaign per 10 s (the processor's rate limit); and this sink allows the whole process
//! [`LINES_PER_SECOND`] records per second (a token bucket with a burst of as many). What the
//! bucket refuses is counted per campaign and reported as one `dropped` record with the next line
//! of that campaign that gets through; nothing waits, and a full producer queue drops the line
//! (counted the same way). Every line also goes to the process's own log, as before.
//!
//! A record: `{"campaign_id", "instance", "at", "stream": "stdout" | "stderr" | "error" |
//! "dropped", "message", "kind"?, "partition"?, "offset"?, "dropped"?}`.

use crate::kafka::KafkaContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rtcrm_sandbox::{LogSink, LogStream, TracingSink};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Records per second the whole process may write to the filter log topic.
pub const LINES_PER_SECOND: f64 = 100.0;
/// Most campaigns whose dropped lines are remembered (older counts are forgotten past it).
const MAX_DROP_COUNTS: usize = 10_000;

/// Where filter output goes in the processor: the process log and the filter log topic.
pub struct FilterLog {
    topic: String,
    instance: String,
    /// Set once the processor's producer exists (the sandbox, and so this sink, come first).
    producer: OnceLock<FutureProducer<KafkaContext>>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Lines refused per campaign since its last record.
    dropped: HashMap<String, u64>,
}

impl FilterLog {
    pub fn new(topic: &str, instance: &str) -> FilterLog {
        FilterLog {
            topic: topic.to_owned(),
            instance: instance.to_owned(),
            producer: OnceLock::new(),
            bucket: Mutex::new(Bucket { tokens: LINES_PER_SECOND, refilled: Instant::now(), dropped: HashMap::new() }),
        }
    }

    /// Starts writing to the topic with `producer`.
    pub fn connect(&self, producer: FutureProducer<KafkaContext>) {
        let _ = self.producer.set(producer);
    }

    /// A failed evaluation (already rate-limited per campaign by the caller).
    pub fn error(&self, campaign: &str, kind: &str, message: &str, partition: i32, offset: i64) {
        self.write(campaign, "error", message, |r| {
            r.insert("kind".into(), kind.into());
            r.insert("partition".into(), partition.into());
            r.insert("offset".into(), offset.into());
        });
    }

    /// Takes a token for `campaign`; returns the lines dropped before it, or None when refused.
    fn admit(&self, campaign: &str) -> Option<u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * LINES_PER_SECOND).min(LINES_PER_SECOND);
        b.refilled = now;
        if b.tokens < 1.0 {
            if b.dropped.len() >= MAX_DROP_COUNTS && !b.dropped.contains_key(campaign) {
                b.dropped.clear();
            }
            *b.dropped.entry(campaign.to_owned()).or_default() += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(b.dropped.remove(campaign).unwrap_or(0))
    }

    fn count_dropped(&self, campaign: &str, n: u64) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        *b.dropped.entry(campaign.to_owned()).or_default() += n;
    }

    fn write(&self, campaign: &str, stream: &str, message: &str, extra: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let Some(producer) = self.producer.get() else { return };
        let Some(dropped_before) = self.admit(campaign) else { return };
        if dropped_before > 0 {
            self.send(producer, campaign, record(campaign, &self.instance, "dropped", "", |r| {
                r.insert("dropped".into(), dropped_before.into());
            }));
        }
        self.send(producer, campaign, record(campaign, &self.instance, stream, message, extra));
    }

    fn send(&self, producer: &FutureProducer<KafkaContext>, campaign: &str, payload: String) {
        let record = FutureRecord::to(&self.topic).key(campaign).payload(&payload);
        // Never waits: a full queue drops the line (counted).
        if producer.send_result(record).is_err() {
            self.count_dropped(campaign, 1);
        }
    }
}

fn record(
    campaign: &str,
    instance: &str,
    stream: &str,
    message: &str,
    extra: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> String {
    let mut r = serde_json::Map::new();
    r.insert("campaign_id".into(), campaign.parse::<i64>().map_or_else(|_| campaign.into(), Into::into));
    r.insert("instance".into(), instance.into());
    r.insert("at".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
    r.insert("stream".into(), stream.into());
    r.insert("message".into(), message.into());
    extra(&mut r);
    serde_json::Value::Object(r).to_string()
}

impl LogSink for FilterLog {
    fn line(&self, filter: &str, stream: LogStream, line: &str) {
        TracingSink.line(filter, stream, line);
        let stream = match stream {
            LogStream::Out => "stdout",
            LogStream::Err => "stderr",
        };
        self.write(filter, stream, line, |_| {});
    }

    fn dropped(&self, filter: &str, count: u64) {
        TracingSink.dropped(filter, count);
        self.count_dropped(filter, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refuses_past_its_rate_and_reports_the_drops_with_the_next_line() {
        let log = FilterLog::new("t", "i");
        let admitted = (0..(LINES_PER_SECOND as usize + 50)).filter(|_| log.admit("7").is_some()).count();
        // The burst, plus what refilled while the loop ran (well under one more token).
        assert!((LINES_PER_SECOND as usize..=LINES_PER_SECOND as usize + 1).contains(&admitted), "{admitted}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let dropped = log.admit("7").expect("refilled after 50 ms");
        assert!((49..=50).contains(&dropped), "{dropped}");
        assert_eq!(log.admit("7"), Some(0));
    }

    #[test]
    fn records_name_the_campaign_as_a_number() {
        let r: serde_json::Value = serde_json::from_str(&record("4711", "h-1", "stdout", "hi", |_| {})).unwrap();
        assert_eq!((r["campaign_id"].as_i64(), r["stream"].as_str(), r["message"].as_str()), (Some(4711), Some("stdout"), Some("hi")));
    }
}
