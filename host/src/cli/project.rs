//! Filter projects: `rtcrm filter new NAME --lang js|rust|c|go`, `rtcrm filter build [DIR]` and
//! `rtcrm filter test [DIR]`.
//!
//! A project is self-contained: the SDK of its language is written into it (`rtcrm-sdk/` for
//! Rust, `rtcrm_filter.h` for C, `rtcrm-filter/` for Go; the same sources as `filter-sdk/` in
//! the rtcrm repository, shipped inside the binary), so it builds anywhere, outside any checkout.
//! Every project has the same parts:
//!
//! - `rtcrm-filter.toml`: its name and language (what `build` and `test` read);
//! - the filter, with a native unit test in the language's own harness that runs the case table;
//! - `cases.jsonl`: the case table, one `{"name", "event", "expect"}` per line, which
//!   `rtcrm filter test` also runs through the processor's sandbox (the module as built);
//! - `campaign.json`: a campaign to submit it with (`rtcrm campaign put campaign.json --wasm
//!   NAME.wasm`, or `--js` for JavaScript);
//! - `README.md` with those commands.
//!
//! `build` runs the language's toolchain and writes `NAME.wasm` at the project's root (for
//! JavaScript: checks that the filter compiles). A missing toolchain is named with the command
//! that installs it.

use crate::Exit;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The languages a project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// JavaScript (an ES module; runs in the host's QuickJS runtime).
    Js,
    /// Rust (`#[filter]`, built for wasm32-unknown-unknown).
    Rust,
    /// C (one header, clang-19 for wasm32-wasi).
    C,
    /// Go 1.24+ (GOOS=wasip1 GOARCH=wasm, c-shared).
    Go,
}

impl Lang {
    fn as_str(self) -> &'static str {
        match self {
            Lang::Js => "js",
            Lang::Rust => "rust",
            Lang::C => "c",
            Lang::Go => "go",
        }
    }
}

/// `rtcrm-filter.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    lang: Lang,
}

const MANIFEST: &str = "rtcrm-filter.toml";

// The SDKs, as in the repository.
const RUST_SDK_LIB: &str = include_str!("../../../filter-sdk/rust/src/lib.rs");
const RUST_MACROS_LIB: &str = include_str!("../../../filter-sdk/rust-macros/src/lib.rs");
const C_HEADER: &str = include_str!("../../../filter-sdk/c/rtcrm_filter.h");
const GO_FILTER: &str = include_str!("../../../filter-sdk/go/filter.go");
const GO_ABI: &str = include_str!("../../../filter-sdk/go/abi_wasip1.go");
const EVENT_LOSS: &str = include_str!("../../../examples/events/fight-loss.json");
const EVENT_WIN: &str = include_str!("../../../examples/events/fight-win.json");

/// A project name: what the module and the package are called.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(Exit {
            code: 2,
            message: format!("`{name}` is not a filter name: use lowercase letters, digits and '-', starting with a letter (e.g. fight-loss)"),
        }
        .into());
    }
    Ok(())
}

/// The case table every project starts with: the original system's scenario, campaign 4711.
fn cases() -> String {
    let loss: serde_json::Value = serde_json::from_str(EVENT_LOSS).expect("example JSON");
    let win: serde_json::Value = serde_json::from_str(EVENT_WIN).expect("example JSON");
    let mut no_data = loss.clone();
    no_data.as_object_mut().unwrap().remove("data");
    let rows = [
        ("a lost fight matches", loss, true),
        ("a won fight does not", win, false),
        ("an event without data does not", no_data, false),
    ];
    rows.iter().map(|(name, event, expect)| serde_json::json!({"name": name, "event": event, "expect": expect}).to_string() + "\n").collect()
}

fn campaign_json(name: &str) -> String {
    format!(
        "{{\n  \"campaign_id\": 4712,\n  \"enabled\": true,\n  \"game\": \"foe\",\n  \"event_name\": \"fight\",\n  \"description\": \"{name}: players who lost a fight\"\n}}\n"
    )
}

/// Files of a new project: (relative path, contents).
fn files(name: &str, lang: Lang) -> Vec<(String, String)> {
    let ident = name.replace('-', "_");
    let mut f = vec![
        (MANIFEST.to_owned(), format!("# Read by `rtcrm filter build` and `rtcrm filter test`.\nname = \"{name}\"\nlang = \"{}\"\n", lang.as_str())),
        ("cases.jsonl".to_owned(), cases()),
        ("campaign.json".to_owned(), campaign_json(name)),
    ];
    let (submit, native_test, extra_gitignore) = match lang {
        Lang::Js => (format!("rtcrm campaign put campaign.json --js {name}.mjs"), "node --test   # optional: Node.js 20+, the filter as a plain function".to_owned(), ""),
        Lang::Rust => (format!("rtcrm campaign put campaign.json --wasm {name}.wasm"), "cargo test".to_owned(), "/target\n"),
        Lang::C => (format!("rtcrm campaign put campaign.json --wasm {name}.wasm"), "cc -O2 -Wall -o filter_test filter_test.c && ./filter_test".to_owned(), "/filter_test\n"),
        Lang::Go => (format!("rtcrm campaign put campaign.json --wasm {name}.wasm"), "go test ./...".to_owned(), ""),
    };
    let source = match lang {
        Lang::Js => format!("{name}.mjs"),
        Lang::Rust => "src/lib.rs".into(),
        Lang::C => format!("{name}.c"),
        Lang::Go => "main.go".into(),
    };
    f.push((
        "README.md".to_owned(),
        format!(
            "# {name}\n\nA campaign filter for rtcrm, in {lang}: `{source}`. The case table `cases.jsonl` (one\n\
             `{{\"name\", \"event\", \"expect\"}}` per line) is run by the native test and by `rtcrm filter test`.\n\n\
             ```sh\n\
             {native_test}   # the native unit test: the case table\n\
             rtcrm filter build                 # {build_what}\n\
             rtcrm filter test                  # the case table through rtcrm's sandbox, with the processor's limits\n\
             rtcrm filter eval --filter {module} --event event.json   # one event: true or false\n\
             {submit} --bootstrap-servers HOST:PORT\n\
             ```\n\n\
             The filter ABI and the SDKs are described in `filter-sdk/ABI.md` and `filter-sdk/README.md` of the rtcrm\n\
             repository. The SDK's sources are in this project, so it builds without an rtcrm checkout.\n",
            lang = match lang {
                Lang::Js => "JavaScript",
                Lang::Rust => "Rust",
                Lang::C => "C",
                Lang::Go => "Go",
            },
            build_what = if lang == Lang::Js { "checks that the filter compiles" } else { "writes the module" },
            module = if lang == Lang::Js { format!("{name}.mjs") } else { format!("{name}.wasm") },
        ),
    ));
    f.push((".gitignore".to_owned(), format!("/{name}.wasm\n{extra_gitignore}")));
    match lang {
        Lang::Js => {
            f.push((
                format!("{name}.mjs"),
                "// Players who lost a fight (the original system's campaign 4711). The filter is the module's\n\
                 // default export: it gets the event and matches when it returns true.\n\
                 export default (event) => event.data?.result === 'loss';\n"
                    .to_owned(),
            ));
            f.push((
                "filter.test.mjs".to_owned(),
                format!(
                    "// The case table with Node.js's test runner (`node --test`). The filter runs here as a plain\n\
                     // function; `rtcrm filter test` runs the same cases in rtcrm's sandbox.\n\
                     import {{ test }} from 'node:test';\n\
                     import assert from 'node:assert/strict';\n\
                     import {{ readFileSync }} from 'node:fs';\n\
                     import filter from './{name}.mjs';\n\n\
                     const cases = readFileSync(new URL('./cases.jsonl', import.meta.url), 'utf8').split('\\n').filter((l) => l.trim()).map((l) => JSON.parse(l));\n\
                     for (const c of cases) {{\n  test(c.name, () => assert.equal(filter(c.event) === true, c.expect));\n}}\n"
                ),
            ));
            f.push(("package.json".to_owned(), format!("{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\"\n}}\n")));
        }
        Lang::Rust => {
            f.push((
                "Cargo.toml".to_owned(),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
                     [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
                     [dependencies]\n# The SDK, written into this project by `rtcrm filter new`.\nrtcrm-filter = {{ path = \"rtcrm-sdk/rtcrm-filter\" }}\n\n\
                     # A panic traps the call (error kind `trap`); small, fast modules.\n\
                     [profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\npanic = \"abort\"\nstrip = true\n\n\
                     # Its own workspace, even inside another one.\n[workspace]\n"
                ),
            ));
            f.push((
                "src/lib.rs".to_owned(),
                format!(
                    "//! Players who lost a fight (the original system's campaign 4711).\n\n\
                     use rtcrm_filter::{{filter, Event}};\n\n\
                     #[filter]\n\
                     fn {ident}(event: &Event) -> bool {{\n    event.data().get(\"result\").and_then(|v| v.as_str()) == Some(\"loss\")\n}}\n\n\
                     #[cfg(test)]\n\
                     mod tests {{\n    use super::*;\n    use rtcrm_filter::{{evaluate, serde_json, Status}};\n\n\
                     \x20   /// The case table, as `rtcrm filter test` runs it.\n\
                     \x20   #[test]\n    fn the_case_table() {{\n\
                     \x20       for line in include_str!(\"../cases.jsonl\").lines().filter(|l| !l.trim().is_empty()) {{\n\
                     \x20           let case: serde_json::Value = serde_json::from_str(line).unwrap();\n\
                     \x20           let event = case[\"event\"].to_string();\n\
                     \x20           let want = if case[\"expect\"] == true {{ Status::Match }} else {{ Status::NoMatch }};\n\
                     \x20           assert_eq!(evaluate(event.as_bytes(), {ident}), want, \"{{}}\", case[\"name\"]);\n\
                     \x20       }}\n    }}\n}}\n"
                ),
            ));
            f.push((
                "rtcrm-sdk/rtcrm-filter/Cargo.toml".to_owned(),
                "[package]\nname = \"rtcrm-filter\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\
                 description = \"rtcrm's Rust filter SDK (written into this project by rtcrm filter new)\"\n\n\
                 [dependencies]\nrtcrm-filter-macros = { path = \"../rtcrm-filter-macros\" }\nserde_json = { version = \"1\", features = [\"raw_value\"] }\nserde = \"1\"\n"
                    .to_owned(),
            ));
            f.push(("rtcrm-sdk/rtcrm-filter/src/lib.rs".to_owned(), RUST_SDK_LIB.to_owned()));
            f.push((
                "rtcrm-sdk/rtcrm-filter-macros/Cargo.toml".to_owned(),
                "[package]\nname = \"rtcrm-filter-macros\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
                 [lib]\nproc-macro = true\n\n[dependencies]\nproc-macro2 = \"1\"\nquote = \"1\"\nsyn = { version = \"2\", features = [\"full\"] }\n"
                    .to_owned(),
            ));
            f.push(("rtcrm-sdk/rtcrm-filter-macros/src/lib.rs".to_owned(), RUST_MACROS_LIB.to_owned()));
        }
        Lang::C => {
            f.push(("rtcrm_filter.h".to_owned(), C_HEADER.to_owned()));
            f.push((
                format!("{name}.c"),
                format!(
                    "/* Players who lost a fight (the original system's campaign 4711). */\n\
                     #include \"rtcrm_filter.h\"\n\n\
                     static int {ident}(rtcrm_event event) {{\n    return rtcrm_string_eq(event, \"data.result\", \"loss\");\n}}\n\n\
                     RTCRM_FILTER({ident})\n"
                ),
            ));
            f.push((
                "filter_test.c".to_owned(),
                format!(
                    "/* The native unit test: runs the case table (cases.jsonl) through the filter with rtcrm_eval.\n\
                     \x20* cc -O2 -Wall -o filter_test filter_test.c && ./filter_test */\n\
                     #include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n\
                     #include \"{name}.c\"\n\n\
                     int main(int argc, char **argv) {{\n\
                     \x20   const char *path = argc > 1 ? argv[1] : \"cases.jsonl\";\n\
                     \x20   FILE *f = fopen(path, \"r\");\n\
                     \x20   if (!f) {{ perror(path); return 2; }}\n\
                     \x20   static char line[1 << 20];\n\
                     \x20   int passed = 0, failed = 0;\n\
                     \x20   while (fgets(line, sizeof line, f)) {{\n\
                     \x20       rtcrm_event row = {{line, strlen(line)}};\n\
                     \x20       rtcrm_value event = rtcrm_member(rtcrm_root(row), \"event\");\n\
                     \x20       if (event.type == RTCRM_MISSING) continue;\n\
                     \x20       int expect = 0;\n\
                     \x20       rtcrm_get_bool(row, \"expect\", &expect);\n\
                     \x20       char name[256] = \"\";\n\
                     \x20       rtcrm_get_string(row, \"name\", name, sizeof name);\n\
                     \x20       int got = rtcrm_eval({ident}, event.text, event.len);\n\
                     \x20       if (got == (expect ? RTCRM_MATCH : RTCRM_NO_MATCH)) {{ passed++; printf(\"ok   %s\\n\", name); }}\n\
                     \x20       else {{ failed++; printf(\"FAIL %s: expected %s, got status %d\\n\", name, expect ? \"a match\" : \"no match\", got); }}\n\
                     \x20   }}\n\
                     \x20   fclose(f);\n\
                     \x20   printf(\"%d passed, %d failed\\n\", passed, failed);\n\
                     \x20   return failed ? 1 : 0;\n}}\n"
                ),
            ));
        }
        Lang::Go => {
            f.push((
                "go.mod".to_owned(),
                format!(
                    "module {name}\n\ngo 1.24\n\nrequire rtcrm.dev/filter v0.0.0\n\n\
                     // The SDK, written into this project by `rtcrm filter new`.\nreplace rtcrm.dev/filter => ./rtcrm-filter\n"
                ),
            ));
            f.push(("rtcrm-filter/go.mod".to_owned(), "module rtcrm.dev/filter\n\ngo 1.24\n".to_owned()));
            f.push(("rtcrm-filter/filter.go".to_owned(), GO_FILTER.to_owned()));
            f.push(("rtcrm-filter/abi_wasip1.go".to_owned(), GO_ABI.to_owned()));
            let func = go_ident(name);
            f.push((
                "main.go".to_owned(),
                format!(
                    "// Players who lost a fight (the original system's campaign 4711).\npackage main\n\n\
                     import \"rtcrm.dev/filter\"\n\n\
                     func {func}(e *filter.Event) bool {{\n\tresult, _ := e.Data.String(\"result\")\n\treturn result == \"loss\"\n}}\n\n\
                     func init() {{ filter.Handle({func}) }} // _initialize runs init functions; main never runs\n\n\
                     func main() {{}}\n"
                ),
            ));
            f.push((
                "main_test.go".to_owned(),
                format!(
                    "package main\n\n\
                     import (\n\t\"bufio\"\n\t\"encoding/json\"\n\t\"os\"\n\t\"testing\"\n\n\t\"rtcrm.dev/filter\"\n)\n\n\
                     // The case table, as `rtcrm filter test` runs it.\n\
                     func TestTheCaseTable(t *testing.T) {{\n\
                     \tf, err := os.Open(\"cases.jsonl\")\n\tif err != nil {{\n\t\tt.Fatal(err)\n\t}}\n\tdefer f.Close()\n\
                     \tlines := bufio.NewScanner(f)\n\tlines.Buffer(make([]byte, 1<<20), 1<<20)\n\
                     \tfor lines.Scan() {{\n\
                     \t\tvar c struct {{\n\t\t\tName   string          `json:\"name\"`\n\t\t\tEvent  json.RawMessage `json:\"event\"`\n\t\t\tExpect bool            `json:\"expect\"`\n\t\t}}\n\
                     \t\tif len(lines.Bytes()) == 0 {{\n\t\t\tcontinue\n\t\t}}\n\
                     \t\tif err := json.Unmarshal(lines.Bytes(), &c); err != nil {{\n\t\t\tt.Fatal(err)\n\t\t}}\n\
                     \t\twant := filter.NoMatch\n\t\tif c.Expect {{\n\t\t\twant = filter.Match\n\t\t}}\n\
                     \t\tif got := filter.Eval(c.Event, {func}); got != want {{\n\t\t\tt.Errorf(\"%s: got %d, want %d\", c.Name, got, want)\n\t\t}}\n\
                     \t}}\n}}\n"
                ),
            ));
        }
    }
    f
}

/// `fight-loss` → `fightLoss`.
fn go_ident(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `rtcrm filter new`.
pub fn new(name: &str, lang: Lang, dir: Option<&Path>) -> Result<()> {
    check_name(name)?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Exit { code: 2, message: format!("{} exists and is not empty: give a new directory (--dir)", dir.display()) }.into());
    }
    for (path, text) in files(name, lang) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project")).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let shown = dir.display();
    let (test, module) = match lang {
        Lang::Js => ("node --test   (optional, Node.js 20+)".to_owned(), format!("{name}.mjs")),
        Lang::Rust => ("cargo test".to_owned(), format!("{name}.wasm")),
        Lang::C => ("cc -O2 -Wall -o filter_test filter_test.c && ./filter_test".to_owned(), format!("{name}.wasm")),
        Lang::Go => ("go test ./...".to_owned(), format!("{name}.wasm")),
    };
    let put = if lang == Lang::Js { format!("--js {module}") } else { format!("--wasm {module}") };
    println!(
        "created {shown}: a {} filter with its case table (cases.jsonl) and a campaign (campaign.json); the SDK is inside.\n\n\
         cd {shown}\n\
         {test}   # the native unit test\n\
         rtcrm filter build\n\
         rtcrm filter test\n\
         rtcrm campaign put campaign.json {put} --bootstrap-servers HOST:PORT",
        lang.as_str()
    );
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Exit {
        code: 2,
        message: format!("{}: {e}; run this in a project made by `rtcrm filter new` (or give its directory)", path.display()),
    })?;
    let manifest: Manifest = toml::from_str(&text).with_context(|| format!("{} is not a valid {MANIFEST}", path.display()))?;
    check_name(&manifest.name)?;
    Ok(manifest)
}

/// Runs a toolchain command in `dir`; a missing program is named with how to install it.
fn run(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &str)], install: &str) -> Result<()> {
    let shown = format!("{program} {}", args.join(" "));
    eprintln!("rtcrm filter build: {shown}");
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .status()
        .map_err(|e| Exit { code: 1, message: format!("cannot run `{program}` ({e}): {install}") })?;
    if !status.success() {
        bail!("`{shown}` failed ({status}) in {}", dir.display());
    }
    Ok(())
}

fn has_rust_target(target: &str) -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == target))
        .unwrap_or(true)
}

/// `rtcrm filter build [DIR]`: returns the built module (for JavaScript, the source).
pub fn build(dir: &Path) -> Result<PathBuf> {
    let m = read_manifest(dir)?;
    let module = dir.join(format!("{}.wasm", m.name));
    match m.lang {
        Lang::Js => {
            let source = dir.join(format!("{}.mjs", m.name));
            let text = std::fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
            let sandbox = rtcrm_sandbox::Sandbox::new(rtcrm_sandbox::SandboxConfig::default())?;
            sandbox.compile_js(&text).map_err(|e| match e {
                rtcrm_sandbox::CompileError::Syntax { message, line, column } => {
                    Exit { code: 2, message: format!("{}:{line}:{column}: {message}", source.display()) }
                }
                other => Exit { code: 2, message: format!("{}: {other}", source.display()) },
            })?;
            println!(
                "{} compiles; a campaign carries JavaScript as source: rtcrm campaign put campaign.json --js {}.mjs",
                source.display(),
                m.name
            );
            return Ok(source);
        }
        Lang::Rust => {
            if !has_rust_target("wasm32-unknown-unknown") {
                return Err(Exit { code: 1, message: "the Rust target wasm32-unknown-unknown is missing: rustup target add wasm32-unknown-unknown".into() }.into());
            }
            // Flags meant for the host (e.g. -C target-cpu=native) must not reach the wasm build.
            let mut cmd_env = vec![];
            cmd_env.push(("CARGO_TARGET_DIR", "target"));
            let status = Command::new("cargo")
                .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET")
                .envs(cmd_env)
                .current_dir(dir)
                .status()
                .map_err(|e| Exit { code: 1, message: format!("cannot run cargo ({e}): install Rust with rustup") })?;
            if !status.success() {
                bail!("`cargo build --release --target wasm32-unknown-unknown` failed ({status}) in {}", dir.display());
            }
            let built = dir.join("target/wasm32-unknown-unknown/release").join(format!("{}.wasm", m.name.replace('-', "_")));
            std::fs::copy(&built, &module).with_context(|| format!("copying {} to {}", built.display(), module.display()))?;
        }
        Lang::C => {
            let source = format!("{}.c", m.name);
            let out = format!("{}.wasm", m.name);
            run(
                dir,
                "clang-19",
                &[
                    "--target=wasm32-wasi",
                    "--sysroot=/usr",
                    "-nostdlibinc",
                    "-isystem",
                    "/usr/include/wasm32-wasi",
                    "-mexec-model=reactor",
                    "-O2",
                    "-Wall",
                    "-Wl,--strip-all",
                    "-o",
                    &out,
                    &source,
                ],
                &[],
                "apt-get install clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc",
            )
            .map_err(|e| {
                let hint = if !Path::new("/usr/include/wasm32-wasi/stdlib.h").exists() {
                    " (wasi-libc is missing: apt-get install wasi-libc)"
                } else if Command::new("wasm-ld-19").arg("--version").output().is_err() {
                    " (wasm-ld is missing: apt-get install lld-19 libclang-rt-19-dev-wasm32)"
                } else {
                    ""
                };
                anyhow::anyhow!("{e:#}{hint}")
            })?;
        }
        Lang::Go => {
            let out = format!("{}.wasm", m.name);
            run(
                dir,
                "go",
                &["build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", &out, "."],
                &[("GOOS", "wasip1"), ("GOARCH", "wasm"), ("GOFLAGS", "-mod=mod")],
                "install Go 1.24 or later (https://go.dev/dl/)",
            )?;
        }
    }
    let size = std::fs::metadata(&module).map(|m| m.len()).unwrap_or(0);
    println!("{} ({size} bytes): rtcrm campaign put campaign.json --wasm {}.wasm", module.display(), m.name);
    Ok(module)
}

/// `rtcrm filter test [DIR]`: the case table through the sandbox, with the processor's limits.
pub fn test(dir: &Path) -> Result<()> {
    let m = read_manifest(dir)?;
    let filter = match m.lang {
        Lang::Js => dir.join(format!("{}.mjs", m.name)),
        _ => dir.join(format!("{}.wasm", m.name)),
    };
    if !filter.exists() {
        return Err(Exit { code: 2, message: format!("{} does not exist: run `rtcrm filter build` first", filter.display()) }.into());
    }
    let cases_path = dir.join("cases.jsonl");
    let text = std::fs::read_to_string(&cases_path).with_context(|| format!("reading {}", cases_path.display()))?;
    let sandbox = rtcrm_sandbox::Sandbox::new(rtcrm_sandbox::SandboxConfig::default()).context("starting the filter sandbox")?;
    let compiled = crate::cli::filter::load_filter(&sandbox, &filter)?;
    let mut instance = sandbox
        .filter(&compiled, &m.name, sandbox.limits())
        .map_err(|e| Exit { code: 3, message: format!("{}: {}: {e}", filter.display(), e.kind()) })?;
    let (mut passed, mut failed) = (0, 0);
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let where_ = format!("{}:{}", cases_path.display(), n + 1);
        let case: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Exit { code: 2, message: format!("{where_}: not a JSON case ({e})") })?;
        let name = case["name"].as_str().unwrap_or("(unnamed)").to_owned();
        let Some(expect) = case["expect"].as_bool() else {
            return Err(Exit { code: 2, message: format!("{where_}: `expect` must be true or false") }.into());
        };
        let event = rtcrm_sandbox::Event::parse(case["event"].to_string().into_bytes())
            .map_err(|e| Exit { code: 2, message: format!("{where_}: `event` is not an event ({e})") })?;
        match instance.eval(&event) {
            Ok(v) if v.matched == expect => {
                passed += 1;
                println!("ok   {name}");
            }
            Ok(v) => {
                failed += 1;
                println!("FAIL {name}: expected {expect}, got {}", v.matched);
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: expected {expect}, got error:{}: {e}", e.kind());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(Exit { code: 1, message: String::new() }.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_identifiers() {
        assert!(check_name("fight-loss").is_ok() && check_name("f2").is_ok());
        for bad in ["", "Fight", "2f", "a_b", "a b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(go_ident("fight-loss-2"), "fightLoss2");
    }

    #[test]
    fn every_project_has_its_manifest_cases_and_campaign() {
        for lang in [Lang::Js, Lang::Rust, Lang::C, Lang::Go] {
            let files = files("fight-loss", lang);
            let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
            for needed in [MANIFEST, "cases.jsonl", "campaign.json", "README.md"] {
                assert!(names.contains(&needed), "{lang:?}: {names:?}");
            }
            let manifest: Manifest = toml::from_str(&files[0].1).unwrap();
            assert_eq!((manifest.name.as_str(), manifest.lang), ("fight-loss", lang));
        }
        assert_eq!(cases().lines().count(), 3);
    }
}
