//! `/kernel/...`: the compute session API of the contract.

use std::borrow::Cow;
use std::collections::BTreeMap;

use actix_multipart::Multipart;
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Problem};
use crate::middleware::Authenticated;
use crate::sessions::{self, CreateRequest, Resources};
use crate::state::AppState;

/// Most files in one upload.
pub const MAX_UPLOAD_FILES: usize = 20;
/// Largest uploaded file.
pub const MAX_UPLOAD_FILE_SIZE: usize = 1 << 20;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // `/kernel/{token}[/action]` is split by `dispatch`, not by the router: a path
    // pattern costs a regular expression match (and its captures) on every request.
    cfg.service(
        web::scope("/kernel")
            .route("/create", web::post().to(create))
            .route("", web::post().to(create))
            .route("/", web::post().to(create))
            .default_service(web::to(dispatch)),
    );
}

/// What a request under `/kernel/{token}` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `/kernel/{token}`: info, restart, destroy or execute, by method.
    Session,
    /// `/kernel/{token}/interrupt`.
    Interrupt,
    /// `/kernel/{token}/complete`.
    Complete,
    /// `/kernel/{token}/upload`.
    Upload,
    /// `/kernel/{token}/logs`.
    Logs,
    /// `/kernel/{token}/files`.
    Files,
    /// `/kernel/{token}/download`.
    Download,
}

/// Splits what follows `/kernel` into the (percent-decoded) token and the action;
/// `None` for any other path.
fn kernel_path(rest: &str) -> Option<(Cow<'_, str>, Action)> {
    let rest = rest.strip_prefix('/')?;
    let (token, action) = match rest.split_once('/') {
        None => (rest, Action::Session),
        Some((token, "interrupt")) => (token, Action::Interrupt),
        Some((token, "complete")) => (token, Action::Complete),
        Some((token, "upload")) => (token, Action::Upload),
        Some((token, "logs")) => (token, Action::Logs),
        Some((token, "files")) => (token, Action::Files),
        Some((token, "download")) => (token, Action::Download),
        Some(_) => return None,
    };
    if token.is_empty() {
        return None;
    }
    Some((percent_encoding::percent_decode_str(token).decode_utf8_lossy(), action))
}

async fn dispatch(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let rest = req.match_info().unprocessed();
    // `POST /kernel/` is a route of its own: other methods end here. (Other methods on
    // `/kernel/create` name a session called "create", as in the reference server.)
    if rest == "/" || rest.is_empty() {
        return Err(method_not_allowed("POST"));
    }
    let (token, action) = kernel_path(rest).ok_or_else(|| ApiError::new(Problem::GenericNotFound))?;
    let auth = Authenticated::from_request(&req, &mut Payload::None).await?;
    if action == Action::Session && req.method() == Method::GET {
        return Ok(info(&auth, &state, &token).await?);
    }
    // The other calls in a box of their own, so that the future of every request stays small.
    Box::pin(call(&req, &auth, &state, &token, action, payload.into_inner())).await
}

/// Every call under `/kernel/{token}` but `GET` info.
async fn call(
    req: &HttpRequest,
    auth: &Authenticated,
    state: &AppState,
    token: &str,
    action: Action,
    mut payload: Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // The body as its extractor reads it (limits, errors): the gateway has buffered it.
    let mut body = || web::Bytes::from_request(req, &mut payload);
    let method = req.method();
    Ok(match action {
        Action::Session if method == Method::PATCH => restart(req, auth, state, token).await?,
        Action::Session if method == Method::DELETE => destroy(auth, state, token).await?,
        Action::Session if method == Method::POST => execute(auth, state, token, &body().await?).await?,
        Action::Interrupt if method == Method::POST => interrupt(req, auth, state, token).await?,
        Action::Complete if method == Method::POST => complete(auth, state, token, &body().await?).await?,
        Action::Upload if method == Method::POST => {
            upload(req, auth, state, token, Multipart::new(req.headers(), payload)).await?
        }
        Action::Logs if method == Method::GET => super::kernel_files::logs(auth, state, token).await?,
        Action::Files if method == Method::GET => {
            super::kernel_files::list(req, auth, state, token, &body().await?).await?
        }
        Action::Download if method == Method::GET => {
            super::kernel_files::download(req, auth, state, token, &body().await?).await?
        }
        Action::Session => return Err(method_not_allowed("GET, PATCH, DELETE, POST")),
        Action::Logs | Action::Files | Action::Download => return Err(method_not_allowed("GET")),
        _ => return Err(method_not_allowed("POST")),
    })
}

/// 405, with the methods the path allows.
fn method_not_allowed(allowed: &'static str) -> actix_web::Error {
    let mut error = ApiError::new(Problem::MethodNotAllowed);
    error.headers.push((header::ALLOW, HeaderValue::from_static(allowed)));
    error.into()
}

fn bad_params(detail: impl Into<String>) -> ApiError {
    ApiError::new(Problem::InvalidApiParams).with_detail(detail)
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(if body.is_empty() { b"{}" } else { body }).map_err(|e| bad_params(e.to_string()))
}

/// A create body, in every shape the 1.x clients send: top-level `limits` and `mounts`
/// (1.0), `config.mounts` with `envs` (1.1 to 1.3.2) or `environ` (1.3.3 on), and the
/// `config.instance*` resources (1.4 on, numbers as strings or null).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    lang: String,
    client_session_token: String,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    resource_limits: Option<Limits>,
    #[serde(default)]
    mounts: Option<Vec<String>>,
    #[serde(default)]
    config: Option<CreateConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateConfig {
    #[serde(default)]
    mounts: Option<Vec<String>>,
    #[serde(default)]
    environ: Option<BTreeMap<String, String>>,
    #[serde(default)]
    envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    instance_memory: Option<Value>,
    #[serde(default)]
    instance_cores: Option<Value>,
    #[serde(default)]
    instance_gpus: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Limits {
    #[serde(default)]
    exec_timeout: Option<f64>,
}

/// A resource amount: a number or a numeric string, positive and finite; null is none.
fn resource(name: &str, value: Option<&Value>) -> Result<Option<f64>, ApiError> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match number {
        Some(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
        _ => Err(bad_params(format!("{name} must be a positive number"))),
    }
}

async fn create(auth: Authenticated, state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request = create_request(&auth, &body)?;
    let token = request.token.clone();
    let created = sessions::create(&state, &auth.keypair.access_key, request).await?;
    Ok(HttpResponse::Created().json(json!({"kernelId": token, "created": created})))
}

/// Reads a create body (also the body of `POST /scheduler/explain`).
pub(super) fn create_request(auth: &Authenticated, body: &[u8]) -> Result<CreateRequest, ApiError> {
    let body: CreateBody = parse_json(body)?;
    let limits = body.limits.or(body.resource_limits).unwrap_or_default();
    let exec_timeout = limits.exec_timeout.filter(|t| t.is_finite() && *t > 0.0).map(|t| t.ceil() as u64);
    let config = body.config.unwrap_or_default();
    let mut mounts = body.mounts.unwrap_or_default();
    mounts.extend(config.mounts.unwrap_or_default());
    let resources = Resources {
        cpu: resource("instanceCores", config.instance_cores.as_ref())?,
        mem: resource("instanceMemory", config.instance_memory.as_ref())?.map(|mib| mib.ceil() as i64),
        gpu: resource("instanceGPUs", config.instance_gpus.as_ref())?,
    };
    Ok(CreateRequest {
        lang: body.lang,
        token: body.client_session_token,
        api_version: auth.api_version,
        exec_timeout: exec_timeout.unwrap_or(0),
        mounts,
        environ: config.environ.or(config.envs).unwrap_or_default(),
        resources,
    })
}

async fn info(auth: &Authenticated, state: &AppState, token: &str) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(sessions::info(state, &auth.keypair.access_key, token).await?))
}

async fn restart(
    req: &HttpRequest,
    auth: &Authenticated,
    state: &AppState,
    token: &str,
) -> Result<HttpResponse, ApiError> {
    sessions::restart(state, &auth.keypair.access_key, token).await?;
    Ok(super::no_content(req))
}

async fn destroy(auth: &Authenticated, state: &AppState, token: &str) -> Result<HttpResponse, ApiError> {
    let stats = sessions::destroy(state, &auth.keypair.access_key, token).await?;
    Ok(HttpResponse::Ok().json(json!({"stats": stats})))
}

async fn interrupt(
    req: &HttpRequest,
    auth: &Authenticated,
    state: &AppState,
    token: &str,
) -> Result<HttpResponse, ApiError> {
    sessions::interrupt(state, &auth.keypair.access_key, token).await?;
    Ok(super::no_content(req))
}

#[derive(Deserialize)]
struct CompleteBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    options: Option<Value>,
}

async fn complete_result(
    auth: &Authenticated,
    state: &AppState,
    token: &str,
    body: CompleteBody,
) -> Result<Value, ApiError> {
    let options = body.options.filter(Value::is_object).unwrap_or_else(|| json!({}));
    let answer = sessions::complete(state, &auth.keypair.access_key, token, body.code, options).await?;
    let completions = answer.get("completions").cloned().unwrap_or_else(|| json!([]));
    Ok(json!({"status": "finished", "completions": completions, "console": [], "options": null, "files": []}))
}

async fn complete(auth: &Authenticated, state: &AppState, token: &str, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let body: CompleteBody = parse_json(body)?;
    Ok(HttpResponse::Ok().json(json!({"result": complete_result(auth, state, token, body).await?})))
}

/// Checks an execute body and turns it into the agent's request.
fn execute_request(api_version: u8, body: &Value) -> Result<(String, Value), ApiError> {
    let object = body.as_object().ok_or_else(|| bad_params("the body must be a JSON object"))?;
    let mode = if api_version == 1 {
        "query"
    } else {
        object.get("mode").and_then(Value::as_str).ok_or_else(|| bad_params("mode is missing"))?
    };
    if !["query", "batch", "complete", "continue", "input"].contains(&mode) {
        return Err(bad_params(format!("unknown mode {mode:?}")));
    }
    let code = match object.get("code") {
        Some(Value::String(code)) => code.clone(),
        None | Some(Value::Null) => String::new(),
        _ => return Err(bad_params("code must be a string")),
    };
    // The server assigns the run id when the client leaves it out (clients 1.1 and
    // later); continuing a run or answering its input request names the run.
    let run_id = match object.get("runId") {
        Some(Value::String(run_id)) if !run_id.is_empty() && run_id.len() <= 64 => run_id.clone(),
        None | Some(Value::Null) if mode == "continue" || mode == "input" => {
            return Err(bad_params(format!("mode {mode:?} needs the runId of the run")))
        }
        None | Some(Value::Null) => uuid::Uuid::new_v4().simple().to_string(),
        _ => return Err(bad_params("runId must be a string of 1 to 64 characters")),
    };
    let options = match object.get("options") {
        Some(Value::Object(options)) => Value::Object(options.clone()),
        None | Some(Value::Null) => Value::Object(Map::new()),
        _ => return Err(bad_params("options must be an object")),
    };
    let request = json!({"api_version": api_version, "run_id": run_id, "mode": mode, "code": code, "options": options});
    Ok((mode.to_owned(), request))
}

/// A v2+ result carries its run id (clients 1.1 and later read it from every result)
/// and an `exitCode` (null until a run finishes with one).
fn with_run_id(mut result: Value, run_id: &Value) -> Value {
    if let Some(object) = result.as_object_mut() {
        object.insert("runId".into(), run_id.clone());
        object.entry("exitCode").or_insert(Value::Null);
    }
    result
}

/// The v1 result: flat `stdout`, `stderr`, `media` and `html` fields.
fn v1_result(result: &Value) -> Value {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut media = Vec::new();
    let mut html = Vec::new();
    for item in result.get("console").and_then(Value::as_array).into_iter().flatten() {
        match (item.get(0).and_then(Value::as_str), item.get(1)) {
            (Some("stdout"), Some(Value::String(text))) => stdout.push_str(text),
            (Some("stderr"), Some(Value::String(text))) => stderr.push_str(text),
            (Some("media"), Some(value)) => media.push(value.clone()),
            (Some("html"), Some(value)) => html.push(value.clone()),
            _ => {}
        }
    }
    json!({
        "status": result.get("status").cloned().unwrap_or(Value::Null),
        "stdout": stdout,
        "stderr": stderr,
        "media": media,
        "html": html,
        "options": result.get("options").cloned().unwrap_or(Value::Null),
    })
}

async fn execute(auth: &Authenticated, state: &AppState, token: &str, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let body: Value = parse_json(body)?;
    let (mode, request) = execute_request(auth.api_version, &body)?;
    let run_id = request["run_id"].clone();
    let result = if mode == "complete" {
        let body = CompleteBody {
            code: request["code"].as_str().unwrap_or_default().to_owned(),
            options: Some(request["options"].clone()),
        };
        complete_result(auth, state, token, body).await?
    } else {
        sessions::execute(state, &auth.keypair.access_key, token, request).await?
    };
    let result = if auth.api_version == 1 { v1_result(&result) } else { with_run_id(result, &run_id) };
    Ok(HttpResponse::Ok().json(json!({"result": result})))
}

/// Checks an uploaded file name: a relative path that stays inside the working
/// directory (the agent checks again against symlinks).
pub fn validate_upload_name(name: &str) -> Result<(), ApiError> {
    let path = std::path::Path::new(name);
    let escapes = path.components().any(|c| !matches!(c, std::path::Component::Normal(_)));
    if name.is_empty() || name.len() > 255 || name.contains('\0') || path.is_absolute() || escapes {
        return Err(bad_params(format!("invalid file name {name:?}: use a relative path without '..'")));
    }
    Ok(())
}

async fn upload(
    req: &HttpRequest,
    auth: &Authenticated,
    state: &AppState,
    token: &str,
    mut payload: Multipart,
) -> Result<HttpResponse, ApiError> {
    // An unknown session is refused before its body is read.
    sessions::require(state, &auth.keypair.access_key, token).await?;
    // Every file is checked before any is sent to the kernel, so that a refused upload
    // changes nothing: at most MAX_UPLOAD_FILES of MAX_UPLOAD_FILE_SIZE are held.
    let mut files = Vec::new();
    // What this request holds counts against the process-wide budget until it ends.
    let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
    while let Some(field) = payload.next().await {
        let mut field = field.map_err(|e| bad_params(format!("malformed multipart body: {e}")))?;
        if field.name() != Some("src") {
            return Err(bad_params("upload files in fields named 'src'"));
        }
        if files.len() == MAX_UPLOAD_FILES {
            return Err(bad_params(format!("at most {MAX_UPLOAD_FILES} files per upload")));
        }
        let name = super::params::part_filename(field.content_disposition())
            .ok_or_else(|| bad_params("a file without a name"))?;
        validate_upload_name(&name)?;
        // Checked while the body streams in: an oversized file is refused at its
        // first byte past the limit, never buffered whole.
        let mut data = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| bad_params(format!("malformed multipart body: {e}")))?;
            if data.len() + chunk.len() > MAX_UPLOAD_FILE_SIZE {
                return Err(bad_params(format!("{name:?} is larger than {MAX_UPLOAD_FILE_SIZE} bytes")));
            }
            let kib = u32::try_from(chunk.len().div_ceil(1024)).unwrap_or(u32::MAX);
            let more = state.upload_budget.try_acquire_many(kib).map_err(|_| {
                let mut error = ApiError::new(Problem::ServiceUnavailable).with_detail("too many uploads at once");
                error.headers.push((header::RETRY_AFTER, HeaderValue::from_static("1")));
                error
            })?;
            match held.as_mut() {
                Some(permit) => permit.merge(more),
                None => held = Some(more),
            }
            data.extend_from_slice(&chunk);
        }
        files.push((name, data.freeze()));
    }
    for (name, data) in files {
        sessions::upload(state, &auth.keypair.access_key, token, name, data).await?;
    }
    Ok(super::no_content(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_bodies_are_checked() {
        let (mode, request) = execute_request(3, &json!({"mode": "query", "code": "print(1)", "runId": "r1"})).unwrap();
        assert_eq!(mode, "query");
        assert_eq!(request["run_id"], "r1");
        let (mode, _) = execute_request(1, &json!({"code": "1", "runId": "r"})).unwrap();
        assert_eq!(mode, "query");
        assert!(execute_request(2, &json!({"mode": "batch", "options": {"build": "*", "exec": "*"}})).is_ok());
        for bad in [
            json!([]),
            json!({"code": "1"}),
            json!({"mode": "nope", "code": "1"}),
            json!({"mode": "continue", "code": ""}),
            json!({"mode": "input", "code": "x", "runId": null}),
            json!({"mode": "query", "code": 5}),
            json!({"mode": "query", "code": "", "runId": 7}),
            json!({"mode": "query", "code": "", "options": "x"}),
        ] {
            assert!(execute_request(3, &bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn v1_results_are_flat() {
        let result = json!({"status": "finished", "console": [["stdout", "a"], ["stderr", "b"], ["stdout", "c"], ["media", ["image/png", "xx"]]]});
        let v1 = v1_result(&result);
        assert_eq!(v1["stdout"], "ac");
        assert_eq!(v1["stderr"], "b");
        assert_eq!(v1["media"], json!([["image/png", "xx"]]));
    }

    #[test]
    fn kernel_paths_are_split_without_a_pattern() {
        assert_eq!(kernel_path("/abc"), Some(("abc".into(), Action::Session)));
        assert_eq!(kernel_path("/abc/interrupt"), Some(("abc".into(), Action::Interrupt)));
        assert_eq!(kernel_path("/abc/complete"), Some(("abc".into(), Action::Complete)));
        assert_eq!(kernel_path("/abc/upload"), Some(("abc".into(), Action::Upload)));
        assert_eq!(kernel_path("/a%20b%2Fc"), Some(("a b/c".into(), Action::Session)));
        for other in ["", "/", "//interrupt", "/abc/", "/abc/nope", "/abc/interrupt/x", "abc"] {
            assert_eq!(kernel_path(other), None, "{other:?}");
        }
    }

    #[test]
    fn upload_names_stay_inside() {
        for good in ["a.py", "src/main.py", "deep/er/file.txt"] {
            assert!(validate_upload_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a", "a\0b"] {
            assert!(validate_upload_name(bad).is_err(), "{bad:?}");
        }
    }
}
