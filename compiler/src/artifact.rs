//! The per-campaign module: a javy-style dynamically linked WebAssembly module.
//!
//! ```text
//! (module
//!   (import "rtcrm-js-v1" "memory" (memory 0))
//!   (import "rtcrm-js-v1" "cabi_realloc" (func (param i32 i32 i32 i32) (result i32)))
//!   (import "rtcrm-js-v1" "rtcrm_load" (func (param i32 i32) (result i32)))
//!   (func (export "_start") ;; copy the bytecode into the runtime's memory, load it, trap on failure
//!     ...)
//!   (data "<kind byte + QuickJS bytecode>"))   ;; passive segment 0
//! ```
//!
//! Like Javy's dynamic modules it holds only the filter's bytecode and runs against a runtime
//! instance linked under the namespace. Unlike them, its entry point is the runtime's
//! `rtcrm_load` (which keeps the function the code yields) instead of Javy's `invoke`. The host
//! reads the bytecode straight out of the data segment ([`read_module`]) and loads it into a
//! campaign's runtime instance; `_start` makes the module runnable by any linker as well.
//!
//! The namespace carries the runtime's version: a module built for another runtime is refused
//! with [`ModuleError::WrongRuntime`], naming both.

use wasm_encoder::{
    CodeSection, DataCountSection, DataSection, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, ImportSection, Instruction, MemoryType, Module, TypeSection, ValType,
};
use wasmparser::{DataKind, Parser, Payload, TypeRef};

/// The import namespace of the runtime this build carries. Must equal the `import_namespace!` in
/// `compiler/runtime/src/lib.rs` (a test checks it).
pub const RUNTIME_NAMESPACE: &str = "rtcrm-js-v1";

/// Prefix shared by every version of the runtime namespace.
const NAMESPACE_PREFIX: &str = "rtcrm-js-v";

/// Why bytes are not a loadable campaign module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not a WebAssembly module.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// The module was built for another version of the JS runtime.
    #[error("this module was built for JavaScript runtime `{found}`, but this host runs `{expected}`; recompile the filter's source with this rtcrm (`rtcrm filter compile`)")]
    WrongRuntime {
        /// The namespace the module imports.
        found: String,
        /// The namespace of this host's runtime.
        expected: String,
    },
    /// A WebAssembly module, but not one produced by `rtcrm filter compile`.
    #[error("not an rtcrm JavaScript filter module: {0}")]
    NotAFilterModule(String),
}

/// Builds the module for `bytecode` (the runtime's kind byte followed by QuickJS bytecode),
/// importing the runtime under `namespace` (normally [`RUNTIME_NAMESPACE`]).
pub fn build_module(namespace: &str, bytecode: &[u8]) -> Vec<u8> {
    let len = i32::try_from(bytecode.len()).expect("bytecode is smaller than 2 GiB");
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 4], [ValType::I32]); // 0: cabi_realloc
    types.ty().function([ValType::I32; 2], [ValType::I32]); // 1: rtcrm_load
    types.ty().function([], []); // 2: _start

    let mut imports = ImportSection::new();
    let memory = MemoryType { minimum: 0, maximum: None, memory64: false, shared: false, page_size_log2: None };
    imports.import(namespace, "memory", EntityType::Memory(memory));
    imports.import(namespace, "cabi_realloc", EntityType::Function(0));
    imports.import(namespace, "rtcrm_load", EntityType::Function(1));

    let mut functions = FunctionSection::new();
    functions.function(2);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 2);

    let mut start = Function::new([(1, ValType::I32)]);
    for ins in [
        Instruction::I32Const(0),
        Instruction::I32Const(0),
        Instruction::I32Const(1),
        Instruction::I32Const(len),
        Instruction::Call(0),
        Instruction::LocalTee(0),
        Instruction::I32Const(0),
        Instruction::I32Const(len),
        Instruction::MemoryInit { mem: 0, data_index: 0 },
        Instruction::DataDrop(0),
        Instruction::LocalGet(0),
        Instruction::I32Const(len),
        Instruction::Call(1),
        Instruction::If(wasm_encoder::BlockType::Empty),
        Instruction::Unreachable,
        Instruction::End,
        Instruction::End,
    ] {
        start.instruction(&ins);
    }
    let mut code = CodeSection::new();
    code.function(&start);
    let mut data = DataSection::new();
    data.passive(bytecode.iter().copied());

    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&exports)
        .section(&DataCountSection { count: 1 })
        .section(&code)
        .section(&data);
    module.finish()
}

/// Checks that `module` is a campaign module for this runtime and returns its bytecode.
pub fn read_module(module: &[u8]) -> Result<Vec<u8>, ModuleError> {
    let mut namespace: Option<String> = None;
    let mut bytecode: Option<Vec<u8>> = None;
    let mut saw_header = false;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| ModuleError::NotWasm(e.to_string()))?;
        match payload {
            Payload::Version { .. } => saw_header = true,
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| ModuleError::NotWasm(e.to_string()))?;
                    if !import.module.starts_with(NAMESPACE_PREFIX) {
                        return Err(ModuleError::NotAFilterModule(format!(
                            "it imports `{}.{}`; a JavaScript filter module imports only the rtcrm JS runtime",
                            import.module, import.name
                        )));
                    }
                    if matches!(import.ty, TypeRef::Func(_)) || matches!(import.ty, TypeRef::Memory(_)) {
                        namespace.get_or_insert_with(|| import.module.to_owned());
                    }
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(|e| ModuleError::NotWasm(e.to_string()))?;
                    if matches!(data.kind, DataKind::Passive) && bytecode.is_none() {
                        bytecode = Some(data.data.to_vec());
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_header {
        return Err(ModuleError::NotWasm("empty input".into()));
    }
    let namespace = namespace.ok_or_else(|| {
        ModuleError::NotAFilterModule("it imports no rtcrm JS runtime".into())
    })?;
    if namespace != RUNTIME_NAMESPACE {
        return Err(ModuleError::WrongRuntime { found: namespace, expected: RUNTIME_NAMESPACE.into() });
    }
    bytecode.ok_or_else(|| ModuleError::NotAFilterModule("it carries no bytecode segment".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_module_is_valid_wasm_and_reads_back_its_bytecode() {
        let module = build_module(RUNTIME_NAMESPACE, b"\x00bytecode");
        wasmparser::Validator::new().validate_all(&module).expect("valid module");
        assert!(module.len() < 400, "module is {} bytes", module.len());
        assert_eq!(read_module(&module).unwrap(), b"\x00bytecode");
    }

    #[test]
    fn a_module_for_another_runtime_names_both_versions() {
        let module = build_module("rtcrm-js-v0", b"\x00x");
        let err = read_module(&module).unwrap_err();
        assert_eq!(
            err,
            ModuleError::WrongRuntime { found: "rtcrm-js-v0".into(), expected: RUNTIME_NAMESPACE.into() }
        );
        let text = err.to_string();
        assert!(text.contains("rtcrm-js-v0") && text.contains(RUNTIME_NAMESPACE), "{text}");
    }

    #[test]
    fn garbage_is_not_wasm() {
        assert!(matches!(read_module(b"function(e) {}"), Err(ModuleError::NotWasm(_))));
    }

    #[test]
    fn the_runtime_declares_the_namespace_this_crate_expects() {
        let declared = Parser::new(0)
            .parse_all(crate::RUNTIME_WASM)
            .filter_map(|p| match p {
                Ok(Payload::CustomSection(c)) if c.name() == "import_namespace" => Some(c.data().to_vec()),
                _ => None,
            })
            .next()
            .expect("the runtime has an import_namespace section");
        assert_eq!(std::str::from_utf8(&declared).unwrap(), RUNTIME_NAMESPACE);
    }
}
