//! The engines that mint credentials: one trait, one implementation per kind of system.
//!
//! An engine is given everything per call (the administrator's connection, the statements, the
//! names), so it keeps no state but its connection pools, and a lease's lifecycle (the rows, the
//! reaper, the audit) is the same for every engine.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

use crate::ids::Timestamp;

/// An engine's failure, worded for the caller: the system's own message, with every secret
/// (the administrator's password, the lease's) taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The system could not be reached (or did not answer in time).
    Unreachable(String),
    /// The system refused: bad credentials, missing privilege, a failing statement.
    Refused(String),
    /// The credentials' name is taken by something that was there before: it is not this
    /// lease's, and revoking it would destroy what others made.
    Taken(String),
}

impl EngineError {
    pub fn message(&self) -> &str {
        match self {
            Self::Unreachable(m) | Self::Refused(m) | Self::Taken(m) => m,
        }
    }
}

/// PostgreSQL's `duplicate_object`: `CREATE ROLE` of a name that exists.
const DUPLICATE_OBJECT: &str = "42710";

/// The administrator's connection of one dynamic secret, at one generation (a new URL is a new
/// generation, so pools of an old one are never reused).
#[derive(Debug)]
pub struct Connection<'a> {
    pub id: &'a str,
    pub generation: i64,
    pub url: &'a SecretString,
}

/// What a lease's role is made of.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
    pub expiration: Timestamp,
}

/// A kind of system dynamic secrets mint credentials in.
pub trait Engine: Send + Sync {
    /// Checks that the administrator can connect and may create credentials.
    fn verify<'a>(&'a self, conn: &'a Connection<'a>) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Runs `statements` (templates) to create the credentials, all or nothing.
    fn create<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        statements: &'a [String],
        creds: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Runs `statements` to extend the credentials until `expiration`.
    fn renew<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        statements: &'a [String],
        username: &'a str,
        expiration: Timestamp,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Runs `statements` to remove the credentials; credentials already gone are revoked.
    fn revoke<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        statements: &'a [String],
        username: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Whether the credentials exist in the system.
    fn exists<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        username: &'a str,
    ) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Forgets what it keeps for the dynamic secret `id` (its pools).
    fn forget(&self, id: &str);
}

/// `{{name}}`, `{{password}}` and `{{expiration}}` replaced. The values are safe in SQL
/// identifiers and literals: names are `[a-z0-9_]`, passwords have no quote or backslash, the
/// expiration is a timestamp the server writes.
pub fn render(template: &str, username: &str, password: Option<&str>, expiration: &str) -> String {
    let mut out = template
        .replace("{{name}}", username)
        .replace("{{expiration}}", expiration);
    if let Some(password) = password {
        out = out.replace("{{password}}", password);
    }
    out
}

/// `2026-11-30 12:00:00+00`: a PostgreSQL `timestamptz` literal, in UTC.
pub fn pg_timestamp(t: Timestamp) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// Most administrator pools kept at once (one per dynamic secret in use); the least recently
/// used is closed beyond.
const MAX_POOLS: usize = 256;
/// Connections of one dynamic secret's pool: a tenant cannot hold more of this server's sockets.
const POOL_CONNECTIONS: u32 = 4;
/// An unused administrator connection is closed after this.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// PostgreSQL roles.
pub struct Postgres {
    /// Per dynamic secret: its generation, its pool, when it was last used.
    pools: Mutex<HashMap<String, (i64, PgPool, std::time::Instant)>>,
    timeout: Duration,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

/// What is removed from every message before it leaves the engine.
struct Scrub<'a> {
    secrets: Vec<&'a str>,
}

impl Scrub<'_> {
    /// `err` with its message cleaned.
    fn error(&self, err: EngineError) -> EngineError {
        match err {
            EngineError::Unreachable(m) => EngineError::Unreachable(self.clean(m)),
            EngineError::Refused(m) => EngineError::Refused(self.clean(m)),
            EngineError::Taken(m) => EngineError::Taken(self.clean(m)),
        }
    }

    fn clean(&self, text: String) -> String {
        let mut text = text;
        for secret in &self.secrets {
            if !secret.is_empty() {
                text = text.replace(secret, "[redacted]");
            }
        }
        // Keep messages short: a statement's error does not need the whole statement.
        if text.len() > 500 {
            let mut end = 500;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }
}

/// The administrator URL's password, to scrub.
fn admin_password(url: &SecretString) -> String {
    url::Url::parse(url.expose_secret())
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .map(|p| percent_decode(&p))
        .unwrap_or_default()
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn describe(err: &sqlx::Error) -> EngineError {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(DUPLICATE_OBJECT) => {
            EngineError::Taken(db.message().to_owned())
        }
        sqlx::Error::Database(db) => EngineError::Refused(db.message().to_owned()),
        sqlx::Error::Io(e) => EngineError::Unreachable(format!("cannot connect: {e}")),
        sqlx::Error::Tls(e) => EngineError::Unreachable(format!("TLS: {e}")),
        sqlx::Error::PoolTimedOut => {
            EngineError::Unreachable("the database did not answer in time".into())
        }
        other => EngineError::Refused(other.to_string()),
    }
}

impl Postgres {
    pub fn new(timeout: Duration) -> Self {
        Self {
            pools: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn options(&self, conn: &Connection<'_>) -> Result<PgConnectOptions, EngineError> {
        let options = PgConnectOptions::from_str(conn.url.expose_secret())
            .map_err(|_| EngineError::Refused("the connection URL is not valid".into()))?;
        let millis = self.timeout.as_millis().to_string();
        Ok(options
            .application_name("coffer-dynamic-secrets")
            .options([
                ("statement_timeout", millis.as_str()),
                ("lock_timeout", millis.as_str()),
            ])
            .disable_statement_logging())
    }

    fn pool(&self, conn: &Connection<'_>) -> Result<PgPool, EngineError> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if let Some((generation, pool, used)) = pools.get_mut(conn.id)
            && *generation == conn.generation
        {
            *used = now;
            return Ok(pool.clone());
        }
        if pools.len() >= MAX_POOLS
            && !pools.contains_key(conn.id)
            && let Some(oldest) = pools
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(id, _)| id.clone())
            && let Some((_, pool, _)) = pools.remove(&oldest)
        {
            tokio::spawn(async move { pool.close().await });
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(self.timeout)
            .idle_timeout(POOL_IDLE)
            .connect_lazy_with(self.options(conn)?);
        if let Some((_, old, _)) =
            pools.insert(conn.id.to_owned(), (conn.generation, pool.clone(), now))
        {
            tokio::spawn(async move { old.close().await });
        }
        Ok(pool)
    }

    /// Runs `statements`, rendered, within the timeout as one simple query: one round trip, and
    /// one transaction (PostgreSQL runs the statements of a simple query in an implicit
    /// transaction: all or nothing). Messages lose the administrator's password and `password`.
    async fn run(
        &self,
        conn: &Connection<'_>,
        statements: &[String],
        username: &str,
        password: Option<&str>,
        expiration: &str,
    ) -> Result<(), EngineError> {
        let admin = admin_password(conn.url);
        let mut secrets = vec![admin.as_str()];
        secrets.extend(password);
        let scrub = Scrub { secrets };
        let pool = self.pool(conn)?;
        let batch = statements
            .iter()
            .map(|s| render(s, username, password, expiration))
            .collect::<Vec<_>>()
            .join(";\n");
        let work = async {
            pool.execute(sqlx::raw_sql(&batch))
                .await
                .map(|_| ())
                .map_err(|e| describe(&e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => Err(EngineError::Unreachable(
                "the database did not answer in time".into(),
            )),
        }
        .map_err(|e| scrub.error(e))
    }
}

impl Engine for Postgres {
    fn verify<'a>(&'a self, conn: &'a Connection<'a>) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let password = admin_password(conn.url);
            let scrub = Scrub {
                secrets: vec![&password],
            };
            let options = self.options(conn)?;
            let check = async {
                let mut db = options.connect().await.map_err(|e| describe(&e))?;
                let (superuser, createrole): (bool, bool) = sqlx::query_as(
                    "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user",
                )
                .fetch_one(&mut db)
                .await
                .map_err(|e| describe(&e))?;
                let _ = db.close().await;
                if superuser || createrole {
                    Ok(())
                } else {
                    Err(EngineError::Refused(
                        "the administrator may not create roles: it needs CREATEROLE (or to be a \
                         superuser)"
                            .into(),
                    ))
                }
            };
            match tokio::time::timeout(self.timeout, check).await {
                Ok(done) => done,
                Err(_) => Err(EngineError::Unreachable(
                    "the database did not answer in time".into(),
                )),
            }
            .map_err(|e| scrub.error(e))
        })
    }

    fn create<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        statements: &'a [String],
        creds: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let expiration = pg_timestamp(creds.expiration);
            let password = Some(creds.password.expose_secret());
            self.run(conn, statements, creds.username, password, &expiration)
                .await
        })
    }

    fn renew<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        statements: &'a [String],
        username: &'a str,
        expiration: Timestamp,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let expiration = pg_timestamp(expiration);
            self.run(conn, statements, username, None, &expiration)
                .await
        })
    }

    fn revoke<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        statements: &'a [String],
        username: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            if !self.exists(conn, username).await? {
                return Ok(());
            }
            self.run(conn, statements, username, None, "").await
        })
    }

    fn exists<'a>(
        &'a self,
        conn: &'a Connection<'a>,
        username: &'a str,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            let admin = admin_password(conn.url);
            let scrub = Scrub {
                secrets: vec![&admin],
            };
            let pool = self.pool(conn)?;
            let query = sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_roles WHERE rolname = $1")
                .bind(username)
                .fetch_optional(&pool);
            match tokio::time::timeout(self.timeout, query).await {
                Ok(Ok(found)) => Ok(found.is_some()),
                Ok(Err(e)) => Err(scrub.error(describe(&e))),
                Err(_) => Err(EngineError::Unreachable(
                    "the database did not answer in time".into(),
                )),
            }
        })
    }

    fn forget(&self, id: &str) {
        let removed = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if let Some((_, pool, _)) = removed {
            tokio::spawn(async move { pool.close().await });
        }
    }
}

/// Default statements of the PostgreSQL engine.
pub mod defaults {
    /// The role, then one `GRANT` per configured grant.
    pub fn creation(grants: &[String]) -> Vec<String> {
        let mut out = vec![
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL \
             '{{expiration}}'"
                .to_owned(),
        ];
        out.extend(
            grants
                .iter()
                .map(|g| format!("GRANT {g} TO \"{{{{name}}}}\"")),
        );
        out
    }

    /// Membership first, so that an administrator with CREATEROLE (not a superuser) may end
    /// the role's sessions and reassign and drop what it owns; then the role.
    pub fn revocation() -> Vec<String> {
        [
            "GRANT \"{{name}}\" TO CURRENT_USER",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'",
            "REASSIGN OWNED BY \"{{name}}\" TO CURRENT_USER",
            "DROP OWNED BY \"{{name}}\"",
            "DROP ROLE \"{{name}}\"",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    pub fn renewal() -> Vec<String> {
        vec!["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'".to_owned()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_rendered() {
        let s = render(
            "CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
            "coffer_a_b_x",
            Some("pw"),
            "2030-01-01 00:00:00+00",
        );
        assert_eq!(
            s,
            "CREATE ROLE \"coffer_a_b_x\" PASSWORD 'pw' VALID UNTIL '2030-01-01 00:00:00+00'"
        );
        assert_eq!(
            defaults::creation(&["SELECT ON ALL TABLES IN SCHEMA public".into()])[1],
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\""
        );
    }

    #[test]
    fn timestamps_are_utc_literals() {
        let t = Timestamp::from(time::macros::datetime!(2030-02-03 04:05:06 UTC));
        assert_eq!(pg_timestamp(t), "2030-02-03 04:05:06+00");
    }

    #[test]
    fn messages_lose_secrets_and_length() {
        let scrub = Scrub {
            secrets: vec!["hunter2", ""],
        };
        assert_eq!(
            scrub.clean("syntax error near 'hunter2'".into()),
            "syntax error near '[redacted]'"
        );
        assert!(scrub.clean("x".repeat(2_000)).len() < 600);
        let url = SecretString::from("postgres://a:p%40ss@h/db".to_owned());
        assert_eq!(admin_password(&url), "p@ss");
    }
}
