//! The yardstick of `bench/identity.sh` (bench-only; not installed): the smallest actix-web
//! server answering `GET /` with `{}` as JSON, built with the same actix-web, features and
//! release profile as annuaire and, like it, one worker per CPU by default.
//!
//! ```text
//! cargo run --release --example bench_hello_world -- 127.0.0.1:8091 [WORKERS]
//! ```

// A bench tool stops at its first failure: unwrapping is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use actix_web::{App, HttpResponse, HttpServer, web};

#[derive(serde::Serialize)]
struct Empty {}

async fn hello() -> HttpResponse {
    HttpResponse::Ok().json(Empty {})
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:8091".into());
    let workers: usize = args.next().map_or(0, |w| w.parse().unwrap());
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| App::new().route("/", web::get().to(hello)));
        let server = if workers > 0 {
            server.workers(workers)
        } else {
            server
        };
        server.bind(bind)?.run().await
    })
}
