//! The cluster under faults: two `backendai-manager` processes and three `backendai-agent`
//! processes on real PostgreSQL, Redis and etcd, driven by several clients doing
//! create / execute / destroy while each manager, each agent and etcd is killed with
//! SIGKILL in turn (etcd for longer than the heartbeat timeout).
//!
//! It asserts what the cluster promises:
//! - no failed call except those in flight on a killed manager, or aimed at the
//!   sessions of a killed agent (a create placed on an agent in the moments after
//!   its death counts as aimed at it);
//! - sessions on surviving agents keep working (none ends abnormally), and no agent
//!   that was not killed is ever declared LOST;
//! - a killed agent's sessions end within the heartbeat timeout (plus the checker's
//!   period), freeing their slots and quota;
//! - afterwards: each agent's occupied slots equal the sum of its live kernels, each
//!   key's `concurrency_used` equals its live sessions, nothing is PREPARING or
//!   TERMINATING, no kernel process runs outside a live agent or for a session that
//!   ended, and PostgreSQL counted no deadlock.
//!
//! In `cargo test` it runs one round of faults (about 100 s). `scripts/chaos.sh` runs
//! the same harness for longer (`BACKENDAI_CHAOS_SECS`) on a release build and prints
//! the figures reported in the README. It needs the services of the other tests
//! (`BACKENDAI_TEST_DB_URL`, `BACKENDAI_TEST_REDIS_URL`) and an `etcd` binary: etcd is
//! killed, so the harness starts its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backendai_manager::auth::{self, HashAlgorithm, SignedParts};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{json, Value};

const HEARTBEAT_INTERVAL: f64 = 1.0;
const HEARTBEAT_TIMEOUT: f64 = 5.0;
/// How late past the heartbeat timeout a killed agent's sessions may end: the
/// checker's period (0.5 s), one heartbeat interval of age rounding, and scheduling
/// slack on a busy 2-core machine.
const END_SLACK: f64 = 3.0;
/// A create that started this long before an agent was killed may still have been
/// placed on it (the scheduler stops placing on an agent silent for two intervals).
const PLACEMENT_WINDOW: f64 = 2.0 * HEARTBEAT_INTERVAL + 1.0;
const ACCESS_KEY: &str = "AKIACHAOSHARNESS0001";
const SECRET_KEY: &str = "chaos-harness-secret-key-000000000000001";
const MANAGERS: usize = 2;
const AGENTS: usize = 3;

fn required() -> bool {
    std::env::var("BACKENDAI_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn skip(what: &str) {
    assert!(!required(), "BACKENDAI_REQUIRE_SERVICES=1 but {what}");
    let _ = writeln!(std::io::stderr(), "SKIPPED chaos harness: {what}");
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// One process of the cluster: how to start it, and the running child.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Proc {
    fn new(name: &str, program: &Path, args: Vec<String>, env: Vec<(String, String)>, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        Self { name: name.to_owned(), program: program.to_owned(), args, env, log, child: None }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL, and reap.
    async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().ok();
            child.wait().await.ok();
        }
    }

    /// SIGTERM, and wait up to `limit` before SIGKILL.
    async fn stop(&mut self, limit: Duration) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(limit, child.wait()).await.is_err() {
                child.start_kill().ok();
                child.wait().await.ok();
            }
        }
    }

    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// What was down, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Manager(usize),
    Agent(usize),
    Etcd,
}

#[derive(Clone, Debug)]
struct Outage {
    target: Target,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Create,
    Execute,
    Destroy,
}

#[derive(Debug)]
struct Call {
    kind: Kind,
    token: String,
    manager: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// `None` when it succeeded.
    failure: Option<String>,
}

/// The signed-request client, in front of both managers like a round-robin proxy that
/// retries a refused connection on the next upstream (nothing was sent on it).
struct Proxy {
    http: reqwest::Client,
    ports: Vec<u16>,
    next: AtomicUsize,
}

impl Proxy {
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (usize, Result<(u16, Value), String>) {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = (first % self.ports.len(), Err("no manager".to_owned()));
        for attempt in 0..self.ports.len() {
            let which = (first + attempt) % self.ports.len();
            match self.send_to(which, method, path, body).await {
                Err(e) if e.is_connect() => last = (which, Err(format!("connect: {e}"))),
                Err(e) => return (which, Err(format!("transport: {e}"))),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.json::<Value>().await.unwrap_or(Value::Null);
                    return (which, Ok((status, body)));
                }
            }
        }
        last
    }

    async fn send_to(
        &self,
        which: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let host = format!("127.0.0.1:{}", self.ports[which]);
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let date = Utc::now().fixed_offset();
        let date_header = date.to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        let body_hash = HashAlgorithm::Sha256.hex_digest(&bytes);
        let parts = SignedParts {
            method,
            path_and_query: path,
            date_header: &date_header,
            date,
            host: &host,
            content_type: "application/json",
            version_header: "x-backendai-version",
            version: "v3.20170615",
            body_hash: &body_hash,
        };
        let signature = auth::sign(HashAlgorithm::Sha256, SECRET_KEY, &parts);
        self.http
            .request(method.parse().unwrap(), format!("http://{host}{path}"))
            .header("Date", date_header)
            .header("X-BackendAI-Version", "v3.20170615")
            .header("Content-Type", "application/json")
            .header("Authorization", format!("BackendAI signMethod=HMAC-SHA256, credential={ACCESS_KEY}:{signature}"))
            .body(bytes)
            .send()
            .await
    }
}

/// Everything the load, the faults and the checks share.
struct Chaos {
    dir: PathBuf,
    db: DatabaseConnection,
    db_name: String,
    redis: redis::Client,
    namespace: String,
    proxy: Proxy,
    etcd: tokio::sync::Mutex<Proc>,
    etcd_port: u16,
    managers: Vec<tokio::sync::Mutex<Proc>>,
    agents: Vec<tokio::sync::Mutex<Proc>>,
    agent_ids: Vec<String>,
    outages: Mutex<Vec<Outage>>,
    calls: Mutex<Vec<Call>>,
    /// Problems found while running (the checks at the end add theirs).
    violations: Mutex<Vec<String>>,
    /// Seconds from an agent's kill until all its sessions had ended.
    end_times: Mutex<Vec<f64>>,
    /// Seconds from an agent's kill until it was seen LOST.
    lost_times: Mutex<Vec<f64>>,
    /// Agents seen going LOST, and when.
    lost_seen: Mutex<Vec<(String, DateTime<Utc>)>>,
    stop_load: AtomicBool,
}

impl Chaos {
    fn violation(&self, what: String) {
        let mut violations = self.violations.lock().unwrap();
        if violations.len() < 50 {
            eprintln!("chaos: VIOLATION {what}");
        }
        violations.push(what);
    }

    fn begin_outage(&self, target: Target) {
        eprintln!("chaos: {} kill -9 {target:?}", Utc::now().format("%H:%M:%S%.3f"));
        self.outages.lock().unwrap().push(Outage { target, from: Utc::now(), to: None });
    }

    fn end_outage(&self, target: Target) {
        eprintln!("chaos: {} restarted {target:?}", Utc::now().format("%H:%M:%S%.3f"));
        let mut outages = self.outages.lock().unwrap();
        if let Some(outage) = outages.iter_mut().rev().find(|o| o.target == target && o.to.is_none()) {
            outage.to = Some(Utc::now());
        }
    }

    /// Whether `target` was down at some moment of [from, to].
    fn down_during(&self, target: Target, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.outages
            .lock()
            .unwrap()
            .iter()
            .any(|o| o.target == target && o.from <= to && o.to.is_none_or(|end| end >= from))
    }

    /// Whether agent `agent_id` was killed between `from` and `to`.
    fn agent_killed_during(&self, agent_id: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        let Some(index) = self.agent_ids.iter().position(|a| a == agent_id) else { return false };
        self.outages.lock().unwrap().iter().any(|o| o.target == Target::Agent(index) && o.from >= from && o.from <= to)
    }

    async fn query(&self, sql: &str) -> Vec<sea_orm::QueryResult> {
        self.db.query_all(Statement::from_string(DbBackend::Postgres, sql.to_owned())).await.unwrap()
    }

    async fn call(&self, kind: Kind, token: &str, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let start = Utc::now();
        let (manager, outcome) = self.proxy.send(method, path, body.as_ref()).await;
        let (result, failure) = match outcome {
            Ok((status, body)) if (200..300).contains(&status) => (Some(body), None),
            Ok((status, body)) => (None, Some(format!("{status} {body}"))),
            Err(e) => (None, Some(e)),
        };
        let call = Call { kind, token: token.to_owned(), manager, start, end: Utc::now(), failure };
        self.calls.lock().unwrap().push(call);
        result
    }

    /// Runs `code` to the end (following `continued`); whether `expect` was printed.
    async fn execute(&self, token: &str, code: &str, expect: &str) -> bool {
        let path = format!("/v3/kernel/{token}");
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let mut body = json!({"mode": "query", "code": code, "runId": run_id});
        for _ in 0..20 {
            let Some(answer) = self.call(Kind::Execute, token, "POST", &path, Some(body.clone())).await else {
                return false;
            };
            match answer["result"]["status"].as_str() {
                Some("finished") => {
                    let printed = answer["result"]["console"].to_string();
                    if !printed.contains(expect) {
                        self.violation(format!("{token}: {code:?} printed {printed}, not {expect:?}"));
                    }
                    return true;
                }
                Some("continued") => body = json!({"mode": "continue", "code": "", "runId": run_id}),
                _ => {
                    self.violation(format!("{token}: unexpected execute answer {answer}"));
                    return false;
                }
            }
        }
        self.violation(format!("{token}: {code:?} never finished"));
        false
    }
}

/// One client: sessions one after another, each created, run three times, destroyed.
async fn client(chaos: Arc<Chaos>, number: usize) {
    let mut round = 0usize;
    while !chaos.stop_load.load(Ordering::Relaxed) {
        round += 1;
        let token = format!("chaos-{number}-{round}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let lang = if round % 2 == 0 { "python3" } else { "bash" };
        let create = json!({"lang": lang, "clientSessionToken": token});
        if chaos.call(Kind::Create, &token, "POST", "/v3/kernel/create", Some(create)).await.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for step in 0..3 {
            let n = number * 1000 + step;
            let code = if lang == "bash" { format!("echo $(( {n} * 3 ))") } else { format!("print({n} * 3)") };
            if !chaos.execute(&token, &code, &(n * 3).to_string()).await {
                break;
            }
        }
        chaos.call(Kind::Destroy, &token, "DELETE", &format!("/v3/kernel/{token}"), None).await;
    }
}

/// Records agents going LOST.
async fn watch_agents(chaos: Arc<Chaos>) {
    let mut last: HashMap<String, String> = HashMap::new();
    while !chaos.stop_load.load(Ordering::Relaxed) {
        let Ok(rows) = chaos
            .db
            .query_all(Statement::from_string(DbBackend::Postgres, "SELECT id, status::text AS status FROM agents"))
            .await
        else {
            continue;
        };
        for row in rows {
            let id: String = row.try_get("", "id").unwrap();
            let status: String = row.try_get("", "status").unwrap();
            if status == "LOST" && last.get(&id).is_some_and(|s| s != "LOST") {
                eprintln!("chaos: {} {id} declared LOST", Utc::now().format("%H:%M:%S%.3f"));
                chaos.lost_seen.lock().unwrap().push((id.clone(), Utc::now()));
            }
            last.insert(id, status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const LIVE: &str = "status::text NOT IN ('TERMINATED', 'ERROR')";

async fn wait_manager(chaos: &Chaos, which: usize) {
    for _ in 0..300 {
        let probe = chaos.proxy.http.get(format!("http://127.0.0.1:{}/v3", chaos.proxy.ports[which])).send().await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("manager {which} did not start:\n{}", chaos.managers[which].lock().await.tail(30));
}

async fn wait_agent_alive(chaos: &Chaos, which: usize, since: DateTime<Utc>) {
    let id = &chaos.agent_ids[which];
    for _ in 0..300 {
        let rows = chaos
            .query(&format!(
                "SELECT 1 FROM agents WHERE id = '{id}' AND status::text = 'ALIVE' AND last_heartbeat > '{}'",
                since.to_rfc3339()
            ))
            .await;
        if !rows.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent {id} did not come back:\n{}", chaos.agents[which].lock().await.tail(30));
}

async fn wait_etcd(port: u16) {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        let health = http.get(format!("http://127.0.0.1:{port}/health")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not start");
}

async fn kill_manager(chaos: &Chaos, which: usize) {
    chaos.begin_outage(Target::Manager(which));
    chaos.managers[which].lock().await.kill9().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos.managers[which].lock().await.start();
    wait_manager(chaos, which).await;
    chaos.end_outage(Target::Manager(which));
}

async fn kill_agent(chaos: &Chaos, which: usize) {
    let id = chaos.agent_ids[which].clone();
    chaos.begin_outage(Target::Agent(which));
    let killed = Utc::now();
    chaos.agents[which].lock().await.kill9().await;
    // It is declared LOST, and every session it held (and any placed on it in the
    // moments after) ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ended_after = None;
    let mut lost_after = None;
    while Instant::now() < deadline {
        let live = chaos.query(&format!("SELECT id FROM kernels WHERE agent = '{id}' AND {LIVE}")).await;
        let lost = chaos.query(&format!("SELECT 1 FROM agents WHERE id = '{id}' AND status::text = 'LOST'")).await;
        let waited = secs(Utc::now() - killed);
        if !lost.is_empty() && lost_after.is_none() {
            lost_after = Some(waited);
        }
        // Wait out the placement window too: a create placed late must end as well.
        if live.is_empty() && !lost.is_empty() && waited > PLACEMENT_WINDOW {
            ended_after = Some(waited);
            break;
        }
        if !live.is_empty() {
            ended_after = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The time at which the last of them ended.
    let rows = chaos
        .query(&format!(
            "SELECT MAX(terminated_at) AS last FROM kernels WHERE agent = '{id}' AND created_at <= '{}' \
             AND status::text IN ('TERMINATED', 'ERROR') AND terminated_at >= '{}'",
            Utc::now().to_rfc3339(),
            killed.to_rfc3339()
        ))
        .await;
    let last: Option<DateTime<Utc>> = rows.first().and_then(|r| r.try_get("", "last").ok()).flatten();
    match ended_after {
        None => chaos.violation(format!("{id}: not LOST, or its sessions not ended, 60 s after its kill")),
        Some(_) => {
            let took = last.map(|t| secs(t - killed).max(0.0)).unwrap_or(0.0);
            let lost = lost_after.unwrap_or(0.0);
            eprintln!("chaos: {id} declared LOST {lost:.2} s after its kill, its sessions ended {took:.2} s after");
            chaos.end_times.lock().unwrap().push(took);
            chaos.lost_times.lock().unwrap().push(lost);
            if lost > HEARTBEAT_TIMEOUT + END_SLACK {
                chaos.violation(format!("{id}: declared LOST {lost:.2} s after its kill"));
            }
            if took > HEARTBEAT_TIMEOUT + END_SLACK {
                chaos.violation(format!("{id}: its sessions ended {took:.2} s after its kill"));
            }
        }
    }
    let restarted = Utc::now();
    chaos.agents[which].lock().await.start();
    wait_agent_alive(chaos, which, restarted).await;
    chaos.end_outage(Target::Agent(which));
}

async fn kill_etcd(chaos: &Chaos) {
    chaos.begin_outage(Target::Etcd);
    chaos.etcd.lock().await.kill9().await;
    tokio::time::sleep(Duration::from_secs_f64(HEARTBEAT_TIMEOUT * 1.6)).await;
    chaos.etcd.lock().await.start();
    wait_etcd(chaos.etcd_port).await;
    chaos.end_outage(Target::Etcd);
}

/// One round of faults, each followed by a quiet spell.
async fn fault_round(chaos: &Chaos) {
    let quiet = Duration::from_secs(5);
    for which in 0..MANAGERS {
        kill_manager(chaos, which).await;
        tokio::time::sleep(quiet).await;
    }
    for which in 0..AGENTS {
        kill_agent(chaos, which).await;
        tokio::time::sleep(quiet).await;
    }
    kill_etcd(chaos).await;
    // The liveness checker's grace after the outage, then quiet.
    tokio::time::sleep(quiet + Duration::from_secs_f64(HEARTBEAT_TIMEOUT)).await;
}

/// Sets up the database, etcd and the processes; `None` (skipped) without services.
async fn setup() -> Option<Arc<Chaos>> {
    let (Ok(db_url), Ok(redis_url)) =
        (std::env::var("BACKENDAI_TEST_DB_URL"), std::env::var("BACKENDAI_TEST_REDIS_URL"))
    else {
        skip("set BACKENDAI_TEST_DB_URL and BACKENDAI_TEST_REDIS_URL");
        return None;
    };
    let Some(etcd_bin) = which("etcd") else {
        skip("no etcd binary on PATH (apt-get install etcd-server)");
        return None;
    };
    let manager_bin = PathBuf::from(env!("CARGO_BIN_EXE_backendai-manager"));
    let agent_bin = PathBuf::from(env!("CARGO_BIN_EXE_backendai-agent"));
    let dir = tempfile::Builder::new().prefix("backendai-chaos.").tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    eprintln!("chaos: logs in {}", dir.display());

    // A database of its own.
    let db_name = format!("bai_chaos_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(&db_url).await.unwrap();
    admin.execute_unprepared(&format!("CREATE DATABASE \"{db_name}\"")).await.unwrap();
    admin.close().await.ok();
    let (base, _) = db_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{db_name}");

    // etcd of its own: it gets killed.
    let etcd_port = free_port();
    let peer_port = free_port();
    let etcd_args = [
        "--name".to_owned(),
        "chaos".to_owned(),
        "--data-dir".to_owned(),
        dir.join("etcd").to_string_lossy().into_owned(),
        "--listen-client-urls".to_owned(),
        format!("http://127.0.0.1:{etcd_port}"),
        "--advertise-client-urls".to_owned(),
        format!("http://127.0.0.1:{etcd_port}"),
        "--listen-peer-urls".to_owned(),
        format!("http://127.0.0.1:{peer_port}"),
        "--initial-advertise-peer-urls".to_owned(),
        format!("http://127.0.0.1:{peer_port}"),
        "--initial-cluster".to_owned(),
        format!("chaos=http://127.0.0.1:{peer_port}"),
    ];
    let mut etcd = Proc::new("etcd", &etcd_bin, etcd_args.to_vec(), vec![], &dir);
    etcd.start();
    wait_etcd(etcd_port).await;

    let namespace = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let redis_addr = redis_url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let secret = format!("chaos-cluster-secret-{}", uuid::Uuid::new_v4().simple());
    let common = |data: &str| -> Vec<String> {
        [
            "--db-url",
            &url,
            "--etcd-addr",
            &format!("127.0.0.1:{etcd_port}"),
            "--redis-addr",
            &redis_addr,
            "--namespace",
            &namespace,
            "--data-dir",
            &dir.join(data).to_string_lossy(),
            "--heartbeat-timeout",
            &HEARTBEAT_TIMEOUT.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let manager_env = vec![
        ("BACKENDAI_MANAGER__CLUSTER_SECRET".to_owned(), secret.clone()),
        ("BACKENDAI_LOCAL_AGENT__ENABLED".to_owned(), "false".to_owned()),
        ("BACKENDAI_MANAGER__WORKERS".to_owned(), "2".to_owned()),
        // A create or destroy a killed manager left half-way is settled after these (+10 s).
        ("BACKENDAI_MANAGER__AGENT_CREATE_TIMEOUT".to_owned(), "10".to_owned()),
        ("BACKENDAI_MANAGER__AGENT_CALL_TIMEOUT".to_owned(), "10".to_owned()),
        ("BACKENDAI_DB__MAX_CONNECTIONS".to_owned(), "8".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    // As an operator sets up a cluster: schema, a key, the images.
    let fixture = dir.join("keypair.json");
    std::fs::write(
        &fixture,
        json!({"keypairs": [{
            "user_id": 7, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "is_active": true,
            "is_admin": false, "resource_policy": null, "concurrency_limit": 100, "concurrency_used": 0,
            "rate_limit": 10_000_000, "num_queries": 0
        }]})
        .to_string(),
    )
    .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for args in [
        vec!["schema", "oneshot"],
        vec!["fixture", "populate", fixture.to_str().unwrap()],
        vec!["etcd", "update-images", root.join("fixtures/images.toml").to_str().unwrap()],
        vec!["etcd", "update-aliases", root.join("fixtures/aliases.toml").to_str().unwrap()],
    ] {
        let out = std::process::Command::new(&manager_bin)
            .args(common("setup"))
            .args(&args)
            .envs(manager_env.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let ports: Vec<u16> = (0..MANAGERS).map(|_| free_port()).collect();
    let managers = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut args = common(&format!("manager{i}"));
            args.extend(["--service-port".to_owned(), port.to_string(), "--events-port".to_owned()]);
            args.push(free_port().to_string());
            args.push("serve".to_owned());
            Proc::new(&format!("manager{i}"), &manager_bin, args, manager_env.clone(), &dir)
        })
        .collect::<Vec<_>>();
    let agent_ids: Vec<String> = (0..AGENTS).map(|i| format!("i-chaos{i}-{}", &namespace[5..])).collect();
    let agents = agent_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let args = vec![
                "--agent-id".to_owned(),
                id.clone(),
                "--listen".to_owned(),
                format!("127.0.0.1:{}", free_port()),
                "--namespace".to_owned(),
                namespace.clone(),
                "--redis-addr".to_owned(),
                redis_addr.clone(),
                "--scratch-root".to_owned(),
                dir.join(format!("scratch{i}")).to_string_lossy().into_owned(),
            ];
            let env = vec![
                ("BACKENDAI_AGENT_CLUSTER_SECRET".to_owned(), secret.clone()),
                ("BACKENDAI_AGENT_HEARTBEAT_INTERVAL".to_owned(), HEARTBEAT_INTERVAL.to_string()),
                ("BACKENDAI_AGENT_STATS_INTERVAL".to_owned(), "2".to_owned()),
                ("BACKENDAI_AGENT_SLOTS__CPU".to_owned(), "4".to_owned()),
                ("BACKENDAI_AGENT_SLOTS__MEM".to_owned(), "8192".to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
            ];
            Proc::new(&format!("agent{i}"), &agent_bin, args, env, &dir)
        })
        .collect::<Vec<_>>();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    let chaos = Arc::new(Chaos {
        dir,
        db: Database::connect(&url).await.unwrap(),
        db_name,
        redis: redis::Client::open(redis_url.as_str()).unwrap(),
        namespace,
        proxy: Proxy { http, ports, next: AtomicUsize::new(0) },
        etcd: tokio::sync::Mutex::new(etcd),
        etcd_port,
        managers: managers.into_iter().map(tokio::sync::Mutex::new).collect(),
        agents: agents.into_iter().map(tokio::sync::Mutex::new).collect(),
        agent_ids,
        outages: Mutex::new(vec![]),
        calls: Mutex::new(vec![]),
        violations: Mutex::new(vec![]),
        end_times: Mutex::new(vec![]),
        lost_times: Mutex::new(vec![]),
        lost_seen: Mutex::new(vec![]),
        stop_load: AtomicBool::new(false),
    });
    let started = Utc::now();
    for (i, manager) in chaos.managers.iter().enumerate() {
        manager.lock().await.start();
        wait_manager(&chaos, i).await;
    }
    for (i, agent) in chaos.agents.iter().enumerate() {
        agent.lock().await.start();
        wait_agent_alive(&chaos, i, started).await;
    }
    Some(chaos)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

async fn deadlocks(chaos: &Chaos) -> i64 {
    let rows =
        chaos.query(&format!("SELECT deadlocks FROM pg_stat_database WHERE datname = '{}'", chaos.db_name)).await;
    rows.first().and_then(|r| r.try_get::<i64>("", "deadlocks").ok()).unwrap_or(0)
}

/// The kernel ids each agent reported in its last heartbeat (from the bus).
async fn reported_kernels(chaos: &Chaos) -> HashMap<String, Vec<String>> {
    let mut conn = chaos.redis.get_multiplexed_async_connection().await.unwrap();
    let stream = protocol::bus::heartbeats_stream(&chaos.namespace);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(200)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for entry in reply.ids {
        let Some(body) = entry.get::<String>(protocol::bus::BODY_FIELD) else { continue };
        let Ok(envelope) = serde_json::from_str::<Value>(&body) else { continue };
        let agent = envelope["agent_id"].as_str().unwrap_or_default().to_owned();
        if out.contains_key(&agent) {
            continue;
        }
        let kernels = envelope["data"]["kernels"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        out.insert(agent, kernels);
    }
    out
}

/// Kernel processes (with `BACKENDAI_KERNEL_ID` in their environment) orphaned outside
/// any of `agent_pids` (their ancestry reaches init without passing an agent; those of
/// other programs on the machine, such as other tests, are left out): pid, kernel id,
/// and the ancestry that was followed.
fn stray_kernel_processes(agent_pids: &HashSet<u32>) -> Vec<(u32, String, String)> {
    let parent = |pid: u32| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
    };
    let mut strays = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let Some(id) = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"BACKENDAI_KERNEL_ID".as_slice()))
            .and_then(|rest| rest.strip_prefix(b"=".as_slice()))
        else {
            continue;
        };
        let mut cursor = pid;
        let mut inside = false;
        let mut orphaned = false;
        let mut chain = vec![];
        for _ in 0..64 {
            let comm = std::fs::read_to_string(format!("/proc/{cursor}/comm")).unwrap_or_default();
            chain.push(format!("{cursor}:{}", comm.trim()));
            match parent(cursor) {
                Some(p) if agent_pids.contains(&p) => {
                    inside = true;
                    break;
                }
                Some(p) if p > 1 => cursor = p,
                Some(_) => {
                    orphaned = true;
                    break;
                }
                None => break,
            }
        }
        if !inside && orphaned {
            strays.push((pid, String::from_utf8_lossy(id).into_owned(), chain.join(" < ")));
        }
    }
    strays
}

/// The checks once the load has stopped and the cluster has settled.
async fn final_checks(chaos: &Chaos) {
    // Nothing stuck: every session ends PREPARING/TERMINATING within the call timeouts.
    let mut stuck = vec![];
    for _ in 0..200 {
        stuck = chaos
            .query("SELECT sess_id, status::text AS status FROM kernels WHERE status::text NOT IN ('RUNNING', 'TERMINATED', 'ERROR')")
            .await
            .iter()
            .map(|r| format!("{} {}", r.try_get::<String>("", "sess_id").unwrap(), r.try_get::<String>("", "status").unwrap()))
            .collect();
        if stuck.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !stuck.is_empty() {
        chaos.violation(format!("stuck sessions: {stuck:?}"));
    }
    // Quota: concurrency_used equals the live sessions of the key.
    let rows = chaos
        .query(&format!(
            "SELECT k.concurrency_used AS used, (SELECT COUNT(*) FROM kernels WHERE access_key = k.access_key AND {LIVE}) AS live \
             FROM keypairs k WHERE k.access_key = '{ACCESS_KEY}'"
        ))
        .await;
    let used: i32 = rows[0].try_get("", "used").unwrap();
    let live: i64 = rows[0].try_get("", "live").unwrap();
    if i64::from(used) != live {
        chaos.violation(format!("concurrency_used {used} but {live} live sessions"));
    }
    // Slots: each agent's occupied slots equal the sum of its live kernels'.
    let rows = chaos
        .query(&format!(
            "SELECT a.id, a.used_cpu_slots AS cpu, a.used_mem_slots AS mem, \
             COALESCE((SELECT SUM(cpu_slot) FROM kernels WHERE agent = a.id AND {LIVE}), 0) AS kcpu, \
             COALESCE((SELECT SUM(mem_slot) FROM kernels WHERE agent = a.id AND {LIVE}), 0)::bigint AS kmem \
             FROM agents a"
        ))
        .await;
    for row in rows {
        let id: String = row.try_get("", "id").unwrap();
        let (cpu, kcpu): (f64, f64) = (row.try_get("", "cpu").unwrap(), row.try_get("", "kcpu").unwrap());
        let (mem, kmem): (i64, i64) = (row.try_get("", "mem").unwrap(), row.try_get("", "kmem").unwrap());
        if (cpu - kcpu).abs() > 1e-6 || mem != kmem {
            chaos.violation(format!("{id}: occupies cpu {cpu} mem {mem}, its live kernels cpu {kcpu} mem {kmem}"));
        }
    }
    // Kernels: what the agents hold is what the database has live, and no kernel
    // process runs outside an agent.
    let live_ids: HashSet<String> = chaos
        .query(&format!("SELECT id::text AS id FROM kernels WHERE {LIVE}"))
        .await
        .iter()
        .map(|r| r.try_get("", "id").unwrap())
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(HEARTBEAT_INTERVAL * 2.0)).await;
    for (agent, kernels) in reported_kernels(chaos).await {
        let unowned: Vec<&String> = kernels.iter().filter(|k| !live_ids.contains(*k)).collect();
        if !unowned.is_empty() {
            chaos.violation(format!("{agent} holds kernels no live session owns: {unowned:?}"));
        }
    }
    let mut agent_pids = HashSet::new();
    for agent in &chaos.agents {
        agent_pids.extend(agent.lock().await.pid());
    }
    // Seen twice a second apart: not a process starting or exiting at that moment.
    let first = stray_kernel_processes(&agent_pids);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again: HashSet<u32> = stray_kernel_processes(&agent_pids).into_iter().map(|(pid, _, _)| pid).collect();
    let strays: Vec<_> = first.into_iter().filter(|(pid, _, _)| again.contains(pid)).collect();
    if !strays.is_empty() {
        chaos.violation(format!("kernel processes outside any agent: {strays:?}"));
    }
}

/// Judges every call and every abnormal end of a session.
async fn judge(chaos: &Chaos) -> BTreeMap<&'static str, usize> {
    let mut figures = BTreeMap::new();
    // Where each session was placed.
    let placed: HashMap<String, (Option<String>, DateTime<Utc>)> = chaos
        .query("SELECT sess_id, agent, created_at FROM kernels")
        .await
        .iter()
        .map(|r| {
            let created: DateTime<chrono::FixedOffset> = r.try_get("", "created_at").unwrap();
            (r.try_get("", "sess_id").unwrap(), (r.try_get("", "agent").unwrap(), created.with_timezone(&Utc)))
        })
        .collect();
    let calls = std::mem::take(&mut *chaos.calls.lock().unwrap());
    let window = chrono::TimeDelta::milliseconds((PLACEMENT_WINDOW * 1000.0) as i64);
    let mut excused = 0;
    for call in &calls {
        *figures
            .entry(match call.kind {
                Kind::Create => "calls: create",
                Kind::Execute => "calls: execute",
                Kind::Destroy => "calls: destroy",
            })
            .or_default() += 1;
        let Some(failure) = &call.failure else { continue };
        let on_killed_manager = chaos.down_during(Target::Manager(call.manager), call.start, call.end);
        let on_killed_agent = placed.get(&call.token).is_some_and(|(agent, created)| {
            agent
                .as_deref()
                .is_some_and(|agent| chaos.agent_killed_during(agent, (*created).min(call.start) - window, call.end))
        });
        // A create refused before any row was written, while an agent was just killed.
        let unplaced_create = call.kind == Kind::Create
            && !placed.contains_key(&call.token)
            && (0..AGENTS).any(|i| chaos.down_during(Target::Agent(i), call.start - window, call.end));
        if on_killed_manager || on_killed_agent || unplaced_create {
            excused += 1;
        } else {
            chaos.violation(format!(
                "{:?} {} on manager {} at {} failed: {failure}",
                call.kind,
                call.token,
                call.manager,
                call.start.format("%H:%M:%S%.3f")
            ));
        }
    }
    figures.insert("calls: failed, in flight on a killed process or aimed at a killed agent", excused);
    // Sessions that ended abnormally: only on agents that were killed.
    let abnormal = chaos
        .query(
            "SELECT sess_id, agent, status::text AS status, COALESCE(status_info, '') AS info, created_at, terminated_at \
             FROM kernels WHERE status::text = 'ERROR' OR (status::text = 'TERMINATED' AND status_info IS DISTINCT FROM 'user-requested')",
        )
        .await;
    let mut lost_on_survivors = 0;
    for row in &abnormal {
        let token: String = row.try_get("", "sess_id").unwrap();
        let agent: Option<String> = row.try_get("", "agent").unwrap();
        let info: String = row.try_get("", "info").unwrap();
        let created: DateTime<chrono::FixedOffset> = row.try_get("", "created_at").unwrap();
        let ended: Option<DateTime<chrono::FixedOffset>> = row.try_get("", "terminated_at").unwrap();
        let created = created.with_timezone(&Utc);
        let ended = ended.map(|e| e.with_timezone(&Utc)).unwrap_or_else(Utc::now);
        let on_killed_agent = agent.as_deref().is_some_and(|a| chaos.agent_killed_during(a, created - window, ended));
        // A create in flight on a manager that was killed (ended when found stranded).
        let interrupted = info == "creation-interrupted"
            && (0..MANAGERS).any(|m| chaos.down_during(Target::Manager(m), created - window, created + window));
        let explained = on_killed_agent || interrupted;
        if !explained {
            lost_on_survivors += 1;
            chaos.violation(format!("session {token} on {agent:?} ended {info} though its agent was not killed"));
        }
    }
    figures.insert(
        "sessions ended by a fault (killed agent, or create cut by a killed manager)",
        abnormal.len() - lost_on_survivors,
    );
    figures.insert("sessions lost on surviving agents", lost_on_survivors);
    // LOST only for killed agents.
    let mut false_lost = 0;
    for (agent, at) in chaos.lost_seen.lock().unwrap().clone() {
        let since = at - chrono::TimeDelta::seconds((HEARTBEAT_TIMEOUT + 10.0) as i64);
        if !chaos.agent_killed_during(&agent, since, at) {
            false_lost += 1;
            chaos.violation(format!("{agent} declared LOST at {at} though it was not killed"));
        }
    }
    figures.insert("false LOST", false_lost);
    let sessions = placed.len();
    figures.insert("sessions created", sessions);
    let mut latencies: Vec<f64> = calls
        .iter()
        .filter(|c| c.kind == Kind::Execute && c.failure.is_none())
        .map(|c| secs(c.end - c.start))
        .collect();
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        eprintln!("chaos: execute latency p50 {:.1} ms, p99 {:.1} ms", at(0.5) * 1000.0, at(0.99) * 1000.0);
    }
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_survives_the_kill_of_any_process() {
    let Some(chaos) = setup().await else { return };
    let started = Instant::now();
    let min_secs = env_number("BACKENDAI_CHAOS_SECS", 0);
    let clients = env_number("BACKENDAI_CHAOS_CLIENTS", 4) as usize;
    let deadlocks_before = deadlocks(&chaos).await;
    let mut load: Vec<_> = (0..clients).map(|n| tokio::spawn(client(chaos.clone(), n))).collect();
    load.push(tokio::spawn(watch_agents(chaos.clone())));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut rounds = 0;
    while rounds == 0 || started.elapsed().as_secs() < min_secs {
        fault_round(&chaos).await;
        rounds += 1;
    }
    chaos.stop_load.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    final_checks(&chaos).await;
    let mut figures = judge(&chaos).await;
    // Let the backends flush their statistics.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    figures.insert("deadlocks (pg_stat_database)", (deadlocks(&chaos).await - deadlocks_before) as usize);
    figures.insert("fault rounds", rounds);
    let ends = chaos.end_times.lock().unwrap().clone();
    let worst = ends.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "\nchaos: {:.0} s of load, {clients} clients, heartbeat {HEARTBEAT_INTERVAL} s, timeout {HEARTBEAT_TIMEOUT} s",
        started.elapsed().as_secs_f64()
    );
    for (what, n) in &figures {
        eprintln!("chaos: {what}: {n}");
    }
    eprintln!("chaos: a killed agent's sessions ended within {worst:.2} s of its kill (worst of {})", ends.len());
    let lost = chaos.lost_times.lock().unwrap().clone();
    let worst_lost = lost.iter().copied().fold(0.0, f64::max);
    eprintln!("chaos: a killed agent was declared LOST within {worst_lost:.2} s of its kill (worst of {})", lost.len());

    for manager in &chaos.managers {
        manager.lock().await.stop(Duration::from_secs(10)).await;
    }
    for agent in &chaos.agents {
        agent.lock().await.stop(Duration::from_secs(10)).await;
    }
    chaos.etcd.lock().await.kill9().await;
    let violations = chaos.violations.lock().unwrap().clone();
    if violations.is_empty() {
        std::fs::remove_dir_all(&chaos.dir).ok();
        if let Ok(admin) = Database::connect(std::env::var("BACKENDAI_TEST_DB_URL").unwrap_or_default()).await {
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", chaos.db_name);
            admin.execute_unprepared(&drop).await.ok();
            admin.close().await.ok();
        }
    } else {
        for manager in &chaos.managers {
            let manager = manager.lock().await;
            eprintln!("--- {} ({})\n{}", manager.name, manager.log.display(), manager.tail(40));
        }
    }
    let shown: Vec<&str> = violations.iter().take(50).map(String::as_str).collect();
    assert!(violations.is_empty(), "{} violations, the first ones:\n{}", violations.len(), shown.join("\n"));
    assert!(figures["calls: execute"] > 0, "no load ran");
}
