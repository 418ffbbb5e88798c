//! The user's personal API keys: list, create, rotate, revoke.
//!
//! A token is in one page only: the answer to the request that created or rotated it (so that
//! answer is a page, not a redirect); the list shows prefixes, never tokens.
//!
//! Also what the service tokens page shares with this one: the panel of a token shown once,
//! and the answer to a change made with a plain form or with htmx.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{FormError, Layout, when};
use crate::error::ApiError;
use crate::ids::{ApiKeyId, Timestamp};
use crate::service::api_keys::{MAX_EXPIRY_DAYS, MAX_GRACE_PERIOD};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most keys the page lists.
const PAGE: u32 = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api-keys", get(list).post(create))
        .route("/api-keys/{id}/rotate", post(rotate))
        .route("/api-keys/{id}/revoke", post(revoke))
}

/// A token just issued, shown in this answer only.
#[derive(Debug)]
pub struct IssuedToken {
    /// The panel's heading: "API key “ci” created", …
    pub title: String,
    pub token: SecretString,
    /// Whether it replaces a previous token.
    pub rotated: bool,
    /// Until when the previous token still works (`None`: it already stopped).
    pub previous_until: Option<String>,
}

impl IssuedToken {
    pub fn new(
        title: String,
        token: SecretString,
        previous: Option<Timestamp>,
        rotated: bool,
    ) -> Self {
        Self {
            title,
            token,
            rotated,
            previous_until: previous.filter(|t| *t > Timestamp::now()).map(when),
        }
    }

    /// The token, for the page that shows it once.
    pub fn value(&self) -> &str {
        self.token.expose_secret()
    }
}

/// Back to `to` after a change: a redirect (PRG) for a plain form; for htmx, which would follow
/// a redirect and swap the page into the form, an `HX-Location` to load instead.
pub fn back_to(to: &str, headers: &HeaderMap) -> Response {
    if headers.contains_key("hx-request") {
        let mut response = ().into_response();
        if let Ok(v) = HeaderValue::from_str(to) {
            response.headers_mut().insert("hx-location", v);
        }
        response
    } else {
        Redirect::to(to).into_response()
    }
}

/// A refusal placed next to the field its code concerns: `fields` maps codes the shared
/// mapping does not know to this form's fields.
pub fn refusal(e: &ApiError, fields: &[(&str, &'static str)]) -> FormError {
    let mut error = FormError::from_api(e);
    if let Some((_, field)) = fields.iter().find(|(code, _)| *code == e.code()) {
        error.field = Some(field);
    }
    error
}

/// `expires_in_days` as typed: empty for no expiry.
pub fn parse_days(text: &str) -> Result<Option<u32>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::validation(
            "invalid_expiry",
            format!(
                "the expiry must be a number of days from 1 to {MAX_EXPIRY_DAYS}, or empty for none"
            ),
        )
    })
}

/// The grace periods a rotation offers, in seconds, with their labels.
pub const GRACE_PERIODS: &[(u64, &str)] = &[
    (0, "No grace period: the old token stops now"),
    (3_600, "1 hour"),
    (86_400, "1 day"),
    (604_800, "7 days"),
];

/// The grace period a rotation form asked for.
pub fn parse_grace(text: Option<&str>) -> Result<Duration, ApiError> {
    let seconds: u64 = match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t.parse().map_err(|_| {
            ApiError::validation(
                "invalid_grace_period",
                "choose a grace period from the list",
            )
        })?,
    };
    let grace = Duration::from_secs(seconds);
    if grace > MAX_GRACE_PERIOD {
        return Err(ApiError::validation(
            "invalid_grace_period",
            "choose a grace period from the list",
        ));
    }
    Ok(grace)
}

/// An API key as the list shows it.
#[derive(Debug)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub read_only: bool,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub expired: bool,
    /// Until when the previous token (before a rotation) still works.
    pub previous_until: Option<String>,
}

/// What the creation form holds, kept when it is refused.
#[derive(Debug, Default, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    /// `read` or `read-write`.
    #[serde(default)]
    access: String,
    #[serde(default)]
    expires_in_days: String,
}

impl CreateForm {
    pub fn read_write(&self) -> bool {
        self.access == "read-write"
    }
}

#[derive(Template)]
#[template(path = "api_keys.html")]
struct ApiKeysPage {
    layout: Layout,
    keys: Vec<KeyView>,
    form: CreateForm,
    error: FormError,
    issued: Option<IssuedToken>,
    notice: Option<&'static str>,
    grace_periods: &'static [(u64, &'static str)],
}

async fn page(
    state: &AppState,
    who: &SignedIn,
    form: CreateForm,
    error: FormError,
    issued: Option<IssuedToken>,
    notice: Option<&'static str>,
) -> Result<Response, WebError> {
    let now = Timestamp::now();
    let keys = service::api_keys::list(state, &who.principal, None, PAGE)
        .await?
        .into_iter()
        .take(PAGE as usize)
        .map(|k| KeyView {
            id: k.id.to_string(),
            read_only: k.read_only(),
            name: k.name,
            prefix: k.prefix,
            created: when(k.created_at),
            last_used: k.last_used_at.map_or_else(|| "never".to_owned(), when),
            expires: k.expires_at.map_or_else(|| "never".to_owned(), when),
            expired: k.expires_at.is_some_and(|t| t <= now),
            previous_until: k.previous_expires_at.filter(|t| *t > now).map(when),
        })
        .collect();
    let layout = Layout::signed_in(state, who, None, "API keys", "api-keys").await?;
    render(&ApiKeysPage {
        layout,
        keys,
        form,
        error,
        issued,
        notice,
        grace_periods: GRACE_PERIODS,
    })
}

#[derive(Debug, Deserialize)]
pub struct NoticeQuery {
    #[serde(default)]
    done: Option<String>,
}

/// `/api-keys`
pub async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, WebError> {
    let notice = match query.done.as_deref() {
        Some("revoked") => Some("The API key was revoked: its token no longer works."),
        _ => None,
    };
    page(
        &state,
        &who,
        CreateForm::default(),
        FormError::none(),
        None,
        notice,
    )
    .await
}

/// Creates a key; the answer is the page with its token, this once.
pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Form(form): Form<CreateForm>,
) -> Result<Response, WebError> {
    let created = match parse_days(&form.expires_in_days) {
        Ok(days) => {
            service::api_keys::create(
                &state,
                &meta,
                &who.principal,
                &form.name,
                days,
                !form.read_write(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(issued) => {
            let shown = IssuedToken::new(
                format!("API key “{}” created", issued.key.name),
                issued.token,
                None,
                false,
            );
            page(
                &state,
                &who,
                CreateForm::default(),
                FormError::none(),
                Some(shown),
                None,
            )
            .await
        }
        Err(e) => {
            let status = e.status();
            let error = refusal(&e, &[("invalid_expiry", "expires_in_days")]);
            let page = page(&state, &who, form, error, None, None).await?;
            Ok((status, page).into_response())
        }
    }
}

fn parse_id(id: &str) -> Result<ApiKeyId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("api key"))
}

#[derive(Debug, Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    grace: Option<String>,
}

/// Rotates a key; the answer is the page with its new token, this once.
pub async fn rotate(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(id): Path<String>,
    Form(form): Form<RotateForm>,
) -> Result<Response, WebError> {
    let grace = parse_grace(form.grace.as_deref())?;
    let issued =
        service::api_keys::rotate(&state, &meta, &who.principal, parse_id(&id)?, grace).await?;
    let shown = IssuedToken::new(
        format!("API key “{}” rotated", issued.key.name),
        issued.token,
        issued.key.previous_expires_at,
        true,
    );
    page(
        &state,
        &who,
        CreateForm::default(),
        FormError::none(),
        Some(shown),
        None,
    )
    .await
}

/// Revokes a key at once.
pub async fn revoke(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    service::api_keys::revoke(&state, &meta, &who.principal, parse_id(&id)?).await?;
    Ok(back_to("/api-keys?done=revoked", &headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_expiry_is_none_and_text_is_refused() {
        assert_eq!(parse_days(" ").unwrap_or(Some(0)), None);
        assert_eq!(parse_days("30").ok().flatten(), Some(30));
        assert!(parse_days("soon").is_err());
    }

    #[test]
    fn grace_periods_are_bounded() {
        assert_eq!(parse_grace(None).ok(), Some(Duration::ZERO));
        assert_eq!(
            parse_grace(Some("3600")).ok(),
            Some(Duration::from_secs(3600))
        );
        assert!(parse_grace(Some("999999999")).is_err());
        assert!(parse_grace(Some("x")).is_err());
        for (seconds, _) in GRACE_PERIODS {
            assert!(parse_grace(Some(&seconds.to_string())).is_ok());
        }
    }
}
