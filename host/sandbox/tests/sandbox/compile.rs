//! Source forms (spec §5), compile errors with positions in the user's text, and the campaign
//! module format.

use crate::{sandbox, verdict, SEED_EVENT};
use rtcrm_compiler::{build_module, read_module};
use rtcrm_sandbox::{CompileError, ModuleError, ModuleLoadError, SourceForm, RUNTIME_NAMESPACE};

/// Every accepted form, written once with a predicate that holds on the seed event and once
/// with one that does not.
fn forms(pred: &str) -> Vec<(String, SourceForm)> {
    vec![
        (format!("function(event) {{ return {pred} }}"), SourceForm::Expression),
        (format!("function isLoss(event) {{ return {pred} }}"), SourceForm::Expression),
        (format!("(event) => {pred}"), SourceForm::Expression),
        (format!("event => {pred}"), SourceForm::Expression),
        (format!("event => {{ return {pred}; }};\n"), SourceForm::Expression),
        (format!("// campaign filter\nfunction (event) {{\n  return {pred}; // inline comment\n}} // trailing"), SourceForm::Expression),
        (format!("(function () {{ const want = true; return function (event) {{ return ({pred}) === want; }}; }})()"), SourceForm::Expression),
        (format!("const check = (event) => {pred};\ncheck"), SourceForm::Script),
        (format!("function isLoss(event) {{ return {pred} }}\nisLoss;"), SourceForm::Script),
        (format!("export default function (event) {{ return {pred} }}"), SourceForm::Module),
        (format!("const x = 1;\nexport default (event) => x === 1 && {pred};"), SourceForm::Module),
    ]
}

#[test]
fn every_source_form_compiles_to_the_right_verdicts() {
    for ((pos, form), (neg, _)) in forms("event.data.result === 'loss'").into_iter().zip(forms("event.data.result === 'win'")) {
        let compiled = sandbox().compile_js(&pos).unwrap_or_else(|e| panic!("{pos:?}: {e}"));
        assert_eq!(compiled.form(), Some(form), "{pos:?}");
        assert!(verdict(&pos, SEED_EVENT), "{pos:?} should match");
        assert!(!verdict(&neg, SEED_EVENT), "{neg:?} should not match");
    }
}

#[test]
fn source_that_yields_no_function_is_rejected() {
    for (source, found) in [("42", "number"), ("'filter'", "string"), ("({})", "object"), ("[e => true]", "an array"), ("null", "null"), ("var x = 1;", "undefined"), ("export default 5", "number"), ("export const f = e => true", "undefined")] {
        match sandbox().compile_js(source) {
            Err(CompileError::NotAFunction { found: f }) => assert_eq!(f, found, "{source}"),
            other => panic!("{source}: expected NotAFunction, got {other:?}"),
        }
    }
}

#[test]
fn top_level_code_that_throws_or_loops_is_rejected() {
    match sandbox().compile_js("(function () { throw new Error('config missing') })()") {
        Err(CompileError::TopLevelThrew { message }) => assert_eq!(message, "Error: config missing"),
        other => panic!("expected TopLevelThrew, got {other:?}"),
    }
    match sandbox().compile_js("(function () { while (true) {} })()") {
        Err(CompileError::TopLevelFailed(message)) => assert!(message.contains("fuel"), "{message}"),
        other => panic!("expected TopLevelFailed, got {other:?}"),
    }
}

fn syntax(source: &str) -> (u32, u32, String) {
    match sandbox().compile_js(source) {
        Err(CompileError::Syntax { line, column, message }) => (line, column, message),
        other => panic!("{source:?}: expected a syntax error, got {other:?}"),
    }
}

#[test]
fn syntax_errors_point_at_the_offending_token_in_the_users_source() {
    // (source, line, column) — 1-based, of the first character of the offending token.
    let cases: &[(&str, u32, u32)] = &[
        ("function(event) { return event.getData().get('result') === ; }", 1, 60),
        ("function(event) {\n  return event.data.result ==== 'loss';\n}", 2, 31),
        ("e =>\n  e.x +* 2", 2, 8),
        ("export default function (e) {\n  return e.x +* 2;\n}", 2, 15),
        ("var limit = ;\n(e => e.level > limit)", 1, 13),
        ("(e) => { if (e.game === 'foe' { return true } }", 1, 31),
        ("e => e.data.result === 'loss", 1, 24),
        ("function(event) { return event.game === 'foe'", 1, 46),
    ];
    for (source, line, column) in cases {
        let (l, c, message) = syntax(source);
        assert_eq!((l, c), (*line, *column), "{source:?}: {message}");
        assert!(message.starts_with("SyntaxError"), "{message}");
    }
}

#[test]
fn a_source_over_the_size_limit_is_rejected() {
    let source = format!("e => true // {}", "x".repeat(70 * 1024));
    assert!(matches!(sandbox().compile_js(&source), Err(CompileError::TooLarge { max: 65536, .. })));
}

#[test]
fn a_compiled_module_is_small_and_loads_back_with_the_same_verdicts() {
    let compiled = sandbox().compile_js(crate::SEED_FILTER).unwrap();
    let module = compiled.module_bytes();
    assert!(module.len() < 1024, "module is {} bytes", module.len());
    let loaded = sandbox().load_js_module(module).unwrap();
    let mut f = sandbox().js_filter(&loaded, "reloaded", sandbox().limits()).unwrap();
    assert!(f.eval(&crate::event(SEED_EVENT)).unwrap().matched);
    let win = SEED_EVENT.replace("loss", "win");
    assert!(!f.eval(&crate::event(&win)).unwrap().matched);
}

#[test]
fn a_module_built_for_another_runtime_version_is_refused_naming_both() {
    let compiled = sandbox().compile_js(crate::SEED_FILTER).unwrap();
    let bytecode = read_module(compiled.module_bytes()).unwrap();
    let old = build_module("rtcrm-js-v0", &bytecode);
    match sandbox().load_js_module(&old) {
        Err(ModuleLoadError::Module(ModuleError::WrongRuntime { found, expected })) => {
            assert_eq!(found, "rtcrm-js-v0");
            assert_eq!(expected, RUNTIME_NAMESPACE);
        }
        other => panic!("expected WrongRuntime, got {other:?}"),
    }
    let message = sandbox().load_js_module(&old).unwrap_err().to_string();
    assert!(message.contains("rtcrm-js-v0") && message.contains(RUNTIME_NAMESPACE), "{message}");
}

#[test]
fn the_module_runs_standalone_against_a_linked_runtime_instance() {
    // The module's `_start` copies its bytecode into the runtime and loads it: link it the
    // javy way and run it.
    use wasmtime::{Linker, Module, Store};
    let sandbox = sandbox();
    let compiled = sandbox.compile_js(crate::SEED_FILTER).unwrap();
    let engine = sandbox.engine();
    let runtime = Module::new(engine, rtcrm_compiler::RUNTIME_WASM).unwrap();
    let mut store = Store::new(engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
    store.set_fuel(u64::MAX / 2).ok();
    store.set_epoch_deadline(u64::MAX / 2);
    let mut linker: Linker<wasmtime_wasi::p1::WasiP1Ctx> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).unwrap();
    linker.define_unknown_imports_as_traps(&runtime).unwrap();
    let instance = linker.instantiate(&mut store, &runtime).unwrap();
    instance.get_typed_func::<(), ()>(&mut store, "initialize-runtime").unwrap().call(&mut store, ()).unwrap();
    linker.instance(&mut store, RUNTIME_NAMESPACE, instance).unwrap();
    let module = Module::new(engine, compiled.module_bytes()).unwrap();
    let filter = linker.instantiate(&mut store, &module).unwrap();
    filter.get_typed_func::<(), ()>(&mut store, "_start").unwrap().call(&mut store, ()).expect("_start loads the filter");
    // A module for another namespace does not link at all.
    let other = build_module("rtcrm-js-v0", &read_module(compiled.module_bytes()).unwrap());
    let other = Module::new(engine, &other).unwrap();
    assert!(linker.instantiate(&mut store, &other).is_err());
}
