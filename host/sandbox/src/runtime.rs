//! Loading the JavaScript runtime: pre-initialise it once (wasmtime-wizer), compile it once per
//! process, and keep the compiled artifact in the verified module cache (`cache.rs`).
//!
//! The cache file is named after the SHA-256 of the runtime plugin and the engine's
//! compatibility hash (wasmtime version, target, and settings such as fuel metering), so an
//! artifact compiled for another runtime or engine configuration is never loaded: it is simply
//! another file. A warm start reads and verifies the artifact in a few milliseconds; a cold start
//! pre-initialises (~1 s) and compiles (~1.5 s) once, then writes the file. Without a usable
//! cache directory the runtime is compiled in memory at every start.

use crate::cache::ModuleCache;
use crate::error::SandboxError;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wizer::Wizer;

/// The cache file name of the runtime under `cache`'s engine.
pub(crate) fn cache_file(cache: &ModuleCache) -> String {
    cache.file_name("js-runtime", &hex::encode(Sha256::digest(rtcrm_compiler::RUNTIME_WASM)))
}

/// Loads the runtime for `engine`, from `cache` when it holds a verified copy.
pub(crate) fn load(engine: &Engine, cache: Option<&ModuleCache>) -> Result<Module, SandboxError> {
    let compile = || -> Result<Module, SandboxError> {
        let wasm = preinitialize()?;
        Module::new(engine, &wasm).map_err(|e| SandboxError::wasmtime("compiling the JS runtime", e))
    };
    let Some(cache) = cache else { return compile() };
    let name = cache_file(cache);
    if let Some(module) = cache.load(engine, &name) {
        return Ok(module);
    }
    let module = compile()?;
    match module.serialize() {
        Ok(artifact) => {
            if let Err(e) = cache.store(&name, &artifact) {
                // The cache only saves start-up time: without it, run from memory.
                tracing::warn!(error = %e, "the JS runtime cache is not writable; the next start compiles the runtime again");
            }
        }
        Err(e) => tracing::warn!(error = %e, "serializing the JS runtime failed; it is not cached"),
    }
    Ok(module)
}

/// Runs the runtime's `initialize-runtime` under wasmtime-wizer and returns the snapshot.
pub(crate) fn preinitialize() -> Result<Vec<u8>, SandboxError> {
    let engine = Engine::default();
    let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx)
        .map_err(|e| SandboxError::wasmtime("linking WASI for pre-initialisation", e))?;
    let mut wizer = Wizer::new();
    wizer.init_func("initialize-runtime");
    let run = wizer.run(&mut store, rtcrm_compiler::RUNTIME_WASM, async |store, module| {
        // The rtcrm:host imports are not called during initialisation.
        linker.define_unknown_imports_as_traps(module)?;
        linker.instantiate_async(store, module).await
    });
    block_on(run).map_err(|e| SandboxError::wasmtime("pre-initialising the JS runtime", e))
}

/// Drives a future that never waits on I/O (wizer's, with synchronous host functions).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
