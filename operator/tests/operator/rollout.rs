//! Rolling restarts: exactly once per change of the synced data, never otherwise.

use std::time::Duration;

use coffer_operator::crd::Environment;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

const HASH: &str = "coffer.dev/secret-hash";

/// A pod that reads `A` of the Secret `secret` through an environment variable.
fn reads(secret: &str) -> Value {
    json!({ "containers": [{ "name": "app", "image": "example.invalid/app:1", "env": [
        { "name": "A", "valueFrom": { "secretKeyRef": { "name": secret, "key": "A" } } }
    ]}]})
}

fn deployment(name: &str, reload: bool, pod: Value) -> Deployment {
    let annotations = if reload {
        json!({ "coffer.dev/reload": "true" })
    } else {
        json!({})
    };
    let mut spec = json!({ "containers": [{ "name": "app", "image": "example.invalid/app:1" }] });
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), pod) {
        for (k, v) in extra {
            spec.insert(k, v);
        }
    }
    serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": spec },
        },
    }))
    .unwrap()
}

/// `(generation, template hash annotation)` of every deployment, by name.
async fn states(api: &Api<Deployment>) -> Vec<(String, i64, Option<String>)> {
    let mut out = Vec::new();
    for name in ["api", "worker", "bystander", "unrelated"] {
        let d = api.get(name).await.unwrap();
        let hash = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(HASH).cloned());
        out.push((name.to_owned(), d.metadata.generation.unwrap(), hash));
    }
    out
}

#[tokio::test]
async fn workloads_restart_exactly_once_per_data_change() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let deployments = scene.api::<Deployment>();
    let uses_secret =
        json!({ "volumes": [{ "name": "s", "secret": { "secretName": "web-prod" } }] });
    for d in [
        // reload annotation and reads the Secret: restarted
        deployment(
            "api",
            true,
            json!({ "containers": [{ "name": "app", "image": "example.invalid/app:1",
            "envFrom": [{ "secretRef": { "name": "web-prod" } }] }] }),
        ),
        // a rolloutRestart target that reads the Secret: restarted
        deployment("worker", false, reads("web-prod")),
        // a rolloutRestart target that neither reads the Secret nor opted in: left alone
        deployment("stranger", false, json!({})),
        // reads the Secret without the annotation: left alone
        deployment("bystander", false, uses_secret),
        // the annotation without reading the Secret: left alone
        deployment("unrelated", true, json!({})),
    ] {
        deployments
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
    }
    let operator = scene.start().await;
    scene
        .environment(
            "web-prod",
            "production",
            json!({ "refreshInterval": "5s",
                    "rolloutRestart": [{ "kind": "Deployment", "name": "worker" },
                                       { "kind": "Deployment", "name": "stranger" }] }),
        )
        .await;
    scene.wait_synced("web-prod", &[("A", "1")]).await;
    let initial = states(&deployments).await;
    assert!(
        initial.iter().all(|(_, _, h)| h.is_none()),
        "the first sync restarts nothing: {initial:?}"
    );

    // An unrelated spec edit restarts nothing.
    let envs = scene.api::<Environment>();
    envs.patch(
        "web-prod",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "sync": { "labels": { "tier": "backend" } } } })),
    )
    .await
    .unwrap();
    kube_testenv::wait_until("the label is synced", TIMEOUT, || async {
        let s = scene.secret("web-prod").await;
        (s.labels().get("tier").map(String::as_str) == Some("backend")).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(states(&deployments).await, initial);

    // A data change restarts the annotated users and the targets, once.
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene.wait_for_data("web-prod", &[("A", "2")]).await;
    let hash = kube_testenv::wait_until("the status has the new hash", TIMEOUT, || async {
        let status = envs.get("web-prod").await.unwrap().status?;
        (status.restarted_workloads.len() == 2).then_some(status.secret_hash?)
    })
    .await
    .unwrap();
    let restarted = states(&deployments).await;
    let by_name = |name: &str| {
        restarted
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("api").2.as_deref(), Some(hash.as_str()));
    assert_eq!(by_name("worker").2.as_deref(), Some(hash.as_str()));
    assert_eq!(by_name("bystander").2, None);
    assert_eq!(by_name("unrelated").2, None);
    assert_eq!(by_name("api").1, initial[0].1 + 1);
    assert_eq!(by_name("worker").1, initial[1].1 + 1);
    let status = envs.get("web-prod").await.unwrap().status.unwrap();
    assert_eq!(
        status.restarted_workloads,
        ["Deployment/api", "Deployment/worker"]
    );
    let stranger = deployments.get("stranger").await.unwrap();
    let template = stranger.spec.unwrap().template.metadata.unwrap_or_default();
    assert!(
        !template.annotations.unwrap_or_default().contains_key(HASH),
        "a named workload that does not use the Secret is not restarted"
    );
    let refused = scene.events("RolloutTargetRefused").await;
    assert!(
        refused.iter().any(|e| e
            .note
            .as_deref()
            .is_some_and(|n| n.contains("Deployment/stranger"))),
        "{refused:?}"
    );

    // Nothing more while nothing changes, nor when the operator restarts.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(states(&deployments).await, restarted);
    operator.stop().await;
    let operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    kube_testenv::wait_until("the new operator has reconciled", TIMEOUT, || async {
        (operator.metrics.reconcile_count("Environment") >= 2).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(states(&deployments).await, restarted);

    // The next change restarts once more.
    scene.coffer.set("web", "production", &[("A", "3")]).await;
    scene.wait_for_data("web-prod", &[("A", "3")]).await;
    kube_testenv::wait_until("api restarted again", TIMEOUT, || async {
        let now = states(&deployments).await;
        (now[0].1 == restarted[0].1 + 1).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let last = states(&deployments).await;
    assert_eq!(last[0].1, restarted[0].1 + 1);
    assert_eq!(last[1].1, restarted[1].1 + 1);
    assert_eq!(last[2].1, restarted[2].1);
}

#[tokio::test]
async fn a_recreated_environment_is_a_first_sync_again_and_an_idle_one_writes_no_status() {
    let Some(scene) = Scene::new(&[]).await else {
        return;
    };
    scene.coffer.set("web", "staging", &[("A", "1")]).await;
    let deployments = scene.api::<Deployment>();
    deployments
        .create(
            &PostParams::default(),
            &deployment("worker", false, reads("web-staging")),
        )
        .await
        .unwrap();
    let operator = scene.start().await;
    scene
        .environment(
            "web-staging",
            "staging",
            json!({ "refreshInterval": "5s", "deletionPolicy": "Delete",
                    "rolloutRestart": [{ "kind": "Deployment", "name": "worker" }] }),
        )
        .await;
    scene.wait_synced("web-staging", &[("A", "1")]).await;
    let before = deployments.get("worker").await.unwrap();

    // Deleted in coffer-server: the Secret goes, and so does what the status said of it.
    reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/orgs/{ORG}/projects/web/environments/staging",
            scene.coffer.url
        ))
        .bearer_auth(&scene.coffer.admin_token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    scene
        .wait_for_condition("web-staging", "Synced", "False", "SecretDeleted")
        .await;
    assert!(scene.data("web-staging").await.is_none());
    let status = scene.get_environment("web-staging").await.status.unwrap();
    assert_eq!(
        (status.revision, status.secret_hash, status.synced_keys),
        (None, None, None)
    );

    // Nothing changes, so passes write nothing.
    let writes = operator.metrics.status_write_count("Environment");
    let reconciles = operator.metrics.reconcile_count("Environment");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(operator.metrics.reconcile_count("Environment") >= reconciles + 2);
    assert_eq!(operator.metrics.status_write_count("Environment"), writes);

    // Created again: a first sync (pushed at once, of no keys yet), which restarts nothing ...
    scene
        .coffer
        .admin()
        .create_environment(
            ORG,
            "web",
            &coffer_client::CreateEnvironmentRequest {
                slug: "staging".to_owned(),
                name: None,
            },
        )
        .await
        .unwrap();
    scene.wait_synced("web-staging", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = deployments.get("worker").await.unwrap();
    assert_eq!(after.metadata.generation, before.metadata.generation);
    let status = scene.get_environment("web-staging").await.status.unwrap();
    assert!(status.restarted_workloads.is_empty());
    // ... and data written into it afterwards is a change, which does.
    scene.coffer.set("web", "staging", &[("A", "2")]).await;
    scene.wait_synced("web-staging", &[("A", "2")]).await;
    kube_testenv::wait_until("worker restarted", TIMEOUT, || async {
        let now = deployments.get("worker").await.unwrap();
        (now.metadata.generation == before.metadata.generation.map(|g| g + 1)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_regenerated_hash_key_restarts_nothing() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let deployments = scene.api::<Deployment>();
    deployments
        .create(
            &PostParams::default(),
            &deployment("worker", false, reads("web-prod")),
        )
        .await
        .unwrap();
    let operator = scene.start().await;
    scene
        .environment(
            "web-prod",
            "production",
            json!({ "refreshInterval": "1h",
                    "rolloutRestart": [{ "kind": "Deployment", "name": "worker" }] }),
        )
        .await;
    scene
        .wait_for_condition("web-prod", "Ready", "True", "Synced")
        .await;
    let first = scene
        .get_environment("web-prod")
        .await
        .status
        .unwrap()
        .secret_hash
        .unwrap();
    let before = deployments.get("worker").await.unwrap();

    // The key Secret is lost while the operator is down; it makes a new key on start.
    operator.stop().await;
    scene
        .api::<k8s_openapi::api::core::v1::Secret>()
        .delete("coffer-operator-hash-key", &Default::default())
        .await
        .unwrap();
    let _operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    let rebased = kube_testenv::wait_until("a hash under the new key", TIMEOUT, || async {
        let hash = scene
            .get_environment("web-prod")
            .await
            .status?
            .secret_hash?;
        (hash != first).then_some(hash)
    })
    .await
    .unwrap();
    // The pass that recorded the new hash would have restarted the worker before that.
    let after = deployments.get("worker").await.unwrap();
    assert_eq!(after.metadata.generation, before.metadata.generation);
    let key_id = |hash: &str| hash.split_once(':').map(|(id, _)| id.to_owned());
    assert_ne!(key_id(&rebased), key_id(&first));
    let template = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(HASH).cloned())
    };
    assert_eq!(template(&after), None);
    let status = scene.get_environment("web-prod").await.status.unwrap();
    assert!(status.restarted_workloads.is_empty());
}
