use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, Version};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use chrono::Utc;
use entity::keypairs;
use futures_util::StreamExt;

use crate::actors::keypair;
use crate::auth::{self, SignedParts};
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::stores::Window;

/// A request that passed authentication: the API version and the signing key.
#[derive(Clone)]
pub struct Authenticated {
    /// The `N` of `/v{N}`.
    pub api_version: u8,
    /// The key that signed the request.
    pub keypair: Arc<keypairs::Model>,
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        std::future::ready(req.extensions().get::<Self>().cloned().ok_or_else(|| ApiError::new(Problem::AuthFailed)))
    }
}

/// Dates further than this from the server clock are refused.
const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// The `/v{N}` gateway: checks the version, then (except on `GET /v{N}`)
/// authenticates the signature, applies the rate limit and adds its headers.
pub async fn gateway(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let api_version = api_version(&req)?;
    if is_public(&req) {
        return next.call(req).await;
    }
    let state =
        req.app_data::<web::Data<AppState>>().cloned().ok_or_else(|| ApiError::new(Problem::InternalServerError))?;
    if state.db_reachability.is_down() {
        return Err(ApiError::new(Problem::ServiceUnavailable).with_detail("the database does not answer").into());
    }
    let keypair = authenticate(&state, &mut req).await?;
    let window = state
        .stores
        .ratelimit
        .hit(keypair.rate_limit_key(), state.settings.ratelimit.window * 1000)
        .await
        .map_err(ApiError::from)?;
    let limit = u64::try_from(keypair.keypair.rate_limit).unwrap_or(0);
    let headers = rate_limit_headers(limit, window);
    if window.count > limit {
        let mut error = ApiError::new(Problem::RateLimitExceeded);
        error.headers = headers.to_vec();
        return Err(error.into());
    }
    keypair.record_query();
    req.extensions_mut().insert(Authenticated { api_version, keypair: keypair.keypair });
    let mut response = next.call(req).await?;
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The API major version of a path: the `N` of `/v{N}/...` (1 to 4), or 4 for the
/// unprefixed routes.
fn api_version(req: &ServiceRequest) -> Result<u8, ApiError> {
    let first = req.path().trim_start_matches('/').split('/').next().unwrap_or_default();
    // No unprefixed module starts with `v`: a first segment `v...` names a version.
    let Some(number) = first.strip_prefix('v') else { return Ok(4) };
    match number {
        "1" => Ok(1),
        "2" => Ok(2),
        "3" => Ok(3),
        "4" => Ok(4),
        _ => Err(ApiError::new(Problem::GenericBadRequest).with_detail("unsupported API version")),
    }
}

/// `GET /v{N}` and `GET /` (the version) need no signature; an unsigned PTY upgrade is
/// left to its handler (stream tickets, or the compatibility setting).
fn is_public(req: &ServiceRequest) -> bool {
    let path = req.path().trim_end_matches('/');
    let version_root = path.is_empty()
        || path.strip_prefix("/v").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    req.method() == Method::GET
        && (version_root || (crate::streams::pty::is_pty_upgrade(path) && !req.headers().contains_key("authorization")))
}

fn rate_limit_headers(limit: u64, window: Window) -> [(HeaderName, HeaderValue); 3] {
    [
        (HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(limit)),
        (HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(limit.saturating_sub(window.count))),
        (HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(window.reset_ms)),
    ]
}

// Header names read on every request: a `&str` name would be parsed at each lookup.
static X_BACKENDAI_DATE: HeaderName = HeaderName::from_static("x-backendai-date");
static X_SORNA_DATE: HeaderName = HeaderName::from_static("x-sorna-date");
static X_BACKENDAI_VERSION: HeaderName = HeaderName::from_static("x-backendai-version");
static X_SORNA_VERSION: HeaderName = HeaderName::from_static("x-sorna-version");

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| ApiError::new(Problem::InvalidAuthParams).with_detail("non-ASCII header value"))
        })
        .transpose()
}

/// When this process last refused an authentication, so that the shared counters of
/// failing clients are only read while some client is failing.
#[derive(Default)]
pub struct FailureWatch {
    /// Unix time (ms) of the latest failure; 0 for none.
    last_ms: AtomicI64,
}

impl FailureWatch {
    fn note(&self) {
        self.last_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    fn within(&self, window_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last > 0 && Utc::now().timestamp_millis().saturating_sub(last) <= i64::try_from(window_ms).unwrap_or(i64::MAX)
    }
}

/// Verifies the signature of `req`, throttling clients whose requests fail: their
/// failures are counted per IP in the rate-limit store, and over the budget they stop
/// reaching the database. The count is read only while this process has seen a
/// failure within the window (a client failing on another manager process is counted
/// there, and here from its first failure on), so a healthy request costs no read.
async fn authenticate(state: &AppState, req: &mut ServiceRequest) -> Result<keypair::KeypairHandle, ApiError> {
    let client = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let throttle_key = || format!("ratelimit:ip:{client}");
    let budget = state.settings.ratelimit.unauthenticated_per_ip;
    let window_ms = state.settings.ratelimit.window * 1000;
    if state.auth_failures.within(window_ms) && state.stores.ratelimit.peek(&throttle_key()).await?.count >= budget {
        return Err(ApiError::new(Problem::RateLimitExceeded).with_detail("too many failed authentications"));
    }
    match verify_request(state, req).await {
        Ok(handle) => Ok(handle),
        Err(error) => {
            state.auth_failures.note();
            if let Err(store_error) = state.stores.ratelimit.hit(&throttle_key(), window_ms).await {
                tracing::warn!(error = %store_error, "could not count a failed authentication");
            }
            Err(error)
        }
    }
}

fn date_header(headers: &HeaderMap) -> Result<&str, ApiError> {
    match header_str(headers, &header::DATE)? {
        Some(date) => Ok(date),
        None => header_str(headers, &X_BACKENDAI_DATE)?
            .or(header_str(headers, &X_SORNA_DATE)?)
            .ok_or_else(|| ApiError::new(Problem::InvalidAuthParams).with_detail("no date")),
    }
}

async fn verify_request(state: &AppState, req: &mut ServiceRequest) -> Result<keypair::KeypairHandle, ApiError> {
    // A handle on the header's bytes (not a copy): the body may be read below.
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .cloned()
        .ok_or_else(|| ApiError::new(Problem::AuthFailed).with_detail("no credential"))?;
    let authorization = authorization
        .to_str()
        .map_err(|_| ApiError::new(Problem::InvalidAuthParams).with_detail("non-ASCII header value"))?;
    let credential = auth::parse_authorization(authorization)?;
    let date = auth::parse_date(date_header(req.headers())?)?;
    auth::check_skew(date, Utc::now(), MAX_CLOCK_SKEW_SECS)?;
    let Some(handle) = keypair::lookup(&state.registry, &state.directory, credential.access_key).await? else {
        // As much work as for a known key, and the same answer: which keys exist is not told.
        let _ = auth::sign(credential.algorithm, UNKNOWN_KEY_SECRET, &unknown_key_parts(date));
        return Err(ApiError::new(Problem::AuthFailed));
    };

    let body_hash = if signed_as_empty(req) {
        Cow::Borrowed(credential.algorithm.empty_hex_digest())
    } else {
        let body = buffer_body(req, state.settings.manager.max_body_size).await?;
        Cow::Owned(credential.algorithm.hex_digest(&body))
    };
    verify_signature(req, &handle, &credential, date, &body_hash)?;
    Ok(handle)
}

/// The lower-case mime type of the request, without parameters.
fn content_type(headers: &HeaderMap) -> Result<Cow<'_, str>, ApiError> {
    let mime = header_str(headers, &header::CONTENT_TYPE)?.map(|v| v.split(';').next().unwrap_or_default().trim());
    let mime = mime.unwrap_or_default();
    Ok(if mime.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(mime.to_ascii_lowercase())
    } else {
        Cow::Borrowed(mime)
    })
}

/// Whether the signature covers an empty body: from API v4 on no body is signed (the
/// version header compared as a string, as the reference does); multipart bodies are
/// signed as empty (the contract), and so are WebSocket upgrades, whose "body" is the
/// upgraded stream and must not be read here; an HTTP/1 request without a length or
/// chunked encoding has no body.
fn signed_as_empty(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let version = headers.get(&X_BACKENDAI_VERSION).or_else(|| headers.get(&X_SORNA_VERSION));
    if version.is_some_and(|v| v.as_bytes() >= crate::routes::V4.as_bytes()) {
        return true;
    }
    let multipart = content_type(headers).is_ok_and(|mime| mime.starts_with("multipart/"));
    let no_body = req.version() < Version::HTTP_2
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && headers.get(header::CONTENT_LENGTH).is_none_or(|length| length.as_bytes() == b"0");
    // Only a WebSocket upgrade turns the body into a stream; with any other `Upgrade`
    // value a body is read as usual, and signed.
    let websocket = headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    multipart || websocket || no_body
}

/// A stand-in secret, signed with when the access key is unknown.
const UNKNOWN_KEY_SECRET: &str = "unknown-access-key-00000000000000000000";

fn unknown_key_parts(date: chrono::DateTime<chrono::FixedOffset>) -> SignedParts<'static> {
    SignedParts {
        method: "GET",
        path_and_query: "/",
        date_header: "",
        date,
        host: "",
        content_type: "",
        version_header: "x-backendai-version",
        version: "",
        body_hash: "",
    }
}

/// Checks the signature over the request's parts, under the method it is dispatched as
/// (after `X-Method-Override`): a request signed as POST never runs as DELETE.
fn verify_signature(
    req: &ServiceRequest,
    handle: &keypair::KeypairHandle,
    credential: &auth::Credential<'_>,
    date: chrono::DateTime<chrono::FixedOffset>,
    body_hash: &str,
) -> Result<(), ApiError> {
    let headers = req.headers();
    let content_type = content_type(headers)?;
    let date_header = date_header(headers)?;
    let (version_header, version) = match header_str(headers, &X_BACKENDAI_VERSION)? {
        Some(version) => ("x-backendai-version", version),
        None => ("x-sorna-version", header_str(headers, &X_SORNA_VERSION)?.unwrap_or_default()),
    };
    let host = match header_str(headers, &header::HOST)? {
        Some(host) => Cow::Borrowed(host),
        None => Cow::Owned(req.uri().authority().map(|a| a.to_string()).unwrap_or_default()),
    };
    let path_and_query = req.uri().path_and_query().map_or_else(|| req.path(), |p| p.as_str());
    let mut parts = SignedParts {
        method: req.method().as_str(),
        path_and_query,
        date_header,
        date,
        host: &host,
        content_type: &content_type,
        version_header,
        version,
        body_hash,
    };
    let verify = |parts: &SignedParts<'_>| {
        auth::verify(credential.algorithm, &handle.keypair.secret_key, parts, credential.signature)
    };
    let mut verified = verify(&parts);
    // Without a Content-Type, clients sign what their HTTP library assumes: the
    // reference's `application/octet-stream`, or `text/plain` (client 1.5.1 on its
    // WebSocket upgrades).
    if !verified && !headers.contains_key(header::CONTENT_TYPE) {
        for assumed in ["application/octet-stream", "text/plain"] {
            parts.content_type = assumed;
            verified = verify(&parts);
            if verified {
                break;
            }
        }
    }
    // One answer for a bad signature, an unknown key and an inactive key.
    if !verified || !handle.keypair.is_active {
        return Err(ApiError::new(Problem::AuthFailed));
    }
    Ok(())
}

/// Reads the whole body (at most `limit` bytes) and puts it back for the handler.
async fn buffer_body(req: &mut ServiceRequest, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::new(Problem::RequestTooLarge));
    }
    let mut payload = req.take_payload();
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::new(Problem::GenericBadRequest).with_detail("malformed request body"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(Problem::RequestTooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    req.set_payload(Payload::from(body.clone()));
    Ok(body)
}
