//! Prometheus metrics of coffer-server (`GET /metrics`, text format).
//!
//! Labels are route templates (`/api/v1/orgs/:org/…`, never a path as requested), methods,
//! status codes, limit names and states: never a user, a token, a key name or a value. Gauges
//! of things that live elsewhere (the database pool, the password-hash queue, open streams, the
//! webhook queue) are read when scraped.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// A rate limit, by name (`login_per_ip`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// An operation on a lease of a dynamic secret and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    /// Requests refused by a rate limit.
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Password hashes and checks refused because the queue was full or too slow.
    pub password_refusals: Counter,
    /// Secret values decrypted for an answer (reads, exports).
    pub secrets_read: Counter,
    /// Secret values written (created or updated).
    pub secrets_written: Counter,
    /// Webhook delivery attempts that failed.
    pub webhook_failures: Counter,
    /// Lease operations of dynamic secrets.
    pub leases: Family<LeaseLabels, Counter>,
    pool: Family<StateLabels, Gauge>,
    password_queue: Family<StateLabels, Gauge>,
    event_streams: Gauge,
    webhook_pending: Gauge,
}

impl Metrics {
    /// The metrics, with the password hasher's counter of refusals (`password_refusals`).
    pub fn new(password_refusals: Counter) -> Self {
        let mut registry = Registry::with_prefix("coffer");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until the headers), by route template and method",
            durations.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limit_refusals",
            "Requests refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        registry.register(
            "password_hash_refusals",
            "Password hashes or checks refused because the queue was full or too slow",
            password_refusals.clone(),
        );
        let secrets_read = Counter::default();
        registry.register(
            "secrets_read",
            "Secret values decrypted for an answer",
            secrets_read.clone(),
        );
        let secrets_written = Counter::default();
        registry.register(
            "secrets_written",
            "Secret values written (created or updated)",
            secrets_written.clone(),
        );
        let webhook_failures = Counter::default();
        registry.register(
            "webhook_delivery_failures",
            "Webhook delivery attempts that failed",
            webhook_failures.clone(),
        );
        let leases = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "dynamic_leases",
            "Lease operations of dynamic secrets (issue, renew, revoke) by outcome",
            leases.clone(),
        );
        let pool = Family::<StateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database connections of this server's pool: in_use, idle",
            pool.clone(),
        );
        let password_queue = Family::<StateLabels, Gauge>::default();
        registry.register(
            "password_hash_queue",
            "Password hashes and checks: running, waiting for a worker",
            password_queue.clone(),
        );
        let event_streams = Gauge::default();
        registry.register(
            "event_streams",
            "Event and live-audit streams open on this server",
            event_streams.clone(),
        );
        let webhook_pending = Gauge::default();
        registry.register(
            "webhook_deliveries_pending",
            "Webhook deliveries waiting to be sent (all replicas)",
            webhook_pending.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "This server's version", build);
        Self {
            registry,
            requests,
            durations,
            rate_limited,
            password_refusals,
            secrets_read,
            secrets_written,
            webhook_failures,
            leases,
            pool,
            password_queue,
            event_streams,
            webhook_pending,
        }
    }

    /// Counts a lease operation.
    pub fn lease(&self, operation: &'static str, ok: bool) {
        self.leases
            .get_or_create(&LeaseLabels {
                operation,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The text exposition, with the gauges read now.
    async fn render(&self, state: &AppState) -> Result<String, std::fmt::Error> {
        let pool = state.db.pool();
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.pool
            .get_or_create(&StateLabels { state: "in_use" })
            .set(size - idle);
        self.pool
            .get_or_create(&StateLabels { state: "idle" })
            .set(idle);
        let (running, waiting) = state.passwords.queue();
        self.password_queue
            .get_or_create(&StateLabels { state: "running" })
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.password_queue
            .get_or_create(&StateLabels { state: "waiting" })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.event_streams
            .set(i64::try_from(state.event_streams.open()).unwrap_or(i64::MAX));
        match crate::db::webhooks::pending_total(pool).await {
            Ok(n) => {
                self.webhook_pending.set(n);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the webhook queue for /metrics"),
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Counts every request by the route it matched (its template), method and status, and times
/// it. Requests that match no route count as `unmatched`.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| route_label(p.as_str()));
    let method = method_label(request.method()).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .durations
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// A method as a label: the standard ones, `other` for any other (a client may send any token
/// as a method, and each would be a new series).
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// A route template as a label: `/api/v1/orgs/:org/projects/:project` (parameters written
/// `:name` rather than `{name}`, which simple text-format parsers take for the end of the
/// labels).
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// `GET /metrics`.
pub async fn serve(State(state): State<AppState>) -> Response {
    match state.metrics.render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
