use axum::http::StatusCode;

use crate::helpers::db_test;

db_test!(async fn health_answers_ok(app) {
    let r = app.get("/health", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({ "status": "ok" }));
});

db_test!(async fn ready_answers_when_the_database_is_migrated_and_503_when_it_is_gone(app) {
    assert_eq!(app.get("/ready", None).await.status, StatusCode::OK);
    app.state.db.close().await;
    app.get("/ready", None).await.assert_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
});

db_test!(async fn the_api_index_names_itself_and_links_its_endpoints(app) {
    let v = app.get("/api/v1", None).await.json();
    assert_eq!(v["name"], "coffer");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["links"]["openapi"], "/api/v1/openapi.json");
    assert_eq!(v["links"]["login"], "/api/v1/auth/login");
});

db_test!(async fn every_response_carries_a_request_id_and_echoes_the_callers(app) {
    let r = app.get("/health", None).await;
    assert!(r.headers.get("x-request-id").is_some_and(|v| !v.is_empty()));
    let request = axum::http::Request::get("/health").header("x-request-id", "trace-me-42").body(axum::body::Body::empty()).unwrap();
    let r = app.send(request).await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "trace-me-42");
});
