//! `${…}` references: bounded resolution, checks when a value is written, and errors that name
//! places but never quote a value.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::helpers::{Session, TestApp, TestResponse, acme_web, db_test};

const DEV: &str = "/api/v1/orgs/acme/projects/web/environments/development/secrets";

async fn put(app: &TestApp, who: &Session, key: &str, value: &str) -> TestResponse {
    app.put(
        &format!("{DEV}/{key}"),
        Some(&who.access),
        json!({ "value": value }),
    )
    .await
}

#[track_caller]
fn ok(r: &TestResponse) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

db_test!(async fn a_value_that_fans_out_past_the_value_limit_is_refused_when_written(app) {
    let ann = acme_web(&app).await;
    ok(&put(&app, &ann, "C", &"c".repeat(64 * 1024)).await);
    // The review's shape: B repeats a full value 16,384 times (its own text is exactly 64 KiB).
    let m = put(&app, &ann, "B", &"${C}".repeat(16 * 1024)).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "resolved_value_too_large");
    assert_eq!(m, "the value of web/development/B is over 64 KiB once its references are resolved");
    app.get(&format!("{DEV}/B"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // Written together in one request: refused as a whole.
    let r = app.put(DEV, Some(&ann.access), json!({ "secrets": [
        { "key": "B", "value": "${C}${C}" },
        { "key": "A", "value": "${B}".repeat(1024) },
    ] })).await;
    r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "resolved_value_too_large");
    let all = app.get(&format!("{DEV}?resolve=false"), Some(&ann.access)).await.json();
    assert_eq!(all["secrets"].as_array().unwrap().len(), 1, "{all}");
});

db_test!(async fn a_value_grown_past_the_limit_by_its_references_fails_every_resolving_read(app) {
    let ann = acme_web(&app).await;
    ok(&put(&app, &ann, "H", "h").await);
    ok(&put(&app, &ann, "B", "${H}${H}").await);
    // H has no references of its own, so its write is fine; B now resolves to 80 KiB.
    ok(&put(&app, &ann, "H", &"h".repeat(40 * 1024)).await);
    for path in [DEV.to_owned(), format!("{DEV}/B?resolve=true"), format!("{DEV}/export?format=dotenv&resolve=true")] {
        let r = app.get(&path, Some(&ann.access)).await;
        let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "resolved_value_too_large");
        assert!(m.contains("web/development/B"), "{m}");
        assert!(!r.text().contains("hhhh"), "{}", r.text());
    }
    // The raw values stay readable, so the owner can repair them.
    assert_eq!(app.get(&format!("{DEV}?resolve=false"), Some(&ann.access)).await.status, StatusCode::OK);
    assert_eq!(app.get(&format!("{DEV}/export?format=dotenv"), Some(&ann.access)).await.status, StatusCode::OK);
});

db_test!(async fn the_bytes_and_references_one_request_resolves_are_bounded(app, |c| {
    c.max_resolved_bytes = 10_000;
    c.max_resolved_references = 50;
}) {
    let ann = acme_web(&app).await;
    ok(&put(&app, &ann, "B", &"b".repeat(3_000)).await);
    // Each write resolves 6,000 bytes (B, then D); the whole environment resolves more.
    for key in ["D1", "D2", "D3"] {
        ok(&put(&app, &ann, key, "${B}").await);
    }
    let r = app.get(DEV, Some(&ann.access)).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "resolution_limit_exceeded");
    assert_eq!(m, "resolving web/development/D3 goes over the 10000 bytes that one request may resolve");
    assert!(!r.text().contains("bbbb"));
    ok(&put(&app, &ann, "E", "").await);
    ok(&put(&app, &ann, "R50", &"${E}".repeat(50)).await);
    let m = put(&app, &ann, "R51", &"${E}".repeat(51)).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "resolution_limit_exceeded");
    assert!(m.contains("50 references"), "{m}");
});

db_test!(async fn reference_errors_name_the_place_and_never_quote_the_value(app) {
    let ann = acme_web(&app).await;
    // A generated password with a stray `${` is refused when written, not at every read.
    let r = put(&app, &ann, "PW", "hunter2${Tr0ub4dor&3").await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert_eq!(m, "the value of web/development/PW holds an invalid reference at byte 7: `${` without a closing `}` (write `$${` for a literal `${`)");
    assert!(!r.text().contains("hunter2") && !r.text().contains("Tr0ub4dor"));
    // Escaped, it is stored and read back with a literal `${`.
    ok(&put(&app, &ann, "PW", "hunter2$${Tr0ub4dor&3").await);
    assert_eq!(app.get(&format!("{DEV}/PW?resolve=true"), Some(&ann.access)).await.json()["value"], "hunter2${Tr0ub4dor&3");

    // A reference to a secret that does not exist is refused when written...
    let r = put(&app, &ann, "A", "x${NOPE_Tr0ub4dor}").await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert_eq!(m, "the reference at byte 1 of web/development/A names a secret that does not exist");
    assert!(!r.text().contains("Tr0ub4dor"));
    // ...and one whose target goes away later fails the read, naming only the place.
    ok(&put(&app, &ann, "SECRET_Tr0ub4dor", "v").await);
    ok(&put(&app, &ann, "A", "x${SECRET_Tr0ub4dor}").await);
    assert_eq!(app.delete(&format!("{DEV}/SECRET_Tr0ub4dor"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let r = app.get(DEV, Some(&ann.access)).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert_eq!(m, "the reference at byte 1 of web/development/A names a secret that does not exist");
    assert!(!r.text().contains("Tr0ub4dor"));

    // Imports are checked the same way, and a refused one changes nothing.
    let import = Request::post(format!("{DEV}/import?format=dotenv"))
        .header("authorization", format!("Bearer {}", ann.access))
        .body(Body::from("OK=1\nBAD='s3cr3t${oops'\n"))
        .unwrap();
    let r = app.send(import).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(m.contains("web/development/BAD") && !r.text().contains("s3cr3t"), "{m}");
    app.get(&format!("{DEV}/OK"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn cycles_are_refused_when_written_including_by_a_rollback(app) {
    let ann = acme_web(&app).await;
    let r = app.put(DEV, Some(&ann.access), json!({ "secrets": [
        { "key": "X", "value": "${Y}" },
        { "key": "Y", "value": "${X}" },
    ] })).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(m.starts_with("reference cycle: development/X -> development/Y -> development/X"), "{m}");

    ok(&put(&app, &ann, "B", "b").await);
    ok(&put(&app, &ann, "A", "${B}").await);
    ok(&put(&app, &ann, "A", "a").await);
    ok(&put(&app, &ann, "B", "${A}").await);
    // Version 1 of A (`${B}`) would close a cycle now.
    let r = app.post(&format!("{DEV}/A/rollback"), Some(&ann.access), json!({ "version": 1 })).await;
    let m = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(m.contains("cycle"), "{m}");
    assert_eq!(app.get(&format!("{DEV}/A"), Some(&ann.access)).await.json()["version"], 2);
});

db_test!(async fn a_writer_may_reference_a_place_it_cannot_read_and_readers_resolve_with_their_own_rights(app) {
    let ann = acme_web(&app).await;
    let dev = app.member(&ann, "acme", "dev@example.com", "member").await;
    app.put(&format!("/api/v1/orgs/acme/projects/web/access/users/{}", dev.user_id), Some(&ann.access), json!({ "role": "developer" })).await;
    app.put("/api/v1/orgs/acme/projects/web/environments/production/policies/developer", Some(&ann.access), json!({ "access": "none" })).await;
    app.post("/api/v1/orgs/acme/projects/web/environments/production/secrets", Some(&ann.access), json!({ "key": "PASSWORD", "value": "prod-only-value" })).await;
    // The write check does not follow what the writer may not read, nor tell them about it.
    ok(&put(&app, &dev, "DB", "${production.PASSWORD}").await);
    ok(&put(&app, &dev, "OTHER", "${production.DOES_NOT_EXIST}").await);
    let r = app.get(DEV, Some(&dev.access)).await;
    r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(!r.text().contains("prod-only-value"));
    ok(&put(&app, &ann, "OTHER", "fixed").await);
    let r = app.get(DEV, Some(&ann.access)).await;
    assert!(r.text().contains("prod-only-value"), "{}", r.text());
});
