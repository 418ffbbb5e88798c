//! Bulk read of an environment with 100 secrets through the router (SQLite), as a ratio to a
//! raw sqlx read of the same rows measured in the same run; and the same with `If-None-Match`
//! (304, nothing decrypted).
//!
//! `cargo bench -p coffer-server --bench secrets`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use support::{call, json};

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use coffer_server::{Config, app};
use sqlx::Row as _;

const SECRETS: &str = "/api/v1/orgs/bench/projects/app/environments/production/secrets";

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    let state = coffer_server::start(config).await.unwrap();
    let pool = state.db.pool().clone();
    let router = app(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));

    let (_, _, body) = support::call(&router, support::json("POST", "/api/v1/auth/register", None, serde_json::json!({
        "email": "bench@example.com", "password": "correct horse battery staple", "name": "Bench" }))).await;
    let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        &router,
        json(
            "POST",
            "/api/v1/orgs",
            Some(&token),
            serde_json::json!({ "name": "Bench", "slug": "bench" }),
        ),
    )
    .await;
    call(
        &router,
        json(
            "POST",
            "/api/v1/orgs/bench/projects",
            Some(&token),
            serde_json::json!({ "name": "App", "slug": "app" }),
        ),
    )
    .await;
    let secrets: Vec<_> = (0..100)
        .map(|i| serde_json::json!({ "key": format!("KEY_{i:03}"), "value": "v".repeat(64) }))
        .collect();
    let (status, _, _) = call(
        &router,
        json(
            "PUT",
            SECRETS,
            Some(&token),
            serde_json::json!({ "secrets": secrets }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let raw = support::median(15, 200, || async {
        let rows = sqlx::query(
            "SELECT s.key, v.value_ct FROM secrets s JOIN secret_versions v ON v.secret_id = s.id AND v.version = s.current_version \
             JOIN environments e ON e.id = s.environment_id WHERE e.slug = 'production' AND s.deleted_at IS NULL",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 100);
        std::hint::black_box(rows[0].get::<Vec<u8>, _>(1));
    })
    .await;
    let read = |if_none_match: Option<String>| {
        let router = router.clone();
        let token = token.clone();
        async move {
            let mut b = Request::get(SECRETS).header("authorization", format!("Bearer {token}"));
            if let Some(tag) = if_none_match {
                b = b.header("if-none-match", tag);
            }
            support::call(&router, b.body(Body::empty()).unwrap()).await
        }
    };
    let bulk = support::median(15, 50, || async {
        let (status, _, body) = read(None).await;
        assert_eq!(status, StatusCode::OK);
        std::hint::black_box(body);
    })
    .await;
    let (_, headers, _) = read(None).await;
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let not_modified = support::median(15, 200, || async {
        let (status, _, _) = read(Some(etag.clone())).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
    })
    .await;

    let ratio = |d: Duration| d.as_secs_f64() / raw.as_secs_f64();
    println!(
        "{:<48} {:>12}   {:>10}",
        "operation (100 secrets, SQLite)", "median/op", "vs raw"
    );
    println!(
        "{:<48} {:>12.1?}   {:>9.1}x",
        "raw sqlx read of the rows (baseline)", raw, 1.0
    );
    println!(
        "{:<48} {:>12.1?}   {:>9.1}x",
        "GET …/secrets through the router (decrypt+audit)",
        bulk,
        ratio(bulk)
    );
    println!(
        "{:<48} {:>12.1?}   {:>9.1}x",
        "GET …/secrets with If-None-Match (304)",
        not_modified,
        ratio(not_modified)
    );
}
