//! The `Environment` controller: keeps a Secret equal to an environment of coffer-server.
//! [`build`] decides, without a client, what the Secret should be; [`rollout`] restarts the
//! workloads that use it when its data changes.

pub mod build;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use coffer_client::CreateEnvironmentRequest;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt as _, predicates, watcher};
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;
use tokio::sync::mpsc;

use crate::conditions::{self, Reason};
use crate::context::{
    self, Context, Error, drain, finalized, patch_params, post_params, spec_changes,
};
use crate::crd::{
    CONDITION_READY, CONDITION_SYNCED, DeletionPolicy, Environment, EnvironmentStatus, Project,
};
use crate::credentials::ConnectionError;
use crate::source::{FetchError, Missing};
use build::{MANAGED_BY, MANAGED_BY_LABEL, Ownership, Update};

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
    // in the operator's memory.
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
        .owns_stream(owned)
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

/// The status being built for one reconciliation, written once at the end if it changed.
struct Outcome<'a> {
    env: &'a Environment,
    status: EnvironmentStatus,
}

impl<'a> Outcome<'a> {
    fn new(env: &'a Environment) -> Self {
        let mut status = env.status.clone().unwrap_or_default();
        status.observed_generation = env.metadata.generation;
        Self { env, status }
    }

    fn ready(&mut self, ok: bool, reason: Reason, message: impl Into<String>) {
        let generation = self.env.metadata.generation;
        conditions::set(
            &mut self.status.conditions,
            CONDITION_READY,
            ok,
            reason,
            message,
            generation,
        );
    }

    fn synced(&mut self, ok: bool, reason: Reason, message: impl Into<String>) {
        let generation = self.env.metadata.generation;
        conditions::set(
            &mut self.status.conditions,
            CONDITION_SYNCED,
            ok,
            reason,
            message,
            generation,
        );
    }

    /// Writes the status if it changed, and reports a newly entered failure as a Warning
    /// event (once per transition, not per retry).
    async fn save(self, ctx: &Context) -> Result<(), Error> {
        let before = self.env.status.clone().unwrap_or_default();
        if before == self.status {
            return Ok(());
        }
        let was = conditions::reason_of(&before.conditions, CONDITION_READY).map(str::to_owned);
        let ready = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .cloned();
        let api: Api<Environment> =
            Api::namespaced(ctx.kube.clone(), &self.env.namespace().unwrap_or_default());
        api.patch_status(
            &self.env.name_any(),
            &patch_params(),
            &Patch::Merge(json!({ "status": self.status })),
        )
        .await?;
        if let Some(ready) = ready {
            if ready.status == "False" && was.as_deref() != Some(ready.reason.as_str()) {
                ctx.event(
                    &self.env.object_ref(&()),
                    true,
                    &ready.reason,
                    "Sync",
                    ready.message,
                )
                .await;
            }
        }
        Ok(())
    }
}

async fn apply(env: &Environment, ctx: &Context) -> Result<Action, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let mut out = Outcome::new(env);

    // The spec.
    let interval = match env.refresh_interval() {
        Ok(interval) => interval,
        Err(e) => {
            out.ready(false, Reason::InvalidSpec, format!("spec.sync.{e}"));
            out.save(ctx).await?;
            return Ok(Action::await_change());
        }
    };
    let invalid = if env.spec.project_ref.name.is_empty() {
        Some("spec.projectRef.name is empty")
    } else if env.spec.environment.is_empty() {
        Some("spec.environment is empty")
    } else {
        None
    };
    if let Some(message) = invalid {
        out.ready(false, Reason::InvalidSpec, message);
        out.save(ctx).await?;
        return Ok(Action::await_change());
    }

    // The Project it belongs to, and how to reach coffer-server.
    let projects: Api<Project> = Api::namespaced(ctx.kube.clone(), &namespace);
    let Some(project) = projects.get_opt(&env.spec.project_ref.name).await? else {
        out.ready(
            false,
            Reason::ProjectRefNotFound,
            format!(
                "spec.projectRef: there is no Project {:?} in namespace {namespace:?}",
                env.spec.project_ref.name
            ),
        );
        out.save(ctx).await?;
        // The Project watch wakes this resource when the Project appears.
        return Ok(Action::await_change());
    };
    let conn = match ctx.connection(&project).await {
        Ok(conn) => conn,
        Err(ConnectionError { reason, message }) => {
            out.ready(
                false,
                reason,
                format!("Project {:?}: {message}", project.name_any()),
            );
            out.save(ctx).await?;
            return Ok(Action::requeue(interval));
        }
    };
    let org = project.spec.organization.clone();
    let project_slug = project.project_slug();
    let key = conn.source(&org, &project_slug, &env.spec.environment);
    let place = format!("{org}/{project_slug}/{}", env.spec.environment);

    // The environment's secrets.
    let reader = ObjectRef::from_obj(env);
    let force = ctx.take_refresh(
        env.metadata.uid.as_deref().unwrap_or_default(),
        env.annotations()
            .get(REFRESH_ANNOTATION)
            .map(String::as_str),
    );
    let mut fetched = ctx
        .sources
        .snapshot(&key, &conn.client, interval, force, &reader)
        .await;
    if let Err(e) = &fetched {
        match e.missing {
            Some(Missing::Environment) if env.spec.create => {
                let request = CreateEnvironmentRequest {
                    slug: env.spec.environment.clone(),
                    name: None,
                };
                if let Err(e) = conn
                    .client
                    .create_environment(&org, &project_slug, &request)
                    .await
                {
                    return upstream_failure(out, ctx, &FetchError::from(&e), &place, env).await;
                }
                ctx.event(
                    &env.object_ref(&()),
                    false,
                    Reason::EnvironmentCreated.as_str(),
                    "Create",
                    format!("created environment {place} in coffer-server"),
                )
                .await;
                ctx.sources.invalidate(&key).await;
                fetched = ctx
                    .sources
                    .snapshot(&key, &conn.client, interval, true, &reader)
                    .await;
            }
            Some(Missing::Environment) => {
                return environment_gone(out, ctx, env, &place, interval).await;
            }
            Some(Missing::Project) => {
                out.ready(false, Reason::ProjectNotFound, e.to_string());
                out.save(ctx).await?;
                return Ok(Action::requeue(interval));
            }
            None => {}
        }
    }
    let snapshot = match fetched {
        Ok(snapshot) => snapshot,
        Err(e) => return upstream_failure(out, ctx, &e, &place, env).await,
    };

    // The Secret.
    let desired = build::desired_secret(env, &snapshot.values, &ctx.hash_key);
    let secret_name = env.secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let current = secrets.get_opt(&secret_name).await?;
    if current
        .as_ref()
        .is_some_and(|c| build::ownership(c, env) == Ownership::Foreign)
    {
        let message = format!(
            "Secret {secret_name:?} exists and is not managed by this Environment; \
             it was left untouched (delete it, or choose another spec.sync.secretName)"
        );
        out.ready(false, Reason::SecretNotOwned, message.clone());
        out.synced(false, Reason::SecretNotOwned, message);
        out.save(ctx).await?;
        return Ok(Action::requeue(interval));
    }
    let wrote = match write_secret(&secrets, current, &desired.secret).await {
        Ok(wrote) => wrote,
        // The API server refuses what the spec asks for (a bad name, label or type).
        Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
            out.ready(
                false,
                Reason::InvalidSpec,
                format!("Kubernetes refused Secret {secret_name:?}: {}", e.message),
            );
            out.save(ctx).await?;
            return Ok(Action::requeue(interval));
        }
        Err(e) => {
            let error = Error::from(e);
            if !matches!(error, Error::Conflict(_)) {
                out.ready(
                    false,
                    Reason::KubernetesError,
                    format!("writing Secret {secret_name:?} failed: {error}"),
                );
                out.save(ctx).await?;
            }
            return Err(error);
        }
    };

    // Restart the workloads when the data changed since the last sync (not on the first one,
    // not after an operator restart: the previous hash is in the status).
    let previous_hash = out.status.secret_hash.clone();
    let data_changed = previous_hash.as_deref().is_some_and(|h| h != desired.hash);
    if data_changed {
        let restarts = rollout::restart(&ctx.kube, env, &secret_name, &desired.hash).await?;
        if !restarts.missing.is_empty() {
            ctx.event(
                &env.object_ref(&()),
                true,
                "RolloutTargetNotFound",
                "Restart",
                format!(
                    "spec.sync.rolloutRestart: not found: {}",
                    restarts.missing.join(", ")
                ),
            )
            .await;
        }
        if !restarts.restarted.is_empty() {
            ctx.event(
                &env.object_ref(&()),
                false,
                "RolloutRestarted",
                "Restart",
                format!("restarted {}", restarts.restarted.join(", ")),
            )
            .await;
        }
        out.status.restarted_workloads = restarts.restarted;
    }

    let moved = out.status.revision != Some(snapshot.revision)
        || previous_hash.as_deref() != Some(desired.hash.as_str());
    if wrote || moved || out.status.last_sync_time.is_none() {
        out.status.last_sync_time = Some(Time(Timestamp::now()));
    }
    out.status.revision = Some(snapshot.revision);
    out.status.secret_hash = Some(desired.hash);
    out.status.synced_keys = Some(i64::try_from(desired.keys).unwrap_or(i64::MAX));
    let message = format!(
        "Secret {secret_name:?} holds {} key(s) of {place} at revision {}",
        desired.keys, snapshot.revision
    );
    out.ready(true, Reason::Synced, message.clone());
    out.synced(true, Reason::Synced, message.clone());
    out.save(ctx).await?;
    if wrote {
        ctx.event(&env.object_ref(&()), false, "Synced", "Sync", message)
            .await;
    }
    ctx.succeeded(&object_key(env));
    ctx.metrics
        .set_sync_lag(&namespace, &env.name_any(), Duration::ZERO);
    Ok(Action::requeue(interval))
}

/// Makes the Secret `desired` exist as given, starting from `current` (absent, or ours).
/// Returns whether anything was written.
async fn write_secret(
    secrets: &Api<Secret>,
    current: Option<Secret>,
    desired: &Secret,
) -> Result<bool, kube::Error> {
    let post = post_params();
    let Some(current) = current else {
        secrets.create(&post, desired).await?;
        return Ok(true);
    };
    match build::update(&current, desired) {
        Update::None => Ok(false),
        Update::Replace(next) => {
            secrets.replace(&current.name_any(), &post, &next).await?;
            Ok(true)
        }
        Update::Recreate => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: current.metadata.uid.clone(),
                    resource_version: current.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            secrets.delete(&current.name_any(), &params).await?;
            secrets.create(&post, desired).await?;
            Ok(true)
        }
    }
}

/// coffer-server failed: the Secret keeps its last good data; the status says why and the
/// controller retries with backoff.
async fn upstream_failure(
    mut out: Outcome<'_>,
    ctx: &Context,
    error: &FetchError,
    place: &str,
    env: &Environment,
) -> Result<Action, Error> {
    let reason = error.reason;
    let message = format!(
        "reading {place} from coffer-server failed: {error}; the Secret keeps its last synced data"
    );
    out.ready(false, reason, message.clone());
    out.save(ctx).await?;
    if let Some(last) = env.status.as_ref().and_then(|s| s.last_sync_time.as_ref()) {
        let lag = Timestamp::now().duration_since(last.0);
        ctx.metrics.set_sync_lag(
            &env.namespace().unwrap_or_default(),
            &env.name_any(),
            Duration::try_from(lag).unwrap_or_default(),
        );
    }
    Err(Error::Upstream { reason, message })
}

/// coffer-server confirmed the environment does not exist (the project does). With
/// `deletionPolicy: Delete` the Secret goes; otherwise it stays as it was.
async fn environment_gone(
    mut out: Outcome<'_>,
    ctx: &Context,
    env: &Environment,
    place: &str,
    interval: Duration,
) -> Result<Action, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secret_name = env.secret_name();
    let mut message = format!("coffer-server has no environment {place}");
    if env.spec.sync.deletion_policy == DeletionPolicy::Delete {
        if let Some(current) = secrets.get_opt(&secret_name).await? {
            if build::ownership(&current, env) == Ownership::Owned {
                delete_owned(&secrets, &current).await?;
                ctx.event(
                    &env.object_ref(&()),
                    false,
                    Reason::SecretDeleted.as_str(),
                    "Delete",
                    format!("{message}: deleted Secret {secret_name:?} (deletionPolicy Delete)"),
                )
                .await;
            }
        }
        out.synced(
            false,
            Reason::SecretDeleted,
            format!("{message}; the Secret was deleted"),
        );
        out.status.revision = None;
        out.status.secret_hash = None;
        out.status.synced_keys = None;
    } else {
        message.push_str("; the Secret keeps its last synced data (deletionPolicy Retain)");
    }
    out.ready(false, Reason::EnvironmentNotFound, message);
    out.save(ctx).await?;
    Ok(Action::requeue(interval))
}

async fn delete_owned(secrets: &Api<Secret>, current: &Secret) -> Result<(), Error> {
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

/// The `Environment` is being deleted: with `Retain` the Secret stays, released from our
/// owner reference (so the garbage collector leaves it); with `Delete` it goes.
async fn cleanup(env: &Environment, ctx: &Context) -> Result<Action, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secret_name = env.secret_name();
    if let Some(current) = secrets.get_opt(&secret_name).await? {
        if build::ownership(&current, env) == Ownership::Owned {
            match env.spec.sync.deletion_policy {
                DeletionPolicy::Delete => delete_owned(&secrets, &current).await?,
                DeletionPolicy::Retain => {
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
                        .patch(&secret_name, &patch_params(), &Patch::Merge(&patch))
                        .await?;
                }
            }
        }
    }
    ctx.sources.forget_reader(&ObjectRef::from_obj(env));
    ctx.forget(&object_key(env), env.metadata.uid.as_deref());
    ctx.metrics.forget_object(&namespace, &env.name_any());
    Ok(Action::await_change())
}
