//! The dashboard's import (with its preview), export, comparison and copy, through the router.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, acme_web, db_test};
use crate::web_support::Browser;

const BOUNDARY: &str = "coffer-test-boundary";

/// A multipart form as a browser sends it (htmx with `hx-encoding`): the CSRF token travels in
/// its header.
async fn multipart(
    app: &TestApp,
    browser: &Browser<'_>,
    path: &str,
    parts: &[(&str, Option<&str>, &str)],
) -> (StatusCode, String) {
    let mut body = String::new();
    for (name, file, value) in parts {
        body.push_str(&format!("--{BOUNDARY}\r\n"));
        match file {
            Some(file) => body.push_str(&format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )),
            None => body.push_str(&format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")),
        }
        body.push_str(value);
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    let cookie: Vec<String> = browser
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("cookie", cookie.join("; "))
        .header("hx-request", "true")
        .header("x-csrf-token", &browser.csrf)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .expect("request");
    let response = app.send(request).await;
    (response.status, response.text())
}

async fn value(app: &TestApp, token: &str, env: &str, key: &str) -> Option<String> {
    let r = app
        .get(
            &format!("/api/v1/orgs/acme/projects/web/environments/{env}/secrets/{key}"),
            Some(token),
        )
        .await;
    (r.status == StatusCode::OK).then(|| r.json()["value"].as_str().unwrap_or_default().to_owned())
}

db_test!(
    async fn an_import_is_previewed_then_applied_and_no_value_comes_back(app) {
        let ann = acme_web(&app).await;
        app.call(
            Method::PUT,
            "/api/v1/orgs/acme/projects/web/environments/development/secrets/KEEP",
            Some(&ann.access),
            Some(json!({ "value": "same" })),
        )
        .await;
        app.call(
            Method::PUT,
            "/api/v1/orgs/acme/projects/web/environments/development/secrets/CHANGE",
            Some(&ann.access),
            Some(json!({ "value": "old" })),
        )
        .await;
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let base = "/orgs/acme/projects/web/envs/development";
        let page = browser.get(&format!("{base}/import")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let file = "KEEP=same\nCHANGE=new-secret-value\nADDED=added-secret-value\n";

        let (status, preview) = multipart(
            &app,
            &browser,
            &format!("{base}/import/preview"),
            &[("format", None, "auto"), ("content", None, ""), ("file", Some("app.env"), file)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{preview}");
        assert!(preview.contains("Will create (1)") && preview.contains("ADDED"), "{preview}");
        assert!(preview.contains("Will update (1)") && preview.contains("CHANGE"), "{preview}");
        assert!(preview.contains("Unchanged (1)"), "{preview}");
        assert!(!preview.contains("secret-value"), "{preview}");
        assert_eq!(value(&app, &ann.access, "development", "CHANGE").await.as_deref(), Some("old"));

        let (status, done) = multipart(
            &app,
            &browser,
            &format!("{base}/import"),
            &[("format", None, "dotenv"), ("content", None, file)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert!(done.contains("Imported") && !done.contains("secret-value"), "{done}");
        assert_eq!(
            value(&app, &ann.access, "development", "CHANGE").await.as_deref(),
            Some("new-secret-value")
        );

        // A broken file is refused, and says why.
        let (status, refused) = multipart(
            &app,
            &browser,
            &format!("{base}/import/preview"),
            &[("format", None, "json"), ("content", None, "{not json")],
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert!(refused.contains("role=\"alert\""), "{refused}");
        // Without the CSRF token, nothing is imported.
        let mut forged = Browser::new(&app);
        forged.cookies = browser.cookies.clone();
        forged.csrf = "forged".into();
        let (status, _) = multipart(
            &app,
            &forged,
            &format!("{base}/import"),
            &[("content", None, "FORGED=1")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(value(&app, &ann.access, "development", "FORGED").await, None);
    }
);

db_test!(
    async fn an_export_is_a_download_audited_as_such(app) {
        let ann = acme_web(&app).await;
        app.call(
            Method::PUT,
            "/api/v1/orgs/acme/projects/web/environments/staging/secrets/API_URL",
            Some(&ann.access),
            Some(json!({ "value": "https://staging" })),
        )
        .await;
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        browser.get("/orgs/acme/projects/web/envs/staging").await;
        let file = browser
            .post("/orgs/acme/projects/web/envs/staging/export", &[("format", "json")])
            .await;
        assert_eq!(file.status, StatusCode::OK, "{}", file.body);
        assert_eq!(file.header("content-disposition"), "attachment; filename=\"web-staging.json\"");
        assert_eq!(file.header("cache-control"), "no-store");
        let parsed: serde_json::Value = serde_json::from_str(&file.body).unwrap();
        assert_eq!(parsed["API_URL"], "https://staging");
        let mut exported = Vec::new();
        for _ in 0..50 {
            exported = app.audit_events(&ann.access, "secrets.exported").await;
            if !exported.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(exported.len(), 1);
    }
);

db_test!(
    async fn environments_are_compared_and_keys_copied(app) {
        let ann = acme_web(&app).await;
        for (env, key, value) in [
            ("development", "SHARED", "one"),
            ("staging", "SHARED", "one"),
            ("development", "NEW_FLAG", "on"),
            ("development", "DIFF", "a"),
            ("staging", "DIFF", "b"),
        ] {
            let r = app
                .call(
                    Method::PUT,
                    &format!("/api/v1/orgs/acme/projects/web/environments/{env}/secrets/{key}"),
                    Some(&ann.access),
                    Some(json!({ "value": value })),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
        }
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let page = browser
            .get("/orgs/acme/projects/web/compare?base=development&head=staging")
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("compare-only-base") && page.body.contains("NEW_FLAG"));
        assert!(page.body.contains("compare-different") && page.body.contains("compare-same"));
        assert!(!page.body.contains(">on<") && !page.body.contains(">one<"));
        let none = browser
            .post("/orgs/acme/projects/web/copy", &[("from", "development"), ("to", "staging")])
            .await;
        assert!(none.body.contains("Tick the keys to copy"), "{}", none.body);
        let done = browser
            .post(
                "/orgs/acme/projects/web/copy",
                &[("from", "development"), ("to", "staging"), ("keys", "NEW_FLAG")],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert!(done.location().ends_with("copied=1"), "{}", done.location());
        assert_eq!(value(&app, &ann.access, "staging", "NEW_FLAG").await.as_deref(), Some("on"));
        // DIFF differs: without "replace", it is skipped.
        let skipped = browser
            .post(
                "/orgs/acme/projects/web/copy",
                &[("from", "development"), ("to", "staging"), ("keys", "DIFF")],
            )
            .await;
        assert!(skipped.location().ends_with("copied=0"), "{}", skipped.location());
        assert_eq!(value(&app, &ann.access, "staging", "DIFF").await.as_deref(), Some("b"));
    }
);
