use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .col(ColumnDef::new(Agents::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(Agents::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Agents::Region).string_len(64).not_null())
                    .col(ColumnDef::new(Agents::Addr).string_len(128).not_null())
                    .col(ColumnDef::new(Agents::FirstContact).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Agents::LostAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Agents::MemSlots).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Agents::CpuSlots).double().not_null().default(0.0))
                    .col(ColumnDef::new(Agents::GpuSlots).double().not_null().default(0.0))
                    .col(ColumnDef::new(Agents::UsedMemSlots).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Agents::UsedCpuSlots).double().not_null().default(0.0))
                    .col(ColumnDef::new(Agents::UsedGpuSlots).double().not_null().default(0.0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("ix_agents_status").table(Agents::Table).col(Agents::Status).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Agents::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
pub(crate) enum Agents {
    Table,
    Id,
    Status,
    Region,
    Addr,
    FirstContact,
    LostAt,
    MemSlots,
    CpuSlots,
    GpuSlots,
    UsedMemSlots,
    UsedCpuSlots,
    UsedGpuSlots,
}
