//! The broker goes away under load and comes back on the same port and data (spec §8: no
//! silent stall, no zombie): every expected trigger arrives, without restarting rtcrm
//! (at-least-once) or with exactly-once instances that recover by themselves or exit non-zero and
//! are restarted; `/healthz` and `/readyz` are never 200 while nothing can be consumed.

use rtcrm_integration_tests::faults::{expected_4711, one_at_a_time, Load, PrivateBroker, Tally};
use rtcrm_integration_tests::*;
use std::time::{Duration, Instant};

/// Samples `/healthz` and `/readyz` of the running processors for `duration`; returns how many
/// samples answered 200 (there must be none while the broker is down).
fn healthy_samples(processors: &mut [Processor], duration: Duration) -> usize {
    let t0 = Instant::now();
    let mut ok = 0;
    while t0.elapsed() < duration {
        for p in processors.iter_mut() {
            if !p.running() {
                continue;
            }
            for path in ["/healthz", "/readyz"] {
                if let Ok((200, body)) = http_get(&p.http, path) {
                    eprintln!("[test] {path} of pid {} answered 200 while the broker was down: {body}", p.pid());
                    ok += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ok
}

#[test]
fn at_least_once_loses_nothing_when_the_broker_stops_for_30_seconds() {
    let _serial = one_at_a_time();
    let broker = PrivateBroker::start("alo-outage");
    let t = Topics::new("outage-alo");
    produce_to(&broker.addr, &t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let mut p = Processor::builder("run").bootstrap(&broker.addr).args(t.args()).args(["--partitions", "2"]).start();
    let load = Load::start_plain(&broker.addr, &t.events, 300, 500, 30);
    let mut triggers = Reader::with_bootstrap(&broker.addr, &t.triggers);
    assert!(triggers.read_until(|r| r.len() >= 100, Duration::ZERO, Duration::from_secs(60)), "triggers flow before the outage");

    broker.stop();
    let down = Instant::now();
    // Detected within seconds; then never healthy while the broker is down.
    wait_until("/healthz to answer 503", Duration::from_secs(10), || (p.get("/healthz").0 == 503).then_some(()));
    println!("unhealthy {:.1?} after the broker stopped: {}", down.elapsed(), p.get("/healthz").1.trim());
    let healthy = healthy_samples(std::slice::from_mut(&mut p), Duration::from_secs(30).saturating_sub(down.elapsed()));
    broker.resume();
    println!("the broker was down for {:.1?}", down.elapsed());
    assert_eq!(healthy, 0, "/healthz or /readyz answered 200 while the broker was down");

    // Triggers flow again, from the same process.
    let before = triggers.records.len();
    assert!(
        triggers.read_until(|r| r.len() > before + 100, Duration::ZERO, Duration::from_secs(60)),
        "no triggers after the broker came back ({} before, {} now)",
        before,
        triggers.records.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    let produced = load.finish();
    let expected = expected_4711(&produced);
    triggers.read_until(|r| Tally::complete(r, &expected), Duration::from_secs(2), Duration::from_secs(120));
    p.assert_running();
    let tally = Tally::of(&triggers.records, &expected);
    println!("at-least-once through a 30 s outage: {tally}");
    assert!(tally.lost.is_empty(), "triggers lost: {tally}");
    assert!(tally.unexpected.is_empty(), "unexpected triggers: {tally}");
    wait_until("/healthz to answer 200 again", Duration::from_secs(15), || (p.get("/healthz").0 == 200).then_some(()));
    // The outage is logged once each way, not at every probe.
    let log = std::fs::read_to_string(&p.log).expect("read the processor's log");
    let (down_lines, up_lines) = (log.matches("the Kafka cluster does not answer").count(), log.matches("the Kafka cluster answers again").count());
    println!("log: {down_lines} \"does not answer\", {up_lines} \"answers again\"");
    assert!(down_lines >= 1 && up_lines == down_lines, "{down_lines} \"does not answer\" and {up_lines} \"answers again\" lines in {}", p.log.display());
    assert_eq!(p.sigterm().code(), Some(0));
}

#[test]
fn exactly_once_instances_recover_from_a_60_second_outage_without_loss_or_duplicates() {
    let _serial = one_at_a_time();
    let broker = PrivateBroker::start("eos-outage");
    let t = Topics::new("outage-eos");
    produce_to(&broker.addr, &t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let suffix = unique_suffix();
    let args = |n: usize| -> Vec<String> {
        [t.args(), vec!["--partitions".into(), "4".into(), "--delivery".into(), "exactly-once".into(), "--instance-id".into(), format!("eos-{n}-{suffix}")]].concat()
    };
    let builder = |n: usize| Processor::builder("run").bootstrap(&broker.addr).args(args(n)).name(&format!("eos{n}"));
    let mut processors = vec![builder(0).start(), builder(1).start()];
    let load = Load::start(&broker.addr, &t.events, 300, 1000, 60);
    let mut triggers = Reader::read_committed_on(&broker.addr, &t.triggers);
    assert!(triggers.read_until(|r| r.len() >= 100, Duration::ZERO, Duration::from_secs(60)), "committed triggers before the outage");

    broker.stop();
    let down = Instant::now();
    // Allow the instances 2 s to notice; from then on nothing may look healthy.
    std::thread::sleep(Duration::from_secs(2));
    let healthy = healthy_samples(&mut processors, Duration::from_secs(60).saturating_sub(down.elapsed()));
    broker.resume();
    println!("the broker was down for {:.1?}", down.elapsed());
    assert_eq!(healthy, 0, "/healthz or /readyz answered 200 while the broker was down");

    // An instance that gives up must say so with a non-zero exit; the test then restarts it, as
    // a supervisor would (without waiting for it: a restart that finds the cluster still
    // recovering may give up too, and is restarted again, a bounded number of times).
    let mut restarted = 0;
    let mut restart_exited = |processors: &mut Vec<Processor>| {
        for (n, p) in processors.iter_mut().enumerate() {
            if let Some(status) = p.try_wait() {
                assert!(!status.success(), "instance {n} exited with {status} after the outage: it must exit non-zero");
                restarted += 1;
                assert!(restarted <= 8, "{restarted} restarts after the outage: the instances do not recover");
                *p = builder(n).wait_ready(false).start();
            }
        }
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        restart_exited(&mut processors);
        triggers.poll_for(Duration::from_millis(500));
    }
    let produced = load.finish();
    let expected = expected_4711(&produced);
    let t0 = Instant::now();
    while !Tally::complete(&triggers.records, &expected) && t0.elapsed() < Duration::from_secs(180) {
        restart_exited(&mut processors);
        triggers.poll_for(Duration::from_millis(500));
    }
    triggers.poll_for(Duration::from_secs(3));
    println!("{restarted} instance(s) exited after the outage and were restarted");
    let tally = Tally::of(&triggers.records, &expected);
    println!("exactly-once through a 60 s outage: {tally}");
    if !tally.lost.is_empty() {
        // Tell a reader that fell behind from triggers that are not on the topic.
        let mut fresh = Reader::read_committed_on(&broker.addr, &t.triggers);
        fresh.poll_for(Duration::from_secs(10));
        let mut uncommitted = Reader::with_bootstrap(&broker.addr, &t.triggers);
        uncommitted.poll_for(Duration::from_secs(10));
        println!(
            "a fresh read_committed reader: {}; read_uncommitted: {}; high watermarks of the triggers topic: {:?}; events: {:?}",
            Tally::of(&fresh.records, &expected),
            Tally::of(&uncommitted.records, &expected),
            high_watermarks_on(&broker.addr, &t.triggers),
            high_watermarks_on(&broker.addr, &t.events),
        );
        for isolation in ["read_uncommitted", "read_committed"] {
            println!("committed offsets of {} on the events topic ({isolation}): {:?}", t.group, committed_offsets_on(&broker.addr, &t.group, &t.events, isolation));
        }
        for p in &mut processors {
            if p.running() {
                let metrics = p.metrics();
                let lines: Vec<&str> = metrics
                    .lines()
                    .filter(|l| ["rtcrm_assigned_partitions", "rtcrm_events_total", "rtcrm_in_flight", "rtcrm_transactions"].iter().any(|m| l.starts_with(m)))
                    .collect();
                println!("pid {} /healthz: {:?}; {lines:?}", p.pid(), p.get("/healthz"));
            }
        }
    }
    assert!(tally.lost.is_empty(), "triggers lost: {tally}");
    assert_eq!(tally.duplicates, 0, "duplicates under exactly-once: {tally}");
    assert!(tally.unexpected.is_empty(), "unexpected triggers: {tally}");
    for (n, p) in processors.iter_mut().enumerate() {
        // An instance may still give up after the triggers are complete: non-zero, as above.
        if let Some(status) = p.try_wait() {
            assert!(!status.success(), "instance {n} exited with {status} after the outage: it must exit non-zero");
            continue;
        }
        assert_eq!(p.sigterm().code(), Some(0));
    }
}
