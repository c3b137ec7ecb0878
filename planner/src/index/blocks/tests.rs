#![allow(clippy::unwrap_used)]

use super::*;

/// Fits on an agent of capacity `free` with nothing used.
fn fits(free: Slots, need: Slots) -> bool {
    need.fits_in(free)
}

/// Blocks over agents of capacity `free`, nothing used.
fn blocks_of(free: &[Slots]) -> Blocks {
    Blocks::new(&free.iter().map(|&f| (f, Slots::ZERO)).collect::<Vec<_>>())
}

/// The documented rule, by brute force.
fn reference(free: &[Slots], need: Slots, placement: Placement, exclude: Option<usize>) -> Option<usize> {
    let key = |i: usize| (free[i].mem, ord_key(free[i].cpu));
    let fitting = (0..free.len()).filter(|&i| Some(i) != exclude && fits(free[i], need));
    match placement {
        Placement::Dispersed => fitting.min_by(|&i, &j| key(j).cmp(&key(i)).then(i.cmp(&j))),
        Placement::Concentrated => fitting.min_by(|&i, &j| key(i).cmp(&key(j)).then(i.cmp(&j))),
    }
}

/// Every agent where `at` says, in its block's key range, and the tree's maxima right.
fn check_invariants(blocks: &Blocks, free: &[Slots]) {
    let mut seen = vec![false; free.len()];
    for (rank, &id) in blocks.order.iter().enumerate() {
        assert_eq!(blocks.rank[id], rank);
        for (slot, e) in blocks.blocks[id].iter().enumerate() {
            assert_eq!(blocks.at[e.agent], (id, slot));
            assert!(e.key() <= blocks.upper[rank] && (rank == 0 || blocks.upper[rank - 1] < e.key()));
            assert_eq!((e.mem, e.cpu, e.gpu), (free[e.agent].mem, free[e.agent].cpu, free[e.agent].gpu));
            assert!(!seen[e.agent]);
            seen[e.agent] = true;
        }
        assert!(blocks.blocks[id].len() <= 2 * BLOCK);
        assert_eq!(blocks.tree.get(rank), blocks.maxima(id));
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(blocks.upper.last(), Some(&MAX_KEY));
}

/// Runs `rounds` of random choices, takes and releases over `n` agents whose free
/// slots come from few values (so that ties are frequent, within and across blocks).
fn churn(n: usize, rounds: usize, seed: u64) -> usize {
    let mut state = seed;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut free: Vec<Slots> =
        (0..n).map(|_| Slots::new(0.5 * next(20) as f64, 256 * next(40) as i64, next(3) as f64)).collect();
    let mut blocks = blocks_of(&free);
    check_invariants(&blocks, &free);
    let mut placed = 0;
    for round in 0..rounds {
        let need = Slots::new(0.5 * next(8) as f64, 256 * next(12) as i64, (next(4) / 3) as f64);
        let exclude = (next(3) == 0).then(|| next(n as u64 + 1) as usize);
        for placement in [Placement::Dispersed, Placement::Concentrated] {
            let got = blocks.choose(need, placement, exclude, |a| fits(free[a], need));
            assert_eq!(got, reference(&free, need, placement, exclude), "round {round}: {need:?} {placement:?}");
        }
        let placement = if next(2) == 0 { Placement::Dispersed } else { Placement::Concentrated };
        let agent = match blocks.choose(need, placement, exclude, |a| fits(free[a], need)) {
            Some(agent) if next(3) != 0 => {
                placed += 1;
                free[agent] = free[agent] - need;
                agent
            }
            _ => {
                // Release (or reshuffle) somewhere, so that agents move both ways.
                let agent = next(n as u64) as usize;
                free[agent] = Slots::new(0.5 * next(20) as f64, 256 * next(40) as i64, next(3) as f64);
                agent
            }
        };
        blocks.update(agent, free[agent], Slots::ZERO);
        if round % 97 == 0 {
            check_invariants(&blocks, &free);
        }
    }
    check_invariants(&blocks, &free);
    placed
}

#[test]
fn choose_matches_brute_force_through_takes_releases_and_splits() {
    assert!(churn(1000, 6000, 3) > 1000);
    assert!(churn(150, 3000, 5) > 500);
    // Fewer agents than a block, and one.
    churn(7, 500, 9);
    churn(1, 200, 13);
}

#[test]
fn a_large_group_of_ties_goes_to_its_lowest_index_that_fits() {
    // 300 identical agents (ten blocks of the same memory and CPU): only some have a GPU.
    let mut free: Vec<Slots> = (0..300).map(|i| Slots::new(4.0, 1024, if i % 7 == 6 { 1.0 } else { 0.0 })).collect();
    free[290] = Slots::new(4.0, 1024, 2.0);
    let blocks = blocks_of(&free);
    let choose = |need: Slots, placement, exclude| blocks.choose(need, placement, exclude, |a| fits(free[a], need));
    let cpu = Slots::new(1.0, 100, 0.0);
    let gpu = Slots::new(1.0, 100, 1.0);
    assert_eq!(choose(cpu, Placement::Dispersed, None), Some(0));
    assert_eq!(choose(cpu, Placement::Dispersed, Some(0)), Some(1));
    assert_eq!(choose(gpu, Placement::Dispersed, None), Some(6));
    assert_eq!(choose(gpu, Placement::Dispersed, Some(6)), Some(13));
    assert_eq!(choose(gpu, Placement::Concentrated, Some(6)), Some(13));
    assert_eq!(choose(Slots::new(1.0, 100, 2.0), Placement::Dispersed, None), Some(290));
    assert_eq!(choose(Slots::new(1.0, 100, 3.0), Placement::Dispersed, None), None);
}

#[test]
fn many_splits_rebuild_the_blocks() {
    // Everyone moves into one key range and back, over and over.
    let mut free: Vec<Slots> = (0..500).map(|i| Slots::new(1.0, i, 0.0)).collect();
    let mut blocks = blocks_of(&free);
    for round in 0..20 {
        for (agent, f) in free.iter_mut().enumerate() {
            *f = Slots::new(1.0, if round % 2 == 0 { 10_000 + agent as i64 % 3 } else { agent as i64 }, 0.0);
            blocks.update(agent, *f, Slots::ZERO);
        }
        check_invariants(&blocks, &free);
        assert!(blocks.order.len() <= 4 * (500 / BLOCK + 1) + 1);
    }
    let none = blocks_of(&[]);
    assert_eq!(none.choose(Slots::ZERO, Placement::Dispersed, None, |_| true), None);
}

#[test]
fn off_grid_and_near_margin_amounts_take_the_exact_check() {
    // Tenths do not add up exactly; requests right at the free amount, a hair above
    // or below, on and off the grid: the answer is always the exact rule's.
    let agents: Vec<(Slots, Slots)> = (0..200)
        .map(|i| {
            let tenths = (i % 11) as f64 * 0.1;
            (Slots::new(1.0, 1000, 1.0), Slots::new(tenths, i as i64, if i % 3 == 0 { tenths } else { 0.5 }))
        })
        .collect();
    let blocks = Blocks::new(&agents);
    for k in 0..=10 {
        for delta in [0.0, 1e-10, -1e-10, 2e-9, 1e-7, 2e-6, -2e-6] {
            for gpu in [0.0, 0.5, 0.5 + delta, (10 - k) as f64 * 0.1 + delta] {
                let need = Slots::new((10 - k) as f64 * 0.1 + delta, 500, gpu);
                for placement in [Placement::Dispersed, Placement::Concentrated] {
                    let fits_on = |a: usize| need.fits(agents[a].1, agents[a].0);
                    let want = (0..agents.len()).filter(|&a| fits_on(a)).min_by_key(|&a| {
                        let free = agents[a].0 - agents[a].1;
                        let group = (free.mem, ord_key(free.cpu));
                        match placement {
                            Placement::Dispersed => (std::cmp::Reverse(group), a),
                            Placement::Concentrated => (std::cmp::Reverse((-group.0, -group.1)), a),
                        }
                    });
                    assert_eq!(blocks.choose(need, placement, None, fits_on), want, "{need:?} {placement:?}");
                }
            }
        }
    }
}
