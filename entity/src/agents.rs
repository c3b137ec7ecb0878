//! An agent: a node daemon that runs kernels, with its resource slots.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Liveness of an agent as the manager sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentStatus {
    /// Sending heartbeats.
    #[sea_orm(string_value = "ALIVE")]
    Alive,
    /// Missed heartbeats for longer than the heartbeat timeout.
    #[sea_orm(string_value = "LOST")]
    Lost,
    /// Restarting; its kernels are expected to come back.
    #[sea_orm(string_value = "RESTARTING")]
    Restarting,
    /// Stopped gracefully.
    #[sea_orm(string_value = "TERMINATED")]
    Terminated,
}

/// One row of `agents`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    /// The agent's own id, e.g. `i-host01`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Liveness.
    pub status: AgentStatus,
    /// Region label the agent reported.
    pub region: String,
    /// `host:port` of the agent's RPC server.
    pub addr: String,
    /// When the manager first heard of the agent.
    pub first_contact: DateTimeWithTimeZone,
    /// When the agent was declared lost, if it is.
    pub lost_at: Option<DateTimeWithTimeZone>,
    /// Memory slots in MiB, scaled by the overbook factor.
    pub mem_slots: i64,
    /// CPU slots in cores, scaled by the overbook factor.
    pub cpu_slots: f64,
    /// GPU slots, scaled by the overbook factor.
    pub gpu_slots: f64,
    /// Memory slots reserved by live sessions (MiB).
    pub used_mem_slots: i64,
    /// CPU slots reserved by live sessions.
    pub used_cpu_slots: f64,
    /// GPU slots reserved by live sessions.
    pub used_gpu_slots: f64,
    /// When the agent's latest heartbeat arrived.
    pub last_heartbeat: Option<DateTimeWithTimeZone>,
    /// Seconds between the agent's heartbeats, as it reported (unknown for old agents).
    pub heartbeat_interval: Option<f64>,
}

impl Model {
    /// Whether the agent has room for the given slots.
    pub fn has_room(&self, cpu: f64, mem: i64, gpu: f64) -> bool {
        const EPSILON: f64 = 1e-9;
        self.used_cpu_slots + cpu <= self.cpu_slots + EPSILON
            && self.used_mem_slots + mem <= self.mem_slots
            && self.used_gpu_slots + gpu <= self.gpu_slots + EPSILON
    }

    /// Free (gpu, mem, cpu) slots: agents with more are preferred, in that order.
    pub fn free_slots(&self) -> (f64, i64, f64) {
        (
            self.gpu_slots - self.used_gpu_slots,
            self.mem_slots - self.used_mem_slots,
            self.cpu_slots - self.used_cpu_slots,
        )
    }
}

/// Relations of an agent.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Kernels placed on the agent.
    #[sea_orm(has_many = "super::kernels::Entity")]
    Kernels,
}

impl Related<super::kernels::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Kernels.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
