//! `/folders/...` (API 2 to 4): virtual folders, their files and invitations
//! (`../shared/spec/API-v4.md` part 6). The data rules live in [`crate::vfolders`].

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use entity::vfolder_permissions::Permission;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::params::{params, part_filename, path_list, string_list, string_param};
use crate::error::{ApiError, Problem};
use crate::middleware::Authenticated;
use crate::state::AppState;
use crate::vfolders::{self, files, invitations, python_datetime};

/// Most files in one upload.
pub const MAX_UPLOAD_FILES: usize = 10;

/// Registers the routes (invitations before `{name}`, which would match them).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/folders")
            .service(web::resource(["", "/"]).post(create).get(list))
            .service(web::resource("/invitations/list").get(list_invitations))
            .service(web::resource("/invitations/accept").post(accept))
            .service(web::resource("/invitations/delete").delete(reject))
            .service(web::resource("/{name}").get(info).delete(delete))
            .service(web::resource("/{name}/mkdir").post(mkdir))
            .service(web::resource("/{name}/upload").post(upload))
            .service(web::resource("/{name}/delete_files").delete(delete_files))
            .service(web::resource("/{name}/download").get(download))
            .service(web::resource("/{name}/files").get(list_files))
            .service(web::resource("/{name}/invite").post(invite)),
    );
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::new(Problem::InvalidApiParams).with_detail(detail)
}

/// The folder `name` if the caller has at least `least` on it (404 otherwise).
async fn folder(
    state: &AppState,
    auth: &Authenticated,
    name: &str,
    least: Permission,
) -> Result<vfolders::Access, ApiError> {
    Ok(vfolders::require(&state.db, &auth.keypair.access_key, name, least).await?)
}

fn path_param(name: &web::Path<String>) -> &str {
    name.as_str()
}

async fn create(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let params = params(&req, &body)?;
    let name = string_param(&params, "name")?.ok_or_else(|| bad("name is missing"))?;
    let folder = vfolders::create(&state.db, &state.settings, &auth.keypair.access_key, name).await?;
    Ok(HttpResponse::Created().json(json!({"id": folder.id.simple().to_string(), "name": folder.name})))
}

async fn list(auth: Authenticated, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let folders = vfolders::visible(&state.db, &auth.keypair.access_key).await?;
    let rows: Vec<Value> = folders
        .into_iter()
        .map(|a| {
            json!({
                "name": a.folder.name,
                "id": a.folder.id.simple().to_string(),
                "is_owner": a.is_owner,
                "permission": a.permission.as_str(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(rows))
}

async fn info(
    auth: Authenticated,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let access = folder(&state, &auth, &name, Permission::Ro).await?;
    let num_files = files::num_files(&state.settings, &access.folder).await?;
    Ok(HttpResponse::Ok().json(json!({
        "name": access.folder.name,
        "id": access.folder.id.simple().to_string(),
        "numFiles": num_files,
        "created": python_datetime(&access.folder.created_at),
        "is_owner": access.is_owner,
        "permission": access.permission.as_str(),
    })))
}

/// 204 for API 4 (client 1.5 reads a body only on 200); clients 1.1 to 1.4 parse the
/// answer as JSON whatever its status, so they get 200 with `{}`.
async fn delete(
    auth: Authenticated,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    vfolders::delete(&state.db, &state.settings, &auth.keypair.access_key, path_param(&name)).await?;
    if auth.api_version >= 4 {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Ok(HttpResponse::Ok().json(json!({})))
    }
}

async fn mkdir(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = folder(&state, &auth, &name, Permission::Rw).await?;
    let params = params(&req, &body)?;
    let path = string_param(&params, "path")?.ok_or_else(|| bad("path is missing"))?;
    files::mkdir(&state.settings, &access.folder, files::relative(path)?).await?;
    Ok(HttpResponse::Created().finish())
}

async fn delete_files(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = folder(&state, &auth, &name, Permission::Wd).await?;
    let params = params(&req, &body)?;
    let names = path_list(&params, "files")?;
    let recursive = match params.get("recursive") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "true" | "True" | "1"),
        Some(_) => return Err(bad("recursive must be a boolean")),
    };
    let rels = names.iter().map(|n| files::relative(n)).collect::<Result<Vec<_>, _>>()?;
    files::delete(&state.settings, &access.folder, rels, recursive).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

async fn list_files(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = folder(&state, &auth, &name, Permission::Ro).await?;
    let params = params(&req, &body)?;
    let rel = files::relative(string_param(&params, "path")?.unwrap_or("."))?;
    let entries = files::list(&state.settings, &access.folder, rel).await?;
    let text = serde_json::to_string(&entries).map_err(|_| ApiError::new(Problem::InternalServerError))?;
    Ok(HttpResponse::Ok().json(json!({"files": text})))
}

async fn upload(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let access = folder(&state, &auth, &name, Permission::Rw).await?;
    let folder = &access.folder;
    let (files_now, bytes_now) = files::usage(&state.settings, folder).await?;
    let max_size = u64::try_from(folder.max_size).unwrap_or(0);
    let max_files = u64::try_from(folder.max_files).unwrap_or(0);
    let mut room = max_size.saturating_sub(bytes_now);
    let mut multipart = Multipart::new(req.headers(), payload.into_inner());
    let mut count = 0;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(|e| bad(format!("malformed multipart body: {e}")))?;
        if field.name() != Some("src") {
            return Err(bad("upload files in fields named 'src'"));
        }
        count += 1;
        if count > MAX_UPLOAD_FILES {
            return Err(bad("Too many files!"));
        }
        if files_now + count as u64 > max_files {
            return Err(bad(format!("the folder's quota of {max_files} files is used up")));
        }
        let filename = part_filename(field.content_disposition()).ok_or_else(|| bad("a file without a name"))?;
        let rel = files::relative(&filename)?;
        if rel.is_empty() {
            return Err(bad("a file without a name"));
        }
        let mut file = files::Upload::start(&state.settings, folder, rel, room).await?;
        while let Some(chunk) = field.next().await {
            match chunk {
                Ok(chunk) => file.write(chunk).await?,
                Err(e) => {
                    file.abort().await;
                    return Err(bad(format!("malformed multipart body: {e}")));
                }
            }
        }
        room = room.saturating_sub(file.written());
    }
    Ok(HttpResponse::Created().finish())
}

async fn download(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let access = folder(&state, &auth, &name, Permission::Ro).await?;
    let params = params(&req, &body)?;
    let rels = path_list(&params, "files")?.iter().map(|n| files::relative(n)).collect::<Result<Vec<_>, _>>()?;
    let download = files::Download::open(&state.settings, &access.folder, rels).await?;
    let boundary = uuid::Uuid::new_v4().simple().to_string();
    let total = download.total();
    let body = tokio_stream_of(download.stream(boundary.clone()));
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, format!("multipart/mixed; boundary={boundary}")))
        .insert_header(("X-TOTAL-PAYLOADS-LENGTH", total.to_string()))
        .streaming(body))
}

/// A receiver as a stream of body chunks.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn invite(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let params = params(&req, &body)?;
    let permission = vfolders::parse_permission(string_param(&params, "perm")?.unwrap_or("rw"))?;
    let user_ids = string_list(&params, "user_ids")?;
    let invited = invitations::invite(&state.db, &auth.keypair, path_param(&name), permission, &user_ids).await?;
    Ok(HttpResponse::Created().json(json!({"invited_ids": invited})))
}

async fn list_invitations(auth: Authenticated, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pending = invitations::pending(&state.db, &auth.keypair).await?;
    Ok(HttpResponse::Ok().json(json!({"invitations": pending})))
}

async fn accept(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let params = params(&req, &body)?;
    let id = string_param(&params, "inv_id")?.ok_or_else(|| bad("inv_id is missing"))?;
    let access_key = string_param(&params, "inv_ak")?.unwrap_or(&auth.keypair.access_key);
    let msg = invitations::accept(&state.db, &auth.keypair, id, access_key).await?;
    Ok(HttpResponse::Created().json(json!({"msg": msg})))
}

async fn reject(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let params = params(&req, &body)?;
    let id = string_param(&params, "inv_id")?.ok_or_else(|| bad("inv_id is missing"))?;
    let msg = invitations::reject(&state.db, &auth.keypair, id).await?;
    Ok(HttpResponse::Ok().json(json!({"msg": msg})))
}
