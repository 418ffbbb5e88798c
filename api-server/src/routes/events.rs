//! `/api/v1/orgs/{org}/projects/{project}/events`: a project's change events, as a
//! Server-Sent Events stream or as pages of history.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{Json, Page, Query};
use crate::service::events::{self, StreamRequest};
use crate::state::AppState;

pub use coffer_client::types::{Event, Resync};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(project_events))
}

/// Query of the event stream and history.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only these environments (1 to 100 slugs, comma-separated); by default every environment
    /// the caller may read.
    #[param(pattern = r"^[a-z0-9-]{1,63}(,[a-z0-9-]{1,63}){0,99}$")]
    pub environments: Option<String>,
    /// Start after this event id (a stream also takes it from `Last-Event-ID`).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// History: `next_cursor` of the previous page (the same as `after`).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub cursor: Option<String>,
    /// History: items per page, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 500;

fn position(params: &EventParams, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let invalid = |what: &str| {
        ApiError::bad_request(
            "invalid_position",
            format!("{what} must be an event id (a whole number, 0 or more)"),
        )
    };
    let from_header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| invalid("Last-Event-ID"))?,
        ),
        None => None,
    };
    let cursor = match &params.cursor {
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| invalid("cursor"))?,
        ),
        None => None,
    };
    if params.after.is_some_and(|n| n < 0) {
        return Err(invalid("after"));
    }
    // A reconnecting client's `Last-Event-ID` is newer than the `after` of the URL it reuses.
    Ok(from_header.or(cursor).or(params.after))
}

/// Whether the request asks for Server-Sent Events.
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("text/event-stream"))
}

/// A project's change events. With `Accept: text/event-stream`, a Server-Sent Events stream:
/// each message has `id:` (the event id), `event:` (its type) and `data:` (the event as JSON);
/// it resumes after `Last-Event-ID` (or `?after=`) with every later event exactly once; it starts
/// with a `resync` message (the environments' current revisions) when opened without a position,
/// or when the position is older than the events retained; a comment line keeps it alive at
/// least every 15 s. Otherwise, pages of history, oldest first. Events of the environments the
/// caller may read secrets of.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/events", tag = "events", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), EventParams,
           ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "Resume a stream after this event id")),
    responses(
        (status = 200, description = "History (`Accept: application/json`), or the stream (`Accept: text/event-stream`)",
         content(
            (Page<Event> = "application/json"),
            (String = "text/event-stream", example = "id: 42\nevent: secrets.changed\ndata: {\"id\":42,\"type\":\"secrets.changed\",\"org\":\"acme\",\"project\":\"web\",\"environment\":\"production\",\"revision\":7,\"changes\":[{\"key\":\"DATABASE_URL\",\"action\":\"updated\"}],\"actor\":{\"kind\":\"user\",\"id\":\"0193…\"},\"time\":\"2026-11-30T12:00:00Z\"}\n\n"),
         )),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse),
    )
)]
pub async fn project_events(
    State(state): State<AppState>,
    caller: Caller,
    Path((org, project)): Path<(String, String)>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = events::parse_wanted(params.environments.as_deref())?;
    let after = position(&params, &headers)?;
    if !wants_stream(&headers) {
        let limit = match params.limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("limit must be between 1 and {MAX_LIMIT}"),
                ));
            }
        };
        let (items, next_cursor) = events::history(
            &state,
            &caller,
            &org,
            &project,
            wanted.as_ref(),
            after.unwrap_or(0),
            limit,
        )
        .await?;
        return Ok(Json(Page { items, next_cursor }).into_response());
    }
    // The stream authenticates again from time to time with the same token.
    let token = crate::auth::principal::bearer_header(&headers)?;
    let request = StreamRequest {
        org,
        project,
        wanted,
        after,
    };
    let frames = events::open_stream(&state, caller, SecretString::from(token), request).await?;
    Ok(sse(frames))
}

/// A Server-Sent Events response of `frames`, with a heartbeat comment every
/// [`events::HEARTBEAT`].
pub fn sse(frames: tokio::sync::mpsc::Receiver<events::Frame>) -> Response {
    let stream = futures::stream::unfold(frames, |mut frames| async move {
        let frame = frames.recv().await?;
        let event = SseEvent::default()
            .id(frame.id)
            .event(frame.event)
            .data(frame.data);
        Some((Ok::<_, Infallible>(event), frames))
    });
    let mut response = Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(events::HEARTBEAT)
                .text("heartbeat"),
        )
        .into_response();
    // Proxies that buffer responses (nginx) must pass this one through as it comes.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
