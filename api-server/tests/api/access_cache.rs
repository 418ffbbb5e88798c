//! Credentials and standings are remembered for a short time (`coffer_server::access`): a read
//! then needs no query for either. A change made through this server is effective at once even
//! when everything is remembered; one made elsewhere (another replica, or by hand in the
//! database) is seen within `COFFER_ACCESS_CACHE_TTL_MS`.

use axum::http::{Method, StatusCode};
use coffer_server::ids::Timestamp;
use serde_json::json;

use crate::helpers::{Session, TestApp, acme_web, db_test};

const DEV: &str = "/api/v1/orgs/acme/projects/web/environments/development/secrets";

/// Ann owns `acme/web`, whose development environment holds `KEY`.
async fn setup(app: &TestApp) -> Session {
    let ann = acme_web(app).await;
    let r = app
        .put(
            &format!("{DEV}/KEY"),
            Some(&ann.access),
            json!({ "value": "v" }),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    ann
}

/// The status of reading `KEY` with `token`, twice, so that the second answer comes from
/// whatever the first one left in memory.
async fn read_twice(app: &TestApp, token: &str) -> StatusCode {
    let first = app.get(&format!("{DEV}/KEY"), Some(token)).await.status;
    let second = app.get(&format!("{DEV}/KEY"), Some(token)).await.status;
    assert_eq!(first, second);
    second
}

async fn read(app: &TestApp, token: &str) -> StatusCode {
    app.get(&format!("{DEV}/KEY"), Some(token)).await.status
}

/// A read-only service token for `web`'s development environment: (id, secret).
async fn service_token(app: &TestApp, by: &Session) -> (String, String) {
    app.service_token(
        by,
        "acme",
        json!({ "name": "ci", "project": "web", "environments": ["development"], "access": "read" }),
    )
    .await
}

db_test!(async fn a_revoked_service_token_is_refused_at_once_though_remembered(app) {
    let ann = setup(&app).await;
    let (id, token) = service_token(&app, &ann).await;
    assert_eq!(read_twice(&app, &token).await, StatusCode::OK);

    let r = app.delete(&format!("/api/v1/orgs/acme/service-tokens/{id}"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get(&format!("{DEV}/KEY"), Some(&token)).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
});

db_test!(async fn a_rotated_service_token_secret_stops_at_once_without_grace(app) {
    let ann = setup(&app).await;
    let (id, token) = service_token(&app, &ann).await;
    assert_eq!(read_twice(&app, &token).await, StatusCode::OK);

    let r = app.post(&format!("/api/v1/orgs/acme/service-tokens/{id}/rotate"), Some(&ann.access), json!({ "grace_period_seconds": 0 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let new = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(read(&app, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(read_twice(&app, &new).await, StatusCode::OK);
});

db_test!(async fn a_revoked_api_key_is_refused_at_once_though_remembered(app) {
    let ann = setup(&app).await;
    let (id, key) = app.api_key(&ann, json!({ "name": "laptop" })).await;
    assert_eq!(read_twice(&app, &key).await, StatusCode::OK);

    let r = app.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), Some(&ann.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get(&format!("{DEV}/KEY"), Some(&key)).await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
});

db_test!(async fn a_removed_member_is_refused_at_once_though_remembered(app) {
    let ann = setup(&app).await;
    let bob = app.member(&ann, "acme", "bob@example.com", "admin").await;
    let (_, bob_key) = app.api_key(&bob, json!({ "name": "bob" })).await;
    assert_eq!(read_twice(&app, &bob.access).await, StatusCode::OK);
    assert_eq!(read_twice(&app, &bob_key).await, StatusCode::OK);

    let r = app.delete(&format!("/api/v1/orgs/acme/members/{}", bob.user_id), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(read(&app, &bob.access).await, StatusCode::NOT_FOUND);
    assert_eq!(read(&app, &bob_key).await, StatusCode::NOT_FOUND);
});

db_test!(async fn a_lowered_role_and_a_closed_environment_take_effect_at_once(app) {
    let ann = setup(&app).await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    app.grant(&ann, "acme", "web", &bob, "developer").await;
    let grant = format!("/api/v1/orgs/acme/projects/web/access/users/{}", bob.user_id);
    assert_eq!(read_twice(&app, &bob.access).await, StatusCode::OK);

    // Developers may no longer read development.
    let policy = "/api/v1/orgs/acme/projects/web/environments/development/policies/developer";
    let r = app.put(policy, Some(&ann.access), json!({ "access": "none" })).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(read(&app, &bob.access).await, StatusCode::FORBIDDEN);

    let r = app.delete(policy, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(read_twice(&app, &bob.access).await, StatusCode::OK);

    // The grant itself goes.
    let r = app.delete(&grant, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(read(&app, &bob.access).await, StatusCode::NOT_FOUND);
});

db_test!(async fn a_deleted_project_or_environment_is_gone_at_once_though_remembered(app) {
    let ann = setup(&app).await;
    assert_eq!(read_twice(&app, &ann.access).await, StatusCode::OK);
    let staging = "/api/v1/orgs/acme/projects/web/environments/staging";
    let r = app.put(&format!("{staging}/secrets/KEY"), Some(&ann.access), json!({ "value": "s" })).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(app.get(&format!("{staging}/secrets/KEY"), Some(&ann.access)).await.status, StatusCode::OK);

    let r = app.delete(staging, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get(&format!("{staging}/secrets/KEY"), Some(&ann.access)).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    let r = app.delete("/api/v1/orgs/acme/projects/web", Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get(&format!("{DEV}/KEY"), Some(&ann.access)).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn an_environment_shows_its_current_revision_though_its_standing_is_remembered(app) {
    let ann = setup(&app).await;
    let env = "/api/v1/orgs/acme/projects/web/environments/development";
    let before = app.get(env, Some(&ann.access)).await.json()["revision"].as_i64().unwrap();
    let r = app.put(&format!("{DEV}/OTHER"), Some(&ann.access), json!({ "value": "o" })).await;
    assert!(r.status.is_success(), "{}", r.text());
    let after = app.get(env, Some(&ann.access)).await.json()["revision"].as_i64().unwrap();
    assert_eq!(after, before + 1);
});

/// Ann (see [`setup`]) and a service token read with (so it is remembered), then revoked the
/// way another replica would: in the database only.
async fn token_revoked_elsewhere(app: &TestApp) -> (Session, String) {
    let ann = setup(app).await;
    let (id, token) = service_token(app, &ann).await;
    assert_eq!(read_twice(app, &token).await, StatusCode::OK);
    revoke_elsewhere(app, &id).await;
    (ann, token)
}

/// Revokes the service token `id` in the database only.
async fn revoke_elsewhere(app: &TestApp, id: &str) {
    let done = sqlx::query("UPDATE service_tokens SET revoked_at = $1 WHERE id = $2")
        .bind(Timestamp::now())
        .bind(id)
        .execute(app.state.db.pool())
        .await
        .expect("revoke");
    assert_eq!(done.rows_affected(), 1);
}

db_test!(async fn a_revocation_made_elsewhere_is_seen_once_the_memory_expires(app, |c| c.access_cache_ttl_ms = 200) {
    let (_, token) = token_revoked_elsewhere(&app).await;
    let mut refused = false;
    for _ in 0..100 {
        if read(&app, &token).await == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "the revocation was never seen");
});

db_test!(async fn until_then_the_remembered_credential_is_used(app, |c| c.access_cache_ttl_ms = 60_000) {
    let (ann, token) = token_revoked_elsewhere(&app).await;
    assert_eq!(read(&app, &token).await, StatusCode::OK);
    // Any change through this server forgets everything.
    let r = app.patch("/api/v1/orgs/acme/projects/web", Some(&ann.access), json!({ "name": "Web" })).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(read(&app, &token).await, StatusCode::UNAUTHORIZED);
});

db_test!(async fn sign_ups_sign_ins_and_refreshes_leave_what_is_remembered_alone(app, |c| c.access_cache_ttl_ms = 60_000) {
    let (ann, token) = token_revoked_elsewhere(&app).await;
    let bob = app.register("bob@example.com").await;
    let r = app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": bob.refresh })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.post("/api/v1/auth/logout", Some(&bob.access), json!({})).await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(read(&app, &token).await, StatusCode::OK, "still remembered");
    // A password change revokes API keys: that forgets everything.
    let body = json!({ "current_password": crate::helpers::PASSWORD, "new_password": "a brand new passphrase 42" });
    let r = app.call(Method::PUT, "/api/v1/auth/change-password", Some(&ann.access), Some(body)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(read(&app, &token).await, StatusCode::UNAUTHORIZED);
});

db_test!(async fn with_no_memory_a_revocation_made_elsewhere_is_seen_at_once(app, |c| c.access_cache_ttl_ms = 0) {
    let (_, token) = token_revoked_elsewhere(&app).await;
    assert_eq!(read(&app, &token).await, StatusCode::UNAUTHORIZED);
});

db_test!(async fn a_project_created_elsewhere_is_found_though_it_was_missing_a_moment_ago(app, |c| c.access_cache_ttl_ms = 60_000) {
    let ann = setup(&app).await;
    let url = "/api/v1/orgs/acme/projects/new";
    app.get(url, Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // Created the way another replica would: in the database only.
    let org: String = sqlx::query_scalar("SELECT id FROM organizations WHERE slug = 'acme'")
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    let now = Timestamp::now();
    sqlx::query("INSERT INTO projects (id, org_id, slug, name, created_at, updated_at) VALUES ($1, $2, 'new', 'New', $3, $3)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(org)
        .bind(now)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    let r = app.get(url, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
});
