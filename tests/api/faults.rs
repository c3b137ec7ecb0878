//! Agent faults and agent events, against a fake agent: a small RPC server of this
//! test that registers through the events port and answers each call as told
//! (it stands in for a broken agent, which the real one cannot be made into on demand).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use entity::agents;
use entity::kernels::{self, KernelStatus};
use entity::keypairs;
use sea_orm::EntityTrait;
use serde_json::{json, Value};

use crate::helpers::{
    assert_problem, create_session, sessions_named, spawn_app_with, unique, Backend, TestApp, BACKENDS,
};

/// How the fake agent answers a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Ok,
    Fail,
    Stall,
}

/// The fake agent's answers, by call.
#[derive(Clone, Copy, Debug)]
pub struct Script {
    pub create: Answer,
    pub restart: Answer,
    pub destroy: Answer,
    pub execute: Answer,
}

impl Default for Script {
    fn default() -> Self {
        Self { create: Answer::Ok, restart: Answer::Ok, destroy: Answer::Ok, execute: Answer::Ok }
    }
}

/// A fake agent: how it answers, and the kernels it was told to destroy.
#[derive(Default)]
pub struct FakeAgent {
    pub script: Mutex<Script>,
    pub destroyed: Mutex<Vec<String>>,
}

type Shared = web::Data<FakeAgent>;

/// The current script (copied: the lock is not held across an answer).
fn current(shared: &Shared) -> Script {
    *shared.script.lock().unwrap()
}

async fn answer(how: Answer, ok: Value) -> HttpResponse {
    match how {
        Answer::Ok => HttpResponse::Ok().json(ok),
        Answer::Fail => HttpResponse::InternalServerError()
            .json(json!({"type": "https://api.backend.ai/probs/internal-server-error", "title": "boom"})),
        Answer::Stall => {
            // Fixed on purpose: a stalled agent answers long after any call timeout.
            tokio::time::sleep(Duration::from_secs(30)).await;
            HttpResponse::Ok().json(ok)
        }
    }
}

/// Starts a fake agent and registers it as `agent_id` with `slots`; returns it and its address.
pub async fn fake_agent(app: &TestApp, agent_id: &str, slots: Value) -> (Arc<FakeAgent>, String) {
    let fake = Shared::new(FakeAgent::default());
    let shared = fake.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .route(
                "/kernels",
                web::post().to(|s: Shared| async move { answer(current(&s).create, json!({"id": "c1"})).await }),
            )
            .route(
                "/kernels/{id}",
                web::delete().to(|s: Shared, id: web::Path<String>| async move {
                    s.destroyed.lock().unwrap().push(id.into_inner());
                    answer(current(&s).destroy, json!({"stats": {"cpu_used": 7}})).await
                }),
            )
            .route(
                "/kernels/{id}/restart",
                web::post().to(|s: Shared| async move { answer(current(&s).restart, json!({})).await }),
            )
            .route(
                "/kernels/{id}/execute",
                web::post().to(|s: Shared| async move {
                    let result = json!({"status": "finished", "console": [], "options": null, "files": []});
                    answer(current(&s).execute, result).await
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    let data = json!({"addr": addr.to_string(), "slots": slots, "kernels": []});
    send_event(app, "instance_started", agent_id, data).await;
    (fake.into_inner(), addr.to_string())
}

pub async fn send_event(app: &TestApp, event: &str, agent_id: &str, data: Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/events", app.state.events_addr))
        .bearer_auth("test-cluster-secret")
        .json(&json!({"event": event, "agent_id": agent_id, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204, "{event}: {:?}", response.text().await);
}

/// A manager without its built-in agent, with short agent timeouts.
pub async fn app_without_agent(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |s| {
        s.local_agent.enabled = false;
        s.manager.agent_create_timeout = 2.0;
        s.manager.agent_call_timeout = 3.0;
        s.manager.heartbeat_timeout = 120.0;
    })
    .await
}

/// Creates a python3 session of the app's key.
pub async fn create(app: &TestApp, token: &str) -> reqwest::Response {
    create_session(app, "python3", token).await
}

pub async fn session(app: &TestApp, token: &str) -> kernels::Model {
    let rows = sessions_named(app, token).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

pub async fn agent(app: &TestApp, agent_id: &str) -> agents::Model {
    agents::Entity::find_by_id(agent_id.to_owned()).one(&app.state.db).await.unwrap().unwrap()
}

/// Nothing of `agent_id` or of the app's key stays reserved.
async fn assert_released(app: &TestApp, agent_id: &str) {
    let key = keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(key.concurrency_used, 0, "the quota came back");
    let agent = agent(app, agent_id).await;
    assert_eq!((agent.used_cpu_slots, agent.used_mem_slots, agent.used_gpu_slots), (0.0, 0, 0.0), "slots came back");
}

/// Checks a `kernel-*-failed` answer and its `agent-details`.
async fn assert_agent_failure(response: reqwest::Response, problem: &str, agent_problem: &str) {
    let body = assert_problem(response, 500, problem).await;
    let details = &body["agent-details"];
    assert_eq!(details["type"], format!("https://api.backend.ai/probs/{agent_problem}"), "{body}");
    assert!(details["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
}

#[actix_web::test]
async fn the_events_port_refuses_a_wrong_secret() {
    let Some(app) = app_without_agent(Backend::Embedded).await else { return };
    let event = json!({"event": "instance_started", "agent_id": "i-intruder",
        "data": {"addr": "127.0.0.1:9", "slots": {"cpu": 64, "mem": 65536}}});
    for secret in [None, Some("wrong-secret"), Some("")] {
        let mut request = reqwest::Client::new().post(format!("http://{}/events", app.state.events_addr));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        assert_problem(request.json(&event).send().await.unwrap(), 401, "auth-failed").await;
    }
    let found = agents::Entity::find_by_id("i-intruder".to_owned()).one(&app.state.db).await.unwrap();
    assert!(found.is_none(), "an unauthenticated agent was registered");
    app.stop().await;
}

#[actix_web::test]
async fn agent_failures_and_timeouts_end_the_session_and_release_its_reservation() {
    for backend in BACKENDS {
        let Some(app) = app_without_agent(backend).await else { continue };
        let agent_id = unique("i-fake");
        let (fake, _) = fake_agent(&app, &agent_id, json!({"cpu": 4, "mem": 4096, "gpu": 0})).await;
        let script = &fake.script;

        // Creation: an error, then a timeout.
        for (how, agent_problem) in [(Answer::Fail, "agent-failure"), (Answer::Stall, "agent-timeout")] {
            script.lock().unwrap().create = how;
            let token = unique("fail");
            assert_agent_failure(create(&app, &token).await, "kernel-creation-failed", agent_problem).await;
            let row = session(&app, &token).await;
            assert_eq!(row.status, KernelStatus::Error, "{backend:?} {how:?}");
            let info = row.status_info.unwrap_or_default();
            let cause = if how == Answer::Fail { "creation-failed: the agent failed" } else { "creation-failed: " };
            assert!(info.starts_with(cause), "{info}");
            assert_released(&app, &agent_id).await;
        }
        script.lock().unwrap().create = Answer::Ok;

        // Restart and destroy fail: the session ends in ERROR, released once.
        let cases = [
            ("PATCH", "kernel-restart-failed", "restart-failed"),
            ("DELETE", "kernel-destruction-failed", "destruction-failed"),
        ];
        for (method, problem, status_info) in cases {
            let token = unique("fail");
            assert_eq!(create(&app, &token).await.status().as_u16(), 201);
            *script.lock().unwrap() = Script { restart: Answer::Fail, destroy: Answer::Fail, ..Script::default() };
            let response = app.send(app.signed(method, &format!("/v3/kernel/{token}"), None)).await;
            assert_agent_failure(response, problem, "agent-failure").await;
            let row = session(&app, &token).await;
            assert_eq!(row.status, KernelStatus::Error, "{backend:?} {method}");
            assert!(row.status_info.as_deref().is_some_and(|i| i.starts_with(status_info)), "{row:?}");
            assert_released(&app, &agent_id).await;
            *script.lock().unwrap() = Script::default();
        }

        // A failed run is that call's failure: the session (and its interpreter) lives on.
        let token = unique("fail");
        assert_eq!(create(&app, &token).await.status().as_u16(), 201);
        for how in [Answer::Fail, Answer::Stall] {
            script.lock().unwrap().execute = how;
            let body = json!({"mode": "query", "code": "print(1)", "runId": "r1"});
            let response = app.send(app.signed("POST", &format!("/v3/kernel/{token}"), Some(body))).await;
            let agent_problem = if how == Answer::Fail { "agent-failure" } else { "agent-timeout" };
            assert_agent_failure(response, "kernel-execution-failed", agent_problem).await;
            assert_eq!(session(&app, &token).await.status, KernelStatus::Running);
        }
        // A destroy that works: the agent's final stats are written to the row.
        script.lock().unwrap().execute = Answer::Ok;
        let response = app.send(app.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await;
        assert_eq!(response.status().as_u16(), 200);
        let row = session(&app, &token).await;
        assert_eq!((row.status, row.cpu_used), (KernelStatus::Terminated, 7), "{backend:?}");
        assert_released(&app, &agent_id).await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_terminated_agent_ends_its_sessions_and_live_stats_reach_the_info() {
    for backend in BACKENDS {
        let Some(app) = app_without_agent(backend).await else { continue };
        let agent_id = unique("i-fake");
        let (fake, addr) = fake_agent(&app, &agent_id, json!({"cpu": 4, "mem": 4096, "gpu": 0})).await;
        let token = unique("stats");
        assert_eq!(create(&app, &token).await.status().as_u16(), 201);
        let kernel_id = session(&app, &token).await.id.to_string();

        let stats = json!({"stats": {kernel_id.clone(): {"mem_cur_bytes": 4 << 20, "cpu_used": 1234}}});
        send_event(&app, "kernel_stats", &agent_id, stats).await;
        let info: Value = app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await.json().await.unwrap();
        assert_eq!(info["memoryUsed"], 4096, "{backend:?}: KiB, {info}");
        assert_eq!(info["cpuCreditUsed"], 1234, "{info}");

        // A kernel the agent runs that no session owns is destroyed; the session's stays.
        let orphan = uuid::Uuid::new_v4().to_string();
        let kernels = json!([kernel_id.clone(), orphan.clone()]);
        let heartbeat = json!({"addr": addr, "slots": {"cpu": 4, "mem": 4096, "gpu": 0}, "kernels": kernels});
        send_event(&app, "instance_heartbeat", &agent_id, heartbeat).await;
        let mut destroyed = Vec::new();
        for _ in 0..100 {
            destroyed = fake.destroyed.lock().unwrap().clone();
            if !destroyed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(destroyed, vec![orphan], "{backend:?}");
        assert_eq!(session(&app, &token).await.status, KernelStatus::Running);

        send_event(&app, "instance_terminated", &agent_id, json!({})).await;
        let row = session(&app, &token).await;
        assert_eq!(row.status, KernelStatus::Terminated, "{backend:?}");
        assert_eq!(row.status_info.as_deref(), Some("agent-terminated"));
        assert_eq!(agent(&app, &agent_id).await.status, agents::AgentStatus::Terminated);
        assert_released(&app, &agent_id).await;
        let response = app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await;
        assert_problem(response, 404, "kernel-not-found").await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn slots_are_overbooked_and_the_freest_agent_is_chosen() {
    for backend in BACKENDS {
        let Some(app) = app_without_agent(backend).await else { continue };
        let config = app.state.stores.config.as_ref();
        config.put("config/overbook/cpu", "3").await.unwrap();
        config.put("config/overbook/mem", "1.5").await.unwrap();
        // Heartbeats use the cached factors, refreshed by a watch on the config store.
        for _ in 0..100 {
            if app.state.overbook.factors() == (3.0, 1.5, 1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(app.state.overbook.factors(), (3.0, 1.5, 1.0), "{backend:?}: the cache follows the store");
        let small = unique("i-small");
        let large = unique("i-large");
        fake_agent(&app, &small, json!({"cpu": 8, "mem": 1024, "gpu": 0})).await;
        fake_agent(&app, &large, json!({"cpu": 2, "mem": 8192, "gpu": 0})).await;
        let row = agent(&app, &small).await;
        assert_eq!((row.cpu_slots, row.mem_slots), (24.0, 1536), "{backend:?}: scaled by the overbook factors");

        // The most free (gpu, mem, cpu): memory decides before CPU.
        let token = unique("pick");
        assert_eq!(create(&app, &token).await.status().as_u16(), 201);
        assert_eq!(session(&app, &token).await.agent.as_deref(), Some(large.as_str()), "{backend:?}");
        let used = agent(&app, &large).await;
        assert!(used.used_mem_slots > 0 && used.used_cpu_slots > 0.0, "{used:?}");
        app.stop().await;
    }
}
