//! Connections kept for the hot paths (reading a secret, the 304 check), outside sqlx's pool.
//!
//! sqlx pings every connection given back to its pool, whatever the pool's options, to flush
//! what a cancelled statement may have left behind: on PostgreSQL one more network round trip
//! per statement, on SQLite one more hop to the connection's worker thread. On a read that is
//! about as much work again for the database as the statement itself. Here a connection goes
//! back untested only when its statement completed; after a failed or cancelled one it is
//! closed instead, and the next caller opens a fresh one from the pool it was taken from.
//! A PostgreSQL connection idle for a while is pinged before use, like the pool's.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a caller waits for a free connection, like the pools (then `PoolTimedOut`).
const ACQUIRE_TIMEOUT: Duration = super::ACQUIRE_TIMEOUT;

/// At most `size` connections, each taken from `source` (and so opened like the pool's) the
/// first time it is needed.
#[derive(Debug)]
pub struct HotConnections {
    source: AnyPool,
    idle: Mutex<Vec<(AnyConnection, Instant)>>,
    permits: Semaphore,
    ping_when_idle_for: Option<Duration>,
}

/// A hot connection in use; see [`HotConnection::settle`].
pub struct HotConnection<'a> {
    conn: Option<AnyConnection>,
    from: &'a HotConnections,
    reusable: bool,
    _permit: SemaphorePermit<'a>,
}

impl HotConnections {
    /// `ping_when_idle_for`: PostgreSQL connections idle for longer are pinged before use.
    pub fn new(source: AnyPool, size: usize, ping_when_idle_for: Option<Duration>) -> Self {
        Self {
            source,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            ping_when_idle_for,
        }
    }

    /// A connection, waiting for one to be free (or for the source pool to open one).
    pub async fn acquire(&self) -> Result<HotConnection<'_>, sqlx::Error> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let usable = match idle {
            Some((mut conn, since)) => {
                let stale = self
                    .ping_when_idle_for
                    .is_some_and(|limit| since.elapsed() > limit);
                (!stale || conn.ping().await.is_ok()).then_some(conn)
            }
            None => None,
        };
        let conn = match usable {
            Some(conn) => conn,
            None => self.source.acquire().await?.detach(),
        };
        Ok(HotConnection {
            conn: Some(conn),
            from: self,
            reusable: false,
            _permit: permit,
        })
    }

    /// Closes the idle connections and refuses new callers; those in use are closed when they
    /// come back.
    pub fn close(&self) {
        self.permits.close();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl std::fmt::Debug for HotConnection<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotConnection")
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl HotConnection<'_> {
    /// Gives the connection back for the next caller: every statement on it completed. (Dropped
    /// without this or [`HotConnection::settle`], it is closed.)
    pub fn done(mut self) {
        self.reusable = true;
    }

    /// Passes `result` through; the connection is kept for the next caller only when it is a
    /// success (a failed statement may have left it in any state).
    pub fn settle<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.reusable = result.is_ok();
        result
    }
}

impl Drop for HotConnection<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && !self.from.permits.is_closed()
        {
            self.from
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((conn, Instant::now()));
        }
    }
}

impl Deref for HotConnection<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl DerefMut for HotConnection<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Whether the connection is the one that created the temporary table `mark`.
    async fn marked(conn: &mut AnyConnection) -> bool {
        sqlx::query("SELECT 1 FROM temp.mark")
            .fetch_optional(conn)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_connection_comes_back_only_after_its_statements_completed() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let pool = AnyPool::connect(&url).await.expect("pool");
        let hot = HotConnections::new(pool, 1, None);

        let mut conn = hot.acquire().await.unwrap();
        let made = sqlx::query("CREATE TEMP TABLE mark (x)")
            .execute(&mut *conn)
            .await
            .map(|_| ());
        conn.settle(made).unwrap();
        let mut conn = hot.acquire().await.unwrap();
        assert!(marked(&mut conn).await, "a settled success is reused");

        let failed = sqlx::query("SELECT * FROM no_such_table")
            .execute(&mut *conn)
            .await
            .map(|_| ());
        assert!(conn.settle(failed).is_err());
        let mut conn = hot.acquire().await.unwrap();
        assert!(
            !marked(&mut conn).await,
            "after a failure a fresh connection is used"
        );
        conn.done();

        hot.close();
        assert!(matches!(
            hot.acquire().await.map(|_| ()),
            Err(sqlx::Error::PoolClosed)
        ));
    }
}
