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
        // Sessions already running were started when they were placed.
        manager
            .exec_stmt(
                Query::update()
                    .table(Kernels::Table)
                    .value(KernelTimes::StartedAt, Expr::col(Kernels::CreatedAt))
                    .value(KernelTimes::LastActivity, Expr::col(Kernels::CreatedAt))
                    .and_where(Expr::col(Kernels::Agent).is_not_null())
                    .and_where(Expr::col(Kernels::Status).is_not_in(["TERMINATED", "ERROR"]))
                    .to_owned(),
            )
            .await?;
        // A CANCELLED session is ended: its token may be used again.
        live_session_index(manager, "'TERMINATED', 'ERROR', 'CANCELLED'").await?;
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
        live_session_index(manager, "'TERMINATED', 'ERROR'").await?;
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

/// Makes the index that allows one live session per (access key, token) count the
/// statuses not in `ended` as live. On SQLite one batch, so that both steps run on the
/// same pooled connection (another one could still hold the schema from before).
async fn live_session_index(manager: &SchemaManager<'_>, ended: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let drop = "DROP INDEX IF EXISTS uq_kernels_live_session";
    let create = format!(
        "CREATE UNIQUE INDEX uq_kernels_live_session ON kernels (access_key, sess_id) WHERE status NOT IN ({ended})"
    );
    match manager.get_database_backend() {
        sea_orm_migration::sea_orm::DatabaseBackend::Sqlite => {
            db.execute_unprepared(&format!("{drop}; {create};")).await?;
        }
        _ => {
            db.execute_unprepared(drop).await?;
            db.execute_unprepared(&create).await?;
        }
    }
    Ok(())
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
