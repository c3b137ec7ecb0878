use std::collections::HashSet;

use actix::prelude::*;
use chrono::Utc;
use entity::agents::{self, AgentStatus};
use entity::kernels::KernelStatus;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::AgentActor;
use crate::actors::messages::{AgentHeartbeat, AgentLost, AgentReport, AgentTerminated, SessionsEnded};
use crate::agent_client::AgentClient;
use crate::error::Error;
use crate::ledger::{self, AgentChange, Ending};

/// A session is judged by an agent's report only if it was placed this long before the
/// report was taken (the agent may not have received its creation yet; clocks differ).
const REPORT_MARGIN_SECS: i64 = 10;

impl Handler<AgentHeartbeat> for AgentActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    #[tracing::instrument(name = "AgentActor::AgentHeartbeat", skip_all, level = "debug", fields(agent = %self.agent_id))]
    fn handle(&mut self, msg: AgentHeartbeat, _ctx: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        let agent_id = self.agent_id.clone();
        let registry = self.registry.clone();
        let client = self.client(&msg.report.addr);
        AtomicResponse::new(Box::pin(
            async move {
                // Cached: a heartbeat needs only the bus and the database.
                let (cpu_factor, mem_factor, gpu_factor) = core.overbook.factors();
                let report = msg.report;
                let (cpu, mem, gpu) = (
                    report.slots.cpu * cpu_factor,
                    (report.slots.mem as f64 * mem_factor) as i64,
                    report.slots.gpu * gpu_factor,
                );
                let now = Utc::now().fixed_offset();
                let inserted = agents::Entity::insert(agents::ActiveModel {
                    id: Set(agent_id.clone()),
                    status: Set(AgentStatus::Alive),
                    region: Set(report.region.clone()),
                    addr: Set(report.addr.clone()),
                    first_contact: Set(now),
                    lost_at: Set(None),
                    mem_slots: Set(mem),
                    cpu_slots: Set(cpu),
                    gpu_slots: Set(gpu),
                    used_mem_slots: Set(0),
                    used_cpu_slots: Set(0.0),
                    used_gpu_slots: Set(0.0),
                    last_heartbeat: Set(Some(now)),
                    heartbeat_interval: Set(report.heartbeat_interval),
                })
                .on_conflict(OnConflict::column(agents::Column::Id).do_nothing().to_owned())
                .exec_without_returning(&core.db)
                .await?;
                if inserted == 1 {
                    tracing::info!(agent = %agent_id, addr = %report.addr, cpu, mem, gpu, "agent registered");
                } else {
                    let revived = agents::Entity::update_many()
                        .col_expr(agents::Column::Status, Expr::value(AgentStatus::Alive))
                        .col_expr(
                            agents::Column::LostAt,
                            Expr::value(Option::<chrono::DateTime<chrono::FixedOffset>>::None),
                        )
                        .filter(agents::Column::Id.eq(agent_id.clone()))
                        .filter(agents::Column::Status.ne(AgentStatus::Alive))
                        .exec(&core.db)
                        .await?
                        .rows_affected;
                    if revived == 1 {
                        tracing::info!(agent = %agent_id, "agent is alive again");
                    }
                    agents::Entity::update_many()
                        .col_expr(agents::Column::Region, Expr::value(report.region.clone()))
                        .col_expr(agents::Column::Addr, Expr::value(report.addr.clone()))
                        .col_expr(agents::Column::CpuSlots, Expr::value(cpu))
                        .col_expr(agents::Column::MemSlots, Expr::value(mem))
                        .col_expr(agents::Column::GpuSlots, Expr::value(gpu))
                        .col_expr(agents::Column::LastHeartbeat, Expr::value(now))
                        .col_expr(agents::Column::HeartbeatInterval, Expr::value(report.heartbeat_interval))
                        .filter(agents::Column::Id.eq(agent_id.clone()))
                        .exec(&core.db)
                        .await?;
                }
                reconcile(&core, &agent_id, &client, &report, msg.started, &registry).await
            }
            .into_actor(self),
        ))
    }
}

/// Makes the sessions agree with what the agent reported holding: sessions placed well
/// before the report was taken and absent from it end (they are gone); kernels no session
/// owns are destroyed. Only the sessions read here are judged, each by a conditional
/// update that re-checks it was placed before the report.
async fn reconcile(
    core: &crate::Core,
    agent_id: &str,
    client: &AgentClient,
    report: &AgentReport,
    started: bool,
    registry: &Addr<crate::actors::registry::Registry>,
) -> Result<(), Error> {
    let reported: HashSet<Uuid> = report.kernels.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect();
    let taken_at = report
        .taken_at
        .and_then(chrono::DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
        .min(Utc::now());
    let placed_before = (taken_at - chrono::Duration::seconds(REPORT_MARGIN_SECS)).fixed_offset();
    let live = ledger::agent_sessions(&core.db, agent_id).await?;
    let absent: Vec<_> = live
        .iter()
        .filter(|k| !reported.contains(&k.id) && k.scheduled_at.is_some_and(|at| at < placed_before))
        .cloned()
        .collect();
    // A session being destroyed whose kernel is gone was destroyed; one being created
    // whose kernel never came was interrupted (its manager died before the agent got it).
    let (mut destroyed, mut interrupted, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    for kernel in absent {
        match kernel.status {
            KernelStatus::Terminating => destroyed.push(kernel),
            KernelStatus::Preparing if !started => interrupted.push(kernel),
            _ => lost.push(kernel),
        }
    }
    let info = if started { "agent-restarted" } else { "kernel-lost" };
    let mut ended = Vec::new();
    for (sessions, status, info) in [
        (lost, KernelStatus::Error, info),
        (interrupted, KernelStatus::Error, "creation-interrupted"),
        (destroyed, KernelStatus::Terminated, "user-requested"),
    ] {
        if sessions.is_empty() {
            continue;
        }
        let ending = Ending { placed_before: Some(placed_before), ..Ending::new(status, info) };
        let ids: HashSet<Uuid> = sessions.iter().map(|k| k.id).collect();
        let hold = core.directory.hold_sessions(|kernel| ids.contains(&kernel.id));
        let done = ledger::end_sessions(&core.db, &sessions, &ending, None).await?.unwrap_or_default();
        hold.release(&done);
        if !done.is_empty() {
            if status == KernelStatus::Terminated {
                // A destroy whose kernel the report already lacks: the usual race, not a fault.
                tracing::debug!(agent = %agent_id, sessions = done.len(), info, "destroyed sessions settled by a report");
            } else {
                tracing::warn!(agent = %agent_id, sessions = done.len(), info, "sessions ended: the agent no longer holds them");
            }
        }
        ended.extend(done);
    }
    if !ended.is_empty() {
        registry.do_send(SessionsEnded { kernel_ids: ended });
    }
    // Kernels of sessions that ended (or never existed) are orphans, unless the session
    // was placed after the rows were read.
    let known: HashSet<Uuid> = live.iter().filter(|k| k.status.is_live()).map(|k| k.id).collect();
    let candidates: Vec<Uuid> = reported.difference(&known).copied().collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let still_live: HashSet<Uuid> =
        ledger::agent_sessions(&core.db, agent_id).await?.into_iter().map(|k| k.id).collect();
    for orphan in candidates.into_iter().filter(|id| !still_live.contains(id)) {
        let client = client.clone();
        let kernel_id = orphan.to_string();
        tracing::warn!(agent = %agent_id, kernel = %kernel_id, "destroying a kernel no session owns");
        actix::spawn(async move {
            if let Err(error) = client.destroy_kernel(&kernel_id).await {
                tracing::warn!(%error, kernel = %kernel_id, "could not destroy an orphan kernel");
            }
        });
    }
    Ok(())
}

impl Handler<AgentTerminated> for AgentActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    #[tracing::instrument(name = "AgentActor::AgentTerminated", skip_all, fields(agent = %self.agent_id))]
    fn handle(&mut self, _msg: AgentTerminated, _ctx: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        let agent_id = self.agent_id.clone();
        let registry = self.registry.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let sessions = ledger::agent_sessions(&core.db, &agent_id).await?;
                let ending = Ending::new(KernelStatus::Terminated, "agent-terminated");
                let change = AgentChange::Terminated { agent_id: &agent_id };
                let hold = core.directory.hold_sessions(|kernel| kernel.agent.as_deref() == Some(agent_id.as_str()));
                let ended = ledger::end_sessions(&core.db, &sessions, &ending, Some(change)).await?.unwrap_or_default();
                hold.release(&ended);
                tracing::info!(agent = %agent_id, sessions = ended.len(), "agent terminated");
                registry.do_send(SessionsEnded { kernel_ids: ended });
                Ok(())
            }
            .into_actor(self)
            .map(|result, _actor, ctx| {
                ctx.stop();
                result
            }),
        ))
    }
}

impl Handler<AgentLost> for AgentActor {
    type Result = ();

    #[tracing::instrument(name = "AgentActor::AgentLost", skip_all, fields(agent = %self.agent_id))]
    fn handle(&mut self, _msg: AgentLost, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
