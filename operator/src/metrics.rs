//! Prometheus metrics, and the HTTP server for `/healthz`, `/readyz` and `/metrics`.
//!
//! Labels are resource kinds, names and failure reasons: never secret material.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    operation: String,
    outcome: String,
}

/// What the operator asks of coffer-server about a dynamic secret's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOperation {
    Issue,
    Renew,
    Revoke,
}

impl LeaseOperation {
    fn label(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Renew => "renew",
            Self::Revoke => "revoke",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    name: String,
}

/// What a request to coffer-server for an environment's secrets ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// 200: new data.
    Modified,
    /// 304: unchanged, nothing decrypted.
    NotModified,
    /// No answer, or an error answer.
    Error,
}

impl UpstreamOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::NotModified => "not_modified",
            Self::Error => "error",
        }
    }
}

/// Whether an event stream of coffer-server is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Open: changes are pushed.
    Connected,
    /// Being opened, or failing to: the resources reading the project poll.
    Disconnected,
}

impl StreamState {
    fn label(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// The operator's metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: HistogramFamily,
    upstream: Family<OutcomeLabels, Counter>,
    kube_requests: Family<VerbLabels, Counter>,
    status_writes: Family<KindLabels, Counter>,
    sync_lag: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    event_streams: Family<StateLabels, Gauge>,
    events_received: Family<EventLabels, Counter>,
    event_stream_reconnects: Counter,
    event_stream_failures: Family<ReasonLabels, Counter>,
    leases: Family<LeaseLabels, Counter>,
    /// When each `Environment` was last known in sync, behind `sync_lag`.
    in_sync: Mutex<HashMap<ObjectLabels, InSync>>,
    leader: Gauge,
    ready: AtomicBool,
    /// The watches failing now, by name: their last error and when it came.
    failing_watches: Mutex<BTreeMap<String, WatchFailure>>,
}

/// When the Secret of an `Environment` was last known to match coffer-server: the last pass that
/// confirmed it (written, or checked and found unchanged), and whether a pass failed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InSync {
    pub at: Timestamp,
    pub behind: bool,
}

/// The sync lag at `now` of an `Environment` last known in sync as `state`: 0 while the last
/// pass confirmed it; once a pass failed, the time since the last one that did.
pub fn sync_lag(state: InSync, now: Timestamp) -> Duration {
    if !state.behind {
        return Duration::ZERO;
    }
    Duration::try_from(now.duration_since(state.at)).unwrap_or_default()
}

#[derive(Debug, Clone)]
struct WatchFailure {
    error: String,
    at: Instant,
}

/// How long a failed watch keeps the operator unready without a new error. A failing watch is
/// retried with a backoff of at most 30 s (plus as much jitter), and fails again each time; a
/// watch that restarted and has seen no change since says nothing, so its failure lapses.
pub const WATCH_FAILURE_HOLD: Duration = Duration::from_secs(90);

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coffer_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let upstream = Family::<OutcomeLabels, Counter>::default();
        let status_writes = Family::<KindLabels, Counter>::default();
        let kube_requests = Family::<VerbLabels, Counter>::default();
        let sync_lag = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        let leader = Gauge::default();
        let event_streams = Family::<StateLabels, Gauge>::default();
        let events_received = Family::<EventLabels, Counter>::default();
        let event_stream_reconnects = Counter::default();
        let event_stream_failures = Family::<ReasonLabels, Counter>::default();
        let leases = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "leases",
            "Requests to coffer-server about dynamic secrets' leases, by operation (issue, \
             renew, revoke) and outcome (ok; error: the request failed and is retried)",
            leases.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciliations run, by resource kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by resource kind and reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by a reconciliation, by resource kind",
            duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests to coffer-server for an environment's secrets, by outcome \
             (modified, not_modified = 304, error)",
            upstream.clone(),
        );
        registry.register(
            "kube_requests",
            "Requests to the Kubernetes API server, by verb (get, watch, create, patch, \
             update, delete)",
            kube_requests.clone(),
        );
        registry.register(
            "status_writes",
            "Status updates written, by resource kind (an unchanged status is never written)",
            status_writes.clone(),
        );
        registry.register(
            "sync_lag_seconds",
            "Seconds since the Secret of an Environment last matched coffer-server \
             (0 right after a successful sync)",
            sync_lag.clone(),
        );
        registry.register(
            "event_streams",
            "Event streams of coffer-server projects followed, by state (connected: changes are \
             pushed; disconnected: being opened or failing, the resources reading the project \
             poll at their refreshInterval)",
            event_streams.clone(),
        );
        registry.register(
            "events_received",
            "Messages received on event streams, by type (secrets.changed, environment.created, \
             environment.renamed, environment.deleted, resync)",
            events_received.clone(),
        );
        registry.register(
            "event_stream_reconnects",
            "Event streams opened again after one ended or failed to open",
            event_stream_reconnects.clone(),
        );
        registry.register(
            "event_stream_failures",
            "Event streams that could not be opened, by reason (ServerUnreachable, \
             Unauthorized, Forbidden, ProjectNotFound, RateLimited, ServerError…)",
            event_stream_failures.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the leader lease (or runs without leader election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            upstream,
            kube_requests,
            status_writes,
            sync_lag,
            event_streams,
            events_received,
            event_stream_reconnects,
            event_stream_failures,
            leases,
            in_sync: Mutex::default(),
            leader,
            ready: AtomicBool::new(false),
            failing_watches: Mutex::default(),
        }
    }

    fn kind(kind: &str) -> KindLabels {
        KindLabels {
            kind: kind.to_owned(),
        }
    }

    pub fn reconciled(&self, kind: &str, took: Duration) {
        self.reconciles.get_or_create(&Self::kind(kind)).inc();
        self.duration
            .get_or_create(&Self::kind(kind))
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A request with `verb` was sent to the Kubernetes API server.
    pub fn kube_request(&self, verb: &str) {
        self.kube_requests
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .inc();
    }

    /// Requests with `verb` sent to the Kubernetes API server so far.
    pub fn kube_request_count(&self, verb: &str) -> u64 {
        self.kube_requests
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .get()
    }

    /// A status update of a `kind` resource was written.
    pub fn status_written(&self, kind: &str) {
        self.status_writes.get_or_create(&Self::kind(kind)).inc();
    }

    /// Status updates written for `kind` so far.
    pub fn status_write_count(&self, kind: &str) -> u64 {
        self.status_writes.get_or_create(&Self::kind(kind)).get()
    }

    pub fn upstream_request(&self, outcome: UpstreamOutcome) {
        self.upstream
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label().to_owned(),
            })
            .inc();
    }

    /// An event stream moved from state `from` to `to` (`None`: it did not exist before, or
    /// exists no more).
    pub fn event_stream_moved(&self, from: Option<StreamState>, to: Option<StreamState>) {
        if from == to {
            return;
        }
        let gauge = |state: StreamState| {
            self.event_streams.get_or_create(&StateLabels {
                state: state.label().to_owned(),
            })
        };
        if let Some(from) = from {
            gauge(from).dec();
        }
        if let Some(to) = to {
            gauge(to).inc();
        }
    }

    /// Event streams in `state` now.
    pub fn event_stream_count(&self, state: StreamState) -> i64 {
        self.event_streams
            .get_or_create(&StateLabels {
                state: state.label().to_owned(),
            })
            .get()
    }

    /// A message of type `event` arrived on an event stream.
    pub fn event_received(&self, event: &str) {
        self.events_received
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Messages of type `event` received on event streams so far.
    pub fn events_received_count(&self, event: &str) -> u64 {
        self.events_received
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .get()
    }

    /// An event stream is opened again.
    pub fn event_stream_reconnect(&self) {
        self.event_stream_reconnects.inc();
    }

    /// An event stream could not be opened, for `reason`.
    pub fn event_stream_failed(&self, reason: &str) {
        self.event_stream_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Event streams that could not be opened for `reason` so far.
    pub fn event_stream_failure_count(&self, reason: &str) -> u64 {
        self.event_stream_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .get()
    }

    /// A request about a lease ended, `ok` or not.
    pub fn lease(&self, operation: LeaseOperation, ok: bool) {
        self.leases
            .get_or_create(&Self::lease_labels(operation, ok))
            .inc();
    }

    /// Requests about leases of `operation` that ended `ok` (or not) so far.
    pub fn lease_count(&self, operation: LeaseOperation, ok: bool) -> u64 {
        self.leases
            .get_or_create(&Self::lease_labels(operation, ok))
            .get()
    }

    fn lease_labels(operation: LeaseOperation, ok: bool) -> LeaseLabels {
        LeaseLabels {
            operation: operation.label().to_owned(),
            outcome: if ok { "ok" } else { "error" }.to_owned(),
        }
    }

    fn object(namespace: &str, name: &str) -> ObjectLabels {
        ObjectLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// A pass confirmed at `at` that the Secret of `namespace/name` matches coffer-server (it
    /// wrote it, or found it unchanged): its sync lag is 0.
    pub fn in_sync(&self, namespace: &str, name: &str, at: Timestamp) {
        let object = Self::object(namespace, name);
        self.sync_lag.get_or_create(&object).set(0.0);
        self.in_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(object, InSync { at, behind: false });
    }

    /// A pass over `namespace/name` failed: from now on its sync lag counts from the last pass
    /// that confirmed it, or, when no pass of this process did, from `synced_before` (the
    /// status's `lastSyncTime`). Unknown both, there is no lag to tell.
    pub fn behind(
        &self,
        namespace: &str,
        name: &str,
        synced_before: Option<Timestamp>,
        now: Timestamp,
    ) {
        let object = Self::object(namespace, name);
        let mut states = self.in_sync.lock().unwrap_or_else(|e| e.into_inner());
        let state = match states.get_mut(&object) {
            Some(state) => state,
            None => {
                let Some(at) = synced_before else {
                    return;
                };
                states
                    .entry(object.clone())
                    .or_insert(InSync { at, behind: true })
            }
        };
        state.behind = true;
        let lag = sync_lag(*state, now);
        self.sync_lag.get_or_create(&object).set(lag.as_secs_f64());
    }

    /// The sync lag of `namespace/name` at `now`, if known.
    pub fn sync_lag_at(&self, namespace: &str, name: &str, now: Timestamp) -> Option<Duration> {
        let states = self.in_sync.lock().unwrap_or_else(|e| e.into_inner());
        states
            .get(&Self::object(namespace, name))
            .map(|state| sync_lag(*state, now))
    }

    /// Brings every sync lag up to `now`, so that it grows during an outage between passes.
    fn refresh_sync_lags(&self, now: Timestamp) {
        let states = self.in_sync.lock().unwrap_or_else(|e| e.into_inner());
        for (object, state) in states.iter() {
            self.sync_lag
                .get_or_create(object)
                .set(sync_lag(*state, now).as_secs_f64());
        }
    }

    pub fn forget_object(&self, namespace: &str, name: &str) {
        let object = Self::object(namespace, name);
        self.in_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&object);
        self.sync_lag.remove(&object);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Reconciliations of `kind` so far.
    /// Whether this replica acts as the leader now.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    pub fn reconcile_count(&self, kind: &str) -> u64 {
        self.reconciles.get_or_create(&Self::kind(kind)).get()
    }

    /// Requests to coffer-server for secrets that ended with `outcome`.
    pub fn upstream_count(&self, outcome: UpstreamOutcome) -> u64 {
        self.upstream
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label().to_owned(),
            })
            .get()
    }

    /// The operator has started (its custom resources can be listed): it is ready unless a
    /// watch fails.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The watch `watch` failed with `error`. Returns whether that is news: the watch was not
    /// failing, or failed differently.
    pub fn watch_failed(&self, watch: &str, error: &str) -> bool {
        let mut failing = self
            .failing_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let failure = WatchFailure {
            error: error.to_owned(),
            at: Instant::now(),
        };
        match failing.insert(watch.to_owned(), failure) {
            Some(previous) => previous.error != error,
            None => true,
        }
    }

    /// The watch `watch` delivered. Returns whether it was failing.
    pub fn watch_delivered(&self, watch: &str) -> bool {
        let mut failing = self
            .failing_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        !failing.is_empty() && failing.remove(watch).is_some()
    }

    /// Why the operator is not ready, or `None` when it is.
    pub fn unready_because(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("starting: the custom resources cannot be listed yet".to_owned());
        }
        let failing = self
            .failing_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let failing: Vec<&str> = failing
            .iter()
            .filter(|(_, f)| f.at.elapsed() < WATCH_FAILURE_HOLD)
            .map(|(watch, _)| watch.as_str())
            .collect();
        (!failing.is_empty()).then(|| format!("watches failing: {}", failing.join(", ")))
    }

    pub fn is_ready(&self) -> bool {
        self.unready_because().is_none()
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh_sync_lags(Timestamp::now());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The router of the operator's HTTP server.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.unready_because() {
        None => (StatusCode::OK, "ready".to_owned()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_show_in_the_exposition() {
        let m = Metrics::new();
        m.reconciled("Environment", Duration::from_millis(3));
        m.failed("Environment", "ServerUnreachable");
        m.upstream_request(UpstreamOutcome::NotModified);
        let now = Timestamp::now();
        m.in_sync("apps", "web", now - Duration::from_secs(2));
        m.behind("apps", "web", None, now);
        let text = m.encode().unwrap();
        assert!(
            text.contains("coffer_operator_reconciles_total{kind=\"Environment\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "coffer_operator_reconcile_failures_total{kind=\"Environment\",reason=\"ServerUnreachable\"} 1"
        ));
        assert!(
            text.contains("coffer_operator_upstream_requests_total{outcome=\"not_modified\"} 1")
        );
        let lag: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("coffer_operator_sync_lag_seconds{namespace=\"apps\",name=\"web\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!(lag >= 2.0, "{text}");
        assert!(text.contains("coffer_operator_reconcile_duration_seconds_count"));
        assert_eq!(m.upstream_count(UpstreamOutcome::NotModified), 1);
        assert_eq!(m.reconcile_count("Environment"), 1);
    }

    #[test]
    fn event_streams_are_counted_by_state_and_their_messages_by_type() {
        let m = Metrics::new();
        m.event_stream_moved(None, Some(StreamState::Disconnected));
        m.event_stream_moved(None, Some(StreamState::Disconnected));
        m.event_stream_moved(
            Some(StreamState::Disconnected),
            Some(StreamState::Connected),
        );
        m.event_stream_moved(Some(StreamState::Connected), Some(StreamState::Connected));
        m.event_received("secrets.changed");
        m.event_stream_reconnect();
        m.event_stream_failed("Unauthorized");
        assert_eq!(m.event_stream_count(StreamState::Connected), 1);
        assert_eq!(m.event_stream_count(StreamState::Disconnected), 1);
        let text = m.encode().unwrap();
        for line in [
            "coffer_operator_event_streams{state=\"connected\"} 1",
            "coffer_operator_event_streams{state=\"disconnected\"} 1",
            "coffer_operator_events_received_total{event=\"secrets.changed\"} 1",
            "coffer_operator_event_stream_reconnects_total 1",
            "coffer_operator_event_stream_failures_total{reason=\"Unauthorized\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.event_stream_moved(Some(StreamState::Connected), None);
        assert_eq!(m.event_stream_count(StreamState::Connected), 0);
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    const DAY: i64 = 86_400;

    #[test]
    fn the_sync_lag_counts_from_the_last_confirmed_pass_not_the_last_change() {
        let m = Metrics::new();
        let lag = |now| m.sync_lag_at("apps", "web", now);
        // Synced once, then unchanged for a month: every pass confirms it.
        m.in_sync("apps", "web", t(0));
        for day in 1..=30 {
            m.in_sync("apps", "web", t(day * DAY));
            assert_eq!(lag(t(day * DAY + 10)), Some(Duration::ZERO));
        }
        // coffer-server goes away a minute after the last confirmation: the lag counts from
        // that confirmation (the status's lastSyncTime, a month old, does not matter) and grows
        // through the outage.
        let last_change = Some(t(0));
        m.behind("apps", "web", last_change, t(30 * DAY + 60));
        assert_eq!(lag(t(30 * DAY + 60)), Some(Duration::from_secs(60)));
        m.behind("apps", "web", last_change, t(30 * DAY + 120));
        assert_eq!(lag(t(30 * DAY + 600)), Some(Duration::from_secs(600)));
        // The exposition brings the lag up to the time of the scrape.
        let text = m.encode().unwrap();
        assert!(
            !text.contains("coffer_operator_sync_lag_seconds{namespace=\"apps\",name=\"web\"} 0"),
            "{text}"
        );
        // Back: 0 again.
        m.in_sync("apps", "web", t(30 * DAY + 700));
        assert_eq!(lag(t(30 * DAY + 800)), Some(Duration::ZERO));
    }

    #[test]
    fn without_a_confirmed_pass_the_lag_counts_from_the_last_recorded_sync() {
        // An operator restarted during an outage knows only the status's lastSyncTime.
        let m = Metrics::new();
        m.behind("apps", "web", None, t(100));
        assert_eq!(m.sync_lag_at("apps", "web", t(100)), None);
        m.behind("apps", "web", Some(t(40)), t(100));
        assert_eq!(
            m.sync_lag_at("apps", "web", t(130)),
            Some(Duration::from_secs(90))
        );
        m.forget_object("apps", "web");
        assert_eq!(m.sync_lag_at("apps", "web", t(130)), None);
    }

    #[test]
    fn the_lag_is_zero_in_sync_and_never_negative() {
        let in_sync = InSync {
            at: t(10),
            behind: false,
        };
        assert_eq!(sync_lag(in_sync, t(1000)), Duration::ZERO);
        let behind = InSync {
            behind: true,
            ..in_sync
        };
        assert_eq!(sync_lag(behind, t(25)), Duration::from_secs(15));
        assert_eq!(sync_lag(behind, t(5)), Duration::ZERO);
    }

    #[test]
    fn a_failing_watch_makes_the_operator_unready_until_it_delivers() {
        let m = Metrics::new();
        assert!(m.unready_because().unwrap().contains("cannot be listed"));
        m.set_ready(true);
        assert!(m.is_ready());
        assert!(m.watch_failed("environments", "403 Forbidden"));
        // The same error again is no news; another one is.
        assert!(!m.watch_failed("environments", "403 Forbidden"));
        assert!(m.watch_failed("environments", "404 Not Found"));
        assert!(m.unready_because().unwrap().contains("environments"));
        assert!(!m.watch_delivered("projects"));
        assert!(!m.is_ready());
        assert!(m.watch_delivered("environments"));
        assert!(!m.watch_delivered("environments"));
        assert!(m.is_ready());
    }
}
