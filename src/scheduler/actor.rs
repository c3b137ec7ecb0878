//! The scheduler actor of one manager: it passes when woken and on its own while
//! sessions wait, if it holds the lease (see [`super::pass`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::pass::{self, Outcome};
use super::{lease, WAKE_KEY};
use crate::actors::registry::Registry;
use crate::Core;

/// How often this process's uses of sessions are written.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(1);
/// After a failed pass (a store did not answer), the next one waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the actor considers a pass.
const TICK: Duration = Duration::from_millis(100);
/// While sessions wait, a pass at least this often (room may free up anywhere).
pub const BUSY_INTERVAL: Duration = Duration::from_millis(500);
/// A pass at least this often in any case: the lease is renewed, and sessions another
/// manager enqueued without reaching this one are seen.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// The scheduler of one manager process.
pub struct Scheduler {
    core: Arc<Core>,
    registry: Addr<Registry>,
    manager_id: String,
    /// The term held after the latest pass (`None`: not the holder).
    term: Option<i64>,
    /// A pass is running.
    busy: bool,
    /// A pass was asked for since the latest one started.
    wanted: bool,
    /// Sessions left waiting by the latest pass.
    waiting: usize,
    /// When the latest pass started.
    last_pass: Option<Instant>,
    /// The latest pass failed: the next waits [`RETRY_AFTER`], wanted or not.
    failed: bool,
    /// Set at shutdown: scheduling (and the lease) is left to other managers.
    stopped: bool,
}

impl Scheduler {
    /// A scheduler for this manager, not started.
    pub fn new(core: Arc<Core>, registry: Addr<Registry>, manager_id: String) -> Self {
        Self {
            core,
            registry,
            manager_id,
            term: None,
            busy: false,
            wanted: true,
            waiting: 0,
            last_pass: None,
            failed: false,
            stopped: false,
        }
    }

    fn due(&self) -> bool {
        let since = self.last_pass.map(|at| at.elapsed());
        if self.failed {
            return since.is_none_or(|since| since >= RETRY_AFTER);
        }
        let interval = if self.waiting > 0 { BUSY_INTERVAL } else { IDLE_INTERVAL };
        self.wanted || since.is_none_or(|since| since >= interval)
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.stopped || !self.due() {
            return;
        }
        self.busy = true;
        self.wanted = false;
        self.last_pass = Some(Instant::now());
        let (core, registry, manager_id, term) =
            (self.core.clone(), self.registry.clone(), self.manager_id.clone(), self.term);
        ctx.spawn(async move { pass::run(&core, &registry, &manager_id, term).await }.into_actor(self).map(
            |outcome, scheduler, ctx| {
                scheduler.busy = false;
                scheduler.failed = outcome.is_err();
                match outcome {
                    Ok(Outcome::Ran { term, waiting }) => {
                        if scheduler.term != Some(term) {
                            tracing::info!(term, "this manager schedules the cluster");
                        }
                        scheduler.term = Some(term);
                        scheduler.waiting = waiting;
                    }
                    Ok(Outcome::NotHolder) => {
                        scheduler.term = None;
                        scheduler.waiting = 0;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "scheduling pass failed: trying again in a second");
                        // Not known to hold the lease: this process's creates wake the holder too.
                        scheduler.core.scheduling.set_holder(false);
                        scheduler.term = None;
                        scheduler.wanted = true;
                    }
                }
                if scheduler.wanted {
                    scheduler.start_pass(ctx);
                }
            },
        ));
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Wakes from this process.
        let core = self.core.clone();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                loop {
                    core.scheduling.wake.notified().await;
                    // A full mailbox already holds a wake.
                    if let Err(SendError::Closed(_)) = addr.try_send(Wake) {
                        return;
                    }
                }
            }
            .into_actor(self),
        );
        // Wakes from other managers, through the config store (when it can watch).
        let config = self.core.stores.config.clone();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                let Ok(mut changes) = config.watch_prefix(WAKE_KEY).await else { return };
                while changes.recv().await.is_some() {
                    if let Err(SendError::Closed(_)) = addr.try_send(Wake) {
                        return;
                    }
                }
            }
            .into_actor(self),
        );
        ctx.run_interval(TICK, |scheduler, ctx| scheduler.start_pass(ctx));
        // This process's uses of sessions, for the idle timeouts (every manager's).
        ctx.run_interval(ACTIVITY_FLUSH, |scheduler, ctx| {
            let core = scheduler.core.clone();
            ctx.spawn(async move { core.activity.flush(&core.db).await }.into_actor(scheduler));
        });
    }
}

/// Scheduler: pass soon.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

impl Handler<Wake> for Scheduler {
    type Result = ();

    fn handle(&mut self, _msg: Wake, ctx: &mut Self::Context) {
        self.wanted = true;
        self.start_pass(ctx);
    }
}

/// Scheduler: stop scheduling and hand the lease over (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopScheduling;

impl Handler<StopScheduling> for Scheduler {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopScheduling, _ctx: &mut Self::Context) -> Self::Result {
        self.stopped = true;
        self.core.scheduling.set_holder(false);
        let config = self.core.stores.config.clone();
        let manager_id = self.manager_id.clone();
        Box::pin(async move {
            if let Err(error) = lease::release(config.as_ref(), &manager_id).await {
                tracing::warn!(%error, "could not hand the scheduler over");
            }
        })
    }
}
