//! Storage: one code path over sqlx's `Any` driver for SQLite (embedded default) and PostgreSQL.
//!
//! Portable column types keep one set of queries: identifiers are UUIDv7 text (time-ordered, so
//! they sort and paginate by creation), timestamps are BIGINT milliseconds since the Unix epoch
//! (UTC), flags are nullable timestamps (`revoked_at`) rather than booleans. Every function takes
//! the owning tenant (here: the user) so no query can reach another tenant's rows.
//!
//! Durability: an acknowledged write is on disk. Every connection commits with an fsync (SQLite
//! `synchronous = FULL`, PostgreSQL's default `synchronous_commit = on`). The audit events of
//! reads reach the database through the read-audit journal (see
//! [`crate::service::audit_journal`]).

pub mod api_keys;
pub mod audit;
pub mod cache;
pub mod credentials;
pub mod dynamic;
pub mod events;
pub mod hot;
pub mod orgs;
pub mod password_resets;
pub mod projects;
pub mod secrets;
pub mod service_tokens;
pub mod sessions;
pub mod teams;
pub mod users;
pub mod webhooks;

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use self::cache::{Change, SecretCache};
use self::events::{NewEvent, Wake};
use self::hot::{HotConnection, HotConnections};
pub use crate::ids::Timestamp;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a caller waits for a free database connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL connection idle for longer than this is pinged before it is handed out.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(5);

/// Which database server is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: the pool, the backend, and on SQLite the queue this process's writers wait in.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// Connections kept for reads on the hot paths (see [`hot`]).
    reads: Arc<HotConnections>,
    backend: Backend,
    /// SQLite allows one writer at a time. Writers of this process queue here, first come first
    /// served, and only then `BEGIN IMMEDIATE`, instead of all polling the file lock through
    /// SQLite's busy handler (sleep and retry: unfair, with a long tail). Other processes on
    /// the same file (the admin CLI) still meet the busy timeout. `None` on PostgreSQL.
    writer: Option<Arc<Mutex<()>>>,
    /// The SQLite WAL keeper's connection (see [`spawn_wal_keeper`]); closed with the others.
    keeper: Option<AnyPool>,
    /// Environments' current secrets, sealed (see [`cache`]).
    cache: Arc<SecretCache>,
    /// On PostgreSQL, the listener for other replicas' changes; stops with the last clone.
    listener: Option<Arc<AbortOnDrop>>,
    /// On PostgreSQL, the channel of this deployment's changes (see [`cache::channel`]).
    channel: Option<Arc<str>>,
    /// On PostgreSQL, other replicas' changes as the listener hears them.
    remote: Option<cache::RemoteChanges>,
    /// On PostgreSQL, the key of the events lock (see [`events`]).
    events_lock: Option<i64>,
    /// Events recorded: by this process's transactions once they commit, and by other replicas
    /// as the listener hears of them.
    wake: tokio::sync::broadcast::Sender<Wake>,
}

/// A task that ends when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A write transaction; dropping it without [`Tx::commit`] rolls back. On SQLite it holds this
/// process's place as the writer until it ends. Derefs to the connection, so `&mut *tx` is an
/// executor.
pub struct Tx {
    tx: Transaction<'static, Any>,
    // Dropped after `tx`: the next writer goes ahead once this transaction has ended (or, when
    // dropped, once its rollback is queued on the connection).
    _writer: Option<OwnedMutexGuard<()>>,
    // Dropped last: this replica forgets what the transaction changed once it has ended.
    changes: Changes,
    /// Events inserted at commit, under the events lock (see [`events`]).
    events: Vec<NewEvent>,
    events_lock: Option<i64>,
    wake: tokio::sync::broadcast::Sender<Wake>,
}

/// What a transaction changes: forgotten by this replica's cache when dropped, that is when the
/// transaction has ended, whichever way.
struct Changes {
    cache: Arc<SecretCache>,
    list: Vec<Change>,
    /// How many of `list` other replicas have been notified of.
    notified: usize,
    /// On PostgreSQL, the channel other replicas listen on.
    channel: Option<Arc<str>>,
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.cache.forget(&self.list);
    }
}

impl Tx {
    /// Records that this transaction changes an environment's secrets or the environment itself
    /// (`Change::Everything`: anything). Every replica forgets what it knew of it when the
    /// transaction ends: this one at once, the others on PostgreSQL through a notification the
    /// transaction sends (see [`cache`]).
    pub fn changed(&mut self, change: Change) {
        if !self.changes.list.contains(&change) {
            self.changes.list.push(change);
        }
    }

    /// Records `event` with this transaction: it is inserted when the transaction commits, and
    /// event streams of every replica hear of it then.
    pub fn event(&mut self, event: NewEvent) {
        self.changed(Change::Events(event.project_id));
        self.events.push(event);
    }

    /// On PostgreSQL, the channel and payload of the notification of the changes recorded since
    /// the last one, for a statement that sends it itself (`pg_notify`) and so saves a round
    /// trip; the commit sends whatever no statement took.
    pub fn take_notification(&mut self) -> Option<(Arc<str>, String)> {
        let changes = &mut self.changes;
        let channel = changes.channel.clone()?;
        if changes.notified == changes.list.len() {
            return None;
        }
        let payload = cache::payload(&changes.list[changes.notified..]);
        changes.notified = changes.list.len();
        Some((channel, payload))
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let notification = self.take_notification();
        if !self.events.is_empty() {
            let notify = notification
                .as_ref()
                .map(|(channel, payload)| (&**channel, payload.as_str()));
            events::insert(&mut self.tx, self.events_lock, &self.events, notify).await?;
        } else if let Some((channel, payload)) = notification {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&*channel)
                .bind(payload)
                .execute(&mut *self.tx)
                .await?;
        }
        let Tx {
            tx,
            _writer,
            changes,
            events,
            wake,
            ..
        } = self;
        let committed = tx.commit().await;
        drop(_writer);
        drop(changes);
        if committed.is_ok() {
            let mut projects: Vec<_> = events.iter().map(|e| e.project_id).collect();
            projects.sort_unstable();
            projects.dedup();
            for project in projects {
                // Nobody listening is fine.
                let _ = wake.send(Wake::Project(project));
            }
        }
        committed
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("queued_writer", &self._writer.is_some())
            .finish_non_exhaustive()
    }
}

impl Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// A pool over `url` whose connections commit durably.
async fn connect_pool(
    url: &str,
    backend: Backend,
    max_connections: u32,
) -> Result<AnyPool, sqlx::Error> {
    let options: AnyConnectOptions = url
        .parse::<AnyConnectOptions>()?
        .disable_statement_logging();
    let mut pool_options = AnyPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(if backend == Backend::Sqlite { 1 } else { 0 })
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings every connection it hands out unless told not to, and (whatever the
        // options) pings every connection given back before it goes idle again, so an idle
        // connection was alive when it was last released. A SQLite connection lives in this
        // process: nothing can hang up on it while it idles, so the ping on acquire is a
        // wasted round trip to its worker thread and is not made. A PostgreSQL connection
        // can be cut while it idles (server restart, failover, a proxy's idle timeout), so
        // one that has idled for a while is still pinged; one that was in use a moment ago,
        // as every connection is under load, is not, which saves a network round trip per
        // acquire. (Should the server go away mid-load, the statement that finds it fails,
        // and the failed ping on release drops the connection.)
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                // WAL lets readers proceed during a write; FULL fsyncs the WAL at every commit;
                // the busy timeout makes writers of other processes wait for the lock instead
                // of failing at once; the WAL keeper checkpoints (see `spawn_wal_keeper`).
                // PostgreSQL keeps its default, `synchronous_commit = on`.
                if backend == Backend::Sqlite {
                    conn.execute(sqlx::raw_sql(&format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                         PRAGMA wal_autocheckpoint = 0; \
                         PRAGMA journal_size_limit = {WAL_TRUNCATE_ABOVE};"
                    )))
                    .await?;
                }
                Ok(())
            })
        });
    if backend == Backend::Postgres {
        pool_options = pool_options.before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_WHEN_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        });
    }
    pool_options.connect_with(options).await
}

/// How often the SQLite WAL keeper runs.
pub const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Above this size the SQLite WAL keeper resets the WAL instead of checkpointing passively.
pub const WAL_TRUNCATE_ABOVE: u64 = 64 * 1024 * 1024;

/// The SQLite WAL keeper, off the request path: every [`WAL_CHECKPOINT_EVERY`] it checkpoints
/// the WAL into the database file when it changed. Connections turn SQLite's own checkpoints
/// off: those run inside whichever commit crosses 1,000 WAL pages, and that request waited for
/// the copy and its fsyncs. Stops when `pool` is closed.
fn spawn_wal_keeper(pool: AnyPool, writer: Arc<Mutex<()>>, wal: PathBuf) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WAL_CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            match tend_wal(&pool, &writer, &wal, &mut last, WAL_TRUNCATE_ABOVE).await {
                Ok(_) => {}
                Err(_) if pool.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "the SQLite WAL keeper failed"),
            }
        }
    });
}

/// One round of the WAL keeper: unless the WAL at `wal` is as `last` seen (then remembered),
/// checkpoints it: passively (blocking no reader or writer), or, once it is larger than
/// `truncate_above`, by resetting it, taking this process's writer lock first so that the reset
/// can finish (writers would otherwise keep appending to it, and a WAL that is never reset never
/// shrinks). True when it checkpointed.
async fn tend_wal(
    pool: &AnyPool,
    writer: &Arc<Mutex<()>>,
    wal: &std::path::Path,
    last: &mut Option<(u64, std::time::SystemTime)>,
    truncate_above: u64,
) -> Result<bool, sqlx::Error> {
    let path = wal.to_owned();
    let seen = *last;
    let state = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((meta.len(), meta.modified()?)))
    })
    .await
    .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))??;
    let changed = state.is_some() && state != seen;
    *last = state;
    if changed {
        // Between two writers, so that the checkpoint can take every frame and the next writer
        // starts the WAL over; it only copies what changed since the last round.
        let _writer = writer.lock().await;
        let mode = if state.is_some_and(|(len, _)| len > truncate_above) {
            "PRAGMA wal_checkpoint(TRUNCATE)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        sqlx::query(mode).execute(pool).await?;
    }
    Ok(changed)
}

impl Db {
    /// Connects (creating a SQLite file if needed) without applying migrations.
    /// `cache_bytes` bounds the cache of environments' secrets (0: none, see [`cache`]).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        cache_bytes: usize,
    ) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        // Half the connections (at least one) are kept for reads, the rest pooled.
        let hot_reads = (max_connections / 2).max(1);
        let pooled = max_connections.saturating_sub(hot_reads).max(1);
        let pool = connect_pool(url, backend, pooled).await?;
        let ping = (backend == Backend::Postgres).then_some(PING_WHEN_IDLE_FOR);
        let reads = Arc::new(HotConnections::new(pool.clone(), hot_reads as usize, ping));
        let writer = (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let keeper = match &writer {
            Some(writer) => {
                let keeper = connect_pool(url, backend, 1).await?;
                let file: String =
                    sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_one(&keeper)
                        .await?;
                let wal = PathBuf::from(format!("{file}-wal"));
                spawn_wal_keeper(keeper.clone(), writer.clone(), wal);
                Some(keeper)
            }
            None => None,
        };
        let cache = Arc::new(SecretCache::new(cache_bytes, true));
        // On PostgreSQL, the change channel and the events lock are the deployment's: its schema's.
        let schema: Option<String> = match backend {
            Backend::Postgres => Some(
                sqlx::query_scalar("SELECT CAST(COALESCE(current_schema(), 'public') AS TEXT)")
                    .fetch_one(&pool)
                    .await?,
            ),
            Backend::Sqlite => None,
        };
        let channel: Option<Arc<str>> = schema.as_deref().map(|s| cache::channel(s).into());
        let events_lock = schema.as_deref().map(events::lock_key);
        // Other replicas write too: their changes must reach this cache, and the sessions they
        // end must reach this replica's memory of sessions. The listener runs even without a
        // secret cache, for those.
        let remote = channel
            .as_ref()
            .map(|_| tokio::sync::broadcast::channel(1024).0);
        let (wake, _) = tokio::sync::broadcast::channel(1024);
        if let Some(remote) = &remote {
            tokio::spawn(events::wake_on_remote(remote.subscribe(), wake.clone()));
        }
        let listener = match (&channel, &remote) {
            (Some(channel), Some(remote)) => Some(Arc::new(AbortOnDrop(cache::spawn_listener(
                url.to_owned(),
                channel.clone(),
                cache.clone(),
                remote.clone(),
            )))),
            _ => None,
        };
        Ok(Self {
            cache,
            listener,
            channel,
            remote,
            events_lock,
            wake,
            keeper,
            pool,
            reads,
            backend,
            writer,
        })
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        self.migrator().run(&self.pool).await
    }

    /// True when the database answers and every embedded migration is applied.
    pub async fn is_ready(&self) -> bool {
        let expected = self.migrator().iter().map(|m| m.version).max();
        let applied: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                .fetch_one(&self.pool)
                .await;
        matches!(applied, Ok(v) if v == expected)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it first waits its turn in this process's writer
    /// queue, then holds the write lock from its first statement (`BEGIN IMMEDIATE`), so two
    /// concurrent read-then-write transactions cannot deadlock on SQLite's lock upgrade.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let writer = self.write_turn().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            tx,
            _writer: writer,
            changes: Changes {
                cache: self.cache.clone(),
                list: Vec::new(),
                notified: 0,
                channel: self.channel.clone(),
            },
            events: Vec::new(),
            events_lock: self.events_lock,
            wake: self.wake.clone(),
        })
    }

    /// This process's turn to write (FIFO): [`Db::begin`] takes it, and so must one statement
    /// outside a transaction (autocommit) on [`Db::pool`], held while the statement runs. On
    /// SQLite it queues the statement with the transactions (see `writer`) instead of having it
    /// meet their lock in SQLite's busy handler; `None` on PostgreSQL.
    pub async fn write_turn(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.writer {
            Some(writer) => Some(writer.clone().lock_owned().await),
            None => None,
        }
    }

    /// A connection for a read on a hot path; give it back with [`HotConnection::settle`].
    pub async fn read_connection(&self) -> Result<HotConnection<'_>, sqlx::Error> {
        self.reads.acquire().await
    }

    /// Other replicas' changes, as they are heard (on PostgreSQL; `None` on SQLite, where this
    /// process is the only writer).
    pub fn remote_changes(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<[Change]>>> {
        self.remote
            .as_ref()
            .map(tokio::sync::broadcast::Sender::subscribe)
    }

    /// Wakes when events are recorded (see [`Wake`]). A receiver that lags behind must assume
    /// any project has new events.
    pub fn event_wakes(&self) -> tokio::sync::broadcast::Receiver<Wake> {
        self.wake.subscribe()
    }

    /// On PostgreSQL, tells the other replicas that who may do what changed (see
    /// [`Change::Access`]); nothing on SQLite, where this process is the only one.
    pub async fn notify_access_changed(&self) -> Result<(), sqlx::Error> {
        if let Some(channel) = &self.channel {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&**channel)
                .bind(cache::payload(&[Change::Access]))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The cache of environments' secrets.
    pub fn cache(&self) -> &SecretCache {
        &self.cache
    }

    pub async fn close(&self) {
        if let Some(listener) = &self.listener {
            listener.0.abort();
        }
        self.reads.close();
        self.pool.close().await;
        if let Some(keeper) = &self.keeper {
            keeper.close().await;
        }
    }
}

/// True when `conn` talks to PostgreSQL. Row and table locks are taken only there: on SQLite a
/// write transaction (`BEGIN IMMEDIATE`, see [`Db::begin`]) already excludes every other writer.
pub fn is_postgres(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME
}

/// True when `err` is a unique-constraint violation (to be answered with 409).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn the_wal_keeper_checkpoints_a_changed_wal_once_and_resets_a_large_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        // A pool of its own: a `Db` would run its own WAL keeper beside this test's rounds.
        sqlx::any::install_default_drivers();
        let pool = connect_pool(&url, Backend::Sqlite, 2)
            .await
            .expect("connect");
        sqlx::query("CREATE TABLE t (v TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let writer = Arc::new(Mutex::new(()));
        let wal = PathBuf::from(format!("{}-wal", file.display()));
        let mut last = None;
        let never = u64::MAX;

        sqlx::query("INSERT INTO t VALUES ('a')")
            .execute(&pool)
            .await
            .unwrap();
        assert!(
            tend_wal(&pool, &writer, &wal, &mut last, never)
                .await
                .unwrap()
        );
        assert!(
            !tend_wal(&pool, &writer, &wal, &mut last, never)
                .await
                .unwrap(),
            "an unchanged WAL is not checkpointed again"
        );
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);

        sqlx::query("INSERT INTO t VALUES ('b')")
            .execute(&pool)
            .await
            .unwrap();
        assert!(tend_wal(&pool, &writer, &wal, &mut last, 0).await.unwrap());
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "a WAL over the limit is reset"
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 2);
        pool.close().await;
    }
}
