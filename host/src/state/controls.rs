//! Campaign controls (spec §12): the optional fields of a campaign that act per player —
//! `cooldown`, `max_triggers_per_player`, `count`, `inactivity`, `state`, `holdout_percent`,
//! `variants` and `state_version` — parsed and validated with the rest of the campaign.

use serde_json::{Map, Value};

/// Milliseconds.
pub type Millis = i64;

/// `count`: trigger on the event at which the filter has matched for the player at least
/// `at_least` times within the sliding window of `within_ms` ending at that event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRule {
    pub at_least: u32,
    pub within_ms: Millis,
}

/// `state`: the JavaScript filter is called as `filter(event, state)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateOptions {
    /// A state untouched this long (event time) is deleted.
    pub ttl_ms: Option<Millis>,
    /// Largest state (its JSON), in bytes; over it the evaluation fails with kind `state`.
    pub max_bytes: usize,
}

/// One A/B variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub weight: u32,
}

/// A campaign's controls; all absent: the campaign behaves exactly as in spec §4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    pub cooldown_ms: Option<Millis>,
    pub max_triggers_per_player: Option<u32>,
    pub count: Option<CountRule>,
    pub inactivity_ms: Option<Millis>,
    pub state: Option<StateOptions>,
    /// Holdout in basis points (hundredths of a percent): 0..=10,000.
    pub holdout_bp: u32,
    pub variants: Vec<Variant>,
    pub state_version: i64,
}

/// The default of `state.max_bytes` (spec §12: 1 KiB; the host's `state_max_bytes` caps it).
pub const DEFAULT_STATE_MAX_BYTES: usize = 1024;

/// The campaign fields of spec §12, in the order the API shows them.
pub const FIELDS: [&str; 8] = ["cooldown", "max_triggers_per_player", "count", "inactivity", "holdout_percent", "variants", "state_version", "state"];

impl Controls {
    /// The fields of spec §12 a campaign object gives (not null), as given.
    pub fn given(obj: &Map<String, Value>) -> Map<String, Value> {
        FIELDS.iter().filter_map(|name| obj.get(*name).filter(|v| !v.is_null()).map(|v| ((*name).to_owned(), v.clone()))).collect()
    }

    /// Whether the campaign uses any field of spec §12 (it then never matches an event without
    /// `player_id`).
    pub fn any(&self) -> bool {
        self.needs_state() || self.holdout_bp > 0 || !self.variants.is_empty() || self.state_version != 0
    }

    /// Whether the campaign keeps per-player state (and so needs the events of a player on
    /// one partition).
    pub fn needs_state(&self) -> bool {
        self.cooldown_ms.is_some()
            || self.max_triggers_per_player.is_some()
            || self.count.is_some()
            || self.inactivity_ms.is_some()
            || self.state.is_some()
    }

    /// Reads the controls of a campaign object; errors name the field and quote its value.
    /// `state_max_bytes` is the host's cap of `state.max_bytes`.
    pub fn parse(obj: &Map<String, Value>, state_max_bytes: usize) -> Result<Controls, String> {
        let mut c = Controls::default();
        let duration = |name: &str| -> Result<Option<Millis>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => parse_duration(s).map(Some).map_err(|e| format!("{name} `{s}`: {e}")),
                Some(other) => Err(format!("{name} `{other}` must be a duration such as \"90s\", \"30m\", \"24h\", \"7d\" or \"PT30M\"")),
            }
        };
        c.cooldown_ms = duration("cooldown")?;
        c.inactivity_ms = duration("inactivity")?;
        c.max_triggers_per_player = match obj.get("max_triggers_per_player") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                    .ok_or_else(|| format!("max_triggers_per_player `{v}` must be a positive integer"))? as u32,
            ),
        };
        c.count = match obj.get("count") {
            None | Some(Value::Null) => None,
            Some(Value::Object(count)) => {
                for key in count.keys() {
                    if key != "at_least" && key != "within" {
                        return Err(format!("count.{key} is unknown; use at_least and within"));
                    }
                }
                let at_least = count
                    .get("at_least")
                    .and_then(Value::as_u64)
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| format!("count.at_least `{}` must be an integer from 1 to 10000", count.get("at_least").unwrap_or(&Value::Null)))?;
                let within = match count.get("within") {
                    Some(Value::String(s)) => parse_duration(s).map_err(|e| format!("count.within `{s}`: {e}"))?,
                    other => return Err(format!("count.within `{}` must be a duration such as \"10m\"", other.unwrap_or(&Value::Null))),
                };
                Some(CountRule { at_least: at_least as u32, within_ms: within })
            }
            Some(other) => return Err(format!("count `{other}` must be an object like {{\"at_least\": 3, \"within\": \"10m\"}}")),
        };
        c.state = match obj.get("state") {
            None | Some(Value::Null) => None,
            Some(Value::Object(state)) => {
                let mut options = StateOptions { ttl_ms: None, max_bytes: DEFAULT_STATE_MAX_BYTES.min(state_max_bytes) };
                for (key, value) in state {
                    match key.as_str() {
                        "ttl" => {
                            options.ttl_ms = match value {
                                Value::Null => None,
                                Value::String(s) => Some(parse_duration(s).map_err(|e| format!("state.ttl `{s}`: {e}"))?),
                                other => return Err(format!("state.ttl `{other}` must be a duration such as \"30d\"")),
                            }
                        }
                        "max_bytes" => {
                            let n = value.as_u64().filter(|n| *n >= 2).ok_or_else(|| format!("state.max_bytes `{value}` must be an integer of at least 2"))?;
                            if n as usize > state_max_bytes {
                                return Err(format!("state.max_bytes `{n}` is over the host's cap of {state_max_bytes} bytes (state_max_bytes)"));
                            }
                            options.max_bytes = n as usize;
                        }
                        other => return Err(format!("state.{other} is unknown; use ttl and max_bytes")),
                    }
                }
                Some(options)
            }
            Some(other) => return Err(format!("state `{other}` must be an object like {{\"ttl\": \"30d\", \"max_bytes\": 1024}}")),
        };
        c.holdout_bp = match obj.get("holdout_percent") {
            None | Some(Value::Null) => 0,
            Some(v) => {
                let p = v.as_f64().filter(|p| (0.0..=100.0).contains(p)).ok_or_else(|| format!("holdout_percent `{v}` must be a number from 0 to 100"))?;
                let bp = (p * 100.0).round();
                if (bp - p * 100.0).abs() > 1e-6 {
                    return Err(format!("holdout_percent `{v}` has more than two decimals"));
                }
                bp as u32
            }
        };
        c.variants = match obj.get("variants") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut variants = Vec::with_capacity(items.len());
                for item in items {
                    let name = item.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
                    let weight = item.get("weight").and_then(Value::as_u64).filter(|w| (1..=1_000_000).contains(w));
                    match (name, weight) {
                        (Some(name), Some(weight)) => {
                            if variants.iter().any(|v: &Variant| v.name == name) {
                                return Err(format!("variants: the name `{name}` appears twice"));
                            }
                            variants.push(Variant { name: name.to_owned(), weight: weight as u32 });
                        }
                        _ => return Err(format!("variants: `{item}` must be like {{\"name\": \"A\", \"weight\": 1}} (a name and a weight from 1 to 1000000)")),
                    }
                }
                if variants.is_empty() {
                    return Err("variants is empty; give at least one, or leave it out".into());
                }
                variants
            }
            Some(other) => return Err(format!("variants `{other}` must be an array like [{{\"name\": \"A\", \"weight\": 1}}]")),
        };
        c.state_version = match obj.get("state_version") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_i64().ok_or_else(|| format!("state_version `{v}` must be an integer"))?,
        };
        if c.inactivity_ms.is_some() && c.count.is_some() {
            return Err("inactivity and count cannot be combined: inactivity triggers on the absence of matches".into());
        }
        Ok(c)
    }
}

/// A duration: `90s`, `30m`, `24h`, `7d` (and combinations such as `1h 30m`), or ISO-8601
/// (`PT30M`, `P7D`, `P1DT12H`, `PT0.5S`). Months and years have no fixed length and are refused.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let t = text.trim();
    let ms = if let Some(iso) = t.strip_prefix('P').or_else(|| t.strip_prefix('p')) {
        parse_iso(iso)?
    } else {
        let d = humantime::parse_duration(t).map_err(|e| format!("not a duration ({e}); use e.g. \"90s\", \"30m\", \"24h\", \"7d\" or \"PT30M\""))?;
        let calendar_units = ["M", "month", "months", "y", "year", "years"];
        if t.split(|c: char| !c.is_ascii_alphabetic()).any(|unit| calendar_units.contains(&unit)) {
            return Err("months and years have no fixed length; use days (\"30d\")".into());
        }
        i64::try_from(d.as_millis()).map_err(|_| "the duration is too long".to_string())?
    };
    if ms <= 0 {
        return Err("a duration must be positive".into());
    }
    Ok(ms)
}

fn parse_iso(rest: &str) -> Result<Millis, String> {
    let bad = || format!("P{rest} is not an ISO-8601 duration such as PT30M or P7D (months and years are not supported)");
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut take = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
        let mut number = String::new();
        for ch in part.chars() {
            if ch.is_ascii_digit() || ch == '.' || ch == ',' {
                number.push(if ch == ',' { '.' } else { ch });
                continue;
            }
            let unit = units.iter().find(|(u, _)| *u == ch.to_ascii_uppercase()).ok_or_else(bad)?;
            let value: f64 = number.parse().map_err(|_| bad())?;
            total += value * unit.1;
            number.clear();
        }
        if number.is_empty() { Ok(()) } else { Err(bad()) }
    };
    take(date, &[('W', 604_800_000.0), ('D', 86_400_000.0)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return Err(bad());
        }
        take(time, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1_000.0)])?;
    }
    if rest.is_empty() {
        return Err(bad());
    }
    Ok(total.round() as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Controls, String> {
        let v: Value = serde_json::from_str(json).unwrap();
        Controls::parse(v.as_object().unwrap(), 4096)
    }

    #[test]
    fn durations_in_both_forms() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("30m"), Ok(1_800_000));
        assert_eq!(parse_duration("24h"), Ok(86_400_000));
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert_eq!(parse_duration("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_duration("PT30M"), Ok(1_800_000));
        assert_eq!(parse_duration("P7D"), Ok(604_800_000));
        assert_eq!(parse_duration("P1DT12H"), Ok(129_600_000));
        assert_eq!(parse_duration("PT0.5S"), Ok(500));
        assert_eq!(parse_duration("P2W"), Ok(1_209_600_000));
        assert_eq!(parse_duration("7days"), Ok(604_800_000));
        for bad in ["", "soon", "P1M", "P1Y", "PT", "P", "0s", "PT-5M", "3 months"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_duration("P1M").unwrap_err().contains("months"));
    }

    #[test]
    fn controls_parse_and_validate_with_the_reason() {
        let c = parse(
            r#"{"cooldown":"1h","max_triggers_per_player":3,"count":{"at_least":3,"within":"10m"},"holdout_percent":12.5,
                "variants":[{"name":"A","weight":1},{"name":"B","weight":3}],"state_version":2,"state":{"ttl":"30d","max_bytes":512}}"#,
        )
        .unwrap();
        assert_eq!(c.cooldown_ms, Some(3_600_000));
        assert_eq!(c.max_triggers_per_player, Some(3));
        assert_eq!(c.count, Some(CountRule { at_least: 3, within_ms: 600_000 }));
        assert_eq!(c.holdout_bp, 1250);
        assert_eq!(c.variants.len(), 2);
        assert_eq!(c.state, Some(StateOptions { ttl_ms: Some(2_592_000_000), max_bytes: 512 }));
        assert!(c.any() && c.needs_state());
        let given: Value = serde_json::from_str(r#"{"cooldown":"60m","holdout_percent":12.5,"inactivity":null,"game":"foe"}"#).unwrap();
        assert_eq!(Value::Object(Controls::given(given.as_object().unwrap())), serde_json::json!({"cooldown": "60m", "holdout_percent": 12.5}), "as given, only the fields of spec §12");
        let plain = parse("{}").unwrap();
        assert!(!plain.any() && !plain.needs_state());
        assert!(parse(r#"{"holdout_percent":10}"#).unwrap().any(), "a holdout needs the player");
        assert!(!parse(r#"{"holdout_percent":10}"#).unwrap().needs_state());
        assert_eq!(parse(r#"{"state":{}}"#).unwrap().state.unwrap().max_bytes, DEFAULT_STATE_MAX_BYTES);
        let cases = [
            (r#"{"cooldown":"soon"}"#, "cooldown `soon`"),
            (r#"{"cooldown":5}"#, "cooldown `5` must be a duration"),
            (r#"{"max_triggers_per_player":0}"#, "max_triggers_per_player `0`"),
            (r#"{"count":{"at_least":0,"within":"1m"}}"#, "count.at_least"),
            (r#"{"count":{"at_least":2}}"#, "count.within"),
            (r#"{"count":{"at_least":2,"within":"1m","x":1}}"#, "count.x is unknown"),
            (r#"{"holdout_percent":101}"#, "holdout_percent `101`"),
            (r#"{"holdout_percent":1.234}"#, "more than two decimals"),
            (r#"{"variants":[]}"#, "variants is empty"),
            (r#"{"variants":[{"name":"A"}]}"#, "variants: "),
            (r#"{"variants":[{"name":"A","weight":1},{"name":"A","weight":2}]}"#, "appears twice"),
            (r#"{"state":{"max_bytes":100000}}"#, "over the host's cap of 4096"),
            (r#"{"state":{"keep":true}}"#, "state.keep is unknown"),
            (r#"{"state_version":"x"}"#, "state_version `\"x\"`"),
            (r#"{"inactivity":"7d","count":{"at_least":2,"within":"1d"}}"#, "cannot be combined"),
        ];
        for (json, want) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
