//! Reads of values are audited through the group-commit writer: each read's events are
//! committed before its answer, exactly once, and a read whose events cannot be stored is
//! refused without its values.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResponse, acme_web, db_test};

const ENVS: &str = "/api/v1/orgs/acme/projects/web/environments";

async fn put(app: &TestApp, token: &str, env: &str, key: &str, value: &str) {
    let r = app
        .put(
            &format!("{ENVS}/{env}/secrets/{key}"),
            Some(token),
            json!({ "value": value }),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
}

/// Makes the database refuse read events whose details mention `marker`.
async fn refuse_read_events_naming(app: &TestApp, marker: &str) {
    let sql = match app.state.db.backend() {
        coffer_server::db::Backend::Sqlite => format!(
            "CREATE TRIGGER refuse_read_events BEFORE INSERT ON audit_events \
             WHEN NEW.action IN ('secrets.read', 'secrets.exported') AND NEW.details LIKE '%{marker}%' \
             BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        ),
        coffer_server::db::Backend::Postgres => format!(
            "CREATE FUNCTION refuse_read_event() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$; \
             CREATE TRIGGER refuse_read_events BEFORE INSERT ON audit_events FOR EACH ROW \
             WHEN (NEW.action IN ('secrets.read', 'secrets.exported') AND NEW.details LIKE '%{marker}%') \
             EXECUTE FUNCTION refuse_read_event()"
        ),
    };
    sqlx::raw_sql(&sql)
        .execute(app.state.db.pool())
        .await
        .unwrap();
}

async fn allow_read_events(app: &TestApp) {
    let sql = match app.state.db.backend() {
        coffer_server::db::Backend::Sqlite => "DROP TRIGGER refuse_read_events",
        coffer_server::db::Backend::Postgres => "DROP TRIGGER refuse_read_events ON audit_events",
    };
    sqlx::raw_sql(sql)
        .execute(app.state.db.pool())
        .await
        .unwrap();
}

/// `(actor_type, actor_id, keys, via_reference)` of every stored read event, with its count.
async fn read_events(app: &TestApp) -> BTreeMap<(String, String, String, bool), usize> {
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT actor_type, actor_id, details FROM audit_events WHERE action = 'secrets.read'",
    )
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for (kind, id, details) in rows {
        let details: Value = serde_json::from_str(&details.unwrap()).unwrap();
        let via = details["via_reference"].as_bool().unwrap_or(false);
        let key = (kind, id.unwrap(), details["keys"].to_string(), via);
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[track_caller]
fn refused_without(r: &TestResponse, value: &str) {
    r.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(!r.text().contains(value), "{}", r.text());
}

db_test!(async fn concurrent_reads_are_each_audited_exactly_once_with_their_actor_and_keys(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "A", "alpha").await;
    put(&app, &ann.access, "staging", "SHARED", "shared").await;
    put(&app, &ann.access, "development", "R", "${staging.SHARED}").await;
    let r = app.post("/api/v1/orgs/acme/service-tokens", Some(&ann.access), json!({
        "name": "reader", "project": "web", "environments": ["development", "staging"], "access": "read", "expires_in_days": 1
    })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let (token_id, token) = (r.json()["id"].as_str().unwrap().to_owned(), r.json()["token"].as_str().unwrap().to_owned());

    const EACH: usize = 10;
    let dev = format!("{ENVS}/development/secrets");
    let (one, resolved, bulk) = (format!("{dev}/A"), format!("{dev}/R?resolve=true"), dev.clone());
    let mut requests = Vec::new();
    for _ in 0..EACH {
        requests.push((one.as_str(), ann.access.as_str()));
        requests.push((resolved.as_str(), token.as_str()));
        requests.push((bulk.as_str(), ann.access.as_str()));
    }
    let answers = futures::future::join_all(requests.iter().map(|(path, who)| app.get(path, Some(who)))).await;
    for r in &answers {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }

    let user = |keys: &str, via| (String::from("user"), ann.user_id.clone(), keys.to_owned(), via);
    let service = |keys: &str, via| (String::from("service_token"), token_id.clone(), keys.to_owned(), via);
    let expected = BTreeMap::from([
        (user(r#"["A"]"#, false), EACH),
        (user(r#"["A","R"]"#, false), EACH),
        (user(r#"["SHARED"]"#, true), EACH),
        (service(r#"["R"]"#, false), EACH),
        (service(r#"["SHARED"]"#, true), EACH),
    ]);
    assert_eq!(read_events(&app).await, expected);
});

db_test!(async fn a_read_whose_audit_event_cannot_be_stored_is_refused_without_its_value(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "API_TOKEN", "s3cr3t-value").await;
    put(&app, &ann.access, "staging", "COPY", "${development.API_TOKEN}").await;
    refuse_read_events_naming(&app, "API_TOKEN").await;

    let dev = format!("{ENVS}/development/secrets");
    refused_without(&app.get(&format!("{dev}/API_TOKEN"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{dev}/API_TOKEN/versions/1"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&dev, Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{dev}/export?format=json"), Some(&ann.access)).await, "s3cr3t-value");
    // The staging event alone could be stored, but the request's events go in together: the
    // reference's read of development fails the whole read.
    refused_without(&app.get(&format!("{ENVS}/staging/secrets/COPY?resolve=true"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{ENVS}/staging/secrets"), Some(&ann.access)).await, "s3cr3t-value");
    assert!(read_events(&app).await.is_empty(), "no event of a refused read is stored");

    // Writes audit in their own transaction and are not affected; reads work again once events
    // can be stored.
    put(&app, &ann.access, "development", "OTHER", "other").await;
    allow_read_events(&app).await;
    let r = app.get(&format!("{dev}/API_TOKEN"), Some(&ann.access)).await;
    assert_eq!((r.status, r.json()["value"].as_str()), (StatusCode::OK, Some("s3cr3t-value")));
    assert_eq!(read_events(&app).await.len(), 1);
});

db_test!(async fn a_failing_event_never_lets_a_read_succeed_without_its_own_event_stored(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "GOOD", "good-value").await;
    put(&app, &ann.access, "development", "POISON", "poison-value").await;
    refuse_read_events_naming(&app, "POISON").await;

    let dev = format!("{ENVS}/development/secrets");
    let (good, poison) = (format!("{dev}/GOOD"), format!("{dev}/POISON"));
    let paths: Vec<&str> = (0..16).flat_map(|_| [good.as_str(), poison.as_str()]).collect();
    let answers = futures::future::join_all(paths.iter().map(|p| app.get(p, Some(&ann.access)))).await;

    let mut good_ok = 0;
    for (path, r) in paths.iter().zip(&answers) {
        if *path == poison {
            refused_without(r, "poison-value");
        } else if r.status == StatusCode::OK {
            assert_eq!(r.json()["value"], "good-value");
            good_ok += 1;
        } else {
            // Committed in the same batch as a refused event: refused with it, never acknowledged.
            refused_without(r, "good-value");
        }
    }
    let stored = read_events(&app).await;
    let good_events = stored.get(&("user".into(), ann.user_id.clone(), r#"["GOOD"]"#.into(), false)).copied().unwrap_or(0);
    assert_eq!(good_events, good_ok, "every acknowledged read has its event, and no other is stored");
    assert_eq!(stored.len(), usize::from(good_ok > 0), "{stored:?}");
});

db_test!(async fn after_shutdown_reads_are_refused_with_503_and_retry_after(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "A", "alpha-value").await;
    app.state.audit.shutdown().await;
    let r = app.get(&format!("{ENVS}/development/secrets/A"), Some(&ann.access)).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
    assert!(r.headers.get("retry-after").is_some());
    assert!(!r.text().contains("alpha-value"));
    assert!(read_events(&app).await.is_empty());
});
