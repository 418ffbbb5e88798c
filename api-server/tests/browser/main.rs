//! Tests of coffer-server's pages in a real browser: headless Chromium through chromedriver,
//! against one in-process coffer-server on SQLite (see `harness.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// helpers for the tests to come are not all used yet
#[allow(dead_code)]
mod harness;

mod dashboard;

use harness::{Browser, PHONE, WAIT};

/// The harness itself, on a page of its own under a strict Content-Security-Policy (no
/// 'unsafe-inline', no 'unsafe-eval'): console errors are read, axe-core runs and finds what is
/// wrong, screenshots are saved, the viewport becomes a phone's.
#[tokio::test]
async fn the_harness_drives_a_page_under_a_strict_content_security_policy() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    browser.goto_url(&harness::fixture_url("/")).await;
    browser.find("main h1").await;
    // the inline script is blocked, so the title is the page's own
    assert_eq!(browser.title().await.unwrap(), "Harness fixture");

    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("fixture: an error from an allowed script")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "{errors:#?}"
    );
    assert!(browser.console_errors().await.is_empty(), "read once");

    let violations = browser.axe().await;
    let image_alt = violations
        .iter()
        .find(|v| v.id == "image-alt")
        .unwrap_or_else(|| panic!("axe-core finds the image without alt: {violations:#?}"));
    assert_eq!(image_alt.impact, "critical");
    assert_eq!(image_alt.targets, ["img"]);
    assert!(image_alt.is_serious());
    // a second run does not inject axe-core again
    assert_eq!(browser.axe().await, violations);

    browser.phone().await;
    let size = browser
        .run("return [window.innerWidth, window.innerHeight];", vec![])
        .await;
    assert_eq!(size, serde_json::json!([PHONE.0, PHONE.1]));
    let shot = browser.screenshot("harness-fixture-phone").await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", shot.display());
    browser.desktop().await;
}

/// The dashboard's sign-in page in the browser: a form, served under a strict
/// Content-Security-Policy, with no console error and no serious accessibility violation, on a
/// desktop and on a phone.
#[tokio::test]
async fn smoke_login() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    let response = reqwest::Client::new()
        .get(harness::url("/login"))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let csp = response
        .headers()
        .get(reqwest::header::CONTENT_SECURITY_POLICY)
        .expect("a Content-Security-Policy")
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );

    browser.goto("/login").await;
    browser.find("form input[type=email]").await;
    browser.find("form input[type=password]").await;
    browser.find("form button[type=submit]").await;
    browser.screenshot("login").await;
    browser.assert_no_console_errors("/login").await;
    browser.assert_no_serious_axe_violations("/login").await;

    browser.phone().await;
    browser.screenshot("login-phone").await;
    browser
        .assert_no_serious_axe_violations("/login on a phone")
        .await;
    browser.assert_no_console_errors("/login on a phone").await;
}
