//! Size and count caps of secret writes: entries per bulk write or import, secrets per
//! environment (also under concurrent writers), and a maximum-size import not starving others.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, TestResponse, acme_web, db_test};

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments";

fn entries(prefix: &str, n: usize) -> Value {
    let secrets: Vec<Value> = (0..n)
        .map(|i| json!({ "key": format!("{prefix}{i}"), "value": format!("v{i}") }))
        .collect();
    json!({ "secrets": secrets })
}

fn import(session: &Session, env: &str, body: String) -> Request<Body> {
    Request::post(format!("{ENV}/{env}/secrets/import?format=dotenv"))
        .header("authorization", format!("Bearer {}", session.access))
        .body(Body::from(body))
        .unwrap()
}

fn dotenv(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix}{i}=value-{i}\n")).collect()
}

async fn count(app: &TestApp, session: &Session, env: &str) -> usize {
    let r = app
        .get(
            &format!("{ENV}/{env}/secrets?resolve=false"),
            Some(&session.access),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["secrets"].as_array().unwrap().len()
}

db_test!(async fn a_bulk_write_or_import_of_more_entries_than_allowed_changes_nothing(app, |c| c.max_bulk_entries = 5) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    let m = app.put(&base, Some(&ann.access), entries("K", 6)).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_entries");
    assert_eq!(m, "a bulk write or import holds at most 5 entries; this one has 6");
    app.send(import(&ann, "development", dotenv("K", 6))).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_entries");
    assert_eq!(count(&app, &ann, "development").await, 0);
    assert_eq!(app.put(&base, Some(&ann.access), entries("K", 5)).await.status, StatusCode::OK);
    assert_eq!(app.send(import(&ann, "staging", dotenv("K", 5))).await.status, StatusCode::OK);
});

db_test!(async fn an_environment_holds_at_most_the_configured_number_of_secrets(app, |c| c.max_secrets_per_environment = 10) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    assert_eq!(app.put(&base, Some(&ann.access), entries("K", 9)).await.status, StatusCode::OK);
    let m = app.put(&base, Some(&ann.access), entries("N", 2)).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_secrets");
    assert_eq!(m, "an environment holds at most 10 secrets; delete some first");
    app.post(&base, Some(&ann.access), json!({ "key": "LAST", "value": "x" })).await;
    app.post(&base, Some(&ann.access), json!({ "key": "ONE_MORE", "value": "x" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_secrets");
    // Updating existing secrets at the cap is fine; a deleted one frees a place, and its restore
    // counts again.
    assert_eq!(app.put(&base, Some(&ann.access), entries("K", 9)).await.status, StatusCode::OK);
    assert_eq!(app.delete(&format!("{base}/K0"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.put(&format!("{base}/NEW"), Some(&ann.access), json!({ "value": "x" })).await.status, StatusCode::OK);
    app.post(&format!("{base}/K0/restore"), Some(&ann.access), json!({})).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_secrets");
    assert_eq!(count(&app, &ann, "development").await, 10);
    // Another environment has its own count.
    assert_eq!(app.put(&format!("{ENV}/staging/secrets"), Some(&ann.access), entries("K", 10)).await.status, StatusCode::OK);
});

db_test!(async fn concurrent_writers_cannot_take_an_environment_past_its_cap(app, |c| c.max_secrets_per_environment = 10) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    assert_eq!(app.put(&base, Some(&ann.access), entries("K", 8)).await.status, StatusCode::OK);
    // Each fits alone; together they would make 12.
    let (a, b) = tokio::join!(
        app.put(&base, Some(&ann.access), entries("A", 2)),
        app.put(&base, Some(&ann.access), entries("B", 2)),
    );
    let statuses = [a.status, b.status];
    assert!(statuses.contains(&StatusCode::OK), "{} / {}", a.text(), b.text());
    let refused: Vec<&TestResponse> = [&a, &b].into_iter().filter(|r| r.status != StatusCode::OK).collect();
    assert_eq!(refused.len(), 1, "{} / {}", a.text(), b.text());
    refused[0].assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_secrets");
    assert_eq!(count(&app, &ann, "development").await, 10);
});

db_test!(async fn a_maximum_size_import_is_accepted_without_blocking_another_tenants_writes(app) {
    let ann = acme_web(&app).await;
    let bob = app.register("bob@example.com").await;
    app.org(&bob, "bobco").await;
    app.project(&bob, "bobco", "api").await;
    // Exactly the default cap of 1,000 entries, while another tenant writes.
    let big = import(&ann, "development", dotenv("KEY_", 1_000));
    let other = async {
        let mut statuses = Vec::new();
        for i in 0..5 {
            let r = app.put(
                &format!("/api/v1/orgs/bobco/projects/api/environments/development/secrets/K{i}"),
                Some(&bob.access),
                json!({ "value": "v" }),
            ).await;
            statuses.push((r.status, r.text()));
        }
        statuses
    };
    let (imported, others) = tokio::join!(app.send(big), other);
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.text());
    assert_eq!(imported.json()["created"], 1_000);
    for (status, text) in others {
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    assert_eq!(count(&app, &ann, "development").await, 1_000);
    app.send(import(&ann, "staging", dotenv("KEY_", 1_001))).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "too_many_entries");
});
