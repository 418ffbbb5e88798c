use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::db_test;

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments";

db_test!(async fn owners_and_admins_read_the_organization_audit_log_with_filters(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    app.project(&ann, "acme", "api").await;
    let admin = app.member(&ann, "acme", "adm@example.com", "admin").await;
    let member = app.member(&ann, "acme", "mem@example.com", "member").await;
    app.post(&format!("{ENV}/production/secrets"), Some(&admin.access), json!({ "key": "K", "value": "audit-secret-77" })).await;
    app.get(&format!("{ENV}/production/secrets"), Some(&ann.access)).await;
    app.get(&format!("{ENV}/staging/secrets"), Some(&ann.access)).await;
    // Another organization's events never show.
    let zed = app.register("zed@example.com").await;
    app.org(&zed, "other").await;

    let r = app.get("/api/v1/orgs/acme/audit-events?limit=200", Some(&admin.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!r.text().contains("audit-secret-77"));
    let v = r.json();
    let actions: Vec<&str> = v["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in ["org.created", "project.created", "invitation.created", "invitation.accepted", "secret.created", "secrets.read"] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    assert!(v["items"].as_array().unwrap().iter().all(|e| e["org_id"] == v["items"][0]["org_id"]));

    let by_action = app.get("/api/v1/orgs/acme/audit-events?action=secrets.read", Some(&ann.access)).await.json();
    assert_eq!(by_action["items"].as_array().unwrap().len(), 2);
    let by_env = app.get("/api/v1/orgs/acme/audit-events?project=web&environment=production", Some(&ann.access)).await.json();
    let env_actions: Vec<&str> = by_env["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(env_actions, ["secrets.read", "secret.created"]);
    let by_actor = app.get(&format!("/api/v1/orgs/acme/audit-events?actor={}&action=secret.created", admin.user_id), Some(&ann.access)).await.json();
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 1);
    let by_project = app.get("/api/v1/orgs/acme/audit-events?project=api", Some(&ann.access)).await.json();
    assert_eq!(by_project["items"].as_array().unwrap().len(), 1, "{by_project}");
    let future = app.get("/api/v1/orgs/acme/audit-events?since=2999-01-01T00:00:00Z", Some(&ann.access)).await.json();
    assert!(future["items"].as_array().unwrap().is_empty());
    let past = app.get("/api/v1/orgs/acme/audit-events?until=2000-01-01T00:00:00Z", Some(&ann.access)).await.json();
    assert!(past["items"].as_array().unwrap().is_empty());
    let page = app.get("/api/v1/orgs/acme/audit-events?limit=2", Some(&ann.access)).await.json();
    let next = page["next_cursor"].as_str().unwrap();
    let page2 = app.get(&format!("/api/v1/orgs/acme/audit-events?limit=2&cursor={next}"), Some(&ann.access)).await.json();
    assert_ne!(page["items"][0]["id"], page2["items"][0]["id"]);

    app.get("/api/v1/orgs/acme/audit-events", Some(&member.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get("/api/v1/orgs/acme/audit-events", Some(&zed.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/api/v1/orgs/acme/audit-events?since=yesterday", Some(&ann.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/api/v1/orgs/acme/audit-events?environment=production", Some(&ann.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
});
