//! The actor-based control plane: a supervised [`registry::Registry`] per manager
//! process owns one actor per access key, per agent and per live session, spread over
//! a few arbiters. HTTP handlers reach them through plain async functions
//! (`crate::sessions`, [`keypair::lookup`], ...), never through `Addr::send` directly.
//!
//! # Who owns what
//! **The database is the truth** about keys, agents and sessions; any process may read
//! it. **Actors serialize the changes** to one key, agent or session within a process
//! and cache its reads; between manager processes, changes to one row are ordered by
//! the database itself (conditional updates and the lock order of [`crate::ledger`]).
//! Every change has one named place:
//! - a key: its actor (usage counts, quota reservation), or [`keypair::update_row`] and
//!   [`keypair::delete_row`] (admin changes), which drop this process's cache of the key
//!   at once; other managers' caches expire within [`keypair::CACHE_TTL`];
//! - a session: its actor (start, execute, restart, destroy, the agent's report that it
//!   ended), through the ledger functions it calls. Sessions ended wholesale (their agent
//!   was lost or terminated, or a dead manager stranded them) end in one transaction of
//!   [`crate::ledger`] (`end_sessions`), and the registry is told right after, which
//!   retires their actors at once;
//! - an agent: its actor (heartbeats, its termination), and the liveness checker
//!   ([`liveness`]), which declares agents LOST with `ledger::declare_lost_agents`.
//!
//! Reads of a live session go through its actor (`sessions::row`: its published row
//! while fresh); reads of history (event streams, listings, ended sessions) and admin
//! queries read the database.

pub mod agent;
pub mod keypair;
pub mod liveness;
pub mod messages;
pub mod registry;
pub mod session;
