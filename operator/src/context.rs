//! What every reconciliation shares: clients, configuration, metrics, the data-hash key, and
//! the per-object retry backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use zeroize::Zeroizing;

use crate::conditions::Reason;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "coffer-operator";

/// Shared by all reconciliations of both controllers.
pub struct Context {
    pub kube: kube::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// Key of the HMAC over synced data; the same across restarts and replicas.
    pub hash_key: Zeroizing<Vec<u8>>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// The `coffer.dev/refresh-at` value last acted on, per `Environment` uid.
    refreshes: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// A reconciliation that did not finish; the controller retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// coffer-server failed; the status says why.
    #[error("{reason}: {message}")]
    Upstream { reason: Reason, message: String },
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The metric label of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => Reason::KubernetesError.as_str(),
            Self::Upstream { reason, .. } => reason.as_str(),
            Self::Finalizer(_) => "FinalizerFailed",
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
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
            other => Error::Finalizer(other.to_string()),
        }
    }
}

/// First retry after a failure; doubles with each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

impl Context {
    pub fn new(
        kube: kube::Client,
        config: Config,
        metrics: Arc<Metrics>,
        upstream: Upstream,
        hash_key: Zeroizing<Vec<u8>>,
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
            upstream,
            hash_key,
            recorder,
            failures: Mutex::default(),
            refreshes: Mutex::default(),
        }
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

    /// The delay before retrying `key` after one more failure: exponential, at most `cap`.
    pub fn backoff(&self, key: &str, cap: Duration) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let delay = BACKOFF_BASE.saturating_mul(1u32 << (*n - 1).min(16));
        delay.min(cap)
    }

    /// `key` succeeded: its next failure starts the backoff afresh.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Whether `value` is a refresh request not yet acted on for the object `uid`; records it.
    pub fn take_refresh(&self, uid: &str, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        let mut seen = self.refreshes.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(uid).map(String::as_str) == Some(value) {
            return false;
        }
        seen.insert(uid.to_owned(), value.to_owned());
        true
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
