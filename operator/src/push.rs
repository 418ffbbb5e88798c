//! Changes pushed by coffer-server. For every project that `Environment` resources read, the
//! operator follows the project's event stream — one per server, credentials and project,
//! however many resources and environments read it — and has [`Sources`] fetch an environment
//! (conditionally, as a poll would) as soon as an event says it changed, waking the resources
//! whose data did. Polling at each resource's `refreshInterval` goes on underneath: it carries
//! the changes while a stream is down, and is the safety net while it is up.
//!
//! A stream that ends (coffer-server ends them after an hour, and when it stops) is opened
//! again at once from the last event id, so nothing in between is missed; one that cannot be
//! opened is tried again with exponential backoff (1 s doubling to 30 s, jittered, never sooner
//! than a `Retry-After`), and the resources reading the project report `syncMode: Poll`
//! meanwhile. When the position is no longer known (a new stream, an operator restart) or no
//! longer retained by the server, the stream starts with the environments' revisions, and the
//! environments whose revision differs from what is held are fetched.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use coffer_client::{
    Client, Error as ClientError, Event, EventStream, EventType, Resync, ResyncReason,
    StreamMessage,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::context::{self, MAX_RETRY_AFTER};
use crate::crd::SyncMode;
use crate::metrics::{Metrics, StreamState};
use crate::source::{Origin, ProjectKey, Sources, reason_for};

/// First wait before opening a stream again after a failure; doubles with each further one.
const RECONNECT_BASE: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to open a stream (unless the server asks for more).
const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// A stream that lasted this long is opened again at once when it ends; one that ends sooner
/// counts as a failure, so a server that accepts streams and drops them at once is not hammered.
const HEALTHY: Duration = Duration::from_secs(10);

/// Where event streams are opened: coffer-server (through [`Client`]) in the operator, a fake
/// in the tests of this module.
pub trait Publisher: Origin + Clone + Send + Sync + 'static {
    type Subscription: Subscription;
    /// Opens the event stream of `project`, going on after event `after` when given.
    fn subscribe(
        &self,
        project: &ProjectKey,
        after: Option<i64>,
    ) -> impl Future<Output = Result<Self::Subscription, ClientError>> + Send;
}

/// An open event stream.
pub trait Subscription: Send + 'static {
    /// The next message; `None` once the stream ended.
    fn next(&mut self) -> impl Future<Output = Result<Option<StreamMessage>, ClientError>> + Send;
    /// The id of the last message received, to go on from.
    fn last_event_id(&self) -> Option<i64>;
}

impl Publisher for Client {
    type Subscription = EventStream;

    async fn subscribe(
        &self,
        project: &ProjectKey,
        after: Option<i64>,
    ) -> Result<EventStream, ClientError> {
        // The whole project rather than the environments read: a stream naming an environment
        // that does not exist (yet) is refused, and the environments read change with every
        // resource.
        self.project_events(&project.org, &project.project, None, after)
            .await
    }
}

impl Subscription for EventStream {
    async fn next(&mut self) -> Result<Option<StreamMessage>, ClientError> {
        EventStream::next(self).await
    }

    fn last_event_id(&self) -> Option<i64> {
        EventStream::last_event_id(self)
    }
}

/// The state of a stream's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The first attempt to open it is under way.
    Opening,
    /// Open: changes are pushed.
    Up,
    /// It could not be opened; the next attempt waits for the backoff.
    Down,
    /// Nobody reads the project any more (or the controllers stopped).
    Stopped,
}

impl Link {
    fn state(self) -> Option<StreamState> {
        match self {
            Self::Opening | Self::Down => Some(StreamState::Disconnected),
            Self::Up => Some(StreamState::Connected),
            Self::Stopped => None,
        }
    }
}

/// The event stream of one project, as [`Sources`] and the task following it share it.
#[derive(Debug)]
pub struct Stream {
    link: watch::Sender<Link>,
    /// The environments the stream delivers (those the credentials may read): from its last
    /// `resync`, with the creations and deletions since; `None` before the first `resync`.
    covered: StdMutex<Option<HashSet<String>>>,
    /// A reader stopped waiting for the first attempt to open the stream and reported `Poll`:
    /// it must be told when the stream opens after all.
    impatient: AtomicBool,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Stream {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.event_stream_moved(None, Link::Opening.state());
        Self {
            link: watch::Sender::new(Link::Opening),
            covered: StdMutex::default(),
            impatient: AtomicBool::new(false),
            stop: CancellationToken::new(),
            metrics,
        }
    }

    /// Stops following the project: the task ends, and the stream is no longer counted.
    pub fn stop(&self) {
        self.stop.cancel();
        self.set(Link::Stopped);
    }

    /// Moves the link to `next`; returns what it was when that is a change. A stopped stream
    /// stays stopped.
    fn set(&self, next: Link) -> Option<Link> {
        let mut before = None;
        self.link.send_if_modified(|link| {
            if *link == next || *link == Link::Stopped {
                return false;
            }
            self.metrics.event_stream_moved(link.state(), next.state());
            before = Some(*link);
            *link = next;
            true
        });
        before
    }

    /// How changes of `environment` reach its readers now; while the first attempt to open the
    /// stream is under way, waits for it up to `wait`.
    pub async fn mode(&self, environment: &str, wait: Duration) -> SyncMode {
        let mut link = self.link.subscribe();
        let settled = tokio::time::timeout(wait, link.wait_for(|l| *l != Link::Opening))
            .await
            .is_ok();
        if !settled {
            self.impatient.store(true, Ordering::Relaxed);
        }
        let up = settled && *self.link.borrow() == Link::Up;
        if up && self.covers(environment) {
            SyncMode::Push
        } else {
            SyncMode::Poll
        }
    }

    fn covers(&self, environment: &str) -> bool {
        let covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
        covered.as_ref().is_none_or(|c| c.contains(environment))
    }

    /// The stream delivers exactly `environments` now; returns what it delivered before.
    fn cover(&self, environments: HashSet<String>) -> Option<HashSet<String>> {
        let mut covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
        covered.replace(environments)
    }

    /// `event` adds or removes an environment from what the stream delivers.
    fn track(&self, event: &Event) {
        let mut covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(covered) = covered.as_mut() {
            match event.kind {
                EventType::EnvironmentCreated => {
                    covered.insert(event.environment.clone());
                }
                EventType::EnvironmentDeleted => {
                    covered.remove(&event.environment);
                }
                EventType::SecretsChanged
                | EventType::EnvironmentRenamed
                | EventType::LeaseIssued
                | EventType::LeaseRenewed
                | EventType::LeaseRevoked
                | EventType::LeaseFailed => {}
            }
        }
    }
}

/// Follows the stream of `project` with `publisher` until `stream` is stopped or `sources` is
/// gone: reads it on one side, fetches what it says changed on the other.
pub fn spawn<P: Publisher>(
    sources: Weak<Sources>,
    project: ProjectKey,
    publisher: P,
    stream: Arc<Stream>,
) {
    tokio::spawn(async move {
        let stop = stream.stop.clone();
        let follower = Follower {
            sources,
            project,
            publisher,
            stream,
            pending: Pending::default(),
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = follower.read() => {}
            () = follower.fetch() => {}
        }
    });
}

/// Environments to fetch: collected while fetches are under way, so that a burst of events
/// costs one fetch per environment, not one per event.
#[derive(Debug, Default)]
struct Pending {
    work: StdMutex<Work>,
    notify: Notify,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Work {
    /// Every environment read: events may have been missed.
    all: bool,
    environments: BTreeSet<String>,
}

impl Pending {
    fn environment(&self, environment: &str) {
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        work.environments.insert(environment.to_owned());
        self.notify.notify_one();
    }

    fn everything(&self) {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).all = true;
        self.notify.notify_one();
    }

    async fn take(&self) -> Work {
        loop {
            {
                let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
                if work.all || !work.environments.is_empty() {
                    return std::mem::take(&mut *work);
                }
            }
            self.notify.notified().await;
        }
    }
}

struct Follower<P> {
    sources: Weak<Sources>,
    project: ProjectKey,
    publisher: P,
    stream: Arc<Stream>,
    pending: Pending,
}

impl<P: Publisher> Follower<P> {
    /// Opens the stream, reads it, and opens it again when it ends, for as long as `sources`
    /// lives.
    async fn read(&self) {
        let mut after = None;
        let mut failures = 0_u32;
        let mut delay = Duration::ZERO;
        let mut last_error: Option<String> = None;
        let mut first = true;
        loop {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if self.sources.strong_count() == 0 {
                return;
            }
            if !std::mem::take(&mut first) {
                self.stream.metrics.event_stream_reconnect();
            }
            let mut events = match self.publisher.subscribe(&self.project, after).await {
                Ok(events) => events,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let asked = match &e {
                        ClientError::Api { retry_after, .. } => {
                            retry_after.map(|d| d.min(MAX_RETRY_AFTER))
                        }
                        _ => None,
                    };
                    delay = reconnect_delay(failures, asked, rand::random());
                    self.down(&e, &mut last_error, delay);
                    continue;
                }
            };
            last_error = None;
            self.up();
            let opened = Instant::now();
            let ended = loop {
                let message = events.next().await;
                if let Some(id) = events.last_event_id() {
                    after = Some(id);
                }
                match message {
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => break None,
                    Err(ClientError::Decode(error)) => {
                        // A message was lost: whatever it said, fetch what is read.
                        tracing::warn!(project = %self.project.place(), server = %self.project.server,
                            %error, "an event stream message could not be read; fetching every \
                             environment read of the project");
                        self.pending.everything();
                    }
                    Err(e) => break Some(e),
                }
            };
            // A stream that lasted is opened again at once; one that ends right away backs off.
            failures = if opened.elapsed() >= HEALTHY {
                0
            } else {
                failures.saturating_add(1)
            };
            delay = reconnect_delay(failures, None, rand::random());
            let error = ended.map(|e| e.to_string());
            let error = error.as_deref().unwrap_or("none");
            let place = self.project.place();
            let server = &self.project.server;
            tracing::debug!(project = %place, %server, error, last_event_id = ?after,
                lasted = ?opened.elapsed(), reopen_in = ?delay, "event stream ended");
            // Opened again at once, it is as good as open; otherwise it is not until it is.
            if !delay.is_zero() && self.stream.set(Link::Down).is_some() {
                tracing::warn!(project = %place, %server, error, lasted = ?opened.elapsed(),
                    reopen_in = ?delay, "the event stream ended soon after it opened: the \
                     resources reading the project poll at their refreshInterval until it is \
                     open again");
                self.wake_readers();
            }
        }
    }

    fn wake_readers(&self) {
        if let Some(sources) = self.sources.upgrade() {
            sources.wake_project(&self.project);
        }
    }

    /// Fetches what the stream said changed, as it comes.
    async fn fetch(&self) {
        loop {
            let work = self.pending.take().await;
            let Some(sources) = self.sources.upgrade() else {
                return;
            };
            let environments: Vec<String> = if work.all {
                let read = sources.read_in(&self.project);
                read.into_iter()
                    .map(|(environment, _)| environment)
                    .collect()
            } else {
                work.environments.into_iter().collect()
            };
            let keys: Vec<_> = environments
                .iter()
                .map(|e| self.project.source(e))
                .collect();
            tracing::debug!(project = %self.project.place(), ?environments, "fetching pushed changes");
            futures::future::join_all(keys.iter().map(|key| sources.refetch(key, &self.publisher)))
                .await;
        }
    }

    fn handle(&self, message: StreamMessage) {
        let Some(sources) = self.sources.upgrade() else {
            return;
        };
        match message {
            StreamMessage::Event(event) => {
                self.stream.metrics.event_received(event.kind.as_str());
                if event.org != self.project.org || event.project != self.project.project {
                    return;
                }
                self.stream.track(&event);
                let key = self.project.source(&event.environment);
                if sources.is_read(&key) && needs_fetch(sources.revision(&key), &event) {
                    self.pending.environment(&event.environment);
                }
            }
            StreamMessage::Resync(resync) => {
                self.stream.metrics.event_received("resync");
                let read = sources.read_in(&self.project);
                let delivered: HashSet<String> = resync
                    .environments
                    .iter()
                    .map(|e| e.environment.clone())
                    .collect();
                let before = self.stream.cover(delivered.clone());
                // A reader that took its environment for delivered (or not) learns otherwise.
                for (environment, _) in &read {
                    let was = before.as_ref().is_none_or(|b| b.contains(environment));
                    if was != delivered.contains(environment) {
                        sources.wake(&self.project.source(environment));
                    }
                }
                let fetches = resync_fetches(&resync, &read);
                tracing::debug!(project = %self.project.place(), reason = ?resync.reason,
                    last_event_id = resync.last_event_id, ?fetches, "event stream resync");
                for environment in &fetches {
                    self.pending.environment(environment);
                }
            }
        }
    }

    /// The stream is open.
    fn up(&self) {
        let place = self.project.place();
        let server = &self.project.server;
        match self.stream.set(Link::Up) {
            Some(Link::Down) => tracing::info!(project = %place, %server,
                "event stream open again: changes are pushed"),
            Some(_) => {
                tracing::debug!(project = %place, %server, "event stream open: changes are pushed");
                // The readers waited for this, unless one gave up waiting.
                if !self.stream.impatient.swap(false, Ordering::Relaxed) {
                    return;
                }
            }
            None => return,
        }
        self.wake_readers();
    }

    /// The stream could not be opened with `error`; the next try is in `retry_in`. Logged at
    /// warn when the resources fall back to polling or the error is a new one, else at debug.
    fn down(&self, error: &ClientError, last_error: &mut Option<String>, retry_in: Duration) {
        let reason = reason_for(error);
        self.stream.metrics.event_stream_failed(reason.as_str());
        let text = error.to_string();
        let before = self.stream.set(Link::Down);
        let changed = before.is_some();
        let place = self.project.place();
        let server = &self.project.server;
        if changed || last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(project = %place, %server, %reason, error = %text, ?retry_in,
                "cannot open the event stream: the resources reading the project poll at their \
                 refreshInterval until it opens");
        } else {
            tracing::debug!(project = %place, %server, %reason, error = %text, ?retry_in,
                "cannot open the event stream");
        }
        *last_error = Some(text);
        // Readers that saw the stream opening reported `Poll` already.
        if before == Some(Link::Up) {
            self.wake_readers();
        }
    }
}

/// Whether `event`, about an environment whose snapshot is at revision `held` (`None`:
/// unknown), calls for fetching it: a change through a reference moves no revision, and an
/// environment created or deleted again may repeat one.
fn needs_fetch(held: Option<i64>, event: &Event) -> bool {
    event.via_reference
        || matches!(
            event.kind,
            EventType::EnvironmentCreated | EventType::EnvironmentDeleted
        )
        || held.is_none_or(|revision| revision < event.revision)
}

/// Which of the environments `read` (with the revisions held) `resync` calls for fetching.
/// After `Expired`, every one: what was missed may include changes through references, which
/// move no revision. After `Start`, those whose revision differs from the one listed, or is not
/// known, or that are not listed (deleted, say) while a snapshot of them is held.
fn resync_fetches(resync: &Resync, read: &[(String, Option<i64>)]) -> Vec<String> {
    read.iter()
        .filter(|(environment, held)| {
            let listed = resync
                .environments
                .iter()
                .find(|e| e.environment == *environment)
                .map(|e| e.revision);
            resync.reason == ResyncReason::Expired || held.is_none() || listed != *held
        })
        .map(|(environment, _)| environment.clone())
        .collect()
}

/// The wait before the next attempt to open a stream after `failures` in a row: none after
/// none, else 1 s doubling up to 30 s, of which a random part up to half (`jitter` in
/// `[0, 1)`) is left out so that operators cut off together do not all come back together;
/// never less than what coffer-server asked for (`Retry-After`).
fn reconnect_delay(failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let full = context::backoff(RECONNECT_BASE, failures, RECONNECT_CAP);
    let delay = full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0);
    retry_after.map_or(delay, |asked| delay.max(asked))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, HashMap, VecDeque};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use coffer_client::{Actor, EnvironmentRevision, KeyChange};
    use kube::runtime::reflector::ObjectRef;
    use secrecy::{ExposeSecret as _, SecretString};
    use tokio::sync::mpsc;

    use super::*;
    use crate::crd::Environment;
    use crate::source::{Read, SourceKey};

    fn event(id: i64, kind: EventType, environment: &str, revision: i64) -> Event {
        Event {
            id,
            kind,
            org: "acme".into(),
            project: "web".into(),
            environment: environment.into(),
            revision,
            changes: vec![KeyChange {
                key: "A".into(),
                action: coffer_client::ChangeAction::Updated,
            }],
            via_reference: false,
            name: None,
            lease: None,
            actor: Actor {
                kind: "api_key".into(),
                id: None,
            },
            time: serde_json::from_value(serde_json::json!("2026-11-30T12:00:00Z")).unwrap(),
        }
    }

    fn resync(reason: ResyncReason, id: i64, revisions: &[(&str, i64)]) -> Resync {
        Resync {
            reason,
            last_event_id: id,
            environments: revisions
                .iter()
                .map(|(environment, revision)| EnvironmentRevision {
                    environment: (*environment).into(),
                    revision: *revision,
                })
                .collect(),
        }
    }

    #[test]
    fn an_event_is_fetched_when_its_revision_is_ahead_or_it_moves_none() {
        let changed = event(9, EventType::SecretsChanged, "production", 5);
        assert!(needs_fetch(Some(4), &changed));
        assert!(needs_fetch(None, &changed), "nothing known");
        assert!(!needs_fetch(Some(5), &changed), "already fetched");
        assert!(!needs_fetch(Some(6), &changed));
        let through_reference = Event {
            via_reference: true,
            ..changed.clone()
        };
        assert!(needs_fetch(Some(5), &through_reference));
        for kind in [EventType::EnvironmentCreated, EventType::EnvironmentDeleted] {
            assert!(needs_fetch(Some(5), &event(9, kind, "production", 1)));
        }
        assert!(!needs_fetch(
            Some(5),
            &event(9, EventType::EnvironmentRenamed, "production", 5)
        ));
    }

    #[test]
    fn a_start_fetches_what_moved_or_is_unknown_and_an_expiry_fetches_everything() {
        let read = [
            ("production".to_owned(), Some(4)),
            ("staging".to_owned(), Some(2)),
            ("development".to_owned(), None),
            ("qa".to_owned(), Some(1)),
        ];
        let listed = [("production", 4), ("staging", 3), ("development", 1)];
        let start = resync(ResyncReason::Start, 10, &listed);
        assert_eq!(
            resync_fetches(&start, &read),
            ["staging", "development", "qa"],
            "moved, unknown, and no longer listed"
        );
        let expired = resync(ResyncReason::Expired, 10, &listed);
        assert_eq!(resync_fetches(&expired, &read).len(), 4);
        assert!(resync_fetches(&start, &[]).is_empty());
    }

    #[test]
    fn reconnects_back_off_with_jitter_up_to_the_cap_and_honour_retry_after() {
        assert_eq!(reconnect_delay(0, None, 0.5), Duration::ZERO);
        let without_jitter: Vec<u64> = (1..=7)
            .map(|n| reconnect_delay(n, None, 0.0).as_secs())
            .collect();
        assert_eq!(without_jitter, [1, 2, 4, 8, 16, 30, 30]);
        // Jitter takes off up to half, never more.
        assert_eq!(
            reconnect_delay(3, None, 0.999_999),
            Duration::from_secs(4).mul_f64(1.0 - 0.999_999 / 2.0)
        );
        assert!(reconnect_delay(40, None, 0.9) >= RECONNECT_CAP / 2);
        let asked = Some(Duration::from_secs(10));
        assert_eq!(reconnect_delay(1, asked, 0.3), Duration::from_secs(10));
        assert_eq!(reconnect_delay(7, asked, 0.0), RECONNECT_CAP);
    }

    #[tokio::test]
    async fn a_burst_of_changes_is_taken_as_one_piece_of_work() {
        let pending = Pending::default();
        pending.environment("production");
        pending.environment("production");
        pending.environment("staging");
        let work = pending.take().await;
        assert_eq!(
            work.environments.into_iter().collect::<Vec<_>>(),
            ["production", "staging"]
        );
        pending.everything();
        assert!(pending.take().await.all);
        let waiting = tokio::time::timeout(Duration::from_millis(50), pending.take()).await;
        assert!(waiting.is_err(), "nothing more to do");
    }

    /// A stream as scripted by a test: the messages (or the error) sent through `tx`.
    struct FakeSubscription {
        rx: mpsc::UnboundedReceiver<Result<StreamMessage, ClientError>>,
        last: Option<i64>,
    }

    impl Subscription for FakeSubscription {
        async fn next(&mut self) -> Result<Option<StreamMessage>, ClientError> {
            match self.rx.recv().await {
                None => Ok(None),
                Some(Err(e)) => Err(e),
                Some(Ok(message)) => {
                    self.last = Some(match &message {
                        StreamMessage::Event(e) => e.id,
                        StreamMessage::Resync(r) => r.last_event_id,
                    });
                    Ok(Some(message))
                }
            }
        }

        fn last_event_id(&self) -> Option<i64> {
            self.last
        }
    }

    /// coffer-server as a test scripts it: each environment's revision and value, and the
    /// answers to the attempts to open a stream, in order (a 503 once they run out).
    #[derive(Clone, Default)]
    struct FakeServer(Arc<FakeInner>);

    #[derive(Default)]
    struct FakeInner {
        data: StdMutex<HashMap<String, (i64, String)>>,
        reads: AtomicUsize,
        opens: StdMutex<VecDeque<Result<FakeSubscription, ClientError>>>,
        /// The position every attempt asked for.
        afters: StdMutex<Vec<Option<i64>>>,
        /// Held (written) by a test, it keeps attempts to open a stream waiting.
        gate: tokio::sync::RwLock<()>,
    }

    fn unavailable() -> ClientError {
        ClientError::Api {
            status: 503,
            code: "service_unavailable".into(),
            message: "busy".into(),
            request_id: None,
            retry_after: None,
        }
    }

    impl FakeServer {
        fn set(&self, environment: &str, revision: i64, value: &str) {
            self.0
                .data
                .lock()
                .unwrap()
                .insert(environment.into(), (revision, value.into()));
        }

        /// The next attempt to open a stream succeeds; its messages go through the sender.
        fn stream(&self) -> mpsc::UnboundedSender<Result<StreamMessage, ClientError>> {
            let (tx, rx) = mpsc::unbounded_channel();
            let subscription = FakeSubscription { rx, last: None };
            self.0.opens.lock().unwrap().push_back(Ok(subscription));
            tx
        }

        fn reads(&self) -> usize {
            self.0.reads.load(Ordering::SeqCst)
        }
    }

    impl Origin for FakeServer {
        async fn read(&self, key: &SourceKey, etag: Option<&str>) -> Result<Read, ClientError> {
            self.0.reads.fetch_add(1, Ordering::SeqCst);
            let (revision, value) = self.0.data.lock().unwrap()[&key.environment].clone();
            let tag = format!("\"{revision}.{value}\"");
            if etag == Some(tag.as_str()) {
                return Ok(Read::NotModified { etag: Some(tag) });
            }
            Ok(Read::Modified {
                etag: Some(tag),
                revision,
                values: BTreeMap::from([("A".to_owned(), SecretString::from(value))]),
            })
        }
        async fn project_exists(&self, _: &SourceKey) -> Result<(), ClientError> {
            Ok(())
        }
        async fn environment_exists(&self, _: &SourceKey) -> Result<(), ClientError> {
            Ok(())
        }
    }

    impl Publisher for FakeServer {
        type Subscription = FakeSubscription;
        async fn subscribe(
            &self,
            _: &ProjectKey,
            after: Option<i64>,
        ) -> Result<FakeSubscription, ClientError> {
            let _open = self.0.gate.read().await;
            self.0.afters.lock().unwrap().push(after);
            let next = self.0.opens.lock().unwrap().pop_front();
            next.unwrap_or_else(|| Err(unavailable()))
        }
    }

    fn key(environment: &str) -> SourceKey {
        SourceKey::new("http://coffer", [7; 32], "acme", "web", environment)
    }

    fn reader(name: &str) -> ObjectRef<Environment> {
        ObjectRef::new(name).within("apps")
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const WAIT: Duration = Duration::from_secs(10);

    /// Waits (at most 10 s) until `check` holds.
    async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next reader woken, within 10 s.
    async fn woken(changed: &mut mpsc::UnboundedReceiver<ObjectRef<Environment>>) -> String {
        let reader = tokio::time::timeout(WAIT, changed.recv()).await.unwrap();
        reader.unwrap().name
    }

    fn drain(changed: &mut mpsc::UnboundedReceiver<ObjectRef<Environment>>) {
        while changed.try_recv().is_ok() {}
    }

    #[tokio::test]
    async fn a_pushed_change_is_fetched_at_once_and_wakes_the_readers() {
        let metrics = Arc::new(Metrics::new());
        let (sources, mut changed) = Sources::new(metrics.clone(), true);
        let server = FakeServer::default();
        server.set("production", 4, "one");
        server.set("staging", 2, "s");
        let stream = server.stream();
        for name in ["a", "b"] {
            let first = sources
                .snapshot(&key("production"), &server, HOUR, false, &reader(name))
                .await
                .unwrap();
            assert_eq!(first.revision, 4);
            sources.follow(&key("production"), &server);
        }
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Push);
        // One stream for the project, however many readers.
        assert_eq!(metrics.event_stream_count(StreamState::Connected), 1);
        drain(&mut changed);
        // The revisions held are current: nothing to fetch.
        let start = resync(
            ResyncReason::Start,
            10,
            &[("production", 4), ("staging", 2)],
        );
        stream.send(Ok(StreamMessage::Resync(start))).unwrap();
        // An event for an environment nobody reads is let be.
        stream
            .send(Ok(StreamMessage::Event(event(
                11,
                EventType::SecretsChanged,
                "staging",
                3,
            ))))
            .unwrap();
        server.set("production", 5, "two");
        stream
            .send(Ok(StreamMessage::Event(event(
                12,
                EventType::SecretsChanged,
                "production",
                5,
            ))))
            .unwrap();
        let mut names = [woken(&mut changed).await, woken(&mut changed).await];
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let now = sources
            .snapshot(&key("production"), &server, HOUR, false, &reader("a"))
            .await
            .unwrap();
        assert_eq!(now.values["A"].expose_secret(), "two");
        assert_eq!(server.reads(), 2, "one read at first, one for the push");
        assert_eq!(metrics.events_received_count("secrets.changed"), 2);
        assert_eq!(metrics.events_received_count("resync"), 1);

        // A change through a reference moves no revision, and is fetched all the same.
        server.set("production", 5, "three");
        let mut through = event(13, EventType::SecretsChanged, "production", 5);
        through.via_reference = true;
        stream.send(Ok(StreamMessage::Event(through))).unwrap();
        woken(&mut changed).await;
        let now = sources
            .snapshot(&key("production"), &server, HOUR, false, &reader("a"))
            .await
            .unwrap();
        assert_eq!(now.values["A"].expose_secret(), "three");
    }

    #[tokio::test]
    async fn a_dropped_stream_resumes_from_the_last_event_and_a_refused_one_means_polling() {
        let metrics = Arc::new(Metrics::new());
        let (sources, mut changed) = Sources::new(metrics.clone(), true);
        let server = FakeServer::default();
        server.set("production", 4, "one");
        let first = server.stream();
        let production = key("production");
        sources
            .snapshot(&production, &server, HOUR, false, &reader("a"))
            .await
            .unwrap();
        sources.follow(&production, &server);
        assert_eq!(sources.sync_mode(&production).await, SyncMode::Push);
        let start = resync(ResyncReason::Start, 20, &[("production", 4)]);
        first.send(Ok(StreamMessage::Resync(start))).unwrap();
        until("the resync is read", || async {
            metrics.events_received_count("resync") == 1
        })
        .await;

        // The stream ends; the next one goes on from event 20, and delivers what happened in
        // between.
        let second = server.stream();
        server.set("production", 5, "two");
        second
            .send(Ok(StreamMessage::Event(event(
                21,
                EventType::SecretsChanged,
                "production",
                5,
            ))))
            .unwrap();
        drop(first);
        until("the missed change is fetched", || async {
            sources.revision(&production) == Some(5)
        })
        .await;
        assert_eq!(*server.0.afters.lock().unwrap(), [None, Some(20)]);
        until("the stream is open again", || async {
            sources.sync_mode(&production).await == SyncMode::Push
        })
        .await;
        drain(&mut changed);

        // Then it breaks, and cannot be opened again: the readers are woken to report polling.
        second.send(Err(ClientError::StreamIdle(WAIT))).unwrap();
        assert_eq!(woken(&mut changed).await, "a");
        until("the stream is down", || async {
            sources.sync_mode(&production).await == SyncMode::Poll
        })
        .await;
        until("a failure to open it is counted", || async {
            metrics.event_stream_count(StreamState::Disconnected) == 1
                && server.0.afters.lock().unwrap().len() >= 3
        })
        .await;
        drain(&mut changed);
        // Back (after the backoff): pushed again, from where it was, and the readers told.
        let third = server.stream();
        assert_eq!(woken(&mut changed).await, "a");
        assert_eq!(sources.sync_mode(&production).await, SyncMode::Push);
        assert_eq!(server.0.afters.lock().unwrap().last(), Some(&Some(21)));
        assert_eq!(metrics.event_stream_count(StreamState::Connected), 1);

        // An environment the stream does not deliver is polled.
        drain(&mut changed);
        let other = resync(ResyncReason::Expired, 30, &[("staging", 1)]);
        third.send(Ok(StreamMessage::Resync(other))).unwrap();
        assert_eq!(woken(&mut changed).await, "a");
        assert_eq!(sources.sync_mode(&production).await, SyncMode::Poll);
    }

    #[tokio::test]
    async fn a_reader_that_gave_up_waiting_for_the_stream_is_told_when_it_opens() {
        let (sources, mut changed) = Sources::new(Arc::new(Metrics::new()), true);
        let server = FakeServer::default();
        server.set("production", 4, "one");
        let held = server.0.gate.write().await;
        let _stream = server.stream();
        sources
            .snapshot(&key("production"), &server, HOUR, false, &reader("a"))
            .await
            .unwrap();
        sources.follow(&key("production"), &server);
        // Still opening after the reader's wait: not pushed yet.
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Poll);
        drain(&mut changed);
        drop(held);
        assert_eq!(woken(&mut changed).await, "a");
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Push);
    }

    #[tokio::test]
    async fn the_stream_stops_with_its_last_reader_or_with_the_sources() {
        let metrics = Arc::new(Metrics::new());
        let (sources, _changed) = Sources::new(metrics.clone(), true);
        let server = FakeServer::default();
        server.set("production", 4, "one");
        let stream = server.stream();
        sources
            .snapshot(&key("production"), &server, HOUR, false, &reader("a"))
            .await
            .unwrap();
        sources.follow(&key("production"), &server);
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Push);
        assert_eq!(metrics.event_stream_count(StreamState::Connected), 1);
        sources.forget_reader(&reader("a"));
        assert_eq!(metrics.event_stream_count(StreamState::Connected), 0);
        until("the task let go of its stream", || async {
            stream.is_closed()
        })
        .await;
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Poll);

        // A new reader follows it again; dropping the sources (the controllers stopped) ends it.
        let stream = server.stream();
        sources
            .snapshot(&key("production"), &server, HOUR, false, &reader("b"))
            .await
            .unwrap();
        sources.follow(&key("production"), &server);
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Push);
        assert_eq!(metrics.event_stream_count(StreamState::Connected), 1);
        drop(sources);
        assert_eq!(metrics.event_stream_count(StreamState::Connected), 0);
        until("the task let go of its stream", || async {
            stream.is_closed()
        })
        .await;
    }

    #[tokio::test]
    async fn with_event_streams_off_nothing_is_followed() {
        let metrics = Arc::new(Metrics::new());
        let (sources, _changed) = Sources::new(metrics.clone(), false);
        let server = FakeServer::default();
        server.set("production", 4, "one");
        sources
            .snapshot(&key("production"), &server, HOUR, false, &reader("a"))
            .await
            .unwrap();
        sources.follow(&key("production"), &server);
        assert_eq!(sources.sync_mode(&key("production")).await, SyncMode::Poll);
        assert!(server.0.afters.lock().unwrap().is_empty());
    }
}
