//! The committed CRD manifests (`crds/`) match the Rust types, and a real kube-apiserver
//! (Kubernetes 1.20, see `tests/kube-testenv`) accepts them, applies their defaults and explains
//! their fields.

use std::path::PathBuf;

use coffer_operator::crd::{
    CredentialsRef, DeletionPolicy, Environment, EnvironmentStatus, Project, ProjectSpec,
    WorkloadKind,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt as _, ResourceExt as _};
use serde_json::json;

const BLESS: &str = "COFFER_BLESS";

fn committed() -> Vec<(PathBuf, CustomResourceDefinition)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    vec![
        (dir.join("project.yaml"), Project::crd()),
        (dir.join("environment.yaml"), Environment::crd()),
    ]
}

#[test]
fn the_committed_crds_match_the_rust_types() {
    let bless = std::env::var_os(BLESS).is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (path, crd) in committed() {
        let expected = coffer_operator::crd_yaml(&crd);
        if bless {
            std::fs::write(&path, &expected).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with operator/src/crd: {}\n\
         regenerate them with `{BLESS}=1 cargo test -p coffer-operator --test operator crds` and commit them",
        stale.join(", ")
    );
}

#[test]
fn the_crd_command_prints_every_committed_crd() {
    let printed = coffer_operator::crds_yaml();
    for (path, crd) in committed() {
        assert!(
            printed.contains(&coffer_operator::crd_yaml(&crd)),
            "{} missing from `coffer-operator crd`",
            path.display()
        );
    }
    assert_eq!(printed.matches("---\n").count(), committed().len());
}

#[test]
fn the_schemas_are_structural_for_kubernetes_1_20() {
    // 1.20 has no CEL, and refuses $ref, anyOf/oneOf/allOf without types and untyped properties
    for (path, crd) in committed() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let text = schema.to_string();
        for forbidden in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "x-kubernetes-validations",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} contains {forbidden}",
                path.display()
            );
        }
        every_property_is_typed(&schema["openAPIV3Schema"], "", &path);
    }
}

fn every_property_is_typed(schema: &serde_json::Value, at: &str, path: &std::path::Path) {
    assert!(
        schema.get("type").is_some(),
        "{}: {at} has no type",
        path.display()
    );
    if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, property) in properties {
            every_property_is_typed(property, &format!("{at}.{name}"), path);
        }
    }
    if let Some(items) = schema.get("items") {
        every_property_is_typed(items, &format!("{at}[]"), path);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        every_property_is_typed(values, &format!("{at}{{}}"), path);
    }
}

#[tokio::test]
async fn the_api_server_accepts_the_crds_and_applies_the_defaults() {
    let Some(env) = crate::support::cluster() else {
        return; // skipped: kube-testenv said why (never skipped with CI=true)
    };
    let client = env.client().unwrap();
    let namespace = env.create_namespace().await.unwrap();

    // a typed Project, written in full, reads back the same
    let projects = Api::<Project>::namespaced(client.clone(), &namespace);
    let project = Project::new(
        "web",
        ProjectSpec {
            organization: "acme".to_owned(),
            project: Some("storefront".to_owned()),
            display_name: Some("Storefront".to_owned()),
            create: true,
            server_url: Some("https://coffer.example.com".to_owned()),
            ca_bundle_ref: None,
            credentials_ref: Some(CredentialsRef {
                name: "coffer-token".to_owned(),
                key: "token".to_owned(),
            }),
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    let created = projects
        .create(&PostParams::default(), &project)
        .await
        .unwrap();
    assert_eq!(created.spec, project.spec);
    assert_eq!(
        projects.get("web").await.unwrap().project_slug(),
        "storefront"
    );

    // a minimal Project gets the server-side defaults
    let apply = PatchParams::apply("coffer-operator-test").force();
    let minimal_project = json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "Project",
        "metadata": { "name": "api" },
        "spec": { "organization": "acme" },
    });
    let api = projects
        .patch("api", &apply, &Patch::Apply(&minimal_project))
        .await
        .unwrap();
    assert_eq!(api.spec.project, None);
    assert_eq!(api.project_slug(), "api");
    assert!(!api.spec.create);
    assert_eq!(api.spec.deletion_policy, DeletionPolicy::Retain);

    // a minimal Environment gets the whole sync block by default
    let environments = Api::<Environment>::namespaced(client.clone(), &namespace);
    let minimal_environment = json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "Environment",
        "metadata": { "name": "web-production" },
        "spec": { "projectRef": { "name": "web" }, "environment": "production" },
    });
    environments
        .patch(
            "web-production",
            &apply,
            &Patch::Apply(&minimal_environment),
        )
        .await
        .unwrap();
    let environment = environments.get("web-production").await.unwrap();
    assert_eq!(environment.spec.project_ref.name, "web");
    assert!(!environment.spec.create);
    let sync = &environment.spec.sync;
    assert_eq!(sync.type_, "Opaque");
    assert_eq!(sync.refresh_interval, "5m");
    assert_eq!(sync.deletion_policy, DeletionPolicy::Retain);
    assert!(sync.labels.is_empty() && sync.include.is_empty() && sync.rollout_restart.is_empty());
    assert_eq!(environment.secret_name(), "web-production");
    assert_eq!(
        environment.refresh_interval().unwrap(),
        std::time::Duration::from_secs(300)
    );

    // partial sync blocks keep what is given and default the rest
    let partial = json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "Environment",
        "metadata": { "name": "web-staging" },
        "spec": {
            "projectRef": { "name": "web" },
            "environment": "staging",
            "sync": {
                "secretName": "web-env",
                "include": ["DB_*"],
                "rolloutRestart": [{ "kind": "StatefulSet", "name": "db" }],
            },
        },
    });
    let staging = environments
        .patch("web-staging", &apply, &Patch::Apply(&partial))
        .await
        .unwrap();
    assert_eq!(staging.secret_name(), "web-env");
    assert_eq!(staging.spec.sync.refresh_interval, "5m");
    assert_eq!(staging.spec.sync.include, ["DB_*"]);
    assert_eq!(
        staging.spec.sync.rollout_restart[0].kind,
        WorkloadKind::StatefulSet
    );

    // the enum is enforced by the schema
    let mut bad_kind = partial.clone();
    bad_kind["metadata"]["name"] = json!("bad-kind");
    bad_kind["spec"]["sync"]["rolloutRestart"][0]["kind"] = json!("Pod");
    let refused = environments
        .patch("bad-kind", &apply, &Patch::Apply(&bad_kind))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 422),
        "{refused:?}"
    );

    // status is a subresource, and feeds the printer columns
    let status = EnvironmentStatus {
        revision: Some(7),
        synced_keys: Some(3),
        secret_hash: Some("hmac-sha256:0123".to_owned()),
        ..EnvironmentStatus::default()
    };
    let with_status = environments
        .patch_status(
            "web-production",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    assert_eq!(with_status.status, Some(status));
    assert_eq!(with_status.name_any(), "web-production");

    let Some(mut kubectl) = env.kubectl() else {
        return;
    };
    let output = kubectl
        .args(["get", "cenv", "web-production", "-n", &namespace])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let row = lines.next().unwrap();
    // an empty cell (Ready, no conditions yet) is blank: read the cells by column position
    let cell = |column: &str| {
        let start = header
            .find(column)
            .unwrap_or_else(|| panic!("no {column}: {table}"));
        let end = header[start..]
            .find(char::is_whitespace)
            .and_then(|n| {
                header[start + n..]
                    .find(|c: char| !c.is_whitespace())
                    .map(|m| start + n + m)
            })
            .unwrap_or(row.len());
        row.get(start..end.min(row.len())).unwrap_or("").trim()
    };
    assert_eq!(cell("NAME"), "web-production", "{table}");
    assert_eq!(cell("READY"), "", "{table}");
    assert_eq!(cell("REVISION"), "7", "{table}");
    assert_eq!(cell("KEYS"), "3", "{table}");
    assert!(header.contains("AGE"), "{table}");
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_descriptions() {
    let Some(env) = crate::support::cluster() else {
        return; // skipped: kube-testenv said why (never skipped with CI=true)
    };
    for (resource, expected) in [
        (
            "environments.spec.sync",
            "How the environment's secrets are written",
        ),
        ("environments.spec.sync.refreshInterval", "minimum: `5s`"),
        ("projects.spec.credentialsRef", "service token"),
    ] {
        // explain reads the published OpenAPI document, which follows a new CRD within seconds
        kube_testenv::wait_until(
            &format!("`kubectl explain {resource}` shows {expected:?}"),
            std::time::Duration::from_secs(30),
            || {
                let explained = env.kubectl().map(|mut kubectl| {
                    kubectl
                        .args(["explain", "--api-version=coffer.dev/v1alpha1", resource])
                        .output()
                        .unwrap()
                });
                // no kubectl (outside CI): nothing to wait for
                let done = explained.is_none_or(|output| {
                    // kubectl wraps long descriptions
                    let text = String::from_utf8_lossy(&output.stdout);
                    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    output.status.success() && text.contains(expected)
                });
                std::future::ready(done.then_some(()))
            },
        )
        .await
        .unwrap();
    }
}
