//! Every example in `examples/` runs here.

use crate::{event, repo_root, sandbox, verdict, SEED_EVENT};
use std::fs;

#[test]
fn the_example_campaign_and_events_are_the_original_systems() {
    let root = repo_root().join("examples");
    let campaign: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join("campaigns/campaign-4711.json")).unwrap()).unwrap();
    let filter = campaign["filter"].as_str().unwrap();
    assert_eq!(filter, crate::SEED_FILTER);
    let loss = fs::read_to_string(root.join("events/fight-loss.json")).unwrap();
    assert_eq!(loss.trim(), SEED_EVENT);
    assert!(verdict(filter, loss.trim()));
    let win = fs::read_to_string(root.join("events/fight-win.json")).unwrap();
    assert!(!verdict(filter, win.trim()));
}

#[test]
fn every_example_filter_gives_its_expected_verdicts() {
    let dir = repo_root().join("examples/filters");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("js") {
            continue;
        }
        let source = fs::read_to_string(&path).unwrap();
        let cases_path = path.with_extension("cases.jsonl");
        let cases = fs::read_to_string(&cases_path)
            .unwrap_or_else(|e| panic!("{} needs its cases file {}: {e}", path.display(), cases_path.display()));
        let compiled = sandbox().compile_js(&source).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut f = sandbox().js_filter(&compiled, "example", sandbox().limits()).unwrap();
        let (mut pos, mut neg) = (0, 0);
        for line in cases.lines().filter(|l| !l.trim().is_empty()) {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            let expect = case["expect"].as_bool().unwrap();
            let e = event(&case["event"].to_string());
            // A filter of the state (spec §12): the case gives the player's stored state and the
            // state the filter must leave.
            let got = match case.get("state") {
                None => f.eval(&e).unwrap().matched,
                Some(state) => {
                    let (verdict, new) = f.eval_with_state(&e, Some(&state.to_string()), 1024).unwrap();
                    assert_eq!(new, case["expect_state"].to_string(), "{}: {line}", path.display());
                    verdict.matched
                }
            };
            assert_eq!(got, expect, "{}: {line}", path.display());
            if expect { pos += 1 } else { neg += 1 }
        }
        assert!(pos > 0 && neg > 0, "{} needs positive and negative cases", path.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} example filters found in {}", dir.display());
}
