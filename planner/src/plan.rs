//! [`plan`]: one scheduling pass over the pending queue.

use std::collections::HashMap;

use crate::{reservation_for, Index, Pending, Placement, Plan, Policy, Slots};

mod drf;

/// One scheduling pass.
///
/// `queue` is the pending sessions in any order (they are sorted by (`seq`, `id`)
/// here). `usage` is each access key's slots held by its live (placed) sessions, for
/// [`Policy::Drf`]; the cluster's total (the sum of the agents' capacities) is taken
/// from `index`. The index is updated with the placements made, so that the caller
/// can keep it.
///
/// Sessions are considered in policy order: [`Policy::Fifo`] by (`seq`, `id`);
/// [`Policy::Drf`] by taking, each time, the access key with the smallest dominant
/// share (its usage, including what this pass placed, over the total, in its most
/// used resource; ties by the `seq` then `id` of the key's next session) and its next
/// session in (`seq`, `id`) order.
///
/// Backfill keeps a head-of-line guarantee (EASY backfilling): a session that fits
/// somewhere, except on the reserved agent, is placed there by
/// [`Index::choose`]. The first session that fits nowhere is the head: it reserves
/// the agent from [`reservation_for`], and no later session is placed on that agent
/// in this pass, so the head is placed once that agent's sessions end. Later sessions
/// that do not fit wait. A session bigger than every agent's capacity never takes the
/// reservation; it just waits.
///
/// `Plan::waiting` holds every session not placed, in the order they were considered.
///
/// Cost: `O(P)` to read the queue (`O(P log P)` if it is not in (`seq`, `id`) order
/// already, as the manager passes it), plus `O(log n)` per session placed or
/// rejected by the index's fast paths. Sizes that failed in this pass are remembered
/// (free slots only shrink within a pass and the reserved agent only adds to the
/// excluded ones), so a session at least as large as one that failed is rejected
/// without touching the index, which makes a full cluster cost `O(P)`. Drf adds
/// `O(log K)` per session for `K` access keys.
pub fn plan(
    index: &mut Index,
    queue: &[Pending],
    usage: &HashMap<String, Slots>,
    policy: Policy,
    placement: Placement,
) -> Plan {
    let mut pass = Pass::new(index, placement, queue.len());
    match policy {
        Policy::Fifo => {
            for session in arrival_order(queue, |_| 0) {
                pass.consider(session.id, session.slots);
            }
        }
        Policy::Drf => drf::run(&mut pass, queue, usage),
    }
    pass.plan
}

/// What a pass needs of a pending session.
#[derive(Clone, Copy, Debug)]
struct Session {
    seq: i64,
    id: u64,
    slots: Slots,
    /// A number for its access key (or 0 when the policy does not need one).
    key: u32,
}

/// The sessions of `queue` by (`seq`, `id`), then position; `key_of(i)` numbers the
/// access key of `queue[i]` (called in queue order). `O(P)` when the queue is in that
/// order already (as the manager passes it), `O(P log P)` otherwise.
fn arrival_order(queue: &[Pending], mut key_of: impl FnMut(usize) -> u32) -> Vec<Session> {
    let mut sessions: Vec<Session> = queue
        .iter()
        .enumerate()
        .map(|(i, p)| Session { seq: p.seq, id: p.id, slots: p.slots, key: key_of(i) })
        .collect();
    if !sessions.windows(2).all(|w| (w[0].seq, w[0].id) <= (w[1].seq, w[1].id)) {
        // Stable: ties keep the queue's order.
        sessions.sort_by_key(|s| (s.seq, s.id));
    }
    sessions
}

/// The state of one pass: the index, what was decided, and what is known to fail.
struct Pass<'a> {
    index: &'a mut Index,
    placement: Placement,
    /// Sizes that fit nowhere (outside the reserved agent) in this pass.
    failed: Frontier,
    /// Sizes no agent could ever hold.
    never: Frontier,
    /// The reserved agent.
    reserved: Option<usize>,
    plan: Plan,
}

impl<'a> Pass<'a> {
    fn new(index: &'a mut Index, placement: Placement, queued: usize) -> Self {
        Self {
            index,
            placement,
            failed: Frontier::default(),
            never: Frontier::default(),
            reserved: None,
            plan: Plan {
                placements: Vec::with_capacity(queued.min(1 << 16)),
                reservation: None,
                waiting: Vec::with_capacity(queued),
            },
        }
    }

    /// Places session `id` of `slots` if it fits outside the reserved agent, or makes
    /// it the head (reserving an agent) if there is none yet and it could ever fit, or
    /// leaves it waiting. Whether it was placed.
    fn consider(&mut self, id: u64, slots: Slots) -> bool {
        if !self.failed.covers(slots) {
            if let Some(agent) = self.index.choose(slots, self.placement, self.reserved) {
                self.index.take(agent, slots);
                self.plan.placements.push((id, agent));
                return true;
            }
            self.failed.insert(slots);
        }
        if self.plan.reservation.is_none() && self.could_ever_fit(slots) {
            if let Some(agent) = reservation_for(self.index, slots, self.placement) {
                self.plan.reservation = Some((id, agent));
                self.reserved = Some(agent);
            }
        }
        self.plan.waiting.push(id);
        false
    }

    fn could_ever_fit(&mut self, slots: Slots) -> bool {
        if self.never.covers(slots) {
            return false;
        }
        let could = self.index.could_ever_fit(slots);
        if !could {
            self.never.insert(slots);
        }
        could
    }
}

/// At most this many sizes are remembered (more only costs speed, not correctness).
const FRONTIER: usize = 64;

/// A set of sizes that fail, kept as its minimal elements: a size at least as large
/// as one of them in every resource fails too.
#[derive(Default)]
struct Frontier {
    sizes: Vec<Slots>,
}

impl Frontier {
    /// Whether `slots` is at least as large as some remembered size.
    fn covers(&self, slots: Slots) -> bool {
        self.sizes.iter().any(|&size| slots.covers(size))
    }

    /// Remembers `slots`, dropping the sizes it makes redundant.
    fn insert(&mut self, slots: Slots) {
        self.sizes.retain(|&size| !size.covers(slots));
        if self.sizes.len() < FRONTIER {
            self.sizes.push(slots);
        }
    }
}

#[cfg(test)]
mod tests;
