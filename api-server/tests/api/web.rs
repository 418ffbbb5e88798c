//! The web dashboard through the real router and database: browser sessions (cookies, idle
//! timeout, sign-out), CSRF, security headers, what pages hold (never a value until revealed),
//! role-aware pages and tenant isolation. The browser tests (tests/browser) drive the same
//! pages in Chromium.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, acme_web, db_test};
use crate::web_support::Browser;

db_test!(
    async fn pages_and_the_api_carry_the_security_headers(app) {
        let mut browser = Browser::new(&app);
        for page in [browser.get("/login").await, browser.get("/api/v1").await] {
            let csp = page.header("content-security-policy");
            assert!(csp.contains("default-src 'none'"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
            assert_eq!(page.header("referrer-policy"), "no-referrer");
            assert_eq!(page.header("x-content-type-options"), "nosniff");
            assert_eq!(page.header("x-frame-options"), "DENY");
            assert_eq!(page.header("cache-control"), "no-store");
        }
        // No inline script or style that the policy would block.
        let login = browser.get("/login").await;
        assert!(!login.body.contains("<script>") && !login.body.contains("style="), "{}", login.body);
        assert!(!login.body.contains("<style"), "{}", login.body);
    }
);

db_test!(
    async fn assets_are_served_by_content_hash_for_a_year(app) {
        let mut browser = Browser::new(&app);
        let login = browser.get("/login").await;
        let at = login.body.find("/assets/htmx.min.").expect("htmx is linked");
        let end = login.body[at..].find('"').expect("end of the URL");
        let asset = browser.get(&login.body[at..at + end]).await;
        assert_eq!(asset.status, StatusCode::OK);
        assert_eq!(asset.header("cache-control"), "public, max-age=31536000, immutable");
        assert!(asset.header("content-type").starts_with("text/javascript"));
        assert!(asset.body.contains("htmx"));
        let stale = browser.get("/assets/htmx.min.000000000000.js").await;
        assert_eq!(stale.status, StatusCode::NOT_FOUND);
        assert!(stale.body.contains("<html"), "a page, not JSON");
        // The API keeps its JSON errors.
        let api = app.get("/api/v1/nothing-here", None).await;
        api.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
);

db_test!(
    async fn sign_up_sign_in_and_out_with_a_cookie(app) {
        let mut browser = Browser::new(&app);
        // Pages ask visitors to sign in, and come back after.
        let page = browser.get("/orgs/acme").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(page.location(), "/login?next=%2Forgs%2Facme");

        browser.get("/signup").await;
        let page = browser
            .post("/signup", &[("name", "Ann"), ("email", "ann@example.com"), ("password", PASSWORD)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let set = page.header("set-cookie");
        assert!(set.starts_with("coffer_session=cfw_"), "{set}");
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set.contains("Secure"), "plain HTTP in development: {set}");

        let home = browser.get("/").await;
        assert_eq!(home.status, StatusCode::OK);
        assert!(home.body.contains("You are not in any organization yet"), "{}", home.body);

        // Wrong password: refused next to the field, audited as the API's failures are.
        let mut other = Browser::new(&app);
        other.get("/login").await;
        let wrong = other
            .post("/login", &[("email", "ann@example.com"), ("password", "not the password at all")])
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(wrong.body.contains("aria-invalid=\"true\""), "{}", wrong.body);
        assert!(wrong.body.contains("Invalid email or password"), "{}", wrong.body);

        let page = browser.post("/logout", &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(browser.session_cookie().is_none());
        let api = app.login("ann@example.com", PASSWORD).await;
        let token = api.json()["access_token"].as_str().unwrap().to_owned();
        let logins = app.audit_events(&token, "auth.login").await;
        assert!(logins.iter().any(|e| e["outcome"] == "failure"), "{logins:?}");
        assert!(
            logins.iter().any(|e| e["details"]["via"] == "dashboard" || e["outcome"] == "success"),
            "{logins:?}"
        );
    }
);

db_test!(
    async fn a_signed_out_cookie_opens_nothing(app) {
        let mut browser = Browser::new(&app);
        browser.sign_up("ann@example.com").await;
        let stolen = browser.cookies.clone();
        browser.post("/logout", &[]).await;
        let mut thief = Browser::new(&app);
        thief.cookies = stolen;
        let page = thief.get("/settings").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(page.location().starts_with("/login"));
    }
);

db_test!(
    async fn cookies_are_secure_and_host_prefixed_in_production(app, |c| {
        c.mode = coffer_server::config::RunMode::Production;
        c.master_key = Some(secrecy::SecretString::from(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned(),
        ));
        c.jwt_secret = Some(secrecy::SecretString::from("x".repeat(48)));
    }) {
        let mut browser = Browser::new(&app);
        let page = browser.get("/login").await;
        let set = page.header("set-cookie");
        assert!(set.starts_with("__Host-coffer_csrf="), "{set}");
        assert!(set.contains("Secure") && set.contains("HttpOnly"), "{set}");
        browser.get("/signup").await;
        let page = browser
            .post("/signup", &[("name", "Ann"), ("email", "ann@example.com"), ("password", PASSWORD)])
            .await;
        let set = page.header("set-cookie");
        assert!(set.starts_with("__Host-coffer_session=cfw_"), "{set}");
        assert!(set.contains("Secure"), "{set}");
    }
);

db_test!(
    async fn state_changing_requests_need_this_sites_csrf_token(app) {
        let mut browser = Browser::new(&app);
        browser.sign_up("ann@example.com").await;
        browser.get("/").await;
        let token = browser.csrf.clone();

        // No token, a wrong one, another session's: refused, nothing created.
        let mut other = Browser::new(&app);
        other.sign_up("bob@example.com").await;
        other.get("/").await;
        for csrf in ["", "forged", other.csrf.as_str()] {
            browser.csrf = csrf.to_owned();
            let page = browser.post("/orgs", &[("name", "Acme"), ("slug", "acme")]).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{csrf}: {}", page.body);
            assert!(page.body.contains("did not come from this site"), "{}", page.body);
        }
        // The right token from another site (a cross-site form post): refused too.
        browser.csrf = token.clone();
        let body = format!("csrf={token}&name=Acme&slug=acme");
        for (header, value) in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")] {
            let page = browser
                .request(Method::POST, "/orgs", Some(body.clone()), &[(header, value)])
                .await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{header}");
        }
        let page = browser.get("/").await;
        assert!(page.body.contains("You are not in any organization yet"));

        // The header htmx sends works like the field.
        let page = browser
            .request(
                Method::POST,
                "/orgs",
                Some("name=Acme&slug=acme".into()),
                &[("x-csrf-token", token.as_str()), ("origin", "http://localhost")] ,
            )
            .await;
        // `Origin` must name this host: the test router is reached without a Host header.
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        let page = browser
            .request(Method::POST, "/orgs", Some("name=Acme&slug=acme".into()), &[("x-csrf-token", token.as_str())])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/orgs/acme");
    }
);

db_test!(
    async fn an_idle_session_ends(app) {
        let mut browser = Browser::new(&app);
        browser.sign_up("ann@example.com").await;
        assert_eq!(browser.get("/settings").await.status, StatusCode::OK);
        // Last used longer ago than COFFER_WEB_IDLE_TIMEOUT (30 minutes by default).
        let past = coffer_server::ids::Timestamp::now().millis() - 31 * 60 * 1000;
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE web_token_hash IS NOT NULL")
            .bind(past)
            .execute(app.state.db.pool())
            .await
            .unwrap();
        let page = browser.get("/settings").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        let revoked: Option<String> =
            sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE web_token_hash IS NOT NULL")
                .fetch_one(app.state.db.pool())
                .await
                .unwrap();
        assert_eq!(revoked.as_deref(), Some("idle"));
    }
);

db_test!(
    async fn other_sessions_are_signed_out_from_settings(app) {
        let mut browser = Browser::new(&app);
        browser.sign_up("ann@example.com").await;
        let api = app.login("ann@example.com", PASSWORD).await;
        let token = api.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(app.get("/api/v1/auth/me", Some(&token)).await.status, StatusCode::OK);
        let settings = browser.get("/settings").await;
        assert!(settings.body.contains("this session"), "{}", settings.body);
        assert!(settings.body.contains("Sign out other sessions"));
        let page = browser.post("/settings/sessions/end-others", &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        app.get("/api/v1/auth/me", Some(&token))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "session_ended");
        assert_eq!(browser.get("/settings").await.status, StatusCode::OK);
    }
);

db_test!(
    async fn values_are_in_no_page_until_revealed_and_a_reveal_is_an_audited_read(app) {
        let ann = acme_web(&app).await;
        let secret = "s3cr3t-value-that-must-not-leak";
        let put = app
            .call(
                Method::PUT,
                "/api/v1/orgs/acme/projects/web/environments/production/secrets/DATABASE_URL",
                Some(&ann.access),
                Some(json!({ "value": secret, "comment": "primary" })),
            )
            .await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.text());
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let base = "/orgs/acme/projects/web/envs/production";
        for path in [
            "/orgs/acme/projects/web".to_owned(),
            base.to_owned(),
            format!("{base}/secrets/DATABASE_URL/history"),
            format!("{base}/secrets/DATABASE_URL/edit"),
        ] {
            let page = browser.get(&path).await;
            assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
            assert!(page.body.contains("DATABASE_URL"), "{path}");
            assert!(!page.body.contains(secret), "{path} holds the value");
            assert!(!page.body.contains("primary"), "{path} holds the comment");
        }
        let reads_before = app.audit_events(&ann.access, "secrets.read").await.len();
        let revealed = browser
            .request(Method::GET, &format!("{base}/secrets/DATABASE_URL/reveal"), None, &[("hx-request", "true")])
            .await;
        assert_eq!(revealed.status, StatusCode::OK);
        assert!(revealed.body.contains(secret) && revealed.body.contains("primary"));
        assert_eq!(revealed.header("cache-control"), "no-store");
        // The read is recorded before the value leaves (the journal drains into the table).
        let mut reads = Vec::new();
        for _ in 0..50 {
            reads = app.audit_events(&ann.access, "secrets.read").await;
            if reads.len() > reads_before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(reads.len(), reads_before + 1, "{reads:?}");
        // Masking again reads nothing.
        let hidden = browser
            .get(&format!("{base}/secrets/DATABASE_URL/reveal?hide=1"))
            .await;
        assert!(!hidden.body.contains(secret));
    }
);

db_test!(
    async fn secrets_are_added_edited_deleted_restored_and_rolled_back(app) {
        acme_web(&app).await;
        let mut browser = Browser::new(&app);
        browser.sign_in("ann@example.com").await;
        let base = "/orgs/acme/projects/web/envs/development";
        browser.get(base).await;
        let page = browser
            .post(&format!("{base}/secrets"), &[("key", "API_URL"), ("value", "https://one"), ("comment", "")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        // A bad key is refused next to its field, and nothing is written.
        let page = browser
            .post(&format!("{base}/secrets"), &[("key", "1BAD KEY"), ("value", "x")])
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains("id=\"key-error\""), "{}", page.body);
        // Adding an existing key is refused: it is edited on its line.
        let page = browser
            .post(&format!("{base}/secrets"), &[("key", "API_URL"), ("value", "https://two")])
            .await;
        assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);

        let page = browser
            .request(
                Method::POST,
                &format!("{base}/secrets/API_URL"),
                Some(format!("csrf={}&value=https%3A%2F%2Ftwo&set_comment=1&comment=", browser.csrf)),
                &[("hx-request", "true")],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("v2") && !page.body.contains("https://two"), "{}", page.body);

        let history = browser.get(&format!("{base}/secrets/API_URL/history?diff=2")).await;
        assert!(history.body.contains("Changes from v1 to v2"), "{}", history.body);
        assert!(history.body.contains("- https://one") && history.body.contains("+ https://two"));
        let page = browser
            .post(&format!("{base}/secrets/API_URL/rollback"), &[("version", "1")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let listing = browser.get(base).await;
        assert!(listing.body.contains("v3"), "{}", listing.body);

        let page = browser.post(&format!("{base}/secrets/API_URL/delete"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        let listing = browser.get(base).await;
        assert!(listing.body.contains("Deleted secrets (1)"), "{}", listing.body);
        let page = browser.post(&format!("{base}/secrets/API_URL/restore"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        let listing = browser.get(base).await;
        assert!(!listing.body.contains("Deleted secrets"), "{}", listing.body);
    }
);

db_test!(
    async fn pages_offer_each_role_only_what_it_may_do(app) {
        let ann = acme_web(&app).await;
        let bob = app.register("bob@example.com").await;
        let invite = app
            .post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "bob@example.com", "role": "member" }))
            .await;
        assert_eq!(invite.status, StatusCode::CREATED, "{}", invite.text());
        let token = invite.json()["token"].as_str().unwrap().to_owned();
        let mut browser = Browser::new(&app);
        browser.sign_in("bob@example.com").await;
        // The invitation link, from the dashboard.
        browser.get(&format!("/invitations/{token}")).await;
        let page = browser.post(&format!("/invitations/{token}"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/orgs/acme");
        // A member without a grant sees no project, and is told what to do.
        let projects = browser.get("/orgs/acme").await;
        assert!(!projects.body.contains("/orgs/acme/projects/web\""), "{}", projects.body);
        app.grant(&ann, "acme", "web", &bob, "viewer").await;
        let grid = browser.get("/orgs/acme/projects/web").await;
        assert_eq!(grid.status, StatusCode::OK, "{}", grid.body);
        assert!(!grid.body.contains("Delete project") && !grid.body.contains("Rename"));
        let env = browser.get("/orgs/acme/projects/web/envs/development").await;
        assert!(!env.body.contains("Add a secret"), "{}", env.body);
        // The server refuses what the page does not offer.
        let page = browser
            .post("/orgs/acme/projects/web/envs/development/secrets", &[("key", "X"), ("value", "y")])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        let page = browser.post("/orgs/acme/projects/web/delete", &[("confirm", "web")]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        // Another tenant's project is a page that does not exist.
        let mut eve = Browser::new(&app);
        eve.sign_up("eve@example.com").await;
        let page = eve.get("/orgs/acme/projects/web").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        let page = eve.get("/orgs/acme/projects/web/envs/production/secrets/X/reveal").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
    }
);

db_test!(
    async fn projects_are_created_renamed_and_deleted_with_confirmation(app) {
        let mut browser = Browser::new(&app);
        browser.sign_up("ann@example.com").await;
        browser.get("/").await;
        let page = browser.post("/orgs", &[("name", "Acme"), ("slug", "Not A Slug")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains("org-slug-error"), "{}", page.body);
        browser.post("/orgs", &[("name", "Acme"), ("slug", "acme")]).await;
        let empty = browser.get("/orgs/acme").await;
        assert!(empty.body.contains("No projects yet"), "{}", empty.body);
        let page = browser.post("/orgs/acme/projects", &[("name", "Web"), ("slug", "web")]).await;
        assert_eq!(page.location(), "/orgs/acme/projects/web");
        let grid = browser.get("/orgs/acme/projects/web").await;
        assert!(grid.body.contains("No secrets yet"), "{}", grid.body);
        browser.post("/orgs/acme/projects/web/rename", &[("name", "Web app")]).await;
        assert!(browser.get("/orgs/acme").await.body.contains("Web app"));
        let page = browser.post("/orgs/acme/projects/web/delete", &[("confirm", "wrong")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(browser.get("/orgs/acme").await.body.contains("Web app"));
        let page = browser.post("/orgs/acme/projects/web/delete", &[("confirm", "web")]).await;
        assert_eq!(page.location(), "/orgs/acme");
        assert!(browser.get("/orgs/acme").await.body.contains("No projects yet"));
    }
);
