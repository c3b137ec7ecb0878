use sea_orm_migration::prelude::*;

use crate::m20261128_000002_create_agents::Agents;

/// Agents report their heartbeat interval: the scheduler skips an agent silent for two of them.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(ColumnDef::new(HeartbeatInterval::HeartbeatInterval).double().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(Agents::Table).drop_column(HeartbeatInterval::HeartbeatInterval).to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum HeartbeatInterval {
    HeartbeatInterval,
}
