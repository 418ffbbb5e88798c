//! Status conditions with stable reasons, written so that an unchanged state is an unchanged
//! status (no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Why a condition has its status. Reasons are part of the operator's interface: alerting and
/// scripts match on them, so they never change once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Everything asked for is in place.
    Synced,
    /// The project exists in coffer-server and the credentials reach it.
    ProjectFound,
    /// The operator created the project in coffer-server.
    ProjectCreated,
    /// The operator created the environment in coffer-server.
    EnvironmentCreated,
    /// The spec cannot be acted on (a bad refresh interval, an empty reference…).
    InvalidSpec,
    /// `spec.projectRef` names no `Project` in the namespace.
    ProjectRefNotFound,
    /// Neither `spec.serverUrl` nor the operator's default server is set.
    NoServer,
    /// Neither `spec.credentialsRef` nor the operator's default token is set.
    NoCredentials,
    /// The Secret or key named by `spec.credentialsRef` does not exist or is empty.
    CredentialsNotFound,
    /// The Secret named by `spec.credentialsRef` does not carry the label
    /// `coffer.dev/credentials: "true"` that lets the operator send it to a server.
    CredentialsNotAllowed,
    /// The `Project`'s server is not on the operator's allow-list (`COFFER_ALLOWED_SERVERS`),
    /// or is plain http to a host other than this machine without being listed.
    ServerNotAllowed,
    /// The ConfigMap or key named by `spec.caBundleRef` does not exist, or holds no PEM
    /// certificate.
    CaBundleNotFound,
    /// coffer-server has no such project (or the credentials may not see it).
    ProjectNotFound,
    /// coffer-server has no such environment (or the credentials may not see it).
    EnvironmentNotFound,
    /// coffer-server did not answer.
    ServerUnreachable,
    /// coffer-server refused the credentials (401).
    Unauthorized,
    /// The credentials may not do this (403).
    Forbidden,
    /// coffer-server asked to slow down (429).
    RateLimited,
    /// coffer-server failed (5xx) or answered something unexpected.
    ServerError,
    /// coffer-server refused the request as invalid.
    RequestRejected,
    /// A Secret of the target name exists and does not belong to this `Environment`.
    SecretNotOwned,
    /// The environment was deleted in coffer-server and the Secret with it (`deletionPolicy:
    /// Delete`).
    SecretDeleted,
    /// The Kubernetes API refused or failed a request.
    KubernetesError,
    /// The target Secret is immutable and the environment's data changed: it keeps its data
    /// until it is deleted (`spec.sync.immutable`).
    SecretImmutable,
    /// `creationPolicy: Merge` and the Secret to merge into does not exist.
    SecretNotFound,
    /// Every dynamic secret's Secret holds the credentials of a live lease.
    Leased,
    /// coffer-server could not issue, renew or revoke a lease in the database (502
    /// `engine_failed`).
    LeaseFailed,
    /// coffer-server has no dynamic secret of the name in the environment.
    DynamicSecretNotFound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "Synced",
            Self::ProjectFound => "ProjectFound",
            Self::ProjectCreated => "ProjectCreated",
            Self::EnvironmentCreated => "EnvironmentCreated",
            Self::InvalidSpec => "InvalidSpec",
            Self::ProjectRefNotFound => "ProjectRefNotFound",
            Self::NoServer => "NoServer",
            Self::NoCredentials => "NoCredentials",
            Self::CredentialsNotFound => "CredentialsNotFound",
            Self::CredentialsNotAllowed => "CredentialsNotAllowed",
            Self::ServerNotAllowed => "ServerNotAllowed",
            Self::CaBundleNotFound => "CaBundleNotFound",
            Self::ProjectNotFound => "ProjectNotFound",
            Self::EnvironmentNotFound => "EnvironmentNotFound",
            Self::ServerUnreachable => "ServerUnreachable",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::RateLimited => "RateLimited",
            Self::ServerError => "ServerError",
            Self::RequestRejected => "RequestRejected",
            Self::SecretNotOwned => "SecretNotOwned",
            Self::SecretDeleted => "SecretDeleted",
            Self::KubernetesError => "KubernetesError",
            Self::SecretImmutable => "SecretImmutable",
            Self::SecretNotFound => "SecretNotFound",
            Self::Leased => "Leased",
            Self::LeaseFailed => "LeaseFailed",
            Self::DynamicSecretNotFound => "DynamicSecretNotFound",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    True,
    False,
    /// Cannot be told now (coffer-server cannot be read, say).
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for State {
    fn from(ok: bool) -> Self {
        if ok { Self::True } else { Self::False }
    }
}

/// Sets condition `type_` in `conditions` at time `now`. The transition time moves only when
/// the status does, so setting the same state twice changes nothing.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: impl Into<State>,
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = status.into().as_str();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.to_owned();
            c.reason = reason.as_str().to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.as_str().to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// The reason of condition `type_`, when it is set.
pub fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_the_same_state_again_changes_nothing() {
        let mut c = Vec::new();
        set(
            &mut c,
            "Ready",
            false,
            Reason::ServerUnreachable,
            "down",
            Some(1),
            Timestamp::now(),
        );
        let before = c.clone();
        set(
            &mut c,
            "Ready",
            false,
            Reason::ServerUnreachable,
            "down",
            Some(1),
            Timestamp::now(),
        );
        assert_eq!(c, before);
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let mut c = Vec::new();
        set(
            &mut c,
            "Ready",
            false,
            Reason::ServerUnreachable,
            "down",
            Some(1),
            Timestamp::now(),
        );
        let mut t = c[0].last_transition_time.clone();
        t.0 = Timestamp::UNIX_EPOCH;
        c[0].last_transition_time = t.clone();
        set(
            &mut c,
            "Ready",
            false,
            Reason::Unauthorized,
            "401",
            Some(1),
            Timestamp::now(),
        );
        assert_eq!(c[0].last_transition_time, t);
        assert_eq!(reason_of(&c, "Ready"), Some("Unauthorized"));
        set(
            &mut c,
            "Ready",
            true,
            Reason::Synced,
            "ok",
            Some(2),
            Timestamp::now(),
        );
        assert_ne!(c[0].last_transition_time, t);
        assert_eq!(
            (c[0].status.as_str(), c[0].observed_generation),
            ("True", Some(2))
        );
        assert_eq!(c.len(), 1);
    }
}
