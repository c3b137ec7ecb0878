//! Shared helpers of the agent tests: a real agent on port 0, a typed client, and an events
//! sink standing in for the manager.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use backendai_agent::{Agent, AgentConfig};
use serde_json::{json, Value};

pub const SECRET: &str = "test-cluster-secret";

/// Silent tracing unless TEST_LOG is set.
pub fn init_tracing() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let level = if level.is_empty() || level == "1" { "debug".to_owned() } else { level };
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(level)).try_init();
    }
}

/// A running agent and a client for its RPC API.
pub struct TestAgent {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub scratch_root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A test configuration: port 0, own scratch root under /tmp (reachable by kernel uids).
/// `AGENT_TEST_BWRAP=off` runs the suite without bubblewrap.
pub fn test_config() -> AgentConfig {
    let mut sandbox = backendai_agent::config::SandboxConfig::default();
    if std::env::var("AGENT_TEST_BWRAP").as_deref() == Ok("off") {
        sandbox.use_bwrap = backendai_agent::config::BwrapMode::Off;
    }
    AgentConfig {
        sandbox,
        listen: "127.0.0.1:0".parse().unwrap(),
        agent_id: format!("i-test-{}", uuid::Uuid::new_v4().simple()),
        cluster_secret: backendai_agent::config::Secret::new(SECRET),
        scratch_root: std::env::temp_dir().join(format!("bai-agent-test-{}", uuid::Uuid::new_v4().simple())),
        exec_timeout: 30.0,
        heartbeat_interval: 0.5,
        stats_interval: 0.5,
        ..AgentConfig::default()
    }
}

impl TestAgent {
    pub async fn spawn() -> TestAgent {
        Self::spawn_with(test_config()).await
    }

    pub async fn spawn_with(config: AgentConfig) -> TestAgent {
        init_tracing();
        let scratch_root = config.scratch_root.clone();
        let agent = Agent::build(config).await.expect("agent builds");
        let addr = agent.addr();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run_until_stopped(async move {
            let _ = rx.await;
        }));
        TestAgent { addr, client: reqwest::Client::new(), scratch_root, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(SECRET);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a kernel of `runner` ("python" or "shell") with extra limits.
    pub async fn create(&self, runner: &str, limits: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let (name, command) = if runner == "python" { ("python3", "python3") } else { ("bash", "bash") };
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/kernels",
                Some(json!({
                    "kernel_id": id,
                    "image": {"name": name, "tag": "latest", "runner": runner, "command": command},
                    "limits": limits,
                    "mounts": [],
                })),
            )
            .await;
        assert_eq!(status, 201, "create failed: {body}");
        id
    }

    pub async fn execute(&self, kernel: &str, run_id: &str, mode: &str, code: &str, options: Value) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/kernels/{kernel}/execute"),
                Some(json!({"api_version": 2, "run_id": run_id, "mode": mode, "code": code, "options": options})),
            )
            .await;
        assert_eq!(status, 200, "execute failed: {body}");
        body
    }

    /// Runs `code` to the end (following continuations), returning every result.
    pub async fn run_to_end(&self, kernel: &str, code: &str) -> Vec<Value> {
        let run_id = uuid::Uuid::new_v4().to_string();
        let mut results = vec![self.execute(kernel, &run_id, "query", code, Value::Null).await];
        while results.last().unwrap()["status"] == "continued" {
            results.push(self.execute(kernel, &run_id, "query", "", Value::Null).await);
        }
        results
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        let _ = std::fs::remove_dir_all(&self.scratch_root);
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// All text of one console stream in a list of results.
pub fn stream(results: &[Value], kind: &str) -> String {
    let mut out = String::new();
    for r in results {
        for item in r["console"].as_array().into_iter().flatten() {
            if item[0] == kind {
                out.push_str(item[1].as_str().unwrap_or(""));
            }
        }
    }
    out
}

/// A stand-in for the manager's events endpoint that records what it receives.
pub struct EventSink {
    pub addr: SocketAddr,
    pub events: Arc<Mutex<Vec<Value>>>,
    pub unauthorized: Arc<Mutex<u32>>,
    handle: actix_web::dev::ServerHandle,
}

impl EventSink {
    pub async fn start() -> EventSink {
        let events = Arc::new(Mutex::new(Vec::new()));
        let unauthorized = Arc::new(Mutex::new(0));
        let (ev, un) = (events.clone(), unauthorized.clone());
        let server = HttpServer::new(move || {
            let (ev, un) = (ev.clone(), un.clone());
            App::new().route(
                "/events",
                web::post().to(move |req: HttpRequest, body: web::Json<Value>| {
                    let (ev, un) = (ev.clone(), un.clone());
                    async move {
                        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                        if auth != Some(&format!("Bearer {SECRET}")) {
                            *un.lock().unwrap() += 1;
                            return HttpResponse::Unauthorized().finish();
                        }
                        ev.lock().unwrap().push(body.into_inner());
                        HttpResponse::NoContent().finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        EventSink { addr, events, unauthorized, handle }
    }

    /// Waits until an event matching `pred` arrived and returns it.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)).cloned() {
                return Some(e);
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
