//! What every handler can reach: the application state, built once in `startup`.

use std::sync::Arc;

use actix::Addr;
use sea_orm::DatabaseConnection;

use crate::actors::liveness::LivenessChecker;
use crate::actors::registry::{Directory, Registry};
use crate::bus::{Applier, Bus};
use crate::config::Settings;
use crate::db;
use crate::overbook::Overbook;
use crate::stores::{ConfigMirror, Stores};

/// What every handler can reach.
pub struct AppState {
    /// The settings the process started with.
    pub settings: Arc<Settings>,
    /// The relational database.
    pub db: DatabaseConnection,
    /// The config, stat and rate-limit stores.
    pub stores: Stores,
    /// The actor registry.
    pub registry: Addr<Registry>,
    /// The registry's children, readable without a message.
    pub directory: Arc<Directory>,
    /// This process's id in the config store (`nodes/manager`).
    pub manager_id: String,
    /// Where agents send their events.
    pub events_addr: std::net::SocketAddr,
    /// Session lifecycle events for the event streams.
    pub event_hub: Arc<crate::streams::hub::EventHub>,
    /// Where agents' events come in.
    pub bus: Arc<Bus>,
    /// Applies agents' events.
    pub applier: Applier,
    /// The cached overbook factors.
    pub overbook: Arc<Overbook>,
    /// The image catalogue, cached.
    pub images: Arc<ConfigMirror>,
    /// This manager's liveness checker.
    pub liveness: Addr<LivenessChecker>,
    /// This manager's scheduler.
    pub scheduler: Addr<crate::scheduler::Scheduler>,
    /// What the actors share (the scheduler's handle among it).
    pub core: Arc<crate::Core>,
    /// When this process last refused an authentication.
    pub auth_failures: Arc<crate::middleware::FailureWatch>,
    /// KiB of upload bodies all requests together may hold at once
    /// (`manager.upload_memory`).
    pub upload_budget: tokio::sync::Semaphore,
    /// Whether the database answers.
    pub db_reachability: Arc<db::Reachability>,
}
