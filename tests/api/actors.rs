//! The actors under a slow database: work that waits on the database in one session's
//! actor holds up neither other sessions nor lookups of cached keys and sessions (each
//! actor has its own mailbox, the children are spread over a pool of arbiters, and the
//! registry's mailbox does no I/O).

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::json;

use crate::helpers::{create_session, spawn_app, unique, Backend};

/// Bounds a call that must not wait on the locked table (a hang fails, not a slow answer).
const NO_HANG: Duration = Duration::from_secs(20);

#[actix_web::test]
#[cfg_attr(not(services), ignore = "needs BACKENDAI_TEST_* (PostgreSQL, Redis, etcd)")]
async fn a_session_stuck_on_the_database_holds_up_no_other_session_or_key() {
    let Some(app) = spawn_app(Backend::Services).await else { return };
    let (stuck, other) = (unique("stuck"), unique("other"));
    for token in [&stuck, &other] {
        assert_eq!(create_session(&app, "python3", token).await.status().as_u16(), 201);
    }
    // Another connection takes the kernels table: reads go on, every write waits.
    let db_url = app.state.settings.db.connection_url().expose().to_owned();
    let locker = Database::connect(&db_url).await.unwrap();
    locker.execute_unprepared("BEGIN; LOCK TABLE kernels IN EXCLUSIVE MODE;").await.unwrap();

    let destroy = {
        let app = app.clone_handle();
        let stuck = stuck.clone();
        tokio::spawn(async move { app.send(app.signed("DELETE", &format!("/v3/kernel/{stuck}"), None)).await })
    };
    // The destroy waits on the lock (seen in pg_locks); the other session and the key
    // answer meanwhile.
    let waiting = "SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON l.relation = c.oid \
                   WHERE c.relname = 'kernels' AND NOT l.granted";
    let mut blocked = false;
    for _ in 0..200 {
        let row = locker.query_one(Statement::from_string(DbBackend::Postgres, waiting)).await.unwrap().unwrap();
        if row.try_get::<i64>("", "n").unwrap() > 0 {
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(blocked && !destroy.is_finished(), "the destroy never waited on the locked table");
    for round in 0..5 {
        let info = tokio::time::timeout(NO_HANG, app.send(app.signed("GET", &format!("/v3/kernel/{other}"), None)))
            .await
            .expect("GET info of another session waited on the locked table");
        assert_eq!(info.status().as_u16(), 200, "round {round}");
        let body = json!({"mode": "query", "code": "print(6 * 7)", "runId": format!("r{round}")});
        let executed =
            tokio::time::timeout(NO_HANG, app.send(app.signed("POST", &format!("/v3/kernel/{other}"), Some(body))))
                .await
                .expect("execute in another session waited on the locked table");
        assert_eq!(executed.status().as_u16(), 200, "round {round}");
        let result: serde_json::Value = executed.json().await.unwrap();
        assert_eq!(result["result"]["console"][0][1], "42\n", "{result}");
        let authorized = tokio::time::timeout(NO_HANG, app.send(app.signed("GET", "/v2/authorize", None)))
            .await
            .expect("a request of the cached key waited on the locked table");
        assert_eq!(authorized.status().as_u16(), 200);
    }
    assert!(!destroy.is_finished(), "the lock is still held");
    locker.execute_unprepared("COMMIT").await.unwrap();
    let destroyed = tokio::time::timeout(NO_HANG, destroy).await.expect("the destroy ends once the lock goes").unwrap();
    assert_eq!(destroyed.status().as_u16(), 200);
    app.stop().await;
}
