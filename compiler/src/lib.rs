//! rtcrm's JavaScript toolchain, the part that needs no wasmtime.
//!
//! - [`RUNTIME_WASM`]: the JS runtime, a Javy plugin (QuickJS for `wasm32-wasip1`) that `build.rs`
//!   builds from `compiler/runtime` with Debian's clang and wasi-libc.
//! - [`source`]: the source forms a filter may take (as the original's `eval` accepted them, or an
//!   ES module with a default export), and the mapping of error positions back to the user's text.
//! - [`artifact`]: the per-campaign module: a few hundred bytes that import the runtime (under a
//!   versioned namespace) and carry the filter's QuickJS bytecode.
//!
//! Running QuickJS (to compile source to bytecode and to evaluate filters) is the sandbox's job
//! (`rtcrm-sandbox`), which drives this crate.

pub mod artifact;
pub mod source;

pub use artifact::{build_module, read_module, ModuleError, RUNTIME_NAMESPACE};
pub use source::{CompileError, SourceForm};

/// The JS runtime plugin as built (not yet pre-initialised): import namespace
/// [`RUNTIME_NAMESPACE`], init function `initialize-runtime`.
pub static RUNTIME_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rtcrm_js_runtime.wasm"));

/// Largest filter source accepted by default (spec §7 "maximum source size").
pub const DEFAULT_MAX_SOURCE_BYTES: usize = 64 * 1024;
