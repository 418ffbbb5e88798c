//! The one error type of the HTTP API and its JSON shape:
//! `{"error": {"code": "snake_case", "message": "…", "request_id": "…"}}`.
//!
//! Handlers return [`ApiError`]; its response carries an [`ErrorBody`] extension and the
//! `error_envelope` middleware (see [`crate::http`]) renders it with the request id. Responses
//! that fail outside our handlers (unknown route, wrong method, body limit, timeout, panic) are
//! rewritten into the same shape there.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use coffer_client::types::{ErrorDetail, ErrorResponse};

/// An error answered to an API client. Messages never carry secrets or internals.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad query).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// 401: no valid credentials.
    #[error("{message}")]
    Unauthorized {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// 403: authenticated, but not allowed.
    #[error("{message}")]
    Forbidden {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// 404: no such resource (or not visible to the caller: the same answer).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// 409: conflicts with the current state.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// 413: request body over the limit.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 415: body is not `application/json`.
    #[error("expected a request with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422: well-formed, but a field is invalid.
    #[error("{message}")]
    Validation {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// 429: try again later.
    #[error("too many requests; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    /// 502: a system this server acts on for the caller (a dynamic secret's database) failed
    /// or refused; the message is that system's, without secrets.
    #[error("{message}")]
    Upstream {
        code: &'static str,
        message: Cow<'static, str>,
    },
    /// 503: temporarily unable to serve (overload, database down).
    #[error("{message}")]
    Unavailable {
        message: Cow<'static, str>,
        retry_after: Option<Duration>,
    },
    /// 500: our fault. The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }
    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }
    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
    pub fn validation(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Validation {
            code,
            message: message.into(),
        }
    }
    pub fn upstream(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Upstream {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(what: &'static str) -> Self {
        Self::NotFound { what }
    }
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Conflict { code, .. }
            | Self::Validation { code, .. }
            | Self::Upstream { code, .. } => code,
            Self::NotFound { .. } => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut => Self::Unavailable {
                message: "the database is busy; try again".into(),
                retry_after: Some(Duration::from_secs(1)),
            },
            e if database_unreachable(e) => {
                tracing::warn!(error = %err, "the database cannot be reached");
                Self::Unavailable {
                    message: "the database cannot be reached; try again".into(),
                    retry_after: Some(Duration::from_secs(2)),
                }
            }
            _ => Self::Internal(err.into()),
        }
    }
}

/// Whether `err` says the database is out of reach for now (down, restarting, refusing
/// connections, or the connection broke), rather than that this request is wrong.
pub fn database_unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08…), shutting down or starting up (57P01–57P03),
        // too many connections (53300).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// The error payload before the request id is added; travels as a response extension.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, cause = ?cause.chain().skip(1).map(ToString::to_string).collect::<Vec<_>>(), "internal error")
            }
            Self::Unavailable { message, .. } => tracing::warn!(%message, "service unavailable"),
            _ => tracing::debug!(code = self.code(), %status, "request refused"),
        }
        let body = ErrorBody {
            code: Cow::Borrowed(self.code()),
            message: Cow::Owned(self.to_string()),
        };
        let mut response = status.into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response.extensions_mut().insert(body);
        response
    }
}

/// The code used when a failure outside our handlers has only a status.
pub fn code_for_status(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request could not be read"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "authentication required"),
        StatusCode::FORBIDDEN => ("forbidden", "not allowed"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "expected a request with `Content-Type: application/json`",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("validation_failed", "the request is invalid"),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => ("service_unavailable", "temporarily unavailable"),
        s if s.is_client_error() => ("bad_request", "the request could not be served"),
        _ => ("internal_error", "internal error"),
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod unreachable_tests {
    use super::*;

    #[test]
    fn a_database_out_of_reach_is_503_with_retry_after_and_a_wrong_query_is_500() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for err in [
            sqlx::Error::Io(refused),
            sqlx::Error::PoolClosed,
            sqlx::Error::Protocol("unexpected end of stream".into()),
        ] {
            let e = ApiError::from(err);
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE, "{e}");
            assert!(e.retry_after().is_some());
        }
        let e = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
