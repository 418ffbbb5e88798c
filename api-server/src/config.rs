//! Configuration: environment variables, each with a matching command-line flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

/// A configuration problem, reported as one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// Where coffer-server runs: development generates missing keys, production refuses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunMode {
    Development,
    Production,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// coffer-server: the Coffer secrets manager API.
#[derive(Debug, Parser)]
#[command(name = "coffer-server", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a command, coffer-server serves the API.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Re-wrap every data key with `COFFER_MASTER_KEY`; afterwards the keys listed in
    /// `COFFER_PREVIOUS_MASTER_KEYS` can be removed from the configuration.
    RotateMasterKey,
    /// Administration of accounts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `coffer-server admin …`
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Print a one-time link (valid `COFFER_PASSWORD_RESET_TTL`) with which the account of
    /// EMAIL sets a new password; an earlier link for it stops working.
    ResetPassword {
        /// The account's email address.
        email: String,
    },
}

/// Every setting of coffer-server. Each flag reads the environment variable of the same name.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(
        long = "listen",
        env = "COFFER_LISTEN",
        value_name = "COFFER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Directory for the embedded database and generated development keys.
    #[arg(
        long = "data-dir",
        env = "COFFER_DATA_DIR",
        value_name = "COFFER_DATA_DIR",
        default_value = "./coffer-data"
    )]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite://…` or `postgres://…`. Default: a SQLite file in the data directory.
    #[arg(
        long = "database-url",
        env = "COFFER_DATABASE_URL",
        value_name = "COFFER_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Largest number of pooled database connections.
    #[arg(long = "database-max-connections", env = "COFFER_DATABASE_MAX_CONNECTIONS", value_name = "COFFER_DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Key-encryption key, 32 bytes in base64. Generated into the data directory in development.
    #[arg(
        long = "master-key",
        env = "COFFER_MASTER_KEY",
        value_name = "COFFER_MASTER_KEY",
        hide_env_values = true
    )]
    pub master_key: Option<SecretString>,

    /// Earlier key-encryption keys (comma-separated base64), kept only while
    /// `coffer-server rotate-master-key` moves the data keys to `COFFER_MASTER_KEY`.
    #[arg(
        long = "previous-master-keys",
        env = "COFFER_PREVIOUS_MASTER_KEYS",
        value_name = "COFFER_PREVIOUS_MASTER_KEYS",
        hide_env_values = true
    )]
    pub previous_master_keys: Option<SecretString>,

    /// Secret that signs access tokens (at least 32 bytes). Generated into the data directory in development.
    #[arg(
        long = "jwt-secret",
        env = "COFFER_JWT_SECRET",
        value_name = "COFFER_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<SecretString>,

    /// `development` or `production`: production refuses to start without explicit keys.
    #[arg(
        long = "env",
        env = "COFFER_ENV",
        value_name = "COFFER_ENV",
        value_enum,
        default_value = "development"
    )]
    pub mode: RunMode,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(
        long = "log",
        env = "COFFER_LOG",
        value_name = "COFFER_LOG",
        default_value = "info"
    )]
    pub log: String,

    /// Log line format.
    #[arg(
        long = "log-format",
        env = "COFFER_LOG_FORMAT",
        value_name = "COFFER_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,

    /// PEM certificate chain: serve HTTPS directly.
    #[arg(
        long = "tls-cert",
        env = "COFFER_TLS_CERT",
        value_name = "COFFER_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `COFFER_TLS_CERT`.
    #[arg(
        long = "tls-key",
        env = "COFFER_TLS_KEY",
        value_name = "COFFER_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// In production, allow plain HTTP on a non-loopback address (TLS terminated in front).
    #[arg(long = "allow-plaintext", env = "COFFER_ALLOW_PLAINTEXT", value_name = "COFFER_ALLOW_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_plaintext: bool,

    /// Behind one trusted proxy: take the client address from the rightmost `X-Forwarded-For`
    /// entry. The same as `COFFER_TRUSTED_PROXIES=1`, which takes precedence when set.
    #[arg(long = "trust-forwarded-for", env = "COFFER_TRUST_FORWARDED_FOR", value_name = "COFFER_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Proxies in front of coffer-server that each append to `X-Forwarded-For`: the client
    /// address is the entry this many places from the right. 0 ignores the header.
    #[arg(long = "trusted-proxies", env = "COFFER_TRUSTED_PROXIES", value_name = "COFFER_TRUSTED_PROXIES", value_parser = clap::value_parser!(u32).range(0..=16))]
    pub trusted_proxies: Option<u32>,

    /// Lifetime of an access token, in seconds.
    #[arg(long = "access-token-ttl", env = "COFFER_ACCESS_TOKEN_TTL", value_name = "COFFER_ACCESS_TOKEN_TTL", default_value_t = 900, value_parser = clap::value_parser!(u64).range(30..=86_400))]
    pub access_token_ttl_secs: u64,

    /// Lifetime of a refresh token, in seconds.
    #[arg(long = "refresh-token-ttl", env = "COFFER_REFRESH_TOKEN_TTL", value_name = "COFFER_REFRESH_TOKEN_TTL", default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u64).range(60..=90 * 86_400))]
    pub refresh_token_ttl_secs: u64,

    /// How long a password-reset link works, in seconds (5 minutes to 7 days).
    #[arg(long = "password-reset-ttl", env = "COFFER_PASSWORD_RESET_TTL", value_name = "COFFER_PASSWORD_RESET_TTL", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(300..=7 * 86_400))]
    pub password_reset_ttl_secs: u64,

    /// The address users reach this server at (`https://coffer.example.com`, with a path when
    /// it is served under one), for the links it hands out. Default: from `COFFER_LISTEN`.
    #[arg(
        long = "public-url",
        env = "COFFER_PUBLIC_URL",
        value_name = "COFFER_PUBLIC_URL"
    )]
    pub public_url: Option<String>,

    /// Absolute lifetime of a session however often it is refreshed, in seconds.
    #[arg(long = "session-max-lifetime", env = "COFFER_SESSION_MAX_LIFETIME", value_name = "COFFER_SESSION_MAX_LIFETIME", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u64).range(60..=365 * 86_400))]
    pub session_max_lifetime_secs: u64,

    /// A dashboard session unused this long ends, in seconds (`15m`, `1h` also read).
    #[arg(long = "web-idle-timeout", env = "COFFER_WEB_IDLE_TIMEOUT", value_name = "COFFER_WEB_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration_secs)]
    pub web_idle_timeout_secs: u64,

    /// How long a verified session may be trusted from memory before it is looked up again, in milliseconds.
    #[arg(long = "session-cache-ttl-ms", env = "COFFER_SESSION_CACHE_TTL_MS", value_name = "COFFER_SESSION_CACHE_TTL_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub session_cache_ttl_ms: u64,

    /// How long a confirmed API key or service token, and a caller's standing in a project or environment, are trusted from memory, in milliseconds (0: not at all).
    #[arg(long = "access-cache-ttl-ms", env = "COFFER_ACCESS_CACHE_TTL_MS", value_name = "COFFER_ACCESS_CACHE_TTL_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub access_cache_ttl_ms: u64,

    /// Bytes of environments' current secrets (sealed, as stored) kept in memory so that reads need no query for them (0: none). Changes are forgotten at once on this replica, and on PostgreSQL on every other replica as soon as they commit.
    #[arg(long = "secret-cache-bytes", env = "COFFER_SECRET_CACHE_BYTES", value_name = "COFFER_SECRET_CACHE_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(0..=(1 << 40)))]
    pub secret_cache_bytes: u64,

    /// Bytes of read-audit events kept in the journal (in the data directory) and not yet in the database, above which reads wait for room (at most 5 s, then 503).
    #[arg(long = "audit-backlog-bytes", env = "COFFER_AUDIT_BACKLOG_BYTES", value_name = "COFFER_AUDIT_BACKLOG_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range((64 * 1024)..=(1 << 40)))]
    pub audit_backlog_bytes: u64,

    /// Login attempts allowed per account and minute.
    #[arg(long = "login-rate-per-account", env = "COFFER_LOGIN_RATE_PER_ACCOUNT", value_name = "COFFER_LOGIN_RATE_PER_ACCOUNT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_rate_per_account: u32,

    /// Login attempts allowed per client IP and minute.
    #[arg(long = "login-rate-per-ip", env = "COFFER_LOGIN_RATE_PER_IP", value_name = "COFFER_LOGIN_RATE_PER_IP", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_rate_per_ip: u32,

    /// Registrations allowed per client IP and minute.
    #[arg(long = "register-rate-per-ip", env = "COFFER_REGISTER_RATE_PER_IP", value_name = "COFFER_REGISTER_RATE_PER_IP", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub register_rate_per_ip: u32,

    /// Token refreshes allowed per client IP and minute (per session: a fifth of it, at least 5).
    #[arg(long = "refresh-rate-per-ip", env = "COFFER_REFRESH_RATE_PER_IP", value_name = "COFFER_REFRESH_RATE_PER_IP", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub refresh_rate_per_ip: u32,

    /// Password hashes computed at once; further logins queue. Default: the number of cores.
    #[arg(long = "password-hash-concurrency", env = "COFFER_PASSWORD_HASH_CONCURRENCY", value_name = "COFFER_PASSWORD_HASH_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub password_hash_concurrency: Option<u32>,

    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long = "argon2-memory-kib", env = "COFFER_ARGON2_MEMORY_KIB", value_name = "COFFER_ARGON2_MEMORY_KIB", default_value_t = 19_456, value_parser = clap::value_parser!(u32).range(19_456..=4_194_304))]
    pub argon2_memory_kib: u32,

    /// argon2id iterations (OWASP minimum with 19 MiB: 2).
    #[arg(long = "argon2-iterations", env = "COFFER_ARGON2_ITERATIONS", value_name = "COFFER_ARGON2_ITERATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub argon2_iterations: u32,

    /// Largest request body accepted, in bytes.
    #[arg(long = "max-body-bytes", env = "COFFER_MAX_BODY_BYTES", value_name = "COFFER_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Most entries one bulk write or import may hold.
    #[arg(long = "max-bulk-entries", env = "COFFER_MAX_BULK_ENTRIES", value_name = "COFFER_MAX_BULK_ENTRIES", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_bulk_entries: u32,

    /// Most live secrets one environment may hold.
    #[arg(long = "max-secrets-per-environment", env = "COFFER_MAX_SECRETS_PER_ENVIRONMENT", value_name = "COFFER_MAX_SECRETS_PER_ENVIRONMENT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_secrets_per_environment: u32,

    /// Most bytes that resolving references may produce for one request (every resolved value,
    /// intermediate ones included).
    #[arg(long = "max-resolved-bytes", env = "COFFER_MAX_RESOLVED_BYTES", value_name = "COFFER_MAX_RESOLVED_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_resolved_bytes: u64,

    /// Most references that one request may resolve (each `${…}` counts every time it is met).
    #[arg(long = "max-resolved-references", env = "COFFER_MAX_RESOLVED_REFERENCES", value_name = "COFFER_MAX_RESOLVED_REFERENCES", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_resolved_references: u32,

    /// Longest a request may take, in seconds.
    #[arg(long = "request-timeout", env = "COFFER_REQUEST_TIMEOUT", value_name = "COFFER_REQUEST_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// How long change events are kept for event streams and history (seconds, or a number
    /// with `s`, `m`, `h` or `d`); older ones are pruned in the background.
    #[arg(long = "event-retention", env = "COFFER_EVENT_RETENTION", value_name = "COFFER_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration_secs)]
    pub event_retention_secs: u64,

    /// Most event streams open at once on this server.
    #[arg(long = "event-streams-max", env = "COFFER_EVENT_STREAMS_MAX", value_name = "COFFER_EVENT_STREAMS_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub event_streams_max: u32,

    /// Most event streams one organization may have open at once on this server.
    #[arg(long = "event-streams-per-org", env = "COFFER_EVENT_STREAMS_PER_ORG", value_name = "COFFER_EVENT_STREAMS_PER_ORG", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub event_streams_per_org: u32,

    /// Most event streams one user (all their login sessions together), API key or service
    /// token may have open at once on this server.
    #[arg(long = "event-streams-per-credential", env = "COFFER_EVENT_STREAMS_PER_CREDENTIAL", value_name = "COFFER_EVENT_STREAMS_PER_CREDENTIAL", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub event_streams_per_credential: u32,

    /// Let webhooks reach loopback and private addresses (in-cluster receivers). Link-local and
    /// cloud-metadata addresses are refused whatever this says.
    #[arg(long = "webhook-allow-private", env = "COFFER_WEBHOOK_ALLOW_PRIVATE", value_name = "COFFER_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// How long one webhook delivery attempt may take (connecting and answering), in ms.
    #[arg(long = "webhook-timeout-ms", env = "COFFER_WEBHOOK_TIMEOUT_MS", value_name = "COFFER_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub webhook_timeout_ms: u64,

    /// Attempts per webhook delivery before it is given up.
    #[arg(long = "webhook-max-attempts", env = "COFFER_WEBHOOK_MAX_ATTEMPTS", value_name = "COFFER_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_max_attempts: u32,

    /// Wait before the second attempt of a delivery, in ms; it doubles with each attempt after.
    #[arg(long = "webhook-retry-base-ms", env = "COFFER_WEBHOOK_RETRY_BASE_MS", value_name = "COFFER_WEBHOOK_RETRY_BASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub webhook_retry_base_ms: u64,

    /// Longest wait between two attempts of a delivery, in ms.
    #[arg(long = "webhook-retry-max-ms", env = "COFFER_WEBHOOK_RETRY_MAX_MS", value_name = "COFFER_WEBHOOK_RETRY_MAX_MS", default_value_t = 6 * 3_600_000, value_parser = clap::value_parser!(u64).range(10..=7 * 86_400_000))]
    pub webhook_retry_max_ms: u64,

    /// A webhook whose attempts fail this many times in a row is disabled (and audited).
    #[arg(long = "webhook-disable-after", env = "COFFER_WEBHOOK_DISABLE_AFTER", value_name = "COFFER_WEBHOOK_DISABLE_AFTER", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_disable_after: u32,

    /// How long one operation of a dynamic secret's engine may take (connecting, creating,
    /// renewing or revoking credentials), in ms. A lease still `creating` three times this long
    /// after it was recorded is taken for failed, and its credentials are revoked.
    #[arg(long = "dynamic-timeout-ms", env = "COFFER_DYNAMIC_TIMEOUT_MS", value_name = "COFFER_DYNAMIC_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub dynamic_timeout_ms: u64,

    /// How often the lease reaper looks for expired leases, failed creations and revocations
    /// to retry, in ms (at most 30 s).
    #[arg(long = "dynamic-reaper-interval-ms", env = "COFFER_DYNAMIC_REAPER_INTERVAL_MS", value_name = "COFFER_DYNAMIC_REAPER_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=30_000))]
    pub dynamic_reaper_interval_ms: u64,

    /// Longest wait between two attempts to revoke a lease whose revocation failed, in ms (the
    /// wait doubles from 1 s up to this).
    #[arg(long = "dynamic-retry-max-ms", env = "COFFER_DYNAMIC_RETRY_MAX_MS", value_name = "COFFER_DYNAMIC_RETRY_MAX_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub dynamic_retry_max_ms: u64,

    /// Connection checks (creating a dynamic secret or changing its URL) one organization may
    /// make per minute: each is a login attempt on a database, so a few are enough to set up and
    /// too few to guess a password through this server.
    #[arg(long = "dynamic-checks-per-minute", env = "COFFER_DYNAMIC_CHECKS_PER_MINUTE", value_name = "COFFER_DYNAMIC_CHECKS_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub dynamic_checks_per_minute: u32,

    /// Serve `/metrics` on this address only (e.g. `0.0.0.0:9090`, for a port only the
    /// monitoring reaches); unset, `/metrics` is served on the main listener.
    #[arg(
        long = "metrics-listen",
        env = "COFFER_METRICS_LISTEN",
        value_name = "COFFER_METRICS_LISTEN"
    )]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Seconds, written as a number of seconds or with a unit: `90`, `90s`, `15m`, `12h`, `7d`;
/// from 1 second to 10 years.
fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(format!("unknown unit `{unit}` (use s, m, h or d)")),
    };
    let secs = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a duration such as 3600, 90m, 12h or 7d"))?;
    if !(1..=10 * 365 * 86_400).contains(&secs) {
        return Err("must be from 1 second to 10 years".into());
    }
    Ok(secs)
}

/// An `http://` or `https://` URL with a host, and no credentials, query or fragment: links
/// are made by appending paths to it.
fn check_public_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".into());
    }
    if url.host().is_none() {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(())
}

impl Config {
    /// A configuration with every default, as if no variable were set.
    pub fn defaults() -> Self {
        Cli::parse_from(["coffer-server"]).config
    }

    /// Checks what the individual parsers cannot: combinations of settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == RunMode::Production {
            if self.master_key.is_none() {
                return Err(ConfigError::new(
                    "COFFER_MASTER_KEY",
                    "required when COFFER_ENV=production (32 random bytes, base64)",
                ));
            }
            if self.jwt_secret.is_none() {
                return Err(ConfigError::new(
                    "COFFER_JWT_SECRET",
                    "required when COFFER_ENV=production (at least 32 random bytes)",
                ));
            }
            let tls = self.tls_cert.is_some();
            if !tls && !self.listen.ip().is_loopback() && !self.allow_plaintext {
                return Err(ConfigError::new(
                    "COFFER_ALLOW_PLAINTEXT",
                    format!(
                        "refusing plain HTTP on non-loopback {} in production: set COFFER_TLS_CERT and COFFER_TLS_KEY, or COFFER_ALLOW_PLAINTEXT=true when TLS is terminated in front",
                        self.listen
                    ),
                ));
            }
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "COFFER_DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if let Some(url) = &self.public_url {
            check_public_url(url).map_err(|e| ConfigError::new("COFFER_PUBLIC_URL", e))?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| ConfigError::new("COFFER_LOG", format!("invalid filter: {e}")))?;
        Ok(())
    }

    /// How many proxies' `X-Forwarded-For` entries to believe: `COFFER_TRUSTED_PROXIES`, else
    /// one with `COFFER_TRUST_FORWARDED_FOR=true`, else none.
    pub fn trusted_proxy_hops(&self) -> u32 {
        self.trusted_proxies
            .unwrap_or(u32::from(self.trust_forwarded_for))
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }

    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_ttl_secs)
    }

    pub fn session_max_lifetime(&self) -> Duration {
        Duration::from_secs(self.session_max_lifetime_secs)
    }

    pub fn web_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.web_idle_timeout_secs)
    }

    /// Whether the dashboard's cookies are `Secure` (and `__Host-` prefixed): under TLS, and
    /// in production, where TLS is terminated in front when not here.
    pub fn secure_cookies(&self) -> bool {
        self.tls_cert.is_some() || self.is_production()
    }

    pub fn password_reset_ttl(&self) -> Duration {
        Duration::from_secs(self.password_reset_ttl_secs)
    }

    /// Where users reach this server, without a trailing `/`: `COFFER_PUBLIC_URL`, else the
    /// listening address (`localhost` for an unspecified one), `https` when serving TLS.
    pub fn public_url(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let port = self.listen.port();
        match self.listen.ip() {
            ip if ip.is_unspecified() => format!("{scheme}://localhost:{port}"),
            _ => format!("{scheme}://{}", self.listen),
        }
    }

    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The database to use: the configured URL, or the SQLite file in the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("coffer.db").display()
            ),
        }
    }

    pub fn is_production(&self) -> bool {
        self.mode == RunMode::Production
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_take_seconds_or_a_unit() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("12h"), Ok(43_200));
        assert_eq!(Config::defaults().event_retention_secs, 7 * 86_400);
        for bad in ["", "0", "7w", "-1d", "d", "99999999999999999999"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn production_without_a_master_key_names_the_variable() {
        let mut c = Config::defaults();
        c.mode = RunMode::Production;
        let err = c.validate().unwrap_err();
        assert_eq!(err.var, "COFFER_MASTER_KEY");
    }

    #[test]
    fn production_plain_http_on_a_public_address_needs_explicit_consent() {
        let mut c = Config::defaults();
        c.mode = RunMode::Production;
        c.master_key = Some(SecretString::from("x"));
        c.jwt_secret = Some(SecretString::from("y"));
        c.listen = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(c.validate().unwrap_err().var, "COFFER_ALLOW_PLAINTEXT");
        c.allow_plaintext = true;
        c.validate().unwrap();
        c.allow_plaintext = false;
        c.listen = "127.0.0.1:8080".parse().unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn an_invalid_listen_address_is_reported_with_its_variable() {
        let err = Cli::try_parse_from(["coffer-server", "--listen", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("COFFER_LISTEN"), "{err}");
    }

    #[test]
    fn trust_forwarded_for_means_one_hop_unless_the_hop_count_is_set() {
        let hops = |args: &[&str]| {
            let mut argv = vec!["coffer-server"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
                .unwrap()
                .config
                .trusted_proxy_hops()
        };
        assert_eq!(Config::defaults().trusted_proxy_hops(), 0);
        assert_eq!(hops(&["--trust-forwarded-for", "true"]), 1);
        assert_eq!(hops(&["--trusted-proxies", "2"]), 2);
        assert_eq!(
            hops(&["--trust-forwarded-for", "true", "--trusted-proxies", "0"]),
            0
        );
        assert_eq!(
            hops(&["--trust-forwarded-for", "true", "--trusted-proxies", "3"]),
            3
        );
        let err = Cli::try_parse_from(["coffer-server", "--trusted-proxies", "17"]).unwrap_err();
        assert!(err.to_string().contains("COFFER_TRUSTED_PROXIES"), "{err}");
    }

    #[test]
    fn the_public_url_is_configured_or_made_from_the_listening_address() {
        let mut c = Config::defaults();
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
        c.listen = "0.0.0.0:8443".parse().unwrap();
        c.tls_cert = Some("tls.crt".into());
        assert_eq!(c.public_url(), "https://localhost:8443");
        c.listen = "[::1]:8443".parse().unwrap();
        assert_eq!(c.public_url(), "https://[::1]:8443");
        c.public_url = Some("https://coffer.example.com/vault/".into());
        c.validate().unwrap();
        assert_eq!(c.public_url(), "https://coffer.example.com/vault");
        for bad in [
            "coffer.example.com",
            "ftp://coffer.example.com",
            "https://ann:pw@coffer.example.com",
            "https://coffer.example.com/?a=b",
            "https://coffer.example.com/#x",
        ] {
            c.public_url = Some(bad.into());
            assert_eq!(c.validate().unwrap_err().var, "COFFER_PUBLIC_URL", "{bad}");
        }
    }

    #[test]
    fn a_password_reset_link_lives_from_five_minutes_to_seven_days() {
        assert_eq!(
            Config::defaults().password_reset_ttl(),
            Duration::from_secs(3_600)
        );
        for bad in ["299", "604801"] {
            let err =
                Cli::try_parse_from(["coffer-server", "--password-reset-ttl", bad]).unwrap_err();
            assert!(
                err.to_string().contains("COFFER_PASSWORD_RESET_TTL"),
                "{err}"
            );
        }
    }

    #[test]
    fn admin_reset_password_takes_an_email() {
        let cli = Cli::try_parse_from([
            "coffer-server",
            "admin",
            "reset-password",
            "ann@example.com",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Admin { command: AdminCommand::ResetPassword { email } }) if email == "ann@example.com"
        ));
    }

    #[test]
    fn weaker_than_owasp_argon2_parameters_are_refused() {
        let err =
            Cli::try_parse_from(["coffer-server", "--argon2-memory-kib", "1024"]).unwrap_err();
        assert!(
            err.to_string().contains("COFFER_ARGON2_MEMORY_KIB"),
            "{err}"
        );
    }
}
