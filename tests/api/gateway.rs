//! Routing, errors and authentication of the API gateway.

use std::time::Duration;

use chrono::Utc;
use entity::keypairs;
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, send_with_body, spawn_app, spawn_app_with, Backend, BACKENDS};

#[actix_web::test]
async fn version_root_answers_without_auth_on_every_version() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        for path in ["/v1", "/v2", "/v3", "/v4", "/v4/", "/"] {
            let response = app.get(path).await;
            assert_eq!(response.status().as_u16(), 200, "{path}");
            assert_eq!(response.headers()["server"], "BackendAI-API/v4.20181215");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body, json!({"version": "v4.20181215"}), "{path}");
        }
        app.stop().await;
    }
}

#[actix_web::test]
async fn unsupported_versions_are_bad_requests() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    for path in ["/v0", "/v5/authorize", "/v99", "/vx/kernel/create"] {
        let response = app.get(path).await;
        assert_eq!(response.headers()["server"], "BackendAI-API/v4.20181215", "{path}");
        assert_problem(response, 400, "generic-bad-request").await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn unknown_paths_are_problem_json_404() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    assert_problem(app.get("/nope").await, 404, "generic-not-found").await;
    let response = app.send(app.signed("GET", "/v3/no/such/thing", None)).await;
    assert_problem(response, 404, "generic-not-found").await;
    app.stop().await;
}

#[actix_web::test]
async fn signed_authorize_echoes_on_every_backend() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        for method in ["GET", "POST"] {
            let response = app.send(app.signed(method, "/v2/authorize", Some(json!({"echo": [1, "two"]})))).await;
            assert_eq!(response.status().as_u16(), 200, "{method} on {backend:?}");
            assert_eq!(response.headers()["x-ratelimit-limit"], "1000");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body, json!({"authorized": "yes", "echo": [1, "two"]}));
        }
        app.stop().await;
    }
}

#[actix_web::test]
async fn unsigned_requests_are_refused() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    assert_problem(app.get("/v3/authorize").await, 401, "auth-failed").await;
    app.stop().await;
}

#[actix_web::test]
async fn a_wrong_secret_or_unknown_key_fails_auth() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let mut request = app.signed("GET", "/v3/authorize", None);
        request.secret_key = "not the secret";
        assert_problem(app.send(request).await, 401, "auth-failed").await;
        let mut request = app.signed("GET", "/v3/authorize", None);
        request.access_key = "AKIANOSUCHKEY0000000";
        assert_problem(app.send(request).await, 401, "auth-failed").await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_tampered_body_fails_auth() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    // A real signature over one body; the same headers with another body fail.
    let signed = || app.signed("POST", "/v3/authorize", Some(json!({"echo": 1})));
    assert_eq!(app.send(signed()).await.status().as_u16(), 200, "the untampered request passes");
    let tampered = send_with_body(&app, signed(), json!({"echo": 2}).to_string().into_bytes()).await;
    assert_problem(tampered, 401, "auth-failed").await;
    app.stop().await;
}

#[actix_web::test]
async fn dates_out_of_range_or_malformed_are_invalid_auth_params() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let mut request = app.signed("GET", "/v3/authorize", None);
    request.date = (Utc::now() - chrono::Duration::minutes(16)).fixed_offset();
    assert_problem(app.send(request).await, 400, "invalid-auth-params").await;
    let mut request = app.signed("GET", "/v3/authorize", None);
    request.date = (Utc::now() + chrono::Duration::minutes(16)).fixed_offset();
    assert_problem(app.send(request).await, 400, "invalid-auth-params").await;
    let auth = format!("BackendAI signMethod=HMAC-SHA256, credential={}:00", app.access_key);
    for (date, authorization) in [
        (None, auth.as_str()),
        (Some("yesterday"), auth.as_str()),
        (Some("2026-11-28T05:31:58+00:00"), "BackendAI nonsense"),
        (Some("2026-11-28T05:31:58+00:00"), "BackendAI signMethod=HMAC-WHIRLPOOL, credential=AK:00"),
    ] {
        let mut builder =
            app.client.get(format!("{}/v3/authorize", app.address)).header("Authorization", authorization);
        if let Some(date) = date {
            builder = builder.header("Date", date);
        }
        assert_problem(builder.send().await.unwrap(), 400, "invalid-auth-params").await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn legacy_sorna_headers_are_accepted() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let date = Utc::now().fixed_offset();
    let date_header = date.to_rfc3339();
    let body = b"{}".to_vec();
    let body_hash = backendai_manager::auth::HashAlgorithm::Sha256.hex_digest(&body);
    let parts = backendai_manager::auth::SignedParts {
        method: "POST",
        path_and_query: "/v1/authorize",
        date_header: &date_header,
        date,
        host: &app.host,
        content_type: "application/json",
        version_header: "x-sorna-version",
        version: "v1.20160915",
        body_hash: &body_hash,
    };
    let signature =
        backendai_manager::auth::sign(backendai_manager::auth::HashAlgorithm::Sha256, &app.secret_key, &parts);
    let response = app
        .client
        .post(format!("{}/v1/authorize", app.address))
        .header("X-Sorna-Date", date_header.as_str())
        .header("X-Sorna-Version", "v1.20160915")
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Sorna signMethod=HMAC-SHA256, credential={}:{signature}", app.access_key))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    app.stop().await;
}

#[actix_web::test]
async fn malformed_json_is_invalid_api_params() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let mut request = app.signed("POST", "/v3/authorize", None);
    request.body = b"{not json".to_vec();
    assert_problem(app.send(request).await, 400, "invalid-api-params").await;
    app.stop().await;
}

#[actix_web::test]
async fn oversized_bodies_are_refused_with_413() {
    let app = spawn_app_with(Backend::Embedded, |s| s.manager.max_body_size = 4096).await.unwrap();
    let big = json!({"echo": "x".repeat(10_000)});
    let response = app.send(app.signed("POST", "/v3/authorize", Some(big))).await;
    assert_problem(response, 413, "generic-bad-request").await;
    app.stop().await;
}

#[actix_web::test]
async fn method_override_reroutes_a_post() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    // A GET-only route reached with a POST: signed as the method it is dispatched as.
    let path = "/v3/folders/invitations/list";
    let send = |signed_as: &'static str| {
        let headers = app.signature_headers(&app.signed(signed_as, path, None));
        let mut request = app.client.post(format!("{}{path}", app.address)).header("X-Method-Override", "GET");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let routed = send("GET").await.unwrap();
    assert_eq!(routed.status().as_u16(), 200);
    assert_eq!(routed.json::<Value>().await.unwrap(), json!({"invitations": []}));
    // Signed as POST, it would run as GET: refused.
    assert_problem(send("POST").await.unwrap(), 401, "auth-failed").await;
    let bogus =
        app.client.post(format!("{}/v3", app.address)).header("X-Method-Override", "BREW").send().await.unwrap();
    assert_problem(bogus, 400, "generic-bad-request").await;
    app.stop().await;
}

#[actix_web::test]
async fn wrong_method_on_a_known_path_is_problem_json() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let response = app.send(app.signed("DELETE", "/v3/authorize", None)).await;
    assert_problem(response, 405, "method-not-allowed").await;
    let response = app.send(app.signed("PUT", "/v3/kernel/some-token", None)).await;
    assert_eq!(response.headers()["allow"], "GET, PATCH, DELETE, POST");
    assert_problem(response, 405, "method-not-allowed").await;
    app.stop().await;
}

#[actix_web::test]
async fn healthz_reports_every_store() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let response = app.get("/healthz").await;
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok", "{body}");
        let expected = if backend == Backend::Embedded {
            ["sqlite", "embedded", "embedded"]
        } else {
            ["postgres", "etcd", "redis"]
        };
        assert_eq!(
            [&body["database"]["kind"], &body["etcd"]["kind"], &body["redis"]["kind"]],
            expected.map(Value::from).each_ref()
        );
        app.stop().await;
    }
}

#[actix_web::test]
async fn usage_is_written_in_batches() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        for _ in 0..5 {
            let response = app.send(app.signed("GET", "/v3/authorize", None)).await;
            assert_eq!(response.status().as_u16(), 200);
        }
        let mut row = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            row = keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap();
            if row.as_ref().is_some_and(|r| r.num_queries == 5) {
                break;
            }
        }
        let row = row.unwrap();
        assert_eq!(row.num_queries, 5, "{backend:?}");
        assert!(row.last_used.is_some());
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_deactivated_key_is_refused_within_seconds() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        assert_eq!(app.send(app.signed("GET", "/v3/authorize", None)).await.status().as_u16(), 200);
        let row = keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().unwrap();
        let mut row = row.into_active_model();
        row.is_active = Set(false);
        row.update(&app.state.db).await.unwrap();
        let mut status = 200;
        for _ in 0..50 {
            status = app.send(app.signed("GET", "/v3/authorize", None)).await.status().as_u16();
            if status == 401 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 401, "{backend:?}: still accepted 5 s after deactivation");
        app.stop().await;
    }
}

/// Only a WebSocket upgrade is signed without its body: a body sent with another
/// `Upgrade` value is read, so it must be the body that was signed.
#[actix_web::test]
async fn a_body_sent_with_a_non_websocket_upgrade_is_signed() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let signed_empty = app.signed("POST", "/v3/authorize", None);
    let mut request = app.client.post(format!("{}/v3/authorize", app.address));
    for (name, value) in app.signature_headers(&signed_empty) {
        request = request.header(name, value);
    }
    let response = request.header("Upgrade", "h2c").body(r#"{"echo": "tampered"}"#).send().await.unwrap();
    assert_problem(response, 401, "auth-failed").await;
    app.stop().await;
}

/// Sends `request` as signed, but as a POST carrying `X-Method-Override: <override_to>`.
async fn send_overridden(
    app: &crate::helpers::TestApp,
    request: crate::helpers::Signed<'_>,
    override_to: &str,
) -> reqwest::Response {
    let mut builder =
        app.client.post(format!("{}{}", app.address, request.path)).header("X-Method-Override", override_to);
    for (name, value) in app.signature_headers(&request) {
        builder = builder.header(name, value);
    }
    builder.body(request.body).send().await.unwrap()
}

/// The signature binds the operation: a request signed as POST (a captured execute)
/// cannot be replayed as a DELETE through `X-Method-Override`; signed as the method
/// it is dispatched as, the override works.
#[actix_web::test]
async fn a_signature_binds_the_method_dispatched_not_the_one_sent() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let token = crate::helpers::unique("override");
    let created = crate::helpers::create_session(&app, "python3", &token).await;
    assert_eq!(created.status().as_u16(), 201);
    let path = format!("/v3/kernel/{token}");
    let execute = json!({"mode": "query", "code": "print(1)", "runId": "r1"});
    for method in ["DELETE", "GET", "PATCH"] {
        let captured = app.signed("POST", &path, Some(execute.clone()));
        assert_problem(send_overridden(&app, captured, method).await, 401, "auth-failed").await;
    }
    let rows = crate::helpers::sessions_named(&app, &token).await;
    assert_eq!(rows[0].status, entity::kernels::KernelStatus::Running, "the session was not destroyed");

    // Signed as DELETE, sent as POST + override: destroyed.
    let signed = app.signed("DELETE", &path, None);
    assert_eq!(send_overridden(&app, signed, "DELETE").await.status().as_u16(), 200);
    let rows = crate::helpers::sessions_named(&app, &token).await;
    assert_eq!(rows[0].status, entity::kernels::KernelStatus::Terminated);
    app.stop().await;
}

/// Only the lower-case hex signature the contract defines is accepted.
#[actix_web::test]
async fn an_upper_case_signature_is_refused() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let request = app.signed("GET", "/v3/authorize", None);
    let mut builder = app.client.get(format!("{}/v3/authorize", app.address));
    for (name, value) in app.signature_headers(&request) {
        let value = if name == "Authorization" {
            let (head, signature) = value.rsplit_once(':').unwrap();
            format!("{head}:{}", signature.to_ascii_uppercase())
        } else {
            value
        };
        builder = builder.header(name, value);
    }
    assert_problem(builder.send().await.unwrap(), 401, "auth-failed").await;
    // The same request in lower case passes.
    assert_eq!(app.send(app.signed("GET", "/v3/authorize", None)).await.status().as_u16(), 200);
    app.stop().await;
}

/// An unknown key, a wrong signature and an inactive key get the same answer: which
/// keys exist is not told.
#[actix_web::test]
async fn refused_credentials_all_get_the_same_answer() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let mut unknown = app.signed("GET", "/v3/authorize", None);
    unknown.access_key = "AKIANOSUCHKEY0000000";
    let mut wrong = app.signed("GET", "/v3/authorize", None);
    wrong.secret_key = "not the secret";
    let unknown: Value = app.send(unknown).await.json().await.unwrap();
    let wrong: Value = app.send(wrong).await.json().await.unwrap();
    assert_eq!(unknown, wrong);
    assert_eq!(unknown["title"], "Credential/signature mismatch", "{unknown}");
    app.stop().await;
}

/// The date window is exactly 15 minutes on either side.
#[actix_web::test]
async fn the_date_window_is_fifteen_minutes_at_the_boundary() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    for (offset_ms, accepted) in [(-901_000, false), (901_000, false), (-899_000, true), (899_000, true)] {
        let mut request = app.signed("GET", "/v3/authorize", None);
        request.date = (Utc::now() + chrono::Duration::milliseconds(offset_ms)).fixed_offset();
        let response = app.send(request).await;
        if accepted {
            assert_eq!(response.status().as_u16(), 200, "{offset_ms} ms");
        } else {
            assert_problem(response, 400, "invalid-auth-params").await;
        }
    }
    app.stop().await;
}
