//! The dashboard in Chromium: what a team does with it, from signing up to revoking a token,
//! with the checks every page passes (no console error under the Content-Security-Policy, no
//! serious accessibility violation) and a screenshot of each main page.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::harness::{self, Browser, PASSWORD, WAIT};

/// Waits until the text of `css` contains `needle` (at most [`WAIT`]); returns the text.
async fn wait_for_text(browser: &Browser, css: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(element) = browser
            .find_all(Locator::Css(css))
            .await
            .map(|mut v| v.pop())
            && let Some(element) = element
            && let Ok(text) = element.text().await
            && text.contains(needle)
        {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never showed {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(browser: &Browser, css: &str, text: &str) {
    let field = browser.find(css).await;
    field.clear().await.expect("clearing a field");
    field.send_keys(text).await.expect("typing");
}

async fn click(browser: &Browser, css: &str) {
    browser.find(css).await.click().await.expect("clicking");
}

/// The page passes the checks every page passes; a screenshot is kept.
async fn check_page(browser: &Browser, name: &str) {
    browser.screenshot(name).await;
    browser.assert_no_console_errors(name).await;
    browser.assert_no_serious_axe_violations(name).await;
}

async fn path(browser: &Browser) -> String {
    let url = browser.current_url().await.expect("the URL");
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Signs up through the form; the browser lands where `/signup` sends it.
async fn sign_up(browser: &Browser, email: &str) {
    fill(
        browser,
        "form[action='/signup'] input[name=name]",
        "Ann Example",
    )
    .await;
    fill(browser, "form[action='/signup'] input[name=email]", email).await;
    fill(
        browser,
        "form[action='/signup'] input[name=password]",
        PASSWORD,
    )
    .await;
    click(browser, "form[action='/signup'] button[type=submit]").await;
    browser
        .wait_for_url("signed up", |url| url.path() != "/signup")
        .await;
}

/// An access token for `email`, through the API (for what a test does outside the browser).
async fn api_login(email: &str) -> String {
    let response: Value = reqwest::Client::new()
        .post(harness::url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .timeout(WAIT)
        .send()
        .await
        .expect("login answered")
        .json()
        .await
        .expect("JSON");
    response["access_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

async fn api(method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Value {
    let mut request = reqwest::Client::new()
        .request(method, harness::url(path))
        .bearer_auth(token)
        .timeout(WAIT);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("answered");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

/// An organization `org` with project `web`, created through the pages by a new user.
async fn new_team(browser: &Browser) -> (String, String) {
    let email = format!("{}@example.com", harness::unique("owner"));
    let org = harness::unique("acme");
    browser.goto("/signup").await;
    check_page(browser, "signup").await;
    sign_up(browser, &email).await;
    assert_eq!(path(browser).await, "/");
    check_page(browser, "home-first-visit").await;
    fill(browser, "#new-organization input[name=name]", "Acme Inc").await;
    fill(browser, "#new-organization input[name=slug]", &org).await;
    click(browser, "#new-organization button[type=submit]").await;
    browser
        .wait_for_url("the organization", |u| u.path() == format!("/orgs/{org}"))
        .await;
    check_page(browser, "projects-empty").await;
    fill(
        browser,
        "form[action$='/projects'] input[name=name]",
        "Web app",
    )
    .await;
    fill(browser, "form[action$='/projects'] input[name=slug]", "web").await;
    click(browser, "form[action$='/projects'] button[type=submit]").await;
    browser
        .wait_for_url("the project", |u| u.path().ends_with("/projects/web"))
        .await;
    (email, org)
}

#[tokio::test]
async fn secrets_are_added_revealed_edited_rolled_back_exported_and_imported() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    let (_, org) = new_team(&browser).await;
    let env = format!("/orgs/{org}/projects/web/envs/development");
    browser.goto(&env).await;
    check_page(&browser, "environment-empty").await;
    for (key, value) in [
        ("DATABASE_URL", "postgres://db.internal/app"),
        ("API_KEY", "first-key-value"),
    ] {
        fill(&browser, "form[action$='/secrets'] input[name=key]", key).await;
        fill(
            &browser,
            "form[action$='/secrets'] textarea[name=value]",
            value,
        )
        .await;
        click(&browser, "form[action$='/secrets'] button[type=submit]").await;
        wait_for_text(&browser, "#secrets-body", key).await;
    }
    // Values are masked until revealed.
    let html = browser.source().await.expect("the page");
    assert!(!html.contains("first-key-value") && !html.contains("db.internal"));
    click(&browser, "button[aria-label='Reveal API_KEY']").await;
    wait_for_text(
        &browser,
        "tr[data-key=API_KEY] .revealed .value",
        "first-key-value",
    )
    .await;
    check_page(&browser, "environment").await;

    // Inline edit.
    click(&browser, "button[aria-label='Edit API_KEY']").await;
    fill(
        &browser,
        "tr.editing textarea[name=value]",
        "second-key-value",
    )
    .await;
    click(&browser, "tr.editing button[type=submit]").await;
    wait_for_text(&browser, "tr[data-key=API_KEY]", "v2").await;

    // History, diff, rollback.
    browser
        .goto(&format!("{env}/secrets/API_KEY/history"))
        .await;
    click(&browser, "a[href='?diff=2']").await;
    let diff = wait_for_text(&browser, "pre.diff", "second-key-value").await;
    assert!(
        diff.contains("- first-key-value") && diff.contains("+ second-key-value"),
        "{diff}"
    );
    check_page(&browser, "history").await;
    click(&browser, "form[action$='/rollback'] button[type=submit]").await;
    wait_for_text(&browser, "tbody", "v3").await;
    click(&browser, "button[aria-label='Reveal version 3']").await;
    wait_for_text(&browser, ".revealed .value", "first-key-value").await;

    // Export: the form's download, fetched as the browser would post it.
    browser.goto(&env).await;
    let file = browser
        .run(
            "const form = document.querySelector('form.export-form');\
             const body = new FormData(form); body.set('format', 'dotenv');\
             return fetch(form.action, {method: 'POST', body: new URLSearchParams(body)})\
               .then(r => r.text());",
            vec![],
        )
        .await;
    let file = file.as_str().unwrap_or_default();
    assert!(
        file.contains("API_KEY=") && file.contains("first-key-value"),
        "{file}"
    );

    // Import with a preview.
    browser.goto(&format!("{env}/import")).await;
    fill(
        &browser,
        "textarea[name=content]",
        "API_KEY=first-key-value\nNEW_FLAG=on\nDATABASE_URL=postgres://db.internal/other\n",
    )
    .await;
    click(&browser, "button[hx-post$='/import/preview']").await;
    let preview = wait_for_text(&browser, "#import-result", "Will create").await;
    assert!(
        preview.contains("NEW_FLAG") && preview.contains("Will update (1)"),
        "{preview}"
    );
    check_page(&browser, "import-preview").await;
    click(&browser, "button[hx-post$='/import']").await;
    browser.accept_alert().await.expect("the confirmation");
    wait_for_text(&browser, "#import-result", "Imported").await;
    browser.goto(&format!("/orgs/{org}/projects/web")).await;
    wait_for_text(&browser, "#grid-body", "NEW_FLAG").await;
    check_page(&browser, "secrets-grid").await;
    browser.phone().await;
    check_page(&browser, "secrets-grid-phone").await;
}

#[tokio::test]
async fn a_second_member_joins_and_sees_only_what_their_role_allows() {
    let Some(ann) = Browser::new().await else {
        return;
    };
    let (ann_email, org) = new_team(&ann).await;
    let ann_token = api_login(&ann_email).await;
    for env in ["development", "production"] {
        api(
            reqwest::Method::PUT,
            &format!("/api/v1/orgs/{org}/projects/web/environments/{env}/secrets/TOKEN"),
            &ann_token,
            Some(json!({ "value": format!("{env}-token") })),
        )
        .await;
    }

    // Ann invites Bob from the members page.
    let bob_email = format!("{}@example.com", harness::unique("bob"));
    ann.goto(&format!("/orgs/{org}/members")).await;
    fill(
        &ann,
        "form[action$='/invitations'] input[name=email]",
        &bob_email,
    )
    .await;
    click(&ann, "form[action$='/invitations'] button[type=submit]").await;
    let link = wait_for_text(&ann, ".issued .value", "/invitations/").await;
    check_page(&ann, "members").await;

    // Bob opens the link, signs up, accepts.
    let bob = Browser::new().await.expect("a second browser");
    bob.goto_url(link.trim()).await;
    bob.wait_for_url("the sign-up page", |u| u.path() == "/signup")
        .await;
    sign_up(&bob, &bob_email).await;
    bob.wait_for_url("the invitation", |u| u.path().starts_with("/invitations/"))
        .await;
    click(&bob, "main form button[type=submit]").await;
    bob.wait_for_url("the organization", |u| u.path() == format!("/orgs/{org}"))
        .await;
    let bob_id = api(
        reqwest::Method::GET,
        &format!("/api/v1/orgs/{org}/members"),
        &ann_token,
        None,
    )
    .await["items"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["email"] == bob_email.as_str())
        .and_then(|m| m["user_id"].as_str())
        .expect("Bob is a member")
        .to_owned();
    let grant = |role: &'static str| {
        let (org, token, bob_id) = (org.clone(), ann_token.clone(), bob_id.clone());
        async move {
            api(
                reqwest::Method::PUT,
                &format!("/api/v1/orgs/{org}/projects/web/access/users/{bob_id}"),
                &token,
                Some(json!({ "role": role })),
            )
            .await;
        }
    };

    // A viewer reads but is offered no change, and the server refuses one anyway.
    grant("viewer").await;
    let env = format!("/orgs/{org}/projects/web/envs/development");
    bob.goto(&env).await;
    wait_for_text(&bob, "#secrets-body", "TOKEN").await;
    let html = bob.source().await.expect("the page");
    assert!(
        !html.contains("Add a secret") && !html.contains("Edit TOKEN"),
        "viewer page offers changes"
    );
    click(&bob, "button[aria-label='Reveal TOKEN']").await;
    wait_for_text(&bob, ".revealed .value", "development-token").await;
    let refused = bob
        .run(
            "const csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];\
             return fetch(arguments[0], {method: 'POST', headers: {'X-CSRF-Token': csrf},\
               body: new URLSearchParams({key: 'X', value: 'y'})}).then(r => r.status);",
            vec![json!(format!("{env}/secrets"))],
        )
        .await;
    assert_eq!(refused, json!(403));
    // The refusal is the one console error, and it is this test's.
    let errors = bob.console_errors().await;
    assert!(errors.iter().all(|e| e.contains("403")), "{errors:#?}");
    check_page(&bob, "environment-viewer").await;

    // Ann's policy keeps developers out of production; Bob becomes a developer.
    ann.goto(&format!("/orgs/{org}/projects/web/environments"))
        .await;
    let form = "form[action$='/environments/production/policies']";
    ann.find(&format!("{form} select[name=developer]"))
        .await
        .select_by_value("none")
        .await
        .expect("choosing no access");
    click(&ann, &format!("{form} button[type=submit]")).await;
    ann.wait_for_url("the environments", |u| u.path().ends_with("/environments"))
        .await;
    check_page(&ann, "environments").await;
    grant("developer").await;
    bob.goto(&format!("/orgs/{org}/projects/web")).await;
    let header = wait_for_text(&bob, "#grid thead", "Production").await;
    assert!(header.contains("(no access)"), "{header}");
    bob.goto(&format!("/orgs/{org}/projects/web/envs/production"))
        .await;
    wait_for_text(&bob, "main", "Forbidden").await;
    bob.goto(&env).await;
    bob.find("button[aria-label='Edit TOKEN']").await;
}

#[tokio::test]
async fn the_audit_log_shows_a_read_through_the_api_while_it_is_open() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    let (email, org) = new_team(&browser).await;
    let token = api_login(&email).await;
    api(
        reqwest::Method::PUT,
        &format!("/api/v1/orgs/{org}/projects/web/environments/staging/secrets/WATCHED"),
        &token,
        Some(json!({ "value": "v" })),
    )
    .await;
    browser.goto(&format!("/orgs/{org}/audit")).await;
    wait_for_text(&browser, "#audit-rows", "secret.updated").await;
    // The page's stream is open before the read: give it the moment it takes to connect.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = browser
            .run(
                "const el = document.querySelector('[sse-connect]');\
                 const src = el && htmx && el['htmx-internal-data'] && el['htmx-internal-data'].sseEventSource;\
                 return src ? src.readyState : -1;",
                vec![],
            )
            .await;
        if state == json!(1) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api(
        reqwest::Method::GET,
        &format!("/api/v1/orgs/{org}/projects/web/environments/staging/secrets/WATCHED"),
        &token,
        None,
    )
    .await;
    wait_for_text(&browser, "#audit-rows tr:first-child", "secrets.read").await;
    check_page(&browser, "audit-live").await;
}

#[tokio::test]
async fn a_form_posted_from_another_site_is_refused() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    let (_, org) = new_team(&browser).await;
    browser
        .goto_url(&harness::fixture_url("/cross-site-form"))
        .await;
    click(&browser, "main form button[type=submit]").await;
    wait_for_text(&browser, "main", "did not come from this site").await;
    browser.goto("/").await;
    let html = browser.source().await.expect("the page");
    assert!(
        !html.contains("/orgs/forged"),
        "the forged organization exists"
    );
    browser.goto(&format!("/orgs/{org}")).await;
    browser.find("a[href$='/projects/web']").await;
}

#[tokio::test]
async fn a_service_token_is_created_shown_once_and_revoked() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    let (email, org) = new_team(&browser).await;
    let owner = api_login(&email).await;
    api(
        reqwest::Method::PUT,
        &format!("/api/v1/orgs/{org}/projects/web/environments/development/secrets/DB"),
        &owner,
        Some(json!({ "value": "dev-db" })),
    )
    .await;
    browser.goto(&format!("/orgs/{org}/service-tokens")).await;
    check_page(&browser, "service-tokens-empty").await;
    let form = format!("form[action='/orgs/{org}/service-tokens']");
    fill(&browser, &format!("{form} input[name=name]"), "ci").await;
    click(
        &browser,
        &format!("{form} input[name=env][value='web/development']"),
    )
    .await;
    click(&browser, &format!("{form} button[type=submit]")).await;
    let token = wait_for_text(&browser, ".issued .value", "cfr_").await;
    let token = token.trim().to_owned();
    check_page(&browser, "service-token-created").await;
    let read = |token: String| {
        let org = org.clone();
        async move {
            reqwest::Client::new()
                .get(harness::url(&format!(
                    "/api/v1/orgs/{org}/projects/web/environments/development/secrets/DB"
                )))
                .bearer_auth(token)
                .timeout(WAIT)
                .send()
                .await
                .expect("answered")
                .status()
        }
    };
    assert_eq!(read(token.clone()).await, reqwest::StatusCode::OK);

    // Shown once: the list names the token, never again its value.
    browser.goto(&format!("/orgs/{org}/service-tokens")).await;
    let html = browser.source().await.expect("the page");
    assert!(html.contains("ci") && !html.contains(&token));
    click(&browser, "button[aria-label='Revoke ci']").await;
    browser.accept_alert().await.expect("the confirmation");
    let deadline = tokio::time::Instant::now() + WAIT;
    while read(token.clone()).await != reqwest::StatusCode::UNAUTHORIZED {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pages the flows above do not open pass the same checks, at a desktop's size and a phone's.
#[tokio::test]
async fn every_other_main_page_passes_the_checks() {
    let Some(browser) = Browser::new().await else {
        return;
    };
    let (email, org) = new_team(&browser).await;
    let owner = api_login(&email).await;
    for key in ["A", "B"] {
        api(
            reqwest::Method::PUT,
            &format!("/api/v1/orgs/{org}/projects/web/environments/staging/secrets/{key}"),
            &owner,
            Some(json!({ "value": key })),
        )
        .await;
        api(
            reqwest::Method::GET,
            &format!("/api/v1/orgs/{org}/projects/web/environments/staging/secrets/{key}"),
            &owner,
            None,
        )
        .await;
    }
    let pages = [
        ("settings", "/settings".to_owned()),
        ("api-keys", "/api-keys".to_owned()),
        ("teams", format!("/orgs/{org}/teams")),
        ("access", format!("/orgs/{org}/projects/web/access")),
        ("webhooks", format!("/orgs/{org}/projects/web/webhooks")),
        (
            "compare",
            format!("/orgs/{org}/projects/web/compare?base=staging&head=production"),
        ),
        (
            "dynamic",
            format!("/orgs/{org}/projects/web/envs/staging/dynamic"),
        ),
        ("analytics", format!("/orgs/{org}/analytics")),
        ("projects", format!("/orgs/{org}")),
    ];
    for (name, page) in &pages {
        browser.goto(page).await;
        browser.find("main h1").await;
        check_page(&browser, name).await;
    }
    browser.phone().await;
    for (name, page) in &pages[..3] {
        browser.goto(page).await;
        browser.find("main h1").await;
        check_page(&browser, &format!("{name}-phone")).await;
    }
}
