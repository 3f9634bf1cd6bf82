//! Loading the JavaScript runtime: pre-initialise it once (wasmtime-wizer), compile it once per
//! process, and cache the compiled artifact on disk.
//!
//! The cache file is named after the SHA-256 of the runtime plugin and the engine's
//! compatibility hash (wasmtime version, target, and settings such as fuel metering), so an
//! artifact compiled for another runtime or engine configuration is never loaded: it is simply
//! another file. A warm start deserializes the artifact with `mmap` in well under a millisecond;
//! a cold start pre-initialises (~1 s) and compiles (~1.5 s) once, then writes the file.

use crate::error::SandboxError;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wizer::Wizer;

/// The default cache directory: `$RTCRM_CACHE_DIR`, else `$XDG_CACHE_HOME/rtcrm`, else
/// `~/.cache/rtcrm`, else a directory under the system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RTCRM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("rtcrm");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("rtcrm");
    }
    std::env::temp_dir().join("rtcrm-cache")
}

/// The cache file for the runtime under `engine`'s configuration.
pub(crate) fn cache_file(engine: &Engine, dir: &Path) -> PathBuf {
    let digest = Sha256::digest(rtcrm_compiler::RUNTIME_WASM);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!(
        "js-runtime-{}-{:016x}.cwasm",
        &hex::encode(digest)[..16],
        hasher.finish()
    ))
}

/// Loads the runtime for `engine`, from the cache in `cache_dir` when it is there.
pub(crate) fn load(engine: &Engine, cache_dir: Option<&Path>) -> Result<Module, SandboxError> {
    let Some(dir) = cache_dir else {
        let wasm = preinitialize()?;
        return Module::new(engine, &wasm).map_err(|e| SandboxError::wasmtime("compiling the JS runtime", e));
    };
    let path = cache_file(engine, dir);
    if path.exists() {
        // SAFETY: the file was written by `Engine::precompile_module` of this very configuration
        // (its name says so) into the operator's cache directory; a file that fails wasmtime's
        // own header checks is rebuilt below.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => return Ok(module),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "rebuilding unusable cached JS runtime"),
        }
    }
    let wasm = preinitialize()?;
    let artifact = engine
        .precompile_module(&wasm)
        .map_err(|e| SandboxError::wasmtime("compiling the JS runtime", e))?;
    match store(dir, &path, &artifact) {
        // SAFETY: written just above by this engine.
        Ok(()) => unsafe { Module::deserialize_file(engine, &path) }
            .map_err(|e| SandboxError::wasmtime(format!("loading {}", path.display()), e)),
        Err(e) => {
            // The cache only saves start-up time: without it, run from memory.
            tracing::warn!(error = %e, "the JS runtime cache is not writable; the next start compiles the runtime again");
            // SAFETY: produced just above by `precompile_module` of this engine.
            unsafe { Module::deserialize(engine, &artifact) }.map_err(|e| SandboxError::wasmtime("loading the JS runtime", e))
        }
    }
}

/// Writes the compiled runtime to `path` atomically (a temporary file, then a rename).
fn store(dir: &Path, path: &Path, artifact: &[u8]) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(|source| SandboxError::Cache { path: dir.to_owned(), source })?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, artifact).map_err(|source| SandboxError::Cache { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| SandboxError::Cache { path: path.to_owned(), source })
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
