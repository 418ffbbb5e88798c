use axum::http::StatusCode;

use crate::helpers::{PASSWORD, db_test};

/// The addresses the login audit events recorded, sorted.
async fn login_ips(app: &crate::helpers::TestApp, token: &str) -> Vec<String> {
    let mut ips: Vec<String> = app
        .audit_events(token, "auth.login")
        .await
        .iter()
        .map(|e| e["client_ip"].as_str().unwrap_or("none").to_owned())
        .collect();
    ips.sort();
    ips
}

db_test!(async fn a_client_chosen_leftmost_forwarded_for_entry_sets_neither_the_audit_ip_nor_the_rate_limit_bucket(app, |c| {
    c.trust_forwarded_for = true;
    c.login_rate_per_ip = 3;
}) {
    let s = app.register("ann@example.com").await;
    for spoofed in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let r = app.login_from(&format!("{spoofed}, 203.0.113.7"), "ann@example.com", PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // Whatever it claims to the left, the same client is over its per-address limit.
    let r = app.login_from("4.4.4.4, 203.0.113.7", "ann@example.com", PASSWORD).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.headers.get("retry-after").is_some());
    // Another client behind the same proxy is not.
    assert_eq!(app.login_from("4.4.4.4, 203.0.113.8", "ann@example.com", PASSWORD).await.status, StatusCode::OK);

    let ips = login_ips(&app, &s.access).await;
    assert_eq!(ips, ["203.0.113.7", "203.0.113.7", "203.0.113.7", "203.0.113.8"]);
    let limited: Vec<Option<String>> = sqlx::query_scalar("SELECT client_ip FROM audit_events WHERE action = 'auth.rate_limited'")
        .fetch_all(app.state.db.pool()).await.unwrap();
    assert_eq!(limited, [Some("203.0.113.7".to_owned())]);
});

db_test!(async fn without_trusted_proxies_the_forwarded_for_header_is_ignored(app, |c| c.login_rate_per_ip = 2) {
    let s = app.register("bob@example.com").await;
    assert_eq!(app.login_from("203.0.113.7", "bob@example.com", PASSWORD).await.status, StatusCode::OK);
    assert_eq!(app.login_from("203.0.113.8", "bob@example.com", PASSWORD).await.status, StatusCode::OK);
    app.login_from("203.0.113.9", "bob@example.com", PASSWORD).await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The test router's peer address.
    assert_eq!(login_ips(&app, &s.access).await, ["192.0.2.10", "192.0.2.10"]);
});

db_test!(async fn behind_two_trusted_proxies_the_second_entry_from_the_right_is_the_client(app, |c| c.trusted_proxies = Some(2)) {
    let s = app.register("cat@example.com").await;
    // Several header lines are one list, in order.
    let request = axum::http::Request::post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .header("x-forwarded-for", "10.0.0.2")
        .body(axum::body::Body::from(serde_json::to_vec(&serde_json::json!({ "email": "cat@example.com", "password": PASSWORD })).unwrap()))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::OK);
    // Fewer entries than proxies, or no address where the client's should be: the peer's.
    assert_eq!(app.login_from("203.0.113.7", "cat@example.com", PASSWORD).await.status, StatusCode::OK);
    assert_eq!(app.login_from("unknown, 10.0.0.2", "cat@example.com", PASSWORD).await.status, StatusCode::OK);
    assert_eq!(login_ips(&app, &s.access).await, ["192.0.2.10", "192.0.2.10", "203.0.113.7"]);
});
