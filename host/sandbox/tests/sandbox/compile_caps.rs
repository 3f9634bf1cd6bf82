//! Compilation is bounded (issue 11): size and shape caps are checked before anything is
//! compiled, compilation runs in a pool with a time limit, and a slow module never holds up
//! another module's compilation.

use crate::{event, sandbox, SEED_EVENT};
use rtcrm_sandbox::{CompiledFilter, Sandbox, SandboxConfig, WasmError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, GlobalSection, GlobalType, Instruction,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};

/// A filter module (memory, `rtcrm_alloc`, `rtcrm_filter` returning 1) plus `extra` functions of
/// `(i32) -> i32`, each with `locals` extra locals and `work` repetitions of a few arithmetic
/// instructions, and `globals` globals.
fn generated(extra: u32, work: u32, locals: u32, globals: u32) -> Vec<u8> {
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    types.ty().function([ValType::I32, ValType::I32], [ValType::I32]);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    funcs.function(1);
    for _ in 0..extra {
        funcs.function(0);
    }
    m.section(&funcs);
    let mut memory = MemorySection::new();
    memory.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
    m.section(&memory);
    if globals > 0 {
        let mut g = GlobalSection::new();
        for _ in 0..globals {
            g.global(GlobalType { val_type: ValType::I32, mutable: true, shared: false }, &wasm_encoder::ConstExpr::i32_const(0));
        }
        m.section(&g);
    }
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("rtcrm_alloc", ExportKind::Func, 0);
    exports.export("rtcrm_filter", ExportKind::Func, 1);
    m.section(&exports);
    let mut code = CodeSection::new();
    let mut alloc = Function::new([]);
    alloc.instruction(&Instruction::I32Const(1024)).instruction(&Instruction::End);
    code.function(&alloc);
    let mut filter = Function::new([]);
    filter.instruction(&Instruction::I32Const(1)).instruction(&Instruction::End);
    code.function(&filter);
    for i in 0..extra {
        let mut f = Function::new([(1 + locals, ValType::I32)]);
        for j in 0..work {
            f.instruction(&Instruction::LocalGet(0))
                .instruction(&Instruction::I32Const((i ^ j) as i32))
                .instruction(&Instruction::I32Add)
                .instruction(&Instruction::LocalSet(1))
                .instruction(&Instruction::LocalGet(1))
                .instruction(&Instruction::LocalSet(0));
        }
        f.instruction(&Instruction::LocalGet(0)).instruction(&Instruction::End);
        code.function(&f);
    }
    m.section(&code);
    m.finish()
}

fn rejected_quickly(bytes: &[u8]) -> (WasmError, Duration) {
    let sb = sandbox();
    let started = Instant::now();
    let err = sb.load_wasm(bytes).expect_err("rejected");
    (err, started.elapsed())
}

#[test]
fn two_hundred_thousand_small_functions_are_rejected_before_compiling() {
    let bytes = generated(200_000, 0, 0, 0);
    let (err, took) = rejected_quickly(&bytes);
    assert_eq!(err, WasmError::TooComplex { what: "functions", found: 200_002, max: 20_000 });
    assert_eq!(err.to_string(), "the module has 200002 functions, over the limit of 20000 (filter-sdk/ABI.md §1)");
    assert!(took < Duration::from_millis(250), "rejected in {took:?}");
    eprintln!("a module of 200,002 functions ({} bytes) was rejected in {took:?}", bytes.len());
}

#[test]
fn a_huge_function_too_many_locals_or_globals_are_rejected_before_compiling() {
    // ~12 bytes per repetition: one body of ~360 KiB.
    let (err, took) = rejected_quickly(&generated(1, 30_000, 0, 0));
    assert!(matches!(err, WasmError::TooComplex { what: "bytes in one function body", max: 262_144, .. }), "{err}");
    assert!(took < Duration::from_millis(250), "{took:?}");
    let (err, _) = rejected_quickly(&generated(1, 1, 20_000, 0));
    assert_eq!(err, WasmError::TooComplex { what: "locals in one function", found: 20_001, max: 10_000 });
    let (err, _) = rejected_quickly(&generated(0, 0, 0, 2_000));
    assert_eq!(err, WasmError::TooComplex { what: "globals", found: 2_000, max: 1_000 });
}

#[test]
fn a_module_that_compiles_too_long_is_rejected_with_the_limit() {
    let sb = Sandbox::new(SandboxConfig { cache_dir: None, compile_timeout: Duration::from_millis(100), ..SandboxConfig::default() })
        .unwrap();
    // Within every cap, but about a second of Cranelift on this machine.
    let slow = generated(20, 2_000, 0, 0);
    let started = Instant::now();
    let err = sb.load_wasm(&slow).expect_err("too slow");
    let took = started.elapsed();
    assert_eq!(err, WasmError::CompileTimeout { limit: Duration::from_millis(100) });
    assert!(err.to_string().starts_with("compiling the module took longer than 0.1 s, the limit"), "{err}");
    assert!(took < Duration::from_millis(1000), "answered in {took:?}");
    // A small module still compiles in the same sandbox.
    let small = generated(1, 1, 0, 0);
    assert!(sb.load_wasm(&small).is_ok());
}

#[test]
fn a_slow_compilation_does_not_hold_up_another() {
    let sb = Sandbox::new(SandboxConfig { cache_dir: None, compile_threads: 2, ..SandboxConfig::default() }).unwrap();
    // Several seconds of Cranelift (100 functions of ~24 KiB each).
    let slow = generated(100, 2_000, 0, 0);
    let done = Arc::new(AtomicBool::new(false));
    let background = {
        let (sb, done) = (sb.clone(), done.clone());
        std::thread::spawn(move || {
            let result = sb.load_wasm(&slow).map(drop);
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let small = sb.load_wasm(&generated(1, 1, 0, 0)).expect("the small module compiles");
    let took = started.elapsed();
    assert!(!done.load(Ordering::SeqCst), "the slow module is still compiling (else this test shows nothing)");
    assert!(took < Duration::from_millis(1500), "the small module waited {took:?}");
    let mut f = sb.filter(&CompiledFilter::Wasm(small), "small", sb.limits()).unwrap();
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    background.join().unwrap().expect("the slow module compiles in the end");
}
