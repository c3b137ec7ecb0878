//! [`Index`]: the agents ordered by free slots, for choosing an agent in logarithmic
//! time in the common case.

use crate::{AgentSlots, Placement, Slots};

mod blocks;
mod tree;

use blocks::Blocks;

/// The agents' capacity and used slots, indexed for fast choice.
///
/// Agents are kept in order of (free memory, free CPU, index) in blocks of 32 to 64
/// agents (each block a range of that order), under a segment tree that knows the
/// largest free CPU and GPU of every run of blocks, so that a search in memory order
/// skips in logarithmic time the runs of agents that cannot fit (such as agents whose
/// CPU is used up while their memory is free, which sit together in memory order).
#[derive(Clone, Debug, Default)]
pub struct Index {
    agents: Vec<AgentSlots>,
    /// The order of `capacity - used`.
    by_mem: Blocks,
    /// The distinct capacities not dominated by another (or all distinct ones if there
    /// are too many shapes), by memory descending.
    shapes: Vec<Slots>,
}

/// Above this many non-dominated shapes, [`Index::new`] stops pruning (keeps it linear).
const SHAPES_PRUNED: usize = 256;

impl Index {
    /// An index over `agents` (their order gives their indices). `O(n log n)`.
    pub fn new(agents: Vec<AgentSlots>) -> Self {
        let slots: Vec<(Slots, Slots)> = agents.iter().map(|a| (a.capacity, a.used)).collect();
        let by_mem = Blocks::new(&slots);
        let shapes = shapes(&agents);
        Self { agents, by_mem, shapes }
    }

    /// The agents, by index.
    pub fn agents(&self) -> &[AgentSlots] {
        &self.agents
    }

    /// The agent a session of `slots` goes to now under `placement`, among the agents
    /// where it fits (`used + slots <= capacity` in every resource, CPU and GPU within
    /// [`crate::EPSILON`], memory exactly), skipping `exclude`.
    ///
    /// - [`Placement::Dispersed`]: the one with the most free memory (ties: the most
    ///   free CPU, then the lowest index).
    /// - [`Placement::Concentrated`]: the one with the least free memory that fits
    ///   (ties: the least free CPU, then the lowest index).
    ///
    /// `O(log n)` to find the first block in memory order with an agent that has the
    /// CPU and GPU free, then a scan of that block (up to 64 agents); more only when
    /// a block's largest free CPU and largest free GPU belong to different agents.
    pub fn choose(&self, slots: Slots, placement: Placement, exclude: Option<usize>) -> Option<usize> {
        self.by_mem.choose(slots, placement, exclude, |agent| self.fits_now(agent, slots))
    }

    /// Records `slots` taken on agent `agent` (after a placement) and keeps the index
    /// ordered. Negative slots release. An `agent` out of range is ignored.
    /// `O(log n + 64)`: at most a binary search over the blocks, a move between two
    /// blocks and their summaries (and now and then a block split in `O(n / 32)`).
    pub fn take(&mut self, agent: usize, slots: Slots) {
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        a.used += slots;
        self.by_mem.update(agent, a.capacity, a.used);
    }

    /// Whether some agent's capacity could ever hold `slots` (false: it is bigger than
    /// every agent). Linear in the number of distinct agent shapes.
    pub fn could_ever_fit(&self, slots: Slots) -> bool {
        self.shapes.iter().take_while(|cap| cap.mem >= slots.mem).any(|cap| slots.fits_in(*cap))
    }

    /// Whether `slots` fits on agent `agent` now.
    pub(crate) fn fits_now(&self, agent: usize, slots: Slots) -> bool {
        self.agents.get(agent).is_some_and(|a| slots.fits(a.used, a.capacity))
    }
}

/// The distinct capacities of `agents` by memory descending, without those another
/// one dominates (while there are few shapes; all of them past [`SHAPES_PRUNED`]).
fn shapes(agents: &[AgentSlots]) -> Vec<Slots> {
    let mut caps: Vec<Slots> = agents.iter().map(|a| a.capacity).collect();
    caps.sort_unstable_by(|a, b| b.mem.cmp(&a.mem).then(b.cpu.total_cmp(&a.cpu)).then(b.gpu.total_cmp(&a.gpu)));
    caps.dedup_by(|a, b| a.mem == b.mem && a.cpu.total_cmp(&b.cpu).is_eq() && a.gpu.total_cmp(&b.gpu).is_eq());
    let mut kept: Vec<Slots> = Vec::new();
    for cap in caps {
        // Earlier ones have at least as much memory.
        if kept.len() >= SHAPES_PRUNED || !kept.iter().any(|k| k.cpu >= cap.cpu && k.gpu >= cap.gpu) {
            kept.push(cap);
        }
    }
    kept
}

#[cfg(test)]
mod tests;
