//! Campaigns change at runtime: a new version with the same id replaces the filter, a JavaScript
//! syntax error is rejected (line and column in the status) while the previous version stays in
//! force, and a tombstone deletes the campaign.

use std::time::Duration;

use rtcrm_integration_tests::*;

const IDLE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

fn campaign(filter: &str) -> String {
    json!({
        "campaign_id": 4711, "enabled": true, "game": "foe", "event_name": "fight",
        "start_date": "2023-09-01T10:00:00.00Z", "end_date": "2023-12-01T10:00:00.00Z",
        "filter": filter,
    })
    .to_string()
}

/// Event ids of triggers of campaign 4711 seen so far.
fn triggered(r: &Reader) -> Vec<String> {
    parse_triggers(&r.records).into_iter().filter(|t| t.campaign_id == 4711).map(|t| t.event_id).collect()
}

#[test]
fn replace_reject_and_delete_at_runtime() {
    let t = Topics::new("update");
    // v1, keyless as the original wrote it, on a campaigns topic that exists before rtcrm starts
    // (as `kcat -P` created it in the README): loss. Read at start, up to the end.
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let mut p = Processor::start(&t.args());
    let mut status = Reader::new(&t.status);
    let mut triggers = Reader::new(&t.triggers);
    let mut sent = 0.0;
    let mut send = |p: &mut Processor, events: &[(&str, &str)]| {
        let msgs: Vec<Msg> = events.iter().map(|(id, res)| Msg::keyed("12345", seed_event(id, res).to_string())).collect();
        produce(&t.events, &msgs);
        sent += events.len() as f64;
        p.wait_metric_at_least("rtcrm_events_total", sent, WAIT);
    };

    let v1 = wait_status(&mut status, 4711, "active", WAIT);
    send(&mut p, &[("u-1-loss", "loss"), ("u-2-win", "win")]);
    triggers.read_count(1, IDLE, WAIT);
    assert_eq!(triggered(&triggers), vec!["u-1-loss"], "v1 (result === 'loss')");

    // v2, keyed by the id: win.
    let v2_src = campaign("function(event) { return event.getData().get('result') === 'win' }");
    produce(&t.campaigns, &[Msg::keyed("4711", &v2_src)]);
    let v2 = wait_status(&mut status, 4711, "active", WAIT);
    assert_ne!(v1["digest"], v2["digest"], "a different campaign message has a different digest");
    send(&mut p, &[("u-3-loss", "loss"), ("u-4-win", "win")]);
    triggers.read_count(2, IDLE, WAIT);
    assert_eq!(triggered(&triggers), vec!["u-1-loss", "u-4-win"], "after v2 (result === 'win')");
    let last = triggers.records.last().unwrap().json();
    assert_eq!(
        last["campaign"],
        serde_json::from_str::<serde_json::Value>(&v2_src).unwrap(),
        "the trigger carries the new version of the campaign"
    );

    // v3 with a syntax error on line 2: rejected, v2 stays in force.
    let bad = "function(event) {\n  return event.data.result === ;\n}";
    produce(&t.campaigns, &[Msg::keyed("4711", campaign(bad))]);
    let rej = wait_status(&mut status, 4711, "rejected", WAIT);
    let err = rej["error"].as_str().unwrap_or_else(|| panic!("rejected status without an error text: {rej}"));
    let lc = err.find("line ").and_then(|i| {
        let rest = &err[i + 5..];
        let (line, rest) = rest.split_once(", column ")?;
        let col: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        Some((line.trim().parse::<u32>().ok()?, col.parse::<u32>().ok()?))
    });
    let (line, col) = lc.unwrap_or_else(|| panic!("the error must name `line L, column C`: {err:?}"));
    assert_eq!(line, 2, "the syntax error is on line 2 of the filter: {err:?}");
    assert!((1..=40).contains(&col), "column {col} is not on line 2 (length 33): {err:?}");
    send(&mut p, &[("u-5-loss", "loss"), ("u-6-win", "win")]);
    triggers.read_count(3, IDLE, WAIT);
    assert_eq!(
        triggered(&triggers),
        vec!["u-1-loss", "u-4-win", "u-6-win"],
        "after a rejected update the previous version (win) keeps triggering"
    );

    // Tombstone: deleted, nothing more.
    produce(&t.campaigns, &[Msg::tombstone("4711")]);
    let del = wait_status(&mut status, 4711, "deleted", WAIT);
    assert_eq!(del["campaign_id"].as_i64(), Some(4711));
    send(&mut p, &[("u-7-loss", "loss"), ("u-8-win", "win")]);
    triggers.poll_for(IDLE);
    assert_eq!(
        triggered(&triggers),
        vec!["u-1-loss", "u-4-win", "u-6-win"],
        "no trigger after the tombstone deleted campaign 4711"
    );
    assert_eq!(triggers.records.len(), 3, "no other trigger at all");
}
