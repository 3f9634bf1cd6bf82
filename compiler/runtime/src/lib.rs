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
//! | `rtcrm_result_ptr()`, `rtcrm_result_len()` | the output of the last call: bytecode, or an error text |
//!
//! The event never enters QuickJS as a whole. The host parses each event once and serves its
//! top-level fields through the `rtcrm:host` imports; the filter's argument is a native object
//! (`event_object`) that fetches a field the first time the filter reads it. Every campaign's instance reads the same parsed
//! event, and none can see or change another's state (each instance has its own memory).
#![allow(static_mut_refs)]

use javy_plugin_api::{
    import_namespace,
    javy::{
        quickjs::{
            self as rq, qjs, CatchResultExt, Ctx, Function, Module, Value, WriteOptions,
        },
        Runtime,
    },
    Config,
};
use std::io::{self, Write};

mod event_object;

// The namespace carries the runtime's version: a campaign module imports it, so a module built for
// another runtime version is detected at load. Bump it whenever the bytecode format or the
// filter contract changes (e.g. a new QuickJS).
import_namespace!("rtcrm-js-v1");

#[link(wasm_import_module = "rtcrm:host")]
extern "C" {
    /// Writes the raw JSON of the current event's top-level field `key` followed by a NUL byte into
    /// `buf` (when it fits) and returns the JSON's length; returns -1 when the event has no such field.
    pub(crate) fn event_field(key_ptr: *const u8, key_len: usize, buf_ptr: *mut u8, buf_cap: usize) -> i32;
    /// Writes the current event's top-level keys as a JSON array plus a NUL byte; returns the length.
    pub(crate) fn event_keys(buf_ptr: *mut u8, buf_cap: usize) -> i32;
    /// One line of `console` output (`level` 0 = log, 1 = error); the host caps and rate-limits it.
    fn log(level: i32, ptr: *const u8, len: usize);
}

const FILE_NAME: &str = "filter.js";
/// Kind byte that prefixes every bytecode blob this runtime writes.
const KIND_SCRIPT: u8 = 0;
const KIND_MODULE: u8 = 1;

static mut CONTEXT: Option<rq::Context> = None;
/// The same context, for the C API on the hot path (it lives as long as the instance).
static mut RAW_CTX: *mut qjs::JSContext = std::ptr::null_mut();
/// The loaded filter function (owned), for the C API on the hot path.
static mut RAW_FILTER: qjs::JSValue = qjs::JS_UNDEFINED;
static mut RESULT: Vec<u8> = Vec::new();
static mut SCRATCH: Vec<u8> = Vec::new();

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
        unsafe {
            event_object::install(ctx.as_raw().as_ptr());
            RAW_CTX = ctx.as_raw().as_ptr();
        }
    });
    unsafe {
        SCRATCH = vec![0; 16 * 1024];
        CONTEXT = Some(context);
    }
    runtime
}

#[export_name = "initialize-runtime"]
pub extern "C" fn initialize_runtime() {
    javy_plugin_api::initialize_runtime(config, modify_runtime).unwrap()
}

/// Whether the value in the scratch buffer holds an object below its top level.
pub(crate) fn scratch_has_nested_object(len: usize) -> bool {
    unsafe { len > 1 && SCRATCH[1..len].contains(&b'{') }
}

/// Calls a host accessor that fills the scratch buffer, growing it once if the value is larger.
pub(crate) fn fetch(call: impl Fn(*mut u8, usize) -> i32) -> Option<usize> {
    unsafe {
        let mut len = call(SCRATCH.as_mut_ptr(), SCRATCH.len());
        if len < 0 {
            return None;
        }
        if len as usize + 1 > SCRATCH.len() {
            SCRATCH.resize(len as usize + 1, 0);
            len = call(SCRATCH.as_mut_ptr(), SCRATCH.len());
        }
        Some(len as usize)
    }
}

/// The first `len` bytes of the scratch buffer.
pub(crate) unsafe fn scratch(len: usize) -> &'static [u8] {
    let scratch: &'static Vec<u8> = &*std::ptr::addr_of!(SCRATCH);
    &scratch[..len]
}

/// Parses the JSON in the scratch buffer (NUL-terminated by the host); a new reference, or an
/// exception value.
pub(crate) unsafe fn parse_scratch_raw(ctx: *mut qjs::JSContext, len: usize) -> qjs::JSValue {
    qjs::JS_ParseJSON(ctx, SCRATCH.as_ptr().cast(), len as _, c"event".as_ptr())
}

fn context() -> &'static rq::Context {
    unsafe { CONTEXT.as_ref().expect("initialize-runtime ran before this call") }
}

fn set_result(bytes: Vec<u8>) {
    unsafe { RESULT = bytes };
}

/// A readable text for a thrown JavaScript value: `Name: message` for errors.
fn describe_exception<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
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
    let stack: String = value
        .as_object()
        .and_then(|o| o.get::<_, String>("stack").ok())
        .unwrap_or_default();
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
#[export_name = "rtcrm_compile"]
pub unsafe extern "C" fn rtcrm_compile(src_ptr: *const u8, src_len: usize, kind: u32) -> i32 {
    let src = std::slice::from_raw_parts(src_ptr, src_len).to_vec();
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
    unsafe {
        let func = qjs::JS_Eval(
            ctx.as_raw().as_ptr(),
            src.as_ptr(),
            len as _,
            file.as_ptr(),
            (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32,
        );
        if qjs::JS_IsException(func) {
            return Err(rq::Error::Exception);
        }
        let mut size = 0;
        let buf = qjs::JS_WriteObject(
            ctx.as_raw().as_ptr(),
            &mut size,
            func,
            (qjs::JS_WRITE_OBJ_BYTECODE | qjs::JS_WRITE_OBJ_STRIP_SOURCE) as i32,
        );
        qjs::JS_FreeValue(ctx.as_raw().as_ptr(), func);
        if buf.is_null() {
            return Err(rq::Error::Exception);
        }
        let mut out = Vec::with_capacity(size as usize + 1);
        out.push(KIND_SCRIPT);
        out.extend_from_slice(std::slice::from_raw_parts(buf, size as usize));
        qjs::js_free(ctx.as_raw().as_ptr(), buf.cast());
        Ok(out)
    }
}

/// Evaluates the bytecode and keeps the function it yields as this instance's filter. Returns 0;
/// 1 when evaluation threw (the message is in the result buffer); 2 when it yielded no function
/// (the result buffer names the type it yielded).
#[export_name = "rtcrm_load"]
pub unsafe extern "C" fn rtcrm_load(ptr: *const u8, len: usize) -> i32 {
    let bytes = std::slice::from_raw_parts(ptr, len);
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
                    qjs::JS_FreeValue(ctx.as_raw().as_ptr(), RAW_FILTER);
                    RAW_FILTER = qjs::JS_DupValue(ctx.as_raw().as_ptr(), f.as_raw());
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
    unsafe {
        let obj = qjs::JS_ReadObject(
            ctx.as_raw().as_ptr(),
            code.as_ptr(),
            code.len() as _,
            qjs::JS_READ_OBJ_BYTECODE as i32,
        );
        if qjs::JS_IsException(obj) {
            return Err(rq::Error::Exception);
        }
        let v = qjs::JS_EvalFunction(ctx.as_raw().as_ptr(), obj);
        if qjs::JS_IsException(v) {
            return Err(rq::Error::Exception);
        }
        let v = Value::from_raw(ctx.clone(), v);
        record_type(&v);
        Ok(v)
    }
}

fn load_module<'js>(ctx: &Ctx<'js>, code: &[u8]) -> rq::Result<Value<'js>> {
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

fn run_pending_jobs(ctx: &Ctx<'_>) {
    unsafe {
        let rt = qjs::JS_GetRuntime(ctx.as_raw().as_ptr());
        let mut job_ctx = std::ptr::null_mut();
        // Bounded: a filter that keeps scheduling jobs is stopped by fuel.
        while qjs::JS_IsJobPending(rt) {
            if qjs::JS_ExecutePendingJob(rt, &mut job_ctx) < 0 {
                // The job threw: drop the exception, the filter's verdict is already taken.
                let exc = qjs::JS_GetException(ctx.as_raw().as_ptr());
                qjs::JS_FreeValue(ctx.as_raw().as_ptr(), exc);
            }
        }
    }
}

/// Calls the filter with the current event: 1 when it returned boolean `true`, 0 for any other
/// value, -1 when it threw (the message is in the result buffer), -2 when no filter is loaded.
#[export_name = "rtcrm_eval"]
pub extern "C" fn rtcrm_eval() -> i32 {
    unsafe {
        let ctx = RAW_CTX;
        if ctx.is_null() || !qjs::JS_IsFunction(ctx, RAW_FILTER) {
            set_result(b"no filter loaded".to_vec());
            return -2;
        }
        let mut event = event_object::new_event(ctx);
        if qjs::JS_IsException(event) {
            return report_exception();
        }
        let result = qjs::JS_Call(ctx, RAW_FILTER, qjs::JS_UNDEFINED, 1, &mut event);
        qjs::JS_FreeValue(ctx, event);
        if qjs::JS_IsException(result) {
            return report_exception();
        }
        let matched = qjs::JS_VALUE_GET_TAG(result) == qjs::JS_TAG_BOOL as i32 && qjs::JS_VALUE_GET_BOOL(result);
        qjs::JS_FreeValue(ctx, result);
        if qjs::JS_IsJobPending(qjs::JS_GetRuntime(ctx)) {
            context().with(|ctx| run_pending_jobs(&ctx));
        }
        i32::from(matched)
    }
}

/// Takes the pending exception into the result buffer; returns -1.
fn report_exception() -> i32 {
    context().with(|ctx| {
        let exc = ctx.catch();
        set_result(describe_exception(&ctx, &exc).into_bytes());
        run_pending_jobs(&ctx);
    });
    -1
}

#[export_name = "rtcrm_result_ptr"]
pub extern "C" fn rtcrm_result_ptr() -> *const u8 {
    unsafe { RESULT.as_ptr() }
}

#[export_name = "rtcrm_result_len"]
pub extern "C" fn rtcrm_result_len() -> usize {
    unsafe { RESULT.len() }
}
