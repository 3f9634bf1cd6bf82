//! Two processes in one consumer group share a 4-partition events topic: Kafka splits the
//! partitions between them (each reports its share in `rtcrm_assigned_partitions`), and all
//! expected triggers are produced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rtcrm_integration_tests::*;

const EVENTS: usize = 2_000;

fn assigned(p: &Processor) -> f64 {
    p.metric("rtcrm_assigned_partitions").unwrap_or(-1.0)
}

#[test]
fn two_processes_share_four_partitions() {
    let t = Topics::new("scale");
    create_topic(&t.events, 4);
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);

    let mut p1 = Processor::builder("run").args(t.args()).arg("--instance-id").arg("it-a").name("a").start();
    let mut p2 = Processor::builder("run").args(t.args()).arg("--instance-id").arg("it-b").name("b").start();

    // Wait for the group to settle: both own some partitions, 4 in all.
    let t0 = Instant::now();
    let (a, b) = loop {
        p1.assert_running();
        p2.assert_running();
        let (a, b) = (assigned(&p1), assigned(&p2));
        if a >= 1.0 && b >= 1.0 && a + b == 4.0 {
            break (a, b);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            panic!(
                "rtcrm_assigned_partitions did not settle to a split of 4 in 60 s: first {a}, second {b} \
                 (-1 = metric missing)\n--- first /metrics ---\n{}",
                p1.metrics()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("assigned partitions: {a} + {b} after {:.1?}", t0.elapsed());

    let mut rng = Rng::new(44);
    let mut expected = BTreeSet::new();
    let mut msgs = Vec::new();
    for i in 0..EVENTS {
        let res = *rng.pick(&["win", "loss"]);
        let mut e = seed_event(&format!("s-{i:04}"), res);
        let pid = rng.range(1, 1_000_000);
        e["player_id"] = pid.into();
        if res == "loss" {
            expected.insert((4711, e["event_id"].as_str().unwrap().to_string()));
        }
        msgs.push(Msg::keyed(pid.to_string(), e.to_string()));
    }
    let delivered = produce(&t.events, &msgs);
    let parts: BTreeSet<i32> = delivered.iter().map(|d| d.partition).collect();
    assert_eq!(parts.len(), 4, "the keyed events should spread over the 4 partitions: {parts:?}");

    let mut triggers = Reader::new(&t.triggers);
    let done = triggers.read_until(|r| covers(r, &expected), Duration::from_secs(3), Duration::from_secs(90));
    let (got, dups) = trigger_pairs(&triggers.records);
    println!("{} triggers ({} distinct, complete: {done}), duplicates: {dups}", triggers.records.len(), got.len());
    let diff = diff_pairs(&expected, &got);
    assert!(diff.is_empty(), "with two processes the triggers differ from the expected set:\n{diff}");

    let (e1, e2) = (p1.metric("rtcrm_events_total").unwrap_or(0.0), p2.metric("rtcrm_events_total").unwrap_or(0.0));
    println!("rtcrm_events_total: {e1} + {e2}");
    assert!(e1 > 0.0 && e2 > 0.0, "both processes must have processed events: {e1} and {e2}");
    assert!(e1 + e2 >= EVENTS as f64, "together they processed {} of {EVENTS} events", e1 + e2);
    let (a2, b2) = (assigned(&p1), assigned(&p2));
    assert!(a2 >= 1.0 && b2 >= 1.0 && a2 + b2 == 4.0, "assignment at the end: {a2} + {b2}");
}
