use sea_orm_migration::prelude::*;

/// Lifecycle events of sessions, kept so that event streams can resume.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SessionEvents::Table)
                    .col(ColumnDef::new(SessionEvents::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(SessionEvents::AccessKey).string_len(20).not_null())
                    .col(ColumnDef::new(SessionEvents::KernelId).uuid().not_null())
                    .col(ColumnDef::new(SessionEvents::SessId).string_len(80).not_null())
                    .col(ColumnDef::new(SessionEvents::Name).string_len(32).not_null())
                    .col(ColumnDef::new(SessionEvents::Reason).string_len(256).null())
                    .col(ColumnDef::new(SessionEvents::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_session_events_access_key_id")
                    .table(SessionEvents::Table)
                    .col(SessionEvents::AccessKey)
                    .col(SessionEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SessionEvents::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum SessionEvents {
    Table,
    Id,
    AccessKey,
    KernelId,
    SessId,
    Name,
    Reason,
    CreatedAt,
}
