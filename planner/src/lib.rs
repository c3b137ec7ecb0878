//! The scheduling decisions of the manager, as pure functions over in-memory state: no
//! database, no clock, no I/O. The manager's scheduler (`src/scheduler/` of the manager)
//! loads the agents and the pending queue, asks [`plan`] what to place where, and carries
//! the placements out in fenced transactions.
//!
//! - [`Index`]: the agents' capacity and used slots, ordered so that choosing an agent
//!   for a session is logarithmic in the number of agents in the common case.
//! - [`plan`]: one scheduling pass over the queue under a [`Policy`] (`fifo` or `drf`)
//!   and a [`Placement`] (`dispersed` or `concentrated`), with backfill that never
//!   delays the head of the queue.
//! - [`explain`]: why a session of some size would wait, agent by agent, and
//!   [`reservation_for`]: which agent a blocked head of the queue holds.
//!
//! Fitting is `used + request <= capacity` in every resource, with an epsilon of
//! [`EPSILON`] on CPU and GPU (fractions) and exactly on memory (MiB).

#![deny(missing_docs)]

mod explain;
mod index;
mod plan;
mod slots;
#[cfg(test)]
mod testing;

pub use explain::{explain, reservation_for};
pub use index::Index;
pub use plan::plan;
pub use slots::EPSILON;

use std::fmt;
use std::str::FromStr;

/// Resource slots: CPU cores, memory (MiB) and GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Slots {
    /// CPU cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub mem: i64,
    /// GPUs (fractions allowed).
    pub gpu: f64,
}

/// The order in which pending sessions are considered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Strict arrival order (the default).
    #[default]
    Fifo,
    /// Dominant-resource fairness across access keys: the key with the smallest
    /// dominant share goes first; arrival order within a key and between equal shares.
    Drf,
}

/// Where a session goes among the agents it fits on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// The agent with the most free slots (sessions spread out; the default).
    #[default]
    Dispersed,
    /// The agent with the least free slots that still fits (bin packing).
    Concentrated,
}

/// A name that is not a policy or placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName(pub String);

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown name {:?}", self.0)
    }
}

impl std::error::Error for UnknownName {}

impl FromStr for Policy {
    type Err = UnknownName;

    /// `fifo` or `drf` (exactly, lower-case).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "fifo" => Ok(Self::Fifo),
            "drf" => Ok(Self::Drf),
            _ => Err(UnknownName(name.to_owned())),
        }
    }
}

impl FromStr for Placement {
    type Err = UnknownName;

    /// `dispersed` or `concentrated` (exactly, lower-case).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "dispersed" => Ok(Self::Dispersed),
            "concentrated" => Ok(Self::Concentrated),
            _ => Err(UnknownName(name.to_owned())),
        }
    }
}

/// One agent as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSlots {
    /// The agent's id.
    pub id: String,
    /// What it has.
    pub capacity: Slots,
    /// What its live sessions hold.
    pub used: Slots,
}

/// One pending session.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// The caller's handle on the session (the manager uses the kernel's row index).
    pub id: u64,
    /// The owning access key.
    pub access_key: String,
    /// What it needs.
    pub slots: Slots,
    /// Arrival order: smaller arrived first (ties: by `id`).
    pub seq: i64,
}

/// What one pass decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Sessions to place now: (`Pending::id`, index of the agent in the [`Index`]), in
    /// the order they were decided.
    pub placements: Vec<(u64, usize)>,
    /// The head of the queue that could not be placed, and the agent held for it: no
    /// later session was placed there in this pass.
    pub reservation: Option<(u64, usize)>,
    /// The sessions left waiting, in the order the policy considers them (the head
    /// first): their positions in the queue.
    pub waiting: Vec<u64>,
}

/// Why a session would not go to one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Shortfall {
    /// The agent's index in the [`Index`].
    pub agent: usize,
    /// Each resource that is short, with how much more free is needed (`"cpu"`,
    /// `"mem"` in MiB, `"gpu"`); empty when the session fits there now.
    pub short: Vec<(&'static str, f64)>,
    /// The agent could never hold it: its capacity is smaller than the request.
    pub too_small: bool,
}
