//! The PTY stream: a real terminal in the kernel, proxied by the manager.

use std::time::Duration;

use actix_web::http::StatusCode;
use backendai_manager::streams::pty::SLOW_CLIENT;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::{add_keypair, spawn_app, spawn_app_with, unique, Backend, TestApp, BACKENDS};

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn create(app: &TestApp, token: &str) {
    let body = json!({"lang": "bash", "clientSessionToken": token});
    assert_eq!(app.send(app.signed("POST", "/v3/kernel/create", Some(body))).await.status().as_u16(), 201);
}

/// Opens the PTY stream of `token`, signed with the app's key.
async fn open(app: &TestApp, token: &str) -> Result<Socket, StatusCode> {
    let path = format!("/v3/stream/kernel/{token}/pty");
    let mut request = app.signed("GET", &path, None);
    request.content_type = "";
    let mut ws = awc::Client::new().ws(format!("ws://{}{path}", app.host));
    for (name, value) in app.signature_headers(&request) {
        ws = ws.header(name, value);
    }
    upgrade(ws).await
}

async fn upgrade(ws: awc::ws::WebsocketsRequest) -> Result<Socket, StatusCode> {
    match ws.connect().await {
        Ok((_, socket)) => Ok(socket),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status),
        Err(error) => panic!("upgrade failed: {error}"),
    }
}

fn stdin(text: &str) -> awc::ws::Message {
    let chars = base64::engine::general_purpose::STANDARD.encode(text);
    awc::ws::Message::Text(json!({"type": "stdin", "chars": chars}).to_string().into())
}

/// Reads output until `needle` shows up; returns everything read.
async fn read_until(socket: &mut Socket, needle: &str) -> String {
    let mut output = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !output.contains(needle) {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {output:?}"));
        match frame {
            Some(Ok(awc::ws::Frame::Text(bytes))) => {
                let frame: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(frame["type"], "out", "{frame}");
                let data = base64::engine::general_purpose::STANDARD.decode(frame["data"].as_str().unwrap()).unwrap();
                output.push_str(&String::from_utf8_lossy(&data));
            }
            Some(Ok(awc::ws::Frame::Close(reason))) => panic!("closed ({reason:?}) before {needle:?}: {output:?}"),
            Some(Ok(_)) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    output
}

/// Reads until the server closes; returns the close reason's description.
async fn closed(socket: &mut Socket) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("closed in time") {
            Some(Ok(awc::ws::Frame::Close(reason))) => return reason.and_then(|r| r.description).unwrap_or_default(),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return String::new(),
        }
    }
}

#[actix_web::test]
async fn a_signed_stream_runs_a_real_terminal() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("pty");
        create(&app, &token).await;
        let mut socket = open(&app, &token).await.expect("upgraded");
        socket
            .send(awc::ws::Message::Text(json!({"type": "resize", "rows": 30, "cols": 100}).to_string().into()))
            .await
            .unwrap();
        socket.send(awc::ws::Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
        socket.send(stdin("echo \"uid=$(id -u) size=$(stty size)\"; echo done-$((40 + 2))\n")).await.unwrap();
        let output = read_until(&mut socket, "done-42").await;
        assert!(output.contains("size=30 100"), "{output}");
        assert!(!output.contains("uid=0 "), "the terminal must not run as root: {output}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn unsigned_and_forged_upgrades_get_401_before_upgrading() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let url = format!("ws://{}/v3/stream/kernel/{token}/pty", app.host);
    assert_eq!(upgrade(awc::Client::new().ws(&url)).await.err(), Some(StatusCode::UNAUTHORIZED));
    let forged = awc::Client::new().ws(&url).header("Date", chrono::Utc::now().to_rfc3339()).header(
        "Authorization",
        format!("BackendAI signMethod=HMAC-SHA256, credential={}:{}", app.access_key, "ab".repeat(32)),
    );
    assert_eq!(upgrade(forged).await.err(), Some(StatusCode::UNAUTHORIZED));
    let bad_ticket = awc::Client::new().ws(format!("{url}?ticket=guess"));
    assert_eq!(upgrade(bad_ticket).await.err(), Some(StatusCode::UNAUTHORIZED));
    app.stop().await;
}

#[actix_web::test]
async fn a_ticket_opens_one_stream_once() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let response = app.send(app.signed("POST", "/v3/stream/tickets", Some(json!({"kernel": token})))).await;
    assert_eq!(response.status().as_u16(), 201);
    let ticket = response.json::<Value>().await.unwrap()["ticket"].as_str().unwrap().to_owned();
    let url = format!("ws://{}/v3/stream/kernel/{token}/pty?ticket={ticket}", app.host);
    let mut socket = upgrade(awc::Client::new().ws(&url)).await.expect("the ticket opens the stream");
    socket.send(stdin("echo ticket-ok\n")).await.unwrap();
    read_until(&mut socket, "ticket-ok").await;
    assert_eq!(upgrade(awc::Client::new().ws(&url)).await.err(), Some(StatusCode::UNAUTHORIZED), "single use");
    app.stop().await;
}

#[actix_web::test]
async fn unknown_and_foreign_sessions_are_404() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    assert_eq!(open(&app, "no-such-session").await.err(), Some(StatusCode::NOT_FOUND));
    let token = unique("pty");
    create(&app, &token).await;
    let other = unique("AKIA").chars().take(20).collect::<String>().to_uppercase();
    add_keypair(&app.state, &other, "other-secret", 100, true).await;
    let mut foreign = app.clone_handle();
    foreign.access_key = other.clone();
    foreign.secret_key = "other-secret".to_owned();
    assert_eq!(open(&foreign, &token).await.err(), Some(StatusCode::NOT_FOUND));
    app.stop().await;
}

#[actix_web::test]
async fn malformed_frames_get_an_error_and_a_close() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let mut socket = open(&app, &token).await.unwrap();
    socket.send(awc::ws::Message::Text("{\"type\": \"format-disk\"}".into())).await.unwrap();
    let mut saw_error = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("a close") {
            Some(Ok(awc::ws::Frame::Text(bytes))) => {
                let frame: Value = serde_json::from_slice(&bytes).unwrap();
                saw_error |= frame["type"] == "error";
            }
            Some(Ok(awc::ws::Frame::Close(reason))) => {
                assert_eq!(reason.and_then(|r| r.description).as_deref(), Some("malformed frame"));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_error);
    app.stop().await;
}

#[actix_web::test]
async fn the_stream_closes_when_the_session_ends() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let mut socket = open(&app, &token).await.unwrap();
    socket.send(stdin("echo up\n")).await.unwrap();
    read_until(&mut socket, "up").await;
    assert_eq!(app.send(app.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await.status().as_u16(), 200);
    let reason = closed(&mut socket).await;
    assert!(reason == "the session ended" || reason == "the terminal closed", "{reason:?}");
    app.stop().await;
}

#[actix_web::test]
async fn unsigned_upgrades_work_only_with_the_compatibility_setting() {
    let app = spawn_app_with(Backend::Embedded, |s| s.manager.allow_unsigned_pty = true).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let url = format!("ws://{}/v3/stream/kernel/{token}/pty", app.host);
    let mut socket = upgrade(awc::Client::new().ws(&url)).await.expect("legacy clients may open it");
    socket.send(stdin("echo legacy-ok\n")).await.unwrap();
    read_until(&mut socket, "legacy-ok").await;
    app.stop().await;
}

/// Connect and disconnect many times: no file descriptor is left behind.
#[actix_web::test]
async fn streams_free_their_sockets() {
    let _counting = crate::helpers::fd_counting().await;
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    // Warm up pools and workers.
    for _ in 0..5 {
        let mut socket = open(&app, &token).await.unwrap();
        socket.close().await.ok();
    }
    // Fixed on purpose: it only lets the warm-up sockets close before the baseline is
    // taken; one closed late raises the baseline (a looser check), never fails it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connections to this app's port only: other tests of this process open and
    // close their own files meanwhile.
    let port = crate::helpers::port_of(&app);
    let before = crate::helpers::tcp_connections(port);
    for _ in 0..100 {
        let mut socket = open(&app, &token).await.unwrap();
        socket.send(stdin("true\n")).await.unwrap();
        socket.close().await.ok();
    }
    // 100 leaked streams would leave 200 (a client and a server end each).
    crate::helpers::eventually("the streams' connections close", Duration::from_secs(10), || async {
        (crate::helpers::tcp_connections(port) <= before).then_some(())
    })
    .await;
    app.stop().await;
}

/// Terminal clients whose connection goes away mid-stream (without a WebSocket close)
/// are noticed at once: every socket of those
/// streams, the client's and the agent's, is released within a couple of seconds.
#[actix_web::test]
async fn dropped_terminal_streams_are_released_at_once() {
    let _counting = crate::helpers::fd_counting().await;
    const N: usize = 1000;
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    // A key of its own, whose rate limit lets the 1,000 in.
    let mut key = app.clone_handle();
    key.access_key = unique("AKPTYDROP");
    key.secret_key = "pty-drop-secret".to_owned();
    add_keypair(&app.state, &key.access_key, &key.secret_key, 5000, true).await;
    let token = unique("pty");
    create(&key, &token).await;
    let mut socket = open(&key, &token).await.unwrap();
    socket.close().await.ok();
    drop(socket);
    // Fixed on purpose: it only lets the warm-up socket close before the baseline is
    // taken; one closed late raises the baseline (a looser check), never fails it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connections of this app's port: other tests of this process open and close
    // files meanwhile.
    let port = crate::helpers::port_of(&app);
    let before = crate::helpers::tcp_connections(port);
    let mut sockets = Vec::new();
    for _ in 0..N {
        let mut socket = open(&key, &token).await.unwrap();
        socket.send(stdin("echo hi\n")).await.unwrap();
        sockets.push(socket);
    }
    // The TCP connection goes away, without a WebSocket close.
    drop(sockets);
    // A late release would leave 2,000 (a client and a server end each).
    let after = crate::helpers::connections_settled(port, before, 10).await;
    assert!(after <= before + 10, "connections went from {before} to {after} and stayed");
    app.stop().await;
}

/// The agent refuses the proxied upgrade (its kernel is gone): the client gets a
/// plain error, never an upgraded socket, and later streams are unaffected.
#[actix_web::test]
async fn an_agent_refusing_the_upgrade_is_an_http_error() {
    use entity::kernels;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let kernel = kernels::Entity::find()
        .filter(kernels::Column::SessId.eq(token.clone()))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    // Remove the kernel behind the manager's back.
    let removed = reqwest::Client::new()
        .delete(format!("http://{}/kernels/{}", kernel.agent_addr.clone().unwrap(), kernel.id))
        .bearer_auth("test-cluster-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status().as_u16(), 200);
    assert_eq!(open(&app, &token).await.err(), Some(StatusCode::NOT_FOUND));
    let healthy = unique("pty");
    create(&app, &healthy).await;
    let mut socket = open(&app, &healthy).await.expect("other streams still open");
    socket.send(stdin("echo still-fine\n")).await.unwrap();
    read_until(&mut socket, "still-fine").await;
    app.stop().await;
}

/// A client that stops reading while the terminal floods it is disconnected with
/// a reason, instead of holding the terminal back or filling the manager's memory.
#[actix_web::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("pty");
    create(&app, &token).await;
    let mut socket = open(&app, &token).await.unwrap();
    socket.send(stdin("yes $(printf 'x%.0s' $(seq 1000))\n")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let reason = 'rounds: loop {
        // Fixed on purpose: only silence shows a slow client, and reading would end it.
        // Read nothing for over twice the slow-client timeout: socket buffers fill, then
        // the proxy's bounded queue, then its send waits past the timeout.
        tokio::time::sleep(SLOW_CLIENT * 2 + Duration::from_secs(2)).await;
        // Then read for a while: the close, once sent, comes after what was queued before
        // it. Still open after that (the buffers filled late on a busy machine): be silent
        // again.
        let reading = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(reading.min(deadline), socket.next()).await {
                Ok(Some(Ok(awc::ws::Frame::Close(reason)))) => {
                    break 'rounds reason.and_then(|r| r.description).unwrap_or_default()
                }
                Ok(Some(Ok(_))) => {}
                Ok(None | Some(Err(_))) => break 'rounds String::new(),
                Err(_) => break,
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the client was not disconnected in time");
    };
    assert_eq!(reason, "the client is too slow");
    app.stop().await;
}
