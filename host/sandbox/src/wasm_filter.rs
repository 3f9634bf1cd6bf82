//! Filters written in any language that targets core WebAssembly, through the filter ABI
//! (`filter-sdk/ABI.md`, versions 1 and 2 — version 2 adds per-player state): validation at submission, bounded compilation (caps, then a
//! pool with a time limit, then the verified disk cache), and evaluation under the same limits as
//! JavaScript filters.

use crate::error::{EvalError, SandboxError};
use crate::event::Event;
use crate::limits::{Limits, ModuleCaps};
use crate::pool::{Owner, Slot};
use crate::sandbox::{arm, charge_store, classify, fuel_used, FilterState, SandboxCore, Verdict};
use crate::text;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use wasmparser::{CompositeInnerType, ExternalKind, FuncType, Parser, Payload, TypeRef, Validator, WasmFeatures};
use wasmtime::{InstancePre, Memory, Store, TypedFunc};

/// The newest ABI version this host implements; it implements every version from 1 to this one
/// ([`SUPPORTED_ABI_VERSIONS`]).
pub const SUPPORTED_ABI_VERSION: i32 = 2;
/// The ABI versions this host implements: 1 (one event at a time) and 2 (version 1 plus
/// per-player state, ABI.md §9).
pub const SUPPORTED_ABI_VERSIONS: [i32; 2] = [1, 2];
/// The exports version 2 adds (ABI.md §9), with their types as rejections name them.
const STATE_EXPORTS: [(&str, &str); 3] = [
    ("rtcrm_filter_state", "a function (i32, i32, i32, i32) -> (i32)"),
    ("rtcrm_state_ptr", "a function () -> (i32)"),
    ("rtcrm_state_len", "a function () -> (i32)"),
];
/// The only import module a filter may use.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// Largest module accepted by default (ABI.md §1). A Go filter is about 3.3 MB.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 8 * 1024 * 1024;

/// The WebAssembly proposals a filter may use: the MVP and what current Rust, C, Go and TinyGo
/// toolchains emit by default.
pub const ALLOWED_FEATURES: WasmFeatures = WasmFeatures::MUTABLE_GLOBAL
    .union(WasmFeatures::SATURATING_FLOAT_TO_INT)
    .union(WasmFeatures::SIGN_EXTENSION)
    .union(WasmFeatures::REFERENCE_TYPES)
    .union(WasmFeatures::MULTI_VALUE)
    .union(WasmFeatures::BULK_MEMORY)
    .union(WasmFeatures::SIMD)
    .union(WasmFeatures::FLOATS);

/// Proposals the filter ABI does not need, each with the name a rejection gives.
const FORBIDDEN: [(WasmFeatures, &str); 19] = [
    (WasmFeatures::MULTI_MEMORY, "multi-memory"),
    (WasmFeatures::THREADS, "threads"),
    (WasmFeatures::SHARED_EVERYTHING_THREADS, "shared-everything-threads"),
    (WasmFeatures::MEMORY64, "memory64"),
    (WasmFeatures::EXCEPTIONS, "exception-handling"),
    (WasmFeatures::LEGACY_EXCEPTIONS, "legacy exception-handling"),
    (WasmFeatures::GC, "gc"),
    (WasmFeatures::GC_TYPES, "gc (reference types other than funcref)"),
    (WasmFeatures::FUNCTION_REFERENCES, "function-references"),
    (WasmFeatures::TAIL_CALL, "tail-call"),
    (WasmFeatures::RELAXED_SIMD, "relaxed-simd"),
    (WasmFeatures::EXTENDED_CONST, "extended-const"),
    (WasmFeatures::CUSTOM_PAGE_SIZES, "custom-page-sizes"),
    (WasmFeatures::WIDE_ARITHMETIC, "wide-arithmetic"),
    (WasmFeatures::STACK_SWITCHING, "stack-switching"),
    (WasmFeatures::COMPONENT_MODEL, "component-model"),
    (WasmFeatures::MEMORY_CONTROL, "memory-control"),
    (WasmFeatures::CUSTOM_DESCRIPTORS, "custom-descriptors"),
    (WasmFeatures::COMPACT_IMPORTS, "compact-imports"),
];

/// Every proposal in [`FORBIDDEN`], for the engine's configuration (as wasmtime's type).
pub(crate) const FORBIDDEN_FEATURES: wasmtime::WasmFeatures = {
    let mut bits = 0;
    let mut i = 0;
    while i < FORBIDDEN.len() {
        bits |= FORBIDDEN[i].0.bits();
        i += 1;
    }
    wasmtime::WasmFeatures::from_bits_truncate(bits)
};

/// Why a module was rejected at submission; each names the cause. Names and messages taken from
/// the module are cut to [`MAX_ERROR_TEXT_BYTES`](crate::limits::MAX_ERROR_TEXT_BYTES).
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
    /// Over one of the [`ModuleCaps`], checked before compiling.
    #[error("the module has {found} {what}, over the limit of {max} (filter-sdk/ABI.md §1)")]
    TooComplex {
        /// What was counted (`functions`, `bytes in one function body`, ...).
        what: &'static str,
        /// The module's count.
        found: u64,
        /// The cap.
        max: u64,
    },
    /// Uses a WebAssembly proposal the ABI does not allow.
    #[error("the module uses the WebAssembly {feature} proposal, which the filter ABI (versions 1 and 2) does not allow (filter-sdk/ABI.md §1): {detail}")]
    UnsupportedFeature {
        /// The proposal(s), e.g. `multi-memory`.
        feature: String,
        /// The validator's message.
        detail: String,
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
    #[error("the module declares filter ABI version {declared}; this host implements versions 1 to {supported}")]
    UnsupportedAbiVersion {
        /// What the module declared.
        declared: i32,
        /// What the host implements.
        supported: i32,
    },
    /// The module exports one of version 2's state functions but does not declare version 2
    /// (`rtcrm_abi_version` absent or returning 1).
    #[error("the module exports `{name}`, a function of filter ABI version 2, but declares version {declared}: a module with per-player state returns 2 from rtcrm_abi_version (filter-sdk/ABI.md §9)")]
    StateExportWithoutVersion2 {
        /// The export.
        name: &'static str,
        /// The version it declares.
        declared: i32,
    },
    /// A campaign with `state` and a module that cannot keep one (ABI version 1); see
    /// [`CompiledFilter::check_state_support`](crate::CompiledFilter::check_state_support).
    #[error("the campaign has `state`, but its module implements filter ABI version {declared}, which sees one event at a time; per-player state needs ABI version 2: export rtcrm_filter_state, rtcrm_state_ptr and rtcrm_state_len and return 2 from rtcrm_abi_version (filter-sdk/ABI.md §9). The SDKs build it from a filter of the state: Rust `#[filter] fn f(event: &Event, state: &mut State) -> bool`, C `RTCRM_FILTER_STATE(f)` with `int f(rtcrm_event event, rtcrm_state *state)`, Go `filter.HandleState(f)` (every module of the Go SDK is version 2: rebuild it)")]
    StateNeedsAbiVersion2 {
        /// The version the module declares.
        declared: i32,
    },
    /// Compiling took longer than the sandbox's `compile_timeout`.
    #[error("compiling the module took longer than {} s, the limit (filter-sdk/ABI.md §1); make it smaller or simpler", limit.as_secs_f64())]
    CompileTimeout {
        /// The limit.
        limit: Duration,
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
    /// The ABI version the module declares (1 without `rtcrm_abi_version`).
    abi_version: i32,
    size: usize,
    from_cache: bool,
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

    /// Whether the compiled code came from the disk cache (no compilation this time).
    pub fn loaded_from_cache(&self) -> bool {
        self.from_cache
    }

    /// The ABI version the module declares: 1 (also when it has no `rtcrm_abi_version`) or 2.
    pub fn abi_version(&self) -> i32 {
        self.abi_version
    }

    /// Whether the module can keep a per-player state (ABI version 2).
    pub fn supports_state(&self) -> bool {
        self.abi_version >= 2
    }

    /// `Ok` when the module can keep a per-player state, else why a campaign with `state`
    /// cannot use it.
    pub fn check_state_support(&self) -> Result<(), WasmError> {
        if self.supports_state() {
            Ok(())
        } else {
            Err(WasmError::StateNeedsAbiVersion2 { declared: self.abi_version })
        }
    }
}

impl std::fmt::Debug for CompiledWasm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledWasm")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .field("abi_version", &self.abi_version)
            .finish()
    }
}

/// What the submission scan learns about a module's exports.
struct ModuleShape {
    /// Function types by function index (imports first); `None` for a non-function type.
    func_types: Vec<Option<FuncType>>,
    exports: Vec<(String, ExternalKind, u32)>,
}

fn too_complex(what: &'static str, found: u64, max: u64) -> Result<(), WasmError> {
    if found > max {
        Err(WasmError::TooComplex { what, found, max })
    } else {
        Ok(())
    }
}

fn invalid(e: wasmparser::BinaryReaderError) -> WasmError {
    WasmError::Invalid(text::bounded(&e.to_string()))
}

/// Reads the module's sections without compiling or validating code: checks the [`ModuleCaps`]
/// and the imports (ABI.md §4), and collects what the export check needs. Linear in the module's
/// size, and stops at the first cap exceeded (a module of 200,000 functions is refused at its
/// function section).
fn scan(bytes: &[u8], caps: &ModuleCaps) -> Result<ModuleShape, WasmError> {
    let mut types: Vec<Option<FuncType>> = Vec::new();
    let mut shape = ModuleShape { func_types: Vec::new(), exports: Vec::new() };
    let mut imported_funcs = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                return Err(WasmError::UnsupportedFeature {
                    feature: "component-model".into(),
                    detail: "the bytes are a component, not a core module".into(),
                })
            }
            Payload::TypeSection(reader) => {
                too_complex("types", reader.count().into(), caps.max_types.into())?;
                for group in reader {
                    for sub in group.map_err(invalid)?.into_types() {
                        types.push(match sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(f),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                let mut count = 0u64;
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    count += 1;
                    too_complex("imports", count, caps.max_imports.into())?;
                    let socket = import.name.starts_with("sock_");
                    let TypeRef::Func(ty) = import.ty else {
                        return Err(forbidden(import.module, import.name));
                    };
                    if import.module != WASI_MODULE || socket {
                        return Err(forbidden(import.module, import.name));
                    }
                    imported_funcs += 1;
                    shape.func_types.push(types.get(ty as usize).cloned().flatten());
                }
            }
            Payload::FunctionSection(reader) => {
                too_complex("functions", imported_funcs + u64::from(reader.count()), caps.max_functions.into())?;
                for ty in reader {
                    shape.func_types.push(types.get(ty.map_err(invalid)? as usize).cloned().flatten());
                }
            }
            Payload::TableSection(reader) => {
                too_complex("tables", reader.count().into(), caps.max_tables.into())?;
                let mut elements = 0u64;
                for table in reader {
                    elements = elements.saturating_add(table.map_err(invalid)?.ty.initial);
                    too_complex("table elements", elements, caps.max_table_elements)?;
                }
            }
            Payload::GlobalSection(reader) => too_complex("globals", reader.count().into(), caps.max_globals.into())?,
            Payload::ExportSection(reader) => {
                too_complex("exports", reader.count().into(), caps.max_exports.into())?;
                for export in reader {
                    let export = export.map_err(invalid)?;
                    shape.exports.push((export.name.to_owned(), export.kind, export.index));
                }
            }
            Payload::ElementSection(reader) => {
                too_complex("element segments", reader.count().into(), caps.max_element_segments.into())?
            }
            Payload::DataSection(reader) => too_complex("data segments", reader.count().into(), caps.max_data_segments.into())?,
            Payload::CodeSectionStart { range, .. } => {
                too_complex("bytes of code", range.len() as u64, caps.max_code_bytes.into())?
            }
            Payload::CodeSectionEntry(body) => {
                too_complex("bytes in one function body", body.range().len() as u64, caps.max_function_body_bytes.into())?;
                let mut locals = 0u64;
                let mut reader = body.get_locals_reader().map_err(invalid)?;
                for _ in 0..reader.get_count() {
                    let (count, _) = reader.read().map_err(invalid)?;
                    locals += u64::from(count);
                }
                too_complex("locals in one function", locals, caps.max_locals_per_function.into())?;
            }
            _ => {}
        }
    }
    Ok(shape)
}

fn forbidden(module: &str, name: &str) -> WasmError {
    WasmError::ForbiddenImport { module: text::bounded(module), name: text::bounded(name) }
}

/// Validates `bytes` with only [`ALLOWED_FEATURES`]; when that fails but the module is valid
/// WebAssembly, names the proposal it needs.
fn check_features(bytes: &[u8]) -> Result<(), WasmError> {
    let validate = |features: WasmFeatures| Validator::new_with_features(features).validate_all(bytes).map(drop);
    let Err(err) = validate(ALLOWED_FEATURES) else { return Ok(()) };
    let detail = text::bounded(&err.to_string());
    if validate(WasmFeatures::all()).is_err() {
        return Err(WasmError::Invalid(detail));
    }
    // Most modules need one proposal: the first that makes it valid names it. Otherwise name
    // every proposal without which it is invalid.
    let single = FORBIDDEN.iter().find(|(flag, _)| validate(ALLOWED_FEATURES | *flag).is_ok());
    let feature = match single {
        Some((_, name)) => (*name).to_owned(),
        None => {
            let needed: Vec<&str> = FORBIDDEN
                .iter()
                .filter(|(flag, _)| validate(WasmFeatures::all().difference(*flag)).is_err())
                .map(|(_, name)| *name)
                .collect();
            if needed.is_empty() {
                "(unidentified)".to_owned()
            } else {
                needed.join(", ")
            }
        }
    };
    Err(WasmError::UnsupportedFeature { feature, detail })
}

fn describe(kind: ExternalKind, ty: Option<&FuncType>) -> String {
    match (kind, ty) {
        (ExternalKind::Func, Some(f)) => {
            let list = |types: &[wasmparser::ValType]| types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            format!("a function ({}) -> ({})", list(f.params()), list(f.results()))
        }
        (ExternalKind::Func, None) => "a function of an unknown type".into(),
        (ExternalKind::Memory, _) => "a memory".into(),
        (ExternalKind::Table, _) => "a table".into(),
        (ExternalKind::Global, _) => "a global".into(),
        _ => "another kind of export".into(),
    }
}

/// What [`check_exports`] found among the optional exports.
struct OptionalExports {
    initialize: bool,
    /// The first of version 2's state exports present, if any, and whether all are.
    state_export: Option<&'static str>,
    all_state_exports: bool,
}

/// Checks the exports of ABI.md §1 and §9 (the types of those present; which version needs which
/// is checked once the version is known).
fn check_exports(shape: &ModuleShape) -> Result<OptionalExports, WasmError> {
    use wasmparser::ValType::I32;
    let export = |name: &str| shape.exports.iter().find(|(n, _, _)| n == name);
    let func_type = |index: u32| shape.func_types.get(index as usize).and_then(Option::as_ref);
    let is_func = |kind: ExternalKind, index: u32, params: &[wasmparser::ValType], results: &[wasmparser::ValType]| {
        kind == ExternalKind::Func && func_type(index).is_some_and(|f| f.params() == params && f.results() == results)
    };
    type Signature<'a> = (&'a [wasmparser::ValType], &'a [wasmparser::ValType]);
    let required: [(&'static str, &'static str, Option<Signature>); 3] = [
        ("memory", "a memory", None),
        ("rtcrm_alloc", "a function (i32) -> (i32)", Some((&[I32], &[I32]))),
        ("rtcrm_filter", "a function (i32, i32) -> (i32)", Some((&[I32, I32], &[I32]))),
    ];
    for (name, expected, func) in required {
        let &(_, kind, index) = export(name).ok_or(WasmError::MissingExport { name, expected })?;
        let ok = match func {
            None => kind == ExternalKind::Memory,
            Some((params, results)) => is_func(kind, index, params, results),
        };
        if !ok {
            return Err(WasmError::WrongExport { name, found: describe(kind, func_type(index)), expected });
        }
    }
    let optional: [(&'static str, &'static str, &[wasmparser::ValType], &[wasmparser::ValType]); 5] = [
        ("rtcrm_abi_version", "a function () -> (i32)", &[], &[I32]),
        ("_initialize", "a function () -> ()", &[], &[]),
        (STATE_EXPORTS[0].0, STATE_EXPORTS[0].1, &[I32, I32, I32, I32], &[I32]),
        (STATE_EXPORTS[1].0, STATE_EXPORTS[1].1, &[], &[I32]),
        (STATE_EXPORTS[2].0, STATE_EXPORTS[2].1, &[], &[I32]),
    ];
    for (name, expected, params, results) in optional {
        if let Some(&(_, kind, index)) = export(name) {
            if !is_func(kind, index, params, results) {
                return Err(WasmError::WrongExport { name, found: describe(kind, func_type(index)), expected });
            }
        }
    }
    let present: Vec<&'static str> = STATE_EXPORTS.iter().map(|(n, _)| *n).filter(|n| export(n).is_some()).collect();
    Ok(OptionalExports {
        initialize: export("_initialize").is_some(),
        state_export: present.first().copied(),
        all_state_exports: present.len() == STATE_EXPORTS.len(),
    })
}

/// Checks that the exports fit the declared version (ABI.md §6, §9): version 2 has every state
/// export, version 1 none.
fn check_version_exports(declared: i32, exports: &OptionalExports, shape: &ModuleShape) -> Result<(), WasmError> {
    if declared >= 2 && !exports.all_state_exports {
        let (name, _) = STATE_EXPORTS.iter().find(|(n, _)| !shape.exports.iter().any(|(e, _, _)| e == n)).expect("one is missing");
        let expected = match *name {
            "rtcrm_filter_state" => "a function (i32, i32, i32, i32) -> (i32), required by ABI version 2",
            _ => "a function () -> (i32), required by ABI version 2",
        };
        return Err(WasmError::MissingExport { name, expected });
    }
    if declared < 2 {
        if let Some(name) = exports.state_export {
            return Err(WasmError::StateExportWithoutVersion2 { name, declared });
        }
    }
    Ok(())
}

/// Validates and compiles a filter module (ABI.md §7): size, shape caps and imports, exports,
/// proposals — all before any compilation — then the cache or the compiler pool, then one
/// instantiation that runs `_initialize` and reads the declared version.
pub(crate) fn load(core: &Arc<SandboxCore>, bytes: &[u8]) -> Result<CompiledWasm, WasmError> {
    let max = core.config.max_module_bytes;
    if bytes.len() > max {
        return Err(WasmError::TooLarge { size: bytes.len(), max });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(WasmError::Invalid("it does not start with the WebAssembly magic number `\\0asm`".into()));
    }
    let shape = scan(bytes, &core.config.module_caps)?;
    let exports = check_exports(&shape)?;
    let has_initialize = exports.initialize;
    check_features(bytes)?;
    let sha256 = hex::encode(Sha256::digest(bytes));
    let cache_name = core.cache.as_ref().map(|c| c.file_name("wasm", &sha256));
    let cached = core.cache.as_ref().zip(cache_name.as_deref()).and_then(|(c, name)| c.load(&core.engine, name));
    let from_cache = cached.is_some();
    let module = match cached {
        Some(module) => module,
        None => {
            let module = core.compiler.compile(&core.engine, bytes.into()).map_err(|e| match e {
                crate::compile::CompileFailure::TimedOut(limit) => WasmError::CompileTimeout { limit },
                crate::compile::CompileFailure::Failed(message) => WasmError::Invalid(text::bound(message)),
            })?;
            if let (Some(cache), Some(name)) = (&core.cache, &cache_name) {
                match module.serialize() {
                    Ok(artifact) => {
                        if let Err(e) = cache.store(name, &artifact) {
                            tracing::warn!(error = %e, "caching a compiled filter module failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "serializing a compiled filter module failed"),
                }
            }
            module
        }
    };
    let pre = core.linker.instantiate_pre(&module).map_err(|e| WasmError::Init(text::bound(format!("{e:#}"))))?;
    // Taken as version 1 until the module says otherwise (the validation instance below never
    // looks up the state exports).
    let mut compiled = CompiledWasm { pre, sha256, has_initialize, abi_version: 1, size: bytes.len(), from_cache };
    // Instantiate once: runs `_initialize` and reads the declared version.
    let limits = core.config.limits;
    let mut instance = ModuleInstance::new(core, &compiled, "validation".into(), limits, Owner::Sandbox)
        .map_err(|e| WasmError::Init(format!("{}: {e}", e.kind())))?;
    if shape.exports.iter().any(|(n, _, _)| n == "rtcrm_abi_version") {
        let version = instance.instance_func::<(), i32>("rtcrm_abi_version").map_err(WasmError::Init)?;
        arm(&mut instance.store, &limits);
        let declared = version
            .call(&mut instance.store, ())
            .map_err(|e| WasmError::Init(format!("rtcrm_abi_version: {}", classify(&mut instance.store, e, &limits))))?;
        if !SUPPORTED_ABI_VERSIONS.contains(&declared) {
            return Err(WasmError::UnsupportedAbiVersion { declared, supported: SUPPORTED_ABI_VERSION });
        }
        compiled.abi_version = declared;
    }
    check_version_exports(compiled.abi_version, &exports, &shape)?;
    Ok(compiled)
}

/// A live instance of a filter module. Fields drop in order: the store before the budget's slot.
struct ModuleInstance {
    store: Store<FilterState>,
    instance: wasmtime::Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    filter: TypedFunc<(i32, i32), i32>,
    _slot: Slot,
    /// Version 2's state exports (ABI.md §9), for a module that declares version 2.
    state: Option<StateExports>,
}

/// `rtcrm_filter_state`, `rtcrm_state_ptr`, `rtcrm_state_len`.
#[derive(Clone)]
struct StateExports {
    filter: TypedFunc<(i32, i32, i32, i32), i32>,
    ptr: TypedFunc<(), i32>,
    len: TypedFunc<(), i32>,
}

impl ModuleInstance {
    fn new(core: &SandboxCore, compiled: &CompiledWasm, name: Arc<str>, limits: Limits, owner: Owner) -> Result<ModuleInstance, EvalError> {
        let slot = core.slot(owner).map_err(|e| match e {
            SandboxError::Capacity { limit } => EvalError::Capacity { limit },
            other => EvalError::Trap(other.to_string()),
        })?;
        let mut store = core.new_store(name, limits);
        let instance = compiled.pre.instantiate(&mut store).map_err(|e| match store.data().budget.exceeded {
            Some(requested) => EvalError::Memory { requested, limit: limits.memory_bytes },
            None => match core.pool_exhausted(&e) {
                Some(_) => EvalError::Capacity { limit: core.slots.max().unwrap_or_default() },
                None => classify(&mut store, e, &limits),
            },
        })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| EvalError::Trap("the module exports no memory".into()))?;
        store.data_mut().memory = Some(memory);
        core.settle(&store, memory);
        let typed = |store: &mut Store<FilterState>, name: &str| {
            instance.get_func(&mut *store, name).ok_or_else(|| EvalError::Trap(format!("the module does not export `{name}`")))
        };
        let alloc = typed(&mut store, "rtcrm_alloc")?.typed(&store).map_err(|e| EvalError::Trap(text::bound(e.to_string())))?;
        let filter = typed(&mut store, "rtcrm_filter")?.typed(&store).map_err(|e| EvalError::Trap(text::bound(e.to_string())))?;
        let state = match compiled.abi_version {
            1 => None,
            _ => Some(StateExports {
                filter: typed(&mut store, STATE_EXPORTS[0].0)?.typed(&store).map_err(|e| EvalError::Trap(text::bound(e.to_string())))?,
                ptr: typed(&mut store, STATE_EXPORTS[1].0)?.typed(&store).map_err(|e| EvalError::Trap(text::bound(e.to_string())))?,
                len: typed(&mut store, STATE_EXPORTS[2].0)?.typed(&store).map_err(|e| EvalError::Trap(text::bound(e.to_string())))?,
            }),
        };
        let mut instance = ModuleInstance { store, instance, memory, alloc, filter, state, _slot: slot };
        if compiled.has_initialize {
            let init = instance.instance_func::<(), ()>("_initialize").map_err(EvalError::Trap)?;
            arm(&mut instance.store, &limits);
            let result = init.call(&mut instance.store, ());
            instance.store.data_mut().forward_output(false);
            result.map_err(|e| classify(&mut instance.store, e, &limits))?;
        }
        Ok(instance)
    }

    fn instance_func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(&mut self, name: &str) -> Result<TypedFunc<P, R>, String> {
        self.instance.get_typed_func::<P, R>(&mut self.store, name).map_err(|e| text::bound(format!("{name}: {e}")))
    }

    fn eval(&mut self, limits: &Limits, event: &Event) -> Result<Verdict, EvalError> {
        let bytes = event.as_bytes();
        let len = i32::try_from(bytes.len()).map_err(|_| EvalError::Event { reason: "the event is over 2 GiB".into() })?;
        arm(&mut self.store, limits);
        // The copy into the filter's memory is host work on its behalf: charged first.
        charge_store(&mut self.store, bytes.len() as u64, limits)?;
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
        let fuel_used = fuel_used(&self.store, limits);
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
    core: Arc<SandboxCore>,
    compiled: CompiledWasm,
    name: Arc<str>,
    limits: Limits,
    instance: Option<ModuleInstance>,
    rebuilds: u64,
}

impl WasmFilter {
    pub(crate) fn new(core: Arc<SandboxCore>, compiled: &CompiledWasm, name: &str, limits: Limits) -> Result<WasmFilter, EvalError> {
        let instance = ModuleInstance::new(&core, compiled, name.into(), limits, Owner::Filter)?;
        Ok(WasmFilter { core, compiled: compiled.clone(), name: name.into(), limits, instance: Some(instance), rebuilds: 0 })
    }

    /// Evaluates the filter against `event`.
    pub fn eval(&mut self, event: &Event) -> Result<Verdict, EvalError> {
        self.core.admit(event)?;
        if self.instance.is_none() {
            self.instance = Some(ModuleInstance::new(&self.core, &self.compiled, self.name.clone(), self.limits, Owner::Filter)?);
        }
        let outcome = self.instance.as_mut().expect("built above").eval(&self.limits, event);
        if matches!(&outcome, Err(e) if !matches!(e.kind(), crate::ErrorKind::Exception | crate::ErrorKind::Event | crate::ErrorKind::Capacity)) {
            self.instance = None;
            self.rebuilds += 1;
            self.instance = ModuleInstance::new(&self.core, &self.compiled, self.name.clone(), self.limits, Owner::Filter).ok();
        }
        outcome
    }

    /// How many times its instance was discarded after a trap and rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }
}

// ---- ABI version 2: per-player state (ABI.md §9) -------------------------------------------------

/// What the state exports left after `rtcrm_filter_state` returned 1 or 0.
enum NewState {
    /// `rtcrm_state_len() == -1`: keep the state passed in.
    Unchanged,
    /// The bytes at `[rtcrm_state_ptr(), + rtcrm_state_len())`.
    Bytes(Vec<u8>),
    /// Over the limit: `size` bytes (not copied).
    TooLarge { size: usize },
    /// A length below -1.
    BadLength(i32),
}

impl ModuleInstance {
    /// One evaluation through `rtcrm_filter_state` (ABI.md §9): the event and the stored state
    /// in one `rtcrm_alloc` buffer, then the new state read back.
    fn eval_with_state(&mut self, limits: &Limits, event: &Event, state: &str, max: usize) -> Result<(Verdict, String), EvalError> {
        let Some(exports) = self.state.clone() else {
            return Err(EvalError::StateUnsupported { abi_version: 1 });
        };
        let (bytes, stored) = (event.as_bytes(), state.as_bytes());
        let too_large = || EvalError::Event { reason: "the event and its state are over 2 GiB".into() };
        let event_len = i32::try_from(bytes.len()).map_err(|_| too_large())?;
        let state_len = i32::try_from(stored.len()).map_err(|_| too_large())?;
        let total = event_len.checked_add(state_len).ok_or_else(too_large)?;
        arm(&mut self.store, limits);
        // Both copies into the filter's memory are host work on its behalf: charged first.
        charge_store(&mut self.store, (bytes.len() + stored.len()) as u64, limits)?;
        let result = (|| -> wasmtime::Result<(i32, Option<NewState>)> {
            let ptr = self.alloc.call(&mut self.store, total)?;
            if ptr <= 0 {
                return Err(wasmtime::Error::msg(format!("rtcrm_alloc({total}) returned {ptr}")));
            }
            let at = ptr as u32 as usize;
            self.memory.write(&mut self.store, at, bytes)?;
            self.memory.write(&mut self.store, at + bytes.len(), stored)?;
            let state_ptr = ptr.checked_add(event_len).ok_or_else(|| wasmtime::Error::msg("the state's address is past 2 GiB"))?;
            let code = exports.filter.call(&mut self.store, (ptr, event_len, state_ptr, state_len))?;
            if code != 0 && code != 1 {
                return Ok((code, None));
            }
            let len = exports.len.call(&mut self.store, ())?;
            let new = match len {
                -1 => NewState::Unchanged,
                n if n < -1 => NewState::BadLength(n),
                n if n as usize > max => NewState::TooLarge { size: n as usize },
                n => {
                    let at = exports.ptr.call(&mut self.store, ())? as u32 as usize;
                    // Reading and checking the new state: charged before, twice its bytes.
                    crate::state::charge(&mut self.store, 2 * n as u64)?;
                    let mut out = vec![0; n as usize];
                    self.memory.read(&self.store, at, &mut out).map_err(|_| {
                        wasmtime::Error::msg(format!("rtcrm_state_ptr() + rtcrm_state_len() ({at} + {n}) is past the module's memory"))
                    })?;
                    NewState::Bytes(out)
                }
            };
            Ok((code, Some(new)))
        })();
        self.store.data_mut().forward_output(false);
        let (code, new) = result.map_err(|e| classify(&mut self.store, e, limits))?;
        let fuel_used = fuel_used(&self.store, limits);
        let matched = match code {
            1 => true,
            0 => false,
            n if n < 0 => return Err(EvalError::Exception(format!("filter returned error code {n}"))),
            n => return Err(EvalError::Trap(format!("filter returned {n}, which is not a status code of ABI version 2"))),
        };
        let state = match new.expect("read after status 0 or 1") {
            NewState::Unchanged => state.to_owned(),
            NewState::Bytes(bytes) => crate::state::check_new_state(bytes, max)?,
            NewState::TooLarge { size } => return Err(EvalError::State { size, max }),
            NewState::BadLength(n) => {
                return Err(EvalError::StateInvalid(format!("rtcrm_state_len returned {n}; a length, or -1 for an unchanged state, was expected")))
            }
        };
        Ok((Verdict { matched, fuel_used }, state))
    }
}

impl WasmFilter {
    /// See [`Filter::eval_with_state`](crate::Filter::eval_with_state): a module of ABI version
    /// 2 is called through `rtcrm_filter_state`; one of version 1 fails with
    /// [`EvalError::StateUnsupported`] without running.
    pub fn eval_with_state(&mut self, event: &Event, state: Option<&str>, max_bytes: usize) -> Result<(Verdict, String), EvalError> {
        if !self.compiled.supports_state() {
            return Err(EvalError::StateUnsupported { abi_version: self.compiled.abi_version });
        }
        self.core.admit(event)?;
        let max = max_bytes.min(self.core.config.state_max_bytes);
        let state = state.unwrap_or(crate::state::EMPTY_STATE);
        // The module reads the state as the ABI promises it: a JSON object (ABI.md §9.2).
        crate::state::check_object(state).map_err(|e| match e {
            EvalError::StateInvalid(why) => EvalError::StateInvalid(format!("the stored state is not a JSON object ({why})")),
            other => other,
        })?;
        if self.instance.is_none() {
            self.instance = Some(ModuleInstance::new(&self.core, &self.compiled, self.name.clone(), self.limits, Owner::Filter)?);
        }
        let outcome = self.instance.as_mut().expect("built above").eval_with_state(&self.limits, event, state, max);
        if matches!(&outcome, Err(e) if !matches!(e.kind(), crate::ErrorKind::Exception | crate::ErrorKind::Event | crate::ErrorKind::Capacity | crate::ErrorKind::State)) {
            self.instance = None;
            self.rebuilds += 1;
            self.instance = ModuleInstance::new(&self.core, &self.compiled, self.name.clone(), self.limits, Owner::Filter).ok();
        }
        outcome
    }

    /// Whether this module can keep a per-player state (ABI version 2).
    pub fn supports_state(&self) -> bool {
        self.compiled.supports_state()
    }

    /// The ABI version the module declares.
    pub fn abi_version(&self) -> i32 {
        self.compiled.abi_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forbidden_and_allowed_proposals_do_not_overlap() {
        let forbidden = WasmFeatures::from_bits_truncate(FORBIDDEN_FEATURES.bits());
        assert!(ALLOWED_FEATURES.intersection(forbidden).is_empty());
        assert!(forbidden.contains(WasmFeatures::MULTI_MEMORY | WasmFeatures::THREADS | WasmFeatures::MEMORY64));
    }
}
