//! A bare actix-web JSON endpoint: the baseline of `scripts/bench_manager.sh`.
//! Usage: `bare_json PORT`; `GET /json` answers a small JSON object.

use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18099);
    HttpServer::new(|| {
        App::new().route(
            "/json",
            web::get().to(|| async {
                HttpResponse::Ok().json(serde_json::json!({"lang": "python3:latest", "age": 1, "idle": -1}))
            }),
        )
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
