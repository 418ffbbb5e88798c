//! coffer-server as the operator sees it: which server and credentials a `Project` uses, and
//! the environments' secrets, fetched once per refresh interval however many `Environment`
//! resources read them.
//!
//! Snapshots are keyed by server, organization, project, environment *and credentials*: a
//! namespace never receives data fetched with another namespace's token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use coffer_client::{Client, Error as ClientError, Fetched};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::reflector::ObjectRef;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, mpsc};
use zeroize::Zeroizing;

use crate::conditions::Reason;
use crate::config::Config;
use crate::crd::{CredentialsRef, Environment, Project};
use crate::metrics::{Metrics, UpstreamOutcome};

/// How long a request to coffer-server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a `Project`'s data comes from, and with which credentials.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub client: Client,
    /// SHA-256 of the token: tells credentials apart without keeping a copy of them around.
    pub credentials: [u8; 32],
}

/// Why a `Project`'s connection cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    pub reason: Reason,
    pub message: String,
}

/// One environment of one coffer-server, as read with one set of credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub server: String,
    pub org: String,
    pub project: String,
    pub environment: String,
    credentials: [u8; 32],
}

impl SourceKey {
    pub fn new(conn: &Connection, org: &str, project: &str, environment: &str) -> Self {
        Self {
            server: conn.server.clone(),
            org: org.to_owned(),
            project: project.to_owned(),
            environment: environment.to_owned(),
            credentials: conn.credentials,
        }
    }
}

/// An environment's secrets at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: i64,
    etag: Option<String>,
    /// Values are wiped from memory when the last reader drops them.
    pub values: Arc<BTreeMap<String, SecretString>>,
    fetched_at: Instant,
}

/// What is known of one source: its last snapshot, and its last failure if it failed since.
#[derive(Debug, Default)]
struct SlotState {
    snapshot: Option<Arc<Snapshot>>,
    failure: Option<(Instant, FetchError)>,
}

type Slot = Arc<Mutex<SlotState>>;

/// How long a failed request answers for its source: the resources reading it get the same
/// failure instead of each asking a struggling server again.
const FAILURE_HOLD: Duration = Duration::from_secs(5);

/// A failed read of an environment's secrets, shared by the resources that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub reason: Reason,
    /// Set when coffer-server confirmed that something does not exist.
    pub missing: Option<Missing>,
    message: String,
}

/// What coffer-server confirmed missing after a 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The project (or the credentials may not see it).
    Project,
    /// The environment, in a project the credentials see.
    Environment,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&ClientError> for FetchError {
    fn from(e: &ClientError) -> Self {
        Self {
            reason: reason_for(e),
            missing: None,
            message: e.to_string(),
        }
    }
}

impl FetchError {
    fn missing(what: Missing, key: &SourceKey) -> Self {
        let (reason, message) = match what {
            Missing::Project => (
                Reason::ProjectNotFound,
                format!(
                    "coffer-server has no project {}/{} (or the credentials may not see it)",
                    key.org, key.project
                ),
            ),
            Missing::Environment => (
                Reason::EnvironmentNotFound,
                format!(
                    "coffer-server has no environment {}/{}/{}",
                    key.org, key.project, key.environment
                ),
            ),
        };
        Self {
            reason,
            missing: Some(what),
            message,
        }
    }
}

/// The operator's view of coffer-server.
#[derive(Debug)]
pub struct Upstream {
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    slots: StdMutex<HashMap<SourceKey, Slot>>,
    /// The `Environment` resources reading each source, to wake them all when it changes.
    readers: StdMutex<HashMap<SourceKey, HashSet<ObjectRef<Environment>>>>,
    changed: mpsc::UnboundedSender<ObjectRef<Environment>>,
}

impl Upstream {
    /// The upstream, and the stream of `Environment` resources to reconcile because a source
    /// they read changed.
    pub fn new(
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<ObjectRef<Environment>>)> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("coffer-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (changed, rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                http,
                metrics,
                slots: StdMutex::default(),
                readers: StdMutex::default(),
                changed,
            },
            rx,
        ))
    }

    /// The server and credentials of `project`: its own, else the operator's defaults.
    pub async fn connection(
        &self,
        kube: &kube::Client,
        config: &Config,
        project: &Project,
    ) -> Result<Connection, ConnectionError> {
        let fail = |reason, message: String| ConnectionError { reason, message };
        let (server, source) = plan(project, config)?;
        let token = match source {
            TokenSource::Default(token) => token.clone(),
            TokenSource::Ref(reference) => {
                let namespace = project.metadata.namespace.as_deref().unwrap_or("default");
                let secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace);
                let not_found = |what: &str| {
                    fail(
                        Reason::CredentialsNotFound,
                        format!(
                            "spec.credentialsRef: {what} (Secret {:?}, key {:?})",
                            reference.name, reference.key
                        ),
                    )
                };
                let secret = secrets.get_opt(&reference.name).await.map_err(|e| {
                    fail(
                        Reason::KubernetesError,
                        format!("reading the credentials Secret: {e}"),
                    )
                })?;
                let secret = secret.ok_or_else(|| not_found("the Secret does not exist"))?;
                let value = secret
                    .data
                    .and_then(|mut data| data.remove(&reference.key))
                    .map(|v| Zeroizing::new(v.0))
                    .ok_or_else(|| not_found("the Secret has no such key"))?;
                let text = std::str::from_utf8(&value)
                    .map_err(|_| not_found("the value is not UTF-8 text"))?
                    .trim();
                if text.is_empty() {
                    return Err(not_found("the value is empty"));
                }
                SecretString::from(text.to_owned())
            }
        };
        let credentials: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
        let client = Client::with_http(self.http.clone(), &server, token).map_err(|e| {
            fail(
                Reason::InvalidSpec,
                format!("the coffer-server URL {server:?} is invalid: {e}"),
            )
        })?;
        Ok(Connection {
            server,
            client,
            credentials,
        })
    }

    /// The secrets of `key`'s environment, from a snapshot at most `max_age` old (any age
    /// when `force` is false and a concurrent reader just fetched). Concurrent readers of one
    /// source wait for one request; the request carries `If-None-Match`, so an unchanged
    /// environment costs coffer-server no decryption.
    pub async fn snapshot(
        &self,
        key: &SourceKey,
        client: &Client,
        max_age: Duration,
        force: bool,
        reader: &ObjectRef<Environment>,
    ) -> Result<Arc<Snapshot>, FetchError> {
        self.read_only(Some(key), reader);
        let slot = self.slot(key);
        let mut state = slot.lock().await;
        if !force {
            if let Some(snapshot) = &state.snapshot {
                if snapshot.fetched_at.elapsed() < max_age {
                    return Ok(snapshot.clone());
                }
            }
            if let Some((at, failure)) = &state.failure {
                if at.elapsed() < max_age.min(FAILURE_HOLD) {
                    return Err(failure.clone());
                }
            }
        }
        match self.fetch(key, client, state.snapshot.as_deref()).await {
            Ok(next) => {
                let changed = state
                    .snapshot
                    .as_ref()
                    .is_some_and(|previous| previous.revision != next.revision);
                let next = Arc::new(next);
                *state = SlotState {
                    snapshot: Some(next.clone()),
                    failure: None,
                };
                drop(state);
                if changed {
                    self.wake_readers(key, reader);
                }
                Ok(next)
            }
            Err(e) => {
                self.metrics.upstream_request(UpstreamOutcome::Error);
                let failure = if e.is_not_found() {
                    Self::confirm_missing(key, client).await
                } else {
                    FetchError::from(&e)
                };
                state.failure = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }

    /// After a 404 on the secrets: which of project and environment is missing (only a
    /// confirmed "environment missing" may ever remove a Secret's data).
    async fn confirm_missing(key: &SourceKey, client: &Client) -> FetchError {
        match client.get_project(&key.org, &key.project).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return FetchError::missing(Missing::Project, key),
            Err(e) => return FetchError::from(&e),
        }
        match client
            .get_environment(&key.org, &key.project, &key.environment)
            .await
        {
            Err(e) if e.is_not_found() => FetchError::missing(Missing::Environment, key),
            Err(e) => FetchError::from(&e),
            // It exists again (a race with its creation): try again soon.
            Ok(_) => FetchError {
                reason: Reason::ServerError,
                missing: None,
                message: format!(
                    "coffer-server answered 404 for the secrets of {}/{}/{}, which exists",
                    key.org, key.project, key.environment
                ),
            },
        }
    }

    /// One conditional request for `key`'s secrets.
    async fn fetch(
        &self,
        key: &SourceKey,
        client: &Client,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ClientError> {
        let etag = previous.and_then(|s| s.etag.as_deref());
        let fetched = client
            .read_secrets(&key.org, &key.project, &key.environment, etag)
            .await?;
        match (fetched, previous) {
            (Fetched::NotModified { etag }, Some(previous)) => {
                self.metrics.upstream_request(UpstreamOutcome::NotModified);
                Ok(Snapshot {
                    revision: previous.revision,
                    etag: etag.or_else(|| previous.etag.clone()),
                    values: previous.values.clone(),
                    fetched_at: Instant::now(),
                })
            }
            (Fetched::NotModified { .. }, None) => Err(ClientError::Decode(
                "304 Not Modified to a request without If-None-Match".to_owned(),
            )),
            (Fetched::Modified { etag, value }, _) => {
                self.metrics.upstream_request(UpstreamOutcome::Modified);
                let values = value
                    .secrets
                    .into_iter()
                    .map(|s| (s.key, s.value.0))
                    .collect();
                Ok(Snapshot {
                    revision: value.revision,
                    etag,
                    values: Arc::new(values),
                    fetched_at: Instant::now(),
                })
            }
        }
    }

    /// Forgets the snapshot of `key`, so the next reader fetches (after an environment was
    /// created or deleted, say).
    pub async fn invalidate(&self, key: &SourceKey) {
        let slot = self.slot(key);
        *slot.lock().await = SlotState::default();
    }

    /// `reader` no longer reads anything (it was deleted).
    pub fn forget_reader(&self, reader: &ObjectRef<Environment>) {
        self.read_only(None, reader);
    }

    /// Records that `reader` reads `key` (and nothing else), and drops the snapshots nobody
    /// reads any more, with the values they hold.
    fn read_only(&self, key: Option<&SourceKey>, reader: &ObjectRef<Environment>) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.retain(|k, set| {
            if Some(k) != key {
                set.remove(reader);
            }
            !set.is_empty()
        });
        if let Some(key) = key {
            readers
                .entry(key.clone())
                .or_default()
                .insert(reader.clone());
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|k, _| readers.contains_key(k) || Some(k) == key);
    }

    fn slot(&self, key: &SourceKey) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn wake_readers(&self, key: &SourceKey, except: &ObjectRef<Environment>) {
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        for reader in readers.get(key).into_iter().flatten() {
            if reader != except {
                // The receiver lives as long as the controller; after it stops, nobody cares.
                let _ = self.changed.send(reader.clone());
            }
        }
    }
}

/// Where a `Project`'s token comes from.
#[derive(Debug)]
enum TokenSource<'a> {
    /// A key of a Secret in the `Project`'s namespace.
    Ref(&'a CredentialsRef),
    /// The operator's own token.
    Default(&'a SecretString),
}

/// The server of `project` and where its token comes from. The operator's own token is sent
/// only to the operator's own server: a `Project` that names another server must bring its
/// own credentials, or anyone who may create a `Project` could send the token anywhere.
fn plan<'a>(
    project: &'a Project,
    config: &'a Config,
) -> Result<(String, TokenSource<'a>), ConnectionError> {
    let fail = |reason, message: &str| ConnectionError {
        reason,
        message: message.to_owned(),
    };
    let own = project.spec.server_url.as_deref().filter(|s| !s.is_empty());
    let default = config.server_url.as_deref().filter(|s| !s.is_empty());
    let server = own.or(default).ok_or_else(|| {
        fail(
            Reason::NoServer,
            "no coffer-server URL: set spec.serverUrl or the operator's COFFER_SERVER_URL",
        )
    })?;
    let source = match &project.spec.credentials_ref {
        Some(reference) => TokenSource::Ref(reference),
        None => {
            let token = config.token.as_ref().ok_or_else(|| {
                fail(
                    Reason::NoCredentials,
                    "no credentials: set spec.credentialsRef or the operator's COFFER_TOKEN",
                )
            })?;
            let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
            if own.is_some_and(|own| !default.is_some_and(|default| same(own, default))) {
                return Err(fail(
                    Reason::NoCredentials,
                    "spec.serverUrl is not the operator's server, and the operator's own token \
                     is only ever sent to its own server: set spec.credentialsRef",
                ));
            }
            TokenSource::Default(token)
        }
    };
    Ok((server.to_owned(), source))
}

/// The condition reason for a failed request to coffer-server.
pub fn reason_for(error: &ClientError) -> Reason {
    match error {
        ClientError::Transport(_) => Reason::ServerUnreachable,
        ClientError::Api { status, .. } => match *status {
            401 => Reason::Unauthorized,
            403 => Reason::Forbidden,
            // Environments are told apart by `Upstream::confirm_missing`; any other 404 is a
            // project (or organization) the credentials do not see.
            404 => Reason::ProjectNotFound,
            429 => Reason::RateLimited,
            s if s >= 500 => Reason::ServerError,
            _ => Reason::RequestRejected,
        },
        ClientError::Decode(_) => Reason::ServerError,
        ClientError::InvalidUrl(_) => Reason::InvalidSpec,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use secrecy::ExposeSecret as _;

    use super::*;
    use crate::crd::ProjectSpec;

    fn config(server: Option<&str>, token: Option<&str>) -> Config {
        Config {
            server_url: server.map(str::to_owned),
            token: token.map(|t| SecretString::from(t.to_owned())),
            namespaces: Vec::new(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            leader_election: false,
            operator_namespace: None,
            lease_name: "l".into(),
            hash_key_secret: "h".into(),
            identity: None,
        }
    }

    fn project(server: Option<&str>, credentials: bool) -> Project {
        let spec: ProjectSpec = serde_json::from_value(serde_json::json!({
            "organization": "acme",
            "serverUrl": server,
            "credentialsRef": credentials.then(|| serde_json::json!({ "name": "t", "key": "token" })),
        }))
        .unwrap();
        Project::new("web", spec)
    }

    fn planned(project: &Project, config: &Config) -> Result<(String, String), Reason> {
        plan(project, config)
            .map(|(server, source)| {
                let token = match source {
                    TokenSource::Ref(r) => format!("ref:{}", r.name),
                    TokenSource::Default(t) => t.expose_secret().to_owned(),
                };
                (server, token)
            })
            .map_err(|e| e.reason)
    }

    #[test]
    fn the_defaults_apply_when_the_project_names_neither_server_nor_credentials() {
        let c = config(Some("https://coffer.example.com"), Some("cfr_op"));
        assert_eq!(
            planned(&project(None, false), &c),
            Ok(("https://coffer.example.com".into(), "cfr_op".into()))
        );
        // the same server, however written
        assert!(planned(&project(Some("https://coffer.example.com/"), false), &c).is_ok());
    }

    #[test]
    fn the_operator_token_never_goes_to_another_server() {
        let c = config(Some("https://coffer.example.com"), Some("cfr_op"));
        assert_eq!(
            planned(&project(Some("https://attacker.example"), false), &c),
            Err(Reason::NoCredentials)
        );
        let no_default_server = config(None, Some("cfr_op"));
        assert_eq!(
            planned(
                &project(Some("https://attacker.example"), false),
                &no_default_server
            ),
            Err(Reason::NoCredentials)
        );
        // with its own credentials a Project may use any server
        assert_eq!(
            planned(&project(Some("https://other.example"), true), &c),
            Ok(("https://other.example".into(), "ref:t".into()))
        );
    }

    #[test]
    fn missing_server_or_credentials_are_reported() {
        assert_eq!(
            planned(&project(None, false), &config(None, Some("cfr_op"))),
            Err(Reason::NoServer)
        );
        assert_eq!(
            planned(
                &project(None, false),
                &config(Some("https://c.example"), None)
            ),
            Err(Reason::NoCredentials)
        );
    }
}
