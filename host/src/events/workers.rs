//! The evaluation workers: `--workers` threads, each taking its shard of every batch (the events
//! of the players hashed to it, in consumption order). Evaluation never runs on the tokio
//! reactor or on the consumer thread.

use crate::events::batch::Batch;
use crate::events::evaluate::Evaluator;
use crate::events::sink::Sink;
use crate::processor::Processor;
use crate::state::stores::States;
use anyhow::{anyhow, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches queued per worker before the consumer thread waits (backpressure).
const QUEUE_DEPTH: usize = 4;

struct Work {
    batch: Arc<Batch>,
    shard: usize,
}

/// The worker threads.
pub struct Workers {
    senders: Vec<SyncSender<Work>>,
    threads: Vec<JoinHandle<()>>,
    /// Set when a worker panicked (its batches never finish: the event path must stop).
    dead: Arc<AtomicBool>,
}

impl Workers {
    pub fn start(processor: &Arc<Processor>, sink: &Arc<dyn Sink>, states: &Arc<States>, n: usize) -> Result<Workers> {
        let dead = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = sync_channel::<Work>(QUEUE_DEPTH);
            let (processor, sink, dead, states) = (processor.clone(), sink.clone(), dead.clone(), states.clone());
            let thread = std::thread::Builder::new()
                .name(format!("rtcrm-worker-{i}"))
                .spawn(move || {
                    let mut evaluator = Evaluator::new(processor, states, i);
                    while let Ok(work) = rx.recv() {
                        let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            evaluator.shard(&work.batch, work.shard, &*sink);
                        }));
                        if evaluated.is_err() {
                            // The batch stays unfinished: its offsets are never committed.
                            dead.store(true, Ordering::SeqCst);
                            return;
                        }
                        work.batch.release();
                    }
                })
                .context("starting a worker thread")?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers { senders, threads, dead })
    }

    /// How many shards a batch has.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Queues each non-empty shard of `batch` on its worker (waits while a queue is full).
    pub fn dispatch(&self, batch: &Arc<Batch>) -> Result<()> {
        for (shard, jobs) in batch.shards.iter().enumerate() {
            if !jobs.is_empty() {
                self.senders[shard].send(Work { batch: batch.clone(), shard }).map_err(|_| anyhow!("evaluation worker {shard} stopped"))?;
            }
        }
        Ok(())
    }

    /// Err when a worker died.
    pub fn check(&self) -> Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(anyhow!("an evaluation worker panicked (see the log); stopping so its events are processed again"));
        }
        Ok(())
    }

    /// Lets the workers finish their queues, and waits for them.
    pub fn stop(self) {
        drop(self.senders);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
