//! Every error text a filter controls is cut to 1 KiB, with a marker giving its full length, in the
//! sandbox, before it reaches a log, a metric, a status message or the API (issue 11).

use crate::{abi_module, event, filter, sandbox, SEED_EVENT};
use rtcrm_sandbox::{CompileError, EvalError, LogCaps, MemorySink, Sandbox, SandboxConfig, WasmError, MAX_ERROR_TEXT_BYTES};
use std::sync::Arc;

const MARKER_MAX: usize = 48;

#[test]
fn a_256_kib_thrown_message_is_cut_to_1_kib_with_a_marker() {
    // 'x' doubled 18 times: 256 KiB (cheaper in fuel than `repeat`).
    let mut f = filter("e => { let s = 'x'; for (let i = 0; i < 18; i++) s += s; throw new Error(s) }");
    let err = f.eval(&event(SEED_EVENT)).unwrap_err();
    let EvalError::Exception(message) = err else { panic!("an exception: {err:?}") };
    let total = "Error: ".len() + 256 * 1024;
    assert_eq!(message, format!("Error: {}… [truncated, {total} bytes in all]", "x".repeat(MAX_ERROR_TEXT_BYTES - "Error: ".len())));
    assert!(message.len() <= MAX_ERROR_TEXT_BYTES + MARKER_MAX);

    // A thrown string of multi-byte characters is cut at a character boundary.
    let mut f = filter("e => { let s = 'é'; for (let i = 0; i < 11; i++) s += s; throw s }");
    let err = f.eval(&event(SEED_EVENT)).unwrap_err();
    let EvalError::Exception(message) = err else { panic!("an exception: {err:?}") };
    assert!(message.starts_with("\"ééé"), "{}", &message[..10]);
    assert_eq!(message.len(), 1023 + "… [truncated, 4098 bytes in all]".len(), "cut at 1023: é is two bytes");
    assert!(message.ends_with("… [truncated, 4098 bytes in all]"), "{}", &message[message.len() - 60..]);
}

#[test]
fn compile_errors_and_rejections_are_bounded_too() {
    let err = sandbox().compile_js("(() => { let s = 'y'; for (let i = 0; i < 18; i++) s += s; throw new Error(s) })()").unwrap_err();
    let CompileError::TopLevelThrew { message } = &err else { panic!("{err:?}") };
    assert!(message.len() <= MAX_ERROR_TEXT_BYTES + MARKER_MAX, "{}", message.len());
    assert!(message.ends_with("… [truncated, 262151 bytes in all]"), "{}", &message[message.len() - 60..]);

    // An import name of 50 KiB: the rejection quotes at most 1 KiB of it.
    let name = "n".repeat(50 * 1024);
    let m = abi_module(&format!(r#"(import "env" "{name}" (func))"#), "", "(i32.const 1)");
    let err = sandbox().load_wasm(&m).unwrap_err();
    let WasmError::ForbiddenImport { name: quoted, .. } = &err else { panic!("{err:?}") };
    assert!(quoted.ends_with("… [truncated, 51200 bytes in all]"), "{}", &quoted[quoted.len() - 60..]);
    assert!(err.to_string().len() < 2 * MAX_ERROR_TEXT_BYTES, "{}", err.to_string().len());
}

#[test]
fn traps_are_reported_by_type_not_by_backtrace() {
    let m = abi_module("", "", "(unreachable)");
    let sb = sandbox();
    let compiled = rtcrm_sandbox::CompiledFilter::Wasm(sb.load_wasm(&m).unwrap());
    let mut f = sb.filter(&compiled, "trap", sb.limits()).unwrap();
    assert_eq!(f.eval(&event(SEED_EVENT)).unwrap_err(), EvalError::Trap("wasm trap: wasm `unreachable` instruction executed".into()));
}

#[test]
fn log_lines_are_cut_at_the_line_cap() {
    let sink = MemorySink::default();
    let sb = Sandbox::new(SandboxConfig { log_sink: Arc::new(sink.clone()), log_caps: LogCaps::default(), ..SandboxConfig::default() })
        .unwrap();
    let compiled = sb.compile_js("e => { let s = 'z'; for (let i = 0; i < 18; i++) s += s; console.log(s); return true }").unwrap();
    let mut f = sb.js_filter(&compiled, "chatty", sb.limits()).unwrap();
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    drop(f);
    let lines = sink.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].2, format!("{}…", "z".repeat(512)));
}

