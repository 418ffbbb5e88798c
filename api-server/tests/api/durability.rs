//! Acknowledged writes are fsynced before the answer, and concurrent writers queue (on SQLite,
//! in this process's order) instead of failing or starving.

use std::time::Duration;

use axum::http::StatusCode;
use coffer_server::db::Backend;
use serde_json::json;

use crate::helpers::{acme_web, db_test};

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments/development";

db_test!(async fn write_transactions_are_fsynced_before_their_commit_returns(app) {
    let mut tx = app.state.db.begin().await.unwrap();
    match app.state.db.backend() {
        Backend::Sqlite => {
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(level, 2, "synchronous = FULL: the WAL is fsynced at every commit");
        }
        Backend::Postgres => {
            let mode: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(mode, "on");
        }
    }
    tx.rollback().await.unwrap();
});

db_test!(async fn a_write_transaction_dropped_without_commit_lets_the_next_writer_in(app) {
    let ann = acme_web(&app).await;
    let tx = app.state.db.begin().await.unwrap();
    drop(tx);
    // A guard against hanging, not a measure: the writer's turn was given back on drop.
    let next = tokio::time::timeout(Duration::from_secs(30), app.state.db.begin())
        .await
        .expect("the next writer is not kept waiting")
        .unwrap();
    next.commit().await.unwrap();
    let r = app.put(&format!("{ENV}/secrets/AFTER"), Some(&ann.access), json!({ "value": "v" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
});

db_test!(async fn concurrent_writes_to_one_environment_all_succeed_and_none_is_lost(app) {
    const WRITERS: i64 = 24;
    let ann = acme_web(&app).await;
    let writes = (0..WRITERS).map(|i| {
        let (app, token) = (&app, ann.access.clone());
        async move {
            let r = app.put(&format!("{ENV}/secrets/SHARED"), Some(&token), json!({ "value": format!("v{i}") })).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    });
    futures::future::join_all(writes).await;
    let all = app.get(&format!("{ENV}/secrets"), Some(&ann.access)).await.json();
    // Writes that wait for one another are committed together: a revision per transaction.
    let revision = all["revision"].as_i64().unwrap();
    assert!((1..=WRITERS).contains(&revision), "revision {revision}");
    let history = app.get(&format!("{ENV}/secrets/SHARED/versions?limit=100"), Some(&ann.access)).await.json();
    assert_eq!(history["items"].as_array().unwrap().len(), usize::try_from(WRITERS).unwrap());
});
