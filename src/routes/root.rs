//! `GET /` and `GET /v{N}`: the latest API version, without authentication.

use actix_web::{web, HttpResponse};
use serde_json::json;

/// The version every gateway reports.
pub const API_VERSION: &str = "v4.20181215";

/// The first version whose signatures cover no body (compared as strings, as the
/// reference does).
pub const V4: &str = "v4.20181215";

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(version)).route("/", web::get().to(version));
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": API_VERSION}))
}
