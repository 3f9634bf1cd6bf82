//! Typed errors of the sandbox.

use std::fmt;
use std::time::Duration;

/// The kind of a failed evaluation, as reported in metrics, logs and `rtcrm filter eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The filter used its whole fuel budget.
    Fuel,
    /// The filter tried to grow its memory past its cap.
    Memory,
    /// The filter ran past its deadline of CPU time.
    Deadline,
    /// The filter trapped (stack overflow, unreachable, out-of-bounds access, ...).
    Trap,
    /// The JavaScript filter threw, or a Wasm filter returned a negative status.
    Exception,
    /// The event, not the filter, is at fault (over the host's size or nesting limits): the
    /// event goes to the dead-letter topic and the failure never counts toward quarantine.
    Event,
    /// The host, not the filter nor the event, is at fault: the sandbox's budget of filter
    /// instances (`SandboxConfig::max_instances`) is spent, so no instance could be built. The
    /// filter did not run; the host drops idle instances and evaluates again. Never counts toward
    /// quarantine.
    Capacity,
    /// The per-player state the filter left cannot be kept (spec §12): over the campaign's
    /// `state.max_bytes`, not JSON-serialisable, not a JSON object; or the filter cannot keep a
    /// state at all (a Wasm module of ABI version 1). The evaluation counts as failed, and the
    /// player's stored state stays as it was. The instance is kept (the filter itself ran to its
    /// end).
    State,
}

impl ErrorKind {
    /// Every kind, in a stable order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Fuel,
        ErrorKind::Memory,
        ErrorKind::Deadline,
        ErrorKind::Trap,
        ErrorKind::Exception,
        ErrorKind::Event,
        ErrorKind::Capacity,
        ErrorKind::State,
    ];

    /// The kind's name: `fuel`, `memory`, `deadline`, `trap`, `exception`, `event`, `capacity` or `state`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Fuel => "fuel",
            ErrorKind::Memory => "memory",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Trap => "trap",
            ErrorKind::Exception => "exception",
            ErrorKind::Event => "event",
            ErrorKind::Capacity => "capacity",
            ErrorKind::State => "state",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed evaluation. It counts as "no match"; after any kind but `exception`, `event`,
/// `capacity` and `state` the instance has been discarded and rebuilt. Every text in it that a filter controls is at most
/// [`MAX_ERROR_TEXT_BYTES`](crate::limits::MAX_ERROR_TEXT_BYTES) plus a truncation marker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// See [`ErrorKind::Fuel`].
    #[error("the filter used its whole budget of {limit} fuel")]
    Fuel {
        /// The budget.
        limit: u64,
    },
    /// See [`ErrorKind::Memory`].
    #[error("the filter asked for {requested} bytes of memory, over its cap of {limit} bytes")]
    Memory {
        /// Bytes the filter asked for.
        requested: usize,
        /// The cap.
        limit: usize,
    },
    /// See [`ErrorKind::Deadline`].
    #[error("the filter ran past its deadline of {} ms of CPU time", limit.as_millis())]
    Deadline {
        /// The deadline.
        limit: Duration,
    },
    /// See [`ErrorKind::Trap`]; holds the trap's description.
    #[error("{0}")]
    Trap(String),
    /// The filter called WASI `proc_exit` (kind [`ErrorKind::Trap`]).
    #[error("the filter exited (WASI proc_exit) with code {code}")]
    Exit {
        /// The exit code it passed.
        code: i32,
    },
    /// See [`ErrorKind::Exception`]; holds the thrown value as text (`Error: message`).
    #[error("{0}")]
    Exception(String),
    /// See [`ErrorKind::Event`]: the event is over the sandbox's limits; the filter did not run.
    #[error("the event is not evaluated: {reason}")]
    Event {
        /// Why (the [`EventError`](crate::EventError)'s text).
        reason: String,
    },
    /// See [`ErrorKind::Capacity`]: `limit` filter instances are alive, the sandbox's budget.
    #[error("no filter instance could be built: all {limit} of the sandbox's filter instances are in use")]
    Capacity {
        /// The budget (`SandboxConfig::max_instances`).
        limit: usize,
    },
    /// See [`ErrorKind::State`]: the state the filter left is `size` bytes of JSON, over `max`
    /// (the campaign's `state.max_bytes`, at most the host's `state_max_bytes`).
    #[error("the filter's state is {size} bytes of JSON, over its limit of {max} bytes (state.max_bytes)")]
    State {
        /// Bytes of the state's JSON.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// See [`ErrorKind::State`]: the state the filter left cannot be kept — it holds a function,
    /// a cycle, a BigInt or another value JSON cannot give back (JavaScript), or it is not a
    /// JSON object (a Wasm module's bytes) — or the stored state handed in is not a JSON object.
    /// Holds the reason (`TypeError: ...`).
    #[error("the filter's state cannot be kept: {0}")]
    StateInvalid(String),
    /// See [`ErrorKind::State`]: [`Filter::eval_with_state`](crate::Filter::eval_with_state) on
    /// a Wasm module without per-player state (ABI version 1). Campaigns with `state` should be
    /// refused at submission instead ([`CompiledFilter::check_state_support`](crate::CompiledFilter::check_state_support)).
    #[error("the module implements filter ABI version {abi_version}, which has no per-player state; a campaign with `state` needs a module of ABI version 2 (exports rtcrm_filter_state, rtcrm_state_ptr and rtcrm_state_len; filter-sdk/ABI.md §9)")]
    StateUnsupported {
        /// The version the module declares.
        abi_version: i32,
    },
}

impl EvalError {
    /// This error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EvalError::Fuel { .. } => ErrorKind::Fuel,
            EvalError::Memory { .. } => ErrorKind::Memory,
            EvalError::Deadline { .. } => ErrorKind::Deadline,
            EvalError::Trap(_) | EvalError::Exit { .. } => ErrorKind::Trap,
            EvalError::Exception(_) => ErrorKind::Exception,
            EvalError::Event { .. } => ErrorKind::Event,
            EvalError::Capacity { .. } => ErrorKind::Capacity,
            EvalError::State { .. } | EvalError::StateInvalid(_) | EvalError::StateUnsupported { .. } => ErrorKind::State,
        }
    }

    /// Whether the event, not the filter, caused this failure (spec §7): such a failure sends the
    /// event to the dead-letter topic and must never count toward the campaign's quarantine.
    pub fn caused_by_event(&self) -> bool {
        matches!(self, EvalError::Event { .. })
    }

    /// Whether the host caused this failure: its budget of filter instances is spent
    /// ([`ErrorKind::Capacity`]). The filter did not run; the evaluation should be retried once
    /// idle instances are dropped, and it must never count toward quarantine.
    pub fn caused_by_host(&self) -> bool {
        matches!(self, EvalError::Capacity { .. })
    }
}

/// The sandbox itself could not be set up (engine, runtime, cache).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Creating the engine, compiling or instantiating the runtime failed.
    #[error("{context}: {message}")]
    Wasmtime {
        /// What was being done.
        context: String,
        /// wasmtime's error, with its causes.
        message: String,
    },
    /// A new instance's initial memory is already over its cap (the campaign's `memory_mb` is
    /// below the runtime's own footprint).
    #[error("memory limit: a new instance needs {requested} bytes, over its cap of {limit} bytes")]
    MemoryLimit {
        /// Bytes the instance needs.
        requested: usize,
        /// The cap.
        limit: usize,
    },
    /// The budget of filter instances is spent (see [`EvalError::Capacity`]).
    #[error("all {limit} of the sandbox's filter instances are in use")]
    Capacity {
        /// The budget.
        limit: usize,
    },
    /// Reading or writing the compiled-module cache failed.
    #[error("module cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl SandboxError {
    pub(crate) fn wasmtime(context: impl Into<String>, err: wasmtime::Error) -> SandboxError {
        SandboxError::Wasmtime { context: context.into(), message: format!("{err:?}") }
    }
}

/// The typed error a [`wasmtime::ResourceLimiter`] raises when a filter outgrows its memory cap.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory limit: {requested} bytes requested, cap is {limit} bytes")]
pub(crate) struct MemoryLimitExceeded {
    pub requested: usize,
    pub limit: usize,
}
