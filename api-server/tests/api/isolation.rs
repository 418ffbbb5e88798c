//! Tenants never see each other: every organization route answers 404 to an outsider, exactly
//! as for an organization that does not exist.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::db_test;

/// A valid body for each write route, so that only authorization can refuse the request.
fn body_for(method: &Method, path: &str) -> Option<Value> {
    let body = match (method.as_str(), path.rsplit('/').next().unwrap_or_default()) {
        ("POST", "orgs") => return None,
        ("PATCH", "{org}") => json!({ "name": "Pwned" }),
        ("PATCH", "{user_id}") => json!({ "role": "owner" }),
        ("POST", "password-reset") => return Some(Value::Null),
        ("POST", "invitations") => json!({ "email": "mallory@example.com", "role": "owner" }),
        ("POST", "teams") => json!({ "slug": "t", "name": "T" }),
        ("PATCH", "{team}") => json!({ "name": "Pwned" }),
        ("PUT", "{team}") => json!({ "role": "admin" }),
        ("POST", "projects") => json!({ "name": "P", "slug": "p" }),
        ("PATCH", "{project}") => json!({ "name": "Pwned" }),
        ("PUT", "{user_id}") if path.contains("/teams/") => return Some(Value::Null),
        ("PUT", "{user_id}") => json!({ "role": "admin" }),
        ("POST", "environments") => json!({ "slug": "evil" }),
        ("PATCH", "{env}") => json!({ "name": "Pwned" }),
        ("PUT", "{role}") => json!({ "access": "read-write" }),
        ("POST", "secrets") => json!({ "key": "STOLEN", "value": "x" }),
        ("PUT", "secrets") => json!({ "secrets": [{ "key": "STOLEN", "value": "x" }] }),
        ("POST", "import") => json!("STOLEN=x"),
        ("PUT", "{key}" | "export" | "import" | "copy") => json!({ "value": "x" }),
        ("POST", "copy") => json!({ "from": "staging" }),
        ("POST", "restore") => json!({}),
        ("POST", "rollback") => json!({ "version": 1 }),
        ("POST", "rotate-key") => json!({}),
        ("POST", "service-tokens") => {
            json!({ "name": "t", "project": "web", "environments": ["production"], "access": "read-write" })
        }
        ("POST", "rotate") => json!({}),
        ("POST", "webhooks") => json!({ "url": "https://example.com/hook" }),
        ("PATCH", "{id}") if path.contains("/webhooks/") => json!({ "enabled": false }),
        ("POST", "rotate-secret" | "ping" | "redeliver") => json!({}),
        ("POST", "dynamic-secrets") => json!({
            "name": "db", "engine": "postgresql", "connection": { "url": "postgres://a:b@127.0.0.1:1/x" },
            "default_ttl": 60, "max_ttl": 120,
        }),
        ("PATCH", "{name}") => json!({ "default_ttl": 30 }),
        ("POST", "leases" | "renew") => json!({}),
        (_, _) if matches!(*method, Method::GET | Method::DELETE) => return Some(Value::Null),
        (m, p) => panic!("no test body for {m} …/{p}: add one"),
    };
    Some(body)
}

db_test!(async fn every_organization_route_is_404_for_a_caller_from_another_organization(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let team = app.post("/api/v1/orgs/acme/teams", Some(&ann.access), json!({ "slug": "ops", "name": "Ops" })).await;
    assert_eq!(team.status, StatusCode::CREATED);
    let put_bob = app.call(Method::PUT, &format!("/api/v1/orgs/acme/teams/ops/members/{}", bob.user_id), Some(&ann.access), None).await;
    assert_eq!(put_bob.status, StatusCode::NO_CONTENT);
    let invitation = app.post("/api/v1/orgs/acme/invitations", Some(&ann.access), json!({ "email": "x@example.com", "role": "viewer" })).await.json();
    let secret = app.post("/api/v1/orgs/acme/projects/web/environments/production/secrets", Some(&ann.access), json!({ "key": "K", "value": "v" })).await;
    assert_eq!(secret.status, StatusCode::CREATED);
    let mallory = app.register("mallory@example.com").await;
    app.org(&mallory, "evil").await;
    let (_, mallory_key) = app.api_key(&mallory, json!({ "name": "k" })).await;
    // A read-write service token of the other organization, on a project named like the victim's.
    app.project(&mallory, "evil", "web").await;
    let r = app.post("/api/v1/orgs/evil/service-tokens", Some(&mallory.access), json!({ "name": "t", "project": "web", "environments": ["production"], "access": "read-write" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let mallory_token = r.json()["token"].as_str().unwrap().to_owned();

    let doc = coffer_server::routes::openapi();
    let mut checked = 0;
    let mut token_404s = 0;
    for (template, item) in &doc.paths.paths {
        if !template.contains("{org}") {
            continue;
        }
        let path = template
            .replace("{org}", "acme")
            .replace("{project}", "web")
            .replace("{team}", "ops")
            .replace("{env}", "production")
            .replace("{user_id}", &bob.user_id)
            .replace("{role}", "developer")
            .replace("{key}", "K")
            .replace("{version}", "1")
            .replace("{name}", "db")
            .replace("{id}", invitation["id"].as_str().unwrap());
        for (method, op) in [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ] {
            if op.is_none() {
                continue;
            }
            let Some(body) = body_for(&method, template) else { continue };
            let body = (!body.is_null()).then_some(body);
            let path = if method == Method::DELETE && template == "/api/v1/orgs/{org}" {
                format!("{path}?confirm=acme")
            } else if template.ends_with("/compare") {
                format!("{path}?base=development&head=staging")
            } else {
                path.clone()
            };
            for token in [&mallory.access, &mallory_key, &mallory_token] {
                let r = app.call(method.clone(), &path, Some(token), body.clone()).await;
                let missing = app.call(method.clone(), &path.replacen("/acme", "/no-such-org", 1), Some(token), body.clone()).await;
                if token == &mallory_token && r.status == StatusCode::FORBIDDEN {
                    // Routes for users only refuse every service token before looking at the
                    // path: the same answer for every organization, existing or not.
                    r.assert_error(StatusCode::FORBIDDEN, "user_required");
                } else {
                    r.assert_error(StatusCode::NOT_FOUND, "not_found");
                }
                assert_eq!(r.status, missing.status, "{method} {template}");
                assert_eq!(r.json()["error"]["code"], missing.json()["error"]["code"], "{method} {template}");
                assert_eq!(r.json()["error"]["message"], missing.json()["error"]["message"], "{method} {template} tells a real organization from a missing one");
                checked += 1;
                token_404s += usize::from(token == &mallory_token && r.status == StatusCode::NOT_FOUND);
            }
        }
    }
    assert!(checked >= 3 * 20, "only {checked} requests checked");
    assert!(token_404s > 10, "the service token reached only {token_404s} routes that take it");
    // Nothing changed for the tenant.
    let org = app.get("/api/v1/orgs/acme", Some(&ann.access)).await.json();
    assert_eq!(org["name"], "ACME");
    assert_eq!(app.get("/api/v1/orgs/acme/members", Some(&ann.access)).await.json()["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.get("/api/v1/orgs/acme/projects/web/environments", Some(&ann.access)).await.json()["items"].as_array().unwrap().len(), 3);
    let ops = app.get("/api/v1/orgs/acme/teams/ops", Some(&ann.access)).await.json();
    assert_eq!((ops["name"].as_str(), ops["members"].as_array().map(Vec::len)), (Some("Ops"), Some(1)));
    assert!(app.get("/api/v1/orgs/acme/projects/web/access", Some(&ann.access)).await.json()["items"].as_array().unwrap().is_empty());
    let secrets = app.get("/api/v1/orgs/acme/projects/web/environments/production/secrets", Some(&ann.access)).await.json();
    assert_eq!(secrets["revision"], 1, "no write went through: {secrets}");
    assert_eq!(secrets["secrets"][0]["value"], "v");
});
