//! A campaign whose filter never returns, among three healthy ones on the same game and event:
//! the healthy ones trigger completely, the hostile one never triggers and is quarantined.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rtcrm_integration_tests::*;
use serde_json::Value;

/// A campaign and the same filter in Rust.
type Rule = (Value, fn(&Value) -> bool);

/// A campaign on game `foe`, event `fight` (the seed events').
fn campaign(id: i64, filter: &str) -> Value {
    json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": "fight", "filter": filter})
}

#[test]
fn endless_loop_is_quarantined_and_healthy_campaigns_complete() {
    let t = Topics::new("hostile");
    let hostile = campaign(666, "function(e){ while(true){} }");
    let healthy: Vec<Rule> = vec![
        (campaign(1, "e => e.data.result === 'loss'"), |e| e["data"]["result"] == "loss"),
        (campaign(2, "function(event) { return event.getData().get('score') > 500 }"), |e| e["data"]["score"].as_i64().unwrap() > 500),
        (campaign(3, "(e) => e.market === 'de' || e.market === 'at'"), |e| e["market"] == "de" || e["market"] == "at"),
    ];
    // The hostile campaign first, so it is evaluated early for every event.
    let mut msgs = vec![Msg::keyed("666", hostile.to_string())];
    msgs.extend(healthy.iter().map(|(c, _)| Msg::keyed(c["campaign_id"].to_string(), c.to_string())));
    produce(&t.campaigns, &msgs);

    let mut p = Processor::start(&[t.args(), vec!["--quarantine-after".into(), "5".into()]].concat());
    let mut status = Reader::new(&t.status);
    for id in [666, 1, 2, 3] {
        wait_status(&mut status, id, "active", Duration::from_secs(30));
    }

    let mut rng = Rng::new(666);
    let mut expected = BTreeSet::new();
    let mut events = Vec::new();
    for i in 0..200 {
        let mut e = seed_event(&format!("h-{i:03}"), rng.pick::<&str>(&["win", "loss"]));
        e["data"]["score"] = rng.range(0, 1000).into();
        e["market"] = (*rng.pick(&["de", "at", "fr", "us"])).into();
        e["player_id"] = rng.range(1, 9999).into();
        for (c, f) in &healthy {
            if f(&e) {
                expected.insert((c["campaign_id"].as_i64().unwrap(), e["event_id"].as_str().unwrap().to_string()));
            }
        }
        events.push(Msg::keyed(e["player_id"].to_string(), e.to_string()));
    }
    let t0 = Instant::now();
    produce(&t.events, &events);

    let q = wait_status(&mut status, 666, "quarantined", Duration::from_secs(60));
    println!("quarantined after {:.1?}: {q}", t0.elapsed());

    let mut triggers = Reader::new(&t.triggers);
    let done = triggers.read_until(|r| covers(r, &expected), Duration::from_secs(3), Duration::from_secs(60));
    println!("{} triggers after {:.1?} (complete: {done})", triggers.records.len(), t0.elapsed());
    p.assert_running();
    let (got, dups) = trigger_pairs(&triggers.records);
    println!("duplicates: {dups}");
    let hostile_triggers = got.iter().filter(|(c, _)| *c == 666).count();
    assert_eq!(hostile_triggers, 0, "an endless loop must never count as a match");
    let diff = diff_pairs(&expected, &got);
    assert!(diff.is_empty(), "the healthy campaigns' triggers are incomplete or wrong:\n{diff}");
    assert_eq!(p.metric("rtcrm_events_total").unwrap_or(0.0), 200.0, "rtcrm_events_total");
}

/// Two campaigns on one event are evaluated ahead, campaign by campaign, for a batch's events
/// (`Evaluator::prefetch`): a campaign that matches 3 events and then throws for 20 is
/// quarantined by the 5th throw before the first event's trigger is sent. Its 3 matches still
/// trigger, as they would event by event, and the other campaign gets all 23.
#[test]
fn matches_before_a_quarantine_in_the_same_batch_still_trigger() {
    let t = Topics::new("qbatch");
    let thrower = campaign(21, "e => { if (e.data.result === 'boom') throw new Error('boom'); return e.data.result === 'win' }");
    let healthy = campaign(22, "e => e.data.result !== 'none'");
    produce(&t.campaigns, &[Msg::keyed("21", thrower.to_string()), Msg::keyed("22", healthy.to_string())]);
    // One player (one worker's shard, in order), all produced before rtcrm starts: few batches.
    let results = std::iter::repeat_n("win", 3).chain(std::iter::repeat_n("boom", 20));
    let events: Vec<Value> = results.enumerate().map(|(i, r)| seed_event(&format!("q-{i:02}-{r}"), r)).collect();
    produce(&t.events, &events.iter().map(|e| Msg::keyed("12345", e.to_string())).collect::<Vec<_>>());

    let mut p = Processor::start(&[t.args(), vec!["--quarantine-after".into(), "5".into()]].concat());
    let mut status = Reader::new(&t.status);
    let q = wait_status(&mut status, 21, "quarantined", Duration::from_secs(60));
    println!("quarantined: {q}");
    let mut triggers = Reader::new(&t.triggers);
    let done = triggers.read_until(|r| r.len() >= 26, Duration::from_secs(3), Duration::from_secs(60));
    p.assert_running();
    let (got, dups) = trigger_pairs(&triggers.records);
    let ids = |c: i64| got.iter().filter(|(id, _)| *id == c).map(|(_, e)| e.clone()).collect::<Vec<_>>();
    let wins: Vec<String> = (0..3).map(|i| format!("q-{i:02}-win")).collect();
    assert_eq!(ids(21), wins, "the thrower's matches before its quarantine trigger (complete: {done})");
    assert_eq!(ids(22).len(), 23, "the healthy campaign triggers for every event");
    assert_eq!(dups, 0, "no trigger twice");
}
