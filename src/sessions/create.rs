//! Creating a session: into the scheduler's queue, then started on the agent the
//! scheduler placed it on. The call waits for the placement (clients expect a create
//! to answer with a running session) at most `scheduler.create_wait`; past it the
//! session leaves the queue and the call answers 503.

use std::time::Duration;

use entity::agents::{self, AgentStatus};
use entity::kernels::{self, KernelStatus};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{clamp, session_actor, validate_token, CreateRequest};
use crate::actors::keypair;
use crate::actors::messages::{GetKernel, StartError, StartKernel};
use crate::error::{ApiError, Error, Problem};
use crate::images::{self, ResolvedImage};
use crate::ledger::{self, QueueBounds};
use crate::state::AppState;
use crate::{scheduler, vfolders};
use protocol::{KernelLimits, KernelSpec, MountSpec};

/// How many agents a create tries when the ones it was placed on cannot be reached.
const MAX_PLACEMENTS: usize = 3;

/// Gets or creates the session `token` of `access_key`; returns whether it was created.
/// A live session of that token with another image is refused (`kernel-already-exists`).
#[tracing::instrument(name = "sessions::create", skip_all, fields(access_key = %access_key, token = %request.token))]
pub async fn create(state: &AppState, access_key: &str, request: CreateRequest) -> Result<bool, Error> {
    validate_token(&request.token, request.api_version)?;
    protocol::validate_environ(&request.environ)
        .map_err(|why| ApiError::new(Problem::InvalidApiParams).with_detail(why))?;
    let mut image = images::resolve_image(&state.images, state.stores.config.as_ref(), &request.lang).await?;
    if let Some(existing) = ledger::live_session(&state.db, access_key, &request.token).await? {
        return reuse(state, existing, &image).await;
    }
    clamp(&mut image, request.resources);
    refuse_if_never_fits(state, &image).await?;
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
    let settings = &state.settings.scheduler;
    let bounds = QueueBounds { per_key: settings.max_pending_per_key, total: settings.max_pending };
    // An agent that just died still looks alive for up to two heartbeat intervals: a
    // create that never reached it is placed again, elsewhere.
    for attempt in 1..=MAX_PLACEMENTS {
        let (kernel, created) =
            keypair::enqueue(&state.registry, &state.directory, access_key, &request.token, &image, bounds).await?;
        if !created {
            return reuse(state, kernel, &image).await;
        }
        let kernel = placed(state, kernel).await?;
        let agent = kernel.agent.clone();
        vfolders::attach(&state.db, kernel.id, &mounts).await?;
        let actor = session_actor(&state.registry, kernel).await?;
        match actor.send(StartKernel { spec: spec.clone() }).await? {
            Ok(()) => return Ok(true),
            Err(StartError { unreachable: true, .. }) if attempt < MAX_PLACEMENTS => {
                let agent = agent.unwrap_or_default();
                tracing::warn!(%agent, "agent unreachable: placing the session again");
                let suspect_for = state.settings.manager.heartbeat_timeout;
                scheduler::suspect(state.stores.config.as_ref(), &agent, suspect_for).await;
            }
            Err(failed) => return Err(failed.error),
        }
    }
    Err(ApiError::new(Problem::KernelCreationFailed).into())
}

/// What `POST /scheduler/explain` answers for a create `request`: where its session
/// would go now, or why it would wait. The body is checked as a create's; nothing is
/// created.
pub async fn explain(
    state: &AppState,
    access_key: &str,
    request: CreateRequest,
) -> Result<scheduler::Explanation, Error> {
    validate_token(&request.token, request.api_version)?;
    protocol::validate_environ(&request.environ)
        .map_err(|why| ApiError::new(Problem::InvalidApiParams).with_detail(why))?;
    let mut image = images::resolve_image(&state.images, state.stores.config.as_ref(), &request.lang).await?;
    clamp(&mut image, request.resources);
    let slots = planner::Slots { cpu: image.cpu, mem: image.mem, gpu: image.gpu };
    scheduler::explain(&state.core, access_key, slots).await
}

/// A create that asks for more than any alive agent has could never be placed: 400
/// at once, naming what is short. (With no agent alive it waits: agents may join.)
async fn refuse_if_never_fits(state: &AppState, image: &ResolvedImage) -> Result<(), Error> {
    let alive = agents::Entity::find().filter(agents::Column::Status.eq(AgentStatus::Alive)).all(&state.db).await?;
    if alive.is_empty() {
        return Ok(());
    }
    let largest = |f: fn(&agents::Model) -> f64| alive.iter().map(f).fold(0.0, f64::max);
    let index = planner::Index::new(alive.iter().map(crate::placement::slots_of).collect());
    let slots = planner::Slots { cpu: image.cpu, mem: image.mem, gpu: image.gpu };
    if index.could_ever_fit(slots) {
        return Ok(());
    }
    Err(ApiError::new(Problem::InvalidApiParams)
        .with_detail(format!(
            "no agent could ever hold this session: it asks for {} CPU, {} MiB and {} GPU; the largest agents have {} CPU, {} MiB and {} GPU",
            image.cpu,
            image.mem,
            image.gpu,
            largest(|a| a.cpu_slots),
            largest(|a| a.mem_slots as f64),
            largest(|a| a.gpu_slots),
        ))
        .into())
}

/// Takes a waiting session out of the queue if its create call goes away before the
/// session is placed (the client disconnected: the handler's future is dropped), so it
/// holds no quota and is never placed for nobody.
struct CancelUnlessPlaced {
    waiting: Option<(sea_orm::DatabaseConnection, kernels::Model)>,
}

impl CancelUnlessPlaced {
    fn disarm(mut self) {
        self.waiting = None;
    }
}

impl Drop for CancelUnlessPlaced {
    fn drop(&mut self) {
        if let Some((db, kernel)) = self.waiting.take() {
            tokio::spawn(async move {
                if let Err(error) = ledger::cancel_pending(&db, &[kernel], "create-abandoned").await {
                    tracing::warn!(%error, "could not cancel the session of an abandoned create");
                }
            });
        }
    }
}

/// Wakes the scheduler and waits for it to place `kernel` (its row then, PREPARING on
/// an agent). Past `scheduler.create_wait` the session leaves the queue: 503.
async fn placed(state: &AppState, kernel: kernels::Model) -> Result<kernels::Model, Error> {
    let guard = CancelUnlessPlaced { waiting: Some((state.db.clone(), kernel.clone())) };
    state.core.scheduling.wake(state.stores.config.as_ref()).await;
    let wait = Duration::from_secs_f64(state.settings.scheduler.create_wait);
    let placement = scheduler::await_placement(&state.core, kernel.id, wait).await;
    guard.disarm();
    let row = match placement? {
        Some(row) => row,
        None => {
            if !ledger::cancel_pending(&state.db, std::slice::from_ref(&kernel), "create-timeout").await?.is_empty() {
                return Err(ApiError::new(Problem::InstanceNotAvailable)
                    .with_detail(format!("no agent had room within {wait:?}; the session was cancelled"))
                    .into());
            }
            // Placed (or ended) just now.
            kernels::Entity::find_by_id(kernel.id)
                .one(&state.db)
                .await?
                .ok_or_else(|| Error::Api(ApiError::new(Problem::KernelNotFound)))?
        }
    };
    if !row.status.is_live() {
        let why = row.status_info.clone().unwrap_or_else(|| format!("{:?}", row.status).to_lowercase());
        return Err(ApiError::new(Problem::InstanceNotAvailable)
            .with_detail(format!("the session left the queue: {why}"))
            .into());
    }
    Ok(row)
}

/// The answer to a create that found the session live: reused (once placed and
/// started) if it runs the same image, `kernel-already-exists` otherwise.
async fn reuse(state: &AppState, existing: kernels::Model, image: &ResolvedImage) -> Result<bool, Error> {
    if existing.lang != image.reference() {
        return Err(ApiError::new(Problem::KernelAlreadyExists).into());
    }
    let existing = if existing.status == KernelStatus::Pending {
        let wait = Duration::from_secs_f64(state.settings.scheduler.create_wait);
        match scheduler::await_placement(&state.core, existing.id, wait).await? {
            Some(row) if row.status.is_live() => row,
            Some(_) => {
                return Err(ApiError::new(Problem::InstanceNotAvailable)
                    .with_detail("the session left the queue")
                    .into())
            }
            None => {
                return Err(ApiError::new(Problem::InstanceNotAvailable)
                    .with_detail("the session is still waiting for an agent with room")
                    .into())
            }
        }
    } else {
        existing
    };
    wait_until_started(state, existing).await?;
    Ok(false)
}

/// Waits until a session another caller is starting is ready: no longer PREPARING (a
/// start that failed ended the session and stopped the actor), at most the agent's
/// create timeout and a margin.
async fn wait_until_started(state: &AppState, kernel: kernels::Model) -> Result<(), Error> {
    let deadline = std::time::Instant::now()
        + Duration::from_secs_f64(state.settings.manager.agent_create_timeout)
        + Duration::from_secs(5);
    let actor = session_actor(&state.registry, kernel).await?;
    loop {
        let row = match actor.send(GetKernel).await {
            Ok(row) => row?,
            Err(actix::MailboxError::Closed) => return Err(ApiError::new(Problem::KernelCreationFailed).into()),
            Err(error) => return Err(error.into()),
        };
        if row.status != KernelStatus::Preparing {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::new(Problem::KernelCreationFailed)
                .with_detail("the session did not start in time")
                .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
