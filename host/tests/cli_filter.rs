//! `rtcrm filter check | compile | eval` as a user runs them: exit codes, stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rtcrm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtcrm")).args(args).output().expect("rtcrm runs")
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn tmp(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtcrm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_valid_filter() {
    let out = rtcrm(&["filter", "check", s(&examples().join("filters/fight-loss.js"))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
}

#[test]
fn check_reports_a_syntax_error_with_file_line_and_column() {
    let file = tmp("bad.js", "function(event) {\n  return event.data.result === ;\n}\n");
    let out = rtcrm(&["filter", "check", s(&file)]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("{}:2:32: SyntaxError", file.display())), "{err}");
}

#[test]
fn check_rejects_a_source_without_a_function() {
    let file = tmp("nofn.js", "42");
    let out = rtcrm(&["filter", "check", s(&file)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("must evaluate to a function"), "{}", text(&out.stderr));
}

#[test]
fn compile_writes_a_module_that_eval_runs() {
    let out_file = std::env::temp_dir().join(format!("rtcrm-cli-{}-f.wasm", std::process::id()));
    let out = rtcrm(&["filter", "compile", s(&examples().join("filters/fight-loss.js")), "-o", s(&out_file)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let module = std::fs::read(&out_file).unwrap();
    assert_eq!(&module[..4], b"\0asm");
    for (event, expect) in [("fight-loss.json", "true"), ("fight-win.json", "false")] {
        let out = rtcrm(&["filter", "eval", "--filter", s(&out_file), "--event", s(&examples().join("events").join(event))]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), expect);
    }
}

#[test]
fn eval_prints_the_verdict_of_the_original_filter() {
    for (event, expect) in [("fight-loss.json", "true"), ("fight-win.json", "false")] {
        let out = rtcrm(&[
            "filter", "eval", "--filter", s(&examples().join("filters/fight-loss.js")),
            "--event", s(&examples().join("events").join(event)),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{expect}\n"));
    }
}

#[test]
fn eval_of_a_hostile_filter_exits_3_with_the_error_kind() {
    let event = examples().join("events/fight-loss.json");
    for (source, kind) in [
        ("e => { while (true) {} }", "fuel"),
        ("e => { throw new Error('boom') }", "exception"),
        ("e => { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)) }", "memory"),
    ] {
        let file = tmp(&format!("{kind}.js"), source);
        let out = rtcrm(&["filter", "eval", "--filter", s(&file), "--event", s(&event)]);
        assert_eq!(out.status.code(), Some(3), "{source}");
        let err = text(&out.stderr);
        assert!(err.starts_with(&format!("{kind}: ")), "{source}: {err}");
        assert!(text(&out.stdout).is_empty());
    }
}

#[test]
fn eval_over_a_jsonl_file_prints_one_result_per_line_and_continues_past_errors() {
    let loss = std::fs::read_to_string(examples().join("events/fight-loss.json")).unwrap();
    let win = std::fs::read_to_string(examples().join("events/fight-win.json")).unwrap();
    let events = tmp("events.jsonl", &format!("{}\n{}\n[1,2]\n{{\"data\":{{\"result\":\"boom\"}}}}\n{}\n", loss.trim(), win.trim(), loss.trim()));
    let filter = tmp("throws.js", "e => { if (e.data.result === 'boom') throw new Error('bad event'); return e.data.result === 'loss' }");
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--events", s(&events)]);
    assert_eq!(text(&out.stdout), "true\nfalse\nerror:event\nerror:exception\ntrue\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("Error: bad event"), "{}", text(&out.stderr));
}

#[test]
fn limit_flags_lower_the_limits() {
    let filter = tmp("busy.js", "e => { let s = 0; for (let i = 0; i < 2000; i++) s += i; return s > 0 }");
    let event = examples().join("events/fight-loss.json");
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event)]);
    assert_eq!(text(&out.stdout).trim(), "true", "{}", text(&out.stderr));
    let out = rtcrm(&["filter", "eval", "--fuel", "50000", "--filter", s(&filter), "--event", s(&event)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).starts_with("fuel: "), "{}", text(&out.stderr));
    let out = rtcrm(&["filter", "eval", "--memory-mb", "1", "--filter", s(&filter), "--event", s(&event)]);
    assert_eq!(out.status.code(), Some(3), "1 MiB is below the runtime's own footprint");
    assert!(text(&out.stderr).starts_with("memory: "), "{}", text(&out.stderr));
}

#[test]
fn console_output_goes_to_stderr_not_stdout() {
    let filter = tmp("chatty.js", "e => { console.log('hello from', e.game); return true }");
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&examples().join("events/fight-loss.json"))]);
    assert_eq!(text(&out.stdout), "true\n");
    assert!(text(&out.stderr).contains("hello from foe"), "{}", text(&out.stderr));
}

// Issue 10: `filter check` of a module, and of garbage named .wasm; the JS campaign module that
// `filter compile` writes is recognised and `campaign put --wasm` says what to do with it; a
// non-JSON event's message is printed once.

#[test]
fn check_validates_a_wasm_module_instead_of_reading_it_as_utf8() {
    // What `filter compile` writes: a JavaScript campaign module, said to be one.
    let module = std::env::temp_dir().join(format!("rtcrm-cli-{}-compiled.wasm", std::process::id()));
    let out = rtcrm(&["filter", "compile", s(&examples().join("filters/fight-loss.js")), "-o", s(&module)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = rtcrm(&["filter", "check", s(&module)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: a JavaScript campaign module ("), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("--js SOURCE.js"), "{}", text(&out.stdout));

    // Bytes that are no module, with and without the module magic.
    for (name, bytes) in [("garbage.wasm", &b"\xff\xfe\x00 not a module"[..]), ("truncated.bin", &b"\0asm\x01\0\0\0\x01\x05"[..])] {
        let file = std::env::temp_dir().join(format!("rtcrm-cli-{}-{name}", std::process::id()));
        std::fs::write(&file, bytes).unwrap();
        let out = rtcrm(&["filter", "check", s(&file)]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(!err.contains("UTF-8"), "{name}: read as text: {err}");
        assert!(err.starts_with(&format!("{}: ", file.display())), "{name}: {err}");
    }
}

#[test]
fn campaign_put_refuses_a_js_campaign_module_saying_what_to_do() {
    let module = std::env::temp_dir().join(format!("rtcrm-cli-{}-put.wasm", std::process::id()));
    let out = rtcrm(&["filter", "compile", s(&examples().join("filters/fight-loss.js")), "-o", s(&module)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let campaign = examples().join("campaigns/campaign-4711.json");
    // Refused before any connection is tried (the address is never used).
    let out = rtcrm(&["campaign", "put", s(&campaign), "--wasm", s(&module), "--bootstrap-servers", "127.0.0.1:1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("this is a JavaScript campaign module (the output of `rtcrm filter compile`)"), "{err}");
    assert!(err.contains("--js FILTER.js"), "{err}");
    assert!(!err.contains("is not allowed"), "{err}");
}

#[test]
fn a_non_json_event_is_reported_once() {
    let event = tmp("not-json.json", "{not json");
    let out = rtcrm(&["filter", "eval", "--filter", s(&examples().join("filters/fight-loss.js")), "--event", s(&event)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let cause = err.split(" is not an event: ").nth(1).unwrap_or_else(|| panic!("{err}"));
    let first = cause.split(':').next().unwrap();
    assert_eq!(err.matches(first).count(), 1, "the cause is printed more than once: {err}");
}

#[test]
fn logs_are_flat_json_or_plain_text_without_colours_off_a_terminal() {
    // Both fail fast (nothing listens on port 1) and log a warning on the way.
    let run = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_rtcrm"))
            .args(["--log-format", format, "campaign", "list", "--bootstrap-servers", "127.0.0.1:1"])
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("rtcrm runs")
    };
    let (json, plain) = (run("json"), run("text"));
    let json = text(&json.wait_with_output().unwrap().stderr);
    let plain = text(&plain.wait_with_output().unwrap().stderr);
    let records: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!records.is_empty(), "no JSON log line: {json}");
    for r in &records {
        assert!(r["message"].is_string() && r.get("fields").is_none(), "not flat: {r}");
        assert!(r["level"].is_string() && r["timestamp"].is_string() && r["target"].is_string(), "{r}");
    }
    assert!(records.iter().any(|r| r["message"] == "Kafka client error" && r["client"].is_string()), "{json}");
    assert!(plain.contains("WARN") && plain.contains("Kafka client error"), "{plain}");
    assert!(!plain.contains('\u{1b}') && !json.contains('\u{1b}'), "ANSI escape codes in a piped log: {plain:?}");
}

// Issue 12: `filter eval --state` runs a filter of the state (spec §12) as a campaign with `state`.

/// Fight events of one player with these results, as a JSON lines file.
fn fights(name: &str, results: &[&str]) -> PathBuf {
    let loss = std::fs::read_to_string(examples().join("events/fight-loss.json")).unwrap();
    let lines: Vec<String> = results.iter().map(|r| loss.trim().replace(r#""result":"loss""#, &format!(r#""result":"{r}""#))).collect();
    tmp(name, &(lines.join("\n") + "\n"))
}

const THIRD_LOSS: &str = "(event, state) => {
    if (event.data.result === 'boom') throw new Error('boom');
    if (event.data.result !== 'loss') return false;
    state.losses = (state.losses || 0) + 1;
    return state.losses === 3;
}";

#[test]
fn eval_with_state_prints_the_verdict_then_the_new_state() {
    let filter = tmp("third-loss.js", THIRD_LOSS);
    let event = examples().join("events/fight-loss.json");
    for (state, expected) in [("{}", "false\n{\"losses\":1}\n"), (r#"{"losses":2,"x":[1]}"#, "true\n{\"losses\":3,\"x\":[1]}\n")] {
        let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event), "--state", state]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "from {state}");
    }
    // A win leaves the state as it was given.
    let win = examples().join("events/fight-win.json");
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&win), "--state", r#"{"losses":2}"#]);
    assert_eq!(text(&out.stdout), "false\n{\"losses\":2}\n");
    // Without --state the output is as before: the verdict only (state is undefined, so this
    // filter throws on a loss).
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&win)]);
    assert_eq!(text(&out.stdout), "false\n");
}

#[test]
fn eval_with_state_over_events_threads_one_state_and_keeps_it_on_a_failure() {
    let filter = tmp("third-loss-events.js", THIRD_LOSS);
    let events = fights("fights.jsonl", &["loss", "win", "loss", "boom", "loss", "loss", "loss", "loss", "loss"]);
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--events", s(&events), "--state", "{}"]);
    // losses 1, -, 2, (throw: the state stays at 2), 3 → true, 4, 5, 6, 7.
    assert_eq!(text(&out.stdout), "false\nfalse\nfalse\nerror:exception\ntrue\nfalse\nfalse\nfalse\nfalse\n{\"losses\":7}\n");
    assert_eq!(out.status.code(), Some(3), "a failed event is exit 3, as without state");
    assert!(text(&out.stderr).contains("Error: boom"), "{}", text(&out.stderr));
}

#[test]
fn eval_with_state_checks_the_state_and_its_limit() {
    let filter = tmp("third-loss-limits.js", THIRD_LOSS);
    let event = examples().join("events/fight-loss.json");
    for bad in ["[1]", "7", "{", "not json"] {
        let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event), "--state", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(text(&out.stderr).starts_with("--state must be a JSON object"), "{bad}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{bad}");
    }
    // `{"losses":1}` is 12 bytes: over 11 it is kind `state`, nothing on stdout; at 12 it is kept.
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event), "--state", "{}", "--state-max-bytes", "11"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("state: the filter's state is 12 bytes of JSON, over its limit of 11 bytes"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event), "--state", "{}", "--state-max-bytes", "12"]);
    assert_eq!(text(&out.stdout), "false\n{\"losses\":1}\n", "{}", text(&out.stderr));
    // Above the host's default cap (1 KiB) the cap is raised with it.
    let big = tmp("big-state.js", "(e, s) => { s.pad = 'x'.repeat(2000); return true }");
    let out = rtcrm(&["filter", "eval", "--filter", s(&big), "--event", s(&event), "--state", "{}", "--state-max-bytes", "4096"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().nth(1).map(str::len), Some(2010));
    let out = rtcrm(&["filter", "eval", "--filter", s(&big), "--event", s(&event), "--state", "{}"]);
    assert!(text(&out.stderr).contains("over its limit of 1024 bytes"), "the default: {}", text(&out.stderr));
    // --state-max-bytes means nothing without --state.
    let out = rtcrm(&["filter", "eval", "--filter", s(&filter), "--event", s(&event), "--state-max-bytes", "12"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
