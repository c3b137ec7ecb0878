//! Dominant-resource fairness: the order in which [`super::plan`] considers sessions
//! under [`crate::Policy::Drf`].

use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::Pass;
use crate::{Pending, Slots};

/// Considers the sessions of `queue` (`order`: their indices by (seq, id)) key by key,
/// always taking the next session of the key with the smallest dominant share.
/// `O(P + K)` to group by key, then `O(log K)` per session.
pub(super) fn run(pass: &mut Pass<'_>, queue: &[Pending], order: &[usize], usage: &HashMap<String, Slots>) {
    let total = pass.index.agents().iter().fold(Slots::ZERO, |sum, a| sum + a.capacity);
    let keys = Keys::group(queue, order);
    let mut used: Vec<Slots> = keys.names.iter().map(|name| usage.get(*name).copied().unwrap_or_default()).collect();
    let mut heap: BinaryHeap<Turn> = (0..keys.names.len())
        .map(|key| {
            let first = &keys.sessions[keys.start[key]];
            Turn { share: share(used[key], total), seq: first.seq, id: first.id, key, next: keys.start[key] }
        })
        .collect();
    while let Some(mut turn) = heap.peek_mut() {
        let key = turn.key;
        let session = &keys.sessions[turn.next];
        if pass.consider(session.id, session.slots) {
            used[key] += session.slots;
            turn.share = share(used[key], total);
        }
        turn.next += 1;
        if turn.next == keys.start[key + 1] {
            PeekMut::pop(turn);
        } else {
            // Updated in place: the heap re-sifts it when `turn` is dropped.
            let following = &keys.sessions[turn.next];
            turn.seq = following.seq;
            turn.id = following.id;
        }
    }
}

/// The dominant share of `used`: its largest fraction of `total` over the resources
/// the cluster has.
fn share(used: Slots, total: Slots) -> f64 {
    let mut share = 0.0_f64;
    if total.cpu > 0.0 {
        share = share.max(used.cpu / total.cpu);
    }
    if total.mem > 0 {
        share = share.max(used.mem as f64 / total.mem as f64);
    }
    if total.gpu > 0.0 {
        share = share.max(used.gpu / total.gpu);
    }
    share
}

/// The sessions grouped by access key, each group in (seq, id) order.
struct Keys<'q> {
    /// The access keys, by first appearance in arrival order.
    names: Vec<&'q str>,
    /// The sessions, key by key (copied, so that each key's are contiguous).
    sessions: Vec<Session>,
    /// Where each key's sessions start in `sessions` (and one past the end).
    start: Vec<usize>,
}

impl<'q> Keys<'q> {
    fn group(queue: &'q [Pending], order: &[usize]) -> Self {
        let mut ids: HashMap<&str, usize, BuildHasherDefault<Fnv>> = HashMap::default();
        let mut names = Vec::new();
        let mut count: Vec<usize> = Vec::new();
        let key_of: Vec<usize> = order
            .iter()
            .map(|&i| {
                let name = queue[i].access_key.as_str();
                let key = *ids.entry(name).or_insert_with(|| {
                    names.push(name);
                    count.push(0);
                    names.len() - 1
                });
                count[key] += 1;
                key
            })
            .collect();
        let mut start = Vec::with_capacity(names.len() + 1);
        let mut at = 0;
        for c in &count {
            start.push(at);
            at += c;
        }
        start.push(at);
        let mut fill = start.clone();
        let blank = Session { id: 0, seq: 0, slots: Slots::ZERO };
        let mut sessions = vec![blank; order.len()];
        for (&i, &key) in order.iter().zip(&key_of) {
            let p = &queue[i];
            sessions[fill[key]] = Session { id: p.id, seq: p.seq, slots: p.slots };
            fill[key] += 1;
        }
        Self { names, sessions, start }
    }
}

/// What the pass needs of a pending session.
#[derive(Clone, Copy)]
struct Session {
    id: u64,
    seq: i64,
    slots: Slots,
}

/// A key's turn in the heap: ordered so that the heap's top is the smallest
/// (share, seq, id) of the key's next session.
struct Turn {
    share: f64,
    seq: i64,
    id: u64,
    key: usize,
    /// The key's next session, as a position in [`Keys::sessions`].
    next: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .share
            .total_cmp(&self.share)
            .then(other.seq.cmp(&self.seq))
            .then(other.id.cmp(&self.id))
            .then(other.key.cmp(&self.key))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Turn {}

/// FNV-1a: a fast hash for the access keys of one pass (they come from the database,
/// not from an adversary choosing collisions against a per-pass table).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
