//! Shared application state.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::access::AccessCache;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::PasswordHasher;
use crate::auth::rate_limit::RateLimits;
use crate::config::Config;
use crate::crypto::envelope::{DekCache, Keyring};
use crate::crypto::{Keys, MasterKey};
use crate::db::Db;
use crate::db::cache::Change;
use crate::db::sessions::SessionRow;
use crate::ids::SessionId;
use crate::service::audit_journal::{AuditWriter, JournalLimits};
use crate::service::dynamic::DynamicSecrets;
use crate::service::events::StreamSlots;
use crate::service::secrets::{MAX_WAITING_WRITES, SecretWrites};
use crate::service::webhooks::Webhooks;

/// Forgets, as soon as the change listener hears of it, every session another replica ended and
/// everything remembered of access when another replica changed who may do what, so that this
/// replica refuses at once too; forgets it all when a notification may have been missed (the
/// listener reconnected, or this receiver lagged). Ends with the database handle.
async fn forget_remote_changes(
    mut remote: tokio::sync::broadcast::Receiver<Arc<[Change]>>,
    state: std::sync::Weak<Inner>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let received = remote.recv().await;
        let Some(state) = state.upgrade() else { return };
        let (sessions, access) = match &received {
            Ok(changes) => {
                let mut sessions = false;
                let mut access = false;
                for change in changes.iter() {
                    match change {
                        Change::Session(id) => {
                            state.sessions.invalidate(id);
                            sessions = true;
                        }
                        Change::Everything => {
                            state.sessions.invalidate_all();
                            (sessions, access) = (true, true);
                        }
                        Change::Access => access = true,
                        Change::Environment { .. } | Change::Events(_) => {}
                    }
                }
                (sessions, access)
            }
            Err(RecvError::Lagged(_)) => {
                state.sessions.invalidate_all();
                (true, true)
            }
            Err(RecvError::Closed) => return,
        };
        if sessions {
            state.sessions_ended.send_modify(|n| *n += 1);
        }
        if access {
            state.access.forget_all();
        }
    }
}

/// The read-audit journal's directory, in the data directory.
pub const AUDIT_JOURNAL_DIR: &str = "audit-journal";

/// Everything a request handler may need; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub keys: Keys,
    pub jwt: JwtKeys,
    pub passwords: PasswordHasher,
    pub limits: RateLimits,
    /// Active sessions recently confirmed in the database. Entries are removed at once when
    /// this process ends a session; other replicas notice within the time to live.
    pub sessions: moka::sync::Cache<SessionId, SessionRow>,
    /// Changes whenever sessions end (here or, heard through the change listener, elsewhere):
    /// long-lived requests (event streams) authenticate again then.
    pub sessions_ended: tokio::sync::watch::Sender<u64>,
    /// Credentials and standings recently confirmed in the database (see [`crate::access`]).
    pub access: AccessCache,
    /// The key-encryption keys: the active one wraps new DEKs.
    pub keyring: Keyring,
    /// Unwrapped DEKs, for a bounded time; wiped when evicted.
    pub deks: DekCache,
    /// Keeps the audit events of reads in the read-audit journal and drains them into the
    /// database.
    pub audit: AuditWriter,
    /// Single-secret writes waiting for their environment's transaction.
    pub secret_writes: Arc<SecretWrites>,
    /// Webhook delivery: the outbound HTTP client (behind the address guard) and the worker's
    /// wake-up.
    pub webhooks: Webhooks,
    /// Dynamic secrets' engines (and their administrator pools), and the lease reaper's wake-up.
    pub dynamic: DynamicSecrets,
    /// Prometheus metrics (`/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Event streams open, counted against their limits.
    pub event_streams: StreamSlots,
    /// Cancelled when the server stops: long-lived responses (event streams) end then.
    pub shutdown: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Forgets a session this process ended: refused from now on, and long-lived requests made
    /// with it end.
    pub fn forget_session(&self, id: SessionId) {
        self.sessions.invalidate(&id);
        self.sessions_ended.send_modify(|n| *n += 1);
    }

    /// State over an already migrated database. Starts the read-audit journal's drainer, so it
    /// must be called within a Tokio runtime.
    pub fn new(config: Config, db: Db, keys: Keys) -> Result<Self, crate::StartError> {
        let concurrency = config.password_hash_concurrency.map_or_else(
            || std::thread::available_parallelism().map_or(2, usize::from),
            |n| n as usize,
        );
        let passwords = PasswordHasher::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            concurrency,
        )?;
        let jwt = JwtKeys::new(&keys.jwt_secret, config.access_token_ttl());
        let limits = RateLimits::new(&config);
        let sessions = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_millis(config.session_cache_ttl_ms))
            .build();
        let sessions_ended = tokio::sync::watch::Sender::new(0);
        let remote = db.remote_changes();
        let access = AccessCache::new(Duration::from_millis(config.access_cache_ttl_ms), 100_000);
        let keyring = Keyring::new(
            MasterKey::from_bytes(*keys.master.bytes()),
            keys.previous
                .iter()
                .map(|k| MasterKey::from_bytes(*k.bytes()))
                .collect(),
        );
        let deks = DekCache::new(Duration::from_secs(300), 10_000);
        let webhooks = Webhooks::new(
            config.webhook_allow_private,
            Duration::from_millis(config.webhook_timeout_ms),
        )
        .map_err(|e| crate::StartError::Io(std::io::Error::other(e)))?;
        let audit = AuditWriter::start(
            &config.data_dir.join(AUDIT_JOURNAL_DIR),
            db.clone(),
            JournalLimits::new(config.audit_backlog_bytes),
        )
        .map_err(crate::StartError::AuditJournal)?;
        let dynamic = DynamicSecrets::new(Duration::from_millis(config.dynamic_timeout_ms));
        let metrics = crate::metrics::Metrics::new(passwords.refusals());
        let state = Self(Arc::new(Inner {
            config,
            db,
            keys,
            jwt,
            passwords,
            limits,
            sessions,
            sessions_ended,
            access,
            keyring,
            deks,
            audit,
            secret_writes: Arc::new(SecretWrites::new(MAX_WAITING_WRITES)),
            webhooks,
            dynamic,
            metrics,
            event_streams: StreamSlots::default(),
            shutdown: CancellationToken::new(),
        }));
        if let Some(remote) = remote {
            tokio::spawn(forget_remote_changes(remote, Arc::downgrade(&state.0)));
        }
        Ok(state)
    }
}
