//! Hostile filters and hostile events on `rtcrm run` (issue 11), each beside a healthy campaign
//! that must keep triggering every matching event, on time:
//! - a Wasm filter that asks WASI to sleep for 10 s (in `_initialize` and on every event) does
//!   not park anything: the sleep returns at once;
//! - a module with 40 memories, and one of 200,000 functions, are rejected at submission with the
//!   reason, quickly, and the campaign after them in the topic still becomes active;
//! - a filter doing host work on every event (`Object.keys`, `JSON.stringify` of the event) is
//!   bounded by its fuel;
//! - a filter that throws a 256 KiB message is reported with a bounded message;
//! - 60 events nested 5,000 levels deep go to the dead-letter topic and do not quarantine the
//!   campaigns they would have reached.

use base64::Engine as _;
use rtcrm_integration_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn b64(wat: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(wat::parse_str(wat).expect("valid WAT"))
}

/// A filter-ABI module whose `rtcrm_filter` runs `body` (returning the verdict), with an
/// `_initialize` that runs `init`.
fn abi_module(imports: &str, init: &str, body: &str) -> String {
    format!(
        r#"(module {imports}
            (memory (export "memory") 2)
            (global $next (mut i32) (i32.const 0x8000))
            (func (export "rtcrm_alloc") (param $len i32) (result i32) (global.get $next))
            (func (export "_initialize") {init})
            (func (export "rtcrm_filter") (param $ptr i32) (param $len i32) (result i32) {body}))"#
    )
}

const POLL: &str = r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#;

/// Calls poll_oneoff with one clock subscription of 10 s (built at 0x100).
fn sleep_ten_seconds() -> &'static str {
    r#"(i64.store (i32.const 0x100) (i64.const 1))
       (i32.store8 (i32.const 0x108) (i32.const 0))
       (i32.store (i32.const 0x110) (i32.const 1))
       (i64.store (i32.const 0x118) (i64.const 10000000000))
       (i32.store16 (i32.const 0x128) (i32.const 0))
       (drop (call $poll (i32.const 0x100) (i32.const 0x200) (i32.const 1) (i32.const 0x300)))"#
}

fn campaign(id: i64, filter: Value) -> Value {
    let mut c = json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": "fight"});
    let (k, v) = filter.as_object().unwrap().iter().next().unwrap();
    c[k] = v.clone();
    c
}

fn nested(depth: usize) -> String {
    format!(r#"{{"game":"foe","event_name":"fight","player_id":1,"data":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn hostile_filters_and_events_beside_a_healthy_campaign() {
    let t = Topics::new("hostile2");
    let sleeper = abi_module(POLL, sleep_ten_seconds(), &format!("{} (i32.const 1)", sleep_ten_seconds()));
    let many_memories = format!(
        r#"(module {} (func (export "rtcrm_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "rtcrm_filter") (param i32 i32) (result i32) (i32.const 1)))"#,
        (0..40).map(|i| if i == 0 { "(memory (export \"memory\") 256)".to_string() } else { "(memory 256)".to_string() }).collect::<String>()
    );
    let many_functions = abi_module("", "", "(i32.const 0)").replace("(memory", &format!("{} (memory", "(func)".repeat(200_000)));
    let campaigns = [
        campaign(1, json!({"filter": "e => e.data.result === 'loss'"})),
        campaign(2, json!({"filter_wasm": b64(&sleeper)})),
        campaign(3, json!({"filter_wasm": b64(&many_memories)})),
        campaign(4, json!({"filter_wasm": base64::engine::general_purpose::STANDARD.encode(wat::parse_str(&many_functions).unwrap())})),
        campaign(5, json!({"filter": "e => { for (let i = 0; i < 1e9; i++) { Object.keys(e); JSON.stringify(e); } return true }"})),
        campaign(6, json!({"filter": "e => { throw new Error('x'.repeat(262144)) }"})),
        // After the rejected ones: still applied.
        campaign(7, json!({"filter": "e => e.data.result === 'win'"})),
    ];
    let msgs: Vec<Msg> = campaigns.iter().map(|c| Msg::keyed(c["campaign_id"].to_string(), c.to_string())).collect();
    // As rtcrm creates it: room for campaigns of up to 16 MiB.
    create_topic_with(&t.campaigns, 1, &[("max.message.bytes", "16777216")]);
    produce(&t.campaigns, &msgs);
    let started = Instant::now();
    let mut p = Processor::start(&[t.args(), vec!["--quarantine-after".into(), "1000".into()]].concat());
    println!("ready {:.1?} after start", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20), "a sleeping _initialize or a huge module must not hold up the start");
    let mut status = Reader::new(&t.status);
    for id in [1, 2, 5, 6, 7] {
        wait_status(&mut status, id, "active", Duration::from_secs(30));
    }
    let multi = wait_status(&mut status, 3, "rejected", Duration::from_secs(30));
    assert!(multi["error"].as_str().unwrap().contains("multi-memory"), "names the feature: {multi}");
    let huge = wait_status(&mut status, 4, "rejected", Duration::from_secs(30));
    assert!(huge["error"].as_str().unwrap().contains("functions"), "names the cap: {huge}");

    // Events: 200 fights (loss/win) and 60 nested 5,000 levels deep.
    let mut rng = Rng::new(11);
    let mut msgs = Vec::new();
    let (mut losses, mut wins) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let result = *rng.pick(&["loss", "win"]);
        let id = format!("h2-{i:03}");
        if result == "loss" { losses.push(id.clone()) } else { wins.push(id.clone()) }
        msgs.push(Msg::keyed("12345", seed_event(&id, result).to_string()));
        if i % 10 == 3 && i < 180 {
            for _ in 0..3 {
                msgs.push(Msg::keyed("12345", nested(5_000)));
            }
        }
    }
    let sent = Instant::now();
    produce(&t.events, &msgs);
    let expected: std::collections::BTreeSet<(i64, String)> =
        losses.iter().map(|id| (1, id.clone())).chain(wins.iter().map(|id| (7, id.clone()))).collect();
    let mut triggers = Reader::new(&t.triggers);
    let complete = triggers.read_until(
        |r| {
            let (got, _) = trigger_pairs(r);
            expected.iter().all(|e| got.contains(e))
        },
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let took = sent.elapsed();
    println!("the healthy campaigns' {} triggers arrived {:.1?} after the events were sent", expected.len(), took);
    assert!(complete, "the healthy campaigns' triggers are incomplete");
    // 200 events × 7 campaigns: if a 10 s sleep were real, or a host-work loop unbounded, this
    // would take minutes.
    assert!(took < Duration::from_secs(30), "healthy triggers were held up: {took:?}");
    triggers.poll_for(Duration::from_secs(2));
    let (got, _) = trigger_pairs(&triggers.records);
    let from = |id: i64| got.iter().filter(|(c, _)| *c == id).count();
    assert_eq!(from(2), 200, "the sleeper's sleep returns at once and it matches every fight");
    assert_eq!((from(5), from(6)), (0, 0), "fuel and throws never match");

    // The deep events: dead letters, not failures of any campaign.
    let mut dlq = Reader::new(&t.dlq);
    assert!(dlq.read_until(|r| r.len() >= 54, Duration::from_secs(2), Duration::from_secs(30)));
    assert_eq!(dlq.records.len(), 54, "every too-deep event is dead-lettered, once");
    let reason = dlq.records[0].header("rtcrm.error").unwrap();
    assert!(reason.contains("nest") || reason.contains("deep"), "the reason names the nesting: {reason}");
    let metrics = p.metrics();
    assert_eq!(metric_value(&metrics, "rtcrm_campaigns").map(|_| ()), Some(()));
    assert!(!metrics.contains("rtcrm_campaigns{state=\"quarantined\"} 1"), "nothing quarantined:\n{metrics}");
    // The throwing filter's error is bounded wherever it appears.
    let (_, api) = p.get("/api/campaigns/6");
    assert!(api.len() < 16_384, "the API view of a 256 KiB throw is bounded: {} bytes", api.len());
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.lines().all(|l| l.len() < 16_384), "no log line carries the 256 KiB message");
    p.assert_running();
}
