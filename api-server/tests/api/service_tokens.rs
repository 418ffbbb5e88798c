use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{Session, TestApp, db_test};

const WEB: &str = "/api/v1/orgs/acme/projects/web/environments";

async fn setup(app: &TestApp) -> Session {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    app.project(&ann, "acme", "billing").await;
    for env in ["development", "production"] {
        let r = app
            .post(
                &format!("{WEB}/{env}/secrets"),
                Some(&ann.access),
                json!({ "key": "K", "value": format!("{env}-value") }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    ann
}

db_test!(async fn a_service_token_reads_only_its_project_and_environments(app) {
    let ann = setup(&app).await;
    let r = app.post("/api/v1/orgs/acme/service-tokens", Some(&ann.access), json!({
        "name": "operator", "project": "web", "environments": ["development"], "access": "read", "expires_in_days": 30
    })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    let t = v["token"].as_str().unwrap().to_owned();
    assert!(t.starts_with("cfr_"));
    assert_eq!((v["project"].as_str(), v["access"].as_str()), (Some("web"), Some("read")));
    assert_eq!(v["environments"], json!(["development"]));

    let dev = app.get(&format!("{WEB}/development/secrets"), Some(&t)).await;
    assert_eq!(dev.status, StatusCode::OK, "{}", dev.text());
    assert_eq!(dev.json()["secrets"][0]["value"], "development-value");
    assert_eq!(app.get(&format!("{WEB}/development/secrets/K"), Some(&t)).await.status, StatusCode::OK);
    app.get(&format!("{WEB}/production/secrets"), Some(&t)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get("/api/v1/orgs/acme/projects/billing/environments/development/secrets", Some(&t)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/api/v1/orgs/acme/projects/billing", Some(&t)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/api/v1/orgs/acme/projects/web", Some(&t)).await.status, StatusCode::OK);
    assert_eq!(app.get("/api/v1/orgs/acme", Some(&t)).await.status, StatusCode::OK);
    // Writes, and everything that is not secrets, are refused.
    app.post(&format!("{WEB}/development/secrets"), Some(&t), json!({ "key": "X", "value": "y" })).await.assert_error(StatusCode::FORBIDDEN, "read_only_token");
    app.get("/api/v1/auth/me", Some(&t)).await.assert_error(StatusCode::FORBIDDEN, "user_required");
    app.get("/api/v1/orgs/acme/members", Some(&t)).await.assert_error(StatusCode::FORBIDDEN, "user_required");
    app.get("/api/v1/orgs/acme/service-tokens", Some(&t)).await.assert_error(StatusCode::FORBIDDEN, "user_required");
    // Use is recorded; the token is never listed.
    let list = app.get("/api/v1/orgs/acme/service-tokens", Some(&ann.access)).await;
    assert!(!list.text().contains(&t));
    assert!(list.json()["items"][0]["last_used_at"].is_string());
    // Reads by a token are audited under the token.
    let audit = app.get("/api/v1/orgs/acme/audit-events?action=secrets.read", Some(&ann.access)).await.json();
    assert!(audit["items"].as_array().unwrap().iter().any(|e| e["actor"]["type"] == "service_token" && e["actor"]["id"] == v["id"]));
});

db_test!(async fn a_read_write_service_token_writes_in_its_environments_only(app) {
    let ann = setup(&app).await;
    let (_, t) = app.service_token(&ann, "acme", json!({ "name": "ci", "project": "web", "environments": ["development", "staging"], "access": "read-write" })).await;
    let r = app.put(&format!("{WEB}/development/secrets/K"), Some(&t), json!({ "value": "from-ci" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(app.get(&format!("{WEB}/development/secrets/K"), Some(&ann.access)).await.json()["value"], "from-ci");
    app.put(&format!("{WEB}/production/secrets/K"), Some(&t), json!({ "value": "x" })).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post("/api/v1/orgs/acme/projects/web/rotate-key", Some(&t), json!({})).await.assert_error(StatusCode::FORBIDDEN, "user_required");
    app.post("/api/v1/orgs/acme/projects", Some(&t), json!({ "name": "x", "slug": "x" })).await.assert_error(StatusCode::FORBIDDEN, "user_required");
});

// Time passes here by editing the database, which a remembered credential would not see.
db_test!(async fn revoking_rotating_and_expiry_end_a_service_token(app, |c| c.access_cache_ttl_ms = 0) {
    let ann = setup(&app).await;
    let read = |t: &str| {
        let (app, t) = (&app, t.to_owned());
        async move { app.get(&format!("{WEB}/development/secrets"), Some(&t)).await }
    };
    let (id, old) = app.service_token(&ann, "acme", json!({ "name": "a", "project": "web", "environments": ["development"], "access": "read" })).await;
    let r = app.post(&format!("/api/v1/orgs/acme/service-tokens/{id}/rotate"), Some(&ann.access), json!({ "grace_period_seconds": 60 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let new = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(read(&old).await.status, StatusCode::OK, "the old secret works during the grace period");
    assert_eq!(read(&new).await.status, StatusCode::OK);
    sqlx::query("UPDATE service_tokens SET previous_expires_at = 1").execute(app.state.db.pool()).await.unwrap();
    read(&old).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(app.delete(&format!("/api/v1/orgs/acme/service-tokens/{id}"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    read(&new).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.delete(&format!("/api/v1/orgs/acme/service-tokens/{id}"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");

    let (_, expiring) = app.service_token(&ann, "acme", json!({ "name": "b", "project": "web", "environments": ["development"], "access": "read", "expires_in_days": 1 })).await;
    sqlx::query("UPDATE service_tokens SET expires_at = 1").execute(app.state.db.pool()).await.unwrap();
    read(&expiring).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    let events = app.get("/api/v1/orgs/acme/audit-events", Some(&ann.access)).await.json();
    let actions: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["service_token.created", "service_token.rotated", "service_token.revoked"] {
        assert!(actions.contains(&a), "{a}");
    }
});

db_test!(async fn only_owners_and_admins_manage_service_tokens_and_bad_requests_are_refused(app) {
    let ann = setup(&app).await;
    let member = app.member(&ann, "acme", "mem@example.com", "member").await;
    let body = json!({ "name": "t", "project": "web", "environments": ["development"], "access": "read" });
    app.post("/api/v1/orgs/acme/service-tokens", Some(&member.access), body.clone()).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get("/api/v1/orgs/acme/service-tokens", Some(&member.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let admin = app.member(&ann, "acme", "adm@example.com", "admin").await;
    app.service_token(&admin, "acme", body).await;
    let post = |b: serde_json::Value| app.post("/api/v1/orgs/acme/service-tokens", Some(&ann.access), b);
    post(json!({ "name": "t", "project": "nope", "environments": ["development"], "access": "read" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_project");
    post(json!({ "name": "t", "project": "web", "environments": ["qa"], "access": "read" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_environment");
    post(json!({ "name": "t", "project": "web", "environments": [], "access": "read" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "no_environments");
    post(json!({ "name": "t", "project": "web", "environments": ["development"], "access": "all" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    post(json!({ "name": "t", "project": "web", "environments": ["development"], "access": "read", "expires_in_days": 0 })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry");
    assert_eq!(app.get("/api/v1/orgs/acme/service-tokens", Some(&ann.access)).await.json()["items"].as_array().unwrap().len(), 1);
});
