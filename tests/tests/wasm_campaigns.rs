//! `filter_wasm` campaigns end to end on a real broker (issue 4): for Rust, C and Go, the example
//! modules built from source by `filter-sdk/build-examples.sh` trigger on exactly the events their
//! JavaScript twins trigger on; triggers carry `filter_wasm_sha256` instead of the module; an
//! endless loop in WebAssembly ends quarantined while the others keep working.

use base64::Engine as _;
use rtcrm_integration_tests::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const LANGUAGES: [&str; 3] = ["rust", "c", "go"];

/// Builds every example module once into target/filter-examples-e2e.
fn modules() -> PathBuf {
    let out = target_dir().join("filter-examples-e2e");
    let status = Command::new("bash")
        .arg(workspace_dir().join("filter-sdk/build-examples.sh"))
        .arg(&out)
        .status()
        .expect("bash runs");
    assert!(status.success(), "filter-sdk/build-examples.sh failed; see its output above");
    out
}

fn module_b64(dir: &PathBuf, lang: &str, scenario: &str) -> String {
    let path = dir.join(lang).join(format!("{scenario}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("the {lang} example {scenario} is missing ({}): {e}", path.display()));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn campaign(id: i64) -> Value {
    json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": "fight", "start_date": null, "end_date": null})
}

#[test]
fn wasm_campaigns_trigger_like_their_javascript_twins() {
    let dir = modules();
    let t = Topics::new("wasm");
    let scenarios = [("fight-loss", "examples/filters/fight-loss.js", 100), ("nested-threshold", "examples/filters/nested-threshold.js", 200)];
    let mut msgs = Vec::new();
    // id → (scenario, language or "js")
    let mut who: BTreeMap<i64, (&str, &str)> = BTreeMap::new();
    for (scenario, js, base) in scenarios {
        let mut c = campaign(base);
        c["filter"] = std::fs::read_to_string(workspace_dir().join(js)).unwrap().into();
        msgs.push(Msg::keyed(base.to_string(), c.to_string()));
        who.insert(base, (scenario, "js"));
        for (i, lang) in LANGUAGES.iter().enumerate() {
            let id = base + 1 + i as i64;
            let mut c = campaign(id);
            c["filter_wasm"] = module_b64(&dir, lang, scenario).into();
            c["owner"] = json!("crm-team");
            msgs.push(Msg::keyed(id.to_string(), c.to_string()));
            who.insert(id, (scenario, lang));
        }
    }
    // An endless loop in WebAssembly (Go, the heaviest runtime).
    let mut hostile = campaign(666);
    hostile["filter_wasm"] = module_b64(&dir, "go", "endless-loop").into();
    msgs.push(Msg::keyed("666", hostile.to_string()));
    // rtcrm creates the campaigns topic, sized for module-carrying messages (16 MiB).
    let mut p = Processor::start(&[t.args(), vec!["--quarantine-after".into(), "3".into()]].concat());
    produce(&t.campaigns, &msgs);
    let mut status = Reader::new(&t.status);
    for id in who.keys().chain([666].iter()) {
        wait_status(&mut status, *id, "active", Duration::from_secs(60));
    }

    let events: Vec<String> = std::fs::read_to_string(workspace_dir().join("examples/filters/shared-events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert!(events.len() >= 20);
    produce(&t.events, &events.iter().map(Msg::keyless).collect::<Vec<_>>());

    wait_status(&mut status, 666, "quarantined", Duration::from_secs(60));
    let mut triggers = Reader::new(&t.triggers);
    // Everything produced, then 4 s without a new trigger.
    triggers.read_until(|r| !r.is_empty(), Duration::from_secs(4), Duration::from_secs(90));
    let mut by_campaign: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in &triggers.records {
        let v = r.json();
        let id = v["campaign"]["campaign_id"].as_i64().unwrap();
        assert_ne!(id, 666, "the endless loop never triggers");
        if who[&id].1 != "js" {
            assert!(v["campaign"].get("filter_wasm").is_none(), "the module is not echoed");
            assert_eq!(v["campaign"]["filter_wasm_sha256"].as_str().map(str::len), Some(64));
            assert_eq!(v["campaign"]["owner"], "crm-team", "unknown fields are kept");
        }
        by_campaign.entry(id).or_default().insert(v["event"]["event_id"].as_str().unwrap().to_owned());
    }
    for (scenario, _, base) in scenarios {
        let js = by_campaign.get(&base).cloned().unwrap_or_default();
        assert!(!js.is_empty() && js.len() < events.len(), "{scenario}: the JS twin matches some events, not all ({})", js.len());
        for (i, lang) in LANGUAGES.iter().enumerate() {
            let got = by_campaign.get(&(base + 1 + i as i64)).cloned().unwrap_or_default();
            assert_eq!(got, js, "{scenario} in {lang} must trigger on the same events as its JavaScript twin");
        }
    }
    assert_eq!(p.sigterm().code(), Some(0));
}

/// Filters of the state (filter ABI version 2, issue 12): the every-fifth-purchase modules of
/// Rust, C and Go in campaigns with `state` trigger on exactly the purchases a native count gives
/// (every fifth of each player, 300 players interleaved), as their JavaScript twin does; a
/// version 1 module in a campaign with `state` is rejected, naming what it lacks.
#[test]
fn wasm_filters_of_the_state_count_each_players_purchases_like_a_native_count() {
    let dir = modules();
    let t = Topics::new("wasmstate");
    create_topic(&t.events, 4);
    let stateful = |id: i64| {
        let mut c = campaign(id);
        c["event_name"] = "purchase".into();
        c["state"] = json!({"ttl": "30d", "max_bytes": 256});
        c
    };
    let mut msgs = Vec::new();
    let mut js = stateful(300);
    js["filter"] = std::fs::read_to_string(workspace_dir().join("examples/filters/every-fifth-purchase.js")).unwrap().into();
    msgs.push(Msg::keyed("300", js.to_string()));
    for (i, lang) in LANGUAGES.iter().enumerate() {
        let id = 301 + i as i64;
        let mut c = stateful(id);
        c["filter_wasm"] = module_b64(&dir, lang, "every-fifth-purchase").into();
        msgs.push(Msg::keyed(id.to_string(), c.to_string()));
    }
    // Version 1 (a filter of the event only) cannot keep a state.
    let mut v1 = stateful(310);
    v1["filter_wasm"] = module_b64(&dir, "rust", "fight-loss").into();
    msgs.push(Msg::keyed("310", v1.to_string()));

    // 3,000 purchases of 300 players, interleaved, deterministic; keyed by player as a Java
    // client partitions them.
    let (mut events, mut expected, mut count) = (Vec::new(), BTreeSet::new(), BTreeMap::<u64, u32>::new());
    let mut x: u64 = 0x9e37_79b9;
    for i in 0..3_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let player = 1 + x % 300;
        let id = format!("wp-{i}");
        let e = json!({"event_id": id, "game": "foe", "event_name": "purchase", "player_id": player,
            "created_at": "2023-11-20T11:00:00.00Z", "data": {"amount": 1 + i % 50, "currency": "EUR"}});
        events.push(Msg::keyed(player.to_string(), e.to_string()));
        let n = count.entry(player).or_default();
        *n += 1;
        if *n % 5 == 0 {
            expected.insert(id);
        }
    }
    assert!(expected.len() > 400, "{} expected triggers", expected.len());

    let mut p = Processor::start(&t.args());
    produce(&t.campaigns, &msgs);
    let mut status = Reader::new(&t.status);
    for id in 300..=303 {
        wait_status(&mut status, id, "active", Duration::from_secs(60));
    }
    let rejected = wait_status(&mut status, 310, "rejected", Duration::from_secs(60));
    let reason = rejected.to_string();
    assert!(reason.contains("the campaign has `state`, but its module implements filter ABI version 1"), "{reason}");
    assert!(reason.contains("rtcrm_filter_state") && reason.contains("RTCRM_FILTER_STATE(f)"), "{reason}");

    produce_with(&broker(), &t.events, &events, &[("partitioner", "murmur2_random")]);
    let mut triggers = Reader::new(&t.triggers);
    let all = 4 * expected.len();
    triggers.read_until(|r| r.len() >= all, Duration::from_secs(3), Duration::from_secs(120));
    let mut by_campaign: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in &triggers.records {
        let v = r.json();
        let id = v["campaign"]["campaign_id"].as_i64().unwrap();
        by_campaign.entry(id).or_default().push(v["event"]["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_campaign.keys().copied().collect::<Vec<_>>(), [300, 301, 302, 303], "campaign 310 never ran");
    for (id, got) in &by_campaign {
        let set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), set.len(), "campaign {id}: a trigger repeated");
        let missing: Vec<_> = expected.difference(&set).take(5).collect();
        let extra: Vec<_> = set.difference(&expected).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "campaign {id}: missing {missing:?}, unexpected {extra:?} of {}", expected.len());
    }
    println!("filters of the state: {} triggers each for JavaScript, Rust, C and Go over 3,000 purchases", expected.len());
    assert_eq!(p.sigterm().code(), Some(0));
}
