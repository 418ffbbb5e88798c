use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, db_test};

db_test!(async fn a_refresh_token_rotates_and_the_new_tokens_work(app) {
    let s = app.register("ann@example.com").await;
    let r = app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    let refresh = v["refresh_token"].as_str().unwrap();
    assert_ne!(refresh, s.refresh);
    assert_eq!(app.get("/api/v1/auth/me", v["access_token"].as_str()).await.status, StatusCode::OK);
    let again = app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": refresh })).await;
    assert_eq!(again.status, StatusCode::OK);
});

db_test!(async fn reusing_a_rotated_refresh_token_ends_the_whole_session(app) {
    let s = app.register("bob@example.com").await;
    let next = app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await.json();
    let newest_refresh = next["refresh_token"].as_str().unwrap();
    let newest_access = next["access_token"].as_str().unwrap();

    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await
        .assert_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": newest_refresh })).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.get("/api/v1/auth/me", Some(newest_access)).await.assert_error(StatusCode::UNAUTHORIZED, "session_ended");
    app.get("/api/v1/auth/me", Some(&s.access)).await.assert_error(StatusCode::UNAUTHORIZED, "session_ended");

    // Other sessions of the same user are not affected; the reuse is in the user's audit trail.
    let other = app.login("bob@example.com", PASSWORD).await.json();
    let events = app.get("/api/v1/audit-events", other["access_token"].as_str()).await.json();
    assert!(events["items"].as_array().unwrap().iter().any(|e| e["action"] == "auth.refresh_reuse_detected"));
});

db_test!(async fn an_unknown_or_malformed_refresh_token_is_401(app) {
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": "cfrt_nothing" })).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": 42 })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.post("/api/v1/auth/refresh", None, json!({})).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
});

db_test!(async fn a_refresh_token_past_its_lifetime_is_refused(app) {
    let s = app.register("cat@example.com").await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = 0").execute(app.state.db.pool()).await.unwrap();
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
});

db_test!(async fn a_session_past_its_absolute_lifetime_ends(app) {
    let s = app.register("dee@example.com").await;
    sqlx::query("UPDATE sessions SET expires_at = 0").execute(app.state.db.pool()).await.unwrap();
    app.state.sessions.invalidate_all();
    app.get("/api/v1/auth/me", Some(&s.access)).await.assert_error(StatusCode::UNAUTHORIZED, "session_ended");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
});

db_test!(async fn logout_ends_the_session_at_once(app) {
    let s = app.register("eve@example.com").await;
    assert_eq!(app.get("/api/v1/auth/me", Some(&s.access)).await.status, StatusCode::OK);
    let r = app.call(Method::POST, "/api/v1/auth/logout", Some(&s.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get("/api/v1/auth/me", Some(&s.access)).await.assert_error(StatusCode::UNAUTHORIZED, "session_ended");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.call(Method::POST, "/api/v1/auth/logout", None, None).await.assert_error(StatusCode::UNAUTHORIZED, "missing_credentials");
});

db_test!(async fn changing_the_password_ends_every_other_session_at_once(app) {
    let a = app.register("fox@example.com").await;
    let b = app.login("fox@example.com", PASSWORD).await.json();
    let b_access = b["access_token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/auth/me", Some(b_access)).await.status, StatusCode::OK);
    let r = app.call(
        Method::PUT,
        "/api/v1/auth/change-password",
        Some(&a.access),
        Some(json!({ "current_password": PASSWORD, "new_password": "an entirely new passphrase 7" })),
    ).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get("/api/v1/auth/me", Some(b_access)).await.assert_error(StatusCode::UNAUTHORIZED, "session_ended");
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": b["refresh_token"] })).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(app.get("/api/v1/auth/me", Some(&a.access)).await.status, StatusCode::OK);
});

db_test!(async fn api_keys_cannot_log_out_or_change_the_password(app) {
    let s = app.register("gil@example.com").await;
    let (_, key) = app.api_key(&s, json!({ "name": "ci" })).await;
    app.call(Method::POST, "/api/v1/auth/logout", Some(&key), None).await.assert_error(StatusCode::FORBIDDEN, "session_required");
    app.call(
        Method::PUT,
        "/api/v1/auth/change-password",
        Some(&key),
        Some(json!({ "current_password": PASSWORD, "new_password": "an entirely new passphrase 7" })),
    ).await.assert_error(StatusCode::FORBIDDEN, "session_required");
    assert_eq!(app.login("gil@example.com", PASSWORD).await.status, StatusCode::OK);
});

/// Polls `app` with `access` until it is refused (a guard against hanging, not a measure).
async fn refused_within_5_s(app: &TestApp, access: &str) {
    for _ in 0..100 {
        let r = app.get("/api/v1/auth/me", Some(access)).await;
        if r.status == StatusCode::UNAUTHORIZED {
            r.assert_error(StatusCode::UNAUTHORIZED, "session_ended");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the other replica still accepts the ended session");
}

/// With PostgreSQL, a session ended through one replica is refused by the others at once: the
/// end reaches their memory of sessions through the change channel, long before that memory's
/// time to live (here a minute) would.
#[tokio::test]
async fn a_session_ended_on_one_replica_is_refused_by_the_others() {
    let Some(a) = TestApp::postgres(|config| config.session_cache_ttl_ms = 60_000).await else {
        return;
    };
    let b = a.replica().await;
    a.wait_for_listener().await;
    b.wait_for_listener().await;
    let first = a.register("gil@example.com").await;
    let second = a.login("gil@example.com", PASSWORD).await.json();
    let second = second["access_token"].as_str().unwrap().to_owned();
    let third = a.login("gil@example.com", PASSWORD).await.json();
    let third = third["access_token"].as_str().unwrap().to_owned();
    // b remembers all three sessions.
    for access in [&first.access, &second, &third] {
        assert_eq!(
            b.get("/api/v1/auth/me", Some(access)).await.status,
            StatusCode::OK
        );
    }

    let r = a
        .call(Method::POST, "/api/v1/auth/logout", Some(&second), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    refused_within_5_s(&b, &second).await;

    let r = a.call(
        Method::PUT,
        "/api/v1/auth/change-password",
        Some(&first.access),
        Some(json!({ "current_password": PASSWORD, "new_password": "an entirely new passphrase 8" })),
    ).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    refused_within_5_s(&b, &third).await;
    assert_eq!(
        b.get("/api/v1/auth/me", Some(&first.access)).await.status,
        StatusCode::OK,
        "the session that changed the password stays"
    );
}
