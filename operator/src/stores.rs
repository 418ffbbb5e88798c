//! What the controllers read from Kubernetes on every pass, kept in memory by watches instead of
//! fetched per pass: the `Project` resources, the credentials Secrets (only those labelled
//! [`CREDENTIALS_LABEL`]), and the workloads a rollout may restart (pruned to what a rollout
//! needs to know). At 1,000 `Environment` resources this is the difference between thousands
//! of requests to the API server per refresh interval and none.
//!
//! A store answers only once its first list arrived ([`ready`]); until then a pass waits (at
//! most [`READY_TIMEOUT`], then it fails and is retried), so an empty store is never taken for
//! "does not exist".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, PodSpec, PodTemplateSpec, Secret, Volume,
};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;

use crate::context::{Error, reported};
use crate::crd::Project;
use crate::credentials::CREDENTIALS_LABEL;
use crate::environment::build::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::metrics::Metrics;

/// How long a pass waits for a store's first list before it fails (and is retried).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The stores of one watched scope (every namespace, or one of `COFFER_NAMESPACES`).
#[derive(Debug, Clone)]
pub struct Stores {
    pub projects: Store<Project>,
    /// Metadata of the Secrets this operator manages (labelled as such).
    pub owned: Store<PartialObjectMeta<Secret>>,
    /// The last full read of each of those Secrets.
    pub secrets: SecretCache,
    /// Secrets labelled [`CREDENTIALS_LABEL`]`=true`, without their managed fields.
    pub credentials: Store<Secret>,
    pub workloads: Workloads,
}

/// The writing ends of the stores that the `Environment` controller fills (its watches of
/// Projects and credentials Secrets also wake the resources that depend on them).
#[derive(Debug)]
pub struct Writers {
    pub projects: Writer<Project>,
    pub owned: Writer<PartialObjectMeta<Secret>>,
    pub credentials: Writer<Secret>,
}

/// The workloads of the scope, pruned by [`prune_template`]: names, annotations, and which
/// Secrets their pods read.
#[derive(Debug, Clone)]
pub struct Workloads {
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
}

/// The writing ends of [`Workloads`], filled by [`WorkloadWriters::run`].
#[derive(Debug)]
pub struct WorkloadWriters {
    deployments: Writer<Deployment>,
    stateful_sets: Writer<StatefulSet>,
    daemon_sets: Writer<DaemonSet>,
}

impl Stores {
    /// Empty stores, and the writers that fill them.
    pub fn new() -> (Self, Writers, WorkloadWriters) {
        let (projects, projects_writer) = reflector::store();
        let (owned, owned_writer) = reflector::store();
        let (credentials, credentials_writer) = reflector::store();
        let (deployments, deployments_writer) = reflector::store();
        let (stateful_sets, stateful_sets_writer) = reflector::store();
        let (daemon_sets, daemon_sets_writer) = reflector::store();
        let stores = Self {
            projects,
            owned,
            secrets: SecretCache::default(),
            credentials,
            workloads: Workloads {
                deployments,
                stateful_sets,
                daemon_sets,
            },
        };
        let writers = Writers {
            projects: projects_writer,
            owned: owned_writer,
            credentials: credentials_writer,
        };
        let workload_writers = WorkloadWriters {
            deployments: deployments_writer,
            stateful_sets: stateful_sets_writer,
            daemon_sets: daemon_sets_writer,
        };
        (stores, writers, workload_writers)
    }
}

impl Stores {
    /// The Secret `name` of `namespace`: from [`SecretCache`] when the metadata watch shows it
    /// unchanged since it was last read (the same `resourceVersion`), else read from the API
    /// server. An idle pass thus costs the API server nothing, and a Secret edited by hand is
    /// read afresh as soon as the watch shows the edit.
    pub async fn secret(
        &self,
        kube: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Secret>, kube::Error> {
        let key = ObjectRef::<Secret>::new(name).within(namespace);
        let meta_key = ObjectRef::<PartialObjectMeta<Secret>>::new(name).within(namespace);
        let seen = self
            .owned
            .get(&meta_key)
            .and_then(|meta| meta.metadata.resource_version.clone());
        if let Some(cached) = seen.and_then(|rv| self.secrets.get(&key, &rv)) {
            return Ok(Some(cached));
        }
        let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
        let read = api.get_opt(name).await?;
        match &read {
            Some(secret) if managed(secret.labels()) => self.secrets.put(key, secret),
            _ => self.secrets.forget(&key),
        }
        Ok(read)
    }
}

/// Whether `labels` mark a Secret as written by this operator.
fn managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// The last full read of each Secret the operator manages, by `resourceVersion`. Holds no more
/// than the Secrets of the `Environment` resources (at most [`MAX_CACHED_SECRETS`]); its Debug
/// output shows no data.
#[derive(Clone, Default)]
pub struct SecretCache(Arc<Mutex<HashMap<ObjectRef<Secret>, Arc<Secret>>>>);

/// Beyond this many cached Secrets the cache starts again.
const MAX_CACHED_SECRETS: usize = 20_000;

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("SecretCache").field("secrets", &n).finish()
    }
}

impl SecretCache {
    fn get(&self, key: &ObjectRef<Secret>, resource_version: &str) -> Option<Secret> {
        let cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = cache.get(key)?;
        (cached.metadata.resource_version.as_deref() == Some(resource_version))
            .then(|| Secret::clone(cached))
    }

    fn put(&self, key: ObjectRef<Secret>, secret: &Secret) {
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_SECRETS && !cache.contains_key(&key) {
            cache.clear();
        }
        let mut secret = secret.clone();
        secret.metadata.managed_fields = None;
        cache.insert(key, Arc::new(secret));
    }

    /// Drops what is kept of the Secret `key` (gone, or no longer the operator's).
    pub fn forget(&self, key: &ObjectRef<Secret>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// Metadata of the Secrets this operator manages, kept in `writer`; yields each one that
/// changed (or went), to wake its `Environment`.
pub fn owned(
    api: Api<PartialObjectMeta<Secret>>,
    writer: Writer<PartialObjectMeta<Secret>>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    labelled(
        api,
        format!("{MANAGED_BY_LABEL}={MANAGED_BY}"),
        writer,
        metrics,
    )
}

/// Waits until `store` holds its first list, at most [`READY_TIMEOUT`].
pub async fn ready<K>(store: &Store<K>, what: &'static str) -> Result<(), Error>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Error::NotReady(what)),
    }
}

/// The credentials Secrets of `api`, without managed fields, kept in `writer`; yields each one
/// that changed (or went), to wake what uses it.
pub fn credentials(
    api: Api<Secret>,
    writer: Writer<Secret>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static {
    labelled(api, format!("{CREDENTIALS_LABEL}=true"), writer, metrics)
}

/// The objects of `api` matching `selector`, without managed fields, kept in `writer`; yields
/// each one that changed (or went). Failures of the watch are [`reported`].
fn labelled<K>(
    api: Api<K>,
    selector: String,
    writer: Writer<K>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let name = format!("{}?labelSelector={selector}", api.resource_url());
    let watch = watcher(api, watcher::Config::default().labels(&selector));
    reported(watch, metrics, name)
        .modify(|object| {
            object.managed_fields_mut().clear();
        })
        .default_backoff()
        .reflect(writer)
        .touched_objects()
}

impl WorkloadWriters {
    /// Keeps the workload stores up to date until the future is dropped.
    pub async fn run(self, kube: kube::Client, namespace: Option<String>, metrics: Arc<Metrics>) {
        let namespace = namespace.as_deref();
        futures::join!(
            fill(&kube, namespace, self.deployments, &metrics),
            fill(&kube, namespace, self.stateful_sets, &metrics),
            fill(&kube, namespace, self.daemon_sets, &metrics),
        );
    }
}

/// A workload kind a rollout can restart, and where its pod template is.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec>;
}

macro_rules! workload {
    ($kind:ty) => {
        impl Workload for $kind {
            fn template(&self) -> Option<&PodTemplateSpec> {
                self.spec.as_ref().map(|s| &s.template)
            }
            fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
                self.spec.as_mut().map(|s| &mut s.template)
            }
        }
    };
}
workload!(Deployment);
workload!(StatefulSet);
workload!(DaemonSet);

async fn fill<W: Workload>(
    kube: &kube::Client,
    namespace: Option<&str>,
    writer: Writer<W>,
    metrics: &Arc<Metrics>,
) {
    let api: Api<W> = match namespace {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    };
    let name = api.resource_url().to_owned();
    reported(
        watcher(api, watcher::Config::default()),
        metrics.clone(),
        name,
    )
    .modify(prune::<W>)
    .default_backoff()
    .reflect(writer)
    .for_each(|_| std::future::ready(()))
    .await;
}

/// Keeps of a workload only what a rollout looks at: its metadata (without managed fields), the
/// annotations of its pod template, and the Secret references of its pod spec.
fn prune<W: Workload>(workload: &mut W) {
    workload.managed_fields_mut().clear();
    if let Some(template) = workload.template_mut() {
        prune_template(template);
    }
}

/// Reduces `template` to its annotations and the parts of its pod spec that name Secrets
/// (see [`crate::environment::rollout::references_secret`]).
pub fn prune_template(template: &mut PodTemplateSpec) {
    if let Some(meta) = template.metadata.as_mut() {
        let annotations = meta.annotations.take();
        *meta = Default::default();
        meta.annotations = annotations;
    }
    let Some(spec) = template.spec.take() else {
        return;
    };
    let container = |c: Container| Container {
        name: c.name,
        env: c.env.map(|env| {
            env.into_iter()
                .filter_map(|e| {
                    let key_ref = e.value_from.and_then(|v| v.secret_key_ref)?;
                    Some(EnvVar {
                        name: e.name,
                        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                            secret_key_ref: Some(key_ref),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                })
                .collect()
        }),
        env_from: c.env_from.map(|from| {
            from.into_iter()
                .filter(|f| f.secret_ref.is_some())
                .map(|f| EnvFromSource {
                    secret_ref: f.secret_ref,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    let volume = |v: Volume| -> Option<Volume> {
        let projected = v.projected.and_then(|mut p| {
            p.sources = p.sources.map(|sources| {
                sources
                    .into_iter()
                    .filter(|s| s.secret.is_some())
                    .map(|s| k8s_openapi::api::core::v1::VolumeProjection {
                        secret: s.secret,
                        ..Default::default()
                    })
                    .collect()
            });
            p.sources
                .as_ref()
                .is_some_and(|s| !s.is_empty())
                .then_some(p)
        });
        (v.secret.is_some() || projected.is_some()).then(|| Volume {
            name: v.name,
            secret: v.secret,
            projected,
            ..Default::default()
        })
    };
    template.spec = Some(PodSpec {
        containers: spec.containers.into_iter().map(container).collect(),
        init_containers: spec
            .init_containers
            .map(|c| c.into_iter().map(container).collect()),
        volumes: spec
            .volumes
            .map(|v| v.into_iter().filter_map(volume).collect()),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::environment::rollout::references_secret;

    #[test]
    fn a_pruned_template_keeps_its_annotations_and_every_secret_reference_only() {
        let mut template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": { "labels": { "app": "web" }, "annotations": { "a": "1" } },
            "spec": {
                "containers": [{
                    "name": "app", "image": "nginx", "args": ["--big"],
                    "env": [
                        { "name": "PLAIN", "value": "not kept" },
                        { "name": "DB", "valueFrom": { "secretKeyRef": { "name": "db", "key": "URL" } } },
                        { "name": "CM", "valueFrom": { "configMapKeyRef": { "name": "c", "key": "k" } } }
                    ],
                    "envFrom": [{ "secretRef": { "name": "env" } }, { "configMapRef": { "name": "c" } }]
                }],
                "initContainers": [{ "name": "init", "envFrom": [{ "secretRef": { "name": "init" } }] }],
                "volumes": [
                    { "name": "a", "secret": { "secretName": "vol" } },
                    { "name": "b", "emptyDir": {} },
                    { "name": "c", "projected": { "sources": [
                        { "secret": { "name": "proj" } }, { "configMap": { "name": "c" } }
                    ] } },
                    { "name": "d", "projected": { "sources": [{ "configMap": { "name": "c" } }] } }
                ]
            }
        }))
        .unwrap();
        prune_template(&mut template);
        let spec = template.spec.as_ref().unwrap();
        for name in ["db", "env", "init", "vol", "proj"] {
            assert!(references_secret(spec, name), "{name}");
        }
        assert!(!references_secret(spec, "c"));
        let pruned = serde_json::to_value(&template).unwrap();
        assert_eq!(
            pruned,
            json!({
                "metadata": { "annotations": { "a": "1" } },
                "spec": {
                    "containers": [{
                        "name": "app",
                        "env": [{ "name": "DB", "valueFrom": { "secretKeyRef": { "name": "db", "key": "URL" } } }],
                        "envFrom": [{ "secretRef": { "name": "env" } }]
                    }],
                    "initContainers": [{ "name": "init", "envFrom": [{ "secretRef": { "name": "init" } }] }],
                    "volumes": [
                        { "name": "a", "secret": { "secretName": "vol" } },
                        { "name": "c", "projected": { "sources": [{ "secret": { "name": "proj" } }] } }
                    ]
                }
            })
        );
    }
}
