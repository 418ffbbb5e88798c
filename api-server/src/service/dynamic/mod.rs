//! Dynamic secrets: credentials minted on demand (PostgreSQL roles), handed out as leases.
//!
//! **No leak.** A lease row is committed (state `creating`) before its role is created, and the
//! role is created by a task of its own, so a client that goes away mid-request does not stop
//! it half-way: the lease becomes `active` (and a retry with the same `Idempotency-Key` gets it).
//! When the process dies instead, the row stays `creating`; the reaper takes a `creating` lease
//! older than three engine timeouts for failed and revokes its role (a role never created is
//! revoked too). Expired leases are revoked the same way, and a revocation that fails is retried
//! with backoff until the role is gone. Every step is a conditional update of the row, so a
//! request, a revocation and the reapers of several replicas never do the same step twice.
//!
//! **Secrets.** The administrator's URL is sealed with the project's data key; the password of
//! a lease issued with an idempotency key is sealed too, for the same caller's retries during
//! [`REVEAL_WINDOW`], then erased. Neither is ever logged, audited or put in an event; the
//! engines' messages have them scrubbed.

pub mod engine;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use coffer_client::types::{
    CreateDynamicSecretRequest, DynamicEngine, DynamicSecret, EventType, IssueLeaseRequest,
    IssuedLease, Lease, LeaseEvent, LeaseState, RenewLeaseRequest, RevokedLeases,
    UpdateDynamicSecretRequest,
};
use rand::Rng as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use self::engine::{Connection, Credentials, Engine, EngineError, Postgres, defaults};
use crate::auth::rate_limit::Limit;
use crate::auth::{Caller, Principal, Subject};
use crate::authz::Action;
use crate::crypto::envelope::{Dek, Field, ValueAad};
use crate::db;
use crate::db::dynamic::{DynamicSecretRow, LeaseRow};
use crate::error::{ApiError, ApiResult};
use crate::ids::{OrgId, ProjectId, Timestamp};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome};
use crate::service::tenancy::{self, EnvCtx, EnvPath};
use crate::state::AppState;

/// Most dynamic secrets an environment may have.
pub const MAX_PER_ENVIRONMENT: i64 = 20;
/// Most leases of one dynamic secret not yet revoked.
pub const MAX_LIVE_LEASES: i64 = 1_000;
/// How long the same caller may get a lease's credentials again with its idempotency key.
pub const REVEAL_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Longest `max_ttl`: a year.
pub const MAX_TTL: u64 = 365 * 86_400;
/// How long revoked and failed leases stay listed.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(7 * 86_400);

const MAX_STATEMENTS: usize = 20;
const MAX_STATEMENT_LEN: usize = 4_096;
const MAX_GRANTS: usize = 20;
const MAX_GRANT_LEN: usize = 512;
const MAX_URL_LEN: usize = 2_048;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
const DEFAULT_TEMPLATE: &str = "coffer_{{environment}}_{{secret}}_{{random}}";
const DEFAULT_ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const DEFAULT_PASSWORD_LENGTH: u32 = 32;
/// What `{{environment}}` and `{{secret}}` keep of their slugs.
const TEMPLATE_PART_LEN: usize = 16;
const RANDOM_LEN: usize = 10;
/// Leases revoked per reaper batch, at most [`REAP_PER_SECRET`] of one dynamic secret (so that
/// one tenant's thousand expired leases do not fill every batch), [`REAP_CONCURRENCY`] at once.
const REAP_BATCH: i64 = 32;
const REAP_PER_SECRET: i64 = 4;
const REAP_CONCURRENCY: usize = 8;
/// A reaper round starts no new batch after this: the rest waits for the next round.
const REAP_ROUND: Duration = Duration::from_secs(30);

const CONNECTION_FIELD: Field = Field::Other("engine.connection");
const PASSWORD_FIELD: Field = Field::Other("lease.password");

/// Audit actions of this module.
pub mod action {
    pub const CREATED: &str = "dynamic_secret.created";
    pub const UPDATED: &str = "dynamic_secret.updated";
    pub const DELETED: &str = "dynamic_secret.deleted";
    pub const LEASE_ISSUED: &str = "lease.issued";
    pub const LEASE_RENEWED: &str = "lease.renewed";
    pub const LEASE_REVOKED: &str = "lease.revoked";
    pub const LEASE_FAILED: &str = "lease.failed";
    pub const REVOCATION_FAILED: &str = "lease.revocation_failed";
}

/// The engines, and the reaper's wake-up.
pub struct DynamicSecrets {
    postgres: Postgres,
    kick: Notify,
    timeout: Duration,
}

impl std::fmt::Debug for DynamicSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicSecrets").finish_non_exhaustive()
    }
}

impl DynamicSecrets {
    pub fn new(timeout: Duration) -> Self {
        Self {
            postgres: Postgres::new(timeout),
            kick: Notify::new(),
            timeout,
        }
    }

    fn engine(&self, kind: DynamicEngine) -> &dyn Engine {
        match kind {
            DynamicEngine::Postgresql => &self.postgres,
        }
    }

    /// Wakes this replica's reaper.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// A `creating` lease older than this was abandoned.
    fn stale_after(&self) -> Duration {
        self.timeout * 3
    }
}

/// What a dynamic secret is configured with, besides its connection and TTLs (stored as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creation_statements: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_statements: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_statements: Option<Vec<String>>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_alphabet: Option<String>,
}

impl Settings {
    fn parse(row: &DynamicSecretRow) -> ApiResult<Self> {
        serde_json::from_str(&row.settings).map_err(ApiError::internal)
    }

    fn creation(&self) -> Vec<String> {
        self.creation_statements
            .clone()
            .unwrap_or_else(|| defaults::creation(&self.grants))
    }

    fn revocation(&self) -> Vec<String> {
        self.revocation_statements
            .clone()
            .unwrap_or_else(defaults::revocation)
    }

    fn renewal(&self) -> Vec<String> {
        self.renew_statements
            .clone()
            .unwrap_or_else(defaults::renewal)
    }

    fn template(&self) -> &str {
        self.username_template
            .as_deref()
            .unwrap_or(DEFAULT_TEMPLATE)
    }

    fn alphabet(&self) -> &str {
        self.password_alphabet
            .as_deref()
            .unwrap_or(DEFAULT_ALPHABET)
    }

    fn length(&self) -> u32 {
        self.password_length.unwrap_or(DEFAULT_PASSWORD_LENGTH)
    }

    /// Checks every field.
    fn check(&self) -> ApiResult<()> {
        if let Some(s) = &self.creation_statements {
            check_statements(s, "creation_statements", &["{{name}}", "{{password}}"])?;
        }
        if let Some(s) = &self.revocation_statements {
            check_statements(s, "revocation_statements", &["{{name}}"])?;
        }
        if let Some(s) = &self.renew_statements {
            check_statements(s, "renew_statements", &["{{name}}", "{{expiration}}"])?;
        }
        check_grants(&self.grants)?;
        check_template(self.template())?;
        check_password_policy(self.length(), self.alphabet())
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::validation(code, message.into())
}

fn check_statements(list: &[String], field: &str, needs: &[&str]) -> ApiResult<()> {
    if list.is_empty() || list.len() > MAX_STATEMENTS {
        return Err(invalid(
            "invalid_statements",
            format!("{field} lists 1 to {MAX_STATEMENTS} statements"),
        ));
    }
    for s in list {
        if s.trim().is_empty() || s.len() > MAX_STATEMENT_LEN || s.contains('\0') {
            return Err(invalid(
                "invalid_statements",
                format!("each of {field} has 1 to {MAX_STATEMENT_LEN} bytes"),
            ));
        }
    }
    for needed in needs {
        if !list.iter().any(|s| s.contains(needed)) {
            return Err(invalid(
                "invalid_statements",
                format!("{field} must use {needed}"),
            ));
        }
    }
    Ok(())
}

fn check_grants(grants: &[String]) -> ApiResult<()> {
    if grants.len() > MAX_GRANTS {
        return Err(invalid(
            "invalid_grants",
            format!("grants lists at most {MAX_GRANTS} grants"),
        ));
    }
    for g in grants {
        if g.trim().is_empty()
            || g.len() > MAX_GRANT_LEN
            || g.contains(';')
            || g.contains("--")
            || g.contains("/*")
            || g.chars().any(char::is_control)
        {
            return Err(invalid(
                "invalid_grants",
                format!(
                    "each grant is one privilege clause of at most {MAX_GRANT_LEN} bytes, such as \
                     `SELECT ON ALL TABLES IN SCHEMA public` (no `;` or comment)"
                ),
            ));
        }
    }
    Ok(())
}

/// The pieces of a username template: literal text and placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Environment,
    Secret,
    Random,
    UnixTime,
}

fn pieces(template: &str) -> ApiResult<Vec<Piece<'_>>> {
    let bad = |why: &str| {
        invalid(
            "invalid_username_template",
            format!(
                "username_template: {why} (lowercase letters, digits and `_` around \
                 {{{{environment}}}}, {{{{secret}}}}, {{{{random}}}} and {{{{unix_time}}}})"
            ),
        )
    };
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find("{{") {
            Some(0) => {
                let end = rest.find("}}").ok_or_else(|| bad("an unclosed {{"))?;
                out.push(match &rest[2..end] {
                    "environment" => Piece::Environment,
                    "secret" => Piece::Secret,
                    "random" => Piece::Random,
                    "unix_time" => Piece::UnixTime,
                    _ => return Err(bad("an unknown placeholder")),
                });
                rest = &rest[end + 2..];
            }
            found => {
                let end = found.unwrap_or(rest.len());
                let text = &rest[..end];
                if !text
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(bad("a character that is not allowed"));
                }
                out.push(Piece::Text(text));
                rest = &rest[end..];
            }
        }
    }
    match out.first() {
        Some(Piece::Text(prefix))
            if prefix.len() >= 2 && prefix.starts_with(|c: char| c.is_ascii_lowercase()) => {}
        _ => {
            return Err(bad(
                "it must start with a prefix of 2 or more characters, a letter first",
            ));
        }
    }
    if !out.contains(&Piece::Random) {
        return Err(bad(
            "it must contain {{random}}, which makes each name unique",
        ));
    }
    Ok(out)
}

fn check_template(template: &str) -> ApiResult<()> {
    let longest: usize = pieces(template)?
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.len(),
            Piece::Environment | Piece::Secret => TEMPLATE_PART_LEN,
            Piece::Random | Piece::UnixTime => RANDOM_LEN,
        })
        .sum();
    if longest > 63 {
        return Err(invalid(
            "invalid_username_template",
            format!(
                "username_template may make names of {longest} bytes; PostgreSQL keeps 63 \
                 ({{{{environment}}}} and {{{{secret}}}} take up to {TEMPLATE_PART_LEN}, \
                 {{{{random}}}} and {{{{unix_time}}}} {RANDOM_LEN})"
            ),
        ));
    }
    Ok(())
}

fn check_password_policy(length: u32, alphabet: &str) -> ApiResult<()> {
    if !(16..=128).contains(&length) {
        return Err(invalid(
            "invalid_password_policy",
            "password_policy.length is 16 to 128",
        ));
    }
    let mut distinct: Vec<u8> = alphabet.bytes().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let allowed = alphabet
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'\'' | b'"' | b'\\'));
    if !allowed || distinct.len() < 16 || distinct.len() != alphabet.len() {
        return Err(invalid(
            "invalid_password_policy",
            "password_policy.alphabet has at least 16 distinct printable ASCII characters, each \
             once, without quotes, backslash or space",
        ));
    }
    Ok(())
}

fn check_ttls(default_ttl: u64, max_ttl: u64) -> ApiResult<()> {
    if default_ttl == 0 || max_ttl == 0 || max_ttl > MAX_TTL || default_ttl > max_ttl {
        return Err(invalid(
            "invalid_ttl",
            format!(
                "default_ttl and max_ttl are seconds, 1 to {MAX_TTL}, and default_ttl is at most \
                 max_ttl"
            ),
        ));
    }
    Ok(())
}

fn ttl_secs(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn secs_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `{{environment}}`/`{{secret}}`: a slug with `_` for `-`, cut to [`TEMPLATE_PART_LEN`].
fn name_part(slug: &str) -> String {
    slug.replace('-', "_")
        .chars()
        .take(TEMPLATE_PART_LEN)
        .collect()
}

fn random_text(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rngs::OsRng;
    let pick = rand::distributions::Uniform::new(0, alphabet.len());
    (0..len)
        .map(|_| char::from(alphabet[rng.sample(pick)]))
        .collect()
}

/// A new username from `template` (checked when saved).
fn new_username(
    template: &str,
    env_slug: &str,
    secret_name: &str,
    now: Timestamp,
) -> ApiResult<String> {
    let mut out = String::with_capacity(63);
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Environment => out.push_str(&name_part(env_slug)),
            Piece::Secret => out.push_str(&name_part(secret_name)),
            Piece::Random => out.push_str(&random_text(
                RANDOM_LEN,
                b"abcdefghijklmnopqrstuvwxyz0123456789",
            )),
            Piece::UnixTime => out.push_str(&(now.millis() / 1_000).to_string()),
        }
    }
    out.truncate(63);
    Ok(out)
}

fn new_password(settings: &Settings) -> SecretString {
    let length = usize::try_from(settings.length()).unwrap_or(32);
    SecretString::from(random_text(length, settings.alphabet().as_bytes()))
}

/// Checks an administrator URL: `postgres://user:password@host[:port]/database`, a TCP host
/// that is not link-local or a cloud-metadata address (names are resolved), not this server's
/// own database, and no option but `sslmode` and `application_name`.
async fn check_url(state: &AppState, url: &str) -> ApiResult<()> {
    let bad = |why: String| invalid("invalid_connection_url", why);
    if url.len() > MAX_URL_LEN {
        return Err(bad(format!("the URL is over {MAX_URL_LEN} characters")));
    }
    // Parse errors of `url` never quote the input, but say nothing of the password anyway.
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(bad("the URL must be postgres://".into()));
    }
    if parsed.username().is_empty() {
        return Err(bad(
            "the URL must name the administrator (postgres://user:…@…)".into(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(bad("the URL may not have a fragment".into()));
    }
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" => {
                if !matches!(
                    &*value,
                    "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
                ) {
                    return Err(bad(format!(
                        "sslmode `{value}` is not one PostgreSQL knows"
                    )));
                }
            }
            "application_name" => {}
            other => {
                return Err(bad(format!(
                    "the URL option `{other}` is not allowed (only sslmode and application_name)"
                )));
            }
        }
    }
    let port = parsed.port().unwrap_or(5432);
    let addresses: Vec<IpAddr> = match parsed.host() {
        None => return Err(bad("the URL has no host (sockets are not allowed)".into())),
        Some(url::Host::Ipv4(v4)) => vec![IpAddr::V4(v4)],
        Some(url::Host::Ipv6(v6)) => vec![IpAddr::V6(v6)],
        Some(url::Host::Domain(name)) => {
            if name.is_empty() || name.contains(['%', '/']) {
                return Err(bad("the URL's host must be a host name or address".into()));
            }
            resolve(name, port).await.map_err(|e| {
                invalid(
                    "connection_failed",
                    format!("cannot resolve the database's host name: {e}"),
                )
            })?
        }
    };
    for ip in &addresses {
        if let Some(why) = crate::service::webhooks::refused(*ip, true) {
            return Err(invalid(
                "connection_not_allowed",
                format!("the database's address is {why}, which dynamic secrets may not reach"),
            ));
        }
    }
    if is_own_database(state, &parsed, &addresses).await {
        return Err(invalid(
            "connection_not_allowed",
            "the URL points at coffer-server's own database",
        ));
    }
    Ok(())
}

async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host.to_owned(), port)),
    )
    .await
    .map_err(|_| std::io::Error::other("timed out"))??;
    let ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    if ips.is_empty() {
        return Err(std::io::Error::other("no address"));
    }
    Ok(ips)
}

/// Whether `url` is the database this server keeps its own data in (same database name, port
/// and host or address).
async fn is_own_database(state: &AppState, url: &url::Url, addresses: &[IpAddr]) -> bool {
    let own = state.config.effective_database_url();
    let Ok(own) = url::Url::parse(&own) else {
        return false;
    };
    if !matches!(own.scheme(), "postgres" | "postgresql") {
        return false;
    }
    let database = |u: &url::Url| u.path().trim_start_matches('/').to_owned();
    let port = |u: &url::Url| u.port().unwrap_or(5432);
    if database(&own) != database(url) || port(&own) != port(url) {
        return false;
    }
    let Some(host) = own.host_str() else {
        return false;
    };
    if url.host_str() == Some(host) {
        return true;
    }
    let own_addresses = match own.host() {
        Some(url::Host::Ipv4(v4)) => vec![IpAddr::V4(v4)],
        Some(url::Host::Ipv6(v6)) => vec![IpAddr::V6(v6)],
        _ => resolve(host, port(&own)).await.unwrap_or_default(),
    };
    addresses.iter().any(|a| own_addresses.contains(a))
}

/// The URL a lease's holder connects with: the administrator's, with the lease's credentials.
fn lease_url(
    admin: &SecretString,
    username: &str,
    password: &SecretString,
) -> ApiResult<SecretString> {
    let mut url = url::Url::parse(admin.expose_secret())
        .map_err(|_| ApiError::internal(anyhow::anyhow!("a stored connection URL is not valid")))?;
    let failed = || ApiError::internal(anyhow::anyhow!("cannot build a lease's URL"));
    url.set_username(username).map_err(|()| failed())?;
    url.set_password(Some(password.expose_secret()))
        .map_err(|()| failed())?;
    Ok(SecretString::from(String::from(url)))
}

fn connection_aad(row: &DynamicSecretRow, generation: i64) -> ValueAad {
    ValueAad {
        org_id: row.org_id.to_string(),
        project_id: row.project_id.to_string(),
        environment_id: row.environment_id.to_string(),
        key: row.id.clone(),
        version: generation,
        field: CONNECTION_FIELD,
    }
}

fn password_aad(lease: &LeaseRow) -> ValueAad {
    ValueAad {
        org_id: lease.org_id.to_string(),
        project_id: lease.project_id.to_string(),
        environment_id: lease.environment_id.to_string(),
        key: lease.id.clone(),
        version: 0,
        field: PASSWORD_FIELD,
    }
}

fn crypto_failure(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(anyhow::anyhow!("{what}: {e}"))
}

/// The administrator URL of `row`.
async fn open_url(state: &AppState, row: &DynamicSecretRow) -> ApiResult<SecretString> {
    let dek = crate::service::secrets::project_dek(
        state,
        row.org_id,
        row.project_id,
        &row.connection_dek_id,
    )
    .await?;
    let plain = zeroize::Zeroizing::new(
        dek.open(
            &row.connection_ct,
            &connection_aad(row, row.connection_generation),
        )
        .map_err(|e| crypto_failure("dynamic secret connection", e))?,
    );
    let text =
        std::str::from_utf8(&plain).map_err(|e| crypto_failure("dynamic secret connection", e))?;
    Ok(SecretString::from(text.to_owned()))
}

fn engine_kind(row: &DynamicSecretRow) -> ApiResult<DynamicEngine> {
    match row.engine.as_str() {
        "postgresql" => Ok(DynamicEngine::Postgresql),
        other => Err(ApiError::internal(anyhow::anyhow!(
            "dynamic secret {} has the unknown engine {other}",
            row.id
        ))),
    }
}

fn to_api(row: &DynamicSecretRow, environment: &str, live: i64) -> ApiResult<DynamicSecret> {
    let settings = Settings::parse(row)?;
    Ok(DynamicSecret {
        id: row.id.clone(),
        name: row.name.clone(),
        engine: engine_kind(row)?,
        environment: environment.to_owned(),
        creation_statements: settings.creation(),
        revocation_statements: settings.revocation(),
        renew_statements: settings.renewal(),
        grants: settings.grants.clone(),
        username_template: settings.template().to_owned(),
        password_length: settings.length(),
        password_alphabet: settings.alphabet().to_owned(),
        default_ttl: ttl_secs(row.default_ttl),
        max_ttl: ttl_secs(row.max_ttl),
        live_leases: live,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn lease_state(row: &LeaseRow) -> LeaseState {
    row.state.parse().unwrap_or(LeaseState::Revoking)
}

fn lease_to_api(row: &LeaseRow, secret: &str) -> Lease {
    let state = lease_state(row);
    Lease {
        id: row.id.clone(),
        dynamic_secret: secret.to_owned(),
        username: row.username.clone(),
        state,
        issued_at: row.issued_at,
        expires_at: row.expires_at,
        max_expires_at: row.max_expires_at,
        renewable: state == LeaseState::Active && row.expires_at < row.max_expires_at,
        renewals: row.renewals,
        revoked_at: row.revoked_at,
        last_error: row.last_error.clone(),
        idempotency_key: row.idempotency_key.clone(),
        issued_by: coffer_client::types::Actor {
            kind: row.issued_by_kind.clone(),
            id: Some(row.issued_by_id.clone()),
        },
    }
}

fn lease_event(row: &LeaseRow, secret: &str, error: Option<String>) -> LeaseEvent {
    LeaseEvent {
        id: row.id.clone(),
        dynamic_secret: secret.to_owned(),
        username: row.username.clone(),
        expires_at: row.expires_at,
        error,
    }
}

/// Who acts on a lease: a caller (with the request's metadata), or the reaper.
#[derive(Clone, Copy)]
enum By<'a> {
    Caller(&'a Caller, &'a ClientMeta),
    System,
}

impl By<'_> {
    fn audit(self, what: &'static str, outcome: Outcome) -> AuditEvent {
        match self {
            Self::Caller(caller, meta) => AuditEvent::new(what, outcome, meta).by(caller),
            Self::System => AuditEvent::system(what, outcome),
        }
    }

    fn actor(self) -> coffer_client::types::Actor {
        match self {
            Self::Caller(caller, _) => crate::service::events::actor(caller),
            Self::System => coffer_client::types::Actor {
                kind: "system".into(),
                id: None,
            },
        }
    }
}

/// Records `what` about a lease in the audit log and on the project's event stream, in `tx`.
async fn record(
    tx: &mut db::Tx,
    by: By<'_>,
    what: (&'static str, Outcome, EventType),
    lease: &LeaseRow,
    (secret, at): (&str, Option<&EnvCtx>),
    error: Option<String>,
    now: Timestamp,
) -> ApiResult<()> {
    let (action, outcome, kind) = what;
    let mut details = json!({
        "dynamic_secret": secret,
        "username": lease.username,
        "expires_at": lease.expires_at,
    });
    if let Some(error) = &error {
        details["error"] = json!(error);
    }
    by.audit(action, outcome)
        .org(lease.org_id)
        .project(lease.project_id)
        .environment(lease.environment_id)
        .target("lease", &lease.id)
        .details(details)
        .record(&mut **tx)
        .await?;
    emit(tx, by, kind, lease, (secret, at), error, now).await
}

/// Puts a `lease.*` event about `lease` on its project's stream, in `tx`.
async fn emit(
    tx: &mut db::Tx,
    by: By<'_>,
    kind: EventType,
    lease: &LeaseRow,
    (secret, at): (&str, Option<&EnvCtx>),
    error: Option<String>,
    now: Timestamp,
) -> ApiResult<()> {
    // Where the caller's request already says; otherwise looked up. The environment may be
    // gone only if the lease outlived it, which deletion refuses.
    let place = match at {
        Some(ctx) => Some(db::dynamic::LeasePlace {
            org_slug: ctx.project.org.org.slug.clone(),
            project_slug: ctx.project.project.slug.clone(),
            env_slug: ctx.env.slug.clone(),
            revision: ctx.env.revision,
        }),
        None => db::dynamic::place(&mut **tx, lease.environment_id).await?,
    };
    if let Some(place) = place {
        crate::service::events::lease(
            tx,
            crate::service::events::LeaseOrigin {
                org: (lease.org_id, &place.org_slug),
                project: (lease.project_id, &place.project_slug),
                environment: (lease.environment_id, &place.env_slug),
                revision: place.revision,
            },
            kind,
            lease_event(lease, secret, error),
            &by.actor(),
            now,
        )?;
    }
    Ok(())
}

async fn env_ctx(
    state: &AppState,
    caller: &(impl Subject + Sync),
    at: EnvPath<'_>,
    action: Action,
) -> ApiResult<EnvCtx> {
    tenancy::environment(state, caller, at, action).await
}

async fn load(state: &AppState, ctx: &EnvCtx, name: &str) -> ApiResult<DynamicSecretRow> {
    db::dynamic::secret_by_name(state.db.pool(), ctx.env.id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("dynamic secret"))
}

fn audit_config(
    meta: &ClientMeta,
    principal: &Principal,
    ctx: &EnvCtx,
    what: &'static str,
    row: &DynamicSecretRow,
) -> AuditEvent {
    AuditEvent::new(what, Outcome::Success, meta)
        .by(principal)
        .org(ctx.project.org.org.id)
        .project(ctx.project.project.id)
        .environment(ctx.env.id)
        .target("dynamic_secret", &row.id)
        .details(json!({ "name": row.name, "engine": row.engine }))
}

fn engine_refusal(e: &EngineError) -> ApiError {
    match e {
        EngineError::Unreachable(m) => invalid(
            "connection_failed",
            format!("cannot connect to the database: {m}"),
        ),
        EngineError::Refused(m) | EngineError::Taken(m) => {
            invalid("connection_refused", format!("the database refused: {m}"))
        }
    }
}

/// Checks the URL, then that its administrator connects and may create roles (at most
/// `COFFER_DYNAMIC_CHECKS_PER_MINUTE` times a minute per organization).
async fn verify_connection(
    state: &AppState,
    ctx: &EnvCtx,
    kind: DynamicEngine,
    url: &SecretString,
) -> ApiResult<()> {
    check_url(state, url.expose_secret()).await?;
    state
        .limits
        .check(
            Limit::DynamicChecksPerOrg,
            &ctx.project.org.org.id.to_string(),
        )
        .map_err(|retry_after| {
            state
                .metrics
                .rate_limited
                .get_or_create(&crate::metrics::LimitLabels {
                    limit: Limit::DynamicChecksPerOrg.as_str(),
                })
                .inc();
            ApiError::RateLimited { retry_after }
        })?;
    let probe = format!("verify-{}", uuid::Uuid::now_v7());
    let conn = Connection {
        id: &probe,
        generation: 0,
        url,
    };
    state
        .dynamic
        .engine(kind)
        .verify(&conn)
        .await
        .map_err(|e| match &e {
            EngineError::Refused(m) if m.contains("CREATEROLE") => {
                invalid("insufficient_privilege", m.clone())
            }
            _ => engine_refusal(&e),
        })
}

/// Seals `url` for `row` at `generation` with the project's current data key.
async fn seal_url(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    row: &DynamicSecretRow,
    url: &SecretString,
    generation: i64,
) -> ApiResult<(String, Vec<u8>)> {
    crate::service::secrets::seal_with_project_key(
        state,
        tx,
        &ctx.project,
        url.expose_secret().as_bytes(),
        &connection_aad(row, generation),
    )
    .await
}

/// Configures a dynamic secret (project admins), once its connection is checked.
pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    at: EnvPath<'_>,
    request: CreateDynamicSecretRequest,
) -> ApiResult<DynamicSecret> {
    let ctx = env_ctx(state, principal, at, Action::EnvironmentsManage).await?;
    tenancy::check_slug(&request.name, "a dynamic secret's name, like a")?;
    check_ttls(request.default_ttl, request.max_ttl)?;
    let policy = request
        .password_policy
        .unwrap_or(coffer_client::types::PasswordPolicy {
            length: None,
            alphabet: None,
        });
    let settings = Settings {
        creation_statements: request.creation_statements,
        revocation_statements: request.revocation_statements,
        renew_statements: request.renew_statements,
        grants: request.grants.unwrap_or_default(),
        username_template: request.username_template,
        password_length: policy.length,
        password_alphabet: policy.alphabet,
    };
    settings.check()?;
    let url = request.connection.url.into_inner();
    if load(state, &ctx, &request.name).await.is_ok() {
        return Err(ApiError::conflict(
            "dynamic_secret_exists",
            format!(
                "the environment has a dynamic secret `{}` already",
                request.name
            ),
        ));
    }
    verify_connection(state, &ctx, request.engine, &url).await?;
    let now = Timestamp::now();
    let mut row = DynamicSecretRow {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: ctx.project.org.org.id,
        project_id: ctx.project.project.id,
        environment_id: ctx.env.id,
        name: request.name,
        engine: request.engine.as_str().to_owned(),
        connection_dek_id: String::new(),
        connection_ct: Vec::new(),
        connection_generation: 1,
        settings: serde_json::to_string(&settings).map_err(ApiError::internal)?,
        default_ttl: secs_i64(request.default_ttl),
        max_ttl: secs_i64(request.max_ttl),
        created_by: Some(principal.user_id),
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.db.begin().await?;
    if db::dynamic::count_secrets(&mut *tx, ctx.env.id).await? >= MAX_PER_ENVIRONMENT {
        return Err(invalid(
            "too_many_dynamic_secrets",
            format!("an environment has at most {MAX_PER_ENVIRONMENT} dynamic secrets"),
        ));
    }
    if db::dynamic::secret_by_name(&mut *tx, ctx.env.id, &row.name)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(
            "dynamic_secret_exists",
            format!(
                "the environment has a dynamic secret `{}` already",
                row.name
            ),
        ));
    }
    (row.connection_dek_id, row.connection_ct) =
        seal_url(state, &mut tx, &ctx, &row, &url, 1).await?;
    db::dynamic::insert_secret(&mut *tx, &row).await?;
    audit_config(meta, principal, &ctx, action::CREATED, &row)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    to_api(&row, &ctx.env.slug, 0)
}

/// The environment's dynamic secrets (readers of its secrets).
pub async fn list(
    state: &AppState,
    caller: &Caller,
    at: EnvPath<'_>,
    after: Option<String>,
    limit: u32,
) -> ApiResult<Vec<DynamicSecret>> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let rows = db::dynamic::list_secrets(
        state.db.pool(),
        ctx.env.id,
        after.as_deref(),
        i64::from(limit) + 1,
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let live = db::dynamic::live_leases(state.db.pool(), &row.id).await?;
        out.push(to_api(row, &ctx.env.slug, live)?);
    }
    Ok(out)
}

pub async fn get(
    state: &AppState,
    caller: &Caller,
    at: EnvPath<'_>,
    name: &str,
) -> ApiResult<DynamicSecret> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let row = load(state, &ctx, name).await?;
    let live = db::dynamic::live_leases(state.db.pool(), &row.id).await?;
    to_api(&row, &ctx.env.slug, live)
}

/// Changes a dynamic secret (project admins). Leases already issued keep their expiry and
/// maximum, and are renewed and revoked through the new connection once there is one (checked
/// first, like a new dynamic secret's).
pub async fn update(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    at: EnvPath<'_>,
    name: &str,
    request: UpdateDynamicSecretRequest,
) -> ApiResult<DynamicSecret> {
    let ctx = env_ctx(state, principal, at, Action::EnvironmentsManage).await?;
    let mut row = load(state, &ctx, name).await?;
    let mut settings = Settings::parse(&row)?;
    if let Some(s) = request.creation_statements {
        settings.creation_statements = Some(s);
    }
    if let Some(s) = request.revocation_statements {
        settings.revocation_statements = Some(s);
    }
    if let Some(s) = request.renew_statements {
        settings.renew_statements = Some(s);
    }
    if let Some(g) = request.grants {
        settings.grants = g;
    }
    if let Some(t) = request.username_template {
        settings.username_template = Some(t);
    }
    if let Some(p) = request.password_policy {
        settings.password_length = p.length;
        settings.password_alphabet = p.alphabet;
    }
    settings.check()?;
    let default_ttl = request.default_ttl.unwrap_or(ttl_secs(row.default_ttl));
    let max_ttl = request.max_ttl.unwrap_or(ttl_secs(row.max_ttl));
    check_ttls(default_ttl, max_ttl)?;
    let kind = engine_kind(&row)?;
    let url = request.connection.map(|c| c.url.into_inner());
    if let Some(url) = &url {
        verify_connection(state, &ctx, kind, url).await?;
    }
    row.settings = serde_json::to_string(&settings).map_err(ApiError::internal)?;
    row.default_ttl = secs_i64(default_ttl);
    row.max_ttl = secs_i64(max_ttl);
    row.updated_at = Timestamp::now();
    let mut tx = state.db.begin().await?;
    if let Some(url) = &url {
        let generation = row.connection_generation + 1;
        (row.connection_dek_id, row.connection_ct) =
            seal_url(state, &mut tx, &ctx, &row, url, generation).await?;
        row.connection_generation = generation;
    }
    if !db::dynamic::update_secret(&mut *tx, &row).await? {
        return Err(ApiError::not_found("dynamic secret"));
    }
    audit_config(meta, principal, &ctx, action::UPDATED, &row)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    if url.is_some() {
        state.dynamic.engine(kind).forget(&row.id);
    }
    let live = db::dynamic::live_leases(state.db.pool(), &row.id).await?;
    to_api(&row, &ctx.env.slug, live)
}

/// Revokes every lease of a dynamic secret, then deletes it (project admins). Refused, with
/// the leases whose revocation failed left to the reaper, while any role may remain.
pub async fn delete(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    at: EnvPath<'_>,
    name: &str,
) -> ApiResult<()> {
    let ctx = env_ctx(state, principal, at, Action::EnvironmentsManage).await?;
    let row = load(state, &ctx, name).await?;
    let caller = Caller::User(*principal);
    let done = revoke_every_lease(state, By::Caller(&caller, meta), &row).await?;
    let mut tx = state.db.begin().await?;
    if done.pending > 0 || !db::dynamic::delete_secret(&mut tx, &row.id).await? {
        return Err(ApiError::conflict(
            "leases_pending",
            format!(
                "leases of `{name}` are still being created or revoked ({} pending); the \
                 dynamic secret is deleted once every role is gone: try again later",
                done.pending.max(1)
            ),
        ));
    }
    audit_config(meta, principal, &ctx, action::DELETED, &row)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.dynamic.engine(engine_kind(&row)?).forget(&row.id);
    Ok(())
}

fn check_idempotency_key(key: &str) -> ApiResult<()> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// A lease just issued (`replayed`: issued by an earlier request with the same key).
#[derive(Debug)]
pub struct Issued {
    pub lease: IssuedLease,
    pub replayed: bool,
}

/// Issues a lease of the dynamic secret `name`: a role with a new password. With
/// `idempotency_key`, a lease already issued with it is returned instead (see [`replay`]).
pub async fn issue(
    state: &AppState,
    meta: &ClientMeta,
    caller: &Caller,
    at: EnvPath<'_>,
    name: &str,
    request: IssueLeaseRequest,
    idempotency_key: Option<String>,
) -> ApiResult<Issued> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let secret = load(state, &ctx, name).await?;
    let ttl = request.ttl.unwrap_or(ttl_secs(secret.default_ttl));
    if ttl == 0 || ttl > ttl_secs(secret.max_ttl) {
        return Err(invalid(
            "invalid_ttl",
            format!("ttl is 1 to {} seconds (the max_ttl)", secret.max_ttl),
        ));
    }
    if let Some(key) = &idempotency_key {
        check_idempotency_key(key)?;
        if let Some(existing) = db::dynamic::lease_by_key(state.db.pool(), &secret.id, key).await? {
            return replay(state, caller, &secret, existing).await;
        }
    }
    let settings = Settings::parse(&secret)?;
    let now = Timestamp::now();
    let (kind, id) = caller.actor();
    let lease = LeaseRow {
        id: uuid::Uuid::now_v7().to_string(),
        dynamic_secret_id: secret.id.clone(),
        org_id: secret.org_id,
        project_id: secret.project_id,
        environment_id: secret.environment_id,
        username: new_username(settings.template(), &ctx.env.slug, &secret.name, now)?,
        state: LeaseState::Creating.as_str().to_owned(),
        end_reason: None,
        issued_at: now,
        expires_at: now.plus(Duration::from_secs(ttl)),
        max_expires_at: now.plus(Duration::from_secs(ttl_secs(secret.max_ttl))),
        renewals: 0,
        revoked_at: None,
        last_error: None,
        idempotency_key: idempotency_key.clone(),
        issued_by_kind: kind.to_owned(),
        issued_by_id: id,
        reveal_dek_id: None,
        reveal_ct: None,
        reveal_until: None,
        attempts: 0,
        next_attempt_at: None,
        locked_until: None,
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.db.begin().await?;
    if db::dynamic::live_leases(&mut *tx, &secret.id).await? >= MAX_LIVE_LEASES {
        return Err(ApiError::conflict(
            "too_many_leases",
            format!("a dynamic secret has at most {MAX_LIVE_LEASES} leases not yet revoked"),
        ));
    }
    if !db::dynamic::insert_lease(&mut *tx, &lease).await? {
        // Another request took the key meanwhile.
        drop(tx);
        let key = idempotency_key.as_deref().unwrap_or_default();
        let existing = db::dynamic::lease_by_key(state.db.pool(), &secret.id, key)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a lease key vanished")))?;
        return replay(state, caller, &secret, existing).await;
    }
    tx.commit().await?;
    // From here the row exists: whatever happens to this request, the reaper knows of the role.
    // The role is made by a task of its own, which a client going away does not stop.
    let task = {
        let state = state.clone();
        let caller = caller.clone();
        let meta = meta.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            complete_issue(&state, &meta, &caller, &ctx, &secret, &settings, lease).await
        })
    };
    let lease = task
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("issuing a lease: {e}")))?;
    state.metrics.lease("issue", lease.is_ok());
    let lease = lease?;
    Ok(Issued {
        lease,
        replayed: false,
    })
}

async fn complete_issue(
    state: &AppState,
    meta: &ClientMeta,
    caller: &Caller,
    ctx: &EnvCtx,
    secret: &DynamicSecretRow,
    settings: &Settings,
    mut lease: LeaseRow,
) -> ApiResult<IssuedLease> {
    let by = By::Caller(caller, meta);
    let password = new_password(settings);
    let url = open_url(state, secret).await?;
    let conn = Connection {
        id: &secret.id,
        generation: secret.connection_generation,
        url: &url,
    };
    let creds = Credentials {
        username: &lease.username,
        password: &password,
        expiration: lease.expires_at,
    };
    let engine = state.dynamic.engine(engine_kind(secret)?);
    let created = engine.create(&conn, &settings.creation(), &creds).await;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    match created {
        Ok(()) => {
            let reveal = match &lease.idempotency_key {
                Some(_) => {
                    let (dek_id, ct) = crate::service::secrets::seal_with_project_key(
                        state,
                        &mut tx,
                        &ctx.project,
                        password.expose_secret().as_bytes(),
                        &password_aad(&lease),
                    )
                    .await?;
                    Some((dek_id, ct, now.plus(REVEAL_WINDOW)))
                }
                None => None,
            };
            let activated = db::dynamic::activate(
                &mut *tx,
                &lease.id,
                reveal
                    .as_ref()
                    .map(|(d, c, u)| (d.as_str(), c.as_slice(), *u)),
                now,
            )
            .await?;
            if !activated {
                // Too late: the reaper took it for abandoned and revokes the role.
                return Err(ApiError::upstream(
                    "engine_failed",
                    "creating the credentials took too long; they are revoked",
                ));
            }
            lease.state = LeaseState::Active.as_str().to_owned();
            record(
                &mut tx,
                by,
                (
                    action::LEASE_ISSUED,
                    Outcome::Success,
                    EventType::LeaseIssued,
                ),
                &lease,
                (&secret.name, Some(ctx)),
                None,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(IssuedLease {
                id: lease.id.clone(),
                connection_url: lease_url(&url, &lease.username, &password)?.into(),
                username: lease.username,
                password: password.into(),
                expires_at: lease.expires_at,
                max_expires_at: lease.max_expires_at,
                renewable: lease.expires_at < lease.max_expires_at,
            })
        }
        Err(e) => {
            let message = e.message().to_owned();
            db::dynamic::creation_failed(&mut *tx, &lease.id, &message, now).await?;
            if matches!(e, EngineError::Taken(_)) {
                // The statements ran in one transaction, rolled back: the role of that name is
                // someone else's, and is left alone.
                db::dynamic::fail_untouched(&mut *tx, &lease.id, now).await?;
            } else {
                // Whatever the statements did before failing is revoked by the reaper, at once.
                db::dynamic::claim_for_revoking(
                    &mut *tx,
                    &lease.id,
                    &["creating"],
                    "failed",
                    now,
                    now,
                )
                .await?;
            }
            record(
                &mut tx,
                by,
                (
                    action::LEASE_FAILED,
                    Outcome::Failure,
                    EventType::LeaseFailed,
                ),
                &lease,
                (&secret.name, Some(ctx)),
                Some(message.clone()),
                now,
            )
            .await?;
            tx.commit().await?;
            state.dynamic.kick();
            Err(match e {
                EngineError::Unreachable(m) => ApiError::upstream(
                    "engine_unavailable",
                    format!("cannot reach the database: {m}"),
                ),
                EngineError::Refused(m) | EngineError::Taken(m) => ApiError::upstream(
                    "engine_failed",
                    format!("the database refused to create the credentials: {m}"),
                ),
            })
        }
    }
}

/// A lease issued with an idempotency key already: its credentials again if `caller` issued it
/// and it is within [`REVEAL_WINDOW`]; a wait while it is being created; 409 otherwise.
async fn replay(
    state: &AppState,
    caller: &Caller,
    secret: &DynamicSecretRow,
    mut lease: LeaseRow,
) -> ApiResult<Issued> {
    let deadline = tokio::time::Instant::now() + state.dynamic.timeout + Duration::from_secs(1);
    while lease.state == LeaseState::Creating.as_str() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lease = db::dynamic::lease_by_id(state.db.pool(), &lease.id)
            .await?
            .ok_or_else(|| ApiError::not_found("lease"))?;
    }
    if lease.state == LeaseState::Creating.as_str() {
        return Err(ApiError::conflict(
            "lease_in_progress",
            format!(
                "lease {} with this Idempotency-Key is still being created",
                lease.id
            ),
        ));
    }
    let (kind, id) = caller.actor();
    let same_caller = lease.issued_by_kind == kind && lease.issued_by_id == id;
    let now = Timestamp::now();
    if let (true, "active", Some(dek_id), Some(ct), Some(until)) = (
        same_caller,
        lease.state.as_str(),
        &lease.reveal_dek_id,
        &lease.reveal_ct,
        lease.reveal_until,
    ) && until > now
        && lease.expires_at > now
    {
        let dek =
            crate::service::secrets::project_dek(state, lease.org_id, lease.project_id, dek_id)
                .await?;
        let plain = zeroize::Zeroizing::new(
            dek.open(ct, &password_aad(&lease))
                .map_err(|e| crypto_failure("lease password", e))?,
        );
        let password = SecretString::from(
            std::str::from_utf8(&plain)
                .map_err(|e| crypto_failure("lease password", e))?
                .to_owned(),
        );
        let url = open_url(state, secret).await?;
        return Ok(Issued {
            lease: IssuedLease {
                id: lease.id.clone(),
                connection_url: lease_url(&url, &lease.username, &password)?.into(),
                username: lease.username.clone(),
                password: password.into(),
                expires_at: lease.expires_at,
                max_expires_at: lease.max_expires_at,
                renewable: lease.expires_at < lease.max_expires_at,
            },
            replayed: true,
        });
    }
    Err(ApiError::conflict(
        "idempotency_key_used",
        format!(
            "lease {} ({}) was issued with this Idempotency-Key; its credentials are not shown \
             again: revoke it if it is not in use, and issue with a new key",
            lease.id, lease.state
        ),
    ))
}

async fn load_lease(state: &AppState, secret: &DynamicSecretRow, id: &str) -> ApiResult<LeaseRow> {
    db::dynamic::lease(state.db.pool(), &secret.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("lease"))
}

pub async fn get_lease(
    state: &AppState,
    caller: &Caller,
    at: EnvPath<'_>,
    name: &str,
    id: &str,
) -> ApiResult<Lease> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let secret = load(state, &ctx, name).await?;
    Ok(lease_to_api(
        &load_lease(state, &secret, id).await?,
        &secret.name,
    ))
}

/// A page of the dynamic secret's leases, newest first, in every state.
pub async fn list_leases(
    state: &AppState,
    caller: &Caller,
    at: EnvPath<'_>,
    name: &str,
    before: Option<String>,
    limit: u32,
) -> ApiResult<Vec<Lease>> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let secret = load(state, &ctx, name).await?;
    let rows = db::dynamic::list_leases(
        state.db.pool(),
        &secret.id,
        before.as_deref(),
        i64::from(limit) + 1,
    )
    .await?;
    Ok(rows.iter().map(|r| lease_to_api(r, &secret.name)).collect())
}

/// Extends an active lease by `ttl` from now, never past its maximum.
pub async fn renew(
    state: &AppState,
    meta: &ClientMeta,
    caller: &Caller,
    at: EnvPath<'_>,
    (name, id): (&str, &str),
    request: RenewLeaseRequest,
) -> ApiResult<Lease> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let secret = load(state, &ctx, name).await?;
    let mut lease = load_lease(state, &secret, id).await?;
    let now = Timestamp::now();
    if lease.state != LeaseState::Active.as_str() || lease.expires_at <= now {
        return Err(ApiError::conflict(
            "lease_not_active",
            format!(
                "lease {} is {} and cannot be renewed",
                lease.id,
                if lease.state == "active" {
                    "expired"
                } else {
                    &lease.state
                }
            ),
        ));
    }
    let ttl = request.ttl.unwrap_or(ttl_secs(secret.default_ttl));
    if ttl == 0 {
        return Err(invalid("invalid_ttl", "ttl is at least 1 second"));
    }
    let expires_at = now.plus(Duration::from_secs(ttl));
    if expires_at > lease.max_expires_at {
        return Err(invalid(
            "beyond_max_ttl",
            format!(
                "the lease may not outlive its maximum, {} s from now; issue a new lease instead",
                now.seconds_until(lease.max_expires_at)
            ),
        ));
    }
    let settings = Settings::parse(&secret)?;
    let url = open_url(state, &secret).await?;
    let conn = Connection {
        id: &secret.id,
        generation: secret.connection_generation,
        url: &url,
    };
    let by = By::Caller(caller, meta);
    if let Err(e) = state
        .dynamic
        .engine(engine_kind(&secret)?)
        .renew(&conn, &settings.renewal(), &lease.username, expires_at)
        .await
    {
        let mut tx = state.db.begin().await?;
        record(
            &mut tx,
            by,
            (
                action::LEASE_RENEWED,
                Outcome::Failure,
                EventType::LeaseFailed,
            ),
            &lease,
            (&secret.name, Some(&ctx)),
            Some(e.message().to_owned()),
            now,
        )
        .await?;
        tx.commit().await?;
        state.metrics.lease("renew", false);
        return Err(ApiError::upstream(
            "engine_failed",
            format!(
                "the database refused to renew the credentials: {}",
                e.message()
            ),
        ));
    }
    let mut tx = state.db.begin().await?;
    if !db::dynamic::renew(&mut *tx, &lease.id, expires_at, now).await? {
        return Err(ApiError::conflict(
            "lease_not_active",
            format!("lease {} was revoked meanwhile", lease.id),
        ));
    }
    lease.expires_at = expires_at;
    lease.renewals += 1;
    record(
        &mut tx,
        by,
        (
            action::LEASE_RENEWED,
            Outcome::Success,
            EventType::LeaseRenewed,
        ),
        &lease,
        (&secret.name, Some(&ctx)),
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    state.metrics.lease("renew", true);
    Ok(lease_to_api(&lease, &secret.name))
}

/// Revokes a lease now. Its issuer may (with read access); anyone else needs write access to
/// the environment's secrets. Revoking a finished lease changes nothing.
pub async fn revoke(
    state: &AppState,
    meta: &ClientMeta,
    caller: &Caller,
    at: EnvPath<'_>,
    name: &str,
    id: &str,
) -> ApiResult<Lease> {
    let ctx = env_ctx(state, caller, at, Action::SecretsRead).await?;
    let secret = load(state, &ctx, name).await?;
    let lease = load_lease(state, &secret, id).await?;
    let (kind, actor_id) = caller.actor();
    if lease.issued_by_kind != kind || lease.issued_by_id != actor_id {
        if caller.read_only() {
            return Err(ApiError::forbidden(
                "forbidden",
                "a read-only credential revokes only the leases it issued",
            ));
        }
        env_ctx(state, caller, at, Action::SecretsWrite).await?;
    }
    match lease_state(&lease) {
        LeaseState::Revoked | LeaseState::Failed => {}
        LeaseState::Creating => {
            return Err(ApiError::conflict(
                "lease_in_progress",
                format!(
                    "lease {} is still being created; revoke it once it is issued",
                    lease.id
                ),
            ));
        }
        LeaseState::Active | LeaseState::Revoking => {
            revoke_now(
                state,
                By::Caller(caller, meta),
                &secret,
                &lease.id,
                End::Asked,
            )
            .await?;
        }
    }
    Ok(lease_to_api(
        &load_lease(state, &secret, id).await?,
        &secret.name,
    ))
}

/// Revokes every lease of a dynamic secret now (writers of the environment's secrets).
pub async fn revoke_all(
    state: &AppState,
    meta: &ClientMeta,
    caller: &Caller,
    at: EnvPath<'_>,
    name: &str,
) -> ApiResult<RevokedLeases> {
    let ctx = env_ctx(state, caller, at, Action::SecretsWrite).await?;
    let secret = load(state, &ctx, name).await?;
    revoke_every_lease(state, By::Caller(caller, meta), &secret).await
}

async fn revoke_every_lease(
    state: &AppState,
    by: By<'_>,
    secret: &DynamicSecretRow,
) -> ApiResult<RevokedLeases> {
    let mut revoked = 0;
    for id in db::dynamic::revocable_lease_ids(state.db.pool(), &secret.id).await? {
        if revoke_now(state, by, secret, &id, End::Asked).await? == Revocation::Done {
            revoked += 1;
        }
    }
    let pending = db::dynamic::live_leases(state.db.pool(), &secret.id).await?;
    Ok(RevokedLeases { revoked, pending })
}

/// Why a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Asked for (a caller, or a dynamic secret deleted).
    Asked,
    /// Past its expiry.
    Expired,
    /// Abandoned while `creating`.
    Abandoned,
    /// A failed revocation, retried.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revocation {
    /// The role is gone.
    Done,
    /// Failed for now; retried later.
    Failed,
    /// Someone else holds the lease (or it moved on).
    Skipped,
}

/// Takes the lease `id` for revoking (unless someone else has), drops its role, and records the
/// outcome: `revoked` (or `failed` for a creation that failed), or a retry later.
async fn revoke_now(
    state: &AppState,
    by: By<'_>,
    secret: &DynamicSecretRow,
    id: &str,
    end: End,
) -> ApiResult<Revocation> {
    let now = Timestamp::now();
    let (from, reason): (&[&str], &str) = match end {
        End::Asked => (&["active", "revoking"], "revoked"),
        End::Expired => (&["active"], "expired"),
        End::Abandoned => (&["creating"], "failed"),
        End::Retry => (&["revoking"], "revoked"),
    };
    let hold = now.plus(state.dynamic.timeout * 3);
    let mut tx = state.db.begin().await?;
    if !db::dynamic::claim_for_revoking(&mut *tx, id, from, reason, hold, now).await? {
        return Ok(Revocation::Skipped);
    }
    let Some(lease) = db::dynamic::lease_by_id(&mut *tx, id).await? else {
        return Ok(Revocation::Skipped);
    };
    if end == End::Abandoned {
        let why = "the request creating it did not finish";
        db::dynamic::creation_failed(&mut *tx, id, why, now).await?;
        record(
            &mut tx,
            By::System,
            (
                action::LEASE_FAILED,
                Outcome::Failure,
                EventType::LeaseFailed,
            ),
            &lease,
            (&secret.name, None),
            Some(why.to_owned()),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    let settings = Settings::parse(secret)?;
    let url = open_url(state, secret).await?;
    let conn = Connection {
        id: &secret.id,
        generation: secret.connection_generation,
        url: &url,
    };
    let result = state
        .dynamic
        .engine(engine_kind(secret)?)
        .revoke(&conn, &settings.revocation(), &lease.username)
        .await;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let outcome = match result {
        Ok(()) => {
            if !db::dynamic::finish(&mut *tx, id, now).await? {
                return Ok(Revocation::Skipped);
            }
            let kind = if lease.end_reason.as_deref() == Some("failed") {
                None
            } else {
                Some(EventType::LeaseRevoked)
            };
            if let Some(kind) = kind {
                record(
                    &mut tx,
                    by,
                    (action::LEASE_REVOKED, Outcome::Success, kind),
                    &lease,
                    (&secret.name, None),
                    None,
                    now,
                )
                .await?;
            }
            state.metrics.lease("revoke", true);
            Revocation::Done
        }
        Err(e) => {
            let backoff = retry_after(state, lease.attempts);
            let attempts =
                db::dynamic::revocation_failed(&mut *tx, id, e.message(), now.plus(backoff), now)
                    .await?;
            // The first failure is an event; every one is audited.
            let kind = EventType::LeaseFailed;
            by.audit(action::REVOCATION_FAILED, Outcome::Failure)
                .org(lease.org_id)
                .project(lease.project_id)
                .environment(lease.environment_id)
                .target("lease", &lease.id)
                .details(json!({
                    "dynamic_secret": secret.name,
                    "username": lease.username,
                    "attempts": attempts,
                    "error": e.message(),
                }))
                .record(&mut *tx)
                .await?;
            if attempts == 1 {
                let error = Some(format!("revoking: {}", e.message()));
                emit(&mut tx, by, kind, &lease, (&secret.name, None), error, now).await?;
            }
            tracing::warn!(lease = %lease.id, attempts, "revoking a lease failed; retried later");
            state.metrics.lease("revoke", false);
            Revocation::Failed
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Wait before retrying a revocation that failed `attempts` times before: 1 s doubling, up to
/// the configured maximum, ±20 %.
fn retry_after(state: &AppState, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let base = 1_000u64.saturating_mul(1u64 << exp.min(30));
    let capped = base.min(state.config.dynamic_retry_max_ms);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    Duration::from_millis((capped as f64 * jitter) as u64)
}

/// Revokes expired leases, abandoned creations and revocations due for a retry; erases
/// passwords past their window; drops finished leases past retention. Reads before it writes,
/// so an idle server writes nothing.
pub async fn reap_once(state: &AppState) -> ApiResult<usize> {
    use futures::StreamExt as _;
    let started = tokio::time::Instant::now();
    let mut done = 0;
    let mut secrets: HashMap<String, Arc<DynamicSecretRow>> = HashMap::new();
    for _ in 0..32 {
        let now = Timestamp::now();
        let stale = now.minus(state.dynamic.stale_after());
        let due =
            db::dynamic::due(state.db.pool(), now, stale, REAP_BATCH, REAP_PER_SECRET).await?;
        let batch = due.len();
        let mut work = Vec::with_capacity(batch);
        for (id, lease_state, secret_id) in due {
            let secret = match secrets.get(&secret_id) {
                Some(s) => s.clone(),
                None => {
                    let Some(s) = db::dynamic::secret_by_id(state.db.pool(), &secret_id).await?
                    else {
                        continue;
                    };
                    let s = Arc::new(s);
                    secrets.insert(secret_id, s.clone());
                    s
                }
            };
            let end = match lease_state.as_str() {
                "active" => End::Expired,
                "creating" => End::Abandoned,
                _ => End::Retry,
            };
            work.push((id, secret, end));
        }
        // A few at once, so that a database that does not answer holds up the others' leases
        // for one engine timeout, not one per lease.
        let outcomes: Vec<_> = futures::stream::iter(work)
            .map(|(id, secret, end)| async move {
                let outcome = revoke_now(state, By::System, &secret, &id, end).await;
                (id, outcome)
            })
            .buffer_unordered(REAP_CONCURRENCY)
            .collect()
            .await;
        for (id, outcome) in outcomes {
            match outcome {
                Ok(Revocation::Done) => done += 1,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(lease = %id, error = %e, "the lease reaper failed a lease")
                }
            }
        }
        if batch < usize::try_from(REAP_BATCH).unwrap_or(32) || started.elapsed() > REAP_ROUND {
            break;
        }
    }
    let now = Timestamp::now();
    if db::dynamic::has_stale_reveals(state.db.pool(), now).await? {
        db::dynamic::erase_stale_reveals(state.db.pool(), now).await?;
    }
    let before = now.minus(FINISHED_RETENTION);
    if db::dynamic::has_finished_before(state.db.pool(), before).await? {
        db::dynamic::delete_finished_before(state.db.pool(), before).await?;
    }
    Ok(done)
}

/// The reaper: a round at start (after a restart, what was left is found at once), then every
/// `COFFER_DYNAMIC_REAPER_INTERVAL_MS` or when woken, until the server stops.
pub async fn run_reaper(state: AppState) {
    let every = Duration::from_millis(state.config.dynamic_reaper_interval_ms);
    loop {
        if state.db.pool().is_closed() {
            return;
        }
        if let Err(e) = reap_once(&state).await {
            tracing::warn!(error = %e, "the lease reaper failed a round");
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = state.dynamic.kick.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Re-seals the connections of `project`'s dynamic secrets with a new data key, and erases the
/// passwords kept for retries (a retry after the rotation gets `idempotency_key_used`).
pub async fn reseal_connections(
    state: &AppState,
    tx: &mut db::Tx,
    (org, project): (OrgId, ProjectId),
    (new_id, new): (&str, &Dek),
    old: &mut HashMap<String, Arc<Dek>>,
) -> ApiResult<i64> {
    db::dynamic::forget_reveals_of_project(&mut **tx, project).await?;
    let mut seals = 0;
    for mut row in db::dynamic::secrets_of_project(&mut **tx, project).await? {
        if !old.contains_key(&row.connection_dek_id) {
            let dek =
                crate::service::secrets::project_dek(state, org, project, &row.connection_dek_id)
                    .await?;
            old.insert(row.connection_dek_id.clone(), dek);
        }
        let dek = old
            .get(&row.connection_dek_id)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("dynamic secret: no data key")))?;
        let aad = connection_aad(&row, row.connection_generation);
        let plain = zeroize::Zeroizing::new(
            dek.open(&row.connection_ct, &aad)
                .map_err(|e| crypto_failure("dynamic secret connection", e))?,
        );
        row.connection_ct = new.seal(&plain, &aad);
        row.connection_dek_id = new_id.to_owned();
        seals += 1;
        db::dynamic::update_secret(&mut **tx, &row).await?;
    }
    Ok(seals)
}

/// Refuses to delete `scope` while it holds dynamic secrets: their leases' roles would be left
/// behind with nothing to revoke them.
pub async fn refuse_if_any<'e>(
    ex: impl sqlx::any::AnyExecutor<'e>,
    scope: db::dynamic::Scope,
    what: &str,
) -> ApiResult<()> {
    let n = db::dynamic::count_in(ex, scope).await?;
    if n > 0 {
        return Err(ApiError::conflict(
            "has_dynamic_secrets",
            format!(
                "the {what} has {n} dynamic secret(s): delete them first (which revokes their \
                 leases)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_a_prefix_and_random() {
        assert!(check_template(DEFAULT_TEMPLATE).is_ok());
        assert!(check_template("app_{{random}}").is_ok());
        for bad in [
            "{{random}}",
            "a{{random}}",
            "_x{{random}}",
            "app_{{secret}}",
            "App_{{random}}",
            "app-{{random}}",
            "app_{{random}",
            "app_{{nope}}_{{random}}",
            "app_{{environment}}_{{secret}}_{{environment}}_{{random}}_{{unix_time}}",
        ] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_fit_and_differ() {
        let now = Timestamp::now();
        let a = new_username(
            DEFAULT_TEMPLATE,
            "production-eu-west-1",
            "orders-database-main",
            now,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let b = new_username(
            DEFAULT_TEMPLATE,
            "production-eu-west-1",
            "orders-database-main",
            now,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a}");
        assert!(
            a.starts_with("coffer_production_eu_we_orders_database_"),
            "{a}"
        );
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        );
    }

    #[test]
    fn password_policies_are_checked() {
        assert!(check_password_policy(32, DEFAULT_ALPHABET).is_ok());
        assert!(check_password_policy(8, DEFAULT_ALPHABET).is_err());
        assert!(check_password_policy(200, DEFAULT_ALPHABET).is_err());
        assert!(check_password_policy(32, "abcdef").is_err());
        assert!(check_password_policy(32, "abcdefghijklmnop'").is_err());
        assert!(check_password_policy(32, "abcdefghijklmnop ").is_err());
        assert!(check_password_policy(32, "abcdefghijklmnopp").is_err());
        let settings = Settings {
            password_length: Some(40),
            password_alphabet: Some("abcdefghijklmnop".into()),
            ..Settings::default()
        };
        let p = new_password(&settings);
        assert_eq!(p.expose_secret().len(), 40);
        assert!(
            p.expose_secret()
                .bytes()
                .all(|b| b"abcdefghijklmnop".contains(&b))
        );
    }

    #[test]
    fn statements_and_grants_are_bounded() {
        assert!(check_statements(&[], "creation_statements", &[]).is_err());
        assert!(
            check_statements(&["CREATE ROLE \"{{name}}\"".into()], "x", &["{{password}}"]).is_err()
        );
        assert!(check_grants(&["SELECT ON t; DROP TABLE t".into()]).is_err());
        assert!(check_grants(&["app_readers".into()]).is_ok());
        assert!(check_ttls(60, 30).is_err());
        assert!(check_ttls(0, 30).is_err());
        assert!(check_ttls(30, MAX_TTL + 1).is_err());
        assert!(check_ttls(30, 60).is_ok());
    }

    #[test]
    fn lease_urls_carry_the_lease_credentials() {
        let admin = SecretString::from(
            "postgres://admin:s3cret@db.internal:5433/app?sslmode=require".to_owned(),
        );
        let url = lease_url(
            &admin,
            "coffer_x",
            &SecretString::from("p@ss/w:rd".to_owned()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.expose_secret(),
            "postgres://coffer_x:p%40ss%2Fw%3Ard@db.internal:5433/app?sslmode=require"
        );
    }
}
