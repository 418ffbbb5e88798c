//! Rotating the master key (KEK) over a real database.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::helpers::{Session, TestApp, db_test, interleave};

async fn read(router: &axum::Router, token: &str, url: &str) -> Value {
    let req = Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

db_test!(async fn rotating_the_master_key_rewraps_every_data_key_and_loses_nothing(app) {
    let ann = app.register("ann@example.com").await;
    let (_, token) = app.api_key(&ann, json!({ "name": "reader" })).await;
    app.org(&ann, "acme").await;
    let mut expected = Vec::new();
    for project in ["web", "api"] {
        app.project(&ann, "acme", project).await;
        for env in ["development", "production"] {
            let url = format!("/api/v1/orgs/acme/projects/{project}/environments/{env}/secrets");
            let body = json!({ "secrets": [{ "key": "A", "value": format!("{project}-{env}-a") }, { "key": "B", "value": format!("{project}-{env}-b"), "comment": "c" }] });
            assert_eq!(app.put(&url, Some(&ann.access), body).await.status, StatusCode::OK);
            expected.push((url.clone(), app.get(&url, Some(&ann.access)).await.json()["secrets"].clone()));
        }
    }
    let old_key = STANDARD.encode(app.state.keys.master.bytes());
    let new_key = STANDARD.encode([42u8; 32]);
    let start = |master: &str, previous: Option<&str>| {
        let mut config = app.state.config.clone();
        config.master_key = Some(SecretString::from(master.to_owned()));
        config.previous_master_keys = previous.map(|p| SecretString::from(p.to_owned()));
        coffer_server::start(config)
    };

    // With only the new key, the stored data keys cannot be opened: start-up refuses, naming the fix.
    let err = start(&new_key, None).await.unwrap_err().to_string();
    assert!(err.contains("COFFER_PREVIOUS_MASTER_KEYS"), "{err}");

    let rotating = start(&new_key, Some(&old_key)).await.unwrap();
    assert_eq!(coffer_server::service::keys::rewrap_all(&rotating).await.unwrap(), 2, "one data key per project");
    assert_eq!(coffer_server::service::keys::rewrap_all(&rotating).await.unwrap(), 0, "rotation is idempotent");
    rotating.db.close().await;

    // The old key can go: every secret reads back as before.
    let rotated = start(&new_key, None).await.unwrap();
    let router = coffer_server::app(rotated).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    for (url, secrets) in &expected {
        assert_eq!(&read(&router, &token, url).await["secrets"], secrets, "{url}");
    }
    // And the old key alone no longer opens anything.
    let err = start(&old_key, None).await.unwrap_err().to_string();
    assert!(err.contains("not configured"), "{err}");
});

db_test!(async fn an_invalid_previous_master_key_is_refused_by_name(app) {
    let mut config = app.state.config.clone();
    config.previous_master_keys = Some(SecretString::from("not base64!".to_owned()));
    let err = coffer_server::start(config).await.unwrap_err().to_string();
    assert!(err.contains("COFFER_PREVIOUS_MASTER_KEYS") && !err.contains("not base64!"), "{err}");
});

db_test!(async fn rotating_a_project_data_key_reencrypts_every_version_and_loses_nothing(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    app.project(&ann, "acme", "other").await;
    let base = "/api/v1/orgs/acme/projects/web/environments";
    app.post(&format!("{base}/development/secrets"), Some(&ann.access), json!({ "key": "A", "value": "a1", "comment": "first" })).await;
    app.put(&format!("{base}/development/secrets/A"), Some(&ann.access), json!({ "value": "a2" })).await;
    app.post(&format!("{base}/production/secrets"), Some(&ann.access), json!({ "key": "B", "value": "b1" })).await;
    app.post("/api/v1/orgs/acme/projects/other/environments/production/secrets", Some(&ann.access), json!({ "key": "C", "value": "c1" })).await;
    let ciphertexts = || async {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT value_ct FROM secret_versions ORDER BY secret_id, version").fetch_all(app.state.db.pool()).await.unwrap();
        rows
    };
    let before = ciphertexts().await;

    let r = app.post("/api/v1/orgs/acme/projects/web/rotate-key", Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({ "dek_version": 2, "reencrypted_versions": 3 }));
    app.state.deks.clear();

    let after = ciphertexts().await;
    assert_eq!(before.iter().zip(&after).filter(|(a, b)| a != b).count(), 3, "the other project's values are untouched");
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deks WHERE retired_at IS NULL").fetch_one(app.state.db.pool()).await.unwrap();
    assert_eq!(live, 2, "one live data key per project");
    let a = app.get(&format!("{base}/development/secrets/A"), Some(&ann.access)).await.json();
    assert_eq!((a["value"].as_str(), a["comment"].as_str(), a["version"].as_i64()), (Some("a2"), Some("first"), Some(2)));
    assert_eq!(app.get(&format!("{base}/development/secrets/A/versions/1"), Some(&ann.access)).await.json()["value"], "a1");
    assert_eq!(app.get(&format!("{base}/production/secrets/B"), Some(&ann.access)).await.json()["value"], "b1");
    assert_eq!(app.get("/api/v1/orgs/acme/projects/other/environments/production/secrets/C", Some(&ann.access)).await.json()["value"], "c1");
    // New writes use the new key.
    app.put(&format!("{base}/development/secrets/A"), Some(&ann.access), json!({ "value": "a3" })).await;
    assert_eq!(app.get(&format!("{base}/development/secrets"), Some(&ann.access)).await.json()["secrets"][0]["value"], "a3");

    let viewer = app.member(&ann, "acme", "vic@example.com", "viewer").await;
    app.post("/api/v1/orgs/acme/projects/web/rotate-key", Some(&viewer.access), json!({})).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let audit = app.get("/api/v1/orgs/acme/audit-events?action=project.key_rotated", Some(&ann.access)).await.json();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
});

/// Every data key of the test's database at the edge of its random-nonce budget: the next write
/// under it starts a new one.
async fn spend_nonce_budgets(app: &TestApp) {
    let budget = i64::try_from(coffer_server::crypto::envelope::DEK_ROTATE_AFTER).unwrap();
    sqlx::query("UPDATE deks SET encryptions = $1")
        .bind(budget)
        .execute(app.state.db.pool())
        .await
        .unwrap();
}

/// With the cache of unwrapped data keys emptied, every key of `pairs` in the environment at
/// `secrets` reads back as its value: what is stored decrypts under the keys that are stored.
async fn assert_values_decrypt_afresh(
    app: &TestApp,
    who: &Session,
    secrets: &str,
    pairs: &[(&str, &str)],
) {
    app.state.deks.clear();
    for (key, value) in pairs {
        let read = app
            .get(&format!("{secrets}/{key}"), Some(&who.access))
            .await
            .json();
        assert_eq!(read["value"], *value, "{key}");
    }
}

/// How many stored versions are sealed under a retired data key.
async fn versions_under_retired_keys(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM secret_versions v JOIN deks d ON d.id = v.dek_id WHERE d.retired_at IS NOT NULL")
        .fetch_one(app.state.db.pool()).await.unwrap()
}

/// Holds the organization's row: a secret write stops at its revision bump just before it
/// commits, after it has locked its environment, picked its data key and sealed its values.
const HOLD_WRITES: &str = "SELECT id FROM organizations WHERE slug = 'acme' FOR NO KEY UPDATE";

const WEB: &str = "/api/v1/orgs/acme/projects/web";

db_test!(async fn a_rotation_after_automatic_key_changes_leaves_no_version_under_a_retired_key(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let dev = format!("{WEB}/environments/development/secrets");
    app.post(&dev, Some(&ann.access), json!({ "key": "A", "value": "a1", "comment": "first" })).await;
    // The first key's nonce budget is spent: the next write starts the project's second key.
    spend_nonce_budgets(&app).await;
    app.put(&format!("{dev}/A"), Some(&ann.access), json!({ "value": "a2" })).await;
    app.post(&dev, Some(&ann.access), json!({ "key": "B", "value": "b1" })).await;
    let keys: Vec<(i64, i64)> = sqlx::query_as("SELECT d.version, COUNT(v.secret_id) FROM deks d LEFT JOIN secret_versions v ON v.dek_id = d.id GROUP BY d.version ORDER BY d.version")
        .fetch_all(app.state.db.pool()).await.unwrap();
    assert_eq!(keys, [(1, 1), (2, 2)], "versions under both keys before the rotation");

    let r = app.post(&format!("{WEB}/rotate-key"), Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({ "dek_version": 3, "reencrypted_versions": 3 }));
    assert_eq!(versions_under_retired_keys(&app).await, 0);
    let live: Vec<i64> = sqlx::query_scalar("SELECT version FROM deks WHERE retired_at IS NULL").fetch_all(app.state.db.pool()).await.unwrap();
    assert_eq!(live, [3], "every key but the new one is retired");
    app.state.deks.clear();
    let a = app.get(&format!("{dev}/A"), Some(&ann.access)).await.json();
    assert_eq!((a["value"].as_str(), a["comment"].as_str()), (Some("a2"), Some("first")));
    assert_eq!(app.get(&format!("{dev}/A/versions/1"), Some(&ann.access)).await.json()["value"], "a1");
    assert_eq!(app.get(&format!("{dev}/B"), Some(&ann.access)).await.json()["value"], "b1");
});

/// PostgreSQL only (SQLite has a single writer, so nothing interleaves there); skipped, saying
/// so, when `COFFER_TEST_DATABASE_URL` is not set.
#[tokio::test]
async fn a_data_key_rotation_waits_for_a_write_in_flight_and_reencrypts_its_version() {
    let Some(app) = TestApp::postgres(|_| {}).await else {
        return;
    };
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let dev = format!("{WEB}/environments/development/secrets");
    assert_eq!(
        app.post(
            &dev,
            Some(&ann.access),
            json!({ "key": "A", "value": "a1" })
        )
        .await
        .status,
        StatusCode::CREATED
    );

    // A write that has read the active data key and sealed under it is held before its commit;
    // the rotation starts meanwhile.
    let holder = app.hold_lock(HOLD_WRITES).await;
    let (written, rotated, waited) = interleave(
        holder,
        app.put(
            &format!("{dev}/B"),
            Some(&ann.access),
            json!({ "value": "b1" }),
        ),
        app.post(&format!("{WEB}/rotate-key"), Some(&ann.access), json!({})),
    )
    .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    assert!(waited, "the rotation waits for the write in flight");
    assert_eq!(
        rotated.json(),
        json!({ "dek_version": 2, "reencrypted_versions": 2 }),
        "the write's version is re-encrypted too"
    );
    assert_eq!(versions_under_retired_keys(&app).await, 0);
    let keys: Vec<String> = sqlx::query_scalar("SELECT DISTINCT v.dek_id FROM secret_versions v")
        .fetch_all(app.state.db.pool())
        .await
        .unwrap();
    let live: Vec<String> = sqlx::query_scalar("SELECT id FROM deks WHERE retired_at IS NULL")
        .fetch_all(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(keys, live, "every version is sealed under the one live key");
    assert_values_decrypt_afresh(&app, &ann, &dev, &[("A", "a1"), ("B", "b1")]).await;
}

/// PostgreSQL only; skipped, saying so, when `COFFER_TEST_DATABASE_URL` is not set.
#[tokio::test]
async fn two_writes_that_find_the_data_key_spent_start_one_new_key_between_them() {
    let Some(app) = TestApp::postgres(|_| {}).await else {
        return;
    };
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let dev = format!("{WEB}/environments/development/secrets");
    // Two environments: writes to one are committed one transaction after the other anyway.
    let staging = format!("{WEB}/environments/staging/secrets");
    spend_nonce_budgets(&app).await;

    let holder = app.hold_lock(HOLD_WRITES).await;
    let (a, b, _) = interleave(
        holder,
        app.post(
            &dev,
            Some(&ann.access),
            json!({ "key": "A", "value": "a1" }),
        ),
        app.post(
            &staging,
            Some(&ann.access),
            json!({ "key": "B", "value": "b1" }),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.text());
    let keys: Vec<(i64, i64)> =
        sqlx::query_as("SELECT version, encryptions FROM deks ORDER BY version")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    let budget = i64::try_from(coffer_server::crypto::envelope::DEK_ROTATE_AFTER).unwrap();
    assert_eq!(
        keys,
        [(1, budget), (2, 2)],
        "one new key, counting both writes"
    );
    assert_values_decrypt_afresh(&app, &ann, &dev, &[("A", "a1")]).await;
    assert_values_decrypt_afresh(&app, &ann, &staging, &[("B", "b1")]).await;
}

/// PostgreSQL only; skipped, saying so, when `COFFER_TEST_DATABASE_URL` is not set.
#[tokio::test]
async fn a_master_key_rotation_waits_for_a_data_key_being_created_and_rewraps_it() {
    let Some(app) = TestApp::postgres(|_| {}).await else {
        return;
    };
    let ann = app.register("ann@example.com").await;
    let (_, token) = app.api_key(&ann, json!({ "name": "reader" })).await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let dev = format!("{WEB}/environments/development/secrets");
    app.post(
        &dev,
        Some(&ann.access),
        json!({ "key": "A", "value": "a1" }),
    )
    .await;
    spend_nonce_budgets(&app).await;

    let old_key = STANDARD.encode(app.state.keys.master.bytes());
    let new_key = STANDARD.encode([42u8; 32]);
    let start = |master: &str, previous: Option<&str>| {
        let mut config = app.state.config.clone();
        config.master_key = Some(SecretString::from(master.to_owned()));
        config.previous_master_keys = previous.map(|p| SecretString::from(p.to_owned()));
        coffer_server::start(config)
    };
    let rotating = start(&new_key, Some(&old_key)).await.unwrap();

    // `app` still has the old key as its active one: its write starts a data key wrapped by the
    // old key, and is held before it commits while the rotation starts.
    let holder = app.hold_lock(HOLD_WRITES).await;
    let (written, rewrapped, waited) = interleave(
        holder,
        app.post(
            &dev,
            Some(&ann.access),
            json!({ "key": "B", "value": "b1" }),
        ),
        coffer_server::service::keys::rewrap_all(&rotating),
    )
    .await;
    assert_eq!(written.status, StatusCode::CREATED, "{}", written.text());
    assert!(waited, "the rotation waits for the data key being created");
    assert_eq!(
        rewrapped.unwrap(),
        2,
        "the data key created meanwhile is rewrapped too"
    );
    let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deks WHERE kek_id <> $1")
        .bind(rotating.keyring.active_id())
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(others, 0, "no data key is left under the old master key");
    rotating.db.close().await;

    // So the old key can go, as the rotation said.
    let rotated = start(&new_key, None).await.unwrap();
    let router =
        coffer_server::app(rotated).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let secrets = read(&router, &token, &dev).await["secrets"].clone();
    assert_eq!(
        (secrets[0]["value"].as_str(), secrets[1]["value"].as_str()),
        (Some("a1"), Some("b1"))
    );
}
