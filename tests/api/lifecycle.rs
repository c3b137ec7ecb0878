//! The daemon's lifecycle: TLS, registration, graceful shutdown.

use std::process::Stdio;
use std::time::{Duration, Instant};

use entity::keypairs;
use sea_orm::{Database, EntityTrait};

use crate::helpers::{spawn_app, spawn_app_with, test_certificate, Backend, BACKENDS};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[actix_web::test]
async fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = test_certificate(dir.path()).await else { return };
    let (cert_path, key_path) = (cert.clone(), key.clone());
    let app = spawn_app_with(Backend::Embedded, move |s| {
        s.manager.ssl_cert = Some(cert_path);
        s.manager.ssl_key = Some(key_path);
    })
    .await
    .unwrap();
    let url = format!("https://127.0.0.1:{}/v3", app.host.rsplit(':').next().unwrap());
    let output =
        tokio::process::Command::new("curl").args(["-sS", "--cacert"]).arg(&cert).arg(&url).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), r#"{"version":"v4.20181215"}"#);
    app.stop().await;
}

#[actix_web::test]
async fn the_manager_registers_in_the_config_store() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let config = app.state.stores.config.clone();
        assert_eq!(config.get("nodes/manager").await.unwrap().as_deref(), Some(app.state.manager_id.as_str()));
        if backend == Backend::Services {
            assert!(config.get("nodes/redis").await.unwrap().is_some());
        }
        app.stop().await;
    }
}

/// SIGTERM drains the server, writes pending usage and exits 0.
#[actix_web::test]
async fn sigterm_stops_gracefully_without_losing_usage() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backendai-manager"))
        .current_dir(dir.path())
        .args(["--service-port", &port.to_string(), "--events-port", "0", "serve"])
        .env_remove("BACKENDAI_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let client = reqwest::Client::new();
    while client.get(format!("http://127.0.0.1:{port}/v3")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two signed requests with the embedded example key; their usage is still pending.
    let host = format!("127.0.0.1:{port}");
    for _ in 0..2 {
        let request = crate::helpers::Signed {
            method: "GET",
            path: "/v2/authorize",
            body: Vec::new(),
            content_type: "application/json",
            version: "v2.20170315",
            date: chrono::Utc::now().fixed_offset(),
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        };
        let mut builder = client.get(format!("http://{host}/v2/authorize"));
        for (name, value) in crate::helpers::signature_headers(&host, &request) {
            builder = builder.header(name, value);
        }
        assert_eq!(builder.send().await.unwrap().status().as_u16(), 200);
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits in time").unwrap();
    assert!(status.success(), "{status}");
    let db = Database::connect(format!("sqlite://{}/data/backend.ai.db", dir.path().display())).await.unwrap();
    let row = keypairs::Entity::find_by_id("AKIAIOSFODNN7EXAMPLE".to_owned()).one(&db).await.unwrap().unwrap();
    assert_eq!(row.num_queries, 2, "the usage counted before SIGTERM was written");
    let store = std::fs::read_to_string(dir.path().join("data/config-store.json")).unwrap();
    assert!(!store.contains("nodes/manager\""), "still registered after shutdown: {store}");
}
