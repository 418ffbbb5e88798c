//! What the cluster tests share: the control plane with the committed CRDs, a real coffer-server
//! (SQLite, in this process) that can be stopped and started again, and the operator itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_client::{
    BulkUpsertRequest, Client, CreateSecretRequest, CreateServiceTokenRequest, TokenAccess,
};
use coffer_operator::crd::{Environment, Project};
use coffer_operator::metrics::Metrics;
use coffer_operator::{Config, Operator};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube_testenv::{TestEnv, wait_until};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ORG: &str = "acme";
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The committed CRD manifests, as one YAML stream.
pub fn all_committed_yaml() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    ["project.yaml", "environment.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The shared control plane with the CRDs installed; `None` when skipped (never in CI).
pub fn cluster() -> Option<&'static TestEnv> {
    TestEnv::builder().crd_yaml(&all_committed_yaml()).get()
}

/// A coffer-server on a fixed loopback port with its data in a temporary directory, so it can
/// be stopped and started again with the same data.
pub struct Coffer {
    pub url: String,
    /// A read-write personal API key of the organization's owner.
    pub admin_token: String,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Coffer {
    /// Starts a server with organization [`ORG`], its owner, and an admin API key.
    pub async fn start() -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut coffer = Self {
            url: format!("http://{addr}"),
            admin_token: String::new(),
            addr,
            dir: tempfile::tempdir().unwrap(),
            running: None,
        };
        coffer.resume().await;
        let http = reqwest::Client::new();
        let session: Value = http
            .post(format!("{}/api/v1/auth/register", coffer.url))
            .json(&json!({
                "email": "owner@acme.test",
                "password": "correct horse battery staple",
                "name": "Owner",
            }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let access = session["access_token"].as_str().unwrap().to_owned();
        http.post(format!("{}/api/v1/orgs", coffer.url))
            .bearer_auth(&access)
            .json(&json!({ "name": "Acme", "slug": ORG }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        let key: Value = http
            .post(format!("{}/api/v1/api-keys", coffer.url))
            .bearer_auth(&access)
            .json(&json!({ "name": "operator tests", "read_only": false }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        coffer.admin_token = key["token"].as_str().unwrap().to_owned();
        coffer
    }

    /// Starts (again) serving the same data on the same address.
    pub async fn resume(&mut self) {
        assert!(self.running.is_none(), "already running");
        let mut config = coffer_server::config::Config::defaults();
        config.data_dir = self.dir.path().to_path_buf();
        config.listen = self.addr;
        config.password_hash_concurrency = Some(2);
        let state = coffer_server::start(config).await.unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                coffer_server::serve_until(state, stop.cancelled_owned())
                    .await
                    .unwrap();
            }
        });
        self.running = Some((stop, task));
        let url = format!("{}/health", self.url);
        wait_until("coffer-server answers", TIMEOUT, || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await
        .unwrap();
    }

    /// Stops serving; connections are refused until [`Coffer::resume`].
    pub async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("running");
        stop.cancel();
        task.await.unwrap();
    }

    /// A client with the admin API key.
    pub fn admin(&self) -> Client {
        Client::new(&self.url, SecretString::from(self.admin_token.clone())).unwrap()
    }

    /// Creates `project` with the default environments (development, staging, production).
    pub async fn project(&self, project: &str) {
        self.admin()
            .create_project(
                ORG,
                &coffer_client::CreateProjectRequest {
                    name: project.to_owned(),
                    slug: project.to_owned(),
                    environments: None,
                },
            )
            .await
            .unwrap();
    }

    /// A read-only service token for `environments` of `project`.
    pub async fn service_token(&self, project: &str, environments: &[&str]) -> String {
        let created = self
            .admin()
            .create_service_token(
                ORG,
                &CreateServiceTokenRequest {
                    name: format!("operator-{project}"),
                    project: project.to_owned(),
                    environments: environments.iter().map(|e| (*e).to_owned()).collect(),
                    access: TokenAccess::Read,
                    expires_in_days: None,
                },
            )
            .await
            .unwrap();
        secrecy::ExposeSecret::expose_secret(&created.token.0).to_owned()
    }

    /// Sets `pairs` in `project/env`.
    pub async fn set(&self, project: &str, env: &str, pairs: &[(&str, &str)]) {
        let request = BulkUpsertRequest {
            secrets: pairs
                .iter()
                .map(|(k, v)| CreateSecretRequest {
                    key: (*k).to_owned(),
                    value: SecretString::from((*v).to_owned()),
                    comment: None,
                })
                .collect(),
        };
        self.admin()
            .bulk_upsert(ORG, project, env, &request)
            .await
            .unwrap();
    }

    pub async fn delete(&self, project: &str, env: &str, key: &str) {
        self.admin()
            .delete_secret(ORG, project, env, key)
            .await
            .unwrap();
    }
}

/// A running operator, stopped when dropped.
pub struct RunningOperator {
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningOperator {
    /// Stops the operator and waits for it (it hands over its lease if it held one).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The configuration of an operator confined to `namespace` (each test has its own), with
/// `coffer` as its default server and `token` as its default credentials.
pub fn config(namespace: &str, coffer: &Coffer, token: Option<&str>) -> Config {
    Config {
        server_url: Some(coffer.url.clone()),
        token: token.map(|t| SecretString::from(t.to_owned())),
        namespaces: vec![namespace.to_owned()],
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        leader_election: false,
        operator_namespace: Some(namespace.to_owned()),
        lease_name: "coffer-operator".to_owned(),
        hash_key_secret: "coffer-operator-hash-key".to_owned(),
        identity: None,
    }
}

/// Starts the operator with `config` and the admin's kube client.
pub fn start_operator(env: &TestEnv, config: Config) -> RunningOperator {
    start_operator_as(env.client().unwrap(), config)
}

/// Starts the operator with `config` and `kube` as its Kubernetes client.
pub fn start_operator_as(kube: kube::Client, config: Config) -> RunningOperator {
    let operator = Operator::new(config, kube);
    let metrics = operator.metrics.clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(operator.run(None, stop.clone()));
    RunningOperator {
        metrics,
        stop,
        task: Some(task),
    }
}

/// A `Project` resource for `project` of [`ORG`].
pub async fn create_project(kube: &kube::Client, namespace: &str, name: &str, spec: Value) {
    let mut spec_value = json!({ "organization": ORG, "project": name });
    merge(&mut spec_value, spec);
    let project: Project = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "Project",
        "metadata": { "name": name },
        "spec": spec_value,
    }))
    .unwrap();
    Api::<Project>::namespaced(kube.clone(), namespace)
        .create(&PostParams::default(), &project)
        .await
        .unwrap();
}

/// An `Environment` resource `name` for environment `environment` of Project `project`.
pub async fn create_environment(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    project: &str,
    environment: &str,
    sync: Value,
) {
    let env: Environment = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "Environment",
        "metadata": { "name": name },
        "spec": {
            "projectRef": { "name": project },
            "environment": environment,
            "sync": sync,
        },
    }))
    .unwrap();
    Api::<Environment>::namespaced(kube.clone(), namespace)
        .create(&PostParams::default(), &env)
        .await
        .unwrap();
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            base.insert(k, v);
        }
    }
}

/// The data of Secret `name` as text, or `None` when it does not exist.
pub async fn secret_data(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    let secret = Api::<Secret>::namespaced(kube.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()?;
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect(),
    )
}

pub fn pairs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Waits until Secret `name` holds exactly `expected`.
pub async fn wait_for_data(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    expected: &[(&str, &str)],
) {
    let expected = pairs(expected);
    let what = format!("Secret {name} holds {:?}", expected.keys());
    wait_until(&what, TIMEOUT, || async {
        (secret_data(kube, namespace, name).await.as_ref() == Some(&expected)).then_some(())
    })
    .await
    .unwrap();
}

/// The `Environment`'s condition `type_` as `(status, reason)`.
pub async fn condition(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String)> {
    let env = Api::<Environment>::namespaced(kube.clone(), namespace)
        .get(name)
        .await
        .unwrap();
    env.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

/// Waits until the `Environment`'s condition `type_` has `status` and `reason`.
pub async fn wait_for_condition(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) {
    let what = format!("{name} has {type_}={status} ({reason})");
    wait_until(&what, TIMEOUT, || async {
        let c = condition(kube, namespace, name, type_).await;
        (c.as_ref().map(|(s, r)| (s.as_str(), r.as_str())) == Some((status, reason))).then_some(())
    })
    .await
    .unwrap();
}
