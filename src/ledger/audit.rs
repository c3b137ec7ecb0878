//! The slot audit: each agent's occupied slots must equal the sum over its live
//! sessions, and each key's `concurrency_used` the number of its live and waiting
//! sessions. A drift (a bug, a manual edit, a crash between two writes of an older
//! version) is logged and repaired, each row in a transaction that holds its lock (in
//! the ledger's lock order), so the sums it writes are exact even while sessions come
//! and go.

use std::collections::BTreeSet;

use entity::agents;
use entity::kernels::{self, KernelStatus};
use entity::keypairs;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use serde::Serialize;

use super::{lock_agents, lock_keypairs};
use crate::error::Error;

/// Slots compare within this (sums of floating-point slots).
const EPSILON: f64 = 1e-6;

/// One drift the audit found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drift {
    /// `agent` or `keypair`.
    pub kind: &'static str,
    /// The agent id or access key.
    pub id: String,
    /// What the row said: (cpu, mem, gpu) for an agent, (sessions, 0, 0) for a key.
    pub recorded: (f64, i64, f64),
    /// What its sessions add up to.
    pub actual: (f64, i64, f64),
    /// Whether it was repaired.
    pub repaired: bool,
}

/// Checks every agent and key; repairs what drifted unless `dry_run`. Returns the drifts.
pub async fn audit(db: &DatabaseConnection, dry_run: bool) -> Result<Vec<Drift>, Error> {
    let mut drifts = Vec::new();
    let agent_ids: Vec<String> =
        agents::Entity::find().select_only().column(agents::Column::Id).into_tuple().all(db).await?;
    let access_keys: Vec<String> =
        keypairs::Entity::find().select_only().column(keypairs::Column::AccessKey).into_tuple().all(db).await?;
    let rows = agent_ids.into_iter().map(Row::Agent).chain(access_keys.into_iter().map(Row::Keypair));
    for row in rows {
        if let Some(drift) = check_one(db, dry_run, &row).await? {
            drifts.push(drift);
        }
    }
    for drift in &drifts {
        tracing::warn!(kind = drift.kind, id = %drift.id, recorded = ?drift.recorded, actual = ?drift.actual,
            repaired = drift.repaired, "slot accounting drifted");
    }
    Ok(drifts)
}

/// A row the audit checks.
enum Row {
    Agent(String),
    Keypair(String),
}

/// Checks one row in its own transaction (retried on a lost race).
async fn check_one(db: &DatabaseConnection, dry_run: bool, row: &Row) -> Result<Option<Drift>, Error> {
    crate::db::retrying("audit", || async {
        let txn = db.begin().await?;
        let found = match row {
            Row::Agent(id) => audit_agent(&txn, id.clone(), dry_run).await,
            Row::Keypair(key) => audit_key(&txn, key.clone(), dry_run).await,
        };
        match (&found, dry_run) {
            (Ok(Some(_)), false) => txn.commit().await?,
            _ => txn.rollback().await?,
        }
        found
    })
    .await
}

fn live() -> sea_orm::Select<kernels::Entity> {
    kernels::Entity::find().filter(kernels::Column::Status.is_not_in(KernelStatus::ENDED))
}

async fn audit_agent(txn: &DatabaseTransaction, agent_id: String, dry_run: bool) -> Result<Option<Drift>, Error> {
    if !dry_run {
        lock_agents(txn, &BTreeSet::from([agent_id.clone()])).await?;
    }
    let Some(agent) = agents::Entity::find_by_id(agent_id.clone()).one(txn).await? else { return Ok(None) };
    let held: Vec<(f64, i64, f64)> = live()
        .select_only()
        .column(kernels::Column::CpuSlot)
        .column(kernels::Column::MemSlot)
        .column(kernels::Column::GpuSlot)
        .filter(kernels::Column::Agent.eq(agent_id.clone()))
        .into_tuple()
        .all(txn)
        .await?;
    let actual = held.iter().fold((0.0, 0, 0.0), |sum, s| (sum.0 + s.0, sum.1 + s.1, sum.2 + s.2));
    let recorded = (agent.used_cpu_slots, agent.used_mem_slots, agent.used_gpu_slots);
    let same =
        (recorded.0 - actual.0).abs() < EPSILON && recorded.1 == actual.1 && (recorded.2 - actual.2).abs() < EPSILON;
    if same {
        return Ok(None);
    }
    if !dry_run {
        agents::Entity::update_many()
            .col_expr(agents::Column::UsedCpuSlots, Expr::value(actual.0))
            .col_expr(agents::Column::UsedMemSlots, Expr::value(actual.1))
            .col_expr(agents::Column::UsedGpuSlots, Expr::value(actual.2))
            .filter(agents::Column::Id.eq(agent_id.clone()))
            .exec(txn)
            .await?;
    }
    Ok(Some(Drift { kind: "agent", id: agent_id, recorded, actual, repaired: !dry_run }))
}

async fn audit_key(txn: &DatabaseTransaction, access_key: String, dry_run: bool) -> Result<Option<Drift>, Error> {
    if !dry_run {
        lock_keypairs(txn, &BTreeSet::from([access_key.clone()])).await?;
    }
    let Some(keypair) = keypairs::Entity::find_by_id(access_key.clone()).one(txn).await? else { return Ok(None) };
    let sessions = live().filter(kernels::Column::AccessKey.eq(access_key.clone())).count(txn).await?;
    let actual = i32::try_from(sessions).unwrap_or(i32::MAX);
    if keypair.concurrency_used == actual {
        return Ok(None);
    }
    if !dry_run {
        keypairs::Entity::update_many()
            .col_expr(keypairs::Column::ConcurrencyUsed, Expr::value(actual))
            .filter(keypairs::Column::AccessKey.eq(access_key.clone()))
            .exec(txn)
            .await?;
    }
    let as_slots = |n: i32| (f64::from(n), 0, 0.0);
    Ok(Some(Drift {
        kind: "keypair",
        id: access_key,
        recorded: as_slots(keypair.concurrency_used),
        actual: as_slots(actual),
        repaired: !dry_run,
    }))
}
