//! The benchmark workload, shared by the criterion bench (`rtcrm-sandbox`) and the table
//! (`rtcrm`, `benches/table.rs`): the original system's event and filter, and ten realistic
//! campaign predicates on the same (game, event_name), each as JavaScript and as a native
//! closure over `serde_json::Value`.
#![allow(dead_code)]

use serde_json::Value;

/// The original system's example event (398 bytes).
pub const SEED_EVENT: &str = r#"{"schema_version":"2023110110010101","event_id":"7a8d0614-4e8e-4464-b439-36e31441a040","system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":"loss"}}"#;

/// The original system's example filter.
pub const SEED_FILTER: &str = "function(event) { return event.getData().get('result') === 'loss' }";

/// The seed predicate, natively.
pub fn seed_native(v: &Value) -> bool {
    v["data"]["result"] == "loss"
}

/// A native predicate.
pub type Native = fn(&Value) -> bool;

/// Ten campaigns on (foe, fight): JavaScript source and the same predicate in Rust.
pub const TEN: [(&str, Native); 10] = [
    ("e => e.data.result === 'loss'", |v| v["data"]["result"] == "loss"),
    (SEED_FILTER, |v| v["data"].get("result").is_some_and(|r| r == "loss")),
    ("e => e.market === 'de' && e.player_id > 10000", |v| v["market"] == "de" && v["player_id"].as_i64().is_some_and(|p| p > 10000)),
    ("e => e.getPlayerId() % 2 === 1", |v| v["player_id"].as_i64().is_some_and(|p| p % 2 == 1)),
    ("e => e.data.containsKey('result') && e.context.isEmpty()", |v| {
        v["data"].get("result").is_some() && v["context"].as_object().is_some_and(|c| c.is_empty())
    }),
    ("e => ['de', 'at', 'ch'].includes(e.market)", |v| matches!(v["market"].as_str(), Some("de" | "at" | "ch"))),
    ("e => e.event_scope === 'user' && e.system_type === 'game'", |v| v["event_scope"] == "user" && v["system_type"] == "game"),
    ("e => /^foe-backend-\\d+\\./.test(e.hostname)", |v| {
        v["hostname"].as_str().and_then(|h| h.strip_prefix("foe-backend-")).is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest.as_bytes().get(digits) == Some(&b'.')
        })
    }),
    ("e => new Date(e.created_at).getUTCHours() >= 11", |v| {
        v["created_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| {
            use chrono::Timelike;
            t.naive_utc().hour() >= 11
        })
    }),
    ("e => e.eventType === 'progress' && e.data.result !== 'win'", |v| v["event_type"] == "progress" && v["data"]["result"] != "win"),
];
