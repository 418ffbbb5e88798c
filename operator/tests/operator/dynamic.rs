//! Dynamic secrets: leases issued by a real coffer-server (in this process) in a real
//! PostgreSQL, written into Secrets by the operator, renewed, replaced and revoked.
//!
//! They need `COFFER_TEST_DYNAMIC_ADMIN_URL`: a CREATEROLE (not superuser) role owning a
//! database, as `.ci/run` creates (`postgres://coffer_dyn_admin:…@127.0.0.1:5432/coffer_dyn`).
//! Without it they skip, saying so (never with `CI=true`).

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_client::{
    CreateDynamicSecretRequest, DynamicConnection, DynamicEngine, Lease, LeaseState, Revealed,
};
use coffer_operator::crd::{DynamicSecretStatus, Environment};
use coffer_operator::metrics::LeaseOperation;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube_testenv::wait_until;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::support::*;

const ADMIN_URL: &str = "COFFER_TEST_DYNAMIC_ADMIN_URL";

/// The administrator's URL of the test database, or `None` (with a note) to skip.
fn admin_url() -> Option<String> {
    match std::env::var(ADMIN_URL) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{ADMIN_URL} is not set: CI must run the dynamic secrets' tests"
            );
            eprintln!(
                "skipped: {ADMIN_URL} is not set (a CREATEROLE role owning a database, see .ci/run)"
            );
            None
        }
    }
}

/// A scene whose coffer-server has the dynamic secrets `secrets` (name, default TTL, maximum
/// TTL, in seconds) in `web/production`, minting roles with the test administrator.
async fn scene(secrets: &[(&str, u64, u64)]) -> Option<(Scene, String)> {
    let url = admin_url()?;
    let scene = Scene::new(&[("A", "1")]).await?;
    for (name, default_ttl, max_ttl) in secrets {
        let request = CreateDynamicSecretRequest {
            name: (*name).to_owned(),
            engine: DynamicEngine::Postgresql,
            connection: DynamicConnection {
                url: Revealed(SecretString::from(url.clone())),
            },
            creation_statements: None,
            revocation_statements: None,
            renew_statements: None,
            grants: None,
            username_template: None,
            password_policy: None,
            default_ttl: *default_ttl,
            max_ttl: *max_ttl,
        };
        scene
            .coffer
            .admin()
            .create_dynamic_secret(ORG, "web", "production", &request)
            .await
            .unwrap();
    }
    Some((scene, url))
}

/// An `Environment` `web-prod` syncing `production` into `web-prod` with `dynamic` as its
/// `spec.dynamicSecrets`.
async fn environment(scene: &Scene, dynamic: Value) {
    let resource: Environment = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "Environment",
        "metadata": { "name": "web-prod" },
        "spec": {
            "projectRef": { "name": "web" },
            "environment": "production",
            "sync": { "refreshInterval": "5s" },
            "dynamicSecrets": dynamic,
        },
    }))
    .unwrap();
    scene
        .api::<Environment>()
        .create(&PostParams::default(), &resource)
        .await
        .unwrap();
}

async fn set_dynamic(scene: &Scene, dynamic: Value) {
    scene
        .api::<Environment>()
        .patch(
            "web-prod",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "dynamicSecrets": dynamic } })),
        )
        .await
        .unwrap();
}

/// The status of entry `name` of `web-prod`, if it has one.
async fn entry(scene: &Scene, name: &str) -> Option<DynamicSecretStatus> {
    scene
        .get_environment("web-prod")
        .await
        .status?
        .dynamic_secrets
        .into_iter()
        .find(|e| e.name == name)
}

/// Waits until entry `name` holds a lease other than `not`, and its Secret `secret` holds the
/// credentials: the lease id and the Secret's data.
async fn leased(
    scene: &Scene,
    name: &str,
    secret: &str,
    not: Option<&str>,
) -> (String, BTreeMap<String, String>) {
    wait_until(
        &format!("{name} is leased into {secret}"),
        TIMEOUT,
        || async {
            let status = entry(scene, name).await?;
            let id = status.lease_id?;
            if Some(id.as_str()) == not || status.pending.is_some() {
                return None;
            }
            let data = scene.data(secret).await?;
            data.contains_key("password").then_some((id, data))
        },
    )
    .await
    .unwrap()
}

async fn leases(scene: &Scene, name: &str) -> Vec<Lease> {
    scene
        .coffer
        .admin()
        .list_leases(ORG, "web", "production", name)
        .await
        .unwrap()
        .items
}

async fn lease(scene: &Scene, name: &str, id: &str) -> Lease {
    scene
        .coffer
        .admin()
        .get_lease(ORG, "web", "production", name, id)
        .await
        .unwrap()
}

/// Logs in with the Secret's `connection_url` and answers who it is.
async fn log_in(data: &BTreeMap<String, String>) -> String {
    let mut conn = sqlx::PgConnection::connect(&data["connection_url"])
        .await
        .unwrap();
    let (user,): (String,) = sqlx::query_as("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    user
}

/// Whether role `name` exists, asked as the administrator.
async fn role_exists(admin_url: &str, name: &str) -> bool {
    let mut conn = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    n > 0
}

/// Waits until lease `id` of `name` is revoked and its role is gone from PostgreSQL.
async fn wait_revoked(scene: &Scene, admin_url: &str, name: &str, id: &str) {
    let username = lease(scene, name, id).await.username;
    wait_until(&format!("lease {id} is revoked"), TIMEOUT, || async {
        (lease(scene, name, id).await.state == LeaseState::Revoked).then_some(())
    })
    .await
    .unwrap();
    wait_until(&format!("role {username} is gone"), TIMEOUT, || async {
        (!role_exists(admin_url, &username).await).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_dynamic_secret_is_leased_once_and_neither_a_restart_nor_an_edit_issues_again() {
    let Some((scene, _)) = scene(&[("db", 600, 3600)]).await else {
        return;
    };
    let operator = scene.start().await;
    environment(
        &scene,
        json!([{ "name": "db", "secretName": "db-creds",
                 "templates": { "DATABASE_URL": "{{ .connection_url }}" } }]),
    )
    .await;
    let (id, data) = leased(&scene, "db", "db-creds", None).await;
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["DATABASE_URL", "connection_url", "password", "username"]
    );
    assert_eq!(data["DATABASE_URL"], data["connection_url"]);
    assert_eq!(log_in(&data).await, data["username"]);
    scene
        .wait_for_condition("web-prod", "Leased", "True", "Leased")
        .await;
    scene.wait_synced("web-prod", &[("A", "1")]).await;

    let issued = leases(&scene, "db").await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].id, id);
    assert_eq!(issued[0].state, LeaseState::Active);
    let status = entry(&scene, "db").await.unwrap();
    assert!(status.expires_at.is_some() && status.renew_at.is_some());
    // Owned by the Environment and labelled as its.
    let secret = scene.secret("db-creds").await;
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Environment", Some(true))
    );
    // Nothing secret in the status or the events.
    let status_text =
        serde_json::to_string(&scene.get_environment("web-prod").await.status).unwrap();
    let events_text = serde_json::to_string(&scene.events("LeaseIssued").await).unwrap();
    assert!(events_text.contains(&id), "{events_text}");
    for text in [&status_text, &events_text] {
        assert!(!text.contains(&data["password"]));
        assert!(!text.contains(&data["connection_url"]));
    }
    assert_eq!(operator.metrics.lease_count(LeaseOperation::Issue, true), 1);

    // A restart of the operator (or a new leader) issues nothing.
    operator.stop().await;
    let operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    wait_until("the new operator has reconciled", TIMEOUT, || async {
        (operator.metrics.reconcile_count("Environment") >= 2).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        entry(&scene, "db").await.unwrap().lease_id,
        Some(id.clone())
    );
    assert_eq!(leases(&scene, "db").await.len(), 1);
    assert_eq!(scene.data("db-creds").await.unwrap(), data);

    // Neither does an unrelated edit of the spec.
    scene
        .api::<Environment>()
        .patch(
            "web-prod",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "sync": { "labels": { "tier": "backend" } } } })),
        )
        .await
        .unwrap();
    wait_until("the label is synced", TIMEOUT, || async {
        let secret = scene.secret("web-prod").await;
        let labels = secret.metadata.labels.unwrap_or_default();
        (labels.get("tier").map(String::as_str) == Some("backend")).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(entry(&scene, "db").await.unwrap().lease_id, Some(id));
    assert_eq!(leases(&scene, "db").await.len(), 1);
    assert_eq!(scene.data("db-creds").await.unwrap(), data);
    assert_eq!(operator.metrics.lease_count(LeaseOperation::Issue, true), 0);
}

#[tokio::test]
async fn a_lease_is_renewed_then_replaced_before_its_max_ttl_with_a_restart() {
    // Leases of 4 s, renewed about 1.3 s before expiry, at most 12 s: replaced at about 10.7 s.
    let Some((scene, admin_url)) = scene(&[("db", 4, 12)]).await else {
        return;
    };
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "app" },
        "spec": {
            "selector": { "matchLabels": { "app": "app" } },
            "template": {
                "metadata": { "labels": { "app": "app" } },
                "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1",
                    "envFrom": [{ "secretRef": { "name": "db-creds" } }] }] },
            },
        },
    }))
    .unwrap();
    let deployments = scene.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let _operator = scene.start().await;
    environment(
        &scene,
        json!([{ "name": "db", "secretName": "db-creds", "ttl": "4s",
                 "rolloutRestart": [{ "kind": "Deployment", "name": "app" }] }]),
    )
    .await;
    let (first, data) = leased(&scene, "db", "db-creds", None).await;
    assert_eq!(log_in(&data).await, data["username"]);
    let template_hash = |d: Deployment| {
        d.spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("coffer.dev/secret-hash").cloned())
    };
    assert_eq!(
        template_hash(deployments.get("app").await.unwrap()),
        None,
        "the first lease restarts nothing"
    );

    // Renewed before it expires: the same credentials, valid longer.
    let renewed = wait_until("the lease is renewed", TIMEOUT, || async {
        let l = lease(&scene, "db", &first).await;
        (l.renewals >= 1).then_some(l)
    })
    .await
    .unwrap();
    assert_eq!(renewed.state, LeaseState::Active);
    assert_eq!(scene.data("db-creds").await.unwrap(), data);
    assert_eq!(log_in(&data).await, data["username"]);

    // Replaced before its maximum: new credentials, the workload restarted, the old lease
    // revoked after the grace period (1 s in these tests) and its role dropped.
    let (second, next) = leased(&scene, "db", "db-creds", Some(&first)).await;
    assert_ne!(next["username"], data["username"]);
    assert_eq!(log_in(&next).await, next["username"]);
    let status = entry(&scene, "db").await.unwrap();
    assert_eq!(status.restarted_workloads, ["Deployment/app"]);
    let hash = status.secret_hash.unwrap();
    wait_until("the deployment is restarted", TIMEOUT, || async {
        let current = template_hash(deployments.get("app").await.unwrap());
        (current.as_deref() == Some(hash.as_str())).then_some(())
    })
    .await
    .unwrap();
    wait_revoked(&scene, &admin_url, "db", &first).await;
    assert_eq!(lease(&scene, "db", &second).await.state, LeaseState::Active);
    scene.wait_for_event("RolloutRestarted", false).await;
}

#[tokio::test]
async fn removing_an_entry_or_deleting_the_environment_revokes_its_leases() {
    let Some((scene, admin_url)) = scene(&[("db", 600, 3600), ("reports", 600, 3600)]).await else {
        return;
    };
    let _operator = scene.start().await;
    let both = json!([{ "name": "db", "secretName": "db-creds" },
                      { "name": "reports", "secretName": "reports-creds" }]);
    environment(&scene, both.clone()).await;
    let (db, _) = leased(&scene, "db", "db-creds", None).await;
    let (reports, _) = leased(&scene, "reports", "reports-creds", None).await;

    // Removing an entry revokes its lease, drops its role and deletes its Secret.
    set_dynamic(&scene, json!([{ "name": "db", "secretName": "db-creds" }])).await;
    wait_revoked(&scene, &admin_url, "reports", &reports).await;
    wait_until("reports-creds is deleted", TIMEOUT, || async {
        scene.data("reports-creds").await.is_none().then_some(())
    })
    .await
    .unwrap();
    wait_until("the entry leaves the status", TIMEOUT, || async {
        entry(&scene, "reports").await.is_none().then_some(())
    })
    .await
    .unwrap();
    assert_eq!(lease(&scene, "db", &db).await.state, LeaseState::Active);

    // Added again under the same name: a lease of its own, never the revoked one again.
    set_dynamic(&scene, both).await;
    let (again, data) = leased(&scene, "reports", "reports-creds", None).await;
    assert_ne!(again, reports);
    assert_eq!(log_in(&data).await, data["username"]);
    assert_eq!(leases(&scene, "reports").await.len(), 2);

    // Deleting the Environment revokes every lease before it goes.
    scene
        .api::<Environment>()
        .delete("web-prod", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the Environment is gone", TIMEOUT, || async {
        scene
            .api::<Environment>()
            .get_opt("web-prod")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    for (name, id) in [("db", &db), ("reports", &again)] {
        let l = lease(&scene, name, id).await;
        assert_eq!(l.state, LeaseState::Revoked, "{name}: {l:?}");
        assert!(!role_exists(&admin_url, &l.username).await, "{name}");
    }
    wait_until("the Secrets are deleted", TIMEOUT, || async {
        let gone =
            scene.data("db-creds").await.is_none() && scene.data("reports-creds").await.is_none();
        gone.then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_outage_of_coffer_server_keeps_the_credentials_and_says_why() {
    let Some((mut scene, _)) = scene(&[("db", 600, 3600)]).await else {
        return;
    };
    let _operator = scene.start().await;
    environment(
        &scene,
        json!([{ "name": "db", "secretName": "db-creds", "renewBefore": "599s" }]),
    )
    .await;
    let (id, data) = leased(&scene, "db", "db-creds", None).await;
    scene.coffer.stop().await;
    wait_until(
        "Leased says coffer-server is unreachable",
        TIMEOUT,
        || async {
            let c = scene.condition("web-prod", "Leased").await?;
            (c == ("False".to_owned(), "ServerUnreachable".to_owned())).then_some(())
        },
    )
    .await
    .unwrap();
    let status = entry(&scene, "db").await.unwrap();
    assert_eq!(status.lease_id.as_deref(), Some(id.as_str()));
    assert_eq!(status.reason.as_deref(), Some("ServerUnreachable"));
    assert_eq!(scene.data("db-creds").await.unwrap(), data);

    // Back: the renewal goes through, the same lease and credentials.
    scene.coffer.resume().await;
    scene
        .wait_for_condition("web-prod", "Leased", "True", "Leased")
        .await;
    assert!(lease(&scene, "db", &id).await.renewals >= 1);
    assert_eq!(entry(&scene, "db").await.unwrap().lease_id, Some(id));
    assert_eq!(scene.data("db-creds").await.unwrap(), data);
    assert_eq!(leases(&scene, "db").await.len(), 1);
}

#[tokio::test]
async fn a_lease_someone_else_issued_under_the_next_key_is_revoked_and_the_key_skipped() {
    let Some((scene, admin_url)) = scene(&[("db", 600, 3600)]).await else {
        return;
    };
    // The Environment first, with no Project to read it yet: nothing is issued.
    let _operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    environment(&scene, json!([{ "name": "db", "secretName": "db-creds" }])).await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "ProjectRefNotFound")
        .await;
    let resource = scene.get_environment("web-prod").await;
    let (uid, generation) = (
        resource.metadata.uid.unwrap(),
        resource.metadata.generation.unwrap(),
    );
    // Another caller takes the key of the first lease.
    let token = scene.coffer.service_token("web", &["production"]).await;
    let other = coffer_client::Client::new(&scene.coffer.url, SecretString::from(token)).unwrap();
    let key = format!("coffer-operator/{uid}/db/{generation}/0");
    let taken = other
        .issue_lease(
            ORG,
            "web",
            "production",
            "db",
            &coffer_client::IssueLeaseRequest::default(),
            Some(&key),
        )
        .await
        .unwrap();

    // The operator finds it used: revokes that lease, and issues under the next key.
    scene.project("web", json!({})).await;
    let (id, data) = leased(&scene, "db", "db-creds", None).await;
    assert_ne!(id, taken.id);
    assert_eq!(log_in(&data).await, data["username"]);
    wait_revoked(&scene, &admin_url, "db", &taken.id).await;
    let status = entry(&scene, "db").await.unwrap();
    assert_eq!(status.rotation, 2, "key 0 skipped, key 1 used");
    let ours = lease(&scene, "db", &id).await;
    assert_eq!(
        ours.idempotency_key.as_deref(),
        Some(format!("coffer-operator/{uid}/db/{generation}/1").as_str())
    );
}
