//! The dashboard's pages, grouped as the navigation groups them.

pub mod access;
pub mod analytics;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod dynamic;
pub mod environments;
pub mod members;
pub mod orgs;
pub mod projects;
pub mod secrets;
pub mod service_tokens;
pub mod settings;
pub mod teams;
pub mod transfer;
pub mod webhooks;

use crate::authz::OrgRole;
use crate::error::ApiError;
use crate::ids::Timestamp;
use crate::service;
use crate::service::tenancy::OrgCtx;
use crate::state::AppState;

use super::assets::{AssetUrls, URLS};
use super::session::{SignedIn, WebContext};

/// Most organizations the switcher lists.
const MAX_ORGS_LISTED: u32 = 100;

/// What every page's frame shows: the user, their organizations, the navigation.
#[derive(Debug)]
pub struct Layout {
    pub title: String,
    pub csrf: String,
    pub assets: &'static AssetUrls,
    pub user: Option<UserView>,
    pub orgs: Vec<OrgLink>,
    pub org: Option<OrgNav>,
    /// The navigation entry to mark current.
    pub section: &'static str,
}

#[derive(Debug)]
pub struct UserView {
    pub name: String,
    pub email: String,
}

#[derive(Debug)]
pub struct OrgLink {
    pub slug: String,
    pub name: String,
}

/// The organization the page is in, and what the user may do there.
#[derive(Debug)]
pub struct OrgNav {
    pub slug: String,
    pub name: String,
    pub role: &'static str,
    /// Owner or admin.
    pub admin: bool,
}

impl OrgNav {
    pub fn of(ctx: &OrgCtx) -> Self {
        Self {
            slug: ctx.org.slug.clone(),
            name: ctx.org.name.clone(),
            role: ctx.role.map_or("none", OrgRole::as_str),
            admin: ctx.role >= Some(OrgRole::Admin),
        }
    }
}

impl Layout {
    /// The frame of a page for someone not signed in.
    pub fn anonymous(ctx: &WebContext, title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            csrf: ctx.csrf.clone(),
            assets: &URLS,
            user: None,
            orgs: Vec::new(),
            org: None,
            section: "",
        }
    }

    /// The frame of a signed-in user's page, in `org` if it is an organization's.
    pub async fn signed_in(
        state: &AppState,
        who: &SignedIn,
        org: Option<&OrgCtx>,
        title: impl Into<String>,
        section: &'static str,
    ) -> Result<Self, ApiError> {
        let user = service::auth::me(state, &who.principal).await?;
        let orgs = service::orgs::list(state, &who.principal, None, MAX_ORGS_LISTED)
            .await?
            .into_iter()
            .map(|o| OrgLink {
                slug: o.slug,
                name: o.name,
            })
            .collect();
        Ok(Self {
            title: title.into(),
            csrf: who.csrf.clone(),
            assets: &URLS,
            user: Some(UserView {
                name: user.name,
                email: user.email,
            }),
            orgs,
            org: org.map(OrgNav::of),
            section,
        })
    }

    pub fn in_section(&self, section: &str) -> bool {
        self.section == section
    }
}

/// A form's refusal: the message, and the field it concerns when one does.
#[derive(Debug, Default)]
pub struct FormError {
    pub message: Option<String>,
    pub field: Option<&'static str>,
}

impl FormError {
    pub fn none() -> Self {
        Self::default()
    }

    /// The refusal of a service, placed next to the field its code names.
    pub fn from_api(e: &ApiError) -> Self {
        let code = e.code();
        let field = field_of(code);
        Self {
            message: Some(super::api_message(e)),
            field,
        }
    }

    /// Whether the message concerns `field` (shown next to it).
    pub fn on(&self, field: &str) -> bool {
        self.message.is_some() && self.field == Some(field)
    }

    /// The message when it concerns no particular field (shown above the form).
    pub fn general(&self) -> Option<&str> {
        match self.field {
            None => self.message.as_deref(),
            Some(_) => None,
        }
    }

    pub fn text(&self) -> &str {
        self.message.as_deref().unwrap_or_default()
    }
}

/// The form field an error code is about.
fn field_of(code: &str) -> Option<&'static str> {
    let fields: &[(&str, &'static str)] = &[
        ("email", "email"),
        ("password", "password"),
        ("name", "name"),
        ("slug", "slug"),
        ("key", "key"),
        ("value", "value"),
        ("comment", "comment"),
        ("role", "role"),
        ("url", "url"),
    ];
    if code == "invalid_credentials" {
        return Some("password");
    }
    fields
        .iter()
        .find(|(part, _)| code.contains(part))
        .map(|(_, field)| *field)
}

/// A time as pages show it: `2026-11-30 08:15 UTC`.
pub fn when(t: Timestamp) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_land_next_to_their_field() {
        assert_eq!(field_of("invalid_email"), Some("email"));
        assert_eq!(field_of("weak_password"), Some("password"));
        assert_eq!(field_of("invalid_credentials"), Some("password"));
        assert_eq!(field_of("slug_taken"), Some("slug"));
        assert_eq!(field_of("concurrent_write"), None);
    }

    #[test]
    fn times_are_shown_in_utc_to_the_minute() {
        assert_eq!(when(Timestamp(0)), "1970-01-01 00:00 UTC");
    }
}
