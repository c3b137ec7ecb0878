//! Dominant-resource fairness: the order in which [`super::plan`] considers sessions
//! under [`crate::Policy::Drf`].

use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::{arrival_order, Pass, Session};
use crate::slots::ord_key;
use crate::{Pending, Slots};

/// Considers the sessions of `queue` key by key, always taking the next session (by
/// (seq, id)) of the key with the smallest dominant share. `O(P + K)` to number and
/// group the keys (and the sort of the queue if it is not in order), then `O(log K)`
/// per session.
pub(super) fn run(pass: &mut Pass<'_>, queue: &[Pending], usage: &HashMap<String, Slots>) {
    let total = pass.index.agents().iter().fold(Slots::ZERO, |sum, a| sum + a.capacity);
    let mut names = Names::default();
    let mut sessions = arrival_order(queue, |i| names.number(&queue[i].access_key));
    let names = names.in_arrival_order(&mut sessions);
    let keys = Keys::group(&sessions, names.len());
    let mut used: Vec<Slots> = names.iter().map(|name| usage.get(*name).copied().unwrap_or_default()).collect();
    let mut heap: BinaryHeap<Turn> = (0..names.len())
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

/// The dominant share of `used` (its largest fraction of `total` over the resources
/// the cluster has), as an [`ord_key`].
fn share(used: Slots, total: Slots) -> i64 {
    ord_key(dominant_share(used, total))
}

/// The dominant share of `used`.
fn dominant_share(used: Slots, total: Slots) -> f64 {
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

/// The access keys of one pass, numbered by first appearance in the queue.
#[derive(Default)]
struct Names<'q> {
    ids: HashMap<&'q str, u32, BuildHasherDefault<WordHash>>,
    list: Vec<&'q str>,
    /// The last one numbered (sessions of one key often come together).
    last: Option<(&'q str, u32)>,
}

impl<'q> Names<'q> {
    fn number(&mut self, name: &'q str) -> u32 {
        if let Some((last, id)) = self.last {
            if last == name {
                return id;
            }
        }
        let next = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        let id = *self.ids.entry(name).or_insert(next);
        if id == next {
            self.list.push(name);
        }
        self.last = Some((name, id));
        id
    }

    /// The names numbered again by first appearance in `sessions` (in arrival order:
    /// ties in the heap go to the key that arrived first), renumbering the sessions.
    fn in_arrival_order(self, sessions: &mut [Session]) -> Vec<&'q str> {
        let mut renumber = vec![u32::MAX; self.list.len()];
        let mut names = Vec::with_capacity(self.list.len());
        for s in sessions {
            let Some(new) = renumber.get_mut(s.key as usize) else {
                continue;
            };
            if *new == u32::MAX {
                *new = u32::try_from(names.len()).unwrap_or(u32::MAX);
                names.push(self.list[s.key as usize]);
            }
            s.key = *new;
        }
        names
    }
}

/// The sessions grouped by access key, each group in arrival order.
struct Keys {
    /// The sessions, key by key.
    sessions: Vec<Session>,
    /// Where each key's sessions start in `sessions` (and one past the end).
    start: Vec<usize>,
}

impl Keys {
    /// Groups `sessions` (in arrival order) by their `key` (below `keys`): a stable
    /// counting sort.
    fn group(sessions: &[Session], keys: usize) -> Self {
        let mut start = vec![0; keys + 1];
        for s in sessions {
            start[s.key as usize + 1] += 1;
        }
        for k in 0..keys {
            start[k + 1] += start[k];
        }
        let mut fill = start.clone();
        let blank = Session { seq: 0, id: 0, slots: Slots::ZERO, key: 0 };
        let mut grouped = vec![blank; sessions.len()];
        for s in sessions {
            let at = &mut fill[s.key as usize];
            grouped[*at] = *s;
            *at += 1;
        }
        Self { sessions: grouped, start }
    }
}

/// A key's turn in the heap: ordered so that the heap's top is the smallest
/// (share, seq, id) of the key's next session.
struct Turn {
    /// The key's dominant share, as an [`ord_key`].
    share: i64,
    seq: i64,
    id: u64,
    key: usize,
    /// The key's next session, as a position in [`Keys::sessions`].
    next: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.share, other.seq, other.id, other.key).cmp(&(self.share, self.seq, self.id, self.key))
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

/// A fast hash for the access keys of one pass, a word at a time (they come from the
/// database, not from an adversary choosing collisions against a per-pass table).
#[derive(Default)]
struct WordHash(u64);

impl WordHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHash {
    fn finish(&self) -> u64 {
        // Spreads the high bits (where the multiplications put them) to the low ones.
        let h = self.0;
        (h ^ (h >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte) | 0x100);
    }
}
