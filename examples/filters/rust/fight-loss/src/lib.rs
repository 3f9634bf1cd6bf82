//! The original system's campaign 4711 in Rust: players who lost a fight. Its JavaScript twin is
//! `examples/filters/fight-loss.js`: `function(event) { return event.getData().get('result') === 'loss' }`.

use rtcrm_filter::{filter, Event};

#[filter]
fn fight_loss(event: &Event) -> bool {
    event.data().get("result").and_then(|v| v.as_str()) == Some("loss")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_matches_and_a_win_does_not() {
        let loss = Event::from_json(include_bytes!("../../../../events/fight-loss.json")).unwrap();
        let win = Event::from_json(include_bytes!("../../../../events/fight-win.json")).unwrap();
        assert!(fight_loss(&loss));
        assert!(!fight_loss(&win));
    }

    #[test]
    fn no_result_or_a_non_string_result_is_no_match() {
        assert!(!fight_loss(&Event::from_json(br#"{"data":{}}"#).unwrap()));
        assert!(!fight_loss(&Event::from_json(br#"{"data":{"result":1}}"#).unwrap()));
        assert!(!fight_loss(&Event::from_json(br#"{}"#).unwrap()));
    }
}
