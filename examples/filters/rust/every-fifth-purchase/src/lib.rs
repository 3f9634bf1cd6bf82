//! Every fifth purchase of a player triggers: a filter of the player's state (filter ABI version
//! 2), for a campaign with `"state": {"ttl": "30d", "max_bytes": 256}`. Other events leave the
//! state as it was. Its JavaScript twin is `examples/filters/every-fifth-purchase.js`:
//! `function(event, state) { ...; state.purchases = (state.purchases || 0) + 1; return state.purchases % 5 === 0 }`.

use rtcrm_filter::{filter, Event, State};

#[filter]
fn every_fifth_purchase(event: &Event, state: &mut State) -> bool {
    if event.event_name() != Some("purchase") {
        return false;
    }
    let purchases = state.get("purchases").and_then(|v| v.as_u64()).unwrap_or(0) + 1;
    state.set("purchases", purchases);
    purchases % 5 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcrm_filter::{evaluate_with_state, Status};

    const EVENTS: &str = include_str!("../../../purchases.jsonl");

    #[test]
    fn the_fifth_and_tenth_purchase_of_the_table_trigger() {
        let mut state = State::new();
        let mut verdicts = Vec::new();
        for line in EVENTS.lines() {
            verdicts.push(every_fifth_purchase(&Event::from_json(line.as_bytes()).unwrap(), &mut state));
        }
        // purchase purchase login purchase purchase purchase fight purchase ×4 login purchase ×3
        let matched: Vec<usize> = verdicts.iter().enumerate().filter(|(_, v)| **v).map(|(i, _)| i).collect();
        assert_eq!(matched, [5, 12]);
        assert_eq!(state.to_json(), r#"{"purchases":12}"#);
    }

    #[test]
    fn other_events_leave_the_state_unchanged_and_the_count_continues_from_the_stored_one() {
        let login = br#"{"event_name":"login","player_id":1}"#;
        let purchase = br#"{"event_name":"purchase","player_id":1}"#;
        // As the glue answers the host: unchanged is `None` (rtcrm_state_len() == -1).
        assert_eq!(evaluate_with_state(login, br#"{"purchases":4}"#, every_fifth_purchase), (Status::NoMatch, None));
        assert_eq!(
            evaluate_with_state(purchase, br#"{"purchases":4}"#, every_fifth_purchase),
            (Status::Match, Some(r#"{"purchases":5}"#.to_owned()))
        );
        assert_eq!(
            evaluate_with_state(purchase, br#"{"purchases":"x","other":true}"#, every_fifth_purchase),
            (Status::NoMatch, Some(r#"{"other":true,"purchases":1}"#.to_owned())),
            "a count that is not a number starts over; other keys are kept"
        );
        assert_eq!(evaluate_with_state(purchase, b"[]", every_fifth_purchase), (Status::InvalidState, None));
    }
}
