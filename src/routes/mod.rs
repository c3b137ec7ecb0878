//! HTTP routes, one module per resource, each exporting `configure`.

mod admin;
mod authorize;
mod folders;
mod health;
mod kernel;
mod kernel_files;
mod params;
mod root;
mod scheduler;

use actix_web::{web, HttpRequest, HttpResponse};

pub use health::healthz;
pub use root::V4;

/// Registers the routes of API `version`: under `/v{N}`, or unprefixed for API 4.
pub fn configure(cfg: &mut web::ServiceConfig, version: u8) {
    root::configure(cfg);
    admin::configure(cfg);
    authorize::configure(cfg);
    kernel::configure(cfg);
    if version >= 2 {
        folders::configure(cfg);
    }
    scheduler::configure(cfg);
    crate::streams::configure(cfg);
}

/// The first path segments of the unprefixed (API 4) routes.
const UNPREFIXED_ROOTS: &[&str] = &["auth", "authorize", "kernel", "folders", "admin", "stream", "scheduler"];

/// Whether an unprefixed path belongs to API 4: `/` or below one of its modules.
pub fn is_unprefixed_route(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let first = rest.split('/').next().unwrap_or_default();
    first.is_empty() && rest.is_empty() || UNPREFIXED_ROOTS.contains(&first)
}

/// The answer to a call that returns nothing: 204 No Content; except for
/// clients of the 1.0 era (API version `v2.20170315` or older, or the legacy
/// Sorna headers), which get 200 with an empty body. The official SDK 1.0.6 reads
/// `Content-Type` and `Content-Length` on every response, as aiohttp (the
/// original server) always sent them, but HTTP forbids `Content-Length` on a 204
/// and actix-web never sends it.
pub fn no_content(req: &HttpRequest) -> HttpResponse {
    let headers = req.headers();
    let old_client = headers.contains_key("x-sorna-version")
        || headers
            .get("x-backendai-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(_, date)| date <= "20170315");
    if old_client {
        HttpResponse::Ok().content_type("application/octet-stream").finish()
    } else {
        HttpResponse::NoContent().finish()
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn no_content_is_204_except_for_old_clients() {
        let status = |name: &str, value: &str| {
            no_content(&TestRequest::default().insert_header((name, value)).to_http_request()).status()
        };
        assert_eq!(status("X-BackendAI-Version", "v3.20170615"), 204);
        assert_eq!(status("X-BackendAI-Version", "v2.20170315"), 200);
        assert_eq!(status("X-BackendAI-Version", "v1.20160915"), 200);
        assert_eq!(status("X-Sorna-Version", "v1.20160915"), 200);
        assert_eq!(no_content(&TestRequest::default().to_http_request()).status(), 204);
    }
}
