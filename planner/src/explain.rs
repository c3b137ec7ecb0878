//! Why a session waits ([`explain`]) and which agent a blocked head holds
//! ([`reservation_for`]).

use crate::slots::EPSILON;
use crate::{AgentSlots, Index, Placement, Shortfall, Slots};

/// Why a session of `slots` would not be placed now, one entry per agent (all agents,
/// in index order): the resources short on each (how much more free is needed), and
/// whether the agent could never hold it. An entry with nothing short is an agent it
/// fits on now.
pub fn explain(index: &Index, slots: Slots) -> Vec<Shortfall> {
    index
        .agents()
        .iter()
        .enumerate()
        .map(|(agent, a)| Shortfall { agent, short: shortages(a, slots), too_small: !slots.fits_in(a.capacity) })
        .collect()
}

/// The agent that a blocked head of the queue would reserve: among the agents whose
/// capacity can hold `slots`, the one closest to fitting now, i.e. with the smallest
/// largest normalized shortfall (the maximum over resources of short / capacity);
/// ties go to the lowest index. `None` if no agent could ever hold it.
///
/// If the session fits somewhere now (it is not blocked), that is the agent
/// [`Index::choose`] picks under `placement`.
pub fn reservation_for(index: &Index, slots: Slots, placement: Placement) -> Option<usize> {
    if let Some(agent) = index.choose(slots, placement, None) {
        return Some(agent);
    }
    let mut best: Option<(f64, usize)> = None;
    for (agent, a) in index.agents().iter().enumerate() {
        if !slots.fits_in(a.capacity) {
            continue;
        }
        let distance = normalized_shortfall(a, slots);
        if best.is_none_or(|(d, _)| distance.total_cmp(&d).is_lt()) {
            best = Some((distance, agent));
        }
    }
    best.map(|(_, agent)| agent)
}

/// How much more of each resource agent `a` needs free for `slots` to fit, for the
/// resources that are short (CPU and GPU beyond the epsilon, memory exactly).
fn shortages(a: &AgentSlots, slots: Slots) -> Vec<(&'static str, f64)> {
    let mut short = Vec::new();
    let cpu = a.used.cpu + slots.cpu;
    if !within(cpu, a.capacity.cpu) {
        short.push(("cpu", cpu - a.capacity.cpu));
    }
    let mem = i128::from(a.used.mem) + i128::from(slots.mem) - i128::from(a.capacity.mem);
    if mem > 0 {
        short.push(("mem", mem as f64));
    }
    let gpu = a.used.gpu + slots.gpu;
    if !within(gpu, a.capacity.gpu) {
        short.push(("gpu", gpu - a.capacity.gpu));
    }
    short
}

/// Whether `x` is at most `capacity`, within the epsilon (false for NaN).
fn within(x: f64, capacity: f64) -> bool {
    x <= capacity + EPSILON
}

/// The largest of short / capacity over the resources short on `a` (0 if it fits).
fn normalized_shortfall(a: &AgentSlots, slots: Slots) -> f64 {
    shortages(a, slots)
        .into_iter()
        .map(|(resource, amount)| {
            let capacity = match resource {
                "cpu" => a.capacity.cpu,
                "mem" => a.capacity.mem as f64,
                _ => a.capacity.gpu,
            };
            amount / capacity
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests;
