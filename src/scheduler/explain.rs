//! Why a session waits, or would: the explain API and the queue fields of a pending
//! session's info. Both run the planner over the queue as it is (nothing is written).

use std::collections::HashMap;

use chrono::Utc;
use entity::kernels::{self, KernelStatus};
use entity::keypairs;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::error::{ApiError, Error, Problem};
use crate::{ledger, placement, Core};

/// Sessions placed over this window give the queue's rate, for wait estimates.
const RATE_WINDOW_SECS: i64 = 600;

/// The answer of `POST /scheduler/explain`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `place` (it would be placed now), `wait` (it would wait), or `refuse` (it
    /// would not be taken: over the key's quota, or bigger than every agent).
    pub decision: &'static str,
    /// The agent it would go to now.
    pub agent: Option<String>,
    /// In words, why it would wait or be refused.
    pub reason: Option<String>,
    /// Sessions ahead of it in the queue (under the cluster's policy).
    pub sessions_ahead: usize,
    /// The key's sessions (live and waiting) and its limit.
    pub quota: Quota,
    /// Each agent, and what it is short of for this session.
    pub agents: Vec<AgentFit>,
    /// The cluster's policy and placement.
    pub policy: String,
    /// Seconds it would likely wait, from the rate sessions left the queue over the last
    /// ten minutes; none when it would not wait or nothing was placed lately.
    pub estimated_wait_secs: Option<f64>,
}

/// A key's concurrency quota.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Sessions counted against it (waiting ones included).
    pub used: i32,
    /// Its limit.
    pub limit: i32,
}

/// One agent's room for a session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentFit {
    /// The agent.
    pub id: String,
    /// It has room now.
    pub fits: bool,
    /// It could never hold the session: its capacity is smaller.
    pub too_small: bool,
    /// What is short now, by resource (`cpu` cores, `mem` MiB, `gpu`).
    pub short: HashMap<&'static str, f64>,
}

/// The queue fields of a pending session's info.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingInfo {
    /// Its place in the queue, 0 for the head.
    pub queue_position: usize,
    /// In words, why it waits.
    pub pending_reason: String,
}

/// What the planner says of a session of `slots` for `access_key` (`existing`: a
/// session already in the queue, else a new one at its end).
struct Verdict {
    placed_on: Option<String>,
    ahead: usize,
    fits: Vec<AgentFit>,
    policy: String,
    head_held: Option<String>,
}

async fn verdict(
    core: &Core,
    access_key: &str,
    slots: planner::Slots,
    existing: Option<uuid::Uuid>,
) -> Result<Verdict, Error> {
    let queue = ledger::pending_sessions(&core.db, core.settings.scheduler.max_pending).await?;
    let (policy, placement_mode) = super::policy(core.stores.config.as_ref()).await?;
    let agents = super::eligible_agents(core, &[]).await?;
    let mut index = planner::Index::new(agents.iter().map(placement::slots_of).collect());
    let fits = planner::explain(&index, slots)
        .into_iter()
        .map(|shortfall| AgentFit {
            id: index.agents().get(shortfall.agent).map(|a| a.id.clone()).unwrap_or_default(),
            fits: shortfall.short.is_empty() && !shortfall.too_small,
            too_small: shortfall.too_small,
            short: shortfall.short.into_iter().collect(),
        })
        .collect();
    let mut pending = super::planner_queue(&queue);
    let me = match existing.and_then(|id| queue.iter().position(|k| k.id == id)) {
        Some(position) => position as u64,
        None => {
            let id = pending.len() as u64;
            let seq = Utc::now().timestamp_micros().max(pending.iter().map(|p| p.seq + 1).max().unwrap_or(0));
            pending.push(planner::Pending { id, access_key: access_key.to_owned(), slots, seq });
            id
        }
    };
    let usage = super::usage_for(core, policy).await?;
    let plan = planner::plan(&mut index, &pending, &usage, policy, placement_mode);
    let agent_id = |index_of: usize| agents.get(index_of).map(|a| a.id.clone());
    let placed_on = plan.placements.iter().find(|(id, _)| *id == me).and_then(|(_, agent)| agent_id(*agent));
    let ahead = plan.waiting.iter().position(|id| *id == me).unwrap_or(0);
    let head_held = plan.reservation.filter(|(head, _)| *head != me).and_then(|(_, agent)| agent_id(agent));
    let policy = format!("{policy:?}/{placement_mode:?}").to_lowercase();
    Ok(Verdict { placed_on, ahead, fits, policy, head_held })
}

/// Why a session of `fits` waits, in words.
fn wait_reason(fits: &[AgentFit], ahead: usize, head_held: Option<&str>) -> String {
    if fits.is_empty() {
        return "no agent is alive".to_owned();
    }
    if fits.iter().all(|f| f.too_small) {
        return "bigger than every agent".to_owned();
    }
    if let Some(fit) = fits.iter().find(|f| f.fits) {
        return match head_held {
            Some(agent) if agent == fit.id => {
                format!("{ahead} sessions ahead of it; agent {agent} is held for the head of the queue")
            }
            _ => format!("{ahead} sessions ahead of it in the queue"),
        };
    }
    // The agent closest to room: the smallest largest shortfall.
    let closest = fits.iter().filter(|f| !f.too_small).min_by(|a, b| largest(a).total_cmp(&largest(b))).map(|f| {
        let mut short: Vec<String> = f.short.iter().map(|(r, amount)| format!("{r} by {amount}")).collect();
        short.sort();
        format!("no agent has room; the closest, {}, is short of {}", f.id, short.join(" and "))
    });
    let mut reason = closest.unwrap_or_else(|| "no agent has room".to_owned());
    if ahead > 0 {
        reason.push_str(&format!("; {ahead} sessions ahead of it"));
    }
    reason
}

fn largest(fit: &AgentFit) -> f64 {
    fit.short.values().copied().fold(0.0, f64::max)
}

/// `POST /scheduler/explain`: where a session of `slots` for `access_key` would go now,
/// or why it would wait. Nothing is created.
pub async fn explain(core: &Core, access_key: &str, slots: planner::Slots) -> Result<Explanation, Error> {
    let keypair = keypairs::Entity::find_by_id(access_key.to_owned())
        .one(&core.db)
        .await?
        .ok_or_else(|| Error::Api(ApiError::new(Problem::AuthFailed)))?;
    let quota = Quota { used: keypair.concurrency_used, limit: keypair.concurrency_limit };
    let verdict = verdict(core, access_key, slots, None).await?;
    let over_quota = quota.used >= quota.limit;
    let never = !verdict.fits.is_empty() && verdict.fits.iter().all(|f| f.too_small);
    let (decision, reason) = if over_quota {
        ("refuse", Some(format!("the key has {} of {} sessions", quota.used, quota.limit)))
    } else if never {
        ("refuse", Some("bigger than every agent".to_owned()))
    } else if verdict.placed_on.is_some() {
        ("place", None)
    } else {
        ("wait", Some(wait_reason(&verdict.fits, verdict.ahead, verdict.head_held.as_deref())))
    };
    let estimated_wait_secs = match decision {
        "wait" => estimate_wait(core, verdict.ahead).await?,
        _ => None,
    };
    Ok(Explanation {
        decision,
        agent: verdict.placed_on.filter(|_| decision == "place"),
        reason,
        sessions_ahead: verdict.ahead,
        quota,
        agents: verdict.fits,
        policy: verdict.policy,
        estimated_wait_secs,
    })
}

/// The queue fields of the pending session `kernel`.
pub async fn pending_info(core: &Core, kernel: &kernels::Model) -> Result<PendingInfo, Error> {
    let verdict = verdict(core, &kernel.access_key, super::slots_of(kernel), Some(kernel.id)).await?;
    let pending_reason = match &verdict.placed_on {
        Some(agent) => format!("about to be placed on {agent}"),
        None => wait_reason(&verdict.fits, verdict.ahead, verdict.head_held.as_deref()),
    };
    Ok(PendingInfo { queue_position: verdict.ahead, pending_reason })
}

/// Seconds until `ahead` sessions and then this one leave the queue, at the rate
/// sessions were placed over the last [`RATE_WINDOW_SECS`].
async fn estimate_wait(core: &Core, ahead: usize) -> Result<Option<f64>, Error> {
    let since = (Utc::now() - chrono::Duration::seconds(RATE_WINDOW_SECS)).fixed_offset();
    let placed = kernels::Entity::find()
        .filter(kernels::Column::ScheduledAt.gte(since))
        .filter(kernels::Column::Status.ne(KernelStatus::Pending))
        .count(&core.db)
        .await?;
    Ok((placed > 0).then(|| (ahead as f64 + 1.0) * RATE_WINDOW_SECS as f64 / placed as f64))
}
