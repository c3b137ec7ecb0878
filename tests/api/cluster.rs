//! Several manager processes on one database and one config store (the production
//! deployment): one liveness checker per cluster, handed over when it goes away, and
//! no agent overbooked by racing managers.

use std::time::Duration;

use backendai_manager::actors::liveness::{Lease, LIVENESS_LEASE_KEY};
use backendai_manager::config::Settings;
use entity::agents::AgentStatus;
use futures_util::future::join_all;
use sea_orm::EntityTrait;
use serde_json::json;

use crate::faults::{agent, create, fake_agent};
use crate::helpers::{eventually, spawn_app_with, start_app, test_settings, unique, Backend, TestApp, BACKENDS};

fn without_agent(settings: &mut Settings) {
    settings.local_agent.enabled = false;
    settings.manager.heartbeat_timeout = 1.0;
}

/// The holder of the liveness checker's lease.
async fn checker(app: &TestApp) -> Option<String> {
    let lease = app.state.stores.config.get(LIVENESS_LEASE_KEY).await.unwrap()?;
    Some(Lease::parse(&lease).holder.to_owned())
}

/// Waits up to 10 s for `agent_id` to have `status`.
async fn wait_for_status(app: &TestApp, agent_id: &str, status: AgentStatus) -> bool {
    for _ in 0..100 {
        let row = entity::agents::Entity::find_by_id(agent_id.to_owned()).one(&app.state.db).await.unwrap();
        if row.is_some_and(|row| row.status == status) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[actix_web::test]
async fn one_manager_checks_liveness_and_another_takes_over_when_it_stops() {
    let Some((mut settings, _dir)) = test_settings(Backend::Services).await else { return };
    without_agent(&mut settings);
    let first = start_app(settings.clone()).await;
    let second = start_app(settings).await;
    let ids = [first.state.manager_id.clone(), second.state.manager_id.clone()];

    // One checker while both run, and it stays the same.
    let holder = eventually("a manager holds the liveness lease", Duration::from_secs(30), || checker(&first)).await;
    assert!(ids.contains(&holder), "{holder}");
    for _ in 0..5 {
        // Fixed on purpose: the lease must not change hands while both run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(checker(&first).await.as_deref(), Some(holder.as_str()));
    }

    // The checker stops; the other one takes over and declares a silent agent LOST.
    let (stopping, survivor) = if holder == ids[0] { (first, second) } else { (second, first) };
    stopping.stop().await;
    // Handed over at once (the lease would only expire in up to 5 s).
    let mut handed_over = false;
    for _ in 0..15 {
        if checker(&survivor).await.as_deref() == Some(survivor.state.manager_id.as_str()) {
            handed_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handed_over, "the lease was not handed over at shutdown");
    let agent_id = unique("i-silent");
    fake_agent(&survivor, &agent_id, json!({"cpu": 2, "mem": 2048, "gpu": 0})).await;
    assert!(wait_for_status(&survivor, &agent_id, AgentStatus::Lost).await, "the agent was not declared lost");
    assert_eq!(checker(&survivor).await.as_deref(), Some(survivor.state.manager_id.as_str()));
    survivor.stop().await;
}

#[actix_web::test]
async fn a_checker_that_died_is_replaced_when_its_lease_expires() {
    for backend in BACKENDS {
        let Some(app) = spawn_app_with(backend, without_agent).await else { continue };
        let config = app.state.stores.config.clone();
        // Another manager holds the lease, and stops renewing it (it died).
        let far = chrono::Utc::now().timestamp_millis() + 60_000;
        config.put(LIVENESS_LEASE_KEY, &format!("manager-gone {far}")).await.unwrap();
        // Again after a check round: a renewal in flight may have overwritten the first
        // (fixed on purpose: a renewal that read the lease before the first put lands
        // meanwhile; none started after it writes).
        tokio::time::sleep(Duration::from_millis(700)).await;
        config.put(LIVENESS_LEASE_KEY, &format!("manager-gone {far}")).await.unwrap();
        let agent_id = unique("i-silent");
        fake_agent(&app, &agent_id, json!({"cpu": 2, "mem": 2048, "gpu": 0})).await;
        // Fixed on purpose: over twice the heartbeat timeout in which nothing may happen.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(agent(&app, &agent_id).await.status, AgentStatus::Alive, "{backend:?}: only the holder checks");

        let expired = chrono::Utc::now().timestamp_millis() - 1;
        config.put(LIVENESS_LEASE_KEY, &format!("manager-gone {expired}")).await.unwrap();
        assert!(wait_for_status(&app, &agent_id, AgentStatus::Lost).await, "{backend:?}: not declared lost");
        assert_eq!(checker(&app).await.as_deref(), Some(app.state.manager_id.as_str()));
        app.stop().await;
    }
}

#[actix_web::test]
async fn racing_managers_never_overbook_an_agent() {
    let Some((mut settings, _dir)) = test_settings(Backend::Services).await else { return };
    without_agent(&mut settings);
    settings.manager.heartbeat_timeout = 120.0;
    // The creates that find no room wait this long in the queue, then answer 503.
    settings.scheduler.create_wait = 2.0;
    let first = start_app(settings.clone()).await;
    let second = start_app(settings).await;
    let config = first.state.stores.config.clone();
    config.put("config/overbook/cpu", "1").await.unwrap();
    config.put("config/overbook/mem", "1").await.unwrap();
    for _ in 0..100 {
        if first.state.overbook.factors() == (1.0, 1.0, 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first.state.overbook.factors(), (1.0, 1.0, 1.0), "the etcd watch refreshed the cache");
    // Room for two python3 sessions (1 CPU each).
    let agent_id = unique("i-small");
    fake_agent(&first, &agent_id, json!({"cpu": 2, "mem": 65536, "gpu": 0})).await;

    let tokens: Vec<String> = (0..8).map(|_| unique("race")).collect();
    let creates = tokens.iter().enumerate().map(|(i, token)| {
        let app = if i % 2 == 0 { &first } else { &second };
        create(app, token)
    });
    let statuses: Vec<u16> = join_all(creates).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 6, "{statuses:?}");
    let row = agent(&first, &agent_id).await;
    assert_eq!(row.used_cpu_slots, 2.0, "{row:?}");
    first.stop().await;
    second.stop().await;
}

/// A real agent on the Redis bus: heard by any manager, so stopping the manager it
/// first talked to changes nothing for it or its sessions.
#[actix_web::test]
async fn an_agent_on_the_redis_bus_outlives_the_manager_it_first_reached() {
    let Some((mut settings, _dir)) = test_settings(Backend::Services).await else { return };
    settings.local_agent.enabled = false;
    settings.manager.heartbeat_timeout = 2.0;
    let first = start_app(settings.clone()).await;
    let mut second = start_app(settings.clone()).await;
    // One client, one key, whichever manager serves it.
    second.access_key = first.access_key.clone();
    second.secret_key = first.secret_key.clone();

    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent_id = unique("i-bus");
    let config = agent::AgentConfig {
        agent_id: agent_id.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        namespace: settings.manager.namespace.clone(),
        redis_addr: settings.redis.addr.clone(),
        cluster_secret: settings.manager.cluster_secret.clone(),
        scratch_root: scratch.path().join("scratch"),
        heartbeat_interval: 0.5,
        ..Default::default()
    };
    let built = agent::Agent::build(config).await.unwrap();
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = actix_web::rt::spawn(built.run_until_stopped(async move {
        stopped.await.ok();
    }));
    assert!(wait_for_status(&first, &agent_id, AgentStatus::Alive).await, "registered through the bus");

    let token = unique("bus");
    assert_eq!(create(&first, &token).await.status().as_u16(), 201);
    first.stop().await;
    // Several heartbeat timeouts with only the second manager reading the bus (fixed on
    // purpose: the agent must not be declared lost in all that time).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(agent(&second, &agent_id).await.status, AgentStatus::Alive, "no false LOST");
    let run = json!({"mode": "query", "code": "print(6 * 7)", "runId": "r1"});
    let response = second.send(second.signed("POST", &format!("/v3/kernel/{token}"), Some(run))).await;
    assert_eq!(response.status().as_u16(), 200);
    let result: serde_json::Value = response.json().await.unwrap();
    assert!(result.to_string().contains("42"), "{result}");

    // The kernel's end reaches the surviving manager through the bus.
    let response = second.send(second.signed("DELETE", &format!("/v3/kernel/{token}"), None)).await;
    assert_eq!(response.status().as_u16(), 200);
    stop_agent.send(()).ok();
    running.await.unwrap().unwrap();
    assert!(wait_for_status(&second, &agent_id, AgentStatus::Terminated).await, "instance_terminated applied");
    second.stop().await;
}
