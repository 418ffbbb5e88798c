//! The dashboard's management pages through the router: members, invitations and reset links;
//! environments and their policies; the audit log, live.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::json;
use tower::ServiceExt as _;

use crate::helpers::{PASSWORD, acme_web, db_test};
use crate::web_support::Browser;

db_test!(
    async fn members_are_invited_promoted_reset_and_removed(app) {
        let api = acme_web(&app).await;
        let mut ann = Browser::new(&app);
        ann.sign_in("ann@example.com").await;
        let page = ann.get("/orgs/acme/members").await;
        assert!(page.body.contains("Invite someone"), "{}", page.body);
        let bad = ann.post("/orgs/acme/invitations", &[("email", "not-an-email"), ("role", "member")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.body.contains("invite-email-error"), "{}", bad.body);
        let page = ann.post("/orgs/acme/invitations", &[("email", "bob@example.com"), ("role", "viewer")]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("Invitation link for bob@example.com"), "{}", page.body);
        let at = page.body.find("/invitations/").expect("link");
        let end = page.body[at..].find('<').expect("end");
        let link = page.body[at..at + end].to_owned();
        // Shown once: the list afterwards names the invitation, not its link.
        let again = ann.get("/orgs/acme/members").await;
        assert!(again.body.contains("bob@example.com") && !again.body.contains(&link));

        // Bob signs up through the link and joins as a viewer.
        let mut bob = Browser::new(&app);
        let visit = bob.get(&link).await;
        assert_eq!(visit.status, StatusCode::SEE_OTHER);
        assert!(visit.location().starts_with("/signup?next="), "{}", visit.location());
        bob.sign_up("bob@example.com").await;
        bob.get(&link).await;
        let joined = bob.post(&link, &[]).await;
        assert_eq!(joined.location(), "/orgs/acme");
        let members = bob.get("/orgs/acme/members").await;
        assert!(!members.body.contains("Invite someone") && !members.body.contains("Reset link"));

        // Ann makes Bob a member, then gives him a reset link, which sets his password.
        let members = app.get("/api/v1/orgs/acme/members", Some(&api.access)).await.json();
        let bob_id = members["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["email"] == "bob@example.com")
            .and_then(|m| m["user_id"].as_str().or(m["id"].as_str()))
            .expect("bob is a member")
            .to_owned();
        ann.get("/orgs/acme/members").await;
        let page = ann.post(&format!("/orgs/acme/members/{bob_id}/role"), &[("role", "member")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        ann.get("/orgs/acme/members").await;
        let page = ann.post(&format!("/orgs/acme/members/{bob_id}/reset-link"), &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("Password-reset link for bob@example.com"), "{}", page.body);
        let at = page.body.find("/reset-password/").expect("reset link");
        let end = page.body[at..].find('<').expect("end");
        let reset = page.body[at..at + end].to_owned();
        let mut stranger = Browser::new(&app);
        assert_eq!(stranger.get(&reset).await.status, StatusCode::OK);
        let weak = stranger.post(&reset, &[("password", "short")]).await;
        assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(weak.body.contains("password-error"), "{}", weak.body);
        let done = stranger.post(&reset, &[("password", "a brand new passphrase for bob")]).await;
        assert_eq!(done.location(), "/login?done=reset");
        // Bob's session ended with the reset; the link is spent.
        assert_eq!(bob.get("/orgs/acme").await.status, StatusCode::SEE_OTHER);
        let spent = stranger.post(&reset, &[("password", "another brand new passphrase")]).await;
        assert_eq!(spent.status, StatusCode::UNAUTHORIZED);
        assert_eq!(app.login("bob@example.com", "a brand new passphrase for bob").await.status, StatusCode::OK);
        assert_eq!(app.login("bob@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED);

        ann.get("/orgs/acme/members").await;
        let mut bob = Browser::new(&app);
        bob.get("/login").await;
        bob.post("/login", &[("email", "bob@example.com"), ("password", "a brand new passphrase for bob")]).await;
        assert_eq!(bob.get("/orgs/acme/members").await.status, StatusCode::OK);
        let page = ann.post(&format!("/orgs/acme/members/{bob_id}/remove"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        // At once: the form made the server forget what it remembered of Bob's standing.
        assert_eq!(bob.get("/orgs/acme/members").await.status, StatusCode::NOT_FOUND);
        assert!(!ann.get("/orgs/acme/members").await.body.contains("bob@example.com"));
    }
);

db_test!(
    async fn environments_are_managed_and_a_policy_hides_production_from_developers(app) {
        let ann_api = acme_web(&app).await;
        let dev = app.register("dev@example.com").await;
        let add = app
            .post("/api/v1/orgs/acme/invitations", Some(&ann_api.access), json!({ "email": "dev@example.com", "role": "member" }))
            .await;
        let token = add.json()["token"].as_str().unwrap().to_owned();
        app.post(&format!("/api/v1/invitations/{token}/accept"), Some(&dev.access), json!({})).await;
        app.grant(&ann_api, "acme", "web", &dev, "developer").await;

        let mut ann = Browser::new(&app);
        ann.sign_in("ann@example.com").await;
        let page = ann.get("/orgs/acme/projects/web/environments").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let page = ann.post("/orgs/acme/projects/web/environments", &[("slug", "Bad Slug"), ("name", "")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains("env-slug-error"));
        let page = ann.post("/orgs/acme/projects/web/environments", &[("slug", "qa"), ("name", "QA")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        ann.get("/orgs/acme/projects/web/environments").await;
        ann.post("/orgs/acme/projects/web/environments/qa", &[("name", "Quality")]).await;
        ann.post("/orgs/acme/projects/web/environments/qa", &[("position", "0")]).await;
        let page = ann.get("/orgs/acme/projects/web/environments").await;
        let quality = page.body.find("Quality").expect("renamed");
        let development = page.body.find("id=\"env-development\"").expect("development");
        assert!(quality < development, "moved first");
        let page = ann.post("/orgs/acme/projects/web/environments/qa/delete", &[("confirm", "nope")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        ann.post("/orgs/acme/projects/web/environments/qa/delete", &[("confirm", "qa")]).await;
        assert!(!ann.get("/orgs/acme/projects/web/environments").await.body.contains("Quality"));

        // Production: developers get no access.
        let page = ann
            .post("/orgs/acme/projects/web/environments/production/policies", &[("admin", "default"), ("developer", "none"), ("viewer", "default")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        // One field per role: a form repeating them is refused before anything is written.
        let page = ann
            .post(
                "/orgs/acme/projects/web/environments/staging/policies",
                &[("admin", "none"), ("developer", "none"), ("viewer", "none"), ("admin", "none")],
            )
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        let staging = app
            .get("/api/v1/orgs/acme/projects/web/environments/staging", Some(&ann_api.access))
            .await
            .json();
        assert_eq!(staging["policies"], json!({}), "nothing was written: {staging}");
        let mut developer = Browser::new(&app);
        developer.sign_in("dev@example.com").await;
        let grid = developer.get("/orgs/acme/projects/web").await;
        assert!(grid.body.contains("(no access)"), "{}", grid.body);
        let page = developer.get("/orgs/acme/projects/web/envs/production").await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        let envs = developer.get("/orgs/acme/projects/web/environments").await;
        assert!(!envs.body.contains("Save policies") && envs.body.contains("developer: none"), "{}", envs.body);
        let page = developer
            .post("/orgs/acme/projects/web/environments/production/policies", &[("developer", "read-write")])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
    }
);

db_test!(
    async fn the_audit_log_filters_and_streams_new_events(app) {
        let api = acme_web(&app).await;
        let mut ann = Browser::new(&app);
        ann.sign_in("ann@example.com").await;
        let page = ann.get("/orgs/acme/audit").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("project.created") && page.body.contains("sse-connect"), "{}", page.body);
        let filtered = ann.get("/orgs/acme/audit?action=org.created").await;
        assert!(filtered.body.contains("org.created") && !filtered.body.contains("<code>project.created"));
        assert!(!filtered.body.contains("sse-connect"));
        let bad = ann.get("/orgs/acme/audit?since=yesterday").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);

        // The live stream: a read through the API arrives as a line of the table.
        let cookie: Vec<String> = ann.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let request = Request::builder()
            .uri("/orgs/acme/audit/stream")
            .header("cookie", cookie.join("; "))
            .body(Body::empty())
            .unwrap();
        let response = app.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut body = response.into_body();
        app.call(
            Method::PUT,
            "/api/v1/orgs/acme/projects/web/environments/development/secrets/LIVE_KEY",
            Some(&api.access),
            Some(json!({ "value": "v" })),
        )
        .await;
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !seen.contains("secret.updated") {
            let frame = tokio::time::timeout_at(deadline, body.frame()).await.expect("an event in time");
            let frame = frame.expect("open").expect("frame");
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
        assert!(seen.contains("event: audit") && seen.contains("<tr"), "{seen}");
        assert!(seen.contains("ann@example.com"), "the actor by email: {seen}");

        // Members who are not admins have no audit log.
        let bob = app.register("bob@example.com").await;
        let invite = app
            .post("/api/v1/orgs/acme/invitations", Some(&api.access), json!({ "email": "bob@example.com", "role": "member" }))
            .await;
        let token = invite.json()["token"].as_str().unwrap().to_owned();
        app.post(&format!("/api/v1/invitations/{token}/accept"), Some(&bob.access), json!({})).await;
        let mut member = Browser::new(&app);
        member.sign_in("bob@example.com").await;
        assert_eq!(member.get("/orgs/acme/audit").await.status, StatusCode::FORBIDDEN);
        assert!(!member.get("/orgs/acme").await.body.contains("/orgs/acme/audit"));
    }
);

db_test!(
    async fn the_profile_name_is_changed_from_settings_and_the_api(app) {
        let api = acme_web(&app).await;
        let mut ann = Browser::new(&app);
        ann.sign_in("ann@example.com").await;
        let page = ann.post("/settings/profile", &[("name", "   ")]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains("profile-name-error"), "{}", page.body);
        let page = ann.post("/settings/profile", &[("name", "Ann Lovelace")]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("Your name was changed") && page.body.contains("Ann Lovelace"));
        let me = app
            .call(Method::PATCH, "/api/v1/auth/me", Some(&api.access), Some(json!({ "name": "Ann B." })))
            .await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text());
        assert_eq!(me.json()["name"], "Ann B.");
        let (_, key) = app.api_key(&api, json!({ "name": "ro", "read_only": true })).await;
        app.call(Method::PATCH, "/api/v1/auth/me", Some(&key), Some(json!({ "name": "X" })))
            .await
            .assert_error(StatusCode::FORBIDDEN, "read_only_key");
        assert_eq!(app.audit_events(&api.access, "auth.profile_updated").await.len(), 2);
    }
);
