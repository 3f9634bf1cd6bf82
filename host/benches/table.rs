//! One run, every sandbox figure, printed as a table: `cargo bench -p rtcrm --bench table`
//! (or `scripts/bench.sh`).
//!
//! Timings are medians over interleaved samples (each sample a batch of iterations, the cases of
//! a row measured in turn), so machine noise hits a row's cases alike and the ratios hold better
//! than the absolute figures on a shared 2-core machine.

#[path = "../sandbox/benches/common/mod.rs"]
mod common;

use common::{seed_native, SEED_EVENT, SEED_FILTER, TEN};
use rtcrm_sandbox::{Event, Sandbox, SandboxConfig};
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

const SAMPLES: usize = 41;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median nanoseconds per iteration of each case, sampled in turn.
fn interleaved(cases: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let batches: Vec<usize> = cases
        .iter_mut()
        .map(|f| {
            let mut n = 1;
            loop {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                if t.elapsed() >= Duration::from_millis(3) || n >= 1 << 20 {
                    return n;
                }
                n *= 2;
            }
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(SAMPLES); cases.len()];
    for _ in 0..SAMPLES {
        for (i, f) in cases.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..batches[i] {
                f();
            }
            samples[i].push(t.elapsed().as_nanos() as f64 / batches[i] as f64);
        }
    }
    samples.into_iter().map(median).collect()
}

/// `(Pss, RssAnon, Rss)` of this process in bytes. PSS counts a page shared by N mappings as
/// 1/N: the CoW-mapped runtime snapshot, read by every instance, is one physical copy, which RSS
/// counts once per instance.
fn memory() -> (f64, f64, f64) {
    let field = |text: &str, name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in /proc"));
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
    };
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("/proc/self/smaps_rollup");
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    (field(&rollup, "Pss:"), field(&status, "RssAnon:"), field(&status, "VmRSS:"))
}

fn sandbox(fuel: bool) -> Sandbox {
    Sandbox::new(SandboxConfig { fuel_metering: fuel, ..SandboxConfig::default() }).expect("sandbox")
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let sb = sandbox(true);
    let sb_nofuel = sandbox(false);
    let mut rows: Vec<[String; 5]> = Vec::new();
    let us = |ns: f64| format!("{:.2} µs", ns / 1000.0);

    // (c) resident memory per live instance, 1,000 campaigns loaded (measured first, on a quiet heap).
    let compiled: Vec<_> = TEN.iter().map(|(src, _)| sb.compile_js(src).unwrap()).collect();
    let event = Event::parse(SEED_EVENT.as_bytes().to_vec()).unwrap();
    let before = memory();
    let mut fleet = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut f = sb.js_filter(&compiled[i % 10], "c", sb.limits()).unwrap();
        f.eval(&event).unwrap();
        fleet.push(f);
    }
    let after = memory();
    let per = |a: f64, b: f64| (a - b).max(0.0) / 1000.0 / 1024.0;
    let (pss, anon, rss) = (per(after.0, before.0), per(after.1, before.1), per(after.2, before.2));
    drop(fleet);

    // (a) one campaign.
    let mut fuel_f = sb.js_filter(&sb.compile_js(SEED_FILTER).unwrap(), "seed", sb.limits()).unwrap();
    let mut nofuel_f = sb_nofuel.js_filter(&sb_nofuel.compile_js(SEED_FILTER).unwrap(), "seed", sb_nofuel.limits()).unwrap();
    let m = interleaved(&mut [
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            assert!(fuel_f.eval(&e).unwrap().matched);
        },
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            assert!(nofuel_f.eval(&e).unwrap().matched);
        },
        &mut || {
            let v: serde_json::Value = serde_json::from_slice(black_box(SEED_EVENT.as_bytes())).unwrap();
            assert!(seed_native(&v));
        },
    ]);
    let (a_fuel, a_nofuel, a_native) = (m[0], m[1], m[2]);
    rows.push(["(a) one campaign, JS in the sandbox, fuel on".into(), us(a_fuel), format!("{:.2}×", a_fuel / a_native), "≤ 4×".into(), "≤ 1.5×".into()]);
    rows.push(["(a) one campaign, JS in the sandbox, fuel off".into(), us(a_nofuel), format!("{:.2}×", a_nofuel / a_native), "".into(), "".into()]);
    rows.push(["(a) one campaign, native closure (baseline)".into(), us(a_native), "1.00×".into(), "".into(), "".into()]);

    // (a2) ten campaigns on the same event.
    let mut ten: Vec<_> = compiled.iter().map(|c| sb.js_filter(c, "c", sb.limits()).unwrap()).collect();
    let m = interleaved(&mut [
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            let n = ten.iter_mut().map(|f| f.eval(&e).unwrap().matched).filter(|m| *m).count();
            assert_eq!(n, 10);
        },
        &mut || {
            let v: serde_json::Value = serde_json::from_slice(black_box(SEED_EVENT.as_bytes())).unwrap();
            assert_eq!(TEN.iter().filter(|(_, f)| f(&v)).count(), 10);
        },
    ]);
    rows.push(["(a2) ten campaigns per event, sandbox, fuel on".into(), us(m[0]), format!("{:.2}×", m[0] / m[1]), "≤ 10×".into(), "≤ 3×".into()]);
    rows.push(["(a2) ten campaigns per event, native (baseline)".into(), us(m[1]), "1.00×".into(), "".into(), "".into()]);

    // WebAssembly filters (filter ABI), the original filter built by each SDK, vs native.
    let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/filter-examples-bench");
    let built = Command::new("bash")
        .arg(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../filter-sdk/build-examples.sh"))
        .arg(&examples)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash runs");
    assert!(built.success(), "filter-sdk/build-examples.sh failed");
    let mut wasm: Vec<(&str, rtcrm_sandbox::Filter)> = ["rust", "c", "go"]
        .into_iter()
        .map(|lang| {
            let bytes = std::fs::read(examples.join(lang).join("fight-loss.wasm")).expect("example module");
            let compiled = rtcrm_sandbox::CompiledFilter::Wasm(sb.load_wasm(&bytes).expect("valid module"));
            (lang, sb.filter(&compiled, lang, sb.limits()).unwrap())
        })
        .collect();
    let [(_, rust), (_, c), (_, go)] = &mut wasm[..] else { unreachable!() };
    let m = interleaved(&mut [
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            assert!(rust.eval(&e).unwrap().matched);
        },
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            assert!(c.eval(&e).unwrap().matched);
        },
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            assert!(go.eval(&e).unwrap().matched);
        },
        &mut || {
            let v: serde_json::Value = serde_json::from_slice(black_box(SEED_EVENT.as_bytes())).unwrap();
            assert!(seed_native(&v));
        },
    ]);
    rows.push(["Rust-SDK filter (Wasm) in the sandbox, fuel on".into(), us(m[0]), format!("{:.2}×", m[0] / m[3]), "".into(), "≤ 1.5×".into()]);
    rows.push(["C-SDK filter (Wasm) in the sandbox, fuel on".into(), us(m[1]), format!("{:.2}×", m[1] / m[3]), "".into(), "".into()]);
    rows.push(["Go-SDK filter (Wasm) in the sandbox, fuel on".into(), us(m[2]), format!("{:.2}×", m[2] / m[3]), "".into(), "".into()]);
    rows.push(["native closure (baseline of the three rows above)".into(), us(m[3]), "1.00×".into(), "".into(), "".into()]);
    drop(wasm);

    // (b) compile on arrival, and the fresh-instance-per-event alternative.
    let seed = sb.compile_js(SEED_FILTER).unwrap();
    let mut reused = sb.js_filter(&seed, "seed", sb.limits()).unwrap();
    let m = interleaved(&mut [
        &mut || {
            let c = sb.compile_js(black_box(SEED_FILTER)).unwrap();
            black_box(sb.js_filter(&c, "new", sb.limits()).unwrap());
        },
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            let mut f = sb.js_filter(&seed, "fresh", sb.limits()).unwrap();
            assert!(f.eval(&e).unwrap().matched);
        },
        &mut || {
            let e = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            assert!(reused.eval(&e).unwrap().matched);
        },
    ]);
    rows.push(["(b) compile on arrival: JS source → filter ready".into(), format!("{:.3} ms", m[0] / 1e6), "".into(), "≤ 5 ms".into(), "".into()]);
    rows.push(["fresh instance per event (alternative)".into(), us(m[1]), format!("{:.1}× reused", m[1] / m[2]), "".into(), "".into()]);
    rows.push(["reused instance per campaign (rtcrm)".into(), us(m[2]), "1.00×".into(), "".into(), "".into()]);

    rows.push(["(c) resident memory (PSS) per live JS campaign, 1,000 loaded".into(), format!("{pss:.0} KiB"), format!("private {anon:.0} KiB; RSS {rss:.0} KiB"), "≤ 256 KiB".into(), "".into()]);

    // (d) warm start: process start to first evaluation, runtime cache present.
    let exe = env!("CARGO_BIN_EXE_rtcrm");
    let dir = std::env::temp_dir().join(format!("rtcrm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seed.js"), SEED_FILTER).unwrap();
    std::fs::write(dir.join("seed.json"), SEED_EVENT).unwrap();
    let run = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new(exe).args(args).current_dir(&dir).output().expect("rtcrm runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        t.elapsed().as_nanos() as f64
    };
    let eval_args = ["filter", "eval", "--filter", "seed.js", "--event", "seed.json"];
    run(&eval_args); // fills the runtime cache if it is empty
    let mut starts = Vec::new();
    let mut versions = Vec::new();
    for _ in 0..15 {
        starts.push(run(&eval_args));
        versions.push(run(&["--version"]));
    }
    let (start, version) = (median(starts), median(versions));
    std::fs::remove_dir_all(&dir).ok();
    rows.push(["(d) warm start: `rtcrm filter eval` process, start to verdict".into(), format!("{:.1} ms", start / 1e6), format!("{:.1}× `rtcrm --version`", start / version), "≤ 200 ms".into(), "".into()]);
    rows.push(["(d) baseline: `rtcrm --version` process".into(), format!("{:.1} ms", version / 1e6), "".into(), "".into(), "".into()]);

    println!("\n| figure | median | ratio | required | goal |\n| --- | --- | --- | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
    }
}
