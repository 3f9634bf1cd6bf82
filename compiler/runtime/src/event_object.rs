//! The filter's `event` argument: a native (exotic) object whose fields are fetched from the host
//! the first time the filter reads them.
//!
//! It behaves as a plain object holding the event's own snake_case keys: reads, `in`,
//! `Object.keys`, `JSON.stringify`, writes and deletes all work, on this evaluation's copy only.
//! Reads that are not fields resolve, in order, to
//! - a bean getter for any field (`getPlayerId()` reads `player_id`, `null` when absent, as Java),
//! - a camelCase alias (`eventName` reads `event_name`),
//! - the event prototype, which inherits from `Object.prototype` (`hasOwnProperty`, ...).
//!
//! Object values (`data`, `context`, and objects nested in them) get the `java.util.Map`
//! methods the original's filters called: `get(k)`, `containsKey(k)`, `size()`, `isEmpty()`,
//! as non-enumerable methods of their prototype.
//!
//! This is the hot path of every evaluation, so it is written against QuickJS's C API directly:
//! no wrapper objects, no context reference counting per access, and a per-runtime cache from
//! atoms to names (holding its atoms, so an id is never reused while cached).
//!
//! Reference counting: values stored in [`State`] and in the statics are owned (one reference
//! each); functions returning `JSValue` to QuickJS return a new reference; `JSValueConst`
//! parameters are borrowed.

use javy_plugin_api::javy::quickjs::qjs::{self, JSAtom, JSContext, JSRuntime, JSValue};
use std::collections::HashMap;
use std::ffi::c_int;
use std::ptr;

static mut CLASS_ID: qjs::JSClassID = 0;
/// Prototype of every event object (inherits from `Object.prototype`). Owned.
static mut EVENT_PROTO: JSValue = qjs::JS_UNDEFINED;
/// Prototype of every object value (`java.util.Map` methods). Owned.
static mut JAVA_MAP: JSValue = qjs::JS_UNDEFINED;
/// Atom → its name (`None` for a symbol). Each cached atom holds a reference.
static mut NAMES: Option<HashMap<JSAtom, Option<Box<[u8]>>>> = None;
/// Bean getter name atom → the getter function (owned).
static mut GETTERS: Option<HashMap<JSAtom, JSValue>> = None;
/// camelCase alias atom → its snake_case atom (owned).
static mut ALIASES: Option<HashMap<JSAtom, JSAtom>> = None;
/// Cached atoms at most; past this, names are computed without caching.
const MAX_CACHED_NAMES: usize = 4096;

/// One evaluation's event object.
struct State {
    /// Fields read or written so far: `Some(value)` is an own property (owned), `None` means the
    /// event has no such field, or the filter deleted it. Atoms are owned.
    props: Vec<(JSAtom, Option<JSValue>)>,
}

/// Creates the class and the prototypes. Called once, from `initialize-runtime`.
///
/// # Safety
/// `ctx` is the runtime's live context.
pub unsafe fn install(ctx: *mut JSContext) {
    let rt = qjs::JS_GetRuntime(ctx);
    qjs::JS_NewClassID(rt, ptr::addr_of_mut!(CLASS_ID));
    let exotic = Box::leak(Box::new(qjs::JSClassExoticMethods {
        get_own_property: Some(get_own_property),
        get_own_property_names: Some(get_own_property_names),
        delete_property: Some(delete_property),
        define_own_property: None,
        has_property: Some(has_property),
        get_property: Some(get_property),
        set_property: Some(set_property),
    }));
    let def = qjs::JSClassDef {
        class_name: c"TrackingEvent".as_ptr(),
        finalizer: Some(finalizer),
        gc_mark: Some(gc_mark),
        call: None,
        exotic,
    };
    assert_eq!(qjs::JS_NewClass(rt, CLASS_ID, &def), 0, "registering the event class");
    EVENT_PROTO = qjs::JS_NewObject(ctx);
    JAVA_MAP = qjs::JS_NewObject(ctx);
    let methods: [(&std::ffi::CStr, qjs::JSCFunction, c_int); 4] = [
        (c"get", Some(map_get), 1),
        (c"containsKey", Some(map_contains_key), 1),
        (c"size", Some(map_size), 0),
        (c"isEmpty", Some(map_is_empty), 0),
    ];
    for (name, func, length) in methods {
        let f = qjs::JS_NewCFunction2(ctx, func, name.as_ptr(), length, qjs::JSCFunctionEnum_JS_CFUNC_generic, 0);
        // Writable and configurable, not enumerable: JSON.stringify and Object.keys skip them.
        qjs::JS_DefinePropertyValueStr(
            ctx,
            JAVA_MAP,
            name.as_ptr(),
            f,
            (qjs::JS_PROP_WRITABLE | qjs::JS_PROP_CONFIGURABLE) as c_int,
        );
    }
    NAMES = Some(HashMap::new());
    GETTERS = Some(HashMap::new());
    ALIASES = Some(HashMap::new());
}

/// A fresh event object for one evaluation (a new reference).
///
/// # Safety
/// `ctx` is the runtime's live context and [`install`] has run.
pub unsafe fn new_event(ctx: *mut JSContext) -> JSValue {
    let obj = qjs::JS_NewObjectProtoClass(ctx, EVENT_PROTO, CLASS_ID);
    if !qjs::JS_IsException(obj) {
        let state = Box::new(State { props: Vec::with_capacity(4) });
        qjs::JS_SetOpaque(obj, Box::into_raw(state).cast());
    }
    obj
}

unsafe fn state<'a>(obj: JSValue) -> Option<&'a mut State> {
    (qjs::JS_GetOpaque(obj, CLASS_ID) as *mut State).as_mut()
}

unsafe extern "C" fn finalizer(rt: *mut JSRuntime, val: JSValue) {
    let p = qjs::JS_GetOpaque(val, CLASS_ID) as *mut State;
    if p.is_null() {
        return;
    }
    let state = Box::from_raw(p);
    for (atom, value) in state.props {
        qjs::JS_FreeAtomRT(rt, atom);
        if let Some(v) = value {
            qjs::JS_FreeValueRT(rt, v);
        }
    }
}

unsafe extern "C" fn gc_mark(rt: *mut JSRuntime, val: JSValue, mark: qjs::JS_MarkFunc) {
    if let Some(state) = state(val) {
        for (_, value) in &state.props {
            if let Some(v) = value {
                qjs::JS_MarkValue(rt, *v, mark);
            }
        }
    }
}

/// The name `atom` stands for; `None` for a symbol. Cached per atom.
unsafe fn name_of(ctx: *mut JSContext, atom: JSAtom) -> Option<Box<[u8]>> {
    let names = (*ptr::addr_of_mut!(NAMES)).as_mut().expect("installed");
    if let Some(name) = names.get(&atom) {
        return name.clone();
    }
    let value = qjs::JS_AtomToValue(ctx, atom);
    let name = if qjs::JS_IsSymbol(value) {
        None
    } else {
        let mut len = 0;
        let s = qjs::JS_AtomToCStringLen(ctx, &mut len, atom);
        if s.is_null() {
            None
        } else {
            let bytes: Box<[u8]> = std::slice::from_raw_parts(s.cast::<u8>(), len as usize).into();
            qjs::JS_FreeCString(ctx, s);
            Some(bytes)
        }
    };
    qjs::JS_FreeValue(ctx, value);
    if names.len() < MAX_CACHED_NAMES {
        qjs::JS_DupAtom(ctx, atom);
        names.insert(atom, name.clone());
    }
    name
}

/// Fetches top-level field `name` from the host and parses it (a new reference), giving object
/// values the `java.util.Map` prototype.
unsafe fn fetch(ctx: *mut JSContext, name: &[u8]) -> Option<JSValue> {
    let len = crate::fetch(|buf, cap| crate::event_field(name.as_ptr(), name.len(), buf, cap))?;
    let raw = crate::scratch(len);
    if let Some(value) = scalar(ctx, raw).or_else(|| flat_object(ctx, raw)) {
        return Some(value);
    }
    let value = crate::parse_scratch_raw(ctx, len);
    if qjs::JS_IsException(value) {
        // The host serves valid JSON; drop the exception rather than fail the filter.
        qjs::JS_FreeValue(ctx, qjs::JS_GetException(ctx));
        return None;
    }
    if qjs::JS_IsObject(value) {
        if crate::scratch_has_nested_object(len) {
            mapify_deep(ctx, value);
        } else if !qjs::JS_IsArray(value) {
            qjs::JS_SetPrototype(ctx, value, JAVA_MAP);
        }
    }
    Some(value)
}

/// The common scalar JSON values without going through the JSON parser: strings without escapes,
/// small integers, booleans and null. `None` for anything else.
unsafe fn scalar(ctx: *mut JSContext, raw: &[u8]) -> Option<JSValue> {
    match raw {
        [b'"', inner @ .., b'"'] if !inner.iter().any(|&b| b == b'\\' || b < 0x20) => {
            Some(qjs::JS_NewStringLen(ctx, inner.as_ptr().cast(), inner.len() as _))
        }
        b"true" => Some(qjs::JS_TRUE),
        b"false" => Some(qjs::JS_FALSE),
        b"null" => Some(qjs::JS_NULL),
        [first, ..] if raw.len() <= 9 && (first.is_ascii_digit() || *first == b'-') => {
            let text = std::str::from_utf8(raw).ok()?;
            // Only canonical integers: no leading zeros, fractions or exponents.
            let n: i32 = text.parse().ok()?;
            (n.to_string() == text).then(|| qjs::JS_MKVAL(qjs::JS_TAG_INT as i32, n))
        }
        _ => None,
    }
}

/// A flat JSON object (scalar values only, keys without escapes) built directly with the
/// `java.util.Map` prototype. `None` for anything else (nested values, escapes, ...): the JSON
/// parser handles those.
unsafe fn flat_object(ctx: *mut JSContext, raw: &[u8]) -> Option<JSValue> {
    let mut entries: Vec<(&[u8], &[u8])> = Vec::new();
    let mut rest = raw.strip_prefix(b"{")?.trim_ascii_start();
    if let Some(after) = rest.strip_prefix(b"}") {
        if !after.trim_ascii().is_empty() {
            return None;
        }
    } else {
        loop {
            let body = rest.strip_prefix(b"\"")?;
            let end = body.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            if body[end] != b'"' {
                return None;
            }
            let key = &body[..end];
            rest = body[end + 1..].trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
            // A scalar value ends at the next `,` or `}` outside a string.
            let value_end = if rest.first() == Some(&b'"') {
                1 + rest[1..].iter().position(|&b| b == b'"' || b == b'\\')? + 1
            } else {
                rest.iter().position(|&b| b == b',' || b == b'}')?
            };
            let value = rest[..value_end].trim_ascii_end();
            if matches!(value.first(), Some(b'{' | b'[')) || value.is_empty() {
                return None;
            }
            entries.push((key, value));
            rest = rest[value_end..].trim_ascii_start();
            match rest.split_first() {
                Some((b',', after)) => rest = after.trim_ascii_start(),
                Some((b'}', after)) if after.trim_ascii().is_empty() => break,
                _ => return None,
            }
        }
    }
    let mut values = Vec::with_capacity(entries.len());
    for (_, value) in &entries {
        match scalar(ctx, value).or_else(|| number(ctx, value)) {
            Some(v) => values.push(v),
            None => {
                for v in values {
                    qjs::JS_FreeValue(ctx, v);
                }
                return None;
            }
        }
    }
    let obj = qjs::JS_NewObjectProto(ctx, JAVA_MAP);
    for ((key, _), value) in entries.into_iter().zip(values) {
        let atom = qjs::JS_NewAtomLen(ctx, key.as_ptr().cast(), key.len() as _);
        // Takes the value's reference. A repeated key keeps its last value, as JSON.parse.
        qjs::JS_DefinePropertyValue(ctx, obj, atom, value, qjs::JS_PROP_C_W_E as c_int);
        qjs::JS_FreeAtom(ctx, atom);
    }
    Some(obj)
}

/// A JSON number that [`scalar`] left out (fractions, exponents, large integers).
unsafe fn number(ctx: *mut JSContext, raw: &[u8]) -> Option<JSValue> {
    let text = std::str::from_utf8(raw).ok()?;
    let valid = text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && text.bytes().next().is_some_and(|b| b == b'-' || b.is_ascii_digit());
    let n: f64 = if valid { text.parse().ok()? } else { return None };
    Some(qjs::JS_NewNumber(ctx, n))
}

/// Gives every object in `value` (arrays' elements included) the `java.util.Map` prototype.
unsafe fn mapify_deep(ctx: *mut JSContext, value: JSValue) {
    if !qjs::JS_IsObject(value) {
        return;
    }
    if !qjs::JS_IsArray(value) {
        qjs::JS_SetPrototype(ctx, value, JAVA_MAP);
    }
    let mut tab: *mut qjs::JSPropertyEnum = ptr::null_mut();
    let mut len: u32 = 0;
    let flags = (qjs::JS_GPN_STRING_MASK | qjs::JS_GPN_ENUM_ONLY) as c_int;
    if qjs::JS_GetOwnPropertyNames(ctx, &mut tab, &mut len, value, flags) != 0 {
        return;
    }
    for i in 0..len as usize {
        let child = qjs::JS_GetProperty(ctx, value, (*tab.add(i)).atom);
        mapify_deep(ctx, child);
        qjs::JS_FreeValue(ctx, child);
    }
    qjs::JS_FreePropertyEnum(ctx, tab, len);
}

/// The own value of `atom` (a new reference), from this evaluation's state, else from the host.
unsafe fn own(ctx: *mut JSContext, state: &mut State, atom: JSAtom) -> Option<JSValue> {
    if let Some((_, v)) = state.props.iter().find(|(a, _)| *a == atom) {
        return v.map(|v| qjs::JS_DupValue(ctx, v));
    }
    let fetched = match name_of(ctx, atom) {
        Some(name) => fetch(ctx, &name),
        None => None,
    };
    qjs::JS_DupAtom(ctx, atom);
    state.props.push((atom, fetched));
    fetched.map(|v| qjs::JS_DupValue(ctx, v))
}

fn snake(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 4);
    for &c in name {
        if c.is_ascii_uppercase() {
            out.push(b'_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `getPlayerId` → the atom of `player_id`; `eventName` → the atom of `event_name`.
unsafe fn field_atom(ctx: *mut JSContext, name: &[u8]) -> JSAtom {
    let field = snake(name);
    qjs::JS_NewAtomLen(ctx, field.as_ptr().cast(), field.len() as _)
}

/// A bean getter: returns `this[field]`, or `null` when it is `undefined` (as Java did).
unsafe extern "C" fn bean_getter(
    ctx: *mut JSContext,
    this: JSValue,
    _argc: c_int,
    _argv: *mut JSValue,
    _magic: c_int,
    data: *mut JSValue,
) -> JSValue {
    let field = qjs::JS_VALUE_GET_INT(*data) as u32;
    let v = qjs::JS_GetProperty(ctx, this, field);
    if qjs::JS_IsUndefined(v) {
        qjs::JS_NULL
    } else {
        v
    }
}

/// What a read of `atom` that is not an own property gives (a new reference).
unsafe fn inherited(ctx: *mut JSContext, state: &mut State, atom: JSAtom) -> JSValue {
    if let Some(f) = (*ptr::addr_of!(GETTERS)).as_ref().expect("installed").get(&atom) {
        return qjs::JS_DupValue(ctx, *f);
    }
    if let Some(&alias) = (*ptr::addr_of!(ALIASES)).as_ref().expect("installed").get(&atom) {
        if let Some(v) = own(ctx, state, alias) {
            return v;
        }
        return qjs::JS_GetProperty(ctx, EVENT_PROTO, atom);
    }
    if let Some(name) = name_of(ctx, atom) {
        let cacheable = (*ptr::addr_of!(NAMES)).as_ref().is_some_and(|n| n.contains_key(&atom));
        if name.len() > 3 && name.starts_with(b"get") && name[3].is_ascii_uppercase() {
            let mut rest = name[3..].to_vec();
            rest[0] = rest[0].to_ascii_lowercase();
            let field = field_atom(ctx, &rest);
            let mut data = qjs::JS_MKVAL(qjs::JS_TAG_INT as i32, field as i32);
            let f = qjs::JS_NewCFunctionData(ctx, Some(bean_getter), 0, 0, 1, &mut data);
            if cacheable {
                // The field atom stays referenced by the cached getter.
                (*ptr::addr_of_mut!(GETTERS)).as_mut().unwrap().insert(atom, qjs::JS_DupValue(ctx, f));
            } else {
                // Uncached: keep the atom alive as long as any getter may use it.
                qjs::JS_DupAtom(ctx, field);
            }
            return f;
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            let field = field_atom(ctx, &name);
            let v = own(ctx, state, field);
            if cacheable {
                (*ptr::addr_of_mut!(ALIASES)).as_mut().unwrap().insert(atom, field);
            } else {
                qjs::JS_FreeAtom(ctx, field);
            }
            if let Some(v) = v {
                return v;
            }
        }
    }
    qjs::JS_GetProperty(ctx, EVENT_PROTO, atom)
}

unsafe extern "C" fn get_property(ctx: *mut JSContext, obj: JSValue, atom: JSAtom, _receiver: JSValue) -> JSValue {
    let Some(state) = state(obj) else { return qjs::JS_UNDEFINED };
    match own(ctx, state, atom) {
        Some(v) => v,
        None => inherited(ctx, state, atom),
    }
}

unsafe extern "C" fn set_property(
    ctx: *mut JSContext,
    obj: JSValue,
    atom: JSAtom,
    value: JSValue,
    _receiver: JSValue,
    _flags: c_int,
) -> c_int {
    let Some(state) = state(obj) else { return 0 };
    let value = qjs::JS_DupValue(ctx, value);
    match state.props.iter_mut().find(|(a, _)| *a == atom) {
        Some((_, slot)) => {
            if let Some(old) = slot.replace(value) {
                qjs::JS_FreeValue(ctx, old);
            }
        }
        None => {
            qjs::JS_DupAtom(ctx, atom);
            state.props.push((atom, Some(value)));
        }
    }
    1
}

unsafe extern "C" fn delete_property(ctx: *mut JSContext, obj: JSValue, atom: JSAtom) -> c_int {
    let Some(state) = state(obj) else { return 0 };
    match state.props.iter_mut().find(|(a, _)| *a == atom) {
        Some((_, slot)) => {
            if let Some(old) = slot.take() {
                qjs::JS_FreeValue(ctx, old);
            }
        }
        None => {
            qjs::JS_DupAtom(ctx, atom);
            state.props.push((atom, None));
        }
    }
    1
}

unsafe extern "C" fn has_property(ctx: *mut JSContext, obj: JSValue, atom: JSAtom) -> c_int {
    let Some(state) = state(obj) else { return 0 };
    if let Some(v) = own(ctx, state, atom) {
        qjs::JS_FreeValue(ctx, v);
        return 1;
    }
    qjs::JS_HasProperty(ctx, EVENT_PROTO, atom)
}

unsafe extern "C" fn get_own_property(
    ctx: *mut JSContext,
    desc: *mut qjs::JSPropertyDescriptor,
    obj: JSValue,
    atom: JSAtom,
) -> c_int {
    let Some(state) = state(obj) else { return 0 };
    let Some(v) = own(ctx, state, atom) else { return 0 };
    if desc.is_null() {
        qjs::JS_FreeValue(ctx, v);
    } else {
        (*desc).flags = (qjs::JS_PROP_ENUMERABLE | qjs::JS_PROP_WRITABLE | qjs::JS_PROP_CONFIGURABLE) as c_int;
        (*desc).value = v;
        (*desc).getter = qjs::JS_UNDEFINED;
        (*desc).setter = qjs::JS_UNDEFINED;
    }
    1
}

unsafe extern "C" fn get_own_property_names(
    ctx: *mut JSContext,
    ptab: *mut *mut qjs::JSPropertyEnum,
    plen: *mut u32,
    obj: JSValue,
) -> c_int {
    let Some(state) = state(obj) else {
        *ptab = ptr::null_mut();
        *plen = 0;
        return 0;
    };
    let mut names: Vec<JSAtom> = Vec::new();
    if let Some(len) = crate::fetch(|buf, cap| crate::event_keys(buf, cap)) {
        let keys = crate::parse_scratch_raw(ctx, len);
        let mut count: i64 = 0;
        qjs::JS_GetLength(ctx, keys, &mut count);
        for i in 0..count.max(0) as u32 {
            let key = qjs::JS_GetPropertyUint32(ctx, keys, i);
            let atom = qjs::JS_ValueToAtom(ctx, key);
            qjs::JS_FreeValue(ctx, key);
            match own(ctx, state, atom) {
                Some(v) => {
                    qjs::JS_FreeValue(ctx, v);
                    names.push(atom);
                }
                None => qjs::JS_FreeAtom(ctx, atom),
            }
        }
        qjs::JS_FreeValue(ctx, keys);
    }
    for (atom, value) in &state.props {
        if value.is_some() && !names.contains(atom) {
            names.push(qjs::JS_DupAtom(ctx, *atom));
        }
    }
    let tab = qjs::js_malloc(ctx, (names.len().max(1) * std::mem::size_of::<qjs::JSPropertyEnum>()) as _)
        as *mut qjs::JSPropertyEnum;
    if tab.is_null() {
        for atom in names {
            qjs::JS_FreeAtom(ctx, atom);
        }
        return -1;
    }
    // The table owns one reference to each atom.
    for (i, atom) in names.iter().enumerate() {
        *tab.add(i) = qjs::JSPropertyEnum { is_enumerable: true, atom: *atom };
    }
    *ptab = tab;
    *plen = names.len() as u32;
    0
}

/// `this` has `key` as an own property (a JSON map entry).
unsafe fn own_entry(ctx: *mut JSContext, this: JSValue, key: JSValue) -> Option<JSAtom> {
    let atom = qjs::JS_ValueToAtom(ctx, key);
    if qjs::JS_GetOwnProperty(ctx, ptr::null_mut(), this, atom) == 1 {
        Some(atom)
    } else {
        qjs::JS_FreeAtom(ctx, atom);
        None
    }
}

unsafe fn arg(argc: c_int, argv: *mut JSValue) -> JSValue {
    if argc > 0 {
        *argv
    } else {
        qjs::JS_UNDEFINED
    }
}

unsafe extern "C" fn map_get(ctx: *mut JSContext, this: JSValue, argc: c_int, argv: *mut JSValue) -> JSValue {
    match own_entry(ctx, this, arg(argc, argv)) {
        Some(atom) => {
            let v = qjs::JS_GetProperty(ctx, this, atom);
            qjs::JS_FreeAtom(ctx, atom);
            v
        }
        None => qjs::JS_NULL,
    }
}

unsafe extern "C" fn map_contains_key(ctx: *mut JSContext, this: JSValue, argc: c_int, argv: *mut JSValue) -> JSValue {
    match own_entry(ctx, this, arg(argc, argv)) {
        Some(atom) => {
            qjs::JS_FreeAtom(ctx, atom);
            qjs::JS_TRUE
        }
        None => qjs::JS_FALSE,
    }
}

unsafe fn entry_count(ctx: *mut JSContext, this: JSValue) -> u32 {
    let mut tab: *mut qjs::JSPropertyEnum = ptr::null_mut();
    let mut len: u32 = 0;
    let flags = (qjs::JS_GPN_STRING_MASK | qjs::JS_GPN_ENUM_ONLY) as c_int;
    if qjs::JS_GetOwnPropertyNames(ctx, &mut tab, &mut len, this, flags) != 0 {
        return 0;
    }
    qjs::JS_FreePropertyEnum(ctx, tab, len);
    len
}

unsafe extern "C" fn map_size(ctx: *mut JSContext, this: JSValue, _argc: c_int, _argv: *mut JSValue) -> JSValue {
    qjs::JS_MKVAL(qjs::JS_TAG_INT as i32, entry_count(ctx, this) as i32)
}

unsafe extern "C" fn map_is_empty(ctx: *mut JSContext, this: JSValue, _argc: c_int, _argv: *mut JSValue) -> JSValue {
    if entry_count(ctx, this) == 0 {
        qjs::JS_TRUE
    } else {
        qjs::JS_FALSE
    }
}
