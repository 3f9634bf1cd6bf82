//! Per-player state for `filter(event, state)` (spec §12): the stored JSON is parsed into a fresh
//! plain object for each call, and what the filter leaves in it is serialised back with
//! `JSON.stringify` into the result buffer, where the host reads it (and checks its size).
//!
//! A state holds plain data only. `JSON.stringify` alone would silently drop a function or turn a
//! `Map` into `{}`, so a filter would lose its data without noticing at the next event; instead
//! the serialisation runs a replacer that throws on anything JSON cannot give back as it was: a
//! function, a symbol, a BigInt, a `Map`/`Set`/`RegExp`/typed array/`Error`/`Proxy`/`Promise`, a
//! boxed primitive, or an instance of a class (an object whose prototype is neither
//! `Object.prototype` nor `null`). A cycle throws in `JSON.stringify` itself. `undefined` values
//! are dropped and non-finite numbers become `null`, as JSON does; a `Date` becomes its ISO
//! string through its `toJSON`.
//!
//! Every byte of this work runs inside the instance, so it is metered by the filter's fuel and
//! bounded by its memory like any other code of the filter.

use crate::{context, describe_exception, globals, report_exception, run_pending_jobs, set_result};
use javy_plugin_api::javy::quickjs::qjs;
use std::ffi::c_int;

/// `rtcrm_eval_state`'s status when the state the filter left cannot be serialised (the reason
/// is in the result buffer).
const STATE_NOT_SERIALISABLE: i32 = -3;
/// `rtcrm_eval_state`'s status when the stored state is not a JSON object (the reason is in the
/// result buffer).
const STORED_STATE_UNREADABLE: i32 = -4;

/// Records what the plain-data check needs and creates the replacer. Called once, from
/// `initialize-runtime`.
///
/// # Safety
/// `ctx` is the runtime's live context.
pub(crate) unsafe fn install(ctx: *mut qjs::JSContext) {
    let g = globals();
    // SAFETY: `ctx` is live (this function's contract); the probe object is freed here, the
    // prototype reference and the replacer are owned by the globals for the instance's lifetime.
    unsafe {
        let probe = qjs::JS_NewObject(ctx);
        g.plain_class.set(qjs::JS_GetClassID(probe));
        g.object_proto.set(qjs::JS_GetPrototype(ctx, probe));
        qjs::JS_FreeValue(ctx, probe);
        let replacer = qjs::JS_NewCFunction2(
            ctx,
            Some(state_replacer),
            c"rtcrmStateReplacer".as_ptr(),
            2,
            qjs::JSCFunctionEnum_JS_CFUNC_generic,
            0,
        );
        g.state_replacer.set(replacer);
    }
}

/// Returns a buffer for `len` bytes of stored state, followed by a NUL the runtime keeps (QuickJS's
/// JSON parser reads up to it). The buffer is the runtime's, reused across calls; null when it
/// cannot grow.
#[export_name = "rtcrm_state_buffer"]
pub extern "C" fn rtcrm_state_buffer(len: usize) -> *mut u8 {
    let mut buf = globals().state_in.borrow_mut();
    buf.clear();
    let Some(total) = len.checked_add(1) else { return std::ptr::null_mut() };
    if buf.try_reserve(total).is_err() {
        return std::ptr::null_mut();
    }
    buf.resize(total, 0);
    buf.as_mut_ptr()
}

/// Calls the filter as `filter(event, state)`. `state` is a fresh object parsed from the first
/// `len` bytes of the state buffer (`rtcrm_state_buffer`), or `{}` when `len` is 0, so no state
/// object is ever shared between players or calls.
///
/// Returns 1 (the filter returned boolean `true`) or 0 (any other value), and the result buffer
/// then holds the state as the filter left it, serialised by `JSON.stringify` (compact UTF-8); -1
/// when the filter threw (the message is in the result buffer; the state is not serialised); -2
/// when no filter is loaded; -3 when the state cannot be serialised (see the module doc; the
/// reason is in the result buffer); -4 when the stored state is not a JSON object.
///
/// Promise jobs the filter scheduled run before the state is serialised, so what they leave in
/// it is kept too.
#[export_name = "rtcrm_eval_state"]
pub extern "C" fn rtcrm_eval_state(len: usize) -> i32 {
    let g = globals();
    let ctx = g.raw_ctx.get();
    let filter = g.filter.get();
    // SAFETY: `ctx` is null or the runtime's live context (set once in `initialize-runtime`);
    // `filter` is an owned reference kept in the globals; `event`, `state` and `result` are new
    // references, each freed once.
    unsafe {
        if ctx.is_null() || !qjs::JS_IsFunction(ctx, filter) {
            set_result(b"no filter loaded".to_vec());
            return -2;
        }
        let state = match stored_state(ctx, len) {
            Ok(state) => state,
            Err(status) => return status,
        };
        let evaluation = crate::event_object::Evaluation::begin();
        let event = crate::event_object::new_event(ctx);
        if qjs::JS_IsException(event) {
            qjs::JS_FreeValue(ctx, state);
            return report_exception();
        }
        let mut args = [event, state];
        let result = qjs::JS_Call(ctx, filter, qjs::JS_UNDEFINED, 2, args.as_mut_ptr());
        qjs::JS_FreeValue(ctx, event);
        if qjs::JS_IsException(result) {
            qjs::JS_FreeValue(ctx, state);
            return report_exception();
        }
        let matched = qjs::JS_VALUE_GET_TAG(result) == qjs::JS_TAG_BOOL && qjs::JS_VALUE_GET_BOOL(result);
        qjs::JS_FreeValue(ctx, result);
        if qjs::JS_IsJobPending(qjs::JS_GetRuntime(ctx)) {
            context().with(|ctx| run_pending_jobs(&ctx));
        }
        drop(evaluation);
        let serialised = serialise(ctx, state);
        qjs::JS_FreeValue(ctx, state);
        match serialised {
            Ok(()) => i32::from(matched),
            Err(status) => status,
        }
    }
}

/// The pending exception as text (`TypeError: message`), cleared.
fn take_exception_text() -> String {
    context().with(|ctx| {
        let exc = ctx.catch();
        describe_exception(&ctx, &exc)
    })
}

/// A new object parsed from the state buffer's first `len` bytes (`{}` when 0), or the status to
/// return.
///
/// # Safety
/// `ctx` is the runtime's live context.
unsafe fn stored_state(ctx: *mut qjs::JSContext, len: usize) -> Result<qjs::JSValue, i32> {
    // SAFETY: `ctx` is live; `buf` holds `len` bytes and a NUL (checked), borrowed for the parse,
    // which runs no JavaScript (no reviver); the parsed value is a new reference returned to the
    // caller or freed here.
    unsafe {
        if len == 0 {
            let obj = qjs::JS_NewObject(ctx);
            return if qjs::JS_IsException(obj) { Err(report_exception()) } else { Ok(obj) };
        }
        let parsed = {
            let buf = globals().state_in.borrow();
            if buf.len() != len + 1 || buf[len] != 0 {
                set_result(format!("the state buffer does not hold {len} bytes (call rtcrm_state_buffer first)").into_bytes());
                return Err(STORED_STATE_UNREADABLE);
            }
            qjs::JS_ParseJSON(ctx, buf.as_ptr().cast(), len as _, c"state.json".as_ptr())
        };
        if qjs::JS_IsException(parsed) {
            let text = take_exception_text();
            set_result(format!("the stored state is not JSON: {text}").into_bytes());
            return Err(STORED_STATE_UNREADABLE);
        }
        if !qjs::JS_IsObject(parsed) || qjs::JS_IsArray(parsed) {
            qjs::JS_FreeValue(ctx, parsed);
            set_result(b"the stored state is not a JSON object".to_vec());
            return Err(STORED_STATE_UNREADABLE);
        }
        Ok(parsed)
    }
}

/// Serialises `state` into the result buffer, or returns the status to return.
///
/// # Safety
/// `ctx` is the runtime's live context; `state` is a live value (borrowed).
unsafe fn serialise(ctx: *mut qjs::JSContext, state: qjs::JSValue) -> Result<(), i32> {
    let g = globals();
    // SAFETY: `ctx` is live, `state` and the replacer are borrowed; `json` is a new reference
    // freed once; the C string is QuickJS memory of `len` bytes, copied before it is freed.
    unsafe {
        let json = qjs::JS_JSONStringify(ctx, state, g.state_replacer.get(), qjs::JS_UNDEFINED);
        if qjs::JS_IsException(json) {
            set_result(take_exception_text().into_bytes());
            return Err(STATE_NOT_SERIALISABLE);
        }
        if !qjs::JS_IsString(json) {
            // The state's own `toJSON` returned `undefined` (or nothing JSON can hold).
            qjs::JS_FreeValue(ctx, json);
            set_result(b"the state serialises to nothing (its toJSON returned undefined)".to_vec());
            return Err(STATE_NOT_SERIALISABLE);
        }
        let mut len = 0;
        let text = qjs::JS_ToCStringLen(ctx, &mut len, json);
        qjs::JS_FreeValue(ctx, json);
        if text.is_null() {
            set_result(take_exception_text().into_bytes());
            return Err(STATE_NOT_SERIALISABLE);
        }
        {
            let mut result = g.result.borrow_mut();
            result.clear();
            result.extend_from_slice(std::slice::from_raw_parts(text.cast::<u8>(), len));
        }
        qjs::JS_FreeCString(ctx, text);
        Ok(())
    }
}

/// What `value` is, when it is something a state cannot hold (see the module doc).
///
/// # Safety
/// `ctx` is the runtime's live context; `value` is a live value (borrowed).
unsafe fn unkeepable(ctx: *mut qjs::JSContext, value: qjs::JSValue) -> Option<&'static str> {
    let g = globals();
    // SAFETY: `ctx` is live and `value` borrowed; the predicates only read the value's tag and
    // class; `JS_GetPrototype` (called on a non-proxy, so it runs no JavaScript) returns a new
    // reference, freed here.
    unsafe {
        if qjs::JS_IsSymbol(value) {
            return Some("a symbol");
        }
        if qjs::JS_IsBigInt(value) {
            return Some("a BigInt");
        }
        if !qjs::JS_IsObject(value) {
            return None;
        }
        if qjs::JS_IsArray(value) {
            return None;
        }
        let what = if qjs::JS_IsFunction(ctx, value) {
            "a function"
        } else if qjs::JS_IsProxy(value) {
            "a Proxy"
        } else if qjs::JS_IsMap(value) {
            "a Map"
        } else if qjs::JS_IsSet(value) {
            "a Set"
        } else if qjs::JS_IsWeakMap(value) {
            "a WeakMap"
        } else if qjs::JS_IsWeakSet(value) {
            "a WeakSet"
        } else if qjs::JS_IsWeakRef(value) {
            "a WeakRef"
        } else if qjs::JS_IsRegExp(value) {
            "a RegExp"
        } else if qjs::JS_IsPromise(value) {
            "a Promise"
        } else if qjs::JS_IsDate(value) {
            "a Date without toJSON"
        } else if qjs::JS_IsError(value) {
            "an Error"
        } else if qjs::JS_IsArrayBuffer(value) || qjs::JS_IsDataView(value) || qjs::JS_GetTypedArrayType(value) >= 0 {
            "binary data (an ArrayBuffer, DataView or typed array)"
        } else if qjs::JS_GetClassID(value) != g.plain_class.get() {
            "an object of a built-in class"
        } else {
            let proto = qjs::JS_GetPrototype(ctx, value);
            let plain = qjs::JS_IsNull(proto)
                || (qjs::JS_IsObject(proto) && qjs::JS_VALUE_GET_PTR(proto) == qjs::JS_VALUE_GET_PTR(g.object_proto.get()));
            qjs::JS_FreeValue(ctx, proto);
            if plain {
                return None;
            }
            "an instance of a class (its prototype is not Object.prototype)"
        };
        Some(what)
    }
}

/// The replacer `JSON.stringify` runs over the state: throws a `TypeError` naming the key when a
/// value is [`unkeepable`], else returns the value.
///
/// # Safety
/// Called by QuickJS only: the live context, a borrowed `this` (the holder), and `argv` holding
/// `argc` values (the key and the value).
unsafe extern "C" fn state_replacer(ctx: *mut qjs::JSContext, _this: qjs::JSValue, argc: c_int, argv: *mut qjs::JSValue) -> qjs::JSValue {
    // SAFETY: QuickJS calls the replacer with the live context and two borrowed arguments; the
    // key's C string is freed once; the returned value is a new reference (dup).
    unsafe {
        if argc < 2 {
            return qjs::JS_UNDEFINED;
        }
        let (key, value) = (*argv, *argv.add(1));
        let Some(what) = unkeepable(ctx, value) else { return qjs::JS_DupValue(ctx, value) };
        let mut len = 0;
        let text = qjs::JS_ToCStringLen(ctx, &mut len, key);
        let name = if text.is_null() {
            String::new()
        } else {
            let bytes = std::slice::from_raw_parts(text.cast::<u8>(), len);
            let name: String = String::from_utf8_lossy(bytes).chars().filter(|c| *c != '\0').take(64).collect();
            qjs::JS_FreeCString(ctx, text);
            name
        };
        let subject = if name.is_empty() { "the state".to_owned() } else { format!("`{name}` in the state") };
        let message = format!(
            "{subject} is {what}, which JSON cannot keep: a state holds plain objects, arrays, strings, numbers, booleans and null"
        );
        let message = std::ffi::CString::new(message).unwrap_or_default();
        qjs::JS_ThrowTypeError(ctx, c"%s".as_ptr(), message.as_ptr())
    }
}
