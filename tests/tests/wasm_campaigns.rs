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
