//! The limits every filter evaluation runs under, and what each one costs and misses.
//!
//! | limit | default | enforced by | when hit |
//! | --- | --- | --- | --- |
//! | fuel per evaluation | 20,000,000 (≈ 2 ms of a tight loop on this class of machine, ~10 fuel/ns) | wasmtime fuel, reset before each call | `Trap::OutOfFuel` → [`ErrorKind::Fuel`](crate::ErrorKind::Fuel) |
//! | linear memory per instance | 16 MiB | a [`wasmtime::ResourceLimiter`] on the store | `memory.grow` traps → [`ErrorKind::Memory`](crate::ErrorKind::Memory) |
//! | wall-clock deadline per evaluation | 100 ms | epoch interruption, ticked every 1 ms by a host thread | `Trap::Interrupt` → [`ErrorKind::Deadline`](crate::ErrorKind::Deadline) |
//! | wasm stack | 512 KiB | `Config::max_wasm_stack` (engine-wide) | `Trap::StackOverflow` → [`ErrorKind::Trap`](crate::ErrorKind::Trap) |
//! | source size | 64 KiB | checked at compile | rejected |
//!
//! Known gaps, stated as wasmtime states its own:
//! - Fuel counts wasm instructions, not time: a host call (an event field fetch, a log line)
//!   costs the host more than the fuel it charges. Each host call is bounded (a field is copied
//!   once; log lines are capped) so this cannot be used to stall the host.
//! - The deadline is checked at function entries and loop back-edges, in 1 ms ticks: an
//!   evaluation may overrun it by up to a tick plus the longest host call.
//! - The deadline is wall-clock time, so it also counts time the evaluating thread spends
//!   descheduled. Fuel is the CPU bound (≈ 2 ms); the deadline is a backstop set well above it
//!   (measured: at 20 ms, a loaded 2-core machine occasionally stopped healthy filters).
//! - Memory never shrinks: a filter that grew to its cap keeps that memory until its instance is
//!   rebuilt (after any trap) or the campaign is replaced.

use std::time::Duration;

/// Per-evaluation and per-instance limits. A campaign may lower them ([`Limits::lowered`]),
/// never raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per evaluation (wasmtime units, ~1 per wasm instruction).
    pub fuel: u64,
    /// Cap on one filter instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock backstop per evaluation.
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
        Limits {
            fuel: 2 * Self::FUEL_PER_MS,
            memory_bytes: 16 * 1024 * 1024,
            deadline: Duration::from_millis(100),
        }
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
}
