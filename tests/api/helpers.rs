//! `spawn_app` and typed helpers to talk to it.

use std::io::Write;
use std::sync::Once;

use actix_web::dev::ServerHandle;
use actix_web::web;
use backendai_manager::auth::{self, HashAlgorithm, SignedParts};
use backendai_manager::config::{Secret, Settings};
use backendai_manager::startup::Application;
use backendai_manager::state::AppState;
use backendai_manager::{db, fixtures};
use chrono::{DateTime, FixedOffset, Utc};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};

/// Which stores a test app uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file and in-process stores.
    Embedded,
    /// PostgreSQL, Redis and etcd from `BACKENDAI_TEST_*`.
    Services,
}

/// Both backends, for tests that must pass on each.
pub const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Services];

/// Addresses of the real services.
pub struct Services {
    pub db_url: String,
    pub redis_addr: String,
    pub etcd_addr: String,
}

fn required() -> bool {
    std::env::var("BACKENDAI_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips loudly, or fails when `BACKENDAI_REQUIRE_SERVICES=1`.
pub fn skip(what: &str) {
    assert!(!required(), "BACKENDAI_REQUIRE_SERVICES=1 but {what}");
    // Straight to the process's stderr: libtest would swallow eprintln! of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED (set BACKENDAI_TEST_DB_URL, BACKENDAI_TEST_REDIS_URL, BACKENDAI_TEST_ETCD_ADDR): {what}"
    );
}

/// The real services, when configured.
pub fn services() -> Option<Services> {
    let db_url = std::env::var("BACKENDAI_TEST_DB_URL").ok();
    let redis = std::env::var("BACKENDAI_TEST_REDIS_URL").ok();
    let etcd_addr = std::env::var("BACKENDAI_TEST_ETCD_ADDR").ok();
    match (db_url, redis, etcd_addr) {
        (Some(db_url), Some(redis), Some(etcd_addr)) => {
            let redis_addr = redis.trim_start_matches("redis://").trim_end_matches('/').to_owned();
            Some(Services { db_url, redis_addr, etcd_addr })
        }
        _ => {
            skip("the real services are not configured");
            None
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh, migrated PostgreSQL database on the test server; returns its URL.
pub async fn fresh_postgres(base_url: &str) -> String {
    let name = unique("bai_test_");
    let admin = Database::connect(base_url).await.expect("connect to the test PostgreSQL");
    admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create a test database");
    admin.close().await.ok();
    let (prefix, _) = base_url.rsplit_once('/').expect("a database URL with a name");
    let url = format!("{prefix}/{name}");
    let db = Database::connect(&url).await.expect("connect to the new database");
    db::upgrade(&db).await.expect("migrate the new database");
    db.close().await.ok();
    url
}

/// A running manager with its own database and stores and a fresh admin key.
pub struct TestApp {
    pub address: String,
    pub host: String,
    pub client: reqwest::Client,
    pub state: web::Data<AppState>,
    pub access_key: String,
    pub secret_key: String,
    handle: ServerHandle,
    /// The application's task, when this helper started it: stopping waits for it to
    /// finish its shutdown (so that its database connections are closed).
    task: Option<actix_web::rt::task::JoinHandle<anyhow::Result<()>>>,
    _data_dir: Option<tempfile::TempDir>,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            backendai_manager::telemetry::init(&Default::default());
        }
    });
}

/// Test settings for `backend` (None when its services are not configured).
pub async fn test_settings(backend: Backend) -> Option<(Settings, tempfile::TempDir)> {
    init_logs();
    let data_dir = tempfile::tempdir().expect("a temporary folder");
    // Kernels run as an unprivileged uid: their scratch dir must be reachable.
    std::fs::set_permissions(data_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut settings = Settings::default();
    settings.manager.service_port = 0;
    settings.manager.events_port = 0;
    settings.manager.workers = 2;
    // Many tests run at once against one PostgreSQL server.
    settings.db.max_connections = 6;
    settings.manager.cluster_secret = Secret::new("test-cluster-secret");
    settings.manager.namespace = unique("test");
    settings.db.data_dir = data_dir.path().to_owned();
    if backend == Backend::Services {
        let services = services()?;
        settings.db.url = Some(Secret::new(fresh_postgres(&services.db_url).await));
        settings.redis.addr = Some(services.redis_addr);
        settings.etcd.addr = Some(services.etcd_addr);
    }
    Some((settings, data_dir))
}

/// Starts a manager on `backend` (None, after a loud skip, when its services are
/// not configured).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// Held by the tests that count this process's open files: they open and drop
/// hundreds of sockets each, so they must not run while another one counts.
pub async fn fd_counting() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// TCP connections with `port` at either end (loopback, both ends in this process count
/// once each), not listening and not in TIME_WAIT: the open connections of one server,
/// whatever the other tests of this process open meanwhile.
pub fn tcp_connections(port: u16) -> usize {
    let port_of = |address: &str| address.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3
                        && (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
                        && !matches!(fields[3], "0A" | "06")
                })
                .count()
        })
        .sum()
}

/// The port `app` listens on.
pub fn port_of(app: &TestApp) -> u16 {
    app.host.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

/// Waits up to 3 s for the connections of `port` to be back to at most `before + margin`
/// (see [`tcp_connections`]); the last count.
pub async fn connections_settled(port: u16, before: usize, margin: usize) -> usize {
    let mut after = tcp_connections(port);
    for _ in 0..30 {
        if after <= before + margin {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = tcp_connections(port);
    }
    after
}

/// Polls `check` every 50 ms until it gives `Some`, for up to `within`, and returns
/// its value: for a condition that must come true, however busy the machine is.
/// Panics, naming `what`, when it never does.
pub async fn eventually<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "not so after {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A self-signed certificate and key for 127.0.0.1 in `dir` (skipped without openssl).
pub async fn test_certificate(dir: &std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = tokio::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if !made.is_ok_and(|s| s.success()) {
        skip("openssl is not installed to make a test certificate");
        return None;
    }
    Some((cert, key))
}

/// Like [`spawn_app`], with settings changed by `customize`.
pub async fn spawn_app_with(backend: Backend, customize: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let (mut settings, data_dir) = test_settings(backend).await?;
    customize(&mut settings);
    let mut app = start_app(settings).await;
    app._data_dir = Some(data_dir);
    Some(app)
}

/// Starts a manager with `settings` (several may share one database and config store),
/// with a keypair of its own.
pub async fn start_app(settings: Settings) -> TestApp {
    let app = Application::build(settings).await.expect("the application builds");
    let port = app.port();
    let state = app.state();
    let handle = app.handle();
    // As an operator would with `etcd update-images` (the embedded store seeds itself).
    backendai_manager::images::seed_builtin(state.stores.config.as_ref()).await.expect("load the images");
    let task = Some(actix_web::rt::spawn(app.run_until_stopped()));
    let access_key = unique("AK").chars().take(20).collect::<String>().to_uppercase();
    let secret_key = unique("secret");
    add_keypair(&state, &access_key, &secret_key, 1000, true).await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        host: format!("127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        state,
        access_key,
        secret_key,
        handle,
        task,
        _data_dir: None,
    }
}

/// Creates (or gets) the session `token` of the app's key with the image `lang`.
pub async fn create_session(app: &TestApp, lang: &str, token: &str) -> reqwest::Response {
    app.send(app.signed("POST", "/v3/kernel/create", Some(json!({"lang": lang, "clientSessionToken": token})))).await
}

/// The sessions (of any key) named `token`, from the database.
pub async fn sessions_named(app: &TestApp, token: &str) -> Vec<entity::kernels::Model> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let named = entity::kernels::Column::SessId.eq(token);
    entity::kernels::Entity::find().filter(named).all(&app.state.db).await.unwrap()
}

/// Inserts a keypair.
pub async fn add_keypair(state: &AppState, access_key: &str, secret_key: &str, rate_limit: i32, is_active: bool) {
    let fixture = serde_json::from_value(json!({"keypairs": [{
        "user_id": 7, "access_key": access_key, "secret_key": secret_key,
        "rate_limit": rate_limit, "is_active": is_active, "concurrency_limit": 5,
    }]}))
    .unwrap();
    fixtures::populate(&state.db, fixture).await.expect("insert a keypair");
}

/// What to sign and send.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Vec<u8>,
    pub content_type: &'a str,
    /// `X-BackendAI-Version`; from `v4.20181215` on no body is signed.
    pub version: &'a str,
    pub date: DateTime<FixedOffset>,
    pub access_key: &'a str,
    pub secret_key: &'a str,
}

/// The headers that sign `request` to the server at `host`, as the official client makes them.
pub fn signature_headers(host: &str, request: &Signed<'_>) -> Vec<(&'static str, String)> {
    let date_header = request.date.to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let signed_body: &[u8] = if request.version >= "v4.20181215" { b"" } else { &request.body };
    let body_hash = HashAlgorithm::Sha256.hex_digest(signed_body);
    let parts = SignedParts {
        method: request.method,
        path_and_query: request.path,
        date_header: &date_header,
        date: request.date,
        host,
        // The media type without parameters (`multipart/form-data; boundary=...`).
        content_type: request.content_type.split(';').next().unwrap_or_default().trim(),
        version_header: "x-backendai-version",
        version: request.version,
        body_hash: &body_hash,
    };
    let signature = auth::sign(HashAlgorithm::Sha256, request.secret_key, &parts);
    let mut headers = vec![
        ("Date", date_header),
        ("X-BackendAI-Version", request.version.to_owned()),
        ("Authorization", format!("BackendAI signMethod=HMAC-SHA256, credential={}:{signature}", request.access_key)),
    ];
    if !request.content_type.is_empty() {
        headers.push(("Content-Type", request.content_type.to_owned()));
    }
    headers
}

impl TestApp {
    /// A handle on an application built by the test itself, signing with the
    /// embedded example key.
    pub fn attach(port: u16, state: web::Data<AppState>, handle: ServerHandle) -> Self {
        Self {
            address: format!("http://127.0.0.1:{port}"),
            host: format!("127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            state,
            access_key: "AKIAIOSFODNN7EXAMPLE".to_owned(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            handle,
            task: None,
            _data_dir: None,
        }
    }

    /// A signed request with the app's key and a JSON body.
    pub fn signed<'a>(&'a self, method: &'a str, path: &'a str, body: Option<Value>) -> Signed<'a> {
        Signed {
            method,
            path,
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            content_type: "application/json",
            version: "v2.20170315",
            date: Utc::now().fixed_offset(),
            access_key: &self.access_key,
            secret_key: &self.secret_key,
        }
    }

    /// A signed request as client 1.5.1 makes it: API v4, unprefixed path, no body in
    /// the signature.
    pub fn signed_v4<'a>(&'a self, method: &'a str, path: &'a str, body: Option<Value>) -> Signed<'a> {
        Signed { version: "v4.20181215", ..self.signed(method, path, body) }
    }

    /// The headers that sign `request`, as the official client makes them.
    pub fn signature_headers(&self, request: &Signed<'_>) -> Vec<(&'static str, String)> {
        signature_headers(&self.host, request)
    }

    /// Sends a signed request, signed as the official client does.
    pub async fn send(&self, request: Signed<'_>) -> reqwest::Response {
        let mut builder =
            self.client.request(request.method.parse().unwrap(), format!("{}{}", self.address, request.path));
        for (name, value) in self.signature_headers(&request) {
            builder = builder.header(name, value);
        }
        builder.body(request.body).send().await.expect("the request is sent")
    }

    /// A second handle on the same running app (to sign with another key).
    pub fn clone_handle(&self) -> Self {
        Self {
            address: self.address.clone(),
            host: self.host.clone(),
            client: self.client.clone(),
            state: self.state.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            handle: self.handle.clone(),
            task: None,
            _data_dir: None,
        }
    }

    /// An unsigned request.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("the request is sent")
    }

    /// Waits until the built-in agent registered as ALIVE.
    pub async fn wait_for_agent(&self) {
        use entity::agents::{self, AgentStatus};
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        for _ in 0..100 {
            let alive = agents::Entity::find()
                .filter(agents::Column::Status.eq(AgentStatus::Alive))
                .all(&self.state.db)
                .await
                .unwrap();
            if !alive.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the built-in agent did not register");
    }

    /// Stops the server and waits until it stopped.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task {
            task.await.expect("the application task").expect("a clean shutdown");
        }
    }
}

/// Asserts a problem+json response of the given status and problem name.
pub async fn assert_problem(response: reqwest::Response, status: u16, name: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).as_deref(),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["type"], format!("https://api.backend.ai/probs/{name}"), "{body}");
    assert!(body["title"].is_string(), "{body}");
    body
}

/// Sends `request` with the headers that sign it, but `body` instead of its body.
pub async fn send_with_body(app: &TestApp, request: Signed<'_>, body: Vec<u8>) -> reqwest::Response {
    let headers = app.signature_headers(&request);
    let method: reqwest::Method = request.method.parse().unwrap();
    let mut builder = app.client.request(method, format!("{}{}", app.address, request.path)).body(body);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.send().await.expect("the request is sent")
}

/// A request signed as client 1.5.1 signs it (API v4).
pub async fn v4(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    app.send(app.signed_v4(method, path, body)).await
}

/// The JSON body of a response of `status` (null when empty).
pub async fn ok_json(response: reqwest::Response, status: u16) -> Value {
    let code = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(code, status, "{text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// Adds a keypair of the user `user_id` (a string id, as API v4 has them) and returns a
/// handle that signs with it.
pub async fn add_user_key(app: &TestApp, user_id: &str) -> TestApp {
    add_key_of(app, user_id, false).await
}

/// Adds a keypair of `user_id`, an admin's when `is_admin`; a handle that signs with it.
pub async fn add_key_of(app: &TestApp, user_id: &str, is_admin: bool) -> TestApp {
    let access_key = format!("AKIA{}", &uuid::Uuid::new_v4().simple().to_string()[..16].to_ascii_uppercase());
    let secret_key = unique("secret");
    let fixture = serde_json::from_value(json!({"keypairs": [{
        "user_id": user_id, "access_key": access_key, "secret_key": secret_key, "concurrency_limit": 5,
        "is_admin": is_admin,
    }]}))
    .unwrap();
    fixtures::populate(&app.state.db, fixture).await.expect("insert a keypair");
    let mut handle = app.clone_handle();
    handle.access_key = access_key;
    handle.secret_key = secret_key;
    handle
}

/// A multipart/form-data body of files in fields `src`, the file names percent-encoded
/// as client 1.5.1 sends them; returns the Content-Type and the body.
pub fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = unique("boundary");
    let mut body = Vec::new();
    for (name, data) in files {
        let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"src\"; filename=\"{encoded}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The parts of a multipart/mixed answer: each part's headers and its bytes.
pub async fn multipart_parts(response: reqwest::Response) -> Vec<(Vec<String>, Vec<u8>)> {
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = content_type.split("boundary=").nth(1).expect("a boundary").to_owned();
    let body = response.bytes().await.unwrap().to_vec();
    let delimiter = format!("--{boundary}");
    assert!(body.starts_with(delimiter.as_bytes()), "a preamble before the first part");
    let mut parts = Vec::new();
    let mut rest = &body[delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after a delimiter");
        let header_end = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("part headers end");
        let headers: Vec<String> =
            String::from_utf8_lossy(&rest[..header_end]).split("\r\n").map(str::to_owned).collect();
        rest = &rest[header_end + 4..];
        let next = format!("\r\n{delimiter}");
        let end = rest.windows(next.len()).position(|w| w == next.as_bytes()).expect("a closing delimiter");
        parts.push((headers, rest[..end].to_vec()));
        rest = &rest[end + next.len()..];
    }
    parts
}
