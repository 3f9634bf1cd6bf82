//! The host's limits, configured in user units (spec §7), reach every check of the sandbox.

use crate::{abi_module, event, SEED_EVENT};
use rtcrm_sandbox::{CompileError, EvalError, HostLimits, Sandbox, SandboxConfig, UserLimits, WasmError};
use std::time::Duration;

#[test]
fn configured_limits_apply_to_compilation_evaluation_and_modules() {
    let user: UserLimits = serde_json::from_str(
        r#"{"fuel": 1000000, "memory_mb": 8, "deadline_ms": 50, "max_source_bytes": 100, "max_module_bytes": 2048, "state_max_bytes": 4096}"#,
    )
    .unwrap();
    let limits = HostLimits::from_user_units(user).unwrap();
    let config = SandboxConfig::from_limits(&limits);
    assert_eq!(config.state_max_bytes, 4096);
    let sb = Sandbox::new(config).unwrap();
    assert_eq!(sb.limits().memory_bytes, 8 * 1024 * 1024);
    assert_eq!(sb.limits().deadline, Duration::from_millis(50));

    let long = format!("e => {} true", "1 + ".repeat(30));
    assert_eq!(sb.compile_js(&long).unwrap_err(), CompileError::TooLarge { size: long.len(), max: 100 });

    let compiled = sb.compile_js("e => { while (true) {} }").unwrap();
    let mut f = sb.js_filter(&compiled, "loop", sb.limits()).unwrap();
    assert_eq!(f.eval(&event(SEED_EVENT)).unwrap_err(), EvalError::Fuel { limit: 1_000_000 });

    let mut big = abi_module("", "", "(i32.const 1)");
    big.extend_from_slice(&[0, 0x82, 0x10, 1, b'x']);
    big.extend(std::iter::repeat_n(0u8, 2048));
    assert!(matches!(sb.load_wasm(&big), Err(WasmError::TooLarge { max: 2048, .. })));
}
