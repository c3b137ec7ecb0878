//! Schema migrations of the Backend.AI manager, for PostgreSQL and SQLite.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_keypairs;
mod m20261128_000002_create_agents;
mod m20261128_000003_create_kernels;
mod m20261128_000004_create_vfolders;
mod m20261128_000005_create_vfolder_attachment;
mod m20261128_000006_add_agents_last_heartbeat;
mod m20261128_000007_create_session_events;
mod m20261201_000008_add_agents_heartbeat_interval;
mod m20261201_000009_api_v4;
mod m20261202_000010_scheduler;

/// Every migration of the schema, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_keypairs::Migration),
            Box::new(m20261128_000002_create_agents::Migration),
            Box::new(m20261128_000003_create_kernels::Migration),
            Box::new(m20261128_000004_create_vfolders::Migration),
            Box::new(m20261128_000005_create_vfolder_attachment::Migration),
            Box::new(m20261128_000006_add_agents_last_heartbeat::Migration),
            Box::new(m20261128_000007_create_session_events::Migration),
            Box::new(m20261201_000008_add_agents_heartbeat_interval::Migration),
            Box::new(m20261201_000009_api_v4::Migration),
            Box::new(m20261202_000010_scheduler::Migration),
        ]
    }
}
