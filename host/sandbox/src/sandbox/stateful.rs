//! Evaluation with per-player state (spec §12): [`Filter::eval_with_state`] for both kinds of
//! filter, the JavaScript side here (the runtime's `rtcrm_eval_state`), the Wasm side in
//! `wasm_filter.rs` (ABI version 2). What the two share — the check of the new state and the fuel
//! the host's part costs — is in `state.rs`.
//!
//! Kept apart from the plain evaluation path: [`JsFilter::eval`] and [`Filter::eval`] do exactly
//! what they did before stateful filters existed, at the same cost.

use super::{fuel_used, CompiledFilter, EventRef, Filter, JsFilter, RuntimeInstance, Verdict};
use crate::error::{ErrorKind, EvalError};
use crate::event::Event;
use crate::limits::Limits;
use crate::state::{charge, check_new_state, EMPTY_STATE};
use crate::wasm_filter::WasmError;

impl Filter {
    /// Evaluates the filter against `event` with a player's state (a campaign with `state`,
    /// spec §12): `state` is the player's stored state as this function returned it (a compact
    /// JSON object; `None`: `{}`), and `max_bytes` the campaign's `state.max_bytes` (the host's
    /// `state_max_bytes` caps it). Returns the verdict and the new state, compact JSON, to store
    /// in place of the old one.
    ///
    /// On any error no new state is produced: the host keeps the stored one. Errors of kind
    /// [`ErrorKind::State`]: the new state is over `max_bytes` ([`EvalError::State`]), cannot
    /// be serialised or is not a JSON object ([`EvalError::StateInvalid`]), or the filter is a
    /// Wasm module of ABI version 1 ([`EvalError::StateUnsupported`]).
    ///
    /// JavaScript filters are called as `filter(event, state)`, `state` a fresh object parsed from
    /// the stored JSON; a filter written for one argument ignores it. Wasm modules of ABI version
    /// 2 are called through `rtcrm_filter_state` (`filter-sdk/ABI.md` §9).
    pub fn eval_with_state(&mut self, event: &Event, state: Option<&str>, max_bytes: usize) -> Result<(Verdict, String), EvalError> {
        match self {
            Filter::Js(f) => f.eval_with_state(event, state, max_bytes),
            Filter::Wasm(f) => f.eval_with_state(event, state, max_bytes),
        }
    }

    /// Whether [`Filter::eval_with_state`] can keep a state with this filter (JavaScript: always;
    /// Wasm: a module of ABI version 2).
    pub fn supports_state(&self) -> bool {
        match self {
            Filter::Js(_) => true,
            Filter::Wasm(f) => f.supports_state(),
        }
    }
}

impl CompiledFilter {
    /// Whether this filter can keep per-player state (JavaScript: always; Wasm: a module of ABI
    /// version 2).
    pub fn supports_state(&self) -> bool {
        self.check_state_support().is_ok()
    }

    /// For a campaign with `state`, at submission: `Ok` when the filter can keep a per-player
    /// state, else the reason to reject the campaign with
    /// ([`WasmError::StateNeedsAbiVersion2`], naming the module's version and what it lacks).
    pub fn check_state_support(&self) -> Result<(), WasmError> {
        match self {
            CompiledFilter::Js(_) => Ok(()),
            CompiledFilter::Wasm(w) => w.check_state_support(),
        }
    }
}

impl JsFilter {
    /// See [`Filter::eval_with_state`].
    pub fn eval_with_state(&mut self, event: &Event, state: Option<&str>, max_bytes: usize) -> Result<(Verdict, String), EvalError> {
        self.core.admit(event)?;
        let max = max_bytes.min(self.core.config.state_max_bytes);
        if self.instance.is_none() {
            let instance = self.build()?;
            self.instance = Some(instance);
        }
        let instance = self.instance.as_mut().expect("built above");
        let outcome = instance.eval_with_state(&self.limits, event, state, max);
        if let Err(e) = &outcome {
            // The filter ran to its end after a throw or a state error: its instance is sound.
            if !matches!(e.kind(), ErrorKind::Exception | ErrorKind::Event | ErrorKind::Capacity | ErrorKind::State) {
                self.instance = None;
                self.rebuilds += 1;
                if let Ok(instance) = self.build() {
                    self.instance = Some(instance);
                }
            }
        }
        outcome
    }
}

/// What one `rtcrm_eval_state` call left.
enum StateCall {
    /// Status 1 or 0, and the state's JSON as the runtime serialised it.
    Kept { matched: bool, state: Vec<u8> },
    /// Status 1 or 0, but the state's JSON is `size` bytes, over the limit (not copied).
    TooLarge { size: usize },
    /// Any other status, and the runtime's (bounded) text.
    Failed { status: i32, text: String },
}

impl RuntimeInstance {
    /// Runs `rtcrm_eval_state` with `state` (the player's stored JSON) and reads the new state.
    fn eval_with_state(&mut self, limits: &Limits, event: &Event, state: Option<&str>, max: usize) -> Result<(Verdict, String), EvalError> {
        // `{}` is what the runtime makes itself: nothing to copy or parse.
        let stored = state.filter(|s| *s != EMPTY_STATE).map(str::as_bytes);
        self.store.data_mut().event = EventRef(event);
        let call = self.call(limits, |instance| {
            let len = match stored {
                None => 0,
                Some(bytes) => {
                    let len = i32::try_from(bytes.len()).map_err(|_| wasmtime::Error::msg("the stored state is over 2 GiB"))?;
                    // The copy into the instance is host work for the filter: charged first.
                    charge(&mut instance.store, bytes.len() as u64)?;
                    let ptr = instance.state_buffer.call(&mut instance.store, len)?;
                    if ptr == 0 {
                        return Err(wasmtime::Error::msg(format!("the JS runtime could not allocate {len} bytes for the state")));
                    }
                    instance.memory.write(&mut instance.store, ptr as u32 as usize, bytes)?;
                    len
                }
            };
            let status = instance.eval_state.call(&mut instance.store, len)?;
            if status != 0 && status != 1 {
                return Ok(StateCall::Failed { status, text: instance.result_text()? });
            }
            let size = instance.result_len.call(&mut instance.store, ())? as u32 as usize;
            if size > max {
                return Ok(StateCall::TooLarge { size });
            }
            // Reading and checking the new state: charged before, twice its bytes.
            charge(&mut instance.store, 2 * size as u64)?;
            let (state, _) = instance.result_bytes(size)?;
            Ok(StateCall::Kept { matched: status == 1, state })
        });
        self.store.data_mut().event = EventRef(std::ptr::null());
        let fuel_used = fuel_used(&self.store, limits);
        match call? {
            StateCall::Kept { matched, state } => Ok((Verdict { matched, fuel_used }, check_new_state(state, max)?)),
            StateCall::TooLarge { size } => Err(EvalError::State { size, max }),
            StateCall::Failed { status: -1, text } => Err(EvalError::Exception(text)),
            StateCall::Failed { status: -3 | -4, text } => Err(EvalError::StateInvalid(text)),
            StateCall::Failed { status, text } => Err(EvalError::Trap(format!("the JS runtime returned status {status}: {text}"))),
        }
    }
}
