//! Host work done for a filter is linear in what it returns and charged to the filter's fuel
//! (issue 11: `Object.keys(e)` on 60,000 keys took 7 s in the host).

use crate::{abi_module_with, event, sandbox, SEED_EVENT};
use rtcrm_sandbox::{CompiledFilter, ErrorKind, Event, EventLimits, Limits, Sandbox, SandboxConfig, HOST_BYTE_FUEL, HOST_CALL_FUEL};
use std::time::{Duration, Instant};

/// An event with `n` top-level keys `k0`..; 60,000 keys make about 1 MB.
fn wide_event(n: usize) -> Event {
    let mut json = String::from("{");
    for i in 0..n {
        json.push_str(&format!("\"k{i}\":{i},"));
    }
    json.push_str("\"game\":\"foe\"}");
    Event::parse_with(json.into_bytes(), &EventLimits { max_bytes: 16 << 20, max_depth: 64 }).unwrap()
}

fn generous() -> Sandbox {
    Sandbox::new(SandboxConfig {
        limits: Limits { fuel: 20_000_000_000, deadline: Duration::from_secs(20), ..Limits::default() },
        event_limits: EventLimits { max_bytes: 16 << 20, max_depth: 64 },
        ..SandboxConfig::default()
    })
    .unwrap()
}

#[test]
fn object_keys_of_sixty_thousand_keys_ends_within_its_fuel_in_linear_time() {
    let source = "e => Object.keys(e).length === 60001";
    let event = wide_event(60_000);
    // Under the default budget: it ends fast, as a verdict or as `fuel`, never as 7 s of host time.
    let sb = sandbox();
    let mut f = sb.js_filter(&sb.compile_js(source).unwrap(), "keys", sb.limits()).unwrap();
    let started = Instant::now();
    let outcome = f.eval(&event);
    let took = started.elapsed();
    assert!(matches!(&outcome, Ok(v) if v.matched) || matches!(&outcome, Err(e) if e.kind() == ErrorKind::Fuel), "{outcome:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");

    // With fuel to spare, fuel (deterministic) grows linearly: twice the keys, about twice the fuel.
    let sb = generous();
    let fuel = |n: usize, source: &str| {
        let mut f = sb.js_filter(&sb.compile_js(source).unwrap(), "keys", sb.limits()).unwrap();
        let v = f.eval(&wide_event(n)).unwrap();
        assert!(v.matched, "{source} on {n} keys");
        v.fuel_used
    };
    for source in ["e => Object.keys(e).length > 0", "e => JSON.stringify(e).length > 0", "e => { let n = 0; for (const k in e) n++; return n > 0 }"] {
        let (small, large) = (fuel(30_000, source), fuel(60_000, source));
        let ratio = large as f64 / small as f64;
        assert!((1.7..2.4).contains(&ratio), "{source}: 30,000 keys {small} fuel, 60,000 keys {large} fuel ({ratio:.2}×)");
    }
    let mut f = sb.js_filter(&sb.compile_js(source).unwrap(), "keys", sb.limits()).unwrap();
    let started = Instant::now();
    assert!(f.eval(&event).unwrap().matched);
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
}

#[test]
fn host_functions_charge_fuel_for_the_bytes_they_produce() {
    // random_get of N bytes: the fuel difference is exactly N × HOST_BYTE_FUEL.
    let random = r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"#;
    let module = |len: u32| {
        abi_module_with(
            r#"(memory (export "memory") 20)"#,
            random,
            "",
            &format!("(drop (call $random (i32.const 0x10000) (i32.const {len}))) (i32.const 1)"),
        )
    };
    let sb = sandbox();
    let fuel = |len| {
        let compiled = CompiledFilter::Wasm(sb.load_wasm(&module(len)).unwrap());
        let mut f = sb.filter(&compiled, "random", sb.limits()).unwrap();
        f.eval(&event(SEED_EVENT)).unwrap().fuel_used
    };
    assert_eq!(fuel(1 << 20) - fuel(0), (1 << 20) * HOST_BYTE_FUEL);

    // A JavaScript read of a 500,000-byte field costs the filter at least the copy.
    let big = format!(r#"{{"game":"foe","big":"{}","small":"x"}}"#, "y".repeat(500_000));
    let event = Event::parse(big.into_bytes()).unwrap();
    let read = |field: &str| {
        let mut f = sb.js_filter(&sb.compile_js(&format!("e => e.{field}.length > 0")).unwrap(), "read", sb.limits()).unwrap();
        f.eval(&event).unwrap().fuel_used
    };
    assert!(read("big") - read("small") >= 500_000 * HOST_BYTE_FUEL, "big {} small {}", read("big"), read("small"));
}

#[test]
fn a_loop_of_host_calls_is_stopped_by_the_filters_own_budget() {
    // Every call lists the keys again (about 1 MB from the host each time): fuel ends it, quickly.
    let event = wide_event(60_000);
    let sb = sandbox();
    let mut f = sb
        .js_filter(&sb.compile_js("e => { let n = 0; while (true) n += Object.keys(e).length }").unwrap(), "loop", sb.limits())
        .unwrap();
    let started = Instant::now();
    assert_eq!(f.eval(&event).unwrap_err().kind(), ErrorKind::Fuel);
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());

    // A Wasm filter writing megabytes to stdout in a loop: charged, stopped as fuel.
    let write = r#"(import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))"#;
    let m = abi_module_with(
        r#"(memory (export "memory") 1)"#,
        write,
        r#"(data (i32.const 0x100) "\00\10\00\00\00\f0\00\00")"#,
        "(loop $l (drop (call $write (i32.const 1) (i32.const 0x100) (i32.const 1) (i32.const 0x200))) (br $l)) (i32.const 1)",
    );
    let compiled = CompiledFilter::Wasm(sb.load_wasm(&m).unwrap());
    let mut f = sb.filter(&compiled, "writer", sb.limits()).unwrap();
    let started = Instant::now();
    let err = f.eval(&crate::event(SEED_EVENT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fuel, "{err}");
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    // Each call was charged at least its base cost: the loop made fewer calls than the budget
    // allows for calls alone.
    assert!(sb.limits().fuel / HOST_CALL_FUEL < 1_000_000);
}
