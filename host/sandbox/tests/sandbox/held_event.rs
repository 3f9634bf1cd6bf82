//! An event object kept past its call never presents another event (issue 11): using it in a
//! later evaluation throws, while values read from it keep their own event's content.

use crate::{event, filter};
use rtcrm_sandbox::EvalError;

const STALE: &str = "TypeError: this event object belongs to an earlier evaluation: a filter may keep values it read from an event, not the event itself";

#[test]
fn an_event_kept_in_a_global_throws_at_the_next_call_instead_of_showing_the_new_event() {
    let mut f = filter(
        "(() => { let kept, keptData; return e => {
            if (kept === undefined) { kept = e; keptData = e.data; return true }
            if (e.data.probe === 'data') return keptData.result === 'first';
            if (e.data.probe === 'game') return kept.game === 'first';
            if (e.data.probe === 'keys') return Object.keys(kept).length > 0;
            if (e.data.probe === 'in') return 'game' in kept;
            if (e.data.probe === 'json') return JSON.stringify(kept).length > 0;
            if (e.data.probe === 'getter') return kept.getGame() === 'first';
            if (e.data.probe === 'write') { kept.game = 'x'; return true }
            return e.game === 'second';
        } })()",
    );
    assert!(f.eval(&event(r#"{"game":"first","data":{"result":"first"}}"#)).unwrap().matched);
    let second = |probe: &str| event(&format!(r#"{{"game":"second","data":{{"result":"second","probe":"{probe}"}}}}"#));
    // Values read from the old event are that event's.
    assert!(f.eval(&second("data")).unwrap().matched, "a value read earlier keeps its own event's content");
    // The old event object itself throws, whatever the access.
    for probe in ["game", "keys", "in", "json", "getter", "write"] {
        assert_eq!(f.eval(&second(probe)), Err(EvalError::Exception(STALE.into())), "probe {probe}");
    }
    // The filter goes on with the event it is given.
    assert!(f.eval(&second("none")).unwrap().matched);
    assert_eq!(f.rebuilds(), 0, "an exception does not cost the instance");
}

#[test]
fn an_event_used_by_a_promise_after_the_call_is_still_its_own() {
    // Jobs queued during the call run before the evaluation ends, with the same event.
    let mut f = filter("(() => { let seen = []; return e => { Promise.resolve().then(() => seen.push(e.game)); return e.game === 'a' ? seen.length === 0 : seen.length === 1 && seen[0] === 'a' } })()");
    assert!(f.eval(&event(r#"{"game":"a"}"#)).unwrap().matched);
    assert!(f.eval(&event(r#"{"game":"b"}"#)).unwrap().matched, "the job of the first call read the first event");
}
