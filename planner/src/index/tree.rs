//! [`MaxTree`]: a segment tree over a row of leaves (the blocks of the index, in key
//! order) that knows, for every range, the largest free CPU and the largest free GPU
//! in it, so that a search finds the first or last leaf that may fit a request in
//! logarithmic time instead of walking the leaves.

/// An array-based segment tree: node 1 is the root, node `i` has children `2i` and
/// `2i + 1`, and the leaves are nodes `size..2 * size` (`size` a power of two). Each
/// node holds (largest free CPU, largest free GPU); a leaf with nothing in it holds
/// negative infinities.
#[derive(Clone, Debug, Default)]
pub(super) struct MaxTree {
    max: Vec<[f64; 2]>,
    size: usize,
}

const EMPTY: [f64; 2] = [f64::NEG_INFINITY; 2];

impl MaxTree {
    /// A tree of at least `leaves` empty leaves.
    pub(super) fn new(leaves: usize) -> Self {
        let size = leaves.next_power_of_two().max(1);
        Self { max: vec![EMPTY; 2 * size], size }
    }

    /// How many leaves it has room for.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.size
    }

    /// The largest free CPU and GPU of leaf `leaf`.
    pub(super) fn get(&self, leaf: usize) -> (f64, f64) {
        let [cpu, gpu] = self.max[self.size + leaf];
        (cpu, gpu)
    }

    /// Sets leaf `leaf` and the maxima above it. `O(log n)`, less when they do not change.
    pub(super) fn set(&mut self, leaf: usize, cpu: f64, gpu: f64) {
        let mut i = self.size + leaf;
        let same = |a: [f64; 2], b: [f64; 2]| a[0].total_cmp(&b[0]).is_eq() && a[1].total_cmp(&b[1]).is_eq();
        if same(self.max[i], [cpu, gpu]) {
            return;
        }
        self.max[i] = [cpu, gpu];
        while i > 1 {
            i /= 2;
            let up = self.join(i);
            if same(self.max[i], up) {
                return;
            }
            self.max[i] = up;
        }
    }

    /// The maxima of node `i`'s children.
    fn join(&self, i: usize) -> [f64; 2] {
        let (a, b) = (self.max[2 * i], self.max[2 * i + 1]);
        [a[0].max(b[0]), a[1].max(b[1])]
    }

    /// Inserts an empty leaf at `at`, shifting leaves `at..len` one to the right
    /// (growing if there is no room), and recomputes the maxima above the leaves that
    /// moved. `O(len - at + log n)` (`O(n)` when it grows).
    pub(super) fn insert_leaf(&mut self, at: usize, len: usize) {
        if len + 1 > self.size {
            let mut grown = Self::new(len + 1);
            grown.max[grown.size..grown.size + len].copy_from_slice(&self.max[self.size..self.size + len]);
            *self = grown;
            (1..self.size).rev().for_each(|i| self.max[i] = self.join(i));
        }
        let (mut lo, mut hi) = (self.size + at, self.size + len);
        self.max.copy_within(lo..hi, lo + 1);
        self.max[lo] = EMPTY;
        hi += 1;
        while lo > 1 {
            (lo, hi) = (lo / 2, (hi - 1) / 2 + 1);
            for i in lo..hi {
                self.max[i] = self.join(i);
            }
        }
    }

    /// Whether node `i` may hold a leaf with `need`'s CPU and GPU (false for NaN).
    fn admits(&self, i: usize, need: [f64; 2]) -> bool {
        let [cpu, gpu] = self.max[i];
        cpu >= need[0] && gpu >= need[1]
    }

    /// The first leaf in `lo..hi` whose largest free CPU is at least `cpu` and whose
    /// largest free GPU is at least `gpu`.
    pub(super) fn first(&self, lo: usize, hi: usize, cpu: f64, gpu: f64) -> Option<usize> {
        self.find(lo, hi, [cpu, gpu], false)
    }

    /// The last such leaf in `lo..hi`.
    pub(super) fn last(&self, lo: usize, hi: usize, cpu: f64, gpu: f64) -> Option<usize> {
        self.find(lo, hi, [cpu, gpu], true)
    }

    /// Walks up the nodes that exactly cover leaves `lo..hi`: those at the near end
    /// (the right one if `last`) come in search order and are tried at once; those at
    /// the far end come in reverse order and are tried after, last seen first.
    fn find(&self, lo: usize, hi: usize, need: [f64; 2], last: bool) -> Option<usize> {
        let mut far = [0_usize; 64];
        let mut kept = 0;
        let mut keep = |node: usize| {
            if let Some(slot) = far.get_mut(kept) {
                *slot = node;
                kept += 1;
            }
        };
        let (mut l, mut r) = (lo.min(self.size) + self.size, hi.min(self.size) + self.size);
        while l < r {
            if l & 1 == 1 {
                if last {
                    keep(l);
                } else if let Some(leaf) = self.descend(l, need, false) {
                    return Some(leaf);
                }
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                if !last {
                    keep(r);
                } else if let Some(leaf) = self.descend(r, need, true) {
                    return Some(leaf);
                }
            }
            (l, r) = (l / 2, r / 2);
        }
        far[..kept].iter().rev().find_map(|&node| self.descend(node, need, last))
    }

    /// The last (or first) leaf under `top` that admits `need`, backtracking when a
    /// node's two maxima come from different children.
    fn descend(&self, top: usize, need: [f64; 2], last: bool) -> Option<usize> {
        if !self.admits(top, need) {
            return None;
        }
        // The child tried first, and the other one.
        let (first, second) = if last { (1, 0) } else { (0, 1) };
        let mut node = top;
        loop {
            if node >= self.size {
                return Some(node - self.size);
            }
            if self.admits(2 * node + first, need) {
                node = 2 * node + first;
                continue;
            }
            if self.admits(2 * node + second, need) {
                node = 2 * node + second;
                continue;
            }
            // Neither child: back up to the nearest first-tried child whose sibling
            // has not been tried yet.
            loop {
                if node == top {
                    return None;
                }
                if node & 1 == first && self.admits(node ^ 1, need) {
                    node ^= 1;
                    break;
                }
                node /= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule, by brute force over the leaves.
    fn brute(leaves: &[(f64, f64)], lo: usize, hi: usize, c: f64, g: f64, last: bool) -> Option<usize> {
        let mut hits = (lo..hi.min(leaves.len())).filter(|&i| leaves[i].0 >= c && leaves[i].1 >= g);
        if last {
            hits.next_back()
        } else {
            hits.next()
        }
    }

    #[test]
    fn searches_match_brute_force_through_sets_and_inserts() {
        let mut state = 11_u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut leaves: Vec<(f64, f64)> = Vec::new();
        let mut tree = MaxTree::new(3);
        for round in 0..3000 {
            if leaves.is_empty() || next(10) == 0 {
                let at = next(leaves.len() as u64 + 1) as usize;
                tree.insert_leaf(at, leaves.len());
                leaves.insert(at, (f64::NEG_INFINITY, f64::NEG_INFINITY));
                assert!(tree.capacity() >= leaves.len());
            } else {
                let at = next(leaves.len() as u64) as usize;
                let value = (next(9) as f64, next(4) as f64);
                let value = if next(8) == 0 { (f64::NEG_INFINITY, f64::NEG_INFINITY) } else { value };
                tree.set(at, value.0, value.1);
                leaves[at] = value;
            }
            for (i, leaf) in leaves.iter().enumerate() {
                assert_eq!(tree.get(i), *leaf);
            }
            let (lo, hi) = (next(leaves.len() as u64 + 1) as usize, next(leaves.len() as u64 + 2) as usize);
            let (c, g) = (next(10) as f64, next(5) as f64);
            for last in [false, true] {
                let found = if last { tree.last(lo, hi, c, g) } else { tree.first(lo, hi, c, g) };
                assert_eq!(found, brute(&leaves, lo, hi, c, g, last), "round {round}");
            }
            assert_eq!(tree.first(0, leaves.len(), f64::NAN, 0.0), None);
        }
    }
}
