//! Per-player state of stateful filters (spec §12; `filter-sdk/ABI.md` §9): what both kinds of
//! filter share — the check of the state a filter leaves, and the fuel the host's part of the
//! work costs.
//!
//! [`Filter::eval_with_state`](crate::Filter::eval_with_state) takes the player's stored state
//! (`None`: `{}`), runs the filter with it, and returns the new state as compact JSON. The state
//! is kept only when the evaluation succeeds: on any error nothing new is returned, so the host
//! keeps what it had. Each call starts from the stored text, never from an object of an earlier
//! call, so no state is shared between players.
//!
//! What the host does for the filter is charged to the filter's fuel, like any host call
//! ([`HOST_CALL_FUEL`] per step plus [`HOST_BYTE_FUEL`] per byte): copying the stored state into
//! the instance (its bytes), and reading and checking the new state (twice its bytes: the copy
//! and the JSON check). Parsing the state into a JavaScript object and `JSON.stringify`-ing it
//! back run inside the instance, so the filter's own fuel meters them instruction by instruction.
//!
//! Limits and gaps:
//! - The size limit is on the state's JSON as the filter leaves it (UTF-8 bytes), checked before
//!   the host copies it out: a state over the limit is never copied.
//! - The host checks that the new state is UTF-8 JSON whose value is an object, nested at most
//!   128 deep (serde_json's limit); a Wasm module's state is made compact (insignificant
//!   whitespace removed) after its size was checked.
//! - Keys repeated in a Wasm module's state are kept as written; JavaScript reads the last one.

use crate::error::EvalError;
use crate::limits::{HOST_BYTE_FUEL, HOST_CALL_FUEL};
use crate::sandbox::FilterState;
use serde::de::IgnoredAny;
use wasmtime::{Store, Trap};

/// The state of a player without one.
pub(crate) const EMPTY_STATE: &str = "{}";

/// Charges host work of `bytes` to the store's fuel, inside a call: out of fuel is
/// `Trap::OutOfFuel`, classified as kind `fuel` like the filter's own exhaustion.
pub(crate) fn charge(store: &mut Store<FilterState>, bytes: u64) -> wasmtime::Result<()> {
    if !store.data().fuel_metering {
        return Ok(());
    }
    let cost = HOST_CALL_FUEL.saturating_add(bytes.saturating_mul(HOST_BYTE_FUEL));
    let left = store.get_fuel()?;
    if left < cost {
        store.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)
}

/// Checks the bytes a filter left as its new state — UTF-8 JSON, an object, at most `max` bytes
/// — and returns them as compact JSON text.
pub(crate) fn check_new_state(bytes: Vec<u8>, max: usize) -> Result<String, EvalError> {
    if bytes.len() > max {
        return Err(EvalError::State { size: bytes.len(), max });
    }
    let text = String::from_utf8(bytes).map_err(|e| EvalError::StateInvalid(format!("the state is not UTF-8: {e}")))?;
    check_object(&text)?;
    Ok(match compact(&text) {
        Some(compacted) => compacted,
        None => text,
    })
}

/// Checks that `text` is a JSON object.
pub(crate) fn check_object(text: &str) -> Result<(), EvalError> {
    if !text.trim_start().starts_with('{') {
        let start: String = text.trim_start().chars().take(24).collect();
        return Err(EvalError::StateInvalid(format!("the state must be a JSON object, not `{start}`")));
    }
    serde_json::from_str::<IgnoredAny>(text)
        .map(drop)
        .map_err(|e| EvalError::StateInvalid(format!("the state is not valid JSON: {e}")))
}

/// `json` (valid JSON) without insignificant whitespace; `None` when it has none.
fn compact(json: &str) -> Option<String> {
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let bytes = json.as_bytes();
    // Fast path: no whitespace outside strings.
    let mut in_string = false;
    let mut escaped = false;
    let mut any = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_ws(b) {
            any = true;
            break;
        }
    }
    if !any {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            out.push(b);
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !is_ws(b) {
            out.push(b);
        }
    }
    // Only ASCII whitespace outside strings was removed: still UTF-8.
    Some(String::from_utf8(out).expect("removing ASCII bytes keeps UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_a_json_object_within_its_limit_made_compact() {
        assert_eq!(check_new_state(br#"{"n":1}"#.to_vec(), 100).unwrap(), r#"{"n":1}"#);
        assert_eq!(
            check_new_state(b"{ \"a b\" : [1, 2],\n \"c\":\"x \\\" y\" }".to_vec(), 100).unwrap(),
            r#"{"a b":[1,2],"c":"x \" y"}"#
        );
        assert_eq!(check_new_state(br#"{"n":12}"#.to_vec(), 7).unwrap_err(), EvalError::State { size: 8, max: 7 });
        for bad in [&b"[1]"[..], b"7", b"{", b"", b"{\"a\":1}x", b"\xff"] {
            let err = check_new_state(bad.to_vec(), 100).unwrap_err();
            assert!(matches!(err, EvalError::StateInvalid(_)), "{bad:?}: {err}");
        }
    }
}
