//! The example filters of every SDK language, built from source by `filter-sdk/build-examples.sh`
//! (no `.wasm` is committed), run through `rtcrm filter eval` as a user runs them:
//! - every language has every scenario (a missing one fails, it is never skipped);
//! - the verdicts equal the JavaScript twins' on `examples/filters/shared-events.jsonl`;
//! - the endless loop ends with error kind `fuel` (exit 3) in every language;
//! - what a C or Go filter writes to stdout is in the CLI's log (stderr), capped, never on stdout;
//! - the modules import only `wasi_snapshot_preview1` (Rust for wasm32-unknown-unknown: nothing)
//!   and export what `filter-sdk/ABI.md` names, of the version each declares;
//! - the filters of the state (ABI version 2, `every-fifth-purchase`) give, through
//!   `rtcrm filter eval --state`, exactly the verdicts and final state of a count computed here,
//!   as their JavaScript twin does; a version 1 module is refused with --state; a state over
//!   `--state-max-bytes` is error kind `state` and keeps the state;
//! - the examples' native tests pass (C with `cc`, Go with `go test`, Rust with `cargo test`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The module directories `build-examples.sh` writes, one per language and target.
const LANGUAGES: [&str; 4] = ["rust", "rust-wasip1", "c", "go"];
/// The scenarios every language implements (JavaScript too: `fight-loss.js`,
/// `nested-threshold.js`, `misbehaving/endless-loop.js`).
const VERDICT_SCENARIOS: [&str; 2] = ["fight-loss", "nested-threshold"];
const ENDLESS: &str = "endless-loop";
/// The filter of the state every language implements (JavaScript: `every-fifth-purchase.js`),
/// run on one player's events in `purchases.jsonl`.
const STATE_SCENARIO: &str = "every-fifth-purchase";
/// Filters that write to stdout (fight-loss plus a line per event), in these languages.
const CHATTY: &str = "chatty";
const CHATTY_LANGUAGES: [&str; 2] = ["c", "go"];
/// Fuel for the endless loop: a quarter of the host default (20 M, ~2 ms of a tight loop), so the
/// loop runs out of fuel in well under a millisecond of CPU and the 20 ms wall-clock backstop
/// (kind `deadline`) cannot fire first on a loaded 2-core machine, as it did once in 30 events
/// with the default. Still above what Go's `_initialize` needs (~1.3 M).
const ENDLESS_FUEL: &str = "5000000";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn filters() -> PathBuf {
    root().join("examples/filters")
}

fn shared_events() -> PathBuf {
    filters().join("shared-events.jsonl")
}

fn purchases() -> PathBuf {
    filters().join("purchases.jsonl")
}

/// Builds every example once per test run.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("filter-examples");
        let script = root().join("filter-sdk/build-examples.sh");
        let run = Command::new("bash").arg(&script).arg(&out).output().expect("bash runs");
        assert!(
            run.status.success(),
            "{} failed ({}):\n{}\n{}",
            script.display(),
            run.status,
            text(&run.stdout),
            text(&run.stderr)
        );
        eprintln!("{}", text(&run.stdout));
        out
    })
}

/// The built module of a scenario; a missing one fails the test with what is missing.
fn module(lang: &str, scenario: &str) -> PathBuf {
    let path = built().join(lang).join(format!("{scenario}.wasm"));
    let source = match lang {
        "rust" | "rust-wasip1" => filters().join(format!("rust/{scenario}/src/lib.rs")),
        "c" => filters().join(format!("c/{scenario}.c")),
        "go" => filters().join(format!("go/{scenario}/main.go")),
        other => panic!("unknown language {other}"),
    };
    assert!(source.is_file(), "scenario {scenario} is missing in {lang}: no {}", source.display());
    assert!(path.is_file(), "scenario {scenario} in {lang}: {} was not built", path.display());
    path
}

/// Runs the CLI, one invocation at a time: the endless-loop checks compare fuel (CPU work)
/// against a wall-clock backstop, which parallel runs on a small machine would blur.
fn rtcrm(args: &[&str]) -> Output {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_rtcrm")).args(args).output().expect("rtcrm runs")
}

fn eval_table(filter: &Path) -> Output {
    rtcrm(&["filter", "eval", "--filter", s(filter), "--events", s(&shared_events())])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lines(out: &Output) -> Vec<String> {
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// The JavaScript twin's verdicts on the shared table.
fn twin_verdicts(scenario: &str) -> Vec<String> {
    let out = eval_table(&filters().join(format!("{scenario}.js")));
    assert_eq!(out.status.code(), Some(0), "{scenario}.js: {}", text(&out.stderr));
    let verdicts = lines(&out);
    let events = std::fs::read_to_string(shared_events()).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    assert!(events >= 20, "the shared table has {events} events; at least 20 wanted");
    assert_eq!(verdicts.len(), events, "{scenario}.js");
    for v in ["true", "false"] {
        assert!(verdicts.iter().any(|l| l == v), "{scenario}.js: the shared table needs a `{v}` case");
    }
    verdicts
}

#[test]
fn every_language_has_every_scenario() {
    for lang in LANGUAGES {
        for scenario in VERDICT_SCENARIOS.iter().chain(&[ENDLESS, STATE_SCENARIO]) {
            module(lang, scenario);
        }
    }
    for lang in CHATTY_LANGUAGES {
        module(lang, CHATTY);
    }
    for js in ["fight-loss.js", "nested-threshold.js", "misbehaving/endless-loop.js", "every-fifth-purchase.js"] {
        assert!(filters().join(js).is_file(), "the JavaScript twin {js} is missing");
    }
}

#[test]
fn verdicts_equal_the_javascript_twins_on_the_shared_table() {
    let mut failures = Vec::new();
    for scenario in VERDICT_SCENARIOS {
        let expected = twin_verdicts(scenario);
        for lang in LANGUAGES {
            let out = eval_table(&module(lang, scenario));
            if out.status.code() != Some(0) || lines(&out) != expected {
                failures.push(format!(
                    "{lang}/{scenario}: exit {:?}\n  got      {:?}\n  expected {:?}\n  stderr: {}",
                    out.status.code(),
                    lines(&out),
                    expected,
                    text(&out.stderr).lines().take(5).collect::<Vec<_>>().join("\n          ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_endless_loop_runs_out_of_fuel_in_every_language() {
    let events = std::fs::read_to_string(shared_events()).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    let mut filters_to_run: Vec<(String, PathBuf)> =
        LANGUAGES.iter().map(|lang| (lang.to_string(), module(lang, ENDLESS))).collect();
    filters_to_run.push(("javascript".into(), filters().join("misbehaving/endless-loop.js")));
    let mut failures = Vec::new();
    for (lang, filter) in filters_to_run {
        let out =
            rtcrm(&["filter", "eval", "--fuel", ENDLESS_FUEL, "--filter", s(&filter), "--events", s(&shared_events())]);
        let got = lines(&out);
        if out.status.code() != Some(3) || got.len() != events || got.iter().any(|l| l != "error:fuel") {
            failures.push(format!(
                "{lang}/{ENDLESS}: exit {:?}, stdout {got:?}, stderr: {}",
                out.status.code(),
                text(&out.stderr).lines().take(3).collect::<Vec<_>>().join(" | ")
            ));
        }
        // One event: exit 3 and the kind first on stderr.
        let event = root().join("examples/events/fight-loss.json");
        let one = rtcrm(&["filter", "eval", "--fuel", ENDLESS_FUEL, "--filter", s(&filter), "--event", s(&event)]);
        if one.status.code() != Some(3) || !text(&one.stderr).contains("fuel") || !one.stdout.is_empty() {
            failures.push(format!(
                "{lang}/{ENDLESS} --event: exit {:?}, stderr {}",
                one.status.code(),
                text(&one.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn what_a_filter_prints_goes_to_the_log_capped_never_to_stdout() {
    let expected = twin_verdicts("fight-loss");
    for lang in CHATTY_LANGUAGES {
        let out = eval_table(&module(lang, CHATTY));
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{lang}/{CHATTY}: {stderr}");
        // Only verdicts on stdout.
        assert_eq!(lines(&out), expected, "{lang}/{CHATTY}: stdout must hold only the verdicts");
        assert!(!stdout.contains("chatty"), "{lang}/{CHATTY}: the filter's output reached stdout:\n{stdout}");
        // The output is in the log ...
        let tag = format!("chatty-{lang}: ");
        let logged = stderr.lines().filter(|l| l.contains(&tag)).count();
        assert!(stderr.contains(&format!("{tag}result=loss")), "{lang}/{CHATTY}: no output in the log:\n{stderr}");
        // ... capped: one line per event was written, the host forwards at most 20 per second
        // per instance (ABI.md section 4) and says how many it dropped.
        assert!(logged >= 1 && logged <= 20, "{lang}/{CHATTY}: {logged} lines logged of {} written", expected.len());
        if expected.len() > 20 {
            assert!(stderr.contains("dropped"), "{lang}/{CHATTY}: the log does not say lines were dropped:\n{stderr}");
        }
    }
}

/// The imports (module, name) and exports (`kind:name`) of a module, read from its import and
/// export sections (a few lines here rather than a parser dependency for the `rtcrm` crate).
fn imports_and_exports(path: &Path) -> (Vec<(String, String)>, BTreeSet<String>) {
    let bytes = std::fs::read(path).unwrap();
    let mut r = Reader { bytes: &bytes, pos: 8 };
    assert_eq!(&bytes[..8], b"\0asm\x01\0\0\0", "{} is not a core module", path.display());
    let (mut imports, mut exports) = (Vec::new(), BTreeSet::new());
    while r.pos < bytes.len() {
        let id = r.byte();
        let size = r.leb() as usize;
        let end = r.pos + size;
        match id {
            2 => {
                for _ in 0..r.leb() {
                    let (m, n) = (r.name(), r.name());
                    let kind = r.byte();
                    assert_eq!(kind, 0, "{}: import {m}.{n} is not a function", path.display());
                    r.leb();
                    imports.push((m, n));
                }
            }
            7 => {
                for _ in 0..r.leb() {
                    let name = r.name();
                    let kind = r.byte();
                    r.leb();
                    exports.insert(format!("{}:{name}", ["func", "table", "memory", "global", "tag"][kind as usize]));
                }
            }
            _ => {}
        }
        r.pos = end;
    }
    (imports, exports)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        self.pos += 1;
        self.bytes[self.pos - 1]
    }
    fn leb(&mut self) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    fn name(&mut self) -> String {
        let n = self.leb() as usize;
        self.pos += n;
        String::from_utf8(self.bytes[self.pos - n..self.pos].to_vec()).unwrap()
    }
}

/// The ABI version a module of the examples must declare: 2 for a filter of the state and for
/// every Go module (its `//go:wasmexport` state functions are always there), else 1.
fn expected_version(lang: &str, scenario: &str) -> u32 {
    if scenario == STATE_SCENARIO || lang == "go" {
        2
    } else {
        1
    }
}

#[test]
fn modules_import_only_wasi_and_export_the_abi() {
    let required = ["memory:memory", "func:rtcrm_alloc", "func:rtcrm_filter"];
    let version_2 = ["func:rtcrm_filter_state", "func:rtcrm_state_ptr", "func:rtcrm_state_len"];
    let optional = ["func:rtcrm_abi_version", "func:_initialize"];
    for lang in LANGUAGES {
        for scenario in VERDICT_SCENARIOS.iter().chain(&[ENDLESS, STATE_SCENARIO]) {
            let path = module(lang, scenario);
            let (imports, mut exports) = imports_and_exports(&path);
            for (m, n) in &imports {
                assert_eq!(m, "wasi_snapshot_preview1", "{lang}/{scenario} imports {m}.{n}");
            }
            if lang == "rust" {
                assert!(imports.is_empty(), "rust/{scenario} (wasm32-unknown-unknown) imports {imports:?}");
                // rustc up to 1.96 adds these two globals to every wasm32-unknown-unknown cdylib
                // (removed by rust-lang/rust#156174); the ABI ignores exports it does not name.
                exports.remove("global:__heap_base");
                exports.remove("global:__data_end");
            }
            for r in required {
                assert!(exports.remove(r), "{lang}/{scenario} does not export {r}");
            }
            // Every SDK declares its version, and exports version 2's functions exactly when it
            // declares version 2 (the host rejects anything else, ABI.md §9.1).
            assert!(exports.contains("func:rtcrm_abi_version"), "{lang}/{scenario} does not export rtcrm_abi_version");
            let version = expected_version(lang, scenario);
            for e in version_2 {
                assert_eq!(exports.remove(e), version == 2, "{lang}/{scenario} (version {version}) and {e}");
            }
            exports.retain(|e| !optional.contains(&e.as_str()));
            assert!(exports.is_empty(), "{lang}/{scenario} exports more than the ABI names: {exports:?}");
            // The version the host reads from the module, as `rtcrm filter check` reports it.
            let out = rtcrm(&["filter", "check", s(&path)]);
            assert_eq!(out.status.code(), Some(0), "{lang}/{scenario}: {}", text(&out.stderr));
            let said = text(&out.stdout);
            assert!(said.starts_with(&format!("ok: a filter module of ABI version {version} (")), "{lang}/{scenario}: {said}");
        }
    }
}

// ---- Filters of the state (ABI version 2) --------------------------------------------------------

/// What every-fifth-purchase must print for `purchases.jsonl` from a starting count, computed
/// here from the events (not by rtcrm): a verdict per event, then the final state.
fn fifth_purchases(start: u64) -> Vec<String> {
    let mut count = start;
    let mut out = Vec::new();
    for line in std::fs::read_to_string(purchases()).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let purchase = event["event_name"] == "purchase";
        if purchase {
            count += 1;
        }
        out.push((purchase && count % 5 == 0).to_string());
    }
    out.push(format!(r#"{{"purchases":{count}}}"#));
    out
}

/// The filter of the state in every language, and its JavaScript twin.
fn state_filters() -> Vec<(String, PathBuf)> {
    let mut all: Vec<(String, PathBuf)> = LANGUAGES.iter().map(|lang| (lang.to_string(), module(lang, STATE_SCENARIO))).collect();
    all.push(("javascript".into(), filters().join(format!("{STATE_SCENARIO}.js"))));
    all
}

#[test]
fn filters_of_the_state_thread_one_players_state_through_the_events() {
    // The table has what the count needs: purchases and other events, at least two triggers.
    let from_zero = fifth_purchases(0);
    assert_eq!(from_zero.iter().filter(|v| *v == "true").count(), 2, "{from_zero:?}");
    assert!(from_zero.len() > 12, "{from_zero:?}");
    let mut failures = Vec::new();
    for (lang, filter) in state_filters() {
        for (start, state) in [(0, "{}"), (3, r#"{"purchases":3}"#)] {
            let expected = fifth_purchases(start);
            let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--events", s(&purchases()), "--state", state]);
            if out.status.code() != Some(0) || lines(&out) != expected {
                failures.push(format!(
                    "{lang} from {state}: exit {:?}\n  got      {:?}\n  expected {:?}\n  stderr: {}",
                    out.status.code(),
                    lines(&out),
                    expected,
                    text(&out.stderr).lines().take(5).collect::<Vec<_>>().join("\n          ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_event_with_a_state_prints_the_verdict_then_the_new_state() {
    let events = std::fs::read_to_string(purchases()).unwrap();
    let line = |name: &str| events.lines().find(|l| l.contains(&format!(r#""event_name":"{name}""#))).unwrap().to_owned();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("state-events");
    std::fs::create_dir_all(&dir).unwrap();
    let (purchase, login) = (dir.join("purchase.json"), dir.join("login.json"));
    std::fs::write(&purchase, line("purchase")).unwrap();
    std::fs::write(&login, line("login")).unwrap();
    for (lang, filter) in state_filters() {
        for (event, state, expected) in [
            (&purchase, r#"{"purchases":4}"#, "true\n{\"purchases\":5}\n"),
            (&purchase, "{}", "false\n{\"purchases\":1}\n"),
            // Not a purchase: the state is left as it was.
            (&login, r#"{"purchases":4}"#, "false\n{\"purchases\":4}\n"),
        ] {
            let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(event), "--state", state]);
            assert_eq!(out.status.code(), Some(0), "{lang}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), expected, "{lang}: {} from {state}", event.display());
        }
    }
}

#[test]
fn a_state_over_its_limit_is_kind_state_and_the_state_stays() {
    // `{"purchases":1}` is 15 bytes: over a limit of 14 every purchase fails and the count never
    // starts; the other events still evaluate (false).
    let expected: Vec<String> = fifth_purchases(0)
        .iter()
        .take(fifth_purchases(0).len() - 1)
        .zip(std::fs::read_to_string(purchases()).unwrap().lines())
        .map(|(_, l)| if l.contains(r#""event_name":"purchase""#) { "error:state".to_owned() } else { "false".to_owned() })
        .chain(["{}".to_owned()])
        .collect();
    for (lang, filter) in state_filters() {
        let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--events", s(&purchases()), "--state", "{}", "--state-max-bytes", "14"]);
        assert_eq!(out.status.code(), Some(3), "{lang}: {}", text(&out.stderr));
        assert_eq!(lines(&out), expected, "{lang}");
        assert!(text(&out.stderr).contains("the filter's state is 15 bytes of JSON, over its limit of 14 bytes"), "{lang}: {}", text(&out.stderr));
    }
}

#[test]
fn a_version_1_module_is_refused_with_a_state_naming_what_it_needs() {
    let event = root().join("examples/events/fight-loss.json");
    for lang in LANGUAGES {
        let filter = module(lang, "fight-loss");
        let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event), "--state", r#"{"a":1}"#]);
        if expected_version(lang, "fight-loss") == 1 {
            assert_eq!(out.status.code(), Some(2), "{lang}: {}", text(&out.stdout));
            let err = text(&out.stderr);
            assert!(err.contains("the campaign has `state`, but its module implements filter ABI version 1"), "{lang}: {err}");
            assert!(err.contains("RTCRM_FILTER_STATE(f)") && err.contains("state: &mut State"), "{lang}: {err}");
            assert!(out.stdout.is_empty(), "{lang}");
        } else {
            // Go's modules are all of version 2: a filter of the event only leaves the state.
            assert_eq!(out.status.code(), Some(0), "{lang}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), "true\n{\"a\":1}\n", "{lang}");
        }
    }
}

/// Runs a native test command; a failure shows its output.
fn native(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        // The examples build for the host with their own settings, not this build's.
        if k.starts_with("CARGO") || k.starts_with("RUSTC") || k == "RUSTFLAGS" {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())));
    let out = cmd.output().unwrap_or_else(|e| panic!("{program} cannot run: {e}"));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "`{program} {}` in {} failed ({}):\n{said}", args.join(" "), dir.display(), out.status);
    said
}

#[test]
fn the_examples_native_tests_pass() {
    // C: the state example's test, with the host's C compiler.
    let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("every-fifth-purchase-test");
    let c_test = filters().join("c/tests/every-fifth-purchase.test.c");
    let sdk = root().join("filter-sdk/c");
    native(&filters(), "cc", &["-Wall", "-Wextra", "-Werror", "-I", s(&sdk), "-o", s(&bin), s(&c_test)], &[]);
    let said = native(&filters(), s(&bin), &[s(&purchases())], &[]);
    assert!(said.contains("verdicts 000001000000100, final state {\"purchases\":12}") && said.trim_end().ends_with("ok"), "{said}");
    // Go: every example's test (fight-loss, nested-threshold, every-fifth-purchase).
    let said = native(&filters().join("go"), "go", &["test", "./..."], &[("GOTOOLCHAIN", Path::new("local")), ("GOWORK", Path::new("off"))]);
    assert!(said.contains("ok  \trtcrm.dev/filter-examples/every-fifth-purchase"), "{said}");
    // Rust: natively, in its own target directory.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("examples-native");
    let said = native(&filters().join("rust"), "cargo", &["test", "--quiet", "--target-dir", s(&target)], &[]);
    assert!(!said.contains("FAILED") && said.contains("test result: ok. 2 passed"), "{said}");
}
