//! Rolling restarts of the workloads that use a synced Secret, by a hash annotation on their
//! pod template (the same mechanism as `kubectl rollout restart`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::PodSpec;
use kube::api::Patch;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt as _};
use serde_json::json;

use crate::context::{Error, patch_params};
use crate::crd::{Environment, RolloutTarget, WorkloadKind};
use crate::stores::{self, Workload, Workloads};

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
    /// `rolloutRestart` targets that neither read the Secret nor are annotated
    /// `coffer.dev/reload: "true"`: not restarted.
    pub refused: Vec<String>,
}

/// Puts `hash` on the pod template of every workload of `env` that uses `secret`: the
/// `targets` (a `rolloutRestart` list of `env`) that read the Secret or opted in with `coffer.dev/reload: "true"`,
/// and the workloads annotated `coffer.dev/reload: "true"` whose pods read the Secret. So an
/// `Environment` can restart only workloads that use its Secret or agreed to it, never any
/// workload of the namespace it names. A template already on `hash` is left alone, so a
/// retried pass does not restart anything twice. The workloads are looked up in `workloads`
/// (kept by a watch), not listed.
pub async fn restart(
    kube: &kube::Client,
    workloads: &Workloads,
    env: &Environment,
    targets: &[RolloutTarget],
    secret: &str,
    hash: &str,
) -> Result<Restarts, Error> {
    let pass = Pass {
        kube,
        namespace: env.namespace().unwrap_or_default(),
        targets,
        secret,
        hash,
    };
    let mut done = Restarts::default();
    pass.restart(&workloads.deployments, WorkloadKind::Deployment, &mut done)
        .await?;
    pass.restart(
        &workloads.stateful_sets,
        WorkloadKind::StatefulSet,
        &mut done,
    )
    .await?;
    pass.restart(&workloads.daemon_sets, WorkloadKind::DaemonSet, &mut done)
        .await?;
    done.restarted.sort();
    Ok(done)
}

/// One restart pass: the `Environment`, its Secret and the new hash.
struct Pass<'a> {
    kube: &'a kube::Client,
    namespace: String,
    targets: &'a [RolloutTarget],
    secret: &'a str,
    hash: &'a str,
}

/// Whether a workload may be restarted for `secret`, and whether it asked to be.
fn standing(workload: &impl Workload, secret: &str) -> (bool, bool) {
    let reload = workload
        .annotations()
        .get(RELOAD_ANNOTATION)
        .is_some_and(|v| v == "true");
    let uses = workload
        .template()
        .and_then(|t| t.spec.as_ref())
        .is_some_and(|spec| references_secret(spec, secret));
    (reload || uses, reload && uses)
}

impl Pass<'_> {
    /// Restarts the workloads of `kind` (kept in `store`) that use the Secret.
    async fn restart<W: Workload>(
        &self,
        store: &Store<W>,
        kind: WorkloadKind,
        done: &mut Restarts,
    ) -> Result<(), Error> {
        let (kube, namespace) = (self.kube, self.namespace.as_str());
        let (secret, hash) = (self.secret, self.hash);
        stores::ready(store, "workloads").await?;
        let label = kind_name(kind);
        let mut found: BTreeMap<String, Arc<W>> = BTreeMap::new();
        for target in self.targets.iter().filter(|t| t.kind == kind) {
            let key = ObjectRef::<W>::new(&target.name).within(namespace);
            match store.get(&key) {
                None => done.missing.push(format!("{label}/{}", target.name)),
                Some(w) if standing(&*w, secret).0 => {
                    found.insert(target.name.clone(), w);
                }
                Some(_) => done.refused.push(format!("{label}/{}", target.name)),
            }
        }
        for w in store.state() {
            if w.namespace().as_deref() == Some(namespace) && standing(&*w, secret).1 {
                found.entry(w.name_any()).or_insert(w);
            }
        }
        let api: Api<W> = Api::namespaced(kube.clone(), namespace);
        for (name, w) in found {
            let current = w
                .template()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(SECRET_HASH_ANNOTATION));
            if current.map(String::as_str) != Some(hash) {
                let patch = json!({ "spec": { "template": { "metadata": { "annotations": {
                    SECRET_HASH_ANNOTATION: hash
                }}}}});
                match api
                    .patch(&name, &patch_params(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    // Deleted since the watch saw it: nothing to restart.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        done.missing.push(format!("{label}/{name}"));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            done.restarted.push(format!("{label}/{name}"));
        }
        Ok(())
    }
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
