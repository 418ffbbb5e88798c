//! The operator process: the HTTP server for probes and metrics, the data-hash key, leader
//! election, and the controllers, which run only while this replica leads.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, ObjectMeta};
use kube_lease_manager::LeaseManagerBuilder;
use rand::RngCore as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::context::{self, Context, FIELD_MANAGER, post_params};
use crate::crd::{Environment, Project};
use crate::credentials::Connector;
use crate::metrics::{self, Metrics};
use crate::source::Sources;
use crate::stores::Stores;
use crate::{environment, lease, project};

/// Seconds a leader's lease is valid after its last renewal.
const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the leader renews (and the clock skew tolerated).
const LEASE_GRACE_SECONDS: u64 = 5;
const HASH_KEY_FIELD: &str = "key";
const HASH_KEY_BYTES: usize = 32;

/// One operator process.
pub struct Operator {
    pub config: Config,
    pub kube: kube::Client,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Operator {
    pub fn new(config: Config, kube: kube::Client) -> Self {
        Self::with_metrics(config, kube, Arc::new(Metrics::new()))
    }

    /// An operator reporting into `metrics` (which its kube client may count requests in too:
    /// see [`crate::kube_client::client`]).
    pub fn with_metrics(config: Config, kube: kube::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            kube,
            metrics,
        }
    }

    /// Runs until `stop` is cancelled: serves probes and metrics on `listener` (when given),
    /// and reconciles while this replica is the leader (always, without leader election).
    pub async fn run(
        self,
        listener: Option<TcpListener>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(listener) = listener {
            let router = metrics::router(self.metrics.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics server stopped");
                }
            });
        }
        let namespace = self.config.operator_namespace();
        let identity = self.config.identity();
        let hash_key = hash_key(&self.kube, &namespace, &self.config.hash_key_secret)
            .await
            .context("loading the data-hash key")?;
        tokio::select! {
            () = self.resources_listable() => {}
            () = stop.cancelled() => return Ok(()),
        }
        self.metrics.set_ready(true);
        if !self.config.leader_election {
            self.metrics.set_leader(true);
            tokio::select! {
                () = self.controllers(&hash_key, &identity) => {}
                () = stop.cancelled() => {}
            }
            return Ok(());
        }

        let manager = LeaseManagerBuilder::new(self.kube.clone(), &self.config.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_field_manager(format!("{FIELD_MANAGER}/{identity}"))
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await
            .context("setting up leader election")?;
        let (mut leader, task) = manager.watch().await;
        tracing::info!(%identity, lease = %self.config.lease_name, %namespace, "waiting for leadership");
        let leases: Api<Lease> = Api::namespaced(self.kube.clone(), &namespace);
        let lease_name = self.config.lease_name.as_str();
        loop {
            tokio::select! {
                won = leader.wait_for(|l| *l) => {
                    if won.is_err() { break; }
                }
                () = stop.cancelled() => break,
            }
            // Acting needs a lease seen held, and ends before it could run out unseen renewed.
            let until = tokio::select! {
                until = lease::confirm(&leases, lease_name, &identity) => until,
                lost = leader.wait_for(|l| !*l) => {
                    if lost.is_err() { break; }
                    continue;
                }
                () = stop.cancelled() => break,
            };
            tracing::info!(%identity, "leading: controllers start");
            self.metrics.set_leader(true);
            let lost = tokio::select! {
                () = self.controllers(&hash_key, &identity) => false,
                lost = leader.wait_for(|l| !*l) => lost.is_ok(),
                () = lease::watch(leases.clone(), lease_name, &identity, until) => true,
                () = stop.cancelled() => false,
            };
            self.metrics.set_leader(false);
            if !lost {
                break;
            }
            tracing::warn!(%identity, "leadership lost: controllers stopped");
        }
        drop(leader);
        // Hand the lease over at once rather than let the next leader wait for its expiry.
        match task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the leader lease");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election failed"),
            Err(e) => tracing::warn!(error = %e, "leader election task failed"),
        }
        Ok(())
    }

    /// The watched namespaces: `None` for all of them.
    fn scopes(&self) -> Vec<Option<&str>> {
        if self.config.namespaces.is_empty() {
            vec![None]
        } else {
            self.config
                .namespaces
                .iter()
                .map(|n| Some(n.as_str()))
                .collect()
        }
    }

    /// Returns once the custom resources can be listed in every watched namespace: until then
    /// the CRDs are missing or RBAC does not allow it, and the operator is not ready. Each
    /// distinct failure is logged once at warn.
    async fn resources_listable(&self) {
        let mut failures = 0;
        let mut last_error = String::new();
        loop {
            let mut error = None;
            for scope in self.scopes() {
                let listed = match list_one::<Project>(&self.kube, scope).await {
                    Ok(()) => list_one::<Environment>(&self.kube, scope).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = listed {
                    error = Some(e);
                    break;
                }
            }
            let Some(error) = error else {
                if failures > 0 {
                    tracing::info!("the custom resources can be listed: starting");
                }
                return;
            };
            failures += 1;
            let delay = context::backoff(LIST_RETRY, failures, LIST_RETRY_CAP);
            if error != last_error {
                tracing::warn!(%error, retry_in = ?delay,
                    "cannot list the custom resources (are the CRDs installed, and does RBAC \
                     allow the operator to list them?); not ready");
                last_error = error;
            } else {
                tracing::debug!(%error, retry_in = ?delay, "cannot list the custom resources");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Both controllers over every watched namespace; returns only if they all stop.
    async fn controllers(&self, hash_key: &Zeroizing<Vec<u8>>, identity: &str) {
        let scopes = self.scopes();
        let connector = match Connector::new(&self.config) {
            Ok(connector) => connector,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client of coffer-server");
                return;
            }
        };
        let mut running = Vec::new();
        for scope in scopes {
            let (sources, changed) = Sources::new(self.metrics.clone(), self.config.event_streams);
            let (stores, writers, workload_writers) = Stores::new();
            let ctx = Arc::new(Context::new(
                self.kube.clone(),
                self.config.clone(),
                self.metrics.clone(),
                connector.clone(),
                sources,
                hash_key.clone(),
                stores,
                identity.to_owned(),
            ));
            let kube = &self.kube;
            let apis = match scope {
                Some(ns) => environment::Apis {
                    environments: Api::namespaced(kube.clone(), ns),
                    secrets: Api::namespaced(kube.clone(), ns),
                    projects: Api::namespaced(kube.clone(), ns),
                    credentials: Api::namespaced(kube.clone(), ns),
                },
                None => environment::Apis {
                    environments: Api::all(kube.clone()),
                    secrets: Api::all(kube.clone()),
                    projects: Api::all(kube.clone()),
                    credentials: Api::all(kube.clone()),
                },
            };
            running.push(tokio::spawn(project::run(
                ctx.clone(),
                apis.projects.clone(),
            )));
            running.push(tokio::spawn(workload_writers.run(
                kube.clone(),
                scope.map(str::to_owned),
                self.metrics.clone(),
            )));
            running.push(tokio::spawn(environment::run(ctx, apis, writers, changed)));
        }
        // Aborts the controllers when this future is dropped (leadership lost, or stop).
        struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                for task in &self.0 {
                    task.abort();
                }
            }
        }
        let mut guard = AbortOnDrop(running);
        for task in &mut guard.0 {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a controller stopped");
            }
        }
    }
}

/// First retry of a failed listing of the custom resources at start-up; doubles up to the cap.
const LIST_RETRY: Duration = Duration::from_secs(1);
const LIST_RETRY_CAP: Duration = Duration::from_secs(10);

/// Lists (at most) one `K` in `scope`: whether the operator may list them there at all.
async fn list_one<K>(kube: &kube::Client, scope: Option<&str>) -> Result<(), String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match scope {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {e}", api.resource_url())),
    }
}

/// The key of the data hashes: a Secret in the operator namespace, created on first start, so
/// every replica and every restart computes the same hashes (and restarts nothing spuriously).
async fn hash_key(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
    let read = |secret: Secret| -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let key = secret
            .data
            .and_then(|mut d| d.remove(HASH_KEY_FIELD))
            .map(|b| Zeroizing::new(b.0))
            .with_context(|| format!("Secret {namespace}/{name} has no {HASH_KEY_FIELD:?}"))?;
        anyhow::ensure!(
            key.len() >= HASH_KEY_BYTES,
            "Secret {namespace}/{name}: the key must be at least {HASH_KEY_BYTES} bytes"
        );
        Ok(key)
    };
    if let Some(secret) = api.get_opt(name).await? {
        return read(secret);
    }
    let mut key = Zeroizing::new(vec![0u8; HASH_KEY_BYTES]);
    rand::thread_rng().fill_bytes(&mut key);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some([(HASH_KEY_FIELD.to_owned(), ByteString(key.to_vec()))].into()),
        ..Secret::default()
    };
    let post = post_params();
    match api.create(&post, &secret).await {
        Ok(_) => Ok(key),
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => read(api.get(name).await?),
        Err(e) => Err(e.into()),
    }
}
