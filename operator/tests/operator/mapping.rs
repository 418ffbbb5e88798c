//! What `spec.sync` makes of an environment, against the real kube-apiserver: renamed keys,
//! templates and immutable Secrets.

use coffer_operator::crd::Environment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
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
    let ready = scene.get_environment("web-tls").await.status.unwrap();
    let message = &ready
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
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
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
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
