//! The session ledger: the database side of sessions. Enqueuing a session against its
//! key's quota, placing it on an agent's slots under the scheduler's fencing token
//! (`queue`; where it goes is decided by [`crate::scheduler`]), releasing both exactly
//! once (`ending`), status changes and their lifecycle events.
//!
//! # Lock order
//! Every transaction that writes more than one of keypairs, agents and kernels takes
//! its row locks in one order: the **scheduler fence** (placements only), then
//! **keypairs** (several: by access key, ascending), then **agents** (several: by id,
//! ascending), then **kernels**. A row is locked by the
//! transaction's first write to it (a no-op write where only the lock is wanted); rows
//! are otherwise read without locks and changed by conditional updates, which re-check
//! what was read. SQLite has one writer at a time and no row locks. A transaction that
//! loses a race all the same (a deadlock or serialization failure) is run again by
//! [`crate::db::retrying`].

use std::collections::BTreeSet;

use chrono::Utc;
use entity::agents;
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, session_events};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter,
    Set, TransactionTrait,
};

use crate::error::Error;

mod audit;
mod ending;
mod queue;

pub use audit::{audit, Drift};
pub use ending::{
    agent_sessions, declare_lost_agents, end_sessions, end_sessions_of_gone_agents, release, settle_stranded,
    stranded_sessions, AgentChange, Ending,
};
use protocol::KernelStats;
pub use queue::{
    cancel_pending, enqueue, key_usage, pending_sessions, place, take_fence, Placed, QueueBounds, SessionRequest,
};

/// The live session of `access_key` named `token`, if any.
pub async fn live_session(
    db: &impl ConnectionTrait,
    access_key: &str,
    token: &str,
) -> Result<Option<kernels::Model>, Error> {
    Ok(live_named(token).filter(kernels::Column::AccessKey.eq(access_key)).one(db).await?)
}

/// A live session named `token`, whoever owns it (the unsigned PTY of development
/// setups, `manager.allow_unsigned_pty`).
pub async fn live_session_named(db: &DatabaseConnection, token: &str) -> Result<Option<kernels::Model>, Error> {
    Ok(live_named(token).one(db).await?)
}

fn live_named(token: &str) -> sea_orm::Select<kernels::Entity> {
    kernels::Entity::find()
        .filter(kernels::Column::SessId.eq(token))
        .filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED))
}

/// Locks the rows of `access_keys` (a no-op write each, in ascending order).
async fn lock_keypairs(txn: &DatabaseTransaction, access_keys: &BTreeSet<String>) -> Result<(), Error> {
    for access_key in access_keys {
        keypairs::Entity::update_many()
            .col_expr(keypairs::Column::ConcurrencyUsed, Expr::col(keypairs::Column::ConcurrencyUsed).into())
            .filter(keypairs::Column::AccessKey.eq(access_key.as_str()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Locks the rows of `agent_ids` (a no-op write each, in ascending order).
async fn lock_agents(txn: &DatabaseTransaction, agent_ids: &BTreeSet<String>) -> Result<(), Error> {
    for agent_id in agent_ids {
        agents::Entity::update_many()
            .col_expr(agents::Column::UsedMemSlots, Expr::col(agents::Column::UsedMemSlots).into())
            .filter(agents::Column::Id.eq(agent_id.as_str()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Records a lifecycle event of `kernel` (its new status, lower-case), in the
/// caller's transaction: the event exists exactly when the change does.
pub async fn record_event(
    conn: &impl ConnectionTrait,
    kernel: &kernels::Model,
    status: KernelStatus,
    reason: Option<&str>,
) -> Result<(), Error> {
    record(conn, kernel, format!("{status:?}").to_lowercase(), reason).await
}

/// Records a `warning` event of `kernel` (a reclaim is near), with `reason`.
pub async fn record_warning(conn: &impl ConnectionTrait, kernel: &kernels::Model, reason: &str) -> Result<(), Error> {
    record(conn, kernel, "warning".to_owned(), Some(reason)).await
}

async fn record(
    conn: &impl ConnectionTrait,
    kernel: &kernels::Model,
    name: String,
    reason: Option<&str>,
) -> Result<(), Error> {
    session_events::ActiveModel {
        access_key: Set(kernel.access_key.clone()),
        kernel_id: Set(kernel.id),
        sess_id: Set(kernel.sess_id.clone()),
        name: Set(name),
        reason: Set(reason.map(|r| r.chars().take(256).collect())),
        created_at: Set(Utc::now().fixed_offset()),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// Reads the usage an agent reports for a kernel (its destroy answer).
pub fn parse_stats(stats: &serde_json::Value) -> Option<KernelStats> {
    serde_json::from_value(stats.clone()).ok()
}

/// Sets a live session's status (e.g. PREPARING -> RUNNING) and records the
/// event, unless the session ended meanwhile.
pub async fn set_status(
    db: &DatabaseConnection,
    kernel: &kernels::Model,
    status: KernelStatus,
    container_id: Option<String>,
) -> Result<bool, Error> {
    crate::db::retrying("set status", || async {
        let txn = db.begin().await?;
        let mut update = kernels::Entity::update_many()
            .col_expr(kernels::Column::Status, Expr::value(status))
            .filter(kernels::Column::Id.eq(kernel.id))
            .filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED));
        if let Some(container_id) = &container_id {
            update = update.col_expr(kernels::Column::ContainerId, Expr::value(container_id.clone()));
        }
        if status == KernelStatus::Running {
            // Its lifetime counts from the first time it runs; its idle time from now.
            let now = Expr::value(chrono::Utc::now().fixed_offset());
            let first = sea_orm::sea_query::Func::coalesce([Expr::col(kernels::Column::StartedAt).into(), now.clone()]);
            update =
                update.col_expr(kernels::Column::StartedAt, first.into()).col_expr(kernels::Column::LastActivity, now);
        }
        let changed = update.exec(&txn).await?.rows_affected == 1;
        if changed {
            record_event(&txn, kernel, status, None).await?;
        }
        txn.commit().await?;
        Ok(changed)
    })
    .await
}
