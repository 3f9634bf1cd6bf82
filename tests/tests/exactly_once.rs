//! `--delivery exactly-once` (spec §8): triggers and offsets are committed in Kafka transactions,
//! so a read_committed reader sees each trigger once, even when the processor is killed
//! (SIGKILL, no chance to drain) in the middle of the stream and restarted.

use rtcrm_integration_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn a_killed_and_restarted_processor_produces_each_trigger_exactly_once() {
    let t = Topics::new("eos");
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    // A stable instance id: the restarted process reuses the transactional id and so fences (and
    // aborts) whatever its killed predecessor left open.
    let instance = format!("eos-{}", unique_suffix());
    let args = [t.args(), vec!["--delivery".into(), "exactly-once".into(), "--instance-id".into(), instance]].concat();
    let mut p = Processor::start(&args);

    let total = 1500;
    let mut expected = Vec::new();
    let events: Vec<Msg> = (0..total)
        .map(|i| {
            let id = format!("eos-{i:05}");
            let result = if i % 3 == 0 { "win" } else { "loss" };
            if result == "loss" {
                expected.push(id.clone());
            }
            Msg::keyed("12345", seed_event(&id, result).to_string())
        })
        .collect();
    produce(&t.events, &events);

    let mut triggers = Reader::read_committed(&t.triggers);
    let some = triggers.read_until(|r| r.len() >= 200, Duration::ZERO, Duration::from_secs(60));
    assert!(some, "committed triggers appear before the kill ({} so far)", triggers.records.len());
    let status = p.signal_and_wait("KILL", Duration::from_secs(10));
    assert!(!status.success(), "killed");

    let mut p = Processor::start(&args);
    let complete = triggers.read_until(|r| r.len() >= expected.len(), Duration::from_secs(4), Duration::from_secs(120));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for trigger in parse_triggers(&triggers.records) {
        *seen.entry(trigger.event_id).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = expected.iter().filter(|id| !seen.contains_key(*id)).collect();
    println!("exactly-once: {} triggers read, {} expected, {} duplicated, {} missing", triggers.records.len(), expected.len(), duplicates.len(), missing.len());
    assert!(complete && missing.is_empty(), "{} triggers missing, e.g. {:?}", missing.len(), missing.first());
    assert!(duplicates.is_empty(), "{} events triggered more than once, e.g. {:?}", duplicates.len(), duplicates.first());
    assert_eq!(seen.len(), expected.len(), "no unexpected triggers");
    assert_eq!(p.sigterm().code(), Some(0));
}
