//! The filter's `event` argument: a native (exotic) object whose fields are fetched from the host
//! the first time the filter reads them.
//!
//! It behaves as a plain object holding the event's own snake_case keys: reads, `in`,
//! `Object.keys`, `JSON.stringify`, writes and deletes all work, on this evaluation's copy only.
//! Reads that are not fields resolve, in order, to
//! - a bean getter for any field (`getPlayerId()` reads `player_id`, `null` when absent, as Java),
//! - a camelCase alias (`eventName` reads `event_name`),
//! - `Object.prototype` (`hasOwnProperty`, `toString`, ...).
//!
//! Object values (`data`, `context`, and objects nested in them) get the `java.util.Map`
//! methods the original's filters called: `get(k)`, `containsKey(k)`, `size()`, `isEmpty()`,
//! as non-enumerable methods of their prototype.

use javy_plugin_api::javy::quickjs::{
    self as rq,
    class::{ClassKind, JsCell, JsClass, PropertyDescriptor, PropertyName, Trace, Tracer, Writable},
    function::This,
    qjs, Atom, Class, Ctx, Function, JsLifetime, Object, Persistent, Value,
};
use std::cell::RefCell;
use std::collections::HashMap;

/// The per-runtime objects the event view needs, created once (before the snapshot).
pub struct EventSupport {
    /// Prototype of every event object (inherits from `Object.prototype`).
    proto: Persistent<Object<'static>>,
    /// Prototype of every object value (`java.util.Map` methods; inherits from `Object.prototype`).
    java_map: Persistent<Object<'static>>,
}

thread_local! {
    static SUPPORT: RefCell<Option<EventSupport>> = const { RefCell::new(None) };
    /// Bean getter functions, one per name (`getData`, `getPlayerId`, ...).
    static GETTERS: RefCell<HashMap<String, Persistent<Function<'static>>>> = RefCell::new(HashMap::new());
}

/// Creates the prototypes and registers the class. Called once, from `initialize-runtime`.
pub fn install<'js>(ctx: &Ctx<'js>) -> rq::Result<()> {
    let proto = Object::new(ctx.clone())?;
    let java_map = Object::new(ctx.clone())?;
    let define = |name: &str, f: Function<'js>| -> rq::Result<()> {
        java_map.prop(name, rq::object::Property::from(f).writable().configurable())
    };
    define("get", Function::new(ctx.clone(), map_get)?.with_name("get")?)?;
    define("containsKey", Function::new(ctx.clone(), map_contains_key)?.with_name("containsKey")?)?;
    define("size", Function::new(ctx.clone(), map_size)?.with_name("size")?)?;
    define("isEmpty", Function::new(ctx.clone(), map_is_empty)?.with_name("isEmpty")?)?;
    SUPPORT.with(|s| {
        *s.borrow_mut() = Some(EventSupport {
            proto: Persistent::save(ctx, proto),
            java_map: Persistent::save(ctx, java_map),
        })
    });
    // Register the class now, so that the snapshot carries it.
    let _ = new_event(ctx)?;
    Ok(())
}

fn support<'js>(ctx: &Ctx<'js>) -> rq::Result<(Object<'js>, Object<'js>)> {
    SUPPORT.with(|s| {
        let s = s.borrow();
        let s = s.as_ref().expect("event support installed at initialisation");
        Ok((s.proto.clone().restore(ctx)?, s.java_map.clone().restore(ctx)?))
    })
}

/// A fresh event object for one evaluation.
pub fn new_event<'js>(ctx: &Ctx<'js>) -> rq::Result<Value<'js>> {
    let (proto, _) = support(ctx)?;
    Ok(Class::instance_proto(EventObject { props: Vec::with_capacity(4) }, proto)?.into_value())
}

/// The event object's state: fields read so far, and this evaluation's writes and deletes.
pub struct EventObject<'js> {
    /// `Some(value)`: an own property; `None`: no such field, or deleted.
    props: Vec<(Atom<'js>, Option<Value<'js>>)>,
}

unsafe impl<'js> JsLifetime<'js> for EventObject<'js> {
    type Changed<'to> = EventObject<'to>;
}

impl<'js> Trace<'js> for EventObject<'js> {
    fn trace<'a>(&self, tracer: Tracer<'a, 'js>) {
        for (_, value) in &self.props {
            if let Some(value) = value {
                value.trace(tracer);
            }
        }
    }
}

type Cell<'js> = JsCell<'js, EventObject<'js>>;

/// The own value of `atom`: from this evaluation's state, else fetched from the host.
fn own<'js>(this: &Cell<'js>, ctx: &Ctx<'js>, atom: &Atom<'js>) -> rq::Result<Option<Value<'js>>> {
    if let Some((_, v)) = this.borrow().props.iter().find(|(a, _)| a == atom) {
        return Ok(v.clone());
    }
    let value = fetch(ctx, atom)?;
    this.borrow_mut().props.push((atom.clone(), value.clone()));
    Ok(value)
}

/// The string an atom names, or `None` for a symbol.
fn atom_name(atom: &Atom<'_>) -> rq::Result<Option<String>> {
    if atom.to_value()?.is_symbol() {
        return Ok(None);
    }
    atom.to_string().map(Some)
}

fn fetch<'js>(ctx: &Ctx<'js>, atom: &Atom<'js>) -> rq::Result<Option<Value<'js>>> {
    let Some(name) = atom_name(atom)? else { return Ok(None) };
    let Some(len) = crate::fetch(|buf, cap| unsafe { crate::event_field(name.as_ptr(), name.len(), buf, cap) }) else {
        return Ok(None);
    };
    let value = crate::parse_scratch(ctx, len)?;
    if crate::scratch_has_nested_object(len) {
        mapify_deep(ctx, &value)?;
    } else if let Some(obj) = value.as_object() {
        if !value.is_array() {
            let (_, java_map) = support(ctx)?;
            obj.set_prototype(Some(&java_map))?;
        }
    }
    Ok(Some(value))
}

/// Gives every object in `value` (arrays' elements included) the `java.util.Map` prototype.
fn mapify_deep<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> rq::Result<()> {
    let Some(obj) = value.as_object() else { return Ok(()) };
    if let Some(array) = value.as_array() {
        for item in array.iter::<Value>() {
            mapify_deep(ctx, &item?)?;
        }
        return Ok(());
    }
    let (_, java_map) = support(ctx)?;
    obj.set_prototype(Some(&java_map))?;
    for entry in obj.props::<Atom, Value>() {
        let (_, v) = entry?;
        mapify_deep(ctx, &v)?;
    }
    Ok(())
}

/// Lower-case letters after an `_` for each upper-case one: `eventName` → `event_name`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn bean_getter<'js>(ctx: &Ctx<'js>, name: &str) -> rq::Result<Function<'js>> {
    if let Some(f) = GETTERS.with(|g| g.borrow().get(name).cloned()) {
        return f.restore(ctx);
    }
    let mut field = name[3..4].to_ascii_lowercase();
    field.push_str(&name[4..]);
    let field = snake(&field);
    let f = Function::new(ctx.clone(), move |ctx: Ctx<'js>, this: This<Value<'js>>| -> rq::Result<Value<'js>> {
        let Some(obj) = this.0.as_object() else { return Ok(Value::new_null(ctx)) };
        let v: Value = obj.get(field.as_str())?;
        Ok(if v.is_undefined() { Value::new_null(ctx) } else { v })
    })?
    .with_name(name)?;
    GETTERS.with(|g| g.borrow_mut().insert(name.to_owned(), Persistent::save(ctx, f.clone())));
    Ok(f)
}

/// What a read of `atom` that is not an own property gives.
fn inherited<'js>(this: &Cell<'js>, ctx: &Ctx<'js>, atom: &Atom<'js>) -> rq::Result<Value<'js>> {
    if let Some(name) = atom_name(atom)? {
        let bytes = name.as_bytes();
        if bytes.len() > 3 && name.starts_with("get") && bytes[3].is_ascii_uppercase() {
            return bean_getter(ctx, &name).map(Function::into_value);
        }
        if bytes.iter().any(u8::is_ascii_uppercase) {
            let alias = Atom::from_str(ctx.clone(), &snake(&name))?;
            if let Some(v) = own(this, ctx, &alias)? {
                return Ok(v);
            }
        }
    }
    let (proto, _) = support(ctx)?;
    proto.get(atom.clone())
}

impl<'js> JsClass<'js> for EventObject<'js> {
    const NAME: &'static str = "TrackingEvent";
    const KIND: ClassKind = ClassKind::Exotic;
    type Mutable = Writable;

    fn constructor(_ctx: &Ctx<'js>) -> rq::Result<Option<rq::function::Constructor<'js>>> {
        Ok(None)
    }

    fn exotic_get_property(this: &Cell<'js>, ctx: &Ctx<'js>, atom: Atom<'js>, _receiver: Value<'js>) -> rq::Result<Value<'js>> {
        match own(this, ctx, &atom)? {
            Some(v) => Ok(v),
            None => inherited(this, ctx, &atom),
        }
    }

    fn exotic_set_property(this: &Cell<'js>, _ctx: &Ctx<'js>, atom: Atom<'js>, _receiver: Value<'js>, value: Value<'js>) -> rq::Result<bool> {
        let mut state = this.borrow_mut();
        match state.props.iter_mut().find(|(a, _)| *a == atom) {
            Some((_, slot)) => *slot = Some(value),
            None => state.props.push((atom, Some(value))),
        }
        Ok(true)
    }

    fn exotic_delete_property(this: &Cell<'js>, _ctx: &Ctx<'js>, atom: Atom<'js>) -> rq::Result<bool> {
        let mut state = this.borrow_mut();
        match state.props.iter_mut().find(|(a, _)| *a == atom) {
            Some((_, slot)) => *slot = None,
            None => state.props.push((atom, None)),
        }
        Ok(true)
    }

    fn exotic_has_property(this: &Cell<'js>, ctx: &Ctx<'js>, atom: Atom<'js>) -> rq::Result<bool> {
        if own(this, ctx, &atom)?.is_some() {
            return Ok(true);
        }
        let (proto, _) = support(ctx)?;
        proto.contains_key(atom)
    }

    fn exotic_get_own_property(this: &Cell<'js>, ctx: &Ctx<'js>, atom: Atom<'js>) -> rq::Result<Option<PropertyDescriptor<'js>>> {
        Ok(own(this, ctx, &atom)?.map(|v| PropertyDescriptor::new_value(v, true, true, true)))
    }

    fn exotic_get_own_property_names(this: &Cell<'js>, ctx: &Ctx<'js>) -> rq::Result<Vec<PropertyName<'js>>> {
        let len = crate::fetch(|buf, cap| unsafe { crate::event_keys(buf, cap) }).unwrap_or(0);
        let mut names: Vec<Atom<'js>> = Vec::new();
        if len > 0 {
            let keys = crate::parse_scratch(ctx, len)?;
            if let Some(array) = keys.as_array() {
                for key in array.iter::<Value>() {
                    let atom = Atom::from_value(ctx.clone(), &key?)?;
                    if own(this, ctx, &atom)?.is_some() {
                        names.push(atom);
                    }
                }
            }
        }
        for (atom, value) in this.borrow().props.iter() {
            if value.is_some() && !names.contains(atom) {
                names.push(atom.clone());
            }
        }
        Ok(names.into_iter().map(|atom| PropertyName { atom, is_enumerable: true }).collect())
    }
}

/// `true` for a value a JSON map can hold (anything but `undefined` and inherited methods).
fn is_entry(v: &Value<'_>) -> bool {
    !v.is_undefined() && !v.is_function()
}

fn map_get<'js>(ctx: Ctx<'js>, this: This<Object<'js>>, key: Value<'js>) -> rq::Result<Value<'js>> {
    let v: Value = this.0.get(Atom::from_value(ctx.clone(), &key)?)?;
    Ok(if is_entry(&v) { v } else { Value::new_null(ctx) })
}

fn map_contains_key<'js>(ctx: Ctx<'js>, this: This<Object<'js>>, key: Value<'js>) -> rq::Result<bool> {
    let v: Value = this.0.get(Atom::from_value(ctx, &key)?)?;
    Ok(is_entry(&v))
}

fn map_size<'js>(this: This<Object<'js>>) -> rq::Result<usize> {
    let mut n = 0;
    for key in this.0.keys::<Atom>() {
        key?;
        n += 1;
    }
    Ok(n)
}

fn map_is_empty<'js>(this: This<Object<'js>>) -> rq::Result<bool> {
    Ok(map_size(this)? == 0)
}

// Keep the raw-API import used (bindings are needed by the parent module's helpers).
#[allow(unused_imports)]
use qjs as _;
