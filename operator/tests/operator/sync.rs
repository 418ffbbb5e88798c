//! The Environment controller against the real kube-apiserver and a real coffer-server.

use std::time::Duration;

use coffer_operator::crd::{Environment, Project};
use coffer_operator::metrics::UpstreamOutcome;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_testenv::wait_until;
use serde_json::json;

use crate::support::*;

async fn get_env(kube: &kube::Client, ns: &str, name: &str) -> Environment {
    Api::<Environment>::namespaced(kube.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

async fn get_secret(kube: &kube::Client, ns: &str, name: &str) -> Secret {
    Api::<Secret>::namespaced(kube.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

async fn events(kube: &kube::Client, ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(kube.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn an_environment_is_synced_with_exactly_its_keys_and_follows_changes() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer
        .set(
            "web",
            "production",
            &[("DB_URL", "postgres://db/prod"), ("API_KEY", "k-one")],
        )
        .await;
    coffer.set("web", "staging", &[("STAGING_ONLY", "s")]).await;
    let token = coffer.service_token("web", &["production"]).await;
    let _operator = start_operator(env, config(&ns, &coffer, Some(&token)));
    create_project(&kube, &ns, "web", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "web-prod",
        "web",
        "production",
        json!({ "refreshInterval": "5s" }),
    )
    .await;

    wait_for_data(
        &kube,
        &ns,
        "web-prod",
        &[("DB_URL", "postgres://db/prod"), ("API_KEY", "k-one")],
    )
    .await;
    wait_for_condition(&kube, &ns, "web-prod", "Ready", "True", "Synced").await;
    wait_for_condition(&kube, &ns, "web-prod", "Synced", "True", "Synced").await;
    let secret = get_secret(&kube, &ns, "web-prod").await;
    assert_eq!(
        secret.labels()["app.kubernetes.io/managed-by"],
        "coffer-operator"
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Environment", "web-prod")
    );
    assert_eq!(owner.controller, Some(true));

    let resource = get_env(&kube, &ns, "web-prod").await;
    let status = resource.status.clone().unwrap();
    assert_eq!(status.synced_keys, Some(2));
    assert!(status.revision.is_some_and(|r| r > 0));
    assert!(status.last_sync_time.is_some());
    assert_eq!(status.observed_generation, resource.metadata.generation);
    let hash = status.secret_hash.clone().unwrap();
    assert_eq!(hash.len(), 64);
    // Nothing secret in the status or the events.
    let status_text = serde_json::to_string(&status).unwrap();
    let events_text = serde_json::to_string(&events(&kube, &ns, "Synced").await).unwrap();
    for value in ["postgres://db/prod", "k-one", &token] {
        assert!(!status_text.contains(value) && !events_text.contains(value));
    }

    let project = Api::<Project>::namespaced(kube.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    let project_status = project.status.unwrap();
    assert!(project_status.project_id.is_some());
    assert_eq!(project_status.conditions[0].reason, "ProjectFound");

    // Level-triggered and idempotent: reconciles with nothing changed write nothing.
    let secret_version = secret.resource_version();
    let env_version = resource.resource_version();
    let reconciles = _operator.metrics.reconcile_count("Environment");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(_operator.metrics.reconcile_count("Environment") >= reconciles + 2);
    assert_eq!(
        get_secret(&kube, &ns, "web-prod").await.resource_version(),
        secret_version
    );
    assert_eq!(
        get_env(&kube, &ns, "web-prod").await.resource_version(),
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
    wait_for_data(
        &kube,
        &ns,
        "web-prod",
        &[("API_KEY", "k-two"), ("NEW_KEY", "new")],
    )
    .await;
    let status = get_env(&kube, &ns, "web-prod").await.status.unwrap();
    assert_ne!(status.secret_hash.unwrap(), hash);
    assert_eq!(status.synced_keys, Some(2));
}

#[tokio::test]
async fn include_and_exclude_select_the_keys_and_spec_changes_apply() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer
        .set(
            "web",
            "production",
            &[
                ("DB_HOST", "h"),
                ("DB_ADMIN_PASSWORD", "p"),
                ("API_KEY", "k"),
                ("OTHER", "o"),
            ],
        )
        .await;
    let _operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "web-prod",
        "web",
        "production",
        json!({ "include": ["DB_*", "API_KEY"], "exclude": ["DB_ADMIN_*"], "secretName": "web-env",
                "labels": { "team": "payments" }, "annotations": { "owner": "payments" } }),
    )
    .await;
    wait_for_data(&kube, &ns, "web-env", &[("DB_HOST", "h"), ("API_KEY", "k")]).await;
    let secret = get_secret(&kube, &ns, "web-env").await;
    assert_eq!(secret.labels()["team"], "payments");
    assert_eq!(secret.annotations()["owner"], "payments");

    Api::<Environment>::namespaced(kube.clone(), &ns)
        .patch(
            "web-prod",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "sync": { "exclude": [] } } })),
        )
        .await
        .unwrap();
    wait_for_data(
        &kube,
        &ns,
        "web-env",
        &[
            ("DB_HOST", "h"),
            ("DB_ADMIN_PASSWORD", "p"),
            ("API_KEY", "k"),
        ],
    )
    .await;
    let resource = get_env(&kube, &ns, "web-prod").await;
    wait_until(
        "the status describes the new generation",
        TIMEOUT,
        || async {
            let r = get_env(&kube, &ns, "web-prod").await;
            (r.status.and_then(|s| s.observed_generation) == r.metadata.generation).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(resource.metadata.generation, Some(2));
}

#[tokio::test]
async fn hand_edited_and_hand_deleted_secrets_are_repaired() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer
        .set("web", "production", &[("A", "1"), ("B", "2")])
        .await;
    let _operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    // A long interval: repairs must come from watching the Secret, not from polling.
    create_environment(
        &kube,
        &ns,
        "web-prod",
        "web",
        "production",
        json!({ "refreshInterval": "1h" }),
    )
    .await;
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1"), ("B", "2")]).await;
    let secrets = Api::<Secret>::namespaced(kube.clone(), &ns);

    secrets
        .patch(
            "web-prod",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "A": "tampered", "EXTRA": "x" } })),
        )
        .await
        .unwrap();
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1"), ("B", "2")]).await;

    secrets
        .delete("web-prod", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1"), ("B", "2")]).await;
    let secret = get_secret(&kube, &ns, "web-prod").await;
    assert_eq!(secret.owner_references()[0].name, "web-prod");
}

#[tokio::test]
async fn a_foreign_secret_of_the_same_name_is_left_untouched_and_reported() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer.set("web", "production", &[("A", "1")]).await;
    let secrets = Api::<Secret>::namespaced(kube.clone(), &ns);
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": { "name": "web-prod" },
        "stringData": { "MINE": "keep me" },
    }))
    .unwrap();
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let _operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "web-prod",
        "web",
        "production",
        json!({ "refreshInterval": "5s" }),
    )
    .await;
    wait_for_condition(&kube, &ns, "web-prod", "Ready", "False", "SecretNotOwned").await;
    wait_for_condition(&kube, &ns, "web-prod", "Synced", "False", "SecretNotOwned").await;
    wait_until("a warning event", TIMEOUT, || async {
        let found = events(&kube, &ns, "SecretNotOwned").await;
        found
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = get_secret(&kube, &ns, "web-prod").await;
    assert_eq!(after.resource_version(), foreign.resource_version());
    assert_eq!(
        secret_data(&kube, &ns, "web-prod").await.unwrap(),
        pairs(&[("MINE", "keep me")])
    );

    // Once the foreign Secret is gone, the operator writes its own.
    secrets
        .delete("web-prod", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1")]).await;
    wait_for_condition(&kube, &ns, "web-prod", "Ready", "True", "Synced").await;
}

#[tokio::test]
async fn an_unreachable_or_refusing_server_never_empties_the_secret() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let mut coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer
        .set("web", "production", &[("A", "1"), ("B", "2")])
        .await;
    let token = coffer.service_token("web", &["production"]).await;
    let secrets = Api::<Secret>::namespaced(kube.clone(), &ns);
    let credentials: Secret = serde_json::from_value(json!({
        "metadata": { "name": "coffer-token" },
        "stringData": { "token": token },
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &credentials)
        .await
        .unwrap();
    let _operator = start_operator(env, config(&ns, &coffer, None));
    create_project(
        &kube,
        &ns,
        "web",
        json!({ "credentialsRef": { "name": "coffer-token", "key": "token" } }),
    )
    .await;
    create_environment(
        &kube,
        &ns,
        "web-prod",
        "web",
        "production",
        json!({ "refreshInterval": "5s" }),
    )
    .await;
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1"), ("B", "2")]).await;
    wait_for_condition(&kube, &ns, "web-prod", "Ready", "True", "Synced").await;
    let before = get_secret(&kube, &ns, "web-prod").await;

    coffer.stop().await;
    wait_for_condition(
        &kube,
        &ns,
        "web-prod",
        "Ready",
        "False",
        "ServerUnreachable",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = get_secret(&kube, &ns, "web-prod").await;
    assert_eq!(during.resource_version(), before.resource_version());
    assert_eq!(during.data, before.data);
    let (status, _) = condition(&kube, &ns, "web-prod", "Synced").await.unwrap();
    assert_eq!(
        status, "True",
        "the Secret still holds the last synced data"
    );

    coffer.resume().await;
    coffer.set("web", "production", &[("B", "3")]).await;
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1"), ("B", "3")]).await;
    wait_for_condition(&kube, &ns, "web-prod", "Ready", "True", "Synced").await;

    // Refused credentials (401) keep the data too.
    let before = get_secret(&kube, &ns, "web-prod").await;
    secrets
        .patch(
            "coffer-token",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "token": "cfr_not-a-real-token" } })),
        )
        .await
        .unwrap();
    wait_for_condition(&kube, &ns, "web-prod", "Ready", "False", "Unauthorized").await;
    assert_eq!(get_secret(&kube, &ns, "web-prod").await.data, before.data);
}

#[tokio::test]
async fn twenty_environments_on_one_environment_share_one_fetch_per_interval() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer.set("web", "production", &[("A", "1")]).await;
    let operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    for i in 0..20 {
        create_environment(
            &kube,
            &ns,
            &format!("copy-{i}"),
            "web",
            "production",
            json!({ "refreshInterval": "5s" }),
        )
        .await;
    }
    for i in 0..20 {
        wait_for_data(&kube, &ns, &format!("copy-{i}"), &[("A", "1")]).await;
    }
    let requests = || {
        operator.metrics.upstream_count(UpstreamOutcome::Modified)
            + operator
                .metrics
                .upstream_count(UpstreamOutcome::NotModified)
    };
    let before = requests();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let fetched = requests() - before;
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
    coffer.set("web", "production", &[("A", "2")]).await;
    for i in 0..20 {
        wait_for_data(&kube, &ns, &format!("copy-{i}"), &[("A", "2")]).await;
    }
}

#[tokio::test]
async fn deleting_an_environment_retains_or_deletes_its_secret_by_policy() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer.set("web", "production", &[("A", "1")]).await;
    coffer.set("web", "staging", &[("S", "1")]).await;
    coffer.set("web", "development", &[("D", "1")]).await;
    let _operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    create_environment(&kube, &ns, "keep", "web", "production", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "drop",
        "web",
        "production",
        json!({ "deletionPolicy": "Delete" }),
    )
    .await;
    create_environment(
        &kube,
        &ns,
        "staging",
        "web",
        "staging",
        json!({ "refreshInterval": "5s" }),
    )
    .await;
    create_environment(
        &kube,
        &ns,
        "development",
        "web",
        "development",
        json!({ "refreshInterval": "5s", "deletionPolicy": "Delete" }),
    )
    .await;
    wait_for_data(&kube, &ns, "keep", &[("A", "1")]).await;
    wait_for_data(&kube, &ns, "drop", &[("A", "1")]).await;
    wait_for_data(&kube, &ns, "staging", &[("S", "1")]).await;
    wait_for_data(&kube, &ns, "development", &[("D", "1")]).await;

    let envs = Api::<Environment>::namespaced(kube.clone(), &ns);
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
        secret_data(&kube, &ns, "drop")
            .await
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    // Give the garbage collector time to act, were there still an owner reference.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = get_secret(&kube, &ns, "keep").await;
    assert!(kept.owner_references().is_empty());
    assert_eq!(
        secret_data(&kube, &ns, "keep").await.unwrap(),
        pairs(&[("A", "1")])
    );

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
    wait_for_condition(
        &kube,
        &ns,
        "staging",
        "Ready",
        "False",
        "EnvironmentNotFound",
    )
    .await;
    wait_for_condition(
        &kube,
        &ns,
        "development",
        "Synced",
        "False",
        "SecretDeleted",
    )
    .await;
    assert!(secret_data(&kube, &ns, "development").await.is_none());
    assert_eq!(
        secret_data(&kube, &ns, "staging").await.unwrap(),
        pairs(&[("S", "1")])
    );
}

#[tokio::test]
async fn invalid_specs_are_reported_with_a_reason_and_no_retry_storm() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    let operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "bad-interval",
        "web",
        "production",
        json!({ "refreshInterval": "5 minutes" }),
    )
    .await;
    create_environment(
        &kube,
        &ns,
        "too-short",
        "web",
        "production",
        json!({ "refreshInterval": "1s" }),
    )
    .await;
    create_environment(&kube, &ns, "no-project", "missing", "production", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "unknown-env",
        "web",
        "nope",
        json!({ "refreshInterval": "1m" }),
    )
    .await;
    wait_for_condition(&kube, &ns, "bad-interval", "Ready", "False", "InvalidSpec").await;
    wait_for_condition(&kube, &ns, "too-short", "Ready", "False", "InvalidSpec").await;
    wait_for_condition(
        &kube,
        &ns,
        "no-project",
        "Ready",
        "False",
        "ProjectRefNotFound",
    )
    .await;
    wait_for_condition(
        &kube,
        &ns,
        "unknown-env",
        "Ready",
        "False",
        "EnvironmentNotFound",
    )
    .await;
    let message = get_env(&kube, &ns, "bad-interval")
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
    for name in ["bad-interval", "no-project", "unknown-env"] {
        assert!(secret_data(&kube, &ns, name).await.is_none());
    }

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
    create_project(&kube, &ns, "missing", json!({ "project": "web" })).await;
    wait_for_condition(&kube, &ns, "no-project", "Ready", "True", "Synced").await;
}

#[tokio::test]
async fn a_refresh_annotation_fetches_at_once() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    coffer.project("web").await;
    coffer.set("web", "production", &[("A", "1")]).await;
    let _operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "web", json!({})).await;
    create_environment(
        &kube,
        &ns,
        "web-prod",
        "web",
        "production",
        json!({ "refreshInterval": "1h" }),
    )
    .await;
    wait_for_data(&kube, &ns, "web-prod", &[("A", "1")]).await;
    coffer.set("web", "production", &[("A", "2")]).await;
    Api::<Environment>::namespaced(kube.clone(), &ns)
        .patch(
            "web-prod",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "coffer.dev/refresh-at": "2026-11-26T10:00:00Z"
            }}})),
        )
        .await
        .unwrap();
    wait_for_data(&kube, &ns, "web-prod", &[("A", "2")]).await;
}

#[tokio::test]
async fn projects_are_created_and_deleted_in_coffer_by_their_spec() {
    let Some(env) = cluster() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let coffer = Coffer::start().await;
    let _operator = start_operator(env, config(&ns, &coffer, Some(&coffer.admin_token)));
    create_project(&kube, &ns, "absent", json!({})).await;
    create_project(
        &kube,
        &ns,
        "shop",
        json!({ "create": true, "displayName": "Shop", "deletionPolicy": "Delete" }),
    )
    .await;
    let projects = Api::<Project>::namespaced(kube.clone(), &ns);
    let reason = |name: &'static str| {
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
        (reason("absent").await == Some(("False".into(), "ProjectNotFound".into()))).then_some(())
    })
    .await
    .unwrap();
    wait_until("the project is created", TIMEOUT, || async {
        reason("shop")
            .await
            .is_some_and(|(status, _)| status == "True")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(events(&kube, &ns, "ProjectCreated").await.len(), 1);
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
    create_environment(&kube, &ns, "shop-qa", "shop", "qa", json!({})).await;
    wait_for_condition(
        &kube,
        &ns,
        "shop-qa",
        "Ready",
        "False",
        "EnvironmentNotFound",
    )
    .await;
    let envs = Api::<Environment>::namespaced(kube.clone(), &ns);
    envs.patch(
        "shop-qa",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "create": true } })),
    )
    .await
    .unwrap();
    wait_for_condition(&kube, &ns, "shop-qa", "Ready", "True", "Synced").await;
    coffer
        .admin()
        .get_environment(ORG, "shop", "qa")
        .await
        .unwrap();
    assert_eq!(
        secret_data(&kube, &ns, "shop-qa").await.unwrap(),
        pairs(&[])
    );

    // deletionPolicy Delete removes the project from coffer-server with the resource.
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
