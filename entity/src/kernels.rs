//! A kernel: one compute session of an access key, placed on an agent.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Lifecycle of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KernelStatus {
    /// Waiting in the scheduler's queue for an agent with room; its key's quota is held.
    #[sea_orm(string_value = "PENDING")]
    Pending,
    /// Slots reserved, the agent is starting the kernel.
    #[sea_orm(string_value = "PREPARING")]
    Preparing,
    /// Building (batch mode).
    #[sea_orm(string_value = "BUILDING")]
    Building,
    /// Ready for code.
    #[sea_orm(string_value = "RUNNING")]
    Running,
    /// Getting a fresh interpreter.
    #[sea_orm(string_value = "RESTARTING")]
    Restarting,
    /// Changing its resources.
    #[sea_orm(string_value = "RESIZING")]
    Resizing,
    /// Paused.
    #[sea_orm(string_value = "SUSPENDED")]
    Suspended,
    /// Being destroyed.
    #[sea_orm(string_value = "TERMINATING")]
    Terminating,
    /// Ended; the row stays for accounting.
    #[sea_orm(string_value = "TERMINATED")]
    Terminated,
    /// Ended by a failure.
    #[sea_orm(string_value = "ERROR")]
    Error,
    /// Left the queue without being placed (the create gave up, a pending timeout, a
    /// destroy while pending).
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

impl KernelStatus {
    /// The statuses of sessions that ended: they hold no slots and no quota.
    pub const ENDED: [Self; 3] = [Self::Terminated, Self::Error, Self::Cancelled];

    /// Whether a session in this status still holds quota (and slots, once placed).
    pub fn is_live(self) -> bool {
        !Self::ENDED.contains(&self)
    }
}

/// One row of `kernels`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "kernels")]
pub struct Model {
    /// The kernel's id, also used by the agent.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The client's session token (`clientSessionToken`).
    pub sess_id: String,
    /// `master` for the session's main kernel.
    pub role: String,
    /// The resolved image, `name:tag`.
    pub lang: String,
    /// The owning keypair.
    pub access_key: String,
    /// The agent running it, once placed.
    pub agent: Option<String>,
    /// The agent's RPC address at placement time.
    pub agent_addr: Option<String>,
    /// The runtime's id of the kernel (a container id for Docker).
    pub container_id: Option<String>,
    /// Lifecycle status.
    pub status: KernelStatus,
    /// Why it is in that status (e.g. `agent-lost`).
    pub status_info: Option<String>,
    /// When it was created.
    pub created_at: DateTimeWithTimeZone,
    /// When it ended.
    pub terminated_at: Option<DateTimeWithTimeZone>,
    /// When the scheduler placed it on its agent (none while it is PENDING).
    pub scheduled_at: Option<DateTimeWithTimeZone>,
    /// When it first became RUNNING (its lifetime counts from then).
    pub started_at: Option<DateTimeWithTimeZone>,
    /// When it was last used (an execute, upload, PTY input...), as written in batches.
    pub last_activity: Option<DateTimeWithTimeZone>,
    /// Reserved memory (MiB).
    pub mem_slot: i64,
    /// Reserved CPU cores.
    pub cpu_slot: f64,
    /// Reserved GPUs.
    pub gpu_slot: f64,
    /// Execute calls served.
    pub num_queries: i64,
    /// CPU time used, in milliseconds.
    pub cpu_used: i64,
    /// Peak memory, in bytes.
    pub mem_max_bytes: i64,
    /// Current memory, in bytes.
    pub mem_cur_bytes: i64,
    /// Network bytes received.
    pub net_rx_bytes: i64,
    /// Network bytes sent.
    pub net_tx_bytes: i64,
    /// Bytes read from storage.
    pub io_read_bytes: i64,
    /// Bytes written to storage.
    pub io_write_bytes: i64,
    /// Peak size of the scratch directory, in bytes.
    pub io_max_scratch_size: i64,
    /// Current size of the scratch directory, in bytes.
    pub io_cur_scratch_size: i64,
}

/// Relations of a kernel.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The owning keypair.
    #[sea_orm(
        belongs_to = "super::keypairs::Entity",
        from = "Column::AccessKey",
        to = "super::keypairs::Column::AccessKey"
    )]
    Keypair,
    /// The agent running the kernel.
    #[sea_orm(belongs_to = "super::agents::Entity", from = "Column::Agent", to = "super::agents::Column::Id")]
    Agent,
}

impl Related<super::keypairs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Keypair.def()
    }
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
