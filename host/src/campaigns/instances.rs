//! Filter instances, bounded across all campaigns.
//!
//! A campaign version keeps its idle instances in [`Instances`]: a worker takes one, evaluates,
//! and puts it back, so instances are shared by the workers instead of each worker building its
//! own (memory does not grow with workers × campaigns: a campaign holds as many instances as
//! were ever in use at the same moment, usually one). Across campaigns, [`InstanceBudget`] caps
//! the number alive (`--max-filter-instances`); past it, the idle instances of the least recently
//! used campaigns are dropped, and rebuilt from the compiled filter when next needed.
//!
//! A JavaScript instance costs about 104 KiB of resident memory (RSS) when the sandbox keeps
//! instances to their touched pages, 282 KiB when it cannot (fault-around: Linux before 6.7, or
//! no userfaultfd; the sandbox says which, see `Sandbox::residency` and `docs/performance.md`).
//! The default cap is derived from that figure: [`DEFAULT_INSTANCE_MEMORY_BYTES`] (1 GiB) of
//! instances, at most [`MAX_DEFAULT_INSTANCES`] — about 10,000 instances, or 3,700 with
//! fault-around. A WebAssembly filter's instance is as large as its linear memory (a Go filter:
//! ~3.3 MiB).

use crate::campaigns::registry::CampaignSet;
use rtcrm_sandbox::Filter;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The resident memory the default cap of instances is sized for, all campaigns together.
pub const DEFAULT_INSTANCE_MEMORY_BYTES: usize = 1 << 30;
/// The default cap's upper bound (past it, the per-instance bookkeeping of eviction dominates).
pub const MAX_DEFAULT_INSTANCES: usize = 12_000;

/// The default of `--max-filter-instances` for instances of `instance_rss_bytes` each (what the
/// sandbox measured for its configuration: `Sandbox::js_instance_rss_bytes`).
pub fn default_max_instances(instance_rss_bytes: usize) -> usize {
    (DEFAULT_INSTANCE_MEMORY_BYTES / instance_rss_bytes.max(1)).clamp(256, MAX_DEFAULT_INSTANCES)
}

/// The cap on filter instances alive, all campaigns together.
#[derive(Debug)]
pub struct InstanceBudget {
    max: usize,
    live: AtomicUsize,
    /// A logical clock for least-recently-used eviction (advanced once per batch of events).
    clock: AtomicU64,
    evicting: AtomicBool,
}

impl InstanceBudget {
    pub fn new(max: usize) -> Arc<InstanceBudget> {
        Arc::new(InstanceBudget { max: max.max(1), live: AtomicUsize::new(0), clock: AtomicU64::new(1), evicting: AtomicBool::new(false) })
    }

    /// Instances alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The next tick of the eviction clock.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a newly built instance.
    pub fn admit(self: &Arc<Self>, filter: Filter) -> Pooled {
        self.live.fetch_add(1, Ordering::Relaxed);
        Pooled { filter, budget: self.clone() }
    }

    /// When over the cap, drops idle instances of the least recently used campaigns of `set`
    /// until 90 % of the cap is reached (so eviction runs once per many builds, not per build).
    /// One caller at a time does the work; the others return at once.
    pub fn enforce(&self, set: &CampaignSet) {
        if self.live() <= self.max || self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let target = self.max - self.max / 10;
        let mut idle: Vec<(u64, &Instances)> =
            set.iter().map(|c| &c.instances).filter(|i| i.idle_count() > 0).map(|i| (i.last_used.load(Ordering::Relaxed), i)).collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        for (_, instances) in idle {
            if self.live() <= target {
                break;
            }
            instances.clear();
        }
        self.evicting.store(false, Ordering::Release);
    }
}

/// A filter instance counted in its budget (uncounted when dropped).
pub struct Pooled {
    pub filter: Filter,
    budget: Arc<InstanceBudget>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.budget.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tags the threads that evaluate: an instance goes back to the thread that last used it.
static NEXT_THREAD_TAG: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_TAG: usize = NEXT_THREAD_TAG.fetch_add(1, Ordering::Relaxed);
}

/// Idle items, each with the tag of the thread that put it back; a thread takes its own first.
struct AffinityPool<T> {
    idle: Mutex<Vec<(usize, T)>>,
}

impl<T> Default for AffinityPool<T> {
    fn default() -> Self {
        AffinityPool { idle: Mutex::new(Vec::new()) }
    }
}

impl<T> AffinityPool<T> {
    /// The item this thread put back last, else the one put back last by any thread.
    fn take(&self) -> Option<T> {
        let me = THREAD_TAG.with(|t| *t);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let i = idle.iter().rposition(|(tag, _)| *tag == me).or_else(|| idle.len().checked_sub(1))?;
        Some(idle.swap_remove(i).1)
    }

    fn put(&self, item: T) {
        let me = THREAD_TAG.with(|t| *t);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push((me, item));
    }

    fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take_all(&self) -> Vec<(usize, T)> {
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One campaign version's idle instances.
#[derive(Default)]
pub struct Instances {
    idle: AffinityPool<Pooled>,
    last_used: AtomicU64,
}

impl Instances {
    /// An idle instance, if there is one, preferably the one this thread used last, whose
    /// memory is more likely still in this core's caches (an instance holds about 100 KiB
    /// resident). Marks the campaign used at `tick`.
    pub fn take(&self, tick: u64) -> Option<Pooled> {
        self.last_used.store(tick, Ordering::Relaxed);
        self.idle.take()
    }

    /// Returns an instance after an evaluation.
    pub fn put(&self, instance: Pooled) {
        self.idle.put(instance);
    }

    fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Drops every idle instance.
    fn clear(&self) {
        drop(self.idle.take_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_instance_size() {
        assert_eq!(default_max_instances(104 * 1024), 10_082, "1 GiB of 104 KiB instances");
        assert_eq!(default_max_instances(282 * 1024), 3_718, "with fault-around");
        assert_eq!(default_max_instances(1), MAX_DEFAULT_INSTANCES);
        assert_eq!(default_max_instances(usize::MAX), 256);
    }

    #[test]
    fn a_thread_takes_back_the_instance_it_used_last() {
        let pool = Arc::new(AffinityPool::<&str>::default());
        let (put_a, take_a) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            let other = s.spawn(|| {
                pool.put("b's");
                put_a.wait();
                take_a.wait();
                pool.take()
            });
            put_a.wait();
            pool.put("a's"); // put back last, but by this thread
            take_a.wait();
            let other_took = other.join().unwrap();
            assert_eq!(other_took, Some("b's"), "the other thread gets its own, not the last put back");
        });
        assert_eq!(pool.take(), Some("a's"));
        // With none of its own, a thread takes any.
        pool.put("a's");
        assert_eq!(std::thread::scope(|s| s.spawn(|| pool.take()).join().unwrap()), Some("a's"));
        assert_eq!(pool.take(), None);
    }
}
