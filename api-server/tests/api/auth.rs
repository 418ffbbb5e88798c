use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, db_test};

db_test!(async fn registering_returns_the_user_and_working_tokens(app) {
    let r = app.post("/api/v1/auth/register", None, json!({ "email": "  Ann@Example.COM ", "password": PASSWORD, "name": "Ann" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"]["email"], "ann@example.com");
    assert_eq!(v["user"]["name"], "Ann");
    assert!(v["user"]["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(v["user"]["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    assert!(v["refresh_token"].as_str().is_some_and(|t| t.starts_with("cfrt_")));
    assert!(v.get("password").is_none() && v["user"].get("password_hash").is_none());

    let me = app.get("/api/v1/auth/me", v["access_token"].as_str()).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["email"], "ann@example.com");
});

db_test!(async fn registering_an_email_twice_is_a_conflict_whatever_its_case(app) {
    app.register("bob@example.com").await;
    let r = app.post("/api/v1/auth/register", None, json!({ "email": "BOB@example.com", "password": PASSWORD, "name": "Bob" })).await;
    r.assert_error(StatusCode::CONFLICT, "email_taken");
});

db_test!(async fn registering_with_a_bad_email_is_refused(app) {
    for email in ["not-an-email", "a@b", "two@@example.com", ""] {
        let r = app.post("/api/v1/auth/register", None, json!({ "email": email, "password": PASSWORD, "name": "X" })).await;
        r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email");
    }
});

db_test!(async fn weak_short_and_overlong_passwords_are_refused(app) {
    let cases = [
        ("short", "weak_password"),
        ("password1234", "weak_password"),
        ("carol@example.com", "weak_password"),
        (&*"Zq9!".repeat(33), "password_too_long"),
    ];
    for (password, code) in cases {
        let r = app.post("/api/v1/auth/register", None, json!({ "email": "carol@example.com", "password": password, "name": "Carol" })).await;
        let message = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, code);
        assert!(!message.contains(password), "the message repeats the password: {message}");
    }
    let r = app.post("/api/v1/auth/register", None, json!({ "email": "carol@example.com", "password": "x", "name": "" })).await;
    r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
});

db_test!(async fn login_with_the_right_password_opens_a_new_session(app) {
    let first = app.register("dan@example.com").await;
    let r = app.login("DAN@example.com ", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"]["email"], "dan@example.com");
    assert_ne!(v["refresh_token"], first.refresh.as_str());
    assert_eq!(app.get("/api/v1/auth/me", v["access_token"].as_str()).await.status, StatusCode::OK);
});

db_test!(async fn a_wrong_password_and_an_unknown_email_get_the_same_answer(app) {
    app.register("erin@example.com").await;
    let wrong = app.login("erin@example.com", "not the right password at all").await;
    let unknown = app.login("nobody@example.com", PASSWORD).await;
    let garbage = app.login("not an email", PASSWORD).await;
    let m1 = wrong.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    let m2 = unknown.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    let m3 = garbage.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(m1, m2);
    assert_eq!(m2, m3);
});

db_test!(async fn login_rehashes_a_password_stored_with_other_parameters(app, |c| c.argon2_iterations = 3) {
    app.register("fay@example.com").await;
    // Store a hash made with the OWASP minimum, as an older server would have.
    let old = coffer_server::auth::password::PasswordHasher::new(19_456, 2, 1).unwrap();
    let old_hash = old.hash(&secrecy::SecretString::from(PASSWORD)).await.unwrap();
    sqlx::query("UPDATE users SET password_hash = $1 WHERE email = $2")
        .bind(&old_hash).bind("fay@example.com").execute(app.state.db.pool()).await.unwrap();
    assert_eq!(app.login("fay@example.com", PASSWORD).await.status, StatusCode::OK);
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind("fay@example.com").fetch_one(app.state.db.pool()).await.unwrap();
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=3,p=1$"), "{stored}");
    assert_eq!(app.login("fay@example.com", PASSWORD).await.status, StatusCode::OK);
});

db_test!(async fn me_without_valid_credentials_is_401(app) {
    app.get("/api/v1/auth/me", None).await.assert_error(StatusCode::UNAUTHORIZED, "missing_credentials");
    app.get("/api/v1/auth/me", Some("garbage")).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    app.get("/api/v1/auth/me", Some("cfr_unknownkey")).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    let basic = Request::get("/api/v1/auth/me").header("authorization", "Basic YTpi").body(Body::empty()).unwrap();
    let r = app.send(basic).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
});

db_test!(async fn expired_tampered_unsigned_and_foreign_tokens_are_refused(app) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use coffer_server::ids::{SessionId, Timestamp, UserId};
    use secrecy::ExposeSecret as _;

    let s = app.register("gus@example.com").await;
    let user: UserId = s.user_id.parse().unwrap();
    let claims = app.state.jwt.verify(&s.access).unwrap();

    let expired = app.state.jwt.issue(user, claims.sid, Timestamp::now().minus(std::time::Duration::from_secs(3600))).unwrap();
    app.get("/api/v1/auth/me", Some(expired.expose_secret())).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");

    let parts: Vec<&str> = s.access.split('.').collect();
    let mut payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["sid"] = json!(SessionId::new());
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    app.get("/api/v1/auth/me", Some(&tampered)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");

    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    app.get("/api/v1/auth/me", Some(&none)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");

    let other = coffer_server::auth::jwt::JwtKeys::new(
        &secrecy::SecretString::from("a different secret of at least 32 bytes"),
        std::time::Duration::from_secs(900),
    );
    let foreign = other.issue(user, claims.sid, Timestamp::now()).unwrap();
    app.get("/api/v1/auth/me", Some(foreign.expose_secret())).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
});

db_test!(async fn login_attempts_over_the_account_limit_get_429_with_retry_after_and_are_audited(app, |c| c.login_rate_per_account = 3) {
    let s = app.register("hal@example.com").await;
    for _ in 0..3 {
        app.login("hal@example.com", "wrong password, wrong password").await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let r = app.login("hal@example.com", PASSWORD).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = r.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another account from the same address is not affected.
    app.register("ida@example.com").await;
    assert_eq!(app.login("ida@example.com", PASSWORD).await.status, StatusCode::OK);

    let events = app.get("/api/v1/audit-events", Some(&s.access)).await.json();
    let actions: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"auth.rate_limited"), "{actions:?}");
});

db_test!(async fn login_attempts_over_the_ip_limit_get_429(app, |c| c.login_rate_per_ip = 2) {
    app.register("jo@example.com").await;
    assert_eq!(app.login("jo@example.com", PASSWORD).await.status, StatusCode::OK);
    assert_eq!(app.login("nobody@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    app.login("jo@example.com", PASSWORD).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
});

db_test!(async fn registrations_over_the_ip_limit_get_429(app, |c| c.register_rate_per_ip = 2) {
    app.register("k1@example.com").await;
    app.register("k2@example.com").await;
    let r = app.post("/api/v1/auth/register", None, json!({ "email": "k3@example.com", "password": PASSWORD, "name": "K" })).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.headers.get("retry-after").is_some());
});

db_test!(async fn refreshes_over_the_ip_limit_get_429(app, |c| c.refresh_rate_per_ip = 1) {
    let s = app.register("lou@example.com").await;
    assert_eq!(app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": s.refresh })).await.status, StatusCode::OK);
    app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": "cfrt_x" })).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
});

db_test!(async fn change_password_needs_the_current_one_and_a_strong_new_one(app) {
    let s = app.register("max@example.com").await;
    let put = |body: serde_json::Value| app.call(Method::PUT, "/api/v1/auth/change-password", Some(&s.access), Some(body));
    put(json!({ "current_password": "not my password!", "new_password": "a brand new passphrase 42" })).await
        .assert_error(StatusCode::FORBIDDEN, "wrong_password");
    put(json!({ "current_password": PASSWORD, "new_password": "password" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password");
    assert_eq!(put(json!({ "current_password": PASSWORD, "new_password": "a brand new passphrase 42" })).await.status, StatusCode::NO_CONTENT);
    app.login("max@example.com", PASSWORD).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(app.login("max@example.com", "a brand new passphrase 42").await.status, StatusCode::OK);
    // The session that changed it goes on.
    assert_eq!(app.get("/api/v1/auth/me", Some(&s.access)).await.status, StatusCode::OK);
});

db_test!(async fn changing_the_password_revokes_the_users_api_keys_by_default(app) {
    let s = app.register("ned@example.com").await;
    let (_, first) = app.api_key(&s, json!({ "name": "ci" })).await;
    let (_, second) = app.api_key(&s, json!({ "name": "laptop", "read_only": true })).await;
    let (old_id, _) = app.api_key(&s, json!({ "name": "old" })).await;
    app.call(Method::DELETE, &format!("/api/v1/api-keys/{old_id}"), Some(&s.access), None).await;
    let other = app.register("oda@example.com").await;
    let (_, others) = app.api_key(&other, json!({ "name": "ci" })).await;

    let r = app.call(Method::PUT, "/api/v1/auth/change-password", Some(&s.access), Some(json!({
        "current_password": PASSWORD, "new_password": "a brand new passphrase 42",
    }))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    for key in [&first, &second] {
        app.get("/api/v1/auth/me", Some(key)).await.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    }
    assert!(app.get("/api/v1/api-keys", Some(&s.access)).await.json()["items"].as_array().unwrap().is_empty());
    assert_eq!(app.get("/api/v1/auth/me", Some(&others)).await.status, StatusCode::OK, "another user's key is untouched");
    let changed = app.audit_events(&s.access, "auth.password_changed").await;
    assert_eq!(changed[0]["details"], json!({ "sessions_ended": 0, "api_keys_revoked": 2 }));
});

db_test!(async fn changing_the_password_may_keep_the_api_keys(app) {
    let s = app.register("pia@example.com").await;
    let (_, key) = app.api_key(&s, json!({ "name": "ci" })).await;
    let put = |body: serde_json::Value| app.call(Method::PUT, "/api/v1/auth/change-password", Some(&s.access), Some(body));
    put(json!({ "current_password": PASSWORD, "new_password": "a brand new passphrase 42", "revoke_api_keys": "no" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(app.login("pia@example.com", PASSWORD).await.status, StatusCode::OK, "a bad request changes nothing");
    let r = put(json!({ "current_password": PASSWORD, "new_password": "a brand new passphrase 42", "revoke_api_keys": false })).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(app.get("/api/v1/auth/me", Some(&key)).await.status, StatusCode::OK);
    let changed = app.audit_events(&s.access, "auth.password_changed").await;
    assert_eq!(changed[0]["details"]["api_keys_revoked"], 0);
});
