//! The OpenAPI document describes exactly the routes the server has.

use axum::http::{Method, StatusCode};

use crate::helpers::db_test;

const COMMITTED: &str = include_str!("../../openapi.json");

db_test!(async fn the_openapi_document_matches_the_committed_copy(app) {
    let r = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let served = r.json();
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    let generated = serde_json::to_string_pretty(&*coffer_server::routes::openapi_json()).unwrap() + "\n";
    if std::env::var("COFFER_BLESS").as_deref() == Ok("1") {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"), &generated).unwrap();
    }
    assert!(
        COMMITTED == generated,
        "api-server/openapi.json is out of date: run `COFFER_BLESS=1 cargo test -p coffer-server openapi` and commit it"
    );
    assert_eq!(serde_json::from_str::<serde_json::Value>(COMMITTED).unwrap(), served);
});

db_test!(async fn every_documented_operation_is_routed(app) {
    let doc = coffer_server::routes::openapi();
    let mut count = 0;
    for (path, item) in &doc.paths.paths {
        let concrete = path.replace("{id}", "0190a1f2-0000-7000-8000-000000000000");
        for (method, present) in [
            (Method::GET, item.get.is_some()),
            (Method::POST, item.post.is_some()),
            (Method::PUT, item.put.is_some()),
            (Method::PATCH, item.patch.is_some()),
            (Method::DELETE, item.delete.is_some()),
        ] {
            if !present {
                continue;
            }
            count += 1;
            let r = app.call(method.clone(), &concrete, None, None).await;
            let unrouted = r.status == StatusCode::METHOD_NOT_ALLOWED
                || (r.status == StatusCode::NOT_FOUND && r.json()["error"]["message"] == "route not found");
            assert!(!unrouted, "{method} {path} is documented but not routed: {}", r.text());
        }
    }
    assert!(count >= 14, "only {count} operations documented");
});
