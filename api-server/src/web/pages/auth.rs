//! Signing in and out, signing up, resetting a password with a link.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use secrecy::SecretString;
use serde::Deserialize;

use super::{FormError, Layout};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::{SignedIn, WebContext, is_local_path};
use crate::web::{WebError, render};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    email: String,
    next: String,
    notice: Option<&'static str>,
    error: FormError,
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

/// Where to go after signing in: `next` when it is a page of this site.
fn next_page(next: Option<&str>) -> String {
    next.filter(|n| is_local_path(n)).unwrap_or("/").to_owned()
}

pub async fn login_page(ctx: WebContext, Query(q): Query<NextQuery>) -> Result<Response, WebError> {
    if ctx.principal.is_some() {
        return Ok(Redirect::to(&next_page(q.next.as_deref())).into_response());
    }
    let notice = match q.done.as_deref() {
        Some("reset") => Some("Your password was changed. Sign in with the new one."),
        Some("signed-out") => Some("You are signed out."),
        _ => None,
    };
    render(&LoginPage {
        layout: Layout::anonymous(&ctx, "Sign in"),
        email: String::new(),
        next: next_page(q.next.as_deref()),
        notice,
        error: FormError::none(),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    email: String,
    password: SecretString,
    #[serde(default)]
    next: Option<String>,
}

/// A session cookie for `value`, and the page to go to.
fn signed_in(
    ctx: &WebContext,
    state: &AppState,
    jar: CookieJar,
    value: SecretString,
    next: &str,
) -> Response {
    use secrecy::ExposeSecret as _;
    let cookie = ctx.cookies.session_cookie(
        value.expose_secret().to_owned(),
        state.config.session_max_lifetime(),
    );
    (jar.add(cookie), Redirect::to(next)).into_response()
}

pub async fn login(
    State(state): State<AppState>,
    ctx: WebContext,
    meta: ClientMeta,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let next = next_page(form.next.as_deref());
    match service::auth::login_dashboard(&state, &meta, &form.email, &form.password).await {
        Ok((_, cookie)) => Ok(signed_in(&ctx, &state, jar, cookie, &next)),
        Err(e) => {
            let status = e.status();
            let page = render(&LoginPage {
                layout: Layout::anonymous(&ctx, "Sign in"),
                email: form.email,
                next,
                notice: None,
                error: FormError::from_api(&e),
            })?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "signup.html")]
struct SignupPage {
    layout: Layout,
    name: String,
    email: String,
    next: String,
    error: FormError,
}

pub async fn signup_page(
    ctx: WebContext,
    Query(q): Query<NextQuery>,
) -> Result<Response, WebError> {
    if ctx.principal.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    render(&SignupPage {
        layout: Layout::anonymous(&ctx, "Sign up"),
        name: String::new(),
        email: String::new(),
        next: next_page(q.next.as_deref()),
        error: FormError::none(),
    })
}

#[derive(Deserialize)]
pub struct SignupForm {
    name: String,
    email: String,
    password: SecretString,
    #[serde(default)]
    next: Option<String>,
}

pub async fn signup(
    State(state): State<AppState>,
    ctx: WebContext,
    meta: ClientMeta,
    jar: CookieJar,
    Form(form): Form<SignupForm>,
) -> Result<Response, WebError> {
    let next = next_page(form.next.as_deref());
    match service::auth::register_dashboard(&state, &meta, &form.email, &form.password, &form.name)
        .await
    {
        Ok((_, cookie)) => Ok(signed_in(&ctx, &state, jar, cookie, &next)),
        Err(e) => {
            let status = e.status();
            let page = render(&SignupPage {
                layout: Layout::anonymous(&ctx, "Sign up"),
                name: form.name,
                email: form.email,
                next,
                error: FormError::from_api(&e),
            })?;
            Ok((status, page).into_response())
        }
    }
}

/// Ends the session and removes its cookie.
pub async fn logout(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    jar: CookieJar,
) -> Result<Response, WebError> {
    service::auth::logout(&state, &meta, &who.principal).await?;
    Ok((
        jar.add(who.cookies.session_removal()),
        Redirect::to("/login?done=signed-out"),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage {
    layout: Layout,
    error: FormError,
}

pub async fn reset_page(ctx: WebContext, Path(_token): Path<String>) -> Result<Response, WebError> {
    render(&ResetPage {
        layout: Layout::anonymous(&ctx, "Reset password"),
        error: FormError::none(),
    })
}

#[derive(Deserialize)]
pub struct ResetForm {
    password: SecretString,
}

/// Sets the password a reset link is for; every session of the account ends, this browser's
/// too (its cookie is removed).
pub async fn reset(
    State(state): State<AppState>,
    ctx: WebContext,
    meta: ClientMeta,
    jar: CookieJar,
    Path(token): Path<String>,
    Form(form): Form<ResetForm>,
) -> Result<Response, WebError> {
    let token = SecretString::from(token);
    match service::password_reset::redeem(&state, &meta, &token, &form.password).await {
        Ok(()) => Ok((
            jar.add(ctx.cookies.session_removal()),
            Redirect::to("/login?done=reset"),
        )
            .into_response()),
        Err(e) => {
            let status = e.status();
            let page = render(&ResetPage {
                layout: Layout::anonymous(&ctx, "Reset password"),
                error: FormError::from_api(&e),
            })?;
            Ok((status, page).into_response())
        }
    }
}
