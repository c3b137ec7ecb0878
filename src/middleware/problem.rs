use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError};

use futures_util::FutureExt;

use crate::error::{problem_for_status, ApiError, Problem, PROBLEM_JSON};

/// The outer layer of every request, in one middleware (each layer costs a boxed
/// future per request): the request log line, `X-Method-Override`, panic catching,
/// problem+json for every error response, and the Server header.
pub async fn frame(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let log = tracing::enabled!(tracing::Level::INFO).then(|| RequestLog::of(&req));
    let mut result = match method_override(&mut req) {
        Ok(()) => catch_panic(req, next).await.map(problem_json),
        Err(error) => Err(error.into()),
    };
    if let Ok(response) = &mut result {
        let headers = response.headers_mut();
        if !headers.contains_key(header::SERVER) {
            headers.insert(header::SERVER, HeaderValue::from_static(crate::startup::SERVER_HEADER));
        }
    }
    if let Some(log) = log {
        log.finish(&result);
    }
    result
}

/// What the request log line says about a request.
struct RequestLog {
    started: Instant,
    method: Method,
    path: String,
    peer: String,
}

impl RequestLog {
    fn of(req: &ServiceRequest) -> Self {
        Self {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.path().to_owned(),
            peer: req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
        }
    }

    fn finish<B>(self, response: &Result<ServiceResponse<B>, actix_web::Error>) {
        let status = match response {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let Self { method, path, peer, .. } = self;
        tracing::info!(%method, %path, status = status.as_u16(), elapsed_ms, %peer, "request");
    }
}

/// Re-routes a POST carrying `X-Method-Override: DELETE` (etc.) as that method. The
/// signature is checked against the method dispatched, so it must be signed as that.
fn method_override(req: &mut ServiceRequest) -> Result<(), ApiError> {
    static X_METHOD_OVERRIDE: header::HeaderName = header::HeaderName::from_static("x-method-override");
    let requested = req.headers().get(&X_METHOD_OVERRIDE).map(|v| v.to_str().map(str::trim));
    if let Some(requested) = requested {
        if req.method() == Method::POST {
            let method = requested
                .ok()
                .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .filter(|m| [Method::GET, Method::PUT, Method::PATCH, Method::DELETE, Method::POST].contains(m))
                .ok_or_else(|| {
                    ApiError::new(Problem::GenericBadRequest).with_detail("unsupported X-Method-Override")
                })?;
            req.head_mut().method = method;
        }
    }
    Ok(())
}

/// Answers a panic in a handler with an opaque 500 instead of dropping the connection.
async fn catch_panic(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Not a clone of the request: the router needs it unshared.
    let path = req.path().to_owned();
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(response) => response.map(ServiceResponse::map_into_boxed_body),
        Err(panic) => {
            let message = crate::error::panic_message(panic.as_ref());
            tracing::error!(%path, %message, "handler panicked");
            Err(ApiError::new(Problem::InternalServerError).into())
        }
    }
}

/// Makes an error response problem+json, whoever produced it (a handler, an
/// extractor, the router's 404/405, a payload limit).
fn problem_json(response: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = response.status();
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (request, old) = response.into_parts();
    let mut problem = ApiError::new(problem_for_status(status)).error_response();
    // Keep the status and any headers the original response carried (e.g. Allow).
    *problem.status_mut() = status;
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    ServiceResponse::new(request, problem)
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::{test, web, App, HttpResponse};

    use super::*;

    #[actix_web::test]
    async fn a_panicking_handler_gets_an_opaque_500() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(frame))
                .route("/boom", web::get().to(|| async { panic!("secret internals") as HttpResponse }))
                .route("/ok", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let error = test::try_call_service(&app, test::TestRequest::get().uri("/boom").to_request())
            .await
            .expect_err("the panic becomes an error");
        let response = error.error_response();
        assert_eq!(response.status(), 500);
        let body = actix_web::body::to_bytes(response.into_body()).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("internal-server-error") && !text.contains("secret internals"), "{text}");
        // The worker survives.
        let response = test::call_service(&app, test::TestRequest::get().uri("/ok").to_request()).await;
        assert_eq!(response.status(), 200);
    }

    #[actix_web::test]
    async fn plain_error_responses_become_problem_json() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(frame))
                .route("/teapot", web::get().to(|| async { HttpResponse::MethodNotAllowed().finish() })),
        )
        .await;
        let response = test::call_service(&app, test::TestRequest::get().uri("/teapot").to_request()).await;
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()), Some(PROBLEM_JSON.as_bytes()));
    }
}
