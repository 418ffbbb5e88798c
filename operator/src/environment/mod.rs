//! The `Environment` controller: keeps a Secret equal to an environment of coffer-server.
//!
//! A pass observes what exists ([`observe`]), decides without a client what to do about it
//! ([`decide`], with [`build`] saying what the Secret should be), does it ([`act`], with
//! [`rollout`] restarting the workloads that use the Secret when its data changes) and writes
//! the status ([`crate::status`]).

mod act;
pub mod build;
pub mod decide;
mod observe;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt as _, predicates, watcher};
use kube::{Api, ResourceExt as _};
use tokio::sync::mpsc;

use crate::context::{self, Context, Error, Requeue, drain, finalized, spec_changes};
use crate::crd::{Environment, Project};
use crate::status;
use act::Failure;
use build::{ENVIRONMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use decide::{Stage, Then, decide};
use observe::observe;

/// Set (to any new value, e.g. a timestamp) to make the operator fetch from coffer-server now.
pub const REFRESH_ANNOTATION: &str = "coffer.dev/refresh-at";
const KIND: &str = "Environment";

/// Runs the controller over `api` (until the future is dropped).
pub async fn run(
    ctx: Arc<Context>,
    api: Api<Environment>,
    secrets: Api<PartialObjectMeta<Secret>>,
    projects: Api<Project>,
    changed: mpsc::UnboundedReceiver<ObjectRef<Environment>>,
) {
    let (reader, writer) = reflector::store();
    // Spec edits, the refresh-at annotation and finalizers wake it; its own status writes don't.
    let envs = spec_changes(api, writer);
    // Only metadata of our Secrets: enough to notice edits and deletions, no secret data
    // in the operator's memory. A Secret is mapped to its Environment by our labels, not by an
    // owner reference: under `deletionPolicy: Retain` it has none (see `build::desired_secret`).
    let owned = watcher(
        secrets,
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
    )
    .default_backoff()
    .touched_objects();
    let store = reader.clone();
    let project_changes = watcher(projects, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::generation, Default::default());
    let changed =
        futures::stream::unfold(
            changed,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        );
    let results = Controller::for_stream(envs, reader)
        .watches_stream(owned, |secret: PartialObjectMeta<Secret>| {
            let namespace = secret.namespace();
            secret
                .labels()
                .get(ENVIRONMENT_LABEL)
                .zip(namespace)
                .map(|(name, ns)| ObjectRef::<Environment>::new(name).within(&ns))
        })
        .watches_stream(project_changes, move |project: Project| {
            let namespace = project.namespace();
            let name = project.name_any();
            store
                .state()
                .into_iter()
                .filter(|e| e.namespace() == namespace && e.spec.project_ref.name == name)
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .reconcile_on(changed)
        .run(reconcile, error_policy, ctx);
    drain(results).await;
}

fn object_key(env: &Environment) -> String {
    context::object_key(KIND, env)
}

async fn reconcile(env: Arc<Environment>, ctx: Arc<Context>) -> Result<Action, Error> {
    finalized(&ctx, KIND, env, |event| async {
        match event {
            Finalizer::Apply(env) => apply(&env, &ctx).await,
            Finalizer::Cleanup(env) => cleanup(&env, &ctx).await,
        }
    })
    .await
}

fn error_policy(env: Arc<Environment>, error: &Error, ctx: Arc<Context>) -> Action {
    let cap = env
        .refresh_interval()
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(300));
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
            plan.status = decide::halted(env, halt.clone(), false, Timestamp::now());
            Then::Halt(halt)
        }
        Err(Failure::Unread(halt)) => {
            plan.status = decide::halted(env, halt.clone(), true, Timestamp::now());
            Then::Halt(halt)
        }
        Err(Failure::Error(e)) => return Err(e),
    };
    status::write(ctx, env, &plan.status, "Sync").await?;
    let (namespace, name) = (env.namespace().unwrap_or_default(), env.name_any());
    match then {
        Then::Synced { interval } => {
            ctx.succeeded(&object_key(env));
            ctx.metrics.set_sync_lag(&namespace, &name, Duration::ZERO);
            Ok(Action::requeue(interval))
        }
        Then::Halt(halt) => {
            let unread = matches!(&observed.stage, Stage::Read(read) if read.data.is_err());
            if unread && halt.requeue == Requeue::Backoff {
                if let Some(last) = env.status.as_ref().and_then(|s| s.last_sync_time.as_ref()) {
                    let lag = Timestamp::now().duration_since(last.0);
                    let lag = Duration::try_from(lag).unwrap_or_default();
                    ctx.metrics.set_sync_lag(&namespace, &name, lag);
                }
            }
            halt.action()
        }
    }
}

/// The `Environment` is being deleted: its Secret (and the one of its previous
/// `secretName`, if that was not cleaned up yet) is cleaned up by [`build::retire`]: with
/// `Retain` it stays (it has no owner reference of ours, unless the policy changed since the
/// last pass: then it is released from it here); with `Delete` it goes; merged keys
/// (`creationPolicy: Merge`) are removed from a Secret that stays.
async fn cleanup(env: &Environment, ctx: &Context) -> Result<Action, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secret_name = env.secret_name();
    let previous = env
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .filter(|p| *p != secret_name);
    for name in std::iter::once(secret_name).chain(previous) {
        act::retire(&secrets, env, &name).await?;
    }
    ctx.sources.forget_reader(&ObjectRef::from_obj(env));
    ctx.forget(&object_key(env), env.metadata.uid.as_deref());
    ctx.metrics.forget_object(&namespace, &env.name_any());
    Ok(Action::await_change())
}
