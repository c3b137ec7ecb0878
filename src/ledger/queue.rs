//! The queue's side of the ledger: a create enqueues its session (PENDING, its key's
//! quota charged, no agent), the scheduler places it (PREPARING on an agent, the
//! agent's slots taken) in a transaction fenced by its token, and a session that
//! leaves the queue unplaced ends CANCELLED, its quota given back.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, scheduler_fence};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use super::{live_session, lock_keypairs, record_event, Ending};
use crate::error::{ApiError, Error, Problem};
use crate::images::ResolvedImage;

/// How many sessions may wait.
#[derive(Clone, Copy, Debug)]
pub struct QueueBounds {
    /// For one access key.
    pub per_key: u64,
    /// In the whole cluster.
    pub total: u64,
}

/// What to enqueue for a new session.
pub struct SessionRequest<'a> {
    /// The owning key.
    pub access_key: &'a str,
    /// The client's session token.
    pub token: &'a str,
    /// The image and its slots.
    pub image: &'a ResolvedImage,
    /// The queue's bounds.
    pub bounds: QueueBounds,
}

/// Charges the key's quota and inserts the session as PENDING, in one transaction; or
/// returns the live session of that key and token (`created` false). Over the quota:
/// 412 quota-exceeded; over a queue bound: 503, and nothing is enqueued.
pub async fn enqueue(db: &DatabaseConnection, request: &SessionRequest<'_>) -> Result<(kernels::Model, bool), Error> {
    crate::db::retrying("enqueue", || enqueue_once(db, request)).await
}

async fn enqueue_once(db: &DatabaseConnection, request: &SessionRequest<'_>) -> Result<(kernels::Model, bool), Error> {
    let txn = db.begin().await?;
    let unique_violation =
        |error: &sea_orm::DbErr| matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)));
    match enqueue_in(&txn, request).await {
        Ok(Some(kernel)) => match txn.commit().await {
            Ok(()) => Ok((kernel, true)),
            // A racing create with the same token committed first.
            Err(error) if unique_violation(&error) => existing(db, request).await,
            Err(error) => Err(error.into()),
        },
        Ok(None) => {
            txn.rollback().await?;
            existing(db, request).await
        }
        Err(Error::Db(error)) if unique_violation(&error) => {
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

fn pending() -> sea_orm::Select<kernels::Entity> {
    kernels::Entity::find().filter(kernels::Column::Status.eq(KernelStatus::Pending))
}

/// `None` when a live session of that key and token exists.
async fn enqueue_in(txn: &DatabaseTransaction, request: &SessionRequest<'_>) -> Result<Option<kernels::Model>, Error> {
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
    let bounds = request.bounds;
    let waiting_of_key = pending().filter(kernels::Column::AccessKey.eq(request.access_key)).count(txn).await?;
    if waiting_of_key >= bounds.per_key {
        return Err(ApiError::new(Problem::ServiceUnavailable)
            .with_detail(format!("this key has {waiting_of_key} sessions waiting for room (most: {})", bounds.per_key))
            .into());
    }
    let waiting = pending().count(txn).await?;
    if waiting >= bounds.total {
        return Err(ApiError::new(Problem::ServiceUnavailable)
            .with_detail(format!("{waiting} sessions are waiting for room (most: {})", bounds.total))
            .into());
    }
    let image = request.image;
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
        agent: Set(None),
        agent_addr: Set(None),
        container_id: Set(None),
        status: Set(KernelStatus::Pending),
        status_info: Set(None),
        created_at: Set(Utc::now().fixed_offset()),
        terminated_at: Set(None),
        scheduled_at: Set(None),
        started_at: Set(None),
        last_activity: Set(None),
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
    record_event(txn, &kernel, KernelStatus::Pending, None).await?;
    Ok(Some(kernel))
}

/// The sessions waiting in the queue, oldest first.
pub async fn pending_sessions(db: &DatabaseConnection, limit: u64) -> Result<Vec<kernels::Model>, Error> {
    Ok(pending()
        .order_by_asc(kernels::Column::CreatedAt)
        .order_by_asc(kernels::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The slots each access key's placed live sessions hold: (cpu, mem, gpu).
pub async fn key_usage(db: &DatabaseConnection) -> Result<HashMap<String, (f64, i64, f64)>, Error> {
    let rows: Vec<(String, f64, i64, f64)> = kernels::Entity::find()
        .select_only()
        .column(kernels::Column::AccessKey)
        .column(kernels::Column::CpuSlot)
        .column(kernels::Column::MemSlot)
        .column(kernels::Column::GpuSlot)
        .filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED))
        .filter(kernels::Column::Agent.is_not_null())
        .into_tuple()
        .all(db)
        .await?;
    let mut usage: HashMap<String, (f64, i64, f64)> = HashMap::new();
    for (access_key, cpu, mem, gpu) in rows {
        let entry = usage.entry(access_key).or_default();
        entry.0 += cpu;
        entry.1 += mem;
        entry.2 += gpu;
    }
    Ok(usage)
}

/// Makes `token` the scheduler's fencing token, unless a later one was taken: whether
/// the caller may place with it.
pub async fn take_fence(db: &DatabaseConnection, token: i64) -> Result<bool, Error> {
    let taken = scheduler_fence::Entity::update_many()
        .col_expr(scheduler_fence::Column::Token, Expr::value(token))
        .filter(scheduler_fence::Column::Id.eq(1))
        .filter(scheduler_fence::Column::Token.lte(token))
        .exec(db)
        .await?
        .rows_affected;
    Ok(taken == 1)
}

/// What became of a placement.
#[derive(Debug)]
pub enum Placed {
    /// Placed: the session is PREPARING on the agent.
    Placed(Box<kernels::Model>),
    /// The agent no longer has room (or is no longer alive): nothing changed.
    NoRoom,
    /// The session is no longer pending (cancelled, destroyed): nothing changed.
    Gone,
    /// A later scheduler holds the fence: nothing changed, and the caller must stop.
    Fenced,
}

/// Places the PENDING session `kernel` on `agent`, in one transaction that checks the
/// fencing `token`, takes the agent's slots if it still has room and makes the session
/// PREPARING there, with its event.
pub async fn place(
    db: &DatabaseConnection,
    kernel: &kernels::Model,
    agent: &agents::Model,
    token: i64,
) -> Result<Placed, Error> {
    crate::db::retrying("place", || async {
        let txn = db.begin().await?;
        let placed = place_in(&txn, kernel, agent, token).await;
        match placed {
            Ok(Placed::Placed(kernel)) => {
                txn.commit().await?;
                Ok(Placed::Placed(kernel))
            }
            Ok(other) => {
                txn.rollback().await?;
                Ok(other)
            }
            Err(error) => {
                txn.rollback().await.ok();
                Err(error)
            }
        }
    })
    .await
}

async fn place_in(
    txn: &DatabaseTransaction,
    kernel: &kernels::Model,
    agent: &agents::Model,
    token: i64,
) -> Result<Placed, Error> {
    // The fence first (the lock order): a no-op write that holds only for the token.
    let fenced = scheduler_fence::Entity::update_many()
        .col_expr(scheduler_fence::Column::Token, Expr::col(scheduler_fence::Column::Token).into())
        .filter(scheduler_fence::Column::Id.eq(1))
        .filter(scheduler_fence::Column::Token.eq(token))
        .exec(txn)
        .await?
        .rows_affected;
    if fenced != 1 {
        return Ok(Placed::Fenced);
    }
    const EPSILON: f64 = 1e-9;
    let (cpu, mem, gpu) = (kernel.cpu_slot, kernel.mem_slot, kernel.gpu_slot);
    let taken = agents::Entity::update_many()
        .col_expr(agents::Column::UsedCpuSlots, Expr::col(agents::Column::UsedCpuSlots).add(cpu))
        .col_expr(agents::Column::UsedMemSlots, Expr::col(agents::Column::UsedMemSlots).add(mem))
        .col_expr(agents::Column::UsedGpuSlots, Expr::col(agents::Column::UsedGpuSlots).add(gpu))
        .filter(agents::Column::Id.eq(agent.id.clone()))
        .filter(agents::Column::Status.eq(AgentStatus::Alive))
        .filter(
            Expr::expr(Expr::col(agents::Column::UsedCpuSlots).add(cpu))
                .lte(Expr::col(agents::Column::CpuSlots).add(EPSILON)),
        )
        .filter(Expr::expr(Expr::col(agents::Column::UsedMemSlots).add(mem)).lte(Expr::col(agents::Column::MemSlots)))
        .filter(
            Expr::expr(Expr::col(agents::Column::UsedGpuSlots).add(gpu))
                .lte(Expr::col(agents::Column::GpuSlots).add(EPSILON)),
        )
        .exec(txn)
        .await?
        .rows_affected;
    if taken != 1 {
        return Ok(Placed::NoRoom);
    }
    let now = Utc::now().fixed_offset();
    let moved = kernels::Entity::update_many()
        .col_expr(kernels::Column::Status, Expr::value(KernelStatus::Preparing))
        .col_expr(kernels::Column::Agent, Expr::value(agent.id.clone()))
        .col_expr(kernels::Column::AgentAddr, Expr::value(agent.addr.clone()))
        .col_expr(kernels::Column::ScheduledAt, Expr::value(now))
        .filter(kernels::Column::Id.eq(kernel.id))
        .filter(kernels::Column::Status.eq(KernelStatus::Pending))
        .exec(txn)
        .await?
        .rows_affected;
    if moved != 1 {
        return Ok(Placed::Gone);
    }
    let placed = kernels::Model {
        status: KernelStatus::Preparing,
        agent: Some(agent.id.clone()),
        agent_addr: Some(agent.addr.clone()),
        scheduled_at: Some(now),
        ..kernel.clone()
    };
    record_event(txn, &placed, KernelStatus::Preparing, None).await?;
    Ok(Placed::Placed(Box::new(placed)))
}

/// Takes the sessions among `sessions` that are still PENDING out of the queue: they
/// end CANCELLED with `reason`, their quota given back, in one transaction. Returns the
/// ones it cancelled (a session placed meanwhile is left alone).
pub async fn cancel_pending(
    db: &DatabaseConnection,
    sessions: &[kernels::Model],
    reason: &str,
) -> Result<Vec<Uuid>, Error> {
    let waiting: Vec<kernels::Model> =
        sessions.iter().filter(|k| k.status == KernelStatus::Pending && k.agent.is_none()).cloned().collect();
    let ending = Ending::new(KernelStatus::Cancelled, reason);
    Ok(super::end_sessions(db, &waiting, &ending, None).await?.unwrap_or_default())
}
