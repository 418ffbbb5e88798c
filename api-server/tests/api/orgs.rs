use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Session, TestApp, TestResponse, db_test, interleave};

db_test!(async fn creating_an_organization_makes_the_creator_its_owner(app) {
    let ann = app.register("ann@example.com").await;
    let r = app.post("/api/v1/orgs", Some(&ann.access), json!({ "name": "Acme Inc", "slug": "acme" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    assert_eq!((v["slug"].as_str(), v["name"].as_str(), v["role"].as_str()), (Some("acme"), Some("Acme Inc"), Some("owner")));

    let list = app.get("/api/v1/orgs", Some(&ann.access)).await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/api/v1/orgs/acme", Some(&ann.access)).await.json()["role"], "owner");
    let members = app.get("/api/v1/orgs/acme/members", Some(&ann.access)).await.json();
    assert_eq!(members["items"][0]["email"], "ann@example.com");
    assert_eq!(members["items"][0]["role"], "owner");
});

db_test!(async fn organization_slugs_are_validated_and_unique(app) {
    let ann = app.register("ann@example.com").await;
    for slug in ["", "Acme", "acme_inc", "a b", &"x".repeat(64)] {
        app.post("/api/v1/orgs", Some(&ann.access), json!({ "name": "A", "slug": slug })).await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug");
    }
    app.org(&ann, "acme").await;
    let bob = app.register("bob@example.com").await;
    app.post("/api/v1/orgs", Some(&bob.access), json!({ "name": "B", "slug": "acme" })).await
        .assert_error(StatusCode::CONFLICT, "slug_taken");
    app.post("/api/v1/orgs", Some(&bob.access), json!({ "name": "", "slug": "bobco" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
});

db_test!(async fn renaming_is_for_owners_and_admins(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let admin = app.member(&ann, "acme", "adm@example.com", "admin").await;
    let member = app.member(&ann, "acme", "mem@example.com", "member").await;
    let r = app.patch("/api/v1/orgs/acme", Some(&admin.access), json!({ "name": "Acme Corp" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["name"], "Acme Corp");
    app.patch("/api/v1/orgs/acme", Some(&member.access), json!({ "name": "Mine" })).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.get("/api/v1/orgs/acme", Some(&member.access)).await.json()["name"], "Acme Corp");
});

db_test!(async fn deleting_an_organization_needs_its_owner_and_its_slug_and_removes_everything(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let admin = app.member(&ann, "acme", "adm@example.com", "admin").await;
    app.delete("/api/v1/orgs/acme?confirm=acme", Some(&admin.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.delete("/api/v1/orgs/acme", Some(&ann.access)).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "confirmation_required");
    app.delete("/api/v1/orgs/acme?confirm=other", Some(&ann.access)).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "confirmation_required");
    assert_eq!(app.get("/api/v1/orgs/acme/projects/web", Some(&ann.access)).await.status, StatusCode::OK);
    for env in ["development", "staging"] {
        let r = app.put(&format!("/api/v1/orgs/acme/projects/web/environments/{env}/secrets/KEY"), Some(&ann.access), json!({ "value": "v" })).await;
        assert!(r.status.is_success(), "{}", r.text());
    }

    assert_eq!(app.delete("/api/v1/orgs/acme?confirm=acme", Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get("/api/v1/orgs/acme", Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    for table in ["projects", "environments", "org_members", "invitations", "secrets", "secret_versions", "deks"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(app.state.db.pool()).await.unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let events = app.get("/api/v1/audit-events", Some(&ann.access)).await.json();
    assert!(events["items"].as_array().unwrap().iter().any(|e| e["action"] == "org.deleted"));
});

db_test!(async fn an_invitation_is_single_use_for_the_invited_email_only(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.register("bob@example.com").await;
    let eve = app.register("eve@example.com").await;
    let r = app.post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "BOB@example.com", "role": "member" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cfi_"));
    let pending = app.get("/api/v1/orgs/acme/invitations", Some(&ann.access)).await;
    assert_eq!(pending.json()["items"][0]["email"], "bob@example.com");
    assert!(!pending.text().contains(&token), "the token is not listed");

    let accept = |who: &str| format!("/api/v1/invitations/{who}/accept");
    app.call(Method::POST, &accept(&token), Some(&eve.access), None).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = app.call(Method::POST, &accept(&token), Some(&bob.access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["slug"], "acme");
    assert_eq!(r.json()["role"], "member");
    app.call(Method::POST, &accept(&token), Some(&bob.access), None).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/api/v1/orgs/acme", Some(&eve.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/api/v1/orgs/acme", Some(&bob.access)).await.json()["role"], "member");
    assert!(app.get("/api/v1/orgs/acme/invitations", Some(&ann.access)).await.json()["items"].as_array().unwrap().is_empty());
});

db_test!(async fn a_withdrawn_or_expired_invitation_cannot_be_accepted(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.register("bob@example.com").await;
    let inv = app.post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "bob@example.com", "role": "viewer" })).await.json();
    let id = inv["id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("/api/v1/orgs/acme/invitations/{id}"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let token = inv["token"].as_str().unwrap();
    app.call(Method::POST, &format!("/api/v1/invitations/{token}/accept"), Some(&bob.access), None).await.assert_error(StatusCode::NOT_FOUND, "not_found");

    let inv = app.post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "bob@example.com", "role": "viewer" })).await.json();
    sqlx::query("UPDATE invitations SET expires_at = 1").execute(app.state.db.pool()).await.unwrap();
    let token = inv["token"].as_str().unwrap();
    app.call(Method::POST, &format!("/api/v1/invitations/{token}/accept"), Some(&bob.access), None).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "nope", "role": "viewer" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email");
    app.post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "x@example.com", "role": "emperor" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
});

db_test!(async fn the_last_owner_can_be_neither_removed_nor_demoted(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let admin = app.member(&ann, "acme", "adm@example.com", "admin").await;
    let me = format!("/api/v1/orgs/acme/members/{}", ann.user_id);
    app.patch(&me, Some(&ann.access), json!({ "role": "admin" })).await.assert_error(StatusCode::CONFLICT, "last_owner");
    app.delete(&me, Some(&ann.access)).await.assert_error(StatusCode::CONFLICT, "last_owner");
    // An admin cannot touch owners or make owners.
    app.delete(&me, Some(&admin.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.patch(&format!("/api/v1/orgs/acme/members/{}", admin.user_id), Some(&admin.access), json!({ "role": "owner" })).await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // With a second owner, the first may step down and leave.
    let r = app.patch(&format!("/api/v1/orgs/acme/members/{}", admin.user_id), Some(&ann.access), json!({ "role": "owner" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(app.patch(&me, Some(&ann.access), json!({ "role": "member" })).await.status, StatusCode::OK);
    assert_eq!(app.delete(&me, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get("/api/v1/orgs/acme", Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn admins_remove_members_and_members_leave(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let cat = app.member(&ann, "acme", "cat@example.com", "viewer").await;
    app.delete(&format!("/api/v1/orgs/acme/members/{}", cat.user_id), Some(&bob.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.delete(&format!("/api/v1/orgs/acme/members/{}", bob.user_id), Some(&bob.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&format!("/api/v1/orgs/acme/members/{}", cat.user_id), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let members = app.get("/api/v1/orgs/acme/members", Some(&ann.access)).await.json();
    assert_eq!(members["items"].as_array().unwrap().len(), 1);
    app.delete("/api/v1/orgs/acme/members/not-a-user", Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

/// Two owners, `ann` and `bob`, of `acme`; returns their sessions and member paths.
async fn two_owners(app: &TestApp) -> (Session, Session, String, String) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "owner").await;
    let ann_path = format!("/api/v1/orgs/acme/members/{}", ann.user_id);
    let bob_path = format!("/api/v1/orgs/acme/members/{}", bob.user_id);
    (ann, bob, ann_path, bob_path)
}

/// How many owners `acme` has, as read by the first of `who` who still belongs to it.
async fn owners(app: &TestApp, who: &[&Session]) -> usize {
    for session in who {
        let r = app
            .get("/api/v1/orgs/acme/members", Some(&session.access))
            .await;
        if r.status == StatusCode::OK {
            return r.json()["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "owner")
                .count();
        }
    }
    panic!("no one can read the members");
}

/// Exactly one of two responses succeeded; the other met the last-owner rule (or, no longer
/// being an owner, the owner-only rule).
#[track_caller]
fn exactly_one_succeeded(a: &TestResponse, b: &TestResponse, success: StatusCode) {
    let (ok, refused) = match (a.status == success, b.status == success) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        _ => panic!(
            "exactly one must succeed: {} {} / {} {}",
            a.status,
            a.text(),
            b.status,
            b.text()
        ),
    };
    assert_eq!(ok.status, success);
    let code = refused.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match refused.status {
        StatusCode::CONFLICT => assert_eq!(code, "last_owner", "{}", refused.text()),
        StatusCode::FORBIDDEN => assert_eq!(code, "forbidden", "{}", refused.text()),
        other => panic!("unexpected {other}: {}", refused.text()),
    }
}

db_test!(async fn two_owners_demoting_or_leaving_at_once_leave_one_owner(app) {
    let (ann, bob, ann_path, bob_path) = two_owners(&app).await;
    let (a, b) = tokio::join!(
        app.patch(&bob_path, Some(&ann.access), json!({ "role": "admin" })),
        app.patch(&ann_path, Some(&bob.access), json!({ "role": "admin" })),
    );
    exactly_one_succeeded(&a, &b, StatusCode::OK);
    assert_eq!(owners(&app, &[&ann, &bob]).await, 1);

    // The remaining owner makes the other owner again; then both leave at once.
    let (owner, other) = if a.status == StatusCode::OK { (&ann, &bob) } else { (&bob, &ann) };
    let r = app.patch(&format!("/api/v1/orgs/acme/members/{}", other.user_id), Some(&owner.access), json!({ "role": "owner" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (a, b) = tokio::join!(app.delete(&ann_path, Some(&ann.access)), app.delete(&bob_path, Some(&bob.access)));
    exactly_one_succeeded(&a, &b, StatusCode::NO_CONTENT);
    assert_eq!(owners(&app, &[&ann, &bob]).await, 1);
});

/// PostgreSQL only (SQLite has a single writer, so nothing interleaves there); skipped, saying
/// so, when `COFFER_TEST_DATABASE_URL` is not set.
#[tokio::test]
async fn an_owner_demoted_while_demoting_the_other_owner_is_refused() {
    let Some(app) = TestApp::postgres(|_| {}).await else {
        return;
    };
    let (ann, bob, ann_path, bob_path) = two_owners(&app).await;
    // Each demotion is held just before it commits (its audit event cannot be written yet).
    let holder = app.hold_lock("LOCK TABLE audit_events IN SHARE MODE").await;
    let (a, b, _) = interleave(
        holder,
        app.patch(&bob_path, Some(&ann.access), json!({ "role": "admin" })),
        app.patch(&ann_path, Some(&bob.access), json!({ "role": "admin" })),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    b.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(owners(&app, &[&ann]).await, 1);

    // Likewise two owners leaving at once: the second to decide is the last owner.
    let r = app
        .patch(&bob_path, Some(&ann.access), json!({ "role": "owner" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let holder = app.hold_lock("LOCK TABLE audit_events IN SHARE MODE").await;
    let (a, b, _) = interleave(
        holder,
        app.delete(&ann_path, Some(&ann.access)),
        app.delete(&bob_path, Some(&bob.access)),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    b.assert_error(StatusCode::CONFLICT, "last_owner");
    assert_eq!(owners(&app, &[&bob]).await, 1);
}
