//! One scheduling pass of the lease holder: cancel the sessions that waited too long,
//! plan the queue over the eligible agents, and place what the plan says, each
//! placement fenced by the holder's term.

use std::sync::Arc;

use chrono::Utc;
use entity::kernels;
use entity::scheduler_fence;
use sea_orm::EntityTrait;

use actix::Addr;

use super::{lease, Scheduling, SUSPECTS_PREFIX};
use crate::actors::registry::Registry;
use crate::error::Error;
use crate::ledger::{self, Placed};
use crate::{placement, Core};

/// What a pass found.
#[derive(Debug)]
pub enum Outcome {
    /// Another manager schedules.
    NotHolder,
    /// The pass ran with this term: sessions still waiting.
    Ran { term: i64, waiting: usize },
}

/// Runs one pass if this manager holds (or takes) the lease. `term` is the term this
/// manager held after its previous pass.
pub async fn run(
    core: &Arc<Core>,
    registry: &Addr<Registry>,
    manager_id: &str,
    term: Option<i64>,
) -> Result<Outcome, Error> {
    let scheduling: &Scheduling = &core.scheduling;
    // While another manager holds the lease, a pass costs one config store read.
    if lease::held_by_another(core.stores.config.as_ref(), manager_id).await? {
        scheduling.set_holder(false);
        return Ok(Outcome::NotHolder);
    }
    // The database's fence matters when a term starts; a holder renewing its own lease
    // meets a later term at its next placement.
    let fence = match term {
        Some(term) => term,
        None => fence_token(core).await?,
    };
    let Some(current) = lease::acquire(core.stores.config.as_ref(), manager_id, fence).await? else {
        scheduling.set_holder(false);
        return Ok(Outcome::NotHolder);
    };
    if term != Some(current) && !ledger::take_fence(&core.db, current).await? {
        scheduling.set_holder(false);
        return Ok(Outcome::NotHolder);
    }
    scheduling.set_holder(true);
    if let Err(error) = super::reclaim::check(core, registry).await {
        tracing::warn!(%error, "could not check the sessions' limits");
    }
    if scheduling.audit_due(std::time::Duration::from_secs_f64(core.settings.scheduler.audit_interval)) {
        match ledger::audit(&core.db, false).await {
            Ok(drifts) => {
                let repaired = drifts.iter().filter(|d| d.repaired).count() as u64;
                scheduling.repairs.fetch_add(repaired, std::sync::atomic::Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(%error, "the slot audit failed"),
        }
    }
    match place_queue(core, current).await? {
        Some(waiting) => Ok(Outcome::Ran { term: current, waiting }),
        None => {
            // A later term holds the fence: this lease is stale. Given up, the next
            // holder (this manager again, maybe) starts a term past the fence.
            tracing::warn!(term = current, "a later scheduler holds the fence: giving the lease up");
            scheduling.set_holder(false);
            lease::release(core.stores.config.as_ref(), manager_id).await?;
            Ok(Outcome::NotHolder)
        }
    }
}

async fn fence_token(core: &Core) -> Result<i64, Error> {
    Ok(scheduler_fence::Entity::find_by_id(1).one(&core.db).await?.map_or(0, |row| row.token))
}

/// Plans and places the queue under term `term`; returns how many sessions still wait,
/// or `None` when the fence refused the term (nothing was placed from then on).
async fn place_queue(core: &Core, term: i64) -> Result<Option<usize>, Error> {
    let settings = &core.settings.scheduler;
    let mut queue = ledger::pending_sessions(&core.db, settings.max_pending).await?;
    if queue.is_empty() {
        return Ok(Some(0));
    }
    let now = Utc::now();
    let mut decided = Vec::new();
    // Sessions that waited too long leave the queue first.
    let max_wait = chrono::Duration::milliseconds((settings.max_wait * 1000.0) as i64);
    let (expired, waiting): (Vec<kernels::Model>, Vec<kernels::Model>) =
        queue.drain(..).partition(|k| now.signed_duration_since(k.created_at.with_timezone(&Utc)) > max_wait);
    if !expired.is_empty() {
        let cancelled = ledger::cancel_pending(&core.db, &expired, "pending-timeout").await?;
        tracing::warn!(sessions = cancelled.len(), "sessions waited longer than scheduler.max_wait: cancelled");
        decided.extend(cancelled);
    }
    let queue = waiting;
    let (policy, placement) = super::policy(core.stores.config.as_ref()).await?;
    let suspects = suspects(core).await?;
    let agents = super::eligible_agents(core, &suspects).await?;
    let mut index = planner::Index::new(agents.iter().map(placement::slots_of).collect());
    let usage = super::usage_for(core, policy).await?;
    let plan = planner::plan(&mut index, &super::planner_queue(&queue), &usage, policy, placement);
    let mut left = Some(plan.waiting.len());
    for (session, agent) in plan.placements {
        let (Some(kernel), Some(agent)) = (queue.get(session as usize), agents.get(agent)) else { continue };
        match ledger::place(&core.db, kernel, agent, term).await? {
            Placed::Placed(placed) => {
                tracing::info!(kernel_id = %placed.id, agent = %agent.id, "placed");
                decided.push(placed.id);
            }
            // The next pass sees the agent as it is now.
            Placed::NoRoom => left = left.map(|n| n + 1),
            Placed::Gone => {}
            Placed::Fenced => {
                left = None;
                break;
            }
        }
    }
    core.scheduling.announce(decided);
    Ok(left)
}

/// The agents creates found unreachable lately; the entries that ran out are removed.
async fn suspects(core: &Core) -> Result<Vec<String>, Error> {
    let config = core.stores.config.as_ref();
    let now = Utc::now().timestamp_millis();
    let mut suspects = Vec::new();
    for (key, until) in config.get_prefix(SUSPECTS_PREFIX).await? {
        let agent = key.strip_prefix(SUSPECTS_PREFIX).unwrap_or(&key).to_owned();
        if until.parse::<i64>().is_ok_and(|until| until > now) {
            suspects.push(agent);
        } else {
            config.delete(&key, false).await?;
        }
    }
    Ok(suspects)
}
