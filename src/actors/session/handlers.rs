use actix::prelude::*;
use entity::kernels::KernelStatus;
use serde_json::Value;
use tracing::Instrument;

use sea_orm::EntityTrait;

use super::{SessionActor, ROW_TTL};
use crate::actors::messages::{
    Complete, Destroy, Execute, GetKernel, Interrupt, KernelRead, KernelTerminated, ReadKernel, Restart, RetireSession,
    StartError, StartKernel, UploadFile,
};
use crate::agent_client::{AgentClient, AgentError};
use crate::error::{ApiError, Error, Problem};
use crate::ledger::{self, Ending};
use protocol::{KernelSpec, KernelStats};

impl SessionActor {
    /// The agent client, while the session is live.
    fn live_agent(&self) -> Result<AgentClient, Error> {
        if !self.kernel.status.is_live() {
            return Err(ApiError::new(Problem::KernelNotFound).into());
        }
        self.agent.clone().ok_or_else(|| Error::Api(ApiError::new(Problem::KernelNotFound)))
    }

    /// Ends the session in the database (exactly once) and stops the actor.
    fn end(
        &mut self,
        status: KernelStatus,
        info: String,
        stats: Option<KernelStats>,
    ) -> impl ActorFuture<Self, Output = ()> + 'static {
        let core = self.core.clone();
        let kernel_id = self.kernel.id;
        // The counted queries are written with the session's end, in one transaction.
        let queries = std::mem::take(&mut self.pending_queries);
        async move {
            let ending = Ending { stats, unwritten_queries: queries, ..Ending::new(status, &info) };
            match ledger::release(&core.db, kernel_id, &ending).await {
                Ok(true) => tracing::info!(%kernel_id, ?status, %info, "session ended"),
                Ok(false) => {}
                Err(error) => tracing::error!(%error, %kernel_id, "could not end the session"),
            }
            if let Err(error) = core.stores.stats.remove_kernel_stats(&kernel_id.to_string()).await {
                tracing::warn!(%error, %kernel_id, "could not remove live stats");
            }
        }
        .into_actor(self)
        .map(move |(), actor, ctx| {
            actor.edit(|kernel| kernel.status = status);
            ctx.stop();
        })
    }
}

impl Handler<StartKernel> for SessionActor {
    type Result = AtomicResponse<Self, Result<(), StartError>>;

    #[tracing::instrument(name = "SessionActor::StartKernel", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: StartKernel, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let agent = match self.live_agent() {
            Ok(agent) => agent,
            Err(error) => {
                return AtomicResponse::new(Box::pin(fut::ready(Err(StartError { error, unreachable: false }))))
            }
        };
        let kernel = self.kernel.clone();
        let core = self.core.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let spec = KernelSpec { kernel_id: kernel.id.to_string(), ..msg.spec };
                let created = agent.create_kernel(&spec).await;
                if let Ok(runtime) = &created {
                    let container = runtime.get("id").and_then(Value::as_str).map(str::to_owned);
                    if !ledger::set_status(&core.db, &kernel, KernelStatus::Running, container).await? {
                        // The session ended while the kernel was made (a destroy, an agent
                        // report): the kernel must not outlive it.
                        if let Err(error) = agent.destroy_kernel(&spec.kernel_id).await {
                            tracing::warn!(%error, kernel_id = %spec.kernel_id, "could not destroy the kernel of an ended session");
                        }
                        return Err(ApiError::new(Problem::KernelCreationFailed)
                            .with_detail("the session ended while its kernel was being created")
                            .into());
                    }
                }
                Ok::<_, Error>(created)
            }
            .into_actor(self)
            .then(|result, actor, _ctx| {
                let (failure, unreachable) = match result {
                    Ok(Ok(_)) => {
                        actor.edit(|kernel| kernel.status = KernelStatus::Running);
                        return futures_util::future::Either::Left(fut::ready(Ok(())));
                    }
                    Ok(Err(agent_error)) => {
                        let unreachable = matches!(agent_error, AgentError::Unreachable(_));
                        (agent_error.into_api(Problem::KernelCreationFailed).into(), unreachable)
                    }
                    Err(error) => (error, false),
                };
                let failed = actor.fail("creation-failed", failure);
                futures_util::future::Either::Right(
                    failed.map(move |r, _, _| r.map_err(|error| StartError { error, unreachable })),
                )
            }),
        ))
    }
}

impl SessionActor {
    /// Relays one call to the agent while the session is live; a kernel the agent
    /// no longer knows ends the session, other failures answer `problem`.
    fn relay_call<T, F, Fut>(&mut self, problem: Problem, call: F) -> ResponseActFuture<Self, Result<T, Error>>
    where
        T: 'static,
        F: FnOnce(AgentClient, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, AgentError>> + 'static,
    {
        self.touch();
        // A call on the session: its idle timer starts again.
        self.core.activity.note(self.kernel.id);
        let agent = match self.live_agent() {
            Ok(agent) => agent,
            Err(error) => return Box::pin(fut::ready(Err(error))),
        };
        let kernel_id = self.kernel.id.to_string();
        let span = tracing::info_span!("agent_call", kernel = %kernel_id);
        Box::pin(call(agent, kernel_id).instrument(span).into_actor(self).then(
            move |result, actor, _ctx| match result {
                Ok(value) => Box::pin(fut::ready(Ok(value))) as ResponseActFuture<Self, Result<T, Error>>,
                Err(AgentError::KernelNotFound) => {
                    let ended = actor.end(KernelStatus::Error, "kernel-lost".to_owned(), None);
                    Box::pin(ended.map(|(), _, _| Err(ApiError::new(Problem::KernelNotFound).into())))
                }
                Err(error) => Box::pin(fut::ready(Err(error.into_api(problem).into()))),
            },
        ))
    }

    /// Ends the session with ERROR `<what>: <cause>` (the agent's error, when it
    /// failed) and answers the failure.
    fn fail<T: 'static>(&mut self, what: &str, failure: Error) -> impl ActorFuture<Self, Output = Result<T, Error>> {
        tracing::warn!(error = %failure, kernel_id = %self.kernel.id, "{what}");
        let agent_error = match &failure {
            Error::Api(error) => error.agent_details.as_ref().and_then(|d| d["title"].as_str()),
            _ => None,
        };
        let info = match agent_error {
            Some(cause) => format!("{what}: {cause}"),
            None => format!("{what}: {failure}"),
        };
        self.end(KernelStatus::Error, info, None).map(|(), _, _| Err(failure))
    }
}

impl Handler<Execute> for SessionActor {
    type Result = ResponseActFuture<Self, Result<Value, Error>>;

    #[tracing::instrument(name = "SessionActor::Execute", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: Execute, _ctx: &mut Self::Context) -> Self::Result {
        if self.kernel.status.is_live() {
            self.pending_queries += 1;
            self.edit(|kernel| kernel.num_queries += 1);
        }
        self.relay_call(Problem::KernelExecutionFailed, move |agent, id| async move {
            agent.execute(&id, &msg.request).await
        })
    }
}

impl Handler<Interrupt> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    #[tracing::instrument(name = "SessionActor::Interrupt", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, _msg: Interrupt, _ctx: &mut Self::Context) -> Self::Result {
        self.relay_call(Problem::KernelExecutionFailed, |agent, id| async move { agent.interrupt(&id).await })
    }
}

impl Handler<Complete> for SessionActor {
    type Result = ResponseActFuture<Self, Result<Value, Error>>;

    #[tracing::instrument(name = "SessionActor::Complete", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: Complete, _ctx: &mut Self::Context) -> Self::Result {
        self.relay_call(Problem::KernelExecutionFailed, move |agent, id| async move {
            agent.complete(&id, &msg.code, &msg.options).await
        })
    }
}

impl Handler<UploadFile> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    #[tracing::instrument(name = "SessionActor::UploadFile", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: UploadFile, _ctx: &mut Self::Context) -> Self::Result {
        // A file the agent refuses (its name or type) is the client's error; an agent
        // that fails or does not answer is not.
        let relayed = self.relay_call(Problem::KernelExecutionFailed, move |agent, id| async move {
            match agent.upload_file(&id, &msg.path, msg.data).await {
                Err(AgentError::InvalidInput(why)) => Ok(Err(why)),
                other => other.map(Ok),
            }
        });
        Box::pin(relayed.map(|result, _, _| {
            result?.map_err(|why| ApiError::new(Problem::InvalidApiParams).with_detail(why).into())
        }))
    }
}

impl Handler<ReadKernel> for SessionActor {
    type Result = ResponseActFuture<Self, Result<KernelRead, Error>>;

    #[tracing::instrument(name = "SessionActor::ReadKernel", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: ReadKernel, _ctx: &mut Self::Context) -> Self::Result {
        // A path the agent refuses is the client's error, as for uploads.
        let relayed = self.relay_call(Problem::KernelExecutionFailed, move |agent, id| async move {
            let read = match msg {
                ReadKernel::Logs => agent.logs(&id).await.map(KernelRead::Json),
                ReadKernel::Files(path) => agent.list_files(&id, &path).await.map(KernelRead::Json),
                ReadKernel::Download(path) => agent.download(&id, &path).await.map(KernelRead::Tar),
            };
            match read {
                Err(AgentError::InvalidInput(why)) => Ok(Err(why)),
                other => other.map(Ok),
            }
        });
        Box::pin(relayed.map(|result, _, _| {
            result?.map_err(|why| ApiError::new(Problem::InvalidApiParams).with_detail(why).into())
        }))
    }
}

impl Handler<Restart> for SessionActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    #[tracing::instrument(name = "SessionActor::Restart", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, _msg: Restart, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let agent = match self.live_agent() {
            Ok(agent) => agent,
            Err(error) => return AtomicResponse::new(Box::pin(fut::ready(Err(error)))),
        };
        let kernel = self.kernel.clone();
        let core = self.core.clone();
        AtomicResponse::new(Box::pin(
            async move {
                ledger::set_status(&core.db, &kernel, KernelStatus::Restarting, None).await?;
                let restarted = agent.restart_kernel(&kernel.id.to_string()).await;
                if restarted.is_ok() {
                    ledger::set_status(&core.db, &kernel, KernelStatus::Running, None).await?;
                }
                Ok::<_, Error>(restarted)
            }
            .into_actor(self)
            .then(|result, actor, _ctx| {
                let failure = match result {
                    Ok(Ok(())) => return futures_util::future::Either::Left(fut::ready(Ok(()))),
                    Ok(Err(AgentError::KernelNotFound)) => ApiError::new(Problem::KernelNotFound).into(),
                    Ok(Err(agent_error)) => agent_error.into_api(Problem::KernelRestartFailed).into(),
                    Err(error) => error,
                };
                futures_util::future::Either::Right(actor.fail("restart-failed", failure))
            }),
        ))
    }
}

impl Handler<Destroy> for SessionActor {
    type Result = AtomicResponse<Self, Result<Value, Error>>;

    #[tracing::instrument(name = "SessionActor::Destroy", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: Destroy, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let reason = msg.reason;
        let agent = match self.live_agent() {
            Ok(agent) => agent,
            Err(error) => return AtomicResponse::new(Box::pin(fut::ready(Err(error)))),
        };
        let kernel = self.kernel.clone();
        let core = self.core.clone();
        AtomicResponse::new(Box::pin(
            async move {
                ledger::set_status(&core.db, &kernel, KernelStatus::Terminating, None).await?;
                Ok::<_, Error>(agent.destroy_kernel(&kernel.id.to_string()).await)
            }
            .into_actor(self)
            .then(|result, actor, _ctx| {
                let (status, info, stats, answer) = match result {
                    Ok(Ok(stats)) => {
                        let stats = if stats.is_object() { stats } else { Value::Object(Default::default()) };
                        (KernelStatus::Terminated, reason.to_owned(), ledger::parse_stats(&stats), Ok(stats))
                    }
                    // Already gone on the agent: the session ends all the same.
                    Ok(Err(AgentError::KernelNotFound)) => {
                        (KernelStatus::Terminated, reason.to_owned(), None, Ok(Value::Object(Default::default())))
                    }
                    Ok(Err(agent_error)) => {
                        let error: Error = agent_error.into_api(Problem::KernelDestructionFailed).into();
                        (KernelStatus::Error, format!("destruction-failed: {error}"), None, Err(error))
                    }
                    Err(error) => (KernelStatus::Error, "destruction-failed".to_owned(), None, Err(error)),
                };
                actor.end(status, info, stats).map(move |(), _, _| answer)
            }),
        ))
    }
}

impl Handler<KernelTerminated> for SessionActor {
    type Result = AtomicResponse<Self, ()>;

    #[tracing::instrument(name = "SessionActor::KernelTerminated", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, msg: KernelTerminated, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let status = if msg.reason.is_normal() { KernelStatus::Terminated } else { KernelStatus::Error };
        AtomicResponse::new(Box::pin(self.end(status, msg.reason.as_str().to_owned(), Some(msg.stats))))
    }
}

impl Handler<RetireSession> for SessionActor {
    type Result = ();

    #[tracing::instrument(name = "SessionActor::RetireSession", skip_all, fields(kernel = %self.kernel.id))]
    fn handle(&mut self, _msg: RetireSession, ctx: &mut Self::Context) {
        self.edit(|kernel| kernel.status = KernelStatus::Error);
        ctx.stop();
    }
}

impl Handler<GetKernel> for SessionActor {
    type Result = AtomicResponse<Self, Result<entity::kernels::Model, Error>>;

    #[tracing::instrument(name = "SessionActor::GetKernel", skip_all, level = "debug", fields(kernel = %self.kernel.id))]
    fn handle(&mut self, _msg: GetKernel, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        if !self.kernel.status.is_live() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(ApiError::new(Problem::KernelNotFound).into()))));
        }
        if self.row_checked.elapsed() < ROW_TTL && !self.shared.is_held() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(self.kernel.clone()))));
        }
        let db = self.core.db.clone();
        let kernel_id = self.kernel.id;
        AtomicResponse::new(Box::pin(
            async move { entity::kernels::Entity::find_by_id(kernel_id).one(&db).await }.into_actor(self).map(
                |row, actor, ctx| {
                    let row = row?.filter(|row| row.status.is_live());
                    let Some(row) = row else {
                        // Ended by another manager process.
                        actor.edit(|kernel| kernel.status = KernelStatus::Terminated);
                        ctx.stop();
                        return Err(ApiError::new(Problem::KernelNotFound).into());
                    };
                    actor.row_checked = std::time::Instant::now();
                    // Queries counted here and not yet written are still ours to add.
                    let num_queries = row.num_queries + actor.pending_queries;
                    actor.edit(|kernel| *kernel = entity::kernels::Model { num_queries, ..row });
                    Ok(actor.kernel.clone())
                },
            ),
        ))
    }
}
