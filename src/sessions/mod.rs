//! The kernel session API as plain async functions: handlers call these, these
//! talk to the session actors through the registry.

use actix::Addr;
use std::collections::BTreeMap;

use chrono::Utc;
use entity::kernels::{self, KernelStatus};
use sea_orm::EntityTrait;
use serde_json::Value;
use uuid::Uuid;

use crate::actors::messages::{
    Complete, Destroy, Execute, GetKernel, GetSessionActor, Interrupt, KernelRead, KernelTerminated, ReadKernel,
    Restart, UploadFile,
};
use crate::actors::registry::Registry;
use crate::actors::session::SessionActor;
use crate::error::{ApiError, Error, Problem};
use crate::images::ResolvedImage;
use crate::ledger;
use crate::state::AppState;

mod create;

pub use create::{create, explain};

/// What a client asks for when creating a session.
pub struct CreateRequest {
    /// The image or alias.
    pub lang: String,
    /// The client's session token (see [`validate_token`]).
    pub token: String,
    /// The API major version of the call (it decides the token rule).
    pub api_version: u8,
    /// Seconds a run may take; 0 for the default.
    pub exec_timeout: u64,
    /// Names of virtual folders to mount.
    pub mounts: Vec<String>,
    /// Environment variables of the kernel.
    pub environ: BTreeMap<String, String>,
    /// Resources asked for, each clamped to the image's: CPU cores, memory (MiB), GPUs.
    pub resources: Resources,
}

/// Resources a create asks for; `None` takes the image's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// CPU cores.
    pub cpu: Option<f64>,
    /// Memory in MiB.
    pub mem: Option<i64>,
    /// GPUs.
    pub gpu: Option<f64>,
}

/// Checks a client session token. API 4 (client 1.5): 4 to 64 ASCII word characters,
/// `.` or `-`, starting and ending with a word character, as manager 1.4 checks.
/// Earlier versions: 4 to 80 printable characters without `/` (clients 1.1 to 1.4 let
/// users pick tokens as short as API 4 does).
pub fn validate_token(token: &str, api_version: u8) -> Result<(), ApiError> {
    if api_version >= 4 {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let bytes = token.as_bytes();
        let ok = (4..=64).contains(&bytes.len())
            && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
            && bytes.first().is_some_and(|&b| word(b))
            && bytes.last().is_some_and(|&b| word(b));
        if !ok {
            return Err(ApiError::new(Problem::InvalidApiParams).with_detail(
                "clientSessionToken must be 4 to 64 letters, digits, '_', '.' or '-', \
                 starting and ending with a letter, digit or '_'",
            ));
        }
        return Ok(());
    }
    let length = token.chars().count();
    if !(4..=80).contains(&length) || token.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::new(Problem::InvalidApiParams)
            .with_detail("clientSessionToken must be 4 to 80 characters without '/'"));
    }
    Ok(())
}

/// Clamps the image's resources down to what the request asks for.
fn clamp(image: &mut ResolvedImage, asked: Resources) {
    if let Some(cpu) = asked.cpu {
        image.cpu = image.cpu.min(cpu);
    }
    if let Some(mem) = asked.mem {
        image.mem = image.mem.min(mem);
    }
    if let Some(gpu) = asked.gpu {
        image.gpu = image.gpu.min(gpu);
    }
}

async fn session_actor(registry: &Addr<Registry>, kernel: kernels::Model) -> Result<Addr<SessionActor>, Error> {
    registry.send(GetSessionActor { kernel }).await?
}

/// Ok when `access_key` has a live session `token`; 404 otherwise.
pub async fn require(state: &AppState, access_key: &str, token: &str) -> Result<(), Error> {
    find(state, access_key, token).await.map(|_| ())
}

/// The actor of the live session `token` of `access_key`; 404 for anyone else's, 503
/// while it waits in the queue (it has no kernel yet).
async fn find(state: &AppState, access_key: &str, token: &str) -> Result<Addr<SessionActor>, Error> {
    // The hot path: a session with a running actor needs no database query.
    if let Some((actor, _)) = state.directory.session(access_key, token) {
        return Ok(actor);
    }
    let kernel = ledger::live_session(&state.db, access_key, token)
        .await?
        .ok_or_else(|| Error::Api(ApiError::new(Problem::KernelNotFound)))?;
    if kernel.status == KernelStatus::Pending {
        return Err(ApiError::new(Problem::ServiceUnavailable)
            .with_detail("the session is waiting for an agent with room (PENDING)")
            .into());
    }
    session_actor(&state.registry, kernel).await
}

/// Sends a message to the session's actor. An actor stops when its session ends,
/// so a closed mailbox means: look again (and answer 404 if it ended).
async fn ask<M, T>(state: &AppState, access_key: &str, token: &str, message: impl Fn() -> M) -> Result<T, Error>
where
    M: actix::Message<Result = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
    SessionActor: actix::Handler<M>,
{
    for _ in 0..2 {
        match find(state, access_key, token).await?.send(message()).await {
            Err(actix::MailboxError::Closed) => continue,
            answer => return answer?,
        }
    }
    Err(ApiError::new(Problem::KernelNotFound).into())
}

/// The contract's session info object.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The session's status (`PENDING`, `PREPARING`, `RUNNING`, ...).
    status: KernelStatus,
    /// Its place in the queue while PENDING (0: the head).
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_position: Option<usize>,
    /// Why it waits, while PENDING.
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_reason: Option<String>,
    lang: String,
    /// Milliseconds since creation.
    age: i64,
    /// KiB.
    memory_limit: i64,
    num_queries_executed: i64,
    /// KiB.
    memory_used: i64,
    cpu_credit_used: i64,
    query_timeout: i64,
    idle_timeout: i64,
    max_cpu_credit: i64,
    idle: i64,
}

/// The row of the live session `token` of `access_key`, as its actor knows it (its
/// published copy while fresh); 404 for anyone else's.
pub async fn row(state: &AppState, access_key: &str, token: &str) -> Result<std::sync::Arc<kernels::Model>, Error> {
    match state.directory.session_row(access_key, token) {
        Some(kernel) => Ok(kernel),
        None => Ok(std::sync::Arc::new(ask(state, access_key, token, || GetKernel).await?)),
    }
}

/// `GET /kernel/{token}`: the contract's info object, with live stats.
#[tracing::instrument(name = "sessions::info", skip_all, level = "debug", fields(access_key = %access_key, token = %token))]
pub async fn info(state: &AppState, access_key: &str, token: &str) -> Result<SessionInfo, Error> {
    // The hot path: the session actor's published row, while it is fresh.
    let kernel = match state.directory.session_row(access_key, token) {
        Some(kernel) => kernel,
        None => match ledger::live_session(&state.db, access_key, token).await? {
            Some(kernel) if kernel.status == KernelStatus::Pending => return pending_info(state, kernel).await,
            _ => std::sync::Arc::new(ask(state, access_key, token, || GetKernel).await?),
        },
    };
    let live = state.stores.stats.kernel_stat_fields(&kernel.id.to_string(), &["mem_cur_bytes", "cpu_used"]).await;
    let live = live.unwrap_or_default();
    let stat = |index: usize, stored: i64| live.get(index).copied().flatten().unwrap_or(stored);
    Ok(SessionInfo {
        status: kernel.status,
        queue_position: None,
        pending_reason: None,
        lang: kernel.lang.clone(),
        age: (Utc::now() - kernel.created_at.with_timezone(&Utc)).num_milliseconds().max(0),
        memory_limit: kernel.mem_slot * 1024,
        num_queries_executed: kernel.num_queries,
        memory_used: stat(0, kernel.mem_cur_bytes) / 1024,
        cpu_credit_used: stat(1, kernel.cpu_used),
        query_timeout: -1,
        idle_timeout: -1,
        max_cpu_credit: -1,
        idle: -1,
    })
}

/// The info of a session waiting in the queue: where it is, and why.
async fn pending_info(state: &AppState, kernel: kernels::Model) -> Result<SessionInfo, Error> {
    let queue = crate::scheduler::pending_info(&state.core, &kernel).await?;
    Ok(SessionInfo {
        status: kernel.status,
        queue_position: Some(queue.queue_position),
        pending_reason: Some(queue.pending_reason),
        lang: kernel.lang.clone(),
        age: (Utc::now() - kernel.created_at.with_timezone(&Utc)).num_milliseconds().max(0),
        memory_limit: kernel.mem_slot * 1024,
        num_queries_executed: 0,
        memory_used: 0,
        cpu_credit_used: 0,
        query_timeout: -1,
        idle_timeout: -1,
        max_cpu_credit: -1,
        idle: -1,
    })
}

/// Runs or resumes code; the v2 result.
#[tracing::instrument(name = "sessions::execute", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn execute(state: &AppState, access_key: &str, token: &str, request: Value) -> Result<Value, Error> {
    ask(state, access_key, token, || Execute { request: request.clone() }).await
}

/// A fresh interpreter with the same resources.
#[tracing::instrument(name = "sessions::restart", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn restart(state: &AppState, access_key: &str, token: &str) -> Result<(), Error> {
    ask(state, access_key, token, || Restart).await
}

/// Interrupts the running code.
#[tracing::instrument(name = "sessions::interrupt", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn interrupt(state: &AppState, access_key: &str, token: &str) -> Result<(), Error> {
    ask(state, access_key, token, || Interrupt).await
}

/// Completions at a cursor.
#[tracing::instrument(name = "sessions::complete", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn complete(
    state: &AppState,
    access_key: &str,
    token: &str,
    code: String,
    options: Value,
) -> Result<Value, Error> {
    ask(state, access_key, token, || Complete { code: code.clone(), options: options.clone() }).await
}

/// Writes one file into the session's working directory.
#[tracing::instrument(name = "sessions::upload", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn upload(
    state: &AppState,
    access_key: &str,
    token: &str,
    path: String,
    data: bytes::Bytes,
) -> Result<(), Error> {
    ask(state, access_key, token, || UploadFile { path: path.clone(), data: data.clone() }).await
}

/// Reads the session's logs or files.
#[tracing::instrument(name = "sessions::read", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn read(
    state: &AppState,
    access_key: &str,
    token: &str,
    what: impl Fn() -> ReadKernel,
) -> Result<KernelRead, Error> {
    ask(state, access_key, token, what).await
}

/// Destroys the session; its final stats.
#[tracing::instrument(name = "sessions::destroy", skip_all, fields(access_key = %access_key, token = %token))]
pub async fn destroy(state: &AppState, access_key: &str, token: &str) -> Result<Value, Error> {
    if state.directory.session(access_key, token).is_none() {
        // A session still in the queue leaves it (unless it is being placed just now).
        let waiting = ledger::live_session(&state.db, access_key, token).await?;
        if let Some(kernel) = waiting.filter(|k| k.status == KernelStatus::Pending) {
            if !ledger::cancel_pending(&state.db, std::slice::from_ref(&kernel), "user-requested").await?.is_empty() {
                return Ok(serde_json::json!({}));
            }
        }
    }
    let stats = ask(state, access_key, token, || Destroy { reason: "user-requested" }).await?;
    // Its room may fit a waiting session.
    state.core.scheduling.nudge();
    Ok(stats)
}

/// The agent reported that a kernel ended (by itself, or destroyed). Idempotent: a
/// session that already ended is left as it is.
#[tracing::instrument(name = "sessions::kernel_terminated", skip_all, fields(kernel = %kernel_id))]
pub async fn kernel_terminated(
    db: &sea_orm::DatabaseConnection,
    registry: &Addr<Registry>,
    kernel_id: Uuid,
    reason: protocol::TerminationReason,
    stats: protocol::KernelStats,
) -> Result<(), Error> {
    // The session's actor may stop between the read and the message (it was ending the
    // session itself, e.g. a destroy): read again.
    for _ in 0..3 {
        let Some(kernel) = kernels::Entity::find_by_id(kernel_id).one(db).await? else {
            return Ok(());
        };
        if !kernel.status.is_live() {
            return Ok(());
        }
        match session_actor(registry, kernel).await?.send(KernelTerminated { reason, stats }).await {
            Err(actix::MailboxError::Closed) => continue,
            answer => return Ok(answer?),
        }
    }
    Err(actix::MailboxError::Closed.into())
}
