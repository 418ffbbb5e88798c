//! Dynamic secrets: credentials minted on demand in an external system (a PostgreSQL role),
//! handed out as leases that expire, can be renewed up to a maximum, and are revoked.

use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
#[cfg(feature = "server")]
use crate::types::formats;
use crate::types::{Actor, Revealed, integer};

/// The kind of system a dynamic secret mints credentials in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DynamicEngine {
    /// PostgreSQL roles (`CREATE ROLE … LOGIN PASSWORD … VALID UNTIL …`).
    Postgresql,
}

impl DynamicEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
        }
    }
}

/// How the engine reaches the external system as its administrator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DynamicConnection {
    /// The administrator's URL, with its password and TLS mode
    /// (`postgres://admin:pw@db.internal:5432/app?sslmode=require`). Sealed at rest, never
    /// returned.
    pub url: Revealed,
}

/// How passwords are made: `length` characters drawn uniformly from `alphabet` with the
/// operating system's CSPRNG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicy {
    /// 16 to 128; default 32.
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(minimum = 16, maximum = 128))]
    pub length: Option<u32>,
    /// At least 16 distinct printable ASCII characters, without quotes, backslash or space;
    /// default `A-Za-z0-9`.
    pub alphabet: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDynamicSecretRequest {
    /// `[a-z0-9-]`, 1 to 63 characters, unique in the environment.
    #[cfg_attr(feature = "server", schema(value_type = formats::Slug))]
    pub name: String,
    pub engine: DynamicEngine,
    pub connection: DynamicConnection,
    /// Run in one transaction to create a role; `{{name}}`, `{{password}}` and
    /// `{{expiration}}` are replaced. Default: `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD
    /// '{{password}}' VALID UNTIL '{{expiration}}'`, then one `GRANT <grant> TO "{{name}}"` per
    /// entry of `grants`.
    #[cfg_attr(feature = "server", schema(min_items = 1, max_items = 20))]
    pub creation_statements: Option<Vec<String>>,
    /// Run to revoke a role (`{{name}}`). Default: end the role's sessions, `REASSIGN OWNED`
    /// to the administrator, `DROP OWNED`, `DROP ROLE`; a role already gone is revoked.
    #[cfg_attr(feature = "server", schema(min_items = 1, max_items = 20))]
    pub revocation_statements: Option<Vec<String>>,
    /// Run to renew a lease (`{{name}}`, `{{expiration}}`). Default: `ALTER ROLE "{{name}}"
    /// VALID UNTIL '{{expiration}}'`.
    #[cfg_attr(feature = "server", schema(min_items = 1, max_items = 20))]
    pub renew_statements: Option<Vec<String>>,
    /// For the default creation statements: what each role is granted, e.g. `SELECT ON ALL
    /// TABLES IN SCHEMA public` or the name of a group role.
    pub grants: Option<Vec<String>>,
    /// Lowercase letters, digits and `_` around `{{environment}}`, `{{secret}}`,
    /// `{{random}}` (required) and `{{unix_time}}`; starts with a literal prefix; at most 63
    /// bytes once made. Default `coffer_{{environment}}_{{secret}}_{{random}}`.
    pub username_template: Option<String>,
    pub password_policy: Option<PasswordPolicy>,
    /// Seconds a lease lasts unless asked otherwise (1 to 31536000, at most `max_ttl`).
    #[serde(deserialize_with = "integer::whole")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 31_536_000))]
    pub default_ttl: u64,
    /// Seconds after its issue beyond which a lease is never renewed (1 to 31536000).
    #[serde(deserialize_with = "integer::whole")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 31_536_000))]
    pub max_ttl: u64,
}

/// Changes to a dynamic secret; absent fields stay. A new `connection` is checked like a new
/// dynamic secret's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateDynamicSecretRequest {
    pub connection: Option<DynamicConnection>,
    #[cfg_attr(feature = "server", schema(min_items = 1, max_items = 20))]
    pub creation_statements: Option<Vec<String>>,
    #[cfg_attr(feature = "server", schema(min_items = 1, max_items = 20))]
    pub revocation_statements: Option<Vec<String>>,
    #[cfg_attr(feature = "server", schema(min_items = 1, max_items = 20))]
    pub renew_statements: Option<Vec<String>>,
    pub grants: Option<Vec<String>>,
    pub username_template: Option<String>,
    pub password_policy: Option<PasswordPolicy>,
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 31_536_000))]
    pub default_ttl: Option<u64>,
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 31_536_000))]
    pub max_ttl: Option<u64>,
}

/// A dynamic secret as configured (never its connection URL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DynamicSecret {
    pub id: String,
    pub name: String,
    pub engine: DynamicEngine,
    /// The environment's slug.
    pub environment: String,
    /// The statements in use (the defaults when none were given).
    pub creation_statements: Vec<String>,
    pub revocation_statements: Vec<String>,
    pub renew_statements: Vec<String>,
    pub grants: Vec<String>,
    pub username_template: String,
    pub password_length: u32,
    pub password_alphabet: String,
    pub default_ttl: u64,
    pub max_ttl: u64,
    /// Leases not yet revoked (creating, active or being revoked).
    pub live_leases: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IssueLeaseRequest {
    /// Seconds; default the dynamic secret's `default_ttl`, at most its `max_ttl`.
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 31_536_000))]
    pub ttl: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewLeaseRequest {
    /// Seconds from now; default the dynamic secret's `default_ttl`. Refused (422) when the
    /// lease would outlive its `max_expires_at`.
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 31_536_000))]
    pub ttl: Option<u64>,
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Recorded; its role is being created.
    Creating,
    /// Its credentials work until `expires_at`.
    Active,
    /// Expired, revoked or failed: its role is being dropped (retried until it is gone).
    Revoking,
    /// Its role is gone.
    Revoked,
    /// Creating it failed, and whatever had been created is gone.
    Failed,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Active => "active",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for LeaseState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [
            Self::Creating,
            Self::Active,
            Self::Revoking,
            Self::Revoked,
            Self::Failed,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or(())
    }
}

/// A lease's metadata: never its password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Lease {
    pub id: String,
    /// The dynamic secret's name.
    pub dynamic_secret: String,
    pub username: String,
    pub state: LeaseState,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Renewals never go past this.
    pub max_expires_at: Timestamp,
    pub renewable: bool,
    pub renewals: i64,
    pub revoked_at: Option<Timestamp>,
    /// Why creating or revoking it failed last (the database's message).
    pub last_error: Option<String>,
    /// The `Idempotency-Key` it was issued with.
    pub idempotency_key: Option<String>,
    pub issued_by: Actor,
}

/// A lease just issued, with its credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct IssuedLease {
    pub id: String,
    pub username: String,
    pub password: Revealed,
    /// The administrator's URL with this lease's username and password instead.
    pub connection_url: Revealed,
    pub expires_at: Timestamp,
    pub max_expires_at: Timestamp,
    pub renewable: bool,
}

/// What a revoke-all did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RevokedLeases {
    /// Leases whose role is now gone.
    pub revoked: i64,
    /// Leases whose revocation failed for now: retried in the background.
    pub pending: i64,
}

/// The lease a `lease.*` event is about (never its password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LeaseEvent {
    pub id: String,
    pub dynamic_secret: String,
    pub username: String,
    pub expires_at: Timestamp,
    /// Why it failed (`lease.failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
