//! Filters of the WebAssembly filter ABI (`filter-sdk/ABI.md`), written here in WAT: validation
//! at submission (each rejection names its cause) and evaluation under the same limits.

use crate::{abi_module as module, event, sandbox, SEED_EVENT};
use rtcrm_sandbox::{ErrorKind, EvalError, MemorySink, Sandbox, SandboxConfig, WasmError};
use std::sync::Arc;

/// Matches when the event bytes contain `loss` (the original filter, in the crudest form).
fn contains_loss() -> Vec<u8> {
    module(
        "",
        r#"(func (export "rtcrm_abi_version") (result i32) (i32.const 1))"#,
        r#"
        (block $done
          (loop $scan
            (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 4)) (local.get $len)))
            (if (i32.eq (i32.load (i32.add (local.get $ptr) (local.get $i))) (i32.const 0x73736f6c))
              (then (return (i32.const 1))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
        (i32.const 0)"#,
    )
}

fn eval_once(bytes: &[u8], json: &str) -> Result<bool, EvalError> {
    let sb = sandbox();
    let compiled = rtcrm_sandbox::CompiledFilter::Wasm(sb.load_wasm(bytes).expect("the module validates"));
    let mut f = sb.filter(&compiled, "wasm", sb.limits())?;
    f.eval(&event(json)).map(|v| v.matched)
}

#[test]
fn a_valid_module_evaluates_the_event_bytes() {
    assert!(eval_once(&contains_loss(), SEED_EVENT).unwrap());
    assert!(!eval_once(&contains_loss(), &SEED_EVENT.replace("loss", "win")).unwrap());
    let compiled = sandbox().load_wasm(&contains_loss()).unwrap();
    assert_eq!(compiled.sha256().len(), 64);
}

#[test]
fn filter_status_codes_map_to_verdicts_and_error_kinds() {
    let negative = module("", "", "(i32.const -7)");
    assert_eq!(eval_once(&negative, SEED_EVENT).unwrap_err(), EvalError::Exception("filter returned error code -7".into()));
    let invalid = module("", "", "(i32.const 2)");
    assert_eq!(eval_once(&invalid, SEED_EVENT).unwrap_err().kind(), ErrorKind::Trap);
    let trap = module("", "", "(unreachable)");
    assert_eq!(eval_once(&trap, SEED_EVENT).unwrap_err().kind(), ErrorKind::Trap);
}

#[test]
fn an_endless_loop_runs_out_of_fuel_and_the_instance_is_rebuilt() {
    let looping = module("", "", "(loop $l (br $l)) (i32.const 1)");
    let sb = sandbox();
    let compiled = rtcrm_sandbox::CompiledFilter::Wasm(sb.load_wasm(&looping).unwrap());
    let mut f = sb.filter(&compiled, "loop", sb.limits()).unwrap();
    assert_eq!(f.eval(&event(SEED_EVENT)).unwrap_err(), EvalError::Fuel { limit: sb.limits().fuel });
    assert_eq!(f.rebuilds(), 1);
    assert!(crate::verdict(crate::SEED_FILTER, SEED_EVENT), "the host keeps evaluating");
}

#[test]
fn growing_memory_past_the_cap_is_a_memory_error() {
    let bomb = module("", "", "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 1)");
    match eval_once(&bomb, SEED_EVENT).unwrap_err() {
        EvalError::Memory { requested, limit } => assert!(requested > limit),
        other => panic!("{other:?}"),
    }
}

fn rejected(bytes: &[u8]) -> WasmError {
    sandbox().load_wasm(bytes).expect_err("the module is rejected")
}

#[test]
fn forbidden_imports_are_rejected_naming_the_import() {
    let abort = module(r#"(import "env" "abort" (func (param i32 i32 i32 i32)))"#, "", "(i32.const 0)");
    assert_eq!(rejected(&abort), WasmError::ForbiddenImport { module: "env".into(), name: "abort".into() });
    let socket = module(r#"(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))"#, "", "(i32.const 0)");
    let err = rejected(&socket);
    assert!(err.to_string().contains("wasi_snapshot_preview1.sock_accept"), "{err}");
    let host = module(r#"(import "rtcrm:host" "event_field" (func (param i32 i32 i32 i32) (result i32)))"#, "", "(i32.const 0)");
    assert!(matches!(rejected(&host), WasmError::ForbiddenImport { .. }));
    let allowed = module(r#"(import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))"#, "", "(i32.const 1)");
    assert!(eval_once(&allowed, SEED_EVENT).unwrap());
}

#[test]
fn missing_or_mistyped_exports_are_rejected_naming_the_export() {
    let no_filter = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "rtcrm_alloc") (param i32) (result i32) (i32.const 8)))"#).unwrap();
    let err = rejected(&no_filter);
    assert!(matches!(err, WasmError::MissingExport { name: "rtcrm_filter", .. }), "{err}");
    assert!(err.to_string().contains("rtcrm_filter"));
    let wrong = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "rtcrm_alloc") (param i32) (result i32) (i32.const 8)) (func (export "rtcrm_filter") (param i32) (result i32) (i32.const 1)))"#).unwrap();
    assert!(matches!(rejected(&wrong), WasmError::WrongExport { name: "rtcrm_filter", .. }));
}

#[test]
fn an_unknown_abi_version_is_rejected_naming_both_versions() {
    let v3 = module("", r#"(func (export "rtcrm_abi_version") (result i32) (i32.const 3))"#, "(i32.const 1)");
    let err = rejected(&v3);
    assert_eq!(err, WasmError::UnsupportedAbiVersion { declared: 3, supported: 2 });
    assert!(err.to_string().contains("version 3") && err.to_string().contains("versions 1 to 2"), "{err}");
}

#[test]
fn oversized_modules_and_non_wasm_bytes_are_rejected() {
    let mut big = contains_loss();
    // A custom section padding the module past the cap.
    let pad = vec![0u8; rtcrm_sandbox::DEFAULT_MAX_MODULE_BYTES];
    big.push(0);
    let mut len = Vec::new();
    leb128(&mut len, (pad.len() + 2) as u64);
    big.extend_from_slice(&len);
    big.extend_from_slice(&[1, b'x']);
    big.extend_from_slice(&pad);
    assert!(matches!(rejected(&big), WasmError::TooLarge { .. }));
    assert!(matches!(rejected(b"function(event) { return true }"), WasmError::Invalid(_)));
    assert!(matches!(rejected(b"\0asm\x01\0\0\0garbage"), WasmError::Invalid(_)));
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn stdout_of_a_wasi_filter_goes_to_the_log_capped_never_to_the_host() {
    let sink = MemorySink::default();
    let sb = Sandbox::new(SandboxConfig { log_sink: Arc::new(sink.clone()), ..SandboxConfig::default() }).unwrap();
    // Writes "hello from wasm\n" to fd 1 three times per call through an iovec at 0x100.
    let chatty = module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 0x100) "\10\02\00\00\10\00\00\00") (data (i32.const 0x210) "hello from wasm\n")"#,
        r#"
        (drop (call $fd_write (i32.const 1) (i32.const 0x100) (i32.const 1) (i32.const 0x300)))
        (drop (call $fd_write (i32.const 1) (i32.const 0x100) (i32.const 1) (i32.const 0x300)))
        (drop (call $fd_write (i32.const 2) (i32.const 0x100) (i32.const 1) (i32.const 0x300)))
        (i32.const 1)"#,
    );
    let compiled = rtcrm_sandbox::CompiledFilter::Wasm(sb.load_wasm(&chatty).unwrap());
    let mut f = sb.filter(&compiled, "chatty", sb.limits()).unwrap();
    for _ in 0..20 {
        assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    }
    drop(f);
    let lines = sink.lines();
    assert_eq!(lines.len(), 20, "capped at the default 20 lines per window");
    assert!(lines.iter().all(|(name, _, text)| name == "chatty" && text == "hello from wasm"));
    assert!(sink.dropped_count() >= 40, "{}", sink.dropped_count());
}
