//! Change events: recorded with every change, paged as history, streamed (Server-Sent Events)
//! with resumption, fan-out through references, access re-checks, retention and replicas.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, Session, TestApp, acme_web, db_test};

const WEB: &str = "/api/v1/orgs/acme/projects/web";
const EVENTS: &str = "/api/v1/orgs/acme/projects/web/events";

fn secrets(env: &str) -> String {
    format!("{WEB}/environments/{env}/secrets")
}

async fn put(app: &TestApp, who: &str, env: &str, key: &str, value: &str) {
    let r = app
        .put(
            &format!("{}/{key}", secrets(env)),
            Some(who),
            json!({ "value": value }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// Every event of the history visible to `who`, page by page.
async fn history(app: &TestApp, who: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("{EVENTS}?limit=2{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.get(&path, Some(who)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let page = r.json();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
    panic!("history did not end");
}

/// `(type, environment, [key:action …])` of events, for comparisons.
fn summary(events: &[Value]) -> Vec<(String, String, Vec<String>)> {
    events
        .iter()
        .map(|e| {
            let changes = e["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}",
                        c["key"].as_str().unwrap(),
                        c["action"].as_str().unwrap()
                    )
                })
                .collect();
            (
                e["type"].as_str().unwrap().to_owned(),
                e["environment"].as_str().unwrap().to_owned(),
                changes,
            )
        })
        .collect()
}

fn s(t: &str, env: &str, changes: &[&str]) -> (String, String, Vec<String>) {
    (
        t.to_owned(),
        env.to_owned(),
        changes.iter().map(|c| (*c).to_owned()).collect(),
    )
}

db_test!(async fn every_change_is_an_event_with_keys_revisions_and_actor_never_a_value(app) {
    let ann = acme_web(&app).await;
    let dev = secrets("development");
    put(&app, &ann.access, "development", "A", "value-one-a").await;
    put(&app, &ann.access, "development", "A", "value-two-a").await;
    let r = app.put(&dev, Some(&ann.access), json!({ "secrets": [
        { "key": "A", "value": "value-two-a" },
        { "key": "B", "value": "value-one-b", "comment": "comment-one-b" },
    ] })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.send(Request::post(format!("{dev}/import"))
        .header("authorization", format!("Bearer {}", ann.access))
        .header("content-type", "text/plain")
        .body(Body::from("C=value-one-c\nB=value-two-b\n")).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(app.delete(&format!("{dev}/A"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let r = app.post(&format!("{dev}/A/restore"), Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.post(&format!("{dev}/A/rollback"), Some(&ann.access), json!({ "version": 1 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // A bulk write that changes nothing is no event.
    let r = app.put(&dev, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "value-one-a" }] })).await;
    assert_eq!(r.json()["unchanged"], 1, "{}", r.text());
    let r = app.get(EVENTS, Some(&ann.access)).await;
    assert!(!r.text().contains("value-") && !r.text().contains("comment-"), "{}", r.text());

    let all = history(&app, &ann.access, "").await;
    let created = |env: &str| s("environment.created", env, &[]);
    assert_eq!(summary(&all), vec![
        created("development"), created("staging"), created("production"),
        s("secrets.changed", "development", &["A:created"]),
        s("secrets.changed", "development", &["A:updated"]),
        s("secrets.changed", "development", &["B:created"]),
        s("secrets.changed", "development", &["C:created", "B:updated"]),
        s("secrets.changed", "development", &["A:deleted"]),
        s("secrets.changed", "development", &["A:restored"]),
        s("secrets.changed", "development", &["A:updated"]),
    ]);
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let revisions: Vec<i64> = all[3..].iter().map(|e| e["revision"].as_i64().unwrap()).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5, 6, 7]);
    let env = app.get(&format!("{WEB}/environments/development"), Some(&ann.access)).await.json();
    assert_eq!(env["revision"], 7);
    let last = &all[all.len() - 1];
    assert_eq!(last["org"], "acme");
    assert_eq!(last["project"], "web");
    assert_eq!(last["actor"], json!({ "kind": "user", "id": ann.user_id }));
    assert!(last["time"].as_str().unwrap().ends_with('Z'));

    // Narrowed to some environments; `after` skips what was seen.
    let staging = history(&app, &ann.access, "&environments=staging").await;
    assert_eq!(summary(&staging), vec![created("staging")]);
    let later = history(&app, &ann.access, &format!("&after={}", ids[8])).await;
    assert_eq!(later.len(), 1);
});

db_test!(async fn environment_events_and_bad_requests(app) {
    let ann = acme_web(&app).await;
    let r = app.post(&format!("{WEB}/environments"), Some(&ann.access), json!({ "slug": "qa" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = app.patch(&format!("{WEB}/environments/qa"), Some(&ann.access), json!({ "name": "Quality" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Moving it is no rename.
    let r = app.patch(&format!("{WEB}/environments/qa"), Some(&ann.access), json!({ "position": 0 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    put(&app, &ann.access, "qa", "K", "v").await;
    assert_eq!(app.delete(&format!("{WEB}/environments/qa"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let r = app.get(&format!("{EVENTS}?after=3"), Some(&ann.access)).await;
    let items = r.json()["items"].as_array().unwrap().clone();
    // The deleted environment's history goes with it; its events were delivered as they came.
    assert!(items.is_empty(), "{items:?}");

    let mut stream = app.stream(EVENTS, &ann.access, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    let resync = stream.next().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    let r = app.post(&format!("{WEB}/environments"), Some(&ann.access), json!({ "slug": "qa2", "name": "QA 2" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let created = stream.next().await;
    assert_eq!(created.event.as_deref(), Some("environment.created"));
    assert_eq!(created.json()["name"], "QA 2");
    let r = app.patch(&format!("{WEB}/environments/qa2"), Some(&ann.access), json!({ "name": "QA two" })).await;
    assert_eq!(r.status, StatusCode::OK);
    let renamed = stream.next().await;
    assert_eq!(renamed.event.as_deref(), Some("environment.renamed"));
    assert_eq!(renamed.json()["name"], "QA two");
    put(&app, &ann.access, "qa2", "K", "v").await;
    assert_eq!(stream.next().await.json()["revision"], 1);
    assert_eq!(app.delete(&format!("{WEB}/environments/qa2"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let deleted = stream.next().await;
    assert_eq!(deleted.event.as_deref(), Some("environment.deleted"));
    assert_eq!(deleted.json()["revision"], 1);

    // Bad requests are refused before anything streams.
    for (path, last, status, code) in [
        (format!("{EVENTS}?environments=nope"), None, StatusCode::NOT_FOUND, "not_found"),
        (format!("{EVENTS}?environments=Bad_Slug"), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (format!("{EVENTS}?after=-1"), None, StatusCode::BAD_REQUEST, "invalid_position"),
        (EVENTS.to_owned(), Some("x"), StatusCode::BAD_REQUEST, "invalid_position"),
        ("/api/v1/orgs/acme/projects/nope/events".to_owned(), None, StatusCode::NOT_FOUND, "not_found"),
    ] {
        app.stream(&path, &ann.access, last).await.refusal().await.assert_error(status, code);
    }
    let r = app.get(&format!("{EVENTS}?limit=501"), Some(&ann.access)).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    let r = app.send(Request::get(EVENTS).header("accept", "text/event-stream").body(Body::empty()).unwrap()).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "missing_credentials");
    // Another organization's member learns nothing.
    let eve = app.register("eve@example.com").await;
    app.stream(EVENTS, &eve.access, None).await.refusal().await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get(EVENTS, Some(&eve.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn a_stream_resumes_after_a_disconnect_with_every_later_event_exactly_once(app) {
    let ann = acme_web(&app).await;
    let mut stream = app.stream(EVENTS, &ann.access, None).await;
    let resync = stream.next().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    let body = resync.json();
    assert_eq!(body["reason"], "start");
    assert_eq!(body["environments"].as_array().unwrap().len(), 3);
    assert_eq!(resync.id.as_deref(), Some(body["last_event_id"].to_string().as_str()));

    for i in 0..3 {
        put(&app, &ann.access, "development", &format!("K{i}"), "v").await;
    }
    let mut seen = Vec::new();
    for i in 0..3 {
        let m = stream.next().await;
        assert_eq!(m.event.as_deref(), Some("secrets.changed"));
        let e = m.json();
        assert_eq!(m.id.as_deref(), Some(e["id"].to_string().as_str()));
        assert_eq!(e["changes"][0]["key"], format!("K{i}"));
        seen.push(m.id.unwrap());
    }
    drop(stream);

    // Written while disconnected, in two environments, interleaved.
    for i in 3..9 {
        let env = if i % 2 == 0 { "development" } else { "staging" };
        put(&app, &ann.access, env, &format!("K{i}"), "v").await;
    }
    let mut resumed = app.stream(EVENTS, &ann.access, Some(&seen[2])).await;
    let mut keys = Vec::new();
    let mut revisions: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for _ in 3..9 {
        let m = resumed.next().await;
        assert_eq!(m.event.as_deref(), Some("secrets.changed"), "no resync: the position is retained");
        let e = m.json();
        keys.push(e["changes"][0]["key"].as_str().unwrap().to_owned());
        revisions.entry(e["environment"].as_str().unwrap().to_owned()).or_default()
            .push(e["revision"].as_i64().unwrap());
    }
    assert_eq!(keys, ["K3", "K4", "K5", "K6", "K7", "K8"]);
    assert_eq!(revisions["development"], [4, 5, 6], "per-environment order");
    assert_eq!(revisions["staging"], [1, 2, 3]);
    assert!(resumed.next_within(Duration::from_millis(300)).await.is_none(), "nothing repeated");

    // `?after=` does the same; narrowed to one environment.
    let mut narrowed = app.stream(&format!("{EVENTS}?after={}&environments=staging", seen[2]), &ann.access, None).await;
    for want in ["K3", "K5", "K7"] {
        assert_eq!(narrowed.next().await.json()["changes"][0]["key"], want);
    }
    put(&app, &ann.access, "development", "K9", "v").await;
    put(&app, &ann.access, "staging", "K10", "v").await;
    assert_eq!(narrowed.next().await.json()["changes"][0]["key"], "K10");
    assert_eq!(resumed.next().await.json()["changes"][0]["key"], "K9");
    assert_eq!(resumed.next().await.json()["changes"][0]["key"], "K10");
});

db_test!(async fn a_change_reaches_the_environments_whose_values_refer_to_it(app) {
    let ann = acme_web(&app).await;
    app.project(&ann, "acme", "api").await;
    put(&app, &ann.access, "staging", "DB_HOST", "db.internal").await;
    put(&app, &ann.access, "production", "DB_URL", "postgres://${staging.DB_HOST}/app").await;
    put(&app, &ann.access, "production", "PLAIN", "x").await;
    let r = app.put("/api/v1/orgs/acme/projects/api/environments/development/secrets/UPSTREAM",
        Some(&ann.access), json!({ "value": "${web.production.DB_URL}" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let mut web = app.stream(EVENTS, &ann.access, None).await;
    let mut api = app.stream("/api/v1/orgs/acme/projects/api/events", &ann.access, None).await;
    web.next().await;
    api.next().await;
    put(&app, &ann.access, "staging", "DB_HOST", "db2.internal").await;
    let direct = web.next().await.json();
    assert_eq!((direct["environment"].as_str(), direct.get("via_reference")), (Some("staging"), None));
    let via = web.next().await.json();
    assert_eq!(via["environment"], "production");
    assert_eq!(via["via_reference"], true);
    assert_eq!(via["changes"], json!([{ "key": "DB_URL", "action": "updated" }]));
    assert_eq!(via["revision"], 2, "production's own revision did not move");
    let far = api.next().await.json();
    assert_eq!((far["project"].as_str(), far["environment"].as_str()), (Some("api"), Some("development")));
    assert_eq!(far["changes"], json!([{ "key": "UPSTREAM", "action": "updated" }]));
    assert!(direct["id"].as_i64() < via["id"].as_i64() && via["id"].as_i64() < far["id"].as_i64());

    // A change to a key nobody refers to reaches nobody else.
    put(&app, &ann.access, "production", "PLAIN", "y").await;
    assert_eq!(web.next().await.json()["changes"][0]["key"], "PLAIN");
    assert!(api.next_within(Duration::from_millis(300)).await.is_none());
    // Once the reference is gone, so is the fan-out.
    put(&app, &ann.access, "production", "DB_URL", "postgres://fixed/app").await;
    web.next().await;
    api.next().await;
    put(&app, &ann.access, "staging", "DB_HOST", "db3.internal").await;
    assert_eq!(web.next().await.json()["environment"], "staging");
    assert!(web.next_within(Duration::from_millis(300)).await.is_none());
    // An environment that goes away changes what refers to it.
    put(&app, &ann.access, "production", "DB_URL", "postgres://${staging.DB_HOST}/app").await;
    web.next().await;
    api.next().await;
    assert_eq!(app.delete(&format!("{WEB}/environments/staging"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(web.next().await.event.as_deref(), Some("environment.deleted"));
    let via = web.next().await.json();
    assert_eq!((via["environment"].as_str(), via["via_reference"].as_bool()), (Some("production"), Some(true)));
    assert_eq!(api.next().await.json()["environment"], "development");
});

db_test!(async fn access_lost_mid_stream_stops_delivery_of_that_environment(app) {
    let ann = acme_web(&app).await;
    let dev = app.member(&ann, "acme", "dev@example.com", "member").await;
    app.grant(&ann, "acme", "web", &dev, "developer").await;
    let mut stream = app.stream(EVENTS, &dev.access, None).await;
    assert_eq!(stream.next().await.event.as_deref(), Some("resync"));
    put(&app, &ann.access, "staging", "A", "1").await;
    assert_eq!(stream.next().await.json()["environment"], "staging");

    let r = app.put(&format!("{WEB}/environments/staging/policies/developer"), Some(&ann.access),
        json!({ "access": "none" })).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    put(&app, &ann.access, "staging", "A", "2").await;
    put(&app, &ann.access, "development", "B", "1").await;
    let next = stream.next().await.json();
    assert_eq!(next["environment"], "development", "staging is no longer delivered: {next}");

    // A service token streams only the environments it is given.
    let (_, token) = app.service_token(&ann, "acme", json!({ "name": "op", "project": "web",
        "environments": ["production"], "access": "read" })).await;
    let mut scoped = app.stream(EVENTS, &token, None).await;
    let resync = scoped.next().await.json();
    assert_eq!(resync["environments"], json!([{ "environment": "production", "revision": 0 }]));
    put(&app, &ann.access, "development", "C", "1").await;
    put(&app, &ann.access, "production", "D", "1").await;
    let e = scoped.next().await.json();
    assert_eq!((e["environment"].as_str(), e["actor"]["kind"].as_str()), (Some("production"), Some("user")));
    app.stream(&format!("{EVENTS}?environments=development"), &token, None).await
        .refusal().await.assert_error(StatusCode::FORBIDDEN, "forbidden");

    // Removed from the project: the stream ends.
    let r = app.delete(&format!("{WEB}/access/users/{}", dev.user_id), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    put(&app, &ann.access, "development", "B", "2").await;
    assert!(stream.ends_within(Duration::from_secs(5)).await, "the stream ends");
});

db_test!(async fn a_logout_ends_the_stream_of_its_session(app) {
    let ann = acme_web(&app).await;
    let second = app.login("ann@example.com", PASSWORD).await.json();
    let second = Session::from(&second);
    let mut stream = app.stream(EVENTS, &second.access, None).await;
    stream.next().await;
    let r = app.call(Method::POST, "/api/v1/auth/logout", Some(&second.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(stream.ends_within(Duration::from_secs(5)).await);
    let mut other = app.stream(EVENTS, &ann.access, None).await;
    assert_eq!(other.next().await.event.as_deref(), Some("resync"), "other sessions stream on");
});

db_test!(async fn a_position_older_than_the_retention_gets_a_resync(app, |c| c.event_retention_secs = 1) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "development", "A", "1").await;
    let first = history(&app, &ann.access, "").await[0]["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    put(&app, &ann.access, "development", "A", "2").await;
    let pruned = coffer_server::service::events::prune_expired(&app.state).await.unwrap();
    assert_eq!(pruned, 4, "the project's environments and the first write");
    let left = history(&app, &ann.access, "").await;
    assert_eq!(left.len(), 1);
    let mut stream = app.stream(EVENTS, &ann.access, Some(&first.to_string())).await;
    let resync = stream.next().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    let body = resync.json();
    assert_eq!(body["reason"], "expired");
    assert_eq!(body["last_event_id"], left[0]["id"]);
    let dev = body["environments"].as_array().unwrap().iter()
        .find(|e| e["environment"] == "development").unwrap().clone();
    assert_eq!(dev["revision"], 2);
    // The newest retained position is fine; one from the future is not this server's.
    let mut fine = app.stream(EVENTS, &ann.access, Some(&left[0]["id"].to_string())).await;
    put(&app, &ann.access, "development", "A", "3").await;
    assert_eq!(fine.next().await.event.as_deref(), Some("secrets.changed"));
    let mut future = app.stream(EVENTS, &ann.access, Some("999999")).await;
    assert_eq!(future.next().await.json()["reason"], "expired");
});

db_test!(async fn streams_are_bounded_per_credential(app, |c| c.event_streams_per_credential = 2) {
    let ann = acme_web(&app).await;
    let a = app.stream(EVENTS, &ann.access, None).await;
    let b = app.stream(EVENTS, &ann.access, None).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let r = app.stream(EVENTS, &ann.access, None).await.refusal().await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    drop(a);
    // The slot comes back once the stream's task notices its client is gone.
    let mut opened = false;
    for _ in 0..50 {
        let mut c = app.stream(EVENTS, &ann.access, None).await;
        if c.status == StatusCode::OK {
            assert_eq!(c.next().await.event.as_deref(), Some("resync"));
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opened);
    assert_eq!(app.state.event_streams.open(), 2);
});

#[tokio::test]
async fn an_event_written_through_one_replica_reaches_a_stream_on_another() {
    let Some(a) = TestApp::postgres(|_| {}).await else {
        return;
    };
    let b = a.replica().await;
    a.wait_for_listener().await;
    b.wait_for_listener().await;
    let ann = acme_web(&a).await;
    let mut stream = b.stream(EVENTS, &ann.access, None).await;
    assert_eq!(stream.next().await.event.as_deref(), Some("resync"));
    // A notification is only a wake-up: the stream reads the table, so waits well under the
    // poll interval mean the notification carried it.
    for i in 0..5 {
        put(&a, &ann.access, "production", &format!("K{i}"), "v").await;
        let m = stream
            .next_within(Duration::from_secs(3))
            .await
            .expect("pushed through the other replica");
        assert_eq!(m.json()["changes"][0]["key"], format!("K{i}"));
    }
    // Writes on both replicas at once: one order for everyone, each event once (writes to one
    // environment that wait for each other are committed together, as one event).
    let writes = (0..10).map(|i| {
        let (app, token) = (if i % 2 == 0 { &a } else { &b }, ann.access.clone());
        async move {
            put(
                app,
                &token,
                if i % 3 == 0 { "staging" } else { "development" },
                &format!("P{i}"),
                "v",
            )
            .await
        }
    });
    futures::future::join_all(writes).await;
    let mut ids = Vec::new();
    let mut keys = std::collections::BTreeSet::new();
    while keys.len() < 10 {
        let m = stream.next().await;
        ids.push(m.id.clone().unwrap().parse::<i64>().unwrap());
        for change in m.json()["changes"].as_array().unwrap() {
            assert!(
                keys.insert(change["key"].as_str().unwrap().to_owned()),
                "{change} twice"
            );
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(
        stream
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    let from_a: Vec<i64> = history(&a, &ann.access, &format!("&after={}", ids[0] - 1))
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(from_a, ids, "the history of either replica is the stream's");
}

const AUDIT: &str = "/api/v1/orgs/acme/audit-events";

db_test!(async fn the_organization_audit_log_streams_live_and_resumes_exactly_once(app) {
    let ann = acme_web(&app).await;
    let mut stream = app.stream(AUDIT, &ann.access, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    put(&app, &ann.access, "development", "A", "1").await;
    let r = app.get(&format!("{}/A", secrets("development")), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK);
    let mut seen = Vec::new();
    for want in ["secret.updated", "secrets.read"] {
        let m = stream.next().await;
        assert_eq!(m.event.as_deref(), Some("audit"));
        let e = m.json();
        assert_eq!(e["action"], want, "{e}");
        assert!(!m.data.contains("\"1\""), "no value: {}", m.data);
        seen.push(m.id.unwrap());
    }
    drop(stream);

    // Written while no stream was open, concurrently: each once, in the order they were stored.
    let writes = (0..8).map(|i| {
        let (app, token) = (&app, ann.access.clone());
        async move { put(app, &token, "staging", &format!("K{i}"), "v").await }
    });
    futures::future::join_all(writes).await;
    let mut resumed = app.stream(AUDIT, &ann.access, Some(&seen[1])).await;
    let mut keys = std::collections::BTreeSet::new();
    while keys.len() < 8 {
        let e = resumed.next().await.json();
        assert_eq!(e["action"], "secret.updated", "{e}");
        let key = e["details"]["created"][0].as_str().unwrap().to_owned();
        assert!(keys.insert(key), "{e} twice");
    }
    assert!(resumed.next_within(Duration::from_millis(500)).await.is_none(), "nothing more");

    // Owners and admins only; a position this stream never sent is refused.
    let member = app.member(&ann, "acme", "mo@example.com", "member").await;
    app.stream(AUDIT, &member.access, None).await.refusal().await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.stream(AUDIT, &ann.access, Some("12")).await.refusal().await.assert_error(StatusCode::BAD_REQUEST, "invalid_position");
    // Demoted mid-stream: the stream ends.
    let admin = app.member(&ann, "acme", "ad@example.com", "admin").await;
    let mut watched = app.stream(AUDIT, &admin.access, None).await;
    assert_eq!(watched.status, StatusCode::OK);
    let r = app.call(Method::PATCH, &format!("/api/v1/orgs/acme/members/{}", admin.user_id), Some(&ann.access), Some(json!({ "role": "member" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(watched.ends_within(Duration::from_secs(5)).await);
});

db_test!(async fn references_written_before_the_index_existed_are_indexed_at_start(app) {
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "staging", "DB_HOST", "db.internal").await;
    put(&app, &ann.access, "production", "DB_URL", "postgres://${staging.DB_HOST}/app").await;
    // As a database from before the index: the reference is in the value only.
    sqlx::query("DELETE FROM secret_references").execute(app.state.db.pool()).await.unwrap();
    coffer_server::service::events::index_unindexed_references(app.state.clone()).await;
    let mut stream = app.stream(EVENTS, &ann.access, None).await;
    stream.next().await;
    put(&app, &ann.access, "staging", "DB_HOST", "db2.internal").await;
    assert_eq!(stream.next().await.json()["environment"], "staging");
    let via = stream.next().await.json();
    assert_eq!((via["environment"].as_str(), via["via_reference"].as_bool()), (Some("production"), Some(true)));
});

#[tokio::test]
async fn access_changed_on_one_replica_is_effective_on_the_others_at_once() {
    let Some(a) = TestApp::postgres(|c| c.access_cache_ttl_ms = 60_000).await else {
        return;
    };
    let b = a.replica().await;
    a.wait_for_listener().await;
    b.wait_for_listener().await;
    let ann = acme_web(&a).await;
    let (key_id, key) = a.api_key(&ann, json!({ "name": "k" })).await;
    assert_eq!(
        b.get(WEB, Some(&key)).await.status,
        StatusCode::OK,
        "b remembers the key"
    );
    let dev = a.member(&ann, "acme", "dev@example.com", "member").await;
    a.grant(&ann, "acme", "web", &dev, "developer").await;
    let mut stream = b.stream(EVENTS, &dev.access, None).await;
    assert_eq!(stream.next().await.event.as_deref(), Some("resync"));

    assert_eq!(
        a.delete(&format!("/api/v1/api-keys/{key_id}"), Some(&ann.access))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = a
        .put(
            &format!("{WEB}/environments/staging/policies/developer"),
            Some(&ann.access),
            json!({ "access": "none" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let mut refused = false;
    for _ in 0..50 {
        if b.get(WEB, Some(&key)).await.status == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "the revoked key is refused by the other replica within 5 s, not 60"
    );
    // The stream on the other replica stops delivering staging without waiting for its re-check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&a, &ann.access, "staging", "A", "1").await;
    put(&a, &ann.access, "development", "B", "1").await;
    assert_eq!(stream.next().await.json()["environment"], "development");
}

// A stream that starts now delivers nothing of the past, even while an older transaction
// elsewhere in the database is still open (on PostgreSQL, events are ordered by transaction
// id, and the stream waits for older transactions: it must not take their wait for "now").
db_test!(async fn a_live_audit_stream_starts_now_even_behind_a_long_transaction(app) {
    let long = if app.state.db.backend() == coffer_server::db::Backend::Postgres {
        let mut conn = app.state.db.pool().acquire().await.unwrap().detach();
        // A transaction with an id: it holds the cluster's xmin back until the connection closes.
        sqlx::raw_sql("BEGIN; SELECT CAST(pg_current_xact_id() AS TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        Some(conn)
    } else {
        None
    };
    // Events written (and committed) after the long transaction began, before the stream.
    let ann = acme_web(&app).await;
    put(&app, &ann.access, "staging", "BEFORE", "1").await;
    let mut stream = app.stream(AUDIT, &ann.access, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    put(&app, &ann.access, "development", "AFTER", "1").await;
    drop(long);
    let m = stream.next().await;
    let e = m.json();
    assert_eq!(e["action"], "secret.updated", "{e}");
    assert!(m.data.contains("AFTER"), "the first event is the write after the stream opened: {}", m.data);
});
