//! The custom resources of group `coffer.dev`, version `v1alpha1`.
//!
//! The `///` comments on these types become the descriptions of the generated CRDs, so they are
//! what `kubectl explain` shows: write them for the people who write the manifests.

mod environment;
mod project;

pub use environment::{
    CreationPolicy, DynamicSecretSpec, DynamicSecretStatus, Environment, EnvironmentSpec,
    EnvironmentStatus, KeyMapping, MAX_DYNAMIC_SECRETS, MIN_REFRESH_INTERVAL, PendingLease,
    ProjectRef, RetiringLease, RolloutTarget, SyncMode, SyncSpec, WorkloadKind, key_selected,
    parse_duration, parse_refresh_interval,
};
pub use project::{ConfigMapKeyRef, CredentialsRef, Project, ProjectSpec, ProjectStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Coffer custom resource.
pub const GROUP: &str = "coffer.dev";

/// Condition type: the resource is in the state its spec asks for.
pub const CONDITION_READY: &str = "Ready";
/// Condition type (`Environment`): the target Secret holds the environment's current keys.
pub const CONDITION_SYNCED: &str = "Synced";
/// Condition type (`Environment` with `spec.dynamicSecrets`): every dynamic secret's Secret
/// holds the credentials of a live lease, renewed on time.
pub const CONDITION_LEASED: &str = "Leased";

/// What happens to the resource in coffer-server, or to the synced Secret, when the custom
/// resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Leave it in place (the default).
    #[default]
    Retain,
    /// Delete it together with the custom resource.
    Delete,
}

/// A spec that cannot be acted on; it stays invalid until the spec changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `spec.sync.refreshInterval` is not a duration like `30s`, `5m` or `1h30m`.
    #[error(
        "refreshInterval {value:?} is not a duration: {reason} \
         (use hours, minutes and seconds, e.g. \"30s\", \"5m\", \"1h30m\")"
    )]
    InvalidRefreshInterval {
        /// The value as written in the spec.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `spec.sync.refreshInterval` is shorter than the minimum.
    #[error("refreshInterval {value:?} is shorter than the minimum of {minimum}")]
    RefreshIntervalTooShort {
        /// The value as written in the spec.
        value: String,
        /// The minimum, in the same notation.
        minimum: &'static str,
    },
}

/// Every CustomResourceDefinition of the operator, in the order of `crds/`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Project::crd(), Environment::crd()]
}
