//! What every reconciliation shares: clients, configuration, metrics, the data-hash key, and
//! the per-object retry backoff.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{Predicate as _, WatchStreamExt as _, predicates, watcher};
use kube::{Api, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::conditions::Reason;
use crate::config::Config;
use crate::crd::Project;
use crate::credentials::{Connection, ConnectionError, Connector};
use crate::metrics::Metrics;
use crate::source::Sources;
use crate::stores::Stores;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "coffer-operator";
/// On the `Project` and `Environment` resources the operator handles: it cleans up (deletes or
/// releases what the resource made) before the resource goes.
pub const FINALIZER: &str = "coffer.dev/cleanup";

/// Parameters of a patch by the operator.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Parameters of a create or replace by the operator.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// The resources of `api`, kept in `writer`'s store, whenever their spec (generation),
/// annotations or finalizers change. Status changes (the controllers' own writes) wake nothing.
/// Failures of the watch are [`reported`].
pub fn spec_changes<K>(
    api: Api<K>,
    writer: Writer<K>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let name = api.resource_url().to_owned();
    reported(watcher(api, watcher::Config::default()), metrics, name)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            Default::default(),
        )
}

/// `Kind/namespace/name`: the key of an object in the backoff table.
pub fn object_key<K: Resource>(kind: &str, object: &K) -> String {
    format!(
        "{kind}/{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Runs `reconcile` behind the [`FINALIZER`] of `object` (added before the first apply,
/// removed after a successful cleanup), and counts it in the metrics.
pub async fn finalized<K, Fut>(
    ctx: &Context,
    kind: &str,
    object: Arc<K>,
    reconcile: impl FnOnce(Finalizer<K>) -> Fut,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
    Fut: Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), &object.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, object, reconcile)
        .await
        .map_err(Error::from);
    ctx.metrics.reconciled(kind, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.failed(kind, e.reason());
    }
    result
}

/// Makes the failures of the watch `name` (its URL, say) visible: the first of each kind is
/// logged at warn, its repetitions (each retry) at debug, and `/readyz` fails until the watch
/// delivers again (see [`Metrics::unready_because`]). Errors of a watch name the resource and
/// the API server's reason; they never hold object data.
pub fn reported<T, S>(stream: S, metrics: Arc<Metrics>, name: String) -> impl Stream<Item = S::Item>
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    stream.inspect(move |event| match event {
        Ok(_) => {
            if metrics.watch_delivered(&name) {
                tracing::info!(watch = %name, "the watch works again");
            }
        }
        Err(e) => {
            let error = e.to_string();
            if metrics.watch_failed(&name, &error) {
                tracing::warn!(watch = %name, %error, "watch failed; retrying with backoff");
            } else {
                tracing::debug!(watch = %name, %error, "watch failed again");
            }
        }
    })
}

/// Drains a controller's results. Failed reconciliations are logged by the error policies, and
/// failed watches where they are [`reported`]; anything else is logged here.
pub async fn drain<T, R, Q>(results: impl Stream<Item = Result<T, controller::Error<R, Q>>>)
where
    R: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    results
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                Err(
                    e @ (controller::Error::ReconcilerFailed(..)
                    | controller::Error::QueueError(_)
                    | controller::Error::ObjectNotFound(_)),
                ) => tracing::debug!(error = %e, "reconcile ended with an error"),
                Err(e @ controller::Error::RunnerError(_)) => {
                    tracing::warn!(error = %e, "the controller failed to run a reconcile");
                }
            }
        })
        .await;
}

/// Shared by all reconciliations of both controllers.
pub struct Context {
    pub kube: kube::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub connector: Connector,
    /// What the `Environment` resources read from coffer-server.
    pub sources: Arc<Sources>,
    /// Key of the HMAC over synced data; the same across restarts and replicas.
    pub hash_key: Zeroizing<Vec<u8>>,
    /// What the controllers read from Kubernetes on every pass, kept by watches.
    pub stores: Stores,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// The `coffer.dev/refresh-at` value last carried out, per `Environment` uid.
    refreshes: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// A reconciliation that did not finish; the controller retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(kube::Error),
    /// The object changed since it was read (the watch cache was a step behind): retried at
    /// once.
    #[error("conflict: {0}")]
    Conflict(kube::Error),
    /// A reconciliation halted on a failure worth retrying (coffer-server failed, say); the
    /// status says why.
    #[error("{reason}: {message}")]
    Halted {
        reason: Reason,
        message: String,
        /// How long coffer-server asked to be left alone (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// A dynamic secret's lease could not be issued, renewed or revoked (coffer-server failed,
    /// say); its Secret keeps its credentials and the status says why.
    #[error("{reason}: {message}")]
    Leases {
        reason: Reason,
        message: String,
        /// How long coffer-server asked to be left alone (`Retry-After`).
        retry_after: Option<Duration>,
    },
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A watch has not delivered its first list yet (or cannot: see the operator's log).
    #[error("the {0} are not known yet: their watch has not listed them")]
    NotReady(&'static str),
}

impl Error {
    /// The metric label of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => Reason::KubernetesError.as_str(),
            Self::Conflict(_) => "Conflict",
            Self::Halted { reason, .. } | Self::Leases { reason, .. } => reason.as_str(),
            Self::Finalizer(_) => "FinalizerFailed",
            Self::NotReady(_) => "NotReady",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(status) if status.code == 409 => Self::Conflict(e),
            _ => Self::Kube(e),
        }
    }
}

impl<E: std::error::Error + Into<Error> + 'static> From<kube::runtime::finalizer::Error<E>>
    for Error
{
    fn from(e: kube::runtime::finalizer::Error<E>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e.into(),
            // The finalizer patch tests the finalizers it read: 422 when they changed since.
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => match &e {
                kube::Error::Api(status) if status.code == 422 => Error::Conflict(e),
                _ => e.into(),
            },
            other => Error::Finalizer(other.to_string()),
        }
    }
}

/// When to look at a resource again after a [`Halt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Only when something it depends on changes (its spec, a watched object).
    AwaitChange,
    /// After this long (the refresh interval, a recheck period).
    After(Duration),
    /// With the exponential backoff of failures (see [`retry`]).
    Backoff,
    /// At once: this pass made a change that the next one builds on.
    Now,
}

/// A reconciliation stopped short: why (the `Ready` condition's reason and message) and when
/// to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub reason: Reason,
    pub message: String,
    pub requeue: Requeue,
    /// With [`Requeue::Backoff`]: the least delay coffer-server asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Halt {
    pub fn new(reason: Reason, message: impl Into<String>, requeue: Requeue) -> Self {
        Self {
            reason,
            message: message.into(),
            requeue,
            retry_after: None,
        }
    }

    /// The same halt, retried no sooner than `retry_after` (at most [`MAX_RETRY_AFTER`]).
    #[must_use]
    pub fn retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after.map(|d| d.min(MAX_RETRY_AFTER));
        self
    }

    /// What the controller does next; a halt to retry with backoff is an error for the
    /// controller's error policy.
    pub fn action(self) -> Result<Action, Error> {
        match self.requeue {
            Requeue::AwaitChange => Ok(Action::await_change()),
            Requeue::After(delay) => Ok(Action::requeue(jittered(delay))),
            Requeue::Now => Ok(Action::requeue(Duration::ZERO)),
            Requeue::Backoff => Err(Error::Halted {
                reason: self.reason,
                message: self.message,
                retry_after: self.retry_after,
            }),
        }
    }
}

/// What a controller does after a failed reconciliation of `object`: retry with exponential
/// backoff, at most `cap`. A conflict (the watch cache a step behind) starts sooner and is
/// retried quietly a few times; conflicts that go on are logged like any failure and back off
/// like one, so an object something else keeps changing costs a request every `cap` at most.
/// The failure is logged without secret material.
pub fn retry<K: Resource>(
    ctx: &Context,
    kind: &str,
    object: &K,
    error: &Error,
    cap: Duration,
) -> Action {
    let (name, namespace) = (object.name_any(), object.namespace().unwrap_or_default());
    let failures = ctx.failed(&object_key(kind, object));
    if let Error::Conflict(_) = error {
        let delay = backoff(CONFLICT_RETRY, failures, cap);
        if failures <= QUIET_CONFLICTS {
            tracing::debug!(kind, %name, %namespace, %error, retry_in = ?delay, "conflict; retrying");
        } else {
            tracing::info!(kind, %name, %namespace, %error, failures, retry_in = ?delay,
                "conflicts go on; retrying with backoff");
        }
        return Action::requeue(jittered(delay));
    }
    let mut delay = jittered(backoff(BACKOFF_BASE, failures, cap));
    if let Error::Halted {
        retry_after: Some(asked),
        ..
    }
    | Error::Leases {
        retry_after: Some(asked),
        ..
    } = error
    {
        delay = delay.max(*asked);
    }
    tracing::info!(kind, %name, %namespace, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The longest `Retry-After` of coffer-server that is honoured as given.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The most a requeue is delayed by [`jittered`].
const MAX_JITTER: Duration = Duration::from_secs(30);

/// `delay` plus a random part of up to a tenth of it (at most [`MAX_JITTER`]), so that
/// resources synced together (after a restart, say) do not come back in one wave. Never less
/// than `delay`: a resource back early would find its source's snapshot still fresh and wait a
/// whole further interval.
pub fn jittered(delay: Duration) -> Duration {
    use rand::Rng as _;
    let spread = (delay / 10).min(MAX_JITTER);
    if spread.is_zero() {
        return delay;
    }
    delay + spread.mul_f64(rand::thread_rng().r#gen::<f64>())
}

/// The delay before the next try after `failures` failures in a row (at least one): `base`,
/// doubled with each further failure, at most `cap`.
pub fn backoff(base: Duration, failures: u32, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << doublings).min(cap)
}

/// The first retry after a conflict.
const CONFLICT_RETRY: Duration = Duration::from_millis(500);
/// Conflicts in a row retried without a log line above debug.
const QUIET_CONFLICTS: u32 = 3;

/// First retry after a failure; doubles with each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

impl Context {
    #[allow(
        clippy::too_many_arguments,
        reason = "called once per watched scope, each argument a distinct part"
    )]
    pub fn new(
        kube: kube::Client,
        config: Config,
        metrics: Arc<Metrics>,
        connector: Connector,
        sources: Arc<Sources>,
        hash_key: Zeroizing<Vec<u8>>,
        stores: Stores,
        identity: String,
    ) -> Self {
        let recorder = Recorder::new(
            kube.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity),
            },
        );
        Self {
            kube,
            config,
            metrics,
            connector,
            sources,
            hash_key,
            stores,
            recorder,
            failures: Mutex::default(),
            refreshes: Mutex::default(),
        }
    }

    /// The server and credentials of `project` (see [`Connector::connection`]).
    pub async fn connection(&self, project: &Project) -> Result<Connection, ConnectionError> {
        self.connector
            .connection(&self.kube, &self.config, &self.stores.credentials, project)
            .await
    }

    /// Publishes an event on `object`. Events are best effort: a failure is logged, never
    /// fatal.
    pub async fn event(
        &self,
        object: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }

    /// Counts one more failure of `key` in a row; returns how many there were.
    fn failed(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// `key` succeeded: its next failure starts the backoff afresh.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Whether `value` is a refresh request not yet carried out for the object `uid`.
    pub fn refresh_pending(&self, uid: &str, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        let done = self.refreshes.lock().unwrap_or_else(|e| e.into_inner());
        done.get(uid).map(String::as_str) != Some(value)
    }

    /// The refresh request `value` of the object `uid` was carried out: the data was fetched.
    /// Until then it stays pending, so a request made during an outage is carried out when
    /// coffer-server is back rather than forgotten.
    pub fn refresh_done(&self, uid: &str, value: &str) {
        self.refreshes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), value.to_owned());
    }

    /// Forgets what was kept about a deleted object.
    pub fn forget(&self, key: &str, uid: Option<&str>) {
        self.succeeded(key);
        if let Some(uid) = uid {
            self.refreshes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        let delays: Vec<_> = (1..=9)
            .map(|n| backoff(BACKOFF_BASE, n, cap).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(BACKOFF_BASE, u32::MAX, cap), cap);
    }

    #[test]
    fn conflicts_start_sooner_but_back_off_too() {
        let cap = Duration::from_secs(300);
        let delays: Vec<_> = (1..=5)
            .map(|n| backoff(CONFLICT_RETRY, n, cap).as_millis())
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000]);
        assert_eq!(backoff(CONFLICT_RETRY, 40, cap), cap);
    }

    #[test]
    fn jitter_delays_by_at_most_a_tenth_and_never_hastens() {
        let minute = Duration::from_secs(60);
        let delays: Vec<_> = (0..200).map(|_| jittered(minute)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= minute && *d <= minute + minute / 10)
        );
        // Spread, not one fixed offset.
        assert!(delays.iter().any(|d| *d != delays[0]));
        let day = Duration::from_secs(86_400);
        assert!((0..50).all(|_| jittered(day) <= day + MAX_JITTER));
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_retry_after_is_capped() {
        let halt = Halt::new(Reason::RateLimited, "slow down", Requeue::Backoff)
            .retry_after(Some(Duration::from_secs(86_400)));
        assert_eq!(halt.retry_after, Some(MAX_RETRY_AFTER));
    }
}
