//! Write rtcrm campaign filters in Rust. A filter is a plain function of the event (and, for a
//! campaign with `state`, of the player's [`State`]); one attribute generates the glue of the
//! filter ABI (`filter-sdk/ABI.md`: version 1, or version 2 for a filter of the state) for
//! `wasm32` targets only, so the same function unit-tests natively with `cargo test`.
//!
//! ```
//! use rtcrm_filter::{filter, Event};
//!
//! /// The original system's campaign 4711: players who lost a fight.
//! #[filter]
//! fn fight_loss(event: &Event) -> bool {
//!     event.data().get("result").and_then(|v| v.as_str()) == Some("loss")
//! }
//!
//! let loss = Event::from_json(br#"{"event_name":"fight","data":{"result":"loss"}}"#).unwrap();
//! assert!(fight_loss(&loss));
//! ```
//!
//! A campaign with `state` (spec §12) keeps a JSON object per player; a filter that takes it as a
//! second argument reads and changes it, and the host keeps what it leaves when the evaluation
//! succeeds (ABI version 2, `filter-sdk/ABI.md` §9):
//!
//! ```
//! use rtcrm_filter::{filter, Event, State};
//!
//! /// Every fifth purchase of a player triggers.
//! #[filter]
//! fn every_fifth_purchase(event: &Event, state: &mut State) -> bool {
//!     if event.event_name() != Some("purchase") {
//!         return false; // the state is left unchanged
//!     }
//!     let n = state.get("purchases").and_then(|v| v.as_u64()).unwrap_or(0) + 1;
//!     state.set("purchases", n);
//!     n % 5 == 0
//! }
//!
//! let purchase = Event::from_json(br#"{"event_name":"purchase","player_id":7}"#).unwrap();
//! let mut state = State::new(); // `{}`: the player's first event
//! let verdicts: Vec<bool> = (0..5).map(|_| every_fifth_purchase(&purchase, &mut state)).collect();
//! assert_eq!(verdicts, [false, false, false, false, true]);
//! assert_eq!(state.to_json(), r#"{"purchases":5}"#);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` (a module without imports) or
//! `wasm32-wasip1` (imports from `wasi_snapshot_preview1` only; what the filter writes to
//! stdout or stderr goes to the host's log). The module exports `memory`, `rtcrm_alloc`,
//! `rtcrm_filter` and `rtcrm_abi_version` (returning [`ABI_VERSION`], 1); a filter of the state
//! also `rtcrm_filter_state`, `rtcrm_state_ptr` and `rtcrm_state_len`, and its
//! `rtcrm_abi_version` returns [`STATE_ABI_VERSION`], 2. `filter-sdk/README.md` has the commands.
//!
//! # What the glue does
//! - `rtcrm_alloc(len)` returns one buffer, kept between calls and grown when an event is larger
//!   than any before (0 when memory cannot grow).
//! - `rtcrm_filter(ptr, len)` parses the bytes into an [`Event`] (not a JSON object:
//!   [`Status::InvalidEvent`]), calls the function and maps its result with [`IntoStatus`]:
//!   `true` → [`Status::Match`], `false` → [`Status::NoMatch`], `Err(e)` →
//!   [`Status::FilterError`] with `e` written to stderr (the host log, on `wasm32-wasip1`).
//! - A panic aborts the call (`unreachable`): the host counts error kind `trap` and rebuilds the
//!   instance. Build with `panic = "abort"`.
//!
//! A filter of the state (`fn f(event: &Event, state: &mut State)`) gets, in addition:
//! - `rtcrm_filter_state(ptr, len, state_ptr, state_len)` parses the event and the stored state
//!   (not a JSON object: [`Status::InvalidState`]), calls the function and maps its result as
//!   above. When it returns a verdict and changed the state (any `&mut` use of it, see
//!   [`State::is_changed`]), the new state is serialised into a second buffer, kept between calls;
//!   an unchanged state is answered with `rtcrm_state_len() == -1`, so the host keeps the stored
//!   one without copying. On `Err` the host keeps the stored state, whatever the function did to it.
//! - `rtcrm_filter(ptr, len)` (a campaign without `state`) calls the function on an empty state
//!   and discards it.
//!
//! # Misuse is a compile error
//! The attribute checks the signature and reports a misuse at the offending tokens:
//!
//! ```compile_fail
//! #[rtcrm_filter::filter]
//! async fn f(event: &rtcrm_filter::Event) -> bool { true }
//! ```
//! ```compile_fail
//! #[rtcrm_filter::filter]
//! fn f(event: &rtcrm_filter::Event) -> u32 { 1 } // not `bool` or `Result<bool, E>`
//! ```
//! ```compile_fail
//! #[rtcrm_filter::filter]
//! fn f(event: &String) -> bool { true } // the event is `&Event`
//! ```
//! ```compile_fail
//! #[rtcrm_filter::filter(loss)]
//! fn f(event: &rtcrm_filter::Event) -> bool { true }
//! ```
//! ```compile_fail
//! #[rtcrm_filter::filter]
//! fn f(event: &rtcrm_filter::Event, state: &rtcrm_filter::State) -> bool { true } // `&mut State`
//! ```
//! ```compile_fail
//! #[rtcrm_filter::filter]
//! fn f(event: &rtcrm_filter::Event, state: &mut rtcrm_filter::Map<String, rtcrm_filter::Value>) -> bool { true }
//! ```

use serde::de;
use serde_json::value::RawValue;
use std::cell::OnceCell;
use std::fmt;
use std::ops::{Deref, DerefMut};

// So `#[filter]`'s `::rtcrm_filter::` paths resolve in this crate's own tests.
extern crate self as rtcrm_filter;

pub use rtcrm_filter_macros::filter;
pub use serde_json::{self, Map, Value};

/// The ABI version of a module whose filter takes the event only, returned by its generated
/// `rtcrm_abi_version` export (ABI.md §6).
pub const ABI_VERSION: i32 = 1;

/// The ABI version of a module whose filter also takes the player's [`State`] (ABI.md §9),
/// returned by its generated `rtcrm_abi_version` export.
pub const STATE_ABI_VERSION: i32 = 2;

/// What `rtcrm_filter` returns (ABI.md §3).
///
/// Invariant: errors are negative. `1` and `0` are the only non-negative codes; the host counts
/// any negative code as error kind `exception` ("filter returned error code N") and any code
/// above 1 as a trap, so a new variant here must be negative.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The event matches: the host emits a trigger.
    Match = 1,
    /// The event does not match.
    NoMatch = 0,
    /// The bytes are not a JSON object (the host only passes objects, so this means a host bug
    /// or an ABI mismatch).
    InvalidEvent = -1,
    /// The filter function returned `Err`.
    FilterError = -2,
    /// The stored state is not a JSON object (the host only passes objects, so this means a host
    /// bug or an ABI mismatch). `-4` in every SDK (`-3` is Go's `NoHandler`).
    InvalidState = -4,
}

impl Status {
    /// The code as the ABI returns it.
    pub const fn code(self) -> i32 {
        self as i32
    }
}

/// What a filter function may return: `bool`, or `Result<bool, E>` with `E: Display`.
#[diagnostic::on_unimplemented(
    message = "a filter returns `bool` or `Result<bool, E>` with `E: Display`, not `{Self}`",
    label = "this is not a filter's verdict"
)]
pub trait IntoStatus {
    /// The status code the ABI returns for this result.
    fn into_status(self) -> Status;
}

impl IntoStatus for bool {
    fn into_status(self) -> Status {
        if self {
            Status::Match
        } else {
            Status::NoMatch
        }
    }
}

impl<E: fmt::Display> IntoStatus for Result<bool, E> {
    fn into_status(self) -> Status {
        match self {
            Ok(verdict) => verdict.into_status(),
            Err(e) => {
                report(format_args!("filter error: {e}"));
                Status::FilterError
            }
        }
    }
}

impl IntoStatus for Status {
    fn into_status(self) -> Status {
        self
    }
}

/// Writes one line to stderr: the host's log on `wasm32-wasip1`, nowhere on
/// `wasm32-unknown-unknown`, the terminal natively.
fn report(message: fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "rtcrm-filter: {message}");
}

/// The event as the host received it: a JSON object, with typed accessors for the fields of
/// the original system's events and the whole object for anything else.
///
/// Accessors never fail: a field that is absent or of another JSON type reads as `None` (or, for
/// [`Event::data`] and [`Event::context`], as an empty map).
///
/// Parsing is lazy: [`Event::from_json`] validates the JSON and notes where each top-level value
/// lies; a field is parsed into a [`Value`] the first time it is read, once. A filter that reads
/// `data.result` never builds the rest of the event.
#[derive(Clone, Debug, Default)]
pub struct Event {
    bytes: Vec<u8>,
    /// Each top-level key, the byte range of its value, and the value once parsed.
    fields: Vec<(Key, std::ops::Range<usize>, OnceCell<Value>)>,
    all: OnceCell<Map<String, Value>>,
    empty: Map<String, Value>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.fields() == other.fields()
    }
}

/// Why bytes are not an [`Event`].
#[derive(Debug)]
pub enum EventError {
    /// Not JSON.
    Json(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Json(e) => write!(f, "the event is not JSON: {e}"),
            EventError::NotAnObject => f.write_str("the event is not a JSON object"),
        }
    }
}

impl std::error::Error for EventError {}

/// A player's state for a campaign with `state` (spec §12; ABI.md §9): a JSON object the host
/// keeps per (campaign, player), `{}` at first. It reads and writes as the [`Map`] it wraps
/// (`state.get("n")`, `state.insert(..)`, `state.remove(..)`, …), plus [`State::set`].
///
/// What the filter leaves is kept for the player's next event when the evaluation succeeds (a
/// verdict); on `Err`, a panic or any limit the host keeps the stored state instead. The
/// serialised state must fit the campaign's `state.max_bytes` (default 1 KiB), else the
/// evaluation fails with error kind `state`. Keys serialise in sorted order (serde_json's `Map`).
///
/// A state is *changed* as soon as it is borrowed mutably (`DerefMut`), even if nothing ends up
/// different; an unchanged state costs the host no copy (`rtcrm_state_len() == -1`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    map: Map<String, Value>,
    changed: bool,
}

/// Why bytes are not a [`State`].
#[derive(Debug)]
pub enum StateError {
    /// Not JSON.
    Json(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Json(e) => write!(f, "the stored state is not JSON: {e}"),
            StateError::NotAnObject => f.write_str("the stored state is not a JSON object"),
        }
    }
}

impl std::error::Error for StateError {}

impl State {
    /// An empty state, `{}`: what a player's first event sees.
    pub fn new() -> State {
        State::default()
    }

    /// Parses a stored state (UTF-8 JSON, a JSON object), as the glue does. Unchanged until
    /// borrowed mutably.
    pub fn from_json(bytes: &[u8]) -> Result<State, StateError> {
        match serde_json::from_slice::<Value>(bytes).map_err(StateError::Json)? {
            Value::Object(map) => Ok(State { map, changed: false }),
            _ => Err(StateError::NotAnObject),
        }
    }

    /// A state holding `map`, unchanged (e.g. a test's starting point).
    pub fn from_map(map: Map<String, Value>) -> State {
        State { map, changed: false }
    }

    /// Sets `key` to `value` (anything `serde_json::Value` converts from: numbers, strings,
    /// booleans, `json!(..)`), replacing what was there.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.insert(key.to_owned(), value.into());
    }

    /// Whether the state was borrowed mutably since it was made or parsed: the glue returns it
    /// to the host only then.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// The state as compact JSON, as the host stores it.
    pub fn to_json(&self) -> String {
        Value::Object(self.map.clone()).to_string()
    }

    /// The map inside.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }

    /// Writes the state as compact JSON into `out` (cleared first): the glue's buffer.
    #[cfg(target_arch = "wasm32")]
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.clear();
        serde_json::to_writer(out, &self.map)
    }
}

impl Deref for State {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        &self.map
    }
}

impl DerefMut for State {
    /// Marks the state changed.
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        self.changed = true;
        &mut self.map
    }
}

macro_rules! str_fields {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> Option<&str> {
                self.str(stringify!($name))
            }
        )*
    };
}

impl Event {
    /// Parses the event bytes (UTF-8 JSON, a JSON object), as the glue does.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let index = de::Deserializer::deserialize_any(&mut deserializer, TopLevel).map_err(|e| {
            // Tell "not an object" from "not JSON".
            match serde_json::from_slice::<de::IgnoredAny>(bytes) {
                Ok(_) => EventError::NotAnObject,
                Err(_) => EventError::Json(e),
            }
        })?;
        deserializer.end().map_err(EventError::Json)?;
        let base = bytes.as_ptr() as usize;
        let fields = index
            .into_iter()
            .map(|(key, raw)| {
                let key = match key {
                    KeyRef::Borrowed(k) => Key::InPlace(k.as_ptr() as usize - base..k.as_ptr() as usize - base + k.len()),
                    KeyRef::Owned(k) => Key::Decoded(k),
                };
                let start = raw.get().as_ptr() as usize - base;
                (key, start..start + raw.get().len(), OnceCell::new())
            })
            .collect();
        Ok(Event { bytes: bytes.to_vec(), fields, all: OnceCell::new(), empty: Map::new() })
    }

    /// An event from a JSON value, e.g. `serde_json::json!({...})` in a test.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        if !value.is_object() {
            return Err(EventError::NotAnObject);
        }
        Event::from_json(value.to_string().as_bytes())
    }

    str_fields! {
        /// `schema_version`, e.g. `"2023110110010101"`.
        schema_version,
        /// `event_id`, e.g. a UUID.
        event_id,
        /// `system_type`, e.g. `"game"`.
        system_type,
        /// `system_name`, e.g. `"foe-backend"`.
        system_name,
        /// `game`, e.g. `"foe"`.
        game,
        /// `market`, e.g. `"de"`.
        market,
        /// `event_type`, e.g. `"progress"`.
        event_type,
        /// `event_name`, e.g. `"fight"`.
        event_name,
        /// `event_scope`, e.g. `"user"`.
        event_scope,
        /// `created_at` as written (RFC 3339), e.g. `"2023-11-20T11:00:00.00Z"`.
        created_at,
        /// `received_at` as written (RFC 3339).
        received_at,
        /// `hostname`, e.g. `"foe-backend-1.ig.com"`.
        hostname,
    }

    /// `player_id`: an integer, or a string of one (`"12345"`).
    pub fn player_id(&self) -> Option<i64> {
        match self.get("player_id")? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// `data`, the event's payload (empty when absent or not an object).
    pub fn data(&self) -> &Map<String, Value> {
        self.object("data")
    }

    /// `context` (empty when absent or not an object).
    pub fn context(&self) -> &Map<String, Value> {
        self.object("context")
    }

    /// Any top-level field (the last one, if a key repeats, as JavaScript's `JSON.parse`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let (_, range, cell) = self.fields.iter().rev().find(|(k, _, _)| self.key(k) == key)?;
        Some(cell.get_or_init(|| serde_json::from_slice(&self.bytes[range.clone()]).expect("validated by from_json")))
    }

    /// A nested value by JSON pointer (RFC 6901), e.g. `"/data/player/level"`.
    pub fn pointer(&self, pointer: &str) -> Option<&Value> {
        let rest = pointer.strip_prefix('/')?;
        let (first, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let value = if first.contains('~') { self.get(&first.replace("~1", "/").replace("~0", "~"))? } else { self.get(first)? };
        if tail.is_empty() {
            Some(value)
        } else {
            value.pointer(tail)
        }
    }

    /// The whole event (parses every field).
    pub fn fields(&self) -> &Map<String, Value> {
        self.all.get_or_init(|| {
            self.fields.iter().map(|(k, _, _)| (self.key(k).to_owned(), self.get(self.key(k)).cloned().unwrap_or(Value::Null))).collect()
        })
    }

    fn key<'a>(&'a self, key: &'a Key) -> &'a str {
        match key {
            // Validated as a UTF-8 string without escapes by from_json.
            Key::InPlace(r) => std::str::from_utf8(&self.bytes[r.clone()]).unwrap_or_default(),
            Key::Decoded(k) => k,
        }
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn object(&self, key: &str) -> &Map<String, Value> {
        match self.get(key) {
            Some(Value::Object(map)) => map,
            _ => &self.empty,
        }
    }
}

/// A top-level key: its place in the event bytes, or its decoded text when it had escapes.
#[derive(Clone, Debug)]
enum Key {
    InPlace(std::ops::Range<usize>),
    Decoded(String),
}

enum KeyRef<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> de::Deserialize<'de> for KeyRef<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = KeyRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<KeyRef<'de>, E> {
                Ok(KeyRef::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyRef<'de>, E> {
                Ok(KeyRef::Owned(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Collects the top-level keys of a JSON object and their raw values, without parsing them.
struct TopLevel;

impl<'de> de::Visitor<'de> for TopLevel {
    type Value = Vec<(KeyRef<'de>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(16);
        while let Some(key) = map.next_key::<KeyRef<'de>>()? {
            fields.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(fields)
    }
}

/// Runs a filter function on event bytes exactly as the wasm32 glue does, so the mapping from
/// bytes to status code is testable natively.
pub fn evaluate<R: IntoStatus>(bytes: &[u8], filter: impl FnOnce(&Event) -> R) -> Status {
    match Event::from_json(bytes) {
        Ok(event) => filter(&event).into_status(),
        Err(e) => {
            report(format_args!("{e}"));
            Status::InvalidEvent
        }
    }
}

/// Runs a filter of the state on event bytes and stored-state bytes exactly as the wasm32 glue's
/// `rtcrm_filter_state` does, so the mapping is testable natively. Returns the status and the
/// new state to store: `Some(json)` when the function returned a verdict and changed the state,
/// `None` when the host keeps the stored one (unchanged, `rtcrm_state_len() == -1`, or an error
/// status).
pub fn evaluate_with_state<R: IntoStatus>(event: &[u8], state: &[u8], filter: impl FnOnce(&Event, &mut State) -> R) -> (Status, Option<String>) {
    let (status, state) = run_with_state(event, state, filter);
    (status, state.map(|s| s.to_json()))
}

/// [`evaluate_with_state`] without serialising: the changed state, if it is to be kept.
fn run_with_state<R: IntoStatus>(event: &[u8], state: &[u8], filter: impl FnOnce(&Event, &mut State) -> R) -> (Status, Option<State>) {
    let event = match Event::from_json(event) {
        Ok(event) => event,
        Err(e) => {
            report(format_args!("{e}"));
            return (Status::InvalidEvent, None);
        }
    };
    let mut state = match State::from_json(state) {
        Ok(state) => state,
        Err(e) => {
            report(format_args!("{e}"));
            return (Status::InvalidState, None);
        }
    };
    let status = filter(&event, &mut state).into_status();
    let keep = matches!(status, Status::Match | Status::NoMatch) && state.is_changed();
    (status, keep.then_some(state))
}

/// The ABI exports' bodies, called by the code `#[filter]` generates. Not a public API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __abi {
    use super::{evaluate, report, run_with_state, Event, IntoStatus, State, Status};
    use std::cell::UnsafeCell;

    /// The one event buffer. wasm32 modules built by this SDK are single-threaded (no `atomics`
    /// target feature), and the host never calls into an instance concurrently.
    struct Buffer(UnsafeCell<Vec<u8>>);
    // SAFETY: single-threaded target, see above.
    unsafe impl Sync for Buffer {}

    static BUFFER: Buffer = Buffer(UnsafeCell::new(Vec::new()));

    pub fn alloc(len: i32) -> i32 {
        let Ok(len) = usize::try_from(len) else { return 0 };
        // SAFETY: single-threaded, and no reference to the buffer outlives a call.
        let buf = unsafe { &mut *BUFFER.0.get() };
        if buf.len() < len {
            buf.clear();
            if buf.try_reserve_exact(len).is_err() {
                return 0;
            }
            buf.resize(len, 0);
        }
        buf.as_mut_ptr() as usize as i32
    }

    /// # Safety
    /// `[ptr, ptr + len)` is readable: the host fills a buffer [`alloc`] returned.
    pub unsafe fn filter<R: IntoStatus>(ptr: i32, len: i32, f: fn(&Event) -> R) -> i32 {
        let Ok(len) = usize::try_from(len) else { return Status::InvalidEvent.code() };
        let bytes = std::slice::from_raw_parts(ptr as u32 as usize as *const u8, len);
        evaluate(bytes, f).code()
    }

    // ---- ABI version 2 (ABI.md §9) ----

    /// The new state's JSON, kept between calls (the host copies it out right after
    /// `rtcrm_filter_state` returns), and its length for `rtcrm_state_len` (-1: unchanged).
    static STATE_OUT: Buffer = Buffer(UnsafeCell::new(Vec::new()));
    struct Len(UnsafeCell<i32>);
    // SAFETY: single-threaded target, see `Buffer`.
    unsafe impl Sync for Len {}
    static STATE_LEN: Len = Len(UnsafeCell::new(-1));

    /// `rtcrm_filter` of a filter of the state: a campaign without `state` runs it on an empty
    /// state, discarded afterwards.
    ///
    /// # Safety
    /// As [`filter`].
    pub unsafe fn filter_without_state<R: IntoStatus>(ptr: i32, len: i32, f: fn(&Event, &mut State) -> R) -> i32 {
        let Ok(len) = usize::try_from(len) else { return Status::InvalidEvent.code() };
        let bytes = std::slice::from_raw_parts(ptr as u32 as usize as *const u8, len);
        evaluate(bytes, |event| f(event, &mut State::new())).code()
    }

    /// `rtcrm_filter_state`: the event and the stored state in, the verdict out; the new state
    /// is left for `rtcrm_state_ptr` and `rtcrm_state_len`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` and `[state_ptr, state_ptr + state_len)` are readable: the host fills
    /// a buffer [`alloc`] returned with both.
    pub unsafe fn filter_state<R: IntoStatus>(ptr: i32, len: i32, state_ptr: i32, state_len: i32, f: fn(&Event, &mut State) -> R) -> i32 {
        // SAFETY: single-threaded, and no reference to these outlives a call.
        let (out, out_len) = unsafe { (&mut *STATE_OUT.0.get(), &mut *STATE_LEN.0.get()) };
        *out_len = -1;
        let (Ok(len), Ok(state_len)) = (usize::try_from(len), usize::try_from(state_len)) else {
            return Status::InvalidEvent.code();
        };
        let event = std::slice::from_raw_parts(ptr as u32 as usize as *const u8, len);
        let stored = std::slice::from_raw_parts(state_ptr as u32 as usize as *const u8, state_len);
        let (status, state) = run_with_state(event, stored, f);
        if let Some(state) = state {
            if let Err(e) = state.write_json(out) {
                report(format_args!("the state cannot be serialised: {e}"));
                return Status::FilterError.code();
            }
            let Ok(n) = i32::try_from(out.len()) else {
                report(format_args!("the state is over 2 GiB"));
                return Status::FilterError.code();
            };
            *out_len = n;
        }
        status.code()
    }

    /// `rtcrm_state_ptr`: where the new state starts.
    pub fn state_ptr() -> i32 {
        // SAFETY: single-threaded, see `Buffer`.
        unsafe { (*STATE_OUT.0.get()).as_ptr() as usize as i32 }
    }

    /// `rtcrm_state_len`: the new state's length, or -1 when the stored state stays.
    pub fn state_len() -> i32 {
        // SAFETY: single-threaded, see `Buffer`.
        unsafe { *STATE_LEN.0.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lazy_fields_read_as_json_parse_reads_them() {
        let e = Event::from_json(br#"{"game":"foe","esc\u0061ped":1,"data":{"result":"loss"},"game":"elvenar"}"#).unwrap();
        assert_eq!(e.game(), Some("elvenar"), "a repeated key reads its last value");
        assert_eq!(e.get("escaped"), Some(&serde_json::json!(1)), "escaped keys are decoded");
        assert_eq!(e.data().get("result").and_then(|v| v.as_str()), Some("loss"));
        assert_eq!(e.fields().len(), 3);
        assert!(matches!(Event::from_json(b"[1]"), Err(EventError::NotAnObject)));
        assert!(matches!(Event::from_json(b"{\"a\":"), Err(EventError::Json(_))));
        assert!(matches!(Event::from_json(b"{} x"), Err(EventError::Json(_))));
    }

    const SEED: &[u8] = br#"{"schema_version":"2023110110010101","event_id":"7a8d0614-4e8e-4464-b439-36e31441a040","system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":"loss"}}"#;

    #[test]
    fn every_original_field_is_typed() {
        let e = Event::from_json(SEED).unwrap();
        assert_eq!(e.schema_version(), Some("2023110110010101"));
        assert_eq!(e.event_id(), Some("7a8d0614-4e8e-4464-b439-36e31441a040"));
        assert_eq!(e.system_type(), Some("game"));
        assert_eq!(e.system_name(), Some("foe-backend"));
        assert_eq!(e.game(), Some("foe"));
        assert_eq!(e.market(), Some("de"));
        assert_eq!(e.player_id(), Some(12345));
        assert_eq!(e.event_type(), Some("progress"));
        assert_eq!(e.event_name(), Some("fight"));
        assert_eq!(e.event_scope(), Some("user"));
        assert_eq!(e.created_at(), Some("2023-11-20T11:00:00.00Z"));
        assert_eq!(e.received_at(), Some("2023-11-20T11:00:02.00Z"));
        assert_eq!(e.hostname(), Some("foe-backend-1.ig.com"));
        assert!(e.context().is_empty());
        assert_eq!(e.data().get("result"), Some(&json!("loss")));
    }

    #[test]
    fn absent_or_mistyped_fields_read_as_none_or_empty() {
        let e = Event::from_value(json!({"game": 7, "player_id": "42", "data": [1], "extra": {"a": 1}})).unwrap();
        assert_eq!(e.game(), None);
        assert_eq!(e.market(), None);
        assert_eq!(e.player_id(), Some(42));
        assert!(e.data().is_empty());
        assert!(e.context().is_empty());
        assert_eq!(e.get("extra"), Some(&json!({"a": 1})));
        assert_eq!(Event::from_value(json!({"player_id": 1.5})).unwrap().player_id(), None);
    }

    #[test]
    fn pointer_reads_nested_fields() {
        let e = Event::from_value(json!({"data": {"player": {"level": 11}}, "a/b": {"~": 1}})).unwrap();
        assert_eq!(e.pointer("/data/player/level"), Some(&json!(11)));
        assert_eq!(e.pointer("/data/player/rank"), None);
        assert_eq!(e.pointer("/a~1b/~0"), Some(&json!(1)));
        assert_eq!(e.pointer("data"), None);
    }

    #[test]
    fn only_json_objects_are_events() {
        assert!(matches!(Event::from_json(b"[1]"), Err(EventError::NotAnObject)));
        assert!(matches!(Event::from_json(b"{"), Err(EventError::Json(_))));
    }

    #[test]
    fn evaluate_maps_results_to_status_codes() {
        assert_eq!(evaluate(SEED, |_| true), Status::Match);
        assert_eq!(evaluate(SEED, |_| false), Status::NoMatch);
        assert_eq!(evaluate(SEED, |_| Ok::<_, String>(true)), Status::Match);
        assert_eq!(evaluate(SEED, |_| Err::<bool, _>("no level")), Status::FilterError);
        assert_eq!(evaluate(b"not json", |_| true), Status::InvalidEvent);
    }

    #[test]
    fn errors_are_negative() {
        for s in [Status::Match, Status::NoMatch, Status::InvalidEvent, Status::FilterError, Status::InvalidState] {
            assert!(matches!(s, Status::Match | Status::NoMatch) == (s.code() >= 0), "{s:?}");
        }
        assert_eq!((Status::Match.code(), Status::NoMatch.code()), (1, 0));
    }

    #[filter]
    fn fight_loss(event: &Event) -> bool {
        event.data().get("result").and_then(Value::as_str) == Some("loss")
    }

    #[filter]
    fn level_over_10(event: &Event) -> Result<bool, String> {
        let level = event.pointer("/data/player/level").and_then(Value::as_f64).ok_or("no data.player.level")?;
        Ok(level > 10.0)
    }

    #[filter]
    fn third_login(event: &Event, state: &mut State) -> Result<bool, String> {
        if event.event_name() != Some("login") {
            return Ok(false);
        }
        let n = state.get("logins").and_then(Value::as_u64).unwrap_or(0) + 1;
        state.set("logins", n);
        if event.data().get("boom").is_some() {
            return Err("boom".into());
        }
        Ok(n == 3)
    }

    #[test]
    fn a_state_reads_and_writes_as_a_map_and_knows_whether_it_changed() {
        let mut state = State::from_json(br#"{"b":[1,2],"a":{"x":null}}"#).unwrap();
        assert!(!state.is_changed());
        assert_eq!(state.get("b"), Some(&json!([1, 2])));
        assert_eq!(state.len(), 2);
        assert!(!state.is_changed(), "reading does not change it");
        state.set("n", 3);
        state.remove("a");
        assert!(state.is_changed());
        assert_eq!(state.to_json(), r#"{"b":[1,2],"n":3}"#);
        assert_eq!(State::new().to_json(), "{}");
        assert!(matches!(State::from_json(b"[1]"), Err(StateError::NotAnObject)));
        assert!(matches!(State::from_json(b"{"), Err(StateError::Json(_))));
        assert_eq!(State::from_map(Map::new()), State::new());
    }

    #[test]
    fn evaluate_with_state_returns_the_state_only_when_it_is_to_be_kept() {
        let login = br#"{"event_name":"login","player_id":1}"#;
        let fight = br#"{"event_name":"fight","player_id":1}"#;
        // Threaded as the host does: the new state replaces the stored one when there is one.
        let mut stored = "{}".to_owned();
        let mut verdicts = Vec::new();
        for event in [&login[..], fight, login, login, fight, login] {
            let (status, new) = evaluate_with_state(event, stored.as_bytes(), third_login);
            if let Some(new) = new {
                stored = new;
            }
            verdicts.push(status);
        }
        use Status::{Match, NoMatch};
        assert_eq!(verdicts, [NoMatch, NoMatch, NoMatch, Match, NoMatch, NoMatch]);
        assert_eq!(stored, r#"{"logins":4}"#);
        // An event that changes nothing: `None`, the host keeps the stored state (-1).
        assert_eq!(evaluate_with_state(fight, br#"{"logins":4}"#, third_login), (NoMatch, None));
        // An error: the changes are not kept.
        let boom = br#"{"event_name":"login","data":{"boom":1}}"#;
        assert_eq!(evaluate_with_state(boom, b"{}", third_login), (Status::FilterError, None));
        assert_eq!(evaluate_with_state(b"[]", b"{}", third_login), (Status::InvalidEvent, None));
        assert_eq!(evaluate_with_state(login, b"[1]", third_login), (Status::InvalidState, None));
        assert_eq!(evaluate_with_state(login, b"{\"logins\":2}", third_login), (Match, Some(r#"{"logins":3}"#.into())));
    }

    #[test]
    fn attributed_functions_stay_plain_functions() {
        assert!(fight_loss(&Event::from_json(SEED).unwrap()));
        assert_eq!(level_over_10(&Event::from_value(json!({"data": {"player": {"level": 11}}})).unwrap()), Ok(true));
        assert!(level_over_10(&Event::from_json(SEED).unwrap()).is_err());
        let mut state = State::new();
        let login = Event::from_value(json!({"event_name": "login"})).unwrap();
        assert_eq!((0..3).map(|_| third_login(&login, &mut state)).collect::<Vec<_>>(), [Ok(false), Ok(false), Ok(true)]);
    }
}
