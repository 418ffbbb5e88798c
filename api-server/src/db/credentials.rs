//! What API keys and service tokens share: bearer secrets stored as hashes, found while live
//! (not revoked, not expired, or the previous secret within its grace period), rotated,
//! revoked, and their use recorded.

use std::time::Duration;

use sqlx::any::AnyExecutor;
use sqlx::{Any, Encode, FromRow, Type};

use crate::ids::{ApiKeyId, EnvironmentId, OrgId, ProjectId, ServiceTokenId, Timestamp, UserId};

/// Use is recorded at most this often per credential, so that reads stay reads.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Matches the live credential whose current secret, or previous secret still in its grace
/// period, hashes to `$1` at time `$2`.
const LIVE_BY_HASH: &str = "(token_hash = $1 OR (previous_token_hash = $1 AND previous_expires_at > $2)) \
     AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)";

/// The tables holding credentials, and the tenant column each is scoped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Personal API keys, owned by a user.
    ApiKeys,
    /// Service tokens, owned by an organization.
    ServiceTokens,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::ApiKeys => "api_keys",
            Self::ServiceTokens => "service_tokens",
        }
    }

    fn owner_column(self) -> &'static str {
        match self {
            Self::ApiKeys => "user_id",
            Self::ServiceTokens => "org_id",
        }
    }
}

/// The live credential a `cfr_…` bearer secret stands for, with what the request needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    ApiKey {
        id: ApiKeyId,
        user_id: UserId,
        access: String,
        last_used_at: Option<Timestamp>,
        /// When the secret stops working (expiry, or the end of a rotated secret's grace).
        valid_until: Option<Timestamp>,
    },
    ServiceToken {
        id: ServiceTokenId,
        org_id: OrgId,
        project_id: ProjectId,
        access: String,
        last_used_at: Option<Timestamp>,
        valid_until: Option<Timestamp>,
        environment_ids: Vec<EnvironmentId>,
    },
}

impl Live {
    /// When the secret that found this credential stops working, if it ever does.
    pub fn valid_until(&self) -> Option<Timestamp> {
        match self {
            Self::ApiKey { valid_until, .. } | Self::ServiceToken { valid_until, .. } => {
                *valid_until
            }
        }
    }

    /// When the use of this credential was last recorded.
    pub fn last_used_at(&self) -> Option<Timestamp> {
        match self {
            Self::ApiKey { last_used_at, .. } | Self::ServiceToken { last_used_at, .. } => {
                *last_used_at
            }
        }
    }

    /// Notes that the use of this credential was recorded at `now`.
    pub fn touched(&mut self, now: Timestamp) {
        match self {
            Self::ApiKey { last_used_at, .. } | Self::ServiceToken { last_used_at, .. } => {
                *last_used_at = Some(now);
            }
        }
    }
}

/// One row of [`live_by_hash`]: an API key, or a service token with one of its environments.
#[derive(Debug, FromRow)]
struct LiveRow {
    kind: String,
    id: String,
    owner_id: String,
    project_id: Option<ProjectId>,
    access: String,
    last_used_at: Option<Timestamp>,
    environment_id: Option<EnvironmentId>,
    expires_at: Option<Timestamp>,
    /// Set when the secret matched is the previous one, in its grace period.
    grace_ends_at: Option<Timestamp>,
}

impl LiveRow {
    fn valid_until(&self) -> Option<Timestamp> {
        match (self.expires_at, self.grace_ends_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, sqlx::Error>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The live API key or service token whose secret hashes to `hash` at `now`, in one query
/// (both kinds share the `cfr_` prefix, so the table is not known in advance); a service token
/// comes with the environments it is limited to. An API key wins should both match.
pub async fn live_by_hash<'e>(
    ex: impl AnyExecutor<'e>,
    hash: &str,
    now: Timestamp,
) -> Result<Option<Live>, sqlx::Error> {
    let rows: Vec<LiveRow> = sqlx::query_as(&format!(
        "SELECT 'api_key' AS kind, id, user_id AS owner_id, NULL AS project_id, access, \
                last_used_at, NULL AS environment_id, expires_at, \
                CASE WHEN token_hash = $1 THEN NULL ELSE previous_expires_at END AS grace_ends_at \
         FROM api_keys WHERE {LIVE_BY_HASH} \
         UNION ALL \
         SELECT 'service_token' AS kind, t.id, t.org_id, t.project_id, t.access, \
                t.last_used_at, te.environment_id, t.expires_at, \
                CASE WHEN t.token_hash = $1 THEN NULL ELSE t.previous_expires_at END \
         FROM service_tokens t LEFT JOIN service_token_environments te ON te.token_id = t.id \
         WHERE {LIVE_BY_HASH}"
    ))
    .bind(hash)
    .bind(now)
    .fetch_all(ex)
    .await?;
    if let Some(key) = rows.iter().find(|r| r.kind == "api_key") {
        return Ok(Some(Live::ApiKey {
            id: parse_id(&key.id)?,
            user_id: parse_id(&key.owner_id)?,
            access: key.access.clone(),
            last_used_at: key.last_used_at,
            valid_until: key.valid_until(),
        }));
    }
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let project_id = first
        .project_id
        .ok_or_else(|| sqlx::Error::Decode("service token without a project".into()))?;
    Ok(Some(Live::ServiceToken {
        id: parse_id(&first.id)?,
        org_id: parse_id(&first.owner_id)?,
        project_id,
        access: first.access.clone(),
        last_used_at: first.last_used_at,
        valid_until: first.valid_until(),
        environment_ids: rows
            .iter()
            .filter(|r| r.id == first.id)
            .filter_map(|r| r.environment_id)
            .collect(),
    }))
}

/// Whether a credential last used at `last_used` should have its use recorded again.
pub fn needs_touch(last_used: Option<Timestamp>, now: Timestamp) -> bool {
    last_used.is_none_or(|t| t < now.minus(TOUCH_INTERVAL))
}

/// Revokes the owner's live credential `id`; false when there is none.
pub async fn revoke<'e, O, I>(
    ex: impl AnyExecutor<'e>,
    table: Table,
    owner: O,
    id: I,
    now: Timestamp,
) -> Result<bool, sqlx::Error>
where
    O: for<'q> Encode<'q, Any> + Type<Any> + Send,
    I: for<'q> Encode<'q, Any> + Type<Any> + Send,
{
    let sql = format!(
        "UPDATE {} SET revoked_at = $1 WHERE {} = $2 AND id = $3 AND revoked_at IS NULL",
        table.name(),
        table.owner_column()
    );
    let done = sqlx::query(&sql)
        .bind(now)
        .bind(owner)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the secret of the owner's live credential `id`; the old secret keeps working until
/// `previous_expires_at`. False when there is no such credential.
pub async fn rotate<'e, O, I>(
    ex: impl AnyExecutor<'e>,
    table: Table,
    owner: O,
    id: I,
    new_hash: &str,
    new_prefix: &str,
    previous_expires_at: Timestamp,
) -> Result<bool, sqlx::Error>
where
    O: for<'q> Encode<'q, Any> + Type<Any> + Send,
    I: for<'q> Encode<'q, Any> + Type<Any> + Send,
{
    let sql = format!(
        "UPDATE {} SET previous_token_hash = token_hash, previous_expires_at = $1, \
                token_hash = $2, prefix = $3 \
         WHERE {} = $4 AND id = $5 AND revoked_at IS NULL",
        table.name(),
        table.owner_column()
    );
    let done = sqlx::query(&sql)
        .bind(previous_expires_at)
        .bind(new_hash)
        .bind(new_prefix)
        .bind(owner)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the use of credential `id`, unless one was recorded within [`TOUCH_INTERVAL`]
/// (also when concurrent requests both saw an old record).
pub async fn touch<'e, I>(
    ex: impl AnyExecutor<'e>,
    table: Table,
    id: I,
    now: Timestamp,
) -> Result<(), sqlx::Error>
where
    I: for<'q> Encode<'q, Any> + Type<Any> + Send,
{
    let sql = format!(
        "UPDATE {} SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        table.name()
    );
    sqlx::query(&sql)
        .bind(now)
        .bind(id)
        .bind(now.minus(TOUCH_INTERVAL))
        .execute(ex)
        .await?;
    Ok(())
}
