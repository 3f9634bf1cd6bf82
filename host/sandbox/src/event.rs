//! An event parsed once and read by every campaign.
//!
//! [`Event::parse`] validates the JSON and records where each top-level field's value lies in the
//! original bytes, without building a tree. Filters fetch the fields they read through the
//! runtime's host imports; the host reads `game`, `event_name` and the timestamps the same way.

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

/// A JSON object event: its bytes, exactly as received, and the position of each top-level value.
#[derive(Debug, Clone)]
pub struct Event {
    bytes: Box<[u8]>,
    fields: Vec<(Key, Range<u32>)>,
}

#[derive(Debug, Clone)]
enum Key {
    /// The key's text is `bytes[range]` (it had no escapes).
    InPlace(Range<u32>),
    /// The key had escapes; this is its decoded text.
    Decoded(Box<str>),
}

/// Why bytes are not an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("an event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// Larger than 4 GiB.
    #[error("event too large")]
    TooLarge,
}

impl Event {
    /// Parses `bytes` as a JSON object event.
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<Event, EventError> {
        let bytes: Box<[u8]> = bytes.into().into_boxed_slice();
        if bytes.len() > u32::MAX as usize {
            return Err(EventError::TooLarge);
        }
        let base = bytes.as_ptr() as usize;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let fields = match de::Deserializer::deserialize_any(&mut de, ObjectVisitor { base }) {
            Ok(fields) => fields,
            Err(e) => return Err(classify_failure(&bytes, e)),
        };
        de.end().map_err(EventError::InvalidJson)?;
        Ok(Event { bytes, fields })
    }

    /// The event exactly as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn key<'a>(&'a self, key: &'a Key) -> &'a str {
        match key {
            // Safe to unwrap: serde_json validated these bytes as a UTF-8 string without escapes.
            Key::InPlace(r) => std::str::from_utf8(&self.bytes[r.start as usize..r.end as usize]).unwrap(),
            Key::Decoded(s) => s,
        }
    }

    /// The raw JSON of top-level field `key` (the last one, if the key repeats, as `JSON.parse`).
    pub fn field(&self, key: &str) -> Option<&[u8]> {
        let key = key.as_bytes();
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| match k {
                Key::InPlace(r) => &self.bytes[r.start as usize..r.end as usize] == key,
                Key::Decoded(s) => s.as_bytes() == key,
            })
            .map(|(_, r)| &self.bytes[r.start as usize..r.end as usize])
    }

    /// Top-level field `key` when it is a JSON string (`game`, `event_name`, ...).
    pub fn str_field(&self, key: &str) -> Option<String> {
        self.field(key).and_then(|raw| serde_json::from_slice::<String>(raw).ok())
    }

    /// The top-level keys, each once, in first-appearance order (as `Object.keys(JSON.parse(..))`).
    pub fn keys(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.fields.len());
        for (k, _) in &self.fields {
            let k = self.key(k);
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }

    /// [`Event::keys`] as a JSON array.
    pub fn keys_json(&self) -> String {
        serde_json::to_string(&self.keys()).expect("strings serialize")
    }
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
    fn non_objects_and_bad_json_are_rejected_with_the_reason() {
        assert_eq!(Event::parse(b"[1,2]".to_vec()).unwrap_err().to_string(), "an event must be a JSON object, got an array");
        assert_eq!(Event::parse(b"42".to_vec()).unwrap_err().to_string(), "an event must be a JSON object, got a number");
        assert!(matches!(Event::parse(b"{\"a\":".to_vec()), Err(EventError::InvalidJson(_))));
        assert!(matches!(Event::parse(b"{\"a\":1} x".to_vec()), Err(EventError::InvalidJson(_))));
    }
}
