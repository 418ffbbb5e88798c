//! Every failure has the one error shape, whatever produced it.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};

use crate::helpers::db_test;

fn raw(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

db_test!(async fn malformed_json_is_400(app) {
    let r = app.send(raw(Method::POST, "/api/v1/auth/login", Some("application/json"), "{\"email\": ")).await;
    r.assert_error(StatusCode::BAD_REQUEST, "malformed_json");
});

db_test!(async fn a_body_that_is_not_json_is_415(app) {
    let r = app.send(raw(Method::POST, "/api/v1/auth/login", Some("text/plain"), "email=a")).await;
    r.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let r = app.send(raw(Method::POST, "/api/v1/auth/register", None, "{}")).await;
    r.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
});

db_test!(async fn missing_and_mistyped_fields_are_422_naming_the_field_not_the_value(app) {
    let r = app.send(raw(Method::POST, "/api/v1/auth/register", Some("application/json"), r#"{"email":"a@example.com","name":"A"}"#)).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(m.contains("password"), "{m}");
    let body = r#"{"email":"a@example.com","name":"A","password":1234567890123}"#;
    let r = app.send(raw(Method::POST, "/api/v1/auth/register", Some("application/json"), body)).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(m.contains("password") && !m.contains("1234567890123"), "{m}");
    let r = app.send(raw(Method::POST, "/api/v1/auth/login", Some("application/json"), "[]")).await;
    r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
});

db_test!(async fn an_oversize_body_is_413(app, |c| c.max_body_bytes = 4096) {
    let big = format!(r#"{{"email":"a@example.com","password":"{}","name":"A"}}"#, "x".repeat(10_000));
    let r = app.send(raw(Method::POST, "/api/v1/auth/register", Some("application/json"), big.clone())).await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Also when the length is not announced up front.
    let stream = futures::stream::iter(big.into_bytes().chunks(1000).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let r = app.send(raw(Method::POST, "/api/v1/auth/register", Some("application/json"), Body::from_stream(stream))).await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
});

db_test!(async fn an_unknown_route_is_404_and_a_wrong_method_405(app) {
    app.get("/api/v1/nothing-here", None).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = app.call(Method::DELETE, "/api/v1/auth/login", None, None).await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(r.headers.get("allow").is_some());
});

db_test!(async fn an_internal_failure_is_500_without_internals(app) {
    let s = app.register("ann@example.com").await;
    app.api_key(&s, serde_json::json!({ "name": "k" })).await;
    // Break the storage under a running server.
    sqlx::query("DROP TABLE audit_events").execute(app.state.db.pool()).await.unwrap();
    let r = app.post("/api/v1/api-keys", Some(&s.access), serde_json::json!({ "name": "fails" })).await;
    let m = r.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert_eq!(m, "internal error");
    assert!(!r.text().to_lowercase().contains("audit_events"));
    // The failed write left nothing behind: the key insert was rolled back with the audit event.
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys").fetch_one(app.state.db.pool()).await.unwrap();
    assert_eq!(keys, 1);
});

db_test!(async fn a_database_out_of_reach_is_503_with_retry_after_never_500(app) {
    let ann = crate::helpers::acme_web(&app).await;
    app.state.db.close().await;
    let r = app.get("/api/v1/orgs/acme/projects", Some(&ann.access)).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
});
