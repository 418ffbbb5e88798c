//! Whoever may create a `Project` cannot use the operator to send a Secret they may not read,
//! or the operator's token, to a server of their choosing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use coffer_operator::crd::Project;

use kube_testenv::wait_until;

use crate::support::{Coffer, RunningOperator, Scene, TIMEOUT};

/// Waits until the `Project` `name`'s `Ready` condition has `status` and `reason`: the Project
/// controller writes it in its own pass, not with the Environment's.
async fn wait_for_project_ready(scene: &Scene, name: &str, status: &str, reason: &str) {
    let what = format!("project {name} has Ready={status} ({reason})");
    wait_until(&what, TIMEOUT, || async {
        let project = scene.api::<Project>().get(name).await.ok()?;
        project
            .status?
            .conditions
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == status && c.reason == reason)
            .then_some(())
    })
    .await
    .unwrap();
}

/// A local port that counts the connections made to it and answers none.
async fn listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (url, seen)
}

/// A credentials Secret holding a service token of `web/production` under `token`, with
/// `labels`, and the key the `Project` reads from it.
struct Credentials {
    name: &'static str,
    labels: serde_json::Value,
    key: &'static str,
}

/// Starts an operator without a token of its own, with the `Project` `web` reading `secret`, and
/// the `Environment` `web-prod` of `production` refreshed every `interval`. Returns the operator
/// and the token.
async fn sync_with(
    scene: &Scene,
    secret: Credentials,
    interval: &str,
) -> (RunningOperator, String) {
    let token = scene.coffer.service_token("web", &["production"]).await;
    scene.credentials(secret.name, &token, secret.labels).await;
    let operator = scene.operator(scene.config(None));
    let credentials_ref = json!({ "name": secret.name, "key": secret.key });
    scene
        .project("web", json!({ "credentialsRef": credentials_ref }))
        .await;
    scene
        .environment(
            "web-prod",
            "production",
            json!({ "refreshInterval": interval }),
        )
        .await;
    (operator, token)
}

#[tokio::test]
async fn a_credentials_secret_is_used_only_when_labelled_for_it() {
    let values = [("A", "value-marker-a1")];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let secret = Credentials {
        name: "db-password",
        labels: json!({}),
        key: "token",
    };
    let (_operator, _token) = sync_with(&scene, secret, "5s").await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "CredentialsNotAllowed")
        .await;
    scene.wait_for_event("CredentialsNotAllowed", true).await;
    wait_for_project_ready(&scene, "web", "False", "CredentialsNotAllowed").await;
    assert!(scene.data("web-prod").await.is_none());

    // a label with another value is no opt-in either
    let label =
        |value: &str| json!({ "metadata": { "labels": { "coffer.dev/credentials": value } } });
    let secrets = scene.api::<Secret>();
    let params = PatchParams::default();
    secrets
        .patch("db-password", &params, &Patch::Merge(label("yes")))
        .await
        .unwrap();
    scene
        .wait_for_condition("web-prod", "Ready", "False", "CredentialsNotAllowed")
        .await;

    secrets
        .patch("db-password", &params, &Patch::Merge(label("true")))
        .await
        .unwrap();
    scene.wait_synced("web-prod", &values).await;
}

#[tokio::test]
async fn credentials_go_only_to_allowed_servers_and_never_over_plain_http_to_another_machine() {
    let Some(scene) = Scene::new(&[]).await else {
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
    let (elsewhere, seen) = listener().await;
    let credentials_ref = json!({ "name": "coffer-token", "key": "token" });

    let operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    // not on the list (the default list is the operator's own server)
    scene
        .project(
            "web",
            json!({ "serverUrl": elsewhere, "credentialsRef": credentials_ref }),
        )
        .await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "ServerNotAllowed")
        .await;
    scene.wait_for_event("ServerNotAllowed", true).await;
    wait_for_project_ready(&scene, "web", "False", "ServerNotAllowed").await;
    assert_eq!(seen.load(Ordering::SeqCst), 0, "a connection was made");
    operator.stop().await;

    // with `*`, https anywhere, plain http only on this machine
    let mut config = scene.config(Some(&scene.coffer.admin_token));
    config.allowed_servers = vec!["*".to_owned()];
    let _operator = scene.operator(config);
    scene
        .project(
            "remote",
            json!({ "serverUrl": "http://10.255.255.1:8080", "credentialsRef": credentials_ref }),
        )
        .await;
    scene
        .environment_of(
            "remote-prod",
            "remote",
            "production",
            json!({ "refreshInterval": "5s" }),
        )
        .await;
    scene
        .wait_for_condition("remote-prod", "Ready", "False", "ServerNotAllowed")
        .await;
    // the loopback listener is now allowed, and is tried
    scene
        .wait_for_condition("web-prod", "Ready", "False", "ServerUnreachable")
        .await;
    assert!(seen.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn the_ca_bundle_makes_a_server_with_a_private_ca_trusted() {
    let Some(mut scene) = Scene::new(&[]).await else {
        return;
    };
    let tls = Coffer::start_tls().await;
    tls.project("web").await;
    tls.set("web", "production", &[("A", "value-marker-tls")])
        .await;
    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bundle.path(), tls.ca_pem.as_deref().unwrap()).unwrap();
    scene.coffer = tls;

    // without the bundle the server's certificate is not trusted, and nothing syncs
    let operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    scene.project("web", json!({})).await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "ServerUnreachable")
        .await;
    assert!(scene.data("web-prod").await.is_none());
    operator.stop().await;

    let mut config = scene.config(Some(&scene.coffer.admin_token));
    config.ca_bundle = Some(bundle.path().to_owned());
    let _operator = scene.operator(config);
    scene
        .wait_synced("web-prod", &[("A", "value-marker-tls")])
        .await;
}

#[tokio::test]
async fn a_projects_own_ca_bundle_makes_its_server_trusted() {
    let Some(mut scene) = Scene::new(&[]).await else {
        return;
    };
    let tls = Coffer::start_tls().await;
    tls.project("web").await;
    tls.set("web", "production", &[("A", "value-marker-own-ca")])
        .await;
    let pem = tls.ca_pem.clone().unwrap();
    let token = tls.service_token("web", &["production"]).await;
    scene.coffer = tls;
    scene
        .credentials(
            "coffer-token",
            &token,
            json!({ "coffer.dev/credentials": "true" }),
        )
        .await;

    let _operator = scene.operator(scene.config(Some(&scene.coffer.admin_token)));
    scene
        .project(
            "web",
            json!({
                "caBundleRef": { "name": "coffer-ca", "key": "ca.crt" },
                "credentialsRef": { "name": "coffer-token", "key": "token" },
            }),
        )
        .await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "CaBundleNotFound")
        .await;
    scene.wait_for_event("CaBundleNotFound", true).await;

    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "coffer-ca" },
        "data": { "ca.crt": pem },
    }))
    .unwrap();
    scene
        .api::<ConfigMap>()
        .create(&PostParams::default(), &map)
        .await
        .unwrap();
    scene
        .wait_synced("web-prod", &[("A", "value-marker-own-ca")])
        .await;
}

#[tokio::test]
async fn a_changed_credentials_secret_takes_effect_at_once() {
    let values = [("A", "1")];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    // The Secret holds the token under `token`, the Project reads `current`.
    let secret = Credentials {
        name: "coffer-token",
        labels: json!({ "coffer.dev/credentials": "true" }),
        key: "current",
    };
    // An hour between polls: only the watch of the credentials Secret can wake it.
    let (_operator, token) = sync_with(&scene, secret, "1h").await;
    scene
        .wait_for_condition("web-prod", "Ready", "False", "CredentialsNotFound")
        .await;
    let rotated = json!({ "stringData": { "current": token } });
    scene
        .api::<Secret>()
        .patch(
            "coffer-token",
            &PatchParams::default(),
            &Patch::Merge(rotated),
        )
        .await
        .unwrap();
    scene.wait_synced("web-prod", &values).await;
}
