//! The compiler pool for Wasm filter modules: a fixed number of compiler threads, each with a
//! Rayon pool of its own for Cranelift's per-function parallelism (so one large module's work
//! never queues in front of another module's), and a time limit per module.
//!
//! A compile that runs past the limit is answered at once with [`CompileFailure::TimedOut`];
//! Cranelift cannot be interrupted, so its thread finishes the work and throws the result away
//! (the module is not cached). The size and shape caps checked before (`ModuleCaps`) bound how
//! long that can be. Until then the pool has one compiler fewer: a slow module delays others only
//! when every compiler is busy.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wasmtime::{Engine, Module};

/// Why a module did not compile.
#[derive(Debug)]
pub(crate) enum CompileFailure {
    /// Compiling took longer than the limit.
    TimedOut(Duration),
    /// wasmtime refused it (its message).
    Failed(String),
}

struct Job {
    engine: Engine,
    wasm: Arc<[u8]>,
    reply: Sender<Reply>,
}

enum Reply {
    Started,
    Done(wasmtime::Result<Module>),
}

/// Compiler threads, started on first use.
pub(crate) struct CompilePool {
    threads: usize,
    timeout: Duration,
    queue: OnceLock<Mutex<Sender<Job>>>,
}

impl CompilePool {
    /// A pool of `threads` compilers (at least one) that gives each module `timeout`.
    pub fn new(threads: usize, timeout: Duration) -> CompilePool {
        CompilePool { threads: threads.max(1), timeout, queue: OnceLock::new() }
    }

    /// Compiles `wasm`, waiting for a free compiler first (that wait does not count against the
    /// time limit).
    pub fn compile(&self, engine: &Engine, wasm: Arc<[u8]>) -> Result<Module, CompileFailure> {
        let (reply, answers) = mpsc::channel();
        let job = Job { engine: engine.clone(), wasm, reply };
        let queue = self.queue.get_or_init(|| Mutex::new(self.start()));
        if queue.lock().unwrap_or_else(|e| e.into_inner()).send(job).is_err() {
            return Err(CompileFailure::Failed("the compiler threads are gone".into()));
        }
        match answers.recv() {
            Ok(Reply::Started) => {}
            Ok(Reply::Done(result)) => return result.map_err(|e| CompileFailure::Failed(format!("{e:#}"))),
            Err(_) => return Err(CompileFailure::Failed("the compiler thread stopped".into())),
        }
        match answers.recv_timeout(self.timeout) {
            Ok(Reply::Done(result)) => result.map_err(|e| CompileFailure::Failed(format!("{e:#}"))),
            Ok(Reply::Started) => unreachable!("a job starts once"),
            Err(RecvTimeoutError::Timeout) => Err(CompileFailure::TimedOut(self.timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(CompileFailure::Failed("the compiler thread stopped".into())),
        }
    }

    fn start(&self) -> Sender<Job> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..self.threads {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("rtcrm-compile-{i}"))
                .spawn(move || compiler(jobs, parallelism))
                .expect("spawning a compiler thread");
        }
        queue
    }
}

/// One compiler thread: takes jobs until the pool is dropped.
fn compiler(jobs: Arc<Mutex<Receiver<Job>>>, parallelism: usize) {
    // Cranelift compiles a module's functions on the current Rayon pool: this thread's own, so
    // two modules compiled at once share the cores instead of queueing one behind the other.
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(parallelism)
        .thread_name(|i| format!("rtcrm-cranelift-{i}"))
        .build()
        .ok();
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // The caller may have given up already; then there is no one to compile for.
        if job.reply.send(Reply::Started).is_err() {
            continue;
        }
        let compile = || Module::new(&job.engine, &job.wasm[..]);
        let result = match &rayon {
            Some(pool) => pool.install(compile),
            None => compile(),
        };
        let _ = job.reply.send(Reply::Done(result));
    }
}
