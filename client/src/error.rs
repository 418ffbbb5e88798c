use std::time::Duration;

use reqwest::StatusCode;

/// Why a call to coffer-server failed. No variant ever carries the token or a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// coffer-server answered with an error document (or a bare error status).
    #[error("coffer-server answered {status} {code}: {message}")]
    Api {
        status: u16,
        /// The stable, machine-readable code (`not_found`, `invalid_token`, …).
        code: String,
        /// For humans; coffer-server never puts secrets in it.
        message: String,
        /// The `x-request-id` to quote to whoever runs the server.
        request_id: Option<String>,
        /// From `Retry-After` (429 and 503 answers).
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, timeout, TLS…
    #[error("no answer from coffer-server: {}", transport_failure(.0))]
    Transport(#[source] reqwest::Error),
    /// An answer that is not what the API documents.
    #[error("unexpected answer from coffer-server: {0}")]
    Decode(String),
    /// The base URL (or a path segment built from an argument) is not usable.
    #[error("invalid coffer-server URL: {0}")]
    InvalidUrl(String),
    /// An event stream did not answer, or sent nothing (not even a heartbeat), for this long:
    /// the connection is taken for dead.
    #[error("coffer-server's event stream sent nothing for {} s", .0.as_secs())]
    StreamIdle(Duration),
}

impl Error {
    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A 404: the resource does not exist, or the caller may not know that it does.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The error for a non-success answer whose body could not be read as an error document:
    /// the code coffer-server itself uses for that status.
    pub(crate) fn bare(
        status: StatusCode,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let code = match status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "request_timeout",
            409 => "conflict",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            422 => "validation_failed",
            429 => "rate_limited",
            503 => "service_unavailable",
            s if (400..500).contains(&s) => "bad_request",
            s if s >= 500 => "internal_error",
            _ => "unexpected_status",
        };
        Self::Api {
            status: status.as_u16(),
            code: code.to_owned(),
            message: status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_owned(),
            request_id,
            retry_after,
        }
    }
}

/// What went wrong, in a few words; the whole story is in the source chain.
fn transport_failure(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_builder() {
        "cannot build the request"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    }
}

/// A JSON error's description without the data that caused it: serde quotes offending values
/// (`invalid type: string "…"`), and in a response body such a value may be a secret.
pub(crate) fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") || text.starts_with("duplicate field") {
        text
    } else {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "cannot read the body",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "a value of the wrong type or form",
            serde_json::error::Category::Eof => "the body ends early",
        };
        format!("{kind} at line {} column {}", e.line(), e.column())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_json_error_never_quotes_the_offending_value() {
        let e = serde_json::from_str::<u32>("\"hunter2\"").unwrap_err();
        let text = describe_json_error(&e);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn a_bare_status_gets_the_servers_code_for_it() {
        let e = Error::bare(StatusCode::NOT_FOUND, None, None);
        assert!(e.is_not_found());
        assert_eq!(e.code(), Some("not_found"));
        let e = Error::bare(StatusCode::BAD_GATEWAY, None, None);
        assert_eq!((e.status(), e.code()), (Some(502), Some("internal_error")));
    }
}
