//! `/metrics`: scraped and parsed as Prometheus text; labels name routes, never what a request
//! carried.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, acme_web};

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format")
}

fn value(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => 0.0,
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_never_carry_what_a_request_held() {
    let app = TestApp::sqlite(|_| {}).await;
    let ann = acme_web(&app).await;
    let env = "/api/v1/orgs/acme/projects/web/environments/production/secrets";
    let r = app
        .post(
            env,
            Some(&ann.access),
            json!({ "key": "STRIPE_KEY", "value": "sk_live_canary" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(app.get(env, Some(&ann.access)).await.status, StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/no/such/route", Some(&ann.access))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for _ in 0..3 {
        app.post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "ann@example.com", "password": "wrong password here" }),
        )
        .await;
    }

    let r = app.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    let metrics = scrape(&text);
    let find = |name: &str, labels: &[(&str, &str)]| {
        metrics
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(value)
    };
    assert_eq!(
        find(
            "coffer_http_requests_total",
            &[
                ("route", "/api/v1/auth/register"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        find(
            "coffer_http_requests_total",
            &[
                (
                    "route",
                    "/api/v1/orgs/:org/projects/:project/environments/:env/secrets"
                ),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        Some(1.0),
        "{}",
        text.lines()
            .filter(|l| l.contains("secrets"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        find(
            "coffer_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        Some(1.0),
        "{}",
        text.lines()
            .filter(|l| l.contains("404"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        find(
            "coffer_http_requests_total",
            &[("route", "/api/v1/auth/login"), ("status", "401")]
        )
        .is_some_and(|v| v >= 3.0)
    );
    assert!(
        metrics
            .samples
            .iter()
            .any(|s| s.metric == "coffer_http_request_duration_seconds_count"
                && s.labels.get("route") == Some("/api/v1/auth/register"))
    );
    assert!(find("coffer_secrets_written_total", &[]).is_some_and(|v| v >= 1.0));
    assert!(find("coffer_secrets_read_total", &[]).is_some_and(|v| v >= 1.0));
    assert!(find("coffer_db_pool_connections", &[("state", "idle")]).is_some());
    assert!(find("coffer_db_pool_connections", &[("state", "in_use")]).is_some());
    assert_eq!(
        find("coffer_password_hash_queue", &[("state", "waiting")]),
        Some(0.0)
    );
    assert_eq!(find("coffer_event_streams", &[]), Some(0.0));
    assert_eq!(find("coffer_webhook_deliveries_pending", &[]), Some(0.0));
    assert_eq!(
        find(
            "coffer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for held in [
        "ann@example.com",
        "STRIPE_KEY",
        "sk_live_canary",
        "acme",
        &ann.access,
        "wrong password",
    ] {
        assert!(!text.contains(held), "{held} reached /metrics");
    }
}

#[tokio::test]
async fn rate_limit_refusals_are_counted_by_limit() {
    let app = TestApp::sqlite(|c| c.login_rate_per_ip = 2).await;
    for _ in 0..4 {
        app.post(
            "/api/v1/auth/login",
            None,
            json!({ "email": "x@example.com", "password": "whatever it is" }),
        )
        .await;
    }
    let metrics = scrape(&app.get("/metrics", None).await.text());
    let refused = metrics
        .samples
        .iter()
        .find(|s| {
            s.metric == "coffer_rate_limit_refusals_total"
                && s.labels.get("limit") == Some("login_per_ip")
        })
        .map(value);
    assert!(refused.is_some_and(|v| v >= 2.0), "{refused:?}");
}

#[tokio::test]
async fn with_a_metrics_listener_the_main_one_does_not_serve_them() {
    let app = TestApp::sqlite(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    assert_eq!(
        app.get("/metrics", None).await.status,
        StatusCode::NOT_FOUND
    );
}
