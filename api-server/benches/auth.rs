//! Cost of authentication, as ratios to an unauthenticated `/health` measured in the same run:
//! an authenticated no-op (`GET /api/v1/auth/me`, JWT + session lookup) and a login (argon2id).
//! Then the timing of a failed login for a known account against an unknown email, sampled
//! alternately: their medians should be within noise of each other (ratio ≈ 1.00), or the
//! time of an answer tells whether an account exists.
//!
//! `cargo bench -p coffer-server --bench auth`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use support::{call, json};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use coffer_server::{Config, app};

const PASSWORD: &str = "correct horse battery staple";

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.login_rate_per_account = 1_000_000;
    config.login_rate_per_ip = 1_000_000;
    let state = coffer_server::start(config).await.unwrap();
    let router = app(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));

    let (status, _, body) = call(
        &router,
        json("POST", "/api/v1/auth/register", None, serde_json::json!({ "email": "bench@example.com", "password": PASSWORD, "name": "Bench" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let health = support::median(15, 400, || async {
        let (s, _, _) = call(
            &router,
            Request::get("/health").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;
    let me = support::median(15, 400, || async {
        let req = Request::get("/api/v1/auth/me")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let (s, _, _) = call(&router, req).await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;
    let login = support::median(5, 6, || async {
        let req = json(
            "POST",
            "/api/v1/auth/login",
            None,
            serde_json::json!({ "email": "bench@example.com", "password": PASSWORD }),
        );
        let (s, _, _) = call(&router, req).await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;

    let (wrong, unknown) = failed_logins(&router, 41).await;

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

    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "failed login (n = 41 each)", "p25", "median", "p75"
    );
    for (name, samples) in [("wrong password", &wrong), ("unknown email", &unknown)] {
        println!(
            "{:<34} {:>12.1?} {:>12.1?} {:>12.1?}",
            name,
            samples[samples.len() / 4],
            samples[samples.len() / 2],
            samples[samples.len() * 3 / 4]
        );
    }
    let (w, u) = (wrong[wrong.len() / 2], unknown[unknown.len() / 2]);
    println!(
        "{:<34} {:>12.2}   (≈ 1.00: no account enumeration by time)",
        "median unknown / wrong",
        u.as_secs_f64() / w.as_secs_f64()
    );
}

/// `n` timings each of a wrong password for a known account and of an unknown email, taken
/// in turns so that drift in the machine's load affects both alike; sorted.
async fn failed_logins(router: &axum::Router, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut wrong = Vec::with_capacity(n);
    let mut unknown = Vec::with_capacity(n);
    for i in 0..=n {
        let mut pair = [
            ("bench@example.com", &mut wrong),
            ("nobody@example.com", &mut unknown),
        ];
        // Neither always goes first.
        if i % 2 == 1 {
            pair.reverse();
        }
        for (email, into) in pair {
            let req = json(
                "POST",
                "/api/v1/auth/login",
                None,
                serde_json::json!({ "email": email, "password": "not the password at all" }),
            );
            let start = Instant::now();
            let (s, _, _) = call(router, req).await;
            let took = start.elapsed();
            assert_eq!(s, StatusCode::UNAUTHORIZED);
            // The first round warms up.
            if i > 0 {
                into.push(took);
            }
        }
    }
    wrong.sort();
    unknown.sort();
    (wrong, unknown)
}
