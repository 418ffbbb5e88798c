//! Secrets shared between environments: comparing two environments, copying secrets from one
//! into another (values or references), and the keys that share a path with those operations.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, acme_web, db_test};

const PROJECT: &str = "/api/v1/orgs/acme/projects/web";

fn secrets(env: &str) -> String {
    format!("{PROJECT}/environments/{env}/secrets")
}

async fn set(app: &TestApp, who: &Session, env: &str, pairs: &[(&str, &str)]) {
    let secrets_json: Vec<Value> = pairs
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect();
    let r = app
        .put(
            &secrets(env),
            Some(&who.access),
            json!({ "secrets": secrets_json }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// The environment's stored values (unresolved), by key.
async fn values(app: &TestApp, who: &Session, env: &str) -> Value {
    let r = app
        .get(
            &format!("{}?resolve=false", secrets(env)),
            Some(&who.access),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut map = serde_json::Map::new();
    for s in r.json()["secrets"].as_array().unwrap() {
        map.insert(s["key"].as_str().unwrap().to_owned(), s["value"].clone());
    }
    Value::Object(map)
}

async fn copy(app: &TestApp, who: &Session, to: &str, body: Value) -> crate::helpers::TestResponse {
    app.post(&format!("{}/copy", secrets(to)), Some(&who.access), body)
        .await
}

async fn set_policy(app: &TestApp, by: &Session, env: &str, role: &str, access: &str) {
    let r = app
        .put(
            &format!("{PROJECT}/environments/{env}/policies/{role}"),
            Some(&by.access),
            json!({ "access": access }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

db_test!(async fn two_environments_compare_key_by_key_without_values_unless_revealed(app) {
    let ann = acme_web(&app).await;
    set(&app, &ann, "staging", &[("SAME", "1"), ("DIFF", "staging-v"), ("ONLY_STAGING", "x")]).await;
    set(&app, &ann, "production", &[("SAME", "1"), ("DIFF", "prod-v"), ("ONLY_PROD", "y")]).await;
    set(&app, &ann, "production", &[("DIFF", "prod-v2")]).await;

    let r = app
        .get(&format!("{PROJECT}/compare?base=staging&head=production"), Some(&ann.access))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert!(!r.text().contains("prod-v2") && !r.text().contains("staging-v"), "{body}");
    assert_eq!((body["base"].as_str(), body["head"].as_str()), (Some("staging"), Some("production")));
    assert_eq!(
        body["summary"],
        json!({ "only_in_base": 1, "only_in_head": 1, "different": 1, "same": 1 })
    );
    let keys: Vec<(&str, &str)> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [("DIFF", "different"), ("ONLY_PROD", "only_in_head"), ("ONLY_STAGING", "only_in_base"), ("SAME", "same")]
    );
    let diff = &body["keys"][0];
    assert_eq!((diff["base"]["version"].as_i64(), diff["head"]["version"].as_i64()), (Some(1), Some(2)));
    assert!(diff["head"]["updated_at"].is_string());
    assert!(body["keys"][1]["base"].is_null());
    // Audited as a comparison, not a read.
    app.state.audit.flush().await.unwrap();
    let compared = app.audit_events(&ann.access, "secrets.compared").await;
    assert_eq!(compared.len(), 2, "{compared:?}");
    assert!(app.audit_events(&ann.access, "secrets.read").await.is_empty());

    // Revealed: the values as stored, and two reads.
    let r = app
        .get(&format!("{PROJECT}/compare?base=staging&head=production&reveal=true"), Some(&ann.access))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let diff = &r.json()["keys"][0];
    assert_eq!((diff["base"]["value"].as_str(), diff["head"]["value"].as_str()), (Some("staging-v"), Some("prod-v2")));
    app.state.audit.flush().await.unwrap();
    let reads = app.audit_events(&ann.access, "secrets.read").await;
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads.iter().all(|e| e["details"]["compared_with"].is_string()), "{reads:?}");

    // Unknown environment, missing parameter.
    app.get(&format!("{PROJECT}/compare?base=staging&head=nope"), Some(&ann.access))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = app.get(&format!("{PROJECT}/compare?base=staging"), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
});

db_test!(async fn comparing_needs_read_access_to_both_environments_and_another_tenant_sees_nothing(app) {
    let ann = acme_web(&app).await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    app.grant(&ann, "acme", "web", &bob, "developer").await;
    set_policy(&app, &ann, "production", "developer", "none").await;
    let url = format!("{PROJECT}/compare?base=staging&head=production");
    app.get(&url, Some(&bob.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let eve = app.register("eve@example.com").await;
    app.get(&url, Some(&eve.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn a_copy_writes_values_in_one_transaction_and_skips_what_the_target_has_unless_told(app) {
    let ann = acme_web(&app).await;
    set(&app, &ann, "staging", &[("A", "a1"), ("B", "b1"), ("C", "c1"), ("D", "same")]).await;
    set(&app, &ann, "production", &[("B", "b-prod"), ("D", "same")]).await;

    let r = copy(&app, &ann, "production", json!({ "from": "staging" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let report = r.json();
    assert_eq!(report["created"], json!(["A", "C"]));
    assert_eq!(report["updated"], json!([]));
    assert_eq!(report["unchanged"], json!(["D"]));
    assert_eq!(report["skipped"], json!(["B"]));
    assert!(report["revision"].is_i64());
    assert!(!r.text().contains("a1"));
    assert_eq!(
        values(&app, &ann, "production").await,
        json!({ "A": "a1", "B": "b-prod", "C": "c1", "D": "same" })
    );

    // overwrite, and only the keys named.
    let r = copy(&app, &ann, "production", json!({ "from": "staging", "keys": ["B"], "overwrite": true })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["updated"], json!(["B"]));
    assert_eq!(values(&app, &ann, "production").await["B"], "b1");

    // Audited in both environments.
    app.state.audit.flush().await.unwrap();
    let copied = app.audit_events(&ann.access, "secrets.copied").await;
    assert_eq!(copied.len(), 2, "{copied:?}");
    let last = &copied[0];
    assert_eq!(last["details"]["from"], "staging");
    assert_eq!(last["details"]["updated"], json!(["B"]));
    let reads = app.audit_events(&ann.access, "secrets.read").await;
    let source_reads: Vec<&Value> = reads.iter().filter(|e| e["details"]["copied_to"] == "production").collect();
    assert_eq!(source_reads.len(), 2, "{reads:?}");
    assert_eq!(source_reads[0]["details"]["keys"], json!(["B"]));

    // Nothing changes for an unknown key, a bad key, or copying into the source itself.
    let before = values(&app, &ann, "production").await;
    let m = copy(&app, &ann, "production", json!({ "from": "staging", "keys": ["A", "NOPE"] }))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_keys");
    assert!(m.contains("`NOPE`") && !m.contains("`A`"), "{m}");
    copy(&app, &ann, "production", json!({ "from": "production" }))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "same_environment");
    copy(&app, &ann, "production", json!({ "from": "staging", "keys": ["A", "A"] }))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "duplicate_key");
    copy(&app, &ann, "production", json!({ "from": "nowhere" }))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = copy(&app, &ann, "production", json!({ "from": "staging", "extra": 1 })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert_eq!(values(&app, &ann, "production").await, before);
});

db_test!(async fn a_copy_as_references_follows_the_source(app) {
    let ann = acme_web(&app).await;
    set(&app, &ann, "staging", &[("DB_HOST", "db.staging"), ("tls.ca", "pem")]).await;
    let r = copy(&app, &ann, "development", json!({ "from": "staging", "as_reference": true })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        values(&app, &ann, "development").await,
        json!({ "DB_HOST": "${staging.DB_HOST}", "tls.ca": "${web.staging.tls.ca}" })
    );
    set(&app, &ann, "staging", &[("DB_HOST", "db2.staging")]).await;
    let r = app.get(&secrets("development"), Some(&ann.access)).await;
    let resolved: Vec<(String, String)> = r.json()["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap().to_owned(), s["value"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        resolved,
        [("DB_HOST".to_owned(), "db2.staging".to_owned()), ("tls.ca".to_owned(), "pem".to_owned())]
    );
});

db_test!(async fn a_copy_is_refused_with_nothing_changed_without_read_on_the_source_or_write_on_the_target(app) {
    let ann = acme_web(&app).await;
    set(&app, &ann, "staging", &[("A", "1")]).await;
    set(&app, &ann, "production", &[("B", "2")]).await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    app.grant(&ann, "acme", "web", &bob, "developer").await;

    set_policy(&app, &ann, "staging", "developer", "none").await;
    copy(&app, &bob, "development", json!({ "from": "staging" }))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    set_policy(&app, &ann, "staging", "developer", "read-write").await;
    set_policy(&app, &ann, "production", "developer", "read").await;
    copy(&app, &bob, "production", json!({ "from": "staging" }))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(values(&app, &ann, "production").await, json!({ "B": "2" }));
    assert_eq!(values(&app, &ann, "development").await, json!({}));
    // Read-only credentials write nothing; another tenant sees nothing.
    let (_, token) = app
        .service_token(&ann, "acme", json!({ "name": "ci", "project": "web", "environments": ["staging", "development"], "access": "read" }))
        .await;
    let r = app
        .post(&format!("{}/copy", secrets("development")), Some(&token), json!({ "from": "staging" }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let eve = app.register("eve@example.com").await;
    copy(&app, &eve, "production", json!({ "from": "staging" }))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(values(&app, &ann, "development").await, json!({}));
});

db_test!(async fn keys_named_like_the_collections_operations_are_reachable_and_the_operations_still_work(app) {
    let ann = acme_web(&app).await;
    let token = Some(ann.access.as_str());
    for key in ["export", "import", "copy"] {
        let url = format!("{}/{key}", secrets("staging"));
        let r = app.put(&url, token, json!({ "value": format!("v-{key}") })).await;
        assert_eq!(r.status, StatusCode::OK, "PUT {key}: {}", r.text());
        let r = app.get(&url, token).await;
        assert_eq!(r.status, StatusCode::OK, "GET {key}: {}", r.text());
        assert_eq!(r.json()["value"], format!("v-{key}"));
        let r = app.get(&format!("{url}/versions"), token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // The operations, as documented.
    let r = app.get(&format!("{}/export?format=dotenv", secrets("staging")), token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "copy=\"v-copy\"\nexport=\"v-export\"\nimport=\"v-import\"\n");
    let request = Request::post(format!("{}/import?format=dotenv", secrets("production")))
        .header("authorization", format!("Bearer {}", ann.access))
        .header("content-type", "text/plain")
        .body(Body::from(r.body.clone()))
        .unwrap();
    let r = app.send(request).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["created"], 3);
    let r = copy(&app, &ann, "development", json!({ "from": "production" })).await;
    assert_eq!(r.json()["created"], json!(["copy", "export", "import"]));
    // Deleted and restored like any other.
    for key in ["export", "import", "copy"] {
        let url = format!("{}/{key}", secrets("development"));
        let r = app.delete(&url, token).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "DELETE {key}: {}", r.text());
        app.get(&url, token).await.assert_error(StatusCode::NOT_FOUND, "not_found");
        let r = app.post(&format!("{url}/restore"), token, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
});
