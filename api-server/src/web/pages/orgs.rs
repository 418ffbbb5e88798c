//! The home page (organizations), creating an organization, accepting an invitation.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{FormError, Layout};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::{SignedIn, WebContext};
use crate::web::{WebError, render, urlencode};

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    layout: Layout,
    name: String,
    org_name: String,
    org_slug: String,
    error: FormError,
}

async fn home_page(
    state: &AppState,
    who: &SignedIn,
    org_name: String,
    org_slug: String,
    error: FormError,
) -> Result<Response, WebError> {
    let layout = Layout::signed_in(state, who, None, "Home", "home").await?;
    let name = layout
        .user
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    render(&HomePage {
        layout,
        name,
        org_name,
        org_slug,
        error,
    })
}

/// `/`: the sign-in page for visitors; a user with exactly one organization goes straight to
/// it, others choose (or create their first).
pub async fn home(State(state): State<AppState>, ctx: WebContext) -> Result<Response, WebError> {
    let Some(principal) = ctx.principal else {
        return Ok(Redirect::to("/login").into_response());
    };
    let who = SignedIn {
        principal,
        csrf: ctx.csrf,
        cookies: ctx.cookies,
    };
    let orgs = service::orgs::list(&state, &who.principal, None, 2).await?;
    if let [only] = orgs.as_slice() {
        return Ok(Redirect::to(&format!("/orgs/{}", only.slug)).into_response());
    }
    home_page(
        &state,
        &who,
        String::new(),
        String::new(),
        FormError::none(),
    )
    .await
}

#[derive(Deserialize)]
pub struct CreateOrgForm {
    name: String,
    slug: String,
}

pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Form(form): Form<CreateOrgForm>,
) -> Result<Response, WebError> {
    match service::orgs::create(&state, &meta, &who.principal, &form.name, &form.slug).await {
        Ok(ctx) => Ok(Redirect::to(&format!("/orgs/{}", ctx.org.slug)).into_response()),
        Err(e) => {
            let status = e.status();
            let page =
                home_page(&state, &who, form.name, form.slug, FormError::from_api(&e)).await?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "invitation.html")]
struct InvitationPage {
    layout: Layout,
    email: String,
    error: FormError,
}

/// An invitation link: visitors sign in (or up) first and come back here.
pub async fn invitation_page(
    State(state): State<AppState>,
    ctx: WebContext,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    let Some(principal) = ctx.principal else {
        let back = urlencode(&format!("/invitations/{token}"));
        return Ok(Redirect::to(&format!("/signup?next={back}")).into_response());
    };
    let who = SignedIn {
        principal,
        csrf: ctx.csrf,
        cookies: ctx.cookies,
    };
    let layout = Layout::signed_in(&state, &who, None, "Invitation", "home").await?;
    let email = layout
        .user
        .as_ref()
        .map(|u| u.email.clone())
        .unwrap_or_default();
    render(&InvitationPage {
        layout,
        email,
        error: FormError::none(),
    })
}

pub async fn accept_invitation(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    match service::orgs::accept(&state, &meta, &who.principal, &token).await {
        Ok(ctx) => Ok(Redirect::to(&format!("/orgs/{}", ctx.org.slug)).into_response()),
        Err(e) => {
            let status = e.status();
            let layout = Layout::signed_in(&state, &who, None, "Invitation", "home").await?;
            let email = layout
                .user
                .as_ref()
                .map(|u| u.email.clone())
                .unwrap_or_default();
            let page = render(&InvitationPage {
                layout,
                email,
                error: FormError {
                    message: Some(
                        "This invitation cannot be used: it expired, was revoked or used, or is for another email address."
                            .to_owned(),
                    ),
                    field: None,
                },
            })?;
            Ok((status, page).into_response())
        }
    }
}
