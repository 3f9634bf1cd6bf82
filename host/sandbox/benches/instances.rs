//! Filter instances at scale (issue 8, item 6): what one JavaScript filter instance costs to
//! build, evaluate, keep and drop when there are thousands of them, as in a host with 10,000
//! campaigns over 100 (game, event_name) pairs.
//!
//! ```text
//! cargo bench -p rtcrm-sandbox --bench instances -- [N ...] [--rounds R] [--pool] [--fault-around]
//! ```
//! (default N = 1000 10000, R = 3; each N runs in a process of its own). `--pool` gives the
//! sandbox a budget of N + 16 filter instances (wasmtime's pooling allocator,
//! `SandboxConfig::max_instances`); `--fault-around` leaves Linux's fault-around on
//! (`SandboxConfig::touched_pages_only = false`). For each N, with N distinct campaigns
//! `e => e.data.score > K`:
//! - **build**: `Sandbox::filter` (instantiate the runtime, load the bytecode), each of the N;
//! - **first eval**: the first evaluation of each instance, after all N were built;
//! - **cycling eval**: R passes over the N instances in groups of 100 consecutive campaigns (one
//!   group per event, groups in random order: the host's access pattern with 100 campaigns per
//!   event), per evaluation;
//! - **rebuild**: with the N instances alive, build + first eval + drop of a random campaign's
//!   extra instance (what a pool miss costs the host);
//! - **drop**: dropping each of the N;
//! - **resident memory per live instance**: RSS (`/proc/self/status` VmRSS) and PSS
//!   (`/proc/self/smaps_rollup` Pss) after all N were evaluated once, minus before they were
//!   built, divided by N; the memory mappings per instance (`/proc/self/maps`; Linux allows
//!   65,530 by default); and what is still resident after all were dropped.
//!
//! ```text
//! cargo bench -p rtcrm-sandbox --bench instances -- --host CAP[,CAP ...] [--campaigns N] [--soft] [--pool] [--fault-around]
//! ```
//! runs the host's pool of idle instances in miniature instead (`host/src/campaigns/instances.rs`:
//! at most one idle instance per campaign, a cap on instances alive, the idle instances of the
//! least recently used campaigns dropped down to 90 % of the cap once it is reached; the host
//! checks only after each shard of events and may overshoot the cap in between, this checks
//! before every build, as a host with a budget in the sandbox must; `--soft` checks after every
//! 250 events as the host does today), with N campaigns (default
//! 10,000) over N / 100 (game, event_name) pairs and events spread evenly over the pairs, so each
//! event evaluates 100 campaigns: for each cap (in a process of its own; with `--pool` the
//! sandbox's budget is the cap plus 16), the sandbox's CPU time per event and events per
//! second of one thread (evaluation only: no Kafka, no parsing), instances built per event, and
//! RSS at the end.
//!
//! Times are CPU time of the measuring thread (`CLOCK_THREAD_CPUTIME_ID`: user + system, so
//! page faults count, descheduling does not); medians per operation. The load average is printed
//! with each run: the machine is shared.

use rtcrm_sandbox::{CompiledFilter, Event, Filter, Sandbox, SandboxConfig};
use std::time::{Duration, Instant};

/// The event: the original system's fields, with a numeric `data.score`.
const EVENT: &str = r#"{"schema_version":"2023110110010101","event_id":"7a8d0614-4e8e-4464-b439-36e31441a040","system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":"loss","score":50}}"#;
/// Campaigns evaluated per event (the host's 10,000 campaigns over 100 pairs).
const GROUP: usize = 100;

fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f`, returning its result and the CPU time it took on this thread.
fn cpu<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = cpu_now();
    let r = f();
    (r, cpu_now() - start)
}

/// This process's resident memory, in bytes.
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: f64,
    pss: f64,
    anon: f64,
    file: f64,
    shmem: f64,
}

fn mem() -> Mem {
    let field = |text: &str, name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in /proc"));
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
    };
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("/proc/self/smaps_rollup");
    Mem {
        rss: field(&status, "VmRSS:"),
        pss: field(&rollup, "Pss:"),
        anon: field(&status, "RssAnon:"),
        file: field(&status, "RssFile:"),
        shmem: field(&status, "RssShmem:"),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// A small deterministic generator (xorshift), so runs visit the same order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Figures {
    n: usize,
    build_us: f64,
    first_eval_us: f64,
    cycling_eval_us: f64,
    rebuild_us: f64,
    drop_us: f64,
    rss_kib: f64,
    pss_kib: f64,
    anon_kib: f64,
    file_kib: f64,
    shmem_kib: f64,
    left_kib: f64,
    maps: f64,
    build_wall_s: f64,
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map(|m| m.lines().count()).unwrap_or(0)
}

fn measure(sandbox: &Sandbox, compiled: &[CompiledFilter], n: usize, rounds: usize, event: &Event) -> Figures {
    let limits = sandbox.limits();
    let name = |i: usize| format!("c{i}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = mem();
    let maps_before = mappings();

    let wall = Instant::now();
    let mut build = Vec::with_capacity(n);
    let mut filters: Vec<Filter> = Vec::with_capacity(n);
    for (i, c) in compiled.iter().enumerate().take(n) {
        let (f, t) = cpu(|| sandbox.filter(c, &name(i), limits).expect("the filter builds"));
        build.push(us(t));
        filters.push(f);
    }
    let build_wall_s = wall.elapsed().as_secs_f64();

    let mut first = Vec::with_capacity(n);
    for (i, f) in filters.iter_mut().enumerate() {
        let (v, t) = cpu(|| f.eval(event).expect("evaluates"));
        assert_eq!(v.matched, 50 > (i % 100), "campaign {i}");
        first.push(us(t));
    }
    let live = mem();
    let maps = (mappings() - maps_before) as f64 / n as f64;

    let groups = n.div_ceil(GROUP);
    let mut cycling = Vec::with_capacity(groups * rounds);
    for _ in 0..rounds {
        let mut order: Vec<usize> = (0..groups).collect();
        rng.shuffle(&mut order);
        for g in order {
            let range = g * GROUP..((g + 1) * GROUP).min(n);
            let count = range.len();
            let (_, t) = cpu(|| {
                for f in &mut filters[range] {
                    std::hint::black_box(f.eval(event).expect("evaluates"));
                }
            });
            cycling.push(us(t) / count as f64);
        }
    }

    // A pool miss with N instances alive: a fresh instance of a random campaign, built,
    // evaluated once and dropped.
    let mut rebuild = Vec::new();
    for _ in 0..(n / 10).clamp(200, 1000) {
        let i = rng.below(n);
        let (_, t) = cpu(|| {
            let mut f = sandbox.filter(&compiled[i], &name(i), limits).expect("the filter builds");
            std::hint::black_box(f.eval(event).expect("evaluates"));
        });
        rebuild.push(us(t));
    }

    let mut drops = Vec::with_capacity(n);
    rng.shuffle(&mut filters);
    for f in filters.drain(..) {
        let ((), t) = cpu(|| drop(f));
        drops.push(us(t));
    }
    let after = mem();
    let per = |a: f64, b: f64| (a - b) / n as f64 / 1024.0;
    Figures {
        n,
        build_us: median(build),
        first_eval_us: median(first),
        cycling_eval_us: median(cycling),
        rebuild_us: median(rebuild),
        drop_us: median(drops),
        rss_kib: per(live.rss, before.rss),
        pss_kib: per(live.pss, before.pss),
        anon_kib: per(live.anon, before.anon),
        file_kib: per(live.file, before.file),
        shmem_kib: per(live.shmem, before.shmem),
        left_kib: (after.rss - before.rss) / 1024.0,
        maps,
        build_wall_s,
    }
}

/// The host's pool in miniature (see the module doc).
struct HostPool {
    idle: Vec<Option<Filter>>,
    last_used: Vec<u64>,
    live: usize,
    cap: usize,
    builds: u64,
    /// Enforce the cap only after every [`SHARD`] events, as the host does today.
    soft: bool,
    peak: usize,
}

/// Events per host shard (a batch of 500 events over the host's 2 workers).
const SHARD: u64 = 250;

impl HostPool {
    fn enforce(&mut self) {
        if self.live < self.cap {
            return;
        }
        let target = self.cap - self.cap / 10;
        let mut order: Vec<usize> = (0..self.idle.len()).filter(|&c| self.idle[c].is_some()).collect();
        order.sort_unstable_by_key(|&c| self.last_used[c]);
        for c in order {
            if self.live <= target {
                break;
            }
            self.idle[c] = None;
            self.live -= 1;
        }
    }

    fn event(&mut self, sandbox: &Sandbox, compiled: &[CompiledFilter], pair: usize, tick: u64, event: &Event) {
        let campaigns = pair * GROUP..((pair + 1) * GROUP).min(compiled.len());
        for (c, campaign) in campaigns.clone().zip(&compiled[campaigns]) {
            self.last_used[c] = tick;
            let mut f = match self.idle[c].take() {
                Some(f) => f,
                None => {
                    if !self.soft {
                        self.enforce();
                    }
                    self.builds += 1;
                    self.live += 1;
                    self.peak = self.peak.max(self.live);
                    sandbox.filter(campaign, "c", sandbox.limits()).expect("the filter builds")
                }
            };
            std::hint::black_box(f.eval(event).expect("evaluates"));
            self.idle[c] = Some(f);
        }
        if self.soft && tick.is_multiple_of(SHARD) {
            self.enforce();
        }
    }
}

fn simulate_host(sandbox: &Sandbox, compiled: &[CompiledFilter], cap: usize, soft: bool, event: &Event) {
    let n = compiled.len();
    let pairs = n.div_ceil(GROUP);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let before = mem();
    let mut pool = HostPool { idle: (0..n).map(|_| None).collect(), last_used: vec![0; n], live: 0, cap, builds: 0, soft, peak: 0 };
    let mut tick = 0;
    // Warm up: every pair once, then as many events again at random.
    for pair in 0..pairs {
        tick += 1;
        pool.event(sandbox, compiled, pair, tick, event);
    }
    for _ in 0..pairs.max(250) {
        tick += 1;
        pool.event(sandbox, compiled, rng.below(pairs), tick, event);
    }
    // Measure: up to 2,000 events or 10 s of CPU time.
    let (builds_before, load) = (pool.builds, loadavg());
    let start = cpu_now();
    let mut events = 0u64;
    while events < 2000 && cpu_now() - start < Duration::from_secs(10) {
        tick += 1;
        events += 1;
        pool.event(sandbox, compiled, rng.below(pairs), tick, event);
    }
    let per_event = (cpu_now() - start).as_secs_f64() / events as f64;
    let after = mem();
    println!(
        "| {cap}{} | {n} | {:.0} µs | {:.0} | {:.1} | {} ({} at most) | {:.0} MiB | {:.0} MiB | {load} |",
        if soft { " (soft)" } else { "" },
        per_event * 1e6,
        1.0 / per_event,
        (pool.builds - builds_before) as f64 / events as f64,
        pool.live,
        pool.peak,
        (after.rss - before.rss) / (1 << 20) as f64,
        after.rss / (1 << 20) as f64,
    );
}

fn main() {
    let mut sizes = Vec::new();
    let (mut rounds, mut pool, mut fault_around, mut child) = (3, false, false, false);
    let (mut host_caps, mut campaigns, mut soft): (Vec<usize>, usize, bool) = (Vec::new(), 10_000, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--rounds" => rounds = args.next().and_then(|r| r.parse().ok()).expect("--rounds R"),
            "--pool" => pool = true,
            "--fault-around" => fault_around = true,
            "--child" => child = true,
            "--host" => {
                host_caps = args
                    .next()
                    .map(|caps| caps.split(',').map(|c| c.parse().expect("--host CAP[,CAP ...]")).collect())
                    .expect("--host CAP[,CAP ...]")
            }
            "--campaigns" => campaigns = args.next().and_then(|n| n.parse().ok()).expect("--campaigns N"),
            "--soft" => soft = true,
            n => sizes.push(n.parse::<usize>().unwrap_or_else(|_| panic!("unknown argument {n:?}"))),
        }
    }
    let flags = |cmd: &mut std::process::Command| {
        if pool {
            cmd.arg("--pool");
        }
        if fault_around {
            cmd.arg("--fault-around");
        }
        if soft {
            cmd.arg("--soft");
        }
    };
    if !host_caps.is_empty() && !child {
        println!("| cap | campaigns | CPU per event | events/s (one thread) | builds per event | instances alive (most at once) | RSS of the instances | RSS | load avg |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for cap in host_caps {
            let mut cmd = std::process::Command::new(std::env::current_exe().expect("own path"));
            cmd.args(["--child", "--campaigns", &campaigns.to_string(), "--host", &cap.to_string()]);
            flags(&mut cmd);
            assert!(cmd.status().expect("runs itself").success(), "the run for cap {cap} failed");
        }
        return;
    }
    if sizes.is_empty() {
        sizes = vec![1000, 10_000];
    }
    if !child {
        println!("| N | build | first eval | cycling eval | rebuild (miss) | drop | RSS / live instance | PSS | anon | file | shmem | maps / instance | left after drop | build wall | sandbox start | load avg |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        // One process per N, so one run's memory and warm slots do not count in the next.
        for n in sizes {
            let mut cmd = std::process::Command::new(std::env::current_exe().expect("own path"));
            cmd.args(["--child", "--rounds", &rounds.to_string(), &n.to_string()]);
            flags(&mut cmd);
            assert!(cmd.status().expect("runs itself").success(), "the run for N = {n} failed");
        }
        return;
    }
    let n = if host_caps.is_empty() { sizes[0] } else { campaigns };
    let mut config = SandboxConfig { touched_pages_only: !fault_around, ..SandboxConfig::default() };
    if pool {
        config = config.with_max_instances(host_caps.first().copied().unwrap_or(n) + 16);
    }
    let started = Instant::now();
    let sandbox = Sandbox::new(config).expect("the sandbox starts");
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("N = {n}: {:?}, budget {:?}", sandbox.residency(), sandbox.max_instances());
    let event = sandbox.parse_event(EVENT.as_bytes().to_vec()).expect("the event parses");

    let started = Instant::now();
    let compiled: Vec<CompiledFilter> = (0..n)
        .map(|k| CompiledFilter::Js(sandbox.compile_js(&format!("e => e.data.score > {}", k % 100)).expect("compiles")))
        .collect();
    eprintln!("compiled {n} campaigns in {:.1} s (load {})", started.elapsed().as_secs_f64(), loadavg());
    if let Some(&cap) = host_caps.first() {
        simulate_host(&sandbox, &compiled, cap, soft, &event);
        return;
    }
    {
        let load = loadavg();
        let f = measure(&sandbox, &compiled, n, rounds, &event);
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.2} µs | {:.1} µs | {:.1} µs | {:.0} KiB | {:.0} KiB | {:.0} KiB | {:.0} KiB | {:.0} KiB | {:.2} | {:.0} KiB | {:.2} s | {start_ms:.0} ms | {load} |",
            f.n,
            f.build_us,
            f.first_eval_us,
            f.cycling_eval_us,
            f.rebuild_us,
            f.drop_us,
            f.rss_kib,
            f.pss_kib,
            f.anon_kib,
            f.file_kib,
            f.shmem_kib,
            f.maps,
            f.left_kib,
            f.build_wall_s
        );
    }
}
