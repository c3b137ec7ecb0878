//! The Backend.AI agent: the node daemon that runs kernels for the manager.
//!
//! [`Agent::build`] binds the RPC server and prepares the runtime; [`Agent::run_until_stopped`]
//! serves until a shutdown future resolves, then terminates every kernel (reported as
//! `kernel_terminated` with reason `agent-terminated`) and reports `instance_terminated`.
//! The manager can embed an agent the same way (`listen` on loopback, port 0 allowed).
//!
//! # Execute: modes and run ids
//! - A call whose `run_id` equals the kernel's run in flight (or ended but not yet fully
//!   returned) resumes it, whatever its mode (`query` and `batch` included, as clients send
//!   them): if the run waits for input, `code` is the input line (mode `continue` only
//!   fetches output); otherwise `code` is ignored and the call returns the next part.
//! - Any other `run_id` with mode `query` or `batch` is a new run. Runs of a kernel are
//!   served first come, first served: a new run waits until the previous one ended (a
//!   previous run left waiting for input is interrupted). Output of a previous run that its
//!   caller never fetched is dropped.
//! - Mode `input` or `continue` with an unknown `run_id` is a 400 `invalid-api-params`.
//! - A call returns as soon as the run ends, asks for input, or finishes its build step, and
//!   at the latest `continuation_secs` (2 s) after the run started or the call arrived:
//!   `continued` with the output so far.
//! - `exec-timeout`: the run's wall time (`limits.exec_timeout`, else `exec_timeout`) ran out;
//!   the interpreter is replaced by a fresh one (namespace lost, scratch dir kept) and the
//!   kernel stays. No `kernel_terminated` is sent for it.
//! - Batch: `options.build` then `options.exec`, each a bash command run from the scratch
//!   dir. `*` or empty build: no build step (and no `build-finished`); `*` or empty exec:
//!   `python3 main.py` (python kernels) or `bash main.sh` (shell kernels). A failing build
//!   ends the run (`finished`, with a note) without the exec step.
//! - The result is always the v2 object; the manager converts it for v1 clients.

pub mod config;
pub mod error;
pub mod events;
pub mod rpc;
pub mod runtime;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use protocol::{AgentEvent, EventSink};
use tokio::sync::mpsc;

pub use config::{AgentArgs, AgentConfig};

use self::events::{Events, Identity};
use self::rpc::{RpcState, Slots};
use self::runtime::process::{ProcessRuntime, Settings};
use self::runtime::{KernelTerminated, Runtime};

/// Seconds the RPC server keeps an idle connection open: longer than managers keep
/// theirs idle (30 s), so that the manager side always closes first.
pub const RPC_KEEP_ALIVE_SECS: u64 = 75;

/// A built agent: its RPC server is bound, its runtime ready.
pub struct Agent {
    /// The configuration it was built from.
    config: AgentConfig,
    /// The bound RPC address.
    addr: SocketAddr,
    /// The RPC server (not yet running).
    server: actix_web::dev::Server,
    /// The kernel runtime.
    runtime: Arc<ProcessRuntime>,
    /// The offered slots.
    slots: Slots,
    /// Events to the manager.
    events: Events,
    /// Kernels that ended, to report.
    terminated: mpsc::UnboundedReceiver<KernelTerminated>,
    /// The in-process bus of an agent embedded in a manager.
    sink: Option<Arc<dyn EventSink>>,
}

impl Agent {
    /// Binds the RPC server and prepares the runtime (cleaning leftovers of a previous run).
    pub async fn build(config: AgentConfig) -> anyhow::Result<Agent> {
        Self::build_with_sink(config, None).await
    }

    /// Like [`Agent::build`], reporting to an in-process bus when `sink` is given (an
    /// agent embedded in the manager's process).
    pub async fn build_with_sink(config: AgentConfig, sink: Option<Arc<dyn EventSink>>) -> anyhow::Result<Agent> {
        config.validate()?;
        let (terminated_tx, terminated) = mpsc::unbounded_channel();
        let runtime = Arc::new(ProcessRuntime::new(settings(&config), terminated_tx)?);
        let slots = detect_slots(&config);
        let listener = TcpListener::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = web::Data::new(RpcState {
            runtime: runtime.clone() as Arc<dyn Runtime>,
            agent_id: config.agent_id.clone(),
            region: config.region.clone(),
            addr: addr.to_string(),
            slots,
            secret: config.cluster_secret.clone(),
        });
        let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(rpc::configure))
            .workers(2)
            .disable_signals()
            .shutdown_timeout(5)
            // Longer than the managers keep an idle connection (30 s): the manager
            // always closes first, so a call never goes out on a connection the agent is
            // closing at that moment (which fails it, sent or not).
            .keep_alive(Duration::from_secs(RPC_KEEP_ALIVE_SECS))
            .listen(listener)?
            .run();
        let events = Events::start(&config, sink.clone());
        Ok(Agent { config, addr, server, runtime, slots, events, terminated, sink })
    }

    /// The bound RPC address (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves or the server stops, then terminates every kernel
    /// and reports the agent's end.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Agent { config, addr, server, runtime, slots, mut events, mut terminated, sink } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        tracing::info!(agent_id = %config.agent_id, %addr, bus = ?config.bus(), "agent started");
        let identity = Identity {
            agent_id: config.agent_id.clone(),
            region: config.region.clone(),
            addr: addr.to_string(),
            slots,
            heartbeat_interval: config.heartbeat_interval,
        };
        let listed = runtime.clone();
        events
            .start_heartbeats(&config, sink, identity, Arc::new(move || listed.kernel_ids()))
            .context("starting the heartbeat thread")?;
        let mut stats = tokio::time::interval(Duration::from_secs_f64(config.stats_interval));
        stats.tick().await;
        tokio::pin!(shutdown);
        let outcome = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                r = &mut server => break r.context("RPC server task").and_then(|r| r.context("RPC server")),
                Some(ended) = terminated.recv() => events.send(AgentEvent::KernelTerminated(ended)),
                _ = stats.tick() => events.kernel_stats(runtime.stats().await).await,
            }
        };
        tracing::info!("agent shutting down");
        // No heartbeat may follow `instance_terminated`.
        events.stop_heartbeats().await;
        handle.stop(true).await;
        runtime.shutdown().await;
        while let Ok(ended) = terminated.try_recv() {
            events.send(AgentEvent::KernelTerminated(ended));
        }
        events.send(AgentEvent::InstanceTerminated { reason: "agent-shutdown".to_owned() });
        events.close(Duration::from_secs(5)).await;
        outcome
    }
}

/// Builds and runs an agent until `shutdown` resolves.
pub async fn run_agent(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Agent::build(config).await?.run_until_stopped(shutdown).await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The `backendai-agent` program: configuration, logging, run; returns the exit code.
pub async fn main_with_args(args: AgentArgs) -> i32 {
    let config = match AgentConfig::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("backendai-agent: configuration error: {e}");
            return 2;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    match run_agent(config, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = ?e, "agent failed");
            eprintln!("backendai-agent: {e:#}");
            1
        }
    }
}

fn settings(config: &AgentConfig) -> Settings {
    let s = &config.sandbox;
    Settings {
        scratch_root: config.scratch_root.clone(),
        exec_timeout: config.exec_timeout,
        max_output_bytes: config.max_output_bytes,
        continuation: Duration::from_secs_f64(config.continuation_secs),
        default_mem_mib: s.default_mem_mib,
        min_mem_mib: s.min_mem_mib,
        max_processes: s.max_processes,
        max_open_files: s.max_open_files,
        max_file_size: s.max_file_size,
        drop_privileges: s.drop_privileges,
        use_bwrap: s.use_bwrap,
        kernel_uid_start: s.kernel_uid_start,
        kernel_uid_count: s.kernel_uid_count,
        uid_lock_dir: s.uid_lock_dir.clone(),
        warm_kernels: config.warm_kernels,
        read_only_paths: s.read_only_paths.clone(),
        vfolder_gid: s.vfolder_gid,
    }
}

fn detect_slots(config: &AgentConfig) -> Slots {
    let cpu =
        config.slots.cpu.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
    let mem = config.slots.mem.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .map(|kib| kib / 1024)
            .unwrap_or(1024)
    });
    Slots { cpu, mem, gpu: config.slots.gpu }
}
