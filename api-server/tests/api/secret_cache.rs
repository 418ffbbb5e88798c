//! Environments' current secrets are kept in memory (`coffer_server::db::cache`). A change made
//! through this replica is read back at once, whatever was kept; on PostgreSQL one made through
//! another replica reaches this one's cache through a notification, also after the listener's
//! connection was lost.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, acme_web, db_test};

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments/development";

fn secrets() -> String {
    format!("{ENV}/secrets")
}

fn one(key: &str) -> String {
    format!("{ENV}/secrets/{key}")
}

/// `KEY`'s value read twice (so the second comes from memory when anything is kept).
async fn value_twice(app: &TestApp, ann: &Session, key: &str) -> Value {
    let first = app.get(&one(key), Some(&ann.access)).await;
    let second = app.get(&one(key), Some(&ann.access)).await;
    assert_eq!(first.status, second.status, "{}", second.text());
    if second.status == StatusCode::NOT_FOUND {
        return Value::Null;
    }
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(first.json()["value"], second.json()["value"]);
    second.json()["value"].clone()
}

/// The environment's values, by key, read twice.
async fn all_twice(app: &TestApp, ann: &Session) -> Value {
    let _ = app.get(&secrets(), Some(&ann.access)).await;
    let r = app.get(&secrets(), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut out = serde_json::Map::new();
    for s in r.json()["secrets"].as_array().unwrap() {
        out.insert(s["key"].as_str().unwrap().to_owned(), s["value"].clone());
    }
    Value::Object(out)
}

async fn put(app: &TestApp, ann: &Session, key: &str, value: &str) {
    let r = app
        .put(&one(key), Some(&ann.access), json!({ "value": value }))
        .await;
    assert!(r.status.is_success(), "{}", r.text());
}

db_test!(async fn every_kind_of_write_is_read_back_at_once_though_reads_were_kept(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann, "A", "1").await;
    put(&app, &ann, "B", "1").await;
    assert_eq!(value_twice(&app, &ann, "A").await, "1");
    assert!(!app.state.db.cache().is_empty(), "reads keep the environment in memory");

    put(&app, &ann, "A", "2").await;
    assert_eq!(value_twice(&app, &ann, "A").await, "2");

    let r = app.put(&secrets(), Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "3" }, { "key": "C", "value": "1" }] })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(all_twice(&app, &ann).await, json!({ "A": "3", "B": "1", "C": "1" }));

    let r = app.post(&format!("{}/rollback", one("A")), Some(&ann.access), json!({ "version": 1 })).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(value_twice(&app, &ann, "A").await, "1");

    let r = app.delete(&one("B"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(value_twice(&app, &ann, "B").await, Value::Null);
    assert_eq!(all_twice(&app, &ann).await, json!({ "A": "1", "C": "1" }));

    let r = app.post(&format!("{}/restore", one("B")), Some(&ann.access), json!({})).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(value_twice(&app, &ann, "B").await, "1");

    let r = app.post("/api/v1/orgs/acme/projects/web/rotate-key", Some(&ann.access), json!({})).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(all_twice(&app, &ann).await, json!({ "A": "1", "B": "1", "C": "1" }));

    let r = app.delete(ENV, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get(&one("A"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

async fn if_none_match(app: &TestApp, ann: &Session, tag: &str) -> StatusCode {
    let request = axum::http::Request::get(secrets())
        .header("authorization", format!("Bearer {}", ann.access))
        .header("if-none-match", tag)
        .body(axum::body::Body::empty())
        .unwrap();
    app.send(request).await.status
}

db_test!(async fn an_entity_tag_kept_in_memory_changes_with_the_environment(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann, "A", "1").await;
    let tag = app.get(&secrets(), Some(&ann.access)).await.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(if_none_match(&app, &ann, &tag).await, StatusCode::NOT_MODIFIED);
    put(&app, &ann, "A", "2").await;
    assert_eq!(if_none_match(&app, &ann, &tag).await, StatusCode::OK);
});

db_test!(async fn an_environment_too_large_to_keep_is_read_one_row_at_a_time(app, |c| c.secret_cache_bytes = 16 * 1024) {
    let ann = acme_web(&app).await;
    // Sealed, 2 KiB is over a sixteenth of the 16 KiB cache.
    put(&app, &ann, "BIG", &"x".repeat(2048)).await;
    put(&app, &ann, "SMALL", "1").await;
    assert_eq!(value_twice(&app, &ann, "SMALL").await, "1");
    assert_eq!(value_twice(&app, &ann, "BIG").await, "x".repeat(2048));
    assert_eq!(value_twice(&app, &ann, "GONE").await, Value::Null);
    assert!(app.state.db.cache().is_empty(), "nothing kept");
    put(&app, &ann, "SMALL", "2").await;
    assert_eq!(value_twice(&app, &ann, "SMALL").await, "2");
    let r = app.delete(&one("SMALL"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(value_twice(&app, &ann, "SMALL").await, Value::Null);
    assert_eq!(all_twice(&app, &ann).await, json!({ "BIG": "x".repeat(2048) }));
});

/// Polls `check` every 50 ms for at most 5 s (well under `db::cache::MAX_AGE`, so what it sees
/// was brought by a notification, not by age).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 5 s");
}

/// The listener's PostgreSQL backend, once connected.
async fn listening(app: &TestApp) -> i32 {
    let mut pid = None;
    eventually("the change listener connects", || {
        pid = app.state.db.cache().listener_backend();
        std::future::ready(pid.is_some())
    })
    .await;
    pid.unwrap()
}

#[tokio::test]
async fn a_change_through_another_replica_reaches_this_ones_cache() {
    let Some(a) = TestApp::postgres(|_| {}).await else {
        return;
    };
    let b = a.replica().await;
    let ann = acme_web(&a).await;
    put(&a, &ann, "A", "1").await;
    let listener = listening(&a).await;
    listening(&b).await;

    assert_eq!(value_twice(&a, &ann, "A").await, "1");
    assert!(!a.state.db.cache().is_empty());
    put(&b, &ann, "A", "2").await;
    eventually("a's cache learns of b's write", || async {
        a.get(&one("A"), Some(&ann.access)).await.json()["value"] == "2"
    })
    .await;

    // The listener's connection is lost: a notices, reconnects, and hears b again.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(
        &a.state.config.effective_database_url(),
    )
    .await
    .unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(killed);
    eventually("a's listener reconnects", || {
        let now = a.state.db.cache().listener_backend();
        std::future::ready(now.is_some_and(|pid| pid != listener))
    })
    .await;
    assert_eq!(value_twice(&a, &ann, "A").await, "2");
    put(&b, &ann, "A", "3").await;
    eventually(
        "a's cache learns of b's write after reconnecting",
        || async { a.get(&one("A"), Some(&ann.access)).await.json()["value"] == "3" },
    )
    .await;

    // An environment deleted through b is gone on a too.
    let r = b.delete(ENV, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    eventually("a no longer serves the deleted environment", || async {
        a.get(&one("A"), Some(&ann.access)).await.status == StatusCode::NOT_FOUND
    })
    .await;
}
