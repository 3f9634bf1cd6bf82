//! Every limit a filter runs under, in one place: what each bounds, its default in user units,
//! what enforces it, what a filter sees when it hits it, and what it does not cover.
//!
//! The host's limits are configured as [`HostLimits`] (spec §7: config file, environment and
//! flags, in user units, validated); a campaign's `limits` may only lower `fuel` and
//! `memory_mb` ([`Limits::lowered`]).
//!
//! # Per evaluation
//! | limit | user unit (default) | enforced by | when hit |
//! | --- | --- | --- | --- |
//! | CPU work | `fuel` (20,000,000 ≈ 2 ms of a tight loop here, ~10 fuel/ns) | wasmtime fuel, reset before each call; host functions charge it too (below) | `Trap::OutOfFuel` → [`ErrorKind::Fuel`](crate::ErrorKind::Fuel) |
//! | CPU time | `deadline_ms` (100) | epoch interruption (1 ms ticks) plus a callback that reads the evaluating thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) and lets the call go on while its CPU budget is not spent | `Trap::Interrupt` → [`ErrorKind::Deadline`](crate::ErrorKind::Deadline) |
//! | wasm stack | 512 KiB (`SandboxConfig::max_wasm_stack`) | `Config::max_wasm_stack` | `Trap::StackOverflow` → [`ErrorKind::Trap`](crate::ErrorKind::Trap) |
//! | host work for the filter | [`HOST_CALL_FUEL`] per call plus [`HOST_BYTE_FUEL`] per byte | each host function subtracts it from the filter's fuel: `fd_write`, `random_get`, `poll_oneoff`, `log` and a Wasm filter's event copy before the work; `event_field` and `event_keys` right after their one lookup and copy (so at most one field's or one key list's work is done past the budget) | `Trap::OutOfFuel` → `fuel` |
//!
//! # Per filter instance
//! | limit | user unit (default) | enforced by | when hit |
//! | --- | --- | --- | --- |
//! | memory | `memory_mb` (16) | a [`wasmtime::ResourceLimiter`] that sums **all** linear memories and tables of the instance ([`TABLE_ELEMENT_BYTES`] per table element), initial sizes included | at instantiation: [`ErrorKind::Memory`](crate::ErrorKind::Memory) (a Wasm module is rejected at submission); on `memory.grow`/`table.grow`: a trap → `memory` |
//! | table elements | 100,000 in all ([`ModuleCaps::max_table_elements`]) | the limiter and the submission check | as memory |
//! | memories, tables, instances | 1 memory, 1 table, 1 instance | the limiter; multi-memory is rejected at submission | instantiation fails |
//!
//! # Per sandbox
//! | limit | user unit (default) | enforced by | when hit |
//! | --- | --- | --- | --- |
//! | filter instances alive | `SandboxConfig::max_instances` (none: on-demand allocation) | a count of live [`JsFilter`](crate::JsFilter)/[`WasmFilter`](crate::WasmFilter) instances against wasmtime's pooling allocator, sized to it plus [`RESERVED_INSTANCES`](crate::RESERVED_INSTANCES) for the sandbox's own (`pool.rs`) | building one more: [`EvalError::Capacity`](crate::EvalError::Capacity) → [`ErrorKind::Capacity`](crate::ErrorKind::Capacity), the host's doing ([`EvalError::caused_by_host`](crate::EvalError::caused_by_host)); compiling waits for a reserved slot |
//!
//! # At submission
//! | limit | user unit (default) | when hit |
//! | --- | --- | --- |
//! | JavaScript source | `max_source_bytes` (65,536) | rejected: [`CompileError::TooLarge`](crate::CompileError::TooLarge) |
//! | Wasm module | `max_module_bytes` (8 MiB) | rejected: [`WasmError::TooLarge`](crate::WasmError::TooLarge) |
//! | module complexity | [`ModuleCaps`]: functions, largest function body, code bytes, locals per function, globals, tables, table elements, data and element segments, types, imports, exports | rejected before compiling: [`WasmError::TooComplex`](crate::WasmError::TooComplex), naming the measure, its value and the cap |
//! | Wasm proposals | only MVP, mutable globals, sign extension, saturating float-to-int, multi-value, bulk memory, reference types (funcref) and SIMD | rejected, naming the proposal: [`WasmError::UnsupportedFeature`](crate::WasmError::UnsupportedFeature) |
//! | compile time | 30 s per module (`SandboxConfig::compile_timeout`), in a pool of `SandboxConfig::compile_threads` compilers | rejected: [`WasmError::CompileTimeout`](crate::WasmError::CompileTimeout) |
//! | `_initialize` | the evaluation limits above | rejected: [`WasmError::Init`](crate::WasmError::Init) |
//!
//! # Per event (the event's fault, never the filter's)
//! | limit | user unit (default) | when hit |
//! | --- | --- | --- |
//! | size | `max_event_bytes` (1 MiB) | [`EventError::TooLarge`](crate::EventError::TooLarge) from [`Event::parse_with`](crate::Event::parse_with); at evaluation [`EvalError::Event`](crate::EvalError::Event) ([`EvalError::caused_by_event`](crate::EvalError::caused_by_event)) |
//! | nesting | `max_event_depth` (64 levels of objects and arrays, the event itself is level 1) | [`EventError::TooDeep`](crate::EventError::TooDeep); at evaluation as above |
//!
//! # Text a filter controls
//! Thrown messages, trap texts, compile errors and `_initialize` failures are cut to
//! [`MAX_ERROR_TEXT_BYTES`] (1 KiB, at a character boundary) followed by the marker
//! `… [truncated, N bytes in all]`, in the sandbox, before they reach any log, metric, status
//! message or API. Log lines (`console.log`, a Wasm filter's stdout/stderr) are cut at 512 bytes
//! and marked `…`, at most 20 lines per second per instance ([`LogCaps`](crate::LogCaps)).
//!
//! # No WASI call blocks
//! See `filter-sdk/ABI.md` §4: `poll_oneoff` returns at once (clock subscriptions fire
//! immediately, stdin is at end of file), `fd_read` of stdin returns end of file, `sched_yield`
//! returns, and nothing else may wait: there are no files, sockets or environment.
//!
//! # Known gaps, stated as wasmtime states its own
//! - **Fuel counts wasm instructions, not time.** Host functions charge fuel by the bytes they
//!   copy, at a rate chosen to be at least their cost on this class of machine; they cannot be
//!   made to take longer than linear time in what they return. The rate is an estimate, not a
//!   measurement per call.
//! - **The CPU deadline is checked at function entries and loop back-edges, in 1 ms ticks.** An
//!   evaluation may overrun it by up to two ticks plus the longest host call, and CPU time the
//!   evaluation spent before the first tick boundary is not counted. If the ticker thread itself
//!   is starved of CPU the deadline fires late; fuel, which does not depend on any clock, is the
//!   deterministic bound and is set well below the deadline.
//! - **Fuel off:** the deadline is then the only CPU bound, and host work is not charged.
//! - **Memory never shrinks.** A filter that grew to its cap keeps that memory until its
//!   instance is rebuilt (after any trap) or the campaign is replaced. Memory the host allocates
//!   for a store (wasmtime's own structures, the captured output, ≤ 16 KiB per stream) is not
//!   counted against `memory_mb`.
//! - **An event within the limits can still be too big for a filter.** A 1 MiB event read whole
//!   (`JSON.stringify(e)`) by a filter whose campaign lowered `memory_mb` to 2 fails as `memory`,
//!   the filter's error, not the event's.
//! - **Compilation cannot be cancelled.** A module that times out is rejected at once, but its
//!   compiler thread runs on until Cranelift finishes (bounded by [`ModuleCaps`]); until then
//!   the pool has one compiler fewer. The time limit is wall-clock time, so on a host that is
//!   overloaded for longer than it a module near the caps can be rejected that would compile on an
//!   idle one (the caps leave real filters far below it: the Go SDK's example compiles in ~4 s).
//! - **The module cache is not evicted.** Every compiled module version stays in the cache
//!   directory (a Go filter is ~12 MB compiled) until an operator removes it, and temporary files
//!   of a process killed while writing stay behind. Its digest detects damage and misplaced files,
//!   not an attacker who can write as the rtcrm user (see `cache.rs`).
//! - **A pooled slot keeps memory after its instance is dropped.** With a budget, a used slot
//!   keeps up to [`KEEP_RESIDENT_BYTES`](crate::KEEP_RESIDENT_BYTES) of private pages (reset to
//!   the image, so nothing of the previous instance survives) plus the image pages it maps, so
//!   resident memory follows the most instances ever alive at once, bounded by the budget, not
//!   the number alive now. Each slot reserves ~4 GiB of address space and each used slot (as each
//!   on-demand instance) ~3 memory mappings: some 20,000 fit x86-64's address space and Linux's
//!   default `vm.max_map_count`.
//! - **Touched pages only, where Linux allows it.** Keeping an instance's RSS to the pages it
//!   touches needs userfaultfd with asynchronous write protection (Linux 6.7); without it (an
//!   older kernel, a seccomp profile that forbids userfaultfd) every JS instance maps the
//!   runtime's whole memory image, ~282 KiB of RSS instead of ~104 KiB
//!   ([`Sandbox::residency`](crate::Sandbox::residency) says which; PSS is the same either way).
//! - **Event failures are told apart, not routed.** An evaluation refused because of the event
//!   is [`EvalError::Event`](crate::EvalError::Event); sending it to the dead-letter topic and
//!   keeping it out of the quarantine count is the processor's job.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Longest filter-controlled text (thrown message, trap text, compile error) kept, in bytes; a
/// longer one is cut and marked `… [truncated, N bytes in all]`.
pub const MAX_ERROR_TEXT_BYTES: usize = 1024;

/// Fuel a host function charges per call, before any per-byte charge (≈ 20 ns at ~10 fuel/ns).
pub const HOST_CALL_FUEL: u64 = 200;
/// Fuel a host function charges per byte it copies or produces for the filter (≈ 0.2 ns/byte;
/// memcpy is ~0.1 ns/byte, building a JSON key list ~0.2 ns/byte here).
pub const HOST_BYTE_FUEL: u64 = 2;
/// Bytes charged against the memory cap per table element (wasmtime stores a pointer per
/// element).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Per-evaluation and per-instance limits in the sandbox's units. A campaign may lower them
/// ([`Limits::lowered`]), never raise them. Built from [`HostLimits::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per evaluation (wasmtime units, ~1 per wasm instruction).
    pub fuel: u64,
    /// Cap on one filter instance's linear memories and tables together, in bytes.
    pub memory_bytes: usize,
    /// CPU-time budget per evaluation (the evaluating thread's CPU clock).
    pub deadline: Duration,
}

impl Limits {
    /// About 1 ms of a tight JavaScript loop on a 2-core x86_64 machine.
    pub const FUEL_PER_MS: u64 = 10_000_000;

    /// These limits, lowered by a campaign's `limits` (`fuel`, `memory_mb`); values above the
    /// host's are ignored.
    pub fn lowered(self, fuel: Option<u64>, memory_mb: Option<u64>) -> Limits {
        Limits {
            fuel: fuel.map_or(self.fuel, |f| f.min(self.fuel)),
            memory_bytes: memory_mb
                .map(|m| usize::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX))
                .map_or(self.memory_bytes, |m| m.min(self.memory_bytes)),
            deadline: self.deadline,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        HostLimits::default().limits()
    }
}

/// What the host accepts as an event (spec §7: an event over them goes to the dead-letter topic
/// and never counts against a campaign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Largest event, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays; the event object itself is level 1.
    pub max_depth: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        HostLimits::default().event_limits()
    }
}

/// Caps on a Wasm filter module's size and shape, checked before it is compiled, so that no
/// module can make Cranelift run for minutes or take gigabytes (issue 11: 200,000 small
/// functions took 55–175 s and 1.25 GB). The defaults leave ample room for real filters: the Go
/// SDK's example (3.3 MB) has 2,170 functions, a 29 KiB largest body, 2.1 MB of code, 8 globals,
/// one table of 6,266 elements and 37,389 data segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleCaps {
    /// Functions, imported and defined.
    pub max_functions: u32,
    /// Largest function body, in bytes.
    pub max_function_body_bytes: u32,
    /// All function bodies together, in bytes.
    pub max_code_bytes: u32,
    /// Locals of one function.
    pub max_locals_per_function: u32,
    /// Globals.
    pub max_globals: u32,
    /// Tables.
    pub max_tables: u32,
    /// Initial elements of all tables (each also costs [`TABLE_ELEMENT_BYTES`] of the memory cap).
    pub max_table_elements: u64,
    /// Data segments.
    pub max_data_segments: u32,
    /// Element segments.
    pub max_element_segments: u32,
    /// Types.
    pub max_types: u32,
    /// Imports.
    pub max_imports: u32,
    /// Exports.
    pub max_exports: u32,
}

impl Default for ModuleCaps {
    fn default() -> Self {
        ModuleCaps {
            max_functions: 20_000,
            max_function_body_bytes: 256 * 1024,
            max_code_bytes: 8 * 1024 * 1024,
            max_locals_per_function: 10_000,
            max_globals: 1_000,
            max_tables: 1,
            max_table_elements: 100_000,
            max_data_segments: 100_000,
            max_element_segments: 10_000,
            max_types: 10_000,
            max_imports: 100,
            max_exports: 1_000,
        }
    }
}

/// The host's limits as an operator writes them (spec §7), in user units: each field is optional,
/// so a config file, the environment and flags can each set some and be layered with
/// [`UserLimits::overridden_by`]. Turn it into [`HostLimits`] with
/// [`HostLimits::from_user_units`], which validates every value.
///
/// ```toml
/// [limits]
/// fuel = 20000000
/// memory_mb = 16
/// deadline_ms = 100
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    /// Fuel per evaluation (~1 per wasm instruction; 10,000,000 ≈ 1 ms of a tight loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory per filter instance (all memories and tables), in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU-time deadline per evaluation, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Largest Wasm filter module, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_module_bytes: Option<u64>,
    /// Largest JavaScript filter source, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_source_bytes: Option<u64>,
    /// Largest per-player state of a campaign (spec §12), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_max_bytes: Option<u64>,
    /// Largest event, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_bytes: Option<u64>,
    /// Deepest nesting of objects and arrays in an event (the event itself is level 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_depth: Option<u64>,
}

impl UserLimits {
    /// These values, with every value that `other` sets taking precedence (file < environment <
    /// flags).
    pub fn overridden_by(self, other: UserLimits) -> UserLimits {
        UserLimits {
            fuel: other.fuel.or(self.fuel),
            memory_mb: other.memory_mb.or(self.memory_mb),
            deadline_ms: other.deadline_ms.or(self.deadline_ms),
            max_module_bytes: other.max_module_bytes.or(self.max_module_bytes),
            max_source_bytes: other.max_source_bytes.or(self.max_source_bytes),
            state_max_bytes: other.state_max_bytes.or(self.state_max_bytes),
            max_event_bytes: other.max_event_bytes.or(self.max_event_bytes),
            max_event_depth: other.max_event_depth.or(self.max_event_depth),
        }
    }
}

/// A limit the operator set outside its range. The message names the setting, quotes the value
/// and gives the range with its unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit `{name}` = {value} is out of range: it must be between {min} and {max} ({unit})")]
pub struct LimitsError {
    /// The setting (`memory_mb`, ...).
    pub name: &'static str,
    /// The value given.
    pub value: u64,
    /// Smallest value accepted.
    pub min: u64,
    /// Largest value accepted.
    pub max: u64,
    /// What the value counts.
    pub unit: &'static str,
}

/// The host's limits, validated, in user units (spec §7). [`Default`] is what `rtcrm run` uses
/// without configuration. Deserializing validates ([`UserLimits`] is the accepted shape; unknown
/// keys are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UserLimits", into = "UserLimits")]
pub struct HostLimits {
    fuel: u64,
    memory_mb: u64,
    deadline_ms: u64,
    max_module_bytes: u64,
    max_source_bytes: u64,
    state_max_bytes: u64,
    max_event_bytes: u64,
    max_event_depth: u64,
}

/// One setting's default and accepted range.
struct Setting {
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
    unit: &'static str,
}

const MIB: u64 = 1024 * 1024;

/// Every setting: name, default, range and unit. The ranges keep each limit where the sandbox is
/// tested: enough fuel for the JS runtime to load a filter, memory a wasm32 instance can address,
/// a nesting depth the runtime's JSON reader handles within its stack.
const SETTINGS: [Setting; 8] = [
    Setting { name: "fuel", default: 20_000_000, min: 1_000_000, max: 100_000_000_000, unit: "fuel units per evaluation, ~10,000,000 per ms" },
    Setting { name: "memory_mb", default: 16, min: 2, max: 4096, unit: "MiB per filter instance" },
    Setting { name: "deadline_ms", default: 100, min: 1, max: 60_000, unit: "ms of CPU time per evaluation" },
    Setting { name: "max_module_bytes", default: 8 * MIB, min: 1024, max: 64 * MIB, unit: "bytes per Wasm module" },
    Setting { name: "max_source_bytes", default: 64 * 1024, min: 16, max: 16 * MIB, unit: "bytes per JavaScript source" },
    Setting { name: "state_max_bytes", default: 1024, min: 16, max: 16 * MIB, unit: "bytes of per-player state" },
    Setting { name: "max_event_bytes", default: MIB, min: 64, max: 256 * MIB, unit: "bytes per event" },
    Setting { name: "max_event_depth", default: 64, min: 1, max: MAX_SUPPORTED_EVENT_DEPTH as u64, unit: "levels of nesting per event" },
];

/// The deepest event nesting the JS runtime is tested to read whole (`JSON.stringify(e)`, deep
/// reads) within its stack.
pub const MAX_SUPPORTED_EVENT_DEPTH: usize = 512;

impl HostLimits {
    /// Validates `user` (unset values take their defaults). Errors quote the offending value.
    pub fn from_user_units(user: UserLimits) -> Result<HostLimits, LimitsError> {
        let values = [
            user.fuel,
            user.memory_mb,
            user.deadline_ms,
            user.max_module_bytes,
            user.max_source_bytes,
            user.state_max_bytes,
            user.max_event_bytes,
            user.max_event_depth,
        ];
        let mut out = [0u64; 8];
        for ((setting, value), slot) in SETTINGS.iter().zip(values).zip(&mut out) {
            let value = value.unwrap_or(setting.default);
            if !(setting.min..=setting.max).contains(&value) {
                return Err(LimitsError { name: setting.name, value, min: setting.min, max: setting.max, unit: setting.unit });
            }
            *slot = value;
        }
        let [fuel, memory_mb, deadline_ms, max_module_bytes, max_source_bytes, state_max_bytes, max_event_bytes, max_event_depth] =
            out;
        Ok(HostLimits {
            fuel,
            memory_mb,
            deadline_ms,
            max_module_bytes,
            max_source_bytes,
            state_max_bytes,
            max_event_bytes,
            max_event_depth,
        })
    }

    /// Fuel per evaluation.
    pub fn fuel(&self) -> u64 {
        self.fuel
    }

    /// Memory per filter instance, in MiB.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }

    /// CPU-time deadline per evaluation, in milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Largest Wasm module, in bytes.
    pub fn max_module_bytes(&self) -> usize {
        self.max_module_bytes as usize
    }

    /// Largest JavaScript source, in bytes.
    pub fn max_source_bytes(&self) -> usize {
        self.max_source_bytes as usize
    }

    /// Largest per-player state, in bytes (spec §12).
    pub fn state_max_bytes(&self) -> usize {
        self.state_max_bytes as usize
    }

    /// Largest event, in bytes.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes as usize
    }

    /// Deepest event nesting.
    pub fn max_event_depth(&self) -> usize {
        self.max_event_depth as usize
    }

    /// The evaluation limits these stand for.
    pub fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: (self.memory_mb * MIB) as usize,
            deadline: Duration::from_millis(self.deadline_ms),
        }
    }

    /// The event limits these stand for.
    pub fn event_limits(&self) -> EventLimits {
        EventLimits { max_bytes: self.max_event_bytes as usize, max_depth: self.max_event_depth as usize }
    }

    /// The user units these were built from, every value set.
    pub fn to_user_units(&self) -> UserLimits {
        UserLimits {
            fuel: Some(self.fuel),
            memory_mb: Some(self.memory_mb),
            deadline_ms: Some(self.deadline_ms),
            max_module_bytes: Some(self.max_module_bytes),
            max_source_bytes: Some(self.max_source_bytes),
            state_max_bytes: Some(self.state_max_bytes),
            max_event_bytes: Some(self.max_event_bytes),
            max_event_depth: Some(self.max_event_depth),
        }
    }
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits::from_user_units(UserLimits::default()).expect("the defaults are in range")
    }
}

impl TryFrom<UserLimits> for HostLimits {
    type Error = LimitsError;

    fn try_from(user: UserLimits) -> Result<Self, Self::Error> {
        HostLimits::from_user_units(user)
    }
}

impl From<HostLimits> for UserLimits {
    fn from(limits: HostLimits) -> Self {
        limits.to_user_units()
    }
}

impl fmt::Display for HostLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fuel={} memory_mb={} deadline_ms={} max_module_bytes={} max_source_bytes={} state_max_bytes={} max_event_bytes={} max_event_depth={}",
            self.fuel,
            self.memory_mb,
            self.deadline_ms,
            self.max_module_bytes,
            self.max_source_bytes,
            self.state_max_bytes,
            self.max_event_bytes,
            self.max_event_depth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaign_can_lower_but_not_raise_limits() {
        let host = Limits::default();
        let lowered = host.lowered(Some(1_000), Some(4));
        assert_eq!(lowered.fuel, 1_000);
        assert_eq!(lowered.memory_bytes, 4 * 1024 * 1024);
        let raised = host.lowered(Some(u64::MAX), Some(1 << 40));
        assert_eq!(raised, host);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let d = HostLimits::default();
        assert_eq!(
            d.to_user_units(),
            UserLimits {
                fuel: Some(20_000_000),
                memory_mb: Some(16),
                deadline_ms: Some(100),
                max_module_bytes: Some(8 * 1024 * 1024),
                max_source_bytes: Some(64 * 1024),
                state_max_bytes: Some(1024),
                max_event_bytes: Some(1024 * 1024),
                max_event_depth: Some(64),
            }
        );
        assert_eq!(
            d.limits(),
            Limits { fuel: 20_000_000, memory_bytes: 16 * 1024 * 1024, deadline: Duration::from_millis(100) }
        );
        assert_eq!(d.event_limits(), EventLimits { max_bytes: 1024 * 1024, max_depth: 64 });
        assert_eq!(d.state_max_bytes(), 1024);
    }

    #[test]
    fn user_units_become_sandbox_units() {
        let user = UserLimits { fuel: Some(5_000_000), memory_mb: Some(32), deadline_ms: Some(250), ..UserLimits::default() };
        let limits = HostLimits::from_user_units(user).unwrap();
        assert_eq!(limits.limits().memory_bytes, 32 * 1024 * 1024);
        assert_eq!(limits.limits().deadline, Duration::from_millis(250));
        assert_eq!(limits.limits().fuel, 5_000_000);
        assert_eq!(limits.max_module_bytes(), 8 * 1024 * 1024, "unset values keep their defaults");
    }

    #[test]
    fn out_of_range_values_are_refused_quoting_the_value() {
        let err = HostLimits::from_user_units(UserLimits { memory_mb: Some(0), ..UserLimits::default() }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limit `memory_mb` = 0 is out of range: it must be between 2 and 4096 (MiB per filter instance)"
        );
        let err = HostLimits::from_user_units(UserLimits { deadline_ms: Some(3_600_000), ..UserLimits::default() }).unwrap_err();
        assert_eq!((err.name, err.value), ("deadline_ms", 3_600_000));
        let err = HostLimits::from_user_units(UserLimits { max_event_depth: Some(100_000), ..UserLimits::default() }).unwrap_err();
        assert!(err.to_string().contains("`max_event_depth` = 100000"), "{err}");
        let err = HostLimits::from_user_units(UserLimits { fuel: Some(10), ..UserLimits::default() }).unwrap_err();
        assert!(err.to_string().starts_with("limit `fuel` = 10 is out of range"), "{err}");
    }

    #[test]
    fn serde_validates_and_refuses_unknown_keys() {
        let limits: HostLimits = serde_json::from_str(r#"{"fuel": 3000000, "state_max_bytes": 2048}"#).unwrap();
        assert_eq!(limits.fuel(), 3_000_000);
        assert_eq!(limits.state_max_bytes(), 2048);
        let err = serde_json::from_str::<HostLimits>(r#"{"memory_mb": 1}"#).unwrap_err();
        assert!(err.to_string().contains("`memory_mb` = 1 is out of range"), "{err}");
        let err = serde_json::from_str::<HostLimits>(r#"{"memory": 16}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
        let err = serde_json::from_str::<HostLimits>(r#"{"fuel": -1}"#).unwrap_err();
        assert!(err.to_string().contains("invalid value: integer `-1`"), "{err}");
        // Round trip.
        let text = serde_json::to_string(&limits).unwrap();
        assert_eq!(serde_json::from_str::<HostLimits>(&text).unwrap(), limits);
    }

    #[test]
    fn layers_override_in_order() {
        let file = UserLimits { fuel: Some(1_000_000), memory_mb: Some(8), ..UserLimits::default() };
        let env = UserLimits { memory_mb: Some(12), ..UserLimits::default() };
        let flags = UserLimits { deadline_ms: Some(50), ..UserLimits::default() };
        let merged = file.overridden_by(env).overridden_by(flags);
        assert_eq!(merged, UserLimits { fuel: Some(1_000_000), memory_mb: Some(12), deadline_ms: Some(50), ..UserLimits::default() });
    }
}
