//! `POST /v{N}/admin/graphql`: the admin GraphQL API (see [`crate::graphql`]).
//!
//! The body is `{"query": "...", "variables": {...} | null}` (`operationName`
//! optional). Variables the operation does not declare are ignored.
//!
//! Answers, by default in the wire format of backend.ai-manager 1.0.x, which the
//! official SDK 1.0.6 reads (`resp.json()['compute_sessions']`):
//! - success: 200 with the data object itself, e.g. `{"compute_sessions": [...]}`;
//! - any GraphQL error (syntax, validation, limits, a bad argument): 400
//!   `invalid-api-params` problem+json, the first message in the title and every
//!   error under `errors`; never partial data;
//! - a server failure inside a resolver: 500 `internal-server-error` (503
//!   `service-unavailable` when the database does not answer).
//!
//! A client that asks for `Accept: application/graphql-response+json` (the
//! GraphQL-over-HTTP media type) gets the standard `{"data": ..., "errors": [...]}`
//! with 200 instead.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{problem_type, ApiError, Problem, PROBLEM_JSON};
use crate::graphql::{self, GqlContext, Schemas, INTERNAL};
use crate::middleware::Authenticated;
use crate::state::AppState;

/// The GraphQL-over-HTTP media type that selects the standard response shape.
const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// Registers the route and the schemas it serves.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(Schemas::default())).route("/admin/graphql", web::post().to(graphql_handler));
}

/// The top-level `compute_session` selections of a query: their response keys and the
/// response keys of the fields they select.
fn null_object_fields(query: &str) -> Vec<(String, Vec<String>)> {
    use async_graphql::parser::types::Selection;
    let Ok(document) = async_graphql::parser::parse_query(query) else { return Vec::new() };
    let mut out = Vec::new();
    for (_, operation) in document.operations.iter() {
        for selection in &operation.node.selection_set.node.items {
            let Selection::Field(field) = &selection.node else { continue };
            if field.node.name.node.as_str() != "compute_session" {
                continue;
            }
            let fields = field
                .node
                .selection_set
                .node
                .items
                .iter()
                .filter_map(|item| match &item.node {
                    Selection::Field(f) => Some(f.node.response_key().node.to_string()),
                    _ => None,
                })
                .collect();
            out.push((field.node.response_key().node.to_string(), fields));
        }
    }
    out
}

#[derive(Deserialize)]
struct GraphqlBody {
    query: String,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
}

async fn graphql_handler(
    req: HttpRequest,
    auth: Authenticated,
    state: web::Data<AppState>,
    schemas: web::Data<Schemas>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: GraphqlBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(Problem::InvalidApiParams)
            .with_detail(format!("the body must be {{\"query\": string, \"variables\": object or null}}: {e}"))
    })?;
    let null_objects = null_object_fields(&body.query);
    let mut request = async_graphql::Request::new(body.query);
    if let Some(variables) = body.variables {
        request = request.variables(async_graphql::Variables::from_json(Value::Object(variables)));
    }
    if let Some(operation_name) = body.operation_name {
        request = request.operation_name(operation_name);
    }
    let context = GqlContext {
        db: state.db.clone(),
        stats: state.stores.stats.clone(),
        caller: auth.keypair,
        directory: state.directory.clone(),
        core: state.core.clone(),
    };
    let response = graphql::execute(&schemas, context, request).await;
    let standard = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(GRAPHQL_RESPONSE_JSON));
    if standard {
        let body = serde_json::to_string(&response).map_err(|_| ApiError::new(Problem::InternalServerError))?;
        return Ok(HttpResponse::Ok().content_type(GRAPHQL_RESPONSE_JSON).body(body));
    }
    if response.errors.is_empty() {
        let mut data = response.data.into_json().map_err(|_| ApiError::new(Problem::InternalServerError))?;
        // A missing session is an object of nulls in this format: client 1.5.1 reads
        // `compute_session.sess_id` to tell that it is missing.
        for (key, fields) in null_objects {
            if let Some(value @ Value::Null) = data.get_mut(&key) {
                *value = Value::Object(fields.into_iter().map(|f| (f, Value::Null)).collect());
            }
        }
        return Ok(HttpResponse::Ok().json(data));
    }
    let errors: Vec<Value> = response.errors.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
    if errors.iter().any(|e| e["extensions"]["code"] == INTERNAL) {
        // The usual cause: the database does not answer.
        if state.db.ping().await.is_err() {
            return Err(ApiError::new(Problem::ServiceUnavailable));
        }
        // Already logged with its cause by the resolver.
        return Err(ApiError::new(Problem::InternalServerError));
    }
    let first = response.errors.first().map(|e| e.message.clone()).unwrap_or_default();
    let problem = Problem::InvalidApiParams;
    let body = json!({
        "type": problem_type(problem.name()),
        "title": format!("{} ({first})", problem.title()),
        "errors": errors,
    });
    Ok(HttpResponse::build(problem.status()).content_type(PROBLEM_JSON).body(body.to_string()))
}
