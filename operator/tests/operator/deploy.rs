//! The operator as deployed: under the documented RBAC only, with the committed examples, with
//! leader election between replicas, serving probes and metrics.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use coffer_operator::crd::{Environment, Project};
use coffer_operator::environment::REFRESH_ANNOTATION;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PostParams};
use kube_testenv::{TestEnv, wait_until};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `kubectl apply -n namespace -f - [args]` with `manifest` on stdin.
pub(crate) fn kubectl_apply(env: &TestEnv, namespace: &str, manifest: &str, args: &[&str]) {
    let mut child = env
        .kubectl()
        .unwrap()
        .args(["apply", "-n", namespace, "-f", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap()
}

/// The objects of `deploy/rbac.yaml` whose label `coffer.dev/rbac-mode` matches `modes` (a
/// label selector value), applied as its header says: `kubectl apply -n namespace -l …`, for an
/// operator running in `operator_namespace`.
fn apply_rbac(env: &TestEnv, namespace: &str, operator_namespace: &str, modes: &str) {
    // The cluster-scoped objects are shared by the tests: one kubectl creates them at a time.
    static APPLYING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let manifest = read("deploy/rbac.yaml").replace(
        "namespace: coffer-system",
        &format!("namespace: {operator_namespace}"),
    );
    assert!(manifest.contains(&format!("namespace: {operator_namespace}")));
    let selector = format!("coffer.dev/rbac-mode in ({modes})");
    let _applying = APPLYING.lock().unwrap_or_else(|e| e.into_inner());
    kubectl_apply(env, namespace, &manifest, &["-l", &selector]);
}

/// The operator's ServiceAccount, once RBAC lets it read the data-hash key in its namespace.
async fn operator_client(env: &TestEnv, operator_namespace: &str) -> kube::Client {
    let kube = env
        .service_account_client(operator_namespace, "coffer-operator")
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(kube.clone(), operator_namespace);
    wait_until("the operator's Role applies", TIMEOUT, || async {
        secrets.get_opt(HASH_KEY).await.ok()
    })
    .await
    .unwrap();
    kube
}

const HASH_KEY: &str = "coffer-operator-hash-key";

#[track_caller]
pub(crate) fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    assert!(
        matches!(&result, Err(kube::Error::Api(e)) if e.code == 403),
        "{what}: {result:?}"
    );
}

async fn serve(
    operator: coffer_operator::Operator,
) -> (String, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(operator.run(Some(listener), stop.clone()));
    (http, stop, task)
}

#[tokio::test]
async fn the_examples_sync_end_to_end_under_the_documented_rbac_only() {
    let values = [("DATABASE_URL", "postgres://db"), ("SMOKE_TEST", "t")];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let (env, ns) = (scene.env, scene.ns.as_str());
    let token = scene.coffer.service_token("web", &["production"]).await;

    // The documented RBAC of an operator watching every namespace.
    apply_rbac(env, ns, ns, "always,cluster-wide");
    let operator_kube = operator_client(env, ns).await;
    // Nothing beyond it.
    assert_forbidden(
        "list ConfigMaps",
        Api::<ConfigMap>::namespaced(operator_kube.clone(), ns)
            .list(&ListParams::default())
            .await,
    );
    let elsewhere = env.create_namespace().await.unwrap();
    assert_forbidden(
        "a Lease outside the operator's namespace",
        Api::<Lease>::namespaced(operator_kube.clone(), &elsewhere)
            .get("coffer-operator")
            .await,
    );
    // Every namespace can be watched. (The operator below watches its own only: the control
    // plane is shared with other tests, whose resources it must leave alone.)
    let one = ListParams::default().limit(1);
    Api::<Environment>::all(operator_kube.clone())
        .list(&one)
        .await
        .unwrap();
    Api::<Project>::all(operator_kube.clone())
        .list(&one)
        .await
        .unwrap();
    Api::<Secret>::all(operator_kube.clone())
        .list_metadata(&one)
        .await
        .unwrap();

    // The examples, with a real token.
    let credentials =
        read("examples/credentials.yaml").replace("cfr_REPLACE_WITH_YOUR_SERVICE_TOKEN", &token);
    kubectl_apply(env, ns, &credentials, &[]);
    kubectl_apply(env, ns, &read("examples/project.yaml"), &[]);
    kubectl_apply(env, ns, &read("examples/environment.yaml"), &[]);

    let mut cfg = scene.config(None);
    cfg.leader_election = true;
    let operator = coffer_operator::Operator::new(cfg, operator_kube.clone());
    let (http, stop, task) = serve(operator).await;

    scene
        .wait_for_data("web-env", &[("DATABASE_URL", "postgres://db")])
        .await;
    scene
        .wait_for_condition("web-production", "Ready", "True", "Synced")
        .await;
    // A change is written too (fetched now rather than at the next refresh).
    scene
        .coffer
        .set("web", "production", &[("DATABASE_URL", "postgres://db2")])
        .await;
    let refresh = json!({ "metadata": { "annotations": { REFRESH_ANNOTATION: "1" } } });
    scene
        .api::<Environment>()
        .patch(
            "web-production",
            &Default::default(),
            &Patch::Merge(&refresh),
        )
        .await
        .unwrap();
    scene
        .wait_for_data("web-env", &[("DATABASE_URL", "postgres://db2")])
        .await;

    // Events, written with the documented permissions.
    scene.wait_for_event("Synced", false).await;

    // The resources are patched, never updated.
    let environments = Api::<Environment>::namespaced(operator_kube.clone(), ns);
    let current = scene.get_environment("web-production").await;
    assert_forbidden(
        "update an Environment",
        environments
            .replace("web-production", &Default::default(), &current)
            .await,
    );

    // Probes and metrics.
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(format!("{http}{path}")).await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let metrics = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "coffer_operator_reconciles_total{kind=\"Environment\"}",
        "coffer_operator_upstream_requests_total{outcome=\"modified\"}",
        "coffer_operator_reconcile_duration_seconds_bucket",
        "coffer_operator_sync_lag_seconds",
        "coffer_operator_leader 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    for secret in ["postgres://db", token.as_str()] {
        assert!(!metrics.contains(secret));
    }

    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A `Project` "web" and an `Environment` "web-prod" of its production environment in
/// `namespace`, made by the admin.
pub(crate) async fn project_and_environment(kube: &kube::Client, namespace: &str) {
    let project: Project = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1", "kind": "Project",
        "metadata": { "name": "web" },
        "spec": { "organization": ORG, "project": "web" },
    }))
    .unwrap();
    Api::<Project>::namespaced(kube.clone(), namespace)
        .create(&PostParams::default(), &project)
        .await
        .unwrap();
    let environment: Environment = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1", "kind": "Environment",
        "metadata": { "name": "web-prod" },
        "spec": { "projectRef": { "name": "web" }, "environment": "production",
                  "sync": { "refreshInterval": "5s" } },
    }))
    .unwrap();
    Api::<Environment>::namespaced(kube.clone(), namespace)
        .create(&PostParams::default(), &environment)
        .await
        .unwrap();
}

/// Waits until Secret `namespace/name` holds `key` = `value`.
pub(crate) async fn wait_for_value(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
    value: &str,
) {
    let secrets = Api::<Secret>::namespaced(kube.clone(), namespace);
    wait_until(
        &format!("{namespace}/{name} holds {key}"),
        TIMEOUT,
        || async {
            let secret = secrets.get_opt(name).await.unwrap()?;
            let held = secret.data?.remove(key)?;
            (held.0 == value.as_bytes()).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn in_namespaced_mode_the_operator_works_in_its_namespaces_only() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let (env, kube) = (scene.env, &scene.kube);
    let operator_ns = env.create_namespace().await.unwrap();
    let watched = [scene.ns.clone(), env.create_namespace().await.unwrap()];
    let unwatched = env.create_namespace().await.unwrap();

    // The documented RBAC of an operator watching two namespaces.
    apply_rbac(env, &operator_ns, &operator_ns, "always");
    for ns in &watched {
        apply_rbac(env, ns, &operator_ns, "namespaced");
    }
    let operator_kube = operator_client(env, &operator_ns).await;

    let mut cfg = scene.config(Some(&scene.coffer.admin_token));
    cfg.namespaces = watched.to_vec();
    cfg.operator_namespace = Some(operator_ns.clone());
    cfg.leader_election = true;
    cfg.identity = Some("replica-a".to_owned());
    let operator = start_operator_as(operator_kube.clone(), cfg);
    for ns in &watched {
        project_and_environment(kube, ns).await;
    }
    for ns in &watched {
        wait_for_value(kube, ns, "web-prod", "A", "1").await;
    }
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    for ns in &watched {
        wait_for_value(kube, ns, "web-prod", "A", "2").await;
    }
    assert_eq!(
        holder(kube, &operator_ns).await.as_deref(),
        Some("replica-a")
    );
    assert!(operator.metrics.is_ready());

    // Outside its namespaces, nothing.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "other" }, "stringData": { "x": "y" },
    }))
    .unwrap();
    for ns in [&unwatched, &operator_ns] {
        Api::<Secret>::namespaced(kube.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        assert_forbidden(
            &format!("read a Secret in {ns}"),
            Api::<Secret>::namespaced(operator_kube.clone(), ns)
                .get("other")
                .await,
        );
    }
    assert_forbidden(
        "list Secrets everywhere",
        Api::<Secret>::all(operator_kube.clone())
            .list_metadata(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "list Environments everywhere",
        Api::<Environment>::all(operator_kube.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "list Environments in an unwatched namespace",
        Api::<Environment>::namespaced(operator_kube.clone(), &unwatched)
            .list(&ListParams::default())
            .await,
    );
    // The resources are patched, never updated.
    let current = scene.get_environment("web-prod").await;
    assert_forbidden(
        "update an Environment",
        Api::<Environment>::namespaced(operator_kube.clone(), &scene.ns)
            .replace("web-prod", &PostParams::default(), &current)
            .await,
    );
    // Leases in its own namespace, and only its own.
    let lease: Lease =
        serde_json::from_value(json!({ "metadata": { "name": "coffer-operator" } })).unwrap();
    assert_forbidden(
        "read a Lease in a watched namespace",
        Api::<Lease>::namespaced(operator_kube.clone(), &scene.ns)
            .get("coffer-operator")
            .await,
    );
    assert_forbidden(
        "create a Lease in a watched namespace",
        Api::<Lease>::namespaced(operator_kube.clone(), &scene.ns)
            .create(&PostParams::default(), &lease)
            .await,
    );
    let other_lease: Lease =
        serde_json::from_value(json!({ "metadata": { "name": "someone-else" } })).unwrap();
    Api::<Lease>::namespaced(kube.clone(), &operator_ns)
        .create(&PostParams::default(), &other_lease)
        .await
        .unwrap();
    assert_forbidden(
        "patch another Lease of its namespace",
        Api::<Lease>::namespaced(operator_kube.clone(), &operator_ns)
            .patch(
                "someone-else",
                &Default::default(),
                &Patch::Merge(json!({ "spec": { "holderIdentity": "replica-a" } })),
            )
            .await,
    );
    operator.stop().await;
}

#[tokio::test]
async fn the_operator_is_ready_only_while_it_can_list_and_watch_its_resources() {
    let logs = captured_logs();
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let (env, kube, ns) = (scene.env, &scene.kube, scene.ns.as_str());
    // Its own namespace's rights only: the custom resources cannot be listed.
    apply_rbac(env, ns, ns, "always");
    let operator_kube = operator_client(env, ns).await;
    let operator = coffer_operator::Operator::new(
        scene.config(Some(&scene.coffer.admin_token)),
        operator_kube,
    );
    let (http, stop, task) = serve(operator).await;
    let readyz = || async {
        let r = reqwest::get(format!("{http}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let warned = |needle: &'static str| {
        move || async move {
            logs.text()
                .lines()
                .any(|l| l.contains(" WARN ") && l.contains(needle) && l.contains(ns))
                .then_some(())
        }
    };
    wait_until(
        "a warning: the resources cannot be listed",
        TIMEOUT,
        warned("cannot list the custom resources"),
    )
    .await
    .unwrap();
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");

    // Listed but not watched: started, the watches fail.
    let list_only: Role = serde_json::from_value(json!({
        "metadata": { "name": "list-only" },
        "rules": [{ "apiGroups": ["coffer.dev"], "resources": ["projects", "environments"],
                    "verbs": ["list"] }],
    }))
    .unwrap();
    Api::<Role>::namespaced(kube.clone(), ns)
        .create(&PostParams::default(), &list_only)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "list-only" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-only" },
        "subjects": [{ "kind": "ServiceAccount", "name": "coffer-operator", "namespace": ns }],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(kube.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    wait_until(
        "a warning: the watches fail",
        TIMEOUT,
        warned("watch failed"),
    )
    .await
    .unwrap();
    wait_until("/readyz names the failing watches", TIMEOUT, || async {
        let (status, body) = readyz().await;
        (status == 503 && body.contains("watches failing")).then_some(())
    })
    .await
    .unwrap();

    // Granted what the documentation says: ready, and syncing.
    apply_rbac(env, ns, ns, "namespaced");
    scene.project("web", json!({})).await;
    scene.environment("web-prod", "production", json!({})).await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;
    wait_until("/readyz says ready", TIMEOUT, || async {
        (readyz().await.0 == 200).then_some(())
    })
    .await
    .unwrap();
    assert!(
        !logs.text().contains(&scene.coffer.admin_token),
        "the token was logged"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

async fn holder(kube: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(kube.clone(), ns)
        .get_opt("coffer-operator")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

#[tokio::test]
async fn of_two_replicas_only_the_leader_writes() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let (kube, ns) = (&scene.kube, scene.ns.as_str());
    let replica = |identity: &str| {
        let mut cfg = scene.config(Some(&scene.coffer.admin_token));
        cfg.leader_election = true;
        cfg.identity = Some(identity.to_owned());
        scene.operator(cfg)
    };
    let a = replica("replica-a");
    wait_until("replica-a leads", TIMEOUT, || async {
        (holder(kube, ns).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await
    .unwrap();
    let b = replica("replica-b");
    scene.project("web", json!({})).await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene.wait_for_data("web-prod", &[("A", "2")]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(a.metrics.reconcile_count("Environment") > 0);
    assert_eq!(
        b.metrics.reconcile_count("Environment"),
        0,
        "the standby wrote"
    );
    assert_eq!(b.metrics.reconcile_count("Project"), 0, "the standby wrote");
    assert_eq!(holder(kube, ns).await.as_deref(), Some("replica-a"));

    // The leader goes; the standby takes over and carries on.
    let a_metrics = a.metrics.clone();
    a.stop().await;
    let a_reconciles = a_metrics.reconcile_count("Environment");
    wait_until("replica-b leads", TIMEOUT, || async {
        (holder(kube, ns).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await
    .unwrap();
    scene.coffer.set("web", "production", &[("A", "3")]).await;
    scene.wait_for_data("web-prod", &[("A", "3")]).await;
    assert!(b.metrics.reconcile_count("Environment") > 0);
    assert_eq!(a_metrics.reconcile_count("Environment"), a_reconciles);

    // A leader that dies without handing over: the standby waits for the lease to expire,
    // and acts only then.
    let c = replica("replica-c");
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.crash().await;
    scene.coffer.set("web", "production", &[("A", "4")]).await;
    wait_until("replica-c leads", TIMEOUT, || async {
        let holder = holder(kube, ns).await;
        if holder.as_deref() == Some("replica-b") {
            assert_eq!(
                c.metrics.reconcile_count("Environment"),
                0,
                "c acted while b held the lease"
            );
        }
        (holder.as_deref() == Some("replica-c")).then_some(())
    })
    .await
    .unwrap();
    scene.wait_for_data("web-prod", &[("A", "4")]).await;
    c.stop().await;
}

/// A TCP relay to the API server that can be cut, as a network partition cuts one replica off.
struct Relay {
    port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(env: &TestEnv) -> Self {
        let upstream = env.config().cluster_url.authority().unwrap().to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = tokio::sync::watch::channel(true);
        let gate = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = gate.subscribe();
                if !*cut.borrow() {
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    /// A client of the admin user whose every connection goes through the relay.
    fn client(&self, env: &TestEnv) -> kube::Client {
        let mut config = env.config().clone();
        config.cluster_url = format!("https://127.0.0.1:{}", self.port).parse().unwrap();
        kube::Client::try_from(config).unwrap()
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_another_can_take_over() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    let (kube, ns) = (&scene.kube, scene.ns.as_str());
    let config = |identity: &str| {
        let mut cfg = scene.config(Some(&scene.coffer.admin_token));
        cfg.leader_election = true;
        cfg.identity = Some(identity.to_owned());
        cfg
    };
    let relay = Relay::start(scene.env).await;
    let a = start_operator_as(relay.client(scene.env), config("replica-a"));
    wait_until("replica-a leads", TIMEOUT, || async {
        (holder(kube, ns).await.as_deref() == Some("replica-a") && a.metrics.is_leader())
            .then_some(())
    })
    .await
    .unwrap();
    scene.project("web", json!({})).await;
    scene
        .environment("web-prod", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene.wait_for_data("web-prod", &[("A", "1")]).await;

    // Cut off, replica-a cannot renew; its lease manager still believes it leads.
    let b = scene.operator(config("replica-b"));
    relay.set_open(false);
    wait_until("replica-b leads", TIMEOUT, || async {
        let holder = holder(kube, ns).await;
        if holder.as_deref() == Some("replica-b") {
            assert!(
                !a.metrics.is_leader(),
                "replica-a still acted as the leader when replica-b took over"
            );
        }
        (holder.as_deref() == Some("replica-b")).then_some(())
    })
    .await
    .unwrap();

    // Back in touch, replica-a acts no more: replica-b syncs the next change alone.
    let a_reconciles = a.metrics.reconcile_count("Environment");
    relay.set_open(true);
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene.wait_for_data("web-prod", &[("A", "2")]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a.metrics.is_leader());
    assert_eq!(a.metrics.reconcile_count("Environment"), a_reconciles);
    assert!(b.metrics.reconcile_count("Environment") > 0);
    a.crash().await;
    b.stop().await;
}
