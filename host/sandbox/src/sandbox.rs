//! The sandbox: one wasmtime [`Engine`] per process, the pre-initialised JS runtime compiled once,
//! and one runtime instance per campaign, each evaluation bounded by fuel, memory and a deadline.

use crate::error::{EvalError, MemoryLimitExceeded, SandboxError};
use crate::event::Event;
use crate::limits::Limits;
use crate::log::{FilterLog, LogCaps, LogSink, LogStream, TracingSink};
use crate::output::CapturedOutput;
use crate::wasm_filter::{CompiledWasm, WasmError, WasmFilter, DEFAULT_MAX_MODULE_BYTES};
use rtcrm_compiler::{build_module, read_module, CompileError, ModuleError, SourceForm, RUNTIME_NAMESPACE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, OptLevel, ResourceLimiter, Store, Trap, TypedFunc,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

/// Host-import module of the JS runtime (event fields and console output).
const HOST_MODULE: &str = "rtcrm:host";
/// Bytes of a filter's stdout/stderr kept until forwarded to the log.
const CAPTURED_OUTPUT_BYTES: usize = 16 * 1024;
/// Longest text read back from the runtime (an error message, or bytecode).
const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;

/// How the sandbox is set up. [`SandboxConfig::default`] is what `rtcrm run` uses.
#[derive(Clone)]
pub struct SandboxConfig {
    /// Host limits; campaigns may only lower them.
    pub limits: Limits,
    /// Count fuel (the CPU budget). Off only for measurements: the deadline is then the only
    /// CPU bound.
    pub fuel_metering: bool,
    /// Largest wasm stack of one evaluation, in bytes.
    pub max_wasm_stack: usize,
    /// Period of the epoch ticker that enforces deadlines.
    pub epoch_tick: Duration,
    /// Where the compiled runtime is cached; `None` compiles it in memory at every start.
    pub cache_dir: Option<PathBuf>,
    /// Caps on each filter's log output.
    pub log_caps: LogCaps,
    /// Where filter output goes.
    pub log_sink: Arc<dyn LogSink>,
    /// Largest JavaScript source accepted.
    pub max_source_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            limits: Limits::default(),
            fuel_metering: true,
            max_wasm_stack: 512 * 1024,
            epoch_tick: Duration::from_millis(1),
            cache_dir: Some(crate::runtime::default_cache_dir()),
            log_caps: LogCaps::default(),
            log_sink: Arc::new(TracingSink),
            max_source_bytes: rtcrm_compiler::DEFAULT_MAX_SOURCE_BYTES,
        }
    }
}

/// The filter sandbox. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) engine: Engine,
    js_runtime: InstancePre<FilterState>,
    pub(crate) linker: Linker<FilterState>,
    pub(crate) config: SandboxConfig,
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
    /// Fuel the evaluation used (0 without fuel metering).
    pub fuel_used: u64,
}

impl Sandbox {
    /// Creates the engine, loads the runtime (from the cache when present) and starts the epoch
    /// ticker.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let mut wasm_config = Config::new();
        wasm_config
            .consume_fuel(config.fuel_metering)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .memory_init_cow(true)
            .cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&wasm_config).map_err(|e| SandboxError::wasmtime("creating the wasmtime engine", e))?;
        let module = crate::runtime::load(&engine, config.cache_dir.as_deref())?;
        let linker = filter_linker(&engine)?;
        let js_runtime = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::wasmtime("linking the JS runtime", e))?;
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick);
        Ok(Sandbox { shared: Arc::new(Shared { engine, js_runtime, linker, config, _ticker: ticker }) })
    }

    /// The engine every filter runs in.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The host limits.
    pub fn limits(&self) -> Limits {
        self.shared.config.limits
    }

    /// Compiles JavaScript `source` (any form of spec §5) into a campaign module, and checks
    /// that it yields a function. Syntax errors carry the line and column in `source`.
    pub fn compile_js(&self, source: &str) -> Result<CompiledJs, CompileError> {
        let max = self.shared.config.max_source_bytes;
        if source.len() > max {
            return Err(CompileError::TooLarge { size: source.len(), max });
        }
        let mut live = self
            .shared
            .instantiate("compiler".into(), self.limits())
            .map_err(|e| CompileError::TopLevelFailed(format!("starting the compiler: {e}")))?;
        let mut reports: Vec<(SourceForm, String)> = Vec::new();
        for form in SourceForm::ALL {
            let text = form.wrap(source);
            match live.compile(&self.shared, text.as_bytes(), form.is_module()) {
                Ok(Ok(bytecode)) => {
                    let compiled = CompiledJs {
                        module: build_module(RUNTIME_NAMESPACE, &bytecode),
                        bytecode: bytecode.into(),
                        form: Some(form),
                    };
                    self.verify(&compiled)?;
                    return Ok(compiled);
                }
                Ok(Err(report)) => reports.push((form, report)),
                Err(e) => return Err(CompileError::TopLevelFailed(format!("compiling: {e}"))),
            }
        }
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
        let mut live = self.shared.instantiate("compiler".into(), self.limits()).ok()?;
        let mut same_error = |cut: usize| -> bool {
            match live.compile(&self.shared, text[..cut].as_bytes(), form.is_module()) {
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
        let mut live = self
            .shared
            .instantiate("compiler".into(), self.limits())
            .map_err(|e| CompileError::TopLevelFailed(format!("starting the runtime: {e}")))?;
        match live.load(&self.shared, &compiled.bytecode) {
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
            shared: self.shared.clone(),
            bytecode: compiled.bytecode.clone(),
            name: name.into(),
            limits,
            live: None,
            rebuilds: 0,
        };
        filter.live = Some(filter.build()?);
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
    /// Validates and compiles a module of the filter ABI (a `filter_wasm` campaign).
    pub fn load_wasm(&self, module: &[u8]) -> Result<CompiledWasm, WasmError> {
        crate::wasm_filter::load(&self.shared, module, DEFAULT_MAX_MODULE_BYTES)
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
            CompiledFilter::Wasm(wasm) => WasmFilter::new(self.shared.clone(), wasm, name, limits).map(Filter::Wasm),
        }
    }
}

/// One campaign's JavaScript filter: a runtime instance of its own, reused across events.
///
/// After an evaluation that traps (fuel, memory, deadline, trap) the instance is discarded and a
/// new one is built from the bytecode (QuickJS's state is not trustworthy after a trap in the
/// middle of a call). An `exception` leaves the instance as it is.
pub struct JsFilter {
    shared: Arc<Shared>,
    bytecode: Arc<[u8]>,
    name: Arc<str>,
    limits: Limits,
    live: Option<Live>,
    rebuilds: u64,
}

impl JsFilter {
    /// Evaluates the filter against `event`.
    pub fn eval(&mut self, event: &Event) -> Result<Verdict, EvalError> {
        if self.live.is_none() {
            let live = self.build()?;
            self.live = Some(live);
        }
        let live = self.live.as_mut().expect("built above");
        let outcome = live.eval(&self.shared, &self.limits, event);
        if let Err(e) = &outcome {
            if e.kind() != crate::ErrorKind::Exception {
                self.live = None;
                self.rebuilds += 1;
                // Rebuild now so the next event does not pay for it; if this fails, the next
                // evaluation retries and reports the failure.
                if let Ok(live) = self.build() {
                    self.live = Some(live);
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

    fn build(&self) -> Result<Live, EvalError> {
        let mut live = self.shared.instantiate(self.name.clone(), self.limits).map_err(|e| match e {
            SandboxError::MemoryLimit { requested, limit } => EvalError::Memory { requested, limit },
            other => EvalError::Trap(format!("instantiating the filter: {other}")),
        })?;
        match live.load(&self.shared, &self.bytecode)? {
            LoadOutcome::Loaded => Ok(live),
            LoadOutcome::Threw(message) => Err(EvalError::Exception(message)),
            LoadOutcome::NotAFunction(found) => Err(EvalError::Trap(format!("the filter evaluates to {found}, not a function"))),
        }
    }
}

/// Store data of one filter instance.
pub(crate) struct FilterState {
    wasi: WasiP1Ctx,
    pub(crate) memory: Option<Memory>,
    event: EventRef,
    memory_limit: usize,
    pub(crate) memory_exceeded: Option<usize>,
    log: FilterLog,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

/// The event under evaluation, set only for the duration of a call into the filter.
#[derive(Clone, Copy)]
struct EventRef(*const Event);

// SAFETY: the pointer is only dereferenced by host functions during `Live::eval`, on the thread
// that holds `&Event` for that whole call, and is reset before `eval` returns.
unsafe impl Send for EventRef {}
unsafe impl Sync for EventRef {}

impl FilterState {
    fn event(&self) -> Option<&Event> {
        // SAFETY: see `EventRef`.
        unsafe { self.event.0.as_ref() }
    }

    pub(crate) fn forward_output(&mut self, flush_all: bool) {
        for stream in [LogStream::Out, LogStream::Err] {
            let out = if stream == LogStream::Out { &self.stdout } else { &self.stderr };
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

impl ResourceLimiter for FilterState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = Some(desired);
            return Err(wasmtime::Error::new(MemoryLimitExceeded { requested: desired, limit: self.memory_limit }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The linker every filter instance is built from: WASI preview 1 without capabilities, and the
/// JS runtime's host imports.
fn filter_linker(engine: &Engine) -> Result<Linker<FilterState>, SandboxError> {
    let mut linker: Linker<FilterState> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)
        .map_err(|e| SandboxError::wasmtime("linking WASI", e))?;
    linker
        .func_wrap(HOST_MODULE, "event_field", host_event_field)
        .and_then(|l| l.func_wrap(HOST_MODULE, "event_keys", host_event_keys))
        .and_then(|l| l.func_wrap(HOST_MODULE, "log", host_log))
        .map_err(|e| SandboxError::wasmtime("linking the rtcrm host functions", e))?;
    Ok(linker)
}

/// `[ptr, ptr + len)` of guest memory, if it is in bounds.
fn guest_range(data: &[u8], ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    (end <= data.len()).then_some(start..end)
}

/// Writes `bytes` and a NUL into `buf` when they fit; returns `bytes.len()` either way.
fn write_with_nul(data: &mut [u8], buf_ptr: i32, buf_cap: i32, bytes: &[u8]) -> i32 {
    if bytes.len() < buf_cap as u32 as usize {
        if let Some(range) = guest_range(data, buf_ptr, bytes.len() as i32 + 1) {
            let dst = &mut data[range];
            dst[..bytes.len()].copy_from_slice(bytes);
            dst[bytes.len()] = 0;
        }
    }
    bytes.len() as i32
}

fn host_event_field(mut caller: Caller<'_, FilterState>, key_ptr: i32, key_len: i32, buf_ptr: i32, buf_cap: i32) -> i32 {
    let Some(memory) = caller.data().memory else { return -1 };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(event) = state.event() else { return -1 };
    let raw = {
        let Some(range) = guest_range(data, key_ptr, key_len) else { return -1 };
        let Ok(key) = std::str::from_utf8(&data[range]) else { return -1 };
        match event.field(key) {
            Some(raw) => raw,
            None => return -1,
        }
    };
    write_with_nul(data, buf_ptr, buf_cap, raw)
}

fn host_event_keys(mut caller: Caller<'_, FilterState>, buf_ptr: i32, buf_cap: i32) -> i32 {
    let Some(memory) = caller.data().memory else { return -1 };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let Some(event) = state.event() else { return -1 };
    let keys = event.keys_json();
    write_with_nul(data, buf_ptr, buf_cap, keys.as_bytes())
}

fn host_log(mut caller: Caller<'_, FilterState>, level: i32, ptr: i32, len: i32) {
    let Some(memory) = caller.data().memory else { return };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let len = (len as u32 as usize).min(state.log.max_line_bytes()) as i32;
    let Some(range) = guest_range(data, ptr, len) else { return };
    let stream = if level == 0 { LogStream::Out } else { LogStream::Err };
    state.log.line(stream, &data[range]);
}

impl Shared {
    /// A store for one filter instance: WASI without capabilities (output captured for the log),
    /// the memory cap, the deadline armed.
    pub(crate) fn new_store(&self, name: Arc<str>, limits: Limits) -> Store<FilterState> {
        let stdout = CapturedOutput::new(CAPTURED_OUTPUT_BYTES);
        let stderr = CapturedOutput::new(CAPTURED_OUTPUT_BYTES);
        // No preopened directories, no environment, no arguments, no network.
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build_p1();
        let state = FilterState {
            wasi,
            memory: None,
            event: EventRef(std::ptr::null()),
            memory_limit: limits.memory_bytes,
            memory_exceeded: None,
            log: FilterLog::new(name, self.config.log_sink.clone(), self.config.log_caps),
            stdout,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(self.deadline_ticks(&limits));
        store
    }

    fn instantiate(&self, name: Arc<str>, limits: Limits) -> Result<Live, SandboxError> {
        let mut store = self.new_store(name, limits);
        let instance = match self.js_runtime.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                return Err(match store.data().memory_exceeded {
                    Some(requested) => SandboxError::MemoryLimit { requested, limit: limits.memory_bytes },
                    None => SandboxError::wasmtime("instantiating the JS runtime", e),
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
        Ok(Live {
            realloc: get(&mut store, "cabi_realloc")?.typed(&store).map_err(typed_err)?,
            compile: get(&mut store, "rtcrm_compile")?.typed(&store).map_err(typed_err)?,
            load: get(&mut store, "rtcrm_load")?.typed(&store).map_err(typed_err)?,
            eval: get(&mut store, "rtcrm_eval")?.typed(&store).map_err(typed_err)?,
            result_ptr: get(&mut store, "rtcrm_result_ptr")?.typed(&store).map_err(typed_err)?,
            result_len: get(&mut store, "rtcrm_result_len")?.typed(&store).map_err(typed_err)?,
            memory,
            store,
        })
    }

    pub(crate) fn deadline_ticks(&self, limits: &Limits) -> u64 {
        let tick = self.config.epoch_tick.as_nanos().max(1);
        // +1: the current tick may be about to end.
        (limits.deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
    }
}

/// A live runtime instance.
struct Live {
    store: Store<FilterState>,
    memory: Memory,
    realloc: TypedFunc<(i32, i32, i32, i32), i32>,
    compile: TypedFunc<(i32, i32, i32), i32>,
    load: TypedFunc<(i32, i32), i32>,
    eval: TypedFunc<(), i32>,
    result_ptr: TypedFunc<(), i32>,
    result_len: TypedFunc<(), i32>,
}

enum LoadOutcome {
    Loaded,
    Threw(String),
    NotAFunction(String),
}

/// Resets a store's per-call budgets: fuel and the deadline.
pub(crate) fn arm(store: &mut Store<FilterState>, shared: &Shared, limits: &Limits) {
    if shared.config.fuel_metering {
        store.set_fuel(limits.fuel).expect("fuel metering is on");
    }
    store.set_epoch_deadline(shared.deadline_ticks(limits));
}

/// Classifies a failed call by trap type, never by text. A memory-cap error is known from the
/// limiter's record (it is set before the limiter fails the growth).
pub(crate) fn classify(store: &mut Store<FilterState>, err: wasmtime::Error, limits: &Limits) -> EvalError {
    if let Some(requested) = store.data_mut().memory_exceeded.take() {
        return EvalError::Memory { requested, limit: limits.memory_bytes };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => EvalError::Fuel { limit: limits.fuel },
        Some(Trap::Interrupt) => EvalError::Deadline { limit: limits.deadline },
        Some(trap) => EvalError::Trap(trap.to_string()),
        None => EvalError::Trap(format!("{err}")),
    }
}

/// The fuel a call used, after [`arm`].
pub(crate) fn fuel_used(store: &Store<FilterState>, shared: &Shared, limits: &Limits) -> u64 {
    if shared.config.fuel_metering {
        limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
    } else {
        0
    }
}

impl Live {
    fn call<R>(
        &mut self,
        shared: &Shared,
        limits: &Limits,
        f: impl FnOnce(&mut Self) -> wasmtime::Result<R>,
    ) -> Result<R, EvalError> {
        arm(&mut self.store, shared, limits);
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

    fn result_bytes(&mut self) -> wasmtime::Result<Vec<u8>> {
        let ptr = self.result_ptr.call(&mut self.store, ())? as u32 as usize;
        let len = (self.result_len.call(&mut self.store, ())? as u32 as usize).min(MAX_RESULT_BYTES);
        let mut out = vec![0; len];
        self.memory.read(&self.store, ptr, &mut out)?;
        Ok(out)
    }

    /// Compiles `source`; the inner result is the bytecode or the runtime's error report.
    fn compile(&mut self, shared: &Shared, source: &[u8], module: bool) -> Result<Result<Vec<u8>, String>, EvalError> {
        let limits = shared.config.limits;
        self.call(shared, &limits, |live| {
            let (ptr, len) = live.write_input(source)?;
            let status = live.compile.call(&mut live.store, (ptr, len, i32::from(module)))?;
            let out = live.result_bytes()?;
            Ok(if status == 0 { Ok(out) } else { Err(String::from_utf8_lossy(&out).into_owned()) })
        })
    }

    fn load(&mut self, shared: &Shared, bytecode: &[u8]) -> Result<LoadOutcome, EvalError> {
        let limits = shared.config.limits;
        self.call(shared, &limits, |live| {
            let (ptr, len) = live.write_input(bytecode)?;
            let status = live.load.call(&mut live.store, (ptr, len))?;
            if status == 0 {
                return Ok(LoadOutcome::Loaded);
            }
            let text = String::from_utf8_lossy(&live.result_bytes()?).into_owned();
            Ok(if status == 2 { LoadOutcome::NotAFunction(text) } else { LoadOutcome::Threw(text) })
        })
    }

    fn eval(&mut self, shared: &Shared, limits: &Limits, event: &Event) -> Result<Verdict, EvalError> {
        self.store.data_mut().event = EventRef(event);
        let status = self.call(shared, limits, |live| live.eval.call(&mut live.store, ()));
        self.store.data_mut().event = EventRef(std::ptr::null());
        let fuel_used = fuel_used(&self.store, shared, limits);
        match status? {
            1 => Ok(Verdict { matched: true, fuel_used }),
            0 => Ok(Verdict { matched: false, fuel_used }),
            -1 => {
                let message = self
                    .result_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| format!("(message unreadable: {e})"));
                Err(EvalError::Exception(message))
            }
            other => Err(EvalError::Trap(format!("the JS runtime returned status {other}"))),
        }
    }
}

/// Advances the engine's epoch every tick, so deadlines fire; stops when dropped.
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
