//! The operator as deployed: under the documented RBAC only, with the committed examples, with
//! leader election between replicas, serving probes and metrics.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube_testenv::{TestEnv, wait_until};
use serde_json::json;

use crate::support::*;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `kubectl apply -n namespace -f -` with `manifest` on stdin.
fn kubectl_apply(env: &TestEnv, namespace: &str, manifest: &str) {
    let mut child = env
        .kubectl()
        .unwrap()
        .args(["apply", "-n", namespace, "-f", "-"])
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

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap()
}

#[tokio::test]
async fn the_examples_sync_end_to_end_under_the_documented_rbac_only() {
    let values = [("DATABASE_URL", "postgres://db"), ("SMOKE_TEST", "t")];
    let Some(scene) = Scene::new(&values).await else {
        return;
    };
    let (env, ns) = (scene.env, scene.ns.as_str());
    let token = scene.coffer.service_token("web", &["production"]).await;

    // The documented ClusterRole, bound to the operator's ServiceAccount.
    kubectl_apply(env, ns, &read("deploy/rbac.yaml"));
    let operator_kube = env
        .service_account_client(ns, "coffer-operator")
        .await
        .unwrap();
    kubectl_apply(
        env,
        ns,
        &serde_json::to_string(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": format!("coffer-operator-{ns}") },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "coffer-operator" },
            "subjects": [{ "kind": "ServiceAccount", "name": "coffer-operator", "namespace": ns }],
        }))
        .unwrap(),
    );
    // Nothing beyond it.
    let forbidden = Api::<ConfigMap>::namespaced(operator_kube.clone(), ns)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(e)) if e.code == 403),
        "{forbidden:?}"
    );

    // The examples, with a real token.
    let credentials =
        read("examples/credentials.yaml").replace("cfr_REPLACE_WITH_YOUR_SERVICE_TOKEN", &token);
    kubectl_apply(env, ns, &credentials);
    kubectl_apply(env, ns, &read("examples/project.yaml"));
    kubectl_apply(env, ns, &read("examples/environment.yaml"));

    let mut cfg = scene.config(None);
    cfg.leader_election = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", listener.local_addr().unwrap());
    let operator = coffer_operator::Operator::new(cfg, operator_kube);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(operator.run(Some(listener), stop.clone()));

    scene
        .wait_for_data("web-env", &[("DATABASE_URL", "postgres://db")])
        .await;
    scene
        .wait_for_condition("web-production", "Ready", "True", "Synced")
        .await;

    // Events, written with the documented permissions.
    scene.wait_for_event("Synced", false).await;

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
