use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
use crate::types::LeaseEvent;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum EventType {
    /// Secrets of the environment changed (or, with `via_reference`, a value they refer to).
    #[serde(rename = "secrets.changed")]
    SecretsChanged,
    #[serde(rename = "environment.created")]
    EnvironmentCreated,
    /// The environment's display name changed (slugs never change).
    #[serde(rename = "environment.renamed")]
    EnvironmentRenamed,
    #[serde(rename = "environment.deleted")]
    EnvironmentDeleted,
    /// A lease of a dynamic secret of the environment was issued (`lease` says which).
    #[serde(rename = "lease.issued")]
    LeaseIssued,
    #[serde(rename = "lease.renewed")]
    LeaseRenewed,
    /// A lease's credentials were revoked: asked for, or expired.
    #[serde(rename = "lease.revoked")]
    LeaseRevoked,
    /// Issuing a lease failed, or revoking one failed (it is retried).
    #[serde(rename = "lease.failed")]
    LeaseFailed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretsChanged => "secrets.changed",
            Self::EnvironmentCreated => "environment.created",
            Self::EnvironmentRenamed => "environment.renamed",
            Self::EnvironmentDeleted => "environment.deleted",
            Self::LeaseIssued => "lease.issued",
            Self::LeaseRenewed => "lease.renewed",
            Self::LeaseRevoked => "lease.revoked",
            Self::LeaseFailed => "lease.failed",
        }
    }
}

impl std::str::FromStr for EventType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [
            Self::SecretsChanged,
            Self::EnvironmentCreated,
            Self::EnvironmentRenamed,
            Self::EnvironmentDeleted,
            Self::LeaseIssued,
            Self::LeaseRenewed,
            Self::LeaseRevoked,
            Self::LeaseFailed,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or(())
    }
}

/// What happened to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Created,
    Updated,
    Deleted,
    Restored,
}

/// One key of an event: never its value or its comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct KeyChange {
    pub key: String,
    pub action: ChangeAction,
}

/// Who made a change: `kind` is `user`, `api_key` or `service_token`; `id` its identifier
/// (never a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Actor {
    pub kind: String,
    pub id: Option<String>,
}

/// A change of an environment's secrets or of the environment, as recorded with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Event {
    /// Increases with every event of the server, in the order the changes were committed.
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Organization, project and environment slugs.
    pub org: String,
    pub project: String,
    pub environment: String,
    /// The environment's revision after the change.
    pub revision: i64,
    /// The keys changed (for `secrets.changed`); empty for the environment's own events.
    pub changes: Vec<KeyChange>,
    /// True when the environment's own secrets did not change but values they refer to did:
    /// `changes` then lists its keys whose resolved value changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_reference: bool,
    /// The environment's display name (`environment.created` and `environment.renamed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The lease a `lease.*` event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseEvent>,
    pub actor: Actor,
    pub time: Timestamp,
}

/// The revision of one environment, in a [`Resync`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EnvironmentRevision {
    pub environment: String,
    pub revision: i64,
}

/// Why a stream sent a [`Resync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// The stream was opened without a position: this is where it starts.
    Start,
    /// Events after the requested position are no longer retained (or the position is unknown
    /// here): what happened meanwhile is lost, the current revisions say where things are.
    Expired,
}

/// The `resync` message of an event stream: the current revision of every environment the
/// stream delivers, and the position (`last_event_id`, also its SSE `id`) it continues from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Resync {
    pub reason: ResyncReason,
    pub last_event_id: i64,
    pub environments: Vec<EnvironmentRevision>,
}
