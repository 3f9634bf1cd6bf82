//! Records the broker refuses for good (spec §8): a trigger over the triggers topic's
//! `max.message.bytes` goes to the dead-letter topic with the reason, and the events after it
//! still produce their triggers, in order — whether the limit was known at start (the record is
//! never sent) or lowered while rtcrm runs (the broker refuses it).

use rtcrm_integration_tests::*;
use std::time::Duration;

fn event(i: usize, blob_bytes: usize) -> serde_json::Value {
    let mut e = seed_event(&format!("big-{i:03}"), "loss");
    e["data"]["blob"] = "x".repeat(blob_bytes).into();
    e
}

#[test]
fn an_oversize_trigger_is_dead_lettered_and_the_events_after_it_still_trigger_in_order() {
    let t = Topics::new("oversize");
    create_topic_with(&t.triggers, 1, &[("max.message.bytes", "20000")]);
    create_topic(&t.events, 1);
    produce(&t.campaigns, &[Msg::keyed("10", r#"{"campaign_id":10,"enabled":true,"game":"foe","event_name":"fight","filter":"e => true"}"#)]);
    // One player, one partition: the triggers must come in the events' order. Event 10's trigger
    // is ~30 KB, over the topic's 20,000 bytes.
    let first: Vec<Msg> = (0..30).map(|i| Msg::keyed("12345", event(i, if i == 10 { 30_000 } else { 100 }).to_string())).collect();
    let delivered = produce(&t.events, &first);
    let mut p = Processor::start(&t.args());

    let mut triggers = Reader::new(&t.triggers);
    assert!(triggers.read_until(|r| r.len() >= 29, Duration::from_secs(2), Duration::from_secs(60)), "29 triggers, got {}", triggers.records.len());
    let ids: Vec<String> = parse_triggers(&triggers.records).into_iter().map(|t| t.event_id).collect();
    let want: Vec<String> = (0..30).filter(|i| *i != 10).map(|i| format!("big-{i:03}")).collect();
    assert_eq!(ids, want, "every trigger but the oversize one, in the events' order");

    let mut dlq = Reader::new(&t.dlq);
    assert!(dlq.read_until(|r| !r.is_empty(), Duration::from_secs(2), Duration::from_secs(30)), "the dead letter");
    assert_eq!(dlq.records.len(), 1, "exactly one dead letter");
    let letter = &dlq.records[0];
    assert_eq!(letter.payload.as_deref(), first[10].payload.as_deref(), "the dead letter is the original event");
    assert_eq!(letter.key_str().as_deref(), Some("12345"), "with its original key");
    let reason = letter.header("rtcrm.error").expect("the reason header");
    assert!(reason.contains("campaign 10") && reason.contains("max.message.bytes"), "the reason names the campaign and the limit: {reason}");
    assert_eq!(letter.header("rtcrm.campaign").as_deref(), Some("10"));
    assert_eq!(letter.header("rtcrm.source.offset"), Some(delivered[10].offset.to_string()));
    assert_eq!(p.metric("rtcrm_dead_letters_total"), Some(1.0));

    // The limit lowered while rtcrm runs: now the broker itself refuses the big trigger (and the
    // produce batches it was in); only the big one ends as a dead letter.
    alter_topic(&t.triggers, &[("max.message.bytes", "6000")]);
    std::thread::sleep(Duration::from_secs(2));
    let second: Vec<Msg> = (30..60).map(|i| Msg::keyed("12345", event(i, if i == 45 { 8_000 } else { 100 }).to_string())).collect();
    produce(&t.events, &second);
    let want: std::collections::BTreeSet<String> = (30..60).filter(|i| *i != 45).map(|i| format!("big-{i:03}")).collect();
    let complete = triggers.read_until(
        |r| want.iter().all(|w| parse_triggers(r).iter().any(|t| &t.event_id == w)),
        Duration::from_secs(2),
        Duration::from_secs(90),
    );
    let got: Vec<String> = parse_triggers(&triggers.records[29..]).into_iter().map(|t| t.event_id).collect();
    assert!(complete, "every trigger of the second round but the oversize one: got {got:?}");
    assert!(!got.contains(&"big-045".to_string()), "the refused trigger is not delivered");
    assert!(dlq.read_until(|r| r.len() >= 2, Duration::from_secs(2), Duration::from_secs(60)), "the second dead letter");
    assert_eq!(dlq.records.len(), 2, "exactly one more dead letter");
    let reason = dlq.records[1].header("rtcrm.error").unwrap();
    assert!(reason.contains("campaign 10") && reason.contains("MessageSizeTooLarge"), "the broker's refusal is named: {reason}");
    assert_eq!(dlq.records[1].payload.as_deref(), second[15].payload.as_deref());
    p.assert_running();
    assert_eq!(p.sigterm().code(), Some(0));
}
