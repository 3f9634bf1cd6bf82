//! No zombie (spec §8): a task that cannot go on stops the process with a non-zero exit and the
//! reason. A second exactly-once instance with the same `--instance-id` fences the first; a
//! campaigns topic deleted under a running instance stops it.

use rtcrm_integration_tests::faults::{expected_4711, Load, Tally};
use rtcrm_integration_tests::*;
use std::time::{Duration, Instant};

fn wait_exit(p: &mut Processor, within: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = p.try_wait() {
            return status;
        }
        assert!(t0.elapsed() < within, "the processor still runs {within:?} later:\n{}", p.log_tail(30));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_second_exactly_once_instance_with_the_same_id_fences_the_first() {
    let t = Topics::new("fence");
    create_topic(&t.events, 2);
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let args = [t.args(), vec!["--delivery".into(), "exactly-once".into(), "--instance-id".into(), format!("twin-{}", unique_suffix())]].concat();
    let mut first = Processor::builder("run").args(args.clone()).name("first").start();
    let load = Load::start(&broker(), &t.events, 200, 1_000, 7);
    let mut triggers = Reader::read_committed(&t.triggers);
    assert!(triggers.read_until(|r| r.len() >= 50, Duration::ZERO, Duration::from_secs(60)));

    let second = Processor::builder("run").args(args).name("second").start();
    let status = wait_exit(&mut first, Duration::from_secs(60));
    let log = std::fs::read_to_string(&first.log).unwrap();
    println!("the first instance exited with {status}");
    assert!(!status.success(), "the fenced instance exits non-zero, not {status}");
    assert!(log.contains("fenced") && log.contains("--instance-id"), "its log says why:\n{}", first.log_tail(20));

    let produced = load.finish();
    let expected = expected_4711(&produced);
    triggers.read_until(|r| Tally::complete(r, &expected), Duration::from_secs(10), Duration::from_secs(120));
    let tally = Tally::of(&triggers.records, &expected);
    println!("after the fencing: {tally}");
    assert!(tally.lost.is_empty() && tally.duplicates == 0 && tally.unexpected.is_empty(), "{tally}");
    drop(second);
}

#[test]
fn a_deleted_campaigns_topic_stops_the_processor_with_the_reason() {
    let t = Topics::new("gone");
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let mut p = Processor::start(&t.args());
    delete_topic(&t.campaigns);
    let status = wait_exit(&mut p, Duration::from_secs(60));
    assert!(!status.success(), "exits non-zero, not {status}");
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.contains(&format!("the campaigns topic `{}` no longer exists", t.campaigns)), "the log says why:\n{}", p.log_tail(20));
}
