//! The resident memory of a live JavaScript instance stays within the figure the sandbox
//! documents for its configuration (`Sandbox::js_instance_rss_bytes`). A test binary of its own:
//! it measures the process's RSS, so no other test may allocate beside it.

use rtcrm_sandbox::{
    CompiledFilter, Residency, Sandbox, SandboxConfig, JS_INSTANCE_RSS_BYTES, JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND,
};

const INSTANCES: usize = 500;
const EVENT: &str = r#"{"game":"foe","event_name":"fight","market":"de","player_id":12345,"data":{"result":"loss","score":50}}"#;

fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// RSS added per live instance, each evaluated three times.
fn per_instance(sandbox: &Sandbox) -> usize {
    let compiled: Vec<CompiledFilter> =
        (0..10).map(|k| CompiledFilter::Js(sandbox.compile_js(&format!("e => e.data.score > {k}")).unwrap())).collect();
    let event = sandbox.parse_event(EVENT.as_bytes().to_vec()).unwrap();
    // Settle the allocator and the runtime's first-use costs.
    drop((0..20).map(|i| sandbox.filter(&compiled[i % 10], "warm", sandbox.limits()).unwrap()).collect::<Vec<_>>());
    let before = rss();
    let mut fleet = Vec::with_capacity(INSTANCES);
    for i in 0..INSTANCES {
        let mut f = sandbox.filter(&compiled[i % 10], "c", sandbox.limits()).unwrap();
        for _ in 0..3 {
            assert_eq!(f.eval(&event).unwrap().matched, 50 > i % 10);
        }
        fleet.push(f);
    }
    let per = rss().saturating_sub(before) / INSTANCES;
    drop(fleet);
    per
}

#[test]
fn a_live_js_instance_stays_within_the_documented_resident_memory() {
    for (touched_pages_only, max_instances) in [(true, None), (true, Some(INSTANCES + 30)), (false, None)] {
        let sandbox = Sandbox::new(SandboxConfig { touched_pages_only, max_instances, ..SandboxConfig::default() }).unwrap();
        let figure = sandbox.js_instance_rss_bytes();
        let per = per_instance(&sandbox);
        let what = format!("touched_pages_only {touched_pages_only}, budget {max_instances:?}, {:?}", sandbox.residency());
        assert!(per <= figure + figure / 4, "{what}: {per} bytes per instance, documented {figure}");
        match sandbox.residency() {
            Residency::TouchedPagesOnly => {
                assert_eq!(figure, JS_INSTANCE_RSS_BYTES);
                // Well below what fault-around costs: the suppression works.
                assert!(per < JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND / 2, "{what}: {per} bytes per instance");
            }
            Residency::FaultAround(_) => assert_eq!(figure, JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND),
        }
        eprintln!("{what}: {} KiB per live instance (documented {} KiB)", per / 1024, figure / 1024);
    }
}
