use sea_orm_migration::prelude::*;

use crate::m20261128_000001_create_keypairs::Keypairs;
use crate::m20261128_000002_create_agents::Agents;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let counter = |column: Kernels| ColumnDef::new(column).big_integer().not_null().default(0).to_owned();
        manager
            .create_table(
                Table::create()
                    .table(Kernels::Table)
                    .col(ColumnDef::new(Kernels::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Kernels::SessId).string_len(80).not_null())
                    .col(ColumnDef::new(Kernels::Role).string_len(16).not_null().default("master"))
                    .col(ColumnDef::new(Kernels::Lang).string_len(128).not_null())
                    .col(ColumnDef::new(Kernels::AccessKey).string_len(20).not_null())
                    .col(ColumnDef::new(Kernels::Agent).string_len(64).null())
                    .col(ColumnDef::new(Kernels::AgentAddr).string_len(128).null())
                    .col(ColumnDef::new(Kernels::ContainerId).string_len(128).null())
                    .col(ColumnDef::new(Kernels::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Kernels::StatusInfo).string_len(256).null())
                    .col(ColumnDef::new(Kernels::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Kernels::TerminatedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Kernels::MemSlot).big_integer().not_null())
                    .col(ColumnDef::new(Kernels::CpuSlot).double().not_null())
                    .col(ColumnDef::new(Kernels::GpuSlot).double().not_null())
                    .col(counter(Kernels::NumQueries))
                    .col(counter(Kernels::CpuUsed))
                    .col(counter(Kernels::MemMaxBytes))
                    .col(counter(Kernels::MemCurBytes))
                    .col(counter(Kernels::NetRxBytes))
                    .col(counter(Kernels::NetTxBytes))
                    .col(counter(Kernels::IoReadBytes))
                    .col(counter(Kernels::IoWriteBytes))
                    .col(counter(Kernels::IoMaxScratchSize))
                    .col(counter(Kernels::IoCurScratchSize))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kernels_access_key")
                            .from(Kernels::Table, Kernels::AccessKey)
                            .to(Keypairs::Table, Keypairs::AccessKey)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_kernels_agent")
                            .from(Kernels::Table, Kernels::Agent)
                            .to(Agents::Table, Agents::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("ix_kernels_access_key_sess_id", vec![Kernels::AccessKey, Kernels::SessId]),
            ("ix_kernels_agent", vec![Kernels::Agent]),
            ("ix_kernels_status", vec![Kernels::Status]),
        ] {
            let mut index = Index::create().name(name).table(Kernels::Table).to_owned();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        // One live session per (access key, token): racing creates cannot both insert.
        // Partial indexes are spelled the same on PostgreSQL and SQLite.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX uq_kernels_live_session ON kernels (access_key, sess_id) \
                 WHERE status NOT IN ('TERMINATED', 'ERROR')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Kernels::Table).to_owned()).await
    }
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Kernels {
    Table,
    Id,
    SessId,
    Role,
    Lang,
    AccessKey,
    Agent,
    AgentAddr,
    ContainerId,
    Status,
    StatusInfo,
    CreatedAt,
    TerminatedAt,
    MemSlot,
    CpuSlot,
    GpuSlot,
    NumQueries,
    CpuUsed,
    MemMaxBytes,
    MemCurBytes,
    NetRxBytes,
    NetTxBytes,
    IoReadBytes,
    IoWriteBytes,
    IoMaxScratchSize,
    IoCurScratchSize,
}
