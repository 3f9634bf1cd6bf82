//! The sandbox: one wasmtime [`Engine`] per process, the pre-initialised JS runtime compiled once,
//! and one runtime instance per campaign, each evaluation bounded by fuel, memory and a CPU-time
//! deadline (see `limits.rs` for every limit and its gaps).

use crate::cache::{CacheStats, ModuleCache};
use crate::compile::CompilePool;
use crate::error::{EvalError, MemoryLimitExceeded, SandboxError};
use crate::event::Event;
use crate::limits::{EventLimits, HostLimits, Limits, ModuleCaps, TABLE_ELEMENT_BYTES};
use crate::log::{FilterLog, LogCaps, LogSink, LogStream, TracingSink};
use crate::pool::{InstanceSlots, Owner, Slot};
use crate::residency::Residency;
use crate::text;
use crate::wasi::{charge, guest_range, CapturedOutput};
use crate::wasm_filter::{CompiledWasm, WasmError, WasmFilter, FORBIDDEN_FEATURES};
use rtcrm_compiler::{build_module, read_module, CompileError, ModuleError, SourceForm, RUNTIME_NAMESPACE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, OptLevel, ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

// `filter(event, state)`: evaluation with per-player state, both kinds of filter (spec §12).
mod stateful;

/// Host-import module of the JS runtime (event fields and console output).
const HOST_MODULE: &str = "rtcrm:host";
/// Bytes of a filter's stdout/stderr kept until forwarded to the log.
const CAPTURED_OUTPUT_BYTES: usize = 16 * 1024;
/// Longest bytecode read back from the runtime.
const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;

/// How the sandbox is set up. [`SandboxConfig::default`] is what `rtcrm run` uses without
/// configuration; [`SandboxConfig::from_limits`] applies the operator's [`HostLimits`].
#[derive(Clone)]
pub struct SandboxConfig {
    /// Host limits per evaluation and instance; campaigns may only lower them.
    pub limits: Limits,
    /// What an event may be (size, nesting); see [`Sandbox::parse_event`].
    pub event_limits: EventLimits,
    /// Largest JavaScript source accepted.
    pub max_source_bytes: usize,
    /// Largest Wasm filter module accepted.
    pub max_module_bytes: usize,
    /// Largest per-player state (spec §12): [`Filter::eval_with_state`] fails with kind `state`
    /// past the smaller of this and the campaign's `state.max_bytes`.
    pub state_max_bytes: usize,
    /// Caps on a Wasm module's shape, checked before compiling.
    pub module_caps: ModuleCaps,
    /// Count fuel (the CPU budget). Off only for measurements: the deadline is then the only
    /// CPU bound and host work is not charged.
    pub fuel_metering: bool,
    /// Largest wasm stack of one evaluation, in bytes.
    pub max_wasm_stack: usize,
    /// Period of the epoch ticker that drives the CPU-time deadline checks.
    pub epoch_tick: Duration,
    /// The private directory where compiled modules are cached (spec §8); `None`, or a directory
    /// that cannot be made private, compiles in memory at every start.
    pub cache_dir: Option<PathBuf>,
    /// Wasm modules compiled at once (each compile may use every core).
    pub compile_threads: usize,
    /// Longest compilation of one Wasm module before it is rejected.
    pub compile_timeout: Duration,
    /// Caps on each filter's log output.
    pub log_caps: LogCaps,
    /// Where filter output goes.
    pub log_sink: Arc<dyn LogSink>,
    /// The budget of filter instances alive at once, all campaigns' JavaScript and Wasm filters
    /// together (the host's `--max-filter-instances`). `None` (the default): no fixed maximum,
    /// each instance maps and unmaps its own memory. `Some(n)`: wasmtime's pooling allocator
    /// with room for `n` filter instances (plus the sandbox's own, [`RESERVED_INSTANCES`]); a
    /// dropped instance's slot is reset in place and reused without page faults, and a build
    /// past `n` fails with [`EvalError::Capacity`]. See `pool.rs`.
    ///
    /// [`RESERVED_INSTANCES`]: crate::RESERVED_INSTANCES
    pub max_instances: Option<usize>,
    /// Keep each instance's resident memory to the pages it touches, by switching off Linux's
    /// fault-around for instance memories (default `true`; needs Linux 6.7 and userfaultfd, and
    /// does nothing where they are unavailable; see `residency.rs` and [`Sandbox::residency`]).
    /// About 100 KiB instead of 282 KiB of RSS per JavaScript instance.
    pub touched_pages_only: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let limits = HostLimits::default();
        SandboxConfig {
            limits: limits.limits(),
            event_limits: limits.event_limits(),
            max_source_bytes: limits.max_source_bytes(),
            max_module_bytes: limits.max_module_bytes(),
            state_max_bytes: limits.state_max_bytes(),
            module_caps: ModuleCaps::default(),
            fuel_metering: true,
            max_wasm_stack: 512 * 1024,
            epoch_tick: Duration::from_millis(1),
            cache_dir: crate::cache::default_cache_dir(),
            compile_threads: 2,
            compile_timeout: Duration::from_secs(30),
            log_caps: LogCaps::default(),
            log_sink: Arc::new(TracingSink),
            max_instances: None,
            touched_pages_only: true,
        }
    }
}

impl SandboxConfig {
    /// The default configuration under the operator's `limits`.
    pub fn from_limits(limits: &HostLimits) -> SandboxConfig {
        SandboxConfig::default().with_limits(limits)
    }

    /// This configuration with every limit taken from `limits`.
    pub fn with_limits(mut self, limits: &HostLimits) -> SandboxConfig {
        self.limits = limits.limits();
        self.event_limits = limits.event_limits();
        self.max_source_bytes = limits.max_source_bytes();
        self.max_module_bytes = limits.max_module_bytes();
        self.state_max_bytes = limits.state_max_bytes();
        self
    }

    /// This configuration with a budget of `max` filter instances alive at once (see
    /// [`SandboxConfig::max_instances`]).
    pub fn with_max_instances(mut self, max: usize) -> SandboxConfig {
        self.max_instances = Some(max);
        self
    }
}

/// The filter sandbox. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) core: Arc<SandboxCore>,
}

/// What every filter instance of a sandbox shares: the engine, the linker, the compiled JS
/// runtime, the module cache and compiler pool, the configuration.
pub(crate) struct SandboxCore {
    pub(crate) engine: Engine,
    js_runtime: InstancePre<FilterState>,
    pub(crate) linker: Linker<FilterState>,
    pub(crate) config: SandboxConfig,
    pub(crate) cache: Option<ModuleCache>,
    pub(crate) compiler: CompilePool,
    /// The budget of filter instances and the sandbox's reserved slots.
    pub(crate) slots: Arc<InstanceSlots>,
    /// Whether instance memories keep to their touched pages.
    residency: Residency,
    _ticker: EpochTicker,
}

/// A JavaScript filter compiled to a campaign module, checked to yield a function.
#[derive(Debug, Clone)]
pub struct CompiledJs {
    module: Vec<u8>,
    bytecode: Arc<[u8]>,
    form: Option<SourceForm>,
}

impl CompiledJs {
    /// The campaign module (what `rtcrm filter compile` writes).
    pub fn module_bytes(&self) -> &[u8] {
        &self.module
    }

    /// The source form it was compiled from; `None` when it was loaded from a module.
    pub fn form(&self) -> Option<SourceForm> {
        self.form
    }
}

/// Why a campaign module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleLoadError {
    /// Not a module of this runtime.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Its code does not yield a filter.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// A module of the filter ABI that failed validation.
    #[error(transparent)]
    Wasm(#[from] WasmError),
}

/// The outcome of one successful evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The filter returned boolean `true`.
    pub matched: bool,
    /// Fuel the evaluation used, host work included (0 without fuel metering).
    pub fuel_used: u64,
}

impl Sandbox {
    /// Creates the engine, opens the module cache, loads the runtime (from the cache when
    /// present) and starts the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let mut wasm_config = Config::new();
        wasm_config
            .consume_fuel(config.fuel_metering)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .memory_init_cow(true)
            .cranelift_opt_level(OptLevel::Speed)
            // What the filter ABI does not need is off in the engine too, not only at submission.
            .wasm_features(FORBIDDEN_FEATURES, false);
        if let Some(max) = config.max_instances {
            let table_elements = usize::try_from(config.module_caps.max_table_elements).unwrap_or(usize::MAX);
            wasm_config.allocation_strategy(crate::pool::pooling(max, config.limits.memory_bytes, table_elements));
        }
        let engine = Engine::new(&wasm_config).map_err(|e| SandboxError::wasmtime("creating the wasmtime engine", e))?;
        let cache = config.cache_dir.as_deref().and_then(|dir| match ModuleCache::open(dir, &engine) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(error = %e, "not using the module cache; compiled modules are kept in memory only");
                None
            }
        });
        let module = crate::runtime::load(&engine, cache.as_ref())?;
        let linker = filter_linker(&engine)?;
        let js_runtime = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::wasmtime("linking the JS runtime", e))?;
        let residency = if config.touched_pages_only {
            crate::residency::status()
        } else {
            Residency::FaultAround("switched off by configuration (`SandboxConfig::touched_pages_only`)".into())
        };
        if let Residency::FaultAround(reason) = &residency {
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| tracing::info!(%reason, "filter instances keep Linux's fault-around: about 280 KiB of RSS per JavaScript instance instead of 100 KiB"));
        }
        let slots = InstanceSlots::new(config.max_instances);
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick);
        let compiler = CompilePool::new(config.compile_threads, config.compile_timeout);
        Ok(Sandbox {
            core: Arc::new(SandboxCore { engine, js_runtime, linker, config, cache, compiler, slots, residency, _ticker: ticker }),
        })
    }

    /// The budget of filter instances alive at once, if any ([`SandboxConfig::max_instances`]).
    pub fn max_instances(&self) -> Option<usize> {
        self.core.slots.max()
    }

    /// Filter instances alive now ([`JsFilter`]s and [`WasmFilter`]s with a live instance).
    pub fn live_instances(&self) -> usize {
        self.core.slots.live()
    }

    /// Whether filter instances keep to the pages they touch (see
    /// [`SandboxConfig::touched_pages_only`]).
    pub fn residency(&self) -> &Residency {
        &self.core.residency
    }

    /// The resident memory (RSS) one live JavaScript filter instance adds, as measured on this
    /// sandbox's configuration: [`JS_INSTANCE_RSS_BYTES`], or
    /// [`JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND`] when instances keep fault-around. A host that
    /// budgets memory divides by it (a Wasm filter's instance is as large as the memory it uses).
    ///
    /// [`JS_INSTANCE_RSS_BYTES`]: crate::JS_INSTANCE_RSS_BYTES
    /// [`JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND`]: crate::JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND
    pub fn js_instance_rss_bytes(&self) -> usize {
        match self.core.residency {
            Residency::TouchedPagesOnly => crate::residency::JS_INSTANCE_RSS_BYTES,
            Residency::FaultAround(_) => crate::residency::JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND,
        }
    }

    /// The engine every filter runs in.
    pub fn engine(&self) -> &Engine {
        &self.core.engine
    }

    /// The host limits.
    pub fn limits(&self) -> Limits {
        self.core.config.limits
    }

    /// What the sandbox accepts as an event.
    pub fn event_limits(&self) -> EventLimits {
        self.core.config.event_limits
    }

    /// Parses `bytes` as an event under this sandbox's [`EventLimits`].
    pub fn parse_event(&self, bytes: impl Into<Vec<u8>>) -> Result<Event, crate::EventError> {
        Event::parse_with(bytes, &self.core.config.event_limits)
    }

    /// The module cache's counters; `None` when the sandbox runs without a cache.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.core.cache.as_ref().map(ModuleCache::stats)
    }

    /// The directory of the module cache in use, if any.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.core.cache.as_ref().map(ModuleCache::path)
    }

    /// Compiles JavaScript `source` (any form of spec §5) into a campaign module, and checks
    /// that it yields a function. Syntax errors carry the line and column in `source`.
    pub fn compile_js(&self, source: &str) -> Result<CompiledJs, CompileError> {
        let max = self.core.config.max_source_bytes;
        if source.len() > max {
            return Err(CompileError::TooLarge { size: source.len(), max });
        }
        let mut instance = self
            .core
            .instantiate("compiler".into(), self.limits(), Owner::Sandbox)
            .map_err(|e| CompileError::TopLevelFailed(format!("starting the compiler: {e}")))?;
        let mut reports: Vec<(SourceForm, String)> = Vec::new();
        for form in SourceForm::ALL {
            let text = form.wrap(source);
            match instance.compile(&self.core, text.as_bytes(), form.is_module()) {
                Ok(Ok(bytecode)) => {
                    let compiled = CompiledJs {
                        module: build_module(RUNTIME_NAMESPACE, &bytecode),
                        bytecode: bytecode.into(),
                        form: Some(form),
                    };
                    // One of the sandbox's reserved instances at a time per call (see `pool.rs`).
                    drop(instance);
                    self.verify(&compiled)?;
                    return Ok(compiled);
                }
                Ok(Err(report)) => reports.push((form, report)),
                Err(e) => return Err(CompileError::TopLevelFailed(format!("compiling: {e}"))),
            }
        }
        drop(instance);
        // Report the error of the form whose parse got furthest: a statement list fails at once as
        // an expression, an expression with a typo fails early as a statement. Sources that use
        // `export`/`import` report the module's error.
        let mut best: Option<CompileError> = None;
        for (form, report) in &reports {
            if SourceForm::reported_for(source) == SourceForm::Module && *form != SourceForm::Module {
                continue;
            }
            let located = self.locate_column(&form.wrap(source), *form, report).unwrap_or_else(|| report.clone());
            let err = CompileError::from_runtime_report(source, *form, &located);
            let further = match (&best, &err) {
                (Some(CompileError::Syntax { line: bl, column: bc, .. }), CompileError::Syntax { line, column, .. }) => {
                    (line, column) > (bl, bc)
                }
                (None, _) => true,
                _ => false,
            };
            if further {
                best = Some(err);
            }
        }
        Err(best.expect("every form reported an error"))
    }

    /// quickjs-ng reports a syntax error's line but not its column (its `js_parse_error` uses a
    /// column the tokenizer never updates). The column is found here instead: the shortest cut of
    /// the error line that still fails with the same message and line ends with the offending
    /// token (cuts before it fail at the end of input instead). Binary search, so a few extra
    /// compiles of prefixes, on the error path only. Returns the report with the column filled in.
    fn locate_column(&self, text: &str, form: SourceForm, report: &str) -> Option<String> {
        let mut parts = report.splitn(3, ':');
        let line: usize = parts.next()?.parse().ok()?;
        let _column = parts.next()?;
        let message = parts.next()?.to_owned();
        let line_start = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum::<usize>();
        let line_text = text[line_start..].split('\n').next().unwrap_or("");
        let line_end = line_start + line_text.len();
        let mut instance = self.core.instantiate("compiler".into(), self.limits(), Owner::Sandbox).ok()?;
        let mut same_error = |cut: usize| -> bool {
            match instance.compile(&self.core, &text.as_bytes()[..cut], form.is_module()) {
                Ok(Err(r)) => {
                    let mut p = r.splitn(3, ':');
                    p.next().and_then(|l| l.parse::<usize>().ok()) == Some(line) && p.nth(1) == Some(message.as_str())
                }
                _ => false,
            }
        };
        // Smallest cut in (line_start, line_end] that reproduces the error, at a char boundary.
        let (mut lo, mut hi) = (line_start, line_end);
        if !same_error(hi) {
            return None;
        }
        while lo + 1 < hi {
            let mut mid = lo + (hi - lo) / 2;
            while !text.is_char_boundary(mid) {
                mid += 1;
            }
            if mid >= hi {
                break;
            }
            if same_error(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        // The token ends at `hi`; when the message quotes it, step back to where it starts.
        let quoted = message.rsplit_once(": '").and_then(|(_, t)| t.strip_suffix('\'')).unwrap_or("");
        let token_start = if !quoted.is_empty() && text[..hi].ends_with(quoted) {
            hi - quoted.len()
        } else {
            text[..hi].char_indices().next_back().map_or(hi, |(i, _)| i)
        };
        let column = text[line_start..token_start].chars().count() + 1;
        Some(format!("{line}:{column}:{message}"))
    }

    /// Loads a campaign module written by [`CompiledJs::module_bytes`] (e.g. by
    /// `rtcrm filter compile`), refusing one built for another runtime version.
    pub fn load_js_module(&self, module: &[u8]) -> Result<CompiledJs, ModuleLoadError> {
        let bytecode = read_module(module)?;
        let compiled = CompiledJs { module: module.to_vec(), bytecode: bytecode.into(), form: None };
        self.verify(&compiled)?;
        Ok(compiled)
    }

    /// Evaluates the module's top-level code once in a fresh instance: it must yield a function.
    fn verify(&self, compiled: &CompiledJs) -> Result<(), CompileError> {
        let mut instance = self
            .core
            .instantiate("compiler".into(), self.limits(), Owner::Sandbox)
            .map_err(|e| CompileError::TopLevelFailed(format!("starting the runtime: {e}")))?;
        match instance.load(&self.core, &compiled.bytecode) {
            Ok(LoadOutcome::Loaded) => Ok(()),
            Ok(LoadOutcome::Threw(message)) => Err(CompileError::TopLevelThrew { message }),
            Ok(LoadOutcome::NotAFunction(found)) => Err(CompileError::NotAFunction { found }),
            Err(e) => Err(CompileError::TopLevelFailed(format!("{}: {e}", e.kind()))),
        }
    }

    /// A filter instance for `compiled`, named `name` in logs, under `limits` (already lowered
    /// by the campaign; see [`Limits::lowered`]).
    pub fn js_filter(&self, compiled: &CompiledJs, name: &str, limits: Limits) -> Result<JsFilter, EvalError> {
        let mut filter = JsFilter {
            core: self.core.clone(),
            bytecode: compiled.bytecode.clone(),
            name: name.into(),
            limits,
            instance: None,
            rebuilds: 0,
        };
        filter.instance = Some(filter.build()?);
        Ok(filter)
    }
}

/// A campaign's filter, compiled: JavaScript or a WebAssembly module of the filter ABI.
#[derive(Debug, Clone)]
pub enum CompiledFilter {
    /// A JavaScript filter (compiled to a campaign module of the JS runtime).
    Js(CompiledJs),
    /// A module implementing the filter ABI (`filter-sdk/ABI.md`).
    Wasm(CompiledWasm),
}

/// A campaign's filter instance, either kind.
// Not boxed: a filter is built once per campaign and worker, and evaluated on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Filter {
    /// See [`JsFilter`].
    Js(JsFilter),
    /// See [`WasmFilter`].
    Wasm(WasmFilter),
}

impl Filter {
    /// Evaluates the filter against `event`.
    pub fn eval(&mut self, event: &Event) -> Result<Verdict, EvalError> {
        match self {
            Filter::Js(f) => f.eval(event),
            Filter::Wasm(f) => f.eval(event),
        }
    }

    /// How many times its instance was discarded after a trap and rebuilt.
    pub fn rebuilds(&self) -> u64 {
        match self {
            Filter::Js(f) => f.rebuilds(),
            Filter::Wasm(f) => f.rebuilds(),
        }
    }
}

impl Sandbox {
    /// Validates and compiles a module of the filter ABI (a `filter_wasm` campaign): size and
    /// shape caps and allowed proposals first, then the cache or the compiler pool, then one
    /// instantiation (`_initialize`, `rtcrm_abi_version`).
    pub fn load_wasm(&self, module: &[u8]) -> Result<CompiledWasm, WasmError> {
        crate::wasm_filter::load(&self.core, module)
    }

    /// Loads a `.wasm` file of either kind: a JavaScript campaign module (it imports the JS
    /// runtime) or a module of the filter ABI.
    pub fn load_module(&self, module: &[u8]) -> Result<CompiledFilter, ModuleLoadError> {
        let imports_js_runtime = wasmparser::Parser::new(0).parse_all(module).any(|p| match p {
            Ok(wasmparser::Payload::ImportSection(r)) => {
                r.into_imports().any(|i| i.is_ok_and(|i| i.module.starts_with("rtcrm-js-v")))
            }
            _ => false,
        });
        if imports_js_runtime {
            self.load_js_module(module).map(CompiledFilter::Js)
        } else {
            self.load_wasm(module).map(CompiledFilter::Wasm).map_err(ModuleLoadError::Wasm)
        }
    }

    /// A filter instance of either kind (see [`Sandbox::js_filter`]).
    pub fn filter(&self, compiled: &CompiledFilter, name: &str, limits: Limits) -> Result<Filter, EvalError> {
        match compiled {
            CompiledFilter::Js(js) => self.js_filter(js, name, limits).map(Filter::Js),
            CompiledFilter::Wasm(wasm) => WasmFilter::new(self.core.clone(), wasm, name, limits).map(Filter::Wasm),
        }
    }
}

/// One campaign's JavaScript filter: a runtime instance of its own, reused across events.
///
/// After an evaluation that traps (fuel, memory, deadline, trap) the instance is discarded and a
/// new one is built from the bytecode (QuickJS's state is not trustworthy after a trap in the
/// middle of a call). An `exception` leaves the instance as it is.
pub struct JsFilter {
    core: Arc<SandboxCore>,
    bytecode: Arc<[u8]>,
    name: Arc<str>,
    limits: Limits,
    instance: Option<RuntimeInstance>,
    rebuilds: u64,
}

impl JsFilter {
    /// Evaluates the filter against `event`.
    pub fn eval(&mut self, event: &Event) -> Result<Verdict, EvalError> {
        self.core.admit(event)?;
        if self.instance.is_none() {
            let instance = self.build()?;
            self.instance = Some(instance);
        }
        let instance = self.instance.as_mut().expect("built above");
        let outcome = instance.eval(&self.core, &self.limits, event);
        if let Err(e) = &outcome {
            if e.kind() != crate::ErrorKind::Exception {
                self.instance = None;
                self.rebuilds += 1;
                // Rebuild now so the next event does not pay for it; if this fails, the next
                // evaluation retries and reports the failure.
                if let Ok(instance) = self.build() {
                    self.instance = Some(instance);
                }
            }
        }
        outcome
    }

    /// The name this filter logs under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limits it runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many times its instance was discarded after a trap and rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    fn build(&self) -> Result<RuntimeInstance, EvalError> {
        let mut instance = self.core.instantiate(self.name.clone(), self.limits, Owner::Filter).map_err(|e| match e {
            SandboxError::MemoryLimit { requested, limit } => EvalError::Memory { requested, limit },
            SandboxError::Capacity { limit } => EvalError::Capacity { limit },
            other => EvalError::Trap(text::bound(format!("instantiating the filter: {other}"))),
        })?;
        match instance.load(&self.core, &self.bytecode)? {
            LoadOutcome::Loaded => Ok(instance),
            LoadOutcome::Threw(message) => Err(EvalError::Exception(message)),
            LoadOutcome::NotAFunction(found) => Err(EvalError::Trap(format!("the filter evaluates to {found}, not a function"))),
        }
    }
}

/// Store data of one filter instance.
pub(crate) struct FilterState {
    /// wasmtime-wasi's context, built the first time the filter calls a WASI function that
    /// `wasi.rs` does not serve itself (most instances never do: ~0.8 µs and 768 bytes saved per
    /// instance).
    wasi: Option<WasiP1Ctx>,
    pub(crate) memory: Option<Memory>,
    event: EventRef,
    pub(crate) fuel_metering: bool,
    pub(crate) budget: InstanceBudget,
    deadline: CpuDeadline,
    log: FilterLog,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
}

/// The event under evaluation, set only for the duration of a call into the filter.
#[derive(Clone, Copy)]
struct EventRef(*const Event);

// SAFETY: the pointer is only dereferenced by host functions during `RuntimeInstance::eval`, on
// the thread that holds `&Event` for that whole call, and is reset before `eval` returns.
unsafe impl Send for EventRef {}
// SAFETY: as for `Send`: no dereference outside the call that set it.
unsafe impl Sync for EventRef {}

impl FilterState {
    /// The WASI context: no preopened directories, no environment, no arguments, no network;
    /// stdin closed. stdout/stderr are served by `wasi.rs`'s `fd_write`, never by wasmtime-wasi's
    /// streams.
    fn wasi(&mut self) -> &mut WasiP1Ctx {
        self.wasi.get_or_insert_with(|| WasiCtxBuilder::new().build_p1())
    }

    fn event(&self) -> Option<&Event> {
        // SAFETY: see `EventRef`: non-null only while the `&Event` it came from is borrowed by
        // the evaluation that set it.
        unsafe { self.event.0.as_ref() }
    }

    pub(crate) fn forward_output(&mut self, flush_all: bool) {
        for stream in [LogStream::Out, LogStream::Err] {
            let out = if stream == LogStream::Out { &mut self.stdout } else { &mut self.stderr };
            if !out.has_pending() {
                continue;
            }
            for line in out.take_lines(flush_all) {
                self.log.line(stream, &line);
            }
        }
    }
}

impl Drop for FilterState {
    fn drop(&mut self) {
        self.forward_output(true);
    }
}

/// One instance's memory budget: all its linear memories and tables count against one cap,
/// initial sizes included (wasmtime asks the limiter for those at instantiation as well).
pub(crate) struct InstanceBudget {
    /// The cap, in bytes.
    limit: usize,
    /// Bytes granted so far (memories, plus [`TABLE_ELEMENT_BYTES`] per table element).
    used: usize,
    /// Table elements granted so far.
    table_elements: u64,
    max_table_elements: u64,
    /// The last grant, taken back if the growth then fails for another reason.
    last_memory_grant: usize,
    last_table_grant: (usize, u64),
    /// The total an instance asked for when it went over the cap (read by [`classify`]).
    pub(crate) exceeded: Option<usize>,
}

impl InstanceBudget {
    fn new(limit: usize, max_table_elements: u64) -> InstanceBudget {
        InstanceBudget {
            limit,
            used: 0,
            table_elements: 0,
            max_table_elements,
            last_memory_grant: 0,
            last_table_grant: (0, 0),
            exceeded: None,
        }
    }

    fn over(&mut self, requested: usize) -> wasmtime::Result<bool> {
        self.exceeded = Some(requested);
        Err(wasmtime::Error::new(MemoryLimitExceeded { requested, limit: self.limit }))
    }
}

impl ResourceLimiter for FilterState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own declared maximum: `memory.grow` returns -1, as the spec says.
            return Ok(false);
        }
        let b = &mut self.budget;
        let grant = desired.saturating_sub(current);
        let total = b.used.saturating_add(grant);
        if total > b.limit {
            return b.over(total);
        }
        b.used = total;
        b.last_memory_grant = grant;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        let b = &mut self.budget;
        b.used -= std::mem::take(&mut b.last_memory_grant);
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let b = &mut self.budget;
        let elements = desired.saturating_sub(current) as u64;
        let bytes = (elements as usize).saturating_mul(TABLE_ELEMENT_BYTES);
        let total = b.used.saturating_add(bytes);
        if total > b.limit || b.table_elements + elements > b.max_table_elements {
            return b.over(total);
        }
        b.used = total;
        b.table_elements += elements;
        b.last_table_grant = (bytes, elements);
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        let b = &mut self.budget;
        let (bytes, elements) = std::mem::take(&mut b.last_table_grant);
        b.used -= bytes;
        b.table_elements -= elements;
        Ok(())
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The CPU-time deadline of the current call (see [`on_epoch_deadline`]).
struct CpuDeadline {
    budget: Duration,
    /// The thread's CPU clock at the first check of this call.
    first_check: Option<Duration>,
}

/// The evaluating thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn ticks(d: Duration, tick: Duration) -> u64 {
    (d.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64).max(1)
}

/// Runs when a call reaches its epoch deadline. The first time in a call (one tick after it
/// started) it reads the thread's CPU clock; later it continues the call for as many ticks as
/// CPU budget is left, since CPU time cannot pass faster than the ticks. So a healthy call that
/// is descheduled (an overloaded host) is never stopped for the time it did not run, and the
/// clock is read about once per `budget` of wall-clock time, not per call.
fn on_epoch_deadline(deadline: &mut CpuDeadline, tick: Duration) -> UpdateDeadline {
    let now = thread_cpu_time();
    let used = now.saturating_sub(*deadline.first_check.get_or_insert(now));
    if used >= deadline.budget {
        return UpdateDeadline::Interrupt;
    }
    UpdateDeadline::Continue(ticks(deadline.budget - used, tick))
}

/// The linker every filter instance is built from: WASI preview 1 without capabilities and with
/// nothing that can block (`wasi.rs`), and the JS runtime's host imports.
fn filter_linker(engine: &Engine) -> Result<Linker<FilterState>, SandboxError> {
    let mut linker: Linker<FilterState> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, FilterState::wasi)
        .and_then(|()| crate::wasi::shadow(&mut linker))
        .map_err(|e| SandboxError::wasmtime("linking WASI", e))?;
    linker
        .func_wrap(HOST_MODULE, "event_field", host_event_field)
        .and_then(|l| l.func_wrap(HOST_MODULE, "event_keys", host_event_keys))
        .and_then(|l| l.func_wrap(HOST_MODULE, "log", host_log))
        .map_err(|e| SandboxError::wasmtime("linking the rtcrm host functions", e))?;
    Ok(linker)
}

/// Writes `bytes` and a NUL into `buf` when they fit; returns `bytes.len()` either way.
fn write_with_nul(data: &mut [u8], buf_ptr: i32, buf_cap: i32, bytes: &[u8]) -> i32 {
    if bytes.len() < buf_cap as u32 as usize {
        if let Some(range) = guest_range(data, buf_ptr as u32, bytes.len() + 1) {
            let dst = &mut data[range];
            dst[..bytes.len()].copy_from_slice(bytes);
            dst[bytes.len()] = 0;
        }
    }
    bytes.len() as i32
}

/// Whether `len` bytes would be copied into a buffer of `cap` (see [`write_with_nul`]).
fn fits(len: usize, cap: i32) -> bool {
    len < cap as u32 as usize
}

/// `event_field(key, key_len, buf, cap) -> len | -1`: the raw JSON of a top-level field.
/// Charged after the lookup: the key's bytes, plus the value's when it was copied (so the work
/// done past the budget is at most one field).
fn host_event_field(mut caller: Caller<'_, FilterState>, key_ptr: i32, key_len: i32, buf_ptr: i32, buf_cap: i32) -> wasmtime::Result<i32> {
    let Some(memory) = caller.data().memory else { return Ok(-1) };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(event) = state.event() else { return Ok(-1) };
    let raw = {
        let Some(range) = guest_range(data, key_ptr as u32, key_len as u32 as usize) else { return Ok(-1) };
        let Ok(key) = std::str::from_utf8(&data[range]) else { return Ok(-1) };
        event.field(key)
    };
    let (result, copied) = match raw {
        Some(raw) => (write_with_nul(data, buf_ptr, buf_cap, raw), if fits(raw.len(), buf_cap) { raw.len() } else { 0 }),
        None => (-1, 0),
    };
    charge(&mut caller, key_len as u32 as u64 + copied as u64)?;
    Ok(result)
}

/// `event_keys(buf, cap) -> len`: the top-level keys as a JSON array. Charged: the list's bytes
/// (it is built once per event and shared by every campaign).
fn host_event_keys(mut caller: Caller<'_, FilterState>, buf_ptr: i32, buf_cap: i32) -> wasmtime::Result<i32> {
    let Some(memory) = caller.data().memory else { return Ok(-1) };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(event) = state.event() else { return Ok(-1) };
    let keys = event.keys_json().as_bytes();
    let len = write_with_nul(data, buf_ptr, buf_cap, keys);
    charge(&mut caller, len as u64)?;
    Ok(len)
}

/// `log(level, ptr, len)`: one line of `console` output, cut to the log's line cap. Charged: the
/// bytes copied.
fn host_log(mut caller: Caller<'_, FilterState>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let Some(memory) = caller.data().memory else { return Ok(()) };
    let len = (len as u32 as usize).min(caller.data().log.max_line_bytes());
    charge(&mut caller, len as u64)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(range) = guest_range(data, ptr as u32, len) else { return Ok(()) };
    let stream = if level == 0 { LogStream::Out } else { LogStream::Err };
    state.log.line(stream, &data[range]);
    Ok(())
}

impl SandboxCore {
    /// A store for one filter instance: WASI without capabilities (output captured for the log),
    /// the memory budget, the CPU-time deadline.
    pub(crate) fn new_store(&self, name: Arc<str>, limits: Limits) -> Store<FilterState> {
        // WASI without capabilities, built on first use (`FilterState::wasi`).
        let state = FilterState {
            wasi: None,
            memory: None,
            event: EventRef(std::ptr::null()),
            fuel_metering: self.config.fuel_metering,
            budget: InstanceBudget::new(limits.memory_bytes, self.config.module_caps.max_table_elements),
            deadline: CpuDeadline { budget: limits.deadline, first_check: None },
            log: FilterLog::new(name, self.config.log_sink.clone(), self.config.log_caps),
            stdout: CapturedOutput::new(CAPTURED_OUTPUT_BYTES),
            stderr: CapturedOutput::new(CAPTURED_OUTPUT_BYTES),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        let tick = self.config.epoch_tick;
        store.epoch_deadline_callback(move |mut cx| Ok(on_epoch_deadline(&mut cx.data_mut().deadline, tick)));
        arm(&mut store, &limits);
        store
    }

    /// Refuses an event that is over this sandbox's event limits (only possible when it was
    /// parsed under laxer ones): the event's fault, not the filter's.
    pub(crate) fn admit(&self, event: &Event) -> Result<(), EvalError> {
        let (parsed, mine) = (event.parsed_under(), &self.config.event_limits);
        if parsed.max_bytes > mine.max_bytes || parsed.max_depth > mine.max_depth {
            event.is_within(mine).map_err(|e| EvalError::Event { reason: e.to_string() })?;
        }
        Ok(())
    }

    /// A place for one more instance of `owner` in the budget (see `pool.rs`).
    pub(crate) fn slot(&self, owner: Owner) -> Result<Slot, SandboxError> {
        self.slots.acquire(owner).map_err(|limit| SandboxError::Capacity { limit })
    }

    /// Lets the instance's memory keep to the pages it touches (`residency.rs`); call right after
    /// instantiation, before any of its code runs.
    pub(crate) fn settle(&self, store: &Store<FilterState>, memory: Memory) {
        if self.residency == Residency::TouchedPagesOnly {
            crate::residency::touched_pages_only(memory.data_ptr(store), memory.data_size(store));
        }
    }

    /// Whether instantiation failed because the pooling allocator has no free slot (the
    /// sandbox's own count normally refuses first: this covers slots still being reset).
    pub(crate) fn pool_exhausted(&self, err: &wasmtime::Error) -> Option<SandboxError> {
        err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .map(|_| SandboxError::Capacity { limit: self.slots.max().unwrap_or_default() })
    }

    fn instantiate(&self, name: Arc<str>, limits: Limits, owner: Owner) -> Result<RuntimeInstance, SandboxError> {
        let slot = self.slot(owner)?;
        let mut store = self.new_store(name, limits);
        let instance = match self.js_runtime.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                return Err(match store.data().budget.exceeded {
                    Some(requested) => SandboxError::MemoryLimit { requested, limit: limits.memory_bytes },
                    None => self.pool_exhausted(&e).unwrap_or_else(|| SandboxError::wasmtime("instantiating the JS runtime", e)),
                })
            }
        };
        let get = |store: &mut Store<FilterState>, name: &str| {
            instance.get_func(&mut *store, name).ok_or_else(|| SandboxError::Wasmtime {
                context: "linking the JS runtime".into(),
                message: format!("the runtime does not export `{name}`"),
            })
        };
        let typed_err = |e| SandboxError::wasmtime("linking the JS runtime", e);
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| SandboxError::Wasmtime {
            context: "linking the JS runtime".into(),
            message: "the runtime exports no memory".into(),
        })?;
        store.data_mut().memory = Some(memory);
        self.settle(&store, memory);
        Ok(RuntimeInstance {
            realloc: get(&mut store, "cabi_realloc")?.typed(&store).map_err(typed_err)?,
            compile: get(&mut store, "rtcrm_compile")?.typed(&store).map_err(typed_err)?,
            load: get(&mut store, "rtcrm_load")?.typed(&store).map_err(typed_err)?,
            eval: get(&mut store, "rtcrm_eval")?.typed(&store).map_err(typed_err)?,
            result_ptr: get(&mut store, "rtcrm_result_ptr")?.typed(&store).map_err(typed_err)?,
            result_len: get(&mut store, "rtcrm_result_len")?.typed(&store).map_err(typed_err)?,
            state_buffer: get(&mut store, "rtcrm_state_buffer")?.typed(&store).map_err(typed_err)?,
            eval_state: get(&mut store, "rtcrm_eval_state")?.typed(&store).map_err(typed_err)?,
            memory,
            store,
            _slot: slot,
        })
    }
}

/// A live instance of the JS runtime. Fields drop in order: the store (and with it the wasmtime
/// slot) before the budget's slot.
struct RuntimeInstance {
    store: Store<FilterState>,
    memory: Memory,
    realloc: TypedFunc<(i32, i32, i32, i32), i32>,
    compile: TypedFunc<(i32, i32, i32), i32>,
    load: TypedFunc<(i32, i32), i32>,
    eval: TypedFunc<(), i32>,
    result_ptr: TypedFunc<(), i32>,
    result_len: TypedFunc<(), i32>,
    _slot: Slot,
    /// `rtcrm_state_buffer(len) -> ptr` and `rtcrm_eval_state(len) -> status`, for
    /// [`JsFilter::eval_with_state`].
    state_buffer: TypedFunc<i32, i32>,
    eval_state: TypedFunc<i32, i32>,
}

enum LoadOutcome {
    Loaded,
    Threw(String),
    NotAFunction(String),
}

/// Resets a store's per-call budgets: fuel and the CPU-time deadline (its first check one tick
/// from now). No system call: the CPU clock is read only when a tick passes during the call.
pub(crate) fn arm(store: &mut Store<FilterState>, limits: &Limits) {
    let state = store.data_mut();
    state.deadline = CpuDeadline { budget: limits.deadline, first_check: None };
    if state.fuel_metering {
        store.set_fuel(limits.fuel).expect("fuel metering is on");
    }
    store.set_epoch_deadline(1);
}

/// Subtracts fuel for host work done outside a host call (a Wasm filter's event copy), before
/// the work.
pub(crate) fn charge_store(store: &mut Store<FilterState>, bytes: u64, limits: &Limits) -> Result<(), EvalError> {
    if !store.data().fuel_metering {
        return Ok(());
    }
    let cost = crate::limits::HOST_CALL_FUEL.saturating_add(bytes.saturating_mul(crate::limits::HOST_BYTE_FUEL));
    let left = store.get_fuel().unwrap_or(0);
    store.set_fuel(left.saturating_sub(cost)).expect("fuel metering is on");
    if left < cost {
        return Err(EvalError::Fuel { limit: limits.fuel });
    }
    Ok(())
}

/// Classifies a failed call by error type, never by text. A memory-cap error is known from the
/// limiter's record (it is set before the limiter fails the growth).
pub(crate) fn classify(store: &mut Store<FilterState>, err: wasmtime::Error, limits: &Limits) -> EvalError {
    if let Some(requested) = store.data_mut().budget.exceeded.take() {
        return EvalError::Memory { requested, limit: limits.memory_bytes };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return EvalError::Exit { code: exit.0 };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => EvalError::Fuel { limit: limits.fuel },
        Some(Trap::Interrupt) => EvalError::Deadline { limit: limits.deadline },
        Some(trap) => EvalError::Trap(trap.to_string()),
        // A host function's own error: its message, not the backtrace wrapped around it.
        None => EvalError::Trap(text::bounded(&err.root_cause().to_string())),
    }
}

/// The fuel a call used, after [`arm`].
pub(crate) fn fuel_used(store: &Store<FilterState>, limits: &Limits) -> u64 {
    if store.data().fuel_metering {
        limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
    } else {
        0
    }
}

impl RuntimeInstance {
    fn call<R>(&mut self, limits: &Limits, f: impl FnOnce(&mut Self) -> wasmtime::Result<R>) -> Result<R, EvalError> {
        arm(&mut self.store, limits);
        let result = f(self);
        self.store.data_mut().forward_output(false);
        result.map_err(|e| classify(&mut self.store, e, limits))
    }

    /// Copies `bytes` into a fresh buffer of the runtime's.
    fn write_input(&mut self, bytes: &[u8]) -> wasmtime::Result<(i32, i32)> {
        let len = i32::try_from(bytes.len()).map_err(|_| wasmtime::Error::msg("input over 2 GiB"))?;
        let ptr = self.realloc.call(&mut self.store, (0, 0, 1, len))?;
        self.memory.write(&mut self.store, ptr as u32 as usize, bytes)?;
        Ok((ptr, len))
    }

    /// The runtime's result buffer: at most `max` of its bytes, and its whole length.
    fn result_bytes(&mut self, max: usize) -> wasmtime::Result<(Vec<u8>, usize)> {
        let ptr = self.result_ptr.call(&mut self.store, ())? as u32 as usize;
        let len = self.result_len.call(&mut self.store, ())? as u32 as usize;
        let mut out = vec![0; len.min(max)];
        self.memory.read(&self.store, ptr, &mut out)?;
        Ok((out, len))
    }

    /// The runtime's result buffer as a bounded text (an error message the filter controls).
    fn result_text(&mut self) -> wasmtime::Result<String> {
        let (head, len) = self.result_bytes(crate::limits::MAX_ERROR_TEXT_BYTES + 4)?;
        Ok(text::bounded_bytes(&head, len))
    }

    /// Compiles `source`; the inner result is the bytecode or the runtime's (bounded) report.
    fn compile(&mut self, core: &SandboxCore, source: &[u8], module: bool) -> Result<Result<Vec<u8>, String>, EvalError> {
        let limits = core.config.limits;
        self.call(&limits, |instance| {
            let (ptr, len) = instance.write_input(source)?;
            let status = instance.compile.call(&mut instance.store, (ptr, len, i32::from(module)))?;
            Ok(if status == 0 { Ok(instance.result_bytes(MAX_RESULT_BYTES)?.0) } else { Err(instance.result_text()?) })
        })
    }

    fn load(&mut self, core: &SandboxCore, bytecode: &[u8]) -> Result<LoadOutcome, EvalError> {
        let limits = core.config.limits;
        self.call(&limits, |instance| {
            let (ptr, len) = instance.write_input(bytecode)?;
            let status = instance.load.call(&mut instance.store, (ptr, len))?;
            if status == 0 {
                return Ok(LoadOutcome::Loaded);
            }
            let text = instance.result_text()?;
            Ok(if status == 2 { LoadOutcome::NotAFunction(text) } else { LoadOutcome::Threw(text) })
        })
    }

    fn eval(&mut self, _core: &SandboxCore, limits: &Limits, event: &Event) -> Result<Verdict, EvalError> {
        self.store.data_mut().event = EventRef(event);
        let status = self.call(limits, |instance| instance.eval.call(&mut instance.store, ()));
        self.store.data_mut().event = EventRef(std::ptr::null());
        let fuel_used = fuel_used(&self.store, limits);
        match status? {
            1 => Ok(Verdict { matched: true, fuel_used }),
            0 => Ok(Verdict { matched: false, fuel_used }),
            -1 => {
                let message = self.result_text().unwrap_or_else(|e| format!("(message unreadable: {e})"));
                Err(EvalError::Exception(message))
            }
            other => Err(EvalError::Trap(format!("the JS runtime returned status {other}"))),
        }
    }
}

/// Advances the engine's epoch every tick, so deadlines are checked; stops when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rtcrm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
