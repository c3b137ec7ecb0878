//! Helpers shared by the unit tests.

use crate::{AgentSlots, Pending, Slots};

/// Slots of `cpu` cores, `mem` MiB and `gpu` GPUs.
pub(crate) fn s(cpu: f64, mem: i64, gpu: f64) -> Slots {
    Slots::new(cpu, mem, gpu)
}

/// An agent named `id`.
pub(crate) fn agent(id: &str, capacity: Slots, used: Slots) -> AgentSlots {
    AgentSlots { id: id.to_owned(), capacity, used }
}

/// A pending session `id` of `key`, arrived at `seq`.
pub(crate) fn pending(id: u64, key: &str, slots: Slots, seq: i64) -> Pending {
    Pending { id, access_key: key.to_owned(), slots, seq }
}
