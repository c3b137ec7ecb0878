#![allow(clippy::unwrap_used)]

use super::*;
use crate::testing::{agent, s};

/// Free (cpu, mem): a0 (4, 400), a1 (2, 800), a2 (6, 600), a3 (1, 100).
fn four() -> Index {
    let cap = s(8.0, 1000, 0.0);
    Index::new(vec![
        agent("a0", cap, s(4.0, 600, 0.0)),
        agent("a1", cap, s(6.0, 200, 0.0)),
        agent("a2", cap, s(2.0, 400, 0.0)),
        agent("a3", cap, s(7.0, 900, 0.0)),
    ])
}

#[test]
fn dispersed_takes_the_most_free_memory_that_fits() {
    let index = four();
    assert_eq!(index.choose(s(1.0, 100, 0.0), Placement::Dispersed, None), Some(1));
    // a1 has the most memory but only 2 cores: a2 is next by memory.
    assert_eq!(index.choose(s(3.0, 100, 0.0), Placement::Dispersed, None), Some(2));
    assert_eq!(index.choose(s(5.0, 100, 0.0), Placement::Dispersed, None), Some(2));
    assert_eq!(index.choose(s(7.0, 100, 0.0), Placement::Dispersed, None), None);
    assert_eq!(index.choose(s(1.0, 900, 0.0), Placement::Dispersed, None), None);
}

#[test]
fn concentrated_takes_the_least_free_memory_that_fits() {
    let index = four();
    assert_eq!(index.choose(s(1.0, 100, 0.0), Placement::Concentrated, None), Some(3));
    assert_eq!(index.choose(s(1.0, 101, 0.0), Placement::Concentrated, None), Some(0));
    // a0 has 400 MiB but 4 cores only; a2 (600 MiB, 6 cores) is the next that fits.
    assert_eq!(index.choose(s(5.0, 300, 0.0), Placement::Concentrated, None), Some(2));
    assert_eq!(index.choose(s(1.0, 700, 0.0), Placement::Concentrated, None), Some(1));
}

#[test]
fn ties_go_to_cpu_then_lowest_index() {
    let cap = s(8.0, 1000, 0.0);
    let index = Index::new(vec![
        agent("a0", cap, s(4.0, 500, 0.0)),
        agent("a1", cap, s(2.0, 500, 0.0)),
        agent("a2", cap, s(2.0, 500, 0.0)),
        agent("a3", cap, s(4.0, 500, 0.0)),
        agent("a4", cap, s(2.0, 500, 0.0)),
    ]);
    let one = s(1.0, 100, 0.0);
    // Same memory everywhere: dispersed wants the most cpu (a1, a2, a4), lowest index.
    assert_eq!(index.choose(one, Placement::Dispersed, None), Some(1));
    assert_eq!(index.choose(one, Placement::Dispersed, Some(1)), Some(2));
    // Concentrated wants the least cpu (a0, a3), lowest index.
    assert_eq!(index.choose(one, Placement::Concentrated, None), Some(0));
    assert_eq!(index.choose(one, Placement::Concentrated, Some(0)), Some(3));
}

#[test]
fn dispersed_tie_skips_lower_indices_that_do_not_fit_in_gpu() {
    let index = Index::new(vec![
        agent("a0", s(8.0, 1000, 1.0), s(0.0, 0, 1.0)),
        agent("a1", s(8.0, 1000, 1.0), s(0.0, 0, 0.0)),
        agent("a2", s(8.0, 1000, 1.0), s(0.0, 0, 0.0)),
    ]);
    assert_eq!(index.choose(s(1.0, 10, 1.0), Placement::Dispersed, None), Some(1));
    assert_eq!(index.choose(s(1.0, 10, 0.0), Placement::Dispersed, None), Some(0));
    assert_eq!(index.choose(s(1.0, 10, 1.0), Placement::Concentrated, Some(1)), Some(2));
}

#[test]
fn exclude_is_skipped() {
    let index = four();
    let one = s(1.0, 100, 0.0);
    assert_eq!(index.choose(one, Placement::Dispersed, Some(1)), Some(2));
    assert_eq!(index.choose(one, Placement::Concentrated, Some(3)), Some(0));
    let only = Index::new(vec![agent("a0", s(1.0, 10, 0.0), Slots::ZERO)]);
    assert_eq!(only.choose(s(1.0, 10, 0.0), Placement::Dispersed, Some(0)), None);
}

#[test]
fn cpu_and_gpu_fit_within_epsilon_memory_exactly() {
    let index = Index::new(vec![agent("a0", s(1.0, 100, 1.0), s(0.7, 50, 0.9))]);
    for placement in [Placement::Dispersed, Placement::Concentrated] {
        // 0.7 + 0.3 is 0.9999999999999999 or 1.0000000000000002 depending on rounding.
        assert_eq!(index.choose(s(0.3, 50, 0.1), placement, None), Some(0));
        assert_eq!(index.choose(s(0.3 + 5e-10, 50, 0.1 + 5e-10), placement, None), Some(0));
        assert_eq!(index.choose(s(0.3 + 1e-8, 50, 0.1), placement, None), None);
        assert_eq!(index.choose(s(0.3, 50, 0.1 + 1e-8), placement, None), None);
        assert_eq!(index.choose(s(0.3, 51, 0.1), placement, None), None);
    }
    // Ten tenths of a GPU fill a GPU.
    let mut index = Index::new(vec![agent("a0", s(10.0, 100, 1.0), Slots::ZERO)]);
    for _ in 0..10 {
        assert_eq!(index.choose(s(0.1, 1, 0.1), Placement::Dispersed, None), Some(0));
        index.take(0, s(0.1, 1, 0.1));
    }
    assert_eq!(index.choose(s(0.1, 1, 0.1), Placement::Dispersed, None), None);
}

#[test]
fn nan_requests_fit_nowhere() {
    let index = four();
    assert_eq!(index.choose(s(f64::NAN, 1, 0.0), Placement::Dispersed, None), None);
    assert_eq!(index.choose(s(1.0, 1, f64::NAN), Placement::Concentrated, None), None);
}

#[test]
fn take_keeps_the_order() {
    let mut index = four();
    let one = s(1.0, 100, 0.0);
    // a1 (800 MiB) takes 500: now a2 (600) has the most free memory.
    index.take(1, s(1.0, 500, 0.0));
    assert_eq!(index.agents()[1].used, s(7.0, 700, 0.0));
    assert_eq!(index.choose(one, Placement::Dispersed, None), Some(2));
    // a1 now has 300 free, the least that fits 150 (a3 has 100).
    assert_eq!(index.choose(s(1.0, 150, 0.0), Placement::Concentrated, None), Some(1));
    // Fill a2's cpu: the largest free cpu drops to 4 (a0), so 5 cores fit nowhere.
    index.take(2, s(6.0, 0, 0.0));
    assert_eq!(index.choose(s(5.0, 1, 0.0), Placement::Dispersed, None), None);
    assert_eq!(index.choose(s(4.0, 1, 0.0), Placement::Dispersed, None), Some(0));
    // Releasing (negative slots) brings it back.
    index.take(2, s(-6.0, 0, 0.0));
    assert_eq!(index.choose(s(5.0, 1, 0.0), Placement::Dispersed, None), Some(2));
    // Out of range is ignored.
    index.take(99, one);
    assert_eq!(index.agents().len(), 4);
}

#[test]
fn take_tracks_free_gpus_both_ways() {
    let mut index =
        Index::new(vec![agent("a0", s(8.0, 1000, 2.0), Slots::ZERO), agent("a1", s(8.0, 500, 1.0), Slots::ZERO)]);
    let g = s(1.0, 10, 1.0);
    assert_eq!(index.choose(g, Placement::Dispersed, None), Some(0));
    index.take(0, s(0.0, 0, 2.0));
    assert_eq!(index.choose(g, Placement::Dispersed, None), Some(1));
    index.take(1, g);
    assert_eq!(index.choose(g, Placement::Dispersed, None), None);
    assert_eq!(index.choose(s(1.0, 10, 0.0), Placement::Dispersed, None), Some(0));
    index.take(0, s(0.0, 0, -1.0));
    assert_eq!(index.choose(g, Placement::Concentrated, None), Some(0));
}

#[test]
fn many_takes_and_releases_keep_the_order() {
    let mut index =
        Index::new(vec![agent("a0", s(4.0, 1000, 0.0), Slots::ZERO), agent("a1", s(2.0, 1000, 0.0), Slots::ZERO)]);
    for _ in 0..100 {
        index.take(0, s(1.0, 0, 0.0));
        index.take(0, s(-1.0, 0, 0.0));
    }
    assert_eq!(index.choose(s(4.0, 1, 0.0), Placement::Concentrated, None), Some(0));
    index.take(0, s(3.0, 0, 0.0));
    assert_eq!(index.choose(s(2.0, 1, 0.0), Placement::Concentrated, None), Some(1));
    assert_eq!(index.choose(s(3.0, 1, 0.0), Placement::Concentrated, None), None);
}

#[test]
fn could_ever_fit_looks_at_capacity_not_use() {
    let index = Index::new(vec![
        agent("big-cpu", s(64.0, 1000, 0.0), s(64.0, 1000, 0.0)),
        agent("big-mem", s(8.0, 8000, 0.0), s(8.0, 8000, 0.0)),
        agent("gpu", s(16.0, 2000, 4.0), s(16.0, 2000, 4.0)),
        agent("small", s(4.0, 500, 0.0), Slots::ZERO),
    ]);
    assert!(index.could_ever_fit(s(64.0, 1000, 0.0)));
    assert!(index.could_ever_fit(s(8.0, 8000, 0.0)));
    assert!(index.could_ever_fit(s(16.0, 2000, 4.0)));
    assert!(index.could_ever_fit(s(1.0, 1, 0.0)));
    // Each resource fits somewhere, but not all on one agent.
    assert!(!index.could_ever_fit(s(64.0, 8000, 0.0)));
    assert!(!index.could_ever_fit(s(17.0, 2000, 1.0)));
    assert!(!index.could_ever_fit(s(1.0, 1, 5.0)));
    assert!(!Index::new(Vec::new()).could_ever_fit(Slots::ZERO));
    // Nothing is free anywhere but "small", yet the big ones could hold it later.
    assert_eq!(index.choose(s(5.0, 1, 0.0), Placement::Dispersed, None), None);
}

/// The rule of [`Index::choose`], by brute force over all agents.
fn reference(agents: &[AgentSlots], slots: Slots, placement: Placement, exclude: Option<usize>) -> Option<usize> {
    let free = |a: &AgentSlots| a.capacity - a.used;
    let fitting = agents.iter().enumerate().filter(|&(i, a)| Some(i) != exclude && slots.fits(a.used, a.capacity));
    match placement {
        Placement::Dispersed => fitting
            .min_by(|(i, a), (j, b)| {
                let (fa, fb) = (free(a), free(b));
                fb.mem.cmp(&fa.mem).then(fb.cpu.total_cmp(&fa.cpu)).then(i.cmp(j))
            })
            .map(|(i, _)| i),
        Placement::Concentrated => fitting
            .min_by(|(i, a), (j, b)| {
                let (fa, fb) = (free(a), free(b));
                fa.mem.cmp(&fb.mem).then(fa.cpu.total_cmp(&fb.cpu)).then(i.cmp(j))
            })
            .map(|(i, _)| i),
    }
}

#[test]
fn choose_matches_brute_force_through_many_takes() {
    // A small LCG; few distinct values so that ties are frequent.
    let mut state = 7_u64;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let agents: Vec<AgentSlots> = (0..700)
        .map(|i| {
            let cap = s(4.0 * (1 + next(8)) as f64, 1024 * (1 + next(16)) as i64, (next(3) * 2) as f64);
            let used = s(next(cap.cpu as u64 + 1) as f64, 256 * next(cap.mem as u64 / 256 + 1) as i64, 0.0);
            agent(&format!("a{i}"), cap, used)
        })
        .collect();
    let mut index = Index::new(agents);
    let mut placed = 0;
    for round in 0..6000 {
        let slots = s(0.5 * next(12) as f64, 256 * next(24) as i64, 0.5 * next(3) as f64);
        let exclude = (next(4) == 0).then(|| next(700) as usize);
        for placement in [Placement::Dispersed, Placement::Concentrated] {
            assert_eq!(
                index.choose(slots, placement, exclude),
                reference(index.agents(), slots, placement, exclude),
                "round {round}: {slots:?} {placement:?} excluding {exclude:?}"
            );
        }
        let placement = if next(2) == 0 { Placement::Dispersed } else { Placement::Concentrated };
        if let Some(agent) = index.choose(slots, placement, exclude) {
            index.take(agent, slots);
            placed += 1;
        } else if round % 3 == 0 {
            // Release something somewhere, so that agents move both ways.
            let agent = next(700) as usize;
            let used = index.agents()[agent].used;
            index.take(agent, s(-(used.cpu / 2.0).floor(), -used.mem / 2, -used.gpu));
        }
    }
    assert!(placed > 1000, "{placed} placed");
}
