//! Dynamic secrets against the real PostgreSQL of `COFFER_TEST_DYNAMIC_ADMIN_URL` (an
//! administrator with CREATEROLE): issued roles log in and can do what they were granted until
//! they are revoked or expire; renewals stop at the maximum; idempotent issues; the reaper
//! after a client went away, after a crash and after a failed revocation; bad configurations;
//! tenants; and no password anywhere but in the issuing answer.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use coffer_server::db::Timestamp;

use crate::helpers::{Session, TestApp, acme_web, db_test};

const DEV: &str = "/api/v1/orgs/acme/projects/web/environments/development";

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

/// A name no other test (or run) uses, for a dynamic secret: its roles start with
/// `coffer_development_<name>_`.
fn unique_name() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn role_prefix(name: &str) -> String {
    format!("coffer_development_{name}_")
}

async fn admin(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("the administrator connects")
}

/// The roles whose names start with `prefix`.
async fn roles(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = admin(url).await;
    sqlx::query_scalar(
        "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1",
    )
    .bind(prefix)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn exec(url: &str, sql: &str) {
    let mut conn = admin(url).await;
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}

/// Creates the dynamic secret `name` in acme/web/development as `by`, with `extra` fields.
async fn create(app: &TestApp, by: &Session, url: &str, name: &str, extra: Value) -> Value {
    let mut body = json!({
        "name": name,
        "engine": "postgresql",
        "connection": { "url": url },
        "default_ttl": 60,
        "max_ttl": 120,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = app
        .post(&format!("{DEV}/dynamic-secrets"), Some(&by.access), body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()
}

async fn issue(
    app: &TestApp,
    token: &str,
    name: &str,
    body: Value,
) -> crate::helpers::TestResponse {
    app.post(
        &format!("{DEV}/dynamic-secrets/{name}/leases"),
        Some(token),
        body,
    )
    .await
}

async fn issue_with_key(
    app: &TestApp,
    token: &str,
    name: &str,
    key: &str,
) -> crate::helpers::TestResponse {
    let request = axum::http::Request::post(format!("{DEV}/dynamic-secrets/{name}/leases"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(axum::body::Body::from("{}"))
        .unwrap();
    app.send(request).await
}

async fn lease(app: &TestApp, token: &str, name: &str, id: &str) -> Value {
    let r = app
        .get(
            &format!("{DEV}/dynamic-secrets/{name}/leases/{id}"),
            Some(token),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// Waits (up to `within`) until the lease's state is `state`.
async fn wait_for_state(
    app: &TestApp,
    token: &str,
    name: &str,
    id: &str,
    state: &str,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let l = lease(app, token, name, id).await;
        if l["state"] == state {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease {id} is still {}, not {state}",
            l["state"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in with a lease's connection URL and runs `sql`.
async fn as_lease(connection_url: &str, sql: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect(connection_url)
        .await
        .map_err(|e| e.to_string())?;
    let done = sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = conn.close().await;
    done
}

/// The organization's audit events of `action` (the reaper's included).
async fn org_audit(app: &TestApp, by: &Session, action: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/api/v1/orgs/acme/audit-events?limit=200&action={action}"),
            Some(&by.access),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

/// Every page of the project's event history, as text.
async fn event_history(app: &TestApp, token: &str) -> Vec<Value> {
    let r = app
        .get(
            "/api/v1/orgs/acme/projects/web/events?limit=200",
            Some(token),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

db_test!(async fn an_issued_role_works_as_granted_until_revoked_and_renewals_stop_at_the_maximum(app) {
    let Some(url) = admin_url() else { return };
    let ann = acme_web(&app).await;
    let name = unique_name();
    let table = format!("orders_{name}");
    exec(&url, &format!("CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)")).await;
    let created = create(&app, &ann, &url, &name, json!({ "grants": [format!("SELECT ON {table}")] })).await;
    assert!(created.get("connection").is_none() && !created.to_string().contains("coffer_dyn_admin"), "the URL is never returned: {created}");
    assert_eq!(created["live_leases"], 0);

    let r = issue(&app, &ann.access, &name, json!({ "ttl": 30 })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let issued = r.json();
    let (id, username, password) = (issued["id"].as_str().unwrap(), issued["username"].as_str().unwrap(), issued["password"].as_str().unwrap());
    let connection_url = issued["connection_url"].as_str().unwrap();
    assert!(username.starts_with(&role_prefix(&name)), "{username}");
    assert_eq!(password.len(), 32);
    assert_eq!(issued["renewable"], true);
    as_lease(connection_url, &format!("SELECT * FROM {table}")).await.expect("the grant works");
    let refused = as_lease(connection_url, &format!("INSERT INTO {table} VALUES (2)")).await.unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");

    // Metadata never carries the password.
    let l = lease(&app, &ann.access, &name, id).await;
    assert_eq!(l["state"], "active");
    assert_eq!(l["username"], username);
    assert!(!l.to_string().contains(password));
    let listed = app.get(&format!("{DEV}/dynamic-secrets/{name}/leases"), Some(&ann.access)).await;
    assert_eq!(listed.json()["items"].as_array().unwrap().len(), 1);
    assert!(!listed.text().contains(password));

    // Renewals move the expiry, never past the maximum (issue + 120 s).
    let before = l["expires_at"].as_str().unwrap().to_owned();
    let r = app.post(&format!("{DEV}/dynamic-secrets/{name}/leases/{id}/renew"), Some(&ann.access), json!({ "ttl": 90 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["expires_at"].as_str().unwrap() > before.as_str());
    assert_eq!(r.json()["renewals"], 1);
    let m = app.post(&format!("{DEV}/dynamic-secrets/{name}/leases/{id}/renew"), Some(&ann.access), json!({ "ttl": 200 })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "beyond_max_ttl");
    assert!(m.contains("maximum"), "{m}");
    issue(&app, &ann.access, &name, json!({ "ttl": 121 })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_ttl");
    as_lease(connection_url, "SELECT 1").await.expect("still works after renewing");

    // Revoked: the role is gone and cannot log in.
    let r = app.delete(&format!("{DEV}/dynamic-secrets/{name}/leases/{id}"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["state"], "revoked");
    assert!(r.json()["revoked_at"].is_string());
    assert!(roles(&url, &role_prefix(&name)).await.is_empty());
    assert!(as_lease(connection_url, "SELECT 1").await.is_err());
    app.post(&format!("{DEV}/dynamic-secrets/{name}/leases/{id}/renew"), Some(&ann.access), json!({})).await
        .assert_error(StatusCode::CONFLICT, "lease_not_active");
    // Revoking again changes nothing.
    assert_eq!(app.delete(&format!("{DEV}/dynamic-secrets/{name}/leases/{id}"), Some(&ann.access)).await.json()["state"], "revoked");

    // Audited and streamed with the username, never the password.
    for action in ["lease.issued", "lease.renewed", "lease.revoked"] {
        let events = app.audit_events(&ann.access, action).await;
        assert_eq!(events.len(), 1, "{action}");
        assert_eq!(events[0]["details"]["username"], username);
    }
    let history = event_history(&app, &ann.access).await;
    let kinds: Vec<&str> = history.iter().filter(|e| e["lease"]["id"] == id).map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["lease.issued", "lease.renewed", "lease.revoked"]);
    assert!(history.iter().filter(|e| e["lease"]["id"] == id).all(|e| e["environment"] == "development" && e["lease"]["username"] == username));
    let all = app.get("/api/v1/audit-events?limit=200", Some(&ann.access)).await.text();
    assert!(!all.contains(password) && !all.contains("coffer_dyn_admin:"), "a secret reached the audit log");
    assert!(!serde_json::to_string(&history).unwrap().contains(password));

    // Deleting the dynamic secret needs no lease left; then it is gone.
    let r = app.delete(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    exec(&url, &format!("DROP TABLE {table}")).await;
});

db_test!(async fn an_idempotency_key_returns_the_same_lease_to_its_caller_and_nothing_to_others(app) {
    let Some(url) = admin_url() else { return };
    let ann = acme_web(&app).await;
    let name = unique_name();
    create(&app, &ann, &url, &name, json!({})).await;
    let (_, token) = app.service_token(&ann, "acme", json!({ "name": "op", "project": "web", "environments": ["development"], "access": "read" })).await;

    let first = issue_with_key(&app, &token, &name, "uid-1/db/0").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let again = issue_with_key(&app, &token, &name, "uid-1/db/0").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    for field in ["id", "username", "password", "connection_url", "expires_at"] {
        assert_eq!(first.json()[field], again.json()[field], "{field}");
    }
    // Another caller with the same key: the lease is not shown.
    let m = issue_with_key(&app, &ann.access, &name, "uid-1/db/0").await.assert_error(StatusCode::CONFLICT, "idempotency_key_used");
    assert!(m.contains(first.json()["id"].as_str().unwrap()), "{m}");
    let listed = app.get(&format!("{DEV}/dynamic-secrets/{name}/leases"), Some(&token)).await.json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "a retry never mints a second role");
    assert_eq!(items[0]["idempotency_key"], "uid-1/db/0");
    assert_eq!(items[0]["issued_by"]["kind"], "service_token");
    assert_eq!(roles(&url, &role_prefix(&name)).await.len(), 1);

    // A data-key rotation re-seals the connection (leases are still issued) and forgets the
    // passwords kept for retries (a retry gets the lease's id, not its credentials).
    let r = app.post("/api/v1/orgs/acme/projects/web/rotate-key", Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    issue_with_key(&app, &token, &name, "uid-1/db/0").await.assert_error(StatusCode::CONFLICT, "idempotency_key_used");
    let after = issue_with_key(&app, &token, &name, "uid-1/db/1").await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text());
    let r = app.delete(&format!("{DEV}/dynamic-secrets/{name}/leases/{}", after.json()["id"].as_str().unwrap()), Some(&token)).await;
    assert_eq!(r.json()["state"], "revoked", "{}", r.text());

    // A read-only token revokes its own lease, not another's.
    let ann_lease = issue(&app, &ann.access, &name, json!({})).await.json();
    app.delete(&format!("{DEV}/dynamic-secrets/{name}/leases/{}", ann_lease["id"].as_str().unwrap()), Some(&token)).await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let r = app.delete(&format!("{DEV}/dynamic-secrets/{name}/leases/{}", first.json()["id"].as_str().unwrap()), Some(&token)).await;
    assert_eq!(r.json()["state"], "revoked", "{}", r.text());
    // A revoked lease's key stays taken.
    issue_with_key(&app, &token, &name, "uid-1/db/0").await.assert_error(StatusCode::CONFLICT, "idempotency_key_used");
    issue_with_key(&app, &token, &name, "bad key").await.assert_error(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    let all = app.delete(&format!("{DEV}/dynamic-secrets/{name}/leases"), Some(&ann.access)).await;
    assert_eq!(all.json(), json!({ "revoked": 1, "pending": 0 }), "{}", all.text());
    assert!(roles(&url, &role_prefix(&name)).await.is_empty());
    app.delete(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access)).await;
});

db_test!(async fn bad_configurations_are_refused_with_the_reason_and_store_nothing(app) {
    let Some(url) = admin_url() else { return };
    let ann = acme_web(&app).await;
    let parsed = url::Url::parse(&url).unwrap();
    let with = |f: &dyn Fn(&mut url::Url)| {
        let mut u = parsed.clone();
        f(&mut u);
        u.to_string()
    };
    let post = |u: String, extra: Value| {
        let (app, ann) = (&app, &ann);
        async move {
            let mut body = json!({ "name": "db", "engine": "postgresql", "connection": { "url": u }, "default_ttl": 60, "max_ttl": 120 });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            app.post(&format!("{DEV}/dynamic-secrets"), Some(&ann.access), body).await
        }
    };
    let wrong_password = with(&|u| { u.set_password(Some("not-the-password")).unwrap(); });
    let m = post(wrong_password, json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "connection_refused");
    assert!(m.contains("password authentication failed"), "{m}");
    assert!(!m.contains("not-the-password"), "{m}");
    let unreachable = with(&|u| { u.set_port(Some(1)).unwrap(); });
    post(unreachable, json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "connection_failed");
    let metadata = with(&|u| { u.set_host(Some("169.254.169.254")).unwrap(); });
    post(metadata, json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "connection_not_allowed");
    post(format!("{url}?host=/var/run/postgresql"), json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_connection_url");
    post("mysql://a:b@127.0.0.1/x".into(), json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_connection_url");
    post(url.clone(), json!({ "default_ttl": 300 })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_ttl");
    post(url.clone(), json!({ "username_template": "{{random}}" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_username_template");
    post(url.clone(), json!({ "creation_statements": ["CREATE ROLE \"{{name}}\""] })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_statements");
    post(url.clone(), json!({ "grants": ["SELECT ON t TO x; DROP TABLE t"] })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_grants");
    post(url.clone(), json!({ "password_policy": { "length": 8 } })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_password_policy");

    // An administrator without CREATEROLE.
    let weak = format!("coffer_weak_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    exec(&url, &format!("CREATE ROLE {weak} LOGIN PASSWORD 'weak-pw'")).await;
    let weak_url = with(&|u| { u.set_username(&weak).unwrap(); u.set_password(Some("weak-pw")).unwrap(); });
    let m = post(weak_url, json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "insufficient_privilege");
    assert!(m.contains("CREATEROLE"), "{m}");
    exec(&url, &format!("DROP ROLE {weak}")).await;

    // coffer-server's own database is out of reach.
    if let Some(own) = app.state.config.database_url.as_deref().filter(|u| u.starts_with("postgres")) {
        let own = url::Url::parse(own).unwrap();
        let mut target = parsed.clone();
        target.set_path(own.path());
        post(target.to_string(), json!({})).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "connection_not_allowed");
    }
    let listed = app.get(&format!("{DEV}/dynamic-secrets"), Some(&ann.access)).await;
    assert_eq!(listed.json()["items"], json!([]), "nothing was stored");

    // Connection checks are login attempts on a database: an organization gets a few a minute.
    let wrong_password = with(&|u| { u.set_password(Some("guess")).unwrap(); });
    let mut refused = None;
    for _ in 0..12 {
        let r = post(wrong_password.clone(), json!({})).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(r);
            break;
        }
        r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "connection_refused");
    }
    let refused = refused.expect("the checks are rate-limited");
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));

    // Only project admins configure; members of other tenants see nothing.
    let dev = app.member(&ann, "acme", "dev@example.com", "member").await;
    app.grant(&ann, "acme", "web", &dev, "developer").await;
    let r = app.post(&format!("{DEV}/dynamic-secrets"), Some(&dev.access), json!({ "name": "db", "engine": "postgresql", "connection": { "url": url }, "default_ttl": 60, "max_ttl": 120 })).await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden");
});

db_test!(async fn other_tenants_get_404_and_deleting_what_holds_dynamic_secrets_is_refused(app) {
    let Some(url) = admin_url() else { return };
    let ann = acme_web(&app).await;
    let name = unique_name();
    create(&app, &ann, &url, &name, json!({})).await;
    let id = issue(&app, &ann.access, &name, json!({})).await.json()["id"].as_str().unwrap().to_owned();
    let bob = app.register("bob@example.com").await;
    app.org(&bob, "bobs").await;
    let paths = [
        format!("{DEV}/dynamic-secrets"),
        format!("{DEV}/dynamic-secrets/{name}"),
        format!("{DEV}/dynamic-secrets/{name}/leases"),
        format!("{DEV}/dynamic-secrets/{name}/leases/{id}"),
    ];
    for path in &paths {
        app.get(path, Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    issue(&app, &bob.access, &name, json!({})).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.delete(&paths[3], Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.post(&format!("{}/renew", paths[3]), Some(&bob.access), json!({})).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // A token of another project or environment does not reach it either.
    let (_, staging) = app.service_token(&ann, "acme", json!({ "name": "s", "project": "web", "environments": ["staging"], "access": "read-write" })).await;
    issue(&app, &staging, &name, json!({})).await.assert_error(StatusCode::FORBIDDEN, "forbidden");

    app.delete(DEV, Some(&ann.access)).await.assert_error(StatusCode::CONFLICT, "has_dynamic_secrets");
    app.delete("/api/v1/orgs/acme/projects/web", Some(&ann.access)).await.assert_error(StatusCode::CONFLICT, "has_dynamic_secrets");
    app.delete("/api/v1/orgs/acme?confirm=acme", Some(&ann.access)).await.assert_error(StatusCode::CONFLICT, "has_dynamic_secrets");
    assert_eq!(roles(&url, &role_prefix(&name)).await.len(), 1, "the role is still leased");
    let r = app.delete(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(roles(&url, &role_prefix(&name)).await.is_empty(), "deleting revokes");
    let r = app.delete(DEV, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
});

db_test!(async fn the_reaper_revokes_expired_leases_and_retries_failed_revocations(app, |c| {
    c.dynamic_reaper_interval_ms = 100;
    c.dynamic_retry_max_ms = 200;
}) {
    let Some(url) = admin_url() else { return };
    let ann = acme_web(&app).await;
    let name = unique_name();
    let gate = format!("gate_{name}");
    // Revocation fails until the table `gate` exists.
    let mut revocation: Vec<String> = vec![format!(
        "DO $$ BEGIN IF to_regclass('public.{gate}') IS NULL THEN RAISE EXCEPTION 'the gate is closed'; END IF; END $$"
    )];
    revocation.extend(["GRANT \"{{name}}\" TO CURRENT_USER", "DROP OWNED BY \"{{name}}\"", "DROP ROLE \"{{name}}\""].map(String::from));
    create(&app, &ann, &url, &name, json!({ "default_ttl": 1, "max_ttl": 60, "revocation_statements": revocation })).await;
    let issued = issue(&app, &ann.access, &name, json!({})).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text());
    let id = issued.json()["id"].as_str().unwrap().to_owned();
    // Expired: the reaper tries, the database refuses, and the lease says why.
    let l = wait_for_state(&app, &ann.access, &name, &id, "revoking", Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = lease(&app, &ann.access, &name, &id).await;
        if l["last_error"].as_str().is_some_and(|e| e.contains("the gate is closed")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failed attempt recorded: {l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l["renewable"], false);
    assert_eq!(roles(&url, &role_prefix(&name)).await.len(), 1);
    // The role is still there, but past its VALID UNTIL it cannot log in.
    let expired = as_lease(issued.json()["connection_url"].as_str().unwrap(), "SELECT 1").await.unwrap_err();
    assert!(expired.contains("password authentication failed"), "{expired}");
    // Retried until it works.
    exec(&url, &format!("CREATE TABLE {gate} (x int)")).await;
    wait_for_state(&app, &ann.access, &name, &id, "revoked", Duration::from_secs(10)).await;
    assert!(roles(&url, &role_prefix(&name)).await.is_empty());
    assert!(!org_audit(&app, &ann, "lease.revocation_failed").await.is_empty());
    let revoked = org_audit(&app, &ann, "lease.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["actor"]["type"], "system");
    exec(&url, &format!("DROP TABLE {gate}")).await;
    app.delete(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access)).await;
});

/// A client that goes away mid-issue does not leave a role behind without a lease: the role is
/// made anyway and its lease is usable (and revocable); a creation that fails is cleaned up.
#[tokio::test]
async fn a_client_going_away_or_a_failed_creation_leaves_no_role_without_a_lease() {
    let Some(url) = admin_url() else { return };
    let app = TestApp::sqlite(|c| c.dynamic_reaper_interval_ms = 100).await;
    let ann = acme_web(&app).await;
    let name = unique_name();
    let slow = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
        "SELECT pg_sleep(0.5)",
    ];
    create(
        &app,
        &ann,
        &url,
        &name,
        json!({ "creation_statements": slow }),
    )
    .await;
    let gone = tokio::time::timeout(
        Duration::from_millis(150),
        issue(&app, &ann.access, &name, json!({})),
    )
    .await;
    assert!(gone.is_err(), "the request was cut off mid-issue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let leases = loop {
        let listed = app
            .get(
                &format!("{DEV}/dynamic-secrets/{name}/leases"),
                Some(&ann.access),
            )
            .await
            .json();
        let items = listed["items"].as_array().unwrap().clone();
        if items.iter().all(|l| l["state"] != "creating") {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still creating: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(leases.len(), 1);
    assert_eq!(
        leases[0]["state"], "active",
        "the role was made and its lease is usable"
    );
    assert_eq!(
        roles(&url, &role_prefix(&name)).await,
        [leases[0]["username"].as_str().unwrap()]
    );

    // A creation that fails after making the role: the role is revoked, the lease failed.
    let failing = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'",
        "SELECT 1/0",
    ];
    let r = app
        .patch(
            &format!("{DEV}/dynamic-secrets/{name}"),
            Some(&ann.access),
            json!({ "creation_statements": failing }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = issue(&app, &ann.access, &name, json!({}))
        .await
        .assert_error(StatusCode::BAD_GATEWAY, "engine_failed");
    assert!(m.contains("division by zero"), "{m}");
    let failed = app
        .get(
            &format!("{DEV}/dynamic-secrets/{name}/leases"),
            Some(&ann.access),
        )
        .await
        .json()["items"][0]
        .clone();
    wait_for_state(
        &app,
        &ann.access,
        &name,
        failed["id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        roles(&url, &role_prefix(&name)).await.len(),
        1,
        "only the active lease's role"
    );
    let failures = app.audit_events(&ann.access, "lease.failed").await;
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0]["details"]["error"]
            .as_str()
            .unwrap()
            .contains("division by zero")
    );
    assert!(
        event_history(&app, &ann.access)
            .await
            .iter()
            .any(|e| e["type"] == "lease.failed")
    );

    // A lease left `creating` by a process that died after making its role (the row and the
    // role are made here as that process would have): the reaper revokes the role.
    let secret_id = app
        .get(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = coffer_server::db::dynamic::secret_by_id(app.state.db.pool(), &secret_id)
        .await
        .unwrap()
        .unwrap();
    let long_ago = Timestamp::now().minus(Duration::from_secs(3600));
    let orphan = format!("{}orphan", role_prefix(&name));
    exec(&url, &format!("CREATE ROLE {orphan} LOGIN")).await;
    let abandoned = coffer_server::db::dynamic::LeaseRow {
        id: uuid::Uuid::now_v7().to_string(),
        dynamic_secret_id: secret_id,
        org_id: secret.org_id,
        project_id: secret.project_id,
        environment_id: secret.environment_id,
        username: orphan.clone(),
        state: "creating".into(),
        end_reason: None,
        issued_at: long_ago,
        expires_at: Timestamp::now(),
        max_expires_at: Timestamp::now(),
        renewals: 0,
        revoked_at: None,
        last_error: None,
        idempotency_key: None,
        issued_by_kind: "user".into(),
        issued_by_id: ann.user_id.clone(),
        reveal_dek_id: None,
        reveal_ct: None,
        reveal_until: None,
        attempts: 0,
        next_attempt_at: None,
        locked_until: None,
        created_at: long_ago,
        updated_at: long_ago,
    };
    assert!(
        coffer_server::db::dynamic::insert_lease(app.state.db.pool(), &abandoned)
            .await
            .unwrap()
    );
    wait_for_state(
        &app,
        &ann.access,
        &name,
        &abandoned.id,
        "failed",
        Duration::from_secs(10),
    )
    .await;
    assert!(!roles(&url, &role_prefix(&name)).await.contains(&orphan));

    let r = app
        .delete(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(roles(&url, &role_prefix(&name)).await.is_empty());
}

const BIN: &str = env!("CARGO_BIN_EXE_coffer-server");

/// The real binary on `port`, with its data in `dir` (SQLite), the engine timeout at 1 s and the
/// reaper every 200 ms; its log (debug level) goes to `log`.
fn server(dir: &std::path::Path, port: u16, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .env("COFFER_LISTEN", format!("127.0.0.1:{port}"))
        .env("COFFER_DYNAMIC_TIMEOUT_MS", "1000")
        .env("COFFER_DYNAMIC_REAPER_INTERVAL_MS", "200")
        .env("COFFER_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

async fn wait_until_up(client: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("coffer-server did not start");
}

/// `kill -9` while a role is being created: after the restart, the reaper's pass leaves no
/// role without a lease and no lease without a role, and nothing logged holds a password.
#[tokio::test]
async fn a_server_killed_mid_issue_leaves_no_role_without_a_lease_after_restart() {
    let Some(url) = admin_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = server(dir.path(), port, &log);
    wait_until_up(&client, &base).await;
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Value| {
        let mut request = client.request(method, format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let r = call(
        reqwest::Method::POST,
        "/api/v1/auth/register",
        None,
        json!({ "email": "ann@example.com", "password": crate::helpers::PASSWORD, "name": "Ann" }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, body) in [
        ("/api/v1/orgs", json!({ "name": "Acme", "slug": "acme" })),
        (
            "/api/v1/orgs/acme/projects",
            json!({ "name": "web", "slug": "web" }),
        ),
    ] {
        assert_eq!(
            call(reqwest::Method::POST, path, Some(&token), body)
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let name = unique_name();
    let slow = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
        "SELECT CASE WHEN '{{name}}' LIKE '%slow%' THEN pg_sleep(3) END",
    ];
    let r = call(reqwest::Method::POST, &format!("{DEV}/dynamic-secrets"), Some(&token), json!({ "name": name, "engine": "postgresql", "connection": { "url": url }, "default_ttl": 600, "max_ttl": 600, "creation_statements": slow, "username_template": "coffer_development_{{secret}}_{{random}}" })).await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // One lease issued and in use before the crash.
    let r = call(
        reqwest::Method::POST,
        &format!("{DEV}/dynamic-secrets/{name}/leases"),
        Some(&token),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let kept: Value = r.json().await.unwrap();
    // Another whose creation hangs; the server dies meanwhile.
    let r = call(
        reqwest::Method::PATCH,
        &format!("{DEV}/dynamic-secrets/{name}"),
        Some(&token),
        json!({ "username_template": "coffer_development_{{secret}}_slow_{{random}}" }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let hanging = tokio::spawn(call(
        reqwest::Method::POST,
        &format!("{DEV}/dynamic-secrets/{name}/leases"),
        Some(&token),
        json!({}),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    assert!(
        hanging.await.unwrap().is_err(),
        "the request died with the server"
    );

    let mut child = server(dir.path(), port, &log);
    wait_until_up(&client, &base).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let leases = loop {
        let page: Value = call(
            reqwest::Method::GET,
            &format!("{DEV}/dynamic-secrets/{name}/leases"),
            Some(&token),
            json!(null),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let items = page["items"].as_array().unwrap().clone();
        if items.len() == 2
            && items
                .iter()
                .all(|l| l["state"] == "active" || l["state"] == "failed")
        {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper did not finish: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The role of the abandoned lease may have been made (and must be gone), or never made.
    let live: Vec<&str> = leases
        .iter()
        .filter(|l| l["state"] == "active")
        .map(|l| l["username"].as_str().unwrap())
        .collect();
    assert_eq!(live, [kept["username"].as_str().unwrap()]);
    // The hanging statement's transaction ends when PostgreSQL notices its client is gone:
    // wait for no session of the dead server to be left, then compare.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut admin = admin(&url).await;
        let busy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()")
            .fetch_one(&mut admin).await.unwrap();
        if busy == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead server's statement still runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        roles(&url, &role_prefix(&name)).await,
        live,
        "no role without a lease, no lease without a role"
    );
    as_lease(kept["connection_url"].as_str().unwrap(), "SELECT 1")
        .await
        .expect("the kept lease still works");

    let r = call(
        reqwest::Method::DELETE,
        &format!("{DEV}/dynamic-secrets/{name}"),
        Some(&token),
        json!(null),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    assert!(roles(&url, &role_prefix(&name)).await.is_empty());
    std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("coffer-server"), "the log was captured");
    assert!(
        !logged.contains(kept["password"].as_str().unwrap()),
        "a lease password reached the log"
    );
    let admin_password = url::Url::parse(&url)
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    assert!(
        !logged.contains(&format!(":{admin_password}@")),
        "the administrator URL reached the log"
    );
}

/// A creation that fails because a name it makes exists already made nothing (its statements
/// roll back together): the lease fails at once, and nothing is revoked — the role of that name
/// is someone else's.
#[tokio::test]
async fn a_name_taken_by_someone_else_fails_the_lease_and_is_left_alone() {
    let Some(url) = admin_url() else { return };
    let app = TestApp::sqlite(|c| c.dynamic_reaper_interval_ms = 30_000).await;
    let ann = acme_web(&app).await;
    let name = unique_name();
    let theirs = format!("{}theirs", role_prefix(&name));
    exec(&url, &format!("CREATE ROLE {theirs} LOGIN")).await;
    let statements = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'".to_owned(),
        format!("CREATE ROLE {theirs}"),
    ];
    create(
        &app,
        &ann,
        &url,
        &name,
        json!({ "creation_statements": statements }),
    )
    .await;
    let m = issue(&app, &ann.access, &name, json!({}))
        .await
        .assert_error(StatusCode::BAD_GATEWAY, "engine_failed");
    assert!(m.contains("already exists"), "{m}");
    let listed = app
        .get(
            &format!("{DEV}/dynamic-secrets/{name}/leases"),
            Some(&ann.access),
        )
        .await
        .json();
    assert_eq!(
        listed["items"][0]["state"], "failed",
        "failed at once, with nothing to revoke: {listed}"
    );
    assert_eq!(
        roles(&url, &role_prefix(&name)).await,
        [theirs.as_str()],
        "only theirs, untouched"
    );
    let r = app
        .delete(&format!("{DEV}/dynamic-secrets/{name}"), Some(&ann.access))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(roles(&url, &role_prefix(&name)).await, [theirs.as_str()]);
    exec(&url, &format!("DROP ROLE {theirs}")).await;
}
