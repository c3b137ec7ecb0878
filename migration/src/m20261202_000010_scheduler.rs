use sea_orm_migration::prelude::*;

use crate::m20261128_000001_create_keypairs::Keypairs;
use crate::m20261128_000003_create_kernels::Kernels;

/// The scheduler (issue 14): sessions wait in a queue (status PENDING, no agent yet)
/// and are placed later, so a kernel records when it was placed, when it started
/// running and when it was last used; a key's idle timeout and session lifetime; and
/// the scheduler's fencing token, which every placement checks in its transaction.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Kernels::Table)
                    .add_column(ColumnDef::new(KernelTimes::ScheduledAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite adds one at a time.
        for column in [KernelTimes::StartedAt, KernelTimes::LastActivity] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Kernels::Table)
                        .add_column(ColumnDef::new(column).timestamp_with_time_zone().null())
                        .to_owned(),
                )
                .await?;
        }
        for column in [Limits::IdleTimeout, Limits::MaxSessionLifetime] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Keypairs::Table)
                        .add_column(ColumnDef::new(column).integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        // Sessions placed before the queue existed were placed when they were created.
        manager
            .exec_stmt(
                Query::update()
                    .table(Kernels::Table)
                    .value(KernelTimes::ScheduledAt, Expr::col(Kernels::CreatedAt))
                    .and_where(Expr::col(Kernels::Agent).is_not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_kernels_status_created_at")
                    .table(Kernels::Table)
                    .col(Kernels::Status)
                    .col(Kernels::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SchedulerFence::Table)
                    .col(ColumnDef::new(SchedulerFence::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(SchedulerFence::Token).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(SchedulerFence::Table)
                    .columns([SchedulerFence::Id, SchedulerFence::Token])
                    .values_panic([1.into(), 0i64.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SchedulerFence::Table).to_owned()).await?;
        manager.drop_index(Index::drop().name("ix_kernels_status_created_at").table(Kernels::Table).to_owned()).await?;
        for column in [Limits::IdleTimeout, Limits::MaxSessionLifetime] {
            manager.alter_table(Table::alter().table(Keypairs::Table).drop_column(column).to_owned()).await?;
        }
        for column in [KernelTimes::ScheduledAt, KernelTimes::StartedAt, KernelTimes::LastActivity] {
            manager.alter_table(Table::alter().table(Kernels::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum KernelTimes {
    ScheduledAt,
    StartedAt,
    LastActivity,
}

#[derive(DeriveIden)]
enum Limits {
    IdleTimeout,
    MaxSessionLifetime,
}

#[derive(DeriveIden)]
enum SchedulerFence {
    Table,
    Id,
    Token,
}
