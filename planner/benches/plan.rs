//! Timing of the planner at the scale targets: `cargo bench -p backendai-planner
//! --bench plan`. Prints the median of several runs of each scenario, with the queue
//! shuffled and with it sorted by arrival (as the manager passes it).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use planner::{plan, AgentSlots, Index, Pending, Placement, Plan, Policy, Slots};

const AGENTS: usize = 10_000;
const SESSIONS: usize = 100_000;
const RUNS: usize = 9;

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Agent shapes: (cpu, MiB, gpu).
const SHAPES: [(f64, i64, f64); 5] =
    [(16.0, 65_536, 0.0), (32.0, 131_072, 0.0), (64.0, 262_144, 0.0), (48.0, 393_216, 4.0), (96.0, 786_432, 8.0)];

/// Session sizes: (cpu, MiB, gpu).
const SIZES: [(f64, i64, f64); 8] = [
    (0.5, 1_024, 0.0),
    (1.0, 2_048, 0.0),
    (2.0, 4_096, 0.0),
    (4.0, 8_192, 0.0),
    (8.0, 32_768, 0.0),
    (4.0, 16_384, 1.0),
    (16.0, 65_536, 2.0),
    (2.0, 8_192, 0.5),
];

/// Agents of mixed shapes, each used up to `max_used` of every resource.
fn agents(rng: &mut Rng, max_used: f64) -> Vec<AgentSlots> {
    (0..AGENTS)
        .map(|i| {
            let (cpu, mem, gpu) = SHAPES[rng.below(SHAPES.len())];
            let f = rng.unit() * max_used;
            AgentSlots {
                id: format!("i-{i:05}"),
                capacity: Slots::new(cpu, mem, gpu),
                used: Slots::new((cpu * f * 2.0).floor() / 2.0, (mem as f64 * f) as i64, (gpu * f).floor()),
            }
        })
        .collect()
}

/// Pending sessions of mixed sizes from `keys` access keys, in shuffled order.
fn queue(rng: &mut Rng, keys: usize) -> Vec<Pending> {
    let names: Vec<String> = (0..keys).map(|k| format!("AKIA{k:016}")).collect();
    let mut queue: Vec<Pending> = (0..SESSIONS)
        .map(|i| {
            let (cpu, mem, gpu) = SIZES[rng.below(SIZES.len())];
            Pending {
                id: i as u64,
                access_key: names[rng.below(keys)].clone(),
                slots: Slots::new(cpu, mem, gpu),
                seq: i as i64,
            }
        })
        .collect();
    for i in (1..queue.len()).rev() {
        queue.swap(i, rng.below(i + 1));
    }
    queue
}

/// What each key holds now (for drf), spread unevenly.
fn usage(queue: &[Pending], rng: &mut Rng) -> HashMap<String, Slots> {
    let mut usage = HashMap::new();
    for p in queue {
        usage
            .entry(p.access_key.clone())
            .or_insert_with(|| Slots::new(rng.below(200) as f64, rng.below(800_000) as i64, rng.below(16) as f64));
    }
    usage
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The median time of RUNS runs of `plan` on fresh copies of `index`, and the plan.
fn time_plan(
    index: &Index,
    queue: &[Pending],
    usage: &HashMap<String, Slots>,
    policy: Policy,
    placement: Placement,
) -> (Duration, Plan) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let mut index = index.clone();
        let start = Instant::now();
        let plan_ = plan(&mut index, black_box(queue), usage, policy, placement);
        times.push(start.elapsed());
        last = Some(plan_);
    }
    (median(times), last.unwrap())
}

/// One table row (skipped unless its name contains one of the arguments, if any):
/// `queue` as given (shuffled) and sorted by arrival, as the manager
/// passes it (both must decide the same).
fn bench_plan(
    name: &str,
    index: &Index,
    queue: &[Pending],
    usage: &HashMap<String, Slots>,
    policy: Policy,
    placement: Placement,
) {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        return;
    }
    let (shuffled, plan_) = time_plan(index, queue, usage, policy, placement);
    // Cloned in order, so that the access keys' strings lie in order in memory too,
    // as when the manager loads the queue.
    let mut in_order: Vec<&Pending> = queue.iter().collect();
    in_order.sort_by_key(|p| (p.seq, p.id));
    let in_order: Vec<Pending> = in_order.into_iter().cloned().collect();
    let (sorted, same) = time_plan(index, &in_order, usage, policy, placement);
    assert_eq!(plan_, same, "{name}: the queue's order changed the plan");
    println!(
        "{name:<46} {:>10} {:>10}   placed {:>6}, waiting {:>6}, reserved {}",
        ms(shuffled),
        ms(sorted),
        plan_.placements.len(),
        plan_.waiting.len(),
        plan_.reservation.map_or("-".to_owned(), |(id, agent)| format!("{id} on {agent}")),
    );
}

fn main() {
    // `cargo test --all-targets` runs this binary too (without `--bench`): only `cargo
    // bench` measures.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("run with `cargo bench -p backendai-planner` to measure");
        return;
    }
    let mut rng = Rng(2024);
    println!("{AGENTS} agents, {SESSIONS} pending sessions, median of {RUNS} runs\n");
    println!("{:<46} {:>10} {:>10}", "", "shuffled", "sorted");
    let busy = Index::new(agents(&mut rng, 0.6));
    let sessions = queue(&mut rng, 1);
    let none = HashMap::new();
    bench_plan("(a) fifo, dispersed, fills up", &busy, &sessions, &none, Policy::Fifo, Placement::Dispersed);

    let keyed = queue(&mut rng, 1_000);
    let keyed_usage = usage(&keyed, &mut rng);
    bench_plan(
        "(b) drf (1,000 keys), dispersed, fills up",
        &busy,
        &keyed,
        &keyed_usage,
        Policy::Drf,
        Placement::Dispersed,
    );
    bench_plan("(c) fifo, concentrated, fills up", &busy, &sessions, &none, Policy::Fifo, Placement::Concentrated);
    bench_plan("(c') drf, concentrated, fills up", &busy, &keyed, &keyed_usage, Policy::Drf, Placement::Concentrated);

    // A full cluster: every core taken (a quarter core left here and there), but
    // memory and GPUs free, so the memory order alone does not reject anything.
    let full_agents: Vec<AgentSlots> = agents(&mut rng, 0.0)
        .into_iter()
        .map(|mut a| {
            a.used.cpu = a.capacity.cpu - if rng.below(2) == 0 { 0.25 } else { 0.0 };
            a
        })
        .collect();
    let full = Index::new(full_agents.clone());
    bench_plan(
        "(d) fifo, full cluster (cpu), nothing fits",
        &full,
        &sessions,
        &none,
        Policy::Fifo,
        Placement::Dispersed,
    );
    bench_plan(
        "(d') drf, full cluster (cpu), nothing fits",
        &full,
        &keyed,
        &keyed_usage,
        Policy::Drf,
        Placement::Dispersed,
    );

    // choose alone: each call timed, on the partly used cluster.
    let mut times = Vec::new();
    for placement in [Placement::Dispersed, Placement::Concentrated] {
        for _ in 0..20_001 {
            let (cpu, mem, gpu) = SIZES[rng.below(SIZES.len())];
            let exclude = Some(rng.below(AGENTS));
            let start = Instant::now();
            black_box(busy.choose(black_box(Slots::new(cpu, mem, gpu)), placement, exclude));
            times.push(start.elapsed());
        }
    }
    times.sort();
    println!(
        "{:<46} {:>7.3} µs   (p99 {:.3} µs, max {:.3} µs)",
        "(e) choose, 10,000 agents (median call)",
        times[times.len() / 2].as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6,
        times[times.len() - 1].as_secs_f64() * 1e6,
    );

    let raw = agents(&mut rng, 0.6);
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let copy = raw.clone();
        let start = Instant::now();
        black_box(Index::new(copy));
        times.push(start.elapsed());
    }
    println!("{:<46} {:>10}", "(f) Index::new, 10,000 agents", ms(median(times)));
}
