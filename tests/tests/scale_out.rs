//! Two processes in one consumer group share a 4-partition events topic: Kafka splits the
//! partitions between them (each reports its share in `rtcrm_assigned_partitions`), and all
//! expected triggers are produced; a third one joining and leaving under load takes partitions
//! and hands them back, drained and committed each time: nothing lost, nothing processed twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rtcrm_integration_tests::faults::{expected_4711, one_at_a_time, Load, Tally};
use rtcrm_integration_tests::*;

const EVENTS: usize = 2_000;

fn assigned(p: &Processor) -> f64 {
    p.metric("rtcrm_assigned_partitions").unwrap_or(-1.0)
}

#[test]
fn two_processes_share_four_partitions() {
    let _serial = one_at_a_time();
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

    // Evaluation outcomes, not a count taken at consumption.
    let (e1, e2) = (p1.metric("rtcrm_evaluations_total").unwrap_or(0.0), p2.metric("rtcrm_evaluations_total").unwrap_or(0.0));
    println!("rtcrm_evaluations_total: {e1} + {e2}");
    assert!(e1 > 0.0 && e2 > 0.0, "both processes must have evaluated events: {e1} and {e2}");
    assert_eq!(e1 + e2, EVENTS as f64, "together they evaluated every event once");
    let (a2, b2) = (assigned(&p1), assigned(&p2));
    assert!(a2 >= 1.0 && b2 >= 1.0 && a2 + b2 == 4.0, "assignment at the end: {a2} + {b2}");
}

#[test]
fn a_third_instance_joining_and_leaving_under_load_loses_nothing_and_repeats_nothing() {
    let _serial = one_at_a_time();
    let t = Topics::new("join");
    create_topic(&t.events, 4);
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let mut a = Processor::builder("run").args(t.args()).name("a").start();
    let mut b = Processor::builder("run").args(t.args()).name("b").start();
    let load = Load::start(&broker(), &t.events, 400, 2_000, 3);
    let mut triggers = Reader::new(&t.triggers);
    assert!(triggers.read_until(|r| r.len() >= 200, Duration::ZERO, Duration::from_secs(60)), "triggers before the join");

    // A third member joins: partitions move to it, after the others drained and committed them.
    let mut c = Processor::builder("run").args(t.args()).name("c").start();
    wait_until("the new member to own partitions", Duration::from_secs(60), || (assigned(&c) >= 1.0).then_some(()));
    wait_until("the new member to evaluate events", Duration::from_secs(60), || {
        (c.metric("rtcrm_evaluations_total").unwrap_or(0.0) > 50.0).then_some(())
    });
    println!("the third member owns {} partitions", assigned(&c));
    // ... and leaves: its partitions go back, drained and committed.
    assert_eq!(c.sigterm().code(), Some(0), "the leaving member exits cleanly");
    wait_until("the remaining members to own every partition", Duration::from_secs(60), || {
        (assigned(&a) + assigned(&b) == 4.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let produced = load.finish();
    let expected = expected_4711(&produced);
    triggers.read_until(|r| Tally::complete(r, &expected), Duration::from_secs(3), Duration::from_secs(120));
    a.assert_running();
    b.assert_running();
    let tally = Tally::of(&triggers.records, &expected);
    println!("a member joined and left under load: {tally}");
    assert!(tally.lost.is_empty(), "triggers lost: {tally}");
    assert!(tally.unexpected.is_empty(), "unexpected triggers: {tally}");
    assert_eq!(tally.duplicates, 0, "revoked partitions are drained and committed before they move: nothing is processed twice ({tally})");
}
