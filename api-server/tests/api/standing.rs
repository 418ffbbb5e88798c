//! A caller's standing (organization role, project role directly or through teams, the
//! environment's policy for that role) is loaded in one query per request: each case where a
//! join could pick up the wrong row answers exactly as the rules say.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Session, TestApp, db_test};

fn secret_url(org: &str, project: &str, env: &str, key: &str) -> String {
    format!("/api/v1/orgs/{org}/projects/{project}/environments/{env}/secrets/{key}")
}

/// Writes `KEY = value` into `org/project/env` as `by`.
async fn put_secret(app: &TestApp, by: &Session, org: &str, project: &str, env: &str, value: &str) {
    let r = app
        .put(
            &secret_url(org, project, env, "KEY"),
            Some(&by.access),
            json!({ "value": value }),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
}

async fn set_policy(app: &TestApp, by: &Session, env: &str, role: &str, access: &str) {
    let r = app
        .put(
            &format!("/api/v1/orgs/acme/projects/web/environments/{env}/policies/{role}"),
            Some(&by.access),
            json!({ "access": access }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

/// The value of `KEY` read by `token` at `org/project/env`, or the error status.
async fn read(
    app: &TestApp,
    token: &str,
    org: &str,
    project: &str,
    env: &str,
) -> Result<String, StatusCode> {
    let r = app
        .get(&secret_url(org, project, env, "KEY"), Some(token))
        .await;
    if r.status == StatusCode::OK {
        Ok(r.json()["value"].as_str().unwrap().to_owned())
    } else {
        r.assert_error(
            r.status,
            if r.status == StatusCode::NOT_FOUND {
                "not_found"
            } else {
                "forbidden"
            },
        );
        Err(r.status)
    }
}

db_test!(async fn a_removed_member_is_refused_at_once_even_with_a_grant_left_behind(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    put_secret(&app, &ann, "acme", "web", "production", "acme-web-production").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    app.grant(&ann, "acme", "web", &bob, "developer").await;
    let (_, key) = app.api_key(&bob, json!({ "name": "laptop" })).await;
    for token in [&bob.access, &key] {
        assert_eq!(read(&app, token, "acme", "web", "production").await.as_deref(), Ok("acme-web-production"));
    }

    let r = app.delete(&format!("/api/v1/orgs/acme/members/{}", bob.user_id), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    // A project grant that outlived the membership (written behind the API's back) gives nothing.
    sqlx::query(
        "INSERT INTO project_grants (id, project_id, user_id, role, created_at) \
         SELECT $1, id, $2, 'admin', 0 FROM projects WHERE slug = 'web'",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&bob.user_id)
    .execute(app.state.db.pool())
    .await
    .unwrap();
    for token in [&bob.access, &key] {
        assert_eq!(read(&app, token, "acme", "web", "production").await, Err(StatusCode::NOT_FOUND));
        app.get("/api/v1/orgs/acme/projects/web", Some(token)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
});

db_test!(async fn a_project_of_the_same_slug_in_another_organization_is_never_reached(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    put_secret(&app, &ann, "acme", "web", "production", "acme-web").await;
    let zed = app.register("zed@example.com").await;
    app.org(&zed, "globex").await;
    app.project(&zed, "globex", "web").await;
    put_secret(&app, &zed, "globex", "web", "production", "globex-web").await;

    // Bob is a plain member of acme and an admin of globex's `web`.
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let r = app.post("/api/v1/orgs/globex/invitations", Some(&zed.access), json!({ "email": "bob@example.com", "role": "member" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let invitation = r.json()["token"].as_str().unwrap().to_owned();
    let r = app.call(Method::POST, &format!("/api/v1/invitations/{invitation}/accept"), Some(&bob.access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    app.grant(&zed, "globex", "web", &bob, "admin").await;

    assert_eq!(read(&app, &bob.access, "globex", "web", "production").await.as_deref(), Ok("globex-web"));
    assert_eq!(read(&app, &bob.access, "acme", "web", "production").await, Err(StatusCode::NOT_FOUND));
    app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // Each owner reads their own organization's value, and nothing of the other's.
    assert_eq!(read(&app, &ann.access, "acme", "web", "production").await.as_deref(), Ok("acme-web"));
    assert_eq!(read(&app, &zed.access, "globex", "web", "production").await.as_deref(), Ok("globex-web"));
    assert_eq!(read(&app, &zed.access, "acme", "web", "production").await, Err(StatusCode::NOT_FOUND));

    // A globex service token for its `web` reaches nothing in acme's `web`.
    let (_, token) = app.service_token(&zed, "globex", json!({
        "name": "ci", "project": "web", "environments": ["production"], "access": "read-write",
    })).await;
    assert_eq!(read(&app, &token, "globex", "web", "production").await.as_deref(), Ok("globex-web"));
    assert_eq!(read(&app, &token, "acme", "web", "production").await, Err(StatusCode::NOT_FOUND));
});

db_test!(async fn an_environment_of_the_same_slug_in_another_project_is_never_reached(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    app.project(&ann, "acme", "api").await;
    put_secret(&app, &ann, "acme", "web", "production", "web-production").await;
    put_secret(&app, &ann, "acme", "api", "production", "api-production").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    app.grant(&ann, "acme", "api", &bob, "developer").await;

    assert_eq!(read(&app, &bob.access, "acme", "api", "production").await.as_deref(), Ok("api-production"));
    assert_eq!(read(&app, &bob.access, "acme", "web", "production").await, Err(StatusCode::NOT_FOUND));
    assert_eq!(read(&app, &ann.access, "acme", "web", "production").await.as_deref(), Ok("web-production"));

    // A token for api's production only: web's production (same slug) and api's staging are out.
    let (_, token) = app.service_token(&ann, "acme", json!({
        "name": "ci", "project": "api", "environments": ["production"], "access": "read",
    })).await;
    assert_eq!(read(&app, &token, "acme", "api", "production").await.as_deref(), Ok("api-production"));
    assert_eq!(read(&app, &token, "acme", "web", "production").await, Err(StatusCode::NOT_FOUND));
    put_secret(&app, &ann, "acme", "api", "staging", "api-staging").await;
    assert_eq!(read(&app, &token, "acme", "api", "staging").await, Err(StatusCode::FORBIDDEN));
});

db_test!(async fn only_the_policy_for_the_callers_strongest_role_in_that_environment_applies(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    put_secret(&app, &ann, "acme", "web", "production", "web-production").await;
    put_secret(&app, &ann, "acme", "web", "staging", "web-staging").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    app.grant(&ann, "acme", "web", &bob, "viewer").await;

    // Policies of other roles, and of bob's role in another environment, change nothing.
    set_policy(&app, &ann, "production", "developer", "none").await;
    set_policy(&app, &ann, "production", "admin", "none").await;
    set_policy(&app, &ann, "staging", "viewer", "none").await;
    assert_eq!(read(&app, &bob.access, "acme", "web", "production").await.as_deref(), Ok("web-production"));
    assert_eq!(read(&app, &bob.access, "acme", "web", "staging").await, Err(StatusCode::FORBIDDEN));

    // Through a developer team bob's strongest role is developer: the developer policy applies,
    // not the viewer one, whichever of his grants is direct.
    let r = app.post("/api/v1/orgs/acme/teams", Some(&ann.access), json!({ "slug": "devs", "name": "Devs" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = app.call(Method::PUT, &format!("/api/v1/orgs/acme/teams/devs/members/{}", bob.user_id), Some(&ann.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let r = app.put("/api/v1/orgs/acme/projects/web/access/teams/devs", Some(&ann.access), json!({ "role": "developer" })).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    set_policy(&app, &ann, "production", "viewer", "read").await;
    assert_eq!(read(&app, &bob.access, "acme", "web", "production").await, Err(StatusCode::FORBIDDEN));
    assert_eq!(read(&app, &bob.access, "acme", "web", "staging").await.as_deref(), Ok("web-staging"));

    set_policy(&app, &ann, "production", "developer", "read").await;
    assert_eq!(read(&app, &bob.access, "acme", "web", "production").await.as_deref(), Ok("web-production"));
    let r = app.put(&secret_url("acme", "web", "production", "KEY"), Some(&bob.access), json!({ "value": "x" })).await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden");
    // Owners and admins of the organization are never held back by a project policy.
    assert_eq!(read(&app, &ann.access, "acme", "web", "production").await.as_deref(), Ok("web-production"));
});
