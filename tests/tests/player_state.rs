//! Per-player campaign controls on a real broker (spec §12), each against counts computed here,
//! independently of rtcrm: cooldown and cap, count within a sliding window, inactivity timers,
//! holdout and variants.

use rtcrm_integration_tests::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;

fn t0() -> i64 {
    ts("2023-11-20T10:00:00Z")
}

fn event(id: &str, player: i64, name: &str, result: &str, at_ms: i64) -> Value {
    json!({"event_id": id, "game": "foe", "event_name": name, "player_id": player, "market": "de",
           "created_at": fmt_rfc3339(at_ms, 3, 0), "data": {"result": result}})
}

fn campaign(id: i64, name: &str, filter: &str, controls: Value) -> Msg {
    let mut c = json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": name, "filter": filter});
    for (k, v) in controls.as_object().unwrap() {
        c[k] = v.clone();
    }
    Msg::keyed(id.to_string(), c.to_string())
}

/// Trigger ids per campaign, read until `expected` triggers arrived (then 2 s more).
fn triggers_by_campaign(topic: &str, expected: usize) -> BTreeMap<i64, Vec<Value>> {
    let mut reader = Reader::new(topic);
    reader.read_until(|r| r.len() >= expected, Duration::from_secs(2), Duration::from_secs(60));
    let mut out: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for t in parse_triggers(&reader.records) {
        out.entry(t.campaign_id).or_default().push(t.value);
    }
    out
}

#[test]
fn cooldown_allows_one_trigger_per_period_and_a_cap_n_triggers() {
    let t = Topics::new("cooldown");
    produce(&t.campaigns, &[
        campaign(101, "fight", "e => e.data.result === 'loss'", json!({"cooldown": "1h"})),
        campaign(102, "fight", "e => e.data.result === 'loss'", json!({"max_triggers_per_player": 3})),
    ]);
    let mut msgs = Vec::new();
    // Player 777: 20 losses within the hour (every 2 minutes).
    for i in 0..20 {
        msgs.push(Msg::keyed("777", event(&format!("cd-a{i:02}"), 777, "fight", "loss", t0() + i * 2 * MIN).to_string()));
    }
    // Player 778: two losses 61 minutes apart, then one 30 minutes later.
    for (i, at) in [0, 61 * MIN, 91 * MIN].into_iter().enumerate() {
        msgs.push(Msg::keyed("778", event(&format!("cd-b{i}"), 778, "fight", "loss", t0() + at).to_string()));
    }
    // Native computation of the expected triggers.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let (mut last, mut count): (BTreeMap<i64, i64>, BTreeMap<i64, u32>) = (BTreeMap::new(), BTreeMap::new());
    for m in &msgs {
        let e: Value = serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
        let (p, at, id) = (e["player_id"].as_i64().unwrap(), ts(e["created_at"].as_str().unwrap()), e["event_id"].as_str().unwrap());
        if last.get(&p).is_none_or(|l| at >= l + 60 * MIN) {
            last.insert(p, at);
            expected.insert(format!("101:{id}"));
        }
        let n = count.entry(p).or_default();
        if *n < 3 {
            *n += 1;
            expected.insert(format!("102:{id}"));
        }
    }
    produce(&t.events, &msgs);
    let mut p = Processor::start(&t.args());
    let got = triggers_by_campaign(&t.triggers, expected.len());
    let ids: BTreeSet<String> = got.values().flatten().map(|v| v["trigger_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, expected, "triggers differ from the native computation");
    let of = |c: i64, player: i64| got.get(&c).map_or(0, |v| v.iter().filter(|t| t["event"]["player_id"] == player).count());
    assert_eq!(of(101, 777), 1, "20 matches within an hour against a 1 h cooldown: exactly one trigger");
    assert_eq!(of(102, 777), 3, "max_triggers_per_player 3: exactly three");
    assert_eq!(of(101, 778), 2, "the cooldown ends after an hour");
    let metrics = p.metrics();
    assert_eq!(metric_value(&metrics, "rtcrm_suppressed_total"), Some((19 + 1 + 17) as f64), "suppressed by cooldown (19 + 1) and by the cap (17):\n{metrics}");
    assert_eq!(p.sigterm().code(), Some(0));
}

#[test]
fn count_triggers_on_the_nth_match_inside_the_window_only() {
    let t = Topics::new("count");
    produce(&t.campaigns, &[campaign(103, "fight", "e => e.data.result === 'loss'", json!({"count": {"at_least": 3, "within": "10m"}}))]);
    let plan: [(i64, &[(i64, &str)]); 3] = [
        // Three losses in 2 minutes (and a win between): the third triggers.
        (1, &[(0, "loss"), (MIN, "win"), (MIN + 30_000, "loss"), (2 * MIN, "loss")]),
        // Spread over 11 minutes: never three inside 10 minutes.
        (2, &[(0, "loss"), (5 * MIN + 30_000, "loss"), (11 * MIN, "loss")]),
        // Six in a row: the count starts over after each trigger.
        (3, &[(0, "loss"), (MIN, "loss"), (2 * MIN, "loss"), (3 * MIN, "loss"), (4 * MIN, "loss"), (5 * MIN, "loss")]),
    ];
    let mut msgs = Vec::new();
    for (player, events) in plan {
        for (i, (at, result)) in events.iter().enumerate() {
            msgs.push(Msg::keyed(player.to_string(), event(&format!("cn-{player}-{i}"), player, "fight", result, t0() + at).to_string()));
        }
    }
    produce(&t.events, &msgs);
    let mut p = Processor::start(&t.args());
    let got = triggers_by_campaign(&t.triggers, 3);
    let ids: BTreeSet<&str> = got.values().flatten().map(|v| v["trigger_id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["103:cn-1-3", "103:cn-3-2", "103:cn-3-5"]), "exactly the 3rd loss inside the window");
    assert_eq!(p.sigterm().code(), Some(0));
}

#[test]
fn inactivity_triggers_once_with_the_last_login_when_the_partition_time_passes() {
    let t = Topics::new("inactive");
    create_topic(&t.events, 1);
    produce(&t.campaigns, &[campaign(104, "login", "e => true", json!({"inactivity": "7d"}))]);
    let mut p = Processor::start(&t.args());
    let mut triggers = Reader::new(&t.triggers);
    // Player 1 logs in twice (the second login re-arms), player 2 a day later.
    produce(&t.events, &[
        Msg::keyed("1", event("in-1a", 1, "login", "", t0()).to_string()),
        Msg::keyed("1", event("in-1b", 1, "login", "", t0() + MIN).to_string()),
        Msg::keyed("2", event("in-2", 2, "login", "", t0() + DAY).to_string()),
        // Other players' events 7 days later: the partition time passes player 1's timer.
        Msg::keyed("3", event("in-3", 3, "fight", "win", t0() + 7 * DAY + 2 * MIN).to_string()),
    ]);
    assert!(triggers.read_until(|r| !r.is_empty(), Duration::from_secs(2), Duration::from_secs(30)), "player 1's inactivity trigger");
    let got = parse_triggers(&triggers.records);
    assert_eq!(got.len(), 1, "exactly one trigger: {:?}", got.iter().map(|t| &t.value).collect::<Vec<_>>());
    let trigger = &got[0].value;
    assert_eq!(trigger["reason"], "inactivity");
    assert_eq!(trigger["event"]["event_id"], "in-1b", "the trigger's event is the player's last matching event");
    assert_eq!(trigger["trigger_id"], "104:in-1b");
    assert_eq!(got[0].key.as_deref(), Some("1"));
    // A day later, player 2's timer.
    produce(&t.events, &[Msg::keyed("3", event("in-4", 3, "fight", "win", t0() + 8 * DAY + 2 * MIN).to_string())]);
    assert!(triggers.read_until(|r| r.len() >= 2, Duration::from_secs(3), Duration::from_secs(30)), "player 2's inactivity trigger");
    let got = parse_triggers(&triggers.records);
    assert_eq!(got.len(), 2, "each timer fires exactly once");
    assert_eq!(got[1].value["event"]["event_id"], "in-2");
    assert_eq!(p.metric("rtcrm_timers_pending"), Some(0.0), "no timer left armed");
    assert_eq!(p.sigterm().code(), Some(0));
}

/// The documented stable hash (spec §12), recomputed here.
fn bucket(campaign: i64, player: &str) -> u64 {
    let d = Sha256::digest(format!("{campaign}:{player}").as_bytes());
    u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000
}

#[test]
fn holdout_sends_exactly_the_hashed_players_to_the_control_topic_and_variants_split_by_weight() {
    let t = Topics::new("holdout");
    create_topic(&t.events, 4);
    produce(&t.campaigns, &[campaign(105, "fight", "e => true", json!({"holdout_percent": 20, "variants": [{"name": "A", "weight": 3}, {"name": "B", "weight": 1}]}))]);
    let players: Vec<i64> = (100_000..110_000).collect();
    let mut msgs: Vec<Msg> = players.iter().map(|p| Msg::keyed(p.to_string(), event(&format!("h-{p}"), *p, "fight", "win", t0()).to_string())).collect();
    // A second event for 1,000 players: the same variant again.
    msgs.extend(players[..1000].iter().map(|p| Msg::keyed(p.to_string(), event(&format!("h2-{p}"), *p, "fight", "win", t0() + MIN).to_string())));
    produce(&t.events, &msgs);
    let control_expected: BTreeSet<i64> = players.iter().copied().filter(|p| bucket(105, &p.to_string()) < 2000).collect();
    let mut p = Processor::start(&t.args());
    let mut live = Reader::new(&t.triggers);
    let mut control = Reader::with_bootstrap(&broker(), &t.control);
    let live_n = 10_000 - control_expected.len() + players[..1000].iter().filter(|p| !control_expected.contains(p)).count();
    let control_n = control_expected.len() + players[..1000].iter().filter(|p| control_expected.contains(p)).count();
    assert!(live.read_until(|r| r.len() >= live_n, Duration::from_secs(2), Duration::from_secs(90)), "{} of {live_n} live triggers", live.records.len());
    assert!(control.read_until(|r| r.len() >= control_n, Duration::from_secs(2), Duration::from_secs(90)), "{} of {control_n} control matches", control.records.len());
    let player_of = |v: &Value| v["event"]["player_id"].as_i64().unwrap();
    let controls: Vec<Value> = parse_triggers(&control.records).into_iter().map(|t| t.value).collect();
    let lives: Vec<Value> = parse_triggers(&live.records).into_iter().map(|t| t.value).collect();
    let control_players: BTreeSet<i64> = controls.iter().map(player_of).collect();
    assert_eq!(control_players, control_expected, "the control group is exactly the documented hash's set");
    assert!(controls.iter().all(|v| v["group"] == "control" && v.get("variant").is_none()), "control matches carry group control, no variant");
    assert!(lives.iter().all(|v| !control_expected.contains(&player_of(v)) && v.get("group").is_none()), "no control player on the triggers topic");
    assert_eq!((lives.len(), controls.len()), (live_n, control_n), "no more, no fewer");
    let mut variant_of: BTreeMap<i64, String> = BTreeMap::new();
    for v in &lives {
        let variant = v["variant"].as_str().expect("a live trigger carries its variant").to_owned();
        let previous = variant_of.insert(player_of(v), variant.clone());
        assert!(previous.is_none_or(|p| p == variant), "the variant is stable per player");
    }
    let share_a = variant_of.values().filter(|v| *v == "A").count() as f64 / variant_of.len() as f64;
    println!("holdout: {} control players of 10,000; variant A for {:.1} % of the others", control_expected.len(), share_a * 100.0);
    assert!((share_a - 0.75).abs() <= 0.02, "weights 3:1 give A to 75 % ± 2 % of players: {share_a}");
    assert_eq!(p.metric("rtcrm_control_matches_total"), Some(control_n as f64));
    assert_eq!(p.sigterm().code(), Some(0));
}

/// A player's purchases counted by the filter's own state: every fifth purchase triggers. A
/// refund makes the filter throw after it changed the state: the stored state stays as it was
/// (the refund does not count). Expected triggers computed natively over the same table.
const PURCHASE_JS: &str = "function(e, s) {
  s.n = (s.n || 0) + 1;
  s.spent = (s.spent || 0) + e.data.amount;
  if (e.data.amount < 0) throw new Error('refund of ' + (-e.data.amount));
  return s.n % 5 === 0;
}";

#[test]
fn stateful_javascript_counts_purchases_like_a_native_computation_and_a_throw_keeps_the_state() {
    let t = Topics::new("jsstate");
    create_topic(&t.events, 4);
    produce(&t.campaigns, &[campaign(106, "purchase", PURCHASE_JS, json!({"state": {"max_bytes": 128}}))]);
    let mut rng = Rng::new(0x5ca1e);
    let (mut msgs, mut expected, mut n) = (Vec::new(), BTreeSet::new(), BTreeMap::<i64, u32>::new());
    let mut refunds = 0;
    for i in 0..50_000 {
        let player = rng.range(1, 2_001);
        // One in fifty is a refund (a negative amount): the filter throws.
        let amount = if rng.chance(0.02) { -rng.range(1, 50) } else { rng.range(1, 100) };
        let id = format!("pu-{i}");
        let mut e = event(&id, player, "purchase", "", t0() + i);
        e["data"] = json!({"amount": amount});
        msgs.push(Msg::keyed(player.to_string(), e.to_string()));
        if amount < 0 {
            refunds += 1;
            continue;
        }
        let count = n.entry(player).or_default();
        *count += 1;
        if *count % 5 == 0 {
            expected.insert(format!("106:{id}"));
        }
    }
    produce_with(&broker(), &t.events, &msgs, &[("partitioner", "murmur2_random")]);
    let mut p = Processor::start(&t.args());
    let got = triggers_by_campaign(&t.triggers, expected.len());
    let ids: BTreeSet<String> = got.values().flatten().map(|v| v["trigger_id"].as_str().unwrap().to_owned()).collect();
    let lost = expected.difference(&ids).count();
    let unexpected: Vec<&String> = ids.difference(&expected).take(5).collect();
    assert!(lost == 0 && unexpected.is_empty(), "{lost} of {} expected triggers missing; unexpected: {unexpected:?}", expected.len());
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), expected.len(), "each trigger exactly once");
    let exceptions = wait_until("the refunds' exceptions to be counted", Duration::from_secs(30), || {
        let v = p.metric("rtcrm_evaluation_errors_total").unwrap_or(0.0);
        (v >= refunds as f64).then_some(v)
    });
    assert_eq!(exceptions, refunds as f64, "one exception per refund");
    println!("stateful JS: 50,000 events, {refunds} refunds (throws), {} triggers as computed natively", expected.len());
    assert_eq!(p.sigterm().code(), Some(0));
}
