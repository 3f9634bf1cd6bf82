//! A numeric threshold on a nested `data` field: players past level 10. Its JavaScript twin is
//! `examples/filters/nested-threshold.js`. Like JavaScript's `>`, a missing or non-numeric level
//! is simply no match.

use rtcrm_filter::{filter, Event};

const MIN_LEVEL: f64 = 10.0;

#[filter]
fn nested_threshold(event: &Event) -> bool {
    event.pointer("/data/player/level").and_then(|v| v.as_f64()).is_some_and(|level| level > MIN_LEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcrm_filter::serde_json::json;

    fn level(v: rtcrm_filter::Value) -> bool {
        nested_threshold(&Event::from_value(json!({"data": {"player": {"level": v}}})).unwrap())
    }

    #[test]
    fn strictly_above_ten_matches() {
        assert!(level(json!(11)));
        assert!(level(json!(10.5)));
        assert!(!level(json!(10)));
        assert!(!level(json!(3)));
    }

    #[test]
    fn a_missing_or_non_numeric_level_is_no_match() {
        assert!(!level(json!(null)));
        assert!(!level(json!("high")));
        assert!(!nested_threshold(&Event::from_value(json!({"data": {}})).unwrap()));
    }
}
