//! The agent's RPC API (HTTP/JSON, every route authenticated with the cluster secret).

mod kernels;
mod pty;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse};
use subtle::ConstantTimeEq;

use super::config::Secret;
use super::error::AgentError;
use super::runtime::Runtime;

pub use protocol::Slots;

/// Shared state of the RPC handlers.
pub struct RpcState {
    /// The kernel runtime.
    pub runtime: Arc<dyn Runtime>,
    /// The agent id.
    pub agent_id: String,
    /// The region.
    pub region: String,
    /// The RPC server's address.
    pub addr: String,
    /// Offered slots.
    pub slots: Slots,
    /// The cluster secret.
    pub secret: Secret,
}

/// Registers every RPC route, behind the authentication middleware.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(16 << 20)
            .error_handler(|e, _| AgentError::InvalidParams(e.to_string()).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|e, _| AgentError::InvalidParams(e.to_string()).into()))
    .app_data(web::QueryConfig::default().error_handler(|e, _| AgentError::InvalidParams(e.to_string()).into()))
    .service(
        web::scope("")
            .wrap(from_fn(require_secret))
            .route("/health", web::get().to(health))
            .configure(kernels::configure)
            .configure(pty::configure)
            .default_service(web::to(|| async { Err::<HttpResponse, _>(AgentError::NotFound) })),
    );
}

/// Rejects requests without `Authorization: Bearer <cluster secret>` (constant-time check).
async fn require_secret(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state =
        req.app_data::<web::Data<RpcState>>().ok_or_else(|| AgentError::Failure(anyhow::anyhow!("no RPC state")))?;
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.secret.expose().as_bytes();
    let ok = !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected));
    if !ok {
        return Err(AgentError::Unauthorized.into());
    }
    next.call(req).await
}

/// `GET /health`.
async fn health(state: web::Data<RpcState>) -> HttpResponse {
    let kernels: Vec<String> = state.runtime.list().await.into_iter().map(|k| k.id).collect();
    HttpResponse::Ok().json(serde_json::json!({
        "agent_id": state.agent_id,
        "region": state.region,
        "addr": state.addr,
        "slots": state.slots,
        "kernels": kernels,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
