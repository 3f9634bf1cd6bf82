//! An event parsed once and read by every campaign.
//!
//! [`Event::parse`] validates the JSON and records where each top-level field's value lies in the
//! original bytes, without building a tree. Filters fetch the fields they read through the
//! runtime's host imports; the host reads `game`, `event_name` and the timestamps the same way.

use crate::limits::EventLimits;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

/// Up to this many top-level fields, lookups scan the list (faster than any index for the
/// usual event of a dozen fields); beyond it a sorted index is built on first use, so a lookup
/// costs O(log n) however many keys an event has.
const LINEAR_LOOKUP_FIELDS: usize = 32;

/// A JSON object event: its bytes, exactly as received, and the position of each top-level value.
#[derive(Debug, Clone)]
pub struct Event {
    bytes: Box<[u8]>,
    fields: Vec<(Key, Range<u32>)>,
    /// The limits it was parsed under (the sandbox re-checks an event parsed under laxer ones).
    parsed_under: EventLimits,
    /// Field indices sorted by key, last occurrence first among equal keys; built on first use
    /// when there are more than [`LINEAR_LOOKUP_FIELDS`] fields.
    index: OnceLock<Box<[u32]>>,
    /// [`Event::keys_json`], computed once: every campaign that lists the keys shares it.
    keys_json: OnceLock<Box<str>>,
}

#[derive(Debug, Clone)]
enum Key {
    /// The key's text is `bytes[range]` (it had no escapes).
    InPlace(Range<u32>),
    /// The key had escapes; this is its decoded text.
    Decoded(Box<str>),
}

/// Why bytes are not an event. Each is the event's fault: the event goes to the dead-letter
/// topic and counts against no campaign (spec §7).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("an event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// Larger than the host's `max_event_bytes`.
    #[error("the event is {size} bytes, over the limit of {max} bytes (max_event_bytes)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Nested deeper than the host's `max_event_depth`.
    #[error("the event nests objects and arrays more than {max} levels deep (max_event_depth)")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

impl Event {
    /// Parses `bytes` as a JSON object event under the default [`EventLimits`].
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<Event, EventError> {
        Event::parse_with(bytes, &EventLimits::default())
    }

    /// Parses `bytes` as a JSON object event of at most `limits.max_bytes` bytes, nested at most
    /// `limits.max_depth` levels (the event object itself is level 1). Linear in the size.
    pub fn parse_with(bytes: impl Into<Vec<u8>>, limits: &EventLimits) -> Result<Event, EventError> {
        let bytes: Box<[u8]> = bytes.into().into_boxed_slice();
        let max = limits.max_bytes.min(u32::MAX as usize);
        if bytes.len() > max {
            return Err(EventError::TooLarge { size: bytes.len(), max });
        }
        let base = bytes.as_ptr() as usize;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let fields = match de::Deserializer::deserialize_any(&mut de, ObjectVisitor { base }) {
            Ok(fields) => fields,
            Err(e) => return Err(classify_failure(&bytes, e)),
        };
        de.end().map_err(EventError::InvalidJson)?;
        for (_, range) in &fields {
            let raw = &bytes[range.start as usize..range.end as usize];
            if !nests_within(raw, limits.max_depth.saturating_sub(1)) {
                return Err(EventError::TooDeep { max: limits.max_depth });
            }
        }
        Ok(Event { bytes, fields, parsed_under: *limits, index: OnceLock::new(), keys_json: OnceLock::new() })
    }

    /// Whether this event is within `limits` (always, when it was parsed under them or stricter
    /// ones; otherwise it is measured now).
    pub fn is_within(&self, limits: &EventLimits) -> Result<(), EventError> {
        if self.bytes.len() > limits.max_bytes {
            return Err(EventError::TooLarge { size: self.bytes.len(), max: limits.max_bytes });
        }
        if self.parsed_under.max_depth > limits.max_depth {
            for (_, range) in &self.fields {
                if !nests_within(&self.bytes[range.start as usize..range.end as usize], limits.max_depth.saturating_sub(1)) {
                    return Err(EventError::TooDeep { max: limits.max_depth });
                }
            }
        }
        Ok(())
    }

    /// The limits this event was parsed under.
    pub fn parsed_under(&self) -> EventLimits {
        self.parsed_under
    }

    /// The event exactly as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn key_bytes<'a>(&'a self, key: &'a Key) -> &'a [u8] {
        match key {
            Key::InPlace(r) => &self.bytes[r.start as usize..r.end as usize],
            Key::Decoded(s) => s.as_bytes(),
        }
    }

    fn key<'a>(&'a self, key: &'a Key) -> &'a str {
        match key {
            // Safe to unwrap: serde_json validated these bytes as a UTF-8 string without escapes.
            Key::InPlace(r) => std::str::from_utf8(&self.bytes[r.start as usize..r.end as usize]).unwrap(),
            Key::Decoded(s) => s,
        }
    }

    fn value(&self, i: usize) -> &[u8] {
        let r = &self.fields[i].1;
        &self.bytes[r.start as usize..r.end as usize]
    }

    /// The raw JSON of top-level field `key` (the last one, if the key repeats, as `JSON.parse`).
    /// O(1) for small events, O(log n) for large ones.
    pub fn field(&self, key: &str) -> Option<&[u8]> {
        let key = key.as_bytes();
        if self.fields.len() <= LINEAR_LOOKUP_FIELDS {
            return self.fields.iter().rposition(|(k, _)| self.key_bytes(k) == key).map(|i| self.value(i));
        }
        let index = self.index.get_or_init(|| {
            let mut index: Vec<u32> = (0..self.fields.len() as u32).collect();
            // Equal keys: the later field first, so a lookup finds the value JSON.parse keeps.
            index.sort_unstable_by(|&a, &b| {
                self.key_bytes(&self.fields[a as usize].0)
                    .cmp(self.key_bytes(&self.fields[b as usize].0))
                    .then(b.cmp(&a))
            });
            index.into_boxed_slice()
        });
        let at = index.partition_point(|&i| self.key_bytes(&self.fields[i as usize].0) < key);
        let &i = index.get(at)?;
        (self.key_bytes(&self.fields[i as usize].0) == key).then(|| self.value(i as usize))
    }

    /// Top-level field `key` when it is a JSON string (`game`, `event_name`, ...).
    pub fn str_field(&self, key: &str) -> Option<String> {
        self.field(key).and_then(|raw| serde_json::from_slice::<String>(raw).ok())
    }

    /// The top-level keys, each once, in first-appearance order (as `Object.keys(JSON.parse(..))`).
    /// Linear in the number of fields.
    pub fn keys(&self) -> Vec<&str> {
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.fields.len());
        self.fields.iter().map(|(k, _)| self.key(k)).filter(|k| seen.insert(k)).collect()
    }

    /// [`Event::keys`] as a JSON array; computed once per event.
    pub fn keys_json(&self) -> &str {
        self.keys_json.get_or_init(|| serde_json::to_string(&self.keys()).expect("strings serialize").into_boxed_str())
    }
}

/// Whether the JSON value `raw` (valid JSON) nests at most `max` levels of objects and arrays.
/// Linear; a value with few brackets (the usual case) is settled by counting them.
fn nests_within(raw: &[u8], max: usize) -> bool {
    if !matches!(raw.first(), Some(b'{' | b'[')) {
        return true;
    }
    // Every level opens with a bracket: fewer brackets than `max` cannot nest deeper.
    if raw.iter().filter(|&&b| b == b'{' || b == b'[').count() <= max {
        return true;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    true
}

fn classify_failure(bytes: &[u8], err: serde_json::Error) -> EventError {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Array(_)) => EventError::NotAnObject("an array"),
        Ok(serde_json::Value::String(_)) => EventError::NotAnObject("a string"),
        Ok(serde_json::Value::Number(_)) => EventError::NotAnObject("a number"),
        Ok(serde_json::Value::Bool(_)) => EventError::NotAnObject("a boolean"),
        Ok(serde_json::Value::Null) => EventError::NotAnObject("null"),
        Ok(serde_json::Value::Object(_)) | Err(_) => EventError::InvalidJson(err),
    }
}

struct ObjectVisitor {
    base: usize,
}

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Vec<(Key, Range<u32>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(16);
        while let Some(key) = map.next_key_seed(KeySeed { base: self.base })? {
            let raw: &'de RawValue = map.next_value()?;
            let start = raw.get().as_ptr() as usize - self.base;
            fields.push((key, start as u32..(start + raw.get().len()) as u32));
        }
        Ok(fields)
    }
}

struct KeySeed {
    base: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key, E> {
        let start = v.as_ptr() as usize - self.base;
        Ok(Key::InPlace(start as u32..(start + v.len()) as u32))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key::Decoded(v.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_the_raw_json_of_each_top_level_value() {
        let e = Event::parse(br#"{"game":"foe", "data" : {"result":"loss"},"n":12.5,"esc\u0061pe":[1]}"#.to_vec())
            .unwrap();
        assert_eq!(e.field("game"), Some(&b"\"foe\""[..]));
        assert_eq!(e.field("data"), Some(&br#"{"result":"loss"}"#[..]));
        assert_eq!(e.field("n"), Some(&b"12.5"[..]));
        assert_eq!(e.field("escape"), Some(&b"[1]"[..]));
        assert_eq!(e.field("missing"), None);
        assert_eq!(e.str_field("game").as_deref(), Some("foe"));
        assert_eq!(e.keys_json(), r#"["game","data","n","escape"]"#);
    }

    #[test]
    fn a_repeated_key_reads_its_last_value_and_is_listed_once() {
        let e = Event::parse(br#"{"a":1,"b":2,"a":3}"#.to_vec()).unwrap();
        assert_eq!(e.field("a"), Some(&b"3"[..]));
        assert_eq!(e.keys(), vec!["a", "b"]);
    }

    #[test]
    fn large_events_index_their_keys_and_list_them_in_linear_time() {
        // 200,000 keys, one repeated: a quadratic de-duplication would take minutes.
        let mut json = String::from("{");
        for i in 0..200_000 {
            json.push_str(&format!("\"k{i}\":{i},"));
        }
        json.push_str("\"k7\":\"last\"}");
        let limits = EventLimits { max_bytes: 16 << 20, max_depth: 64 };
        let e = Event::parse_with(json.into_bytes(), &limits).unwrap();
        let started = std::time::Instant::now();
        let keys = e.keys();
        assert_eq!(keys.len(), 200_000);
        assert_eq!((keys[0], keys[7], keys[199_999]), ("k0", "k7", "k199999"));
        assert_eq!(e.field("k7"), Some(&b"\"last\""[..]), "the last value of a repeated key");
        assert_eq!(e.field("k199999"), Some(&b"199999"[..]));
        assert_eq!(e.field("k200000"), None);
        assert!(e.keys_json().starts_with(r#"["k0","k1","#));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn events_over_the_size_or_nesting_limit_are_the_events_fault() {
        let limits = EventLimits { max_bytes: 100, max_depth: 3 };
        let err = Event::parse_with(vec![b' '; 101], &limits).unwrap_err();
        assert_eq!(err.to_string(), "the event is 101 bytes, over the limit of 100 bytes (max_event_bytes)");
        assert!(Event::parse_with(br#"{"a":{"b":[1]}}"#.to_vec(), &limits).is_ok(), "3 levels");
        let err = Event::parse_with(br#"{"a":{"b":[[1]]}}"#.to_vec(), &limits).unwrap_err();
        assert!(matches!(err, EventError::TooDeep { max: 3 }), "{err}");
        assert_eq!(err.to_string(), "the event nests objects and arrays more than 3 levels deep (max_event_depth)");
        // Brackets inside strings do not count.
        assert!(Event::parse_with(br#"{"a":["[[[[{{{{\"]]"]}"#.to_vec(), &limits).is_ok());
        // Ten thousand levels (the hostile case): rejected by the default limits, quickly.
        let deep = format!("{{\"d\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let started = std::time::Instant::now();
        assert!(matches!(Event::parse(deep.into_bytes()), Err(EventError::TooDeep { max: 64 })));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        // A laxly parsed event is measured again against stricter limits.
        let lax = Event::parse_with(br#"{"a":[[[[1]]]]}"#.to_vec(), &EventLimits { max_bytes: 1000, max_depth: 10 }).unwrap();
        assert!(lax.is_within(&EventLimits { max_bytes: 1000, max_depth: 5 }).is_ok());
        assert!(matches!(lax.is_within(&EventLimits { max_bytes: 1000, max_depth: 4 }), Err(EventError::TooDeep { max: 4 })));
        assert!(matches!(lax.is_within(&EventLimits { max_bytes: 10, max_depth: 10 }), Err(EventError::TooLarge { size: 15, max: 10 })));
    }

    #[test]
    fn non_objects_and_bad_json_are_rejected_with_the_reason() {
        assert_eq!(Event::parse(b"[1,2]".to_vec()).unwrap_err().to_string(), "an event must be a JSON object, got an array");
        assert_eq!(Event::parse(b"42".to_vec()).unwrap_err().to_string(), "an event must be a JSON object, got a number");
        assert!(matches!(Event::parse(b"{\"a\":".to_vec()), Err(EventError::InvalidJson(_))));
        assert!(matches!(Event::parse(b"{\"a\":1} x".to_vec()), Err(EventError::InvalidJson(_))));
        // Invalid UTF-8 inside a nested string value is refused, not passed on to filters.
        assert!(matches!(Event::parse(b"{\"a\":{\"b\":\"\xff\"}}".to_vec()), Err(EventError::InvalidJson(_))));
        assert!(matches!(Event::parse(b"{\"a\":\"\xc3\"}".to_vec()), Err(EventError::InvalidJson(_))));
    }
}
