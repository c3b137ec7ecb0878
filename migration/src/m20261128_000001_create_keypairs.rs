use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Keypairs::Table)
                    .col(ColumnDef::new(Keypairs::AccessKey).string_len(20).not_null().primary_key())
                    .col(ColumnDef::new(Keypairs::UserId).integer().not_null())
                    .col(ColumnDef::new(Keypairs::SecretKey).string_len(40).not_null())
                    .col(ColumnDef::new(Keypairs::IsActive).boolean().not_null().default(true))
                    .col(ColumnDef::new(Keypairs::IsAdmin).boolean().not_null().default(false))
                    .col(ColumnDef::new(Keypairs::ResourcePolicy).string_len(64).null())
                    .col(ColumnDef::new(Keypairs::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Keypairs::LastUsed).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Keypairs::ConcurrencyLimit).integer().not_null().default(1))
                    .col(ColumnDef::new(Keypairs::ConcurrencyUsed).integer().not_null().default(0))
                    .col(ColumnDef::new(Keypairs::RateLimit).integer().not_null().default(1000))
                    .col(ColumnDef::new(Keypairs::NumQueries).big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ix_keypairs_user_id").table(Keypairs::Table).col(Keypairs::UserId).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Keypairs::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
pub(crate) enum Keypairs {
    Table,
    AccessKey,
    UserId,
    SecretKey,
    IsActive,
    IsAdmin,
    ResourcePolicy,
    CreatedAt,
    LastUsed,
    ConcurrencyLimit,
    ConcurrencyUsed,
    RateLimit,
    NumQueries,
}
