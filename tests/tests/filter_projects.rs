//! `rtcrm filter new NAME --lang js|rust|c|go`, as a new user would run it, in a temporary
//! directory outside the repository: the project builds with `rtcrm filter build`, its native
//! unit test passes (cargo test, cc, go test, node --test), `rtcrm filter test` runs its case
//! table through the sandbox, `rtcrm filter eval` gives the verdict, and `rtcrm campaign put`
//! gets it active on `rtcrm dev`, where the example event then triggers every one of them.

use rtcrm_integration_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `program args` in `dir` with none of this build's cargo or rtcrm environment; panics with
/// its output unless it succeeds.
fn run(dir: &Path, program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO") || k.starts_with("RUSTC") || k == "RUSTFLAGS" || k.starts_with("RTCRM_") {
            cmd.env_remove(&k);
        }
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("`{} {}` cannot run in {}: {e}", program.display(), args.join(" "), dir.display()));
    assert!(
        out.status.success(),
        "`{} {}` in {} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        program.display(),
        args.join(" "),
        dir.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("`{name}` is not installed: the filter project test needs it (scripts/setup.sh)"))
}

#[test]
fn new_build_test_eval_and_put_in_every_language_outside_the_repository() {
    let root = std::env::temp_dir().join(format!("rtcrm-filter-projects-{}", unique_suffix()));
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    assert!(!root.starts_with(workspace_dir()), "{} must be outside the repository", root.display());

    let mut dev = Processor::builder("dev").start();
    let bootstrap = dev
        .stdout_lines()
        .iter()
        .find_map(|l| l.strip_prefix("bootstrap: ").map(|b| b.trim().to_string()))
        .expect("rtcrm dev prints its bootstrap address");
    let rtcrm = rtcrm_bin();
    let event = workspace_dir().join("examples/events/fight-loss.json");

    let languages: [(&str, u32, &str); 4] = [("js", 4801, "mjs"), ("rust", 4802, "wasm"), ("c", 4803, "wasm"), ("go", 4804, "wasm")];
    for (lang, id, ext) in languages {
        let name = format!("loss-{lang}");
        let out = run(&root, &rtcrm, &["filter", "new", &name, "--lang", lang]);
        assert!(text(&out.stdout).contains(&format!("created {name}")), "{}", text(&out.stdout));
        let dir = root.join(&name);

        // The native unit test, in the language's own harness.
        let native = match lang {
            "js" => run(&dir, &tool("node"), &["--test"]),
            "rust" => run(&dir, &tool("cargo"), &["test", "--quiet"]),
            "c" => {
                run(&dir, &tool("cc"), &["-O2", "-Wall", "-Werror", "-o", "filter_test", "filter_test.c"]);
                run(&dir, &dir.join("filter_test"), &[])
            }
            "go" => run(&dir, &tool("go"), &["test", "./..."]),
            _ => unreachable!(),
        };
        let said = text(&native.stdout) + &text(&native.stderr);
        let passed = match lang {
            "js" => said.contains("pass 3") && said.contains("fail 0"),
            "rust" => said.contains("1 passed"),
            "c" => said.contains("3 passed, 0 failed"),
            _ => said.contains("ok"),
        };
        assert!(passed, "{lang}: the native test's report:\n{said}");

        let out = run(&dir, &rtcrm, &["filter", "build"]);
        let module = dir.join(format!("{name}.{ext}"));
        assert!(module.is_file(), "{lang}: rtcrm filter build wrote no {}: {}", module.display(), text(&out.stdout));
        let out = run(&dir, &rtcrm, &["filter", "test"]);
        assert!(text(&out.stdout).ends_with("3 passed, 0 failed\n"), "{lang}: {}", text(&out.stdout));
        let out = run(&dir, &rtcrm, &["filter", "eval", "--filter", module.to_str().unwrap(), "--event", event.to_str().unwrap()]);
        assert_eq!(text(&out.stdout), "true\n", "{lang}");
        if ext == "wasm" {
            // Rust and C filters of the event are version 1; every Go module is version 2 (its
            // `//go:wasmexport` state functions are always there, filter-sdk/ABI.md §9.6).
            let version = if lang == "go" { 2 } else { 1 };
            let out = run(&dir, &rtcrm, &["filter", "check", module.to_str().unwrap()]);
            let said = text(&out.stdout);
            assert!(said.starts_with(&format!("ok: a filter module of ABI version {version} (")), "{lang}: {said}");
        }

        // Submitted to rtcrm dev with its own id; campaign put waits for the verdict.
        let campaign = dir.join("campaign.json");
        let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&campaign).unwrap()).unwrap();
        c["campaign_id"] = id.into();
        std::fs::write(&campaign, c.to_string()).unwrap();
        let flag = if ext == "wasm" { "--wasm" } else { "--js" };
        let out = run(&dir, &rtcrm, &["campaign", "put", "campaign.json", flag, module.file_name().unwrap().to_str().unwrap(), "--bootstrap-servers", &bootstrap]);
        assert!(text(&out.stdout).contains(&format!("campaign {id} active")), "{lang}: {}{}", text(&out.stdout), text(&out.stderr));
    }

    // The example event triggers all four (and campaign 4711, which rtcrm dev loads).
    let (code, body) = http_post(&dev.http, "/api/events", SEED_EVENT).unwrap();
    assert_eq!(code, 202, "{body}");
    let mut triggers = Reader::with_bootstrap(&bootstrap, "crm-triggers");
    let all = [4711, 4801, 4802, 4803, 4804];
    let done = triggers.read_until(
        |records| all.iter().all(|id| records.iter().any(|r| r.json()["campaign"]["campaign_id"] == *id)),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let got: Vec<_> = triggers.records.iter().map(|r| r.json()["campaign"]["campaign_id"].clone()).collect();
    assert!(done, "triggers of {all:?} expected, got {got:?}");
    assert_eq!(dev.sigterm().code(), Some(0));
    let _ = std::fs::remove_dir_all(&root);
}
