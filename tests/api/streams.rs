//! Session lifecycle events over Server-Sent Events: ordered, resumable with
//! `Last-Event-ID` exactly once, scoped to the caller's key, and kept across a
//! manager restart.

use std::time::Duration;

use backendai_manager::startup::Application;
use serde_json::{json, Value};

use crate::helpers::{add_keypair, assert_problem, spawn_app, test_settings, unique, Backend, TestApp, BACKENDS};

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: i64,
    pub name: String,
    pub data: Value,
}

/// Opens a stream and reads `count` events (keep-alive comments are skipped).
pub async fn read_events(app: &TestApp, path: &str, last_event_id: Option<i64>, count: usize) -> Vec<Sse> {
    collect(open_events(app, path, last_event_id).await, count).await
}

/// Opens a stream: once its answer's head is in, every later event will be sent on it
/// (the stream subscribes and fixes where it resumes before answering).
pub async fn open_events(app: &TestApp, path: &str, last_event_id: Option<i64>) -> reqwest::Response {
    let mut request = app.signed("GET", path, None);
    request.content_type = "";
    let mut builder = app.client.get(format!("{}{path}", app.address));
    for (name, value) in app.signature_headers(&request) {
        builder = builder.header(name, value);
    }
    // Not part of the signature.
    if let Some(id) = last_event_id {
        builder = builder.header("Last-Event-ID", id.to_string());
    }
    let response = builder.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

pub async fn collect(mut response: reqwest::Response, count: usize) -> Vec<Sse> {
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk()).await.expect("events in time").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream stays open")));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field =
                |name: &str| block.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned));
            if let (Some(id), Some(name), Some(data)) = (field("id"), field("event"), field("data")) {
                events.push(Sse { id: id.parse().unwrap(), name, data: serde_json::from_str(&data).unwrap() });
            }
        }
    }
    events
}

async fn create(app: &TestApp, token: &str) {
    let body = json!({"lang": "bash", "clientSessionToken": token});
    assert_eq!(app.send(app.signed("POST", "/v3/kernel/create", Some(body))).await.status().as_u16(), 201);
}

async fn destroy(app: &TestApp, token: &str) {
    assert_eq!(app.send(app.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await.status().as_u16(), 200);
}

#[actix_web::test]
async fn a_session_stream_shows_its_lifecycle_in_order() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("sse");
        create(&app, &token).await;
        let path = format!("/v3/stream/kernel/{token}/events");
        let first = read_events(&app, &path, Some(0), 3).await;
        let names: Vec<&str> = first.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["pending", "preparing", "running"], "{backend:?}");
        assert_eq!(first[0].data["sessionId"], token);
        // Live: a stream opened now sees the destroy as it happens.
        let live = open_events(&app, &path, None).await;
        destroy(&app, &token).await;
        let events = collect(live, 2).await;
        assert_eq!(events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["terminating", "terminated"]);
        assert_eq!(events[1].data["reason"], "user-requested");
        assert!(events[0].id > first[2].id && events[1].id > events[0].id);
        app.stop().await;
    }
}

#[actix_web::test]
async fn resuming_with_last_event_id_sends_each_later_event_once() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("sse");
    create(&app, &token).await;
    destroy(&app, &token).await;
    let path = format!("/v3/stream/kernel/{token}/events");
    let all = read_events(&app, &path, Some(0), 5).await;
    assert_eq!(
        all.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["pending", "preparing", "running", "terminating", "terminated"]
    );
    let resumed = read_events(&app, &path, Some(all[2].id), 2).await;
    assert_eq!(resumed.iter().map(|e| e.id).collect::<Vec<_>>(), [all[3].id, all[4].id]);
    // Nothing more arrives after those two: a new event is the next thing read.
    let second = unique("sse");
    let later = open_events(&app, "/v3/stream/events", Some(all[4].id)).await;
    create(&app, &second).await;
    let later = collect(later, 1).await;
    assert_eq!(later[0].name, "pending");
    assert_eq!(later[0].data["sessionId"], second);
    app.stop().await;
}

#[actix_web::test]
async fn the_key_stream_shows_only_the_callers_sessions() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let other = unique("AKIA").chars().take(20).collect::<String>().to_uppercase();
    add_keypair(&app.state, &other, "other-secret", 100, true).await;
    let mine = unique("mine");
    create(&app, &mine).await;
    let mut request =
        app.signed("POST", "/v3/kernel/create", Some(json!({"lang": "bash", "clientSessionToken": unique("theirs")})));
    request.access_key = &other;
    request.secret_key = "other-secret";
    assert_eq!(app.send(request).await.status().as_u16(), 201);
    let second = unique("mine");
    create(&app, &second).await;
    let events = read_events(&app, "/v3/stream/events", Some(0), 6).await;
    let sessions: Vec<&str> = events.iter().map(|e| e.data["sessionId"].as_str().unwrap()).collect();
    assert_eq!(
        sessions,
        [mine.as_str(), mine.as_str(), mine.as_str(), second.as_str(), second.as_str(), second.as_str()]
    );
    app.stop().await;
}

#[actix_web::test]
async fn unknown_or_foreign_sessions_and_bad_ids_are_refused() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let response = app.send(app.signed("GET", "/v3/stream/kernel/no-such-session/events", None)).await;
    assert_problem(response, 404, "kernel-not-found").await;
    let other = unique("AKIA").chars().take(20).collect::<String>().to_uppercase();
    add_keypair(&app.state, &other, "other-secret", 100, true).await;
    let token = unique("sse");
    create(&app, &token).await;
    let path = format!("/v3/stream/kernel/{token}/events");
    let mut request = app.signed("GET", &path, None);
    request.access_key = &other;
    request.secret_key = "other-secret";
    assert_problem(app.send(request).await, 404, "kernel-not-found").await;
    assert_problem(app.get("/v3/stream/events").await, 401, "auth-failed").await;
    let response = app.send(app.signed("GET", "/v3/stream/events?last_event_id=abc", None)).await;
    assert_problem(response, 400, "invalid-api-params").await;
    app.stop().await;
}

/// The events live in the database: a new manager process resumes the stream.
#[actix_web::test]
async fn streams_resume_across_a_manager_restart() {
    let (mut settings, data_dir) = test_settings(Backend::Embedded).await.unwrap();
    settings.local_agent.enabled = true;
    let first = Application::build(settings.clone()).await.unwrap();
    let (port, state, handle) = (first.port(), first.state(), first.handle());
    let running = actix_web::rt::spawn(first.run_until_stopped());
    let app = TestApp::attach(port, state, handle.clone());
    app.wait_for_agent().await;
    let token = unique("sse");
    create(&app, &token).await;
    let before = read_events(&app, "/v3/stream/events", Some(0), 2).await;
    handle.stop(true).await;
    // Its shutdown done (its database and stores closed) before the next one opens them.
    running.await.unwrap().unwrap();

    let second = Application::build(settings.clone()).await.unwrap();
    let (port, state, handle) = (second.port(), second.state(), second.handle());
    actix_web::rt::spawn(second.run_until_stopped());
    let app = TestApp::attach(port, state, handle);
    let after = read_events(&app, "/v3/stream/events", Some(0), 2).await;
    assert_eq!(before.iter().map(|e| e.id).collect::<Vec<_>>(), after.iter().map(|e| e.id).collect::<Vec<_>>());
    drop(data_dir);
}

/// An idle stream gets a comment line every 15 seconds, so proxies keep it open.
#[actix_web::test]
async fn idle_streams_get_keep_alive_comments() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let mut response = app.send(app.signed("GET", "/v3/stream/events", None)).await;
    assert_eq!(response.status().as_u16(), 200);
    let chunk = tokio::time::timeout(Duration::from_secs(25), response.chunk()).await.expect("a keep-alive in time");
    let chunk = chunk.unwrap().expect("the stream stays open");
    assert_eq!(&chunk[..], b": keep-alive\n\n");
    drop(response);
    app.stop().await;
}

/// An event-stream client's connection, plain or TLS.
enum Client {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Client {
    /// Goes away without a word: half of them close, half reset the connection.
    fn drop_abruptly(self, reset: bool) {
        let tcp = match &self {
            Client::Plain(tcp) => tcp,
            Client::Tls(tls) => tls.get_ref().0,
        };
        if reset {
            tcp.set_zero_linger().unwrap();
        }
    }
}

/// Opens `/v3/stream/events` signed by `key` and reads the answer's head.
async fn open_event_stream(app: &TestApp, key: &TestApp, tls: Option<&tokio_rustls::TlsConnector>) -> Client {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn request<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, head: &str) {
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let signed = key.signed("GET", "/v3/stream/events", None);
    let mut head = format!("GET /v3/stream/events HTTP/1.1\r\nHost: {}\r\n", app.host);
    for (name, value) in key.signature_headers(&signed) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let tcp = tokio::net::TcpStream::connect(&app.host).await.unwrap();
    match tls {
        None => {
            let mut tcp = tcp;
            request(&mut tcp, &head).await;
            Client::Plain(tcp)
        }
        Some(connector) => {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            request(&mut tls, &head).await;
            Client::Tls(Box::new(tls))
        }
    }
}

/// A client that trusts only `cert`.
fn tls_connector(cert: &std::path::Path) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Opens 1,000 event streams and drops them mid-stream: the manager releases every
/// socket, task and buffer of those streams within a second or two, not at the next
/// keep-alive write (15 s).
async fn assert_dropped_streams_are_released(app: &TestApp, tls: Option<&tokio_rustls::TlsConnector>) {
    // A key of its own, whose rate limit lets the 1,000 in.
    let mut key = app.clone_handle();
    key.access_key = unique("AKDROP").chars().take(20).collect();
    key.secret_key = "drop-test-secret".to_owned();
    add_keypair(&app.state, &key.access_key, &key.secret_key, 5000, true).await;
    // Warm up.
    drop(open_event_stream(app, &key, tls).await);
    // Fixed on purpose: it only lets the warm-up stream close before the baseline is
    // taken; one closed late raises the baseline (a looser check), never fails it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connections of this app's port: other tests of this process open and close
    // files meanwhile.
    let port = crate::helpers::port_of(app);
    let before = crate::helpers::tcp_connections(port);
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(open_event_stream(app, &key, tls).await);
    }
    for (i, stream) in streams.into_iter().enumerate() {
        stream.drop_abruptly(i % 2 == 0);
    }
    // A late release would leave 2,000 (a client and a server end each).
    let after = crate::helpers::connections_settled(port, before, 10).await;
    assert!(after <= before + 10, "connections went from {before} to {after} and stayed");
}

/// Clients that go away mid-stream (half closing, half resetting the connection) are
/// noticed at once.
#[actix_web::test]
async fn dropped_event_streams_are_released_at_once() {
    let _counting = crate::helpers::fd_counting().await;
    let app = crate::helpers::spawn_app(Backend::Embedded).await.unwrap();
    assert_dropped_streams_are_released(&app, None).await;
    app.stop().await;
}

/// The same over TLS: the watch peeks under the TLS layer.
#[actix_web::test]
async fn dropped_event_streams_over_tls_are_released_at_once() {
    let _counting = crate::helpers::fd_counting().await;
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = crate::helpers::test_certificate(dir.path()).await else { return };
    let connector = tls_connector(&cert);
    let app = crate::helpers::spawn_app_with(Backend::Embedded, move |s| {
        s.manager.ssl_cert = Some(cert);
        s.manager.ssl_key = Some(key);
    })
    .await
    .unwrap();
    assert_dropped_streams_are_released(&app, Some(&connector)).await;
    app.stop().await;
}
