//! A budget of filter instances (`SandboxConfig::max_instances`: wasmtime's pooling allocator):
//! a typed error past it, never a panic; slots reused without anything of the previous instance
//! left; the sandbox's own instances never short of a slot; rebuilds after a trap within it.

use crate::{abi_module_with, event, SEED_EVENT, SEED_FILTER};
use rtcrm_sandbox::{CompiledFilter, ErrorKind, EvalError, Sandbox, SandboxConfig, RESERVED_INSTANCES};

fn pooled(max: usize) -> Sandbox {
    let sandbox = Sandbox::new(SandboxConfig::default().with_max_instances(max)).expect("a pooled sandbox starts");
    assert_eq!(sandbox.max_instances(), Some(max));
    sandbox
}

#[test]
fn past_its_budget_a_build_fails_with_a_typed_capacity_error_and_succeeds_once_one_is_dropped() {
    let sb = pooled(3);
    let compiled = CompiledFilter::Js(sb.compile_js(SEED_FILTER).unwrap());
    let ev = event(SEED_EVENT);
    let mut alive: Vec<_> = (0..3).map(|i| sb.filter(&compiled, &format!("c{i}"), sb.limits()).unwrap()).collect();
    assert_eq!(sb.live_instances(), 3);
    let err = sb.filter(&compiled, "one too many", sb.limits()).err().expect("the budget is spent");
    assert_eq!(err, EvalError::Capacity { limit: 3 });
    assert_eq!(err.kind(), ErrorKind::Capacity);
    assert_eq!(err.kind().as_str(), "capacity");
    assert!(err.caused_by_host() && !err.caused_by_event(), "neither the filter's nor the event's fault");
    assert_eq!(err.to_string(), "no filter instance could be built: all 3 of the sandbox's filter instances are in use");
    // Every instance alive still evaluates; compiling (the sandbox's own instances) still works.
    for f in &mut alive {
        assert!(f.eval(&ev).unwrap().matched);
    }
    let other = CompiledFilter::Js(sb.compile_js("e => e.market === 'de'").expect("compiling has reserved slots"));
    drop(alive.pop());
    assert_eq!(sb.live_instances(), 2);
    let mut f = sb.filter(&other, "after a drop", sb.limits()).expect("a slot is free again");
    assert!(f.eval(&ev).unwrap().matched);
}

#[test]
fn a_wasm_filter_counts_against_the_same_budget() {
    let sb = pooled(1);
    let bytes = abi_module_with(r#"(memory (export "memory") 1)"#, "", "", "(i32.const 1)");
    let compiled = CompiledFilter::Wasm(sb.load_wasm(&bytes).unwrap());
    let js = CompiledFilter::Js(sb.compile_js(SEED_FILTER).unwrap());
    let mut wasm = sb.filter(&compiled, "wasm", sb.limits()).unwrap();
    assert!(matches!(sb.filter(&js, "js", sb.limits()), Err(EvalError::Capacity { limit: 1 })));
    assert!(wasm.eval(&event(SEED_EVENT)).unwrap().matched);
    drop(wasm);
    assert!(sb.filter(&js, "js", sb.limits()).is_ok());
}

#[test]
fn an_instance_in_a_reused_slot_sees_nothing_of_the_previous_one() {
    // The same module instantiated again in the slot its previous instance left (wasmtime reuses
    // the most recently used slot of a module): the byte written at 60000 and the image byte
    // changed at 61440 must be back to their initial values. Evaluating the same instance again
    // shows the writes are there while the instance lives.
    let sb = pooled(1);
    let body = r#"(if (result i32)
                    (i32.or (i32.ne (i32.load8_u (i32.const 60000)) (i32.const 0))
                            (i32.ne (i32.load8_u (i32.const 61440)) (i32.const 1)))
                    (then (i32.const 1))
                    (else (i32.store8 (i32.const 60000) (i32.const 66))
                          (i32.store8 (i32.const 61440) (i32.const 9))
                          (i32.const 0)))"#;
    let bytes = abi_module_with(r#"(memory (export "memory") 1) (data (i32.const 61440) "\01")"#, "", "", body);
    let compiled = CompiledFilter::Wasm(sb.load_wasm(&bytes).unwrap());
    let ev = event(SEED_EVENT);
    for round in 0..5 {
        let mut f = sb.filter(&compiled, "leftovers", sb.limits()).unwrap();
        assert!(!f.eval(&ev).unwrap().matched, "round {round}: a new instance starts from the module's initial memory");
        assert!(f.eval(&ev).unwrap().matched, "round {round}: within one instance the writes stay");
    }

    // The same for JavaScript: globals and prototypes of the campaign before are gone.
    let writer = CompiledFilter::Js(sb.compile_js("e => { globalThis.secret = 1; Object.prototype.polluted = 1; return true }").unwrap());
    let reader = CompiledFilter::Js(sb.compile_js("e => typeof secret === 'undefined' && ({}).polluted === undefined").unwrap());
    for round in 0..5 {
        let mut w = sb.filter(&writer, "writer", sb.limits()).unwrap();
        assert!(w.eval(&ev).unwrap().matched);
        drop(w);
        let mut r = sb.filter(&reader, "reader", sb.limits()).unwrap();
        assert!(r.eval(&ev).unwrap().matched, "round {round}: the previous campaign's state is not visible");
    }
}

#[test]
fn a_filter_that_traps_is_rebuilt_within_the_budget() {
    let sb = pooled(1);
    let compiled = sb.compile_js("e => { if (e.market === 'loop') { while (true) {} } return true }").unwrap();
    let mut f = sb.js_filter(&compiled, "trap", sb.limits()).unwrap();
    let err = f.eval(&event(r#"{"market":"loop"}"#)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fuel);
    assert_eq!(f.rebuilds(), 1);
    assert_eq!(sb.live_instances(), 1, "the trapped instance was dropped before its replacement was built");
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
}

#[test]
fn the_sandboxs_own_instances_do_not_take_filter_slots_and_wait_for_each_other() {
    let sb = pooled(2);
    // More compiles at once than there are reserved slots: they take turns, none fails.
    let results: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RESERVED_INSTANCES + 8)
            .map(|k| {
                let sb = &sb;
                scope.spawn(move || sb.compile_js(&format!("e => e.player_id > {k}")).is_ok())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|ok| *ok));
    assert_eq!(sb.live_instances(), 0, "compiling holds no filter slot");
    let compiled = CompiledFilter::Js(sb.compile_js(SEED_FILTER).unwrap());
    let _a = sb.filter(&compiled, "a", sb.limits()).unwrap();
    let _b = sb.filter(&compiled, "b", sb.limits()).unwrap();
    assert_eq!(sb.live_instances(), 2);
}
