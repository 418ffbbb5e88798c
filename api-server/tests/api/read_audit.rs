//! Reads of values are audited through the read-audit journal: each read's events are kept
//! before its answer and reach the database exactly once, a read whose events cannot be kept is
//! refused without its values, and events the database refuses for a while wait in the journal
//! (up to its bound), across a restart too.

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

/// `(actor_type, actor_id, keys, via_reference)` of every stored read event, with its count,
/// once this app's journal has reached the database.
async fn read_events(app: &TestApp) -> BTreeMap<(String, String, String, bool), usize> {
    app.state.audit.flush().await.unwrap();
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

db_test!(async fn a_read_whose_audit_event_cannot_be_kept_is_refused_without_its_value(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "API_TOKEN", "s3cr3t-value").await;
    put(&app, &ann.access, "staging", "COPY", "${development.API_TOKEN}").await;
    // The journal's first segment is created by the first read; where it would go is no longer
    // a directory.
    let journal = app.state.config.data_dir.join(coffer_server::state::AUDIT_JOURNAL_DIR);
    std::fs::remove_dir_all(&journal).unwrap();
    std::fs::write(&journal, b"").unwrap();

    let dev = format!("{ENVS}/development/secrets");
    refused_without(&app.get(&format!("{dev}/API_TOKEN"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{dev}/API_TOKEN/versions/1"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&dev, Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{dev}/export?format=json"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{ENVS}/staging/secrets/COPY?resolve=true"), Some(&ann.access)).await, "s3cr3t-value");
    refused_without(&app.get(&format!("{ENVS}/staging/secrets"), Some(&ann.access)).await, "s3cr3t-value");

    // Writes audit in their own transaction and are not affected; reads work again once the
    // journal can be written.
    put(&app, &ann.access, "development", "OTHER", "other").await;
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    let r = app.get(&format!("{dev}/API_TOKEN"), Some(&ann.access)).await;
    assert_eq!((r.status, r.json()["value"].as_str()), (StatusCode::OK, Some("s3cr3t-value")));
    let stored = read_events(&app).await;
    assert_eq!(stored, BTreeMap::from([(("user".into(), ann.user_id.clone(), r#"["API_TOKEN"]"#.into(), false), 1)]), "no event of a refused read is stored");
});

db_test!(async fn events_the_database_refuses_wait_in_the_journal_up_to_its_bound_and_none_is_lost(app, |config| config.audit_backlog_bytes = 64 * 1024) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "A", "alpha-value").await;
    refuse_read_events_naming(&app, "").await;

    let path = format!("{ENVS}/development/secrets/A");
    let mut served = 0;
    let refused = loop {
        let r = app.get(&path, Some(&ann.access)).await;
        if r.status != StatusCode::OK {
            break r;
        }
        served += 1;
        assert!(served < 2_000, "the journal's backlog is bounded");
    };
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
    assert!(refused.headers.get("retry-after").is_some());
    assert!(!refused.text().contains("alpha-value"));
    assert!(served > 10, "reads went on while the database refused their events: {served}");
    let listing = app.get("/api/v1/orgs/acme/audit-events", Some(&ann.access)).await;
    listing.assert_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");

    allow_read_events(&app).await;
    let stored = read_events(&app).await;
    let key = ("user".into(), ann.user_id.clone(), r#"["A"]"#.into(), false);
    assert_eq!(stored, BTreeMap::from([(key, served)]), "every served read has its event, once");
    let r = app.get(&path, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
});

db_test!(async fn events_not_yet_in_the_database_when_a_server_stops_are_stored_by_the_next(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "A", "alpha-value").await;
    refuse_read_events_naming(&app, "").await;
    for _ in 0..3 {
        let r = app.get(&format!("{ENVS}/development/secrets/A"), Some(&ann.access)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // Stops with the events still in its journal (the database refuses them).
    app.state.audit.shutdown().await;
    allow_read_events(&app).await;

    let next = app.replica().await;
    let stored = read_events(&next).await;
    assert_eq!(stored, BTreeMap::from([(("user".into(), ann.user_id.clone(), r#"["A"]"#.into(), false), 3)]));
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
