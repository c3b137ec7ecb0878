//! The scheduler's routes: `POST /v{N}/scheduler/explain` (where a session would go
//! now, or why it would wait) and `GET`/`PUT /v{N}/scheduler/config` (the cluster's
//! queue policy and placement; changing them takes an admin key).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::kernel::create_request;
use crate::error::{ApiError, Problem};
use crate::middleware::Authenticated;
use crate::scheduler::{self, PLACEMENT_KEY, POLICY_KEY};
use crate::sessions;
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/scheduler/explain", web::post().to(explain))
        .service(web::resource("/scheduler/config").route(web::get().to(config)).route(web::put().to(set_config)));
}

/// The body is a create body; nothing is created.
async fn explain(auth: Authenticated, state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request = create_request(&auth, &body)?;
    let explanation = sessions::explain(&state, &auth.keypair.access_key, request).await?;
    Ok(HttpResponse::Ok().json(explanation))
}

async fn config(_auth: Authenticated, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (policy, placement) = scheduler::policy(state.stores.config.as_ref()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "policy": format!("{policy:?}").to_lowercase(),
        "placement": format!("{placement:?}").to_lowercase(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    policy: Option<String>,
    placement: Option<String>,
}

async fn set_config(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if !auth.keypair.is_admin {
        return Err(ApiError::new(Problem::GenericForbidden).with_detail("changing the scheduler takes an admin key"));
    }
    let body: ConfigBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(Problem::InvalidApiParams).with_detail(e.to_string()))?;
    let mut pairs = Vec::new();
    for (field, key, value) in [("policy", POLICY_KEY, body.policy), ("placement", PLACEMENT_KEY, body.placement)] {
        let Some(value) = value else { continue };
        scheduler::validate_setting(key, &value)
            .map_err(|_| ApiError::new(Problem::InvalidApiParams).with_detail(allowed(field, &value)))?;
        pairs.push((key.to_owned(), value));
    }
    state.stores.config.put_many(&pairs).await?;
    config(auth, state).await
}

fn allowed(field: &str, value: &str) -> String {
    let names = if field == "policy" { "\"fifo\" or \"drf\"" } else { "\"dispersed\" or \"concentrated\"" };
    format!("{field} must be {names}, not {value:?}")
}
