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
//! **An event object belongs to one evaluation.** Each `rtcrm_eval` starts a new generation
//! ([`Evaluation`]); an event object kept past its call (say, in a global) throws a `TypeError`
//! on any use by a later call, so it never presents another event's fields. Values the filter
//! read from it (plain objects and strings) stay what they were.
//!
//! Every operation is linear in what it touches: an object's own fields are found through an
//! index once it holds more than a few, and listing the keys makes one pass over the host's key
//! list (60,000 keys: milliseconds, within the filter's fuel).
//!
//! This is the hot path of every evaluation, so it is written against QuickJS's C API directly:
//! no wrapper objects, no context reference counting per access, and a per-runtime cache from
//! atoms to names (holding its atoms, so an id is never reused while cached).
//!
//! # Reference counting (the invariant every `unsafe` block below relies on)
//! Values stored in [`State`] and in [`EventGlobals`] are owned (one reference each); functions
//! returning `JSValue` to QuickJS return a new reference; `JSValueConst` parameters are borrowed.
//! Every `ctx` passed in is the runtime's one live context (QuickJS calls these methods with it).

use javy_plugin_api::javy::quickjs::qjs::{self, JSAtom, JSContext, JSRuntime, JSValue};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_int;
use std::hash::{BuildHasherDefault, Hasher};
use std::ptr;

/// Cached atoms at most; past this, names are computed without caching.
const MAX_CACHED_NAMES: usize = 4096;
/// An event object indexes its own fields once it holds more than this many.
const INDEX_PAST: usize = 8;

/// Hashes an atom (a small integer) with one multiplication.
#[derive(Default)]
pub(crate) struct AtomHasher(u64);

impl Hasher for AtomHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type AtomMap<V> = HashMap<JSAtom, V, BuildHasherDefault<AtomHasher>>;

const fn atom_map<V>() -> AtomMap<V> {
    HashMap::with_hasher(BuildHasherDefault::new())
}

/// The event object's part of the runtime's global state ([`crate::Globals`]).
pub(crate) struct EventGlobals {
    class_id: Cell<qjs::JSClassID>,
    /// Prototype of every event object (inherits from `Object.prototype`). Owned.
    event_proto: Cell<JSValue>,
    /// Prototype of every object value (`java.util.Map` methods). Owned.
    java_map: Cell<JSValue>,
    /// Atom → its name (`None` for a symbol). Each cached atom holds a reference.
    names: RefCell<AtomMap<Option<Box<[u8]>>>>,
    /// Bean getter name atom → the getter function (owned).
    getters: RefCell<AtomMap<JSValue>>,
    /// camelCase alias atom → its snake_case atom (owned).
    aliases: RefCell<AtomMap<JSAtom>>,
    /// The current evaluation's number.
    generation: Cell<u64>,
    /// Whether an evaluation is running (event objects are usable only then).
    active: Cell<bool>,
}

impl EventGlobals {
    pub(crate) const fn new() -> EventGlobals {
        EventGlobals {
            class_id: Cell::new(0),
            event_proto: Cell::new(qjs::JS_UNDEFINED),
            java_map: Cell::new(qjs::JS_UNDEFINED),
            names: RefCell::new(atom_map()),
            getters: RefCell::new(atom_map()),
            aliases: RefCell::new(atom_map()),
            generation: Cell::new(0),
            active: Cell::new(false),
        }
    }
}

fn g() -> &'static EventGlobals {
    &crate::globals().event
}

/// One evaluation: from [`Evaluation::begin`] until dropped, event objects of this generation
/// are usable; every other one throws.
pub(crate) struct Evaluation(());

impl Evaluation {
    pub(crate) fn begin() -> Evaluation {
        let g = g();
        g.generation.set(g.generation.get() + 1);
        g.active.set(true);
        Evaluation(())
    }
}

impl Drop for Evaluation {
    fn drop(&mut self) {
        g().active.set(false);
    }
}

/// One evaluation's event object.
struct State {
    /// Fields read or written so far: `Some(value)` is an own property (owned), `None` means the
    /// event has no such field, or the filter deleted it. Atoms are owned.
    props: Vec<(JSAtom, Option<JSValue>)>,
    /// Atom → position in `props`, once there are more than [`INDEX_PAST`].
    index: AtomMap<usize>,
    /// The evaluation it was made for.
    generation: u64,
}

impl State {
    fn position(&self, atom: JSAtom) -> Option<usize> {
        if self.props.len() <= INDEX_PAST {
            self.props.iter().position(|(a, _)| *a == atom)
        } else {
            self.index.get(&atom).copied()
        }
    }

    /// Appends a property (taking ownership of `atom` and `value`).
    fn push(&mut self, atom: JSAtom, value: Option<JSValue>) {
        self.props.push((atom, value));
        if self.props.len() > INDEX_PAST {
            if self.index.is_empty() {
                self.index.extend(self.props.iter().enumerate().map(|(i, (a, _))| (*a, i)));
            } else {
                self.index.insert(atom, self.props.len() - 1);
            }
        }
    }
}

/// Creates the class and the prototypes. Called once, from `initialize-runtime`.
///
/// # Safety
/// `ctx` is the runtime's live context.
pub unsafe fn install(ctx: *mut JSContext) {
    let g = g();
    // SAFETY: `ctx` is live (this function's contract); the class id is written once; the exotic
    // table is leaked, so it outlives the runtime; the prototypes are owned by the globals and the
    // method functions are handed to them (`JS_DefinePropertyValueStr` takes the reference).
    unsafe {
        let rt = qjs::JS_GetRuntime(ctx);
        let mut class_id = 0;
        qjs::JS_NewClassID(rt, &mut class_id);
        g.class_id.set(class_id);
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
        assert_eq!(qjs::JS_NewClass(rt, class_id, &def), 0, "registering the event class");
        g.event_proto.set(qjs::JS_NewObject(ctx));
        let java_map = qjs::JS_NewObject(ctx);
        g.java_map.set(java_map);
        let methods: [(&std::ffi::CStr, qjs::JSCFunction, c_int); 4] = [
            (c"get", Some(map_get), 1),
            (c"containsKey", Some(map_contains_key), 1),
            (c"size", Some(map_size), 0),
            (c"isEmpty", Some(map_is_empty), 0),
        ];
        for (name, func, length) in methods {
            let f = qjs::JS_NewCFunction2(ctx, func, name.as_ptr(), length, qjs::JSCFunctionEnum_JS_CFUNC_generic, 0);
            // Writable and configurable, not enumerable: JSON.stringify and Object.keys skip them.
            qjs::JS_DefinePropertyValueStr(ctx, java_map, name.as_ptr(), f, (qjs::JS_PROP_WRITABLE | qjs::JS_PROP_CONFIGURABLE) as c_int);
        }
    }
}

/// A fresh event object for the current evaluation (a new reference).
///
/// # Safety
/// `ctx` is the runtime's live context and [`install`] has run.
pub unsafe fn new_event(ctx: *mut JSContext) -> JSValue {
    let g = g();
    // SAFETY: `ctx` is live and the class is registered (this function's contract); the object
    // takes ownership of the boxed state, freed by `finalizer`.
    unsafe {
        let obj = qjs::JS_NewObjectProtoClass(ctx, g.event_proto.get(), g.class_id.get());
        if !qjs::JS_IsException(obj) {
            let state = Box::new(State { props: Vec::with_capacity(4), index: atom_map(), generation: g.generation.get() });
            qjs::JS_SetOpaque(obj, Box::into_raw(state).cast());
        }
        obj
    }
}

/// The state behind `obj`, if it is an event object (whatever its generation).
///
/// # Safety
/// `obj` is a live value; the returned reference must not outlive this callback, and no other
/// reference to the same state may be live (QuickJS calls one method at a time per object, and
/// none of them calls another on the same object while holding its state).
unsafe fn state_of<'a>(obj: JSValue) -> Option<&'a mut State> {
    // SAFETY: `JS_GetOpaque` returns our boxed state for objects of our class, null otherwise.
    unsafe { (qjs::JS_GetOpaque(obj, g().class_id.get()) as *mut State).as_mut() }
}

/// Why an event object cannot be used.
struct Stale;

/// The state behind `obj` when it belongs to the running evaluation; otherwise throws a
/// `TypeError` (returning `Err`) — an event object kept from an earlier call never shows this
/// call's event. `Ok(None)` when `obj` is not an event object.
///
/// # Safety
/// As [`state_of`]; `ctx` is the live context.
unsafe fn live_state<'a>(ctx: *mut JSContext, obj: JSValue) -> Result<Option<&'a mut State>, Stale> {
    // SAFETY: forwarded contract.
    let Some(state) = (unsafe { state_of(obj) }) else { return Ok(None) };
    let g = g();
    if g.active.get() && state.generation == g.generation.get() {
        return Ok(Some(state));
    }
    // SAFETY: `ctx` is live; the format string has no conversions.
    unsafe {
        qjs::JS_ThrowTypeError(
            ctx,
            c"this event object belongs to an earlier evaluation: a filter may keep values it read from an event, not the event itself".as_ptr(),
        );
    }
    Err(Stale)
}

/// The class finalizer: frees the state of an event object QuickJS is freeing.
///
/// # Safety
/// Called by QuickJS only, with its runtime and an object of this class being freed.
unsafe extern "C" fn finalizer(rt: *mut JSRuntime, val: JSValue) {
    // SAFETY: `val` is an object of our class being freed; its opaque is our boxed state (or
    // null), taken back exactly once here; the state's atoms and values are owned.
    unsafe {
        let p = qjs::JS_GetOpaque(val, g().class_id.get()) as *mut State;
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
}

/// The class GC mark: marks the values the state holds.
///
/// # Safety
/// Called by QuickJS only, with its runtime, a live object of this class and its mark function.
unsafe extern "C" fn gc_mark(rt: *mut JSRuntime, val: JSValue, mark: qjs::JS_MarkFunc) {
    // SAFETY: QuickJS marks live objects of our class; the state's values are owned by it.
    unsafe {
        if let Some(state) = state_of(val) {
            for (_, value) in &state.props {
                if let Some(v) = value {
                    qjs::JS_MarkValue(rt, *v, mark);
                }
            }
        }
    }
}

/// The name `atom` stands for; `None` for a symbol. Cached per atom.
///
/// # Safety
/// `ctx` is the live context and `atom` a live atom.
unsafe fn name_of(ctx: *mut JSContext, atom: JSAtom) -> Option<Box<[u8]>> {
    let g = g();
    if let Some(name) = g.names.borrow().get(&atom) {
        return name.clone();
    }
    // SAFETY: `ctx` and `atom` are live; the value and C string are freed once after use.
    let name = unsafe {
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
        name
    };
    let mut names = g.names.borrow_mut();
    if names.len() < MAX_CACHED_NAMES {
        // SAFETY: the cache keeps one reference to each atom it holds.
        unsafe { qjs::JS_DupAtom(ctx, atom) };
        names.insert(atom, name.clone());
    }
    name
}

/// Fetches top-level field `name` from the host and parses it (a new reference), giving object
/// values the `java.util.Map` prototype.
///
/// # Safety
/// `ctx` is the live context.
unsafe fn fetch(ctx: *mut JSContext, name: &[u8]) -> Option<JSValue> {
    let len = crate::fetch_field(name)?;
    let scratch = crate::scratch();
    let raw = &scratch[..len];
    // SAFETY: `ctx` is live; `raw` is borrowed from the scratch buffer for these calls, which do
    // not fetch again; the host NUL-terminated it at `raw[len]`, as `JS_ParseJSON` needs.
    unsafe {
        if let Some(value) = scalar(ctx, raw).or_else(|| flat_object(ctx, raw)) {
            return Some(value);
        }
        let value = qjs::JS_ParseJSON(ctx, scratch.as_ptr().cast(), len as _, c"event".as_ptr());
        if qjs::JS_IsException(value) {
            // The host serves valid JSON within the nesting limit; drop the exception rather than
            // fail the filter.
            qjs::JS_FreeValue(ctx, qjs::JS_GetException(ctx));
            return None;
        }
        if qjs::JS_IsObject(value) {
            if len > 1 && raw[1..].contains(&b'{') {
                mapify_deep(ctx, value);
            } else if !qjs::JS_IsArray(value) {
                qjs::JS_SetPrototype(ctx, value, g().java_map.get());
            }
        }
        Some(value)
    }
}

/// The common scalar JSON values without going through the JSON parser: strings without escapes,
/// small integers, booleans and null. `None` for anything else.
///
/// # Safety
/// `ctx` is the live context.
unsafe fn scalar(ctx: *mut JSContext, raw: &[u8]) -> Option<JSValue> {
    match raw {
        [b'"', inner @ .., b'"'] if !inner.iter().any(|&b| b == b'\\' || b < 0x20) => {
            // SAFETY: `ctx` is live; QuickJS copies `inner` (UTF-8 validated by the host's parser).
            Some(unsafe { qjs::JS_NewStringLen(ctx, inner.as_ptr().cast(), inner.len() as _) })
        }
        b"true" => Some(qjs::JS_TRUE),
        b"false" => Some(qjs::JS_FALSE),
        b"null" => Some(qjs::JS_NULL),
        [first, ..] if raw.len() <= 9 && (first.is_ascii_digit() || *first == b'-') => {
            let text = std::str::from_utf8(raw).ok()?;
            // Only canonical integers: no leading zeros, fractions or exponents.
            let n: i32 = text.parse().ok()?;
            (n.to_string() == text).then(|| qjs::JS_MKVAL(qjs::JS_TAG_INT, n))
        }
        _ => None,
    }
}

/// A flat JSON object (scalar values only, keys without escapes) built directly with the
/// `java.util.Map` prototype. `None` for anything else (nested values, escapes, ...): the JSON
/// parser handles those.
///
/// # Safety
/// `ctx` is the live context.
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
    // SAFETY: `ctx` is live; each value is a new reference, either freed on the way out or handed
    // to the object (`JS_DefinePropertyValue` takes it); each atom is freed after use.
    unsafe {
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
        let obj = qjs::JS_NewObjectProto(ctx, g().java_map.get());
        for ((key, _), value) in entries.into_iter().zip(values) {
            let atom = qjs::JS_NewAtomLen(ctx, key.as_ptr().cast(), key.len() as _);
            // Takes the value's reference. A repeated key keeps its last value, as JSON.parse.
            qjs::JS_DefinePropertyValue(ctx, obj, atom, value, qjs::JS_PROP_C_W_E as c_int);
            qjs::JS_FreeAtom(ctx, atom);
        }
        Some(obj)
    }
}

/// A JSON number that [`scalar`] left out (fractions, exponents, large integers).
///
/// # Safety
/// `ctx` is the live context.
unsafe fn number(ctx: *mut JSContext, raw: &[u8]) -> Option<JSValue> {
    let text = std::str::from_utf8(raw).ok()?;
    let valid = text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && text.bytes().next().is_some_and(|b| b == b'-' || b.is_ascii_digit());
    let n: f64 = if valid { text.parse().ok()? } else { return None };
    // SAFETY: `ctx` is live.
    Some(unsafe { qjs::JS_NewNumber(ctx, n) })
}

/// Gives every object in `value` (arrays' elements included) the `java.util.Map` prototype.
/// Recursion depth is bounded by the host's event nesting limit.
///
/// # Safety
/// `ctx` is the live context and `value` a live value (borrowed).
unsafe fn mapify_deep(ctx: *mut JSContext, value: JSValue) {
    // SAFETY: `ctx` and `value` are live; the property table and each child are freed once.
    unsafe {
        if !qjs::JS_IsObject(value) {
            return;
        }
        if !qjs::JS_IsArray(value) {
            qjs::JS_SetPrototype(ctx, value, g().java_map.get());
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
}

/// The own value of `atom` (a new reference), from this evaluation's state, else from the host.
///
/// # Safety
/// `ctx` is the live context and `atom` a live atom.
unsafe fn own(ctx: *mut JSContext, state: &mut State, atom: JSAtom) -> Option<JSValue> {
    // SAFETY: `ctx` and `atom` are live; the state keeps one reference to each atom and value it
    // holds, and the caller gets a new reference.
    unsafe {
        if let Some(i) = state.position(atom) {
            return state.props[i].1.map(|v| qjs::JS_DupValue(ctx, v));
        }
        let fetched = match name_of(ctx, atom) {
            Some(name) => fetch(ctx, &name),
            None => None,
        };
        state.push(qjs::JS_DupAtom(ctx, atom), fetched);
        fetched.map(|v| qjs::JS_DupValue(ctx, v))
    }
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

/// `getPlayerId` → the atom of `player_id`; `eventName` → the atom of `event_name` (a new atom).
///
/// # Safety
/// `ctx` is the live context.
unsafe fn field_atom(ctx: *mut JSContext, name: &[u8]) -> JSAtom {
    let field = snake(name);
    // SAFETY: `ctx` is live; QuickJS copies the name.
    unsafe { qjs::JS_NewAtomLen(ctx, field.as_ptr().cast(), field.len() as _) }
}

/// A bean getter: returns `this[field]`, or `null` when it is `undefined` (as Java did).
///
/// # Safety
/// Called by QuickJS only, as a function made by [`inherited`] with one data value.
unsafe extern "C" fn bean_getter(
    ctx: *mut JSContext,
    this: JSValue,
    _argc: c_int,
    _argv: *mut JSValue,
    _magic: c_int,
    data: *mut JSValue,
) -> JSValue {
    // SAFETY: `data` holds the one value the getter was created with (the field atom as an int,
    // kept alive by the getter's owner); `this` is borrowed.
    unsafe {
        let field = qjs::JS_VALUE_GET_INT(*data) as u32;
        let v = qjs::JS_GetProperty(ctx, this, field);
        if qjs::JS_IsUndefined(v) {
            qjs::JS_NULL
        } else {
            v
        }
    }
}

/// What a read of `atom` that is not an own property gives (a new reference).
///
/// # Safety
/// `ctx` is the live context and `atom` a live atom.
unsafe fn inherited(ctx: *mut JSContext, state: &mut State, atom: JSAtom) -> JSValue {
    let g = g();
    // SAFETY: `ctx` and `atom` are live; cached getters and alias atoms are owned by the caches
    // (duplicated when handed out); a getter made here is a new reference returned to the caller.
    unsafe {
        let getter = g.getters.borrow().get(&atom).copied();
        if let Some(f) = getter {
            return qjs::JS_DupValue(ctx, f);
        }
        let alias = g.aliases.borrow().get(&atom).copied();
        if let Some(alias) = alias {
            if let Some(v) = own(ctx, state, alias) {
                return v;
            }
            return qjs::JS_GetProperty(ctx, g.event_proto.get(), atom);
        }
        if let Some(name) = name_of(ctx, atom) {
            let cacheable = g.names.borrow().contains_key(&atom);
            if name.len() > 3 && name.starts_with(b"get") && name[3].is_ascii_uppercase() {
                let mut rest = name[3..].to_vec();
                rest[0] = rest[0].to_ascii_lowercase();
                let field = field_atom(ctx, &rest);
                let mut data = qjs::JS_MKVAL(qjs::JS_TAG_INT, field as i32);
                let f = qjs::JS_NewCFunctionData(ctx, Some(bean_getter), 0, 0, 1, &mut data);
                if cacheable {
                    // The field atom stays referenced by the cached getter.
                    g.getters.borrow_mut().insert(atom, qjs::JS_DupValue(ctx, f));
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
                    g.aliases.borrow_mut().insert(atom, field);
                } else {
                    qjs::JS_FreeAtom(ctx, field);
                }
                if let Some(v) = v {
                    return v;
                }
            }
        }
        qjs::JS_GetProperty(ctx, g.event_proto.get(), atom)
    }
}

/// Exotic `[[Get]]`: own field, else getter, alias or prototype.
///
/// # Safety
/// Called by QuickJS only (exotic methods of this class), with the live context, a live object
/// of this class and a live atom; the same holds for every exotic method below.
unsafe extern "C" fn get_property(ctx: *mut JSContext, obj: JSValue, atom: JSAtom, _receiver: JSValue) -> JSValue {
    // SAFETY: QuickJS calls this with the live context, a live object of our class and a live
    // atom; the state is used for this call only.
    unsafe {
        let state = match live_state(ctx, obj) {
            Ok(Some(state)) => state,
            Ok(None) => return qjs::JS_UNDEFINED,
            Err(Stale) => return qjs::JS_EXCEPTION,
        };
        match own(ctx, state, atom) {
            Some(v) => v,
            None => inherited(ctx, state, atom),
        }
    }
}

/// Exotic `[[Set]]`: on this evaluation's copy only.
///
/// # Safety
/// As [`get_property`]; `value` is borrowed.
unsafe extern "C" fn set_property(
    ctx: *mut JSContext,
    obj: JSValue,
    atom: JSAtom,
    value: JSValue,
    _receiver: JSValue,
    _flags: c_int,
) -> c_int {
    // SAFETY: as in `get_property`; `value` is borrowed, so the state takes a new reference.
    unsafe {
        let state = match live_state(ctx, obj) {
            Ok(Some(state)) => state,
            Ok(None) => return 0,
            Err(Stale) => return -1,
        };
        let value = qjs::JS_DupValue(ctx, value);
        match state.position(atom) {
            Some(i) => {
                if let Some(old) = state.props[i].1.replace(value) {
                    qjs::JS_FreeValue(ctx, old);
                }
            }
            None => state.push(qjs::JS_DupAtom(ctx, atom), Some(value)),
        }
        1
    }
}

/// Exotic `[[Delete]]`: on this evaluation's copy only.
///
/// # Safety
/// As [`get_property`].
unsafe extern "C" fn delete_property(ctx: *mut JSContext, obj: JSValue, atom: JSAtom) -> c_int {
    // SAFETY: as in `get_property`.
    unsafe {
        let state = match live_state(ctx, obj) {
            Ok(Some(state)) => state,
            Ok(None) => return 0,
            Err(Stale) => return -1,
        };
        match state.position(atom) {
            Some(i) => {
                if let Some(old) = state.props[i].1.take() {
                    qjs::JS_FreeValue(ctx, old);
                }
            }
            None => state.push(qjs::JS_DupAtom(ctx, atom), None),
        }
        1
    }
}

/// Exotic `[[HasProperty]]` (`in`).
///
/// # Safety
/// As [`get_property`].
unsafe extern "C" fn has_property(ctx: *mut JSContext, obj: JSValue, atom: JSAtom) -> c_int {
    // SAFETY: as in `get_property`.
    unsafe {
        let state = match live_state(ctx, obj) {
            Ok(Some(state)) => state,
            Ok(None) => return 0,
            Err(Stale) => return -1,
        };
        if let Some(v) = own(ctx, state, atom) {
            qjs::JS_FreeValue(ctx, v);
            return 1;
        }
        qjs::JS_HasProperty(ctx, g().event_proto.get(), atom)
    }
}

/// Exotic `[[GetOwnProperty]]`.
///
/// # Safety
/// As [`get_property`]; `desc` is null or writable.
unsafe extern "C" fn get_own_property(
    ctx: *mut JSContext,
    desc: *mut qjs::JSPropertyDescriptor,
    obj: JSValue,
    atom: JSAtom,
) -> c_int {
    // SAFETY: as in `get_property`; a filled descriptor owns the value's new reference.
    unsafe {
        let state = match live_state(ctx, obj) {
            Ok(Some(state)) => state,
            Ok(None) => return 0,
            Err(Stale) => return -1,
        };
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
}

/// Exotic `[[OwnPropertyKeys]]`: the event's keys (host order, each once, minus those the filter
/// deleted), then those the filter added. One pass over the host's list; no value is fetched.
///
/// # Safety
/// As [`get_property`]; `ptab` and `plen` are writable.
unsafe extern "C" fn get_own_property_names(
    ctx: *mut JSContext,
    ptab: *mut *mut qjs::JSPropertyEnum,
    plen: *mut u32,
    obj: JSValue,
) -> c_int {
    // SAFETY: as in `get_property`; the key list is a new reference freed once; every atom in
    // `names` is owned and handed to the table QuickJS frees (or freed here on failure).
    unsafe {
        let state = match live_state(ctx, obj) {
            Ok(Some(state)) => state,
            Ok(None) => {
                *ptab = ptr::null_mut();
                *plen = 0;
                return 0;
            }
            Err(Stale) => return -1,
        };
        let mut names: Vec<JSAtom> = Vec::new();
        let mut listed: AtomMap<()> = atom_map();
        if let Some(len) = crate::fetch_keys() {
            let keys = {
                let scratch = crate::scratch();
                qjs::JS_ParseJSON(ctx, scratch.as_ptr().cast(), len as _, c"event".as_ptr())
            };
            if qjs::JS_IsException(keys) {
                return -1;
            }
            let mut count: i64 = 0;
            qjs::JS_GetLength(ctx, keys, &mut count);
            names.reserve(count.max(0) as usize);
            for i in 0..count.max(0) as u32 {
                let key = qjs::JS_GetPropertyUint32(ctx, keys, i);
                let atom = qjs::JS_ValueToAtom(ctx, key);
                qjs::JS_FreeValue(ctx, key);
                let deleted = state.position(atom).is_some_and(|p| state.props[p].1.is_none());
                if deleted || listed.insert(atom, ()).is_some() {
                    qjs::JS_FreeAtom(ctx, atom);
                } else {
                    names.push(atom);
                }
            }
            qjs::JS_FreeValue(ctx, keys);
        }
        for (atom, value) in &state.props {
            if value.is_some() && !listed.contains_key(atom) {
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
}

/// `this` has `key` as an own property (a JSON map entry).
///
/// # Safety
/// `ctx` is the live context; `this` and `key` are live (borrowed).
unsafe fn own_entry(ctx: *mut JSContext, this: JSValue, key: JSValue) -> Option<JSAtom> {
    // SAFETY: forwarded contract; the atom is returned owned or freed.
    unsafe {
        let atom = qjs::JS_ValueToAtom(ctx, key);
        if qjs::JS_GetOwnProperty(ctx, ptr::null_mut(), this, atom) == 1 {
            Some(atom)
        } else {
            qjs::JS_FreeAtom(ctx, atom);
            None
        }
    }
}

/// The first argument, or `undefined`.
///
/// # Safety
/// `argv` holds `argc` values.
unsafe fn arg(argc: c_int, argv: *mut JSValue) -> JSValue {
    if argc > 0 {
        // SAFETY: `argc > 0`, so `argv[0]` exists.
        unsafe { *argv }
    } else {
        qjs::JS_UNDEFINED
    }
}

/// `java.util.Map.get(k)`: the entry's value, or `null`.
///
/// # Safety
/// Called by QuickJS only, as a method: the live context, a borrowed `this`, and `argv` holding
/// `argc` values; the same holds for the other `Map` methods below.
unsafe extern "C" fn map_get(ctx: *mut JSContext, this: JSValue, argc: c_int, argv: *mut JSValue) -> JSValue {
    // SAFETY: QuickJS calls methods with the live context, a borrowed `this` and `argc` arguments.
    unsafe {
        match own_entry(ctx, this, arg(argc, argv)) {
            Some(atom) => {
                let v = qjs::JS_GetProperty(ctx, this, atom);
                qjs::JS_FreeAtom(ctx, atom);
                v
            }
            None => qjs::JS_NULL,
        }
    }
}

/// `java.util.Map.containsKey(k)`.
///
/// # Safety
/// As [`map_get`].
unsafe extern "C" fn map_contains_key(ctx: *mut JSContext, this: JSValue, argc: c_int, argv: *mut JSValue) -> JSValue {
    // SAFETY: as in `map_get`.
    unsafe {
        match own_entry(ctx, this, arg(argc, argv)) {
            Some(atom) => {
                qjs::JS_FreeAtom(ctx, atom);
                qjs::JS_TRUE
            }
            None => qjs::JS_FALSE,
        }
    }
}

/// The number of enumerable own string keys of `this`.
///
/// # Safety
/// `ctx` is the live context and `this` a live value.
unsafe fn entry_count(ctx: *mut JSContext, this: JSValue) -> u32 {
    // SAFETY: forwarded contract; the table is freed once.
    unsafe {
        let mut tab: *mut qjs::JSPropertyEnum = ptr::null_mut();
        let mut len: u32 = 0;
        let flags = (qjs::JS_GPN_STRING_MASK | qjs::JS_GPN_ENUM_ONLY) as c_int;
        if qjs::JS_GetOwnPropertyNames(ctx, &mut tab, &mut len, this, flags) != 0 {
            return 0;
        }
        qjs::JS_FreePropertyEnum(ctx, tab, len);
        len
    }
}

/// `java.util.Map.size()`.
///
/// # Safety
/// As [`map_get`].
unsafe extern "C" fn map_size(ctx: *mut JSContext, this: JSValue, _argc: c_int, _argv: *mut JSValue) -> JSValue {
    // SAFETY: as in `map_get`.
    qjs::JS_MKVAL(qjs::JS_TAG_INT, unsafe { entry_count(ctx, this) } as i32)
}

/// `java.util.Map.isEmpty()`.
///
/// # Safety
/// As [`map_get`].
unsafe extern "C" fn map_is_empty(ctx: *mut JSContext, this: JSValue, _argc: c_int, _argv: *mut JSValue) -> JSValue {
    // SAFETY: as in `map_get`.
    if unsafe { entry_count(ctx, this) } == 0 {
        qjs::JS_TRUE
    } else {
        qjs::JS_FALSE
    }
}
