use sea_orm_migration::prelude::*;

use crate::m20261128_000001_create_keypairs::Keypairs;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Vfolders::Table)
                    .col(ColumnDef::new(Vfolders::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Vfolders::Host).string_len(128).not_null())
                    .col(ColumnDef::new(Vfolders::Name).string_len(64).not_null())
                    .col(ColumnDef::new(Vfolders::MaxFiles).integer().not_null().default(1000))
                    .col(ColumnDef::new(Vfolders::MaxSize).big_integer().not_null().default(1_073_741_824i64))
                    .col(ColumnDef::new(Vfolders::NumFiles).integer().not_null().default(0))
                    .col(ColumnDef::new(Vfolders::CurSize).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Vfolders::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Vfolders::LastUsed).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Vfolders::BelongsTo).string_len(20).not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_vfolders_belongs_to")
                            .from(Vfolders::Table, Vfolders::BelongsTo)
                            .to(Keypairs::Table, Keypairs::AccessKey)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_vfolders_belongs_to_name")
                    .table(Vfolders::Table)
                    .col(Vfolders::BelongsTo)
                    .col(Vfolders::Name)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Vfolders::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
pub(crate) enum Vfolders {
    Table,
    Id,
    Host,
    Name,
    MaxFiles,
    MaxSize,
    NumFiles,
    CurSize,
    CreatedAt,
    LastUsed,
    BelongsTo,
}
