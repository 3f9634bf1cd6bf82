//! Filters written in any language that targets core WebAssembly, through the filter ABI
//! (`filter-sdk/ABI.md`, version 1): validation at submission, and evaluation under the same
//! limits as JavaScript filters.

use crate::error::EvalError;
use crate::event::Event;
use crate::limits::Limits;
use crate::sandbox::{arm, classify, fuel_used, FilterState, Shared, Verdict};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use wasmtime::{ExternType, InstancePre, Memory, Module, Store, TypedFunc, ValType};

/// The ABI versions this host implements.
pub const SUPPORTED_ABI_VERSION: i32 = 1;
/// The only import module a filter may use.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// Largest module accepted by default (ABI.md §1). A Go filter is about 3.3 MB.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 8 * 1024 * 1024;

/// Why a module was rejected at submission; each names the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    /// Over the size cap.
    #[error("the module is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// Not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// An import outside `wasi_snapshot_preview1`, a socket function, or a non-function import.
    #[error("import `{module}.{name}` is not allowed: a filter may import only functions of {WASI_MODULE}, sockets excepted (filter-sdk/ABI.md §4)")]
    ForbiddenImport {
        /// The import's module.
        module: String,
        /// The import's name.
        name: String,
    },
    /// A required export is missing.
    #[error("the module does not export `{name}` ({expected}); see filter-sdk/ABI.md §1")]
    MissingExport {
        /// The export.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// An export has the wrong kind or type.
    #[error("export `{name}` is {found}, expected {expected} (filter-sdk/ABI.md §1)")]
    WrongExport {
        /// The export.
        name: &'static str,
        /// What it is.
        found: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `rtcrm_abi_version` returned a version this host does not implement.
    #[error("the module declares filter ABI version {declared}; this host implements version {supported}")]
    UnsupportedAbiVersion {
        /// What the module declared.
        declared: i32,
        /// What the host implements.
        supported: i32,
    },
    /// Instantiating the module or running `_initialize` failed.
    #[error("initialising the module failed: {0}")]
    Init(String),
}

/// A validated filter module, compiled once, ready to instantiate per campaign.
#[derive(Clone)]
pub struct CompiledWasm {
    pre: InstancePre<FilterState>,
    sha256: String,
    has_initialize: bool,
    size: usize,
}

impl CompiledWasm {
    /// Hex SHA-256 of the module (what triggers carry as `filter_wasm_sha256`).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the module in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl std::fmt::Debug for CompiledWasm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledWasm").field("sha256", &self.sha256).field("size", &self.size).finish()
    }
}

fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let list = |it: &mut dyn Iterator<Item = ValType>| it.map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            format!("a function ({}) -> ({})", list(&mut f.params()), list(&mut f.results()))
        }
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Global(_) => "a global".into(),
        _ => "another kind of export".into(),
    }
}

fn is_func(ty: &ExternType, params: &[ValType], results: &[ValType]) -> bool {
    match ty {
        ExternType::Func(f) => {
            f.params().len() == params.len()
                && f.results().len() == results.len()
                && f.params().zip(params).all(|(a, b)| ValType::eq(&a, b))
                && f.results().zip(results).all(|(a, b)| ValType::eq(&a, b))
        }
        _ => false,
    }
}

/// Validates and compiles a filter module (ABI.md §7).
pub(crate) fn load(shared: &Arc<Shared>, bytes: &[u8], max: usize) -> Result<CompiledWasm, WasmError> {
    if bytes.len() > max {
        return Err(WasmError::TooLarge { size: bytes.len(), max });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(WasmError::Invalid("it does not start with the WebAssembly magic number `\\0asm`".into()));
    }
    let module = Module::new(&shared.engine, bytes).map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
    for import in module.imports() {
        // Sockets are part of WASI preview 1 but no capability a filter may have.
        let socket = import.name().starts_with("sock_");
        if import.module() != WASI_MODULE || !matches!(import.ty(), ExternType::Func(_)) || socket {
            return Err(WasmError::ForbiddenImport { module: import.module().into(), name: import.name().into() });
        }
    }
    let i32 = ValType::I32;
    let required: [(&'static str, &'static str, Option<(&[ValType], &[ValType])>); 3] = [
        ("memory", "a memory", None),
        ("rtcrm_alloc", "a function (i32) -> (i32)", Some((&[i32.clone()], &[i32.clone()]))),
        ("rtcrm_filter", "a function (i32, i32) -> (i32)", Some((&[i32.clone(), i32.clone()], &[i32.clone()]))),
    ];
    for (name, expected, func) in required {
        let ty = module.get_export(name).ok_or(WasmError::MissingExport { name, expected })?;
        let ok = match func {
            None => matches!(ty, ExternType::Memory(_)),
            Some((params, results)) => is_func(&ty, params, results),
        };
        if !ok {
            return Err(WasmError::WrongExport { name, found: describe(&ty), expected });
        }
    }
    let optional: [(&'static str, &'static str, &[ValType], &[ValType]); 2] =
        [("rtcrm_abi_version", "a function () -> (i32)", &[], &[i32.clone()]), ("_initialize", "a function () -> ()", &[], &[])];
    for (name, expected, params, results) in optional {
        if let Some(ty) = module.get_export(name) {
            if !is_func(&ty, params, results) {
                return Err(WasmError::WrongExport { name, found: describe(&ty), expected });
            }
        }
    }
    let pre = shared.linker.instantiate_pre(&module).map_err(|e| WasmError::Init(format!("{e:#}")))?;
    let compiled = CompiledWasm {
        pre,
        sha256: hex::encode(Sha256::digest(bytes)),
        has_initialize: module.get_export("_initialize").is_some(),
        size: bytes.len(),
    };
    // Instantiate once: runs `_initialize` and reads the declared version.
    let limits = shared.config.limits;
    let mut live = Live::new(shared, &compiled, "validation".into(), limits).map_err(|e| WasmError::Init(format!("{}: {e}", e.kind())))?;
    if module.get_export("rtcrm_abi_version").is_some() {
        let version = live.instance_func::<(), i32>("rtcrm_abi_version").map_err(WasmError::Init)?;
        arm(&mut live.store, shared, &limits);
        let declared = version
            .call(&mut live.store, ())
            .map_err(|e| WasmError::Init(format!("rtcrm_abi_version: {}", classify(&mut live.store, e, &limits))))?;
        if declared != SUPPORTED_ABI_VERSION {
            return Err(WasmError::UnsupportedAbiVersion { declared, supported: SUPPORTED_ABI_VERSION });
        }
    }
    Ok(compiled)
}

/// A live instance of a filter module.
struct Live {
    store: Store<FilterState>,
    instance: wasmtime::Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    filter: TypedFunc<(i32, i32), i32>,
}

impl Live {
    fn new(shared: &Shared, compiled: &CompiledWasm, name: Arc<str>, limits: Limits) -> Result<Live, EvalError> {
        let mut store = shared.new_store(name, limits);
        let instance = compiled.pre.instantiate(&mut store).map_err(|e| match store.data().memory_exceeded {
            Some(requested) => EvalError::Memory { requested, limit: limits.memory_bytes },
            None => EvalError::Trap(format!("instantiating the filter: {e}")),
        })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| EvalError::Trap("the module exports no memory".into()))?;
        store.data_mut().memory = Some(memory);
        let typed = |store: &mut Store<FilterState>, name: &str| {
            instance.get_func(&mut *store, name).ok_or_else(|| EvalError::Trap(format!("the module does not export `{name}`")))
        };
        let alloc = typed(&mut store, "rtcrm_alloc")?.typed(&store).map_err(|e| EvalError::Trap(e.to_string()))?;
        let filter = typed(&mut store, "rtcrm_filter")?.typed(&store).map_err(|e| EvalError::Trap(e.to_string()))?;
        let mut live = Live { store, instance, memory, alloc, filter };
        if compiled.has_initialize {
            let init = live.instance_func::<(), ()>("_initialize").map_err(EvalError::Trap)?;
            arm(&mut live.store, shared, &limits);
            let result = init.call(&mut live.store, ());
            live.store.data_mut().forward_output(false);
            result.map_err(|e| classify(&mut live.store, e, &limits))?;
        }
        Ok(live)
    }

    fn instance_func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(&mut self, name: &str) -> Result<TypedFunc<P, R>, String> {
        self.instance.get_typed_func::<P, R>(&mut self.store, name).map_err(|e| format!("{name}: {e}"))
    }

    fn eval(&mut self, shared: &Shared, limits: &Limits, event: &Event) -> Result<Verdict, EvalError> {
        let bytes = event.as_bytes();
        let len = i32::try_from(bytes.len()).map_err(|_| EvalError::Trap("event over 2 GiB".into()))?;
        arm(&mut self.store, shared, limits);
        let result = (|| -> wasmtime::Result<i32> {
            let ptr = self.alloc.call(&mut self.store, len)?;
            if ptr <= 0 {
                return Err(wasmtime::Error::msg(format!("rtcrm_alloc({len}) returned {ptr}")));
            }
            self.memory.write(&mut self.store, ptr as u32 as usize, bytes)?;
            self.filter.call(&mut self.store, (ptr, len))
        })();
        self.store.data_mut().forward_output(false);
        let code = result.map_err(|e| classify(&mut self.store, e, limits))?;
        let fuel_used = fuel_used(&self.store, shared, limits);
        match code {
            1 => Ok(Verdict { matched: true, fuel_used }),
            0 => Ok(Verdict { matched: false, fuel_used }),
            n if n < 0 => Err(EvalError::Exception(format!("filter returned error code {n}"))),
            n => Err(EvalError::Trap(format!("filter returned {n}, which is not a status code of ABI version 1"))),
        }
    }
}

/// One campaign's WebAssembly filter: an instance of its own, reused across events, rebuilt
/// after any trap.
pub struct WasmFilter {
    shared: Arc<Shared>,
    compiled: CompiledWasm,
    name: Arc<str>,
    limits: Limits,
    live: Option<Live>,
    rebuilds: u64,
}

impl WasmFilter {
    pub(crate) fn new(shared: Arc<Shared>, compiled: &CompiledWasm, name: &str, limits: Limits) -> Result<WasmFilter, EvalError> {
        let live = Live::new(&shared, compiled, name.into(), limits)?;
        Ok(WasmFilter { shared, compiled: compiled.clone(), name: name.into(), limits, live: Some(live), rebuilds: 0 })
    }

    /// Evaluates the filter against `event`.
    pub fn eval(&mut self, event: &Event) -> Result<Verdict, EvalError> {
        if self.live.is_none() {
            self.live = Some(Live::new(&self.shared, &self.compiled, self.name.clone(), self.limits)?);
        }
        let outcome = self.live.as_mut().expect("built above").eval(&self.shared, &self.limits, event);
        if matches!(&outcome, Err(e) if e.kind() != crate::ErrorKind::Exception) {
            self.live = None;
            self.rebuilds += 1;
            self.live = Live::new(&self.shared, &self.compiled, self.name.clone(), self.limits).ok();
        }
        outcome
    }

    /// How many times its instance was discarded after a trap and rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }
}
