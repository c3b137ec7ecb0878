//! [`Blocks`]: the agents ordered by (free memory, free CPU, index) in blocks of key
//! ranges, unordered within a block, with a [`MaxTree`] over the blocks so that a
//! search skips, in logarithmic time, every run of blocks none of whose agents has
//! the CPU or GPU free (such as agents whose CPU is used up while their memory is
//! free, which sit together in memory order).

use super::tree::MaxTree;
use crate::slots::ord_key;
use crate::{Placement, Slots};

/// The order: (free MiB, [`ord_key`] of free cores, agent index).
type Key = (i64, i64, usize);

/// The upper bound of the last block.
const MAX_KEY: Key = (i64::MAX, i64::MAX, usize::MAX);

/// Blocks are built with this many agents, and split past twice as many.
const BLOCK: usize = 32;

/// Fast rejects on free CPU or GPU allow for this much rounding (far above
/// [`crate::EPSILON`], far below any real request); the exact check comes after.
const MARGIN: f64 = 1e-6;

/// Below this magnitude, CPU and GPU amounts are exact enough that a request at least
/// [`MARGIN`] below the free amount surely fits (rounding is below 2^-32 there).
const SMALL: f64 = (1 << 20) as f64;

/// Amounts that are multiples of this (and below [`SMALL`]) add and subtract exactly.
const GRID: f64 = (1 << 20) as f64;

/// Whether `x` is below [`SMALL`] and a multiple of 1 / [`GRID`].
fn on_grid(x: f64) -> bool {
    x.abs() < SMALL && (x * GRID).fract() == 0.0
}

/// One agent's free slots (`capacity - used`).
#[derive(Clone, Copy, Debug)]
struct Entry {
    mem: i64,
    cpu: f64,
    gpu: f64,
    agent: usize,
    /// Whether the free slots decide fitting without the exact check: the amounts are
    /// finite and below [`SMALL`], and the free memory did not saturate, so that a
    /// request of at most the free memory, and at least [`MARGIN`] below the free CPU
    /// and GPU, fits.
    sure: bool,
    /// Whether the capacity and use of CPU and GPU are [`on_grid`], so that for a
    /// request on the grid too, at most the free CPU and GPU fits.
    grid: bool,
}

impl Entry {
    fn new(agent: usize, capacity: Slots, used: Slots) -> Self {
        let free = capacity - used;
        let small = [capacity.cpu, used.cpu, capacity.gpu, used.gpu].iter().all(|x| x.abs() < SMALL);
        let sure = small && capacity.mem.checked_sub(used.mem).is_some();
        let grid = [capacity.cpu, used.cpu, capacity.gpu, used.gpu].into_iter().all(on_grid);
        Self { mem: free.mem, cpu: free.cpu, gpu: free.gpu, agent, sure, grid }
    }

    /// Whether a request the query admits surely fits (see [`Entry::sure`] and
    /// [`Entry::grid`]), without the exact check.
    fn surely_fits(&self, query: &Query) -> bool {
        let need = query.need;
        let exact = self.grid && query.grid;
        self.sure
            && (need.cpu <= self.cpu - MARGIN || (exact && need.cpu <= self.cpu))
            && (need.gpu <= self.gpu - MARGIN || (exact && need.gpu <= self.gpu))
    }

    fn key(&self) -> Key {
        (self.mem, ord_key(self.cpu), self.agent)
    }

    /// (free memory, free CPU): agents equal in this are tied.
    fn group(&self) -> (i64, i64) {
        (self.mem, ord_key(self.cpu))
    }
}

/// What a search looks for.
struct Query {
    need: Slots,
    /// Whether the request's CPU and GPU are [`on_grid`].
    grid: bool,
    /// At least this much free memory.
    mem: i64,
    /// At least this much free CPU and GPU, less [`MARGIN`].
    cpu: f64,
    gpu: f64,
    exclude: Option<usize>,
}

impl Query {
    /// Whether `e` may fit (the exact check comes after).
    fn admits(&self, e: &Entry) -> bool {
        e.mem >= self.mem && e.cpu >= self.cpu && e.gpu >= self.gpu && Some(e.agent) != self.exclude
    }
}

/// The agents in blocks: the block of rank `r` holds the keys in
/// `(upper[r - 1], upper[r]]`, in no particular order; blocks never move agents
/// between themselves except when an agent's key leaves its block's range.
#[derive(Clone, Debug, Default)]
pub(super) struct Blocks {
    /// The blocks' agents, by block id (ids are stable, ranks move on splits).
    blocks: Vec<Vec<Entry>>,
    /// Each block id's rank.
    rank: Vec<usize>,
    /// Each rank's block id.
    order: Vec<usize>,
    /// Each rank's largest key (the last one's is [`MAX_KEY`]).
    upper: Vec<Key>,
    /// Each agent's (block id, position in the block).
    at: Vec<(usize, usize)>,
    /// The blocks' largest free CPU and GPU, by rank.
    tree: MaxTree,
}

impl Blocks {
    /// Blocks over agents `0..agents.len()` of (capacity, used). `O(n log n)`.
    pub(super) fn new(agents: &[(Slots, Slots)]) -> Self {
        let entries = agents.iter().enumerate().map(|(i, &(capacity, used))| Entry::new(i, capacity, used)).collect();
        let mut blocks = Self::default();
        blocks.fill(entries);
        blocks
    }

    /// Fills empty blocks with `entries` (those of agents `0..entries.len()`).
    fn fill(&mut self, mut entries: Vec<Entry>) {
        entries.sort_unstable_by_key(Entry::key);
        let count = entries.len().div_ceil(BLOCK);
        *self = Self {
            blocks: Vec::with_capacity(count),
            rank: (0..count).collect(),
            order: (0..count).collect(),
            upper: Vec::with_capacity(count),
            at: vec![(0, 0); entries.len()],
            tree: MaxTree::new(count),
        };
        for (id, chunk) in entries.chunks(BLOCK).enumerate() {
            let mut block = Vec::with_capacity(2 * BLOCK + 1);
            block.extend_from_slice(chunk);
            for (slot, e) in block.iter().enumerate() {
                self.at[e.agent] = (id, slot);
            }
            self.upper.push(chunk.last().map_or(MAX_KEY, Entry::key));
            self.blocks.push(block);
            let (cpu, gpu) = self.maxima(id);
            self.tree.set(id, cpu, gpu);
        }
        if let Some(last) = self.upper.last_mut() {
            *last = MAX_KEY;
        }
    }

    /// The agent chosen for `need` under `placement` (see [`super::Index::choose`]),
    /// where `fits(agent)` is the exact check.
    pub(super) fn choose(
        &self,
        need: Slots,
        placement: Placement,
        exclude: Option<usize>,
        fits: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let grid = on_grid(need.cpu) && on_grid(need.gpu);
        let query = Query { need, grid, mem: need.mem, cpu: need.cpu - MARGIN, gpu: need.gpu - MARGIN, exclude };
        let from = self.upper.partition_point(|u| *u < (need.mem, i64::MIN, 0));
        let ranks = self.order.len();
        match placement {
            Placement::Concentrated => {
                let mut lo = from;
                loop {
                    let r = self.tree.first(lo, ranks, query.cpu, query.gpu)?;
                    if let Some(e) = self.best(r, &query, placement, None, &fits) {
                        return Some(e.agent);
                    }
                    lo = r + 1;
                }
            }
            Placement::Dispersed => {
                let mut hi = ranks;
                loop {
                    let r = self.tree.last(from, hi, query.cpu, query.gpu)?;
                    if let Some(e) = self.best(r, &query, placement, None, &fits) {
                        return Some(self.lowest_tied(r, e, &query, &fits));
                    }
                    hi = r;
                }
            }
        }
    }

    /// The agent of `found`'s group (the best in the block of rank `r`, under
    /// [`Placement::Dispersed`]) with the lowest index: tied agents in lower blocks
    /// have lower indices.
    fn lowest_tied(&self, r: usize, found: Entry, query: &Query, fits: &impl Fn(usize) -> bool) -> usize {
        let group = found.group();
        if r == 0 || (self.upper[r - 1].0, self.upper[r - 1].1) != group {
            return found.agent;
        }
        let start = self.upper[..r].partition_point(|u| (u.0, u.1) < group);
        for rank in start..r {
            let (cpu, gpu) = self.tree.get(rank);
            if cpu < query.cpu || gpu < query.gpu {
                continue;
            }
            if let Some(e) = self.best(rank, query, Placement::Dispersed, Some(group), fits) {
                return e.agent;
            }
        }
        found.agent
    }

    /// The best agent that fits in the block of rank `r` (the least key under
    /// [`Placement::Concentrated`], the lowest index of the largest group under
    /// [`Placement::Dispersed`]), or the lowest index in `group` if given.
    fn best(
        &self,
        r: usize,
        query: &Query,
        placement: Placement,
        group: Option<(i64, i64)>,
        fits: &impl Fn(usize) -> bool,
    ) -> Option<Entry> {
        let block = &self.blocks[self.order[r]];
        // The best that passes `check`, among those the query admits.
        let pick = |check: &dyn Fn(usize) -> bool| {
            let mut best: Option<Entry> = None;
            for e in block {
                if !query.admits(e) || group.is_some_and(|g| e.group() != g) {
                    continue;
                }
                let better = best.is_none_or(|b| match placement {
                    Placement::Concentrated => e.key() < b.key(),
                    Placement::Dispersed => {
                        let (eg, bg) = (e.group(), b.group());
                        eg > bg || (eg == bg && e.agent < b.agent)
                    }
                });
                if better && check(e.agent) {
                    best = Some(*e);
                }
            }
            best
        };
        // The exact check only on the winner, unless it fails (rounding at the margin).
        match pick(&|_| true) {
            Some(e) if e.surely_fits(query) || fits(e.agent) => Some(e),
            Some(_) => pick(fits),
            None => None,
        }
    }

    /// Records agent `agent`'s new `used` slots out of `capacity`, moving it to another
    /// block if its key leaves its block's range. `O(log n + BLOCK)`.
    pub(super) fn update(&mut self, agent: usize, capacity: Slots, used: Slots) {
        let Some(&(id, slot)) = self.at.get(agent) else {
            return;
        };
        let new = Entry::new(agent, capacity, used);
        let key = new.key();
        let r = self.rank[id];
        if key <= self.upper[r] && (r == 0 || self.upper[r - 1] < key) {
            let old = std::mem::replace(&mut self.blocks[id][slot], new);
            self.refresh(r, id, old, Some(new));
            return;
        }
        let old = self.blocks[id].swap_remove(slot);
        if let Some(moved) = self.blocks[id].get(slot) {
            self.at[moved.agent] = (id, slot);
        }
        self.refresh(r, id, old, None);
        self.insert(new);
    }

    /// Updates the summary of block `id` (rank `r`) after `old` left and `new` came.
    fn refresh(&mut self, r: usize, id: usize, old: Entry, new: Option<Entry>) {
        let (cpu, gpu) = self.tree.get(r);
        if old.cpu >= cpu || old.gpu >= gpu {
            let (cpu, gpu) = self.maxima(id);
            self.tree.set(r, cpu, gpu);
        } else if let Some(new) = new {
            self.tree.set(r, cpu.max(new.cpu), gpu.max(new.gpu));
        }
    }

    /// The largest free CPU and GPU in block `id`.
    fn maxima(&self, id: usize) -> (f64, f64) {
        self.blocks[id].iter().fold((f64::NEG_INFINITY, f64::NEG_INFINITY), |(c, g), e| (c.max(e.cpu), g.max(e.gpu)))
    }

    /// Adds `e` to the block of its key, splitting it if it is too large.
    fn insert(&mut self, e: Entry) {
        let r = self.upper.partition_point(|u| *u < e.key());
        let Some(&id) = self.order.get(r) else {
            return;
        };
        let block = &mut self.blocks[id];
        block.push(e);
        self.at[e.agent] = (id, block.len() - 1);
        let too_large = block.len() > 2 * BLOCK;
        let (cpu, gpu) = self.tree.get(r);
        self.tree.set(r, cpu.max(e.cpu), gpu.max(e.gpu));
        if too_large {
            self.split(r);
        }
    }

    /// Splits the block of rank `r` into its lower and upper halves (or, when there
    /// are many more blocks than needed, rebuilds them all).
    fn split(&mut self, r: usize) {
        if self.order.len() > 4 * (self.at.len() / BLOCK + 1) {
            *self = self.rebuilt();
            return;
        }
        let id = self.order[r];
        let mut lower = std::mem::take(&mut self.blocks[id]);
        let mid = lower.len() / 2;
        lower.select_nth_unstable_by_key(mid - 1, Entry::key);
        let mut upper = Vec::with_capacity(2 * BLOCK + 1);
        upper.extend_from_slice(&lower[mid..]);
        lower.truncate(mid);
        let bound = lower[mid - 1].key();
        let new_id = self.blocks.len();
        for (slot, e) in lower.iter().enumerate() {
            self.at[e.agent] = (id, slot);
        }
        for (slot, e) in upper.iter().enumerate() {
            self.at[e.agent] = (new_id, slot);
        }
        self.blocks[id] = lower;
        self.blocks.push(upper);
        self.order.insert(r + 1, new_id);
        self.upper.insert(r, bound);
        self.rank.push(0);
        for (rank, &block) in self.order.iter().enumerate().skip(r) {
            self.rank[block] = rank;
        }
        self.tree.insert_leaf(r + 1, self.order.len() - 1);
        for (rank, block) in [(r, id), (r + 1, new_id)] {
            let (cpu, gpu) = self.maxima(block);
            self.tree.set(rank, cpu, gpu);
        }
    }

    /// The same agents, blocked afresh.
    fn rebuilt(&self) -> Self {
        let mut blocks = Self::default();
        blocks.fill(self.blocks.iter().flatten().copied().collect());
        blocks
    }
}

#[cfg(test)]
mod tests;
