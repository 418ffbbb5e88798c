//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! (garbage collector and namespace controllers only), Kubernetes 1.20.2 built from Debian's
//! `kubernetes` source package by `tests/k8s/testenv.sh build`.
//!
//! Each test binary (process) gets one control plane on free loopback ports, started on first use
//! and shared by all its tests; every test works in a namespace of its own:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let Some(env) = kube_testenv::TestEnv::shared() else {
//!     return Ok(()); // skipped: the binaries are not built (never skipped when CI=true)
//! };
//! let client = env.client()?;
//! let namespace = env.create_namespace().await?;
//! # Ok(()) }
//! ```
//!
//! CRDs that the garbage collector must know (owners of owned objects) are installed before the
//! controller manager starts: pass them with [`TestEnvBuilder::crd`]. The components are killed
//! and their state directory removed when the test process exits, however it exits: a watchdog
//! process waits for the end of a pipe that only the test process holds. Set `COFFER_K8S_KEEP=1`
//! to keep the state directory (logs, kubeconfig) in `$TMPDIR/kube-testenv-<pid>-<attempt>`.
//!
//! The binaries are looked up in `$COFFER_K8S_CACHE/<source version>/bin` (default
//! `/var/cache/coffer/k8s/…`), where `testenv.sh build` puts them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Deserialize as _;

/// Debian source package the binaries are built from; the cache is keyed by it (see testenv.sh).
const K8S_SOURCE_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";
const DEFAULT_CACHE: &str = "/var/cache/coffer/k8s";
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running control plane, shared by the tests of one test binary.
#[derive(Debug)]
pub struct TestEnv {
    config: Config,
    kubeconfig: PathBuf,
    state_dir: PathBuf,
    api_port: u16,
    ca_cert: PathBuf,
    etcd_addr: SocketAddr,
    installed_crds: Mutex<BTreeSet<String>>,
    // Never written after start: its end of the pipe closes when the process exits, which tells
    // the watchdog to stop the components.
    _watchdog: ChildStdin,
}

/// Chooses the CRDs to install before the garbage collector starts, then starts (or reuses) the
/// shared control plane with [`TestEnvBuilder::get`].
#[derive(Debug, Default, Clone)]
pub struct TestEnvBuilder {
    crds: Vec<CustomResourceDefinition>,
}

#[derive(Debug)]
enum StartError {
    /// Something the environment lacks (a binary): skip outside CI.
    Missing(String),
    /// Anything else: always a failure.
    Failed(String),
}

static SHARED: OnceLock<Result<TestEnv, StartError>> = OnceLock::new();
static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

impl TestEnvBuilder {
    /// Installs `crd` when the control plane starts, before kube-controller-manager, so the
    /// garbage collector handles objects owned by its custom resources from the start.
    #[must_use]
    pub fn crd(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.push(crd);
        self
    }

    /// Like [`TestEnvBuilder::crd`] for every CRD in a YAML stream (documents separated by
    /// `---`, e.g. the contents of `crds/*.yaml`).
    ///
    /// # Panics
    /// When a document is not a CustomResourceDefinition: the fixture is broken.
    #[must_use]
    pub fn crd_yaml(mut self, yaml: &str) -> Self {
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value = serde_norway::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("kube-testenv: invalid CRD YAML: {e}"));
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(serde_norway::Value::as_str)
                != Some("CustomResourceDefinition")
            {
                panic!("kube-testenv: not a CustomResourceDefinition: {value:?}");
            }
            let crd = serde_norway::from_value(value)
                .unwrap_or_else(|e| panic!("kube-testenv: not a CustomResourceDefinition: {e}"));
            self.crds.push(crd);
        }
        self
    }

    /// Returns the control plane of this test process, starting it on first use (about 6 s).
    ///
    /// Returns `None`, after printing why to stderr, when a binary is missing (build them with
    /// `bash tests/k8s/testenv.sh build`); the caller then skips its test.
    ///
    /// CRDs that the first caller did not ask for are installed on the running control plane;
    /// the garbage collector notices their kinds only at its next discovery (within 30 s), so
    /// let every test of a binary use the same builder.
    ///
    /// # Panics
    /// When a binary is missing and `CI=true`, and when the control plane fails to start.
    #[must_use]
    pub fn get(self) -> Option<&'static TestEnv> {
        match SHARED.get_or_init(|| start(&self.crds)) {
            Ok(env) => {
                if let Err(e) = env.install_missing_crds(&self.crds) {
                    panic!("kube-testenv: installing CRDs: {e:#}");
                }
                Some(env)
            }
            Err(StartError::Missing(why)) => {
                skip_or_fail(why);
                None
            }
            Err(StartError::Failed(why)) => panic!("kube-testenv: {why}"),
        }
    }
}

impl TestEnv {
    /// A builder, to install CRDs before the garbage collector starts.
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder::default()
    }

    /// The control plane of this test process without extra CRDs: `TestEnv::builder().get()`.
    pub fn shared() -> Option<&'static TestEnv> {
        Self::builder().get()
    }

    /// Path of a kubeconfig file for the admin user (group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The admin user's client configuration, to build clients with other settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new client for the admin user (group `system:masters`).
    ///
    /// Call it within the test's tokio runtime and don't share the client with other tests:
    /// its connections belong to the runtime it was made in.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.config.clone())?)
    }

    /// Creates a namespace named after the calling test and returns its name.
    pub async fn create_namespace(&self) -> anyhow::Result<String> {
        let n = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let name = namespace_name(std::thread::current().name(), n);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client()?)
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// A client authenticated as ServiceAccount `name` in `namespace` (user
    /// `system:serviceaccount:<namespace>:<name>`), which is created when missing. It may do
    /// only what RBAC grants it; the token comes from the TokenRequest API and lasts a day.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Client> {
        let accounts = Api::<ServiceAccount>::namespaced(self.client()?, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e).context(format!("creating ServiceAccount {namespace}/{name}")),
        }
        let token = self.service_account_token(namespace, name).await?;
        let mut config = self.config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..AuthInfo::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// A token of the existing ServiceAccount `name` in `namespace`, from the TokenRequest API,
    /// valid for a day: what the kubelet mounts into a pod of that account.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![SERVICE_ACCOUNT_ISSUER.to_owned()],
                expiration_seconds: Some(24 * 3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        Ok(Api::<ServiceAccount>::namespaced(self.client()?, namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
            .status
            .context("the TokenRequest has no status")?
            .token)
    }

    /// A kubeconfig (YAML) for this control plane that authenticates with `token`, for a
    /// program run as another identity (a ServiceAccount's token, say).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        kubeconfig_yaml(self.api_port, &self.ca_cert, token)
    }

    /// A client that acts as `user` in `groups` (plus `system:authenticated`), by impersonation
    /// from the admin user. It may do only what RBAC grants that user and those groups.
    pub fn impersonating_client(&self, user: &str, groups: &[&str]) -> anyhow::Result<Client> {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        Ok(Client::try_from(config)?)
    }

    /// A `kubectl` command configured for the admin user; add the arguments and run it.
    ///
    /// Returns `None`, after printing why to stderr, when kubectl is not installed; with
    /// `CI=true` it panics instead.
    pub fn kubectl(&self) -> Option<Command> {
        let Some(kubectl) = find_program("kubectl", &[]) else {
            skip_or_fail("kubectl not found on PATH");
            return None;
        };
        let mut command = Command::new(kubectl);
        command.env("KUBECONFIG", &self.kubeconfig).arg(format!(
            "--cache-dir={}",
            self.state_dir.join("kubectl-cache").display()
        ));
        Some(command)
    }

    /// Compacts etcd's history up to its current revision, so that any watch from an older
    /// `resourceVersion` of a resource read from etcd fails with 410 Gone. Returns the revision.
    ///
    /// Watches are usually served from kube-apiserver's watch cache, which keeps its own window;
    /// here PodTemplates bypass that cache (`--watch-cache-sizes=podtemplates#0`), so a watcher of
    /// PodTemplates sees its `resourceVersion` expire right after this call.
    pub async fn compact_etcd(&self) -> anyhow::Result<i64> {
        // a list straight from etcd carries etcd's current revision
        let list = Api::<Namespace>::all(self.client()?)
            .list_metadata(&ListParams::default().limit(1))
            .await?;
        let revision: i64 = list
            .metadata
            .resource_version
            .context("the list has no resourceVersion")?
            .parse()
            .context("resourceVersion is not an etcd revision")?;
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let addr = self.etcd_addr;
        let response =
            tokio::task::spawn_blocking(move || http_post(addr, "/v3/kv/compaction", &body))
                .await??;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("etcd refused the compaction: {response}");
        }
        Ok(revision)
    }

    fn install_missing_crds(&self, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
        let mut installed = self
            .installed_crds
            .lock()
            .map_err(|_| anyhow!("a test panicked while installing CRDs"))?;
        let missing: Vec<_> = crds
            .iter()
            .filter(|crd| {
                !crd.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| installed.contains(n))
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let config = self.config.clone();
        block_on_own_runtime(
            async move { install_crds(Client::try_from(config)?, &missing).await },
        )?;
        installed.extend(crds.iter().filter_map(|crd| crd.metadata.name.clone()));
        Ok(())
    }
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`; `what` names the
/// awaited state in the error.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn skip_or_fail(why: &str) {
    let test = std::thread::current().name().unwrap_or("test").to_owned();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("kube-testenv: {why} (CI=true, so {test} fails instead of being skipped)");
    }
    // straight to the process's stderr: the test harness would swallow eprintln! of a passing test
    let _ = writeln!(std::io::stderr(), "kube-testenv: skipping {test}: {why}");
}

/// Namespace names are DNS labels: lower case, digits and '-', at most 63 characters.
fn namespace_name(test: Option<&str>, n: usize) -> String {
    let test = test.and_then(|t| t.rsplit("::").next()).unwrap_or("test");
    let mut name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    name = name.trim_matches('-').to_owned();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "t-");
    }
    let _ = write!(name, "-{n}");
    name
}

fn bin_dir() -> PathBuf {
    let root = std::env::var_os("COFFER_K8S_CACHE")
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    root.join(K8S_SOURCE_VERSION).join("bin")
}

/// `name` in the first of `dirs` that has it, else on PATH.
fn find_program(name: &str, dirs: &[&Path]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.iter()
        .map(|d| d.to_path_buf())
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    openssl: PathBuf,
}

fn find_binaries() -> Result<Binaries, StartError> {
    let dir = bin_dir();
    let built = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(StartError::Missing(format!(
                "{name} not found at {}; build it with `bash tests/k8s/testenv.sh build` \
                 (or point COFFER_K8S_CACHE at the cache)",
                path.display()
            )))
        }
    };
    let apiserver = built("kube-apiserver")?;
    let controller_manager = built("kube-controller-manager")?;
    let etcd = find_program("etcd", &[&dir, Path::new("/usr/bin")]).ok_or_else(|| {
        StartError::Missing("etcd not found (Debian package etcd-server; `bash tests/k8s/testenv.sh build` installs it)".to_owned())
    })?;
    let openssl = find_program("openssl", &[]).ok_or_else(|| {
        StartError::Missing("openssl not found on PATH (Debian package openssl)".to_owned())
    })?;
    Ok(Binaries {
        etcd,
        apiserver,
        controller_manager,
        openssl,
    })
}

fn start(crds: &[CustomResourceDefinition]) -> Result<TestEnv, StartError> {
    let binaries = find_binaries()?;
    let started = Instant::now();
    let mut last_error = String::new();
    // a free port may be taken by another process between choosing and binding it: try again
    for attempt in 1..=3 {
        match start_once(&binaries, crds, attempt) {
            Ok(env) => {
                eprintln!(
                    "kube-testenv: Kubernetes 1.20.2 control plane ready in {:.1} s at {} (kubeconfig {})",
                    started.elapsed().as_secs_f64(),
                    env.config.cluster_url,
                    env.kubeconfig.display()
                );
                return Ok(env);
            }
            Err(Attempt::PortTaken(why)) => last_error = why,
            Err(Attempt::Failed(why)) => return Err(StartError::Failed(why)),
        }
    }
    Err(StartError::Failed(last_error))
}

enum Attempt {
    PortTaken(String),
    Failed(String),
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Self {
        Attempt::Failed(format!("{e:#}"))
    }
}

/// Kills every process of its process group (the components join it) and removes the state
/// directory once its stdin reaches end of file, i.e. when the test process has exited.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP
dir=$1
cat >/dev/null
members() {
    local f line
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        set -- ${line##*) }
        local pid=${f:6:-5}
        [[ $3 == "$$" && $1 != Z && $pid != "$$" && $pid != "$BASHPID" ]] && echo "$pid"
    done
}
kill -TERM 0 2>/dev/null
for _ in {1..100}; do
    [[ -z "$(members)" ]] && break
    sleep 0.1
done
kill -KILL $(members) 2>/dev/null
[[ -n "${COFFER_K8S_KEEP:-}" ]] || rm -rf -- "$dir"
"#;

fn start_once(
    binaries: &Binaries,
    crds: &[CustomResourceDefinition],
    attempt: u32,
) -> Result<TestEnv, Attempt> {
    let dir = std::env::temp_dir().join(format!("kube-testenv-{}-{attempt}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("pki")).with_context(|| format!("creating {}", dir.display()))?;

    let mut watchdog = Command::new("bash")
        .args(["-c", WATCHDOG, "kube-testenv-watchdog"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the watchdog (bash)")?;
    let group = i32::try_from(watchdog.id()).context("pid out of range")?;
    let stdin = watchdog.stdin.take().context("no pipe to the watchdog")?;
    // From here on, returning (and so dropping `stdin`) stops whatever was started.

    let [etcd_port, peer_port, api_port] = free_ports()?;
    let token = random_hex(24)?;
    fs::write(
        dir.join("tokens.csv"),
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .context("writing tokens.csv")?;
    let sa_key = dir.join("pki/sa.key");
    let sa_pub = dir.join("pki/sa.pub");
    run(Command::new(&binaries.openssl)
        .args(["genrsa", "-traditional", "-out"])
        .arg(&sa_key)
        .arg("2048"))?;
    run(Command::new(&binaries.openssl)
        .args(["rsa", "-pubout", "-in"])
        .arg(&sa_key)
        .arg("-out")
        .arg(&sa_pub))?;

    // the same flags as `testenv.sh start`
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = spawn(
        &dir,
        "etcd",
        group,
        Command::new(&binaries.etcd).args([
            "--name=default".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync".to_owned(),
            "--logger=zap".to_owned(),
            "--log-level=warn".to_owned(),
        ]),
    )?;
    let etcd_addr = SocketAddr::from(([127, 0, 0, 1], etcd_port));
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&etcd_addr, Duration::from_millis(200)).is_err() {
        check_alive(&mut etcd, &dir, "etcd", deadline)?;
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut apiserver = spawn(
        &dir,
        "kube-apiserver",
        group,
        Command::new(&binaries.apiserver).args([
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            "--insecure-port=0".to_owned(),
            format!("--cert-dir={}", dir.join("pki").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            // the loopback address cannot be an endpoint of the `kubernetes` Service
            "--endpoint-reconciler-type=none".to_owned(),
            // no token controller runs to give pods ServiceAccount tokens
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            // so that compact_etcd() can expire the resourceVersion of a PodTemplate watch
            "--watch-cache-sizes=podtemplates#0".to_owned(),
            "--profiling=false".to_owned(),
        ]),
    )?;
    let cert = dir.join("pki/apiserver.crt");
    while !fs::read_to_string(&cert)
        .is_ok_and(|c| c.trim_end().ends_with("-----END CERTIFICATE-----"))
    {
        check_alive(&mut apiserver, &dir, "kube-apiserver", deadline)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let kubeconfig = dir.join("kubeconfig");
    fs::write(&kubeconfig, kubeconfig_yaml(api_port, &cert, &token))
        .context("writing the kubeconfig")?;

    let config = block_on_own_runtime(async {
        let kubeconfig = Kubeconfig::read_from(&kubeconfig)?;
        Ok::<_, anyhow::Error>(
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?,
        )
    })?;
    // ready means etcd reachable, RBAC bootstrap roles and default namespaces in place, and so on
    let ready = block_on_own_runtime(async {
        let client = Client::try_from(config.clone())?;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            if client
                .request_text(request)
                .await
                .is_ok_and(|body| body.trim() == "ok")
            {
                return Ok(());
            }
            if !alive(&mut apiserver) || Instant::now() > deadline {
                return Err(anyhow!("not ready"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    if ready.is_err() {
        check_alive(&mut apiserver, &dir, "kube-apiserver", deadline)?;
        return Err(Attempt::Failed(format!(
            "kube-apiserver was not ready within {START_TIMEOUT:?}; its log ends with:\n{}",
            log_tail(&dir, "kube-apiserver")
        )));
    }

    let client_config = config.clone();
    block_on_own_runtime(
        async move { install_crds(Client::try_from(client_config)?, crds).await },
    )?;

    let mut controller_manager = spawn(
        &dir,
        "kube-controller-manager",
        group,
        Command::new(&binaries.controller_manager).args([
            format!("--kubeconfig={}", kubeconfig.display()),
            "--controllers=garbagecollector,namespace".to_owned(),
            "--leader-elect=false".to_owned(),
            "--port=0".to_owned(),
            "--secure-port=0".to_owned(),
        ]),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    check_alive(
        &mut controller_manager,
        &dir,
        "kube-controller-manager",
        deadline,
    )?;

    Ok(TestEnv {
        config,
        kubeconfig,
        state_dir: dir,
        api_port,
        ca_cert: cert,
        etcd_addr,
        installed_crds: Mutex::new(
            crds.iter()
                .filter_map(|crd| crd.metadata.name.clone())
                .collect(),
        ),
        _watchdog: stdin,
    })
}

fn spawn(dir: &Path, name: &str, group: i32, command: &mut Command) -> Result<Child, Attempt> {
    let log = File::create(dir.join(format!("{name}.log")))
        .with_context(|| format!("creating {name}.log"))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating a file handle")?)
        .stderr(log)
        .process_group(group)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(child)
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

fn check_alive(
    child: &mut Child,
    dir: &Path,
    name: &str,
    deadline: Instant,
) -> Result<(), Attempt> {
    if !alive(child) {
        let tail = log_tail(dir, name);
        let why = format!("{name} exited; its log ends with:\n{tail}");
        return Err(if tail.contains("address already in use") {
            Attempt::PortTaken(why)
        } else {
            Attempt::Failed(why)
        });
    }
    if Instant::now() > deadline {
        return Err(Attempt::Failed(format!(
            "{name} did not come up within {START_TIMEOUT:?}; its log ends with:\n{}",
            log_tail(dir, name)
        )));
    }
    Ok(())
}

fn log_tail(dir: &Path, name: &str) -> String {
    let log = fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    // all bound at once so that they differ
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn kubeconfig_yaml(port: u16, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-testenv
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: kube-testenv
  context:
    cluster: kube-testenv
    user: admin
current-context: kube-testenv
",
        ca = ca.display()
    )
}

async fn install_crds(client: Client, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client);
    for crd in crds {
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        match api.create(&PostParams::default(), crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e).context(format!("creating CRD {name}")),
        }
        wait_until(
            &format!("CRD {name} is established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Runs `future` on a runtime of its own in a thread of its own, so that nothing of the shared
/// control plane depends on the runtime of the test that happened to start it.
fn block_on_own_runtime<T: Send>(
    future: impl Future<Output = anyhow::Result<T>> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?
                .block_on(future)
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A minimal HTTP/1.1 POST (etcd's JSON gateway); returns the whole response.
fn http_post(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_builds_the_source_version_the_crate_looks_for() {
        let script = include_str!("../../k8s/testenv.sh");
        assert!(script.contains(&format!("K8S_SOURCE_VERSION=\"{K8S_SOURCE_VERSION}\"")));
        assert!(script.contains(&format!("/{}", DEFAULT_CACHE.trim_start_matches('/'))));
    }

    #[test]
    fn crd_yaml_reads_every_document_of_a_stream() {
        let crd = |plural: &str| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.example.com
spec:
  group: example.com
  names: {{ kind: K, plural: {plural} }}
  scope: Namespaced
  versions: []
"
            )
        };
        let yaml = format!("---\n{}---\n{}", crd("as"), crd("bs"));
        let builder = TestEnv::builder().crd_yaml(&yaml);
        let names: Vec<_> = builder
            .crds
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["as.example.com", "bs.example.com"]);
    }

    #[test]
    #[should_panic(expected = "not a CustomResourceDefinition")]
    fn crd_yaml_refuses_other_kinds() {
        let _ =
            TestEnv::builder().crd_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
    }

    #[test]
    fn namespace_names_are_dns_labels_named_after_the_test() {
        assert_eq!(
            namespace_name(Some("watch::a_watcher_sees_changes"), 3),
            "a-watcher-sees-changes-3"
        );
        assert_eq!(namespace_name(None, 0), "test-0");
        assert_eq!(namespace_name(Some("main"), 1), "main-1");
        assert_eq!(namespace_name(Some("_9lives"), 2), "t-9lives-2");
        let long = namespace_name(Some(&"x".repeat(100)), 123_456);
        assert!(long.len() <= 63, "{long}");
    }
}
