//! Reclaiming sessions: a key's `idle_timeout` (no execute, upload, complete,
//! interrupt, restart, file read or PTY traffic for that long) and
//! `max_session_lifetime` (counted from RUNNING). The scheduler's lease holder checks
//! once a pass; `scheduler.reclaim_warning` seconds before a reclaim the session's event
//! stream gets a `warning` event, and any call on the session meanwhile starts its idle
//! timer again. A reclaimed session ends TERMINATED with reason `idle-timeout` or
//! `lifetime-exceeded`.
//!
//! Uses are noted in memory where they happen ([`Activity::note`]) and written to
//! `kernels.last_activity` once a second ([`Activity::flush`]), so the check sees the
//! uses made through every manager.

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use entity::kernels::{self, KernelStatus};
use entity::keypairs;
use futures_util::StreamExt;
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use actix::Addr;

use crate::actors::messages::{Destroy, GetSessionActor};
use crate::actors::registry::Registry;
use crate::error::Error;
use crate::ledger;
use crate::Core;

/// When sessions were last used in this process, not written yet.
#[derive(Default)]
pub struct Activity {
    used: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl Activity {
    /// The session `kernel_id` was used now.
    pub fn note(&self, kernel_id: Uuid) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(kernel_id, Utc::now());
        }
    }

    /// Writes the noted uses (each session's `last_activity` only moves forward). A
    /// use that could not be written is noted again.
    pub async fn flush(&self, db: &sea_orm::DatabaseConnection) {
        let taken = match self.used.lock() {
            Ok(mut used) => std::mem::take(&mut *used),
            Err(_) => return,
        };
        for (kernel_id, at) in taken {
            let at = at.fixed_offset();
            let written = kernels::Entity::update_many()
                .col_expr(kernels::Column::LastActivity, Expr::value(at))
                .filter(kernels::Column::Id.eq(kernel_id))
                .filter(
                    Condition::any()
                        .add(kernels::Column::LastActivity.is_null())
                        .add(kernels::Column::LastActivity.lt(at)),
                )
                .exec(db)
                .await;
            if let Err(error) = written {
                tracing::warn!(%error, %kernel_id, "could not write a session's last use: kept for the next flush");
                if let Ok(mut used) = self.used.lock() {
                    used.entry(kernel_id).or_insert(at.with_timezone(&Utc));
                }
            }
        }
    }
}

/// Why a session is reclaimed, and when.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Due {
    /// `idle-timeout` or `lifetime-exceeded`.
    pub reason: &'static str,
    /// When.
    pub at: DateTime<FixedOffset>,
}

/// When `kernel` is due under the limits of its key (`None`: never).
pub fn due(kernel: &kernels::Model, idle_timeout: i32, max_lifetime: i32) -> Option<Due> {
    let seconds = |s: i32| chrono::Duration::seconds(i64::from(s));
    let started = kernel.started_at?;
    let idle = (idle_timeout > 0).then(|| Due {
        reason: "idle-timeout",
        at: kernel.last_activity.unwrap_or(started).max(started) + seconds(idle_timeout),
    });
    let lifetime = (max_lifetime > 0).then(|| Due { reason: "lifetime-exceeded", at: started + seconds(max_lifetime) });
    match (idle, lifetime) {
        (Some(idle), Some(lifetime)) => Some(if lifetime.at <= idle.at { lifetime } else { idle }),
        (one, other) => one.or(other),
    }
}

/// One check of every running session of the keys with limits: warns those due within
/// the warning time (once per deadline) and starts the reclaim of those due, in a task
/// of its own (a slow agent holds up neither the pass's placements nor the lease's
/// renewal); a session being reclaimed is not started again.
pub async fn check(core: &Arc<Core>, registry: &Addr<Registry>) -> Result<(), Error> {
    let warned = &core.scheduling.warned;
    let limited = keypairs::Entity::find()
        .filter(
            Condition::any().add(keypairs::Column::IdleTimeout.gt(0)).add(keypairs::Column::MaxSessionLifetime.gt(0)),
        )
        .all(&core.db)
        .await?;
    if limited.is_empty() {
        return Ok(());
    }
    let limits: HashMap<String, (i32, i32)> =
        limited.into_iter().map(|k| (k.access_key, (k.idle_timeout, k.max_session_lifetime))).collect();
    let running = kernels::Entity::find()
        .filter(kernels::Column::Status.eq(KernelStatus::Running))
        .filter(kernels::Column::AccessKey.is_in(limits.keys().cloned()))
        .all(&core.db)
        .await?;
    let now = Utc::now().fixed_offset();
    let warning = chrono::Duration::milliseconds((core.settings.scheduler.reclaim_warning * 1000.0) as i64);
    let mut overdue = Vec::new();
    for kernel in running {
        let (idle, lifetime) = limits.get(&kernel.access_key).copied().unwrap_or_default();
        let Some(due) = due(&kernel, idle, lifetime) else { continue };
        if now >= due.at {
            if core.scheduling.start_reclaim(kernel.id) {
                overdue.push((kernel, (idle, lifetime)));
            }
        } else if now + warning >= due.at && warned_once(warned, kernel.id, due.at) {
            let left = (due.at - now).num_seconds().max(0);
            let reason = format!("{} in {left} s", due.reason);
            ledger::record_warning(&core.db, &kernel, &reason).await?;
            tracing::info!(kernel_id = %kernel.id, %reason, "reclaim warning");
        }
    }
    if let Ok(mut warned) = warned.lock() {
        warned.retain(|_, at| *at > now - chrono::Duration::hours(1));
    }
    if overdue.is_empty() {
        return Ok(());
    }
    let (core, registry) = (core.clone(), registry.clone());
    tokio::spawn(async move {
        let reclaims = overdue.into_iter().map(|(kernel, (idle, lifetime))| {
            let (core, registry) = (&core, &registry);
            async move {
                // Read again: a use since the check (written within a second) saves it.
                let fresh = kernels::Entity::find_by_id(kernel.id).one(&core.db).await.ok().flatten();
                let due = fresh.as_ref().and_then(|f| due(f, idle, lifetime));
                if let (Some(fresh), Some(due)) = (fresh, due) {
                    if fresh.status == KernelStatus::Running && Utc::now().fixed_offset() >= due.at {
                        reclaim(registry, fresh, due.reason).await;
                    }
                }
                core.scheduling.end_reclaim(kernel.id);
                // Its room may fit a waiting session.
                core.scheduling.nudge();
            }
        });
        futures_util::stream::iter(reclaims).buffer_unordered(CONCURRENCY).collect::<Vec<()>>().await;
    });
    Ok(())
}

/// Reclaims under way at once.
const CONCURRENCY: usize = 8;

/// Whether this is the first warning for `kernel_id`'s deadline `at`.
fn warned_once(
    warned: &Mutex<HashMap<Uuid, DateTime<FixedOffset>>>,
    kernel_id: Uuid,
    at: DateTime<FixedOffset>,
) -> bool {
    let Ok(mut warned) = warned.lock() else { return false };
    warned.insert(kernel_id, at) != Some(at)
}

/// Destroys `kernel` through its actor with `reason`; whether it ended.
async fn reclaim(registry: &Addr<Registry>, kernel: kernels::Model, reason: &'static str) -> bool {
    let kernel_id = kernel.id;
    let destroyed = match registry.send(GetSessionActor { kernel }).await {
        Ok(Ok(actor)) => actor.send(Destroy { reason }).await.map_err(Error::from).and_then(|answer| answer),
        Ok(Err(error)) => Err(error),
        Err(error) => Err(error.into()),
    };
    match destroyed {
        Ok(_) => {
            tracing::info!(%kernel_id, reason, "session reclaimed");
            true
        }
        Err(error) => {
            tracing::warn!(%kernel_id, reason, %error, "could not reclaim a session: trying again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kernel(started_secs_ago: i64, used_secs_ago: Option<i64>) -> kernels::Model {
        let now = Utc::now().fixed_offset();
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        serde_json::from_value::<kernels::Model>(serde_json::json!({
            "id": Uuid::new_v4(), "sess_id": "s", "role": "master", "lang": "bash:latest", "access_key": "AK",
            "agent": "i-a", "agent_addr": null, "container_id": null, "status": "RUNNING", "status_info": null,
            "created_at": ago(started_secs_ago), "terminated_at": null, "scheduled_at": ago(started_secs_ago),
            "started_at": ago(started_secs_ago), "last_activity": used_secs_ago.map(ago),
            "mem_slot": 1, "cpu_slot": 1.0, "gpu_slot": 0.0, "num_queries": 0, "cpu_used": 0, "mem_max_bytes": 0,
            "mem_cur_bytes": 0, "net_rx_bytes": 0, "net_tx_bytes": 0, "io_read_bytes": 0, "io_write_bytes": 0,
            "io_max_scratch_size": 0, "io_cur_scratch_size": 0,
        }))
        .unwrap()
    }

    #[test]
    fn the_earlier_limit_decides_and_a_use_moves_the_idle_one() {
        let k = kernel(100, Some(10));
        assert_eq!(due(&k, 0, 0), None);
        let idle = due(&k, 30, 0).unwrap();
        assert_eq!(idle.reason, "idle-timeout");
        assert_eq!(idle.at, k.last_activity.unwrap() + chrono::Duration::seconds(30));
        let lifetime = due(&k, 30, 50).unwrap();
        assert_eq!(lifetime.reason, "lifetime-exceeded", "started 100 s ago: past a 50 s lifetime");
        let never_used = kernel(100, None);
        assert_eq!(due(&never_used, 30, 0).unwrap().at, never_used.started_at.unwrap() + chrono::Duration::seconds(30));
        assert_eq!(due(&kernel(1, None), 0, 0), None);
    }

    #[test]
    fn one_warning_per_deadline() {
        let warned = Mutex::new(HashMap::new());
        let (id, at) = (Uuid::new_v4(), Utc::now().fixed_offset());
        assert!(warned_once(&warned, id, at));
        assert!(!warned_once(&warned, id, at));
        assert!(warned_once(&warned, id, at + chrono::Duration::seconds(5)), "a use moved the deadline");
    }
}
