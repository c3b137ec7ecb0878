//! `GET /healthz`, without authentication: whether the database, the config store
//! and the Redis stores answer.

use std::future::Future;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::error::Error;
use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn check(probe: impl Future<Output = Result<(), Error>>) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// The health report: 200 when everything answers, else 503.
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let stores = &state.stores;
    let (database, etcd, redis_stats, redis_ratelimit) = futures_util::join!(
        check(async { Ok(state.db.ping().await?) }),
        check(stores.config.ping()),
        check(stores.stats.ping()),
        check(stores.ratelimit.ping()),
    );
    let healthy = [&database, &etcd, &redis_stats, &redis_ratelimit].iter().all(|r| r.is_ok());
    let report = |kind: &str, result: &Result<(), String>| match result {
        Ok(()) => json!({"ok": true, "kind": kind}),
        Err(error) => json!({"ok": false, "kind": kind, "error": error}),
    };
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "database": report(&format!("{:?}", state.db.get_database_backend()).to_lowercase(), &database),
        "etcd": report(stores.config.kind(), &etcd),
        "redis": report(stores.ratelimit.kind(), &redis_stats.and(redis_ratelimit)),
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
