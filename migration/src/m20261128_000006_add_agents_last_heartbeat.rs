use sea_orm_migration::prelude::*;

use crate::m20261128_000002_create_agents::Agents;

/// Liveness is judged from the database, so that every manager process agrees.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(ColumnDef::new(LastHeartbeat::LastHeartbeat).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Agents::Table).drop_column(LastHeartbeat::LastHeartbeat).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum LastHeartbeat {
    LastHeartbeat,
}
