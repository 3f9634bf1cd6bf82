//! How filter instances are allocated, and how many may be alive at once.
//!
//! # Without a budget (`SandboxConfig::max_instances` = `None`, the default)
//! Each instance maps its own linear memory (a 4 GiB reservation plus guard pages, the memory
//! image mapped copy-on-write) and table when it is built, and unmaps them when dropped
//! (wasmtime's on-demand allocator). There is no fixed maximum; every build pays the mappings and
//! the page faults of a fresh memory, every drop the unmapping.
//!
//! # With a budget of N filter instances (`Some(N)`)
//! The engine uses wasmtime's pooling allocator with N + [`RESERVED_INSTANCES`] slots (a core
//! instance, a linear memory and a table each), reserved as address space when the sandbox
//! starts: about 4 GiB per slot (no bounds checks are compiled in; with a smaller reservation
//! evaluations measured ~25 % slower), so some 20,000 slots fit in x86-64's 128 TiB; a budget
//! too large for the address space fails `Sandbox::new`. A slot costs no memory until used.
//! - **Build into a warm slot.** A dropped instance's slot keeps its memory image mapped and is
//!   reset in place: the pages the instance wrote (found with Linux's `PAGEMAP_SCAN`, 6.7 or
//!   later) are copied back from the image, up to [`KEEP_RESIDENT_BYTES`], and everything else is
//!   released. The next instance of the same module in that slot (wasmtime prefers the most
//!   recently used slot of the same module) starts without page faults: a pool miss in the host
//!   (build, first evaluation, drop) costs ~16 µs instead of ~77 µs. The reset restores every
//!   byte, so nothing of one campaign's instance is visible to the next one in its slot.
//! - **Memory stays with used slots.** A slot that has been used keeps up to
//!   [`KEEP_RESIDENT_BYTES`] of private pages plus the image pages it maps, even while unused, so
//!   resident memory follows the largest number of instances alive at once, not the current one,
//!   and is bounded by the pool's size.
//! - **A fixed maximum.** At most N filter instances ([`JsFilter`](crate::JsFilter),
//!   [`WasmFilter`](crate::WasmFilter)) are alive at once: building one more fails at once with
//!   [`EvalError::Capacity`](crate::EvalError::Capacity) (kind `capacity`), never a panic and never
//!   a wait; the host drops idle instances and builds again. The reserved slots serve the
//!   sandbox's own short-lived instances (compiling and verifying JavaScript, validating Wasm
//!   modules): when all are in use, such a call waits for one, so compiling never fails for want
//!   of a slot and filter instances never take the sandbox's.
//! - **Mappings.** Every used slot (like every on-demand instance) costs the process about three
//!   memory mappings; Linux's default `vm.max_map_count` (65,530) thus allows some 20,000 slots
//!   in use, alongside the process's other mappings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Slots of the pool kept for the sandbox's own instances (compiler, verification, validation).
pub const RESERVED_INSTANCES: usize = 32;
/// Private pages a pooled memory slot keeps, reset in place, when its instance is dropped (a
/// JavaScript instance writes ~13 pages, 52 KiB, of its memory).
pub const KEEP_RESIDENT_BYTES: usize = 128 * 1024;
/// Bytes of a pooled table slot kept and zeroed in place (the JS runtime's table: 717 elements).
pub const TABLE_KEEP_RESIDENT_BYTES: usize = 16 * 1024;

/// The pooling allocator for `max` filter instances whose memories may grow to `max_memory`
/// bytes and whose tables may hold `table_elements`.
pub(crate) fn pooling(max: usize, max_memory: usize, table_elements: usize) -> InstanceAllocationStrategy {
    let slots = u32::try_from(max.saturating_add(RESERVED_INSTANCES)).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    // Without PAGEMAP_SCAN, keeping pages resident means zeroing the first bytes of every memory
    // whether they were touched or not (a JS instance's are its untouched stack): release
    // everything instead.
    let scan = PoolingAllocationConfig::is_pagemap_scan_available();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_memory_size(max_memory)
        .table_elements(table_elements)
        .pagemap_scan(if scan { Enabled::Yes } else { Enabled::No })
        .linear_memory_keep_resident(if scan { KEEP_RESIDENT_BYTES } else { 0 })
        .table_keep_resident(if scan { TABLE_KEEP_RESIDENT_BYTES } else { 0 });
    InstanceAllocationStrategy::Pooling(pool)
}

/// Who an instance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A campaign's filter: counted against the budget.
    Filter,
    /// The sandbox's own (compiling, verifying, validating): one of the reserved slots.
    Sandbox,
}

/// The budget of filter instances and the sandbox's reserved slots.
pub(crate) struct InstanceSlots {
    max: Option<usize>,
    live: AtomicUsize,
    /// Reserved slots free (only with a budget).
    reserved: Mutex<usize>,
    freed: Condvar,
}

/// One instance's place in the budget, given back when dropped (after its store: see the
/// field order of the instance types).
pub(crate) struct Slot {
    slots: Arc<InstanceSlots>,
    owner: Owner,
}

impl InstanceSlots {
    pub(crate) fn new(max: Option<usize>) -> Arc<InstanceSlots> {
        Arc::new(InstanceSlots { max, live: AtomicUsize::new(0), reserved: Mutex::new(RESERVED_INSTANCES), freed: Condvar::new() })
    }

    /// The budget of filter instances, if any.
    pub(crate) fn max(&self) -> Option<usize> {
        self.max
    }

    /// Filter instances alive now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A slot for an instance of `owner`: a filter's fails with the budget when it is spent; the
    /// sandbox's waits for a reserved slot.
    pub(crate) fn acquire(self: &Arc<Self>, owner: Owner) -> Result<Slot, usize> {
        match (owner, self.max) {
            (Owner::Filter, max) => {
                let before = self.live.fetch_add(1, Ordering::AcqRel);
                if let Some(max) = max {
                    if before >= max {
                        self.live.fetch_sub(1, Ordering::AcqRel);
                        return Err(max);
                    }
                }
            }
            (Owner::Sandbox, None) => {}
            (Owner::Sandbox, Some(_)) => {
                let mut free = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
                while *free == 0 {
                    free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
                }
                *free -= 1;
            }
        }
        Ok(Slot { slots: self.clone(), owner })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match (self.owner, self.slots.max) {
            (Owner::Filter, _) => {
                self.slots.live.fetch_sub(1, Ordering::AcqRel);
            }
            (Owner::Sandbox, None) => {}
            (Owner::Sandbox, Some(_)) => {
                *self.slots.reserved.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                self.slots.freed.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_slots_stop_at_the_budget_and_come_back_when_dropped() {
        let slots = InstanceSlots::new(Some(2));
        let a = slots.acquire(Owner::Filter).unwrap();
        let _b = slots.acquire(Owner::Filter).unwrap();
        assert_eq!(slots.acquire(Owner::Filter).err(), Some(2));
        assert_eq!(slots.live(), 2);
        drop(a);
        assert_eq!(slots.live(), 1);
        assert!(slots.acquire(Owner::Filter).is_ok());
    }

    #[test]
    fn the_sandbox_waits_for_a_reserved_slot_and_never_takes_a_filters() {
        let slots = InstanceSlots::new(Some(1));
        let held: Vec<Slot> = (0..RESERVED_INSTANCES).map(|_| slots.acquire(Owner::Sandbox).unwrap()).collect();
        // Filters still have their budget.
        let filter = slots.acquire(Owner::Filter).unwrap();
        let waiter = {
            let slots = slots.clone();
            std::thread::spawn(move || slots.acquire(Owner::Sandbox).map(drop).is_ok())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "all reserved slots are taken: it waits");
        drop(held);
        assert!(waiter.join().unwrap());
        drop(filter);
        assert_eq!(slots.live(), 0);
    }

    #[test]
    fn without_a_budget_filters_are_counted_not_limited() {
        let slots = InstanceSlots::new(None);
        let all: Vec<Slot> = (0..100).map(|_| slots.acquire(Owner::Filter).unwrap()).collect();
        assert_eq!(slots.live(), 100);
        drop(all);
        assert_eq!(slots.live(), 0);
    }
}
