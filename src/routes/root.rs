//! `GET /v{N}`: the API version, without authentication.

use actix_web::{web, HttpResponse};
use serde_json::json;

/// The version every gateway reports.
pub const API_VERSION: &str = "v3.20170615";

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(version)).route("/", web::get().to(version));
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": API_VERSION}))
}
