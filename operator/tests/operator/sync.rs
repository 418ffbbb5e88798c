//! The controllers against the real kube-apiserver and a real coffer-server.

use std::time::Duration;

use coffer_operator::crd::{Environment, Project};
use coffer_operator::metrics::UpstreamOutcome;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube_testenv::wait_until;
use serde_json::{Value, json};

use crate::support::*;

async fn patch<K>(scene: &Scene, name: &str, patch: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    scene
        .api::<K>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_environment_is_synced_with_exactly_its_keys_and_follows_changes() {
    let values = [("DB_URL", "postgres://db/prod"), ("API_KEY", "k-one")];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let coffer = &scene.coffer;
    coffer.set("web", "staging", &[("STAGING_ONLY", "s")]).await;
    let token = coffer.service_token("web", &["production"]).await;
    let operator = scene.operator(scene.config(Some(&token)));
    scene.project("web", json!({})).await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;

    scene.wait_synced("web-prod", &values).await;
    scene
        .wait_for_condition("web-prod", "Synced", "True", "Synced")
        .await;
    let secret = scene.secret("web-prod").await;
    assert_eq!(
        secret.labels()["app.kubernetes.io/managed-by"],
        "coffer-operator"
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    // deletionPolicy Retain (the default): no owner reference, known by its labels.
    assert!(secret.owner_references().is_empty());
    assert_eq!(secret.labels()["coffer.dev/environment"], "web-prod");

    let resource = scene.get_environment("web-prod").await;
    let status = resource.status.clone().unwrap();
    assert_eq!(status.synced_keys, Some(2));
    assert!(status.revision.is_some_and(|r| r > 0));
    assert!(status.last_sync_time.is_some());
    assert_eq!(status.observed_generation, resource.metadata.generation);
    let hash = status.secret_hash.clone().unwrap();
    assert_eq!(hash.len(), 16 + 1 + 64, "<key id>:<hmac>");
    // Nothing secret in the status or the events.
    let status_text = serde_json::to_string(&status).unwrap();
    let events_text = serde_json::to_string(&scene.events("Synced").await).unwrap();
    for value in ["postgres://db/prod", "k-one", &token] {
        assert!(!status_text.contains(value) && !events_text.contains(value));
    }

    let project_status = scene
        .api::<Project>()
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(project_status.project_id.is_some());
    assert_eq!(project_status.conditions[0].reason, "ProjectFound");

    // Level-triggered and idempotent: reconciles with nothing changed write nothing.
    let secret_version = secret.resource_version();
    let env_version = resource.resource_version();
    let reconciles = operator.metrics.reconcile_count("Environment");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(operator.metrics.reconcile_count("Environment") >= reconciles + 2);
    assert_eq!(
        scene.secret("web-prod").await.resource_version(),
        secret_version
    );
    assert_eq!(
        scene.get_environment("web-prod").await.resource_version(),
        env_version
    );

    // Changes through the API reach the Secret within the refresh interval; removed keys go.
    coffer
        .set(
            "web",
            "production",
            &[("API_KEY", "k-two"), ("NEW_KEY", "new")],
        )
        .await;
    coffer.delete("web", "production", "DB_URL").await;
    scene
        .wait_for_data("web-prod", &[("API_KEY", "k-two"), ("NEW_KEY", "new")])
        .await;
    let status = scene.get_environment("web-prod").await.status.unwrap();
    assert_ne!(status.secret_hash.unwrap(), hash);
    assert_eq!(status.synced_keys, Some(2));
}

#[tokio::test]
async fn include_and_exclude_select_the_keys_and_spec_changes_apply() {
    let values = [
        ("DB_HOST", "h"),
        ("DB_ADMIN_PASSWORD", "p"),
        ("API_KEY", "k"),
        ("OTHER", "o"),
    ];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let _operator = scene.start().await;
    scene
        .environment(
            "web-prod",
            "production",
            json!({ "include": ["DB_*", "API_KEY"], "exclude": ["DB_ADMIN_*"],
                    "secretName": "web-env", "labels": { "team": "payments" },
                    "annotations": { "owner": "payments" } }),
        )
        .await;
    scene
        .wait_for_data("web-env", &[("DB_HOST", "h"), ("API_KEY", "k")])
        .await;
    let secret = scene.secret("web-env").await;
    assert_eq!(secret.labels()["team"], "payments");
    assert_eq!(secret.annotations()["owner"], "payments");

    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "spec": { "sync": { "exclude": [] } } }),
    )
    .await;
    scene
        .wait_for_data(
            "web-env",
            &[
                ("DB_HOST", "h"),
                ("DB_ADMIN_PASSWORD", "p"),
                ("API_KEY", "k"),
            ],
        )
        .await;
    wait_until(
        "the status describes the new generation",
        TIMEOUT,
        || async {
            let r = scene.get_environment("web-prod").await;
            (r.metadata.generation == Some(2)
                && r.status.and_then(|s| s.observed_generation) == Some(2))
            .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn hand_edited_and_hand_deleted_secrets_are_repaired() {
    let values = [("A", "1"), ("B", "2")];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let _operator = scene.start().await;
    // A long interval: repairs must come from watching the Secret, not from polling.
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "1h" }))
        .await;
    scene.wait_for_data("web-prod", &values).await;

    patch::<Secret>(
        &scene,
        "web-prod",
        json!({ "stringData": { "A": "tampered", "EXTRA": "x" } }),
    )
    .await;
    scene.wait_for_data("web-prod", &values).await;

    scene
        .api::<Secret>()
        .delete("web-prod", &DeleteParams::default())
        .await
        .unwrap();
    scene.wait_for_data("web-prod", &values).await;
    let secret = scene.secret("web-prod").await;
    assert_eq!(secret.labels()["coffer.dev/environment"], "web-prod");
}

#[tokio::test]
async fn a_foreign_secret_of_the_same_name_is_left_untouched_and_reported() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": { "name": "web-prod" },
        "stringData": { "MINE": "keep me" },
    }))
    .unwrap();
    let secrets = scene.api::<Secret>();
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let _operator = scene.start().await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "SecretNotOwned")
        .await;
    scene
        .wait_for_condition("web-prod", "Synced", "False", "SecretNotOwned")
        .await;
    scene.wait_for_event("SecretNotOwned", true).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = scene.secret("web-prod").await;
    assert_eq!(after.resource_version(), foreign.resource_version());
    assert_eq!(
        scene.data("web-prod").await.unwrap(),
        pairs(&[("MINE", "keep me")])
    );

    // Once the foreign Secret is gone, the operator writes its own.
    secrets
        .delete("web-prod", &DeleteParams::default())
        .await
        .unwrap();
    scene.wait_synced("web-prod", &[("A", "1")]).await;
}

#[tokio::test]
async fn an_unreachable_or_refusing_server_never_empties_the_secret() {
    let logs = captured_logs();
    let first = [("A", "value-marker-a1"), ("B", "value-marker-b2")];
    let Some(mut scene) = Scene::new(&first).await else {
        return;
    };
    let token = scene.coffer.service_token("web", &["production"]).await;
    scene
        .credentials(
            "coffer-token",
            &token,
            json!({ "coffer.dev/credentials": "true" }),
        )
        .await;
    let _operator = scene.operator(scene.config(None));
    scene
        .project(
            "web",
            json!({ "credentialsRef": { "name": "coffer-token", "key": "token" } }),
        )
        .await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene.wait_synced("web-prod", &first).await;
    let before = scene.secret("web-prod").await;

    scene.coffer.stop().await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "ServerUnreachable")
        .await;
    scene.wait_for_event("ServerUnreachable", true).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = scene.secret("web-prod").await;
    assert_eq!(during.resource_version(), before.resource_version());
    assert_eq!(during.data, before.data);
    // The Secret keeps the last synced data; whether that is current cannot be told.
    assert_eq!(
        scene.condition("web-prod", "Synced").await,
        Some(("Unknown".to_owned(), "ServerUnreachable".to_owned()))
    );

    scene.coffer.resume().await;
    scene
        .coffer
        .set("web", "production", &[("B", "value-marker-b3")])
        .await;
    let second = [("A", "value-marker-a1"), ("B", "value-marker-b3")];
    scene.wait_synced("web-prod", &second).await;

    // Refused credentials (401) keep the data too.
    patch::<Secret>(
        &scene,
        "coffer-token",
        json!({ "stringData": { "token": "cfr_refused-token-marker" } }),
    )
    .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "Unauthorized")
        .await;
    assert_eq!(scene.data("web-prod").await.unwrap(), pairs(&second));

    let text = logs.text();
    let failure = format!("namespace={} ", scene.ns);
    assert!(
        text.lines()
            .any(|l| l.contains("reconcile failed") && l.contains(&failure)),
        "the logs were captured"
    );
    for secret in ["value-marker", "refused-token-marker", token.as_str()] {
        assert!(!text.contains(secret), "{secret} reached the logs");
    }
}

#[tokio::test]
async fn twenty_environments_on_one_environment_share_one_fetch_per_interval() {
    let Some(mut scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let operator = scene.start().await;
    let names: Vec<String> = (0..20).map(|i| format!("copy-{i}")).collect();
    for name in &names {
        scene
            .environment(name, "production", json!({ "refreshInterval": "5s" }))
            .await;
    }
    for name in &names {
        scene.wait_for_data(name, &[("A", "1")]).await;
    }
    let requests = || {
        operator.metrics.upstream_count(UpstreamOutcome::Modified)
            + operator
                .metrics
                .upstream_count(UpstreamOutcome::NotModified)
    };
    // Requests to the API server other than watches.
    let kube_requests = || {
        ["get", "create", "patch", "update", "delete"]
            .iter()
            .map(|verb| operator.metrics.kube_request_count(verb))
            .sum::<u64>()
    };
    let before = requests();
    let kube_before = kube_requests();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let fetched = requests() - before;
    // Projects, credentials and the Secrets' state come from watches: idle passes read nothing.
    let kube_idle = kube_requests() - kube_before;
    assert_eq!(kube_idle, 0, "requests to the API server while idle");
    // Three intervals: one conditional request per interval (one more when a boundary falls
    // just so), not one per resource.
    assert!((2..=4).contains(&fetched), "{fetched} requests in 15 s");
    assert!(
        operator
            .metrics
            .upstream_count(UpstreamOutcome::NotModified)
            >= 2
    );

    // A change seen by one resource wakes the others.
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    for name in &names {
        scene.wait_for_data(name, &[("A", "2")]).await;
    }

    // An outage costs one request per hold period (5 s) too, not one per resource and retry.
    scene.coffer.stop().await;
    for name in &names {
        scene
            .wait_for_condition(name, "Ready", "False", "ServerUnreachable")
            .await;
    }
    let failed = operator.metrics.upstream_count(UpstreamOutcome::Error);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let retries = operator.metrics.upstream_count(UpstreamOutcome::Error) - failed;
    assert!(
        (1..=3).contains(&retries),
        "{retries} requests in 10 s of outage"
    );
    for name in &names {
        assert_eq!(scene.data(name).await.unwrap(), pairs(&[("A", "2")]));
    }
}

#[tokio::test]
async fn deleting_an_environment_retains_or_deletes_its_secret_by_policy() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let coffer = &scene.coffer;
    coffer.set("web", "staging", &[("S", "1")]).await;
    coffer.set("web", "development", &[("D", "1")]).await;
    let _operator = scene.start().await;
    let delete = json!({ "deletionPolicy": "Delete", "refreshInterval": "5s" });
    let retain = json!({ "refreshInterval": "5s" });
    scene
        .environment("keep", "production", retain.clone())
        .await;
    scene
        .environment("drop", "production", delete.clone())
        .await;
    scene.environment("staging", "staging", retain).await;
    scene
        .environment("development", "development", delete)
        .await;
    for (name, key) in [
        ("keep", "A"),
        ("drop", "A"),
        ("staging", "S"),
        ("development", "D"),
    ] {
        scene.wait_for_data(name, &[(key, "1")]).await;
    }

    let envs = scene.api::<Environment>();
    for name in ["keep", "drop"] {
        envs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_until("both Environments are gone", TIMEOUT, || async {
        let left = envs.list(&ListParams::default()).await.unwrap().items.len();
        (left == 2).then_some(())
    })
    .await
    .unwrap();
    wait_until("the Delete policy's Secret is gone", TIMEOUT, || async {
        scene.data("drop").await.is_none().then_some(())
    })
    .await
    .unwrap();
    // Give the garbage collector time to act, were there still an owner reference.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(scene.secret("keep").await.owner_references().is_empty());
    assert_eq!(scene.data("keep").await.unwrap(), pairs(&[("A", "1")]));

    // Environments deleted in coffer-server: only the Delete policy removes data.
    let http = reqwest::Client::new();
    for env_slug in ["staging", "development"] {
        http.delete(format!(
            "{}/api/v1/orgs/{ORG}/projects/web/environments/{env_slug}",
            coffer.url
        ))
        .bearer_auth(&coffer.admin_token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    }
    scene
        .wait_for_condition("staging", "Ready", "False", "EnvironmentNotFound")
        .await;
    scene
        .wait_for_condition("development", "Synced", "False", "SecretDeleted")
        .await;
    assert!(scene.data("development").await.is_none());
    assert_eq!(scene.data("staging").await.unwrap(), pairs(&[("S", "1")]));
}

/// Deletes the `Environment` resources `names` with `propagation` and waits until they are
/// gone: the garbage collector has then deleted every dependent of a foreground deletion.
async fn delete_environments(scene: &Scene, names: &[&str], propagation: PropagationPolicy) {
    let envs = scene.api::<Environment>();
    let params = DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    for name in names {
        envs.delete(name, &params).await.unwrap();
    }
    wait_until("the Environments are gone", TIMEOUT, || async {
        let mut left = 0;
        for name in names {
            left += usize::from(envs.get_opt(name).await.unwrap().is_some());
        }
        (left == 0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn retain_holds_and_delete_deletes_under_foreground_and_background_deletion() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let operator = scene.start().await;
    let retain = json!({ "refreshInterval": "5s" });
    let delete = json!({ "deletionPolicy": "Delete", "refreshInterval": "5s" });
    for (name, sync) in [
        ("keep-fg", &retain),
        ("keep-bg", &retain),
        ("drop-fg", &delete),
        ("drop-bg", &delete),
    ] {
        scene.environment(name, "production", sync.clone()).await;
    }
    for name in ["keep-fg", "keep-bg", "drop-fg", "drop-bg"] {
        scene.wait_for_data(name, &[("A", "1")]).await;
    }
    let uid = scene.get_environment("drop-fg").await.metadata.uid.unwrap();
    let owners = scene.secret("drop-fg").await.owner_references().to_vec();
    assert!(
        owners
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    );

    // The garbage collector acts before the operator's finalizer (here: the operator is down).
    // Foreground deletion, as Argo CD prunes: it deletes the dependents first, then drops the
    // foregroundDeletion finalizer.
    operator.stop().await;
    let envs = scene.api::<Environment>();
    let deletion = |propagation| DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    for name in ["keep-fg", "drop-fg"] {
        envs.delete(name, &deletion(PropagationPolicy::Foreground))
            .await
            .unwrap();
    }
    for name in ["keep-bg", "drop-bg"] {
        envs.delete(name, &deletion(PropagationPolicy::Background))
            .await
            .unwrap();
    }
    wait_until(
        "the garbage collector is done with the dependents",
        TIMEOUT,
        || async {
            for name in ["keep-fg", "drop-fg"] {
                let env = envs.get(name).await.unwrap();
                if env.finalizers().iter().any(|f| f == "foregroundDeletion") {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(scene.data("keep-fg").await.unwrap(), pairs(&[("A", "1")]));
    // The foregroundDeletion finalizer can go before the collector's graph has seen the owner
    // reference (its informers lag under load); the Secret then goes as an orphan, shortly after.
    wait_until("the collector deletes drop-fg", TIMEOUT, || async {
        scene.data("drop-fg").await.is_none().then_some(())
    })
    .await
    .unwrap();

    // The operator's finalizer finishes the deletions.
    let _operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    wait_until("the Environments are gone", TIMEOUT, || async {
        let left = envs.list(&ListParams::default()).await.unwrap().items.len();
        (left == 0).then_some(())
    })
    .await
    .unwrap();
    wait_until("the Delete policy's Secret is gone", TIMEOUT, || async {
        scene.data("drop-bg").await.is_none().then_some(())
    })
    .await
    .unwrap();
    // Give the garbage collector time to act, were there an owner reference.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(scene.data("keep-bg").await.unwrap(), pairs(&[("A", "1")]));
    assert_eq!(scene.data("keep-fg").await.unwrap(), pairs(&[("A", "1")]));
}

#[tokio::test]
async fn switching_the_deletion_policy_adds_or_removes_the_owner_reference() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start().await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "1h" }))
        .await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;
    assert!(scene.secret("web-prod").await.owner_references().is_empty());

    let owned = |want: bool| {
        let scene = &scene;
        async move {
            wait_until(
                "the owner reference follows the policy",
                TIMEOUT,
                || async {
                    let owners = scene.secret("web-prod").await.owner_references().len();
                    ((owners == 1) == want).then_some(())
                },
            )
            .await
            .unwrap();
        }
    };
    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "spec": { "sync": { "deletionPolicy": "Delete" } } }),
    )
    .await;
    owned(true).await;
    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "spec": { "sync": { "deletionPolicy": "Retain" } } }),
    )
    .await;
    owned(false).await;
    delete_environments(&scene, &["web-prod"], PropagationPolicy::Foreground).await;
    assert_eq!(scene.data("web-prod").await.unwrap(), pairs(&[("A", "1")]));
}

#[tokio::test]
async fn a_type_the_new_data_does_not_fit_leaves_the_old_secret_in_place() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start().await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "1h" }))
        .await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;
    let before = scene.secret("web-prod").await;

    // A TLS Secret needs tls.crt and tls.key, which the environment lacks.
    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "spec": { "sync": { "type": "kubernetes.io/tls" } } }),
    )
    .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "InvalidSpec")
        .await;
    let message = scene.condition_message("web-prod", "Ready").await;
    assert!(message.contains("tls.crt"), "{message}");
    let after = scene.secret("web-prod").await;
    assert_eq!(
        after.metadata.uid, before.metadata.uid,
        "the old Secret stays"
    );
    assert_eq!(after.type_.as_deref(), Some("Opaque"));
    assert_eq!(scene.data("web-prod").await.unwrap(), pairs(&[("A", "1")]));

    // Once the data fits, the Secret is replaced by one of the new type.
    scene
        .coffer
        .set(
            "web",
            "production",
            &[("tls.crt", "cert"), ("tls.key", "key")],
        )
        .await;
    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "metadata": { "annotations": { "coffer.dev/refresh-at": "1" } },
                "spec": { "sync": { "include": ["tls.*"] } } }),
    )
    .await;
    scene
        .wait_for_data("web-prod", &[("tls.crt", "cert"), ("tls.key", "key")])
        .await;
    let replaced = scene.secret("web-prod").await;
    assert_eq!(replaced.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_ne!(replaced.metadata.uid, before.metadata.uid);
    scene
        .wait_for_condition("web-prod", "Ready", "True", "Synced")
        .await;
}

#[tokio::test]
async fn invalid_specs_are_reported_with_a_reason_and_no_retry_storm() {
    let Some(scene) = Scene::new(&[]).await else {
        return;
    };
    let operator = scene.start().await;
    let cases = [
        (
            "bad-interval",
            "web",
            "production",
            "5 minutes",
            "InvalidSpec",
        ),
        ("too-short", "web", "production", "1s", "InvalidSpec"),
        (
            "no-project",
            "missing",
            "production",
            "5m",
            "ProjectRefNotFound",
        ),
        ("unknown-env", "web", "nope", "1m", "EnvironmentNotFound"),
        // the operator's own token is never sent to a server the Project names
        (
            "elsewhere",
            "elsewhere",
            "production",
            "1m",
            "NoCredentials",
        ),
    ];
    scene
        .project(
            "elsewhere",
            json!({ "project": "web", "serverUrl": "http://127.0.0.1:9" }),
        )
        .await;
    // A Secret name Kubernetes refuses.
    scene
        .environment(
            "bad-name",
            "production",
            json!({ "secretName": "Not_A_Name", "refreshInterval": "1m" }),
        )
        .await;
    for (name, project, environment, interval, _) in cases {
        scene
            .environment_of(
                name,
                project,
                environment,
                json!({ "refreshInterval": interval }),
            )
            .await;
    }
    for (name, _, _, _, reason) in cases {
        scene
            .wait_for_condition(name, "Ready", "False", reason)
            .await;
        assert!(scene.data(name).await.is_none());
    }
    // Without a projectRef at all, the API server refuses the resource.
    let resource = kube::api::ApiResource::erase::<Environment>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(scene.kube.clone(), &scene.ns, &resource);
    let no_ref: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1", "kind": "Environment",
        "metadata": { "name": "no-ref" }, "spec": { "environment": "production" },
    }))
    .unwrap();
    let refused = raw.create(&PostParams::default(), &no_ref).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422),
        "{refused:?}"
    );
    scene
        .wait_for_condition("bad-name", "Ready", "False", "InvalidSpec")
        .await;
    let message = scene
        .get_environment("bad-interval")
        .await
        .status
        .unwrap()
        .conditions[0]
        .message
        .clone();
    assert!(
        message.contains("refreshInterval") && message.contains("5 minutes"),
        "{message}"
    );

    let reconciles = operator.metrics.reconcile_count("Environment");
    let errors = operator.metrics.upstream_count(UpstreamOutcome::Error);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let more = operator.metrics.reconcile_count("Environment") - reconciles;
    assert!(
        more <= 1,
        "{more} reconciles in 10 s for four invalid specs"
    );
    assert!(operator.metrics.upstream_count(UpstreamOutcome::Error) - errors <= 1);

    // Fixing the cause is noticed.
    scene.project("missing", json!({ "project": "web" })).await;
    scene
        .wait_for_condition("no-project", "Ready", "True", "Synced")
        .await;
}

#[tokio::test]
async fn a_refresh_annotation_fetches_at_once() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start_polling().await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "1h" }))
        .await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "metadata": { "annotations": {
            "coffer.dev/refresh-at": "2026-11-26T10:00:00Z"
        }}}),
    )
    .await;
    scene.wait_for_data("web-prod", &[("A", "2")]).await;
}

#[tokio::test]
async fn a_refresh_asked_for_during_an_outage_happens_when_the_server_is_back() {
    let Some(mut scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start_polling().await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "1h" }))
        .await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;
    // A change the operator has no reason to notice within the hour.
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene.coffer.stop().await;
    patch::<Environment>(
        &scene,
        "web-prod",
        json!({ "metadata": { "annotations": {
            "coffer.dev/refresh-at": "2026-11-26T10:00:00Z"
        }}}),
    )
    .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "ServerUnreachable")
        .await;
    assert_eq!(scene.data("web-prod").await.unwrap(), pairs(&[("A", "1")]));
    // The refresh failed, so it is still to be done: the next try fetches.
    scene.coffer.resume().await;
    scene.wait_synced("web-prod", &[("A", "2")]).await;
}

#[tokio::test]
async fn projects_are_created_by_their_spec_and_deleted_only_when_they_created_them() {
    let Some(scene) = Scene::new(&[]).await else {
        return;
    };
    let coffer = &scene.coffer;
    // Creating and deleting projects takes a user's API key, given to the resource itself.
    scene
        .credentials(
            "coffer-admin",
            &coffer.admin_token,
            json!({ "coffer.dev/credentials": "true" }),
        )
        .await;
    let _operator = scene.operator(scene.config(Some(&coffer.admin_token)));
    scene.project("absent", json!({})).await;
    scene
        .project(
            "shop",
            json!({ "create": true, "displayName": "Shop", "deletionPolicy": "Delete",
                    "credentialsRef": { "name": "coffer-admin", "key": "token" } }),
        )
        .await;
    let projects = scene.api::<Project>();
    let ready = |name: &'static str| {
        let projects = projects.clone();
        async move {
            projects.get(name).await.unwrap().status.and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| (c.status, c.reason))
            })
        }
    };
    wait_until("the missing project is reported", TIMEOUT, || async {
        (ready("absent").await == Some(("False".into(), "ProjectNotFound".into()))).then_some(())
    })
    .await
    .unwrap();
    wait_until("the project is created", TIMEOUT, || async {
        ready("shop")
            .await
            .is_some_and(|(status, _)| status == "True")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(scene.events("ProjectCreated").await.len(), 1);
    let created = coffer.admin().get_project(ORG, "shop").await.unwrap();
    assert_eq!(created.name, "Shop");
    assert_eq!(
        projects
            .get("shop")
            .await
            .unwrap()
            .status
            .unwrap()
            .project_id,
        Some(created.id.to_string())
    );

    // An environment created on demand.
    scene
        .environment_of("shop-qa", "shop", "qa", json!({}))
        .await;
    scene
        .wait_for_condition("shop-qa", "Ready", "False", "EnvironmentNotFound")
        .await;
    patch::<Environment>(&scene, "shop-qa", json!({ "spec": { "create": true } })).await;
    scene
        .wait_for_condition("shop-qa", "Ready", "True", "Synced")
        .await;
    coffer
        .admin()
        .get_environment(ORG, "shop", "qa")
        .await
        .unwrap();
    assert_eq!(scene.data("shop-qa").await.unwrap(), pairs(&[]));

    // deletionPolicy Delete never deletes a project the resource did not create, nor one it
    // created with the operator's own credentials: the resource goes, the project stays.
    scene
        .project(
            "web",
            json!({ "deletionPolicy": "Delete",
                    "credentialsRef": { "name": "coffer-admin", "key": "token" } }),
        )
        .await;
    scene
        .project(
            "made-by-default",
            json!({ "create": true, "deletionPolicy": "Delete" }),
        )
        .await;
    for name in ["web", "made-by-default"] {
        wait_until("the project is checked", TIMEOUT, || async {
            ready(name)
                .await
                .is_some_and(|(status, _)| status == "True")
                .then_some(())
        })
        .await
        .unwrap();
        projects
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_until("both resources are gone", TIMEOUT, || async {
        let web = projects.get_opt("web").await.unwrap();
        let other = projects.get_opt("made-by-default").await.unwrap();
        (web.is_none() && other.is_none()).then_some(())
    })
    .await
    .unwrap();
    coffer.admin().get_project(ORG, "web").await.unwrap();
    coffer
        .admin()
        .get_project(ORG, "made-by-default")
        .await
        .unwrap();
    assert_eq!(scene.events("ProjectKept").await.len(), 2);

    // deletionPolicy Delete removes the project it created from coffer-server with the resource.
    projects
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        "the project is deleted in coffer-server",
        TIMEOUT,
        || async {
            coffer
                .admin()
                .get_project(ORG, "shop")
                .await
                .is_err_and(|e| e.is_not_found())
                .then_some(())
        },
    )
    .await
    .unwrap();
    wait_until("the Project resource is gone", TIMEOUT, || async {
        projects
            .get_opt("shop")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_project_whose_credentials_are_gone_is_let_go_by_annotation_and_kept() {
    let Some(scene) = Scene::new(&[]).await else {
        return;
    };
    let coffer = &scene.coffer;
    let secrets = scene.api::<Secret>();
    scene
        .credentials(
            "coffer-admin",
            &coffer.admin_token,
            json!({ "coffer.dev/credentials": "true" }),
        )
        .await;
    let _operator = scene.operator(scene.config(None));
    scene
        .project(
            "shop",
            json!({ "create": true, "deletionPolicy": "Delete",
                    "credentialsRef": { "name": "coffer-admin", "key": "token" } }),
        )
        .await;
    let projects = scene.api::<Project>();
    wait_until("the project is created", TIMEOUT, || async {
        projects
            .get("shop")
            .await
            .unwrap()
            .status
            .and_then(|s| s.created_project_id)
    })
    .await
    .unwrap();

    // As in a namespace being deleted: the credentials go first, and the deletion waits.
    secrets
        .delete("coffer-admin", &DeleteParams::default())
        .await
        .unwrap();
    projects
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the deletion waits, saying why", TIMEOUT, || async {
        let project = projects.get("shop").await.unwrap();
        project
            .status
            .into_iter()
            .flat_map(|s| s.conditions)
            .any(|c| c.type_ == "Ready" && c.reason == "CredentialsNotFound")
            .then_some(())
    })
    .await
    .unwrap();

    // The override lets it go; the project stays in coffer-server.
    patch::<Project>(
        &scene,
        "shop",
        json!({ "metadata": { "annotations": { "coffer.dev/skip-cleanup": "true" } } }),
    )
    .await;
    wait_until("the Project resource is gone", TIMEOUT, || async {
        projects
            .get_opt("shop")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    coffer.admin().get_project(ORG, "shop").await.unwrap();
    assert_eq!(scene.events("ProjectKept").await.len(), 1);
}
