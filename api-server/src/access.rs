//! What authenticating and authorizing a request looked up, remembered for a short time: the
//! live credential behind a bearer secret, and a caller's standing at an
//! organization/project/environment. A read of a secret then needs no query for either.
//!
//! Freshness:
//! - On this replica a change is effective at once. Every request that may change who may do
//!   what (any state-changing request outside the secret data routes: revocations, rotations,
//!   membership, roles, teams, grants, policies, renames, deletions) forgets everything when it
//!   ends, before its answer is sent (see [`crate::http::forget_changed_access`]).
//! - On PostgreSQL, every other replica forgets too as soon as its change listener hears of it
//!   (a `NOTIFY` sent when the request is over, see [`crate::db::cache::Change::Access`]).
//! - A change made by hand in the database, or missed while a listener was disconnected, is seen
//!   within the time to live (`COFFER_ACCESS_CACHE_TTL_MS`); 0 turns the cache off.
//!
//! Forgetting bumps an epoch rather than walking the entries: an entry is used only while the
//! epoch it was loaded under is current, so a lookup that raced with a change (it read before the
//! change committed and stores its result after) can never serve the old answer. Only successful
//! lookups are kept; a credential is checked against its expiry on every use. The caches hold no
//! secret: credentials are keyed by the hash of their secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use crate::db::credentials::Live;
use crate::db::projects::StandingRow;
use crate::ids::{Timestamp, UserId};

/// Where a caller's standing was looked up: the caller (a user, or none for a service token,
/// whose scope is checked from the token itself) and the slugs of the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StandingKey {
    pub user: Option<UserId>,
    pub org: String,
    pub project: String,
    pub env: Option<String>,
}

#[derive(Clone)]
struct Entry<T> {
    epoch: u64,
    value: T,
}

/// See the module documentation.
pub struct AccessCache {
    enabled: bool,
    epoch: AtomicU64,
    credentials: Cache<String, Entry<Live>>,
    standing: Cache<StandingKey, Entry<Arc<[StandingRow]>>>,
    /// The epoch, for long-lived requests (event streams) that check access again whenever it
    /// may have changed.
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for AccessCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessCache")
            .field("enabled", &self.enabled)
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .field("credentials", &self.credentials.entry_count())
            .field("standing", &self.standing.entry_count())
            .finish()
    }
}

/// A lookup's epoch: read it before asking the database, store the answer under it.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

impl AccessCache {
    /// Entries live at most `ttl` (none are kept when it is zero); at most `capacity`
    /// credentials and `capacity` standing rows are kept.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            enabled: !ttl.is_zero(),
            epoch: AtomicU64::new(0),
            credentials: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            standing: Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, e: &Entry<Arc<[StandingRow]>>| {
                    u32::try_from(e.value.len().max(1)).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes whenever [`AccessCache::forget_all`] is called (on this replica).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current epoch, to be read before a lookup whose answer will be stored.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    fn current<T: Clone>(&self, entry: Option<Entry<T>>) -> Option<T> {
        entry
            .filter(|e| e.epoch == self.epoch.load(Ordering::Acquire))
            .map(|e| e.value)
    }

    /// The live credential whose secret hashes to `hash`, if remembered and not expired at `now`.
    pub fn credential(&self, hash: &str, now: Timestamp) -> Option<Live> {
        if !self.enabled {
            return None;
        }
        self.current(self.credentials.get(hash))
            .filter(|live| live.valid_until().is_none_or(|t| t > now))
    }

    /// Remembers the credential `hash` stands for, as looked up under `epoch`.
    pub fn put_credential(&self, epoch: Epoch, hash: String, live: Live) {
        if self.enabled && epoch.0 == self.epoch.load(Ordering::Acquire) {
            self.credentials.insert(
                hash,
                Entry {
                    epoch: epoch.0,
                    value: live,
                },
            );
        }
    }

    /// The standing at `key`, if remembered.
    pub fn standing(&self, key: &StandingKey) -> Option<Arc<[StandingRow]>> {
        if !self.enabled {
            return None;
        }
        self.current(self.standing.get(key))
    }

    /// Remembers the standing at `key`, as looked up under `epoch`.
    pub fn put_standing(&self, epoch: Epoch, key: StandingKey, rows: Arc<[StandingRow]>) {
        if self.enabled && epoch.0 == self.epoch.load(Ordering::Acquire) {
            self.standing.insert(
                key,
                Entry {
                    epoch: epoch.0,
                    value: rows,
                },
            );
        }
    }

    /// Forgets everything: who may do what may have changed.
    pub fn forget_all(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.credentials.invalidate_all();
        self.standing.invalidate_all();
        self.changed.send_replace(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ApiKeyId, UserId};

    fn key(valid_until: Option<Timestamp>) -> Live {
        Live::ApiKey {
            id: ApiKeyId::new(),
            user_id: UserId::new(),
            access: "read_write".into(),
            last_used_at: None,
            valid_until,
        }
    }

    #[test]
    fn an_answer_looked_up_before_a_change_is_never_served_after_it() {
        let cache = AccessCache::new(Duration::from_secs(60), 100);
        let now = Timestamp::now();
        let before = cache.epoch();
        cache.put_credential(before, "h1".into(), key(None));
        assert!(cache.credential("h1", now).is_some());

        // A lookup starts, a change ends, the lookup stores what it read before the change.
        let racing = cache.epoch();
        cache.forget_all();
        cache.put_credential(racing, "h1".into(), key(None));
        assert!(cache.credential("h1", now).is_none());

        let after = cache.epoch();
        cache.put_credential(after, "h1".into(), key(None));
        assert!(cache.credential("h1", now).is_some());
    }

    #[test]
    fn an_expired_credential_is_not_served() {
        let cache = AccessCache::new(Duration::from_secs(60), 100);
        let now = Timestamp::now();
        cache.put_credential(cache.epoch(), "h".into(), key(Some(now)));
        assert!(cache.credential("h", now).is_none());
        cache.put_credential(
            cache.epoch(),
            "h".into(),
            key(Some(now.plus(Duration::from_secs(1)))),
        );
        assert!(cache.credential("h", now).is_some());
    }

    #[test]
    fn a_zero_time_to_live_keeps_nothing() {
        let cache = AccessCache::new(Duration::ZERO, 100);
        cache.put_credential(cache.epoch(), "h".into(), key(None));
        assert!(cache.credential("h", Timestamp::now()).is_none());
    }
}
