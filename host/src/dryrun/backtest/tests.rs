//! Backtests of campaigns with controls (spec §12) over JSON-lines files, each against counts
//! computed here natively, independently of rtcrm's decision code.

use super::*;
use crate::campaigns::definition::{parse_time, CampaignDef};
use crate::telemetry::metrics::CampaignTelemetry;
use rtcrm_sandbox::{CompiledFilter, SandboxConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const MIN: i64 = 60_000;

fn t0() -> i64 {
    parse_time("2023-11-20T10:00:00Z").unwrap().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    format_time(DateTime::from_timestamp_millis(ms).unwrap())
}

/// A tiny deterministic generator (xorshift), for workloads.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn event(id: &str, player: Option<u64>, name: &str, result: &str, at: i64, extra: Value) -> Value {
    let mut e = json!({"event_id": id, "game": "foe", "event_name": name, "created_at": rfc3339(at), "data": {"result": result}});
    if let Some(p) = player {
        e["player_id"] = p.into();
    }
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            e["data"][k] = v;
        }
    }
    e
}

fn file(name: &str, events: &[Value]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("rtcrm-backtest-{}-{name}.jsonl", std::process::id()));
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn backtest(sandbox: &Sandbox, campaign: Value, events: &[Value], threads: usize, samples: usize) -> Report {
    let def = CampaignDef::parse(None, campaign.to_string().as_bytes()).unwrap();
    let crate::campaigns::definition::FilterSource::Js(source) = &def.filter else { panic!("a JS campaign") };
    let compiled = CompiledFilter::Js(sandbox.compile_js(source).unwrap());
    let limits = sandbox.limits().lowered(def.fuel, def.memory_mb);
    let id = def.id;
    let spec = Spec {
        campaign: Arc::new(LiveCampaign::new(def, compiled, limits, CampaignTelemetry::detached(id))),
        clock: Clock::Event,
        threads,
        max_events: None,
        max_duration: None,
        samples,
    };
    let path = file(&format!("c{id}-t{threads}"), events);
    let report = run(sandbox, &spec, &Source::File(path.clone()), &Progress::default()).unwrap();
    let _ = std::fs::remove_file(path);
    report
}

fn campaign(id: i64, name: &str, filter: &str, controls: Value) -> Value {
    let mut c = json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": name, "filter": filter});
    for (k, v) in controls.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// spec §12's count, cooldown and cap, natively: per player, a match pushes its time and keeps
/// the times inside the window; on reaching `at_least` the times are cleared, then the cooldown
/// (`now < last + cooldown`: suppressed), then the cap.
#[derive(Debug, Default, PartialEq, Eq)]
struct Native {
    triggers: u64,
    counting: u64,
    cooldown: u64,
    cap: u64,
    players: BTreeSet<u64>,
    trigger_ids: BTreeSet<String>,
}

fn native(events: &[(u64, i64, bool, String)], at_least: usize, within: i64, cooldown: i64, cap: u32) -> Native {
    let mut n = Native::default();
    let mut matches: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    let mut last: BTreeMap<u64, i64> = BTreeMap::new();
    let mut count: BTreeMap<u64, u32> = BTreeMap::new();
    for (player, now, matched, id) in events {
        if !matched {
            continue;
        }
        let m = matches.entry(*player).or_default();
        m.push(*now);
        m.retain(|t| *t > now - within);
        if m.len() < at_least {
            n.counting += 1;
            continue;
        }
        m.clear();
        if last.get(player).is_some_and(|l| *now < l + cooldown) {
            n.cooldown += 1;
            continue;
        }
        let c = count.entry(*player).or_default();
        if *c >= cap {
            n.cap += 1;
            continue;
        }
        *c += 1;
        last.insert(*player, *now);
        n.triggers += 1;
        n.players.insert(*player);
        n.trigger_ids.insert(format!("9:{id}"));
    }
    n
}

#[test]
fn cooldown_count_and_cap_equal_a_native_computation_on_any_number_of_threads() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut events, mut plan) = (Vec::new(), Vec::new());
    let mut at = t0();
    for i in 0..3000 {
        // 40 players, a fight every 0 to 10 s: a player's losses come about 5 minutes apart,
        // three within 10 minutes often, not always.
        at += rng.below(10_000) as i64;
        let player = rng.below(40);
        let loss = rng.below(100) < 60;
        let id = format!("e{i}");
        events.push(event(&id, Some(player), "fight", if loss { "loss" } else { "win" }, at, json!({})));
        plan.push((player, at, loss, id));
    }
    // Login events of the same players (not candidates) and events without player_id.
    events.push(event("l1", Some(1), "login", "", at, json!({})));
    events.push(event("anon", None, "fight", "loss", at, json!({})));
    let c = campaign(9, "fight", "e => e.data.result === 'loss'", json!({"cooldown": "30m", "count": {"at_least": 3, "within": "10m"}, "max_triggers_per_player": 4}));
    let expected = native(&plan, 3, 10 * MIN, 30 * MIN, 4);
    assert!(expected.triggers > 40 && expected.cooldown > 40 && expected.cap > 0 && expected.counting > 100, "{expected:?}");
    let mut first: Option<Report> = None;
    for threads in [1, 3] {
        let r = backtest(&sandbox, c.clone(), &events, threads, 500);
        let matches: u64 = plan.iter().filter(|p| p.2).count() as u64;
        assert_eq!((r.events_read, r.candidates, r.filter_matches), (3002, 3000, matches));
        assert_eq!(
            (r.triggers, r.counting, r.suppressed_cooldown, r.suppressed_cap, r.unique_players),
            (expected.triggers, expected.counting, expected.cooldown, expected.cap, expected.players.len() as u64),
            "{threads} threads"
        );
        assert_eq!(r.skipped.iter().find(|(k, _)| *k == "no_player"), Some(&("no_player", 1)));
        assert_eq!(r.skipped.iter().find(|(k, _)| *k == "other_event_name"), Some(&("other_event_name", 1)));
        assert_eq!((r.control_group_matches, r.inactivity_firings, r.timers_pending_at_end), (0, 0, 0));
        assert_eq!(r.controls.as_deref(), Some("count 3 in 10m, cooldown 30m, at most 4 triggers per player"));
        assert_eq!(r.histogram.buckets.iter().map(|b| b.triggers).sum::<u64>(), expected.triggers);
        let ids: BTreeSet<String> = r.sample_triggers.iter().map(|t| serde_json::from_str::<Value>(t.get()).unwrap()["trigger_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(ids, expected.trigger_ids, "every trigger, as the samples show them");
        assert!(r.warnings.iter().any(|w| w.starts_with("per-player state starts empty at the file's first event")), "{:?}", r.warnings);
        if let Some(f) = &first {
            assert_eq!(serde_json::to_value(&f.histogram).unwrap(), serde_json::to_value(&r.histogram).unwrap());
        }
        first = Some(r);
    }
}

/// The documented stable hash (spec §12), recomputed here.
fn bucket(campaign: i64, player: u64) -> u64 {
    let d = Sha256::digest(format!("{campaign}:{player}").as_bytes());
    u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000
}

#[test]
fn holdout_and_variants_split_as_the_documented_hash_says() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let players: Vec<u64> = (1..=2000).collect();
    let mut events: Vec<Value> = players.iter().map(|p| event(&format!("h{p}"), Some(*p), "fight", "loss", t0(), json!({}))).collect();
    // A second match for the first 500 players.
    events.extend(players[..500].iter().map(|p| event(&format!("h2-{p}"), Some(*p), "fight", "loss", t0() + MIN, json!({}))));
    let c = campaign(31, "fight", "e => true", json!({"holdout_percent": 25, "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}));
    let r = backtest(&sandbox, c, &events, 2, 0);
    let control: BTreeSet<u64> = players.iter().copied().filter(|p| bucket(31, *p) < 2500).collect();
    let control_matches = control.len() + players[..500].iter().filter(|p| control.contains(p)).count();
    assert_eq!((r.control_group_matches, r.control_group_players), (control_matches as u64, control.len() as u64));
    assert_eq!((r.triggers, r.unique_players), ((2500 - control_matches) as u64, (2000 - control.len()) as u64));
    assert_eq!(r.variants.iter().map(|(_, n)| n).sum::<u64>(), r.triggers, "every live trigger has a variant");
    assert_eq!(r.variants.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    let a = r.variants[0].1 as f64 / r.triggers as f64;
    assert!((a - 0.5).abs() < 0.05, "weights 1:1: {a}");
    assert!(r.warnings.is_empty(), "no per-player state, nothing to warn about: {:?}", r.warnings);
}

#[test]
fn inactivity_timers_fire_on_the_partition_time_and_the_rest_stay_armed() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let day = 24 * 60 * MIN;
    let mut rng = Rng(77);
    let (mut events, mut logins): (Vec<Value>, BTreeMap<u64, Vec<(i64, String)>>) = (Vec::new(), BTreeMap::new());
    let mut at = t0();
    for i in 0..600 {
        // In time order, 0 to 4 hours apart: 600 events over about 50 days.
        at += rng.below(4 * 60) as i64 * MIN;
        let player = rng.below(30);
        let login = rng.below(3) > 0;
        let id = format!("i{i}");
        events.push(event(&id, Some(player), if login { "login" } else { "fight" }, "", at, json!({})));
        if login {
            logins.entry(player).or_default().push((at, id));
        }
    }
    // Natively: in time order, a login's timer fires when the next event of any player is 7 days
    // later or more, before the player's own next login; the last login's when the file's last
    // event time reaches it; the others stay armed.
    let (mut fired, mut pending, mut ids) = (0u64, 0u64, BTreeSet::new());
    for times in logins.values() {
        for (i, (t, id)) in times.iter().enumerate() {
            let next = times.get(i + 1).map(|n| n.0);
            let reached = match next {
                Some(n) => n >= t + 7 * day,
                None => at >= t + 7 * day,
            };
            if reached {
                fired += 1;
                ids.insert(format!("41:{id}"));
            } else if next.is_none() {
                pending += 1;
            }
        }
    }
    assert!(fired > 10 && pending > 0, "{fired} {pending}");
    let c = campaign(41, "login", "e => true", json!({"inactivity": "7d"}));
    for threads in [1, 2] {
        let r = backtest(&sandbox, c.clone(), &events, threads, 1000);
        let login_count: u64 = logins.values().map(|v| v.len() as u64).sum();
        assert_eq!((r.filter_matches, r.timers_armed), (login_count, login_count), "every login (re)arms");
        assert_eq!((r.inactivity_firings, r.inactivity_triggers, r.triggers), (fired, fired, fired), "{threads} threads");
        assert_eq!(r.timers_pending_at_end, pending, "still armed at the end, not triggers");
        let samples: Vec<Value> = r.sample_triggers.iter().map(|t| serde_json::from_str(t.get()).unwrap()).collect();
        assert_eq!(samples.iter().map(|s| s["trigger_id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>(), ids);
        for s in &samples {
            assert_eq!(s["reason"], "inactivity");
            let created = parse_time(s["event"]["created_at"].as_str().unwrap()).unwrap().timestamp_millis();
            assert_eq!(parse_time(s["triggered_at"].as_str().unwrap()).unwrap().timestamp_millis(), created + 7 * day, "triggered at the timer's due time");
        }
    }
}

/// Counts a player's purchases in the filter's own state; a refund throws after changing it.
const PURCHASES: &str = "function(e, s) { s.n = (s.n || 0) + 1; if (e.data.amount < 0) throw new Error('refund'); return s.n % 3 === 0 }";

#[test]
fn a_stateful_filter_keeps_its_state_only_when_the_evaluation_succeeds() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let mut rng = Rng(5);
    let (mut events, mut expected, mut n, mut refunds) = (Vec::new(), BTreeSet::new(), BTreeMap::<u64, u32>::new(), 0);
    for i in 0..1500 {
        let player = rng.below(50);
        let refund = rng.below(20) == 0;
        let id = format!("p{i}");
        events.push(event(&id, Some(player), "purchase", "", t0() + i, json!({"amount": if refund { -5 } else { 10 }})));
        if refund {
            refunds += 1;
            continue;
        }
        let c = n.entry(player).or_default();
        *c += 1;
        if *c % 3 == 0 {
            expected.insert(format!("51:{id}"));
        }
    }
    let c = campaign(51, "purchase", PURCHASES, json!({"state": {"max_bytes": 64}}));
    let r = backtest(&sandbox, c, &events, 2, 2000);
    assert_eq!(r.errors.iter().find(|(k, _)| *k == "exception").map(|e| e.1), Some(refunds));
    let ids: BTreeSet<String> = r.sample_triggers.iter().map(|t| serde_json::from_str::<Value>(t.get()).unwrap()["trigger_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, expected, "a throw leaves the count as it was");
    assert_eq!(r.triggers, expected.len() as u64);
}
