//! No WASI call a filter can make blocks (spec §7, issue 11): a sleeping `poll_oneoff`, stdin
//! reads and polls return at once, in `rtcrm_filter` and in `_initialize`; `proc_exit` keeps its
//! exit code.

use crate::{abi_module, event, sandbox, SEED_EVENT};
use rtcrm_sandbox::{CompiledFilter, ErrorKind, EvalError, WasmError};
use std::time::{Duration, Instant};

const POLL: &str = r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#;

/// WAT data-string escapes for `bytes`.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A WASI `subscription` (48 bytes): a clock (`tag` 0) or fd (`tag` 1 read, 2 write) one.
fn subscription(userdata: u64, tag: u8, id_or_fd: u32, timeout_ns: u64, flags: u16) -> Vec<u8> {
    let mut s = vec![0u8; 48];
    s[0..8].copy_from_slice(&userdata.to_le_bytes());
    s[8] = tag;
    s[16..20].copy_from_slice(&id_or_fd.to_le_bytes());
    s[24..32].copy_from_slice(&timeout_ns.to_le_bytes());
    s[40..42].copy_from_slice(&flags.to_le_bytes());
    s
}

/// Checks, in WAT, that `poll_oneoff` of `n` subscriptions at 0x4000 wrote `n` events at 0x4800
/// whose first is of `kind` with userdata 0x1234 and error 0, then runs `more` checks; returns 1,
/// or a negative code naming what differed.
fn poll_and_check(n: u32, kind: u32, more: &str) -> String {
    format!(
        r#"
        (if (i32.ne (call $poll (i32.const 0x4000) (i32.const 0x4800) (i32.const {n}) (i32.const 0x4700)) (i32.const 0))
          (then (return (i32.const -2))))
        (if (i32.ne (i32.load (i32.const 0x4700)) (i32.const {n})) (then (return (i32.const -3))))
        (if (i64.ne (i64.load (i32.const 0x4800)) (i64.const 0x1234)) (then (return (i32.const -4))))
        (if (i32.ne (i32.load16_u (i32.const 0x4808)) (i32.const 0)) (then (return (i32.const -5))))
        (if (i32.ne (i32.load8_u (i32.const 0x480a)) (i32.const {kind})) (then (return (i32.const -6))))
        {more}
        (i32.const 1)"#
    )
}

fn eval_module(bytes: &[u8]) -> Result<bool, EvalError> {
    let sb = sandbox();
    let compiled = CompiledFilter::Wasm(sb.load_wasm(bytes).expect("the module validates"));
    let mut f = sb.filter(&compiled, "wasi", sb.limits())?;
    f.eval(&event(SEED_EVENT)).map(|v| v.matched)
}

#[test]
fn a_poll_oneoff_that_asks_to_sleep_ten_seconds_returns_at_once() {
    let ten_seconds = 10_000_000_000;
    let sub = subscription(0x1234, 0, 1, ten_seconds, 0);
    let m = abi_module(POLL, &format!(r#"(data (i32.const 0x4000) "{}")"#, escaped(&sub)), &poll_and_check(1, 0, ""));
    let started = Instant::now();
    assert_eq!(eval_module(&m), Ok(true), "the clock event is reported as fired, with its userdata");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());

    // An absolute timeout an hour ahead on the realtime clock, and a second subscription: same.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut subs = subscription(0x1234, 0, 0, now + 3_600_000_000_000, 1);
    subs.extend(subscription(7, 0, 1, u64::MAX, 0));
    let m = abi_module(POLL, &format!(r#"(data (i32.const 0x4000) "{}")"#, escaped(&subs)), &poll_and_check(2, 0, ""));
    let started = Instant::now();
    assert_eq!(eval_module(&m), Ok(true));
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[test]
fn a_sleeping_initialize_does_not_park_the_campaign_loader() {
    // `_initialize` sleeps an hour: submission answers at once instead of parking its thread.
    let sub = subscription(0x1234, 0, 1, 3_600_000_000_000, 0);
    let extra = format!(
        r#"(data (i32.const 0x4000) "{}")
           (func (export "_initialize") (drop (call $poll (i32.const 0x4000) (i32.const 0x4800) (i32.const 1) (i32.const 0x4700))))"#,
        escaped(&sub)
    );
    let m = abi_module(POLL, &extra, "(i32.const 1)");
    let started = Instant::now();
    let compiled = sandbox().load_wasm(&m).expect("validates");
    assert!(started.elapsed() < Duration::from_millis(2000), "{:?}", started.elapsed());
    let mut f = sandbox().filter(&CompiledFilter::Wasm(compiled), "init", sandbox().limits()).unwrap();
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
}

#[test]
fn stdin_is_at_end_of_file_at_once_both_read_and_polled() {
    let read = r#"(import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))"#;
    // iovec at 0x3000 = {0x3020, 100}; nread at 0x3010 preset to 99 (the event is at 0x400).
    let extra = r#"(data (i32.const 0x3000) "\20\30\00\00\64\00\00\00") (data (i32.const 0x3010) "\63\00\00\00")"#;
    let body = r#"
        (if (i32.ne (call $read (i32.const 0) (i32.const 0x3000) (i32.const 1) (i32.const 0x3010)) (i32.const 0))
          (then (return (i32.const -2))))
        (if (i32.ne (i32.load (i32.const 0x3010)) (i32.const 0)) (then (return (i32.const -3))))
        ;; fd 5 does not exist: badf (8)
        (if (i32.ne (call $read (i32.const 5) (i32.const 0x3000) (i32.const 1) (i32.const 0x3010)) (i32.const 8))
          (then (return (i32.const -4))))
        (i32.const 1)"#;
    let started = Instant::now();
    assert_eq!(eval_module(&abi_module(read, extra, body)), Ok(true));

    // poll_oneoff on stdin: readable (type 1) at once, hung up (end of file).
    let sub = subscription(0x1234, 1, 0, 0, 0);
    let check = poll_and_check(1, 1, "(if (i32.ne (i32.load16_u (i32.const 0x4818)) (i32.const 1)) (then (return (i32.const -7))))");
    let m = abi_module(POLL, &format!(r#"(data (i32.const 0x4000) "{}")"#, escaped(&sub)), &check);
    assert_eq!(eval_module(&m), Ok(true));
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[test]
fn proc_exit_keeps_its_exit_code() {
    let exit = r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#;
    let m = abi_module(exit, "", "(call $exit (i32.const 3)) (i32.const 1)");
    let err = eval_module(&m).unwrap_err();
    assert_eq!(err, EvalError::Exit { code: 3 });
    assert_eq!(err.kind(), ErrorKind::Trap);
    assert_eq!(err.to_string(), "the filter exited (WASI proc_exit) with code 3");

    // In `_initialize`: the submission says so, not a backtrace.
    let m = abi_module(exit, r#"(func (export "_initialize") (call $exit (i32.const 42)))"#, "(i32.const 1)");
    assert_eq!(
        sandbox().load_wasm(&m).unwrap_err(),
        WasmError::Init("trap: the filter exited (WASI proc_exit) with code 42".into())
    );
}
