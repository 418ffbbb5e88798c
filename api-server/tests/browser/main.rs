//! Tests of coffer-server's pages in a real browser: headless Chromium through chromedriver,
//! against one in-process coffer-server on SQLite (see `harness.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// helpers for the tests to come are not all used yet
#[allow(dead_code)]
mod harness;

use harness::{Browser, PHONE};

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

/// The shared coffer-server answers the browser: a page, its console, axe-core on it.
#[tokio::test]
async fn smoke_health() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    browser.goto("/health").await;
    let body = browser.text("body").await;
    assert!(body.contains(r#""status":"ok""#), "{body}");
    browser.screenshot("health").await;
    // a JSON answer has no icon link, so Chromium asks for /favicon.ico, which is not served
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("/favicon.ico "))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // not an HTML page, so not held to the accessibility rules: axe-core only has to run
    let violations = browser.axe().await;
    eprintln!("/health: {} axe-core violation(s)", violations.len());
}
