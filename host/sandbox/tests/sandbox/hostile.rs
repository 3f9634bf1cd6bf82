//! Hostile filters: each is stopped with the right error kind, its instance is rebuilt, and a
//! healthy filter in the same process still evaluates correctly afterwards.

use crate::{event, filter, sandbox, verdict, SEED_EVENT, SEED_FILTER};
use rtcrm_sandbox::{ErrorKind, EvalError, LogCaps, Limits, MemorySink, Sandbox, SandboxConfig};
use std::sync::Arc;
use std::time::Duration;

/// Runs `source` (hostile only when `event.data.hostile` is true), expects `kind`, then checks
/// that the same filter is usable again and that a healthy filter still works.
fn stopped_with(source: &str, kind: ErrorKind) -> EvalError {
    let mut f = filter(source);
    let hostile = event(r#"{"game":"foe","data":{"hostile":true}}"#);
    let benign = event(r#"{"game":"foe","data":{"hostile":false}}"#);
    let err = f.eval(&hostile).expect_err("a hostile evaluation fails");
    assert_eq!(err.kind(), kind, "{source}: {err}");
    if kind != ErrorKind::Exception {
        assert_eq!(f.rebuilds(), 1, "the trapped instance was discarded and rebuilt");
    }
    assert!(f.eval(&benign).expect("the filter works again").matched, "{source} recovers");
    assert!(verdict(SEED_FILTER, SEED_EVENT), "a healthy filter still evaluates correctly");
    err
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let err = stopped_with("e => { while (e.data.hostile) {} return true }", ErrorKind::Fuel);
    assert_eq!(err, EvalError::Fuel { limit: sandbox().limits().fuel });
}

#[test]
fn an_allocation_bomb_hits_the_memory_cap() {
    let err = stopped_with(
        "e => { const keep = []; while (e.data.hostile) keep.push(new ArrayBuffer(1 << 20)); return true }",
        ErrorKind::Memory,
    );
    match err {
        EvalError::Memory { requested, limit } => {
            assert_eq!(limit, sandbox().limits().memory_bytes);
            assert!(requested > limit);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unbounded_recursion_overflows_the_wasm_stack() {
    // The wasm stack cap (512 KiB) is reached before QuickJS's own depth check: a trap.
    let err = stopped_with(
        "e => { function down(n) { return down(n + 1) + 1 } return e.data.hostile ? down(0) > 0 : true }",
        ErrorKind::Trap,
    );
    assert!(err.to_string().contains("call stack exhausted"), "{err}");
}

#[test]
fn string_doubling_is_stopped_by_quickjs() {
    // QuickJS caps string length itself and throws, well before the memory cap.
    let err = stopped_with("e => { let s = 'x'; while (e.data.hostile) s = s + s; return true }", ErrorKind::Exception);
    assert_eq!(err, EvalError::Exception("InternalError: string too long".into()));
}

#[test]
fn a_throw_is_an_exception_with_its_message() {
    let err = stopped_with("e => { if (e.data.hostile) throw new Error('boom'); return true }", ErrorKind::Exception);
    assert_eq!(err, EvalError::Exception("Error: boom".into()));
    let err = stopped_with("e => { if (e.data.hostile) throw 'plain'; return true }", ErrorKind::Exception);
    assert_eq!(err, EvalError::Exception("\"plain\"".into()));
    let err = stopped_with("e => e.data.hostile ? e.data.nothing.deeper : true", ErrorKind::Exception);
    assert!(err.to_string().contains("TypeError"), "{err}");
}

#[test]
fn a_deadline_stops_a_loop_when_fuel_is_off() {
    let config = SandboxConfig {
        fuel_metering: false,
        limits: Limits { deadline: Duration::from_millis(5), ..Limits::default() },
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config).unwrap();
    let compiled = sandbox.compile_js("e => { while (e.data.hostile) {} return true }").unwrap();
    let mut f = sandbox.js_filter(&compiled, "deadline", sandbox.limits()).unwrap();
    let err = f.eval(&event(r#"{"data":{"hostile":true}}"#)).unwrap_err();
    assert_eq!(err, EvalError::Deadline { limit: Duration::from_millis(5) });
    assert!(f.eval(&event(r#"{"data":{"hostile":false}}"#)).unwrap().matched);
}

#[test]
fn console_log_in_an_endless_loop_stays_capped() {
    let sink = MemorySink::default();
    let caps = LogCaps { max_line_bytes: 64, lines_per_window: 5, window: Duration::from_secs(3600) };
    let config = SandboxConfig { log_sink: Arc::new(sink.clone()), log_caps: caps, ..SandboxConfig::default() };
    let sandbox = Sandbox::new(config).unwrap();
    let compiled = sandbox
        .compile_js("e => { let i = 0; while (true) console.log('line', i++, 'x'.repeat(1000)); }")
        .unwrap();
    let mut f = sandbox.js_filter(&compiled, "chatty", sandbox.limits()).unwrap();
    assert_eq!(f.eval(&event(SEED_EVENT)).unwrap_err().kind(), ErrorKind::Fuel);
    drop(f);
    let lines = sink.lines();
    assert_eq!(lines.len(), 5, "only the first window's lines are kept");
    assert!(lines.iter().all(|(name, _, text)| name == "chatty" && text.len() <= 64 + '…'.len_utf8()));
    assert!(lines[0].2.starts_with("line 0 xxx"), "{:?}", lines[0]);
    assert!(sink.dropped_count() > 100, "the loop logged many more lines ({} dropped)", sink.dropped_count());
}

#[test]
fn console_output_reaches_the_log() {
    let sink = MemorySink::default();
    let config = SandboxConfig { log_sink: Arc::new(sink.clone()), ..SandboxConfig::default() };
    let sandbox = Sandbox::new(config).unwrap();
    let compiled = sandbox.compile_js("e => { console.log('game', e.game, {n: 1}); console.error('oops'); return true }").unwrap();
    let mut f = sandbox.js_filter(&compiled, "4711", sandbox.limits()).unwrap();
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    let lines: Vec<(String, String)> = sink.lines().into_iter().map(|(n, _, t)| (n, t)).collect();
    assert_eq!(lines, [("4711".to_string(), "game foe [object Object]".to_string()), ("4711".to_string(), "oops".to_string())]);
}

#[test]
fn a_campaign_can_lower_its_limits() {
    let sandbox = sandbox();
    let compiled = sandbox.compile_js("e => { let s = 0; for (let i = 0; i < 10000; i++) s += i; return s > 0 }").unwrap();
    let mut generous = sandbox.js_filter(&compiled, "a", sandbox.limits()).unwrap();
    assert!(generous.eval(&event(SEED_EVENT)).unwrap().matched);
    let mut frugal = sandbox.js_filter(&compiled, "b", sandbox.limits().lowered(Some(200_000), None)).unwrap();
    assert_eq!(frugal.eval(&event(SEED_EVENT)).unwrap_err(), EvalError::Fuel { limit: 200_000 });
}

#[test]
fn fuel_used_is_reported() {
    let mut f = filter(SEED_FILTER);
    let v = f.eval(&event(SEED_EVENT)).unwrap();
    assert!(v.matched);
    assert!(v.fuel_used > 1_000 && v.fuel_used < sandbox().limits().fuel, "{}", v.fuel_used);
}
