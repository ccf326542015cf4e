//! The yardsticks of `bench/identity.sh` (bench-only; not installed): the smallest actix-web
//! server answering `GET /` with `{}` as JSON, built with the same actix-web, features and
//! release profile as annuaire and, like it, one worker per CPU by default.
//!
//! It also answers `GET /_matrix/identity/api/v1/info?medium=…&address=…` the way the smallest
//! actix-web handler of that shape would: it parses the same query into the same struct and
//! answers a JSON object with the fields and size of annuaire's answer, without deciding
//! anything. That is the floor of `/info`: what actix-web, serde and the kernel cost for that
//! request and answer, with none of annuaire's work.
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

#[derive(serde::Deserialize)]
struct ThreepidQuery {
    medium: String,
    address: String,
}

/// The fields of annuaire's `/info` answer (its `ShardInfo`), filled the way a real answer is:
/// owned strings.
#[derive(serde::Serialize)]
struct Info {
    decision: &'static str,
    hs: Option<String>,
    organisation: Option<String>,
    reason: String,
    reason_code: &'static str,
    requires_invite: bool,
}

async fn info(q: web::Query<ThreepidQuery>) -> HttpResponse {
    let domain = q.address.rsplit('@').next().unwrap_or_default();
    HttpResponse::Ok().json(Info {
        decision: if q.medium == "email" {
            "allowed"
        } else {
            "refused"
        },
        hs: Some(format!("agent.{domain}")),
        organisation: Some("Finances publiques".to_owned()),
        reason: format!("allowed by domain rule {domain} (organisations.toml:31)"),
        reason_code: "allowed",
        requires_invite: false,
    })
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:8091".into());
    let workers: usize = args.next().map_or(0, |w| w.parse().unwrap());
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .route("/", web::get().to(hello))
                .route("/_matrix/identity/api/v1/info", web::get().to(info))
        });
        let server = if workers > 0 {
            server.workers(workers)
        } else {
            server
        };
        server.bind(bind)?.run().await
    })
}
