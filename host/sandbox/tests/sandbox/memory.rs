//! Memory is capped per instance, across all memories and tables (issue 11): proposals the ABI does
//! not need are rejected at submission by name, and the one memory plus the table share one cap,
//! initial sizes included.

use crate::{abi_module_with, event, sandbox, SEED_EVENT};
use rtcrm_sandbox::{CompiledFilter, EvalError, WasmError};
use std::time::{Duration, Instant};

const CAP: usize = 16 * 1024 * 1024;

fn rejected_feature(wat: &str) -> (String, String) {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    match sandbox().load_wasm(&bytes) {
        Err(err @ WasmError::UnsupportedFeature { .. }) => {
            let text = err.to_string();
            let WasmError::UnsupportedFeature { feature, .. } = err else { unreachable!() };
            (feature, text)
        }
        other => panic!("expected an unsupported feature, got {other:?}"),
    }
}

#[test]
fn forty_memories_of_16_mib_are_rejected_at_submission_naming_multi_memory() {
    let memories: String = (0..39).map(|_| "(memory 256)").collect();
    let wat = format!(
        r#"(module (memory (export "memory") 256) {memories}
             (func (export "rtcrm_alloc") (param i32) (result i32) (i32.const 1024))
             (func (export "rtcrm_filter") (param i32 i32) (result i32) (i32.const 1)))"#
    );
    let started = Instant::now();
    let (feature, text) = rejected_feature(&wat);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(feature, "multi-memory");
    assert!(
        text.starts_with("the module uses the WebAssembly multi-memory proposal, which the filter ABI (versions 1 and 2) does not allow"),
        "{text}"
    );
}

#[test]
fn other_proposals_outside_the_abi_are_rejected_by_name() {
    let filter = r#"(func (export "rtcrm_alloc") (param i32) (result i32) (i32.const 1024))
                    (func (export "rtcrm_filter") (param i32 i32) (result i32) (i32.const 1))"#;
    let cases = [
        ("threads", format!(r#"(module (memory (export "memory") 1 1 shared) {filter})"#)),
        ("memory64", format!(r#"(module (memory (export "memory") i64 1) {filter})"#)),
        ("exception-handling", format!(r#"(module (memory (export "memory") 1) (tag $t) (func (throw $t)) {filter})"#)),
        ("tail-call", format!(r#"(module (memory (export "memory") 1) (func $f (return_call $f)) {filter})"#)),
        (
            "extended-const",
            format!(r#"(module (memory (export "memory") 1) (global i32 (i32.add (i32.const 1) (i32.const 2))) {filter})"#),
        ),
        (
            "relaxed-simd",
            format!(
                r#"(module (memory (export "memory") 1)
                     (func (result v128) (i8x16.relaxed_swizzle (v128.const i64x2 0 0) (v128.const i64x2 0 0))) {filter})"#
            ),
        ),
    ];
    for (expected, wat) in cases {
        let (feature, text) = rejected_feature(&wat);
        assert_eq!(feature, expected, "{text}");
    }
    let (feature, _) = rejected_feature("(component)");
    assert_eq!(feature, "component-model");
    let (feature, _) = rejected_feature(&format!(r#"(module (memory (export "memory") 1) (type (struct (field i32))) {filter})"#));
    assert!(feature.contains("gc"), "{feature}");
}

fn eval(bytes: &[u8]) -> Result<bool, EvalError> {
    let sb = sandbox();
    let compiled = CompiledFilter::Wasm(sb.load_wasm(bytes).map_err(|e| EvalError::Trap(e.to_string()))?);
    let mut f = sb.filter(&compiled, "memory", sb.limits())?;
    f.eval(&event(SEED_EVENT)).map(|v| v.matched)
}

#[test]
fn a_memory_and_a_table_share_one_cap_at_instantiation() {
    // 250 pages (16,384,000 bytes) fit the 16 MiB cap, and so do 60,000 table elements
    // (480,000 bytes), but not both: the instance is refused at submission.
    let module = |table: u32| {
        abi_module_with(&format!(r#"(memory (export "memory") 250) (table {table} funcref)"#), "", "", "(i32.const 1)")
    };
    assert_eq!(eval(&module(10_000)), Ok(true), "16,464,000 bytes in all: within the cap");
    let err = sandbox().load_wasm(&module(60_000)).unwrap_err();
    assert_eq!(
        err,
        WasmError::Init(format!(
            "memory: the filter asked for {} bytes of memory, over its cap of {CAP} bytes",
            250 * 65536 + 60_000 * 8
        ))
    );
}

#[test]
fn growing_memory_then_the_table_past_the_shared_cap_is_a_memory_error() {
    // 255 pages (16,711,680 bytes), then 10,000 table elements (80,000 bytes): over the cap.
    let m = abi_module_with(
        r#"(memory (export "memory") 1) (table $t 0 funcref)"#,
        "",
        "",
        r#"(if (i32.eq (memory.grow (i32.const 254)) (i32.const -1)) (then (return (i32.const -2))))
           (drop (table.grow $t (ref.null func) (i32.const 10000)))
           (i32.const 1)"#,
    );
    assert_eq!(eval(&m), Err(EvalError::Memory { requested: 255 * 65536 + 80_000, limit: CAP }));

    // Table elements are capped in number too (100,000 in all), well below the byte cap.
    let m = abi_module_with(
        r#"(memory (export "memory") 1) (table $t 0 funcref)"#,
        "",
        "",
        r#"(drop (table.grow $t (ref.null func) (i32.const 150000))) (i32.const 1)"#,
    );
    assert_eq!(eval(&m), Err(EvalError::Memory { requested: 65536 + 150_000 * 8, limit: CAP }));

    // Within the cap, growth works and a later evaluation still runs.
    let m = abi_module_with(
        r#"(memory (export "memory") 1) (table $t 0 funcref)"#,
        "",
        "",
        r#"(if (i32.eq (table.grow $t (ref.null func) (i32.const 100)) (i32.const -1)) (then (return (i32.const -2))))
           (i32.const 1)"#,
    );
    assert_eq!(eval(&m), Ok(true));
}
