//! Browser sessions: a cookie naming a session of the same model as the API's (see
//! `service::auth::dashboard_session`), and CSRF protection for every request that may change
//! something.
//!
//! Cookies are `HttpOnly` and `SameSite=Lax`; `Secure` with the `__Host-` prefix under TLS or in
//! production. A request that is not GET/HEAD/OPTIONS must come from this site (`Sec-Fetch-Site`
//! and `Origin`, when the browser sends them) and carry the CSRF token of the page it came
//! from, as the `X-CSRF-Token` header (htmx sends it) or the `csrf` form field. The token is an
//! HMAC of the session's id, or, before sign-in, of a random value held in a cookie of its own.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::ExposeSecret as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::auth::{Credential, Principal};
use crate::service;
use crate::state::AppState;

use super::WebError;

/// The header htmx sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field a plain form sends it in.
pub const CSRF_FIELD: &str = "csrf";

/// The cookies' names: `__Host-` prefixed when they are `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct CookieNames {
    pub session: &'static str,
    pub csrf: &'static str,
    pub secure: bool,
}

impl CookieNames {
    pub fn new(secure: bool) -> Self {
        if secure {
            Self {
                session: "__Host-coffer_session",
                csrf: "__Host-coffer_csrf",
                secure,
            }
        } else {
            Self {
                session: "coffer_session",
                csrf: "coffer_csrf",
                secure,
            }
        }
    }

    fn cookie(&self, name: &'static str, value: String) -> Cookie<'static> {
        Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .build()
    }

    /// The session cookie for a new session of `lifetime`.
    pub fn session_cookie(&self, value: String, lifetime: std::time::Duration) -> Cookie<'static> {
        let mut cookie = self.cookie(self.session, value);
        cookie.set_max_age(time::Duration::try_from(lifetime).ok());
        cookie
    }

    /// Removes the session cookie.
    pub fn session_removal(&self) -> Cookie<'static> {
        let mut cookie = self.cookie(self.session, String::new());
        cookie.set_max_age(time::Duration::ZERO);
        cookie
    }
}

/// What every dashboard request knows once [`layer`] has run.
#[derive(Debug, Clone)]
pub struct WebContext {
    /// The signed-in user, if any.
    pub principal: Option<Principal>,
    /// The CSRF token pages embed in their forms.
    pub csrf: String,
    pub cookies: CookieNames,
}

/// A dashboard request by a signed-in user; others are sent to the sign-in page.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub csrf: String,
    pub cookies: CookieNames,
}

impl FromRequestParts<AppState> for WebContext {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, WebError> {
        parts
            .extensions
            .get::<WebContext>()
            .cloned()
            .ok_or_else(|| WebError::Internal("the dashboard's session layer did not run".into()))
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let ctx = WebContext::from_request_parts(parts, state).await?;
        match ctx.principal {
            Some(principal) => Ok(Self {
                principal,
                csrf: ctx.csrf,
                cookies: ctx.cookies,
            }),
            None => Err(WebError::SignIn {
                next: sign_in_return(parts),
            }),
        }
    }
}

/// Where to come back to after signing in: this page, when it is one (GET, not a fragment).
fn sign_in_return(parts: &Parts) -> Option<String> {
    let fragment = parts.headers.contains_key("hx-request");
    (parts.method == Method::GET && !fragment)
        .then(|| parts.uri.path().to_owned())
        .filter(|p| is_local_path(p))
}

/// A path on this site, safe to redirect to: `/…` but not `//…` or `/\…` (other hosts).
pub fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= 512
        && !path.chars().any(|c| c.is_control())
}

fn csrf_token(state: &AppState, binding: &str) -> String {
    type HmacSha256 = Hmac<Sha256>;
    let mut mac = match HmacSha256::new_from_slice(state.keys.jwt_secret.expose_secret().as_bytes())
    {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(b"coffer dashboard csrf\0");
    mac.update(binding.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn random_value() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the browser says the request comes from another origin. `Sec-Fetch-Site`, which
/// every current browser sends, decides; without it, an `Origin` naming another host does.
/// (`Origin: null` is what Chromium sends on a same-origin form under `Referrer-Policy:
/// no-referrer`: it says nothing, and the CSRF token still has to match.)
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null");
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            authority != Some(host)
        }
        (Some(_), None) => true,
    }
}

/// The CSRF token a request carries: its header, or the `csrf` field of a URL-encoded form
/// (the body is read, within the body limit, and put back).
async fn presented_token(req: Request) -> Result<(Request, Option<String>), WebError> {
    if let Some(token) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        let token = token.to_owned();
        return Ok((req, Some(token)));
    }
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|_| WebError::Api(crate::error::ApiError::PayloadTooLarge))?;
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

/// Runs before every dashboard route: finds the session, checks CSRF on state-changing
/// requests, and gives the handlers a [`WebContext`].
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cookies = CookieNames::new(state.config.secure_cookies());
    let jar = CookieJar::from_headers(req.headers());
    let principal = match jar.get(cookies.session) {
        Some(c) => match service::auth::dashboard_session(&state, c.value()).await {
            Ok(p) => p,
            Err(e) => return WebError::Api(e).into_response(),
        },
        None => None,
    };
    let existing_nonce = jar
        .get(cookies.csrf)
        .map(|c| c.value().to_owned())
        .filter(|v| (16..=64).contains(&v.len()));
    let nonce = existing_nonce.clone().unwrap_or_else(random_value);
    let binding = match principal.map(|p| p.credential) {
        Some(Credential::Session(id)) => format!("session:{id}"),
        _ => format!("nonce:{nonce}"),
    };
    let csrf = csrf_token(&state, &binding);

    let mut req = req;
    if !is_safe(req.method()) {
        if cross_site(req.headers()) {
            return WebError::Csrf.into_response();
        }
        let (back, presented) = match presented_token(req).await {
            Ok(found) => found,
            Err(e) => return e.into_response(),
        };
        req = back;
        let valid = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(csrf.as_bytes())));
        if !valid {
            return WebError::Csrf.into_response();
        }
    }
    req.extensions_mut().insert(WebContext {
        principal,
        csrf,
        cookies,
    });
    let mut response = next.run(req).await;
    if existing_nonce.is_none() {
        let cookie = cookies.cookie(cookies.csrf, nonce);
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_returned_to() {
        assert!(is_local_path("/orgs/acme"));
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "",
            "/a\nb",
        ] {
            assert!(!is_local_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!cross_site(&headers(&[("host", "a:1")])));
        assert!(!cross_site(&headers(&[
            ("host", "a:1"),
            ("origin", "http://a:1")
        ])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[
            ("host", "a:1"),
            ("origin", "http://b:1")
        ])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        // Chromium under `Referrer-Policy: no-referrer`, on its own form.
        assert!(!cross_site(&headers(&[
            ("host", "a:1"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!cross_site(&headers(&[
            ("host", "a:1"),
            ("origin", "null")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "http://a:1"),
            ("sec-fetch-site", "cross-site")
        ])));
    }
}
