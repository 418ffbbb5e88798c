//! What to do about an `Environment`, given what was observed: a pure function, tested
//! without a cluster or a server. [`decide`] returns the actions to take, the status to write,
//! and how the pass ends: synced, or halted with a reason and a time to look again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;

use super::build::{self, Ownership, Update};
use crate::conditions::{self, Reason, State};
use crate::context::{Halt, Requeue};
use crate::crd::{
    CONDITION_READY, CONDITION_SYNCED, CreationPolicy, DeletionPolicy, Environment,
    EnvironmentStatus, SyncMode,
};
use crate::credentials::{Connection, ConnectionError};
use crate::source::{FetchError, Missing, Snapshot, SourceKey};

/// What the reconciliation of one `Environment` found, as far as it got.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The resource: its spec, metadata and the status it has.
    pub env: &'a Environment,
    pub stage: Stage,
}

/// How far observation got, and what it found there. Each stage needs the one before it.
#[derive(Debug)]
pub enum Stage {
    /// The spec cannot be acted on; why.
    InvalidSpec(String),
    /// `spec.projectRef` names no `Project` in the namespace.
    NoProject,
    /// The `Project` exists, but how to reach coffer-server with it is unknown.
    NoConnection {
        interval: Duration,
        project: String,
        error: ConnectionError,
    },
    /// The environment was read from coffer-server (or failed to be).
    Read(Box<Read>),
}

/// The environment's data, and the Secret now under the target name.
#[derive(Debug)]
pub struct Read {
    pub interval: Duration,
    pub source: SourceKey,
    /// How coffer-server was reached, for the actions.
    pub connection: Connection,
    pub data: Result<Arc<Snapshot>, FetchError>,
    /// The Secret of the target name, read when the data was (or a confirmed missing
    /// environment may delete it).
    pub secret: Option<Secret>,
    /// How changes of the environment reach the Secret now.
    pub sync_mode: SyncMode,
}

/// A change to make, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// Create the environment in coffer-server (`spec.create`).
    CreateEnvironment,
    /// Write the Secret; `note` is the Normal event published once written.
    WriteSecret { write: Write, note: String },
    /// Delete this Secret (ours) because the environment is gone and the policy says so;
    /// `note` is the Normal event published.
    DeleteSecret { secret: Box<Secret>, note: String },
    /// Put `hash` on the pod templates of the workloads that use Secret `secret`.
    Restart { secret: String, hash: String },
    /// Clean up Secret `name`, which `spec.sync.secretName` named before (see
    /// [`build::retire`]).
    Retire { name: String },
}

/// How the Secret is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Create(Box<Secret>),
    /// Replace it with this object (same name and resource version).
    Replace(Box<Secret>),
    /// Its type changes, which Kubernetes forbids: delete `current` and create `desired`.
    Recreate {
        current: Box<Secret>,
        desired: Box<Secret>,
    },
    /// Server-side apply this into someone else's Secret (`creationPolicy: Merge`).
    Apply(Box<Secret>),
}

/// How a pass ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Everything is in place: look again after the refresh interval.
    Synced { interval: Duration },
    /// Stopped short.
    Halt(Halt),
}

/// What [`decide`] asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Act>,
    /// The status the resource should have once the actions are done (`restartedWorkloads`
    /// is filled in by the restart, which alone knows which workloads it found).
    pub status: EnvironmentStatus,
    pub then: Then,
}

/// The status being drafted from the one the resource has.
struct Draft<'a> {
    env: &'a Environment,
    now: Timestamp,
    status: EnvironmentStatus,
}

impl<'a> Draft<'a> {
    fn new(env: &'a Environment, now: Timestamp) -> Self {
        let mut status = env.status.clone().unwrap_or_default();
        status.observed_generation = env.metadata.generation;
        Self { env, now, status }
    }

    fn set(
        &mut self,
        type_: &str,
        state: impl Into<State>,
        reason: Reason,
        message: impl Into<String>,
    ) {
        conditions::set(
            &mut self.status.conditions,
            type_,
            state,
            reason,
            message,
            self.env.metadata.generation,
            self.now,
        );
    }

    /// A plan that stops because coffer-server could not be read: `Ready` says why, and
    /// whether the Secret is current is unknown (it keeps its last synced data).
    fn unread(mut self, halt: Halt) -> Plan {
        self.set(
            CONDITION_SYNCED,
            State::Unknown,
            halt.reason,
            "coffer-server cannot be read: whether the Secret holds the environment's current \
             data is unknown; it keeps its last synced data",
        );
        self.halt(halt, Vec::new())
    }

    /// A plan that stops here, with `Ready` saying why.
    fn halt(mut self, halt: Halt, actions: Vec<Act>) -> Plan {
        self.set(CONDITION_READY, false, halt.reason, halt.message.clone());
        Plan {
            actions,
            status: self.status,
            then: Then::Halt(halt),
        }
    }
}

/// What to do about `observed` at time `now`, with `hash_key` keying the data hash.
pub fn decide(observed: &Observed<'_>, hash_key: &[u8], now: Timestamp) -> Plan {
    let env = observed.env;
    let mut draft = Draft::new(env, now);
    // Only a resource that reads an environment has changes reach it one way or the other.
    draft.status.sync_mode = match &observed.stage {
        Stage::Read(read) => Some(read.sync_mode),
        _ => None,
    };
    if let Err(e) = build::validate(&env.spec.sync).and_then(|()| super::dynamic::validate(env)) {
        let halt = Halt::new(Reason::InvalidSpec, e.to_string(), Requeue::AwaitChange);
        return draft.halt(halt, Vec::new());
    }
    let read = match &observed.stage {
        Stage::InvalidSpec(message) => {
            let halt = Halt::new(Reason::InvalidSpec, message, Requeue::AwaitChange);
            return draft.halt(halt, Vec::new());
        }
        Stage::NoProject => {
            let message = format!(
                "spec.projectRef: there is no Project {:?} in namespace {:?}",
                env.spec.project_ref.name,
                env.namespace().unwrap_or_default()
            );
            // The Project watch wakes this resource when the Project appears.
            let halt = Halt::new(Reason::ProjectRefNotFound, message, Requeue::AwaitChange);
            return draft.halt(halt, Vec::new());
        }
        Stage::NoConnection {
            interval,
            project,
            error,
        } => {
            let message = format!("Project {project:?}: {}", error.message);
            let halt = Halt::new(error.reason, message, Requeue::After(*interval));
            return draft.halt(halt, Vec::new());
        }
        Stage::Read(read) => read,
    };
    let place = read.source.place();
    match &read.data {
        Ok(snapshot) => sync(draft, read, snapshot, hash_key),
        Err(e) => match e.missing {
            Some(Missing::Environment) if env.spec.create => Plan {
                actions: vec![Act::CreateEnvironment],
                // Unchanged: the next pass, at once, reads the new environment.
                status: env.status.clone().unwrap_or_default(),
                then: Then::Halt(Halt::new(
                    Reason::EnvironmentCreated,
                    format!("created environment {place} in coffer-server"),
                    Requeue::Now,
                )),
            },
            Some(Missing::Environment) => environment_gone(draft, read),
            Some(Missing::Project) => {
                let halt = Halt::new(
                    Reason::ProjectNotFound,
                    e.to_string(),
                    Requeue::After(read.interval),
                );
                draft.halt(halt, Vec::new())
            }
            None => draft.unread(upstream_failure(e, &place)),
        },
    }
}

/// coffer-server failed: the Secret keeps its last good data; the status says why and the
/// controller retries with backoff.
pub fn upstream_failure(error: &FetchError, place: &str) -> Halt {
    Halt::new(
        error.reason,
        format!(
            "reading {place} from coffer-server failed: {error}; the Secret keeps its last \
             synced data"
        ),
        Requeue::Backoff,
    )
    .retry_after(error.retry_after)
}

/// The status after `halt` ended a pass that [`decide`] meant to finish (an action failed);
/// `unread` when the failure was coffer-server's.
pub fn halted(env: &Environment, halt: Halt, unread: bool, now: Timestamp) -> EnvironmentStatus {
    let draft = Draft::new(env, now);
    if unread {
        draft.unread(halt).status
    } else {
        draft.halt(halt, Vec::new()).status
    }
}

/// coffer-server confirmed the environment does not exist (the project does). With
/// `deletionPolicy: Delete` the Secret goes; otherwise it stays as it was.
fn environment_gone(mut draft: Draft<'_>, read: &Read) -> Plan {
    let env = draft.env;
    let secret_name = env.secret_name();
    let mut message = format!("coffer-server has no environment {}", read.source.place());
    let mut actions = Vec::new();
    if env.spec.sync.deletion_policy == DeletionPolicy::Delete {
        if let Some(current) = &read.secret
            && build::ownership(current, env) == Ownership::Owned
        {
            actions.push(Act::DeleteSecret {
                secret: Box::new(current.clone()),
                note: format!("{message}: deleted Secret {secret_name:?} (deletionPolicy Delete)"),
            });
        }
        draft.set(
            CONDITION_SYNCED,
            false,
            Reason::SecretDeleted,
            format!("{message}; the Secret was deleted"),
        );
        draft.status.revision = None;
        draft.status.secret_hash = None;
        draft.status.synced_keys = None;
        draft.status.secret_name = None;
    } else {
        message.push_str("; the Secret keeps its last synced data (deletionPolicy Retain)");
    }
    let halt = Halt::new(
        Reason::EnvironmentNotFound,
        message,
        Requeue::After(read.interval),
    );
    draft.halt(halt, actions)
}

/// The data was read: make the Secret hold it, unless the Secret is someone else's (or, under
/// `creationPolicy: Merge`, unless it does not exist).
fn sync(mut draft: Draft<'_>, read: &Read, snapshot: &Snapshot, hash_key: &[u8]) -> Plan {
    let env = draft.env;
    let secret_name = env.secret_name();
    let desired = match build::desired_secret(env, &snapshot.values, hash_key) {
        Ok(desired) => desired,
        Err(e) => {
            // The spec does not fit the data (a template reads a key that is gone, say): the
            // Secret keeps what it has until either changes.
            let message = format!("{e}; the Secret keeps its last synced data");
            draft.set(
                CONDITION_SYNCED,
                false,
                Reason::InvalidSpec,
                message.clone(),
            );
            let halt = Halt::new(Reason::InvalidSpec, message, Requeue::After(read.interval));
            return draft.halt(halt, Vec::new());
        }
    };
    let merge = env.spec.sync.creation_policy == CreationPolicy::Merge;
    let stop = |mut draft: Draft<'_>, reason: Reason, message: String| {
        draft.set(CONDITION_SYNCED, false, reason, message.clone());
        let halt = Halt::new(reason, message, Requeue::After(read.interval));
        draft.halt(halt, Vec::new())
    };
    let mut frozen = false;
    let write = match (&read.secret, merge) {
        (None, true) => {
            let message = format!(
                "Secret {secret_name:?} does not exist: creationPolicy Merge writes into an \
                 existing Secret and never creates one"
            );
            return stop(draft, Reason::SecretNotFound, message);
        }
        (Some(current), true) if !build::merge_allowed(current) => {
            let message = format!(
                "Secret {secret_name:?} does not allow merging: creationPolicy Merge writes only \
                 into a Secret labelled {}=true by its owner; it was left untouched",
                build::MERGE_LABEL
            );
            return stop(draft, Reason::SecretNotOwned, message);
        }
        (Some(current), true) => {
            build::merge(current, &desired.secret, &build::merge_manager(env)).map(Write::Apply)
        }
        (Some(current), false) if build::ownership(current, env) == Ownership::Foreign => {
            let message = format!(
                "Secret {secret_name:?} exists and is not managed by this Environment; \
                 it was left untouched (delete it, choose another spec.sync.secretName, or \
                 use creationPolicy Merge)"
            );
            return stop(draft, Reason::SecretNotOwned, message);
        }
        (None, false) => Some(Write::Create(Box::new(desired.secret.clone()))),
        (Some(current), false) => match build::update(current, &desired.secret, env) {
            Update::None => None,
            Update::Replace(next) => Some(Write::Replace(next)),
            Update::Recreate => Some(Write::Recreate {
                current: Box::new(current.clone()),
                desired: Box::new(desired.secret.clone()),
            }),
            Update::Frozen(next) => {
                frozen = true;
                next.map(Write::Replace)
            }
        },
    };
    let mut actions = Vec::new();
    let previous_name = draft.status.secret_name.replace(secret_name.clone());
    if frozen {
        // The Secret keeps the data it was created with: the status keeps describing it.
        let message = format!(
            "Secret {secret_name:?} is immutable and keeps the data it was created with; {} \
             is at revision {} with other data: delete the Secret to have it created anew",
            read.source.place(),
            snapshot.revision
        );
        if let Some(write) = write {
            let note = format!("updated the metadata of immutable Secret {secret_name:?}");
            actions.push(Act::WriteSecret { write, note });
        }
        retire_previous(&mut actions, previous_name, &secret_name);
        draft.set(
            CONDITION_SYNCED,
            false,
            Reason::SecretImmutable,
            message.clone(),
        );
        let halt = Halt::new(
            Reason::SecretImmutable,
            message,
            Requeue::After(read.interval),
        );
        return draft.halt(halt, actions);
    }
    let message = format!(
        "Secret {secret_name:?} holds {} key(s) of {} at revision {}",
        desired.keys,
        read.source.place(),
        snapshot.revision
    );
    let wrote = write.is_some();
    if let Some(write) = write {
        actions.push(Act::WriteSecret {
            write,
            note: message.clone(),
        });
    }
    // Restart the workloads when the data changed since the last sync (not on the first one,
    // not after an operator restart: the previous hash is in the status). A previous hash made
    // with another key (the key was lost and regenerated) or with none recorded says nothing
    // about the data: the new hash is a baseline, as on a first sync.
    let status = &mut draft.status;
    let previous_hash = status.secret_hash.clone();
    let comparable = |h: &str| build::hash_key_id(h) == build::hash_key_id(&desired.hash);
    if previous_hash
        .as_deref()
        .is_some_and(|h| comparable(h) && h != desired.hash)
    {
        actions.push(Act::Restart {
            secret: secret_name.clone(),
            hash: desired.hash.clone(),
        });
    }
    // Only once the Secret of the new name holds the data does the old one go.
    retire_previous(&mut actions, previous_name, &secret_name);
    let moved = status.revision != Some(snapshot.revision)
        || previous_hash.as_deref() != Some(desired.hash.as_str());
    if wrote || moved || status.last_sync_time.is_none() {
        status.last_sync_time = Some(Time(draft.now));
    }
    status.revision = Some(snapshot.revision);
    status.secret_hash = Some(desired.hash);
    status.synced_keys = Some(i64::try_from(desired.keys).unwrap_or(i64::MAX));
    draft.set(CONDITION_READY, true, Reason::Synced, message.clone());
    draft.set(CONDITION_SYNCED, true, Reason::Synced, message);
    Plan {
        actions,
        status: draft.status,
        then: Then::Synced {
            interval: read.interval,
        },
    }
}

/// Asks to clean up the Secret of the previous name, when `spec.sync.secretName` changed.
fn retire_previous(actions: &mut Vec<Act>, previous: Option<String>, current: &str) {
    if let Some(name) = previous.filter(|p| p != current) {
        actions.push(Act::Retire { name });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;

    use coffer_client::Client;
    use secrecy::SecretString;

    use super::*;
    use crate::crd::EnvironmentSpec;

    const KEY: &[u8] = b"hash-key";
    const MINUTE: Duration = Duration::from_secs(60);

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn environment(spec: serde_json::Value) -> Environment {
        let mut full = serde_json::json!({
            "projectRef": { "name": "web" },
            "environment": "production",
            "sync": { "refreshInterval": "1m" },
        });
        if let (Some(full), serde_json::Value::Object(extra)) = (full.as_object_mut(), spec) {
            full.extend(extra);
        }
        let spec: EnvironmentSpec = serde_json::from_value(full).unwrap();
        let mut env = Environment::new("web-prod", spec);
        env.metadata.namespace = Some("apps".into());
        env.metadata.uid = Some("0b5c5d2e-5f42-4a53-9d3b-5f1a4c2b8e11".into());
        env.metadata.generation = Some(3);
        env
    }

    fn connection() -> Connection {
        Connection {
            server: "http://coffer.invalid".into(),
            client: Client::new("http://coffer.invalid", SecretString::from("t".to_owned()))
                .unwrap(),
            credentials: [1; 32],
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned())))
            .collect()
    }

    fn read(data: Result<Snapshot, FetchError>, secret: Option<Secret>) -> Stage {
        Stage::Read(Box::new(Read {
            interval: MINUTE,
            source: SourceKey::new(
                "http://coffer.invalid",
                [1; 32],
                "acme",
                "web",
                "production",
            ),
            connection: connection(),
            data: data.map(Arc::new),
            secret,
            sync_mode: SyncMode::Push,
        }))
    }

    fn snapshot(revision: i64, pairs: &[(&str, &str)]) -> Result<Snapshot, FetchError> {
        Ok(Snapshot::new(revision, values(pairs)))
    }

    fn plan(env: &Environment, stage: Stage) -> Plan {
        decide(&Observed { env, stage }, KEY, now())
    }

    /// The Secret a first sync of `pairs` writes, as Kubernetes would return it.
    fn written(env: &Environment, pairs: &[(&str, &str)]) -> Secret {
        let mut secret = build::desired_secret(env, &values(pairs), KEY)
            .unwrap()
            .secret;
        secret.metadata.resource_version = Some("10".into());
        secret
    }

    /// `env` after a sync of `pairs` at `revision`.
    fn synced(mut env: Environment, revision: i64, pairs: &[(&str, &str)]) -> Environment {
        let plan = plan(&env, read(snapshot(revision, pairs), None));
        env.status = Some(plan.status);
        env
    }

    fn ready(status: &EnvironmentStatus, type_: &str) -> (String, String) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn halt(plan: &Plan) -> &Halt {
        match &plan.then {
            Then::Halt(halt) => halt,
            Then::Synced { .. } => panic!("expected a halt, got {plan:?}"),
        }
    }

    fn pair(status: &str, reason: &str) -> (String, String) {
        (status.to_owned(), reason.to_owned())
    }

    #[test]
    fn an_invalid_spec_waits_for_a_change_and_says_why() {
        let env = environment(serde_json::json!({}));
        let p = plan(&env, Stage::InvalidSpec("spec.environment is empty".into()));
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::InvalidSpec, Requeue::AwaitChange)
        );
        assert!(p.actions.is_empty());
        assert_eq!(ready(&p.status, "Ready"), pair("False", "InvalidSpec"));
        assert_eq!(p.status.conditions[0].message, "spec.environment is empty");
        assert_eq!(p.status.observed_generation, Some(3));
    }

    #[test]
    fn the_status_says_how_changes_reach_the_secret_once_the_environment_is_read() {
        let env = environment(serde_json::json!({}));
        let p = plan(&env, read(snapshot(4, &[("A", "1")]), None));
        assert_eq!(p.status.sync_mode, Some(SyncMode::Push));
        let mut stage = read(snapshot(4, &[("A", "1")]), None);
        if let Stage::Read(read) = &mut stage {
            read.sync_mode = SyncMode::Poll;
        }
        let env = Environment {
            status: Some(p.status),
            ..env
        };
        let p = plan(&env, stage);
        assert_eq!(p.status.sync_mode, Some(SyncMode::Poll));
        // A resource that reads nothing has no sync mode.
        let env = Environment {
            status: Some(p.status),
            ..env
        };
        assert_eq!(plan(&env, Stage::NoProject).status.sync_mode, None);
    }

    #[test]
    fn a_missing_project_resource_waits_for_it() {
        let env = environment(serde_json::json!({}));
        let p = plan(&env, Stage::NoProject);
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::ProjectRefNotFound, Requeue::AwaitChange)
        );
        assert!(h.message.contains("\"web\"") && h.message.contains("\"apps\""));
    }

    #[test]
    fn a_connection_error_is_reported_and_looked_at_again_after_the_interval() {
        let env = environment(serde_json::json!({}));
        let error = ConnectionError {
            reason: Reason::CredentialsNotFound,
            message: "spec.credentialsRef: the Secret does not exist".into(),
        };
        let stage = Stage::NoConnection {
            interval: MINUTE,
            project: "web".into(),
            error,
        };
        let p = plan(&env, stage);
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::CredentialsNotFound, Requeue::After(MINUTE))
        );
        assert!(
            h.message
                .starts_with("Project \"web\": spec.credentialsRef")
        );
    }

    fn missing(what: Missing) -> Result<Snapshot, FetchError> {
        let key = SourceKey::new("s", [1; 32], "acme", "web", "production");
        Err(FetchError::missing(what, &key))
    }

    #[test]
    fn a_missing_environment_is_created_when_the_spec_asks_and_read_at_once() {
        let env = synced(
            environment(serde_json::json!({ "create": true })),
            4,
            &[("A", "1")],
        );
        let p = plan(&env, read(missing(Missing::Environment), None));
        assert_eq!(p.actions, [Act::CreateEnvironment]);
        assert_eq!(halt(&p).requeue, Requeue::Now);
        assert_eq!(
            Some(&p.status),
            env.status.as_ref(),
            "the status waits for the read"
        );
    }

    #[test]
    fn a_missing_environment_deletes_our_secret_only_under_the_delete_policy() {
        let delete = synced(
            environment(serde_json::json!({ "sync": { "deletionPolicy": "Delete" } })),
            4,
            &[("A", "1")],
        );
        let ours = written(&delete, &[("A", "1")]);
        let p = plan(
            &delete,
            read(missing(Missing::Environment), Some(ours.clone())),
        );
        assert!(matches!(&p.actions[..], [Act::DeleteSecret { secret, .. }] if **secret == ours));
        assert_eq!(
            ready(&p.status, "Ready"),
            pair("False", "EnvironmentNotFound")
        );
        assert_eq!(ready(&p.status, "Synced"), pair("False", "SecretDeleted"));
        assert_eq!(
            (
                &p.status.revision,
                &p.status.secret_hash,
                &p.status.synced_keys
            ),
            (&None, &None, &None),
            "a recreated environment is a first sync again"
        );
        assert_eq!(halt(&p).requeue, Requeue::After(MINUTE));

        let mut foreign = ours.clone();
        foreign.metadata.owner_references = None;
        foreign.metadata.labels = None;
        let p = plan(&delete, read(missing(Missing::Environment), Some(foreign)));
        assert!(
            p.actions.is_empty(),
            "someone else's Secret is never deleted"
        );

        let retain = synced(environment(serde_json::json!({})), 4, &[("A", "1")]);
        let ours = written(&retain, &[("A", "1")]);
        let p = plan(&retain, read(missing(Missing::Environment), Some(ours)));
        assert!(p.actions.is_empty());
        assert_eq!(
            ready(&p.status, "Ready"),
            pair("False", "EnvironmentNotFound")
        );
        assert_eq!(ready(&p.status, "Synced"), pair("True", "Synced"));
        assert_eq!(p.status.revision, Some(4));
        assert!(halt(&p).message.contains("deletionPolicy Retain"));
    }

    #[test]
    fn a_missing_project_in_coffer_is_reported_and_looked_at_again_after_the_interval() {
        let env = environment(serde_json::json!({ "create": true }));
        let p = plan(&env, read(missing(Missing::Project), None));
        assert!(p.actions.is_empty(), "only environments are created here");
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::ProjectNotFound, Requeue::After(MINUTE))
        );
    }

    #[test]
    fn an_upstream_failure_keeps_the_secret_and_retries_with_backoff() {
        let env = synced(environment(serde_json::json!({})), 4, &[("A", "1")]);
        let ours = written(&env, &[("A", "1")]);
        let failure = FetchError::from(&coffer_client::Error::Api {
            status: 503,
            code: "unavailable".into(),
            message: "down".into(),
            request_id: None,
            retry_after: None,
        });
        let p = plan(&env, read(Err(failure), Some(ours)));
        assert!(p.actions.is_empty());
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::ServerError, Requeue::Backoff)
        );
        assert!(h.message.contains("keeps its last synced data"));
        assert_eq!(
            p.status.secret_hash,
            env.status.as_ref().unwrap().secret_hash
        );
        assert_eq!(ready(&p.status, "Ready"), pair("False", "ServerError"));
        assert_eq!(
            ready(&p.status, "Synced"),
            pair("Unknown", "ServerError"),
            "whether the kept data is current cannot be told"
        );
    }

    #[test]
    fn a_foreign_secret_is_left_untouched_and_reported() {
        let env = environment(serde_json::json!({}));
        let mut foreign = written(&env, &[("MINE", "x")]);
        foreign.metadata.owner_references = None;
        foreign.metadata.labels = None;
        let p = plan(&env, read(snapshot(4, &[("A", "1")]), Some(foreign)));
        assert!(p.actions.is_empty());
        assert_eq!(ready(&p.status, "Ready"), pair("False", "SecretNotOwned"));
        assert_eq!(ready(&p.status, "Synced"), pair("False", "SecretNotOwned"));
        assert_eq!(halt(&p).requeue, Requeue::After(MINUTE));
    }

    #[test]
    fn the_first_sync_writes_the_secret_and_restarts_nothing() {
        let env = environment(serde_json::json!({}));
        let p = plan(&env, read(snapshot(4, &[("A", "1")]), None));
        let [
            Act::WriteSecret {
                write: Write::Create(secret),
                note,
            },
        ] = &p.actions[..]
        else {
            panic!("expected one create: {:?}", p.actions)
        };
        assert_eq!(secret.data.as_ref().unwrap()["A"].0, b"1");
        assert!(note.contains("1 key(s) of acme/web/production at revision 4"));
        assert_eq!(p.then, Then::Synced { interval: MINUTE });
        assert_eq!(p.status.revision, Some(4));
        assert_eq!(p.status.synced_keys, Some(1));
        assert_eq!(p.status.last_sync_time, Some(Time(now())));
        assert_eq!(ready(&p.status, "Ready"), pair("True", "Synced"));
        assert_eq!(ready(&p.status, "Synced"), pair("True", "Synced"));
    }

    #[test]
    fn changed_data_rewrites_the_secret_and_restarts_the_workloads() {
        let env = synced(environment(serde_json::json!({})), 4, &[("A", "1")]);
        let current = written(&env, &[("A", "1")]);
        let p = plan(&env, read(snapshot(5, &[("A", "2")]), Some(current)));
        let hash = p.status.secret_hash.clone().unwrap();
        assert_ne!(
            Some(&hash),
            env.status.as_ref().unwrap().secret_hash.as_ref()
        );
        match &p.actions[..] {
            [
                Act::WriteSecret {
                    write: Write::Replace(next),
                    ..
                },
                Act::Restart { secret, hash: h },
            ] => {
                assert_eq!(next.data.as_ref().unwrap()["A"].0, b"2");
                assert_eq!(next.metadata.resource_version.as_deref(), Some("10"));
                assert_eq!((secret.as_str(), h), ("web-prod", &hash));
            }
            other => panic!("expected a replace and a restart: {other:?}"),
        }
        assert_eq!(p.status.revision, Some(5));
    }

    #[test]
    fn a_hash_made_with_another_key_is_a_new_baseline_and_restarts_nothing() {
        let env = synced(environment(serde_json::json!({})), 4, &[("A", "1")]);
        let current = written(&env, &[("A", "1")]);
        // The key Secret was lost and regenerated: same data, another key.
        let other_key = b"regenerated-key";
        let p = decide(
            &Observed {
                env: &env,
                stage: read(snapshot(4, &[("A", "1")]), Some(current.clone())),
            },
            other_key,
            now(),
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        let hash = p.status.secret_hash.clone().unwrap();
        assert_eq!(
            build::hash_key_id(&hash),
            Some(build::key_id(other_key).as_str())
        );
        assert_eq!(p.then, Then::Synced { interval: MINUTE });
        // Under the new key, a data change restarts again.
        let mut rebased = env.clone();
        rebased.status = Some(p.status);
        let p = decide(
            &Observed {
                env: &rebased,
                stage: read(snapshot(5, &[("A", "2")]), Some(current.clone())),
            },
            other_key,
            now(),
        );
        assert!(matches!(
            &p.actions[..],
            [Act::WriteSecret { .. }, Act::Restart { .. }]
        ));

        // A hash recorded without a key id (an older operator's) is a baseline too, even with
        // changed data: whether the data changed cannot be told.
        let mut legacy = env.clone();
        legacy.status.as_mut().unwrap().secret_hash = Some("0".repeat(64));
        let p = plan(&legacy, read(snapshot(5, &[("A", "2")]), Some(current)));
        assert!(
            matches!(&p.actions[..], [Act::WriteSecret { .. }]),
            "{:?}",
            p.actions
        );
        assert_eq!(
            p.status.secret_hash,
            Some(build::secret_hash(
                KEY,
                &written(&env, &[("A", "2")]).data.unwrap()
            ))
        );
    }

    #[test]
    fn an_unchanged_environment_writes_nothing() {
        let mut env = synced(environment(serde_json::json!({})), 4, &[("A", "1")]);
        // A while later.
        let status = env.status.as_mut().unwrap();
        status.last_sync_time = Some(Time(Timestamp::from_second(1_700_000_000).unwrap()));
        let current = written(&env, &[("A", "1")]);
        let p = plan(&env, read(snapshot(4, &[("A", "1")]), Some(current)));
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(Some(&p.status), env.status.as_ref());
        assert_eq!(p.then, Then::Synced { interval: MINUTE });
    }

    #[test]
    fn a_new_type_recreates_the_secret() {
        let env = synced(
            environment(serde_json::json!({ "sync": { "type": "kubernetes.io/tls" } })),
            4,
            &[("A", "1")],
        );
        let mut current = written(&env, &[("A", "1")]);
        current.type_ = Some("Opaque".into());
        let p = plan(
            &env,
            read(snapshot(4, &[("A", "1")]), Some(current.clone())),
        );
        assert!(matches!(
            &p.actions[..],
            [Act::WriteSecret { write: Write::Recreate { current: c, .. }, .. }] if **c == current
        ));
    }

    #[test]
    fn a_sync_spec_that_cannot_work_waits_for_a_change_whatever_else_is_found() {
        let env = environment(serde_json::json!({ "sync": {
            "keys": [{ "from": "A", "to": "x" }, { "from": "B", "to": "x" }],
        } }));
        for stage in [Stage::NoProject, read(snapshot(4, &[("A", "1")]), None)] {
            let p = plan(&env, stage);
            let h = halt(&p);
            assert_eq!(
                (h.reason, h.requeue),
                (Reason::InvalidSpec, Requeue::AwaitChange)
            );
            assert!(
                h.message.starts_with("spec.sync.keys[1].to: "),
                "{}",
                h.message
            );
            assert!(p.actions.is_empty());
        }
    }

    #[test]
    fn data_the_spec_does_not_fit_keeps_the_secret_and_looks_again_after_the_interval() {
        let spec = serde_json::json!({ "sync": { "templates": { "URL": "{{ .USER }}" } } });
        let env = synced(environment(spec), 4, &[("USER", "u")]);
        let current = written(&env, &[("USER", "u")]);
        let p = plan(
            &env,
            read(snapshot(5, &[("OTHER", "s3cr3t")]), Some(current)),
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::InvalidSpec, Requeue::After(MINUTE))
        );
        assert!(h.message.contains(".USER is not a key of the environment"));
        assert!(h.message.contains("keeps its last synced data") && !h.message.contains("s3cr3t"));
        assert_eq!(ready(&p.status, "Synced"), pair("False", "InvalidSpec"));
        assert_eq!(p.status.revision, Some(4));
    }

    #[test]
    fn an_immutable_secret_is_not_rewritten_and_the_change_is_reported() {
        let spec = serde_json::json!({ "sync": { "immutable": true } });
        let env = synced(environment(spec), 4, &[("A", "1")]);
        let before = env.status.clone().unwrap();
        let current = written(&env, &[("A", "1")]);
        let p = plan(
            &env,
            read(snapshot(5, &[("A", "2")]), Some(current.clone())),
        );
        assert!(
            p.actions.is_empty(),
            "no write, no restart: {:?}",
            p.actions
        );
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::SecretImmutable, Requeue::After(MINUTE))
        );
        assert!(h.message.contains("delete the Secret"), "{}", h.message);
        assert_eq!(ready(&p.status, "Ready"), pair("False", "SecretImmutable"));
        assert_eq!(ready(&p.status, "Synced"), pair("False", "SecretImmutable"));
        assert_eq!(
            (&p.status.revision, &p.status.secret_hash),
            (&before.revision, &before.secret_hash),
            "the status describes the data the Secret holds"
        );
        // Deleted by hand: created anew with the current data, and the workloads restarted.
        let p = plan(&env, read(snapshot(5, &[("A", "2")]), None));
        assert!(matches!(
            &p.actions[..],
            [Act::WriteSecret { write: Write::Create(s), .. }, Act::Restart { .. }]
                if s.immutable == Some(true) && s.data.as_ref().unwrap()["A"].0 == b"2"
        ));
    }

    #[test]
    fn a_merge_needs_an_existing_secret_and_applies_into_it() {
        let spec =
            serde_json::json!({ "sync": { "creationPolicy": "Merge", "secretName": "shared" } });
        let env = environment(spec);
        let p = plan(&env, read(snapshot(4, &[("A", "1")]), None));
        assert!(p.actions.is_empty());
        let h = halt(&p);
        assert_eq!(
            (h.reason, h.requeue),
            (Reason::SecretNotFound, Requeue::After(MINUTE))
        );
        assert!(h.message.contains("never creates one"));

        let mut foreign = Secret::default();
        foreign.metadata.name = Some("shared".into());
        foreign.metadata.resource_version = Some("9".into());
        foreign.data = Some([("THEIRS".to_owned(), k8s_openapi::ByteString(b"t".to_vec()))].into());
        // Not opened to merging by its owner: untouched.
        let p = plan(
            &env,
            read(snapshot(4, &[("A", "1")]), Some(foreign.clone())),
        );
        assert!(p.actions.is_empty());
        assert!(halt(&p).message.contains("coffer.dev/merge=true"));
        assert_eq!(ready(&p.status, "Ready"), pair("False", "SecretNotOwned"));
        foreign.metadata.labels = Some([("coffer.dev/merge".to_owned(), "true".to_owned())].into());
        let p = plan(&env, read(snapshot(4, &[("A", "1")]), Some(foreign)));
        let [
            Act::WriteSecret {
                write: Write::Apply(apply),
                ..
            },
        ] = &p.actions[..]
        else {
            panic!("expected an apply: {:?}", p.actions)
        };
        assert_eq!(
            apply.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["A"]
        );
        assert_eq!(apply.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(ready(&p.status, "Ready"), pair("True", "Synced"));
        assert_eq!(p.status.secret_name.as_deref(), Some("shared"));
    }

    #[test]
    fn a_new_secret_name_retires_the_old_secret_once_the_new_one_is_written() {
        let env = synced(environment(serde_json::json!({})), 4, &[("A", "1")]);
        assert_eq!(
            env.status.as_ref().unwrap().secret_name.as_deref(),
            Some("web-prod")
        );
        let mut renamed = env.clone();
        renamed.spec.sync.secret_name = Some("web-env".into());
        let p = plan(&renamed, read(snapshot(4, &[("A", "1")]), None));
        match &p.actions[..] {
            [
                Act::WriteSecret {
                    write: Write::Create(s),
                    ..
                },
                Act::Retire { name },
            ] => {
                assert_eq!(s.metadata.name.as_deref(), Some("web-env"));
                assert_eq!(name, "web-prod");
            }
            other => panic!("expected a create, then the old Secret retired: {other:?}"),
        }
        assert_eq!(p.status.secret_name.as_deref(), Some("web-env"));

        // The new name is someone else's: nothing is written and the old Secret stays.
        let mut foreign = written(&renamed, &[("X", "x")]);
        foreign.metadata.labels = None;
        let p = plan(&renamed, read(snapshot(4, &[("A", "1")]), Some(foreign)));
        assert!(p.actions.is_empty());
        assert_eq!(p.status.secret_name.as_deref(), Some("web-prod"));
    }
}
