//! Integration tests of the sandbox: the JS filter API, source forms, compile errors, hostile
//! filters, isolation, and the examples in `examples/`. One test binary (wasmtime links slowly).

mod accessors;
mod cache;
mod compile;
mod compile_caps;
mod deadline;
mod error_texts;
mod event_limits;
mod examples;
mod held_event;
mod host_work;
mod hostile;
mod isolation;
mod limits_config;
mod memory;
mod pool;
mod state;
mod wasi;
mod wasm;

use rtcrm_sandbox::{Event, JsFilter, Sandbox, SandboxConfig};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The original system's example event (its README), byte for byte.
pub const SEED_EVENT: &str = r#"{"schema_version":"2023110110010101","event_id":"7a8d0614-4e8e-4464-b439-36e31441a040","system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":"loss"}}"#;

/// The original system's example filter.
pub const SEED_FILTER: &str = "function(event) { return event.getData().get('result') === 'loss' }";

/// One sandbox for the tests that need no special configuration.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("the sandbox starts"))
}

pub fn event(json: &str) -> Event {
    Event::parse(json.as_bytes().to_vec()).expect("a valid event")
}

pub fn filter(source: &str) -> JsFilter {
    let sandbox = sandbox();
    let compiled = sandbox.compile_js(source).unwrap_or_else(|e| panic!("{source:?} compiles: {e}"));
    sandbox.js_filter(&compiled, "test", sandbox.limits()).expect("the filter instantiates")
}

/// The verdict of `source` on `event_json`, panicking on evaluation errors.
pub fn verdict(source: &str, event_json: &str) -> bool {
    filter(source)
        .eval(&event(event_json))
        .unwrap_or_else(|e| panic!("{source:?} evaluates: {e}"))
        .matched
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A module with the ABI's exports; `body` is `rtcrm_filter`'s body (params $ptr $len).
pub fn abi_module(imports: &str, extra: &str, body: &str) -> Vec<u8> {
    abi_module_with(r#"(memory (export "memory") 1)"#, imports, extra, body)
}

/// [`abi_module`] with its own memory (and table) declarations.
pub fn abi_module_with(memory: &str, imports: &str, extra: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          {imports}
          {memory}
          (global $next (mut i32) (i32.const 1024))
          (func (export "rtcrm_alloc") (param $len i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (local.get $len)))
            ;; grow when needed; reset per call would be an SDK's job
            (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
              (then (drop (memory.grow (i32.const 1)))))
            (local.get $p))
          (func (export "rtcrm_filter") (param $ptr i32) (param $len i32) (result i32) (local $i i32) {body})
          {extra})"#
    ))
    .expect("valid WAT")
}

