//! The kernel session API end to end: real agents, real python3 and bash kernels.

use std::process::Stdio;
use std::time::Duration;

use entity::agents::{self, AgentStatus};
use entity::kernels::KernelStatus;
use entity::keypairs;
use futures_util::future::join_all;
use sea_orm::EntityTrait;
use serde_json::{json, Value};

use crate::helpers::{
    add_keypair, assert_problem, create_session as create, eventually, sessions_named, spawn_app, spawn_app_with,
    unique, Backend, TestApp, BACKENDS,
};

pub async fn execute(app: &TestApp, token: &str, code: &str, run_id: &str) -> reqwest::Response {
    let body = json!({"mode": "query", "code": code, "runId": run_id});
    app.send(app.signed("POST", &format!("/v3/kernel/{token}"), Some(body))).await
}

/// The runs session `token` counted (a run is counted as the session actor takes it).
async fn queries_counted(app: &TestApp, token: &str) -> i64 {
    let info: Value = app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await.json().await.unwrap();
    info["numQueriesExecuted"].as_i64().unwrap_or_default()
}

async fn keypair(app: &TestApp, access_key: &str) -> keypairs::Model {
    keypairs::Entity::find_by_id(access_key.to_owned()).one(&app.state.db).await.unwrap().unwrap()
}

#[actix_web::test]
async fn create_execute_info_destroy_on_every_backend() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("tok");
        let response = create(&app, "python3", &token).await;
        assert_eq!(response.status().as_u16(), 201, "{backend:?}");
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"kernelId": token, "created": true}));
        assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 1);

        let response = execute(&app, &token, "print(6 * 7)", "r1").await;
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["result"]["status"], "finished");
        assert_eq!(body["result"]["console"], json!([["stdout", "42\n"]]));

        // v1 answers with flat fields.
        let v1 = app
            .send(app.signed(
                "POST",
                &format!("/v1/kernel/{token}"),
                Some(json!({"code": "print('v1')", "runId": "r2"})),
            ))
            .await;
        let v1: Value = v1.json().await.unwrap();
        assert_eq!(v1["result"]["stdout"], "v1\n", "{v1}");

        let info: Value = app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await.json().await.unwrap();
        assert_eq!(info["lang"], "python3:latest");
        assert_eq!(info["numQueriesExecuted"], 2);
        assert_eq!(info["memoryLimit"], 256 * 1024);

        let response = app.send(app.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await;
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(body["stats"].is_object(), "{body}");
        let rows = sessions_named(&app, &token).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, KernelStatus::Terminated);
        assert_eq!(rows[0].num_queries, 2, "final usage kept on the row");
        assert!(rows[0].terminated_at.is_some());
        assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 0, "quota released");
        let agent = agents::Entity::find().one(&app.state.db).await.unwrap().unwrap();
        assert_eq!((agent.used_cpu_slots, agent.used_mem_slots), (0.0, 0), "slots released");
        assert_problem(
            app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await,
            404,
            "kernel-not-found",
        )
        .await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn bad_tokens_and_images_are_refused() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    assert_problem(create(&app, "python3", "abc").await, 400, "invalid-api-params").await;
    assert_problem(create(&app, "python3", "a/bcdefgh").await, 400, "invalid-api-params").await;
    assert_problem(create(&app, "python3", &"x".repeat(81)).await, 400, "invalid-api-params").await;
    // The edges are accepted (4 characters, as clients 1.1 to 1.5 allow, and 80).
    for token in
        [unique("t")[..4].to_owned(), format!("{}{}{}", unique("t"), unique("u"), unique("v"))[..80].to_owned()]
    {
        assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201, "{}", token.len());
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await;
        assert_eq!(destroyed.status().as_u16(), 200);
    }
    assert_problem(create(&app, "cobol", &unique("tok")).await, 404, "image-not-found").await;
    assert_problem(create(&app, "python3:9.9", &unique("tok")).await, 404, "image-not-found").await;
    assert_problem(create(&app, "../etc", &unique("tok")).await, 404, "image-not-found").await;
    let missing = app.send(app.signed("POST", "/v3/kernel/create", Some(json!({"lang": "python3"})))).await;
    assert_problem(missing, 400, "invalid-api-params").await;
    assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 0, "nothing reserved");
    app.stop().await;
}

/// The run time limit of the create body (`limits` in v3, `resourceLimits` in v1)
/// reaches the kernel: a run past it ends with `exec-timeout` and the session stays,
/// with a fresh interpreter.
#[actix_web::test]
async fn the_exec_timeout_of_the_create_body_ends_a_run() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    for limits in ["limits", "resourceLimits"] {
        let token = unique("tok");
        let body = json!({"lang": "python3", "clientSessionToken": token, limits: {"execTimeout": 1}});
        assert_eq!(app.send(app.signed("POST", "/v3/kernel/create", Some(body))).await.status().as_u16(), 201);
        assert_eq!(execute(&app, &token, "x = 1", "r0").await.status().as_u16(), 200);
        let mut result: Value = execute(&app, &token, "import time\ntime.sleep(30)", "r1").await.json().await.unwrap();
        for _ in 0..10 {
            if result["result"]["status"] != "continued" {
                break;
            }
            let body = json!({"mode": "continue", "code": "", "runId": "r1"});
            let response = app.send(app.signed("POST", &format!("/v3/kernel/{token}"), Some(body))).await;
            result = response.json().await.unwrap();
        }
        assert_eq!(result["result"]["status"], "exec-timeout", "{limits}: {result}");
        assert_eq!(sessions_named(&app, &token).await[0].status, KernelStatus::Running);
        let fresh: Value = execute(&app, &token, "print('x' in dir())", "r2").await.json().await.unwrap();
        assert_eq!(fresh["result"]["console"], json!([["stdout", "False\n"]]), "{limits}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn malformed_execute_bodies_are_400() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("tok");
    assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
    for body in [
        json!({"mode": "nope", "code": ""}),
        json!({"mode": "continue"}),
        json!({"mode": "query", "code": 1}),
        json!([1]),
    ] {
        let response = app.send(app.signed("POST", &format!("/v3/kernel/{token}"), Some(body))).await;
        assert_problem(response, 400, "invalid-api-params").await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn aliases_and_tags_resolve() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    for (lang, expected) in
        [("python", "python3:latest"), ("python:3", "python3:3"), ("sh", "bash:latest"), ("bash:latest", "bash:latest")]
    {
        let token = unique("tok");
        assert_eq!(create(&app, lang, &token).await.status().as_u16(), 201, "{lang}");
        assert_eq!(sessions_named(&app, &token).await[0].lang, expected, "{lang}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn sessions_of_other_keys_are_invisible() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("tok");
        assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
        let other = unique("AKIA").chars().take(20).collect::<String>().to_uppercase();
        add_keypair(&app.state, &other, "other-secret", 100, true).await;
        let run = json!({"mode": "query", "code": "print(1)", "runId": "r1"});
        for (method, path, body) in [
            ("GET", format!("/v3/kernel/{token}"), None),
            ("DELETE", format!("/v3/kernel/{token}"), None),
            ("PATCH", format!("/v3/kernel/{token}"), None),
            ("POST", format!("/v3/kernel/{token}"), Some(run)),
            ("POST", format!("/v3/kernel/{token}/interrupt"), None),
            ("POST", format!("/v3/kernel/{token}/complete"), Some(json!({"code": "pri"}))),
        ] {
            let mut request = app.signed(method, &path, body);
            request.access_key = &other;
            request.secret_key = "other-secret";
            assert_problem(app.send(request).await, 404, "kernel-not-found").await;
        }
        // The same token is a different session for another key.
        let mut request =
            app.signed("POST", "/v3/kernel/create", Some(json!({"lang": "python3", "clientSessionToken": token})));
        request.access_key = &other;
        request.secret_key = "other-secret";
        assert_eq!(app.send(request).await.status().as_u16(), 201);
        assert_eq!(sessions_named(&app, &token).await.len(), 2);
        app.stop().await;
    }
}

#[actix_web::test]
async fn kernel_paths_are_routed_as_the_contract_names_them() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("route");
        assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
        // A percent-encoded token names the same session ('-' is %2D).
        let encoded = token.replace('-', "%2D");
        let response = app.send(app.signed("GET", &format!("/v3/kernel/{encoded}"), None)).await;
        assert_eq!(response.status().as_u16(), 200, "{backend:?}");
        for (method, path, status, problem) in [
            ("PUT", format!("/v3/kernel/{token}"), 405, "method-not-allowed"),
            ("GET", format!("/v3/kernel/{token}/interrupt"), 405, "method-not-allowed"),
            ("DELETE", format!("/v3/kernel/{token}/upload"), 405, "method-not-allowed"),
            ("POST", format!("/v3/kernel/{token}/nope"), 404, "generic-not-found"),
            ("GET", format!("/v3/kernel/{token}/"), 404, "generic-not-found"),
            ("GET", format!("/v3/kernel/{token}/interrupt/x"), 404, "generic-not-found"),
            ("GET", "/v3/kernel//interrupt".to_owned(), 404, "generic-not-found"),
            // As in the reference server: a session named "create".
            ("GET", "/v3/kernel/create".to_owned(), 404, "kernel-not-found"),
            ("DELETE", "/v3/kernel/".to_owned(), 405, "method-not-allowed"),
        ] {
            let response = app.send(app.signed(method, &path, None)).await;
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(allow.is_some(), status == 405, "{method} {path}: Allow {allow:?}");
            assert_problem(response, status, problem).await;
        }
        let response = app.send(app.signed("PUT", &format!("/v3/kernel/{token}"), None)).await;
        assert_eq!(response.headers()["allow"], "GET, PATCH, DELETE, POST");
        app.stop().await;
    }
}

#[actix_web::test]
async fn racing_creates_with_one_token_make_one_session() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("race");
        let responses = join_all((0..8).map(|_| create(&app, "python3", &token))).await;
        for response in responses {
            assert_eq!(response.status().as_u16(), 201, "{backend:?}");
        }
        let rows = sessions_named(&app, &token).await;
        assert_eq!(rows.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 1, "{backend:?}: charged once");
        let response = execute(&app, &token, "print('one')", "r").await;
        assert_eq!(response.status().as_u16(), 200);
        app.stop().await;
    }
}

#[actix_web::test]
async fn the_quota_is_checked_and_comes_back() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        // The test key may own 5 sessions; racing creates must not exceed that.
        let tokens: Vec<String> = (0..8).map(|_| unique("q")).collect();
        let responses = join_all(tokens.iter().map(|t| create(&app, "bash", t))).await;
        let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{backend:?}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 3, "{backend:?}: {statuses:?}");
        assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 5);
        let created: Vec<&String> = tokens.iter().zip(&statuses).filter(|(_, s)| **s == 201).map(|(t, _)| t).collect();
        let response = app.send(app.signed("DELETE", &format!("/v3/kernel/{}", created[0]), None)).await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(create(&app, "bash", &unique("q")).await.status().as_u16(), 201, "quota came back");
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_session_bigger_than_every_agent_is_400_and_reserves_nothing() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let config = app.state.stores.config.clone();
    let pairs: Vec<(String, String)> = [
        ("cpu", "1"),
        ("mem", "999999999"),
        ("gpu", "0"),
        ("runner", "python"),
        ("command", "python3"),
        ("tags/latest", "huge:latest"),
    ]
    .iter()
    .map(|(k, v)| (format!("images/huge/{k}"), v.to_string()))
    .collect();
    config.put_many(&pairs).await.unwrap();
    let problem = assert_problem(create(&app, "huge", &unique("tok")).await, 400, "invalid-api-params").await;
    let detail =
        problem["title"].as_str().unwrap_or_default().to_owned() + problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("no agent could ever hold"), "{problem}");
    assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 0);
    let agent = agents::Entity::find().one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(agent.used_mem_slots, 0);
    app.stop().await;
}

#[actix_web::test]
async fn concurrent_destroys_release_once() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let token = unique("tok");
        assert_eq!(create(&app, "bash", &token).await.status().as_u16(), 201);
        let path = format!("/v3/kernel/{token}");
        let statuses: Vec<u16> = join_all((0..5).map(|_| app.send(app.signed("DELETE", &path, None))))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 404), "{statuses:?}");
        assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 0);
        let agent = agents::Entity::find().one(&app.state.db).await.unwrap().unwrap();
        assert_eq!((agent.used_cpu_slots, agent.used_mem_slots), (0.0, 0), "{backend:?}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn runs_of_one_session_are_served_in_order() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("tok");
    assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
    assert_eq!(execute(&app, &token, "log = []", "r0").await.status().as_u16(), 200);
    // The first run sleeps; the second, sent meanwhile, must wait for it.
    let first = execute(&app, &token, "import time\ntime.sleep(1)\nlog.append(1)", "r1");
    let second = async {
        // Once the session took the first (and relayed it to the agent at once).
        eventually("the session takes the first run", Duration::from_secs(30), || async {
            (queries_counted(&app, &token).await >= 2).then_some(())
        })
        .await;
        execute(&app, &token, "log.append(2)\nprint(log)", "r2").await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status().as_u16(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["result"]["console"], json!([["stdout", "[1, 2]\n"]]), "{second}");
    app.stop().await;
}

/// An agent killed during an execute: that call fails with a 5xx; after the
/// heartbeat timeout the agent is LOST, its session ends and the quota returns;
/// a restarted agent is ALIVE again.
#[actix_web::test]
async fn a_killed_agent_ends_its_sessions_after_the_heartbeat_timeout() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.local_agent.enabled = false;
        s.manager.heartbeat_timeout = 1.5;
    })
    .await
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent_binary = crate::agent_binary::agent_binary();
    let start_agent = || {
        tokio::process::Command::new(&agent_binary)
            .args(["--listen", "127.0.0.1:0", "--agent-id", "i-doomed"])
            .args(["--event-addr", &app.state.events_addr.to_string()])
            .arg("--scratch-root")
            .arg(scratch.path().join("scratch"))
            .env("BACKENDAI_AGENT_CLUSTER_SECRET", "test-cluster-secret")
            .env("BACKENDAI_AGENT_HEARTBEAT_INTERVAL", "0.5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut agent = start_agent();
    app.wait_for_agent().await;
    let token = unique("tok");
    assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
    assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 1);

    let running = execute(&app, &token, "import time\ntime.sleep(1.5)\nprint('never seen')", "r1");
    let kill = async {
        // Once the session took the run (and relayed it to the agent at once).
        eventually("the session takes the run", Duration::from_secs(30), || async {
            (queries_counted(&app, &token).await >= 1).then_some(())
        })
        .await;
        agent.start_kill().unwrap();
    };
    let (response, ()) = tokio::join!(running, kill);
    assert!(response.status().is_server_error(), "{}", response.status());
    assert_eq!(response.json::<Value>().await.unwrap()["type"], "https://api.backend.ai/probs/kernel-execution-failed");

    let mut ended = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rows = sessions_named(&app, &token).await;
        if rows[0].status == KernelStatus::Error {
            assert_eq!(rows[0].status_info.as_deref(), Some("agent-lost"));
            ended = true;
            break;
        }
    }
    assert!(ended, "the session did not end after the heartbeat timeout");
    let agent_row = agents::Entity::find_by_id("i-doomed".to_owned()).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(agent_row.status, AgentStatus::Lost);
    assert!(agent_row.lost_at.is_some());
    assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 0, "the quota came back");
    assert_problem(app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await, 404, "kernel-not-found")
        .await;

    // The agent comes back: it is revived.
    let mut agent = start_agent();
    let mut revived = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = agents::Entity::find_by_id("i-doomed".to_owned()).one(&app.state.db).await.unwrap().unwrap();
        if row.status == AgentStatus::Alive {
            assert!(row.lost_at.is_none());
            revived = true;
            break;
        }
    }
    assert!(revived, "the agent was not revived");
    assert_eq!(create(&app, "python3", &unique("tok")).await.status().as_u16(), 201);
    agent.start_kill().unwrap();
    app.stop().await;
}

/// A session actor that dies while its session is live (simulated by stopping it the way
/// an ended session stops it, with the database untouched) is started again from the
/// database by the next request: the kernel, its namespace and the query count survive.
#[actix_web::test]
async fn a_dead_session_actor_is_restarted_from_the_database() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("crash");
    assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
    assert_eq!(execute(&app, &token, "x = 41", "r1").await.status().as_u16(), 200);

    let (actor, _) = app.state.directory.session(&app.access_key, &token).expect("a running session actor");
    actor.send(backendai_manager::actors::messages::RetireSession).await.unwrap();
    for _ in 0..100 {
        if !actor.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!actor.connected(), "the actor stopped");

    let body: Value = execute(&app, &token, "print(x + 1)", "r2").await.json().await.unwrap();
    assert_eq!(body["result"]["console"], json!([["stdout", "42\n"]]), "{body}");
    let (restarted, _) = app.state.directory.session(&app.access_key, &token).expect("a new session actor");
    assert!(restarted != actor);
    // The dead actor's count is written as it stops, detached; the new actor re-reads the
    // row within ROW_TTL (2 s), so the count converges.
    let mut info = Value::Null;
    for _ in 0..40 {
        info = app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await.json().await.unwrap();
        if info["numQueriesExecuted"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info["numQueriesExecuted"], 2, "{info}");
    let rows = sessions_named(&app, &token).await;
    assert_eq!((rows.len(), rows[0].status), (1, KernelStatus::Running));

    let response = app.send(app.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(keypair(&app, &app.access_key).await.concurrency_used, 0, "quota released once");
    assert_eq!(sessions_named(&app, &token).await[0].num_queries, 2, "no query count lost");
    app.stop().await;
}
