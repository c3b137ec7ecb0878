use std::collections::HashSet;

use actix::prelude::*;
use chrono::Utc;
use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::AgentActor;
use crate::actors::messages::{AgentHeartbeat, AgentLost, AgentTerminated, SessionsEnded};
use crate::agent_client::AgentClient;
use crate::error::Error;
use crate::scheduler;

/// A session the agent does not report is only declared lost after this grace
/// period (it may still be starting).
const MISSING_KERNEL_GRACE_SECS: i64 = 10;

impl Handler<AgentHeartbeat> for AgentActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, msg: AgentHeartbeat, _ctx: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        let agent_id = self.agent_id.clone();
        let registry = self.registry.clone();
        let client = self.client(&msg.report.addr);
        AtomicResponse::new(Box::pin(
            async move {
                let (cpu_factor, mem_factor, gpu_factor) =
                    scheduler::overbook_factors(core.stores.config.as_ref()).await?;
                let report = msg.report;
                let (cpu, mem, gpu) = (
                    report.slots.cpu * cpu_factor,
                    (report.slots.mem as f64 * mem_factor) as i64,
                    report.slots.gpu * gpu_factor,
                );
                let now = Utc::now().fixed_offset();
                match agents::Entity::find_by_id(agent_id.clone()).one(&core.db).await? {
                    None => {
                        agents::ActiveModel {
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
                        }
                        .insert(&core.db)
                        .await?;
                        tracing::info!(agent = %agent_id, addr = %report.addr, cpu, mem, gpu, "agent registered");
                    }
                    Some(row) => {
                        if row.status != AgentStatus::Alive {
                            tracing::info!(agent = %agent_id, previous = ?row.status, "agent is alive again");
                        }
                        agents::Entity::update_many()
                            .col_expr(agents::Column::Status, Expr::value(AgentStatus::Alive))
                            .col_expr(
                                agents::Column::LostAt,
                                Expr::value(Option::<chrono::DateTime<chrono::FixedOffset>>::None),
                            )
                            .col_expr(agents::Column::Region, Expr::value(report.region.clone()))
                            .col_expr(agents::Column::Addr, Expr::value(report.addr.clone()))
                            .col_expr(agents::Column::CpuSlots, Expr::value(cpu))
                            .col_expr(agents::Column::MemSlots, Expr::value(mem))
                            .col_expr(agents::Column::GpuSlots, Expr::value(gpu))
                            .col_expr(agents::Column::LastHeartbeat, Expr::value(now))
                            .filter(agents::Column::Id.eq(agent_id.clone()))
                            .exec(&core.db)
                            .await?;
                    }
                }
                reconcile(&core, &agent_id, &client, &report.kernels, msg.started, &registry).await
            }
            .into_actor(self),
        ))
    }
}

/// Sessions the agent no longer runs end; kernels no session owns are destroyed.
async fn reconcile(
    core: &crate::Core,
    agent_id: &str,
    client: &AgentClient,
    reported: &[String],
    started: bool,
    registry: &Addr<crate::actors::registry::Registry>,
) -> Result<(), Error> {
    let reported: HashSet<Uuid> = reported.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect();
    let live = kernels::Entity::find()
        .filter(kernels::Column::Agent.eq(agent_id))
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated, KernelStatus::Error]))
        .all(&core.db)
        .await?;
    let grace = Utc::now() - chrono::Duration::seconds(MISSING_KERNEL_GRACE_SECS);
    let keep: Vec<Uuid> = live
        .iter()
        .filter(|k| reported.contains(&k.id) || (!started && k.created_at.with_timezone(&Utc) > grace))
        .map(|k| k.id)
        .collect();
    if keep.len() < live.len() {
        let info = if started { "agent-restarted" } else { "kernel-lost" };
        let ended = scheduler::end_agent_sessions(&core.db, agent_id, KernelStatus::Error, info, &keep).await?;
        if !ended.is_empty() {
            tracing::warn!(agent = %agent_id, sessions = ended.len(), info, "sessions ended: the agent no longer runs them");
            registry.do_send(SessionsEnded { kernel_ids: ended });
        }
    }
    let known: HashSet<Uuid> = live.iter().map(|k| k.id).collect();
    for orphan in reported.difference(&known) {
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

    fn handle(&mut self, _msg: AgentTerminated, _ctx: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        let agent_id = self.agent_id.clone();
        let registry = self.registry.clone();
        AtomicResponse::new(Box::pin(
            async move {
                agents::Entity::update_many()
                    .col_expr(agents::Column::Status, Expr::value(AgentStatus::Terminated))
                    .filter(agents::Column::Id.eq(agent_id.clone()))
                    .exec(&core.db)
                    .await?;
                let ended = scheduler::end_agent_sessions(
                    &core.db,
                    &agent_id,
                    KernelStatus::Terminated,
                    "agent-terminated",
                    &[],
                )
                .await?;
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

    fn handle(&mut self, _msg: AgentLost, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
