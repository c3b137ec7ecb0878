//! The events port: a separate listener where agents report (`POST /events`,
//! authenticated with the cluster secret).

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use protocol::Envelope;
use subtle::ConstantTimeEq;

use crate::bus::Delivery;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// The largest event accepted.
const MAX_EVENT_SIZE: usize = 1 << 20;

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
    let envelope = Envelope::from_json(&body)
        .map_err(|e| ApiError::new(Problem::InvalidApiParams).with_detail(format!("malformed event: {e}")))?;
    let Some(envelope) = envelope else {
        tracing::debug!("ignored an unknown event");
        return Ok(HttpResponse::NoContent().finish());
    };
    if matches!(envelope.event, protocol::AgentEvent::InstanceHeartbeat(_) | protocol::AgentEvent::InstanceStarted(_)) {
        state.bus.board.record(&envelope.agent_id);
    }
    state.applier.apply(Delivery::direct(envelope)).await?;
    Ok(HttpResponse::NoContent().finish())
}
