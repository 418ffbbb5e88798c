//! What API keys and service tokens share: bearer secrets stored as hashes, found while live
//! (not revoked, not expired, or the previous secret within its grace period), rotated,
//! revoked, and their use recorded.

use std::time::Duration;

use sqlx::any::AnyExecutor;
use sqlx::{Any, Encode, Type};

use crate::ids::Timestamp;

/// Use is recorded at most this often per credential, so that reads stay reads.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Matches the live credential whose current secret, or previous secret still in its grace
/// period, hashes to `$1` at time `$2`.
pub const LIVE_BY_HASH: &str = "(token_hash = $1 OR (previous_token_hash = $1 AND previous_expires_at > $2)) \
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
