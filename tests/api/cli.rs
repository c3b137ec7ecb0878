//! The `backendai-manager` binary: configuration errors, start-up failures, and
//! the schema, fixture, keypair and etcd commands.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::helpers::{services, unique};

fn manager(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backendai-manager"))
        .current_dir(dir)
        .args(args)
        .env_remove("BACKENDAI_CONFIG")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn an_unknown_config_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[manager]\nservice_prot = 1\n").unwrap();
    let output = manager(dir.path(), &["--config", "c.toml", "serve"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("service_prot"), "{}", text(&output));
}

#[test]
fn a_bad_flag_value_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = manager(dir.path(), &["--service-ip", "not-an-ip", "serve"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("manager.service_ip"), "{}", text(&output));
    let output = manager(dir.path(), &["--heartbeat-timeout", "-3", "serve"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[test]
fn secrets_are_not_printed_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        manager(dir.path(), &["--db-addr", "127.0.0.1:1", "--db-password", "hunter2-secret", "schema", "status"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(!text(&output).contains("hunter2-secret"), "{}", text(&output));
}

#[test]
fn an_unreachable_database_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output =
        manager(dir.path(), &["--db-addr", "127.0.0.1:1", "--service-port", "0", "--events-port", "0", "serve"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(text(&output).contains("database"), "{}", text(&output));
}

#[test]
fn an_unreachable_etcd_or_redis_fails_fast() {
    for flag in ["--etcd-addr", "--redis-addr"] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let output = manager(dir.path(), &[flag, "127.0.0.1:1", "--service-port", "0", "--events-port", "0", "serve"]);
        assert_eq!(output.status.code(), Some(1), "{flag}: {}", text(&output));
        assert!(started.elapsed() < Duration::from_secs(10), "{flag} took {:?}", started.elapsed());
    }
}

#[test]
fn every_command_has_help_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let help = text(&manager(dir.path(), &["serve", "--help"]));
    for expected in [
        "--service-port",
        "[default: 8080]",
        "--events-port",
        "[default: 5002]",
        "--namespace",
        "--etcd-addr",
        "--redis-addr",
        "--db-addr",
        "--db-name",
        "--db-user",
        "--db-password",
        "--service-ip",
        "--ssl-cert",
        "--ssl-key",
        "--heartbeat-timeout",
        "--docker-registry",
    ] {
        assert!(help.contains(expected), "serve --help lacks {expected}:\n{help}");
    }
    for command in [
        &["schema", "oneshot"][..],
        &["schema", "upgrade"],
        &["schema", "status"],
        &["fixture", "populate"],
        &["fixture", "list"],
        &["keypair", "generate"],
        &["etcd", "put"],
        &["etcd", "update-images"],
        &["etcd", "update-aliases"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let output = manager(dir.path(), &args);
        assert_eq!(output.status.code(), Some(0), "{command:?}");
    }
}

#[test]
fn keypair_generate_prints_a_well_formed_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = text(&manager(dir.path(), &["keypair", "generate"]));
    let access = output.lines().find_map(|l| l.strip_prefix("access_key: ")).unwrap();
    assert!(access.starts_with("AKIA") && access.len() == 20, "{access}");
    assert!(access.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)), "{access}");
    let secret = output.lines().find_map(|l| l.strip_prefix("secret_key: ")).unwrap();
    assert_eq!(secret.len(), 40);
}

/// Runs the schema and fixture commands on the embedded database, then on PostgreSQL.
#[actix_web::test]
async fn schema_and_fixture_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut targets = vec![vec!["--data-dir".to_owned(), dir.path().join("db").display().to_string()]];
    if let Some(services) = services() {
        let name = unique("bai_test_");
        let admin = sea_orm::Database::connect(&services.db_url).await.unwrap();
        sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        let (prefix, _) = services.db_url.rsplit_once('/').unwrap();
        targets.push(vec!["--db-url".to_owned(), format!("{prefix}/{name}")]);
    }
    for target in targets {
        let run = |args: &[&str]| {
            let mut all: Vec<&str> = target.iter().map(String::as_str).collect();
            all.extend_from_slice(args);
            manager(dir.path(), &all)
        };
        let status = text(&run(&["schema", "status"]));
        assert!(status.contains("pending") && !status.contains("applied"), "{status}");
        let oneshot = run(&["schema", "oneshot"]);
        assert_eq!(oneshot.status.code(), Some(0), "{}", text(&oneshot));
        let status = text(&run(&["schema", "status"]));
        assert!(status.contains("applied") && !status.contains("pending"), "{status}");
        assert_eq!(run(&["schema", "oneshot"]).status.code(), Some(1), "a second oneshot must refuse");
        assert_eq!(run(&["schema", "upgrade"]).status.code(), Some(0));
        assert!(text(&run(&["fixture", "list"])).contains("example_keypair"));
        let populated = text(&run(&["fixture", "populate", "example_keypair"]));
        assert!(populated.contains("2 new rows"), "{populated}");
        let again = text(&run(&["fixture", "populate", "example_keypair"]));
        assert!(again.contains("0 new rows"), "{again}");
        assert_ne!(run(&["fixture", "populate", "no_such_fixture"]).status.code(), Some(0));
        let saved = run(&["keypair", "generate", "--save-for-user", "9"]);
        assert_eq!(saved.status.code(), Some(0), "{}", text(&saved));
    }
}

#[test]
fn etcd_commands_work_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/images.toml");
    let aliases = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/aliases.toml");
    assert_eq!(manager(dir.path(), &["etcd", "update-images", images]).status.code(), Some(0));
    assert_eq!(manager(dir.path(), &["etcd", "update-aliases", aliases]).status.code(), Some(0));
    assert_eq!(text(&manager(dir.path(), &["etcd", "get", "images/python3/runner"])).trim(), "python");
    assert_eq!(text(&manager(dir.path(), &["etcd", "get", "images/_aliases/sh"])).trim(), "bash");
    assert_eq!(manager(dir.path(), &["etcd", "put", "config/overbook/cpu", "4.0"]).status.code(), Some(0));
    let listed = text(&manager(dir.path(), &["etcd", "get", "--prefix", "config/"]));
    assert!(listed.contains("config/overbook/cpu: 4.0"), "{listed}");
    assert_eq!(manager(dir.path(), &["etcd", "delete", "--prefix", "config/"]).status.code(), Some(0));
    assert_ne!(manager(dir.path(), &["etcd", "get", "config/overbook/cpu"]).status.code(), Some(0));
}

#[test]
fn etcd_commands_work_on_etcd() {
    let Some(services) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let namespace = unique("cli");
    let run = |args: &[&str]| {
        let mut all = vec!["--etcd-addr", &services.etcd_addr, "--namespace", &namespace];
        all.extend_from_slice(args);
        manager(dir.path(), &all)
    };
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/images.toml");
    assert_eq!(run(&["etcd", "update-images", images]).status.code(), Some(0));
    assert_eq!(text(&run(&["etcd", "get", "images/bash/runner"])).trim(), "shell");
    assert_eq!(run(&["etcd", "put", "nodes/redis", "127.0.0.1:6379"]).status.code(), Some(0));
    assert_eq!(text(&run(&["etcd", "get", "nodes/redis"])).trim(), "127.0.0.1:6379");
    assert_eq!(run(&["etcd", "delete", "--prefix", ""]).status.code(), Some(0));
}

/// `serve` from a directory only its owner can enter (a clone under /root): the
/// embedded default works, kernels (unprivileged uids) included; the data dir and the
/// files holding secrets are the owner's only.
#[actix_web::test]
async fn serve_works_from_a_private_directory_and_keeps_its_secrets_private() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let events = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_backendai-manager"))
        .current_dir(home.path())
        .args(["--service-port", &port.to_string(), "--events-port", &events.to_string(), "serve"])
        .env_remove("BACKENDAI_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..150 {
        if http.get(format!("http://127.0.0.1:{port}/v3")).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "serve did not start: {:?}", server.try_wait());

    // The example key, signed as the SDK does.
    let sign = |method: &str, path: &str, body: &[u8]| {
        use backendai_manager::auth::{self, HashAlgorithm, SignedParts};
        let date = chrono::Utc::now().fixed_offset();
        let date_header = date.to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        let host = format!("127.0.0.1:{port}");
        let body_hash = HashAlgorithm::Sha256.hex_digest(body);
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
        let signature = auth::sign(HashAlgorithm::Sha256, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &parts);
        http.request(method.parse().unwrap(), format!("http://{host}{path}"))
            .header("Date", date_header)
            .header("X-BackendAI-Version", "v3.20170615")
            .header("Content-Type", "application/json")
            .header(
                "Authorization",
                format!("BackendAI signMethod=HMAC-SHA256, credential=AKIAIOSFODNN7EXAMPLE:{signature}"),
            )
            .body(body.to_vec())
    };
    let token = unique("private");
    let create = serde_json::json!({"lang": "python3", "clientSessionToken": token}).to_string();
    // The built-in agent registers a moment after the API is up.
    let mut created = sign("POST", "/v3/kernel/create", create.as_bytes()).send().await.unwrap();
    for _ in 0..50 {
        if created.status().as_u16() != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        created = sign("POST", "/v3/kernel/create", create.as_bytes()).send().await.unwrap();
    }
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.text().await);
    let run = serde_json::json!({"mode": "query", "code": "print(6 * 7)", "runId": "r1"}).to_string();
    let path = format!("/v3/kernel/{token}");
    let result: serde_json::Value = sign("POST", &path, run.as_bytes()).send().await.unwrap().json().await.unwrap();
    assert!(result.to_string().contains("42"), "{result}");
    assert_eq!(sign("DELETE", &path, b"").send().await.unwrap().status().as_u16(), 200);

    let data = home.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Searchable, for kernels to reach the virtual folders inside; never listable.
    assert_eq!(mode(&data), 0o711, "the data dir");
    for entry in std::fs::read_dir(&data).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    assert_eq!(mode(&data.join("backend.ai.db")), 0o600, "the database");
    if data.join("config-store.json").exists() {
        assert_eq!(mode(&data.join("config-store.json")), 0o600, "the config store");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}
