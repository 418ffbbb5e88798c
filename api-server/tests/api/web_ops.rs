//! The dashboard's operations pages through the real router and database: a project's
//! webhooks (secret shown once, deliveries, redelivery), an environment's dynamic secrets and
//! leases (against the PostgreSQL of `COFFER_TEST_DYNAMIC_ADMIN_URL`), and an organization's
//! analytics (counts matching what was done through the API, charts as SVG, tenants apart).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, acme_web, db_test};
use crate::web_support::{Browser, Page};

const HOOKS: &str = "/orgs/acme/projects/web/webhooks";
const DYNAMIC: &str = "/orgs/acme/projects/web/envs/development/dynamic";
const API_DEV: &str = "/api/v1/orgs/acme/projects/web/environments/development";

/// No inline script or style, which the Content-Security-Policy would block.
fn assert_no_inline(page: &Page) {
    for banned in [
        "style=",
        "<style",
        "<script>",
        " onclick=",
        " onload=",
        " onsubmit=",
    ] {
        assert!(!page.body.contains(banned), "{banned} in {}", page.body);
    }
}

/// The text of the first `<code class="value">` after `after` in `body`.
fn revealed_after(body: &str, after: &str) -> String {
    let from = body
        .find(after)
        .unwrap_or_else(|| panic!("{after} not in {body}"));
    let marker = "<code class=\"value\">";
    let at = body[from..].find(marker).expect("a revealed value") + from + marker.len();
    let end = body[at..].find("</code>").expect("its end") + at;
    body[at..end].to_owned()
}

/// An HTTP receiver on loopback that answers 200 and counts what it got.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let r = receiver.clone();
        let app = axum::Router::new().fallback(move |body: String| {
            let r = r.clone();
            async move {
                r.got.lock().unwrap().push(body);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (receiver, addr)
    }

    async fn wait_for(&self, n: usize) {
        for _ in 0..200 {
            if self.got.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{n} requests expected, {} came",
            self.got.lock().unwrap().len()
        );
    }
}

fn fast_webhooks(c: &mut coffer_server::Config) {
    c.webhook_allow_private = true;
    c.webhook_retry_base_ms = 50;
    c.webhook_retry_max_ms = 200;
    c.webhook_timeout_ms = 2_000;
}

/// The webhook's page once its log lists `n` deliveries that succeeded.
async fn page_with_deliveries(browser: &mut Browser<'_>, url: &str, n: usize) -> Page {
    for _ in 0..100 {
        let page = browser.get(url).await;
        if page.body.matches("badge succeeded").count() >= n {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} delivered deliveries expected on {url}");
}

db_test!(
    async fn a_webhook_made_on_its_page_shows_its_secret_once_and_logs_its_deliveries(app, |c| fast_webhooks(c)) {
        acme_web(&app).await;
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let list = browser.get(HOOKS).await;
        assert_eq!(list.status, StatusCode::OK, "{}", list.body);
        assert!(list.body.contains("No webhooks yet") && list.body.contains("New webhook"));
        assert!(list.body.contains("aria-current=\"page\">Webhooks"), "the tab is current");
        assert_no_inline(&list);

        // A refused URL is said next to its field, with what was typed kept.
        let page = browser.post(HOOKS, &[("url", "ftp://example.com/hook"), ("events", "secrets.changed")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.body);
        assert!(page.body.contains("id=\"webhook-url-error\""), "{}", page.body);
        assert!(page.body.contains("value=\"ftp://example.com/hook\""));
        assert!(page.body.contains("value=\"secrets.changed\" checked"), "the checked event stays checked");

        // Created: its page answers with the signing secret, this once.
        let (receiver, addr) = Receiver::start().await;
        let url = format!("http://{addr}/hook");
        let created = browser.post(HOOKS, &[("url", url.as_str()), ("environments", "development")]).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_no_inline(&created);
        let secret = revealed_after(&created.body, "Signing secret");
        assert!(secret.starts_with("whsec_"), "{secret}");
        assert!(created.body.contains("data-copy"));
        let at = created.body.find("/rotate-secret").expect("the webhook's actions");
        let start = created.body[..at].rfind("/webhooks/").expect("its id") + "/webhooks/".len();
        let hook = format!("{HOOKS}/{}", &created.body[start..at]);
        let shown = browser.get(&hook).await;
        assert_eq!(shown.status, StatusCode::OK);
        assert!(!shown.body.contains(&secret), "the secret is shown once only");
        assert!(shown.body.contains("No delivery attempted yet"));
        let list = browser.get(HOOKS).await;
        assert!(list.body.contains(&url) && list.body.contains("badge ok"), "{}", list.body);
        assert!(!list.body.contains(&secret));

        // A ping is queued, delivered and logged.
        let page = browser.post(&format!("{hook}/ping"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(page.location().starts_with(&format!("{hook}?queued=")), "{}", page.location());
        let queued = browser.get(page.location()).await;
        assert!(queued.body.contains("queued"), "{}", queued.body);
        receiver.wait_for(1).await;
        let logged = page_with_deliveries(&mut browser, &hook, 1).await;
        assert!(logged.body.contains("<code>ping</code>") && logged.body.contains("HTTP 200"), "{}", logged.body);

        // Redelivered: a new delivery, sent and logged too.
        let at = logged.body.find("/redeliver\"").expect("a redeliver button");
        let start = logged.body[..at].rfind("/deliveries/").unwrap() + "/deliveries/".len();
        let delivery = logged.body[start..at].to_owned();
        let page = browser.post(&format!("{hook}/deliveries/{delivery}/redeliver"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(page.location().contains("?queued="));
        assert!(!page.location().ends_with(&delivery), "a new delivery");
        receiver.wait_for(2).await;
        let logged = page_with_deliveries(&mut browser, &hook, 2).await;
        assert_eq!(logged.body.matches("/redeliver\"").count(), 2, "{}", logged.body);

        // Edited: a bad URL refused in place, then filters saved.
        let page = browser.post(&hook, &[("url", "http://169.254.169.254/x")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains("webhook-url-error") && page.body.contains("<details open>"), "{}", page.body);
        let page = browser
            .post(&hook, &[("url", url.as_str()), ("events", "secrets.changed"), ("environments", "staging")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let shown = browser.get(&hook).await;
        assert!(shown.body.contains("<dd>secrets.changed</dd>") && shown.body.contains("<dd>staging</dd>"), "{}", shown.body);

        // Disabled and enabled again.
        assert_eq!(browser.post(&format!("{hook}/disable"), &[]).await.status, StatusCode::SEE_OTHER);
        let shown = browser.get(&hook).await;
        assert!(shown.body.contains("badge disabled") && shown.body.contains("/enable\""), "{}", shown.body);
        assert_eq!(browser.post(&format!("{hook}/enable"), &[]).await.status, StatusCode::SEE_OTHER);
        assert!(browser.get(&hook).await.body.contains("badge ok"));

        // A rotated secret is shown once too.
        let rotated = browser.post(&format!("{hook}/rotate-secret"), &[]).await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
        let new_secret = revealed_after(&rotated.body, "New signing secret");
        assert!(new_secret.starts_with("whsec_") && new_secret != secret);
        assert!(rotated.body.contains("keeps signing too until"));
        assert!(!browser.get(&hook).await.body.contains(&new_secret));

        // Deleted: back to the list, gone.
        let page = browser.post(&format!("{hook}/delete"), &[]).await;
        assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, HOOKS));
        assert!(browser.get(HOOKS).await.body.contains("No webhooks yet"));
        assert_eq!(browser.get(&hook).await.status, StatusCode::NOT_FOUND);
    }
);

db_test!(
    async fn webhooks_are_offered_to_project_admins_only_and_hidden_from_other_tenants(app) {
        let ann = acme_web(&app).await;
        let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
        app.grant(&ann, "acme", "web", &bob, "developer").await;
        let mut browser = Browser::new(&app);
        browser.sign_in("bob@example.com").await;
        let page = browser.get(HOOKS).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(page.body.contains("Only admins of this project"), "{}", page.body);
        assert!(!page.body.contains("New webhook"));
        let page = browser.post(HOOKS, &[("url", "https://example.com/hook")]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        let r = app.get("/api/v1/orgs/acme/projects/web/webhooks", Some(&ann.access)).await;
        assert!(r.json()["items"].as_array().unwrap().is_empty(), "nothing was created");

        // A project admin manages them.
        app.grant(&ann, "acme", "web", &bob, "admin").await;
        let page = browser.get(HOOKS).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("New webhook"));

        let mut eve = Browser::new(&app);
        eve.sign_up("eve@example.com").await;
        assert_eq!(eve.get(HOOKS).await.status, StatusCode::NOT_FOUND);
        let page = eve.post(HOOKS, &[("url", "https://example.com/hook")]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
    }
);

/// The administrator URL, or `None` (and a message) outside CI when it is not set.
fn admin_url() -> Option<String> {
    match std::env::var("COFFER_TEST_DYNAMIC_ADMIN_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "COFFER_TEST_DYNAMIC_ADMIN_URL must be set in CI: the dynamic secrets' tests may not be skipped"
            );
            eprintln!("skipping: COFFER_TEST_DYNAMIC_ADMIN_URL is not set");
            None
        }
    }
}

db_test!(
    async fn dynamic_secrets_are_configured_leased_and_revoked_from_their_page(app) {
        let Some(admin) = admin_url() else { return };
        let ann = acme_web(&app).await;
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let env = browser.get("/orgs/acme/projects/web/envs/development").await;
        assert!(env.body.contains(&format!("href=\"{DYNAMIC}\"")), "{}", env.body);
        let page = browser.get(DYNAMIC).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("No dynamic secrets") && page.body.contains("New PostgreSQL dynamic secret"));
        assert_no_inline(&page);

        // A refused URL: said next to its field, and not sent back.
        let name = format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let bad = "postgres://admin:hunter2-typed@169.254.169.254/app";
        let page = browser
            .post(DYNAMIC, &[("name", name.as_str()), ("connection_url", bad), ("default_ttl", "60"), ("max_ttl", "120")])
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.body);
        assert!(page.body.contains("id=\"new-dynamic-url-error\""), "{}", page.body);
        assert!(!page.body.contains("hunter2-typed"), "the URL is write-only");
        assert!(page.body.contains(&format!("value=\"{name}\"")), "the name is kept");
        let page = browser
            .post(DYNAMIC, &[("name", name.as_str()), ("connection_url", admin.as_str()), ("default_ttl", "60"), ("max_ttl", "30")])
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.body);
        assert!(page.body.contains("new-dynamic-default-ttl-error"), "{}", page.body);

        let page = browser
            .post(DYNAMIC, &[("name", name.as_str()), ("connection_url", admin.as_str()), ("default_ttl", "60"), ("max_ttl", "120")])
            .await;
        assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, DYNAMIC), "{}", page.body);
        let admin_password = url::Url::parse(&admin).unwrap().password().unwrap_or_default().to_owned();
        let listed = browser.get(DYNAMIC).await;
        assert!(listed.body.contains(&format!("<code>{name}</code>")), "{}", listed.body);
        assert!(!listed.body.contains(&admin), "the stored URL is never in the page");
        assert!(!listed.body.contains(&format!(":{admin_password}@")));

        // Issued: the credentials once, then only the lease.
        let issue = format!("{DYNAMIC}/{name}/leases");
        let issued = browser.post(&issue, &[("ttl", "")]).await;
        assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
        let username = revealed_after(&issued.body, "<dt>Username</dt>");
        let password = revealed_after(&issued.body, "<dt>Password</dt>");
        let connection = revealed_after(&issued.body, "<dt>Connection URL</dt>");
        assert!(username.starts_with(&format!("coffer_development_{name}_")), "{username}");
        assert!(password.len() >= 16 && connection.contains(&username));
        assert_eq!(issued.body.matches("data-copy").count(), 3);
        let listed = browser.get(DYNAMIC).await;
        assert!(listed.body.contains(&username) && listed.body.contains("badge active"), "{}", listed.body);
        assert!(!listed.body.contains(&password), "the password is shown once only");
        // A ttl beyond the maximum is refused next to its field.
        let page = browser.post(&issue, &[("ttl", "100000")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains(&format!("dyn-{name}-ttl-error")), "{}", page.body);

        // Revoked one by one, and all at once.
        let at = listed.body.find("/revoke\"").expect("a revoke button");
        let start = listed.body[..at].rfind("/leases/").unwrap() + "/leases/".len();
        let lease = listed.body[start..at].to_owned();
        let page = browser.post(&format!("{issue}/{lease}/revoke"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let listed = browser.get(DYNAMIC).await;
        assert!(listed.body.contains("badge revoked") && !listed.body.contains("badge active"), "{}", listed.body);
        for _ in 0..2 {
            assert_eq!(browser.post(&issue, &[]).await.status, StatusCode::CREATED);
        }
        let listed = browser.get(DYNAMIC).await;
        assert_eq!(listed.body.matches("badge active").count(), 2);
        assert!(listed.body.contains("Revoke all 2"));
        // The organization's analytics count them.
        let analytics = browser.get("/orgs/acme/analytics").await;
        assert!(
            analytics.body.contains("<td>web/development</td><td>2</td>") &&
            analytics.body.contains(&format!("<title>{name} (web/development): 2</title>")),
            "{}", analytics.body
        );
        let page = browser.post(&format!("{DYNAMIC}/{name}/revoke-all"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let listed = browser.get(DYNAMIC).await;
        assert!(!listed.body.contains("badge active"), "{}", listed.body);
        let api = app.get(&format!("{API_DEV}/dynamic-secrets/{name}"), Some(&ann.access)).await;
        assert_eq!(api.json()["live_leases"], 0, "{}", api.text());

        // Settings: saved without a URL (the stored one stays), refused in place.
        let settings = format!("{DYNAMIC}/{name}");
        let page = browser.post(&settings, &[("connection_url", ""), ("default_ttl", "30"), ("max_ttl", "120"), ("grants", "")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(browser.get(DYNAMIC).await.body.contains("lasts 30 s"));
        let page = browser.post(&settings, &[("default_ttl", "30"), ("max_ttl", "120"), ("grants", "SELECT 1; DROP TABLE x")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains(&format!("dyn-{name}-grants-error")), "{}", page.body);
        assert_eq!(browser.post(&issue, &[]).await.status, StatusCode::CREATED, "the kept URL still works");

        // Deleted (its lease revoked first).
        let page = browser.post(&format!("{settings}/delete"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(browser.get(DYNAMIC).await.body.contains("No dynamic secrets"));
    }
);

db_test!(
    async fn dynamic_secrets_offer_each_role_only_what_it_may_do(app) {
        let ann = acme_web(&app).await;
        let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
        app.grant(&ann, "acme", "web", &bob, "viewer").await;
        let mut browser = Browser::new(&app);
        browser.sign_in("bob@example.com").await;
        let page = browser.get(DYNAMIC).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(!page.body.contains("New PostgreSQL dynamic secret"), "{}", page.body);
        let page = browser
            .post(DYNAMIC, &[("name", "x"), ("connection_url", "postgres://a:b@db.example/x"), ("default_ttl", "60"), ("max_ttl", "60")])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        let mut eve = Browser::new(&app);
        eve.sign_up("eve@example.com").await;
        assert_eq!(eve.get(DYNAMIC).await.status, StatusCode::NOT_FOUND);
    }
);

/// Reads `key` of development through the API with `token`.
async fn read(app: &TestApp, token: &str, key: &str) {
    let r = app
        .get(&format!("{API_DEV}/secrets/{key}"), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// The text of `body` from `start` to the next `end`.
fn section<'a>(body: &'a str, start: &str, end: &str) -> &'a str {
    let from = body
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in {body}"));
    let to = body[from..].find(end).map_or(body.len(), |e| from + e);
    &body[from..to]
}

db_test!(
    async fn analytics_count_what_was_done_through_the_api_for_owners_and_admins_only(app) {
        let ann = acme_web(&app).await;
        for (env, key) in [("development", "KEY_A"), ("development", "KEY_B"), ("production", "KEY_C")] {
            let r = app
                .put(
                    &format!("/api/v1/orgs/acme/projects/web/environments/{env}/secrets/{key}"),
                    Some(&ann.access),
                    json!({ "value": "v" }),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        for _ in 0..3 {
            read(&app, &ann.access, "KEY_A").await;
        }
        let (_, token) = app
            .service_token(&ann, "acme", json!({ "name": "deployer", "project": "web", "environments": ["development"], "access": "read" }))
            .await;
        read(&app, &token, "KEY_B").await;
        let hook = app
            .post("/api/v1/orgs/acme/projects/web/webhooks", Some(&ann.access), json!({ "url": "https://hooks.example.com/in?token=abc", "enabled": true }))
            .await;
        assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text());
        sqlx::query("UPDATE webhooks SET consecutive_failures = 3")
            .execute(app.state.db.pool())
            .await
            .unwrap();

        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let page = browser.get("/orgs/acme/analytics").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_no_inline(&page);
        assert!(page.body.contains("aria-current=\"page\">Analytics"));
        // Charts are SVG with accessible names; bars are rects with attributes.
        assert!(page.body.contains("<svg class=\"chart\"") && page.body.contains("role=\"img\""));
        assert!(page.body.contains("<title id=\"activity-0-title\">"), "{}", page.body);
        assert!(page.body.contains("<rect x=\"") && page.body.contains(" fill=\"#"));

        let activity = section(&page.body, "id=\"activity-title\"", "</section>");
        assert!(activity.contains("<strong>web/development</strong> · 4 reads · 2 writes"), "{activity}");
        assert!(activity.contains("<strong>web/production</strong> · 0 reads · 1 writes"), "{activity}");

        // KEY_A, read three times, is the most-read key.
        let keys = section(&page.body, "id=\"top-keys-table\"", "</table>");
        let first = section(keys, "<tbody>", "</tr>");
        assert!(first.contains("<code>KEY_A</code>") && first.contains("<td>web/development</td><td>3</td>"), "{keys}");
        assert!(keys.contains("<code>KEY_B</code></th><td>web/development</td><td>1</td>"), "{keys}");
        assert!(page.body.contains("<title>KEY_A (web/development): 3</title>"), "the chart says so too");

        let clients = section(&page.body, "id=\"clients-title\"", "</section>");
        assert!(clients.contains("Service token <strong>deployer</strong>") && clients.contains("<code>KEY_B</code>"), "{clients}");
        let webhooks = section(&page.body, "id=\"webhooks-title\"", "</section>");
        assert!(webhooks.contains("https://hooks.example.com/in") && webhooks.contains("3 failed attempts in a row"), "{webhooks}");
        assert!(!webhooks.contains("token=abc"), "no query: it may hold the receiver's tokens");
        assert!(page.body.contains("No dynamic secret is configured"));

        // Another tenant sees nothing of acme, and its own analytics hold none of it.
        let mut eve = Browser::new(&app);
        eve.sign_up("eve@example.com").await;
        assert_eq!(eve.get("/orgs/acme/analytics").await.status, StatusCode::NOT_FOUND);
        eve.get("/").await;
        assert_eq!(eve.post("/orgs", &[("name", "Other"), ("slug", "other")]).await.status, StatusCode::SEE_OTHER);
        let own = eve.get("/orgs/other/analytics").await;
        assert_eq!(own.status, StatusCode::OK, "{}", own.body);
        assert!(!own.body.contains("KEY_A") && !own.body.contains("deployer") && !own.body.contains("hooks.example.com"));
        assert!(own.body.contains("No secret was read or written"));

        // A member is refused, and not offered the link.
        app.member(&ann, "acme", "bob@example.com", "member").await;
        let mut bob = Browser::new(&app);
        bob.sign_in("bob@example.com").await;
        assert!(!bob.get("/orgs/acme").await.body.contains("/orgs/acme/analytics"));
        assert_eq!(bob.get("/orgs/acme/analytics").await.status, StatusCode::FORBIDDEN);
    }
);
