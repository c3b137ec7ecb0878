use super::*;
use crate::testing::{agent, s};

#[test]
fn explain_lists_every_agent_with_each_short_resource() {
    let index = Index::new(vec![
        agent("busy", s(8.0, 1000, 2.0), s(7.0, 900, 2.0)),
        agent("free", s(8.0, 1000, 2.0), Slots::ZERO),
        agent("tiny", s(2.0, 4000, 0.0), s(0.5, 0, 0.0)),
        agent("mem", s(8.0, 1000, 2.0), s(0.0, 950, 0.0)),
    ]);
    let why = explain(&index, s(4.0, 300, 1.0));
    assert_eq!(why.len(), 4);
    assert_eq!(
        why[0],
        Shortfall { agent: 0, short: vec![("cpu", 3.0), ("mem", 200.0), ("gpu", 1.0)], too_small: false }
    );
    assert_eq!(why[1], Shortfall { agent: 1, short: vec![], too_small: false });
    assert_eq!(why[2], Shortfall { agent: 2, short: vec![("cpu", 2.5), ("gpu", 1.0)], too_small: true });
    assert_eq!(why[3], Shortfall { agent: 3, short: vec![("mem", 250.0)], too_small: false });
}

#[test]
fn explain_uses_the_epsilon() {
    let index = Index::new(vec![agent("a", s(1.0, 10, 1.0), s(0.7, 5, 0.7))]);
    assert!(explain(&index, s(0.3 + 5e-10, 5, 0.3))[0].short.is_empty());
    let why = explain(&index, s(0.5, 6, 0.3));
    assert_eq!(why[0].short.len(), 2);
    assert_eq!(why[0].short[0].0, "cpu");
    assert!((why[0].short[0].1 - 0.2).abs() < 1e-12);
    assert_eq!(why[0].short[1], ("mem", 1.0));
    assert!(!why[0].too_small);
    assert!(explain(&index, s(1.5, 1, 0.0))[0].too_small);
}

#[test]
fn reservation_goes_to_the_agent_closest_to_fitting() {
    let index = Index::new(vec![
        // (2, 200): short 2 of 8 cores = 0.25. (3, 200): 3/8.
        agent("a0", s(8.0, 1000, 0.0), s(8.0, 0, 0.0)),
        // (2, 200): short 1 of 16 cores (0.0625) and 100 of 2000 MiB (0.05): 0.0625.
        // (3, 200): 2/16 = 0.125.
        agent("a1", s(16.0, 2000, 0.0), s(15.0, 1900, 0.0)),
        // Short 100 of 1000 MiB: 0.1 for both (cpu fits).
        agent("a2", s(4.0, 1000, 0.0), s(1.0, 900, 0.0)),
        // Could never hold 200 MiB, though it is empty.
        agent("a3", s(64.0, 199, 0.0), Slots::ZERO),
    ]);
    assert_eq!(reservation_for(&index, s(2.0, 200, 0.0), Placement::Dispersed), Some(1));
    assert_eq!(reservation_for(&index, s(3.0, 200, 0.0), Placement::Dispersed), Some(2));
    // a2 is too small for 5 cores: a1 (4/16) beats a0 (5/8).
    assert_eq!(reservation_for(&index, s(5.0, 200, 0.0), Placement::Concentrated), Some(1));
    assert_eq!(reservation_for(&index, s(1.0, 3000, 0.0), Placement::Dispersed), None);
}

#[test]
fn reservation_ties_go_to_the_lowest_index() {
    let cap = s(4.0, 100, 0.0);
    let index = Index::new(vec![
        agent("a0", cap, s(4.0, 0, 0.0)),
        agent("a1", cap, s(3.0, 0, 0.0)),
        agent("a2", cap, s(3.0, 0, 0.0)),
    ]);
    assert_eq!(reservation_for(&index, s(2.0, 10, 0.0), Placement::Dispersed), Some(1));
}

#[test]
fn reservation_of_a_session_that_fits_now_is_where_it_would_go() {
    let index =
        Index::new(vec![agent("a0", s(4.0, 100, 0.0), s(0.0, 50, 0.0)), agent("a1", s(4.0, 100, 0.0), Slots::ZERO)]);
    let one = s(1.0, 10, 0.0);
    assert_eq!(reservation_for(&index, one, Placement::Dispersed), Some(1));
    assert_eq!(reservation_for(&index, one, Placement::Concentrated), Some(0));
}
