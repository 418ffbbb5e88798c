//! What the operator relies on from Kubernetes, checked against the real control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodTemplate, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, ObjectMeta};
use kube::runtime::{watcher, watcher::Event};
use kube::{Client, CustomResource, CustomResourceExt as _, Resource as _, ResourceExt as _};
use kube_testenv::{TestEnv, wait_until};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Long enough for a loaded 2-core machine; the garbage collector and the namespace controller
/// usually finish within seconds.
const PATIENCE: Duration = Duration::from_secs(120);

/// A test kind with a status subresource.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "testenv.coffer.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
pub struct WidgetSpec {
    size: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    observed_size: Option<i64>,
}

/// Every test uses this, so the Widget CRD exists before the garbage collector starts.
fn env() -> Option<&'static TestEnv> {
    TestEnv::builder().crd(Widget::crd()).get()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn config_map(name: &str, key: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(name),
        data: Some([(key.to_owned(), value.to_owned())].into()),
        ..ConfigMap::default()
    }
}

fn is_status(result: &Result<impl Sized, kube::Error>, code: u16) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == code)
}

async fn is_gone<K>(api: &Api<K>, name: &str) -> Option<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    is_status(&api.get(name).await, 404).then_some(())
}

/// Reads `stream` until an item that `wanted` accepts, skipping the others.
async fn next_matching<T: std::fmt::Debug>(
    stream: &mut (impl Stream<Item = T> + Unpin),
    what: &str,
    mut wanted: impl FnMut(&T) -> bool,
) {
    let mut skipped = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.next().await {
            if wanted(&item) {
                return Some(());
            }
            skipped.push(format!("{item:?}"));
        }
        None
    })
    .await;
    match found {
        Ok(Some(())) => {}
        Ok(None) => panic!("the stream ended before {what}; skipped: {skipped:#?}"),
        Err(_) => panic!("timed out waiting for {what}; skipped: {skipped:#?}"),
    }
}

fn data_of(event: &Result<Event<ConfigMap>, watcher::Error>, key: &str) -> Option<String> {
    match event {
        Ok(Event::Apply(cm)) => cm.data.as_ref()?.get(key).cloned(),
        _ => None,
    }
}

#[tokio::test]
async fn a_watcher_sees_objects_created_updated_and_deleted() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let api = Api::<ConfigMap>::namespaced(env.client().unwrap(), &ns);
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    next_matching(&mut events, "the initial list", |e| {
        matches!(e, Ok(Event::InitDone))
    })
    .await;

    api.create(&PostParams::default(), &config_map("watched", "v", "1"))
        .await
        .unwrap();
    next_matching(&mut events, "the creation", |e| {
        data_of(e, "v").as_deref() == Some("1")
    })
    .await;

    let patch = json!({ "data": { "v": "2" } });
    api.patch("watched", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    next_matching(&mut events, "the update", |e| {
        data_of(e, "v").as_deref() == Some("2")
    })
    .await;

    api.delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    next_matching(
        &mut events,
        "the deletion",
        |e| matches!(e, Ok(Event::Delete(cm)) if cm.name_any() == "watched"),
    )
    .await;
}

#[tokio::test]
async fn a_watcher_relists_when_its_resource_version_has_expired() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let client = env.client().unwrap();
    // PodTemplates bypass kube-apiserver's watch cache here, so their watches read etcd's history
    let templates = Api::<PodTemplate>::namespaced(client.clone(), &ns);
    let template: PodTemplate = serde_json::from_value(json!({
        "metadata": { "name": "listed" },
        "template": { "spec": { "containers": [{ "name": "app", "image": "app" }] } }
    }))
    .unwrap();
    templates
        .create(&PostParams::default(), &template)
        .await
        .unwrap();

    // the server ends each watch after a second and the watcher resumes from its resourceVersion
    let mut events = watcher(templates.clone(), watcher::Config::default().timeout(1)).boxed();
    next_matching(&mut events, "the initial list", |e| {
        matches!(e, Ok(Event::InitDone))
    })
    .await;

    // move etcd's revision past the watcher's without touching PodTemplates, then drop the history
    let config_maps = Api::<ConfigMap>::namespaced(client, &ns);
    for name in ["churn-1", "churn-2"] {
        config_maps
            .create(&PostParams::default(), &config_map(name, "k", "v"))
            .await
            .unwrap();
    }
    env.compact_etcd().await.unwrap();

    next_matching(
        &mut events,
        "410 Gone",
        |e| matches!(e, Err(watcher::Error::WatchError(status)) if status.code == 410),
    )
    .await;
    next_matching(&mut events, "a new list", |e| matches!(e, Ok(Event::Init))).await;
    next_matching(
        &mut events,
        "the listed template",
        |e| matches!(e, Ok(Event::InitApply(t)) if t.name_any() == "listed"),
    )
    .await;
    next_matching(&mut events, "the end of the new list", |e| {
        matches!(e, Ok(Event::InitDone))
    })
    .await;
}

#[tokio::test]
async fn a_finalizer_keeps_a_deleted_object_until_it_is_removed() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let api = Api::<ConfigMap>::namespaced(env.client().unwrap(), &ns);
    let mut held = config_map("held", "k", "v");
    held.metadata.finalizers = Some(vec!["testenv.coffer.dev/hold".to_owned()]);
    api.create(&PostParams::default(), &held).await.unwrap();

    api.delete("held", &DeleteParams::default()).await.unwrap();
    let still_there = api.get("held").await.unwrap();
    assert!(still_there.metadata.deletion_timestamp.is_some());

    let release = json!({ "metadata": { "finalizers": null } });
    api.patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    wait_until("the released object is gone", PATIENCE, || {
        is_gone(&api, "held")
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_status_update_leaves_the_generation_alone_and_a_spec_update_bumps_it() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let api = Api::<Widget>::namespaced(env.client().unwrap(), &ns);
    let created = api
        .create(
            &PostParams::default(),
            &Widget::new("gen", WidgetSpec { size: 1 }),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let status = json!({ "status": { "observedSize": 1 } });
    let after_status = api
        .patch_status("gen", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after_status.metadata.generation, Some(1));
    assert_eq!(after_status.status.unwrap().observed_size, Some(1));

    // the main resource ignores status, the status subresource ignores spec
    let both = json!({ "spec": { "size": 2 }, "status": { "observedSize": 7 } });
    let after_spec = api
        .patch("gen", &PatchParams::default(), &Patch::Merge(&both))
        .await
        .unwrap();
    assert_eq!(after_spec.metadata.generation, Some(2));
    assert_eq!(after_spec.spec.size, 2);
    assert_eq!(after_spec.status.unwrap().observed_size, Some(1));
}

#[tokio::test]
async fn unknown_fields_of_a_custom_resource_are_pruned() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let resource = ApiResource::erase::<Widget>(&());
    let api = Api::<DynamicObject>::namespaced_with(env.client().unwrap(), &ns, &resource);
    let mut widget = DynamicObject::new("pruned", &resource);
    widget.data = json!({ "spec": { "size": 3, "colour": "red" }, "extra": true });
    let stored = api.create(&PostParams::default(), &widget).await.unwrap();
    assert_eq!(stored.data["spec"], json!({ "size": 3 }));
    assert!(stored.data.get("extra").is_none(), "{:?}", stored.data);
}

#[tokio::test]
async fn server_side_apply_creates_and_updates_an_object_and_reports_conflicts() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let api = Api::<ConfigMap>::namespaced(env.client().unwrap(), &ns);
    let apply = |data: serde_json::Value| json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "applied" }, "data": data });
    let ours = PatchParams::apply("kube-testenv-test");

    let created = api
        .patch("applied", &ours, &Patch::Apply(apply(json!({ "a": "1" }))))
        .await
        .unwrap();
    assert_eq!(created.data.unwrap()["a"], "1");
    let managers: Vec<_> = created
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["kube-testenv-test"]);

    // fields we applied before and leave out now are removed
    let updated = api
        .patch("applied", &ours, &Patch::Apply(apply(json!({ "b": "2" }))))
        .await
        .unwrap();
    assert_eq!(
        updated.data.unwrap(),
        [("b".to_owned(), "2".to_owned())].into()
    );

    let theirs = PatchParams::apply("someone-else");
    let conflict = api
        .patch(
            "applied",
            &theirs,
            &Patch::Apply(apply(json!({ "b": "3" }))),
        )
        .await;
    assert!(is_status(&conflict, 409), "{conflict:?}");
    let forced = api
        .patch(
            "applied",
            &theirs.force(),
            &Patch::Apply(apply(json!({ "b": "3" }))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["b"], "3");
}

#[tokio::test]
async fn a_secret_owned_by_a_custom_resource_is_garbage_collected_after_its_owner_is_deleted() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let client = env.client().unwrap();
    let widgets = Api::<Widget>::namespaced(client.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(client, &ns);
    let owner = widgets
        .create(
            &PostParams::default(),
            &Widget::new("owner", WidgetSpec { size: 1 }),
        )
        .await
        .unwrap();
    let owned = Secret {
        metadata: ObjectMeta {
            owner_references: Some(vec![owner.controller_owner_ref(&()).unwrap()]),
            ..meta("owned")
        },
        string_data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    let unowned = Secret {
        metadata: meta("unowned"),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &unowned)
        .await
        .unwrap();

    widgets
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the owned secret is collected", PATIENCE, || {
        is_gone(&secrets, "owned")
    })
    .await
    .unwrap();
    secrets.get("unowned").await.unwrap();
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_objects() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let client = env.client().unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config_map("doomed", "k", "v"))
        .await
        .unwrap();
    Api::<Widget>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Widget::new("doomed", WidgetSpec { size: 1 }),
        )
        .await
        .unwrap();

    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the namespace is gone", PATIENCE, || {
        is_gone(&namespaces, &ns)
    })
    .await
    .unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    assert!(
        config_maps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let widgets = Api::<Widget>::namespaced(client, &ns);
    assert!(
        widgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

fn config_map_reader(name: &str) -> Role {
    Role {
        metadata: meta(name),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_owned()]),
            verbs: vec!["get".to_owned(), "list".to_owned()],
            ..PolicyRule::default()
        }]),
    }
}

fn binding(name: &str, role: &str, subject: Subject) -> RoleBinding {
    RoleBinding {
        metadata: meta(name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: role.to_owned(),
        },
        subjects: Some(vec![subject]),
    }
}

/// Lists ConfigMaps and Secrets in `ns` as `client`: the HTTP status of each, or 200.
async fn list_statuses(client: &Client, ns: &str) -> (u16, u16) {
    fn code<T>(result: Result<T, kube::Error>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(kube::Error::Api(status)) => status.code,
            Err(e) => panic!("{e}"),
        }
    }
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await;
    (code(config_maps), code(secrets))
}

async fn grant(env: &TestEnv, ns: &str, subject: Subject) {
    let admin = env.client().unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &config_map_reader("reader"))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(
            &PostParams::default(),
            &binding("reader", "reader", subject),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_service_account_is_refused_without_a_role_and_allowed_what_its_role_grants() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let account = env.service_account_client(&ns, "operator").await.unwrap();
    assert_eq!(list_statuses(&account, &ns).await, (403, 403));

    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: "operator".to_owned(),
        namespace: Some(ns.clone()),
        ..Subject::default()
    };
    grant(env, &ns, subject).await;
    wait_until("the role binding takes effect", PATIENCE, || async {
        (list_statuses(&account, &ns).await == (200, 403)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_impersonated_user_gets_what_its_group_is_granted() {
    let Some(env) = env() else { return };
    let ns = env.create_namespace().await.unwrap();
    let alice = env.impersonating_client("alice", &["developers"]).unwrap();
    assert_eq!(list_statuses(&alice, &ns).await, (403, 403));

    let subject = Subject {
        kind: "Group".to_owned(),
        name: "developers".to_owned(),
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        ..Subject::default()
    };
    grant(env, &ns, subject).await;
    wait_until("the role binding takes effect", PATIENCE, || async {
        (list_statuses(&alice, &ns).await == (200, 403)).then_some(())
    })
    .await
    .unwrap();
}

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.testenv.coffer.dev
spec:
  group: testenv.coffer.dev
  names: { kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                colour: { type: string }
"#;

const GADGET: &str = r"
apiVersion: testenv.coffer.dev/v1
kind: Gadget
metadata:
  name: blue
spec:
  colour: blue
";

#[tokio::test]
async fn kubectl_applies_a_crd_and_a_custom_resource() {
    let Some(env) = env() else { return };
    if env.kubectl().is_none() {
        return;
    }
    let ns = env.create_namespace().await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let crd = files.path().join("crd.yaml");
    let gadget = files.path().join("gadget.yaml");
    std::fs::write(&crd, GADGET_CRD).unwrap();
    std::fs::write(&gadget, GADGET).unwrap();

    let kubectl = |args: &[&str]| {
        let mut command = env.kubectl().unwrap();
        let output = command.args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let crd = crd.to_str().unwrap().to_owned();
    let gadget = gadget.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        kubectl(&["apply", "-f", &crd]);
        kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=120s",
            "crd/gadgets.testenv.coffer.dev",
        ]);
        kubectl(&["apply", "-n", &ns, "-f", &gadget]);
        let colour = kubectl(&[
            "get",
            "gadget",
            "blue",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.colour}",
        ]);
        assert_eq!(colour, "blue");
    })
    .await
    .unwrap();
}
