//! The session ledger: the database side of sessions. Reserving an agent's slots and a
//! key's quota atomically (where the agent is chosen: [`crate::placement`]), releasing
//! them exactly once (`ending`), status changes and their lifecycle events.
//!
//! # Lock order
//! Every transaction that writes more than one of keypairs, agents and kernels takes
//! its row locks in one order: **keypairs** (several: by access key, ascending), then
//! **agents** (several: by id, ascending), then **kernels**. A row is locked by the
//! transaction's first write to it (a no-op write where only the lock is wanted); rows
//! are otherwise read without locks and changed by conditional updates, which re-check
//! what was read. SQLite has one writer at a time and no row locks. A transaction that
//! loses a race all the same (a deadlock or serialization failure) is run again by
//! [`crate::db::retrying`].

use std::collections::BTreeSet;

use chrono::Utc;
use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, session_events};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter,
    Set, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use crate::error::{ApiError, Error, Problem};
use crate::images::ResolvedImage;
use crate::placement;

mod ending;

pub use ending::{
    agent_sessions, declare_lost_agents, end_sessions, end_sessions_of_gone_agents, end_stranded_sessions, release,
    AgentChange, Ending,
};
use protocol::KernelStats;

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
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]))
}

/// What to reserve for a new session.
pub struct SessionRequest<'a> {
    /// The owning key.
    pub access_key: &'a str,
    /// The client's session token.
    pub token: &'a str,
    /// The image and its slots.
    pub image: &'a ResolvedImage,
    /// Agents not to place it on.
    pub avoid: &'a [String],
}

/// Reserves quota and slots and inserts the session as PREPARING, all in one
/// transaction; or returns the live session of that key and token
/// (`created` false). No room: 503 instance-not-available, nothing reserved.
pub async fn reserve(db: &DatabaseConnection, request: &SessionRequest<'_>) -> Result<(kernels::Model, bool), Error> {
    crate::db::retrying("reserve", || reserve_once(db, request)).await
}

async fn reserve_once(db: &DatabaseConnection, request: &SessionRequest<'_>) -> Result<(kernels::Model, bool), Error> {
    let txn = db.begin().await?;
    match reserve_in(&txn, request).await {
        Ok(Some(kernel)) => {
            match txn.commit().await {
                Ok(()) => Ok((kernel, true)),
                // A racing create with the same token committed first.
                Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    existing(db, request).await
                }
                Err(error) => Err(error.into()),
            }
        }
        Ok(None) => {
            txn.rollback().await?;
            existing(db, request).await
        }
        Err(Error::Db(error)) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await.ok();
            existing(db, request).await
        }
        Err(error) => {
            txn.rollback().await.ok();
            Err(error)
        }
    }
}

async fn existing(db: &DatabaseConnection, request: &SessionRequest<'_>) -> Result<(kernels::Model, bool), Error> {
    live_session(db, request.access_key, request.token)
        .await?
        .map(|kernel| (kernel, false))
        .ok_or_else(|| Error::Api(ApiError::new(Problem::InternalServerError)))
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

/// `None` when a live session of that key and token exists.
async fn reserve_in(txn: &DatabaseTransaction, request: &SessionRequest<'_>) -> Result<Option<kernels::Model>, Error> {
    // The key's row first: concurrent creates of one key are ordered (the second one
    // then sees the first one's session).
    lock_keypairs(txn, &BTreeSet::from([request.access_key.to_owned()])).await?;
    let keypair = keypairs::Entity::find_by_id(request.access_key.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| Error::Api(ApiError::new(Problem::AuthFailed)))?;
    if live_session(txn, request.access_key, request.token).await?.is_some() {
        return Ok(None);
    }
    if keypair.concurrency_used >= keypair.concurrency_limit {
        return Err(ApiError::new(Problem::QuotaExceeded)
            .with_detail(format!("{} of {} sessions in use", keypair.concurrency_used, keypair.concurrency_limit))
            .into());
    }
    let image = request.image;
    let now = Utc::now();
    let alive = agents::Entity::find().filter(agents::Column::Status.eq(AgentStatus::Alive)).all(txn).await?;
    let candidates = placement::candidates(alive, image, request.avoid, now);
    // One agent row is locked: the first whose conditional update finds it still alive
    // and with room (another create may have taken the room since the read).
    let mut chosen = None;
    for agent in candidates {
        const EPSILON: f64 = 1e-9;
        let taken = agents::Entity::update_many()
            .col_expr(agents::Column::UsedCpuSlots, Expr::col(agents::Column::UsedCpuSlots).add(image.cpu))
            .col_expr(agents::Column::UsedMemSlots, Expr::col(agents::Column::UsedMemSlots).add(image.mem))
            .col_expr(agents::Column::UsedGpuSlots, Expr::col(agents::Column::UsedGpuSlots).add(image.gpu))
            .filter(agents::Column::Id.eq(agent.id.clone()))
            .filter(agents::Column::Status.eq(AgentStatus::Alive))
            .filter(
                Expr::expr(Expr::col(agents::Column::UsedCpuSlots).add(image.cpu))
                    .lte(Expr::col(agents::Column::CpuSlots).add(EPSILON)),
            )
            .filter(
                Expr::expr(Expr::col(agents::Column::UsedMemSlots).add(image.mem))
                    .lte(Expr::col(agents::Column::MemSlots)),
            )
            .filter(
                Expr::expr(Expr::col(agents::Column::UsedGpuSlots).add(image.gpu))
                    .lte(Expr::col(agents::Column::GpuSlots).add(EPSILON)),
            )
            .exec(txn)
            .await?
            .rows_affected;
        if taken == 1 {
            chosen = Some(agent);
            break;
        }
    }
    let agent = chosen.ok_or_else(|| Error::Api(ApiError::new(Problem::InstanceNotAvailable)))?;
    keypairs::Entity::update_many()
        .col_expr(keypairs::Column::ConcurrencyUsed, Expr::col(keypairs::Column::ConcurrencyUsed).add(1))
        .filter(keypairs::Column::AccessKey.eq(request.access_key))
        .exec(txn)
        .await?;
    let kernel = kernels::ActiveModel {
        id: Set(Uuid::new_v4()),
        sess_id: Set(request.token.to_owned()),
        role: Set("master".to_owned()),
        lang: Set(image.reference()),
        access_key: Set(request.access_key.to_owned()),
        agent: Set(Some(agent.id.clone())),
        agent_addr: Set(Some(agent.addr.clone())),
        container_id: Set(None),
        status: Set(KernelStatus::Preparing),
        status_info: Set(None),
        created_at: Set(now.fixed_offset()),
        terminated_at: Set(None),
        mem_slot: Set(image.mem),
        cpu_slot: Set(image.cpu),
        gpu_slot: Set(image.gpu),
        num_queries: Set(0),
        cpu_used: Set(0),
        mem_max_bytes: Set(0),
        mem_cur_bytes: Set(0),
        net_rx_bytes: Set(0),
        net_tx_bytes: Set(0),
        io_read_bytes: Set(0),
        io_write_bytes: Set(0),
        io_max_scratch_size: Set(0),
        io_cur_scratch_size: Set(0),
    }
    .insert(txn)
    .await?;
    record_event(txn, &kernel, KernelStatus::Preparing, None).await?;
    Ok(Some(kernel))
}

/// Records a lifecycle event of `kernel` (its new status, lower-case), in the
/// caller's transaction: the event exists exactly when the change does.
pub async fn record_event(
    conn: &impl ConnectionTrait,
    kernel: &kernels::Model,
    status: KernelStatus,
    reason: Option<&str>,
) -> Result<(), Error> {
    session_events::ActiveModel {
        access_key: Set(kernel.access_key.clone()),
        kernel_id: Set(kernel.id),
        sess_id: Set(kernel.sess_id.clone()),
        name: Set(format!("{status:?}").to_lowercase()),
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
            .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]));
        if let Some(container_id) = &container_id {
            update = update.col_expr(kernels::Column::ContainerId, Expr::value(container_id.clone()));
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
