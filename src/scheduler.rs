//! Scheduling: resolving images, reserving an agent's slots and a key's quota
//! atomically, and releasing them exactly once.

use std::collections::HashMap;

use chrono::Utc;
use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, session_events};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QuerySelect, Select, Set, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use crate::agent_client::ImageSpec;
use crate::error::{ApiError, Error, Problem};
use crate::stores::ConfigStore;

/// An image resolved from the config store, with the slots a session needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    /// What the agent needs to start it.
    pub spec: ImageSpec,
    /// CPU cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub mem: i64,
    /// GPUs.
    pub gpu: f64,
}

impl ResolvedImage {
    /// `name:tag`, as stored in `kernels.lang`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.spec.name, self.spec.tag)
    }
}

fn image_not_found(lang: &str) -> Error {
    ApiError::new(Problem::ImageNotFound).with_detail(lang.chars().take(128).collect::<String>()).into()
}

/// Resolves `lang` (an alias, `name` or `name:tag`; the default tag is `latest`).
pub async fn resolve_image(store: &dyn ConfigStore, lang: &str) -> Result<ResolvedImage, Error> {
    let valid = |s: &str| s.len() <= 128 && crate::images::valid_name(s);
    if !valid(lang) {
        return Err(image_not_found(lang));
    }
    let target = store.get(&format!("images/_aliases/{lang}")).await?.unwrap_or_else(|| lang.to_owned());
    let (name, tag) = target.split_once(':').unwrap_or((&target, "latest"));
    if !valid(name) || !valid(tag) {
        return Err(image_not_found(lang));
    }
    let fields: HashMap<String, String> = store
        .get_prefix(&format!("images/{name}/"))
        .await?
        .into_iter()
        .map(|(key, value)| (key[format!("images/{name}/").len()..].to_owned(), value))
        .collect();
    if !fields.contains_key(&format!("tags/{tag}")) {
        return Err(image_not_found(lang));
    }
    let number = |key: &str| -> Result<f64, Error> {
        fields
            .get(key)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| Error::ConfigStore(format!("image {name}: missing or bad {key}")))
    };
    let text =
        |key: &str| fields.get(key).cloned().ok_or_else(|| Error::ConfigStore(format!("image {name}: missing {key}")));
    Ok(ResolvedImage {
        spec: ImageSpec {
            name: name.to_owned(),
            tag: tag.to_owned(),
            runner: text("runner")?,
            command: text("command")?,
        },
        cpu: number("cpu")?,
        mem: number("mem")?.ceil() as i64,
        gpu: number("gpu").unwrap_or(0.0),
    })
}

/// The overbook factors (cpu, mem, gpu) from `config/overbook/*`, with the seed's defaults.
pub async fn overbook_factors(store: &dyn ConfigStore) -> Result<(f64, f64, f64), Error> {
    let values: HashMap<String, f64> = store
        .get_prefix("config/overbook/")
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k.rsplit('/').next()?.to_owned(), v.trim().parse::<f64>().ok()?)))
        .filter(|(_, v)| v.is_finite() && *v > 0.0)
        .collect();
    let get = |key: &str, default: f64| values.get(key).copied().unwrap_or(default);
    Ok((get("cpu", 6.0), get("mem", 2.0), get("gpu", 1.0)))
}

/// Locks the selected rows until the transaction ends, on PostgreSQL (SQLite
/// serializes writers already, and has no row locks).
fn locked<E: EntityTrait>(select: Select<E>, backend: DbBackend) -> Select<E> {
    if backend == DbBackend::Postgres {
        select.lock_exclusive()
    } else {
        select
    }
}

/// The live session of `access_key` named `token`, if any.
pub async fn live_session(
    db: &impl ConnectionTrait,
    access_key: &str,
    token: &str,
) -> Result<Option<kernels::Model>, Error> {
    Ok(kernels::Entity::find()
        .filter(kernels::Column::AccessKey.eq(access_key))
        .filter(kernels::Column::SessId.eq(token))
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]))
        .one(db)
        .await?)
}

/// What to reserve for a new session.
pub struct SessionRequest<'a> {
    /// The owning key.
    pub access_key: &'a str,
    /// The client's session token.
    pub token: &'a str,
    /// The image and its slots.
    pub image: &'a ResolvedImage,
}

/// Reserves quota and slots and inserts the session as PREPARING, all in one
/// transaction; or returns the live session of that key and token
/// (`created` false). No room: 503 instance-not-available, nothing reserved.
pub async fn reserve(db: &DatabaseConnection, request: &SessionRequest<'_>) -> Result<(kernels::Model, bool), Error> {
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

/// `None` when a live session of that key and token exists.
async fn reserve_in(txn: &DatabaseTransaction, request: &SessionRequest<'_>) -> Result<Option<kernels::Model>, Error> {
    let backend = txn.get_database_backend();
    // A no-op write first: it locks the key's row on PostgreSQL and takes the
    // write lock on SQLite, so concurrent creates of one key are ordered (the
    // second one then sees the first one's session) and no lock needs upgrading.
    keypairs::Entity::update_many()
        .col_expr(keypairs::Column::ConcurrencyUsed, Expr::col(keypairs::Column::ConcurrencyUsed).into())
        .filter(keypairs::Column::AccessKey.eq(request.access_key))
        .exec(txn)
        .await?;
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
    let agents =
        locked(agents::Entity::find().filter(agents::Column::Status.eq(AgentStatus::Alive)), backend).all(txn).await?;
    let agent = agents
        .into_iter()
        .filter(|agent| agent.has_room(image.cpu, image.mem, image.gpu))
        .max_by(|a, b| a.free_slots().partial_cmp(&b.free_slots()).unwrap_or(std::cmp::Ordering::Equal))
        .ok_or_else(|| Error::Api(ApiError::new(Problem::InstanceNotAvailable)))?;
    agents::Entity::update_many()
        .col_expr(agents::Column::UsedCpuSlots, Expr::col(agents::Column::UsedCpuSlots).add(image.cpu))
        .col_expr(agents::Column::UsedMemSlots, Expr::col(agents::Column::UsedMemSlots).add(image.mem))
        .col_expr(agents::Column::UsedGpuSlots, Expr::col(agents::Column::UsedGpuSlots).add(image.gpu))
        .filter(agents::Column::Id.eq(agent.id.clone()))
        .exec(txn)
        .await?;
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
        created_at: Set(Utc::now().fixed_offset()),
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

/// Final usage of a kernel, as the agent reports it.
pub type KernelStats = HashMap<String, i64>;

/// Reads an agent's stats object, keeping the numeric fields.
pub fn parse_stats(stats: &serde_json::Value) -> KernelStats {
    stats
        .as_object()
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as i64))).collect())
        .unwrap_or_default()
}

/// Ends a live session: sets its final status, reason and stats, and gives back
/// its slots and quota, in one transaction. Returns false (and changes nothing)
/// when it had already ended, so nothing is released twice.
pub async fn release(
    db: &DatabaseConnection,
    kernel_id: Uuid,
    status: KernelStatus,
    status_info: &str,
    stats: &KernelStats,
    unwritten_queries: i64,
) -> Result<bool, Error> {
    let txn = db.begin().await?;
    // The conditional update comes first: it takes the write lock, and only the
    // caller that ends the session releases its slots and quota.
    let mut update = kernels::Entity::update_many()
        .col_expr(kernels::Column::Status, Expr::value(status))
        .col_expr(kernels::Column::StatusInfo, Expr::value(status_info.chars().take(256).collect::<String>()))
        .col_expr(kernels::Column::TerminatedAt, Expr::value(Utc::now().fixed_offset()))
        .col_expr(kernels::Column::NumQueries, Expr::col(kernels::Column::NumQueries).add(unwritten_queries));
    for (key, column) in [
        ("cpu_used", kernels::Column::CpuUsed),
        ("mem_max_bytes", kernels::Column::MemMaxBytes),
        ("mem_cur_bytes", kernels::Column::MemCurBytes),
        ("net_rx_bytes", kernels::Column::NetRxBytes),
        ("net_tx_bytes", kernels::Column::NetTxBytes),
        ("io_read_bytes", kernels::Column::IoReadBytes),
        ("io_write_bytes", kernels::Column::IoWriteBytes),
        ("io_max_scratch_size", kernels::Column::IoMaxScratchSize),
        ("io_cur_scratch_size", kernels::Column::IoCurScratchSize),
    ] {
        if let Some(value) = stats.get(key) {
            update = update.col_expr(column, Expr::value(*value));
        }
    }
    let ended = update
        .filter(kernels::Column::Id.eq(kernel_id))
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]))
        .exec(&txn)
        .await?
        .rows_affected;
    let kernel = match ended {
        1 => kernels::Entity::find_by_id(kernel_id).one(&txn).await?,
        _ => None,
    };
    let Some(kernel) = kernel else {
        txn.rollback().await?;
        return Ok(false);
    };
    record_event(&txn, &kernel, status, Some(status_info)).await?;
    if let Some(agent) = &kernel.agent {
        agents::Entity::update_many()
            .col_expr(agents::Column::UsedCpuSlots, Expr::col(agents::Column::UsedCpuSlots).sub(kernel.cpu_slot))
            .col_expr(agents::Column::UsedMemSlots, Expr::col(agents::Column::UsedMemSlots).sub(kernel.mem_slot))
            .col_expr(agents::Column::UsedGpuSlots, Expr::col(agents::Column::UsedGpuSlots).sub(kernel.gpu_slot))
            .filter(agents::Column::Id.eq(agent.clone()))
            .exec(&txn)
            .await?;
    }
    keypairs::Entity::update_many()
        .col_expr(keypairs::Column::ConcurrencyUsed, Expr::col(keypairs::Column::ConcurrencyUsed).sub(1))
        .filter(keypairs::Column::AccessKey.eq(kernel.access_key.clone()))
        .filter(keypairs::Column::ConcurrencyUsed.gt(0))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(true)
}

/// Sets a live session's status (e.g. PREPARING -> RUNNING) and records the
/// event, unless the session ended meanwhile.
pub async fn set_status(
    db: &DatabaseConnection,
    kernel: &kernels::Model,
    status: KernelStatus,
    container_id: Option<String>,
) -> Result<bool, Error> {
    let txn = db.begin().await?;
    let mut update = kernels::Entity::update_many()
        .col_expr(kernels::Column::Status, Expr::value(status))
        .filter(kernels::Column::Id.eq(kernel.id))
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]));
    if let Some(container_id) = container_id {
        update = update.col_expr(kernels::Column::ContainerId, Expr::value(container_id));
    }
    let changed = update.exec(&txn).await?.rows_affected == 1;
    if changed {
        record_event(&txn, kernel, status, None).await?;
    }
    txn.commit().await?;
    Ok(changed)
}

/// Ends every live session on `agent_id` (e.g. ERROR `agent-lost`); returns them.
pub async fn end_agent_sessions(
    db: &DatabaseConnection,
    agent_id: &str,
    status: KernelStatus,
    status_info: &str,
    keep: &[Uuid],
) -> Result<Vec<Uuid>, Error> {
    let live = kernels::Entity::find()
        .filter(kernels::Column::Agent.eq(agent_id))
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]))
        .all(db)
        .await?;
    let mut ended = Vec::new();
    for kernel in live.into_iter().filter(|k| !keep.contains(&k.id)) {
        if release(db, kernel.id, status, status_info, &KernelStats::new(), 0).await? {
            ended.push(kernel.id);
        }
    }
    Ok(ended)
}

/// Marks ALIVE agents without a heartbeat for `timeout_secs` as LOST and ends
/// their sessions. Each transition is a conditional update, so several checkers
/// would still declare an agent lost once. Returns the lost agents and their
/// ended sessions.
pub async fn declare_lost_agents(
    db: &DatabaseConnection,
    timeout_secs: f64,
) -> Result<Vec<(String, Vec<Uuid>)>, Error> {
    let now = Utc::now();
    let deadline = (now - chrono::Duration::milliseconds((timeout_secs * 1000.0) as i64)).fixed_offset();
    let silent = agents::Entity::find()
        .filter(agents::Column::Status.eq(AgentStatus::Alive))
        .filter(agents::Column::LastHeartbeat.lt(deadline))
        .all(db)
        .await?;
    let mut lost = Vec::new();
    for agent in silent {
        let updated = agents::Entity::update_many()
            .col_expr(agents::Column::Status, Expr::value(AgentStatus::Lost))
            .col_expr(agents::Column::LostAt, Expr::value(now.fixed_offset()))
            .filter(agents::Column::Id.eq(agent.id.clone()))
            .filter(agents::Column::Status.eq(AgentStatus::Alive))
            .filter(agents::Column::LastHeartbeat.lt(deadline))
            .exec(db)
            .await?
            .rows_affected;
        if updated == 1 {
            tracing::warn!(agent = %agent.id, "agent lost: no heartbeat for {timeout_secs} s");
            let ended = end_agent_sessions(db, &agent.id, KernelStatus::Error, "agent-lost", &[]).await?;
            lost.push((agent.id, ended));
        }
    }
    Ok(lost)
}
