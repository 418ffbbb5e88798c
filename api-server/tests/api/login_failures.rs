//! Failed password checks, not attempts, are limited: per account and client address at
//! `COFFER_LOGIN_RATE_PER_ACCOUNT`, per account from all addresses at ten times that. Client
//! addresses vary through `X-Forwarded-For` behind one trusted proxy.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, db_test};

const WRONG: &str = "not the password, not at all";

fn from(n: u32) -> String {
    format!("203.0.113.{n}")
}

/// The `limit` of every rate-limit refusal recorded.
async fn refusals(app: &TestApp) -> Vec<String> {
    let details: Vec<Option<String>> =
        sqlx::query_scalar("SELECT details FROM audit_events WHERE action = 'auth.rate_limited'")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    details
        .into_iter()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(&d.unwrap()).unwrap()["limit"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

db_test!(async fn failures_from_one_address_lock_that_address_and_the_owner_logs_in_from_another(app, |c| {
    c.trusted_proxies = Some(1);
    c.login_rate_per_account = 3;
}) {
    app.register("ann@example.com").await;
    for _ in 0..3 {
        app.login_from(&from(66), "ann@example.com", WRONG).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    for _ in 0..2 {
        let r = app.login_from(&from(66), "ann@example.com", PASSWORD).await;
        r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
    }
    assert_eq!(app.login_from(&from(1), "ann@example.com", PASSWORD).await.status, StatusCode::OK);
    // Audited once for the window, not per refused request.
    assert_eq!(refusals(&app).await, ["login_failures_per_account_ip"]);
});

db_test!(async fn a_right_password_never_spends_the_failure_budget(app, |c| {
    c.trusted_proxies = Some(1);
    c.login_rate_per_account = 2;
}) {
    let s = app.register("bob@example.com").await;
    for _ in 0..6 {
        assert_eq!(app.login_from(&from(1), "bob@example.com", PASSWORD).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        app.login_from(&from(1), "bob@example.com", WRONG).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    app.login_from(&from(1), "bob@example.com", PASSWORD).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // A right current password when changing it spends nothing either.
    let r = app.call(Method::PUT, "/api/v1/auth/change-password", Some(&s.access), Some(json!({
        "current_password": PASSWORD, "new_password": "a fresh and long passphrase 8",
    }))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
});

db_test!(async fn at_default_settings_failures_from_one_address_never_lock_the_owner_out_from_another(app, |c| {
    c.trusted_proxies = Some(1);
    c.login_rate_per_account = coffer_server::Config::defaults().login_rate_per_account;
    c.login_rate_per_ip = coffer_server::Config::defaults().login_rate_per_ip;
}) {
    app.register("cat@example.com").await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(app.login_from(&from(66), "cat@example.com", WRONG).await.status);
    }
    assert_eq!(statuses[..6], [StatusCode::UNAUTHORIZED; 5].into_iter().chain([StatusCode::TOO_MANY_REQUESTS]).collect::<Vec<_>>()[..]);
    assert!(statuses.iter().all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s)), "{statuses:?}");
    for n in 1..=3 {
        assert_eq!(app.login_from(&from(n), "cat@example.com", PASSWORD).await.status, StatusCode::OK);
    }
});

db_test!(async fn failures_from_many_addresses_lock_the_account_at_ten_times_the_per_account_rate(app, |c| {
    c.trusted_proxies = Some(1);
    c.login_rate_per_account = 1;
}) {
    let s = app.register("dan@example.com").await;
    for n in 1..=10 {
        app.login_from(&from(n), "dan@example.com", WRONG).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    for n in 11..=13 {
        let r = app.login_from(&from(n), "dan@example.com", PASSWORD).await;
        r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert!(r.headers.get("retry-after").is_some());
    }
    assert_eq!(refusals(&app).await, ["login_failures_per_account"]);
    // The refusal is in the owner's own audit trail.
    assert_eq!(app.audit_events(&s.access, "auth.rate_limited").await.len(), 1);
    // Unknown accounts are limited alike, so a refusal tells nothing about an account.
    for n in 1..=10 {
        app.login_from(&from(n), "nobody@example.com", WRONG).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    app.login_from(&from(11), "nobody@example.com", WRONG).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
});

db_test!(async fn wrong_current_passwords_count_like_failed_logins(app, |c| {
    c.trusted_proxies = Some(1);
    c.login_rate_per_account = 2;
}) {
    // Without the header the test router's peer address is the client's.
    let s = app.register("eve@example.com").await;
    let change = |current: &'static str| app.call(Method::PUT, "/api/v1/auth/change-password", Some(&s.access), Some(json!({
        "current_password": current, "new_password": "a fresh and long passphrase 8",
    })));
    for _ in 0..2 {
        change(WRONG).await.assert_error(StatusCode::FORBIDDEN, "wrong_password");
    }
    change(PASSWORD).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    app.login("eve@example.com", PASSWORD).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Nothing changed, and the owner still logs in from elsewhere.
    assert_eq!(app.login_from(&from(1), "eve@example.com", PASSWORD).await.status, StatusCode::OK);
});
