//! Kernel routes: create, list, destroy, restart, execute, interrupt, complete, upload,
//! and reading a kernel's logs and files.

use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::RpcState;
use crate::error::AgentError;
use crate::runtime::process::upload::MAX_UPLOAD;
use crate::runtime::{ExecRequest, KernelSpec, TerminationReason};

/// Registers the kernel routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/kernels", web::post().to(create))
        .route("/kernels", web::get().to(list))
        .route("/kernels/{id}", web::delete().to(destroy))
        .route("/kernels/{id}/restart", web::post().to(restart))
        .route("/kernels/{id}/execute", web::post().to(execute))
        .route("/kernels/{id}/interrupt", web::post().to(interrupt))
        .route("/kernels/{id}/complete", web::post().to(complete))
        .route("/kernels/{id}/files", web::put().to(upload))
        .route("/kernels/{id}/files", web::get().to(list_files))
        .route("/kernels/{id}/logs", web::get().to(logs))
        .route("/kernels/{id}/download", web::get().to(download));
}

async fn create(state: web::Data<RpcState>, spec: web::Json<KernelSpec>) -> Result<HttpResponse, AgentError> {
    let info = state.runtime.create(spec.into_inner()).await?;
    Ok(HttpResponse::Created().json(info))
}

async fn list(state: web::Data<RpcState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "kernels": state.runtime.list().await }))
}

async fn destroy(state: web::Data<RpcState>, id: web::Path<String>) -> Result<HttpResponse, AgentError> {
    let stats = state.runtime.destroy(&id, TerminationReason::UserRequested).await?;
    Ok(HttpResponse::Ok().json(json!({ "stats": stats })))
}

async fn restart(state: web::Data<RpcState>, id: web::Path<String>) -> Result<HttpResponse, AgentError> {
    state.runtime.restart(&id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn execute(
    state: web::Data<RpcState>,
    id: web::Path<String>,
    request: web::Json<ExecRequest>,
) -> Result<HttpResponse, AgentError> {
    let result = state.runtime.execute(&id, request.into_inner()).await?;
    Ok(HttpResponse::Ok().json(result))
}

async fn interrupt(state: web::Data<RpcState>, id: web::Path<String>) -> Result<HttpResponse, AgentError> {
    state.runtime.interrupt(&id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Body of a completion request.
#[derive(Debug, Deserialize)]
struct CompleteRequest {
    /// The code typed so far.
    #[serde(default)]
    code: String,
    /// Cursor: `row`, `col`, `line`, `post`.
    #[serde(default)]
    options: Option<Value>,
}

async fn complete(
    state: web::Data<RpcState>,
    id: web::Path<String>,
    request: web::Json<CompleteRequest>,
) -> Result<HttpResponse, AgentError> {
    let CompleteRequest { code, options } = request.into_inner();
    let items = state.runtime.complete(&id, code, options.unwrap_or(Value::Null)).await?;
    Ok(HttpResponse::Ok().json(json!({ "completions": items })))
}

/// Query of an upload.
#[derive(Debug, Deserialize)]
struct UploadQuery {
    /// Path of the file, relative to the scratch dir.
    path: String,
}

async fn upload(
    state: web::Data<RpcState>,
    id: web::Path<String>,
    query: web::Query<UploadQuery>,
    mut payload: web::Payload,
) -> Result<HttpResponse, AgentError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| AgentError::InvalidParams(e.to_string()))?;
        if body.len() + chunk.len() > MAX_UPLOAD {
            return Err(AgentError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    state.runtime.upload(&id, &query.path, body.freeze()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Query of a file listing or download.
#[derive(Debug, Deserialize)]
struct PathQuery {
    /// A path as the kernel sees it (absolute under its home, or relative to it).
    #[serde(default)]
    path: String,
}

async fn list_files(
    state: web::Data<RpcState>,
    id: web::Path<String>,
    query: web::Query<PathQuery>,
) -> Result<HttpResponse, AgentError> {
    Ok(HttpResponse::Ok().json(state.runtime.list_files(&id, &query.path).await?))
}

async fn logs(state: web::Data<RpcState>, id: web::Path<String>) -> Result<HttpResponse, AgentError> {
    Ok(HttpResponse::Ok().json(json!({ "logs": state.runtime.logs(&id).await? })))
}

/// The tar archive of a path, base64 in JSON (`{"tar": ...}`; at most 1 MiB before encoding).
async fn download(
    state: web::Data<RpcState>,
    id: web::Path<String>,
    query: web::Query<PathQuery>,
) -> Result<HttpResponse, AgentError> {
    use base64::Engine;
    let tar = state.runtime.download(&id, &query.path).await?;
    Ok(HttpResponse::Ok().json(json!({ "tar": base64::engine::general_purpose::STANDARD.encode(tar) })))
}
