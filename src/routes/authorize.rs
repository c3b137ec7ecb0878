//! `GET|POST /v{N}/authorize`, and `/auth` (API 4, also `/v{N}/auth/`): checks a
//! signature and echoes the request's `echo`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::error::{ApiError, Problem};
use crate::middleware::Authenticated;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in ["/authorize", "/auth", "/auth/"] {
        cfg.service(web::resource(path).route(web::get().to(authorize)).route(web::post().to(authorize)));
    }
}

async fn authorize(_auth: Authenticated, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let echo = if body.is_empty() {
        Value::Null
    } else {
        let params: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(Problem::InvalidApiParams).with_detail(format!("malformed JSON: {e}")))?;
        params.get("echo").cloned().unwrap_or(Value::Null)
    };
    Ok(HttpResponse::Ok().json(json!({"authorized": "yes", "echo": echo})))
}
