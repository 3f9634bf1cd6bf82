//! Filter instances, bounded across all campaigns.
//!
//! A campaign version keeps its idle instances in [`Instances`]: a worker takes one, evaluates,
//! and puts it back, so instances are shared by the workers instead of each worker building its
//! own (memory does not grow with workers × campaigns: a campaign holds as many instances as
//! were ever in use at the same moment, usually one). Across campaigns, [`InstanceBudget`] caps
//! the number alive (`--max-filter-instances`); past it, the idle instances of the least recently
//! used campaigns are dropped, and rebuilt from the compiled filter when next needed.
//!
//! A JavaScript instance costs about 280 KiB of resident memory (RSS; 83 KiB of it private, the
//! rest copy-on-write pages of the runtime image, see `docs/performance.md`), so the default of
//! 2,048 instances holds about 600 MiB. A WebAssembly filter's instance is as large as its
//! linear memory (a Go filter: ~3.3 MiB).

use crate::campaigns::registry::CampaignSet;
use rtcrm_sandbox::Filter;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Default of `--max-filter-instances`.
pub const DEFAULT_MAX_INSTANCES: usize = 2048;

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

/// One campaign version's idle instances.
#[derive(Default)]
pub struct Instances {
    idle: Mutex<Vec<Pooled>>,
    last_used: AtomicU64,
}

impl Instances {
    /// An idle instance, if there is one; marks the campaign used at `tick`.
    pub fn take(&self, tick: u64) -> Option<Pooled> {
        self.last_used.store(tick, Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Returns an instance after an evaluation.
    pub fn put(&self, instance: Pooled) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(instance);
    }

    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Drops every idle instance.
    fn clear(&self) {
        let dropped = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        drop(dropped);
    }
}
