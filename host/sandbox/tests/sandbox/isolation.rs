//! What a filter cannot reach: I/O, the host, other campaigns.

use crate::{event, filter, verdict, SEED_EVENT};

#[test]
fn no_io_is_reachable_from_a_filter() {
    for name in ["Javy", "require", "process", "fetch", "setTimeout", "setInterval", "std", "os", "XMLHttpRequest", "WebAssembly", "__javy_io"] {
        let source = format!("e => typeof {name} === 'undefined'");
        assert!(verdict(&source, SEED_EVENT), "{name} must be undefined inside a filter");
    }
    assert!(verdict("e => typeof globalThis.Javy === 'undefined' && !Object.getOwnPropertyNames(globalThis).some(n => /javy|rtcrm/i.test(n))", SEED_EVENT));
}

#[test]
fn standard_ecmascript_is_there() {
    assert!(verdict(
        "e => JSON.parse('[1]')[0] === 1 && Math.max(1, 2) === 2 && /o/.test(e.game) \
         && new Map([[1, 2]]).get(1) === 2 && new Set([1]).has(1) && !isNaN(Date.parse(e.created_at)) \
         && typeof console.log === 'function'",
        SEED_EVENT
    ));
}

#[test]
fn campaigns_do_not_share_state() {
    let mut writer = filter("e => { globalThis.shared = 'leaked'; Object.prototype.polluted = 1; return true }");
    let mut reader = filter("e => typeof shared === 'undefined' && ({}).polluted === undefined");
    let ev = event(SEED_EVENT);
    assert!(writer.eval(&ev).unwrap().matched);
    assert!(reader.eval(&ev).unwrap().matched, "another campaign's globals are not visible");
}

#[test]
fn an_instance_is_reused_across_events() {
    // Filters must not rely on state between calls (spec §5), but instances are reused, so a
    // counter does count: this documents the behaviour.
    let mut f = filter("(function () { let n = 0; return e => ++n === 3; })()");
    let ev = event(SEED_EVENT);
    let verdicts: Vec<bool> = (0..3).map(|_| f.eval(&ev).unwrap().matched).collect();
    assert_eq!(verdicts, [false, false, true]);
}

#[test]
fn an_unwritable_cache_directory_does_not_stop_the_sandbox() {
    // A regular file where the cache directory should be: nothing can be written below it.
    let blocker = std::env::temp_dir().join(format!("rtcrm-not-a-dir-{}", std::process::id()));
    std::fs::write(&blocker, b"").unwrap();
    let config = rtcrm_sandbox::SandboxConfig { cache_dir: Some(blocker.join("cache")), ..Default::default() };
    let sandbox = rtcrm_sandbox::Sandbox::new(config).expect("runs from memory");
    let compiled = sandbox.compile_js(crate::SEED_FILTER).unwrap();
    let mut f = sandbox.js_filter(&compiled, "nocache", sandbox.limits()).unwrap();
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    std::fs::remove_file(blocker).ok();
}
