//! One supervisor for every task of the processor (spec §8: no silent stall, no zombie).
//!
//! Each long-running task — the campaigns reader, the event path (its consumer thread and
//! evaluation workers), the Kafka health probe, the HTTP server — is started here and reports
//! when it ends. A task must run until it is told to stop: the first one that ends otherwise
//! (an error, a panic, or returning early) marks the process failed (`/healthz` answers 503 with
//! the reason), logs what failed at error level, stops the others, and makes the process exit
//! non-zero. On SIGTERM/SIGINT every task is told to stop and is waited for (the event path
//! drains, delivers and commits), and the process exits 0.

use crate::health::Health;
use anyhow::{anyhow, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long stopping tasks get to finish after a failure before the process exits anyway.
const FAILURE_GRACE: Duration = Duration::from_secs(30);

/// A task's end, as reported to the supervisor.
struct Ended {
    name: String,
    result: Result<()>,
}

/// Starts tasks and watches them.
pub struct Supervisor {
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended_rx: mpsc::UnboundedReceiver<Ended>,
    stop_tx: watch::Sender<bool>,
    running: usize,
    health: Arc<Health>,
}

impl Supervisor {
    pub fn new(health: Arc<Health>) -> Supervisor {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let (stop_tx, _) = watch::channel(false);
        Supervisor { ended_tx, ended_rx, stop_tx, running: 0, health }
    }

    /// Turns true when every task must stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Starts an async task.
    pub fn spawn<F>(&mut self, name: &str, task: F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        self.running += 1;
        let (tx, name) = (self.ended_tx.clone(), name.to_owned());
        let handle = tokio::spawn(task);
        tokio::spawn(async move {
            let result = match handle.await {
                Ok(result) => result,
                Err(join) => Err(anyhow!("panicked: {}", panic_text(join.into_panic()))),
            };
            let _ = tx.send(Ended { name, result });
        });
    }

    /// Starts a task on its own OS thread (the event path: evaluation never runs on the reactor).
    pub fn spawn_thread<F>(&mut self, name: &str, task: F) -> Result<()>
    where
        F: FnOnce() -> Result<()> + Send + 'static,
    {
        let (tx, ended) = (self.ended_tx.clone(), name.to_owned());
        std::thread::Builder::new()
            .name(format!("rtcrm-{}", name.replace(' ', "-")))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))
                    .unwrap_or_else(|panic| Err(anyhow!("panicked: {}", panic_text(panic))));
                let _ = tx.send(Ended { name: ended, result });
            })
            .map_err(|e| anyhow!("starting the {name} thread: {e}"))?;
        self.running += 1;
        Ok(())
    }

    /// Runs until `signal` turns true (then stops every task and waits for them: Ok when all
    /// ended cleanly) or until a task ends on its own (then the process fails with its reason).
    pub async fn run(mut self, mut signal: watch::Receiver<bool>) -> Result<()> {
        let first = tokio::select! {
            _ = crate::supervisor::stopped(&mut signal) => None,
            ended = self.ended_rx.recv() => ended,
        };
        match first {
            None => {
                let _ = self.stop_tx.send(true);
                let mut failed = None;
                while self.running > 0 {
                    let Some(ended) = self.ended_rx.recv().await else { break };
                    self.running -= 1;
                    if let Err(e) = ended.result {
                        tracing::error!(task = %ended.name, error = format!("{e:#}"), "a task failed while stopping");
                        failed.get_or_insert_with(|| anyhow!("{}: {e:#}", ended.name));
                    }
                }
                failed.map_or(Ok(()), Err)
            }
            Some(ended) => {
                self.running -= 1;
                let reason = match &ended.result {
                    Ok(()) => format!("{} stopped unexpectedly", ended.name),
                    Err(e) => format!("{}: {e:#}", ended.name),
                };
                tracing::error!(task = %ended.name, "{reason}; stopping rtcrm");
                self.health.fail(&reason);
                let _ = self.stop_tx.send(true);
                let _ = tokio::time::timeout(FAILURE_GRACE, async {
                    while self.running > 0 && self.ended_rx.recv().await.is_some() {
                        self.running -= 1;
                    }
                })
                .await;
                Err(anyhow!(reason))
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_that_fails_stops_the_others_and_the_process() {
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new(health.clone());
        let mut stop = supervisor.stop_signal();
        supervisor.spawn("patient", async move {
            stop.wait_for(|s| *s).await?;
            Ok(())
        });
        supervisor.spawn_thread("doomed", || Err(anyhow!("the broker fenced us"))).unwrap();
        let (_tx, signal) = watch::channel(false);
        let err = supervisor.run(signal).await.unwrap_err();
        assert_eq!(err.to_string(), "doomed: the broker fenced us");
        assert_eq!(health.failure().as_deref(), Some("doomed: the broker fenced us"));
    }

    #[tokio::test]
    async fn a_panicking_or_returning_task_is_a_failure_and_a_signal_is_not() {
        let mut supervisor = Supervisor::new(Arc::default());
        supervisor.spawn_thread("thread", || panic!("boom")).unwrap();
        let (_tx, signal) = watch::channel(false);
        assert_eq!(supervisor.run(signal).await.unwrap_err().to_string(), "thread: panicked: boom");

        let mut supervisor = Supervisor::new(Arc::default());
        supervisor.spawn("quitter", async { Ok(()) });
        let (_tx, signal) = watch::channel(false);
        assert_eq!(supervisor.run(signal).await.unwrap_err().to_string(), "quitter stopped unexpectedly");

        let mut supervisor = Supervisor::new(Arc::default());
        let mut stop = supervisor.stop_signal();
        supervisor.spawn("worker", async move {
            stop.wait_for(|s| *s).await?;
            Ok(())
        });
        let (tx, signal) = watch::channel(false);
        tx.send(true).unwrap();
        supervisor.run(signal).await.unwrap();
    }
}
