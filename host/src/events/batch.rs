//! Batches of consumed events, and when their offsets may be committed.
//!
//! The consumer thread turns each poll's messages into one [`Batch`]: every event parsed once,
//! and split into one shard per worker by the player it concerns (so the events of one player
//! are evaluated in order, by one worker). A batch is *done* when every shard is evaluated and,
//! at-least-once, every record it produced is acknowledged. The [`Tracker`] keeps the batches in
//! consumption order and releases offsets only for the done prefix: an offset is never committed
//! past an event that is still in flight.

use crate::state::decide::Source;
use crate::state::store::Deadline;
use rtcrm_sandbox::{Event, EventLimits};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What a job holds.
pub enum Payload {
    /// A JSON object: the event, parsed once.
    Event(Event),
    /// Not an event: goes to the dead-letter topic with `reason`.
    Invalid { bytes: Option<Box<[u8]>>, reason: String },
    /// A per-player deadline that came due (no message: `offset` is -1).
    Deadline(Deadline),
    /// A timer trigger of this state key was delivered: clear its pending firing.
    Confirmed(String),
}

/// One consumed message (or one piece of per-player work of a partition).
pub struct Job {
    pub source: Source,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Box<[u8]>>,
    pub payload: Payload,
    /// For a repartitioned event: its partition and offset in the events topic.
    pub origin: Option<(i32, i64)>,
}

impl Job {
    /// Parses a consumed message (on the consumer thread, once for every campaign) under the
    /// host's event limits (size, nesting).
    pub fn new(partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>, limits: &EventLimits) -> Job {
        let payload = match payload {
            None => Payload::Invalid { bytes: None, reason: "empty message: an event must be a JSON object".into() },
            Some(bytes) => match Event::parse_with(bytes.to_vec(), limits) {
                Ok(event) => Payload::Event(event),
                Err(e) => Payload::Invalid { bytes: Some(bytes.into()), reason: e.to_string() },
            },
        };
        Job { source: Source::Events, partition, offset, key: key.map(Into::into), payload, origin: None }
    }

    /// Per-player work on `partition`'s state (not a message).
    pub fn state_work(partition: i32, payload: Payload) -> Job {
        Job { source: Source::Events, partition, offset: -1, key: None, payload, origin: None }
    }

    /// The player this job concerns, as text (the state key's player; the event's `player_id`).
    pub fn player(&self) -> Option<std::borrow::Cow<'_, str>> {
        let from_key = |key: &str| key.split_once(':').map(|(_, p)| p.to_owned());
        match &self.payload {
            Payload::Event(e) => {
                let raw = e.field("player_id")?;
                match raw.first() {
                    Some(b'"') if !raw.contains(&b'\\') => std::str::from_utf8(&raw[1..raw.len() - 1]).ok().map(Into::into),
                    Some(b'"') => serde_json::from_slice::<String>(raw).ok().map(Into::into),
                    _ if raw == b"null" => None,
                    _ => std::str::from_utf8(raw).ok().map(Into::into),
                }
            }
            Payload::Invalid { .. } => None,
            Payload::Deadline(d) => from_key(&d.key).map(Into::into),
            Payload::Confirmed(key) => from_key(key).map(Into::into),
        }
    }

    /// The original bytes (for the dead-letter topic).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Event(e) => Some(e.as_bytes()),
            Payload::Invalid { bytes, .. } => bytes.as_deref(),
            Payload::Deadline(_) | Payload::Confirmed(_) => None,
        }
    }

    /// Which of `shards` evaluates this job: by its player (as text, so an event and the state
    /// work of its player land on the same worker), else by the message key, else by offset (an
    /// event without either has no order to keep).
    pub fn shard(&self, shards: usize) -> usize {
        if let Some(player) = self.player() {
            return shard_of(&player, shards);
        }
        match self.key.as_deref() {
            Some(bytes) => fnv1a(bytes) as usize % shards,
            None => self.offset.unsigned_abs() as usize % shards,
        }
    }
}

/// The worker (and state overlay) of `player`.
pub fn shard_of(player: &str, shards: usize) -> usize {
    fnv1a(player.as_bytes()) as usize % shards.max(1)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The events of one poll, split into shards.
pub struct Batch {
    pub jobs: Vec<Job>,
    /// Per worker: indices into `jobs`, in consumption order.
    pub shards: Vec<Vec<u32>>,
    /// The next offset to consume, per (topic, partition), once this batch is done.
    next_offsets: Vec<((Source, i32), i64)>,
    /// Unfinished shards plus unacknowledged records.
    pending: AtomicUsize,
    done: AtomicBool,
    tracker: Arc<Tracker>,
}

impl Batch {
    /// Splits `jobs` into `shards` shards and registers the batch with `tracker`.
    pub fn dispatch(jobs: Vec<Job>, shards: usize, tracker: &Arc<Tracker>) -> Arc<Batch> {
        let mut split = vec![Vec::new(); shards];
        let mut next: BTreeMap<(Source, i32), i64> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            split[job.shard(shards)].push(i as u32);
            if job.offset >= 0 {
                let n = next.entry((job.source, job.partition)).or_insert(job.offset + 1);
                *n = (*n).max(job.offset + 1);
            }
        }
        let busy = split.iter().filter(|s| !s.is_empty()).count();
        let batch = Arc::new(Batch {
            jobs,
            shards: split,
            next_offsets: next.into_iter().collect(),
            pending: AtomicUsize::new(busy),
            done: AtomicBool::new(false),
            tracker: tracker.clone(),
        });
        tracker.push(batch.clone());
        batch
    }

    /// One more record to wait for (at-least-once: before it is sent).
    pub fn hold(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A shard is evaluated, or a held record is acknowledged (or given up, and counted).
    pub fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.store(true, Ordering::Release);
            self.tracker.notify();
        }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// The next offset to consume, per (topic, partition).
pub type Offsets = BTreeMap<(Source, i32), i64>;

/// The batches in flight, in consumption order.
#[derive(Default)]
pub struct Tracker {
    queue: Mutex<VecDeque<Arc<Batch>>>,
    changed: Condvar,
    events: AtomicUsize,
}

impl Tracker {
    fn push(&self, batch: Arc<Batch>) {
        self.events.fetch_add(batch.jobs.len(), Ordering::Relaxed);
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(batch);
    }

    fn notify(&self) {
        // Taking the lock orders the wake-up after a waiter's check of the queue.
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    /// Events consumed and not yet done.
    pub fn in_flight_events(&self) -> usize {
        self.events.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Waits up to `timeout` until every batch in flight is done (evaluated, and its records
    /// acknowledged), without removing any; whether they are.
    pub fn wait_all_done(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if queue.iter().all(|b| b.is_done()) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            queue = self.changed.wait_timeout(queue, left.min(Duration::from_millis(50))).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Removes the done batches at the front and returns the offsets they release: the next
    /// offset to consume, per (topic, partition).
    pub fn pop_done(&self) -> Offsets {
        let mut offsets = BTreeMap::new();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while queue.front().is_some_and(|b| b.is_done()) {
            let batch = queue.pop_front().expect("checked");
            self.events.fetch_sub(batch.jobs.len(), Ordering::Relaxed);
            for (partition, next) in &batch.next_offsets {
                let n = offsets.entry(*partition).or_insert(*next);
                *n = (*n).max(*next);
            }
        }
        offsets
    }

    /// Waits until the front batch may be done (or `timeout`); true when nothing is in flight.
    pub fn wait(&self, timeout: Duration) -> bool {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_empty() {
            return true;
        }
        if queue.front().is_some_and(|b| b.is_done()) {
            return false;
        }
        let (queue, _) = self.changed.wait_timeout(queue, timeout).unwrap_or_else(|p| p.into_inner());
        queue.is_empty()
    }

    /// Waits until every batch is done, releasing offsets through `release` as they complete.
    /// `still` is asked every 100 ms whether to keep waiting (false: give up, returns false).
    pub fn drain(&self, mut release: impl FnMut(Offsets), mut still: impl FnMut() -> bool) -> bool {
        loop {
            let offsets = self.pop_done();
            if !offsets.is_empty() {
                release(offsets);
            }
            if self.is_empty() {
                return true;
            }
            if !still() {
                return false;
            }
            self.wait(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(partition: i32, offset: i64, player: u32) -> Job {
        Job::new(partition, offset, None, Some(format!(r#"{{"player_id":{player}}}"#).as_bytes()), &EventLimits::default())
    }

    #[test]
    fn offsets_are_released_only_for_the_done_prefix() {
        let tracker = Arc::new(Tracker::default());
        let a = Batch::dispatch(vec![job(0, 10, 1), job(1, 5, 2)], 2, &tracker);
        let b = Batch::dispatch(vec![job(0, 11, 1)], 2, &tracker);
        assert_eq!(tracker.in_flight_events(), 3);
        // b finishes first: nothing may be committed yet.
        b.release();
        assert!(b.is_done());
        assert!(tracker.pop_done().is_empty());
        // a has two shards and one held record.
        a.hold();
        a.release();
        a.release();
        assert!(!a.is_done());
        a.release();
        assert_eq!(tracker.pop_done(), BTreeMap::from([((Source::Events, 0), 12), ((Source::Events, 1), 6)]));
        assert!(tracker.is_empty());
        assert_eq!(tracker.in_flight_events(), 0);
    }

    #[test]
    fn the_events_of_one_player_go_to_one_shard_in_order() {
        let tracker = Arc::new(Tracker::default());
        let jobs: Vec<Job> = (0..100).map(|i| job(0, i, (i % 7) as u32)).collect();
        let batch = Batch::dispatch(jobs, 3, &tracker);
        let mut shard_of = BTreeMap::new();
        for (s, shard) in batch.shards.iter().enumerate() {
            assert!(shard.windows(2).all(|w| w[0] < w[1]), "consumption order within a shard");
            for &j in shard {
                let player = batch.jobs[j as usize].offset % 7;
                assert_eq!(*shard_of.entry(player).or_insert(s), s, "player {player} in one shard");
            }
        }
        assert!(shard_of.values().collect::<std::collections::BTreeSet<_>>().len() > 1, "players spread over shards");
        let invalid = Job::new(0, 1, Some(b"k"), Some(b"[1]"), &EventLimits::default());
        assert!(matches!(&invalid.payload, Payload::Invalid { reason, .. } if reason.contains("JSON object")));
        assert_eq!(invalid.bytes(), Some(&b"[1]"[..]));
    }

    #[test]
    fn drain_waits_for_every_batch() {
        let tracker = Arc::new(Tracker::default());
        let batch = Batch::dispatch(vec![job(3, 0, 1)], 1, &tracker);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            batch.release();
        });
        let mut released = Vec::new();
        assert!(tracker.drain(|o| released.push(o), || true));
        assert_eq!(released, vec![BTreeMap::from([((Source::Events, 3), 1)])]);
        t.join().unwrap();
        let _stuck = Batch::dispatch(vec![job(3, 1, 1)], 1, &tracker);
        let mut asked = 0;
        assert!(!tracker.drain(|_| {}, || { asked += 1; asked < 3 }));
    }
}
