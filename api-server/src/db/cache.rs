//! The current secrets of recently read environments, kept in memory as stored (sealed), so a
//! read needs no query for them: each read still opens its values with the project's data key
//! and is audited as before.
//!
//! Coherence. A write records what it changes on its transaction ([`super::Tx::changed`]); when
//! the transaction ends (committed, rolled back or dropped) this replica forgets those
//! environments, before the write's response is sent. On PostgreSQL the same transaction sends
//! a notification on the deployment's [`channel`] that every replica's listener ([`spawn_listener`]) receives
//! as soon as the write commits, and forgets them too. While a replica's listener is not
//! connected its cache is off (cleared, bypassed), since it could miss notifications. A load
//! that raced a change is not kept: every change moves an epoch that a load compares before it
//! stores. Whatever happens, nothing is used older than [`MAX_AGE`].
//!
//! Bounds: at most `max_bytes` of rows (least recently loaded environments go first); an
//! environment larger than a sixteenth of that is never kept, and is remembered as such (until
//! it changes), so that reads of single secrets in it fetch just their row.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::secrets::SealedRow;
use crate::ids::{EnvironmentId, OrgId, ProjectId, SessionId};

/// The PostgreSQL notification channel of changes to secrets and environments, for the
/// deployment whose tables are in `schema`: channels are per database, and deployments on other
/// schemas of the same database are none of this one's business.
pub fn channel(schema: &str) -> String {
    const PREFIX: &str = "coffer_changes";
    let mut name = if schema == "public" {
        PREFIX.to_owned()
    } else {
        format!("{PREFIX}.{schema}")
    };
    // PostgreSQL's identifier limit (a longer name is refused). Two schemas alike in their first
    // 48 bytes share a channel: each then forgets some of what it need not, nothing worse.
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// The longest an environment's secrets are used from memory after they were loaded, should a
/// notification of their change be lost with nothing noticing (a silently broken connection).
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Other replicas' changes as this replica's listener hears them, for what else keeps state in
/// memory (the sessions confirmed recently). A receiver that lags behind must assume anything
/// changed.
pub type RemoteChanges = tokio::sync::broadcast::Sender<Arc<[Change]>>;

/// A notification carries at most this many changed environments; a transaction that changes
/// more sends "everything changed" instead (PostgreSQL caps a payload at 8,000 bytes).
const MAX_NOTIFIED: usize = 64;

/// Organizations whose secrets revision is remembered, at most.
const MAX_ORGS: usize = 100_000;

/// Environments remembered as too large to keep, at most (then forgotten all at once).
const MAX_OVERSIZE: usize = 100_000;

/// What a transaction changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The secrets of one environment, or the environment itself (renamed, deleted).
    Environment { org: OrgId, env: EnvironmentId },
    /// Anything: deleted projects and organizations, re-sealed data.
    Everything,
    /// A login session ended (logout, password change, a reused refresh token): no replica may
    /// accept it from memory any longer. The secret cache has nothing to forget for it.
    Session(SessionId),
    /// Events of the project were recorded: its event streams read on. The secret cache has
    /// nothing to forget for it (the change that made the events says what changed).
    Events(ProjectId),
    /// Who may do what changed (a revocation, a role, a grant, a policy…): every replica forgets
    /// the credentials and standings it remembers (see [`crate::access`]).
    Access,
}

/// The changes of one transaction, as a notification payload: `org:env` pairs, `s:session`,
/// `e:project` and `a` separated by commas, or `*`. Ids only: what changed is read from the
/// database.
pub fn payload(changes: &[Change]) -> String {
    if changes.len() > MAX_NOTIFIED || changes.contains(&Change::Everything) {
        return "*".to_owned();
    }
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Environment { org, env } => Some(format!("{org}:{env}")),
            Change::Session(id) => Some(format!("s:{id}")),
            Change::Events(project) => Some(format!("e:{project}")),
            Change::Access => Some("a".to_owned()),
            Change::Everything => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The changes a notification payload names; everything when it cannot be read.
pub fn parse_payload(payload: &str) -> Vec<Change> {
    let parse = |pair: &str| {
        if let Some(session) = pair.strip_prefix("s:") {
            return session.parse().ok().map(Change::Session);
        }
        if let Some(project) = pair.strip_prefix("e:") {
            return project.parse().ok().map(Change::Events);
        }
        if pair == "a" {
            return Some(Change::Access);
        }
        let (org, env) = pair.split_once(':')?;
        Some(Change::Environment {
            org: org.parse().ok()?,
            env: env.parse().ok()?,
        })
    };
    if payload == "*" {
        return vec![Change::Everything];
    }
    payload
        .split(',')
        .map(|pair| parse(pair).unwrap_or(Change::Everything))
        .collect()
}

/// An environment's current secrets as loaded in one statement, with its validators.
#[derive(Debug)]
pub struct Snapshot {
    /// The environment's revision.
    pub revision: i64,
    /// The organization's secrets revision (for entity tags of resolved reads).
    pub org_revision: i64,
    /// The live secrets at their current versions, ordered by key.
    pub rows: Vec<SealedRow>,
    /// Whether a live value holds references.
    references: bool,
    loaded: Instant,
}

impl Snapshot {
    pub fn new(revision: i64, org_revision: i64, rows: Vec<SealedRow>) -> Self {
        let references = rows.iter().any(|r| r.has_references != 0);
        Self {
            revision,
            org_revision,
            rows,
            references,
            loaded: Instant::now(),
        }
    }

    /// The live secret `key`.
    pub fn row(&self, key: &str) -> Option<&SealedRow> {
        self.rows
            .binary_search_by(|r| r.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.rows[i])
    }

    /// Whether a live value holds references (then resolved reads depend on the organization).
    pub fn has_references(&self) -> bool {
        self.references
    }

    /// Roughly what it takes in memory.
    fn bytes(&self) -> usize {
        const PER_ROW: usize = std::mem::size_of::<SealedRow>();
        self.rows
            .iter()
            .map(|r| {
                PER_ROW
                    + r.key.len()
                    + r.dek_id.len()
                    + r.value_ct.len()
                    + r.comment_ct.as_ref().map_or(0, Vec::len)
            })
            .sum::<usize>()
            + std::mem::size_of::<Self>()
    }
}

/// The cache of one replica.
#[derive(Debug)]
pub struct SecretCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Moves with every change and every suspension: a load keeps its result only if the epoch
    /// it started in is still current.
    epoch: u64,
    /// False while changes could go unnoticed (PostgreSQL listener not connected).
    live: bool,
    envs: HashMap<EnvironmentId, Entry>,
    /// Environments in the order they were stored, with the sequence number of that store; an
    /// environment stored again (or forgotten) since leaves a stale place behind.
    order: VecDeque<(EnvironmentId, u64)>,
    stores: u64,
    bytes: usize,
    /// The organizations' secrets revisions, as last loaded.
    orgs: HashMap<OrgId, i64>,
    /// Environments found too large to keep (at most [`MAX_OVERSIZE`] remembered).
    oversize: HashSet<EnvironmentId>,
    /// The PostgreSQL backend of the connected listener.
    listener: Option<i32>,
}

#[derive(Debug)]
struct Entry {
    snapshot: Arc<Snapshot>,
    bytes: usize,
    /// Which store put it here (its place in `order`).
    seq: u64,
}

impl SecretCache {
    /// A cache of at most `max_bytes` (0: off), in use at once when `live`.
    pub fn new(max_bytes: usize, live: bool) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner {
                live,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent: a panic elsewhere cannot poison
        // them into something wrong.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The environment's secrets when they are known and current.
    pub fn get(&self, org: OrgId, env: EnvironmentId) -> Option<Arc<Snapshot>> {
        if self.max_bytes == 0 {
            return None;
        }
        let inner = self.lock();
        if !inner.live {
            return None;
        }
        let snapshot = &inner.envs.get(&env)?.snapshot;
        if snapshot.loaded.elapsed() > MAX_AGE {
            return None;
        }
        // A resolved read's entity tag also names the organization's revision.
        if snapshot.has_references() && inner.orgs.get(&org) != Some(&snapshot.org_revision) {
            return None;
        }
        Some(snapshot.clone())
    }

    /// Whether loading the environment's secrets would keep them: the cache is in use and the
    /// environment was not found too large. When not, a read of one secret fetches its row
    /// alone.
    pub fn worth_loading(&self, env: EnvironmentId) -> bool {
        if self.max_bytes == 0 {
            return false;
        }
        let inner = self.lock();
        inner.live && !inner.oversize.contains(&env)
    }

    /// The epoch a load starts in; `None` when whatever it loads is not to be kept.
    pub fn epoch(&self) -> Option<u64> {
        if self.max_bytes == 0 {
            return None;
        }
        let inner = self.lock();
        inner.live.then_some(inner.epoch)
    }

    /// Keeps what a load that started in `epoch` found, unless something changed since.
    pub fn store(
        &self,
        org: OrgId,
        env: EnvironmentId,
        snapshot: Snapshot,
        epoch: Option<u64>,
    ) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        let Some(epoch) = epoch else {
            return snapshot;
        };
        let size = snapshot.bytes();
        let mut inner = self.lock();
        if !inner.live || inner.epoch != epoch {
            return snapshot;
        }
        if size > self.max_bytes / 16 {
            if inner.oversize.len() >= MAX_OVERSIZE {
                inner.oversize.clear();
            }
            inner.oversize.insert(env);
            return snapshot;
        }
        if inner.orgs.len() >= MAX_ORGS {
            inner.orgs.clear();
        }
        inner.orgs.insert(org, snapshot.org_revision);
        inner.stores += 1;
        let seq = inner.stores;
        let entry = Entry {
            snapshot: snapshot.clone(),
            bytes: size,
            seq,
        };
        if let Some(old) = inner.envs.insert(env, entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += size;
        inner.order.push_back((env, seq));
        while inner.bytes > self.max_bytes {
            let Some((oldest, seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.envs.get(&oldest).is_some_and(|e| e.seq == seq) {
                inner.remove(oldest);
            }
        }
        if inner.order.len() > 2 * inner.envs.len() + 64 {
            let Inner { order, envs, .. } = &mut *inner;
            order.retain(|(env, seq)| envs.get(env).is_some_and(|e| e.seq == *seq));
        }
        snapshot
    }

    /// Forgets what `changes` made stale.
    pub fn forget(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.epoch += 1;
        for change in changes {
            match *change {
                Change::Environment { org, env } => {
                    inner.remove(env);
                    inner.orgs.remove(&org);
                    inner.oversize.remove(&env);
                }
                Change::Everything => inner.clear(),
                Change::Session(_) | Change::Events(_) | Change::Access => {}
            }
        }
    }

    /// Stops using the cache and empties it (changes may go unnoticed from now on).
    pub fn suspend(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.live = false;
        inner.listener = None;
        inner.clear();
    }

    /// Uses the cache again, from empty: changes are noticed again from now on, by the listener
    /// on PostgreSQL backend `listener`.
    pub fn resume(&self, listener: Option<i32>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.clear();
        inner.live = true;
        inner.listener = listener;
    }

    /// The process id of the PostgreSQL backend whose notifications keep the cache current,
    /// while it is connected.
    pub fn listener_backend(&self) -> Option<i32> {
        self.lock().listener
    }

    /// How many environments are kept.
    pub fn len(&self) -> usize {
        self.lock().envs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remove(&mut self, env: EnvironmentId) {
        if let Some(entry) = self.envs.remove(&env) {
            self.bytes -= entry.bytes;
        }
    }

    fn clear(&mut self) {
        self.envs.clear();
        self.order.clear();
        self.orgs.clear();
        self.oversize.clear();
        self.bytes = 0;
    }
}

/// Listens for the changes other replicas make (PostgreSQL), forgetting what they name, until
/// the returned task is aborted. The cache is suspended until the listener is connected and
/// whenever it is not; it reconnects every second.
pub fn spawn_listener(
    url: String,
    channel: Arc<str>,
    cache: Arc<SecretCache>,
    remote: RemoteChanges,
) -> tokio::task::JoinHandle<()> {
    cache.suspend();
    tokio::spawn(async move {
        // Said once per outage, not once per failed reconnection.
        let mut reported = false;
        loop {
            let mut connected = false;
            let Err(e) = listen(&url, &channel, &cache, &remote, &mut connected).await;
            cache.suspend();
            if connected {
                reported = false;
            }
            if !reported {
                tracing::warn!(error = %e, "the change listener is not connected; secrets are read from the database until it is");
                reported = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// One connection of the listener, until it fails; `connected` tells whether it got as far as
/// listening.
async fn listen(
    url: &str,
    channel: &str,
    cache: &SecretCache,
    remote: &RemoteChanges,
    connected: &mut bool,
) -> Result<std::convert::Infallible, sqlx::Error> {
    use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
    let options = url
        .parse::<PgConnectOptions>()?
        .application_name("coffer-server change listener");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(channel).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut listener)
        .await?;
    cache.resume(Some(backend));
    // Notifications sent while no listener was connected are lost: what keeps state from them
    // starts over.
    let _ = remote.send(Arc::from([Change::Everything]));
    *connected = true;
    tracing::debug!("the change listener is connected");
    loop {
        match listener.try_recv().await? {
            Some(notification) => {
                let changes: Arc<[Change]> = parse_payload(notification.payload()).into();
                cache.forget(&changes);
                // Nobody listening (yet) is fine: the receivers were not there to miss it.
                let _ = remote.send(changes);
            }
            // Lost (`PgListener` would reconnect on the next call, but a notification missed
            // meanwhile must suspend the cache first: reconnecting is the caller's).
            None => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the change listener's connection was lost",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(key: &str, bytes: usize) -> SealedRow {
        SealedRow {
            id: crate::ids::SecretId::new(),
            key: key.to_owned(),
            version: 1,
            dek_id: "d".to_owned(),
            value_ct: vec![0; bytes],
            comment_ct: None,
            has_references: 0,
            created_at: crate::ids::Timestamp::now(),
            updated_at: crate::ids::Timestamp::now(),
            deleted_at: None,
        }
    }

    fn ids() -> (OrgId, EnvironmentId) {
        (OrgId::new(), EnvironmentId::new())
    }

    #[test]
    fn a_load_that_raced_a_change_is_not_kept() {
        let cache = SecretCache::new(1 << 20, true);
        let (org, env) = ids();
        let epoch = cache.epoch();
        cache.forget(&[Change::Environment { org, env }]);
        cache.store(org, env, Snapshot::new(1, 1, vec![row("A", 10)]), epoch);
        assert!(cache.get(org, env).is_none());

        let epoch = cache.epoch();
        cache.store(org, env, Snapshot::new(2, 1, vec![row("A", 10)]), epoch);
        assert_eq!(cache.get(org, env).unwrap().revision, 2);
        cache.forget(&[Change::Environment { org, env }]);
        assert!(cache.get(org, env).is_none());
    }

    #[test]
    fn a_suspended_cache_keeps_nothing_and_answers_nothing() {
        let cache = SecretCache::new(1 << 20, true);
        let (org, env) = ids();
        let epoch = cache.epoch();
        cache.store(org, env, Snapshot::new(1, 1, vec![]), epoch);
        cache.suspend();
        assert!(cache.get(org, env).is_none());
        assert_eq!(cache.epoch(), None);
        cache.store(org, env, Snapshot::new(1, 1, vec![]), epoch);
        cache.resume(None);
        assert!(cache.get(org, env).is_none(), "resumed empty");
    }

    #[test]
    fn the_byte_budget_holds_and_the_oldest_go_first() {
        let cache = SecretCache::new(16 * 4096, true);
        let org = OrgId::new();
        let envs: Vec<EnvironmentId> = (0..40).map(|_| EnvironmentId::new()).collect();
        for env in &envs {
            let epoch = cache.epoch();
            cache.store(org, *env, Snapshot::new(1, 1, vec![row("A", 3000)]), epoch);
        }
        let inner = cache.lock();
        assert!(inner.bytes <= 16 * 4096);
        assert!(inner.order.len() <= 2 * inner.envs.len() + 64);
        drop(inner);
        assert!(cache.get(org, envs[0]).is_none());
        assert!(cache.get(org, envs[39]).is_some());

        let big = EnvironmentId::new();
        assert!(cache.worth_loading(big));
        let epoch = cache.epoch();
        cache.store(org, big, Snapshot::new(1, 1, vec![row("A", 8000)]), epoch);
        assert!(
            cache.get(org, big).is_none(),
            "over a sixteenth is never kept"
        );
        assert!(!cache.worth_loading(big), "nor loaded again for one secret");
        cache.forget(&[Change::Environment { org, env: big }]);
        assert!(cache.worth_loading(big), "until it changes");
    }

    #[test]
    fn a_change_elsewhere_in_the_organization_retires_resolved_tags() {
        let cache = SecretCache::new(1 << 20, true);
        let (org, env) = ids();
        let mut with_ref = row("A", 10);
        with_ref.has_references = 1;
        let epoch = cache.epoch();
        cache.store(org, env, Snapshot::new(1, 7, vec![with_ref]), epoch);
        assert!(cache.get(org, env).is_some());
        cache.forget(&[Change::Environment {
            org,
            env: EnvironmentId::new(),
        }]);
        assert!(cache.get(org, env).is_none());
    }

    #[test]
    fn channels_are_per_schema_and_valid_identifiers() {
        assert_eq!(channel("public"), "coffer_changes");
        assert_eq!(channel("t_1"), "coffer_changes.t_1");
        let long = channel(&"é".repeat(40));
        assert!(long.len() <= 63 && long.starts_with("coffer_changes.é"));
    }

    #[test]
    fn payloads_round_trip_and_degrade_to_everything() {
        let (org, env) = ids();
        let one = [Change::Environment { org, env }];
        assert_eq!(parse_payload(&payload(&one)), one);
        let mixed = [
            Change::Session(SessionId::new()),
            Change::Environment { org, env },
            Change::Events(ProjectId::new()),
            Change::Access,
        ];
        assert_eq!(parse_payload(&payload(&mixed)), mixed);
        assert_eq!(parse_payload("s:nonsense"), [Change::Everything]);
        assert_eq!(
            parse_payload(&payload(&[Change::Everything])),
            [Change::Everything]
        );
        let many = vec![Change::Environment { org, env }; MAX_NOTIFIED + 1];
        assert_eq!(payload(&many), "*");
        assert_eq!(parse_payload("garbage"), [Change::Everything]);
    }
}
