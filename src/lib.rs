//! The Backend.AI manager: an actor-based control plane on actix. The API
//! gateway authenticates and rate-limits signed requests; actors keep the state
//! of access keys (and of agents and sessions) and persist it with SeaORM.

pub mod actors;
pub mod agent_client;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
mod context;
pub mod db;
pub mod error;
pub mod events;
pub mod fixtures;
pub mod graphql;
pub mod images;
pub mod ledger;
pub mod middleware;
pub mod overbook;
pub mod placement;
pub mod routes;
pub mod scheduler;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod stores;
pub mod streams;
pub mod telemetry;
pub mod vfolders;

pub use context::Core;
