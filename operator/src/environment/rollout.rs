//! Rolling restarts of the workloads that use a synced Secret, by a hash annotation on their
//! pod template (the same mechanism as `kubectl rollout restart`).

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use kube::api::{ListParams, Patch};
use kube::{Api, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::context::patch_params;
use crate::crd::{Environment, WorkloadKind};

/// On a pod template: the hash of the synced data its pods were started with.
pub const SECRET_HASH_ANNOTATION: &str = "coffer.dev/secret-hash";
/// On a workload: `"true"` to be restarted when any Secret it uses is re-synced.
pub const RELOAD_ANNOTATION: &str = "coffer.dev/reload";

/// Whether pods of `spec` read the Secret `name`: through `env`, `envFrom` or a volume
/// (plain or projected), in any container.
pub fn references_secret(spec: &PodSpec, name: &str) -> bool {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let in_containers = containers.into_iter().any(|c| {
        let env = c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == name)
        });
        let env_from = c
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == name));
        env || env_from
    });
    let in_volumes = spec.volumes.iter().flatten().any(|v| {
        let plain = v
            .secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some(name));
        let projected = v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.secret.as_ref().is_some_and(|s| s.name == name))
        });
        plain || projected
    });
    in_containers || in_volumes
}

/// A workload kind the operator can restart.
trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
    const KIND: WorkloadKind;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

impl Workload for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

impl Workload for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

impl Workload for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// What a restart pass did.
#[derive(Debug, Default)]
pub struct Restarts {
    /// `Kind/name` of every workload now on `hash` (restarted now or before).
    pub restarted: Vec<String>,
    /// `rolloutRestart` targets that do not exist.
    pub missing: Vec<String>,
}

/// Puts `hash` on the pod template of every workload of `env` that uses `secret`: the
/// `rolloutRestart` targets, and the workloads annotated `coffer.dev/reload: "true"` whose
/// pods read the Secret. A template already on `hash` is left alone, so a retried pass does
/// not restart anything twice.
pub async fn restart(
    kube: &kube::Client,
    env: &Environment,
    secret: &str,
    hash: &str,
) -> Result<Restarts, kube::Error> {
    let namespace = env.namespace().unwrap_or_default();
    let mut done = Restarts::default();
    for_kind::<Deployment>(kube, &namespace, env, secret, hash, &mut done).await?;
    for_kind::<StatefulSet>(kube, &namespace, env, secret, hash, &mut done).await?;
    for_kind::<DaemonSet>(kube, &namespace, env, secret, hash, &mut done).await?;
    done.restarted.sort();
    Ok(done)
}

async fn for_kind<W: Workload>(
    kube: &kube::Client,
    namespace: &str,
    env: &Environment,
    secret: &str,
    hash: &str,
    done: &mut Restarts,
) -> Result<(), kube::Error> {
    let api: Api<W> = Api::namespaced(kube.clone(), namespace);
    let kind = kind_name(W::KIND);
    let mut names: BTreeSet<String> = BTreeSet::new();
    for target in env
        .spec
        .sync
        .rollout_restart
        .iter()
        .filter(|t| t.kind == W::KIND)
    {
        names.insert(target.name.clone());
    }
    let mut found: Vec<W> = Vec::new();
    for name in &names {
        match api.get_opt(name).await? {
            Some(w) => found.push(w),
            None => done.missing.push(format!("{kind}/{name}")),
        }
    }
    for w in api.list(&ListParams::default()).await? {
        let reload = w
            .annotations()
            .get(RELOAD_ANNOTATION)
            .is_some_and(|v| v == "true");
        let uses = w
            .template()
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|spec| references_secret(spec, secret));
        if reload && uses && !names.contains(&w.name_any()) {
            names.insert(w.name_any());
            found.push(w);
        }
    }
    for w in found {
        let current = w
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(SECRET_HASH_ANNOTATION));
        if current.map(String::as_str) != Some(hash) {
            let patch = json!({ "spec": { "template": { "metadata": { "annotations": {
                SECRET_HASH_ANNOTATION: hash
            }}}}});
            api.patch(&w.name_any(), &patch_params(), &Patch::Merge(&patch))
                .await?;
        }
        done.restarted.push(format!("{kind}/{}", w.name_any()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(spec: serde_json::Value) -> PodSpec {
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn a_pod_reads_a_secret_through_env_env_from_and_volumes() {
        let by_env = pod(json!({ "containers": [{ "name": "app", "env": [
            { "name": "X", "value": "plain" },
            { "name": "DB", "valueFrom": { "secretKeyRef": { "name": "db", "key": "URL" } } }
        ]}]}));
        let by_env_from = pod(
            json!({ "containers": [{ "name": "app" }], "initContainers": [
                { "name": "init", "envFrom": [{ "secretRef": { "name": "db" } }] }
            ]}),
        );
        let by_volume = pod(json!({ "containers": [{ "name": "app" }], "volumes": [
            { "name": "v", "secret": { "secretName": "db" } }
        ]}));
        let by_projection = pod(json!({ "containers": [{ "name": "app" }], "volumes": [
            { "name": "v", "projected": { "sources": [{ "secret": { "name": "db" } }] } }
        ]}));
        for spec in [&by_env, &by_env_from, &by_volume, &by_projection] {
            assert!(references_secret(spec, "db"), "{spec:?}");
            assert!(!references_secret(spec, "other"), "{spec:?}");
        }
        let config_map_only = pod(json!({ "containers": [{ "name": "app", "envFrom": [
            { "configMapRef": { "name": "db" } }
        ]}]}));
        assert!(!references_secret(&config_map_only, "db"));
    }
}
