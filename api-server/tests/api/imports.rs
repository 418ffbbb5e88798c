//! Importing files from untrusted users: what a file may cost to read.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;

use crate::helpers::{Session, TestApp, TestResponse, acme_web, db_test};

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments/development/secrets";

async fn import(app: &TestApp, who: &Session, format: &str, body: String) -> TestResponse {
    let request = Request::post(format!("{ENV}/import?format={format}"))
        .header("authorization", format!("Bearer {}", who.access))
        .header("content-type", "text/plain")
        .body(Body::from(body))
        .unwrap();
    app.send(request).await
}

/// The environment holds no secret and was never written.
async fn assert_untouched(app: &TestApp, who: &Session) {
    let now: Value = app.get(ENV, Some(&who.access)).await.json();
    assert_eq!(now["secrets"].as_array().map(Vec::len), Some(0), "{now}");
    assert_eq!(now["revision"], 0, "{now}");
}

db_test!(async fn a_yaml_import_with_an_anchor_and_aliases_is_refused_naming_the_line(app) {
    let ann = acme_web(&app).await;
    let body = "GOOD: 1\nSHARED: &v shared-value-7d1\nA: *v\nB: *v\n".to_owned();
    let m = import(&app, &ann, "yaml", body).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
    assert_eq!(m, "line 2: YAML anchors (`&name`) are not supported; write each value out in full");
    assert_untouched(&app, &ann).await;
});

db_test!(async fn an_imported_value_over_64_kib_is_refused_by_the_parser_in_every_format(app) {
    let ann = acme_web(&app).await;
    let big = "b".repeat(64 * 1024 + 1);
    for (format, body) in [
        ("dotenv", format!("GOOD=1\nBIG=\"{big}\"\nBAD KEY=x\n")),
        ("json", format!("{{\"GOOD\": \"1\",\n\"BIG\": \"{big}\",\n\"BAD KEY\": \"x\"}}")),
        ("yaml", format!("GOOD: '1'\nBIG: {big}\nBAD KEY: x\n")),
    ] {
        let m = import(&app, &ann, format, body).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
        assert_eq!(m, "line 2: the value of `BIG` is over 64 KiB", "{format}");
        assert_untouched(&app, &ann).await;
    }
    // Exactly the limit is accepted.
    let max = "m".repeat(64 * 1024);
    let r = import(&app, &ann, "yaml", format!("MAX: {max}\n")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["created"], 1);
});

db_test!(async fn an_invalid_key_is_named_by_its_line_without_quoting_it(app) {
    let ann = acme_web(&app).await;
    // A broken line of a multi-line value reads as a key: its text must not come back.
    let body = "GOOD=1\n9kq2-PRIVATE-material-x7=tail\n".to_owned();
    let m = import(&app, &ann, "dotenv", body).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
    assert!(m.starts_with("line 2: the key is not valid"), "{m}");
    assert!(!m.contains("PRIVATE"), "{m}");
    assert_untouched(&app, &ann).await;
});
