//! `POST /v{N}/scheduler/explain`: where a session would go now, or why it would wait.

use actix_web::{web, HttpResponse};

use super::kernel::create_request;
use crate::error::ApiError;
use crate::middleware::Authenticated;
use crate::sessions;
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/scheduler/explain", web::post().to(explain));
}

/// The body is a create body; nothing is created.
async fn explain(auth: Authenticated, state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request = create_request(&auth, &body)?;
    let explanation = sessions::explain(&state, &auth.keypair.access_key, request).await?;
    Ok(HttpResponse::Ok().json(explanation))
}
