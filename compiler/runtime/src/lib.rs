//! The rtcrm JavaScript runtime: a Javy plugin (QuickJS compiled to `wasm32-wasip1`).
//!
//! The host pre-initialises this module once with wasmtime-wizer (running `initialize-runtime`),
//! compiles it once per process, and gives every campaign its own instance. Besides Javy's
//! standard exports (`cabi_realloc`, `compile-src`, `invoke`) it exports rtcrm's entry points:
//!
//! | export | what it does |
//! | --- | --- |
//! | `rtcrm_compile(src, len, kind) -> status` | compile source to bytecode (`kind` 0 = script, 1 = ES module); fresh instance per call |
//! | `rtcrm_load(bytecode, len) -> status` | evaluate the bytecode once and keep the function it yields as this instance's filter |
//! | `rtcrm_eval() -> status` | call the filter with the current event (1 match, 0 no match, -1 exception) |
//! | `rtcrm_state_buffer(len) -> ptr` | a buffer of `len` bytes (followed by a NUL) for a player's stored state |
//! | `rtcrm_eval_state(len) -> status` | call the filter as `filter(event, state)`, `state` parsed from the state buffer's `len` bytes (`{}` when 0); on 1 or 0 the result buffer holds the state's JSON afterwards (see [`rtcrm_eval_state`]) |
//! | `rtcrm_result_ptr()`, `rtcrm_result_len()` | the output of the last call: bytecode, or an error text |
//!
//! The event never enters QuickJS as a whole. The host parses each event once and serves its
//! top-level fields through the `rtcrm:host` imports; the filter's argument is a native object
//! (`event_object`) that fetches a field the first time the filter reads it. Every campaign's
//! instance reads the same parsed event, and none can see or change another's state (each
//! instance has its own memory).
//!
//! # Global state and `unsafe`
//! Everything the runtime keeps between calls lives in one [`Globals`] value, reached through
//! [`globals`]: the rquickjs context, the raw context and filter for the C API hot path, the
//! result and scratch buffers, and the event object's class, prototypes and caches. Each field is
//! a `Cell` or `RefCell`, so a re-entrant call (QuickJS calling back into the event object while
//! `rtcrm_eval` runs) can never alias a `&mut`; a conflicting borrow would panic, which aborts the
//! instance (a trap), never undefined behaviour. The module is built only for `wasm32-wasip1`
//! without threads, which is what makes one unsynchronised global sound (see
//! [`SingleThreaded`]). Every other `unsafe` is a call into QuickJS's C API; each block states the
//! invariant it relies on.
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_feature = "atomics")]
compile_error!("the rtcrm JS runtime keeps unsynchronised global state: build it without the threads proposal");

use javy_plugin_api::{
    import_namespace,
    javy::{
        quickjs::{self as rq, qjs, CatchResultExt, Ctx, Module, Value, WriteOptions},
        Runtime,
    },
    Config,
};
use std::cell::{Cell, OnceCell, RefCell};
use std::io::{self, Write};

mod event_object;
mod state;

// The namespace carries the runtime's version: a campaign module imports it, so a module built for
// another runtime version is detected at load. Bump it whenever the bytecode format or the
// filter contract changes (e.g. a new QuickJS).
import_namespace!("rtcrm-js-v1");

#[link(wasm_import_module = "rtcrm:host")]
extern "C" {
    /// Writes the raw JSON of the current event's top-level field `key` followed by a NUL byte into
    /// `buf` (when it fits) and returns the JSON's length; returns -1 when the event has no such field.
    fn event_field(key_ptr: *const u8, key_len: usize, buf_ptr: *mut u8, buf_cap: usize) -> i32;
    /// Writes the current event's top-level keys as a JSON array plus a NUL byte; returns the length.
    fn event_keys(buf_ptr: *mut u8, buf_cap: usize) -> i32;
    /// One line of `console` output (`level` 0 = log, 1 = error); the host caps and rate-limits it.
    fn log(level: i32, ptr: *const u8, len: usize);
}

const FILE_NAME: &str = "filter.js";
/// Kind byte that prefixes every bytecode blob this runtime writes.
const KIND_SCRIPT: u8 = 0;
const KIND_MODULE: u8 = 1;

/// Everything the runtime keeps between calls (see the crate doc).
pub(crate) struct Globals {
    /// The rquickjs context, set once by `initialize-runtime`.
    context: OnceCell<rq::Context>,
    /// The same context, for the C API on the hot path (it lives as long as the instance).
    raw_ctx: Cell<*mut qjs::JSContext>,
    /// The loaded filter function (one owned reference), for the C API on the hot path.
    filter: Cell<qjs::JSValue>,
    /// The output of the last call, read by the host through `rtcrm_result_ptr`/`_len`.
    result: RefCell<Vec<u8>>,
    /// The buffer the host writes event fields into.
    scratch: RefCell<Vec<u8>>,
    /// A player's stored state as the host wrote it for `rtcrm_eval_state`, then a NUL.
    state_in: RefCell<Vec<u8>>,
    /// What the state's plain-data check compares with (`state`): `Object.prototype` (owned), the
    /// class id of a plain object, and the replacer `JSON.stringify` runs over the state (owned).
    object_proto: Cell<qjs::JSValue>,
    plain_class: Cell<qjs::JSClassID>,
    state_replacer: Cell<qjs::JSValue>,
    /// The event object's class, prototypes, caches and evaluation generation.
    pub(crate) event: event_object::EventGlobals,
}

/// Makes a value shareable as a `static` in this single-threaded module.
pub(crate) struct SingleThreaded<T>(T);

// SAFETY: this crate is only built for wasm32-wasip1 without the threads proposal (the
// `compile_error!` above refuses `target_feature = "atomics"`), so there is exactly one thread:
// no value behind this wrapper is ever reached from two threads.
unsafe impl<T> Sync for SingleThreaded<T> {}

static GLOBALS: SingleThreaded<Globals> = SingleThreaded(Globals {
    context: OnceCell::new(),
    raw_ctx: Cell::new(std::ptr::null_mut()),
    filter: Cell::new(qjs::JS_UNDEFINED),
    result: RefCell::new(Vec::new()),
    scratch: RefCell::new(Vec::new()),
    state_in: RefCell::new(Vec::new()),
    object_proto: Cell::new(qjs::JS_UNDEFINED),
    plain_class: Cell::new(0),
    state_replacer: Cell::new(qjs::JS_UNDEFINED),
    event: event_object::EventGlobals::new(),
});

/// The runtime's global state.
pub(crate) fn globals() -> &'static Globals {
    &GLOBALS.0
}

/// `console` output goes to the host, a line at a time.
struct HostLog {
    level: i32,
    line: Vec<u8>,
}

impl Write for HostLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.flush()?;
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // SAFETY: the host reads `len` bytes at `ptr`, which `self.line` owns for this call.
        unsafe { log(self.level, self.line.as_ptr(), self.line.len()) };
        self.line.clear();
        Ok(())
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config
        .javy_stream_io(false)
        .text_encoding(false)
        .redirect_stdout_to_stderr(false)
        // Reference counting frees most garbage at once; the cycle collector runs past this.
        .gc_threshold(2 * 1024 * 1024)
        .log_stream(Box::new(HostLog { level: 0, line: Vec::new() }))
        .err_stream(Box::new(HostLog { level: 1, line: Vec::new() }));
    config
}

fn modify_runtime(runtime: Runtime) -> Runtime {
    let context = runtime.context().clone();
    context.with(|ctx| {
        let globals = ctx.globals();
        // No I/O reaches a filter: drop whatever Javy namespaces exist.
        for name in ["Javy", "__javy_io", "require", "process", "std", "os"] {
            let _ = globals.remove(name);
        }
        let raw = ctx.as_raw().as_ptr();
        // SAFETY: `raw` is the runtime's live context; `install` runs once, here.
        unsafe { event_object::install(raw) };
        // SAFETY: as above; `state::install` runs once, here.
        unsafe { state::install(raw) };
        crate::globals().raw_ctx.set(raw);
    });
    let g = globals();
    *g.scratch.borrow_mut() = vec![0; 16 * 1024];
    if g.context.set(context).is_err() {
        panic!("initialize-runtime ran twice");
    }
    runtime
}

#[export_name = "initialize-runtime"]
pub extern "C" fn initialize_runtime() {
    javy_plugin_api::initialize_runtime(config, modify_runtime).unwrap()
}

/// Asks the host for a value with `call(buf, cap)` (which writes it and a NUL into the scratch
/// buffer when it fits and returns its length, or -1), growing the buffer once if the value is
/// larger. Returns the length.
fn fetch(call: impl Fn(*mut u8, usize) -> i32) -> Option<usize> {
    let mut scratch = globals().scratch.borrow_mut();
    let mut len = call(scratch.as_mut_ptr(), scratch.len());
    if len < 0 {
        return None;
    }
    if len as usize + 1 > scratch.len() {
        scratch.resize(len as usize + 1, 0);
        len = call(scratch.as_mut_ptr(), scratch.len());
    }
    Some(len as usize)
}

/// Fetches the current event's top-level field `name` into the scratch buffer.
pub(crate) fn fetch_field(name: &[u8]) -> Option<usize> {
    // SAFETY: the host writes at most `cap` bytes at `buf` (the scratch buffer, borrowed for the
    // call) and reads `name.len()` bytes at `name`.
    fetch(|buf, cap| unsafe { event_field(name.as_ptr(), name.len(), buf, cap) })
}

/// Fetches the current event's top-level keys (a JSON array) into the scratch buffer.
pub(crate) fn fetch_keys() -> Option<usize> {
    // SAFETY: as in `fetch_field`.
    fetch(|buf, cap| unsafe { event_keys(buf, cap) })
}

/// The scratch buffer, holding the last fetched value followed by a NUL.
pub(crate) fn scratch() -> std::cell::Ref<'static, Vec<u8>> {
    globals().scratch.borrow()
}

pub(crate) fn context() -> &'static rq::Context {
    globals().context.get().expect("initialize-runtime ran before this call")
}

pub(crate) fn set_result(bytes: Vec<u8>) {
    *globals().result.borrow_mut() = bytes;
}

/// A readable text for a thrown JavaScript value: `Name: message` for errors.
pub(crate) fn describe_exception<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    if let Some(obj) = value.as_object() {
        let name: Option<String> = obj.get("name").ok();
        let message: Option<String> = obj.get("message").ok();
        if let Some(message) = message {
            return match name {
                Some(name) if !name.is_empty() => format!("{name}: {message}"),
                _ => message,
            };
        }
    }
    ctx.json_stringify(value.clone())
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .or_else(|| value.as_string().and_then(|s| s.to_string().ok()))
        .unwrap_or_else(|| format!("uncaught {}", value.type_name()))
}

/// `line:column:message` for a compile error; 0 when QuickJS gave no position.
fn describe_compile_error<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    let text = describe_exception(ctx, value);
    let stack: String = value.as_object().and_then(|o| o.get::<_, String>("stack").ok()).unwrap_or_default();
    let (mut line, mut column) = (0u32, 0u32);
    let marker = format!("{FILE_NAME}:");
    if let Some(at) = stack.find(&marker) {
        let mut parts = stack[at + marker.len()..].split(|c: char| !c.is_ascii_digit());
        line = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        column = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    }
    format!("{line}:{column}:{text}")
}

/// Compiles `src` to bytecode. Returns 0 (result: kind byte + bytecode) or 1 (result:
/// `line:column:message`).
///
/// # Safety
/// `src_ptr` points to `src_len` readable bytes (the host allocated them with `cabi_realloc`).
#[export_name = "rtcrm_compile"]
pub unsafe extern "C" fn rtcrm_compile(src_ptr: *const u8, src_len: usize, kind: u32) -> i32 {
    // SAFETY: guaranteed by the caller (this function's contract).
    let src = unsafe { std::slice::from_raw_parts(src_ptr, src_len) }.to_vec();
    context().with(|ctx| {
        let compiled: rq::Result<Vec<u8>> = if kind == 1 {
            Module::declare(ctx.clone(), FILE_NAME, src).and_then(|m| {
                let mut out = m.write(WriteOptions { strip_source: true, ..Default::default() })?;
                out.insert(0, KIND_MODULE);
                Ok(out)
            })
        } else {
            compile_script(&ctx, src)
        };
        match compiled.catch(&ctx) {
            Ok(bytes) => {
                set_result(bytes);
                0
            }
            Err(rq::CaughtError::Exception(e)) => {
                set_result(describe_compile_error(&ctx, &e.into_value()).into_bytes());
                1
            }
            Err(rq::CaughtError::Value(v)) => {
                set_result(describe_compile_error(&ctx, &v).into_bytes());
                1
            }
            Err(rq::CaughtError::Error(e)) => {
                set_result(format!("0:0:{e}").into_bytes());
                1
            }
        }
    })
}

/// Compiles global code (its completion value is the filter, as with the original's `eval`).
fn compile_script(ctx: &Ctx<'_>, src: Vec<u8>) -> rq::Result<Vec<u8>> {
    let len = src.len();
    let src = std::ffi::CString::new(src)?;
    let file = std::ffi::CString::new(FILE_NAME)?;
    let raw = ctx.as_raw().as_ptr();
    // SAFETY: `raw` is the live context of `ctx`; `src` and `file` are NUL-terminated and outlive
    // the calls; `func` is owned here and freed once; `buf` is QuickJS memory of `size` bytes,
    // copied before it is freed with `js_free`.
    unsafe {
        let func = qjs::JS_Eval(raw, src.as_ptr(), len as _, file.as_ptr(), (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32);
        if qjs::JS_IsException(func) {
            return Err(rq::Error::Exception);
        }
        let mut size = 0;
        let buf = qjs::JS_WriteObject(raw, &mut size, func, (qjs::JS_WRITE_OBJ_BYTECODE | qjs::JS_WRITE_OBJ_STRIP_SOURCE) as i32);
        qjs::JS_FreeValue(raw, func);
        if buf.is_null() {
            return Err(rq::Error::Exception);
        }
        let mut out = Vec::with_capacity(size as usize + 1);
        out.push(KIND_SCRIPT);
        out.extend_from_slice(std::slice::from_raw_parts(buf, size as usize));
        qjs::js_free(raw, buf.cast());
        Ok(out)
    }
}

/// Evaluates the bytecode and keeps the function it yields as this instance's filter. Returns 0;
/// 1 when evaluation threw (the message is in the result buffer); 2 when it yielded no function
/// (the result buffer names the type it yielded).
///
/// # Safety
/// `ptr` points to `len` readable bytes (the host allocated them with `cabi_realloc`).
#[export_name = "rtcrm_load"]
pub unsafe extern "C" fn rtcrm_load(ptr: *const u8, len: usize) -> i32 {
    // SAFETY: guaranteed by the caller (this function's contract).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    context().with(|ctx| {
        let loaded = match bytes.split_first() {
            Some((&KIND_SCRIPT, code)) => load_script(&ctx, code),
            Some((&KIND_MODULE, code)) => load_module(&ctx, code),
            _ => {
                set_result(b"not rtcrm bytecode".to_vec());
                return 1;
            }
        };
        match loaded.catch(&ctx) {
            Ok(value) => match value.into_function() {
                Some(f) => {
                    let raw = ctx.as_raw().as_ptr();
                    let g = globals();
                    // SAFETY: `raw` is the live context; the stored filter is one owned reference
                    // (freed here before it is replaced), the new one is duplicated from `f`.
                    unsafe {
                        qjs::JS_FreeValue(raw, g.filter.get());
                        g.filter.set(qjs::JS_DupValue(raw, f.as_raw()));
                    }
                    run_pending_jobs(&ctx);
                    0
                }
                None => 2,
            },
            Err(e) => {
                set_result(caught_text(&ctx, e).into_bytes());
                1
            }
        }
    })
}

fn load_script<'js>(ctx: &Ctx<'js>, code: &[u8]) -> rq::Result<Value<'js>> {
    let raw = ctx.as_raw().as_ptr();
    // SAFETY: `raw` is the live context of `ctx`; `code` is readable for its length and QuickJS
    // validates bytecode it reads (`JS_ReadObject` fails on malformed input); the evaluated value
    // is a new reference handed to `Value::from_raw`, which takes ownership.
    unsafe {
        let obj = qjs::JS_ReadObject(raw, code.as_ptr(), code.len() as _, qjs::JS_READ_OBJ_BYTECODE as i32);
        if qjs::JS_IsException(obj) {
            return Err(rq::Error::Exception);
        }
        let v = qjs::JS_EvalFunction(raw, obj);
        if qjs::JS_IsException(v) {
            return Err(rq::Error::Exception);
        }
        let v = Value::from_raw(ctx.clone(), v);
        record_type(&v);
        Ok(v)
    }
}

fn load_module<'js>(ctx: &Ctx<'js>, code: &[u8]) -> rq::Result<Value<'js>> {
    // SAFETY: `Module::load` requires bytecode written by this QuickJS build; the host only loads
    // bytecode this runtime version compiled (the import namespace carries the version), and
    // QuickJS checks the bytecode's version and bounds as it reads it.
    let module = unsafe { Module::load(ctx.clone(), code)? };
    let (module, promise) = module.eval()?;
    run_pending_jobs(ctx);
    if let Some(result) = promise.result::<Value>() {
        result?;
    }
    let v: Value = module.get("default")?;
    record_type(&v);
    Ok(v)
}

/// Remembers what the source evaluated to, for the "not a function" message.
fn record_type(v: &Value<'_>) {
    use rq::Type;
    let name = match v.type_of() {
        Type::Uninitialized | Type::Undefined => "undefined",
        Type::Null => "null",
        Type::Bool => "boolean",
        Type::Int | Type::Float => "number",
        Type::String => "string",
        Type::Symbol => "symbol",
        Type::BigInt => "bigint",
        Type::Array => "an array",
        Type::Constructor | Type::Function => "function",
        _ => "object",
    };
    set_result(name.as_bytes().to_vec());
}

fn caught_text<'js>(ctx: &Ctx<'js>, e: rq::CaughtError<'js>) -> String {
    match e {
        rq::CaughtError::Exception(e) => describe_exception(ctx, &e.into_value()),
        rq::CaughtError::Value(v) => describe_exception(ctx, &v),
        rq::CaughtError::Error(e) => e.to_string(),
    }
}

pub(crate) fn run_pending_jobs(ctx: &Ctx<'_>) {
    let raw = ctx.as_raw().as_ptr();
    // SAFETY: `raw` is the live context; a pending job's exception is an owned value, freed here.
    unsafe {
        let rt = qjs::JS_GetRuntime(raw);
        let mut job_ctx = std::ptr::null_mut();
        // Bounded: a filter that keeps scheduling jobs is stopped by fuel.
        while qjs::JS_IsJobPending(rt) {
            if qjs::JS_ExecutePendingJob(rt, &mut job_ctx) < 0 {
                // The job threw: drop the exception, the filter's verdict is already taken.
                let exc = qjs::JS_GetException(raw);
                qjs::JS_FreeValue(raw, exc);
            }
        }
    }
}

/// Calls the filter with the current event: 1 when it returned boolean `true`, 0 for any other
/// value, -1 when it threw (the message is in the result buffer), -2 when no filter is loaded.
///
/// Each call is a new evaluation generation: an event object of an earlier call that the filter
/// kept throws when used (`event_object`), so it can never present this call's event.
#[export_name = "rtcrm_eval"]
pub extern "C" fn rtcrm_eval() -> i32 {
    let g = globals();
    let ctx = g.raw_ctx.get();
    let filter = g.filter.get();
    // SAFETY: `ctx` is null or the runtime's live context (set once in `initialize-runtime`);
    // `filter` is an owned reference kept in the globals; `event` is a new reference freed once
    // after the call; `result` is owned and freed once.
    unsafe {
        if ctx.is_null() || !qjs::JS_IsFunction(ctx, filter) {
            set_result(b"no filter loaded".to_vec());
            return -2;
        }
        let _evaluation = event_object::Evaluation::begin();
        let mut event = event_object::new_event(ctx);
        if qjs::JS_IsException(event) {
            return report_exception();
        }
        let result = qjs::JS_Call(ctx, filter, qjs::JS_UNDEFINED, 1, &mut event);
        qjs::JS_FreeValue(ctx, event);
        if qjs::JS_IsException(result) {
            return report_exception();
        }
        let matched = qjs::JS_VALUE_GET_TAG(result) == qjs::JS_TAG_BOOL && qjs::JS_VALUE_GET_BOOL(result);
        qjs::JS_FreeValue(ctx, result);
        if qjs::JS_IsJobPending(qjs::JS_GetRuntime(ctx)) {
            context().with(|ctx| run_pending_jobs(&ctx));
        }
        i32::from(matched)
    }
}

/// Takes the pending exception into the result buffer; returns -1.
pub(crate) fn report_exception() -> i32 {
    context().with(|ctx| {
        let exc = ctx.catch();
        set_result(describe_exception(&ctx, &exc).into_bytes());
        run_pending_jobs(&ctx);
    });
    -1
}

#[export_name = "rtcrm_result_ptr"]
pub extern "C" fn rtcrm_result_ptr() -> *const u8 {
    // The pointer stays valid until the next call replaces the result; the host reads it before.
    globals().result.borrow().as_ptr()
}

#[export_name = "rtcrm_result_len"]
pub extern "C" fn rtcrm_result_len() -> usize {
    globals().result.borrow().len()
}
