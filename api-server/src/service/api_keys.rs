//! Personal API keys: machine credentials that act as their user.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::auth::Principal;
use crate::auth::tokens::{self, API_KEY_PREFIX};
use crate::db;
use crate::db::api_keys::{ApiKeyRow, NewApiKey};
use crate::db::credentials::{self, Table};
use crate::error::{ApiError, ApiResult};
use crate::ids::{ApiKeyId, Timestamp};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::tenancy::check_name;
use crate::state::AppState;

pub const MAX_EXPIRY_DAYS: u32 = 3650;
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(7 * 86_400);

/// A key and its token, shown this once.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: ApiKeyRow,
    pub token: SecretString,
}

/// The expiry of a credential `days` from `now` (none without `days`), 1 to 3650 days.
pub fn expiry(now: Timestamp, days: Option<u32>) -> ApiResult<Option<Timestamp>> {
    match days {
        None => Ok(None),
        Some(days @ 1..=MAX_EXPIRY_DAYS) => Ok(Some(
            now.plus(Duration::from_secs(u64::from(days) * 86_400)),
        )),
        Some(_) => Err(ApiError::validation(
            "invalid_expiry",
            format!("expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}"),
        )),
    }
}

/// A rotation's grace period, at most [`MAX_GRACE_PERIOD`].
pub fn check_grace(grace: Duration) -> ApiResult<()> {
    if grace > MAX_GRACE_PERIOD {
        return Err(ApiError::validation(
            "invalid_grace_period",
            format!(
                "grace_period_seconds must be at most {}",
                MAX_GRACE_PERIOD.as_secs()
            ),
        ));
    }
    Ok(())
}

pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    name: &str,
    expires_in_days: Option<u32>,
    read_only: bool,
) -> ApiResult<IssuedKey> {
    // A key that could make keys could outlive its own expiry, revocation and a password
    // change; only a person at a login may make one.
    principal.require_session("creating an API key")?;
    let name = check_name(name)?;
    let now = Timestamp::now();
    let expires_at = expiry(now, expires_in_days)?;
    let token = tokens::generate(API_KEY_PREFIX);
    let prefix = tokens::display_prefix(&token);
    let access = if read_only { "read" } else { "read-write" };
    let id = ApiKeyId::new();
    let mut tx = state.db.begin().await?;
    db::api_keys::insert(
        &mut *tx,
        &NewApiKey {
            id,
            user_id: principal.user_id,
            name: &name,
            prefix: &prefix,
            token_hash: &tokens::hash(token.expose_secret()),
            access,
            created_at: now,
            expires_at,
        },
    )
    .await?;
    AuditEvent::new(action::API_KEY_CREATED, Outcome::Success, meta)
        .by(principal)
        .target("api_key", id)
        .details(json!({ "name": name, "access": access }))
        .record(&mut *tx)
        .await?;
    let key = db::api_keys::get(&mut *tx, principal.user_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("api key"))?;
    tx.commit().await?;
    Ok(IssuedKey { key, token })
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    after: Option<ApiKeyId>,
    limit: u32,
) -> ApiResult<Vec<ApiKeyRow>> {
    Ok(db::api_keys::list(
        state.db.pool(),
        principal.user_id,
        after,
        i64::from(limit) + 1,
    )
    .await?)
}

pub async fn revoke(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    id: ApiKeyId,
) -> ApiResult<()> {
    let mut tx = state.db.begin().await?;
    if !credentials::revoke(
        &mut *tx,
        Table::ApiKeys,
        principal.user_id,
        id,
        Timestamp::now(),
    )
    .await?
    {
        return Err(ApiError::not_found("api key"));
    }
    AuditEvent::new(action::API_KEY_REVOKED, Outcome::Success, meta)
        .by(principal)
        .target("api_key", id)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A new token for the key; the old one keeps working for `grace` and then stops.
pub async fn rotate(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    id: ApiKeyId,
    grace: Duration,
) -> ApiResult<IssuedKey> {
    principal.require_session("rotating an API key")?;
    check_grace(grace)?;
    let now = Timestamp::now();
    let token = tokens::generate(API_KEY_PREFIX);
    let mut tx = state.db.begin().await?;
    let rotated = credentials::rotate(
        &mut *tx,
        Table::ApiKeys,
        principal.user_id,
        id,
        &tokens::hash(token.expose_secret()),
        &tokens::display_prefix(&token),
        now.plus(grace),
    )
    .await?;
    if !rotated {
        return Err(ApiError::not_found("api key"));
    }
    AuditEvent::new(action::API_KEY_ROTATED, Outcome::Success, meta)
        .by(principal)
        .target("api_key", id)
        .details(json!({ "grace_period_seconds": grace.as_secs() }))
        .record(&mut *tx)
        .await?;
    let key = db::api_keys::get(&mut *tx, principal.user_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("api key"))?;
    tx.commit().await?;
    Ok(IssuedKey { key, token })
}
