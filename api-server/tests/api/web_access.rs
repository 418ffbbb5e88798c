//! The dashboard's access pages through the real router and database: personal API keys,
//! service tokens, teams and a project's access. Tokens are in the answer that issued them and
//! nowhere after; each role is offered only what it may do, and refused the rest anyway.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, acme_web, db_test};
use crate::web_support::{Browser, Page};

/// The token a page shows once, in its copy panel.
fn token_in(body: &str) -> Option<String> {
    let at = body.find("<code class=\"value\">")? + "<code class=\"value\">".len();
    let end = body[at..].find("</code>")?;
    Some(body[at..at + end].to_owned())
}

/// The id in the first `{before}{id}{after}` of a page.
fn id_in(body: &str, before: &str, after: &str) -> String {
    let at = body
        .find(before)
        .unwrap_or_else(|| panic!("no {before} in {body}"))
        + before.len();
    let end = body[at..].find(after).expect("end of the id");
    body[at..at + end].to_owned()
}

fn assert_refused(page: &Page, status: StatusCode, field_error: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(
        page.body.contains(&format!("id=\"{field_error}\"")),
        "{field_error}: {}",
        page.body
    );
    assert!(page.body.contains("aria-invalid=\"true\""), "{}", page.body);
}

/// A browser signed in as `email` (registered with the API).
async fn signed_in<'a>(app: &'a TestApp, email: &str) -> Browser<'a> {
    let mut browser = Browser::new(app);
    browser.sign_in(email).await;
    browser
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> StatusCode {
    app.get(path, Some(token)).await.status
}

db_test!(
    async fn api_keys_are_shown_once_work_rotate_and_stop_when_revoked(app) {
        let mut browser = Browser::new(&app);
        browser.sign_up("ann@example.com").await;
        let empty = browser.get("/api-keys").await;
        assert_eq!(empty.status, StatusCode::OK);
        assert!(empty.body.contains("You have no API keys"), "{}", empty.body);
        assert!(empty.body.contains("href=\"/api-keys\" aria-current=\"page\""));

        // Refused input: next to its field, the typed name kept, nothing created.
        let page = browser.post("/api-keys", &[("name", " "), ("access", "read")]).await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "key-name-error");
        let page = browser
            .post("/api-keys", &[("name", "ci"), ("access", "read-write"), ("expires_in_days", "5000")])
            .await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "expiry-error");
        assert!(page.body.contains("value=\"ci\"") && page.body.contains("value=\"5000\""));
        assert!(page.body.contains("value=\"read-write\" checked"), "{}", page.body);
        assert!(token_in(&page.body).is_none());

        let page = browser
            .post("/api-keys", &[("name", "ci"), ("access", "read"), ("expires_in_days", "30")])
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("It will not be shown again"), "{}", page.body);
        assert!(page.body.contains("data-copy"));
        let token = token_in(&page.body).expect("the token, once");
        assert!(token.starts_with("cfr_"), "{token}");
        let me = app.get("/api/v1/auth/me", Some(&token)).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text());
        assert_eq!(me.json()["email"], "ann@example.com");

        // Afterwards the list shows its prefix, never the token.
        let listing = browser.get("/api-keys").await;
        assert!(!listing.body.contains(&token), "{}", listing.body);
        assert!(token_in(&listing.body).is_none());
        assert!(listing.body.contains("read-only") && listing.body.contains(">ci<"), "{}", listing.body);
        let id = id_in(&listing.body, "action=\"/api-keys/", "/rotate\"");

        // Rotation shows the new token once; without a grace period the old one stops at once.
        let page = browser.post(&format!("/api-keys/{id}/rotate"), &[("grace", "0")]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let rotated = token_in(&page.body).expect("the new token");
        assert_ne!(rotated, token);
        assert!(page.body.contains("It will not be shown again"));
        assert_eq!(status_of(&app, "/api/v1/auth/me", &token).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(&app, "/api/v1/auth/me", &rotated).await, StatusCode::OK);
        assert!(!browser.get("/api-keys").await.body.contains(&rotated));

        // Someone else cannot revoke it: it is not theirs to know of.
        let mut eve = Browser::new(&app);
        eve.sign_up("eve@example.com").await;
        let page = eve.post(&format!("/api-keys/{id}/revoke"), &[]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert_eq!(status_of(&app, "/api/v1/auth/me", &rotated).await, StatusCode::OK);

        let page = browser.post(&format!("/api-keys/{id}/revoke"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/api-keys?done=revoked");
        assert_eq!(status_of(&app, "/api/v1/auth/me", &rotated).await, StatusCode::UNAUTHORIZED);
        let listing = browser.get(page.location()).await;
        assert!(listing.body.contains("was revoked") && listing.body.contains("You have no API keys"));

        // From htmx (the confirm dialog), the answer loads the page instead of redirecting.
        let page = browser.post("/api-keys", &[("name", "other"), ("access", "read")]).await;
        let other = token_in(&page.body).expect("token");
        let listing = browser.get("/api-keys").await;
        let id = id_in(&listing.body, "action=\"/api-keys/", "/rotate\"");
        let page = browser
            .request(
                Method::POST,
                &format!("/api-keys/{id}/revoke"),
                Some(format!("csrf={}", browser.csrf)),
                &[("hx-request", "true")],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.header("hx-location"), "/api-keys?done=revoked");
        assert_eq!(status_of(&app, "/api/v1/auth/me", &other).await, StatusCode::UNAUTHORIZED);
    }
);

db_test!(
    async fn service_tokens_are_shown_once_reach_their_scope_and_are_for_admins_only(app) {
        let ann = acme_web(&app).await;
        app.project(&ann, "acme", "api").await;
        let put = app
            .call(
                Method::PUT,
                "/api/v1/orgs/acme/projects/web/environments/production/secrets/DATABASE_URL",
                Some(&ann.access),
                Some(json!({ "value": "postgres://prod" })),
            )
            .await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.text());
        let prod = "/api/v1/orgs/acme/projects/web/environments/production/secrets/DATABASE_URL";
        let dev = "/api/v1/orgs/acme/projects/web/environments/development/secrets";

        let mut browser = signed_in(&app, "ann@example.com").await;
        let base = "/orgs/acme/service-tokens";
        let empty = browser.get(base).await;
        assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
        assert!(empty.body.contains("No service tokens yet"), "{}", empty.body);
        assert!(empty.body.contains("value=\"web/production\""), "{}", empty.body);
        assert!(empty.body.contains("href=\"/orgs/acme/service-tokens\" aria-current=\"page\""));

        // Refused: no environment, environments of two projects, a bad expiry.
        let page = browser.post(base, &[("name", "operator"), ("access", "read")]).await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "environments-error");
        assert!(page.body.contains("value=\"operator\""));
        let page = browser
            .post(base, &[("name", "operator"), ("env", "web/production"), ("env", "api/production")])
            .await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "environments-error");
        assert!(page.body.contains("value=\"web/production\" checked"), "{}", page.body);
        let page = browser
            .post(base, &[("name", "operator"), ("env", "web/production"), ("expires_in_days", "0")])
            .await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "token-expiry-error");
        let page = browser.post(base, &[("name", ""), ("env", "web/production")]).await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "token-name-error");

        let page = browser
            .post(base, &[("name", "operator"), ("env", "web/production"), ("access", "read")])
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("It will not be shown again"), "{}", page.body);
        let token = token_in(&page.body).expect("the token, once");
        // It reads its environment, and nothing else.
        let read = app.get(prod, Some(&token)).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text());
        assert_eq!(read.json()["value"], "postgres://prod");
        assert_ne!(status_of(&app, dev, &token).await, StatusCode::OK);

        let listing = browser.get(base).await;
        assert!(!listing.body.contains(&token) && token_in(&listing.body).is_none());
        assert!(listing.body.contains("operator") && listing.body.contains("production"));
        let id = id_in(&listing.body, "action=\"/orgs/acme/service-tokens/", "/rotate\"");

        let page = browser
            .post(&format!("{base}/{id}/rotate"), &[("grace", "3600")])
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let rotated = token_in(&page.body).expect("the new token");
        assert_ne!(rotated, token);
        assert!(page.body.contains("The previous token keeps working until"), "{}", page.body);
        // Within the grace period both work.
        assert_eq!(status_of(&app, prod, &token).await, StatusCode::OK);
        assert_eq!(status_of(&app, prod, &rotated).await, StatusCode::OK);

        // A member sees no link and is refused the page and its forms; another tenant finds
        // nothing.
        app.member(&ann, "acme", "bob@example.com", "member").await;
        let mut bob = signed_in(&app, "bob@example.com").await;
        let projects = bob.get("/orgs/acme").await;
        assert!(!projects.body.contains("/service-tokens"), "{}", projects.body);
        assert_eq!(bob.get(base).await.status, StatusCode::FORBIDDEN);
        let page = bob.post(base, &[("name", "mine"), ("env", "web/production")]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(token_in(&page.body).is_none());
        assert_eq!(bob.post(&format!("{base}/{id}/revoke"), &[]).await.status, StatusCode::FORBIDDEN);
        let mut eve = Browser::new(&app);
        eve.sign_up("eve@example.com").await;
        assert_eq!(eve.get(base).await.status, StatusCode::NOT_FOUND);
        assert_eq!(eve.post(&format!("{base}/{id}/revoke"), &[]).await.status, StatusCode::NOT_FOUND);
        assert_eq!(status_of(&app, prod, &rotated).await, StatusCode::OK);

        let page = browser.post(&format!("{base}/{id}/revoke"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/orgs/acme/service-tokens?done=revoked");
        assert_eq!(status_of(&app, prod, &rotated).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(&app, prod, &token).await, StatusCode::UNAUTHORIZED);
        let listing = browser.get(page.location()).await;
        assert!(listing.body.contains("No service tokens yet"), "{}", listing.body);
    }
);

db_test!(
    async fn teams_are_managed_by_owners_and_admins_and_read_by_members(app) {
        let ann = acme_web(&app).await;
        let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
        let eve = app.register("eve@example.com").await;
        let mut browser = signed_in(&app, "ann@example.com").await;
        let empty = browser.get("/orgs/acme/teams").await;
        assert_eq!(empty.status, StatusCode::OK);
        assert!(empty.body.contains("No teams yet") && empty.body.contains("Create team"));
        assert!(empty.body.contains("href=\"/orgs/acme/teams\" aria-current=\"page\""));

        let page = browser
            .post("/orgs/acme/teams", &[("name", "Backend"), ("slug", "Not A Slug")])
            .await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "team-slug-error");
        assert!(page.body.contains("value=\"Backend\""));
        let page = browser
            .post("/orgs/acme/teams", &[("name", "Backend"), ("slug", "backend")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/orgs/acme/teams/backend");
        let page = browser
            .post("/orgs/acme/teams", &[("name", "Again"), ("slug", "backend")])
            .await;
        assert_refused(&page, StatusCode::CONFLICT, "team-slug-error");

        let team = "/orgs/acme/teams/backend";
        let page = browser.get(team).await;
        assert!(page.body.contains("Nobody is in this team yet"), "{}", page.body);
        assert!(page.body.contains(&format!("value=\"{}\"", bob.user_id)));
        let page = browser.post(&format!("{team}/members"), &[("user", &bob.user_id)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        // Someone outside the organization cannot be added.
        let page = browser.post(&format!("{team}/members"), &[("user", &eve.user_id)]).await;
        assert_refused(&page, StatusCode::NOT_FOUND, "add-user-error");
        let page = browser.post(&format!("{team}/rename"), &[("name", "")]).await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "rename-team-error");
        let page = browser.post(&format!("{team}/rename"), &[("name", "Back end")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        let page = browser.get(team).await;
        assert!(page.body.contains("Back end") && page.body.contains("bob@example.com"), "{}", page.body);

        // A member reads teams, is offered nothing, and is refused anyway.
        let mut member = signed_in(&app, "bob@example.com").await;
        let list = member.get("/orgs/acme/teams").await;
        assert_eq!(list.status, StatusCode::OK);
        assert!(list.body.contains("Back end") && !list.body.contains("Create team"), "{}", list.body);
        let page = member.get(team).await;
        assert_eq!(page.status, StatusCode::OK);
        for offer in ["Add a member", "Rename team", "Delete this team", "/remove\""] {
            assert!(!page.body.contains(offer), "{offer}: {}", page.body);
        }
        let refused = [
            member.post("/orgs/acme/teams", &[("name", "Mine"), ("slug", "mine")]).await,
            member.post(&format!("{team}/rename"), &[("name", "Mine")]).await,
            member.post(&format!("{team}/members/{}/remove", bob.user_id), &[]).await,
            member.post(&format!("{team}/delete"), &[]).await,
        ];
        for page in refused {
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        }
        // Another tenant finds nothing.
        let mut other = signed_in(&app, "eve@example.com").await;
        assert_eq!(other.get("/orgs/acme/teams").await.status, StatusCode::NOT_FOUND);
        assert_eq!(other.get(team).await.status, StatusCode::NOT_FOUND);
        assert_eq!(other.post(&format!("{team}/delete"), &[]).await.status, StatusCode::NOT_FOUND);

        let page = browser
            .post(&format!("{team}/members/{}/remove", bob.user_id), &[])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        // Out of the team, and offered again.
        let page = browser.get(team).await;
        assert!(!page.body.contains(&format!("/members/{}/remove", bob.user_id)), "{}", page.body);
        assert!(page.body.contains(&format!("<option value=\"{}\">", bob.user_id)));
        let page = browser.post(&format!("{team}/delete"), &[]).await;
        assert_eq!(page.location(), "/orgs/acme/teams");
        assert!(browser.get("/orgs/acme/teams").await.body.contains("No teams yet"));
        assert_eq!(browser.get(team).await.status, StatusCode::NOT_FOUND);
    }
);

db_test!(
    async fn project_access_is_granted_and_revoked_by_those_allowed(app) {
        let ann = acme_web(&app).await;
        let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
        let carol = app.member(&ann, "acme", "carol@example.com", "member").await;
        let team = app
            .post("/api/v1/orgs/acme/teams", Some(&ann.access), json!({ "slug": "ops", "name": "Ops" }))
            .await;
        assert_eq!(team.status, StatusCode::CREATED, "{}", team.text());
        let put = app
            .call(
                Method::PUT,
                &format!("/api/v1/orgs/acme/teams/ops/members/{}", carol.user_id),
                Some(&ann.access),
                None,
            )
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.text());

        let access = "/orgs/acme/projects/web/access";
        let mut browser = signed_in(&app, "ann@example.com").await;
        let page = browser.get(access).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("href=\"/orgs/acme/projects/web/access\" aria-current=\"page\""));
        assert!(page.body.contains("Nobody has a role on this project yet"), "{}", page.body);
        assert!(page.body.contains("Give a member a role") && page.body.contains("Give a team a role"));

        // Refused: a role that does not exist, someone who is not a member.
        let users = format!("{access}/users");
        let page = browser.post(&users, &[("user", &bob.user_id), ("role", "superuser")]).await;
        assert_refused(&page, StatusCode::UNPROCESSABLE_ENTITY, "grant-user-role-error");
        assert!(page.body.contains(&format!("value=\"{}\" selected", bob.user_id)), "{}", page.body);
        let eve = app.register("eve@example.com").await;
        let page = browser.post(&users, &[("user", &eve.user_id), ("role", "viewer")]).await;
        assert_refused(&page, StatusCode::NOT_FOUND, "grant-user-error");

        let page = browser.post(&users, &[("user", &bob.user_id), ("role", "developer")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), access);
        let page = browser.post(&format!("{access}/teams"), &[("team", "ops"), ("role", "viewer")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let page = browser.get(access).await;
        assert!(page.body.contains("bob@example.com") && page.body.contains("team ops"), "{}", page.body);
        assert!(page.body.contains("developer") && page.body.contains("viewer"));

        // Bob, a developer, sees who has access but may not change it.
        let mut member = signed_in(&app, "bob@example.com").await;
        assert_eq!(member.get("/orgs/acme/projects/web").await.status, StatusCode::OK);
        let page = member.get(access).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("bob@example.com"));
        for offer in ["Give a member a role", "Give a team a role", "/revoke\"", "role-change"] {
            assert!(!page.body.contains(offer), "{offer}: {}", page.body);
        }
        let refused = [
            member.post(&users, &[("user", &bob.user_id), ("role", "admin")]).await,
            member.post(&users, &[("user", &bob.user_id), ("role", "nonsense")]).await,
            member.post(&format!("{access}/teams/ops/revoke"), &[]).await,
        ];
        for page in refused {
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        }
        // Another tenant finds nothing.
        let mut other = signed_in(&app, "eve@example.com").await;
        assert_eq!(other.get(access).await.status, StatusCode::NOT_FOUND);
        let page = other.post(&users, &[("user", &eve.user_id), ("role", "admin")]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);

        // A role changed, then taken away.
        let page = browser.post(&users, &[("user", &bob.user_id), ("role", "viewer")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        let page = browser.post(&format!("{access}/users/{}/revoke", bob.user_id), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(member.get("/orgs/acme/projects/web").await.status, StatusCode::NOT_FOUND);
        let page = browser.post(&format!("{access}/teams/ops/revoke"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(browser.get(access).await.body.contains("Nobody has a role on this project yet"));
    }
);
