//! The cluster under load: no deadlock or failed call from racing creates and
//! destroys, reconciliation judged from the time of the agent's report, and a burst of
//! creations on the embedded default that leaves every session running.

use std::time::Duration;

use entity::kernels::{self, KernelStatus};
use entity::{agents, keypairs};
use futures_util::future::join_all;
use futures_util::StreamExt;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement};
use serde_json::json;

use crate::faults::{app_without_agent, create, fake_agent, send_event, session};
use crate::helpers::{spawn_app_with, unique, Backend, TestApp};

/// Deadlocks PostgreSQL detected in the app's database so far.
async fn deadlocks(app: &TestApp) -> i64 {
    let row = app
        .state
        .db
        .query_one(Statement::from_string(
            app.state.db.get_database_backend(),
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

async fn set_concurrency_limit(app: &TestApp, limit: i32) {
    keypairs::Entity::update_many()
        .col_expr(keypairs::Column::ConcurrencyLimit, Expr::value(limit))
        .filter(keypairs::Column::AccessKey.eq(app.access_key.clone()))
        .exec(&app.state.db)
        .await
        .unwrap();
}

#[actix_web::test]
async fn racing_creates_and_destroys_of_one_key_never_deadlock_nor_fail() {
    let Some(app) = app_without_agent(Backend::Services).await else { return };
    set_concurrency_limit(&app, 1000).await;
    let agent_id = unique("i-busy");
    fake_agent(&app, &agent_id, json!({"cpu": 64, "mem": 1 << 20, "gpu": 0})).await;
    let before = deadlocks(&app).await;

    // Eight clients create and destroy sessions of one key on one agent: every create
    // locks the key then the agent, every end the same rows in the same order.
    let worker = |n: usize| {
        let app = &app;
        async move {
            let mut statuses = Vec::new();
            for i in 0..15 {
                let token = format!("race-{n}-{i}-{}", unique("t"));
                statuses.push(create(app, &token).await.status().as_u16());
                let path = format!("/v3/kernel/{token}");
                statuses.push(app.send(app.signed("DELETE", &path, None)).await.status().as_u16());
            }
            statuses
        }
    };
    let statuses: Vec<u16> = join_all((0..8).map(worker)).await.into_iter().flatten().collect();
    let failed: Vec<_> = statuses.iter().filter(|s| !matches!(s, 200 | 201 | 204)).collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");

    let key = keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(key.concurrency_used, 0, "every quota charge was given back");
    let row = agents::Entity::find_by_id(agent_id.clone()).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!((row.used_cpu_slots, row.used_mem_slots), (0.0, 0), "every slot was given back");
    let stuck = kernels::Entity::find()
        .filter(kernels::Column::AccessKey.eq(app.access_key.clone()))
        .filter(kernels::Column::Status.is_not_in([KernelStatus::Terminated]))
        .all(&app.state.db)
        .await
        .unwrap();
    assert!(stuck.is_empty(), "sessions not TERMINATED: {stuck:?}");
    // A backend reports its deadlocks when its transaction ends (at most every second):
    // fixed on purpose, as there is no sign to wait for that none will be reported.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = app.state.db.execute_unprepared("SELECT pg_stat_force_next_flush()").await;
    assert_eq!(deadlocks(&app).await - before, 0, "PostgreSQL detected deadlocks");
    app.stop().await;
}

#[actix_web::test]
async fn a_report_judges_only_sessions_placed_before_it_was_taken() {
    for backend in crate::helpers::BACKENDS {
        let Some(app) = app_without_agent(backend).await else { continue };
        let agent_id = unique("i-report");
        let (_fake, addr) = fake_agent(&app, &agent_id, json!({"cpu": 8, "mem": 8192, "gpu": 0})).await;
        let token = unique("placed");
        assert_eq!(create(&app, &token).await.status().as_u16(), 201);
        let kernel = session(&app, &token).await;
        let report = |taken_at: i64| json!({"addr": addr, "slots": {"cpu": 8, "mem": 8192}, "kernels": [], "taken_at": taken_at});

        // A report taken before the session was placed does not list it: it stays.
        let earlier = kernel.scheduled_at.unwrap().timestamp_millis() - 60_000;
        send_event(&app, "instance_heartbeat", &agent_id, report(earlier)).await;
        assert_eq!(session(&app, &token).await.status, KernelStatus::Running, "{backend:?}");
        // Nor does one taken just after (the agent may not have the creation yet).
        send_event(&app, "instance_heartbeat", &agent_id, report(protocol::unix_ms())).await;
        assert_eq!(session(&app, &token).await.status, KernelStatus::Running, "{backend:?}");

        // Placed well before a report that does not list it: gone.
        let long_ago = (chrono::Utc::now() - chrono::Duration::seconds(30)).fixed_offset();
        kernels::Entity::update_many()
            .col_expr(kernels::Column::CreatedAt, Expr::value(long_ago))
            .col_expr(kernels::Column::ScheduledAt, Expr::value(long_ago))
            .filter(kernels::Column::Id.eq(kernel.id))
            .exec(&app.state.db)
            .await
            .unwrap();
        send_event(&app, "instance_heartbeat", &agent_id, report(protocol::unix_ms())).await;
        let ended = session(&app, &token).await;
        assert_eq!((ended.status, ended.status_info.as_deref()), (KernelStatus::Error, Some("kernel-lost")));
        // One still PREPARING whose kernel never came: its create was cut short.
        let cut = unique("cut");
        assert_eq!(create(&app, &cut).await.status().as_u16(), 201);
        strand(&app, &cut, KernelStatus::Preparing).await;
        send_event(&app, "instance_heartbeat", &agent_id, report(protocol::unix_ms())).await;
        let ended = session(&app, &cut).await;
        assert_eq!((ended.status, ended.status_info.as_deref()), (KernelStatus::Error, Some("creation-interrupted")));
        let row = agents::Entity::find_by_id(agent_id).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!(row.used_cpu_slots, 0.0, "{backend:?}: released with the end");
        app.stop().await;
    }
}

#[actix_web::test]
async fn three_hundred_creates_back_to_back_on_the_embedded_default_all_run() {
    let Some(app) = spawn_app_with(Backend::Embedded, |s| {
        // Three heartbeats per timeout; a slow heartbeat would show.
        s.manager.heartbeat_timeout = 3.0;
    })
    .await
    else {
        return;
    };
    app.wait_for_agent().await;
    set_concurrency_limit(&app, 1000).await;
    let config = app.state.stores.config.as_ref();
    config.put("config/overbook/cpu", "400").await.unwrap();
    // The next heartbeat scales the agent's slots.
    let mut room = false;
    for _ in 0..100 {
        let alive = agents::Entity::find().all(&app.state.db).await.unwrap();
        if alive.iter().any(|a| a.cpu_slots >= 300.0 && a.mem_slots >= 300 * 128) {
            room = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(room, "the agent's slots were not scaled");

    let tokens: Vec<String> = (0..300).map(|n| format!("burst-{n:03}-{}", unique("b"))).collect();
    for token in &tokens {
        let response = crate::helpers::create_session(&app, "bash", token).await;
        assert_eq!(response.status().as_u16(), 201, "{token}: {:?}", response.text().await);
    }
    // Longer than the heartbeat timeout after the burst: nothing was declared lost (fixed
    // on purpose: nothing may happen in that time).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let running = kernels::Entity::find()
        .filter(kernels::Column::AccessKey.eq(app.access_key.clone()))
        .filter(kernels::Column::Status.eq(KernelStatus::Running))
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(running.len(), 300, "sessions still RUNNING");
    let lost = agents::Entity::find()
        .filter(agents::Column::Status.ne(agents::AgentStatus::Alive))
        .all(&app.state.db)
        .await
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    // Ten clients destroy them.
    let destroys = tokens.iter().map(|token| {
        let path = format!("/v3/kernel/{token}");
        let app = &app;
        async move { app.send(app.signed("DELETE", &path, None)).await.status().as_u16() }
    });
    let statuses: Vec<u16> = futures_util::stream::iter(destroys).buffer_unordered(10).collect().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    app.stop().await;
}

/// Moves the session's status back in time: as if it got `status` a minute ago.
async fn strand(app: &TestApp, token: &str, status: KernelStatus) -> kernels::Model {
    let kernel = session(app, token).await;
    let long_ago = (chrono::Utc::now() - chrono::Duration::seconds(60)).fixed_offset();
    kernels::Entity::update_many()
        .col_expr(kernels::Column::Status, Expr::value(status))
        .col_expr(kernels::Column::CreatedAt, Expr::value(long_ago))
        .col_expr(kernels::Column::ScheduledAt, Expr::value(long_ago))
        .filter(kernels::Column::Id.eq(kernel.id))
        .exec(&app.state.db)
        .await
        .unwrap();
    entity::session_events::Entity::update_many()
        .col_expr(entity::session_events::Column::CreatedAt, Expr::value(long_ago))
        .filter(entity::session_events::Column::KernelId.eq(kernel.id))
        .exec(&app.state.db)
        .await
        .unwrap();
    kernel
}

/// A manager killed during a create, a restart or a destroy leaves the session
/// PREPARING, RESTARTING or TERMINATING; the liveness checker settles it once every
/// call timeout has passed, releasing what it held.
#[actix_web::test]
async fn sessions_a_dead_manager_left_half_way_are_settled() {
    for backend in crate::helpers::BACKENDS {
        let Some(app) = app_without_agent(backend).await else { continue };
        let agent_id = unique("i-stranded");
        let (fake, _) = fake_agent(&app, &agent_id, json!({"cpu": 8, "mem": 8192, "gpu": 0})).await;
        let [creating, restarting, destroying] = [unique("creating"), unique("restarting"), unique("destroying")];
        for token in [&creating, &restarting, &destroying] {
            assert_eq!(create(&app, token).await.status().as_u16(), 201, "{backend:?}");
        }
        // Recent ones are left alone: their manager may still be at it.
        let fresh = unique("fresh");
        assert_eq!(create(&app, &fresh).await.status().as_u16(), 201, "{backend:?}");
        kernels::Entity::update_many()
            .col_expr(kernels::Column::Status, Expr::value(KernelStatus::Preparing))
            .filter(kernels::Column::SessId.eq(fresh.clone()))
            .exec(&app.state.db)
            .await
            .unwrap();
        strand(&app, &creating, KernelStatus::Preparing).await;
        strand(&app, &restarting, KernelStatus::Restarting).await;
        strand(&app, &destroying, KernelStatus::Terminating).await;

        let mut settled = false;
        for _ in 0..100 {
            if session(&app, &creating).await.status == KernelStatus::Error
                && session(&app, &destroying).await.status == KernelStatus::Terminated
                && session(&app, &restarting).await.status == KernelStatus::Running
            {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(settled, "{backend:?}: not settled");
        assert_eq!(session(&app, &creating).await.status_info.as_deref(), Some("creation-interrupted"));
        assert_eq!(session(&app, &destroying).await.status_info.as_deref(), Some("user-requested"));
        assert_eq!(session(&app, &fresh).await.status, KernelStatus::Preparing, "{backend:?}: too recent to judge");
        // The watchdog tried the agent again first: the stuck create's and destroy's
        // kernels were destroyed there (the restarted one was left alone).
        let destroyed = fake.destroyed.lock().unwrap().clone();
        for (token, expected) in [(&creating, true), (&destroying, true), (&restarting, false)] {
            let id = session(&app, token).await.id.to_string();
            assert_eq!(destroyed.contains(&id), expected, "{backend:?} {token}: {destroyed:?}");
        }
        // Two live sessions hold quota and slots (restarting and fresh), no more.
        let key = keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!(key.concurrency_used, 2, "{backend:?}");
        let row = agents::Entity::find_by_id(agent_id).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!(row.used_cpu_slots, 2.0, "{backend:?}");
        app.stop().await;
    }
}

/// An agent that just died still looks alive for up to two heartbeat intervals; a
/// create placed on it, which could not even connect, is placed on another agent.
#[actix_web::test]
async fn a_create_that_cannot_reach_its_agent_is_placed_on_another() {
    for backend in crate::helpers::BACKENDS {
        let Some(app) = app_without_agent(backend).await else { continue };
        let alive = unique("i-alive");
        fake_agent(&app, &alive, json!({"cpu": 4, "mem": 8192, "gpu": 0})).await;
        // The freest agent, so the first choice: nothing listens at its address.
        let dead = unique("i-dead");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let data = json!({"addr": closed.to_string(), "slots": {"cpu": 64, "mem": 65536, "gpu": 0}, "kernels": []});
        send_event(&app, "instance_started", &dead, data).await;

        let token = unique("replaced");
        assert_eq!(create(&app, &token).await.status().as_u16(), 201, "{backend:?}");
        let rows = crate::helpers::sessions_named(&app, &token).await;
        let running: Vec<_> = rows.iter().filter(|k| k.status == KernelStatus::Running).collect();
        assert_eq!(running.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(running[0].agent.as_deref(), Some(alive.as_str()), "{backend:?}");
        let failed: Vec<_> = rows.iter().filter(|k| k.status == KernelStatus::Error).collect();
        assert_eq!(failed.len(), 1, "{backend:?}: the attempt on the dead agent is recorded");
        assert_eq!(failed[0].agent.as_deref(), Some(dead.as_str()), "{backend:?}");
        let key = keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!(key.concurrency_used, 1, "{backend:?}: charged once");
        let row = agents::Entity::find_by_id(dead).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!(row.used_cpu_slots, 0.0, "{backend:?}: nothing left reserved on the dead agent");
        app.stop().await;
    }
}
