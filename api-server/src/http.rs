//! HTTP plumbing shared by every route: middleware, the JSON and query extractors whose
//! rejections use the API error shape, the client's address, and pagination.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorBody, ErrorDetail, ErrorResponse, code_for_status};
use crate::service::ClientMeta;
use crate::state::AppState;

/// Shared with clients: a list page and a secret shown in a response.
pub use coffer_client::types::{Page, Revealed};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Renders every error response in the standard shape with the request id, whether it came
/// from a handler ([`ErrorBody`] extension) or from outside one (router, limits, panics).
pub async fn error_envelope(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<KeepBody>().is_some()
    {
        return response;
    }
    let body = response
        .extensions_mut()
        .remove::<ErrorBody>()
        .unwrap_or_else(|| {
            let (code, message) = code_for_status(status);
            ErrorBody {
                code: code.into(),
                message: message.into(),
            }
        });
    let document = ErrorResponse {
        error: ErrorDetail {
            code: body.code.into_owned(),
            message: body.message.into_owned(),
            request_id,
        },
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        parts
            .headers
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    let bytes = serde_json::to_vec(&document).unwrap_or_default();
    Response::from_parts(parts, Body::from(bytes))
}

/// Marks an error response whose body is already what the client should get (a dashboard
/// page): [`error_envelope`] leaves it alone.
#[derive(Debug, Clone, Copy)]
pub struct KeepBody;

/// Set by [`forget_changed_access`] on every request, and raised by [`mark_access_change`]
/// when the request may change who may do what.
#[derive(Debug, Clone, Default)]
pub struct AccessChange(Arc<AtomicBool>);

/// Forgets what [`crate::access`] remembers once the request is over, whether it answered,
/// failed, timed out, panicked or was cancelled by its client, if its route raised
/// [`AccessChange`].
struct ForgetWhenOver {
    state: AppState,
    change: AccessChange,
}

impl Drop for ForgetWhenOver {
    fn drop(&mut self) {
        if self.change.0.load(Ordering::Acquire) {
            self.state.access.forget_all();
            // The other replicas too, at once rather than within their time to live.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let state = self.state.clone();
                runtime.spawn(async move {
                    if let Err(e) = state.db.notify_access_changed().await {
                        tracing::warn!(error = %e, "cannot tell the other replicas that access changed");
                    }
                });
            }
        }
    }
}

/// Outer middleware: see [`AccessChange`]. It sits outside the timeout and panic layers so
/// that a change committed by a handler that then failed is still noticed.
pub async fn forget_changed_access(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let change = AccessChange::default();
    req.extensions_mut().insert(change.clone());
    let _forget = ForgetWhenOver { state, change };
    next.run(req).await
}

/// Route layer of every route except the secret data routes: any state-changing request
/// (anything but `GET`, `HEAD`, `OPTIONS`) may change credentials, membership, roles, grants,
/// policies, names or existence, so it makes [`forget_changed_access`] forget.
pub async fn mark_access_change(req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && let Some(change) = req.extensions().get::<AccessChange>()
    {
        change.0.store(true, Ordering::Release);
    }
    next.run(req).await
}

/// `Json<T>` whose rejections are API errors: 400 malformed, 415 wrong content type,
/// 413 too large, 422 missing or mistyped fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        // Every request body is an object (or `null` where it is optional); serde would also
        // read a struct from an array of its fields in order.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::validation(
                "invalid_field",
                "the request body must be a JSON object",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// `application/json`, or a `+json` type.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == "application"
                && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
}

fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::bad_request("bad_request", rejection.body_text())
    }
}

/// An optional JSON body: none when the request has no body and no content type.
impl<T, S> axum::extract::OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return <Self as FromRequest<S>>::from_request(req, state)
                .await
                .map(Some);
        }
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.is_empty() {
            Ok(None)
        } else {
            Err(ApiError::UnsupportedMediaType)
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", "the request body is not valid JSON")
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::validation("invalid_field", redact_values(&e.body_text()))
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::bad_request("bad_request", other.body_text()),
    }
}

/// serde quotes offending values in its messages (`invalid type: string "…"`); a value may be
/// a secret sent in the wrong field, so keep the field path and expectation, drop the value.
fn redact_values(message: &str) -> String {
    let message = message
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(message);
    for marker in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(start) = message.find(marker)
            && let Some(expected) = message[start..].find(", expected")
        {
            let kind = message[start + marker.len()..start + expected]
                .split([' ', '`', '"'])
                .next()
                .unwrap_or_default();
            return format!(
                "{}{marker}{kind}{}",
                &message[..start],
                &message[start + expected..]
            );
        }
    }
    message.to_owned()
}

/// `Query<T>` with a 400 in the standard shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request("invalid_query", redact_values(&e.body_text()))
            })
    }
}

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The extractor (not the bare extension) so that tests' `MockConnectInfo` is honoured.
        let peer = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .ok()
            .map(|c| c.0.ip());
        let ip = client_ip(
            peer,
            parts.headers.get_all(FORWARDED_FOR),
            state.config.trusted_proxy_hops(),
        );
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect());
        Ok(Self {
            ip: ip.map(|ip| ip.to_string()),
            user_agent,
        })
    }
}

const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address behind `trusted_hops` proxies that each append the address they were
/// connected from to `X-Forwarded-For` (several header lines are one list, in order).
///
/// Only the entries the trusted proxies appended can be believed: the client's own are to
/// their left. So the client is the entry `trusted_hops` places from the right (with one proxy,
/// the rightmost). With no trusted hops, fewer entries than hops, or an entry there that is not
/// an IP address, the peer address is used: never an entry the client could have written.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded: impl IntoIterator<Item = &'a HeaderValue>,
    trusted_hops: u32,
) -> Option<IpAddr> {
    let peer = peer.map(|ip| ip.to_canonical());
    let Some(skip) = (trusted_hops as usize).checked_sub(1) else {
        return peer;
    };
    let lines: Vec<&HeaderValue> = forwarded.into_iter().collect();
    let entry = lines
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','))
        .nth(skip);
    entry.and_then(parse_forwarded_ip).or(peer)
}

/// An `X-Forwarded-For` entry: an IPv4 or IPv6 address, bracketed or not, with or without a
/// port (some proxies add one). Anything else is not an address.
fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<std::net::Ipv6Addr>().ok())
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// The most items a page holds, and how many it holds by default.
pub const MAX_PAGE_LIMIT: u32 = 200;
pub const DEFAULT_PAGE_LIMIT: u32 = 50;

/// `?limit=`, 1 to [`MAX_PAGE_LIMIT`] (default [`DEFAULT_PAGE_LIMIT`]).
fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
        )),
    }
}

/// `?cursor=` read as `T`, when it has the documented form (`valid`). A cursor is the sort key
/// of the last item of the previous page, so any well-formed one names a place in the list.
fn page_cursor<T: std::str::FromStr>(
    cursor: Option<&str>,
    valid: fn(&str) -> bool,
    form: &str,
) -> Result<Option<T>, ApiError> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let invalid = || ApiError::bad_request("invalid_cursor", format!("cursor must be {form}"));
    if !valid(cursor) {
        return Err(invalid());
    }
    cursor.parse().map(Some).map_err(|_| invalid())
}

fn is_slug_cursor(c: &str) -> bool {
    (1..=63).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_id_cursor(c: &str) -> bool {
    uuid::Uuid::try_parse(c).is_ok_and(|u| u.hyphenated().to_string() == c)
}

fn is_number_cursor(c: &str) -> bool {
    (1..=10).contains(&c.len())
        && c.bytes().all(|b| b.is_ascii_digit())
        && c.parse::<u64>().is_ok_and(|n| n <= MAX_NUMBER_CURSOR)
}

/// The largest number cursor (a version, a position).
const MAX_NUMBER_CURSOR: u64 = i32::MAX as u64;

/// `?limit=&cursor=` of a list ordered by slug or name.
#[derive(Debug, Clone, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the slug the page starts after.
    #[param(pattern = r"^[a-z0-9-]{1,63}$")]
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<u32, ApiError> {
        page_limit(self.limit)
    }

    /// The slug after which the page starts.
    pub fn cursor<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        page_cursor(self.cursor.as_deref(), is_slug_cursor, "a slug")
    }
}

/// `?limit=&cursor=` of a list ordered by id.
#[derive(Debug, Clone, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdPageParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the id the page starts after (a lower-case UUID).
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

impl IdPageParams {
    pub fn limit(&self) -> Result<u32, ApiError> {
        page_limit(self.limit)
    }

    /// The id after which the page starts.
    pub fn cursor<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        page_cursor(self.cursor.as_deref(), is_id_cursor, "a lower-case UUID")
    }
}

/// `?limit=&cursor=` of a list ordered by number (versions, positions).
#[derive(Debug, Clone, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NumberPageParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the number the page starts after.
    #[param(value_type = Option<u32>, minimum = 0, maximum = 2147483647)]
    pub cursor: Option<String>,
}

impl NumberPageParams {
    pub fn limit(&self) -> Result<u32, ApiError> {
        page_limit(self.limit)
    }

    /// The number after which the page starts, at most 2147483647.
    pub fn cursor<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        page_cursor(
            self.cursor.as_deref(),
            is_number_cursor,
            "a whole number from 0 to 2147483647",
        )
    }
}

/// The server's side of [`Page`]: building pages, with cursors only this server reads back.
pub trait PageExt<T>: Sized {
    /// A list that is always whole (small by nature, e.g. a project's environments).
    fn complete(items: Vec<T>) -> Self;

    /// A page from `rows` fetched with `limit + 1`, so a further page is known to exist.
    fn from_rows<R>(
        rows: Vec<R>,
        limit: u32,
        key: impl Fn(&R) -> String,
        map: impl FnMut(R) -> T,
    ) -> Self;
}

impl<T> PageExt<T> for Page<T> {
    fn complete(items: Vec<T>) -> Self {
        Self {
            items,
            next_cursor: None,
        }
    }

    fn from_rows<R>(
        mut rows: Vec<R>,
        limit: u32,
        key: impl Fn(&R) -> String,
        map: impl FnMut(R) -> T,
    ) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = more.then(|| rows.last().map(&key)).flatten();
        Self {
            items: rows.into_iter().map(map).collect(),
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    fn pick(lines: &[&str], hops: u32) -> Option<IpAddr> {
        let values: Vec<HeaderValue> = lines
            .iter()
            .map(|l| HeaderValue::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        client_ip(ip("10.0.0.1"), &values, hops)
    }

    #[test]
    fn without_trusted_hops_the_header_is_ignored() {
        assert_eq!(pick(&["203.0.113.7"], 0), ip("10.0.0.1"));
        assert_eq!(pick(&[], 0), ip("10.0.0.1"));
    }

    #[test]
    fn one_hop_takes_the_rightmost_entry_whatever_the_client_put_before_it() {
        assert_eq!(pick(&["203.0.113.7"], 1), ip("203.0.113.7"));
        assert_eq!(pick(&["1.2.3.4, 203.0.113.7"], 1), ip("203.0.113.7"));
        assert_eq!(
            pick(&["garbage,1.2.3.4 ,  203.0.113.7 "], 1),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn two_hops_take_the_second_entry_from_the_right() {
        // client → load balancer (appends the client) → nginx (appends the balancer) → us
        assert_eq!(
            pick(&["6.6.6.6, 203.0.113.7, 10.0.0.2"], 2),
            ip("203.0.113.7")
        );
        assert_eq!(pick(&["203.0.113.7, 10.0.0.2"], 2), ip("203.0.113.7"));
    }

    #[test]
    fn several_header_lines_are_one_list_in_order() {
        assert_eq!(pick(&["6.6.6.6", "203.0.113.7"], 1), ip("203.0.113.7"));
        assert_eq!(
            pick(&["6.6.6.6, 203.0.113.7", "10.0.0.2"], 2),
            ip("203.0.113.7")
        );
        assert_eq!(
            pick(&["6.6.6.6", "203.0.113.7, 10.0.0.2"], 2),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_missing_or_malformed_entry_at_the_trusted_position_falls_back_to_the_peer() {
        assert_eq!(pick(&[], 1), ip("10.0.0.1"));
        assert_eq!(
            pick(&["203.0.113.7"], 2),
            ip("10.0.0.1"),
            "fewer entries than hops"
        );
        assert_eq!(pick(&["203.0.113.7, unknown"], 1), ip("10.0.0.1"));
        assert_eq!(pick(&["203.0.113.7, "], 1), ip("10.0.0.1"));
        assert_eq!(pick(&["203.0.113.7, 1.2.3.4.5"], 1), ip("10.0.0.1"));
        assert_eq!(pick(&["1.2.3.4, 203.0.113.7 10.0.0.2"], 1), ip("10.0.0.1"));
        // Not UTF-8 to the left of the trusted entry does not matter; at it, it is not an address.
        let odd =
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(client_ip(ip("10.0.0.1"), [&odd], 1), ip("203.0.113.7"));
        assert_eq!(client_ip(ip("10.0.0.1"), [&odd], 2), ip("10.0.0.1"));
        assert_eq!(client_ip(None, [&odd], 2), None);
    }

    #[test]
    fn addresses_with_ports_brackets_and_mapped_ipv4_are_understood() {
        assert_eq!(pick(&["203.0.113.7:4711"], 1), ip("203.0.113.7"));
        assert_eq!(pick(&["[2001:db8::7]:443"], 1), ip("2001:db8::7"));
        assert_eq!(pick(&["[2001:db8::7]"], 1), ip("2001:db8::7"));
        assert_eq!(pick(&["2001:db8::7"], 1), ip("2001:db8::7"));
        assert_eq!(pick(&["::ffff:203.0.113.7"], 1), ip("203.0.113.7"));
        let mapped_peer = client_ip(ip("::ffff:10.0.0.9"), std::iter::empty(), 0);
        assert_eq!(mapped_peer, ip("10.0.0.9"));
    }

    #[test]
    fn serde_messages_lose_the_offending_value() {
        let m = redact_values(
            "password: invalid type: string \"hunter2-secret\", expected u32 at line 1 column 9",
        );
        assert!(!m.contains("hunter2"), "{m}");
        assert!(m.contains("password") && m.contains("expected u32"), "{m}");
        let m = redact_values(
            "password: invalid type: integer `12345`, expected a string at line 1 column 5",
        );
        assert!(!m.contains("12345"), "{m}");
        assert_eq!(
            redact_values("missing field `email` at line 1 column 2"),
            "missing field `email` at line 1 column 2"
        );
    }
}
