//! `rtcrm filter check | compile | eval`: the sandbox on the command line, with the same engine
//! and limits as the processor.

use crate::cli::{EvalArgs, FilterCommand, LimitArgs};
use crate::Exit;
use anyhow::{Context, Result};
use rtcrm_sandbox::{CompileError, CompiledFilter, CompiledJs, EvalError, Event, Filter, Limits, ModuleLoadError, Sandbox, SandboxConfig, Verdict};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

pub fn run(cmd: FilterCommand) -> Result<()> {
    match cmd {
        FilterCommand::Check { file } => {
            let sandbox = new_sandbox()?;
            if is_module(&file)? {
                let summary = check_module(&sandbox, &file)?;
                println!("ok: {summary}");
            } else {
                compile_file(&sandbox, &file)?;
                println!("ok");
            }
            Ok(())
        }
        FilterCommand::New { name, lang, dir } => crate::cli::project::new(&name, lang, dir.as_deref()),
        FilterCommand::Build { dir } => crate::cli::project::build(&dir).map(drop),
        FilterCommand::Test { dir } => crate::cli::project::test(&dir),
        FilterCommand::Compile { file, output } => {
            let sandbox = new_sandbox()?;
            let compiled = compile_file(&sandbox, &file)?;
            std::fs::write(&output, compiled.module_bytes())
                .with_context(|| format!("writing {}", output.display()))?;
            Ok(())
        }
        FilterCommand::Eval(args) => eval(args),
    }
}

fn new_sandbox() -> Result<Sandbox> {
    Sandbox::new(SandboxConfig::default()).context("starting the filter sandbox")
}

fn lowered(host: Limits, args: LimitArgs) -> Limits {
    let mut limits = host.lowered(args.fuel, args.memory_mb);
    if let Some(ms) = args.deadline_ms {
        limits.deadline = limits.deadline.min(Duration::from_millis(ms));
    }
    limits
}

/// Reads and compiles a JavaScript filter; a rejected source is exit 2 with `FILE:LINE:COLUMN: message`.
fn compile_file(sandbox: &Sandbox, file: &Path) -> Result<CompiledJs> {
    let source = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    sandbox.compile_js(&source).map_err(|e| rejected(file, &e).into())
}

fn rejected(file: &Path, err: &CompileError) -> Exit {
    let message = match err {
        CompileError::Syntax { message, line, column } => format!("{}:{line}:{column}: {message}", file.display()),
        other => format!("{}:1:1: {other}", file.display()),
    };
    Exit { code: 2, message }
}

/// Whether `file` is a WebAssembly module: named `.wasm`, or starting with the module magic.
fn is_module(file: &Path) -> Result<bool> {
    if file.extension().and_then(|e| e.to_str()) == Some("wasm") {
        return Ok(true);
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(std::io::Read::read(&mut f, &mut magic).unwrap_or(0) == 4 && magic == *b"\0asm")
}

/// Validates a module as the processor does at submission; returns what it is.
fn check_module(sandbox: &Sandbox, file: &Path) -> Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let js = crate::cli::campaign::is_js_campaign_module(&bytes);
    let compiled = load_filter(sandbox, file)?;
    let size = bytes.len();
    Ok(if js {
        format!(
            "a JavaScript campaign module ({size} bytes, rtcrm filter compile output): filter eval runs it; a campaign \
             carries the JavaScript source instead (rtcrm campaign put CAMPAIGN.json --js SOURCE.js)"
        )
    } else {
        let (version, state) = match &compiled {
            CompiledFilter::Wasm(w) if w.supports_state() => (w.abi_version(), "with per-player state, for campaigns with or without `state`"),
            CompiledFilter::Wasm(w) => (w.abi_version(), "for campaigns without `state`"),
            CompiledFilter::Js(_) => unreachable!("a module that is not a JavaScript campaign module loads as Wasm"),
        };
        format!(
            "a filter module of ABI version {version} ({size} bytes, {state}): imports, exports and version as \
             filter-sdk/ABI.md asks, instantiated once; submit it with rtcrm campaign put CAMPAIGN.json --wasm {}",
            file.display()
        )
    })
}

/// A `.wasm` file (or a file starting with the module magic) is a JavaScript campaign module or
/// a module of the filter ABI; anything else is JavaScript source.
pub fn load_filter(sandbox: &Sandbox, file: &Path) -> Result<CompiledFilter> {
    if is_module(file)? {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        return sandbox.load_module(&bytes).map_err(|e| match e {
            ModuleLoadError::Compile(c) => rejected(file, &c).into(),
            other => Exit { code: 2, message: format!("{}: {other}", file.display()) }.into(),
        });
    }
    compile_file(sandbox, file).map(CompiledFilter::Js)
}

/// The default of a campaign's `state.max_bytes` (spec §12), for `eval --state`.
const DEFAULT_STATE_MAX_BYTES: usize = 1024;

/// `eval --state JSON`: the player's state as given, checked to be a JSON object.
fn initial_state(text: &str) -> Result<String, Exit> {
    let usage = |why: String| Exit { code: 2, message: format!("--state must be a JSON object such as '{{}}' or '{{\"purchases\":4}}': {why}") };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text.trim().to_owned()),
        Ok(other) => {
            let shown: String = other.to_string().chars().take(40).collect();
            Err(usage(format!("`{shown}` is not an object")))
        }
        Err(e) => Err(usage(format!("it is not JSON ({e})"))),
    }
}

/// One player's evaluations: plain, or with the state threaded from one event to the next.
struct Evaluator {
    filter: Filter,
    /// The current state and the campaign's `state.max_bytes` (`eval --state`).
    state: Option<(String, usize)>,
}

impl Evaluator {
    /// Evaluates one event; with a state, the new state replaces the current one only when the
    /// evaluation succeeds, as the processor keeps a player's state.
    fn eval(&mut self, event: &Event) -> Result<Verdict, EvalError> {
        match &mut self.state {
            None => self.filter.eval(event),
            Some((state, max)) => {
                let (verdict, new) = self.filter.eval_with_state(event, Some(state), *max)?;
                *state = new;
                Ok(verdict)
            }
        }
    }

    /// The line printed after the verdicts: the state, with --state.
    fn state_line(&self) -> Option<&str> {
        self.state.as_ref().map(|(s, _)| s.as_str())
    }
}

fn eval(args: EvalArgs) -> Result<()> {
    let state = args.state.as_deref().map(initial_state).transpose()?;
    let max_bytes = args.state_max_bytes.map_or(DEFAULT_STATE_MAX_BYTES, |n| n as usize);
    // Compiled under the host's limits; evaluated under the lowered ones, as a campaign's `limits`.
    // With --state-max-bytes above the host's default cap, the cap is raised to it, as the
    // processor's `--state-max-bytes` would.
    let sandbox = match state {
        Some(_) if max_bytes > SandboxConfig::default().state_max_bytes => {
            Sandbox::new(SandboxConfig { state_max_bytes: max_bytes, ..SandboxConfig::default() }).context("starting the filter sandbox")?
        }
        _ => new_sandbox()?,
    };
    let compiled = load_filter(&sandbox, &args.filter)?;
    if state.is_some() {
        // As a campaign with `state` is refused at submission (filter-sdk/ABI.md §9.6).
        compiled.check_state_support().map_err(|e| Exit { code: 2, message: format!("{}: {e}", args.filter.display()) })?;
    }
    let name = args.filter.file_stem().map_or_else(|| "filter".into(), |s| s.to_string_lossy().into_owned());
    let filter = sandbox
        .filter(&compiled, &name, lowered(sandbox.limits(), args.limits))
        .map_err(|e| Exit { code: 3, message: format!("{}: {e}", e.kind()) })?;
    let mut filter = Evaluator { filter, state: state.map(|s| (s, max_bytes)) };

    if let Some(path) = args.event {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        // The parser's message already names the cause; it is not chained again.
        let event = Event::parse(bytes).map_err(|e| Exit { code: 2, message: format!("{} is not an event: {e}", path.display()) })?;
        return match filter.eval(&event) {
            Ok(v) => {
                println!("{}", v.matched);
                if let Some(state) = filter.state_line() {
                    println!("{state}");
                }
                Ok(())
            }
            Err(e) => Err(Exit { code: 3, message: format!("{}: {e}", e.kind()) }.into()),
        };
    }

    let path = args.events.expect("clap requires --event or --events");
    let file = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = match Event::parse(line.into_bytes()) {
            Ok(event) => match filter.eval(&event) {
                Ok(v) => v.matched.to_string(),
                Err(e) => {
                    eprintln!("{}:{}: {}: {e}", path.display(), n + 1, e.kind());
                    failed += 1;
                    format!("error:{}", e.kind())
                }
            },
            Err(e) => {
                eprintln!("{}:{}: not an event: {e}", path.display(), n + 1);
                failed += 1;
                "error:event".to_owned()
            }
        };
        writeln!(out, "{result}")?;
    }
    if let Some(state) = filter.state_line() {
        writeln!(out, "{state}")?;
    }
    out.flush()?;
    if failed > 0 {
        return Err(Exit { code: 3, message: format!("{failed} event(s) failed") }.into());
    }
    Ok(())
}
