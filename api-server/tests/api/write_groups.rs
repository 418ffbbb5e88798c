//! Single-secret writes to one environment wait in its queue and are committed together when
//! they arrive while another write of the environment runs (`service::write_queue`): one
//! revision, one commit, each write still answered, versioned and audited as if it were alone.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use coffer_server::ids::EnvironmentId;
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, TestResponse, acme_web, db_test};

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments/development";

/// The environment's id and revision.
async fn environment(app: &TestApp, ann: &Session) -> (EnvironmentId, i64) {
    let r = app.get(ENV, Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().parse().unwrap(),
        v["revision"].as_i64().unwrap(),
    )
}

/// Starts a write of `key` (PUT, or POST when `create`) in a task of its own.
fn write(
    app: &Arc<TestApp>,
    ann: &Session,
    key: &str,
    value: &str,
    create: bool,
) -> tokio::task::JoinHandle<TestResponse> {
    let (app, token, key, value) = (
        app.clone(),
        ann.access.clone(),
        key.to_owned(),
        value.to_owned(),
    );
    tokio::spawn(async move {
        if create {
            let body = json!({ "key": key, "value": value });
            app.post(&format!("{ENV}/secrets"), Some(&token), body)
                .await
        } else {
            let body = json!({ "value": value });
            app.put(&format!("{ENV}/secrets/{key}"), Some(&token), body)
                .await
        }
    })
}

/// Waits (at most 10 s) until `n` writes of `env` wait in its queue.
async fn queued(app: &TestApp, env: EnvironmentId, n: usize) {
    for _ in 0..1000 {
        if app.state.secret_writes.waiting(env) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} writes never waited in the queue");
}

async fn versions(app: &TestApp, ann: &Session, key: &str) -> Vec<i64> {
    let r = app
        .get(&format!("{ENV}/secrets/{key}/versions"), Some(&ann.access))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let items = v["items"].as_array().unwrap();
    let mut out: Vec<i64> = items
        .iter()
        .map(|i| i["version"].as_i64().unwrap())
        .collect();
    out.sort_unstable();
    out
}

db_test!(async fn concurrent_writes_to_one_environment_all_land_each_versioned_and_audited(app) {
    let ann = acme_web(&app).await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let key = format!("K{}", i % 4);
        tasks.push(write(&app, &ann, &key, &format!("v{i}"), false));
    }
    for task in tasks {
        let r = task.await.unwrap();
        assert!(r.status.is_success(), "{}", r.text());
    }
    for k in 0..4 {
        assert_eq!(versions(&app, &ann, &format!("K{k}")).await, (1..=6).collect::<Vec<_>>());
    }
    let created = app.audit_events(&ann.access, "secret.created").await.len();
    let updated = app.audit_events(&ann.access, "secret.updated").await.len();
    assert_eq!(created + updated, 24);
});

/// A PostgreSQL app where Ann's environment has `A` written once, and its queue is held up
/// behind a lock on the environment's row: a write of `A` waits for it. `None` without
/// PostgreSQL.
struct Held {
    app: Arc<TestApp>,
    ann: Session,
    holder: crate::helpers::LockHolder,
    first: tokio::task::JoinHandle<TestResponse>,
    env: EnvironmentId,
    /// The environment's revision before the first write.
    before: i64,
}

async fn held() -> Option<Held> {
    let app = Arc::new(TestApp::postgres(|_| {}).await?);
    let ann = acme_web(&app).await;
    let r = app
        .put(
            &format!("{ENV}/secrets/A"),
            Some(&ann.access),
            json!({ "value": "0" }),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let (env, before) = environment(&app, &ann).await;
    let mut holder = app
        .hold_lock("SELECT id FROM environments WHERE slug = 'development' FOR UPDATE")
        .await;
    let first = write(&app, &ann, "A", "1", false);
    holder.wait_for_waiters(1).await;
    Some(Held {
        app,
        ann,
        holder,
        first,
        env,
        before,
    })
}

#[tokio::test]
async fn writes_queued_behind_a_running_one_are_committed_together() {
    let Some(h) = held().await else { return };
    let (app, ann) = (&h.app, &h.ann);

    let mut queued_writes = Vec::new();
    for i in 0..5 {
        queued_writes.push(write(app, ann, "A", &format!("{}", i + 2), false));
        queued_writes.push(write(app, ann, &format!("B{i}"), "b", true));
    }
    queued(app, h.env, 10).await;
    h.holder.release().await;

    let r = h.first.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    let mut a_versions = Vec::new();
    for task in queued_writes {
        let r = task.await.unwrap();
        assert!(r.status.is_success(), "{}", r.text());
        if r.json()["key"] == "A" {
            a_versions.push(r.json()["version"].as_i64().unwrap());
        }
    }
    a_versions.sort_unstable();
    assert_eq!(a_versions, vec![3, 4, 5, 6, 7]);
    assert_eq!(versions(app, ann, "A").await, (1..=7).collect::<Vec<_>>());
    let (_, after) = environment(app, ann).await;
    assert_eq!(
        after,
        h.before + 2,
        "the first write, then the ten queued behind it in one"
    );
    let created: Vec<Value> = app.audit_events(&ann.access, "secret.created").await;
    assert_eq!(created.len(), 5);
}

#[tokio::test]
async fn a_write_that_fails_in_a_group_fails_alone() {
    let Some(h) = held().await else { return };
    let (app, ann) = (&h.app, &h.ann);

    let mut queued_writes = Vec::new();
    for i in 0..4 {
        queued_writes.push(write(app, ann, &format!("B{i}"), "b", false));
    }
    // `A` exists: creating it again is a conflict.
    let conflict = write(app, ann, "A", "x", true);
    queued(app, h.env, 5).await;
    h.holder.release().await;

    assert_eq!(h.first.await.unwrap().status, StatusCode::OK);
    for task in queued_writes {
        let r = task.await.unwrap();
        assert!(r.status.is_success(), "{}", r.text());
    }
    conflict
        .await
        .unwrap()
        .assert_error(StatusCode::CONFLICT, "secret_exists");
    let (_, after) = environment(app, ann).await;
    assert_eq!(
        after,
        h.before + 5,
        "the group failed: its four good writes went one by one"
    );
    let all = app
        .get(&format!("{ENV}/secrets"), Some(&ann.access))
        .await
        .json();
    let a = all["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "A")
        .unwrap()
        .clone();
    assert_eq!(a["value"], "1");
}

#[tokio::test]
async fn an_environment_with_too_many_writes_waiting_answers_503_with_retry_after() {
    let Some(h) = held().await else { return };
    let (app, ann) = (&h.app, &h.ann);
    let max = coffer_server::service::secrets::MAX_WAITING_WRITES;
    let waiting: Vec<_> = (0..max)
        .map(|i| write(app, ann, &format!("W{i}"), "w", false))
        .collect();
    queued(app, h.env, max).await;

    let r = app
        .put(
            &format!("{ENV}/secrets/ONE_TOO_MANY"),
            Some(&ann.access),
            json!({ "value": "x" }),
        )
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
    assert!(r.headers.contains_key("retry-after"));

    h.holder.release().await;
    assert_eq!(h.first.await.unwrap().status, StatusCode::OK);
    for task in waiting {
        let r = task.await.unwrap();
        assert!(r.status.is_success(), "{}", r.text());
    }
    let r = app
        .get(&format!("{ENV}/secrets/ONE_TOO_MANY"), Some(&ann.access))
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
}
