#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use super::*;
use crate::testing::{agent, pending, s};
use crate::AgentSlots;

fn fifo(index: &mut Index, queue: &[Pending]) -> Plan {
    plan(index, queue, &HashMap::new(), Policy::Fifo, Placement::Dispersed)
}

fn ids(placements: &[(u64, usize)]) -> Vec<u64> {
    placements.iter().map(|&(id, _)| id).collect()
}

#[test]
fn empty_queue_and_empty_cluster() {
    let mut index = Index::new(Vec::new());
    let queue = [pending(1, "k", s(1.0, 1, 0.0), 1)];
    let plan_ = fifo(&mut index, &queue);
    assert_eq!(plan_.placements, vec![]);
    // Nothing could ever hold it: no reservation.
    assert_eq!(plan_.reservation, None);
    assert_eq!(plan_.waiting, vec![1]);
    let mut index = Index::new(vec![agent("a", s(1.0, 1, 0.0), Slots::ZERO)]);
    assert_eq!(fifo(&mut index, &[]), Plan::default());
}

#[test]
fn fifo_goes_by_seq_then_id_and_updates_the_index() {
    let mut index = Index::new(vec![agent("a", s(3.0, 300, 0.0), Slots::ZERO)]);
    let one = s(1.0, 100, 0.0);
    let queue = [pending(7, "k", one, 2), pending(9, "k", one, 1), pending(3, "k", one, 2), pending(1, "k", one, 5)];
    let plan_ = fifo(&mut index, &queue);
    assert_eq!(plan_.placements, vec![(9, 0), (3, 0), (7, 0)]);
    assert_eq!(plan_.reservation, Some((1, 0)));
    assert_eq!(plan_.waiting, vec![1]);
    assert_eq!(index.agents()[0].used, s(3.0, 300, 0.0));
}

#[test]
fn backfill_places_a_small_session_elsewhere_while_the_head_waits() {
    let mut index = Index::new(vec![
        agent("big", s(16.0, 1600, 0.0), s(12.0, 1200, 0.0)),
        agent("small", s(4.0, 400, 0.0), Slots::ZERO),
    ]);
    let queue = [
        pending(1, "k", s(8.0, 800, 0.0), 1),
        pending(2, "k", s(2.0, 200, 0.0), 2),
        pending(3, "k", s(8.0, 100, 0.0), 3),
    ];
    let plan_ = fifo(&mut index, &queue);
    // The head reserves "big" (the only one that could ever hold it).
    assert_eq!(plan_.reservation, Some((1, 0)));
    // Session 2 fits on both; it goes to "small", not to the reserved one.
    assert_eq!(plan_.placements, vec![(2, 1)]);
    assert_eq!(plan_.waiting, vec![1, 3]);
    assert_eq!(index.agents()[0].used, s(12.0, 1200, 0.0));
}

#[test]
fn backfill_never_uses_the_reserved_agent() {
    // Dispersed would pick "roomy" (most free memory) for the small one.
    let mut index = Index::new(vec![
        agent("tight", s(8.0, 800, 0.0), s(7.0, 700, 0.0)),
        agent("roomy", s(8.0, 800, 0.0), s(4.0, 400, 0.0)),
    ]);
    let queue = [
        pending(1, "k", s(6.0, 600, 0.0), 1),
        pending(2, "k", s(1.0, 100, 0.0), 2),
        pending(3, "k", s(1.0, 100, 0.0), 3),
    ];
    let plan_ = fifo(&mut index, &queue);
    assert_eq!(plan_.reservation, Some((1, 1)));
    // Both fit on "roomy" but only "tight" (one slot) may take them.
    assert_eq!(plan_.placements, vec![(2, 0)]);
    assert_eq!(plan_.waiting, vec![1, 3]);
    // Alone on one agent: nothing passes the head.
    let mut index = Index::new(vec![agent("only", s(8.0, 800, 0.0), s(4.0, 400, 0.0))]);
    let plan_ = fifo(&mut index, &queue);
    assert_eq!(plan_.reservation, Some((1, 0)));
    assert_eq!(plan_.placements, vec![]);
    assert_eq!(plan_.waiting, vec![1, 2, 3]);
}

#[test]
fn a_session_that_could_never_fit_does_not_take_the_reservation() {
    let mut index = Index::new(vec![
        agent("a0", s(8.0, 800, 0.0), s(6.0, 600, 0.0)),
        agent("a1", s(8.0, 800, 0.0), s(7.0, 700, 0.0)),
    ]);
    let queue = [
        pending(1, "k", s(9.0, 100, 0.0), 1),
        pending(2, "k", s(1.0, 100, 1.0), 2),
        pending(3, "k", s(4.0, 400, 0.0), 3),
        pending(4, "k", s(1.0, 100, 0.0), 4),
    ];
    let plan_ = fifo(&mut index, &queue);
    // 1 and 2 are bigger than every agent; 3 is the head and holds a0 (closest).
    assert_eq!(plan_.reservation, Some((3, 0)));
    assert_eq!(plan_.placements, vec![(4, 1)]);
    assert_eq!(plan_.waiting, vec![1, 2, 3]);
}

#[test]
fn sizes_that_failed_still_let_smaller_ones_through() {
    let mut index = Index::new(vec![
        agent("a0", s(8.0, 1000, 0.0), s(6.0, 0, 0.0)),
        agent("a1", s(8.0, 1000, 0.0), s(0.0, 900, 0.0)),
    ]);
    let queue = [
        pending(1, "k", s(4.0, 200, 0.0), 1),
        // Larger in every resource than 1: fails without looking.
        pending(2, "k", s(5.0, 300, 0.0), 2),
        // Less memory than 1, but only a1 has 4 cores free.
        pending(3, "k", s(4.0, 100, 0.0), 3),
        pending(4, "k", s(2.0, 500, 0.0), 4),
    ];
    let plan_ = fifo(&mut index, &queue);
    // Head 1: a0 is short 2 of 8 cores (0.25), a1 short 100 of 1000 MiB (0.1).
    assert_eq!(plan_.reservation, Some((1, 1)));
    // 3 would fit on a1 only (reserved); 4 fits on a0.
    assert_eq!(plan_.placements, vec![(4, 0)]);
    assert_eq!(plan_.waiting, vec![1, 2, 3]);
}

#[test]
fn concentrated_packs() {
    let mut index =
        Index::new(vec![agent("a0", s(8.0, 800, 0.0), Slots::ZERO), agent("a1", s(8.0, 800, 0.0), Slots::ZERO)]);
    let queue: Vec<Pending> = (1..=5).map(|i| pending(i, "k", s(2.0, 200, 0.0), i as i64)).collect();
    let plan_ = plan(&mut index, &queue, &HashMap::new(), Policy::Fifo, Placement::Concentrated);
    assert_eq!(plan_.placements, vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 1)]);
    let mut index =
        Index::new(vec![agent("a0", s(8.0, 800, 0.0), Slots::ZERO), agent("a1", s(8.0, 800, 0.0), Slots::ZERO)]);
    let plan_ = fifo(&mut index, &queue);
    assert_eq!(plan_.placements, vec![(1, 0), (2, 1), (3, 0), (4, 1), (5, 0)]);
}

fn drf(index: &mut Index, queue: &[Pending], usage: &[(&str, Slots)]) -> Plan {
    let usage: HashMap<String, Slots> = usage.iter().map(|(k, u)| ((*k).to_owned(), *u)).collect();
    plan(index, queue, &usage, Policy::Drf, Placement::Dispersed)
}

#[test]
fn drf_puts_the_light_key_first() {
    let mut index = Index::new(vec![agent("a", s(10.0, 1000, 0.0), s(8.0, 100, 0.0))]);
    let queue = [pending(1, "heavy", s(2.0, 100, 0.0), 1), pending(2, "light", s(2.0, 100, 0.0), 2)];
    // heavy holds 8 of 10 cores (share 0.8); light holds 1 GiB-ish of memory (0.1).
    let plan_ = drf(&mut index, &queue, &[("heavy", s(8.0, 0, 0.0)), ("light", s(0.0, 100, 0.0))]);
    assert_eq!(plan_.placements, vec![(2, 0)]);
    assert_eq!(plan_.reservation, Some((1, 0)));
    assert_eq!(plan_.waiting, vec![1]);
    // Under fifo the heavy one, which arrived first, would have gone.
    let mut index = Index::new(vec![agent("a", s(10.0, 1000, 0.0), s(8.0, 100, 0.0))]);
    assert_eq!(fifo(&mut index, &queue).placements, vec![(1, 0)]);
}

#[test]
fn drf_shares_grow_with_what_the_pass_places() {
    let mut index = Index::new(vec![agent("a", s(10.0, 1000, 0.0), Slots::ZERO)]);
    let one = s(1.0, 100, 0.0);
    let queue = [
        pending(1, "a", one, 1),
        pending(2, "a", one, 2),
        pending(3, "a", one, 3),
        pending(4, "b", one, 4),
        pending(5, "b", one, 5),
        pending(6, "b", one, 6),
    ];
    let plan_ = drf(&mut index, &queue, &[]);
    // Equal shares go by seq; each placement raises that key's share by 0.1.
    assert_eq!(ids(&plan_.placements), vec![1, 4, 2, 5, 3, 6]);
    // With b already holding 1.5 cores (0.15), a goes twice (0.1, 0.2) before b.
    let mut index = Index::new(vec![agent("a", s(10.0, 1000, 0.0), s(1.5, 0, 0.0))]);
    let plan_ = drf(&mut index, &queue, &[("b", s(1.5, 0, 0.0))]);
    assert_eq!(ids(&plan_.placements), vec![1, 2, 4, 3, 5, 6]);
}

#[test]
fn drf_dominant_share_is_the_most_used_resource() {
    let mut index = Index::new(vec![agent("a", s(10.0, 1000, 4.0), s(0.0, 0, 0.0))]);
    let queue = [pending(1, "cpu-user", s(1.0, 10, 0.0), 1), pending(2, "gpu-user", s(1.0, 10, 0.0), 2)];
    // cpu-user: 3/10 cpu = 0.3. gpu-user: 2/4 gpu = 0.5 (tiny cpu): cpu-user first.
    let usage = [("cpu-user", s(3.0, 0, 0.0)), ("gpu-user", s(0.5, 0, 2.0))];
    assert_eq!(ids(&drf(&mut index, &queue, &usage).placements), vec![1, 2]);
    let mut index = Index::new(vec![agent("a", s(10.0, 1000, 4.0), s(0.0, 0, 0.0))]);
    let usage = [("cpu-user", s(3.0, 0, 0.0)), ("gpu-user", s(0.5, 0, 1.0))];
    assert_eq!(ids(&drf(&mut index, &queue, &usage).placements), vec![2, 1]);
}

#[test]
fn drf_blocked_key_keeps_going_with_backfill() {
    let mut index = Index::new(vec![
        agent("a0", s(8.0, 800, 0.0), s(4.0, 400, 0.0)),
        agent("a1", s(8.0, 800, 0.0), s(6.0, 600, 0.0)),
    ]);
    let queue = [
        pending(1, "a", s(6.0, 600, 0.0), 1),
        pending(2, "a", s(1.0, 100, 0.0), 2),
        pending(3, "b", s(1.0, 100, 0.0), 3),
        pending(4, "b", s(1.0, 100, 0.0), 4),
        pending(5, "b", s(1.0, 100, 0.0), 5),
    ];
    let plan_ = drf(&mut index, &queue, &[("b", s(1.0, 0, 0.0))]);
    // a (share 0) goes first: 1 is the head and holds a0; a's next (2) is still
    // considered and placed on a1. Then b (share 1/16 = 0.0625 vs a's 0.0625 after
    // 2, tie by seq: b's 3) gets a1's last slot; 4 and 5 wait.
    assert_eq!(plan_.reservation, Some((1, 0)));
    assert_eq!(plan_.placements, vec![(2, 1), (3, 1)]);
    assert_eq!(plan_.waiting, vec![1, 4, 5]);
}

/// One agent of 16 cores; small sessions (4 cores) each run 4 passes and one
/// arrives per pass; the running ones end one per pass (staggered). A large session
/// (8 cores) waits at the head. Returns the pass the large one was placed in, and
/// how many small ones were placed in all.
fn simulate(passes: i64, reserve: bool) -> (Option<i64>, usize) {
    const LARGE: u64 = 1000;
    let cap = s(16.0, 16_000, 0.0);
    let small = s(4.0, 1000, 0.0);
    // (slots, last pass it runs in)
    let mut running: Vec<(Slots, i64)> = (0..4).map(|i| (small, i)).collect();
    let mut queue = vec![pending(LARGE, "big", s(8.0, 4000, 0.0), 0)];
    let (mut large_at, mut smalls) = (None, 0);
    for pass in 1..=passes {
        running.retain(|&(_, last)| last >= pass);
        queue.push(pending(pass as u64, "small", small, pass));
        let used = running.iter().fold(Slots::ZERO, |sum, &(slots, _)| sum + slots);
        let mut index = Index::new(vec![agent("only", cap, used)]);
        let placed: Vec<u64> =
            if reserve { ids(&fifo(&mut index, &queue).placements) } else { greedy(&mut index, &queue) };
        for id in placed {
            let session = queue.iter().position(|p| p.id == id).unwrap();
            let session = queue.remove(session);
            running.push((session.slots, pass + 3));
            if id == LARGE {
                large_at = Some(pass);
            } else {
                smalls += 1;
            }
        }
        assert!(running.iter().fold(0.0, |sum, (slots, _)| sum + slots.cpu) <= 16.0);
    }
    (large_at, smalls)
}

/// Placement without a reservation, for contrast: whatever fits, in fifo order.
fn greedy(index: &mut Index, queue: &[Pending]) -> Vec<u64> {
    let mut placed = Vec::new();
    for p in queue {
        if let Some(agent) = index.choose(p.slots, Placement::Dispersed, None) {
            index.take(agent, p.slots);
            placed.push(p.id);
        }
    }
    placed
}

#[test]
fn the_head_is_not_starved_by_a_stream_of_small_sessions() {
    // Pass 1 frees 4 cores (not enough); the head holds the agent, so pass 2 has 8.
    let (large_at, smalls) = simulate(40, true);
    assert_eq!(large_at, Some(2));
    // Small ones keep flowing afterwards (one per pass in steady state).
    assert!(smalls >= 30, "{smalls} small sessions placed");
    // Without the reservation, each 4 freed cores go to the next small session.
    let (large_at, smalls) = simulate(40, false);
    assert_eq!(large_at, None);
    assert_eq!(smalls, 40);
}

#[test]
fn the_head_is_placed_within_the_longest_running_session_even_if_others_arrive() {
    // Several small arrivals per pass, and a bigger head (12 of 16 cores): it still
    // goes in once the sessions running on its agent at the start have ended.
    let cap = s(16.0, 16_000, 0.0);
    let small = s(2.0, 500, 0.0);
    let mut running: Vec<(Slots, i64)> = (0..8).map(|i| (small, i % 5)).collect();
    let mut queue = vec![pending(0, "big", s(12.0, 8000, 0.0), 0)];
    let mut next = 1;
    let mut large_at = None;
    for pass in 1..=20 {
        running.retain(|&(_, last)| last >= pass);
        for _ in 0..3 {
            queue.push(pending(next, "small", small, next as i64));
            next += 1;
        }
        let used = running.iter().fold(Slots::ZERO, |sum, &(slots, _)| sum + slots);
        let agents: Vec<AgentSlots> = vec![agent("only", cap, used)];
        let plan_ = fifo(&mut Index::new(agents), &queue);
        for (id, _) in plan_.placements {
            let at = queue.iter().position(|p| p.id == id).unwrap();
            running.push((queue.remove(at).slots, pass + 6));
            if id == 0 {
                large_at = Some(pass);
            }
        }
    }
    // Everything running at the start ends by pass 4: the head is placed by pass 5.
    assert!(large_at.is_some_and(|at| at <= 5), "{large_at:?}");
}
