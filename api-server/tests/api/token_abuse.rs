//! Forged and misused access tokens, and raced refresh tokens: what a holder of a stolen or
//! hand-made token may try. Expired, tampered, unsigned (`alg: none`, empty signature) and
//! foreign-key tokens are in `auth.rs`; logout, a password change and a replayed refresh token
//! in `sessions.rs`.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, db_test};

fn now() -> i64 {
    coffer_server::ids::Timestamp::now().millis() / 1000
}

/// The claims of `access`, as its payload says (not verified).
fn claims_of(access: &str) -> Value {
    let payload = access.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// `header.payload.signature`, the signature an HMAC-SHA-256 with the server's own secret
/// whatever the header says.
fn hs256_with_header(app: &TestApp, header: &Value, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(app.state.keys.jwt_secret.expose_secret().as_bytes())
            .unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// A token signed properly (HS256, the server's secret) with `claims`.
fn signed(app: &TestApp, claims: &Value) -> String {
    sign_with(app, Algorithm::HS256, claims)
}

fn sign_with(app: &TestApp, alg: Algorithm, claims: &Value) -> String {
    let key = EncodingKey::from_secret(app.state.keys.jwt_secret.expose_secret().as_bytes());
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

async fn refused(app: &TestApp, token: &str, code: &str) {
    app.get("/api/v1/auth/me", Some(token))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, code);
}

db_test!(async fn tokens_signed_or_labelled_with_another_algorithm_are_refused(app) {
    let s = app.register("ada@example.com").await;
    let claims = claims_of(&s.access);
    // The same claims, HS256 and the server's secret: accepted (the control).
    assert_eq!(app.get("/api/v1/auth/me", Some(&signed(&app, &claims))).await.status, StatusCode::OK);

    // An HMAC-SHA-256 signature under a header naming another algorithm.
    for alg in ["HS512", "HS384", "RS256", "ES256", "PS256", "EdDSA", "none", "None", "NONE", "hs256", ""] {
        let token = hs256_with_header(&app, &json!({ "alg": alg, "typ": "JWT" }), &claims);
        refused(&app, &token, "invalid_token").await;
    }
    // Properly signed with the server's secret, but under another HMAC algorithm: the algorithm
    // is pinned, not taken from the header.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        refused(&app, &sign_with(&app, alg, &claims), "invalid_token").await;
    }
    // `alg: none` with an empty, a garbage or the real signature; no header algorithm at all.
    let body = s.access.split('.').nth(1).unwrap();
    let signature = s.access.split('.').nth(2).unwrap();
    for header in [json!({ "alg": "none" }), json!({ "alg": "none", "typ": "JWT" }), json!({ "typ": "JWT" }), json!({ "alg": null })] {
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        for sig in ["", "AAAA", "garbage!", signature] {
            refused(&app, &format!("{header}.{body}.{sig}"), "invalid_token").await;
        }
    }
    // Fewer or more than three parts.
    let parts: Vec<&str> = s.access.split('.').collect();
    refused(&app, &format!("{}.{}", parts[0], parts[1]), "invalid_token").await;
    refused(&app, &format!("{}.", s.access), "invalid_token").await;
    refused(&app, &format!("{}.{}", s.access, signature), "invalid_token").await;
});

db_test!(async fn a_header_pointing_at_another_key_is_not_followed(app) {
    let s = app.register("bea@example.com").await;
    let claims = claims_of(&s.access);
    // Signed with the attacker's key, the header pointing at it (`jku`, `jwk`, `x5u`, `kid`):
    // only the server's own secret verifies.
    let attacker = EncodingKey::from_secret(b"the attacker's own key of 32 bytes!");
    let headers = [
        json!({ "jku": "https://attacker.example/jwks.json", "kid": "attacker" }),
        json!({ "kid": "../../../../dev/null" }),
        json!({ "kid": "' OR 1=1 --" }),
        json!({ "x5u": "https://attacker.example/cert.pem" }),
        json!({ "jwk": { "kty": "oct", "k": URL_SAFE_NO_PAD.encode(b"the attacker's own key of 32 bytes!") } }),
    ];
    for extra in headers {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = extra["kid"].as_str().map(str::to_owned);
        header.jku = extra["jku"].as_str().map(str::to_owned);
        header.x5u = extra["x5u"].as_str().map(str::to_owned);
        if extra.get("jwk").is_some() {
            header.jwk = serde_json::from_value(extra["jwk"].clone()).ok();
        }
        let token = jsonwebtoken::encode(&header, &claims, &attacker).unwrap();
        refused(&app, &token, "invalid_token").await;
        // The same header, the payload changed, the server's old signature kept.
        let forged = {
            let mut c = claims.clone();
            c["exp"] = json!(now() + 10 * 365 * 24 * 3600);
            let parts: Vec<&str> = token.split('.').collect();
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()), s.access.split('.').nth(2).unwrap())
        };
        refused(&app, &forged, "invalid_token").await;
    }
});

db_test!(async fn wrong_or_missing_registered_claims_are_refused(app) {
    let s = app.register("cy@example.com").await;
    let good = claims_of(&s.access);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let t = now();
    let cases: Vec<(&str, Value)> = vec![
        ("another audience", with(&|c| c["aud"] = json!("coffer-web"))),
        ("an audience list without ours", with(&|c| c["aud"] = json!(["other", "coffer"]))),
        ("no audience", with(&|c| { c.as_object_mut().unwrap().remove("aud"); })),
        ("another issuer", with(&|c| c["iss"] = json!("coffer-evil"))),
        ("the issuer in another case", with(&|c| c["iss"] = json!("Coffer"))),
        ("no issuer", with(&|c| { c.as_object_mut().unwrap().remove("iss"); })),
        ("no expiry", with(&|c| { c.as_object_mut().unwrap().remove("exp"); })),
        ("an expiry that is not a number", with(&|c| c["exp"] = json!("never"))),
        ("expired 10 s ago, beyond the 5 s leeway", with(&|c| c["exp"] = json!(t - 10))),
        ("expired at the epoch", with(&|c| c["exp"] = json!(0))),
        ("a negative expiry", with(&|c| c["exp"] = json!(-1))),
        ("not valid for another hour", with(&|c| c["nbf"] = json!(t + 3600))),
        ("no subject", with(&|c| { c.as_object_mut().unwrap().remove("sub"); })),
        ("a subject that is not a user id", with(&|c| c["sub"] = json!("admin"))),
        ("no session", with(&|c| { c.as_object_mut().unwrap().remove("sid"); })),
        ("an unknown session", with(&|c| c["sid"] = json!(coffer_server::ids::SessionId::new()))),
    ];
    for (what, claims) in cases {
        let r = app.get("/api/v1/auth/me", Some(&signed(&app, &claims))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_token", "{what}: {}", r.text());
    }
    // Within the leeway, and already valid: accepted.
    let recent = with(&|c| { c["exp"] = json!(t - 1); c["nbf"] = json!(t - 60); });
    assert_eq!(app.get("/api/v1/auth/me", Some(&signed(&app, &recent))).await.status, StatusCode::OK);
});

db_test!(async fn a_token_naming_another_users_session_or_user_is_refused(app) {
    let ann = app.register("ann@example.com").await;
    let bob = app.register("bob@example.com").await;
    let (ann_claims, bob_claims) = (claims_of(&ann.access), claims_of(&bob.access));

    // Ann's user with Bob's live session, and Bob's user with Ann's.
    let mut c = ann_claims.clone();
    c["sid"] = bob_claims["sid"].clone();
    refused(&app, &signed(&app, &c), "session_ended").await;
    let mut c = bob_claims.clone();
    c["sid"] = ann_claims["sid"].clone();
    refused(&app, &signed(&app, &c), "session_ended").await;
    // Ann's session naming a user that does not exist.
    let mut c = ann_claims.clone();
    c["sub"] = json!(coffer_server::ids::UserId::new());
    refused(&app, &signed(&app, &c), "session_ended").await;
    // The same, with the session already remembered by the server (the cache is checked too).
    for s in [&ann, &bob] {
        assert_eq!(app.get("/api/v1/auth/me", Some(&s.access)).await.status, StatusCode::OK);
    }
    let mut c = ann_claims.clone();
    c["sid"] = bob_claims["sid"].clone();
    refused(&app, &signed(&app, &c), "session_ended").await;
    // Nothing was done as Bob: his profile is untouched by a PATCH with such a token.
    let r = app.patch("/api/v1/auth/me", Some(&signed(&app, &c)), json!({ "name": "Mallory" })).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "session_ended");
    assert_eq!(app.get("/api/v1/auth/me", Some(&bob.access)).await.json()["name"], "Test User");
});

db_test!(async fn a_new_access_token_for_an_ended_session_is_refused(app) {
    // A token issued (with the server's own key) after its session ended, as one kept by a
    // thief would be re-signed: the session is checked, not only the signature.
    let s = app.register("dot@example.com").await;
    let claims = claims_of(&s.access);
    let r = app.call(axum::http::Method::POST, "/api/v1/auth/logout", Some(&s.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let mut fresh = claims.clone();
    fresh["iat"] = json!(now());
    fresh["exp"] = json!(now() + 900);
    fresh["jti"] = json!(uuid::Uuid::new_v4().to_string());
    refused(&app, &signed(&app, &fresh), "session_ended").await;
    refused(&app, &s.access, "session_ended").await;
});

db_test!(async fn a_refresh_token_raced_by_two_requests_works_once_and_ends_the_session(app) {
    app.register("eli@example.com").await;
    for round in 0..3 {
        let s = app.login("eli@example.com", PASSWORD).await.json();
        let refresh = s["refresh_token"].as_str().unwrap();
        let body = json!({ "refresh_token": refresh });
        let (a, b) = tokio::join!(
            app.post("/api/v1/auth/refresh", None, body.clone()),
            app.post("/api/v1/auth/refresh", None, body.clone()),
        );
        let (won, lost) = match (a.status, b.status) {
            (StatusCode::OK, StatusCode::UNAUTHORIZED) => (a, b),
            (StatusCode::UNAUTHORIZED, StatusCode::OK) => (b, a),
            _ => panic!("round {round}: exactly one refresh succeeds: {} {} / {} {}", a.status, a.text(), b.status, b.text()),
        };
        lost.assert_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");
        // The reuse ended the session: the winner's new tokens, and the old access token, fail.
        let new = won.json();
        refused(&app, new["access_token"].as_str().unwrap(), "session_ended").await;
        refused(&app, s["access_token"].as_str().unwrap(), "session_ended").await;
        app.post("/api/v1/auth/refresh", None, json!({ "refresh_token": new["refresh_token"] })).await
            .assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
        app.post("/api/v1/auth/refresh", None, body).await
            .assert_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");
    }
});
