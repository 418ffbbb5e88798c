//! Password reset without email: an owner or admin issues a one-time link for a member, who sets
//! a new password with it; `coffer-server admin reset-password EMAIL` does the same for anyone.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, Session, TestApp, TestResponse, db_test};

const NEW_PASSWORD: &str = "purple elephant juggles seven oranges";

async fn issue(app: &TestApp, by: &Session, org: &str, user: &str) -> TestResponse {
    app.call(
        Method::POST,
        &format!("/api/v1/orgs/{org}/members/{user}/password-reset"),
        Some(&by.access),
        None,
    )
    .await
}

/// Issues a link as `by` for `user` of `org` and returns its token.
async fn token(app: &TestApp, by: &Session, org: &str, user: &Session) -> String {
    let r = issue(app, by, org, &user.user_id).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn redeem(app: &TestApp, token: &str, password: &str) -> TestResponse {
    app.post(
        "/api/v1/auth/password-reset",
        None,
        json!({ "token": token, "new_password": password }),
    )
    .await
}

/// Every stored audit event of `action`, as (outcome, actor type, details).
async fn audited(app: &TestApp, action: &str) -> Vec<(String, String, Option<String>)> {
    app.state.audit.flush().await.unwrap();
    sqlx::query_as(
        "SELECT outcome, actor_type, details FROM audit_events WHERE action = $1 ORDER BY id",
    )
    .bind(action)
    .fetch_all(app.state.db.pool())
    .await
    .unwrap()
}

/// Asserts that no stored audit event holds `text` in a column it could be written to.
async fn no_audit_event_holds(app: &TestApp, text: &str) {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT action || ' ' || COALESCE(details, '') || ' ' || COALESCE(target_id, '') || ' ' \
         || COALESCE(actor_id, '') || ' ' || COALESCE(user_agent, '') FROM audit_events",
    )
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert!(!row.contains(text), "an audit event holds a secret: {row}");
    }
}

db_test!(async fn an_owner_issues_a_link_with_which_the_member_sets_a_new_password_once(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let other = Session::from(&app.login("bob@example.com", PASSWORD).await.json());

    let before = coffer_server::ids::Timestamp::now();
    let r = issue(&app, &ann, "acme", &bob.user_id).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cfp_") && token.len() == 4 + 43, "{token}");
    assert_eq!(v["url"], format!("http://127.0.0.1:8080/reset-password/{token}"));
    let expires: coffer_server::ids::Timestamp = serde_json::from_value(v["expires_at"].clone()).unwrap();
    assert!((3_599..=3_601).contains(&before.seconds_until(expires)), "{}", v["expires_at"]);

    let r = redeem(&app, &token, NEW_PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());

    app.login("bob@example.com", PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(app.login("bob@example.com", NEW_PASSWORD).await.status, StatusCode::OK);
    for session in [&bob, &other] {
        assert_eq!(app.get("/api/v1/auth/me", Some(&session.access)).await.status, StatusCode::UNAUTHORIZED);
        let r = app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": session.refresh })).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    }

    // Once only, even with another strong password.
    redeem(&app, &token, "another quite long passphrase here").await.assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");
    assert_eq!(app.login("bob@example.com", NEW_PASSWORD).await.status, StatusCode::OK);

    // Audited: the issue in the organization's log, the reset and the refused reuse in bob's.
    let org_log = app.get("/api/v1/orgs/acme/audit-events?action=password.reset_issued", Some(&ann.access)).await.json();
    let issued = &org_log["items"][0];
    assert_eq!((issued["outcome"].as_str(), issued["target"]["id"].as_str()), (Some("success"), Some(bob.user_id.as_str())), "{org_log}");
    let bob_now = Session::from(&app.login("bob@example.com", NEW_PASSWORD).await.json());
    let resets = app.audit_events(&bob_now.access, "password.reset").await;
    let outcomes: Vec<&str> = resets.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["failure", "success"], "{resets:?}");
    let rows = audited(&app, "password.reset").await;
    assert!(rows[0].2.as_deref().is_some_and(|d| d.contains("\"sessions_ended\":2") && d.contains(&ann.user_id)), "{rows:?}");
    assert!(rows[1].2.as_deref().is_some_and(|d| d.contains("\"reason\":\"used\"")), "{rows:?}");
    no_audit_event_holds(&app, &token).await;
    no_audit_event_holds(&app, &token["cfp_".len()..]).await;
    no_audit_event_holds(&app, NEW_PASSWORD).await;
});

db_test!(async fn an_expired_link_is_refused_and_audited(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "viewer").await;
    let token = token(&app, &ann, "acme", &bob).await;
    let past = coffer_server::ids::Timestamp::now().minus(std::time::Duration::from_secs(1));
    sqlx::query("UPDATE password_resets SET expires_at = $1").bind(past).execute(app.state.db.pool()).await.unwrap();

    redeem(&app, &token, NEW_PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");
    assert_eq!(app.login("bob@example.com", PASSWORD).await.status, StatusCode::OK);
    assert_eq!(app.get("/api/v1/auth/me", Some(&bob.access)).await.status, StatusCode::OK, "sessions live on");
    let rows = audited(&app, "password.reset").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "failure");
    assert!(rows[0].2.as_deref().is_some_and(|d| d.contains("\"reason\":\"expired\"")), "{rows:?}");

    redeem(&app, "cfp_not-a-token-at-all", NEW_PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");
    let rows = audited(&app, "password.reset").await;
    assert!(rows[1].2.as_deref().is_some_and(|d| d.contains("\"reason\":\"unknown_token\"")), "{rows:?}");
    no_audit_event_holds(&app, &token).await;
});

db_test!(async fn a_new_link_replaces_the_earlier_one(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let first = token(&app, &ann, "acme", &bob).await;
    let second = token(&app, &ann, "acme", &bob).await;
    assert_ne!(first, second);
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM password_resets WHERE used_at IS NULL").fetch_one(app.state.db.pool()).await.unwrap();
    assert_eq!(live, 1);

    redeem(&app, &first, NEW_PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");
    assert_eq!(redeem(&app, &second, NEW_PASSWORD).await.status, StatusCode::NO_CONTENT);
});

db_test!(async fn a_weak_password_is_refused_and_the_link_still_works(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let token = token(&app, &ann, "acme", &bob).await;
    for weak in ["short", "bob@example.com"] {
        let message = redeem(&app, &token, weak).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password");
        assert!(!message.contains(weak), "{message}");
    }
    assert_eq!(app.get("/api/v1/auth/me", Some(&bob.access)).await.status, StatusCode::OK);
    assert_eq!(redeem(&app, &token, NEW_PASSWORD).await.status, StatusCode::NO_CONTENT);
});

db_test!(async fn only_owners_and_admins_issue_links_and_admins_not_for_owners(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let owner = app.member(&ann, "acme", "olga@example.com", "owner").await;
    let admin = app.member(&ann, "acme", "adam@example.com", "admin").await;
    let member = app.member(&ann, "acme", "mia@example.com", "member").await;
    let viewer = app.member(&ann, "acme", "vic@example.com", "viewer").await;

    for by in [&member, &viewer] {
        issue(&app, by, "acme", &admin.user_id).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let message = issue(&app, &admin, "acme", &owner.user_id).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("owner"), "{message}");
    for user in [&member, &viewer] {
        assert_eq!(issue(&app, &admin, "acme", &user.user_id).await.status, StatusCode::CREATED);
    }
    assert_eq!(issue(&app, &ann, "acme", &owner.user_id).await.status, StatusCode::CREATED);
    assert_eq!(issue(&app, &ann, "acme", &admin.user_id).await.status, StatusCode::CREATED);

    for by in [&ann, &admin] {
        issue(&app, by, "acme", &by.user_id).await.assert_error(StatusCode::FORBIDDEN, "own_account");
    }
    // From a login session only, like any new credential.
    let (_, key) = app.api_key(&ann, json!({ "name": "k" })).await;
    let r = app.call(Method::POST, &format!("/api/v1/orgs/acme/members/{}/password-reset", member.user_id), Some(&key), None).await;
    r.assert_error(StatusCode::FORBIDDEN, "session_required");
});

db_test!(async fn another_organizations_owner_or_a_non_member_gets_404(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let mallory = app.register("mallory@example.com").await;
    app.org(&mallory, "evil").await;

    let r = issue(&app, &mallory, "acme", &bob.user_id).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    let missing = issue(&app, &mallory, "no-such-org", &bob.user_id).await;
    assert_eq!(r.json()["error"]["message"], missing.json()["error"]["message"]);
    // In their own organization, someone who is not a member of it.
    issue(&app, &mallory, "evil", &bob.user_id).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    issue(&app, &mallory, "evil", "not-a-uuid").await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM password_resets").fetch_one(app.state.db.pool()).await.unwrap();
    assert_eq!(count, 0);
});

db_test!(async fn a_member_of_an_organization_the_issuer_does_not_manage_is_out_of_reach(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let carl = app.member(&ann, "acme", "carl@example.com", "member").await;
    // Bob also owns an organization of his own: ann taking over his account would take it too.
    app.org(&bob, "bobco").await;
    issue(&app, &ann, "acme", &bob.user_id).await.assert_error(StatusCode::FORBIDDEN, "member_of_other_organization");

    // A link issued before carl joined another organization stops working when he does.
    let token = token(&app, &ann, "acme", &carl).await;
    let dora = app.register("dora@example.com").await;
    app.org(&dora, "doraco").await;
    let r = app.post("/api/v1/orgs/doraco/invitations", Some(&dora.access), json!({ "email": "carl@example.com", "role": "viewer" })).await;
    let invitation = r.json()["token"].as_str().unwrap().to_owned();
    let r = app.call(Method::POST, &format!("/api/v1/invitations/{invitation}/accept"), Some(&carl.access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    redeem(&app, &token, NEW_PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");
    let rows = audited(&app, "password.reset").await;
    assert!(rows[0].2.as_deref().is_some_and(|d| d.contains("issuer_no_longer_entitled")), "{rows:?}");
    assert_eq!(app.login("carl@example.com", PASSWORD).await.status, StatusCode::OK);
});

db_test!(async fn redemptions_are_rate_limited_per_address(app, |c| c.login_rate_per_ip = 2) {
    for _ in 0..2 {
        redeem(&app, "cfp_guess", NEW_PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");
    }
    let r = redeem(&app, "cfp_guess", NEW_PASSWORD).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
});

const BIN: &str = env!("CARGO_BIN_EXE_coffer-server");

#[tokio::test]
async fn the_admin_reset_password_command_prints_a_link_that_works_once() {
    let app = TestApp::sqlite(|_| {}).await;
    let ann = app.register("ann@example.com").await;
    let config = app.state.config.clone();
    app.state.db.close().await;

    let run = |email: &str| {
        std::process::Command::new(BIN)
            .args(["admin", "reset-password", email])
            .env_clear()
            .env("COFFER_DATA_DIR", &config.data_dir)
            .env(
                "COFFER_DATABASE_URL",
                config.database_url.as_deref().unwrap(),
            )
            .env("COFFER_PUBLIC_URL", "https://coffer.example.com/")
            .output()
            .unwrap()
    };
    let out = run("Ann@Example.com");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the link alone on stdout: {stdout}");
    let token = lines[0]
        .strip_prefix("https://coffer.example.com/reset-password/")
        .expect("a link under the public URL");
    assert!(token.starts_with("cfp_"), "{token}");
    assert!(
        !stderr.contains(token),
        "the token reached the log: {stderr}"
    );
    assert!(stderr.contains("valid until"), "{stderr}");

    let unknown = run("nobody@example.com");
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no account has the email nobody@example.com"),
        "{err}"
    );
    assert!(unknown.stdout.is_empty());

    let app = app.replica().await;
    assert_eq!(
        redeem(&app, token, NEW_PASSWORD).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&ann.access)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("ann@example.com", NEW_PASSWORD).await.status,
        StatusCode::OK
    );
    redeem(&app, token, NEW_PASSWORD)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_reset_token");

    let issued = audited(&app, "password.reset_issued").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (issued[0].0.as_str(), issued[0].1.as_str()),
        ("success", "system")
    );
    let reset = audited(&app, "password.reset").await;
    assert!(
        reset[0]
            .2
            .as_deref()
            .is_some_and(|d| d.contains("\"issued_by\":\"system\"")),
        "{reset:?}"
    );
    no_audit_event_holds(&app, token).await;
}
