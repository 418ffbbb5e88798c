use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, db_test};

db_test!(async fn the_audit_trail_records_every_auth_event_without_secrets(app) {
    let s = app.register("ann@example.com").await;
    app.login("ann@example.com", "wrong wrong wrong wrong").await;
    let login = app.login("ann@example.com", PASSWORD).await.json();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refreshed = app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": login["refresh_token"] })).await.json();
    let (id, key) = app.api_key(&s, json!({ "name": "ci" })).await;
    let rotated = app.post(&format!("/api/v1/api-keys/{id}/rotate"), Some(&access), json!({})).await.json();
    app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&access), None).await;
    app.call(Method::PUT, "/api/v1/auth/change-password", Some(&s.access), Some(json!({
        "current_password": PASSWORD, "new_password": "another long passphrase 99"
    }))).await;
    assert_eq!(app.call(Method::POST, "/api/v1/auth/logout", Some(&s.access), None).await.status, StatusCode::NO_CONTENT);

    let fresh = app.login("ann@example.com", "another long passphrase 99").await.json();
    let r = app.get("/api/v1/audit-events?limit=200", fresh["access_token"].as_str()).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let items = v["items"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = items.iter().map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect();
    for expected in [
        ("auth.register", "success"),
        ("auth.login", "failure"),
        ("auth.login", "success"),
        ("auth.refresh", "success"),
        ("api_key.created", "success"),
        ("api_key.rotated", "success"),
        ("api_key.revoked", "success"),
        ("auth.password_changed", "success"),
        ("auth.logout", "success"),
    ] {
        assert!(seen.contains(&expected), "{expected:?} missing from {seen:?}");
    }
    // Newest first, with actor, address and user agent.
    assert_eq!(seen[0], ("auth.login", "success"));
    let ids: Vec<&str> = items.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);
    let created = items.iter().find(|e| e["action"] == "api_key.created").unwrap();
    assert_eq!(created["actor"]["type"], "user");
    assert_eq!(created["actor"]["id"], s.user_id.as_str());
    assert_eq!(created["target"]["type"], "api_key");
    assert_eq!(created["client_ip"], "192.0.2.10");
    assert!(created["occurred_at"].is_string());

    let text = r.text();
    for secret in [PASSWORD, "another long passphrase 99", s.refresh.as_str(), s.access.as_str(), key.as_str(), rotated["token"].as_str().unwrap(), refreshed["refresh_token"].as_str().unwrap()] {
        assert!(!text.contains(secret), "the audit trail contains a secret");
    }
});

db_test!(async fn audit_events_are_private_to_their_user_and_paginated(app) {
    let a = app.register("bob@example.com").await;
    let b = app.register("cat@example.com").await;
    for _ in 0..3 {
        app.login("bob@example.com", PASSWORD).await;
    }
    let theirs = app.get("/api/v1/audit-events", Some(&b.access)).await.json();
    let items = theirs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{theirs}");
    assert_eq!(items[0]["action"], "auth.register");

    let first = app.get("/api/v1/audit-events?limit=3", Some(&a.access)).await.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app.get(&format!("/api/v1/audit-events?limit=3&cursor={cursor}"), Some(&a.access)).await.json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    assert_eq!(second["items"][0]["action"], "auth.register");
    app.get("/api/v1/audit-events", None).await.assert_error(StatusCode::UNAUTHORIZED, "missing_credentials");
});
