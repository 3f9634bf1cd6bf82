//! Criterion benchmarks of the sandbox (spec issue: figures (a), (a2), (b), and the
//! fresh-instance alternative). `scripts/bench.sh` (or `cargo bench -p rtcrm --bench table`)
//! prints all figures of one run as a table with ratios.

#[path = "common/mod.rs"]
mod common;

use common::{seed_native, SEED_EVENT, SEED_FILTER, TEN};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rtcrm_sandbox::{Event, Sandbox, SandboxConfig};

fn sandbox(fuel: bool) -> Sandbox {
    Sandbox::new(SandboxConfig { fuel_metering: fuel, ..SandboxConfig::default() }).unwrap()
}

fn one_campaign(c: &mut Criterion) {
    let mut group = c.benchmark_group("a_one_campaign");
    for (name, fuel) in [("sandbox_fuel", true), ("sandbox_nofuel", false)] {
        let sb = sandbox(fuel);
        let mut f = sb.js_filter(&sb.compile_js(SEED_FILTER).unwrap(), "seed", sb.limits()).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let event = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
                assert!(f.eval(&event).unwrap().matched);
            })
        });
    }
    group.bench_function("native", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(SEED_EVENT.as_bytes())).unwrap();
            assert!(seed_native(&v));
        })
    });
    group.finish();
}

fn ten_campaigns(c: &mut Criterion) {
    let mut group = c.benchmark_group("a2_ten_campaigns");
    let sb = sandbox(true);
    let mut filters: Vec<_> = TEN
        .iter()
        .map(|(src, _)| sb.js_filter(&sb.compile_js(src).unwrap(), "c", sb.limits()).unwrap())
        .collect();
    group.bench_function("sandbox_fuel", |b| {
        b.iter(|| {
            let event = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            let mut n = 0;
            for f in &mut filters {
                n += usize::from(f.eval(&event).unwrap().matched);
            }
            assert_eq!(n, 10);
        })
    });
    group.bench_function("native", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(SEED_EVENT.as_bytes())).unwrap();
            let n = TEN.iter().filter(|(_, f)| f(&v)).count();
            assert_eq!(n, 10);
        })
    });
    group.finish();
}

fn compile_on_arrival(c: &mut Criterion) {
    let sb = sandbox(true);
    c.bench_function("b_compile/js_source_to_ready_filter", |b| {
        b.iter(|| {
            let compiled = sb.compile_js(black_box(SEED_FILTER)).unwrap();
            sb.js_filter(&compiled, "new", sb.limits()).unwrap()
        })
    });
}

fn fresh_instance(c: &mut Criterion) {
    let sb = sandbox(true);
    let compiled = sb.compile_js(SEED_FILTER).unwrap();
    c.bench_function("fresh_instance_per_event", |b| {
        b.iter(|| {
            let event = Event::parse(black_box(SEED_EVENT.as_bytes()).to_vec()).unwrap();
            let mut f = sb.js_filter(&compiled, "fresh", sb.limits()).unwrap();
            assert!(f.eval(&event).unwrap().matched);
        })
    });
}

criterion_group!(benches, one_campaign, ten_campaigns, compile_on_arrival, fresh_instance);
criterion_main!(benches);
