//! What `spec.sync` makes of an environment, against the real kube-apiserver: renamed keys,
//! templates, immutable Secrets, creation policies and a changed `secretName`.

use coffer_operator::crd::Environment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube_testenv::wait_until;
use serde_json::{Value, json};

use crate::support::*;

async fn patch_sync(scene: &Scene, name: &str, sync: Value) {
    scene
        .api::<Environment>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "sync": sync } })),
        )
        .await
        .unwrap();
}

/// Deletes the `Environment` `name` with `propagation` and waits until it is gone.
async fn delete_environment(scene: &Scene, name: &str, propagation: PropagationPolicy) {
    let envs = scene.api::<Environment>();
    let params = DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    envs.delete(name, &params).await.unwrap();
    wait_until(&format!("Environment {name} is gone"), TIMEOUT, || async {
        envs.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await
    .unwrap();
}

/// The `Environment` of `operator/examples/<file>`, syncing every 5 s, created.
async fn create_example(scene: &Scene, file: &str) -> Environment {
    let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut env: Environment =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    env.spec.sync.refresh_interval = "5s".to_owned();
    scene
        .api::<Environment>()
        .create(&PostParams::default(), &env)
        .await
        .unwrap()
}

async fn wait_until_gone(scene: &Scene, secret: &str) {
    wait_until(&format!("Secret {secret} is gone"), TIMEOUT, || async {
        scene.data(secret).await.is_none().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tls_secret_is_synced_from_renamed_keys() {
    let cert = rcgen::generate_simple_self_signed(vec!["web.example".to_owned()]).unwrap();
    let (crt, key) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let values = [
        ("WEB_TLS_CERT", crt.as_str()),
        ("WEB_TLS_KEY", key.as_str()),
        ("DB_PASSWORD", "not for this Secret"),
    ];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let _operator = scene.start().await;
    // The Environment of `operator/examples/environment-tls.yaml`: Secret and resource `web-tls`.
    create_example(&scene, "environment-tls.yaml").await;
    scene
        .wait_for_data("web-tls", &[("tls.crt", &crt), ("tls.key", &key)])
        .await;
    assert_eq!(
        scene.secret("web-tls").await.type_.as_deref(),
        Some("kubernetes.io/tls")
    );
    scene
        .wait_for_condition("web-tls", "Ready", "True", "Synced")
        .await;

    // Two keys written to one Secret key: refused, and the Secret stays as it was.
    patch_sync(
        &scene,
        "web-tls",
        json!({ "keys": [
            { "from": "WEB_TLS_CERT", "to": "tls.crt" },
            { "from": "WEB_TLS_KEY", "to": "tls.crt" },
        ] }),
    )
    .await;
    scene
        .wait_for_condition("web-tls", "Ready", "False", "InvalidSpec")
        .await;
    let message = scene.condition_message("web-tls", "Ready").await;
    assert!(
        message.starts_with("spec.sync.keys[1].to: Secret key \"tls.crt\" is already written"),
        "{message}"
    );
    assert_eq!(
        scene.data("web-tls").await.unwrap(),
        pairs(&[("tls.crt", &crt), ("tls.key", &key)])
    );
}

#[tokio::test]
async fn a_dockerconfigjson_secret_is_built_by_a_template() {
    let values = [
        ("REGISTRY_USER", "robot"),
        ("REGISTRY_PASSWORD", "pa\"ss:word"),
        ("UNRELATED", "u"),
    ];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let _operator = scene.start().await;
    // `operator/examples/environment-registry.yaml`: Secret and resource `registry-pull`.
    create_example(&scene, "environment-registry.yaml").await;
    let auth = |user: &str, password: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };
    let expect = |password: &str| {
        json!({ "auths": { "registry.example.com": {
            "username": "robot", "password": password, "auth": auth("robot", password),
        } } })
    };
    let read = || async {
        let data = scene.data("registry-pull").await?;
        assert_eq!(data.keys().collect::<Vec<_>>(), [".dockerconfigjson"]);
        serde_json::from_str::<Value>(&data[".dockerconfigjson"]).ok()
    };
    wait_until("the docker config is written", TIMEOUT, || async {
        (read().await == Some(expect("pa\"ss:word"))).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        scene.secret("registry-pull").await.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );

    // A new password reaches the built key.
    scene
        .coffer
        .set("web", "production", &[("REGISTRY_PASSWORD", "n3w")])
        .await;
    wait_until(
        "the docker config follows the password",
        TIMEOUT,
        || async { (read().await == Some(expect("n3w"))).then_some(()) },
    )
    .await
    .unwrap();

    // A template reading a key the environment lacks: reported by name and place, never
    // with a value; the Secret keeps its data.
    patch_sync(
        &scene,
        "registry-pull",
        json!({ "templates": { ".dockerconfigjson": "{{ .REGISTRY_USER }}{{ .MISSING }}" } }),
    )
    .await;
    scene
        .wait_for_condition("registry-pull", "Ready", "False", "InvalidSpec")
        .await;
    let status = scene.get_environment("registry-pull").await.status.unwrap();
    let message = scene.condition_message("registry-pull", "Ready").await;
    assert!(
        message.starts_with(
            "spec.sync.templates[\".dockerconfigjson\"]: at byte 23: .MISSING is not a key"
        ),
        "{message}"
    );
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("robot") && !text.contains("n3w"));
    assert_eq!(read().await, Some(expect("n3w")));
}

#[tokio::test]
async fn an_immutable_secret_keeps_its_data_until_it_is_deleted() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start().await;
    scene
        .environment(
            "frozen",
            "production",
            json!({ "immutable": true, "refreshInterval": "5s" }),
        )
        .await;
    scene.wait_for_data("frozen", &[("A", "1")]).await;
    assert_eq!(scene.secret("frozen").await.immutable, Some(true));
    scene
        .wait_for_condition("frozen", "Ready", "True", "Synced")
        .await;

    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene
        .wait_for_condition("frozen", "Ready", "False", "SecretImmutable")
        .await;
    scene
        .wait_for_condition("frozen", "Synced", "False", "SecretImmutable")
        .await;
    assert_eq!(scene.data("frozen").await.unwrap(), pairs(&[("A", "1")]));
    scene.wait_for_event("SecretImmutable", true).await;

    // Deleting it has it created anew, immutable, with the current data.
    scene
        .api::<Secret>()
        .delete("frozen", &DeleteParams::default())
        .await
        .unwrap();
    scene.wait_for_data("frozen", &[("A", "2")]).await;
    assert_eq!(scene.secret("frozen").await.immutable, Some(true));
    scene
        .wait_for_condition("frozen", "Ready", "True", "Synced")
        .await;
}

#[tokio::test]
async fn an_orphan_secret_has_no_owner_and_outlives_its_environment() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start().await;
    scene
        .environment(
            "contradiction",
            "production",
            json!({ "creationPolicy": "Orphan", "deletionPolicy": "Delete" }),
        )
        .await;
    scene
        .environment(
            "orphan",
            "production",
            json!({ "creationPolicy": "Orphan" }),
        )
        .await;
    scene.wait_for_data("orphan", &[("A", "1")]).await;
    let secret = scene.secret("orphan").await;
    assert!(secret.owner_references().is_empty());
    assert_eq!(secret.labels()["coffer.dev/environment"], "orphan");
    scene
        .wait_for_condition("contradiction", "Ready", "False", "InvalidSpec")
        .await;
    assert!(scene.data("contradiction").await.is_none());

    // Kept up to date while the Environment lives ...
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene
        .api::<Environment>()
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "coffer.dev/refresh-at": "1" } } })),
        )
        .await
        .unwrap();
    scene.wait_for_data("orphan", &[("A", "2")]).await;
    // ... and kept, with its data, when it goes, even under foreground deletion.
    delete_environment(&scene, "orphan", PropagationPolicy::Foreground).await;
    assert_eq!(scene.data("orphan").await.unwrap(), pairs(&[("A", "2")]));
}

#[tokio::test]
async fn a_merge_writes_into_a_foreign_secret_and_removes_only_its_keys() {
    let Some(scene) = Scene::new(&[("DB_PASSWORD", "pw"), ("API_KEY", "k")]).await else {
        return;
    };
    let _operator = scene.start().await;
    scene
        .environment(
            "merge",
            "production",
            json!({
                "creationPolicy": "Merge",
                "secretName": "shared",
                "refreshInterval": "5s",
                "keys": [{ "from": "DB_PASSWORD", "to": "password" }],
                "labels": { "synced-from": "coffer" },
            }),
        )
        .await;
    scene
        .wait_for_condition("merge", "Ready", "False", "SecretNotFound")
        .await;
    assert!(scene.data("shared").await.is_none(), "never created");

    let shared: Secret = serde_json::from_value(json!({
        "metadata": { "name": "shared", "labels": { "team": "payments" } },
        "stringData": { "FOREIGN": "theirs", "password": "old" },
    }))
    .unwrap();
    scene
        .api::<Secret>()
        .create(&PostParams::default(), &shared)
        .await
        .unwrap();
    // Only a Secret its owner opened to merging is written into.
    scene
        .wait_for_condition("merge", "Ready", "False", "SecretNotOwned")
        .await;
    assert_eq!(
        scene.data("shared").await.unwrap(),
        pairs(&[("FOREIGN", "theirs"), ("password", "old")])
    );
    scene
        .api::<Secret>()
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "coffer.dev/merge": "true" } } })),
        )
        .await
        .unwrap();
    // A second Environment merges into the same Secret, each with its own field manager.
    scene
        .coffer
        .set("web", "staging", &[("STAGING_URL", "s")])
        .await;
    scene
        .environment(
            "merge-staging",
            "staging",
            json!({ "creationPolicy": "Merge", "secretName": "shared", "refreshInterval": "5s" }),
        )
        .await;
    let mut ours = vec![("FOREIGN", "theirs"), ("STAGING_URL", "s")];
    ours.extend([("password", "pw"), ("API_KEY", "k")]);
    scene.wait_for_data("shared", &ours).await;
    scene
        .wait_for_condition("merge", "Ready", "True", "Synced")
        .await;
    let secret = scene.secret("shared").await;
    assert_eq!(secret.labels()["team"], "payments");
    assert_eq!(secret.labels()["synced-from"], "coffer");
    assert!(!secret.labels().contains_key("app.kubernetes.io/managed-by"));
    assert!(secret.owner_references().is_empty());
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));

    // Merged already: the passes that follow write nothing.
    let env_version = scene.get_environment("merge").await.resource_version();
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    assert_eq!(
        scene.secret("shared").await.resource_version(),
        secret.resource_version()
    );
    assert_eq!(
        scene.get_environment("merge").await.resource_version(),
        env_version
    );

    // A hand edit of a merged key is repaired at once, found through the owner's opt-in label,
    // not at the next refresh (an hour away here).
    let interval = |every: &str| json!({ "spec": { "sync": { "refreshInterval": every } } });
    let envs = scene.api::<Environment>();
    envs.patch(
        "merge",
        &PatchParams::default(),
        &Patch::Merge(interval("1h")),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    scene
        .api::<Secret>()
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "password": "tampered" } })),
        )
        .await
        .unwrap();
    scene.wait_for_data("shared", &ours).await;
    envs.patch(
        "merge",
        &PatchParams::default(),
        &Patch::Merge(interval("5s")),
    )
    .await
    .unwrap();

    // A key removed in coffer-server goes; the foreign key stays.
    scene.coffer.delete("web", "production", "API_KEY").await;
    scene
        .wait_for_data(
            "shared",
            &[
                ("FOREIGN", "theirs"),
                ("STAGING_URL", "s"),
                ("password", "pw"),
            ],
        )
        .await;

    // Deleting an Environment removes only its keys and labels: the Secret stays.
    delete_environment(&scene, "merge", PropagationPolicy::Foreground).await;
    scene
        .wait_for_data("shared", &[("FOREIGN", "theirs"), ("STAGING_URL", "s")])
        .await;
    let secret = scene.secret("shared").await;
    assert_eq!(secret.labels()["team"], "payments");
    assert!(!secret.labels().contains_key("synced-from"));
}

#[tokio::test]
async fn a_new_secret_name_deletes_or_releases_the_old_secret_by_policy() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let _operator = scene.start().await;
    let sync = |name: &str, policy: &str| {
        let mut sync = json!({ "secretName": name, "deletionPolicy": policy });
        sync["refreshInterval"] = json!("5s");
        sync
    };
    scene
        .environment("drop", "production", sync("drop-1", "Delete"))
        .await;
    scene
        .environment("keep", "production", sync("keep-1", "Retain"))
        .await;
    for name in ["drop-1", "keep-1"] {
        scene.wait_for_data(name, &[("A", "1")]).await;
    }
    let recorded = |env: Environment| env.status.and_then(|s| s.secret_name);
    assert_eq!(
        recorded(scene.get_environment("drop").await).as_deref(),
        Some("drop-1")
    );

    patch_sync(&scene, "drop", json!({ "secretName": "drop-2" })).await;
    patch_sync(&scene, "keep", json!({ "secretName": "keep-2" })).await;
    scene.wait_for_data("drop-2", &[("A", "1")]).await;
    scene.wait_for_data("keep-2", &[("A", "1")]).await;
    // Delete: the old Secret goes.
    wait_until_gone(&scene, "drop-1").await;
    for (env, name) in [("drop", "drop-2"), ("keep", "keep-2")] {
        wait_until("the new name is recorded", TIMEOUT, || async {
            (recorded(scene.get_environment(env).await).as_deref() == Some(name)).then_some(())
        })
        .await
        .unwrap();
    }
    // Retain: the old Secret stays as it was, without owner, and is no longer synced.
    let old = scene.secret("keep-1").await;
    assert!(old.owner_references().is_empty());
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene.wait_for_data("keep-2", &[("A", "2")]).await;
    scene.wait_for_data("drop-2", &[("A", "2")]).await;
    assert_eq!(scene.data("keep-1").await.unwrap(), pairs(&[("A", "1")]));
    assert!(scene.data("drop-1").await.is_none());
}
