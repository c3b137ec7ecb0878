//! Rate limits: per key, exact under concurrency, and per client IP for failures.

use futures_util::future::join_all;

use crate::helpers::{add_keypair, assert_problem, spawn_app, spawn_app_with, unique, Backend, BACKENDS};

#[actix_web::test]
async fn requests_past_the_limit_get_429_with_headers() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        // Unique: the Redis window outlives the test.
        let access_key = unique("AKIA").chars().take(20).collect::<String>().to_uppercase();
        add_keypair(&app.state, &access_key, "limited-secret", 3, true).await;
        let send = || {
            let mut request = app.signed("GET", "/v3/authorize", None);
            request.access_key = &access_key;
            request.secret_key = "limited-secret";
            app.send(request)
        };
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let response = send().await;
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(response.headers()["x-ratelimit-limit"], "3");
            let reset: u64 = response.headers()["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
            assert!(reset > 0 && reset <= 900_000, "reset {reset}");
            remaining.push(response.headers()["x-ratelimit-remaining"].to_str().unwrap().to_owned());
        }
        assert_eq!(remaining, ["2", "1", "0"], "{backend:?}");
        let response = send().await;
        assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
        assert_problem(response, 429, "rate-limit-exceeded").await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn the_count_is_exact_under_concurrency() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let responses = join_all((0..60).map(|_| app.send(app.signed("GET", "/v3/authorize", None)))).await;
        let mut remaining: Vec<u64> =
            responses.iter().map(|r| r.headers()["x-ratelimit-remaining"].to_str().unwrap().parse().unwrap()).collect();
        remaining.sort_unstable();
        let expected: Vec<u64> = (940..1000).collect();
        assert_eq!(remaining, expected, "{backend:?}: every request must see its own count");
        app.stop().await;
    }
}

#[actix_web::test]
async fn failing_clients_are_throttled_per_ip() {
    let app = spawn_app_with(Backend::Embedded, |s| s.ratelimit.unauthenticated_per_ip = 5).await.unwrap();
    for _ in 0..5 {
        assert_problem(app.get("/v3/authorize").await, 401, "auth-failed").await;
    }
    assert_problem(app.get("/v3/authorize").await, 429, "rate-limit-exceeded").await;
    // Even a valid signature from that address waits for the window to end.
    assert_problem(app.send(app.signed("GET", "/v3/authorize", None)).await, 429, "rate-limit-exceeded").await;
    app.stop().await;
}
