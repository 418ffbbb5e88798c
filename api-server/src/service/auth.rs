//! Accounts and login sessions: register, login, refresh (with rotation and reuse detection),
//! logout, password change.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::auth::Principal;
use crate::auth::password::check_password_policy;
use crate::auth::rate_limit::{FailureReservation, Limit};
use crate::auth::tokens::{self, REFRESH_TOKEN_PREFIX, WEB_SESSION_PREFIX};
use crate::db::cache::Change;
use crate::db::sessions::RefreshTokenRow;
use crate::db::users::UserRow;
use crate::db::{self, Tx, is_unique_violation};
use crate::error::{ApiError, ApiResult};
use crate::ids::{SessionId, Timestamp, UserId};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::tenancy::check_name;
use crate::state::AppState;

/// Tokens handed out at login, registration and refresh.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_in: Duration,
}

/// The account and its fresh tokens.
#[derive(Debug)]
pub struct LoggedIn {
    pub user: UserRow,
    pub tokens: IssuedTokens,
}

/// Trimmed and lower-cased; refuses what cannot be an address
/// (`coffer_client::types::formats::Email` documents exactly this).
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let trimmed = email.trim();
    let valid = email.chars().count() <= 254
        && !trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
        && trimmed.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.chars().count() <= 64
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        });
    if valid {
        Ok(trimmed.to_lowercase())
    } else {
        Err(ApiError::validation(
            "invalid_email",
            "email is not a valid address",
        ))
    }
}

/// Counts a request against a limit; over it, the refusal is audited (once per key and
/// window, so a flood does not become a flood of writes) and answered with 429.
pub(crate) async fn rate_limit(
    state: &AppState,
    limit: Limit,
    key: &str,
    user: Option<UserId>,
    meta: &ClientMeta,
) -> ApiResult<()> {
    match state.limits.check(limit, key) {
        Ok(()) => Ok(()),
        Err(retry_after) => Err(refused(state, limit, key, user, meta, retry_after).await),
    }
}

/// Takes a failure of `account`'s password from the client's address ahead of checking it:
/// failures, not attempts, are counted, so a right password never spends anything.
async fn reserve_failure<'a>(
    state: &'a AppState,
    account: &str,
    user: Option<UserId>,
    meta: &ClientMeta,
) -> ApiResult<FailureReservation<'a>> {
    match state.limits.reserve_failure(account, meta.ip_key()) {
        Ok(reservation) => Ok(reservation),
        Err(r) => Err(refused(state, r.limit, &r.key, user, meta, r.retry_after).await),
    }
}

async fn refused(
    state: &AppState,
    limit: Limit,
    key: &str,
    user: Option<UserId>,
    meta: &ClientMeta,
    retry_after: Duration,
) -> ApiError {
    state
        .metrics
        .rate_limited
        .get_or_create(&crate::metrics::LimitLabels {
            limit: limit.as_str(),
        })
        .inc();
    if state.limits.first_refusal(limit, key) {
        let audited = AuditEvent::new(action::RATE_LIMITED, Outcome::Denied, meta)
            .about_user(user)
            .details(json!({ "limit": limit.as_str() }))
            .commit(&state.db)
            .await;
        if let Err(e) = audited {
            return e.into();
        }
    }
    ApiError::RateLimited { retry_after }
}

/// The row of a new session of `user`, inside `tx`: its id and when it ends at the latest.
async fn insert_session(
    state: &AppState,
    tx: &mut Tx,
    user: UserId,
    meta: &ClientMeta,
    now: Timestamp,
) -> ApiResult<(SessionId, Timestamp)> {
    let session = SessionId::new();
    let expires_at = now.plus(state.config.session_max_lifetime());
    db::sessions::insert_session(
        &mut **tx,
        session,
        user,
        now,
        expires_at,
        meta.ip.as_deref(),
        meta.user_agent.as_deref(),
    )
    .await?;
    Ok((session, expires_at))
}

/// Opens a session for `user` inside `tx`: the session row, its first refresh token.
async fn open_session(
    state: &AppState,
    tx: &mut Tx,
    user: UserId,
    meta: &ClientMeta,
    now: Timestamp,
) -> ApiResult<IssuedTokens> {
    let (session, expires_at) = insert_session(state, tx, user, meta, now).await?;
    let refresh_token = tokens::generate(REFRESH_TOKEN_PREFIX);
    let refresh_expires = now.plus(state.config.refresh_token_ttl()).min(expires_at);
    db::sessions::insert_refresh_token(
        &mut **tx,
        session,
        &tokens::hash(refresh_token.expose_secret()),
        now,
        refresh_expires,
    )
    .await?;
    let access_token = state
        .jwt
        .issue(user, session, now)
        .map_err(ApiError::internal)?;
    Ok(IssuedTokens {
        access_token,
        refresh_token,
        expires_in: state.jwt.ttl(),
    })
}

/// How a new session is reached: by tokens (the API) or by a cookie (the dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    Api,
    Dashboard,
}

/// What opening a session hands out.
enum Opened {
    Tokens(IssuedTokens),
    Cookie(SecretString),
}

impl Opened {
    fn tokens(self) -> ApiResult<IssuedTokens> {
        match self {
            Self::Tokens(t) => Ok(t),
            Self::Cookie(_) => Err(ApiError::internal(anyhow::anyhow!(
                "a dashboard session where tokens were expected"
            ))),
        }
    }

    fn cookie(self) -> ApiResult<SecretString> {
        match self {
            Self::Cookie(c) => Ok(c),
            Self::Tokens(_) => Err(ApiError::internal(anyhow::anyhow!(
                "tokens where a dashboard session was expected"
            ))),
        }
    }
}

/// Opens a session of `kind` inside `tx`.
async fn open(
    state: &AppState,
    tx: &mut Tx,
    user: UserId,
    meta: &ClientMeta,
    now: Timestamp,
    kind: SessionKind,
) -> ApiResult<Opened> {
    match kind {
        SessionKind::Api => Ok(Opened::Tokens(
            open_session(state, tx, user, meta, now).await?,
        )),
        SessionKind::Dashboard => Ok(Opened::Cookie(
            open_dashboard_session(state, tx, user, meta, now).await?,
        )),
    }
}

/// Opens a dashboard session for `user` inside `tx`: a session row reached by the returned
/// cookie value (only its hash is stored), with no refresh token.
async fn open_dashboard_session(
    state: &AppState,
    tx: &mut Tx,
    user: UserId,
    meta: &ClientMeta,
    now: Timestamp,
) -> ApiResult<SecretString> {
    let (session, _) = insert_session(state, tx, user, meta, now).await?;
    let cookie = tokens::generate(WEB_SESSION_PREFIX);
    db::sessions::set_web_token(
        &mut **tx,
        session,
        &tokens::hash(cookie.expose_secret()),
        now,
    )
    .await?;
    Ok(cookie)
}

pub async fn register(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    password: &SecretString,
    name: &str,
) -> ApiResult<LoggedIn> {
    let (user, opened) = register_as(state, meta, email, password, name, SessionKind::Api).await?;
    Ok(LoggedIn {
        user,
        tokens: opened.tokens()?,
    })
}

/// Registers an account from the dashboard: the account and the cookie of its first session.
pub async fn register_dashboard(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    password: &SecretString,
    name: &str,
) -> ApiResult<(UserRow, SecretString)> {
    let (user, opened) =
        register_as(state, meta, email, password, name, SessionKind::Dashboard).await?;
    Ok((user, opened.cookie()?))
}

async fn register_as(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    password: &SecretString,
    name: &str,
    kind: SessionKind,
) -> ApiResult<(UserRow, Opened)> {
    rate_limit(state, Limit::RegisterPerIp, meta.ip_key(), None, meta).await?;
    let email = normalize_email(email)?;
    rate_limit(state, Limit::RegisterPerAccount, &email, None, meta).await?;
    let name = check_name(name)?;
    check_password_policy(password, &[&email, &name])?;
    let taken = || ApiError::conflict("email_taken", "an account with this email already exists");
    if db::users::by_email(state.db.pool(), &email)
        .await?
        .is_some()
    {
        return Err(taken());
    }
    let hash = state.passwords.hash(password).await?;

    let now = Timestamp::now();
    let user = UserRow {
        id: UserId::new(),
        email,
        name,
        password_hash: hash,
        created_at: now,
    };
    let mut tx = state.db.begin().await?;
    if let Err(e) = db::users::insert(
        &mut *tx,
        user.id,
        &user.email,
        &user.name,
        &user.password_hash,
        now,
    )
    .await
    {
        return Err(if is_unique_violation(&e) {
            taken()
        } else {
            e.into()
        });
    }
    let opened = open(state, &mut tx, user.id, meta, now, kind).await?;
    AuditEvent::new(action::REGISTER, Outcome::Success, meta)
        .by_user(user.id)
        .details_if(via(kind))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((user, opened))
}

/// Audit details naming the dashboard when a session is opened there.
fn via(kind: SessionKind) -> Option<serde_json::Value> {
    match kind {
        SessionKind::Api => None,
        SessionKind::Dashboard => Some(json!({ "via": "dashboard" })),
    }
}

pub async fn login(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    password: &SecretString,
) -> ApiResult<LoggedIn> {
    let (user, opened) = login_as(state, meta, email, password, SessionKind::Api).await?;
    Ok(LoggedIn {
        user,
        tokens: opened.tokens()?,
    })
}

/// Signs in from the dashboard: the account and the cookie of the new session.
pub async fn login_dashboard(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    password: &SecretString,
) -> ApiResult<(UserRow, SecretString)> {
    let (user, opened) = login_as(state, meta, email, password, SessionKind::Dashboard).await?;
    Ok((user, opened.cookie()?))
}

async fn login_as(
    state: &AppState,
    meta: &ClientMeta,
    email: &str,
    password: &SecretString,
    kind: SessionKind,
) -> ApiResult<(UserRow, Opened)> {
    let invalid = || ApiError::unauthorized("invalid_credentials", "invalid email or password");
    rate_limit(state, Limit::LoginPerIp, meta.ip_key(), None, meta).await?;
    // An unparseable email is an unknown account: same answer, same work.
    let email = normalize_email(email).unwrap_or_default();
    let user = if email.is_empty() {
        None
    } else {
        db::users::by_email(state.db.pool(), &email).await?
    };
    let user_id = user.as_ref().map(|u| u.id);
    let reservation = reserve_failure(state, &email, user_id, meta).await?;

    let verified = state
        .passwords
        .verify(password, user.as_ref().map(|u| u.password_hash.as_str()))
        .await?;
    let Some(user) = user.filter(|_| verified.matches) else {
        reservation.failed();
        AuditEvent::new(action::LOGIN, Outcome::Failure, meta)
            .about_user(user_id)
            .details(json!({ "reason": "invalid_credentials" }))
            .commit(&state.db)
            .await?;
        return Err(invalid());
    };
    drop(reservation);

    let now = Timestamp::now();
    let new_hash = if verified.needs_rehash {
        Some(state.passwords.hash(password).await?)
    } else {
        None
    };
    let mut tx = state.db.begin().await?;
    if let Some(hash) = &new_hash {
        db::users::set_password_hash(&mut *tx, user.id, hash, now).await?;
    }
    let opened = open(state, &mut tx, user.id, meta, now, kind).await?;
    AuditEvent::new(action::LOGIN, Outcome::Success, meta)
        .by_user(user.id)
        .details_if(via(kind))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((user, opened))
}

/// Dashboard sessions are looked up again after this long, and their last use recorded.
const DASHBOARD_TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// The user a dashboard session cookie stands for, or `None` when it stands for no active
/// session. A session idle for longer than `COFFER_WEB_IDLE_TIMEOUT` is ended here.
pub async fn dashboard_session(state: &AppState, cookie: &str) -> ApiResult<Option<Principal>> {
    if !cookie.starts_with(WEB_SESSION_PREFIX) || cookie.len() > 128 {
        return Ok(None);
    }
    let hash = tokens::hash(cookie);
    let Some(row) = db::sessions::web_session_by_hash(state.db.pool(), &hash).await? else {
        return Ok(None);
    };
    let now = Timestamp::now();
    if row.revoked_at.is_some() || row.expires_at <= now {
        return Ok(None);
    }
    let last_seen = row.last_seen_at.unwrap_or(now);
    if last_seen.plus(state.config.web_idle_timeout()) <= now {
        let mut tx = state.db.begin().await?;
        db::sessions::revoke_session(&mut *tx, row.id, "idle", now).await?;
        tx.changed(Change::Session(row.id));
        tx.commit().await?;
        state.forget_session(row.id);
        return Ok(None);
    }
    if last_seen.plus(DASHBOARD_TOUCH_INTERVAL) <= now {
        let _turn = state.db.write_turn().await;
        db::sessions::touch_web_session(state.db.pool(), row.id, now).await?;
    }
    Ok(Some(Principal {
        user_id: row.user_id,
        credential: crate::auth::Credential::Session(row.id),
    }))
}

/// The caller's active sessions, newest first (at most 100).
pub async fn sessions(
    state: &AppState,
    principal: &Principal,
) -> ApiResult<Vec<db::sessions::SessionInfo>> {
    Ok(
        db::sessions::active_sessions(state.db.pool(), principal.user_id, Timestamp::now(), 100)
            .await?,
    )
}

/// Ends one of the caller's sessions (`None`: every one but the current).
pub async fn end_sessions(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    which: Option<SessionId>,
) -> ApiResult<usize> {
    let current = principal.require_session("ending sessions")?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let ended = match which {
        Some(id) => {
            if !db::sessions::owned_session(&mut *tx, principal.user_id, id, now).await? {
                return Err(ApiError::not_found("session"));
            }
            db::sessions::revoke_session(&mut *tx, id, "ended_by_user", now).await?;
            vec![id]
        }
        None => {
            db::sessions::revoke_other_sessions(
                &mut *tx,
                principal.user_id,
                Some(current),
                "ended_by_user",
                now,
            )
            .await?
        }
    };
    for id in &ended {
        tx.changed(Change::Session(*id));
    }
    AuditEvent::new(action::SESSIONS_ENDED, Outcome::Success, meta)
        .by(principal)
        .details(json!({ "sessions_ended": ended.len() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    for id in &ended {
        state.forget_session(*id);
    }
    Ok(ended.len())
}

/// Ends a session whose already-used refresh token was presented again: someone else may hold
/// the newer one, so the whole family goes.
async fn refresh_reuse(state: &AppState, meta: &ClientMeta, token: &RefreshTokenRow) -> ApiError {
    let now = Timestamp::now();
    let result: Result<(), sqlx::Error> = async {
        let mut tx = state.db.begin().await?;
        db::sessions::revoke_session(&mut *tx, token.session_id, "refresh_token_reuse", now)
            .await?;
        tx.changed(Change::Session(token.session_id));
        AuditEvent::new(action::REFRESH_REUSE_DETECTED, Outcome::Denied, meta)
            .about_user(Some(token.user_id))
            .target("session", token.session_id)
            .record(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await;
    state.forget_session(token.session_id);
    match result {
        Ok(()) => ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; the session has been ended for safety",
        ),
        Err(e) => e.into(),
    }
}

pub async fn refresh(
    state: &AppState,
    meta: &ClientMeta,
    refresh_token: &SecretString,
) -> ApiResult<(UserId, IssuedTokens)> {
    let invalid =
        || ApiError::unauthorized("invalid_token", "the refresh token is invalid or expired");
    rate_limit(state, Limit::RefreshPerIp, meta.ip_key(), None, meta).await?;
    let hash = tokens::hash(refresh_token.expose_secret());
    let token = db::sessions::refresh_token_by_hash(state.db.pool(), &hash)
        .await?
        .ok_or_else(invalid)?;
    let now = Timestamp::now();
    if token.used_at.is_some() {
        return Err(refresh_reuse(state, meta, &token).await);
    }
    if token.session_revoked_at.is_some()
        || token.session_expires_at <= now
        || token.expires_at <= now
    {
        return Err(invalid());
    }
    rate_limit(
        state,
        Limit::RefreshPerAccount,
        &token.user_id.to_string(),
        Some(token.user_id),
        meta,
    )
    .await?;

    let mut tx = state.db.begin().await?;
    if !db::sessions::mark_refresh_token_used(&mut *tx, token.id, now).await? {
        // Used concurrently by someone else between our read and this write.
        drop(tx);
        return Err(refresh_reuse(state, meta, &token).await);
    }
    let next = tokens::generate(REFRESH_TOKEN_PREFIX);
    let expires = now
        .plus(state.config.refresh_token_ttl())
        .min(token.session_expires_at);
    db::sessions::insert_refresh_token(
        &mut *tx,
        token.session_id,
        &tokens::hash(next.expose_secret()),
        now,
        expires,
    )
    .await?;
    AuditEvent::new(action::REFRESH, Outcome::Success, meta)
        .by_user(token.user_id)
        .target("session", token.session_id)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    let access_token = state
        .jwt
        .issue(token.user_id, token.session_id, now)
        .map_err(ApiError::internal)?;
    Ok((
        token.user_id,
        IssuedTokens {
            access_token,
            refresh_token: next,
            expires_in: state.jwt.ttl(),
        },
    ))
}

pub async fn logout(state: &AppState, meta: &ClientMeta, principal: &Principal) -> ApiResult<()> {
    let session = principal.require_session("logging out")?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    db::sessions::revoke_session(&mut *tx, session, "logout", now).await?;
    tx.changed(Change::Session(session));
    AuditEvent::new(action::LOGOUT, Outcome::Success, meta)
        .by(principal)
        .target("session", session)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.forget_session(session);
    Ok(())
}

pub async fn me(state: &AppState, principal: &Principal) -> ApiResult<UserRow> {
    db::users::by_id(state.db.pool(), principal.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the account no longer exists"))
}

/// Changes the name the user is shown by.
pub async fn rename(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    name: &str,
) -> ApiResult<UserRow> {
    let mut user = me(state, principal).await?;
    let name = check_name(name)?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    db::users::set_name(&mut *tx, user.id, &name, now).await?;
    AuditEvent::new(action::PROFILE_UPDATED, Outcome::Success, meta)
        .by(principal)
        .details(json!({ "fields": ["name"] }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    user.name = name;
    Ok(user)
}

/// Changes the password; every other session of the user ends, and with `revoke_api_keys`
/// their personal API keys are revoked too, in the same transaction.
pub async fn change_password(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    current: &SecretString,
    new: &SecretString,
    revoke_api_keys: bool,
) -> ApiResult<()> {
    let session = principal.require_session("changing the password")?;
    let user = me(state, principal).await?;
    let reservation = reserve_failure(state, &user.email, Some(user.id), meta).await?;
    if !state
        .passwords
        .verify(current, Some(&user.password_hash))
        .await?
        .matches
    {
        reservation.failed();
        AuditEvent::new(action::PASSWORD_CHANGED, Outcome::Failure, meta)
            .by(principal)
            .details(json!({ "reason": "wrong_current_password" }))
            .commit(&state.db)
            .await?;
        return Err(ApiError::forbidden(
            "wrong_password",
            "the current password is not correct",
        ));
    }
    drop(reservation);
    check_password_policy(new, &[&user.email, &user.name])?;
    if new.expose_secret() == current.expose_secret() {
        return Err(ApiError::validation(
            "password_unchanged",
            "the new password must differ from the current one",
        ));
    }
    let hash = state.passwords.hash(new).await?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    db::users::set_password_hash(&mut *tx, user.id, &hash, now).await?;
    let ended = db::sessions::revoke_other_sessions(
        &mut *tx,
        user.id,
        Some(session),
        "password_changed",
        now,
    )
    .await?;
    for id in &ended {
        tx.changed(Change::Session(*id));
    }
    let keys_revoked = if revoke_api_keys {
        db::api_keys::revoke_all(&mut *tx, user.id, now).await?
    } else {
        0
    };
    AuditEvent::new(action::PASSWORD_CHANGED, Outcome::Success, meta)
        .by(principal)
        .details(json!({ "sessions_ended": ended.len(), "api_keys_revoked": keys_revoked }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    for id in &ended {
        state.forget_session(*id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(
            normalize_email("  Ann@Example.COM ").ok().as_deref(),
            Some("ann@example.com")
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@@example.com",
            "ann@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
