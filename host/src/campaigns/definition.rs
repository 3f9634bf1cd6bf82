//! Campaign messages (spec §2): parsing and validation, before compilation.

use crate::state::controls::Controls;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A campaign message that passed validation (its filter is not compiled yet).
#[derive(Debug, Clone)]
pub struct CampaignDef {
    pub id: i64,
    pub enabled: bool,
    pub game: String,
    pub event_name: String,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// The filter: JavaScript source, or a WebAssembly module of the filter ABI.
    pub filter: FilterSource,
    /// `limits.fuel`, if the campaign lowers it.
    pub fuel: Option<u64>,
    /// `limits.memory_mb`, if the campaign lowers it.
    pub memory_mb: Option<u64>,
    /// The campaign JSON exactly as received (echoed in triggers).
    pub raw: Box<RawValue>,
    /// SHA-256 of the message value, hex.
    pub digest: String,
    /// Per-player controls (spec §12); all absent for a campaign of spec §4.
    pub controls: Controls,
    /// The control fields as the campaign JSON gives them (for the API and the console).
    pub controls_given: Map<String, Value>,
}

/// Where a time lies relative to a campaign's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// At or before `start_date`.
    Before,
    Inside,
    /// At or after `end_date`.
    After,
}

/// A campaign's filter as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSource {
    /// `filter`: JavaScript source.
    Js(String),
    /// `filter_wasm`: the decoded module bytes.
    Wasm(Vec<u8>),
}

/// Why a campaign message was rejected, and for which id, if one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: Option<i64>,
    pub reason: String,
}

/// SHA-256 of a message value, hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A campaign id from a message key (decimal text).
pub fn id_from_key(key: &[u8]) -> Option<i64> {
    std::str::from_utf8(key).ok()?.trim().parse().ok()
}

/// Parses an RFC 3339 / ISO-8601 timestamp with any fraction and offset.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.with_timezone(&Utc))
}

/// "a string", "an object", ...: what a JSON value is, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name)
}

impl CampaignDef {
    /// Validates a campaign message under the default cap of per-player state
    /// (`state_max_bytes`). `key` is the message key, if any.
    pub fn parse(key: Option<&[u8]>, value: &[u8]) -> Result<CampaignDef, Rejection> {
        CampaignDef::parse_with(key, value, crate::state::controls::DEFAULT_STATE_MAX_BYTES)
    }

    /// Validates a campaign message; `state_max_bytes` is the host's cap of `state.max_bytes`.
    pub fn parse_with(key: Option<&[u8]>, value: &[u8], state_max_bytes: usize) -> Result<CampaignDef, Rejection> {
        let key_id = key.and_then(id_from_key);
        let reject = |id: Option<i64>, reason: String| Rejection { id: id.or(key_id), reason };
        let raw: Box<RawValue> = serde_json::from_slice(value)
            .map_err(|e| reject(None, format!("the campaign is not valid JSON: {e}")))?;
        let parsed: Value = serde_json::from_str(raw.get()).map_err(|e| reject(None, e.to_string()))?;
        let Value::Object(obj) = parsed else {
            return Err(reject(None, "a campaign must be a JSON object".into()));
        };
        let id = match field(&obj, "campaign_id") {
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| reject(None, format!("campaign_id `{n}` must be an integer")))?,
            Some(other) => return Err(reject(None, format!("campaign_id `{other}` must be an integer"))),
            None => return Err(reject(None, "campaign_id is missing".into())),
        };
        let reject = |reason: String| Rejection { id: Some(id), reason };
        if let (Some(key), Some(key_id)) = (key, key_id) {
            if key_id != id {
                return Err(reject(format!(
                    "the message key `{}` does not match campaign_id {id}",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        let enabled = match field(&obj, "enabled") {
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(reject(format!("enabled `{other}` must be true or false"))),
            None => return Err(reject("enabled is missing".into())),
        };
        let string = |name: &str| -> Result<String, Rejection> {
            match field(&obj, name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(reject(format!("{name} `{other}` must be a string"))),
                None => Err(reject(format!("{name} is missing"))),
            }
        };
        let game = string("game")?;
        let event_name = string("event_name")?;
        let time = |name: &str| -> Result<Option<DateTime<Utc>>, Rejection> {
            match field(&obj, name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => parse_time(s)
                    .map(Some)
                    .ok_or_else(|| reject(format!("{name} `{s}` is not an RFC 3339 timestamp like 2023-09-01T10:00:00.00Z"))),
                Some(other) => Err(reject(format!("{name} `{other}` must be a timestamp string or null"))),
            }
        };
        let start = time("start_date")?;
        let end = time("end_date")?;
        let filter = match (field(&obj, "filter"), field(&obj, "filter_wasm")) {
            (Some(Value::String(src)), None) => FilterSource::Js(src.clone()),
            (Some(_), Some(_)) => return Err(reject("give either filter or filter_wasm, not both".into())),
            (None, Some(Value::String(b64))) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| reject(format!("filter_wasm is not valid base64: {e}")))?;
                FilterSource::Wasm(bytes)
            }
            (None, Some(other)) => return Err(reject(format!("filter_wasm must be a base64 string, not {}", kind_of(other)))),
            (Some(other), None) => return Err(reject(format!("filter `{other}` must be a string of JavaScript"))),
            (None, None) => return Err(reject("filter (JavaScript) or filter_wasm (base64 WebAssembly) is missing".into())),
        };
        let (mut fuel, mut memory_mb) = (None, None);
        match field(&obj, "limits") {
            None | Some(Value::Null) => {}
            Some(Value::Object(limits)) => {
                for (name, value) in limits {
                    let n = value
                        .as_u64()
                        .ok_or_else(|| reject(format!("limits.{name} `{value}` must be a positive integer")))?;
                    match name.as_str() {
                        "fuel" => fuel = Some(n),
                        "memory_mb" => memory_mb = Some(n),
                        other => return Err(reject(format!("limits.{other} is unknown; use fuel or memory_mb"))),
                    }
                }
            }
            Some(other) => return Err(reject(format!("limits `{other}` must be an object like {{\"fuel\": 1000000}}"))),
        }
        let controls = Controls::parse(&obj, state_max_bytes).map_err(reject)?;
        let controls_given = Controls::given(&obj);
        // `state` with `filter_wasm` needs a module of ABI version 2: checked when the module is
        // compiled (`loader::compile_filter`).
        Ok(CampaignDef { id, enabled, game, event_name, start, end, filter, fuel, memory_mb, raw, digest: digest(value), controls, controls_given })
    }

    /// The campaign as triggers echo it (spec §9): as received, except that a `filter_wasm`
    /// module is replaced by `filter_wasm_sha256`.
    pub fn trigger_json(&self) -> Box<RawValue> {
        match &self.filter {
            FilterSource::Js(_) => self.raw.clone(),
            FilterSource::Wasm(bytes) => {
                let mut obj: Map<String, Value> = serde_json::from_str(self.raw.get()).expect("validated JSON object");
                obj.remove("filter_wasm");
                obj.insert("filter_wasm_sha256".into(), Value::String(digest(bytes)));
                RawValue::from_string(Value::Object(obj).to_string()).expect("valid JSON")
            }
        }
    }

    /// Where `t` lies relative to the campaign's window `start < t < end` (strict; an absent
    /// bound is open).
    pub fn window(&self, t: DateTime<Utc>) -> Window {
        if self.start.is_some_and(|s| t <= s) {
            Window::Before
        } else if self.end.is_some_and(|e| t >= e) {
            Window::After
        } else {
            Window::Inside
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"campaign_id":4711,"enabled":true,"game":"foe","event_name":"fight","start_date":"2023-09-01T10:00:00.00Z","end_date":"2023-12-01T10:00:00.00Z","filter":"function(event) { return event.getData().get('result') === 'loss' }"}"#;

    #[test]
    fn the_original_campaign_parses() {
        let c = CampaignDef::parse(None, SEED.as_bytes()).unwrap();
        assert_eq!((c.id, c.enabled, c.game.as_str(), c.event_name.as_str()), (4711, true, "foe", "fight"));
        assert_eq!(c.raw.get(), SEED);
        assert_eq!(c.window(parse_time("2023-11-20T11:00:00.00Z").unwrap()), Window::Inside);
        assert_eq!(c.window(parse_time("2023-09-01T10:00:00Z").unwrap()), Window::Before, "the start is exclusive");
        assert_eq!(c.window(parse_time("2023-12-01T10:00:00Z").unwrap()), Window::After, "the end is exclusive");
        assert_eq!(c.window(parse_time("2024-01-01T00:00:00+01:00").unwrap()), Window::After);
    }

    #[test]
    fn open_windows_and_unknown_fields_are_accepted() {
        let c = CampaignDef::parse(
            Some(b"7"),
            br#"{"campaign_id":7,"enabled":false,"game":"g","event_name":"e","start_date":null,"filter":"e => true","owner":"crm-team"}"#,
        )
        .unwrap();
        assert_eq!(c.window(parse_time("1999-01-01T00:00:00Z").unwrap()), Window::Inside);
        assert!(c.raw.get().contains("crm-team"));
    }

    #[test]
    fn a_wasm_campaign_carries_its_module_and_echoes_its_digest() {
        let c = CampaignDef::parse(None, br#"{"campaign_id":5,"enabled":true,"game":"g","event_name":"e","filter_wasm":"AGFzbQEAAAA=","team":"x"}"#).unwrap();
        assert_eq!(c.filter, FilterSource::Wasm(b"\0asm\x01\0\0\0".to_vec()));
        let echoed: Value = serde_json::from_str(c.trigger_json().get()).unwrap();
        assert_eq!(echoed["filter_wasm_sha256"], digest(b"\0asm\x01\0\0\0"));
        assert!(echoed.get("filter_wasm").is_none());
        assert_eq!(echoed["team"], "x");
    }

    #[test]
    fn invalid_campaigns_are_rejected_with_the_reason() {
        let cases: &[(&[u8], Option<i64>, &str)] = &[
            (b"{not json", None, "not valid JSON"),
            (br#"{"campaign_id":"x"}"#, None, "campaign_id `\"x\"` must be an integer"),
            (br#"{"campaign_id":1,"enabled":"yes","game":"g","event_name":"e","filter":"e=>true"}"#, Some(1), "enabled `\"yes\"`"),
            (br#"{"campaign_id":1,"enabled":true,"event_name":"e","filter":"e=>true"}"#, Some(1), "game is missing"),
            (br#"{"campaign_id":1,"enabled":true,"game":"g","event_name":"e","start_date":"yesterday","filter":"e=>true"}"#, Some(1), "start_date `yesterday`"),
            (br#"{"campaign_id":1,"enabled":true,"game":"g","event_name":"e"}"#, Some(1), "filter (JavaScript) or filter_wasm (base64 WebAssembly) is missing"),
            (br#"{"campaign_id":1,"enabled":true,"game":"g","event_name":"e","filter_wasm":"!!!"}"#, Some(1), "filter_wasm is not valid base64"),
            (br#"{"campaign_id":1,"enabled":true,"game":"g","event_name":"e","filter":"e=>true","limits":{"cpu":1}}"#, Some(1), "limits.cpu"),
        ];
        for (value, id, reason) in cases {
            let r = CampaignDef::parse(None, value).unwrap_err();
            assert_eq!(r.id, *id, "{}", String::from_utf8_lossy(value));
            assert!(r.reason.contains(reason), "{} → {}", String::from_utf8_lossy(value), r.reason);
        }
        let r = CampaignDef::parse(Some(b"8"), SEED.as_bytes()).unwrap_err();
        assert!(r.reason.contains("does not match campaign_id 4711"), "{}", r.reason);
    }
}
