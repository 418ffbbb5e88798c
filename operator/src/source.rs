//! The sources the `Environment` resources read: one per environment of coffer-server *and*
//! set of credentials, fetched once per refresh interval however many resources read it.
//!
//! [`Sources`] owns what is known of each source (its last snapshot, its last failure), makes
//! concurrent readers of one source wait for a single request, shares a failure among them for
//! a few seconds, and wakes the other readers when a source changes. It talks to coffer-server
//! through an [`Origin`] and never to Kubernetes: which server and credentials a `Project` uses
//! is [`crate::credentials`]' business.
//!
//! Keys include the credentials, so a namespace never receives data fetched with another
//! namespace's token.
//!
//! While a project has readers, [`Sources`] also follows its event stream (see
//! [`crate::push`]): a change pushed there makes the source be fetched at once, and its readers
//! woken, however long their refresh interval.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use coffer_client::{Client, Error as ClientError, Fetched};
use kube::runtime::reflector::ObjectRef;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, mpsc};

use crate::conditions::Reason;
use crate::context::MAX_RETRY_AFTER;
use crate::crd::{Environment, SyncMode};
use crate::metrics::{Metrics, UpstreamOutcome};
use crate::push::{self, Publisher, Stream};

/// One environment of one coffer-server, as read with one set of credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub server: String,
    pub org: String,
    pub project: String,
    pub environment: String,
    /// SHA-256 of the token: tells credentials apart without keeping a copy of them.
    credentials: [u8; 32],
}

impl SourceKey {
    pub fn new(
        server: &str,
        credentials: [u8; 32],
        org: &str,
        project: &str,
        environment: &str,
    ) -> Self {
        Self {
            server: server.to_owned(),
            org: org.to_owned(),
            project: project.to_owned(),
            environment: environment.to_owned(),
            credentials,
        }
    }

    /// `org/project/environment`, for messages.
    pub fn place(&self) -> String {
        format!("{}/{}/{}", self.org, self.project, self.environment)
    }

    /// The project of this source, read with the same credentials.
    pub fn project(&self) -> ProjectKey {
        ProjectKey {
            server: self.server.clone(),
            org: self.org.clone(),
            project: self.project.clone(),
            credentials: self.credentials,
        }
    }

    fn in_project(&self, project: &ProjectKey) -> bool {
        self.project == project.project
            && self.org == project.org
            && self.server == project.server
            && self.credentials == project.credentials
    }
}

/// One project of one coffer-server, as read with one set of credentials: what one event
/// stream covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectKey {
    pub server: String,
    pub org: String,
    pub project: String,
    credentials: [u8; 32],
}

impl ProjectKey {
    /// `environment` of this project, read with the same credentials.
    pub fn source(&self, environment: &str) -> SourceKey {
        SourceKey::new(
            &self.server,
            self.credentials,
            &self.org,
            &self.project,
            environment,
        )
    }

    /// `org/project`, for messages.
    pub fn place(&self) -> String {
        format!("{}/{}", self.org, self.project)
    }
}

/// An environment's secrets at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: i64,
    etag: Option<String>,
    /// Values are wiped from memory when the last reader drops them.
    pub values: Arc<BTreeMap<String, SecretString>>,
    /// SHA-256 of the values: the data can change under one revision (a reference to another
    /// environment resolves to a new value), and this tells.
    digest: [u8; 32],
    fetched_at: Instant,
}

impl Snapshot {
    /// A snapshot of `values` at `revision`, fetched now without an entity tag.
    pub fn new(revision: i64, values: BTreeMap<String, SecretString>) -> Self {
        Self::fetched(revision, None, values)
    }

    fn fetched(
        revision: i64,
        etag: Option<String>,
        values: BTreeMap<String, SecretString>,
    ) -> Self {
        Self {
            revision,
            etag,
            digest: digest(&values),
            values: Arc::new(values),
            fetched_at: Instant::now(),
        }
    }

    /// Whether `self` holds other data than `previous`.
    fn differs_from(&self, previous: &Snapshot) -> bool {
        self.revision != previous.revision || self.digest != previous.digest
    }
}

/// SHA-256 over the values in an unambiguous encoding (length-prefixed keys and values, in
/// key order).
fn digest(values: &BTreeMap<String, SecretString>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (key, value) in values {
        let value = value.expose_secret().as_bytes();
        hash.update((key.len() as u64).to_be_bytes());
        hash.update(key.as_bytes());
        hash.update((value.len() as u64).to_be_bytes());
        hash.update(value);
    }
    hash.finalize().into()
}

/// A read of an environment's secrets, as an [`Origin`] answers it.
#[derive(Debug)]
pub enum Read {
    /// The current values, and the entity tag to send next time.
    Modified {
        etag: Option<String>,
        revision: i64,
        values: BTreeMap<String, SecretString>,
    },
    /// What the caller has (`If-None-Match`) is current.
    NotModified { etag: Option<String> },
}

/// Where sources are read from: coffer-server (through [`Client`]) in the operator, a fake in
/// the tests of this module.
pub trait Origin: Sync {
    /// The secrets of `key`'s environment; conditional when `etag` is given.
    fn read(
        &self,
        key: &SourceKey,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Read, ClientError>> + Send;
    /// Whether `key`'s project exists (and the credentials see it).
    fn project_exists(
        &self,
        key: &SourceKey,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// Whether `key`'s environment exists.
    fn environment_exists(
        &self,
        key: &SourceKey,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
}

impl Origin for Client {
    async fn read(&self, key: &SourceKey, etag: Option<&str>) -> Result<Read, ClientError> {
        let fetched = self
            .read_secrets(&key.org, &key.project, &key.environment, etag)
            .await?;
        Ok(match fetched {
            Fetched::NotModified { etag } => Read::NotModified { etag },
            Fetched::Modified { etag, value } => Read::Modified {
                etag,
                revision: value.revision,
                values: value
                    .secrets
                    .into_iter()
                    .map(|s| (s.key, s.value.0))
                    .collect(),
            },
        })
    }

    async fn project_exists(&self, key: &SourceKey) -> Result<(), ClientError> {
        self.get_project(&key.org, &key.project).await.map(drop)
    }

    async fn environment_exists(&self, key: &SourceKey) -> Result<(), ClientError> {
        self.get_environment(&key.org, &key.project, &key.environment)
            .await
            .map(drop)
    }
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

/// How long `failure` answers for its source: [`FAILURE_HOLD`] (at most `max_age`), or as long
/// as coffer-server asked with `Retry-After`.
fn failure_hold(failure: &FetchError, max_age: Duration) -> Duration {
    failure.retry_after.unwrap_or(max_age.min(FAILURE_HOLD))
}

/// A failed read of an environment's secrets, shared by the resources that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub reason: Reason,
    /// Set when coffer-server confirmed that something does not exist.
    pub missing: Option<Missing>,
    /// How long coffer-server asked to be left alone (`Retry-After` on 429 or 503).
    pub retry_after: Option<Duration>,
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
        let retry_after = match e {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        };
        Self {
            reason: reason_for(e),
            missing: None,
            retry_after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
            message: e.to_string(),
        }
    }
}

impl FetchError {
    /// coffer-server confirmed that `what` of `key` does not exist.
    pub fn missing(what: Missing, key: &SourceKey) -> Self {
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
                format!("coffer-server has no environment {}", key.place()),
            ),
        };
        Self {
            reason,
            missing: Some(what),
            retry_after: None,
            message,
        }
    }
}

/// How long a reader waits for the first attempt to open its project's event stream, so that
/// its status says how changes reach it rather than "not yet known".
const FIRST_OPEN_WAIT: Duration = Duration::from_secs(2);

/// Every source read by one controller, and who reads it.
#[derive(Debug)]
pub struct Sources {
    metrics: Arc<Metrics>,
    slots: StdMutex<HashMap<SourceKey, Slot>>,
    /// The `Environment` resources reading each source, to wake them all when it changes.
    /// Locked before `streams` where both are.
    readers: StdMutex<HashMap<SourceKey, HashSet<ObjectRef<Environment>>>>,
    changed: mpsc::UnboundedSender<ObjectRef<Environment>>,
    /// Whether projects' event streams are followed (`COFFER_EVENT_STREAMS`).
    push: bool,
    /// The event stream of each project that has readers; stopped when its last reader goes
    /// (or with this).
    streams: StdMutex<HashMap<ProjectKey, Arc<Stream>>>,
    /// This, for the stream tasks: they must not keep it (and the streams) alive once the
    /// controllers are gone.
    me: Weak<Sources>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        let streams = self.streams.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, stream) in streams.drain() {
            stream.stop();
        }
    }
}

impl Sources {
    /// The sources, and the stream of `Environment` resources to reconcile because a source
    /// they read changed. With `push`, the event stream of every project read is followed.
    pub fn new(
        metrics: Arc<Metrics>,
        push: bool,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ObjectRef<Environment>>) {
        let (changed, rx) = mpsc::unbounded_channel();
        let sources = Arc::new_cyclic(|me| Self {
            metrics,
            slots: StdMutex::default(),
            readers: StdMutex::default(),
            changed,
            push,
            streams: StdMutex::default(),
            me: me.clone(),
        });
        (sources, rx)
    }

    /// The secrets of `key`'s environment, from a snapshot at most `max_age` old (any age
    /// when `force` is false and a concurrent reader just fetched). Concurrent readers of one
    /// source wait for one request; the request carries `If-None-Match`, so an unchanged
    /// environment costs coffer-server no decryption.
    pub async fn snapshot(
        &self,
        key: &SourceKey,
        origin: &impl Origin,
        max_age: Duration,
        force: bool,
        reader: &ObjectRef<Environment>,
    ) -> Result<Arc<Snapshot>, FetchError> {
        self.read_only(Some(key), reader);
        let slot = self.slot(key);
        let mut state = slot.lock().await;
        if !force {
            if let Some(snapshot) = &state.snapshot
                && snapshot.fetched_at.elapsed() < max_age
            {
                return Ok(snapshot.clone());
            }
            if let Some((at, failure)) = &state.failure
                && at.elapsed() < failure_hold(failure, max_age)
            {
                return Err(failure.clone());
            }
        }
        match self.fetch(key, origin, state.snapshot.as_deref()).await {
            Ok(next) => {
                let changed = state
                    .snapshot
                    .as_ref()
                    .is_some_and(|previous| next.differs_from(previous));
                let next = Arc::new(next);
                *state = SlotState {
                    snapshot: Some(next.clone()),
                    failure: None,
                };
                drop(state);
                if changed {
                    self.wake_readers(key, Some(reader));
                }
                Ok(next)
            }
            Err(e) => Err(self.failed(key, origin, &mut state, &e).await),
        }
    }

    /// Fetches `key` now, if anyone reads it: a change was pushed. Wakes every reader when
    /// their data changed, came back, or is confirmed gone.
    pub async fn refetch(&self, key: &SourceKey, origin: &impl Origin) {
        if !self.is_read(key) {
            return;
        }
        let slot = self.slot(key);
        let mut state = slot.lock().await;
        let woken = match self.fetch(key, origin, state.snapshot.as_deref()).await {
            Ok(next) => {
                let changed = state.failure.is_some()
                    || state
                        .snapshot
                        .as_ref()
                        .is_none_or(|previous| next.differs_from(previous));
                *state = SlotState {
                    snapshot: Some(Arc::new(next)),
                    failure: None,
                };
                changed
            }
            Err(e) => self
                .failed(key, origin, &mut state, &e)
                .await
                .missing
                .is_some(),
        };
        drop(state);
        if woken {
            self.wake_readers(key, None);
        }
    }

    /// Records the failed read of `key` in `state`: what exactly is missing after a 404.
    async fn failed(
        &self,
        key: &SourceKey,
        origin: &impl Origin,
        state: &mut SlotState,
        error: &ClientError,
    ) -> FetchError {
        self.metrics.upstream_request(UpstreamOutcome::Error);
        let failure = if error.is_not_found() {
            Self::confirm_missing(key, origin).await
        } else {
            FetchError::from(error)
        };
        if failure.missing.is_some() {
            // What was read is gone: an environment created again under the same name may
            // reuse the entity tag, so the next read must not be conditional.
            state.snapshot = None;
        }
        state.failure = Some((Instant::now(), failure.clone()));
        failure
    }

    /// Follows the event stream of `key`'s project with `publisher`, unless it is followed
    /// already (or event streams are off, or nobody reads `key` any more).
    pub fn follow<P: Publisher>(&self, key: &SourceKey, publisher: &P) {
        if !self.push {
            return;
        }
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if !readers.contains_key(key) {
            return;
        }
        let project = key.project();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.contains_key(&project) {
            return;
        }
        let stream = Arc::new(Stream::new(self.metrics.clone()));
        streams.insert(project.clone(), stream.clone());
        push::spawn(self.me.clone(), project, publisher.clone(), stream);
    }

    /// How changes reach the readers of `key` now. While the first attempt to open the
    /// project's stream is under way, waits for it a moment.
    pub async fn sync_mode(&self, key: &SourceKey) -> SyncMode {
        let stream = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key.project())
            .cloned();
        match stream {
            Some(stream) => stream.mode(&key.environment, FIRST_OPEN_WAIT).await,
            None => SyncMode::Poll,
        }
    }

    /// Whether anyone reads `key`.
    pub fn is_read(&self, key: &SourceKey) -> bool {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// The environments of `project` that are read, each with the revision of its snapshot
    /// (`None` while unknown: never fetched, gone, or being fetched now).
    pub fn read_in(&self, project: &ProjectKey) -> Vec<(String, Option<i64>)> {
        let keys: Vec<SourceKey> = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|k| k.in_project(project))
            .cloned()
            .collect();
        keys.into_iter()
            .map(|key| {
                let revision = self.revision(&key);
                (key.environment, revision)
            })
            .collect()
    }

    /// The revision of `key`'s snapshot; `None` while unknown (never fetched, gone, or being
    /// fetched now).
    pub fn revision(&self, key: &SourceKey) -> Option<i64> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()?;
        let state = slot.try_lock().ok()?;
        state.snapshot.as_ref().map(|s| s.revision)
    }

    /// Wakes every reader of `key`.
    pub fn wake(&self, key: &SourceKey) {
        self.wake_readers(key, None);
    }

    /// Wakes every reader of every source of `project` (how changes reach them changed).
    pub fn wake_project(&self, project: &ProjectKey) {
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        for (_, set) in readers.iter().filter(|(k, _)| k.in_project(project)) {
            for reader in set {
                // The receiver lives as long as the controller; after it stops, nobody cares.
                let _ = self.changed.send(reader.clone());
            }
        }
    }

    /// After a 404 on the secrets: which of project and environment is missing (only a
    /// confirmed "environment missing" may ever remove a Secret's data).
    async fn confirm_missing(key: &SourceKey, origin: &impl Origin) -> FetchError {
        match origin.project_exists(key).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return FetchError::missing(Missing::Project, key),
            Err(e) => return FetchError::from(&e),
        }
        match origin.environment_exists(key).await {
            Err(e) if e.is_not_found() => FetchError::missing(Missing::Environment, key),
            Err(e) => FetchError::from(&e),
            // It exists again (a race with its creation): try again soon.
            Ok(()) => FetchError {
                reason: Reason::ServerError,
                missing: None,
                retry_after: None,
                message: format!(
                    "coffer-server answered 404 for the secrets of {}, which exists",
                    key.place()
                ),
            },
        }
    }

    /// One conditional request for `key`'s secrets.
    async fn fetch(
        &self,
        key: &SourceKey,
        origin: &impl Origin,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ClientError> {
        let etag = previous.and_then(|s| s.etag.as_deref());
        match (origin.read(key, etag).await?, previous) {
            (Read::NotModified { etag }, Some(previous)) => {
                self.metrics.upstream_request(UpstreamOutcome::NotModified);
                Ok(Snapshot {
                    revision: previous.revision,
                    etag: etag.or_else(|| previous.etag.clone()),
                    values: previous.values.clone(),
                    digest: previous.digest,
                    fetched_at: Instant::now(),
                })
            }
            (Read::NotModified { .. }, None) => Err(ClientError::Decode(
                "304 Not Modified to a request without If-None-Match".to_owned(),
            )),
            (
                Read::Modified {
                    etag,
                    revision,
                    values,
                },
                _,
            ) => {
                self.metrics.upstream_request(UpstreamOutcome::Modified);
                Ok(Snapshot::fetched(revision, etag, values))
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
    /// reads any more, with the values they hold, and the event streams of projects nobody
    /// reads any more.
    fn read_only(&self, key: Option<&SourceKey>, reader: &ObjectRef<Environment>) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = false;
        readers.retain(|k, set| {
            if Some(k) != key {
                set.remove(reader);
            }
            dropped |= set.is_empty();
            !set.is_empty()
        });
        if let Some(key) = key {
            readers
                .entry(key.clone())
                .or_default()
                .insert(reader.clone());
        }
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.retain(|k, _| readers.contains_key(k) || Some(k) == key);
        }
        if dropped {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.retain(|project, stream| {
                let read = readers.keys().any(|k| k.in_project(project));
                if !read {
                    stream.stop();
                }
                read
            });
        }
    }

    fn slot(&self, key: &SourceKey) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn wake_readers(&self, key: &SourceKey, except: Option<&ObjectRef<Environment>>) {
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        for reader in readers.get(key).into_iter().flatten() {
            if Some(reader) != except {
                // The receiver lives as long as the controller; after it stops, nobody cares.
                let _ = self.changed.send(reader.clone());
            }
        }
    }
}

/// The condition reason for a failed request to coffer-server.
pub fn reason_for(error: &ClientError) -> Reason {
    match error {
        ClientError::Transport(_) | ClientError::StreamIdle(_) => Reason::ServerUnreachable,
        ClientError::Api { status, .. } => match *status {
            401 => Reason::Unauthorized,
            403 => Reason::Forbidden,
            // Environments are told apart by `Sources::confirm_missing`; any other 404 is a
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

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use secrecy::ExposeSecret as _;
    use tokio::sync::Semaphore;

    use super::*;

    /// coffer-server as scripted by a test: answers to reads in order, whether the project and
    /// environment exist, and a gate that holds reads until the test opens it.
    struct Fake {
        reads: StdMutex<VecDeque<Result<Read, ClientError>>>,
        /// The `If-None-Match` of every read.
        tags: StdMutex<Vec<Option<String>>>,
        calls: AtomicUsize,
        project: bool,
        environment: bool,
        gate: Semaphore,
    }

    impl Fake {
        fn new(reads: Vec<Result<Read, ClientError>>) -> Self {
            Self {
                reads: StdMutex::new(reads.into()),
                tags: StdMutex::default(),
                calls: AtomicUsize::new(0),
                project: true,
                environment: true,
                gate: Semaphore::new(Semaphore::MAX_PERMITS),
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn api_error(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: "code".into(),
            message: "message".into(),
            request_id: None,
            retry_after: None,
        }
    }

    impl Origin for Fake {
        async fn read(&self, _: &SourceKey, etag: Option<&str>) -> Result<Read, ClientError> {
            let _permit = self.gate.acquire().await.unwrap();
            self.tags.lock().unwrap().push(etag.map(str::to_owned));
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.reads.lock().unwrap().pop_front().unwrap()
        }
        async fn project_exists(&self, _: &SourceKey) -> Result<(), ClientError> {
            if self.project {
                Ok(())
            } else {
                Err(api_error(404))
            }
        }
        async fn environment_exists(&self, _: &SourceKey) -> Result<(), ClientError> {
            if self.environment {
                Ok(())
            } else {
                Err(api_error(404))
            }
        }
    }

    fn modified(etag: &str, revision: i64, pairs: &[(&str, &str)]) -> Result<Read, ClientError> {
        Ok(Read::Modified {
            etag: Some(etag.to_owned()),
            revision,
            values: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned())))
                .collect(),
        })
    }

    fn key() -> SourceKey {
        SourceKey::new("http://coffer", [7; 32], "acme", "web", "production")
    }

    fn reader(name: &str) -> ObjectRef<Environment> {
        ObjectRef::new(name).within("apps")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn concurrent_readers_of_one_source_wait_for_one_request() {
        let (sources, _changed) = Sources::new(Arc::new(Metrics::new()), false);
        let origin = Arc::new(Fake::new(vec![modified("\"e1\"", 1, &[("A", "1")])]));
        let held = origin
            .gate
            .acquire_many(Semaphore::MAX_PERMITS as u32)
            .await
            .unwrap();
        let readers: Vec<_> = (0..10)
            .map(|i| {
                let (sources, origin) = (sources.clone(), origin.clone());
                tokio::spawn(async move {
                    sources
                        .snapshot(&key(), &*origin, HOUR, false, &reader(&format!("r{i}")))
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(held);
        for r in readers {
            let snapshot = r.await.unwrap().unwrap();
            assert_eq!(snapshot.values["A"].expose_secret(), "1");
        }
        assert_eq!(origin.calls(), 1);
    }

    #[tokio::test]
    async fn a_failure_answers_for_its_source_until_the_hold_ends_unless_forced() {
        let (sources, _changed) = Sources::new(Arc::new(Metrics::new()), false);
        let origin = Fake::new(vec![Err(api_error(503)), modified("\"e1\"", 1, &[])]);
        let first = sources
            .snapshot(&key(), &origin, HOUR, false, &reader("a"))
            .await;
        let second = sources
            .snapshot(&key(), &origin, HOUR, false, &reader("b"))
            .await;
        assert_eq!(first.unwrap_err().reason, Reason::ServerError);
        assert_eq!(second.unwrap_err().reason, Reason::ServerError);
        assert_eq!(origin.calls(), 1, "the failure was shared");
        let forced = sources
            .snapshot(&key(), &origin, HOUR, true, &reader("b"))
            .await;
        assert_eq!(forced.unwrap().revision, 1);
        assert_eq!(origin.calls(), 2);
    }

    #[tokio::test]
    async fn a_retry_after_holds_the_failure_as_long_as_the_server_asked() {
        let (sources, _changed) = Sources::new(Arc::new(Metrics::new()), false);
        let mut limited = api_error(429);
        if let ClientError::Api { retry_after, .. } = &mut limited {
            *retry_after = Some(Duration::from_secs(120));
        }
        let origin = Fake::new(vec![Err(limited), modified("\"e1\"", 1, &[])]);
        // A 10 s interval: without Retry-After the failure would answer for 5 s only.
        let interval = Duration::from_secs(10);
        let first = sources
            .snapshot(&key(), &origin, interval, false, &reader("a"))
            .await
            .unwrap_err();
        assert_eq!(
            (first.reason, first.retry_after),
            (Reason::RateLimited, Some(Duration::from_secs(120)))
        );
        assert_eq!(failure_hold(&first, interval), Duration::from_secs(120));
        let plain = FetchError::from(&api_error(503));
        assert_eq!(failure_hold(&plain, interval), FAILURE_HOLD);
        let halt = crate::environment::decide::upstream_failure(&first, "o/p/e");
        assert_eq!(halt.retry_after, Some(Duration::from_secs(120)));
        // Held: the next reader gets the failure without a request.
        let second = sources
            .snapshot(&key(), &origin, interval, false, &reader("b"))
            .await;
        assert_eq!(second.unwrap_err().reason, Reason::RateLimited);
        assert_eq!(origin.calls(), 1);
    }

    #[tokio::test]
    async fn a_404_is_confirmed_as_a_missing_project_or_environment() {
        let (sources, _changed) = Sources::new(Arc::new(Metrics::new()), false);
        let mut origin = Fake::new(vec![Err(api_error(404)), Err(api_error(404))]);
        origin.environment = false;
        let e = sources
            .snapshot(&key(), &origin, HOUR, true, &reader("a"))
            .await;
        assert_eq!(e.unwrap_err().missing, Some(Missing::Environment));
        origin.project = false;
        let e = sources
            .snapshot(&key(), &origin, HOUR, true, &reader("a"))
            .await;
        let e = e.unwrap_err();
        assert_eq!(
            (e.missing, e.reason),
            (Some(Missing::Project), Reason::ProjectNotFound)
        );
    }

    #[tokio::test]
    async fn new_data_under_the_same_revision_wakes_the_other_readers() {
        let (sources, mut changed) = Sources::new(Arc::new(Metrics::new()), false);
        // A reference to another environment resolved to a new value: same revision, new tag.
        let origin = Fake::new(vec![
            modified("\"e4.o1\"", 4, &[("URL", "${staging.URL}=a")]),
            modified("\"e4.o2\"", 4, &[("URL", "${staging.URL}=b")]),
            modified("\"e4.o3\"", 4, &[("URL", "${staging.URL}=b")]),
        ]);
        for r in ["a", "b"] {
            sources
                .snapshot(&key(), &origin, HOUR, false, &reader(r))
                .await
                .unwrap();
        }
        sources
            .snapshot(&key(), &origin, HOUR, true, &reader("a"))
            .await
            .unwrap();
        assert_eq!(changed.try_recv().unwrap(), reader("b"));
        // A new tag over the same data changes nothing.
        sources
            .snapshot(&key(), &origin, HOUR, true, &reader("a"))
            .await
            .unwrap();
        assert!(changed.try_recv().is_err());
    }

    #[tokio::test]
    async fn after_a_confirmed_missing_environment_the_next_read_is_unconditional() {
        let (sources, _changed) = Sources::new(Arc::new(Metrics::new()), false);
        let mut origin = Fake::new(vec![
            modified("\"e1\"", 1, &[("A", "1")]),
            Err(api_error(404)),
            // Created again: the server's tag repeats, the data does not.
            modified("\"e1\"", 1, &[("A", "2")]),
        ]);
        origin.environment = false;
        let r = reader("a");
        sources
            .snapshot(&key(), &origin, HOUR, true, &r)
            .await
            .unwrap();
        let gone = sources.snapshot(&key(), &origin, HOUR, true, &r).await;
        assert_eq!(gone.unwrap_err().missing, Some(Missing::Environment));
        let back = sources
            .snapshot(&key(), &origin, HOUR, true, &r)
            .await
            .unwrap();
        assert_eq!(back.values["A"].expose_secret(), "2");
        let tags = origin.tags.lock().unwrap().clone();
        assert_eq!(tags, [None, Some("\"e1\"".to_owned()), None]);
    }

    #[tokio::test]
    async fn a_new_revision_wakes_the_other_readers_of_the_source() {
        let (sources, mut changed) = Sources::new(Arc::new(Metrics::new()), false);
        let origin = Fake::new(vec![
            modified("\"e1\"", 1, &[("A", "1")]),
            Ok(Read::NotModified {
                etag: Some("\"e1\"".into()),
            }),
            modified("\"e2\"", 2, &[("A", "2")]),
        ]);
        for r in ["a", "b"] {
            sources
                .snapshot(&key(), &origin, HOUR, false, &reader(r))
                .await
                .unwrap();
        }
        sources
            .snapshot(&key(), &origin, HOUR, true, &reader("a"))
            .await
            .unwrap();
        assert!(changed.try_recv().is_err(), "nothing changed");
        let next = sources
            .snapshot(&key(), &origin, HOUR, true, &reader("a"))
            .await
            .unwrap();
        assert_eq!(next.values["A"].expose_secret(), "2");
        assert_eq!(changed.try_recv().unwrap(), reader("b"));
        assert!(
            changed.try_recv().is_err(),
            "the reader that fetched is not woken"
        );
    }
}
