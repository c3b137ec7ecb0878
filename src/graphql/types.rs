//! The object types of both schemas, over the SeaORM rows.

use async_graphql::{Context, Object, Result, ID};
use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, vfolders};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::ActiveEnum;

use super::loaders::{LiveStats, Loaders, Owner, SessionsOf, VfoldersOf, WorkersOf};
use super::{bad_request, internal};

fn timestamp(at: &DateTimeWithTimeZone) -> String {
    at.to_rfc3339()
}

/// The queue fields of a PENDING session (`None` for any other).
async fn pending_info(ctx: &Context<'_>, kernel: &kernels::Model) -> Result<Option<crate::scheduler::PendingInfo>> {
    if kernel.status != KernelStatus::Pending {
        return Ok(None);
    }
    let core = &ctx.data::<super::GqlContext>()?.core;
    crate::scheduler::pending_info(core, kernel).await.map(Some).map_err(|e| async_graphql::Error::new(e.to_string()))
}

/// Parses a session status argument (a String, as 1.0.x declared it).
pub fn kernel_status(status: Option<String>) -> Result<Option<KernelStatus>> {
    status
        .map(|s| KernelStatus::try_from_value(&s).map_err(|_| bad_request(format!("unknown session status: {s}"))))
        .transpose()
}

/// Parses an agent status argument.
pub fn agent_status(status: Option<String>) -> Result<Option<AgentStatus>> {
    status
        .map(|s| AgentStatus::try_from_value(&s).map_err(|_| bad_request(format!("unknown agent status: {s}"))))
        .transpose()
}

/// Sessions of `owner` through the batched loader.
pub async fn sessions_of(ctx: &Context<'_>, owner: Owner, status: Option<String>) -> Result<Vec<ComputeSession>> {
    let key = SessionsOf { owner, status: kernel_status(status)? };
    let rows = ctx.data::<Loaders>()?.load_one(key).await.map_err(internal)?;
    Ok(rows.unwrap_or_default().into_iter().map(ComputeSession).collect())
}

/// Worker kernels of a session token through the batched loader.
pub async fn workers_of(
    ctx: &Context<'_>,
    sess_id: String,
    access_key: Option<String>,
    status: Option<String>,
) -> Result<Vec<ComputeWorker>> {
    let key = WorkersOf { sess_id, access_key, status: kernel_status(status)? };
    let rows = ctx.data::<Loaders>()?.load_one(key).await.map_err(internal)?;
    Ok(rows.unwrap_or_default().into_iter().map(ComputeWorker).collect())
}

/// Virtual folders of an access key through the batched loader.
pub async fn vfolders_of(ctx: &Context<'_>, access_key: String) -> Result<Vec<VirtualFolder>> {
    let rows = ctx.data::<Loaders>()?.load_one(VfoldersOf(access_key)).await.map_err(internal)?;
    Ok(rows.unwrap_or_default().into_iter().map(VirtualFolder).collect())
}

/// A usage figure of a kernel: live from the stat store while it runs, else (or
/// when the store has nothing) the row's column, final once it ended.
async fn stat(ctx: &Context<'_>, kernel: &kernels::Model, name: &str, stored: i64) -> i64 {
    if !kernel.status.is_live() {
        return stored;
    }
    let Ok(loaders) = ctx.data::<Loaders>() else { return stored };
    match loaders.load_one(LiveStats(kernel.id)).await {
        Ok(Some(stats)) => stats.get(name).copied().unwrap_or(stored),
        _ => stored,
    }
}

/// The fields every kernel shows, for sessions (main kernels) and workers alike.
macro_rules! kernel_object {
    ($(#[$doc:meta])* $name:ident $(, $workers:ident)?) => {
        $(#[$doc])*
        pub struct $name(pub kernels::Model);

        #[Object(rename_fields = "snake_case", rename_args = "snake_case")]
        impl $name {
            /// The client's session token.
            async fn sess_id(&self) -> &str {
                &self.0.sess_id
            }
            /// The kernel's id.
            async fn id(&self) -> ID {
                ID(self.0.id.to_string())
            }
            /// `master` for a session's main kernel.
            async fn role(&self) -> &str {
                &self.0.role
            }
            /// The image, `name:tag`.
            async fn lang(&self) -> &str {
                &self.0.lang
            }
            /// PREPARING, RUNNING, TERMINATED, ...
            async fn status(&self) -> String {
                self.0.status.to_value()
            }
            /// Why it is in that status.
            async fn status_info(&self) -> Option<&str> {
                self.0.status_info.as_deref()
            }
            /// While PENDING: its place in the queue (0: the head).
            async fn queue_position(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
                Ok(pending_info(ctx, &self.0).await?.map(|info| i32::try_from(info.queue_position).unwrap_or(i32::MAX)))
            }
            /// While PENDING: why it waits.
            async fn pending_reason(&self, ctx: &Context<'_>) -> Result<Option<String>> {
                Ok(pending_info(ctx, &self.0).await?.map(|info| info.pending_reason))
            }
            /// ISO 8601.
            async fn created_at(&self) -> String {
                timestamp(&self.0.created_at)
            }
            /// ISO 8601, once ended.
            async fn terminated_at(&self) -> Option<String> {
                self.0.terminated_at.as_ref().map(timestamp)
            }
            /// The agent running it.
            async fn agent(&self) -> Option<&str> {
                self.0.agent.as_deref()
            }
            /// The runtime's id of the kernel.
            async fn container_id(&self) -> Option<&str> {
                self.0.container_id.as_deref()
            }
            /// Reserved memory (MiB).
            async fn mem_slot(&self) -> i64 {
                self.0.mem_slot
            }
            /// Reserved CPU cores.
            async fn cpu_slot(&self) -> f64 {
                self.0.cpu_slot
            }
            /// Reserved GPUs.
            async fn gpu_slot(&self) -> f64 {
                self.0.gpu_slot
            }
            /// Execute calls served (as last written).
            async fn num_queries(&self) -> i64 {
                self.0.num_queries
            }
            /// CPU time used, in milliseconds.
            async fn cpu_used(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "cpu_used", self.0.cpu_used).await
            }
            /// Peak memory, in bytes.
            async fn mem_max_bytes(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "mem_max_bytes", self.0.mem_max_bytes).await
            }
            /// Current memory, in bytes.
            async fn mem_cur_bytes(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "mem_cur_bytes", self.0.mem_cur_bytes).await
            }
            /// Network bytes received.
            async fn net_rx_bytes(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "net_rx_bytes", self.0.net_rx_bytes).await
            }
            /// Network bytes sent.
            async fn net_tx_bytes(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "net_tx_bytes", self.0.net_tx_bytes).await
            }
            /// Bytes read from storage.
            async fn io_read_bytes(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "io_read_bytes", self.0.io_read_bytes).await
            }
            /// Bytes written to storage.
            async fn io_write_bytes(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "io_write_bytes", self.0.io_write_bytes).await
            }
            /// Peak size of the scratch directory, in bytes.
            async fn io_max_scratch_size(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "io_max_scratch_size", self.0.io_max_scratch_size).await
            }
            /// Current size of the scratch directory, in bytes.
            async fn io_cur_scratch_size(&self, ctx: &Context<'_>) -> i64 {
                stat(ctx, &self.0, "io_cur_scratch_size", self.0.io_cur_scratch_size).await
            }
            $(
                /// The session's worker kernels (batched across sessions).
                #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
                async fn $workers(&self, ctx: &Context<'_>, status: Option<String>) -> Result<Vec<ComputeWorker>> {
                    workers_of(ctx, self.0.sess_id.clone(), Some(self.0.access_key.clone()), status).await
                }
            )?
        }
    };
}

kernel_object! {
    /// A compute session: the main kernel of a session token, with its workers.
    ComputeSession, workers
}

kernel_object! {
    /// A worker kernel of a compute session (every kernel whose role is not `master`).
    ComputeWorker
}

/// An API keypair.
pub struct KeyPair(pub keypairs::Model);

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl KeyPair {
    /// The user owning the key.
    async fn user_id(&self) -> &str {
        &self.0.user_id
    }
    /// The public half of the credential.
    async fn access_key(&self) -> &str {
        &self.0.access_key
    }
    /// The secret half.
    async fn secret_key(&self) -> &str {
        &self.0.secret_key
    }
    /// Inactive keys are refused.
    async fn is_active(&self) -> bool {
        self.0.is_active
    }
    /// Admin keys get the admin schema.
    async fn is_admin(&self) -> bool {
        self.0.is_admin
    }
    /// Name of the resource policy.
    async fn resource_policy(&self) -> Option<&str> {
        self.0.resource_policy.as_deref()
    }
    /// ISO 8601.
    async fn created_at(&self) -> String {
        timestamp(&self.0.created_at)
    }
    /// ISO 8601, when the key last signed a request.
    async fn last_used(&self) -> Option<String> {
        self.0.last_used.as_ref().map(timestamp)
    }
    /// How many live sessions the key may own at once.
    async fn concurrency_limit(&self) -> i32 {
        self.0.concurrency_limit
    }
    /// How many live sessions the key owns now.
    async fn concurrency_used(&self) -> i32 {
        self.0.concurrency_used
    }
    /// Requests allowed per 15-minute window.
    async fn rate_limit(&self) -> i32 {
        self.0.rate_limit
    }
    /// Seconds a session of the key may go unused before it is reclaimed (0: never).
    async fn idle_timeout(&self) -> i32 {
        self.0.idle_timeout
    }
    /// Seconds a session of the key may run at all (0: no limit).
    async fn max_session_lifetime(&self) -> i32 {
        self.0.max_session_lifetime
    }
    /// Requests signed with this key, ever.
    async fn num_queries(&self) -> i64 {
        self.0.num_queries
    }
    /// The key's sessions (batched across keypairs).
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn compute_sessions(&self, ctx: &Context<'_>, status: Option<String>) -> Result<Vec<ComputeSession>> {
        sessions_of(ctx, Owner::Key(self.0.access_key.clone()), status).await
    }
    /// The key's virtual folders (batched across keypairs).
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn vfolders(&self, ctx: &Context<'_>) -> Result<Vec<VirtualFolder>> {
        vfolders_of(ctx, self.0.access_key.clone()).await
    }
}

/// An agent with its slots.
pub struct Agent(pub agents::Model);

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl Agent {
    /// The agent's id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// ALIVE, LOST, RESTARTING or TERMINATED.
    async fn status(&self) -> String {
        self.0.status.to_value()
    }
    /// Region label.
    async fn region(&self) -> &str {
        &self.0.region
    }
    /// `host:port` of its RPC server.
    async fn addr(&self) -> &str {
        &self.0.addr
    }
    /// ISO 8601.
    async fn first_contact(&self) -> String {
        timestamp(&self.0.first_contact)
    }
    /// ISO 8601, when declared lost.
    async fn lost_at(&self) -> Option<String> {
        self.0.lost_at.as_ref().map(timestamp)
    }
    /// Memory slots (MiB), overbooked.
    async fn mem_slots(&self) -> i64 {
        self.0.mem_slots
    }
    /// CPU slots (cores), overbooked.
    async fn cpu_slots(&self) -> f64 {
        self.0.cpu_slots
    }
    /// GPU slots, overbooked.
    async fn gpu_slots(&self) -> f64 {
        self.0.gpu_slots
    }
    /// Memory slots reserved by live sessions.
    async fn used_mem_slots(&self) -> i64 {
        self.0.used_mem_slots
    }
    /// CPU slots reserved by live sessions.
    async fn used_cpu_slots(&self) -> f64 {
        self.0.used_cpu_slots
    }
    /// GPU slots reserved by live sessions.
    async fn used_gpu_slots(&self) -> f64 {
        self.0.used_gpu_slots
    }
    /// The sessions placed on the agent (batched across agents).
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn computations(&self, ctx: &Context<'_>, status: Option<String>) -> Result<Vec<ComputeSession>> {
        sessions_of(ctx, Owner::Agent(self.0.id.clone()), status).await
    }
}

/// A virtual folder.
pub struct VirtualFolder(pub vfolders::Model);

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl VirtualFolder {
    /// The folder's id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The storage host holding it.
    async fn host(&self) -> &str {
        &self.0.host
    }
    /// Its name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Most files it may hold.
    async fn max_files(&self) -> i32 {
        self.0.max_files
    }
    /// Most bytes it may hold.
    async fn max_size(&self) -> i64 {
        self.0.max_size
    }
    /// Files it holds now.
    async fn num_files(&self) -> i32 {
        self.0.num_files
    }
    /// Bytes it holds now.
    async fn cur_size(&self) -> i64 {
        self.0.cur_size
    }
    /// ISO 8601.
    async fn created_at(&self) -> String {
        timestamp(&self.0.created_at)
    }
    /// ISO 8601, when a session last mounted it.
    async fn last_used(&self) -> Option<String> {
        self.0.last_used.as_ref().map(timestamp)
    }
}
