//! `/kernel/{token}/logs`, `/files` and `/download` (API v4, clients 1.1 and later):
//! a session's console output and its files, read through its agent.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use bytes::{BufMut, BytesMut};
use serde_json::{json, Value};

use super::params::{params, path_list, string_param};
use crate::actors::messages::{KernelRead, ReadKernel};
use crate::error::{ApiError, Problem};
use crate::middleware::Authenticated;
use crate::sessions;
use crate::state::AppState;

/// Most files one download names.
pub const MAX_DOWNLOAD_FILES: usize = 5;

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::new(Problem::InvalidApiParams).with_detail(detail)
}

fn json_of(read: KernelRead) -> Result<Value, ApiError> {
    match read {
        KernelRead::Json(value) => Ok(value),
        KernelRead::Tar(_) => Err(ApiError::new(Problem::InternalServerError)),
    }
}

/// `GET /kernel/{token}/logs`: `{"result": {"logs": text}}`.
pub async fn logs(auth: &Authenticated, state: &AppState, token: &str) -> Result<HttpResponse, ApiError> {
    let read = sessions::read(state, &auth.keypair.access_key, token, || ReadKernel::Logs).await?;
    let logs = json_of(read)?.get("logs").cloned().unwrap_or_else(|| json!(""));
    Ok(HttpResponse::Ok().json(json!({"result": {"logs": logs}})))
}

/// `GET /kernel/{token}/files`: the listing of `path` (default: the working directory),
/// from a JSON body, a form-encoded body (client 1.5.1) or the query string.
pub async fn list(
    req: &HttpRequest,
    auth: &Authenticated,
    state: &AppState,
    token: &str,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let params = params(req, body)?;
    let path = string_param(&params, "path")?.unwrap_or(".").to_owned();
    if path.len() > 4096 || path.contains('\0') {
        return Err(bad("bad path"));
    }
    let read = sessions::read(state, &auth.keypair.access_key, token, || ReadKernel::Files(path.clone())).await?;
    Ok(HttpResponse::Ok().json(json_of(read)?))
}

/// `GET /kernel/{token}/download`: a tar archive of each path in `files`, as the parts of
/// a multipart/mixed body in the format the 1.x clients parse (part headers that all
/// start with `Content-`, no preamble).
pub async fn download(
    req: &HttpRequest,
    auth: &Authenticated,
    state: &AppState,
    token: &str,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let files = path_list(&params(req, body)?, "files")?;
    if files.len() > MAX_DOWNLOAD_FILES {
        return Err(bad(format!("at most {MAX_DOWNLOAD_FILES} files at once")));
    }
    if files.iter().any(|f| f.len() > 4096 || f.contains('\0')) {
        return Err(bad("bad path"));
    }
    let boundary = uuid::Uuid::new_v4().simple().to_string();
    let mut out = BytesMut::new();
    for file in files {
        let read =
            sessions::read(state, &auth.keypair.access_key, token, || ReadKernel::Download(file.clone())).await?;
        let KernelRead::Tar(tar) = read else { return Err(ApiError::new(Problem::InternalServerError)) };
        out.put_slice(
            format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", tar.len())
                .as_bytes(),
        );
        out.put_slice(&tar);
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, format!("multipart/mixed; boundary={boundary}")))
        .body(out.freeze()))
}
