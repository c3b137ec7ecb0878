//! The events port: a separate listener where agents report (`POST /events`,
//! authenticated with the cluster secret).

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::actors::agent;
use crate::actors::messages::AgentReport;
use crate::error::{ApiError, Error, Problem};
use crate::startup::AppState;
use crate::{scheduler, sessions};

/// How long live kernel stats live without an update.
pub const STATS_TTL: Duration = Duration::from_secs(120);
/// The largest event accepted.
const MAX_EVENT_SIZE: usize = 1 << 20;

/// An event from an agent.
#[derive(Debug, Deserialize)]
pub struct AgentEvent {
    /// `instance_started`, `instance_heartbeat`, `instance_terminated`,
    /// `kernel_terminated` or `kernel_stats`.
    pub event: String,
    /// The reporting agent.
    pub agent_id: String,
    /// The event's fields.
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Deserialize)]
struct KernelTerminatedData {
    kernel_id: Uuid,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    stats: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct KernelStatsData {
    stats: HashMap<String, Value>,
}

/// Builds the events server on `listener`.
pub fn server(state: web::Data<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(MAX_EVENT_SIZE))
            .route("/events", web::post().to(receive))
            .default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::new(Problem::GenericNotFound)) }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run())
}

fn authorized(req: &HttpRequest, secret: &str) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // An empty secret accepts nobody.
    !secret.is_empty() && bool::from(presented.as_bytes().ct_eq(secret.as_bytes()))
}

async fn receive(req: HttpRequest, state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    if !authorized(&req, state.settings.manager.cluster_secret.expose()) {
        return Err(ApiError::new(Problem::AuthFailed));
    }
    let event: AgentEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(Problem::InvalidApiParams).with_detail(format!("malformed event: {e}")))?;
    let bad = |e: serde_json::Error| {
        ApiError::new(Problem::InvalidApiParams).with_detail(format!("malformed {}: {e}", event.event))
    };
    let registry = &state.registry;
    let result: Result<(), Error> = match event.event.as_str() {
        "instance_started" | "instance_heartbeat" => {
            let report: AgentReport = serde_json::from_value(event.data.clone()).map_err(bad)?;
            agent::report(registry, &event.agent_id, report, event.event == "instance_started").await
        }
        "instance_terminated" => agent::terminated(registry, &event.agent_id).await,
        "kernel_terminated" => {
            let data: KernelTerminatedData = serde_json::from_value(event.data.clone()).map_err(bad)?;
            let reason = data.reason.unwrap_or_else(|| "exited".to_owned());
            let stats = data.stats.as_ref().map(scheduler::parse_stats).unwrap_or_default();
            sessions::kernel_terminated(&state, data.kernel_id, reason, stats).await
        }
        "kernel_stats" => {
            let data: KernelStatsData = serde_json::from_value(event.data.clone()).map_err(bad)?;
            for (kernel_id, stats) in data.stats {
                state.stores.stats.set_kernel_stats(&kernel_id, &scheduler::parse_stats(&stats), STATS_TTL).await?;
            }
            Ok(())
        }
        other => {
            tracing::debug!(event = other, agent = %event.agent_id, "ignored an unknown event");
            Ok(())
        }
    };
    result?;
    Ok(HttpResponse::NoContent().finish())
}
