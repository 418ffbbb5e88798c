//! Webhooks: signed deliveries (checked by an independent HMAC implementation), retries,
//! automatic disabling, the attempt log, redelivery, secret rotation, survival across a restart,
//! two replicas, and the outbound address guard (through an injected resolver: no test connects
//! anywhere but loopback).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use coffer_server::service::webhooks::HostResolver;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, acme_web, db_test};

const HOOKS: &str = "/api/v1/orgs/acme/projects/web/webhooks";
const DEV: &str = "/api/v1/orgs/acme/projects/web/environments/development/secrets";

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: String,
}

/// An HTTP receiver on loopback: records every request and answers with the statuses queued
/// for it (then 200).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let r = receiver.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let r = r.clone();
                async move {
                    r.got.lock().unwrap().push(Received {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    let status = {
                        let mut answers = r.answers.lock().unwrap();
                        if answers.is_empty() {
                            200
                        } else {
                            answers.remove(0)
                        }
                    };
                    let mut response = axum::response::Response::new(axum::body::Body::from(
                        format!("answer {status} {}", "x".repeat(2_000)),
                    ));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if status == 302 {
                        response
                            .headers_mut()
                            .insert("location", "/elsewhere".parse().unwrap());
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (receiver, addr)
    }

    fn answer(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend_from_slice(statuses);
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until `n` requests have come.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} requests expected, {} came", self.got().len());
    }
}

/// Checks `Coffer-Signature` the way a receiver written in Python would.
fn python_verifies(secret: &str, header: &str, body: &str) -> bool {
    let script = r#"
import hmac, hashlib, sys
secret, header, body = sys.argv[1], sys.argv[2], sys.stdin.read()
parts = [p.split("=", 1) for p in header.split(",")]
t = [v for k, v in parts if k == "t"][0]
expected = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
print("ok" if any(hmac.compare_digest(v, expected) for k, v in parts if k == "v1") else "bad")
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret, header])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

fn fast(c: &mut coffer_server::Config) {
    c.webhook_allow_private = true;
    c.webhook_retry_base_ms = 50;
    c.webhook_retry_max_ms = 200;
    c.webhook_max_attempts = 4;
    c.webhook_timeout_ms = 2_000;
    c.webhook_disable_after = 6;
}

async fn create(app: &TestApp, who: &Session, body: Value) -> Value {
    let r = app.post(HOOKS, Some(&who.access), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()
}

async fn write(app: &TestApp, who: &Session, key: &str) {
    let r = app
        .put(
            &format!("{DEV}/{key}"),
            Some(&who.access),
            json!({ "value": "a-secret-value" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn attempts(app: &TestApp, who: &Session, id: &str) -> Vec<Value> {
    let r = app
        .get(&format!("{HOOKS}/{id}/deliveries"), Some(&who.access))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

db_test!(async fn deliveries_are_signed_events_that_an_independent_implementation_verifies(app, |c| fast(c)) {
    let ann = acme_web(&app).await;
    let (receiver, addr) = Receiver::start().await;
    let hook = create(&app, &ann, json!({ "url": format!("http://{addr}/hook?token=abc") })).await;
    let id = hook["id"].as_str().unwrap();
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(hook["enabled"], true);
    let shown = app.get(&format!("{HOOKS}/{id}"), Some(&ann.access)).await;
    assert!(!shown.text().contains(&secret) && shown.json().get("secret").is_none());

    write(&app, &ann, "DATABASE_URL").await;
    let got = receiver.wait_for(1).await;
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    assert_eq!(r.headers["coffer-webhook-id"], id);
    assert_eq!(r.headers["content-type"], "application/json");
    let event: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(event["type"], "secrets.changed");
    assert_eq!(event["changes"], json!([{ "key": "DATABASE_URL", "action": "created" }]));
    assert_eq!(r.headers["coffer-event-id"], event["id"].to_string().as_str());
    assert!(!r.body.contains("a-secret-value"));
    let signature = r.headers["coffer-signature"].to_str().unwrap();
    assert!(python_verifies(&secret, signature, &r.body), "{signature}");
    assert!(!python_verifies("whsec_other", signature, &r.body));
    let t: i64 = signature.split(',').next().unwrap().trim_start_matches("t=").parse().unwrap();
    assert!((t - time::OffsetDateTime::now_utc().unix_timestamp()).abs() < 60);

    // A ping, then the log: newest first, the answer cut at 1 KiB.
    let r = app.post(&format!("{HOOKS}/{id}/ping"), Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let got = receiver.wait_for(2).await;
    assert_eq!(serde_json::from_str::<Value>(&got[1].body).unwrap()["type"], "ping");
    assert!(python_verifies(&secret, got[1].headers["coffer-signature"].to_str().unwrap(), &got[1].body));
    let log = attempts(&app, &ann, id).await;
    assert_eq!(log.len(), 2);
    assert_eq!((log[0]["kind"].as_str(), log[0]["status"].as_str()), (Some("ping"), Some("succeeded")));
    assert_eq!(log[1]["event_id"], event["id"]);
    assert_eq!(log[1]["response_status"], 200);
    assert_eq!(log[1]["response_body"].as_str().unwrap().len(), 1024);

    // Redelivery sends the same body again.
    let delivery = log[1]["delivery_id"].as_str().unwrap();
    let r = app.post(&format!("{HOOKS}/{id}/deliveries/{delivery}/redeliver"), Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(receiver.wait_for(3).await[2].body, got[0].body);

    // After a rotation both secrets sign for the overlap; a data-key rotation keeps them.
    let r = app.post(&format!("{HOOKS}/{id}/rotate-secret"), Some(&ann.access), json!({ "overlap_seconds": 600 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let new_secret = r.json()["secret"].as_str().unwrap().to_owned();
    let r = app.post("/api/v1/orgs/acme/projects/web/rotate-key", Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    write(&app, &ann, "OTHER").await;
    let got = receiver.wait_for(4).await;
    let signature = got[3].headers["coffer-signature"].to_str().unwrap();
    assert_eq!(signature.matches("v1=").count(), 2);
    assert!(python_verifies(&new_secret, signature, &got[3].body));
    assert!(python_verifies(&secret, signature, &got[3].body));

    // Filters: only what was asked for.
    let (only_staging, addr2) = Receiver::start().await;
    create(&app, &ann, json!({ "url": format!("http://{addr2}/"), "environments": ["staging"], "events": ["secrets.changed"] })).await;
    write(&app, &ann, "THIRD").await;
    let r = app.put("/api/v1/orgs/acme/projects/web/environments/staging/secrets/S", Some(&ann.access), json!({ "value": "v" })).await;
    assert_eq!(r.status, StatusCode::OK);
    let got = only_staging.wait_for(1).await;
    assert_eq!(serde_json::from_str::<Value>(&got[0].body).unwrap()["environment"], "staging");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(only_staging.got().len(), 1);
});

db_test!(async fn failed_attempts_are_retried_with_backoff_and_a_failing_webhook_is_disabled(app, |c| fast(c)) {
    let ann = acme_web(&app).await;
    let (receiver, addr) = Receiver::start().await;
    receiver.answer(&[500, 503]);
    let hook = create(&app, &ann, json!({ "url": format!("http://{addr}/") })).await;
    let id = hook["id"].as_str().unwrap();
    write(&app, &ann, "A").await;
    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|r| r.body == got[0].body), "the same event each time");
    let mut log = Vec::new();
    for _ in 0..100 {
        log = attempts(&app, &ann, id).await;
        if log.len() == 3 { break; }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary: Vec<(i64, &str, i64)> = log.iter().rev()
        .map(|a| (a["attempt"].as_i64().unwrap(), a["status"].as_str().unwrap(), a["response_status"].as_i64().unwrap()))
        .collect();
    assert_eq!(summary, [(1, "retrying", 500), (2, "retrying", 503), (3, "succeeded", 200)]);
    assert!(log[2]["next_attempt_at"].is_string());

    // A receiver that always fails: attempts stop at the limit; the webhook is disabled after
    // six failed attempts in a row (two deliveries of four attempts), audited.
    receiver.answer(&[500; 20]);
    write(&app, &ann, "B").await;
    write(&app, &ann, "C").await;
    let mut hook = Value::Null;
    for _ in 0..200 {
        hook = app.get(&format!("{HOOKS}/{id}"), Some(&ann.access)).await.json();
        if hook["enabled"] == false { break; }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(hook["enabled"], false, "{hook}");
    assert_eq!(hook["disabled_reason"], "disabled after 6 failed attempts in a row");
    let r = app.get("/api/v1/orgs/acme/audit-events?action=webhook.disabled", Some(&ann.access)).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1, "{}", r.text());
    let before = receiver.got().len();
    write(&app, &ann, "D").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.got().len(), before, "a disabled webhook gets nothing");
    // Enabled again, it starts over: attempts that were waiting go on, new events come.
    receiver.answers.lock().unwrap().clear();
    let r = app.patch(&format!("{HOOKS}/{id}"), Some(&ann.access), json!({ "enabled": true })).await;
    assert_eq!((r.json()["enabled"].as_bool(), r.json()["consecutive_failures"].as_i64()), (Some(true), Some(0)));
    write(&app, &ann, "E").await;
    let mut delivered = false;
    for _ in 0..200 {
        delivered = receiver.got()[before..].iter().any(|r| r.body.contains("\"E\""));
        if delivered { break; }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered);
});

db_test!(async fn redirects_are_not_followed_and_bad_webhooks_are_refused(app, |c| fast(c)) {
    let ann = acme_web(&app).await;
    let (receiver, addr) = Receiver::start().await;
    receiver.answer(&[302]);
    let hook = create(&app, &ann, json!({ "url": format!("http://{addr}/in") })).await;
    let id = hook["id"].as_str().unwrap();
    app.post(&format!("{HOOKS}/{id}/ping"), Some(&ann.access), json!({})).await;
    receiver.wait_for(2).await;
    assert!(receiver.got().iter().all(|r| r.path == "/in"), "the redirect was not followed");
    for (body, status, code) in [
        (json!({ "url": "ftp://example.com/" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({ "url": "not a url" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({ "url": "https://user:pw@example.com/" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({ "url": format!("https://example.com/{}", "a".repeat(2100)) }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({ "url": "http://169.254.169.254/latest/meta-data" }), StatusCode::UNPROCESSABLE_ENTITY, "url_not_allowed"),
        (json!({ "url": "http://[fe80::1]/" }), StatusCode::UNPROCESSABLE_ENTITY, "url_not_allowed"),
        (json!({ "url": "https://example.com/", "environments": ["nope"] }), StatusCode::UNPROCESSABLE_ENTITY, "unknown_environment"),
        (json!({ "url": "https://example.com/", "events": [] }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_events"),
        (json!({ "url": "https://example.com/", "events": ["secrets.stolen"] }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
    ] {
        app.post(HOOKS, Some(&ann.access), body).await.assert_error(status, code);
    }
    // Only project admins manage webhooks; other tenants see nothing.
    let dev = app.member(&ann, "acme", "dev@example.com", "member").await;
    app.grant(&ann, "acme", "web", &dev, "developer").await;
    app.get(HOOKS, Some(&dev.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let eve = app.register("eve@example.com").await;
    app.get(&format!("{HOOKS}/{id}"), Some(&eve.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.delete(&format!("{HOOKS}/{id}"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get(&format!("{HOOKS}/{id}"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

/// Resolves the names it was given, and nothing else.
struct FixedResolver(HashMap<&'static str, IpAddr>);

impl HostResolver for FixedResolver {
    fn resolve(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let found = self.0.get(host).copied();
        Box::pin(async move {
            found
                .map(|ip| vec![ip])
                .ok_or_else(|| std::io::Error::other("unknown host"))
        })
    }
}

fn resolver() -> Arc<FixedResolver> {
    Arc::new(FixedResolver(HashMap::from([
        ("private.test", "10.0.0.5".parse().unwrap()),
        ("loopback.test", "127.0.0.1".parse().unwrap()),
        ("metadata.test", "169.254.169.254".parse().unwrap()),
    ])))
}

/// The error of the first attempt of the webhook `id`.
async fn first_error(app: &TestApp, who: &Session, id: &str) -> String {
    for _ in 0..200 {
        if let Some(a) = attempts(app, who, id).await.last() {
            return a["error"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no attempt was made");
}

db_test!(async fn private_loopback_and_metadata_addresses_are_refused(app, |c| { c.webhook_max_attempts = 1; }) {
    app.state.webhooks.set_resolver(resolver());
    let ann = acme_web(&app).await;
    for url in ["http://127.0.0.1:9/", "http://10.0.0.1/", "http://[::1]/", "http://192.168.1.1/", "http://169.254.169.254/"] {
        app.post(HOOKS, Some(&ann.access), json!({ "url": url })).await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "url_not_allowed");
    }
    // Names are checked when they are resolved, at every delivery: nothing is connected to.
    for (host, why) in [("private.test", "a loopback or private address"), ("loopback.test", "a loopback or private address")] {
        let hook = create(&app, &ann, json!({ "url": format!("http://{host}/") })).await;
        let id = hook["id"].as_str().unwrap();
        app.post(&format!("{HOOKS}/{id}/ping"), Some(&ann.access), json!({})).await;
        let error = first_error(&app, &ann, id).await;
        assert_eq!(error, format!("the host resolves to {why}, which webhooks may not reach"));
    }
});

#[tokio::test]
async fn metadata_addresses_are_refused_even_when_private_ones_are_allowed() {
    let app = TestApp::sqlite(|c| {
        c.webhook_allow_private = true;
        c.webhook_max_attempts = 1;
    })
    .await;
    app.state.webhooks.set_resolver(resolver());
    let ann = acme_web(&app).await;
    app.post(
        HOOKS,
        Some(&ann.access),
        json!({ "url": "http://169.254.169.254/" }),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "url_not_allowed");
    let hook = create(&app, &ann, json!({ "url": "http://metadata.test/" })).await;
    let id = hook["id"].as_str().unwrap();
    app.post(&format!("{HOOKS}/{id}/ping"), Some(&ann.access), json!({}))
        .await;
    assert_eq!(
        first_error(&app, &ann, id).await,
        "the host resolves to a cloud metadata address, which webhooks may not reach"
    );
}

db_test!(async fn queued_deliveries_survive_a_restart(app, |c| { fast(c); c.webhook_retry_base_ms = 1_000; c.webhook_retry_max_ms = 1_000; }) {
    let ann = acme_web(&app).await;
    let (receiver, addr) = Receiver::start().await;
    receiver.answer(&[503]);
    create(&app, &ann, json!({ "url": format!("http://{addr}/") })).await;
    write(&app, &ann, "A").await;
    receiver.wait_for(1).await;
    // This server stops; its delivery waits in the database for its retry.
    app.state.shutdown.cancel();
    let restarted = app.replica().await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].body, got[1].body);
    drop(restarted);
});

#[tokio::test]
async fn two_replicas_never_send_the_same_delivery() {
    let Some(a) = TestApp::postgres(fast).await else {
        return;
    };
    let b = a.replica().await;
    let ann = acme_web(&a).await;
    let (receiver, addr) = Receiver::start().await;
    create(&a, &ann, json!({ "url": format!("http://{addr}/") })).await;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        write(app, &ann, &format!("K{i}")).await;
    }
    let got = receiver.wait_for(20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = receiver
        .got()
        .iter()
        .map(|r| r.headers["coffer-event-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!((before, ids.len(), got.len()), (20, 20, 20));
}
