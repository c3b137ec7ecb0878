//! The kernel session API as plain async functions: handlers call these, these
//! talk to the session actors through the registry.

use actix::Addr;
use std::collections::BTreeMap;

use chrono::Utc;
use entity::kernels;
use sea_orm::EntityTrait;
use serde_json::Value;
use uuid::Uuid;

use crate::actors::keypair;
use crate::actors::messages::{
    Complete, Destroy, Execute, GetKernel, GetSessionActor, Interrupt, KernelRead, KernelTerminated, ReadKernel,
    Restart, StartError, StartKernel, UploadFile,
};
use crate::actors::registry::Registry;
use crate::actors::session::SessionActor;
use crate::error::{ApiError, Error, Problem};
use crate::images::{self, ResolvedImage};
use crate::ledger;
use crate::state::AppState;
use crate::vfolders;
use protocol::{KernelLimits, KernelSpec, MountSpec};

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

/// Gets or creates the session `token` of `access_key`; returns whether it was created.
/// A live session of that token with another image is refused (`kernel-already-exists`).
#[tracing::instrument(name = "sessions::create", skip_all, fields(access_key = %access_key, token = %request.token))]
pub async fn create(state: &AppState, access_key: &str, request: CreateRequest) -> Result<bool, Error> {
    validate_token(&request.token, request.api_version)?;
    protocol::validate_environ(&request.environ)
        .map_err(|why| ApiError::new(Problem::InvalidApiParams).with_detail(why))?;
    let mut image = images::resolve_image(&state.images, state.stores.config.as_ref(), &request.lang).await?;
    if let Some(existing) = ledger::live_session(&state.db, access_key, &request.token).await? {
        return reuse(&state.registry, existing, &image).await;
    }
    clamp(&mut image, request.resources);
    let mounts = vfolders::mounts(&state.db, access_key, &request.mounts).await?;
    let spec = KernelSpec {
        kernel_id: String::new(),
        image: image.spec.clone(),
        limits: KernelLimits {
            cpu_slot: image.cpu,
            mem_slot: image.mem,
            gpu_slot: image.gpu,
            exec_timeout: (request.exec_timeout > 0).then_some(request.exec_timeout as f64),
            max_output_bytes: None,
        },
        mounts: mounts
            .iter()
            .map(|m| MountSpec {
                name: m.folder.name.clone(),
                path: vfolders::files::dir_of(&state.settings, &m.folder).to_string_lossy().into_owned(),
                read_only: m.read_only,
            })
            .collect(),
        environ: request.environ,
    };
    // Agents found unreachable: an agent that just died still looks alive for up to
    // two heartbeat intervals, and a create that never reached it is placed again.
    let mut avoid: Vec<String> = Vec::new();
    loop {
        let (kernel, created) =
            keypair::reserve(&state.registry, &state.directory, access_key, &request.token, &image, &avoid).await?;
        if !created {
            return reuse(&state.registry, kernel, &image).await;
        }
        let agent = kernel.agent.clone();
        vfolders::attach(&state.db, kernel.id, &mounts).await?;
        let actor = session_actor(&state.registry, kernel).await?;
        match actor.send(StartKernel { spec: spec.clone() }).await? {
            Ok(()) => return Ok(true),
            Err(StartError { unreachable: true, .. }) if avoid.len() + 1 < MAX_PLACEMENTS => {
                tracing::warn!(
                    agent = agent.as_deref().unwrap_or_default(),
                    "agent unreachable: placing the session again"
                );
                avoid.extend(agent);
            }
            Err(failed) => return Err(failed.error),
        }
    }
}

/// The answer to a create that found the session live: reused (once started) if it
/// runs the same image, `kernel-already-exists` otherwise.
async fn reuse(registry: &Addr<Registry>, existing: kernels::Model, image: &ResolvedImage) -> Result<bool, Error> {
    if existing.lang != image.reference() {
        return Err(ApiError::new(Problem::KernelAlreadyExists).into());
    }
    wait_until_started(registry, existing).await?;
    Ok(false)
}

/// How many agents a create tries when the ones it was placed on cannot be reached.
const MAX_PLACEMENTS: usize = 3;

/// Waits until a session another caller is starting is ready (its actor handles
/// the start first); a start that failed ended the session and stopped the actor.
async fn wait_until_started(registry: &Addr<Registry>, kernel: kernels::Model) -> Result<(), Error> {
    match session_actor(registry, kernel).await?.send(GetKernel).await {
        Ok(ready) => ready.map(|_| ()),
        Err(actix::MailboxError::Closed) => Err(ApiError::new(Problem::KernelCreationFailed).into()),
        Err(error) => Err(error.into()),
    }
}

async fn session_actor(registry: &Addr<Registry>, kernel: kernels::Model) -> Result<Addr<SessionActor>, Error> {
    registry.send(GetSessionActor { kernel }).await?
}

/// Ok when `access_key` has a live session `token`; 404 otherwise.
pub async fn require(state: &AppState, access_key: &str, token: &str) -> Result<(), Error> {
    find(state, access_key, token).await.map(|_| ())
}

/// The actor of the live session `token` of `access_key`; 404 for anyone else's.
async fn find(state: &AppState, access_key: &str, token: &str) -> Result<Addr<SessionActor>, Error> {
    // The hot path: a session with a running actor needs no database query.
    if let Some((actor, _)) = state.directory.session(access_key, token) {
        return Ok(actor);
    }
    let kernel = ledger::live_session(&state.db, access_key, token)
        .await?
        .ok_or_else(|| Error::Api(ApiError::new(Problem::KernelNotFound)))?;
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
    let kernel = row(state, access_key, token).await?;
    let live = state.stores.stats.kernel_stat_fields(&kernel.id.to_string(), &["mem_cur_bytes", "cpu_used"]).await;
    let live = live.unwrap_or_default();
    let stat = |index: usize, stored: i64| live.get(index).copied().flatten().unwrap_or(stored);
    Ok(SessionInfo {
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
    ask(state, access_key, token, || Destroy).await
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
