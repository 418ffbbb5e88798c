use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::db_test;

db_test!(async fn an_api_key_is_shown_once_and_authenticates_as_its_user(app) {
    let s = app.register("ann@example.com").await;
    let r = app.post("/api/v1/api-keys", Some(&s.access), json!({ "name": "laptop", "expires_in_days": 30 })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("cfr_"));
    assert_eq!(v["prefix"], &token[..12]);
    assert_eq!(v["name"], "laptop");
    assert_eq!(v["read_only"], false);
    assert!(v["expires_at"].is_string());

    let me = app.get("/api/v1/auth/me", Some(token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["id"], s.user_id.as_str());

    let list = app.get("/api/v1/api-keys", Some(&s.access)).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("token").is_none(), "the token is never listed");
    assert!(!list.text().contains(token));
    assert!(items[0]["last_used_at"].is_string(), "use is recorded");
    for field in ["id", "name", "prefix", "created_at", "expires_at", "read_only"] {
        assert!(items[0].get(field).is_some(), "{field}");
    }
});

db_test!(async fn api_keys_are_listed_newest_first_page_by_page(app) {
    let s = app.register("bob@example.com").await;
    for i in 0..5 {
        app.api_key(&s, json!({ "name": format!("key-{i}") })).await;
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/api-keys?limit=2&cursor={c}"),
            None => "/api/v1/api-keys?limit=2".to_owned(),
        };
        let v = app.get(&path, Some(&s.access)).await.json();
        names.extend(v["items"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_owned()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["key-4", "key-3", "key-2", "key-1", "key-0"]);
    app.get("/api/v1/api-keys?limit=0", Some(&s.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/api/v1/api-keys?limit=abc", Some(&s.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/api/v1/api-keys?cursor=%%%", Some(&s.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_cursor");
    app.get("/api/v1/api-keys?cursor=bm9wZQ", Some(&s.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_cursor");
});

db_test!(async fn a_deleted_api_key_stops_working_at_once(app) {
    let s = app.register("cat@example.com").await;
    let (id, token) = app.api_key(&s, json!({ "name": "ci" })).await;
    let r = app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&s.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get("/api/v1/auth/me", Some(&token)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&s.access), None).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(app.get("/api/v1/api-keys", Some(&s.access)).await.json()["items"].as_array().unwrap().is_empty());
});

db_test!(async fn another_users_api_key_is_not_found(app) {
    let owner = app.register("dan@example.com").await;
    let other = app.register("eve@example.com").await;
    let (id, _) = app.api_key(&owner, json!({ "name": "mine" })).await;
    app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&other.access), None).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.post(&format!("/api/v1/api-keys/{id}/rotate"), Some(&other.access), json!({})).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.call(Method::DELETE, "/api/v1/api-keys/not-a-uuid", Some(&other.access), None).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(app.get("/api/v1/api-keys", Some(&other.access)).await.json()["items"].as_array().unwrap().is_empty());
});

db_test!(async fn rotating_without_grace_stops_the_old_token_at_once(app) {
    let s = app.register("fay@example.com").await;
    let (id, old) = app.api_key(&s, json!({ "name": "ci" })).await;
    let r = app.call(Method::POST, &format!("/api/v1/api-keys/{id}/rotate"), Some(&s.access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let new = r.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(r.json()["id"], id.as_str());
    app.get("/api/v1/auth/me", Some(&old)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(app.get("/api/v1/auth/me", Some(&new)).await.status, StatusCode::OK);
});

// Time passes here by editing the database, which a remembered credential would not see.
db_test!(async fn rotating_with_a_grace_period_keeps_the_old_token_until_it_ends(app, |c| c.access_cache_ttl_ms = 0) {
    let s = app.register("gus@example.com").await;
    let (id, old) = app.api_key(&s, json!({ "name": "ci" })).await;
    let r = app.post(&format!("/api/v1/api-keys/{id}/rotate"), Some(&s.access), json!({ "grace_period_seconds": 3600 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["previous_token_expires_at"].is_string());
    let new = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/api/v1/auth/me", Some(&old)).await.status, StatusCode::OK);
    assert_eq!(app.get("/api/v1/auth/me", Some(&new)).await.status, StatusCode::OK);
    // When the grace period is over, only the new token works.
    sqlx::query("UPDATE api_keys SET previous_expires_at = 1").execute(app.state.db.pool()).await.unwrap();
    app.get("/api/v1/auth/me", Some(&old)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(app.get("/api/v1/auth/me", Some(&new)).await.status, StatusCode::OK);
    app.post(&format!("/api/v1/api-keys/{id}/rotate"), Some(&s.access), json!({ "grace_period_seconds": 99999999 })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_grace_period");
});

db_test!(async fn an_expired_api_key_is_refused(app) {
    let s = app.register("hal@example.com").await;
    let (_, token) = app.api_key(&s, json!({ "name": "short", "expires_in_days": 1 })).await;
    sqlx::query("UPDATE api_keys SET expires_at = 1").execute(app.state.db.pool()).await.unwrap();
    app.get("/api/v1/auth/me", Some(&token)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
});

db_test!(async fn a_read_only_key_reads_but_cannot_change_anything(app) {
    let s = app.register("ida@example.com").await;
    let (id, token) = app.api_key(&s, json!({ "name": "reader", "read_only": true })).await;
    assert_eq!(app.get("/api/v1/auth/me", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(app.get("/api/v1/api-keys", Some(&token)).await.status, StatusCode::OK);
    app.post("/api/v1/api-keys", Some(&token), json!({ "name": "escalate" })).await
        .assert_error(StatusCode::FORBIDDEN, "read_only_key");
    app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&token), None).await
        .assert_error(StatusCode::FORBIDDEN, "read_only_key");
    app.post(&format!("/api/v1/api-keys/{id}/rotate"), Some(&token), json!({})).await
        .assert_error(StatusCode::FORBIDDEN, "read_only_key");
    let items = app.get("/api/v1/api-keys", Some(&s.access)).await.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "nothing was created or revoked");
    assert_eq!(items[0]["read_only"], true);
});

db_test!(async fn bad_api_key_requests_are_refused(app) {
    let s = app.register("jo@example.com").await;
    app.post("/api/v1/api-keys", Some(&s.access), json!({ "name": "" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
    app.post("/api/v1/api-keys", Some(&s.access), json!({ "name": "x", "expires_in_days": 0 })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry");
    app.post("/api/v1/api-keys", Some(&s.access), json!({ "name": "x", "expires_in_days": "soon" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.post("/api/v1/api-keys", Some(&s.access), json!({ "nme": "typo" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.post("/api/v1/api-keys", None, json!({ "name": "x" })).await.assert_error(StatusCode::UNAUTHORIZED, "missing_credentials");
    assert!(app.get("/api/v1/api-keys", Some(&s.access)).await.json()["items"].as_array().unwrap().is_empty());
});

db_test!(async fn an_api_key_can_neither_create_nor_rotate_api_keys(app) {
    let s = app.register("kim@example.com").await;
    let (id, key) = app.api_key(&s, json!({ "name": "ci", "expires_in_days": 1 })).await;
    let m = app.post("/api/v1/api-keys", Some(&key), json!({ "name": "forever" })).await
        .assert_error(StatusCode::FORBIDDEN, "session_required");
    assert!(m.contains("login session"), "{m}");
    app.post(&format!("/api/v1/api-keys/{id}/rotate"), Some(&key), json!({})).await
        .assert_error(StatusCode::FORBIDDEN, "session_required");
    // Nothing was made or changed: one key, its token still the same.
    let items = app.get("/api/v1/api-keys", Some(&s.access)).await.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["prefix"], &key[..12]);
    let actions: Vec<String> = app.audit_events(&s.access, "api_key.created").await.iter()
        .chain(app.audit_events(&s.access, "api_key.rotated").await.iter())
        .map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions, ["api_key.created"]);
    // The key still reads, lists and can revoke itself.
    assert_eq!(app.get("/api/v1/api-keys", Some(&key)).await.status, StatusCode::OK);
    assert_eq!(app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&key), None).await.status, StatusCode::NO_CONTENT);
});
