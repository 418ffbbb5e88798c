use serde::{Deserialize, Serialize};

/// The JSON error document.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// One error: a stable code, a human message and the request id to quote to an operator.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    #[cfg_attr(feature = "server", schema(example = "validation_failed"))]
    pub code: String,
    /// For humans; never contains secrets.
    pub message: String,
    /// The `x-request-id` of the request.
    pub request_id: String,
}
