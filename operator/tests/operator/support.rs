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
use coffer_operator::crd::{Environment, Project, SyncMode};
use coffer_operator::metrics::Metrics;
use coffer_operator::{Config, Operator, kube_client};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube_testenv::{TestEnv, wait_until};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ORG: &str = "acme";
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Everything logged at debug level and above by every test of this binary (the operator's and
/// coffer-server's logs included) from the first call on.
pub fn captured_logs() -> &'static LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

/// A log sink shared by every thread.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
    /// With TLS: the PEM of its self-signed certificate, the only one that makes it trusted.
    pub ca_pem: Option<String>,
    /// The most event streams it serves at once (its default when `None`).
    event_streams_max: Option<u32>,
    /// A whole configuration to run with instead of the tests' defaults.
    configured: Option<coffer_server::config::Config>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Coffer {
    /// Starts a server with organization [`ORG`], its owner, and an admin API key.
    pub async fn start() -> Self {
        Self::start_with(false, None).await
    }

    /// Like [`Coffer::start`], serving https with a self-signed certificate ([`Coffer::ca_pem`]).
    pub async fn start_tls() -> Self {
        Self::start_with(true, None).await
    }

    /// Like [`Coffer::start`], serving at most `max` event streams at once (the next is
    /// refused with 503 and `Retry-After: 10`), now and after every [`Coffer::resume`].
    pub async fn start_with_event_streams_max(max: u32) -> Self {
        Self::start_with(false, Some(max)).await
    }

    async fn start_with(tls: bool, event_streams_max: Option<u32>) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = tls.then(|| {
            let cert = rcgen::generate_simple_self_signed(vec![addr.ip().to_string()]).unwrap();
            std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
            std::fs::write(dir.path().join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
            cert.cert.pem()
        });
        let scheme = if tls { "https" } else { "http" };
        let mut coffer = Self {
            url: format!("{scheme}://{addr}"),
            admin_token: String::new(),
            ca_pem,
            event_streams_max,
            configured: None,
            addr,
            dir,
            running: None,
        };
        coffer.register().await;
        coffer
    }

    /// A server run with `config` as it stands (its own address, data directory, TLS), which
    /// `url` reaches and whose certificate `ca_pem` signs; with organization [`ORG`], its owner,
    /// and an admin API key.
    pub async fn start_configured(
        config: coffer_server::config::Config,
        url: String,
        ca_pem: Option<String>,
    ) -> Self {
        let mut coffer = Self {
            url,
            admin_token: String::new(),
            ca_pem,
            event_streams_max: None,
            addr: config.listen,
            configured: Some(config),
            dir: tempfile::tempdir().unwrap(),
            running: None,
        };
        coffer.register().await;
        coffer
    }

    /// Starts the server, then registers the owner, the organization and the admin API key.
    async fn register(&mut self) {
        self.resume().await;
        let http = self.http();
        let post = |path: &str, token: Option<String>, body: Value| {
            let mut request = http.post(format!("{}/api/v1/{path}", self.url)).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await.unwrap().error_for_status().unwrap();
                response.json::<Value>().await.unwrap()
            }
        };
        let session = post(
            "auth/register",
            None,
            json!({ "email": "owner@acme.test", "password": "correct horse battery staple",
                    "name": "Owner" }),
        )
        .await;
        let access = session["access_token"].as_str().unwrap().to_owned();
        post(
            "orgs",
            Some(access.clone()),
            json!({ "name": "Acme", "slug": ORG }),
        )
        .await;
        let key = post(
            "api-keys",
            Some(access),
            json!({ "name": "operator tests", "read_only": false }),
        )
        .await;
        self.admin_token = key["token"].as_str().unwrap().to_owned();
    }

    /// Starts (again) serving the same data on the same address.
    pub async fn resume(&mut self) {
        assert!(self.running.is_none(), "already running");
        let config = match &self.configured {
            Some(config) => config.clone(),
            None => self.test_config(),
        };
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
        let http = self.http();
        wait_until("coffer-server answers", TIMEOUT, || async {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await
        .unwrap();
    }

    /// The tests' configuration: SQLite in the temporary directory, on the fixed address.
    fn test_config(&self) -> coffer_server::config::Config {
        let mut config = coffer_server::config::Config::defaults();
        config.data_dir = self.dir.path().to_path_buf();
        config.listen = self.addr;
        config.password_hash_concurrency = Some(2);
        if let Some(max) = self.event_streams_max {
            config.event_streams_max = max;
        }
        if self.ca_pem.is_some() {
            config.tls_cert = Some(self.dir.path().join("tls.crt"));
            config.tls_key = Some(self.dir.path().join("tls.key"));
        }
        config
    }

    /// Stops serving; connections are refused until [`Coffer::resume`].
    pub async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("running");
        stop.cancel();
        task.await.unwrap();
    }

    /// A client with the admin API key.
    pub fn admin(&self) -> Client {
        let token = SecretString::from(self.admin_token.clone());
        Client::with_http(self.http(), &self.url, token).unwrap()
    }

    /// An HTTP client that trusts this server's certificate, if it has one.
    fn http(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(pem) = &self.ca_pem {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
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

    /// Ends the operator abruptly, as a killed process would: nothing is handed over.
    pub async fn crash(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the operator with `config` and `kube` as its Kubernetes client.
pub fn start_operator_as(kube: kube::Client, config: Config) -> RunningOperator {
    start(Operator::new(config, kube))
}

fn start(operator: Operator) -> RunningOperator {
    let metrics = operator.metrics.clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(operator.run(None, stop.clone()));
    RunningOperator {
        metrics,
        stop,
        task: Some(task),
    }
}

/// One test's world: its own namespace of the shared control plane, an admin client, and a
/// coffer-server of its own with project `web` (development, staging, production).
pub struct Scene {
    pub env: &'static TestEnv,
    pub kube: kube::Client,
    pub ns: String,
    pub coffer: Coffer,
}

impl Scene {
    /// `production` of `web` holds `values`. `None` when the cluster tests are skipped (never
    /// with `CI=true`).
    pub async fn new(values: &[(&str, &str)]) -> Option<Self> {
        Self::with(values, None).await
    }

    /// Like [`Scene::new`], with a coffer-server that serves at most `max` event streams.
    pub async fn with_event_streams_max(values: &[(&str, &str)], max: u32) -> Option<Self> {
        Self::with(values, Some(max)).await
    }

    async fn with(values: &[(&str, &str)], event_streams_max: Option<u32>) -> Option<Self> {
        let env = cluster()?;
        let kube = env.client().unwrap();
        let ns = env.create_namespace().await.unwrap();
        let coffer = match event_streams_max {
            Some(max) => Coffer::start_with_event_streams_max(max).await,
            None => Coffer::start().await,
        };
        coffer.project("web").await;
        if !values.is_empty() {
            coffer.set("web", "production", values).await;
        }
        Some(Self {
            env,
            kube,
            ns,
            coffer,
        })
    }

    /// The configuration of an operator confined to this namespace, with this coffer-server as
    /// its default server and `token` as its default credentials.
    pub fn config(&self, token: Option<&str>) -> Config {
        Config {
            server_url: Some(self.coffer.url.clone()),
            token: token.map(|t| SecretString::from(t.to_owned())),
            allowed_servers: Vec::new(),
            ca_bundle: None,
            namespaces: vec![self.ns.clone()],
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            leader_election: false,
            operator_namespace: Some(self.ns.clone()),
            lease_name: "coffer-operator".to_owned(),
            hash_key_secret: "coffer-operator-hash-key".to_owned(),
            lease_revoke_grace: Duration::from_secs(1),
            concurrency: 10,
            event_streams: true,
            identity: None,
        }
    }

    /// Starts the operator with `config` and the admin's credentials, counting its requests
    /// to the API server in its metrics as the binary does.
    pub fn operator(&self, config: Config) -> RunningOperator {
        let metrics = Arc::new(Metrics::new());
        let kube = kube_client::client(self.env.config().clone(), metrics.clone()).unwrap();
        start(Operator::with_metrics(config, kube, metrics))
    }

    /// The usual start: the operator with the admin API key as its default credentials, and
    /// the `Project` resource `web`.
    pub async fn start(&self) -> RunningOperator {
        let operator = self.operator(self.config(Some(&self.coffer.admin_token)));
        self.project("web", json!({})).await;
        operator
    }

    /// Like [`Scene::start`], with an operator that only polls (`COFFER_EVENT_STREAMS=false`):
    /// for the tests of what a poll or a refresh does, which a push would overtake.
    pub async fn start_polling(&self) -> RunningOperator {
        let config = Config {
            event_streams: false,
            ..self.config(Some(&self.coffer.admin_token))
        };
        let operator = self.operator(config);
        self.project("web", json!({})).await;
        operator
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.kube.clone(), &self.ns)
    }

    /// A `Project` resource for project `name` of [`ORG`], with `spec` added.
    pub async fn project(&self, name: &str, spec: Value) {
        let mut full = json!({ "organization": ORG, "project": name });
        if let (Some(full), Value::Object(extra)) = (full.as_object_mut(), spec) {
            full.extend(extra);
        }
        let project: Project = serde_json::from_value(json!({
            "apiVersion": "coffer.dev/v1alpha1",
            "kind": "Project",
            "metadata": { "name": name },
            "spec": full,
        }))
        .unwrap();
        self.api::<Project>()
            .create(&PostParams::default(), &project)
            .await
            .unwrap();
    }

    /// An `Environment` resource `name` syncing `environment` of the `Project` `web`.
    pub async fn environment(&self, name: &str, environment: &str, sync: Value) {
        self.environment_of(name, "web", environment, sync).await;
    }

    /// An `Environment` resource `name` syncing `environment` of the `Project` `project`.
    pub async fn environment_of(&self, name: &str, project: &str, environment: &str, sync: Value) {
        let resource: Environment = serde_json::from_value(json!({
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
        self.api::<Environment>()
            .create(&PostParams::default(), &resource)
            .await
            .unwrap();
    }

    pub async fn get_environment(&self, name: &str) -> Environment {
        self.api::<Environment>().get(name).await.unwrap()
    }

    pub async fn secret(&self, name: &str) -> Secret {
        self.api::<Secret>().get(name).await.unwrap()
    }

    /// The data of Secret `name` as text, or `None` when it does not exist.
    pub async fn data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self.api::<Secret>().get_opt(name).await.unwrap()?;
        Some(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                .collect(),
        )
    }

    /// Waits until Secret `name` holds exactly `expected`.
    pub async fn wait_for_data(&self, name: &str, expected: &[(&str, &str)]) {
        let expected = pairs(expected);
        let what = format!("Secret {name} holds {:?}", expected.keys());
        wait_until(&what, TIMEOUT, || async {
            (self.data(name).await.as_ref() == Some(&expected)).then_some(())
        })
        .await
        .unwrap();
    }

    /// Waits at most `within` until Secret `name` holds exactly `expected`.
    pub async fn wait_for_data_within(
        &self,
        name: &str,
        expected: &[(&str, &str)],
        within: Duration,
    ) {
        let expected = pairs(expected);
        let what = format!("Secret {name} holds {:?}", expected.keys());
        wait_until(&what, within, || async {
            (self.data(name).await.as_ref() == Some(&expected)).then_some(())
        })
        .await
        .unwrap();
    }

    /// Waits until the `Environment` `name` reports `status.syncMode: mode`.
    pub async fn wait_for_sync_mode(&self, name: &str, mode: SyncMode) {
        wait_until(
            &format!("{name} has syncMode {mode:?}"),
            TIMEOUT,
            || async {
                let status = self.get_environment(name).await.status;
                (status.and_then(|s| s.sync_mode) == Some(mode)).then_some(())
            },
        )
        .await
        .unwrap();
    }

    /// The `Environment`'s condition `type_` as `(status, reason)`.
    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String)> {
        self.get_environment(name)
            .await
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason))
    }

    /// Waits until the Secret `name` holds exactly `pairs` and the `Environment` of the same
    /// name is `Ready` (`Synced`).
    pub async fn wait_synced(&self, name: &str, pairs: &[(&str, &str)]) {
        self.wait_for_data(name, pairs).await;
        self.wait_for_condition(name, "Ready", "True", "Synced")
            .await;
    }

    /// The message of the `Environment`'s condition `type_`, which it must have.
    pub async fn condition_message(&self, name: &str, type_: &str) -> String {
        let status = self.get_environment(name).await.status.unwrap();
        let condition = status.conditions.into_iter().find(|c| c.type_ == type_);
        condition.unwrap().message
    }

    /// Waits until the `Environment`'s condition `type_` has `status` and `reason`.
    pub async fn wait_for_condition(&self, name: &str, type_: &str, status: &str, reason: &str) {
        let what = format!("{name} has {type_}={status} ({reason})");
        wait_until(&what, TIMEOUT, || async {
            let c = self.condition(name, type_).await;
            (c.as_ref().map(|(s, r)| (s.as_str(), r.as_str())) == Some((status, reason)))
                .then_some(())
        })
        .await
        .unwrap();
    }

    /// Waits until an event with `reason` (and type `Warning` when `warning`) was published.
    pub async fn wait_for_event(&self, reason: &str, warning: bool) {
        let type_ = if warning { "Warning" } else { "Normal" };
        wait_until(&format!("a {type_} event {reason}"), TIMEOUT, || async {
            let found = self.events(reason).await;
            found
                .iter()
                .any(|e| e.type_.as_deref() == Some(type_))
                .then_some(())
        })
        .await
        .unwrap();
    }

    /// A Secret `name` holding `token` under the key `token`, with `labels`.
    pub async fn credentials(&self, name: &str, token: &str, labels: Value) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "stringData": { "token": token },
        }))
        .unwrap();
        self.api::<Secret>()
            .create(&kube::api::PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// The events in the namespace with `reason`.
    pub async fn events(&self, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        self.api::<k8s_openapi::api::events::v1::Event>()
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

pub fn pairs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
