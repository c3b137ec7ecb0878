//! Messages between the HTTP layer, the registry and its child actors.

use std::sync::Arc;

use actix::prelude::*;
use entity::{kernels, keypairs};
use serde_json::Value;
use uuid::Uuid;

use super::agent::AgentActor;
use super::registry::KeypairEntry;
use super::session::SessionActor;
use crate::error::Error;
use crate::images::ResolvedImage;
use protocol::KernelSpec;

/// Registry: the actor of an access key (and what it shares), started if it is not running.
#[derive(Message)]
#[rtype(result = "Result<KeypairEntry, Error>")]
pub struct GetKeypairActor {
    /// The access key.
    pub access_key: String,
}

/// Registry: a keypair actor stopped (sent from its `stopping`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeypairActorStopped {
    /// The access key it served.
    pub access_key: String,
}

/// Registry: flush and stop every child, for a graceful shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Keypair actor: the key's row, from the cache while it is fresh
/// (`None` when no such key exists).
#[derive(Message)]
#[rtype(result = "Result<Option<Arc<keypairs::Model>>, Error>")]
pub struct LookupKeypair;

/// Keypair actor: charge the key's concurrency quota and put a new session in the
/// scheduler's queue (one transaction), or find the key's live session of that token
/// (`false`: not created).
#[derive(Message)]
#[rtype(result = "Result<(kernels::Model, bool), Error>")]
pub struct EnqueueSession {
    /// The client's session token.
    pub token: String,
    /// The image and its slots.
    pub image: ResolvedImage,
    /// The queue's bounds.
    pub bounds: crate::ledger::QueueBounds,
}

/// Keypair actor: write the counted requests now.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct FlushUsage;

/// Registry: the actor of a live session, started from its row if not running.
#[derive(Message)]
#[rtype(result = "Result<Addr<SessionActor>, Error>")]
pub struct GetSessionActor {
    /// The session's row, as just read from the database.
    pub kernel: kernels::Model,
}

/// Registry: a session actor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionActorStopped {
    /// The kernel it served.
    pub kernel_id: Uuid,
}

/// Session: start the kernel on its agent (PREPARING -> RUNNING, or ERROR and
/// the reservation released).
#[derive(Message)]
#[rtype(result = "Result<(), StartError>")]
pub struct StartKernel {
    /// What the agent starts (its `kernel_id` is the session's kernel).
    pub spec: KernelSpec,
}

/// Why a session did not start (it has ended, its reservation released).
#[derive(Debug)]
pub struct StartError {
    /// The answer.
    pub error: Error,
    /// No connection to its agent could be made: nothing was started there, and the
    /// session may be placed on another agent.
    pub unreachable: bool,
}

/// Session: run or resume code; the answer is the agent's v2 result.
#[derive(Message)]
#[rtype(result = "Result<Value, Error>")]
pub struct Execute {
    /// `{api_version, run_id, mode, code, options}` for the agent.
    pub request: Value,
}

/// Session: a fresh interpreter with the same resources.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Restart;

/// Session: interrupt the running code.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Interrupt;

/// Session: completions at a cursor.
#[derive(Message)]
#[rtype(result = "Result<Value, Error>")]
pub struct Complete {
    /// The code before the cursor.
    pub code: String,
    /// `{row, col, line, post}`.
    pub options: Value,
}

/// Session: write one file into the kernel's working directory.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct UploadFile {
    /// The relative path.
    pub path: String,
    /// Its content (at most 1 MiB).
    pub data: bytes::Bytes,
}

/// Session: read the kernel's logs or files.
#[derive(Message)]
#[rtype(result = "Result<KernelRead, Error>")]
pub enum ReadKernel {
    /// The recent console output.
    Logs,
    /// The listing of a directory (a path as the kernel sees it).
    Files(String),
    /// A tar archive of a file or directory.
    Download(String),
}

/// The answer to [`ReadKernel`].
#[derive(Debug)]
pub enum KernelRead {
    /// Logs or a listing, as the agent answered.
    Json(Value),
    /// A tar archive.
    Tar(bytes::Bytes),
}

/// Session: destroy the kernel; the answer is its final stats.
#[derive(Message)]
#[rtype(result = "Result<Value, Error>")]
pub struct Destroy {
    /// Why (the session's `status_info` once TERMINATED): `user-requested`, or a
    /// reclaim (`idle-timeout`, `lifetime-exceeded`).
    pub reason: &'static str,
}

/// Session: the agent reported the kernel's end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KernelTerminated {
    /// Why.
    pub reason: protocol::TerminationReason,
    /// Its final stats.
    pub stats: protocol::KernelStats,
}

/// Session actor: stop serving the session, writing nothing more about it: it ended
/// elsewhere (its agent was lost or terminated), or the manager shuts down. Its cached
/// row is marked not live first, so a message still in the mailbox is refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetireSession;

/// Registry: sessions ended without their actor (agent lost or terminated).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionsEnded {
    /// The kernels.
    pub kernel_ids: Vec<Uuid>,
}

/// Session: the session's row, with the queries counted so far.
#[derive(Message)]
#[rtype(result = "Result<kernels::Model, Error>")]
pub struct GetKernel;

pub use protocol::AgentReport;

/// Registry: the actor of an agent, started if not running.
#[derive(Message)]
#[rtype(result = "Result<Addr<AgentActor>, Error>")]
pub struct GetAgentActor {
    /// The agent's id.
    pub agent_id: String,
}

/// Registry: an agent actor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentActorStopped {
    /// The agent's id.
    pub agent_id: String,
}

/// Agent: a heartbeat (or the first report after the agent started).
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct AgentHeartbeat {
    /// What it reported.
    pub report: AgentReport,
    /// Whether it just started (its previous kernels are gone).
    pub started: bool,
}

/// Agent: it stopped gracefully.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct AgentTerminated;

/// Agent: it was declared lost (by this or another manager); stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentLost;

/// Registry: agents were declared lost (their sessions ended); stop their actors.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentsLost {
    /// The agents.
    pub agent_ids: Vec<String>,
}
