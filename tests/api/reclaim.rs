//! Reclaim and slot accounting (issue 14): a key's idle timeout and session lifetime end
//! its sessions after a warning event, and drift injected in the database is repaired by
//! the periodic audit and by the `audit` command. Fake agents of fixed capacities, on
//! both deployments.

use std::time::Duration;

use backendai_manager::ledger;
use entity::agents;
use entity::kernels::KernelStatus;
use entity::keypairs;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::faults::{agent, session};
use crate::helpers::{eventually, unique, Backend, TestApp, BACKENDS};
use crate::scheduler::{cluster, concurrency_used, create};
/// Sets the app key's limits as an operator would (`keypair set-limits` does the same).
async fn set_limits(app: &TestApp, idle_timeout: i32, max_session_lifetime: i32) {
    use sea_orm::sea_query::Expr;
    let changes = vec![
        (keypairs::Column::IdleTimeout, Expr::value(idle_timeout)),
        (keypairs::Column::MaxSessionLifetime, Expr::value(max_session_lifetime)),
    ];
    let directory = &app.state.directory;
    assert!(backendai_manager::actors::keypair::update_row(&app.state.db, directory, &app.access_key, changes)
        .await
        .unwrap());
}

async fn execute(app: &TestApp, token: &str) {
    let body = json!({"mode": "query", "code": "print(1)", "runId": unique("run")});
    let response = app.send(app.signed("POST", &format!("/v3/kernel/{token}"), Some(body))).await;
    assert_eq!(response.status(), 200);
}

#[actix_web::test]
async fn an_idle_session_is_warned_then_reclaimed_and_a_used_one_is_not() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(8.0, 8000)], |s| s.scheduler.reclaim_warning = 1.5).await else {
            continue;
        };
        set_limits(&app, 3, 0).await;
        let (idle, used) = (unique("idle"), unique("used"));
        assert_eq!(create(&app, "small", &idle).await.status(), 201);
        assert_eq!(create(&app, "small", &used).await.status(), 201);
        let stream = crate::streams::open_events(&app, &format!("/v3/stream/kernel/{idle}/events"), Some(0)).await;
        // The used one gets a call every half second for twice the idle timeout.
        for _ in 0..12 {
            execute(&app, &used).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let events = crate::streams::collect(stream, 6).await;
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["pending", "preparing", "running", "warning", "terminating", "terminated"], "{backend:?}");
        let warning = &events[3];
        assert!(warning.data["reason"].as_str().unwrap_or_default().starts_with("idle-timeout in "), "{:?}", warning);
        assert_eq!(events[5].data["reason"], "idle-timeout", "{backend:?}");
        let row = session(&app, &idle).await;
        assert_eq!((row.status, row.status_info.as_deref()), (KernelStatus::Terminated, Some("idle-timeout")));
        // Used all along: still running; once left alone, reclaimed too.
        assert_eq!(session(&app, &used).await.status, KernelStatus::Running, "{backend:?}");
        let reclaimed = eventually("the used session is reclaimed once idle", Duration::from_secs(15), || async {
            let row = session(&app, &used).await;
            (row.status == KernelStatus::Terminated).then_some(row)
        })
        .await;
        assert_eq!(reclaimed.status_info.as_deref(), Some("idle-timeout"));
        assert_eq!(concurrency_used(&app).await, 0, "the quota came back");
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_session_past_its_lifetime_is_reclaimed_even_while_used() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(8.0, 8000)], |s| s.scheduler.reclaim_warning = 1.0).await else {
            continue;
        };
        set_limits(&app, 0, 3).await;
        let token = unique("mortal");
        assert_eq!(create(&app, "small", &token).await.status(), 201);
        let ended =
            eventually("the session is reclaimed at the end of its lifetime", Duration::from_secs(15), || async {
                let row = session(&app, &token).await;
                if row.status == KernelStatus::Running {
                    // Used all along (it may end between the read and the call: then 404).
                    let body = json!({"mode": "query", "code": "print(1)", "runId": unique("run")});
                    app.send(app.signed("POST", &format!("/v3/kernel/{token}"), Some(body))).await;
                }
                (row.status == KernelStatus::Terminated).then_some(row)
            })
            .await;
        assert_eq!(ended.status_info.as_deref(), Some("lifetime-exceeded"), "{backend:?}");
        let lived = ended.terminated_at.unwrap() - ended.started_at.unwrap();
        assert!(lived >= chrono::Duration::seconds(3), "{lived:?}");
        app.stop().await;
    }
}

/// Slots and session counts that no longer match the live sessions, as a bug or a
/// manual edit would leave them.
async fn inject_drift(app: &TestApp) {
    use sea_orm::sea_query::Expr;
    agents::Entity::update_many()
        .col_expr(agents::Column::UsedMemSlots, Expr::value(777))
        .col_expr(agents::Column::UsedCpuSlots, Expr::value(5.5))
        .filter(agents::Column::Id.eq("i-0"))
        .exec(&app.state.db)
        .await
        .unwrap();
    keypairs::Entity::update_many()
        .col_expr(keypairs::Column::ConcurrencyUsed, Expr::value(4))
        .filter(keypairs::Column::AccessKey.eq(app.access_key.clone()))
        .exec(&app.state.db)
        .await
        .unwrap();
}

#[actix_web::test]
async fn drift_injected_in_the_database_is_repaired_by_the_periodic_audit() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(8.0, 8000)], |s| s.scheduler.audit_interval = 1.0).await else { continue };
        assert_eq!(create(&app, "small", &unique("live")).await.status(), 201);
        let repairs_before = app.state.core.scheduling.repairs();
        inject_drift(&app).await;
        eventually("the audit repairs and counts the drift", Duration::from_secs(15), || async {
            let row = agent(&app, "i-0").await;
            let repaired = row.used_mem_slots == 1000 && row.used_cpu_slots == 1.0 && concurrency_used(&app).await == 1;
            // The count moves once the whole audit is done.
            (repaired && app.state.core.scheduling.repairs() >= repairs_before + 2).then_some(())
        })
        .await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn the_audit_command_reports_and_repairs_drift() {
    // The periodic audit runs once at start, then not for a day: the command finds the drift.
    let Some(app) = cluster(Backend::Services, &[(8.0, 8000)], |s| s.scheduler.audit_interval = 86_400.0).await else {
        return;
    };
    assert_eq!(create(&app, "small", &unique("live")).await.status(), 201);
    inject_drift(&app).await;
    let found = ledger::audit(&app.state.db, true).await.unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|d| !d.repaired));
    assert_eq!(agent(&app, "i-0").await.used_mem_slots, 777, "a dry run changes nothing");
    let db_url = app.state.settings.db.url.as_ref().unwrap().expose().to_owned();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_backendai-manager"))
            .args(["--db-url", &db_url])
            .args(args)
            .env_remove("BACKENDAI_CONFIG")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let report = run(&["audit"]);
    assert!(report.contains("repaired agent i-0: recorded cpu 5.5 mem 777"), "{report}");
    assert!(report.contains(&format!("repaired keypair {}: recorded cpu 4", app.access_key)), "{report}");
    assert_eq!(agent(&app, "i-0").await.used_mem_slots, 1000);
    assert_eq!(concurrency_used(&app).await, 1);
    assert!(run(&["audit"]).contains("no drift"));
    app.stop().await;
}
