//! [`MaxTree`]: a segment tree over a row of leaves (the blocks of the index, in key
//! order) that knows, for every range, the largest free CPU and the largest free GPU
//! in it, so that a search finds the first or last leaf that may fit a request in
//! logarithmic time instead of walking the leaves.

/// An array-based segment tree: node 1 is the root, node `i` has children `2i` and
/// `2i + 1`, and the leaves are nodes `size..2 * size` (`size` a power of two). A leaf
/// with nothing in it holds negative infinity.
#[derive(Clone, Debug, Default)]
pub(super) struct MaxTree {
    cpu: Vec<f64>,
    gpu: Vec<f64>,
    size: usize,
}

impl MaxTree {
    /// A tree of at least `leaves` empty leaves.
    pub(super) fn new(leaves: usize) -> Self {
        let size = leaves.next_power_of_two().max(1);
        Self { cpu: vec![f64::NEG_INFINITY; 2 * size], gpu: vec![f64::NEG_INFINITY; 2 * size], size }
    }

    /// How many leaves it has room for.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.size
    }

    /// The largest free CPU and GPU of leaf `leaf`.
    pub(super) fn get(&self, leaf: usize) -> (f64, f64) {
        (self.cpu[self.size + leaf], self.gpu[self.size + leaf])
    }

    /// Sets leaf `leaf` and the maxima above it. `O(log n)`, less when they do not change.
    pub(super) fn set(&mut self, leaf: usize, cpu: f64, gpu: f64) {
        let mut i = self.size + leaf;
        if self.cpu[i].total_cmp(&cpu).is_eq() && self.gpu[i].total_cmp(&gpu).is_eq() {
            return;
        }
        self.cpu[i] = cpu;
        self.gpu[i] = gpu;
        while i > 1 {
            i /= 2;
            let c = self.cpu[2 * i].max(self.cpu[2 * i + 1]);
            let g = self.gpu[2 * i].max(self.gpu[2 * i + 1]);
            if self.cpu[i].total_cmp(&c).is_eq() && self.gpu[i].total_cmp(&g).is_eq() {
                return;
            }
            self.cpu[i] = c;
            self.gpu[i] = g;
        }
    }

    /// Inserts an empty leaf at `at`, shifting leaves `at..len` one to the right
    /// (growing if there is no room), then recomputes every maximum. `O(n)`.
    pub(super) fn insert_leaf(&mut self, at: usize, len: usize) {
        if len + 1 > self.size {
            let mut grown = Self::new(len + 1);
            grown.cpu[grown.size..grown.size + len].copy_from_slice(&self.cpu[self.size..self.size + len]);
            grown.gpu[grown.size..grown.size + len].copy_from_slice(&self.gpu[self.size..self.size + len]);
            *self = grown;
        }
        let (from, to) = (self.size + at, self.size + len);
        self.cpu.copy_within(from..to, from + 1);
        self.gpu.copy_within(from..to, from + 1);
        self.cpu[from] = f64::NEG_INFINITY;
        self.gpu[from] = f64::NEG_INFINITY;
        self.rebuild();
    }

    /// Recomputes every maximum above the leaves. `O(n)`.
    pub(super) fn rebuild(&mut self) {
        for i in (1..self.size).rev() {
            self.cpu[i] = self.cpu[2 * i].max(self.cpu[2 * i + 1]);
            self.gpu[i] = self.gpu[2 * i].max(self.gpu[2 * i + 1]);
        }
    }

    /// The first leaf in `lo..hi` whose largest free CPU is at least `cpu` and whose
    /// largest free GPU is at least `gpu` (false for NaN).
    pub(super) fn first(&self, lo: usize, hi: usize, cpu: f64, gpu: f64) -> Option<usize> {
        self.search(1, 0, self.size, lo, hi.min(self.size), (cpu, gpu), false)
    }

    /// The last such leaf in `lo..hi`.
    pub(super) fn last(&self, lo: usize, hi: usize, cpu: f64, gpu: f64) -> Option<usize> {
        self.search(1, 0, self.size, lo, hi.min(self.size), (cpu, gpu), true)
    }

    /// Descends from `node` (covering `nl..nr`) into the children whose maxima admit
    /// `need`, rightmost first if `rightmost`.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        node: usize,
        nl: usize,
        nr: usize,
        lo: usize,
        hi: usize,
        need: (f64, f64),
        rightmost: bool,
    ) -> Option<usize> {
        if nr <= lo || hi <= nl || !(self.cpu[node] >= need.0 && self.gpu[node] >= need.1) {
            return None;
        }
        if node >= self.size {
            return Some(nl);
        }
        let mid = (nl + nr) / 2;
        if rightmost {
            self.search(2 * node + 1, mid, nr, lo, hi, need, true)
                .or_else(|| self.search(2 * node, nl, mid, lo, hi, need, true))
        } else {
            self.search(2 * node, nl, mid, lo, hi, need, false)
                .or_else(|| self.search(2 * node + 1, mid, nr, lo, hi, need, false))
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
