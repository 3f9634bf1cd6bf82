//! Per-player state (spec §12, issue 12 item 4): `Filter::eval_with_state` for JavaScript filters
//! (`filter(event, state)`) and Wasm modules of ABI version 2 (`filter-sdk/ABI.md` §9). A small
//! in-memory store here plays the host's part: it keeps the returned state when the evaluation
//! succeeds and the old one when it fails.

use crate::{abi_module, event, sandbox, SEED_EVENT, SEED_FILTER};
use rtcrm_sandbox::{
    CompiledFilter, ErrorKind, EvalError, Filter, Limits, Sandbox, SandboxConfig, WasmError, HOST_BYTE_FUEL,
};
use std::collections::HashMap;

const MAX: usize = 1024;

fn js(source: &str) -> Filter {
    let sb = sandbox();
    let compiled = CompiledFilter::Js(sb.compile_js(source).unwrap_or_else(|e| panic!("{source}: {e}")));
    sb.filter(&compiled, "state", sb.limits()).unwrap()
}

/// What the host does with `eval_with_state`: the new state replaces the stored one only when
/// the evaluation succeeded.
#[derive(Default)]
struct Store(HashMap<String, String>);

impl Store {
    fn eval(&mut self, f: &mut Filter, json: &str) -> Result<bool, EvalError> {
        let e = event(json);
        let player = serde_json::from_str::<serde_json::Value>(json).unwrap()["player_id"].to_string();
        let (verdict, state) = f.eval_with_state(&e, self.0.get(&player).map(String::as_str), MAX)?;
        self.0.insert(player, state);
        Ok(verdict.matched)
    }

    fn get(&self, player: u32) -> Option<&str> {
        self.0.get(&player.to_string()).map(String::as_str)
    }
}

fn purchase(player: u32) -> String {
    format!(r#"{{"game":"foe","event_name":"purchase","player_id":{player},"data":{{"amount":5}}}}"#)
}

fn fight(player: u32) -> String {
    format!(r#"{{"game":"foe","event_name":"fight","player_id":{player},"data":{{"result":"loss"}}}}"#)
}

const THIRD_PURCHASE: &str = "(event, state) => {
    if (event.event_name !== 'purchase') return false;
    state.purchases = (state.purchases || 0) + 1;
    return state.purchases === 3;
}";

#[test]
fn a_filter_counting_a_players_purchases_triggers_on_the_third() {
    let mut f = js(THIRD_PURCHASE);
    let mut store = Store::default();
    // Two players interleaved, with events that do not count in between.
    let sequence = [(1, true), (2, true), (1, false), (1, true), (2, true), (1, true), (1, true), (2, true), (2, true)];
    let mut triggers = Vec::new();
    for (i, (player, is_purchase)) in sequence.into_iter().enumerate() {
        let json = if is_purchase { purchase(player) } else { fight(player) };
        if store.eval(&mut f, &json).unwrap() {
            triggers.push((i, player));
        }
    }
    // Player 1's purchases are events 0, 3, 5, 6; player 2's are 1, 4, 7, 8.
    assert_eq!(triggers, [(5, 1), (7, 2)]);
    assert_eq!(store.get(1), Some(r#"{"purchases":4}"#));
    assert_eq!(store.get(2), Some(r#"{"purchases":4}"#));
}

#[test]
fn a_throwing_evaluation_returns_no_state_so_the_stored_one_stays() {
    let mut f = js("(event, state) => {
        state.n = (state.n || 0) + 1;
        if (event.data.boom) throw new Error('boom');
        return state.n === 2;
    }");
    let mut store = Store::default();
    let ok = r#"{"player_id":7,"data":{}}"#;
    let boom = r#"{"player_id":7,"data":{"boom":true}}"#;
    assert!(!store.eval(&mut f, ok).unwrap());
    assert_eq!(store.get(7), Some(r#"{"n":1}"#));
    let err = f.eval_with_state(&event(boom), store.get(7), MAX).unwrap_err();
    assert_eq!(err, EvalError::Exception("Error: boom".into()));
    assert_eq!(store.eval(&mut f, boom).unwrap_err().kind(), ErrorKind::Exception);
    assert_eq!(store.get(7), Some(r#"{"n":1}"#), "the host keeps the state of before the throws");
    // The next call starts from the stored state, not from what the throwing calls left.
    assert!(store.eval(&mut f, ok).unwrap());
    assert_eq!(store.get(7), Some(r#"{"n":2}"#));
    assert_eq!(f.rebuilds(), 0, "a throw keeps the instance");
}

#[test]
fn a_state_over_max_bytes_fails_with_kind_state_size_and_max() {
    let mut f = js("(event, state) => { state.pad = 'x'.repeat(100); return true }");
    // `{"pad":"` + 100 × x + `"}`.
    let err = f.eval_with_state(&event(SEED_EVENT), None, 64).unwrap_err();
    assert_eq!(err, EvalError::State { size: 110, max: 64 });
    assert_eq!(err.kind(), ErrorKind::State);
    assert_eq!(err.kind().as_str(), "state");
    assert!(ErrorKind::ALL.contains(&ErrorKind::State));
    assert!(err.to_string().contains("110 bytes") && err.to_string().contains("64 bytes"), "{err}");
    // Exactly at the limit is kept.
    let (verdict, state) = f.eval_with_state(&event(SEED_EVENT), None, 110).unwrap();
    assert!(verdict.matched);
    assert_eq!(state.len(), 110);
    // The host's `state_max_bytes` (1 KiB by default) caps what a caller asks for.
    let mut big = js("(event, state) => { state.pad = 'x'.repeat(2000); return true }");
    assert_eq!(
        big.eval_with_state(&event(SEED_EVENT), None, 1 << 20).unwrap_err(),
        EvalError::State { size: 2010, max: SandboxConfig::default().state_max_bytes }
    );
    assert_eq!(f.rebuilds() + big.rebuilds(), 0, "a state error keeps the instance");
}

#[test]
fn a_state_that_json_cannot_keep_fails_with_kind_state_and_says_why() {
    for (body, expected) in [
        ("state.f = () => 1", "`f` in the state is a function"),
        ("state.self = state", "circular"),
        ("state.big = 10n", "`big` in the state is a BigInt"),
        ("state.seen = new Set([1])", "`seen` in the state is a Set"),
        ("state.m = new Map()", "`m` in the state is a Map"),
        ("state.list = [1, Symbol('s')]", "`1` in the state is a symbol"),
        ("class Counter {}; state.c = new Counter()", "`c` in the state is an instance of a class"),
        ("state.deep = { inner: { re: /x/ } }", "`re` in the state is a RegExp"),
        ("state.toJSON = () => [1, 2]", "must be a JSON object"),
        ("state.toJSON = () => undefined", "serialises to nothing"),
    ] {
        let mut f = js(&format!("(event, state) => {{ {body}; return true }}"));
        let err = f.eval_with_state(&event(SEED_EVENT), None, MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::State, "{body}: {err}");
        assert!(matches!(err, EvalError::StateInvalid(_)), "{body}: {err:?}");
        assert!(err.to_string().contains(expected), "{body}: {err}");
        assert_eq!(f.rebuilds(), 0, "{body}");
    }
    // What JSON keeps, as JSON keeps it: plain objects (also without prototype), arrays, a Date
    // as its string, undefined dropped, non-finite numbers as null.
    let mut f = js("(event, state) => {
        state.o = Object.assign(Object.create(null), { a: [1, 'two', true, null] });
        state.when = new Date(0);
        state.gone = undefined;
        state.inf = Infinity;
        return true;
    }");
    let (_, state) = f.eval_with_state(&event(SEED_EVENT), None, MAX).unwrap();
    assert_eq!(state, r#"{"o":{"a":[1,"two",true,null]},"when":"1970-01-01T00:00:00.000Z","inf":null}"#);
}

#[test]
fn the_hosts_work_on_a_large_state_is_charged_to_the_filters_fuel() {
    let sb = Sandbox::new(SandboxConfig { state_max_bytes: 1 << 20, ..SandboxConfig::default() }).unwrap();
    let compiled = CompiledFilter::Js(sb.compile_js("(event, state) => true").unwrap());
    let mut f = sb.filter(&compiled, "large", sb.limits()).unwrap();
    let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(50_000));
    let fuel = |f: &mut Filter, state: Option<&str>| {
        let (verdict, kept) = f.eval_with_state(&event(SEED_EVENT), state, 1 << 20).unwrap();
        assert_eq!(kept, state.unwrap_or("{}"));
        verdict.fuel_used
    };
    let (small, big) = (fuel(&mut f, None), fuel(&mut f, Some(&large)));
    // In: the copy (1 × its bytes); out: the read and the check (2 × its bytes); plus QuickJS
    // parsing and serialising it inside the instance.
    let host = 3 * large.len() as u64 * HOST_BYTE_FUEL;
    assert!(big - small > host, "{{}}: {small} fuel, 50 KB state: {big} fuel, host work alone {host}");
    // Under a budget below the copy's cost the evaluation fails as `fuel`, before any parsing.
    let tight = Limits { fuel: large.len() as u64, ..sb.limits() };
    let mut f = sb.filter(&compiled, "tight", tight).unwrap();
    assert_eq!(f.eval_with_state(&event(SEED_EVENT), Some(&large), 1 << 20).unwrap_err(), EvalError::Fuel { limit: tight.fuel });
    // A filter that makes a large state pays for it too, and stays within its budget.
    let mut grow = sb.filter(&CompiledFilter::Js(sb.compile_js("(e, s) => { s.pad = 'y'.repeat(500000); return true }").unwrap()), "grow", tight).unwrap();
    assert_eq!(grow.eval_with_state(&event(SEED_EVENT), None, 1 << 20).unwrap_err().kind(), ErrorKind::Fuel);
}

#[test]
fn filters_of_one_argument_are_unaffected() {
    let mut f = js(SEED_FILTER);
    let (verdict, state) = f.eval_with_state(&event(SEED_EVENT), Some(r#"{"a":1}"#), MAX).unwrap();
    assert!(verdict.matched);
    assert_eq!(state, r#"{"a":1}"#, "an untouched state is kept as it was");
    let (verdict, state) = f.eval_with_state(&event(&SEED_EVENT.replace("loss", "win")), None, MAX).unwrap();
    assert!(!verdict.matched);
    assert_eq!(state, "{}");
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    // Plain `eval` passes no state: the second argument is undefined, as before.
    assert!(js("(e, s) => s === undefined").eval(&event(SEED_EVENT)).unwrap().matched);
}

#[test]
fn each_call_gets_a_fresh_state_object_never_another_players() {
    // A filter that keeps the state object of the previous call and writes to it later: what
    // it writes never reaches any stored state.
    let mut f = js("let kept; (event, state) => {
        if (kept) kept.leaked = true;
        kept = state;
        state.n = (state.n || 0) + 1;
        Promise.resolve().then(() => { state.later = state.n });
        return false;
    }");
    let mut store = Store::default();
    for player in [1, 2, 1, 2, 3] {
        store.eval(&mut f, &purchase(player)).unwrap();
    }
    assert_eq!(store.get(1), Some(r#"{"n":2,"later":2}"#));
    assert_eq!(store.get(2), Some(r#"{"n":2,"later":2}"#));
    assert_eq!(store.get(3), Some(r#"{"n":1,"later":1}"#));
}

#[test]
fn a_stored_state_that_is_not_a_json_object_is_refused() {
    let mut f = js(THIRD_PURCHASE);
    for bad in ["[1]", "{", "7"] {
        let err = f.eval_with_state(&event(&purchase(1)), Some(bad), MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::State, "{bad}: {err}");
        assert!(err.to_string().contains("stored state"), "{bad}: {err}");
    }
}

// ---- WebAssembly, ABI version 2 ---------------------------------------------------------------

/// A version-2 module that counts calls in its state `{"n":D}` (one digit; `{}` counts as 0),
/// matching when the count reaches 3. Its new state is written at 0x2000. `extra` adds exports.
fn counter_module(version: i32, exports: &str) -> Vec<u8> {
    let body = r#"(i32.const 0)"#; // rtcrm_filter (version 1's entry) never matches
    abi_module(
        "",
        &format!(
            r#"(func (export "rtcrm_abi_version") (result i32) (i32.const {version}))
            (data (i32.const 0x2000) "{{\"n\":0}}")
            {exports}"#
        ),
        body,
    )
}

const COUNTER_EXPORTS: &str = r#"
    (func (export "rtcrm_filter_state") (param $e i32) (param $el i32) (param $s i32) (param $sl i32) (result i32)
      (local $d i32)
      ;; the digit: byte 5 of `{"n":D}`, or '0' for `{}`
      (local.set $d (i32.const 48))
      (if (i32.eq (local.get $sl) (i32.const 7)) (then (local.set $d (i32.load8_u offset=5 (local.get $s)))))
      (local.set $d (i32.add (local.get $d) (i32.const 1)))
      (i32.store8 offset=5 (i32.const 0x2000) (local.get $d))
      (i32.eq (local.get $d) (i32.const 51)))
    (func (export "rtcrm_state_ptr") (result i32) (i32.const 0x2000))
    (func (export "rtcrm_state_len") (result i32) (i32.const 7))"#;

fn wasm(bytes: &[u8]) -> (CompiledFilter, Filter) {
    let sb = sandbox();
    let compiled = CompiledFilter::Wasm(sb.load_wasm(bytes).unwrap_or_else(|e| panic!("the module validates: {e}")));
    let f = sb.filter(&compiled, "wasm-state", sb.limits()).unwrap();
    (compiled, f)
}

#[test]
fn a_version_2_module_round_trips_its_state() {
    let (compiled, mut f) = wasm(&counter_module(2, COUNTER_EXPORTS));
    assert!(compiled.supports_state() && f.supports_state());
    assert_eq!(compiled.check_state_support(), Ok(()));
    let mut store = Store::default();
    let verdicts: Vec<bool> = (0..4).map(|_| store.eval(&mut f, &purchase(5)).unwrap()).collect();
    assert_eq!(verdicts, [false, false, true, false]);
    assert_eq!(store.get(5), Some(r#"{"n":4}"#));
    // Without state (a campaign without `state`), version 1's `rtcrm_filter` is called.
    assert!(!f.eval(&event(SEED_EVENT)).unwrap().matched);
}

#[test]
fn a_version_2_module_may_leave_its_state_unchanged() {
    let unchanged = r#"
        (func (export "rtcrm_filter_state") (param i32 i32 i32 i32) (result i32) (i32.const 1))
        (func (export "rtcrm_state_ptr") (result i32) (i32.const 0))
        (func (export "rtcrm_state_len") (result i32) (i32.const -1))"#;
    let (_, mut f) = wasm(&counter_module(2, unchanged));
    let (verdict, state) = f.eval_with_state(&event(SEED_EVENT), Some(r#"{"kept":[1,2]}"#), MAX).unwrap();
    assert!(verdict.matched);
    assert_eq!(state, r#"{"kept":[1,2]}"#);
    assert_eq!(f.eval_with_state(&event(SEED_EVENT), None, MAX).unwrap().1, "{}");
}

#[test]
fn what_a_version_2_module_leaves_is_checked() {
    let with = |ptr: &str, len: &str, data: &str| {
        counter_module(
            2,
            &format!(
                r#"(data (i32.const 0x3000) "{data}")
                (func (export "rtcrm_filter_state") (param i32 i32 i32 i32) (result i32) (i32.const 1))
                (func (export "rtcrm_state_ptr") (result i32) (i32.const {ptr}))
                (func (export "rtcrm_state_len") (result i32) (i32.const {len}))"#
            ),
        )
    };
    let outcome = |bytes: Vec<u8>| wasm(&bytes).1.eval_with_state(&event(SEED_EVENT), None, 16);
    // Pretty JSON is made compact.
    assert_eq!(outcome(with("0x3000", "11", r#"{ \"a\" : 1 }  "#)).unwrap().1, r#"{"a":1}"#);
    assert_eq!(outcome(with("0x3000", "17", "")).unwrap_err(), EvalError::State { size: 17, max: 16 });
    for (data, len) in [("[1,2]", "5"), (r#"{\"a\":"#, "5"), ("\\ff\\fe", "2")] {
        let err = outcome(with("0x3000", len, data)).unwrap_err();
        assert!(matches!(err, EvalError::StateInvalid(_)), "{data}: {err:?}");
    }
    let err = outcome(with("0", "-7", "")).unwrap_err();
    assert!(matches!(&err, EvalError::StateInvalid(m) if m.contains("-7")), "{err:?}");
    // Past the end of memory (one page): a trap, and the instance is rebuilt.
    let sb = sandbox();
    let compiled = CompiledFilter::Wasm(sb.load_wasm(&with("65530", "10", "")).unwrap());
    let mut f = sb.filter(&compiled, "oob", sb.limits()).unwrap();
    assert_eq!(f.eval_with_state(&event(SEED_EVENT), None, 16).unwrap_err().kind(), ErrorKind::Trap);
    assert_eq!(f.rebuilds(), 1);
    // A negative status is the filter's error: no state.
    let failing = counter_module(
        2,
        r#"(func (export "rtcrm_filter_state") (param i32 i32 i32 i32) (result i32) (i32.const -2))
        (func (export "rtcrm_state_ptr") (result i32) (i32.const 0x2000))
        (func (export "rtcrm_state_len") (result i32) (i32.const 7))"#,
    );
    assert_eq!(outcome(failing).unwrap_err(), EvalError::Exception("filter returned error code -2".into()));
}

#[test]
fn a_stored_state_that_is_not_a_json_object_is_refused_before_a_version_2_module_runs() {
    let (_, mut f) = wasm(&counter_module(2, COUNTER_EXPORTS));
    for bad in ["[1]", "{", "7"] {
        let err = f.eval_with_state(&event(&purchase(1)), Some(bad), MAX).unwrap_err();
        assert!(matches!(err, EvalError::StateInvalid(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains("the stored state is not a JSON object"), "{bad}: {err}");
    }
    assert_eq!(f.rebuilds(), 0, "the module never ran");
}

#[test]
fn the_host_charges_a_version_2_modules_state_copies() {
    let sb = Sandbox::new(SandboxConfig { state_max_bytes: 1 << 20, ..SandboxConfig::default() }).unwrap();
    let unchanged = r#"
        (func (export "rtcrm_filter_state") (param i32 i32 i32 i32) (result i32) (i32.const 1))
        (func (export "rtcrm_state_ptr") (result i32) (i32.const 0))
        (func (export "rtcrm_state_len") (result i32) (i32.const -1))"#;
    let compiled = CompiledFilter::Wasm(sb.load_wasm(&counter_module(2, unchanged)).unwrap());
    let mut f = sb.filter(&compiled, "copies", sb.limits()).unwrap();
    // Within the one page the test module's allocator grows per call.
    let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(30_000));
    let small = f.eval_with_state(&event(SEED_EVENT), None, 1 << 20).unwrap().0.fuel_used;
    let big = f.eval_with_state(&event(SEED_EVENT), Some(&large), 1 << 20).unwrap().0.fuel_used;
    assert_eq!(big - small, (large.len() - 2) as u64 * HOST_BYTE_FUEL, "the copy in, per byte");
}

#[test]
fn a_version_1_module_with_state_is_a_typed_error() {
    let (compiled, mut f) = wasm(&abi_module("", "", "(i32.const 1)"));
    assert!(!compiled.supports_state() && !f.supports_state());
    let err = compiled.check_state_support().unwrap_err();
    assert_eq!(err, WasmError::StateNeedsAbiVersion2 { declared: 1 });
    assert!(err.to_string().contains("rtcrm_filter_state") && err.to_string().contains("version 1"), "{err}");
    let err = f.eval_with_state(&event(SEED_EVENT), None, MAX).unwrap_err();
    assert_eq!(err, EvalError::StateUnsupported { abi_version: 1 });
    assert_eq!(err.kind(), ErrorKind::State);
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched, "and without state it runs as before");
    assert_eq!(CompiledFilter::Js(sandbox().compile_js(SEED_FILTER).unwrap()).check_state_support(), Ok(()));
}

#[test]
fn version_2_exports_are_validated_at_submission_naming_what_is_wrong() {
    let rejected = |bytes: Vec<u8>| sandbox().load_wasm(&bytes).expect_err("rejected");
    // Version 2 without one of its exports.
    let partial = r#"(func (export "rtcrm_filter_state") (param i32 i32 i32 i32) (result i32) (i32.const 1))
        (func (export "rtcrm_state_ptr") (result i32) (i32.const 0))"#;
    let err = rejected(counter_module(2, partial));
    assert!(matches!(err, WasmError::MissingExport { name: "rtcrm_state_len", .. }), "{err}");
    assert!(err.to_string().contains("rtcrm_state_len") && err.to_string().contains("version 2"), "{err}");
    // State exports under version 1 (declared, or no rtcrm_abi_version at all).
    let err = rejected(counter_module(1, COUNTER_EXPORTS));
    assert_eq!(err, WasmError::StateExportWithoutVersion2 { name: "rtcrm_filter_state", declared: 1 });
    let undeclared = abi_module("", r#"(func (export "rtcrm_state_len") (result i32) (i32.const 7))"#, "(i32.const 1)");
    assert_eq!(rejected(undeclared), WasmError::StateExportWithoutVersion2 { name: "rtcrm_state_len", declared: 1 });
    // A mistyped state export.
    let wrong = r#"(func (export "rtcrm_filter_state") (param i32 i32) (result i32) (i32.const 1))
        (func (export "rtcrm_state_ptr") (result i32) (i32.const 0))
        (func (export "rtcrm_state_len") (result i32) (i32.const 0))"#;
    assert!(matches!(rejected(counter_module(2, wrong)), WasmError::WrongExport { name: "rtcrm_filter_state", .. }));
    // A version this host does not implement.
    assert_eq!(rejected(counter_module(3, COUNTER_EXPORTS)), WasmError::UnsupportedAbiVersion { declared: 3, supported: 2 });
}
