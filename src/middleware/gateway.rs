use std::net::IpAddr;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use chrono::Utc;
use entity::keypairs;
use futures_util::StreamExt;

use crate::actors::keypair;
use crate::auth::{self, SignedParts};
use crate::error::{ApiError, Problem};
use crate::startup::AppState;
use crate::stores::Window;

/// The method a request was sent with, when `X-Method-Override` changed it.
#[derive(Clone)]
pub struct OriginalMethod(pub Method);

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
    if is_public(&req, api_version) {
        return next.call(req).await;
    }
    let state =
        req.app_data::<web::Data<AppState>>().cloned().ok_or_else(|| ApiError::new(Problem::InternalServerError))?;
    let keypair = authenticate(&state, &mut req).await?;
    let window = state
        .stores
        .ratelimit
        .hit(&format!("ratelimit:key:{}", keypair.keypair.access_key), state.settings.ratelimit.window * 1000)
        .await
        .map_err(ApiError::from)?;
    let limit = u64::try_from(keypair.keypair.rate_limit).unwrap_or(0);
    let headers = rate_limit_headers(limit, window);
    if window.count > limit {
        let mut error = ApiError::new(Problem::RateLimitExceeded);
        error.headers = headers;
        return Err(error.into());
    }
    keypair.record_query();
    req.extensions_mut().insert(Authenticated { api_version, keypair: keypair.keypair });
    let mut response = next.call(req).await?;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}

fn api_version(req: &ServiceRequest) -> Result<u8, ApiError> {
    req.match_info()
        .get("version")
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|v| (1..=3).contains(v))
        .ok_or_else(|| ApiError::new(Problem::GenericBadRequest).with_detail("unsupported API version"))
}

/// `GET /v{N}` (the version) needs no signature; an unsigned PTY upgrade is left
/// to its handler (stream tickets, or the compatibility setting).
fn is_public(req: &ServiceRequest, api_version: u8) -> bool {
    let path = req.path().trim_end_matches('/');
    req.method() == Method::GET
        && (path == format!("/v{api_version}")
            || (crate::streams::pty::is_pty_upgrade(path) && !req.headers().contains_key("authorization")))
}

fn rate_limit_headers(limit: u64, window: Window) -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", limit.saturating_sub(window.count).to_string()),
        ("x-ratelimit-reset", window.reset_ms.to_string()),
    ]
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| ApiError::new(Problem::InvalidAuthParams).with_detail("non-ASCII header value"))
        })
        .transpose()
}

/// Verifies the signature of `req`, throttling clients whose requests fail.
async fn authenticate(state: &AppState, req: &mut ServiceRequest) -> Result<keypair::KeypairHandle, ApiError> {
    let client = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let throttle_key = format!("ratelimit:ip:{client}");
    let budget = state.settings.ratelimit.unauthenticated_per_ip;
    // Clients that keep failing stop reaching the database.
    if state.stores.ratelimit.peek(&throttle_key).await?.count >= budget {
        return Err(ApiError::new(Problem::RateLimitExceeded).with_detail("too many failed authentications"));
    }
    match verify_request(state, req).await {
        Ok(handle) => Ok(handle),
        Err(error) => {
            let window_ms = state.settings.ratelimit.window * 1000;
            if let Err(store_error) = state.stores.ratelimit.hit(&throttle_key, window_ms).await {
                tracing::warn!(error = %store_error, "could not count a failed authentication");
            }
            Err(error)
        }
    }
}

async fn verify_request(state: &AppState, req: &mut ServiceRequest) -> Result<keypair::KeypairHandle, ApiError> {
    let headers = req.headers();
    let authorization = header_str(headers, "authorization")?
        .ok_or_else(|| ApiError::new(Problem::AuthFailed).with_detail("no credential"))?;
    let credential = auth::parse_authorization(authorization)?;
    let date_header = match header_str(headers, "date")? {
        Some(date) => date,
        None => header_str(headers, "x-backendai-date")?
            .or(header_str(headers, "x-sorna-date")?)
            .ok_or_else(|| ApiError::new(Problem::InvalidAuthParams).with_detail("no date"))?,
    }
    .to_owned();
    let date = auth::parse_date(&date_header)?;
    auth::check_skew(date, Utc::now(), MAX_CLOCK_SKEW_SECS)?;
    let (version_header, version) = match header_str(headers, "x-backendai-version")? {
        Some(version) => ("x-backendai-version", version.to_owned()),
        None => ("x-sorna-version", header_str(headers, "x-sorna-version")?.unwrap_or_default().to_owned()),
    };
    let host = match header_str(headers, "host")? {
        Some(host) => host.to_owned(),
        None => req.uri().authority().map(|a| a.to_string()).unwrap_or_default(),
    };
    let content_type = header_str(headers, "content-type")?
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    let path_and_query =
        req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| req.path().to_owned());
    let methods = match req.extensions().get::<OriginalMethod>() {
        Some(OriginalMethod(sent)) => vec![sent.to_string(), req.method().to_string()],
        None => vec![req.method().to_string()],
    };

    let handle = keypair::lookup(&state.registry, &state.directory, &credential.access_key)
        .await?
        .ok_or_else(|| ApiError::new(Problem::AuthFailed).with_detail("unknown access key"))?;

    // Multipart bodies are signed as empty (the contract), and so are upgrades:
    // their "body" is the upgraded stream, which must not be read here.
    let upgrade = req.headers().contains_key(actix_web::http::header::UPGRADE);
    let body_hash = if content_type.starts_with("multipart/") || upgrade {
        credential.algorithm.hex_digest(b"")
    } else {
        let body = buffer_body(req, state.settings.manager.max_body_size).await?;
        credential.algorithm.hex_digest(&body)
    };
    let verified = methods.iter().any(|method| {
        let parts = SignedParts {
            method,
            path_and_query: &path_and_query,
            date_header: &date_header,
            date,
            host: &host,
            content_type: &content_type,
            version_header,
            version: &version,
            body_hash: &body_hash,
        };
        auth::verify(credential.algorithm, handle.keypair.secret_key.as_str(), &parts, &credential.signature)
    });
    if !verified {
        return Err(ApiError::new(Problem::AuthFailed).with_detail("signature mismatch"));
    }
    if !handle.keypair.is_active {
        return Err(ApiError::new(Problem::AuthFailed).with_detail("inactive access key"));
    }
    Ok(handle)
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
