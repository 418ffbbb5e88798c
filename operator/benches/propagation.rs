//! Propagation: how long from a secret write in coffer-server until the Kubernetes Secrets synced
//! from it hold the new value, on a real control plane (`tests/k8s/testenv.sh build`), with a
//! real coffer-server (SQLite, in this process) and the `coffer-operator` binary (a process of
//! its own, release build), for 1 and for 100 `Environment` resources reading one environment
//! of one project, every one refreshed hourly: whatever arrives within the hour was pushed.
//!
//! ```sh
//! cargo bench -p coffer-operator --bench propagation
//! ```
//!
//! Each write sets one key to a new value; the latency of each Secret is the time from just
//! before the write request until a watch of the Secrets shows it with the value. Alongside, the
//! same latency to the event on a stream of this process's own is the floor the operator builds
//! on. Prints p50, p99 and the maximum of both, per number of resources; the goal is a p99
//! under 1 s. Not run in CI: absolute times depend on the machine.
//!
//! Environment (all optional): `WRITES` writes per size (default 50), `SIZES` comma-separated
//! numbers of resources (default `1,100`), `PAUSE_MS` most random pause between writes
//! (default 300).
#![allow(clippy::print_stdout, reason = "a benchmark prints its results")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use coffer_client::{Client, PutSecretRequest, StreamMessage};
use coffer_operator::crd::{Environment, Project, SyncMode};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube_testenv::{TestEnv, wait_until};
use rand::Rng as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const ORG: &str = "bench";
const KEY: &str = "VALUE";
/// The longest a write may take to reach every Secret before the run is called failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn run() -> anyhow::Result<()> {
    let writes: usize = setting("WRITES", "50").parse().context("WRITES")?;
    let pause: u64 = setting("PAUSE_MS", "300").parse().context("PAUSE_MS")?;
    let sizes: Vec<usize> = setting("SIZES", "1,100")
        .split(',')
        .map(|s| s.trim().parse().context("SIZES"))
        .collect::<Result<_, _>>()?;
    ensure!(writes > 0 && !sizes.is_empty(), "nothing to measure");

    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let yaml = ["project.yaml", "environment.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(crds.join(f)))
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n");
    eprintln!("bench: starting the control plane");
    let Some(env) = TestEnv::builder().crd_yaml(&yaml).get() else {
        bail!("no control plane: run `bash tests/k8s/testenv.sh build` first");
    };
    eprintln!("bench: starting coffer-server");
    let server = Server::start().await?;
    let operator_ns = env.create_namespace().await?;
    let mut results = Vec::new();
    for &size in &sizes {
        eprintln!("bench: {size} Environment(s), {writes} writes");
        results.push(measure(env, &server, &operator_ns, size, writes, pause).await?);
    }

    println!(
        "\ncoffer-operator propagation, secret write → Secret data changed ({writes} writes \
         per row, refreshInterval 1h)\n"
    );
    println!(
        "| Environments | Secret updates | p50 | p99 | max | event on the stream: p50 | p99 | goal p99 < 1 s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.size,
            r.secrets.len(),
            ms(percentile(&r.secrets, 0.50)),
            ms(percentile(&r.secrets, 0.99)),
            ms(percentile(&r.secrets, 1.0)),
            ms(percentile(&r.events, 0.50)),
            ms(percentile(&r.events, 0.99)),
            if percentile(&r.secrets, 0.99) < Duration::from_secs(1) {
                "ok"
            } else {
                "OVER"
            }
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The `q` quantile (nearest rank) of `samples`.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct Measured {
    size: usize,
    /// Write → each Secret's data changed.
    secrets: Vec<Duration>,
    /// Write → the event on a stream of this process.
    events: Vec<Duration>,
}

/// `size` Environments reading one environment of a new project; `writes` writes to it.
async fn measure(
    env: &TestEnv,
    server: &Server,
    operator_ns: &str,
    size: usize,
    writes: usize,
    pause: u64,
) -> anyhow::Result<Measured> {
    let kube = env.client()?;
    let ns = env.create_namespace().await?;
    let project = format!("p{size}");
    let admin = server.client();
    admin
        .create_project(
            ORG,
            &coffer_client::CreateProjectRequest {
                name: project.clone(),
                slug: project.clone(),
                environments: Some(vec!["production".to_owned()]),
            },
        )
        .await?;
    let put = |value: String| {
        let admin = admin.clone();
        let project = project.clone();
        async move {
            let request = PutSecretRequest {
                value: SecretString::from(value),
                comment: None,
            };
            admin
                .put_secret(ORG, &project, "production", KEY, &request)
                .await
        }
    };
    put("v0".to_owned()).await?;

    let mut operator = server.operator(env, &ns, operator_ns)?;
    let projects: Api<Project> = Api::namespaced(kube.clone(), &ns);
    let environments: Api<Environment> = Api::namespaced(kube.clone(), &ns);
    let resource: Project = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1", "kind": "Project",
        "metadata": { "name": project },
        "spec": { "organization": ORG, "project": project },
    }))?;
    projects.create(&PostParams::default(), &resource).await?;
    for i in 0..size {
        let resource: Environment = serde_json::from_value(json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "Environment",
            "metadata": { "name": format!("e{i}") },
            "spec": {
                "projectRef": { "name": project },
                "environment": "production",
                "sync": { "refreshInterval": "1h" },
            },
        }))?;
        environments
            .create(&PostParams::default(), &resource)
            .await?;
    }

    // Every Secret's value as a watch delivers it, with the time it arrived.
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let watch = tokio::spawn(async move {
        let config =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=coffer-operator");
        let mut events = std::pin::pin!(watcher(secrets, config));
        while let Some(event) = events.next().await {
            let at = Instant::now();
            let secret = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                _ => continue,
            };
            let value = secret
                .data
                .as_ref()
                .and_then(|d| d.get(KEY))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned());
            if let (Some(name), Some(value)) = (secret.metadata.name, value)
                && tx.send((name, value, at)).is_err()
            {
                return;
            }
        }
    });

    eprintln!("bench: waiting for the initial sync and for push");
    wait_until(
        "every Environment synced and pushed",
        SETUP_TIMEOUT,
        || async {
            let list = environments.list(&Default::default()).await.ok()?;
            let pushed = list
                .items
                .iter()
                .filter(|e| e.status.as_ref().and_then(|s| s.sync_mode) == Some(SyncMode::Push))
                .filter(|e| e.status.as_ref().and_then(|s| s.revision).is_some())
                .count();
            (pushed == size).then_some(())
        },
    )
    .await?;
    collect(&mut arrivals, "v0", size, Instant::now()).await?;

    // The floor: the same change, as an event on a stream of this process.
    let mut stream = admin.project_events(ORG, &project, None, None).await?;
    let mut secret_latencies = Vec::with_capacity(writes * size);
    let mut event_latencies = Vec::with_capacity(writes);
    for w in 1..=writes {
        let value = format!("v{w}");
        let start = Instant::now();
        put(value.clone()).await?;
        let event = tokio::time::timeout(WRITE_TIMEOUT, async {
            loop {
                match stream.next().await {
                    Ok(Some(StreamMessage::Event(_))) => return Ok(Instant::now()),
                    Ok(Some(StreamMessage::Resync(_))) => continue,
                    Ok(None) => bail!("the bench's own event stream ended"),
                    Err(e) => return Err(e.into()),
                }
            }
        });
        let (event, secrets) = tokio::join!(event, collect(&mut arrivals, &value, size, start));
        event_latencies.push(event.context("no event within 30 s")?? - start);
        secret_latencies.extend(secrets?);
        let wait = rand::thread_rng().gen_range(pause / 3..=pause.max(1));
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    watch.abort();
    operator.kill().await.ok();
    Ok(Measured {
        size,
        secrets: secret_latencies,
        events: event_latencies,
    })
}

/// Waits until all `size` Secrets showed `value`; returns each one's latency from `start`.
async fn collect(
    arrivals: &mut mpsc::UnboundedReceiver<(String, String, Instant)>,
    value: &str,
    size: usize,
    start: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut seen: HashMap<String, Duration> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
    while seen.len() < size {
        let Ok(arrival) = tokio::time::timeout_at(deadline, arrivals.recv()).await else {
            bail!(
                "only {} of {size} Secrets held {value:?} after {WRITE_TIMEOUT:?}",
                seen.len()
            );
        };
        let (name, got, at) = arrival.context("the Secret watch ended")?;
        if got == value {
            seen.entry(name)
                .or_insert(at.saturating_duration_since(start));
        }
    }
    Ok(seen.into_values().collect())
}

/// coffer-server on a loopback port, data in a temporary directory, with organization [`ORG`]
/// and an admin API key.
struct Server {
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> anyhow::Result<Self> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let dir = tempfile::tempdir()?;
        let mut config = coffer_server::config::Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        config.listen = addr;
        let state = coffer_server::start(config).await?;
        tokio::spawn(async move {
            let stop = std::future::pending::<()>();
            if let Err(e) = coffer_server::serve_until(state, stop).await {
                eprintln!("bench: coffer-server stopped: {e}");
            }
        });
        let url = format!("http://{addr}");
        let http = reqwest::Client::new();
        wait_until("coffer-server answers", SETUP_TIMEOUT, || async {
            let health = http.get(format!("{url}/health")).send().await.ok()?;
            health.status().is_success().then_some(())
        })
        .await?;
        let post = |path: &str, token: Option<&str>, body: Value| {
            let mut request = http.post(format!("{url}/api/v1/{path}")).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await?.error_for_status()?;
                anyhow::Ok(response.json::<Value>().await?)
            }
        };
        let session = post(
            "auth/register",
            None,
            json!({ "email": "bench@example.com", "password": "correct horse battery staple",
                    "name": "Bench" }),
        )
        .await?;
        let access = session["access_token"]
            .as_str()
            .context("no access token")?;
        post(
            "orgs",
            Some(access),
            json!({ "name": "Bench", "slug": ORG }),
        )
        .await?;
        let key = post(
            "api-keys",
            Some(access),
            json!({ "name": "bench", "read_only": false }),
        )
        .await?;
        let token = key["token"].as_str().context("no API key")?.to_owned();
        Ok(Self {
            url,
            token,
            _dir: dir,
        })
    }

    fn client(&self) -> Client {
        Client::new(&self.url, SecretString::from(self.token.clone()))
            .unwrap_or_else(|e| panic!("a client of {}: {e}", self.url))
    }

    /// The `coffer-operator` binary, watching `ns`, with this server and token as its defaults;
    /// killed when dropped.
    fn operator(
        &self,
        env: &TestEnv,
        ns: &str,
        operator_ns: &str,
    ) -> anyhow::Result<tokio::process::Child> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], 0));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer-operator"))
            .arg("run")
            .env("KUBECONFIG", env.kubeconfig_path())
            .env("COFFER_SERVER_URL", &self.url)
            .env("COFFER_TOKEN", &self.token)
            .env("COFFER_NAMESPACES", ns)
            .env("COFFER_OPERATOR_NAMESPACE", operator_ns)
            .env("COFFER_LEADER_ELECTION", "false")
            .env("COFFER_METRICS_ADDR", metrics.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting coffer-operator")?;
        Ok(child)
    }
}
