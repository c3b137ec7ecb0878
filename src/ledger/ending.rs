//! Ending sessions: releasing their slots and quota exactly once, with the agent's own
//! change (LOST, TERMINATED) in the same transaction, in the lock order of [`super`].

use std::collections::BTreeSet;

use chrono::Utc;
use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, session_events};
use protocol::KernelStats;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use super::{lock_agents, lock_keypairs, record_event};
use crate::error::Error;

/// How sessions end.
#[derive(Clone, Debug)]
pub struct Ending<'a> {
    /// Their final status (TERMINATED or ERROR).
    pub status: KernelStatus,
    /// Why (`status_info`).
    pub info: &'a str,
    /// Final usage, when known (one session).
    pub stats: Option<KernelStats>,
    /// Execute calls counted but not written yet (one session).
    pub unwritten_queries: i64,
    /// Only sessions placed before this time end (the time of an agent's report).
    pub placed_before: Option<chrono::DateTime<chrono::FixedOffset>>,
}

impl<'a> Ending<'a> {
    /// Sessions end with `status` and `info`, nothing else to write.
    pub fn new(status: KernelStatus, info: &'a str) -> Self {
        Self { status, info, stats: None, unwritten_queries: 0, placed_before: None }
    }
}

/// What else changes with the sessions' end, in the same transaction.
#[derive(Clone, Copy, Debug)]
pub enum AgentChange<'a> {
    /// The agent was silent since `deadline`: it is LOST (unless it was heard since,
    /// or is no longer ALIVE: then nothing at all changes).
    Lost { agent_id: &'a str, deadline: chrono::DateTime<chrono::FixedOffset> },
    /// The agent stopped gracefully.
    Terminated { agent_id: &'a str },
}

/// Ends a live session: sets its final status, reason and stats, and gives back
/// its slots and quota, in one transaction. Returns false (and changes nothing)
/// when it had already ended, so nothing is released twice.
pub async fn release(db: &DatabaseConnection, kernel_id: Uuid, ending: &Ending<'_>) -> Result<bool, Error> {
    let Some(kernel) = kernels::Entity::find_by_id(kernel_id).one(db).await? else {
        return Ok(false);
    };
    Ok(end_sessions(db, &[kernel], ending, None).await?.is_some_and(|ended| !ended.is_empty()))
}

/// Ends the live sessions among `sessions` (rows as read before: each is ended only if
/// it is still live, and placed before `ending.placed_before`), releasing each one's
/// slots and quota exactly once, and applies `change` to their agent, all in one
/// transaction. Returns the sessions it ended; `None` when `change` did not apply
/// (the agent was heard from meanwhile): then nothing changed.
pub async fn end_sessions(
    db: &DatabaseConnection,
    sessions: &[kernels::Model],
    ending: &Ending<'_>,
    change: Option<AgentChange<'_>>,
) -> Result<Option<Vec<Uuid>>, Error> {
    let live: Vec<&kernels::Model> = sessions.iter().filter(|k| k.status.is_live()).collect();
    if live.is_empty() && change.is_none() {
        return Ok(Some(Vec::new()));
    }
    crate::db::retrying("end sessions", || async {
        let txn = db.begin().await?;
        match end_sessions_in(&txn, &live, ending, change).await {
            Ok(Some(ended)) => {
                txn.commit().await?;
                Ok(Some(ended))
            }
            Ok(None) => {
                txn.rollback().await?;
                Ok(None)
            }
            Err(error) => {
                txn.rollback().await.ok();
                Err(error)
            }
        }
    })
    .await
}

/// `None`: the agent change did not apply; roll back.
async fn end_sessions_in(
    txn: &DatabaseTransaction,
    sessions: &[&kernels::Model],
    ending: &Ending<'_>,
    change: Option<AgentChange<'_>>,
) -> Result<Option<Vec<Uuid>>, Error> {
    let now = Utc::now().fixed_offset();
    lock_keypairs(txn, &sessions.iter().map(|k| k.access_key.clone()).collect()).await?;
    let mut agent_ids: BTreeSet<String> = sessions.iter().filter_map(|k| k.agent.clone()).collect();
    match change {
        Some(AgentChange::Lost { agent_id, deadline }) => {
            agent_ids.remove(agent_id);
            lock_agents(txn, &agent_ids.iter().filter(|id| id.as_str() < agent_id).cloned().collect()).await?;
            let lost = agents::Entity::update_many()
                .col_expr(agents::Column::Status, Expr::value(AgentStatus::Lost))
                .col_expr(agents::Column::LostAt, Expr::value(now))
                .filter(agents::Column::Id.eq(agent_id))
                .filter(agents::Column::Status.eq(AgentStatus::Alive))
                .filter(agents::Column::LastHeartbeat.lt(deadline))
                .exec(txn)
                .await?
                .rows_affected;
            if lost == 0 {
                return Ok(None);
            }
            lock_agents(txn, &agent_ids.iter().filter(|id| id.as_str() > agent_id).cloned().collect()).await?;
        }
        Some(AgentChange::Terminated { agent_id }) => {
            agent_ids.insert(agent_id.to_owned());
            lock_agents(txn, &agent_ids).await?;
            agents::Entity::update_many()
                .col_expr(agents::Column::Status, Expr::value(AgentStatus::Terminated))
                .filter(agents::Column::Id.eq(agent_id))
                .exec(txn)
                .await?;
        }
        None => lock_agents(txn, &agent_ids).await?,
    }
    let mut ended = Vec::new();
    for kernel in sessions {
        if end_one(txn, kernel, ending, now).await? {
            ended.push(kernel.id);
        }
    }
    Ok(Some(ended))
}

/// Ends one session if it is still live (its key's and agent's rows are locked already).
async fn end_one(
    txn: &DatabaseTransaction,
    kernel: &kernels::Model,
    ending: &Ending<'_>,
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<bool, Error> {
    let info: String = ending.info.chars().take(256).collect();
    let mut update = kernels::Entity::update_many()
        .col_expr(kernels::Column::Status, Expr::value(ending.status))
        .col_expr(kernels::Column::StatusInfo, Expr::value(info))
        .col_expr(kernels::Column::TerminatedAt, Expr::value(now))
        .col_expr(kernels::Column::NumQueries, Expr::col(kernels::Column::NumQueries).add(ending.unwritten_queries));
    if let Some(stats) = &ending.stats {
        for (key, value) in stats.fields() {
            let column = match key {
                "cpu_used" => kernels::Column::CpuUsed,
                "mem_max_bytes" => kernels::Column::MemMaxBytes,
                "mem_cur_bytes" => kernels::Column::MemCurBytes,
                "net_rx_bytes" => kernels::Column::NetRxBytes,
                "net_tx_bytes" => kernels::Column::NetTxBytes,
                "io_read_bytes" => kernels::Column::IoReadBytes,
                "io_write_bytes" => kernels::Column::IoWriteBytes,
                "io_max_scratch_size" => kernels::Column::IoMaxScratchSize,
                _ => kernels::Column::IoCurScratchSize,
            };
            update = update.col_expr(column, Expr::value(i64::try_from(value).unwrap_or(i64::MAX)));
        }
    }
    let mut update = update
        .filter(kernels::Column::Id.eq(kernel.id))
        .filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED))
        // Still where it was read: a session read as PENDING and placed since is left
        // alone (its agent's slots would not be given back).
        .filter(match &kernel.agent {
            Some(agent) => kernels::Column::Agent.eq(agent.clone()),
            None => kernels::Column::Agent.is_null(),
        });
    if let Some(cutoff) = ending.placed_before {
        update = update.filter(kernels::Column::ScheduledAt.lt(cutoff));
    }
    if update.exec(txn).await?.rows_affected == 0 {
        return Ok(false);
    }
    record_event(txn, kernel, ending.status, Some(ending.info)).await?;
    keypairs::Entity::update_many()
        .col_expr(keypairs::Column::ConcurrencyUsed, Expr::col(keypairs::Column::ConcurrencyUsed).sub(1))
        .filter(keypairs::Column::AccessKey.eq(kernel.access_key.clone()))
        .filter(keypairs::Column::ConcurrencyUsed.gt(0))
        .exec(txn)
        .await?;
    if let Some(agent) = &kernel.agent {
        agents::Entity::update_many()
            .col_expr(agents::Column::UsedCpuSlots, Expr::col(agents::Column::UsedCpuSlots).sub(kernel.cpu_slot))
            .col_expr(agents::Column::UsedMemSlots, Expr::col(agents::Column::UsedMemSlots).sub(kernel.mem_slot))
            .col_expr(agents::Column::UsedGpuSlots, Expr::col(agents::Column::UsedGpuSlots).sub(kernel.gpu_slot))
            .filter(agents::Column::Id.eq(agent.clone()))
            .exec(txn)
            .await?;
    }
    Ok(true)
}

/// The live sessions on `agent_id`.
pub async fn agent_sessions(db: &DatabaseConnection, agent_id: &str) -> Result<Vec<kernels::Model>, Error> {
    Ok(kernels::Entity::find()
        .filter(kernels::Column::Agent.eq(agent_id))
        .filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED))
        .all(db)
        .await?)
}

/// Declares ALIVE agents silent for `timeout_secs` LOST, each together with the end
/// (ERROR `agent-lost`) of its sessions in one transaction, unless `heard` says this
/// manager heard the agent within the timeout (the database may lag behind the bus).
/// A conditional update makes each declaration happen once, whoever checks.
/// Returns the lost agents and their ended sessions.
pub async fn declare_lost_agents(
    db: &DatabaseConnection,
    timeout_secs: f64,
    heard: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<Uuid>)>, Error> {
    let deadline = (Utc::now() - chrono::Duration::milliseconds((timeout_secs * 1000.0) as i64)).fixed_offset();
    let silent = agents::Entity::find()
        .filter(agents::Column::Status.eq(AgentStatus::Alive))
        .filter(agents::Column::LastHeartbeat.lt(deadline))
        .all(db)
        .await?;
    let mut lost = Vec::new();
    for agent in silent.into_iter().filter(|agent| !heard(&agent.id)) {
        let sessions = agent_sessions(db, &agent.id).await?;
        let change = AgentChange::Lost { agent_id: &agent.id, deadline };
        let ending = Ending::new(KernelStatus::Error, "agent-lost");
        if let Some(ended) = end_sessions(db, &sessions, &ending, Some(change)).await? {
            tracing::warn!(agent = %agent.id, sessions = ended.len(), "agent lost: no heartbeat for {timeout_secs} s");
            lost.push((agent.id, ended));
        }
    }
    Ok(lost)
}

/// Ends the sessions still live on agents that are LOST or TERMINATED (left behind by
/// a pass that failed half-way, or placed while the agent was being declared).
pub async fn end_sessions_of_gone_agents(db: &DatabaseConnection) -> Result<Vec<Uuid>, Error> {
    let gone = agents::Entity::find()
        .filter(agents::Column::Status.is_in([AgentStatus::Lost, AgentStatus::Terminated]))
        .all(db)
        .await?;
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = gone.iter().map(|a| a.id.clone()).collect();
    let orphaned = kernels::Entity::find()
        .filter(kernels::Column::Agent.is_in(ids))
        .filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED))
        .all(db)
        .await?;
    let mut ended = Vec::new();
    for agent in gone {
        let sessions: Vec<kernels::Model> =
            orphaned.iter().filter(|k| k.agent.as_deref() == Some(agent.id.as_str())).cloned().collect();
        if sessions.is_empty() {
            continue;
        }
        let (status, info) = match agent.status {
            AgentStatus::Terminated => (KernelStatus::Terminated, "agent-terminated"),
            _ => (KernelStatus::Error, "agent-lost"),
        };
        let done = end_sessions(db, &sessions, &Ending::new(status, info), None).await?.unwrap_or_default();
        tracing::warn!(agent = %agent.id, sessions = done.len(), "ended sessions left on a gone agent");
        ended.extend(done);
    }
    Ok(ended)
}

/// The sessions a manager left half-way, having died during their create, restart or
/// destroy (or whose agent call hangs): a live manager settles each of those within its
/// agent call timeout, so a session still PREPARING, RESTARTING or TERMINATING
/// `deadline` seconds after it got that status is stranded.
pub async fn stranded_sessions(db: &DatabaseConnection, deadline: f64) -> Result<Vec<kernels::Model>, Error> {
    let stranded_states = [KernelStatus::Preparing, KernelStatus::Restarting, KernelStatus::Terminating];
    let candidates = kernels::Entity::find().filter(kernels::Column::Status.is_in(stranded_states)).all(db).await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // When each got its current status: its latest event of that name.
    let ids: Vec<Uuid> = candidates.iter().map(|k| k.id).collect();
    let events = session_events::Entity::find().filter(session_events::Column::KernelId.is_in(ids)).all(db).await?;
    let cutoff = Utc::now() - chrono::TimeDelta::milliseconds((deadline * 1000.0) as i64);
    let stranded = candidates.into_iter().filter(|kernel| {
        let name = format!("{:?}", kernel.status).to_lowercase();
        let since = events
            .iter()
            .filter(|e| e.kernel_id == kernel.id && e.name == name)
            .map(|e| e.created_at)
            .max()
            .unwrap_or(kernel.created_at);
        since.with_timezone(&Utc) < cutoff
    });
    Ok(stranded.collect())
}

/// Settles `stranded` sessions (see [`stranded_sessions`]; the caller has retried their
/// agent calls): a create ends ERROR `creation-interrupted`, a destroy ends TERMINATED
/// `user-requested`, a restart goes back to RUNNING (the kernel is there, restarted or
/// not; a report that lacks it ends it). Kernels an agent still holds for sessions ended
/// here are destroyed by its next report's reconciliation. Returns the sessions it ended.
pub async fn settle_stranded(db: &DatabaseConnection, stranded: Vec<kernels::Model>) -> Result<Vec<Uuid>, Error> {
    let (mut creates, mut destroys, mut restarts) = (Vec::new(), Vec::new(), Vec::new());
    for kernel in stranded {
        match kernel.status {
            KernelStatus::Preparing => creates.push(kernel),
            KernelStatus::Terminating => destroys.push(kernel),
            _ => restarts.push(kernel),
        }
    }
    for kernel in &restarts {
        if super::set_status(db, kernel, KernelStatus::Running, None).await? {
            tracing::warn!(kernel_id = %kernel.id, "a restart left half-way: the session is RUNNING again");
        }
    }
    let mut ended = Vec::new();
    for (sessions, status, info) in
        [(creates, KernelStatus::Error, "creation-interrupted"), (destroys, KernelStatus::Terminated, "user-requested")]
    {
        if sessions.is_empty() {
            continue;
        }
        let done = end_sessions(db, &sessions, &Ending::new(status, info), None).await?.unwrap_or_default();
        tracing::warn!(sessions = done.len(), info, "ended sessions a manager left half-way");
        ended.extend(done);
    }
    Ok(ended)
}
