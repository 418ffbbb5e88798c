//! The `Environment` controller: keeps a Secret equal to an environment of coffer-server.
//!
//! A pass observes what exists ([`observe`]), decides without a client what to do about it
//! ([`decide`], with [`build`] saying what the Secret should be), does it ([`act`], with
//! [`rollout`] restarting the workloads that use the Secret when its data changes) and writes
//! the status ([`crate::status`]). The leases of `spec.dynamicSecrets` are kept by [`dynamic`]
//! in the same pass, once coffer-server is reached.

mod act;
pub mod build;
pub mod decide;
pub mod dynamic;
mod observe;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt as _, predicates, watcher};
use kube::{Api, ResourceExt as _};
use tokio::sync::mpsc;

use crate::context::{self, Context, Error, Requeue, drain, finalized, reported, spec_changes};
use crate::crd::{CreationPolicy, Environment, Project};
use crate::status;
use crate::stores::{self, Writers};
use act::Failure;
use build::ENVIRONMENT_LABEL;
use decide::{Stage, Then, decide};
use observe::observe;

/// Set (to any new value, e.g. a timestamp) to make the operator fetch from coffer-server now.
pub const REFRESH_ANNOTATION: &str = "coffer.dev/refresh-at";
const KIND: &str = "Environment";

/// Runs the controller over `api` (until the future is dropped), filling the Project and
/// credentials stores of `ctx` through `writers`.
pub async fn run(
    ctx: Arc<Context>,
    apis: Apis,
    writers: Writers,
    changed: mpsc::UnboundedReceiver<ObjectRef<Environment>>,
) {
    let (reader, writer) = reflector::store();
    // Spec edits, the refresh-at annotation and finalizers wake it; its own status writes don't.
    let metrics = &ctx.metrics;
    let envs = spec_changes(apis.environments, writer, metrics.clone());
    // Only metadata of our Secrets: enough to notice edits and deletions (and to know when the
    // last read is still current). A Secret is mapped to its Environment by our labels, not by
    // an owner reference: under `deletionPolicy: Retain` it has none (see
    // `build::desired_secret`).
    let merged = merge_targets(apis.secrets.clone(), metrics.clone());
    let owned = stores::owned(apis.secrets, writers.owned, metrics.clone());
    let name = format!("{} (for Environments)", apis.projects.resource_url());
    let project_changes = watcher(apis.projects, watcher::Config::default());
    let project_changes = reported(project_changes, metrics.clone(), name)
        .default_backoff()
        .reflect(writers.projects)
        .touched_objects()
        .predicate_filter(predicates::generation, Default::default());
    let credentials = stores::credentials(apis.credentials, writers.credentials, metrics.clone());
    let changed =
        futures::stream::unfold(
            changed,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        );
    let (by_project, by_credentials, by_target) = (reader.clone(), reader.clone(), reader.clone());
    let projects = ctx.stores.projects.clone();
    let config = controller::Config::default().concurrency(ctx.config.concurrency);
    let results = Controller::for_stream(envs, reader)
        .with_config(config)
        .watches_stream(owned, |secret: PartialObjectMeta<Secret>| {
            let namespace = secret.namespace();
            secret
                .labels()
                .get(ENVIRONMENT_LABEL)
                .zip(namespace)
                .map(|(name, ns)| ObjectRef::<Environment>::new(name).within(&ns))
        })
        // A Secret merged into is not ours and carries none of our labels: its owner's opt-in
        // label finds it, so a hand edit of our keys there is repaired at once too.
        .watches_stream(merged, move |secret: PartialObjectMeta<Secret>| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            by_target
                .state()
                .into_iter()
                .filter(|e| e.namespace() == namespace && e.secret_name() == name)
                .filter(|e| e.spec.sync.creation_policy == CreationPolicy::Merge)
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .watches_stream(project_changes, move |project: Project| {
            readers_of(&by_project, project.namespace(), |name| {
                *name == project.name_any()
            })
        })
        // A new or changed token takes effect at once, not at the next refresh.
        .watches_stream(credentials, move |secret: Secret| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            let users: Vec<String> = projects
                .state()
                .iter()
                .filter(|p| p.namespace() == namespace)
                .filter(|p| {
                    p.spec
                        .credentials_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
                })
                .map(|p| p.name_any())
                .collect();
            readers_of(&by_credentials, namespace, |project| {
                users.contains(project)
            })
        })
        .reconcile_on(changed)
        .run(reconcile, error_policy, ctx);
    drain(results).await;
}

/// The APIs the `Environment` controller watches, in its scope.
#[derive(Debug)]
pub struct Apis {
    pub environments: Api<Environment>,
    /// Metadata only: the Secrets this operator writes.
    pub secrets: Api<PartialObjectMeta<Secret>>,
    pub projects: Api<Project>,
    /// The credentials Secrets (label-selected).
    pub credentials: Api<Secret>,
}

/// Metadata of the Secrets whose owners let `Environment`s merge into them
/// ([`build::MERGE_LABEL`]).
fn merge_targets(
    api: Api<PartialObjectMeta<Secret>>,
    metrics: Arc<crate::metrics::Metrics>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static
{
    let selector = format!("{}=true", build::MERGE_LABEL);
    let name = format!("{}?labelSelector={selector}", api.resource_url());
    let watch = watcher(api, watcher::Config::default().labels(&selector));
    reported(watch, metrics, name)
        .default_backoff()
        .touched_objects()
}

/// The `Environment` resources of `namespace` whose `projectRef` passes `project`.
fn readers_of(
    store: &reflector::Store<Environment>,
    namespace: Option<String>,
    project: impl Fn(&String) -> bool,
) -> Vec<ObjectRef<Environment>> {
    store
        .state()
        .into_iter()
        .filter(|e| e.namespace() == namespace && project(&e.spec.project_ref.name))
        .map(|e| ObjectRef::from_obj(&*e))
        .collect()
}

fn object_key(env: &Environment) -> String {
    context::object_key(KIND, env)
}

async fn reconcile(env: Arc<Environment>, ctx: Arc<Context>) -> Result<Action, Error> {
    finalized(&ctx, KIND, env, |event| async {
        match event {
            Finalizer::Apply(env) => {
                let applied = apply(&env, &ctx).await;
                // A conflict (the watch cache a step behind) is retried at once.
                if applied
                    .as_ref()
                    .is_err_and(|e| !matches!(e, Error::Conflict(_) | Error::Leases { .. }))
                {
                    behind(&env, &ctx);
                }
                applied
            }
            Finalizer::Cleanup(env) => cleanup(&env, &ctx).await,
        }
    })
    .await
}

fn error_policy(env: Arc<Environment>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut cap = env
        .refresh_interval()
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(300));
    // A lease due for renewal is not kept waiting by the backoff.
    if let Some(due) = env
        .status
        .as_ref()
        .and_then(|s| dynamic::next_wake(s, Timestamp::now()))
    {
        cap = cap.min(due.max(Duration::from_secs(1)));
    }
    context::retry(&ctx, KIND, &*env, error, cap)
}

/// One pass: observe what exists, decide what to do, do it, write the status.
async fn apply(env: &Environment, ctx: &Context) -> Result<Action, Error> {
    let observed = observe(env, ctx).await?;
    let mut plan = decide(&observed, &ctx.hash_key, Timestamp::now());
    let acted = match &observed.stage {
        Stage::Read(read) => act::act(env, read, &plan.actions, ctx).await,
        // Nothing to do before coffer-server is reached.
        _ => Ok(act::Acted::default()),
    };
    let then = match acted {
        Ok(acted) => {
            if let Some(restarted) = acted.restarted {
                plan.status.restarted_workloads = restarted;
            }
            plan.then
        }
        Err(Failure::Halt(halt)) => {
            let sync_mode = plan.status.sync_mode;
            plan.status = decide::halted(env, halt.clone(), false, Timestamp::now());
            plan.status.sync_mode = sync_mode;
            Then::Halt(halt)
        }
        Err(Failure::Unread(halt)) => {
            let sync_mode = plan.status.sync_mode;
            plan.status = decide::halted(env, halt.clone(), true, Timestamp::now());
            plan.status.sync_mode = sync_mode;
            Then::Halt(halt)
        }
        Err(Failure::Error(e)) => return Err(e),
    };
    // The dynamic secrets, once coffer-server is reached and the spec is valid.
    let leases = match &observed.stage {
        Stage::Read(read) if dynamic::validate(env).is_ok() => {
            let place = dynamic::Place {
                connection: &read.connection,
                source: &read.source,
            };
            Some(dynamic::reconcile(env, &place, ctx, &mut plan.status).await?)
        }
        _ => None,
    };
    status::write(ctx, env, &plan.status, "Sync").await?;
    let wake = leases.as_ref().and_then(|l| l.wake);
    let soonest = |delay: Duration| wake.map_or(delay, |wake| wake.min(delay));
    let failed = leases.and_then(|l| l.failure).filter(|f| f.transient);
    match then {
        Then::Synced { interval } => {
            let (namespace, name) = (env.namespace().unwrap_or_default(), env.name_any());
            ctx.metrics.in_sync(&namespace, &name, Timestamp::now());
            if let Some(failure) = failed {
                return Err(failure.into_error());
            }
            ctx.succeeded(&object_key(env));
            Ok(Action::requeue(soonest(context::jittered(interval))))
        }
        Then::Halt(halt) => {
            // A step of a sync that goes on at once says nothing of the data yet.
            if halt.requeue != Requeue::Now {
                behind(env, ctx);
            }
            match halt.requeue {
                Requeue::AwaitChange => Ok(wake.map_or_else(Action::await_change, Action::requeue)),
                Requeue::After(delay) => Ok(Action::requeue(soonest(context::jittered(delay)))),
                Requeue::Now | Requeue::Backoff => halt.action(),
            }
        }
    }
}

/// A pass over `env` did not confirm its Secret: the sync lag counts from the last that did.
fn behind(env: &Environment, ctx: &Context) {
    let last_sync = env.status.as_ref().and_then(|s| s.last_sync_time.as_ref());
    ctx.metrics.behind(
        &env.namespace().unwrap_or_default(),
        &env.name_any(),
        last_sync.map(|t| t.0),
        Timestamp::now(),
    );
}

/// The `Environment` is being deleted: its Secret (and the one of its previous
/// `secretName`, if that was not cleaned up yet) is cleaned up by [`build::retire`]: with
/// `Retain` it stays (it has no owner reference of ours, unless the policy changed since the
/// last pass: then it is released from it here); with `Delete` it goes; merged keys
/// (`creationPolicy: Merge`) are removed from a Secret that stays.
async fn cleanup(env: &Environment, ctx: &Context) -> Result<Action, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    revoke_leases(env, ctx).await?;
    let secret_name = env.secret_name();
    let previous = env
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .filter(|p| *p != secret_name);
    for name in std::iter::once(secret_name).chain(previous) {
        act::retire(&secrets, env, &name).await?;
        let secret = ObjectRef::<Secret>::new(&name).within(&namespace);
        ctx.stores.secrets.forget(&secret);
    }
    ctx.sources.forget_reader(&ObjectRef::from_obj(env));
    ctx.forget(&object_key(env), env.metadata.uid.as_deref());
    ctx.metrics.forget_object(&namespace, &env.name_any());
    Ok(Action::await_change())
}

/// How long the cleanup of a deleted `Environment` keeps trying to revoke its leases before it
/// lets the resource go (the leases then end at their expiry, by coffer-server's reaper).
const REVOKE_DEADLINE: Duration = Duration::from_secs(600);

/// The `Environment` is being deleted: revokes the leases of its dynamic secrets and deletes
/// their Secrets. A failure keeps the finalizer (retried with backoff) until
/// [`REVOKE_DEADLINE`]; without a `Project` to reach coffer-server with, it gives up at once.
/// Either way a Warning event says so.
async fn revoke_leases(env: &Environment, ctx: &Context) -> Result<(), Error> {
    let Some(entries) = env
        .status
        .as_ref()
        .map(|s| &s.dynamic_secrets)
        .filter(|e| !e.is_empty())
    else {
        return Ok(());
    };
    let namespace = env.namespace().unwrap_or_default();
    let give_up = |why: String| async move {
        let note = format!(
            "the leases of spec.dynamicSecrets were not revoked: {why}; they end at their expiry"
        );
        act::event(ctx, env, true, "LeasesNotRevoked", "Revoke", note).await;
    };
    let overdue = env
        .metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|since| {
            Duration::try_from(Timestamp::now().duration_since(since.0))
                .is_ok_and(|waited| waited >= REVOKE_DEADLINE)
        });
    stores::ready(&ctx.stores.projects, "Project resources").await?;
    let project_ref = ObjectRef::<Project>::new(&env.spec.project_ref.name).within(&namespace);
    let Some(project) = ctx.stores.projects.get(&project_ref) else {
        give_up(format!(
            "there is no Project {:?} to reach coffer-server with",
            env.spec.project_ref.name
        ))
        .await;
        return delete_dynamic_secrets(env, ctx, entries).await;
    };
    let connection = match ctx.connection(&project).await {
        Ok(connection) => connection,
        Err(e) if overdue => {
            give_up(e.message).await;
            return delete_dynamic_secrets(env, ctx, entries).await;
        }
        Err(e) => {
            return Err(Error::Leases {
                reason: e.reason,
                message: e.message,
                retry_after: None,
            });
        }
    };
    let source = connection.source(
        &project.spec.organization,
        &project.project_slug(),
        &env.spec.environment,
    );
    let place = dynamic::Place {
        connection: &connection,
        source: &source,
    };
    match dynamic::revoke_on_delete(env, &place, ctx).await {
        Ok(_) => {
            let note = "revoked the leases of spec.dynamicSecrets".to_owned();
            act::event(ctx, env, false, "LeaseRevoked", "Revoke", note).await;
        }
        Err(failure) if overdue => give_up(failure.message).await,
        Err(failure) => return Err(failure.into_error()),
    }
    delete_dynamic_secrets(env, ctx, entries).await
}

/// Deletes the Secrets (ours) that `entries` wrote.
async fn delete_dynamic_secrets(
    env: &Environment,
    ctx: &Context,
    entries: &[crate::crd::DynamicSecretStatus],
) -> Result<(), Error> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut names: Vec<&String> = Vec::new();
    for entry in entries {
        names.extend(&entry.secret_name);
        for retiring in &entry.retiring {
            names.extend(&retiring.secret_name);
        }
    }
    for name in names {
        if let Some(current) = secrets.get_opt(name).await?
            && build::ownership(&current, env) == build::Ownership::Owned
        {
            act::delete_owned(&secrets, &current).await?;
        }
    }
    Ok(())
}
