//! The actor-based control plane: a supervised [`registry::Registry`] per
//! manager process owns one actor per access key (and, later, per agent and per
//! session). HTTP handlers reach them through the plain async functions of each
//! actor's module, never through `Addr::send` directly.

pub mod agent;
pub mod keypair;
pub mod liveness;
pub mod messages;
pub mod registry;
pub mod session;
