//! rtcrm's filter sandbox: campaign filters (untrusted JavaScript compiled to WebAssembly) run
//! in wasmtime under fuel, memory and CPU-time limits, so no filter can stall, crash or read
//! the processor. No Kafka here: this crate builds and tests on its own.
//!
//! ```no_run
//! use rtcrm_sandbox::{Event, Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let compiled = sandbox.compile_js("function(event) { return event.getData().get('result') === 'loss' }")?;
//! let mut filter = sandbox.js_filter(&compiled, "4711", sandbox.limits())?;
//! let event = Event::parse(br#"{"game":"foe","data":{"result":"loss"}}"#.to_vec())?;
//! assert!(filter.eval(&event)?.matched);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Core concepts
//! - [`Sandbox`]: one per process. It owns the wasmtime [`wasmtime::Engine`] (fuel metering and
//!   epoch interruption on, proposals outside the filter ABI off), the JS runtime — a Javy plugin
//!   pre-initialised with wasmtime-wizer and compiled once — the module cache (compiled modules
//!   on disk in a private directory, keyed by content digest and engine configuration, each file
//!   verified before it is loaded; see `cache.rs`), the compiler pool for Wasm filter modules,
//!   and the epoch ticker thread that drives the CPU-time deadline checks.
//! - [`SandboxConfig::from_limits`]: the operator's [`HostLimits`] (spec §7, user units,
//!   validated) applied to the sandbox.
//! - [`Sandbox::compile_js`]: JavaScript source → [`CompiledJs`], a few-hundred-byte campaign module
//!   carrying QuickJS bytecode (a fresh runtime instance compiles it in well under a millisecond).
//! - [`JsFilter`]: a campaign's own runtime instance (own linear memory), reused across events.
//!   Rebuilt after any trap. It keeps to the pages it touches ([`Residency`], `residency.rs`):
//!   [`JS_INSTANCE_RSS_BYTES`] (~104 KiB) of RSS per live instance instead of ~282 KiB with
//!   Linux's fault-around ([`Sandbox::js_instance_rss_bytes`] gives the figure in force).
//! - [`SandboxConfig::max_instances`]: an optional budget of filter instances alive at once, on
//!   wasmtime's pooling allocator (`pool.rs`): slots reserved at start and reset in place, so a
//!   dropped instance's slot serves the next build without page faults (a pool miss ~16 µs
//!   instead of ~77 µs); a build past the budget fails with [`EvalError::Capacity`]
//!   ([`EvalError::caused_by_host`]), never a panic. Without it (the default) instances are
//!   allocated on demand, with no fixed maximum.
//! - [`Event`]: parsed once per event; every campaign's filter reads the fields it touches
//!   through host calls, so an event is never rebuilt as a JS object per campaign.
//! - [`Limits`] (see its module, `limits.rs`, for every limit, its default and its known gaps)
//!   and [`EvalError`], whose [`ErrorKind`] is one of `fuel`, `memory`, `deadline`, `trap`,
//!   `exception`, `state` — the filter's failures — or `event`, a failure the event caused
//!   ([`EvalError::caused_by_event`]), or `capacity`, the budget of instances spent (the host's
//!   doing, [`EvalError::caused_by_host`]); neither of the last two may count toward quarantine.
//! - [`Filter::eval_with_state`]: an evaluation with a player's state (spec §12) — a JavaScript
//!   filter called as `filter(event, state)`, a Wasm module of ABI version 2 through
//!   `rtcrm_filter_state` — returning the new state as compact JSON; on any error no new state
//!   is produced, so the host keeps the stored one. See `state.rs` for its limits and costs.
//!
//! # Fresh instance per event, the alternative
//! Building a new instance for each event (instantiate, load the bytecode, evaluate) makes every
//! evaluation start from the pre-initialised snapshot, so no state survives between events. It
//! costs an instantiation plus a bytecode load per evaluation — measured in `docs/performance.md`
//! (`fresh_instance_per_event`) at well over ten times a reused instance. rtcrm reuses instances
//! and documents that filters must not rely on state between calls (spec §5); isolation between
//! campaigns does not depend on the choice, since each campaign has its own instance.

mod cache;
mod compile;
mod error;
mod event;
mod limits;
mod log;
mod pool;
mod residency;
mod runtime;
mod sandbox;
mod state;
mod text;
mod wasi;
mod wasm_filter;

pub use cache::{default_cache_dir, CacheStats};
pub use error::{ErrorKind, EvalError, SandboxError};
pub use event::{Event, EventError};
pub use limits::{
    EventLimits, HostLimits, Limits, LimitsError, ModuleCaps, UserLimits, HOST_BYTE_FUEL, HOST_CALL_FUEL,
    MAX_ERROR_TEXT_BYTES, MAX_SUPPORTED_EVENT_DEPTH, TABLE_ELEMENT_BYTES,
};
pub use log::{LogCaps, LogSink, LogStream, MemorySink, TracingSink};
pub use pool::{KEEP_RESIDENT_BYTES, RESERVED_INSTANCES, TABLE_KEEP_RESIDENT_BYTES};
pub use residency::{Residency, JS_INSTANCE_RSS_BYTES, JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND};
pub use rtcrm_compiler::{CompileError, ModuleError, SourceForm, RUNTIME_NAMESPACE};
pub use sandbox::{CompiledFilter, CompiledJs, Filter, JsFilter, ModuleLoadError, Sandbox, SandboxConfig, Verdict};
pub use wasm_filter::{
    CompiledWasm, WasmError, WasmFilter, ALLOWED_FEATURES, DEFAULT_MAX_MODULE_BYTES, SUPPORTED_ABI_VERSION, SUPPORTED_ABI_VERSIONS,
    WASI_MODULE,
};
