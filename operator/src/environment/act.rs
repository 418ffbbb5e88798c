//! Carries out what [`super::decide`] asked for, in order, and publishes the Normal events
//! that say what was done. A failure ends the pass: either as a [`Halt`] the status reports,
//! or as an error for the controller's retry policy.

use coffer_client::CreateEnvironmentRequest;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;

use super::build::{self, Retire};
use super::decide::{Act, Read, Write, upstream_failure};
use super::rollout;
use crate::conditions::Reason;
use crate::context::{Context, Error, Halt, Requeue, patch_params, post_params};
use crate::crd::Environment;
use crate::source::FetchError;

/// What the actions did that the status reports.
#[derive(Debug, Default)]
pub struct Acted {
    /// The workloads restarted, when a restart was asked for.
    pub restarted: Option<Vec<String>>,
}

/// Why the actions stopped.
#[derive(Debug)]
pub enum Failure {
    /// Reported in the status.
    Halt(Halt),
    /// coffer-server failed; reported in the status.
    Unread(Halt),
    /// Left to the controller's retry policy (a conflict, say).
    Error(Error),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        Self::Error(e.into())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Error(e)
    }
}

/// Does `actions` for `env`, whose environment was read as `read` (actions arise only once
/// coffer-server was reached).
pub async fn act(
    env: &Environment,
    read: &Read,
    actions: &[Act],
    ctx: &Context,
) -> Result<Acted, Failure> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut acted = Acted::default();
    for action in actions {
        match action {
            Act::CreateEnvironment => create_environment(read, env, ctx).await?,
            Act::WriteSecret { write, note } => {
                write_secret(env, read, &secrets, write).await?;
                event(ctx, env, false, "Synced", "Sync", note.clone()).await;
            }
            Act::DeleteSecret { secret, note } => {
                delete_owned(&secrets, secret).await?;
                let reason = Reason::SecretDeleted.as_str();
                event(ctx, env, false, reason, "Delete", note.clone()).await;
            }
            Act::Restart { secret, hash } => {
                let workloads = &ctx.stores.workloads;
                let targets = &env.spec.sync.rollout_restart;
                let restarts =
                    rollout::restart(&ctx.kube, workloads, env, targets, secret, hash).await?;
                if !restarts.missing.is_empty() {
                    let note = format!(
                        "spec.sync.rolloutRestart: not found: {}",
                        restarts.missing.join(", ")
                    );
                    event(ctx, env, true, "RolloutTargetNotFound", "Restart", note).await;
                }
                if !restarts.refused.is_empty() {
                    let note = format!(
                        "spec.sync.rolloutRestart: not restarted, as they neither read Secret \
                         {secret:?} nor are annotated {}: \"true\": {}",
                        rollout::RELOAD_ANNOTATION,
                        restarts.refused.join(", ")
                    );
                    event(ctx, env, true, "RolloutTargetRefused", "Restart", note).await;
                }
                if !restarts.restarted.is_empty() {
                    let note = format!("restarted {}", restarts.restarted.join(", "));
                    event(ctx, env, false, "RolloutRestarted", "Restart", note).await;
                }
                acted.restarted = Some(restarts.restarted);
            }
            Act::Retire { name } => {
                let done = retire(&secrets, env, name).await?;
                if let Some((reason, note)) = done {
                    let note = format!("spec.sync.secretName changed: {note}");
                    event(ctx, env, false, reason, "Cleanup", note).await;
                }
            }
        }
    }
    Ok(acted)
}

/// Cleans up Secret `name`, which `env` no longer syncs into (see [`build::retire`]); returns
/// the reason and note of the event that says what was done, if anything was.
pub async fn retire(
    secrets: &Api<Secret>,
    env: &Environment,
    name: &str,
) -> Result<Option<(&'static str, String)>, Error> {
    let Some(current) = secrets.get_opt(name).await? else {
        return Ok(None);
    };
    let done = match build::retire(&current, env) {
        Retire::Nothing => return Ok(None),
        Retire::Delete => {
            delete_owned(secrets, &current).await?;
            (
                Reason::SecretDeleted.as_str(),
                format!("deleted Secret {name:?} (deletionPolicy Delete)"),
            )
        }
        Retire::Release => {
            release(secrets, env, &current).await?;
            (
                "SecretReleased",
                format!("released Secret {name:?}: it stays, no longer synced"),
            )
        }
        Retire::RemoveKeys => {
            remove_applied(secrets, env, &current).await?;
            (
                "KeysRemoved",
                format!("removed the keys merged into Secret {name:?}; the Secret stays"),
            )
        }
    };
    Ok(Some(done))
}

/// Removes `env`'s owner reference from `current`, keeping any other.
async fn release(secrets: &Api<Secret>, env: &Environment, current: &Secret) -> Result<(), Error> {
    let uid = env.metadata.uid.clone().unwrap_or_default();
    let remaining: Vec<_> = current
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect();
    let patch = json!({ "metadata": {
        "ownerReferences": remaining,
        "resourceVersion": current.metadata.resource_version,
    }});
    secrets
        .patch(&current.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Server-side applies nothing to `current` as `env`'s field manager: the keys, labels and
/// annotations its earlier applies wrote (and no other manager holds) are removed, the rest
/// stays. The resource version makes sure an apply never creates a Secret deleted meanwhile.
async fn remove_applied(
    secrets: &Api<Secret>,
    env: &Environment,
    current: &Secret,
) -> Result<(), Error> {
    let empty = Secret {
        metadata: ObjectMeta {
            name: current.metadata.name.clone(),
            namespace: current.metadata.namespace.clone(),
            resource_version: current.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    };
    match secrets
        .patch(
            &current.name_any(),
            &apply_params(env),
            &Patch::Apply(&empty),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A server-side apply as `env`'s field manager that takes over the fields it applies from any
/// other manager: what it merges is the environment's.
fn apply_params(env: &Environment) -> PatchParams {
    PatchParams::apply(&build::merge_manager(env)).force()
}

pub async fn event(
    ctx: &Context,
    env: &Environment,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    ctx.event(&env.object_ref(&()), warning, reason, action, note)
        .await;
}

async fn create_environment(read: &Read, env: &Environment, ctx: &Context) -> Result<(), Failure> {
    let key = &read.source;
    let request = CreateEnvironmentRequest {
        slug: key.environment.clone(),
        name: None,
    };
    if let Err(e) = read
        .connection
        .client
        .create_environment(&key.org, &key.project, &request)
        .await
    {
        return Err(Failure::Unread(upstream_failure(
            &FetchError::from(&e),
            &key.place(),
        )));
    }
    let note = format!("created environment {} in coffer-server", key.place());
    let reason = Reason::EnvironmentCreated.as_str();
    event(ctx, env, false, reason, "Create", note).await;
    ctx.sources.invalidate(key).await;
    Ok(())
}

/// Writes the Secret. A new type means a new Secret (the type is immutable): the new one is
/// validated by a dry run first, so a refusal leaves the old one in place.
async fn write_secret(
    env: &Environment,
    read: &Read,
    secrets: &Api<Secret>,
    write: &Write,
) -> Result<(), Failure> {
    let post = post_params();
    let written = match write {
        Write::Create(desired) => secrets.create(&post, desired).await.map(drop),
        Write::Replace(next) => secrets
            .replace(&next.name_any(), &post, next)
            .await
            .map(drop),
        Write::Apply(applied) => {
            let params = apply_params(env);
            secrets
                .patch(&applied.name_any(), &params, &Patch::Apply(applied))
                .await
                .map(drop)
        }
        Write::Recreate { current, desired } => {
            // The old Secret goes only once the API server has accepted the new one.
            if let Err(e) = validate_new(secrets, desired).await {
                return Err(refused(env, read, e));
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: current.metadata.uid.clone(),
                    resource_version: current.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(&current.name_any(), &params).await {
                Ok(_) => secrets.create(&post, desired).await.map(drop),
                Err(e) => Err(e),
            }
        }
    };
    match written {
        Ok(()) => Ok(()),
        Err(e) => Err(refused(env, read, e)),
    }
}

/// Asks the API server whether it would create `desired`, without creating it: a server-side
/// dry run runs validation and admission as a real create does. The API server validates a
/// new object before it looks for one of the same name, so `AlreadyExists` (the Secret to be
/// replaced holds the name) means everything else was accepted.
async fn validate_new(secrets: &Api<Secret>, desired: &Secret) -> Result<(), kube::Error> {
    let params = PostParams {
        dry_run: true,
        ..post_params()
    };
    match secrets.create(&params, desired).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

/// The failure of a write of `env`'s Secret: a Secret Kubernetes refuses (a bad name, label or
/// type, or data the type does not allow) is the spec's fault and reported as such.
fn refused(env: &Environment, read: &Read, error: kube::Error) -> Failure {
    let name = env.secret_name();
    match error {
        kube::Error::Api(e) if e.code == 400 || e.code == 422 => Failure::Halt(Halt::new(
            Reason::InvalidSpec,
            format!("Kubernetes refused Secret {name:?}: {}", e.message),
            Requeue::After(read.interval),
        )),
        e => match Error::from(e) {
            conflict @ Error::Conflict(_) => Failure::Error(conflict),
            error => Failure::Halt(Halt::new(
                Reason::KubernetesError,
                format!("writing Secret {name:?} failed: {error}"),
                Requeue::Backoff,
            )),
        },
    }
}

/// Deletes `current` (ours), unless it is already gone or was replaced meanwhile.
pub async fn delete_owned(secrets: &Api<Secret>, current: &Secret) -> Result<(), Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: current.metadata.uid.clone(),
            resource_version: None,
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match secrets.delete(&current.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
