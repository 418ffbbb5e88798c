//! Cost of authentication, as ratios to an unauthenticated `/health` measured in the same run:
//! an authenticated no-op (`GET /api/v1/auth/me`, JWT + session lookup) and a login (argon2id).
//!
//! `cargo bench -p coffer-server --bench auth`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use coffer_server::{Config, app};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const PASSWORD: &str = "correct horse battery staple";

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (
        status,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn json_post(path: &str, body: serde_json::Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Median time per operation over `rounds` rounds of `per_round` operations.
async fn measure<F, Fut>(rounds: usize, per_round: usize, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..per_round {
        op().await;
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            op().await;
        }
        samples.push(start.elapsed() / u32::try_from(per_round).unwrap());
    }
    samples.sort();
    samples[rounds / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.login_rate_per_account = 1_000_000;
    config.login_rate_per_ip = 1_000_000;
    let state = coffer_server::start(config).await.unwrap();
    let router = app(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));

    let (status, body) = call(
        &router,
        json_post("/api/v1/auth/register", serde_json::json!({ "email": "bench@example.com", "password": PASSWORD, "name": "Bench" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let health = measure(15, 400, || async {
        let (s, _) = call(
            &router,
            Request::get("/health").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;
    let me = measure(15, 400, || async {
        let req = Request::get("/api/v1/auth/me")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let (s, _) = call(&router, req).await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;
    let login = measure(5, 6, || async {
        let req = json_post(
            "/api/v1/auth/login",
            serde_json::json!({ "email": "bench@example.com", "password": PASSWORD }),
        );
        let (s, _) = call(&router, req).await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;

    let ratio = |d: Duration| d.as_secs_f64() / health.as_secs_f64();
    println!(
        "{:<34} {:>12}   {:>10}",
        "operation", "median/op", "vs /health"
    );
    println!(
        "{:<34} {:>12.1?}   {:>9.1}x",
        "GET /health (baseline)", health, 1.0
    );
    println!(
        "{:<34} {:>12.1?}   {:>9.1}x",
        "GET /api/v1/auth/me (JWT)",
        me,
        ratio(me)
    );
    println!(
        "{:<34} {:>12.1?}   {:>9.1}x",
        "POST /api/v1/auth/login (argon2id)",
        login,
        ratio(login)
    );
}
