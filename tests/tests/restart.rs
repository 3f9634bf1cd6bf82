//! SIGTERM in the middle of a stream: the processor drains, commits and exits 0; a second
//! process in the same group carries on, and together they produce every expected trigger.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rtcrm_integration_tests::*;
use serde_json::Value;

/// A campaign and the same filter in Rust.
type Rule = (Value, fn(&Value) -> bool);

const TOTAL: usize = 2_000;
const BEFORE_START: usize = 600;

#[test]
fn sigterm_mid_stream_then_restart() {
    let t = Topics::new("restart");
    let camps: Vec<Rule> = vec![
        (serde_json::from_str(SEED_CAMPAIGN).unwrap(), |e| e["data"]["result"] == "loss"),
        (
            json!({"campaign_id": 4800, "enabled": true, "game": "foe", "event_name": "fight",
                   "start_date": "2023-01-01T00:00:00Z", "filter": "e => e.data.result === 'win' && e.player_id % 2 === 0"}),
            |e| e["data"]["result"] == "win" && e["player_id"].as_i64().unwrap() % 2 == 0,
        ),
    ];
    produce(&t.campaigns, &camps.iter().map(|(c, _)| Msg::keyless(c.to_string())).collect::<Vec<_>>());

    let mut rng = Rng::new(2000);
    let mut expected = BTreeSet::new();
    let mut msgs = Vec::new();
    for i in 0..TOTAL {
        let mut e = seed_event(&format!("r-{i:04}"), rng.pick::<&str>(&["win", "loss", "draw"]));
        e["player_id"] = rng.range(1, 50_000).into();
        for (c, f) in &camps {
            if f(&e) {
                expected.insert((c["campaign_id"].as_i64().unwrap(), e["event_id"].as_str().unwrap().to_string()));
            }
        }
        msgs.push(Msg::keyed(e["player_id"].to_string(), e.to_string()));
    }
    println!("expected {} triggers", expected.len());
    produce(&t.events, &msgs[..BEFORE_START]);

    let mut p1 = Processor::builder("run").args(t.args()).name("first").start();
    // The rest arrives while the first process runs, in small batches.
    let rest: Vec<Msg> = msgs[BEFORE_START..].to_vec();
    let events_topic = t.events.clone();
    let producer = std::thread::spawn(move || {
        for chunk in rest.chunks(50) {
            produce(&events_topic, chunk);
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    let mut triggers = Reader::new(&t.triggers);
    let t0 = Instant::now();
    triggers.read_until(|r| r.len() >= 50, Duration::ZERO, Duration::from_secs(60));
    assert!(triggers.records.len() >= 50, "the first process produced only {} triggers in 60 s", triggers.records.len());
    let st = p1.sigterm();
    println!("SIGTERM after {:.1?} and {} triggers seen", t0.elapsed(), triggers.records.len());
    assert!(st.success(), "rtcrm must exit 0 after SIGTERM, got {st}");
    triggers.poll_for(Duration::from_secs(1));
    let (first_pairs, _) = trigger_pairs(&triggers.records);
    let first_count = triggers.records.len();
    println!("the first process produced {first_count} triggers ({} distinct)", first_pairs.len());

    let mut p2 = Processor::builder("run").args(t.args()).name("second").start();
    producer.join().expect("the producer thread panicked");
    let done = triggers.read_until(|r| covers(r, &expected), Duration::from_secs(3), Duration::from_secs(90));
    p2.assert_running();
    let (got, dups) = trigger_pairs(&triggers.records);
    println!(
        "{} triggers in all ({} distinct, complete: {done}); duplicates: {dups}",
        triggers.records.len(),
        got.len()
    );
    let diff = diff_pairs(&expected, &got);
    assert!(diff.is_empty(), "after the restart the triggers differ from the expected set:\n{diff}");
    assert!(
        first_count < triggers.records.len(),
        "the SIGTERM came after the whole stream had been processed; the test did not stop mid-stream"
    );
    // A clean SIGTERM drains and commits what it processed: nothing is processed twice.
    assert_eq!(dups, 0, "{dups} duplicate triggers after a clean SIGTERM (drain + commit should leave none)");
}
