use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;

/// Who wrote a version: `kind` is `user`, `api_key` or `service_token`; `id` its identifier
/// (never a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct VersionAuthor {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

/// One version of a secret, without its value (`GET …/secrets/{key}/versions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SecretVersion {
    pub version: i64,
    pub created_at: Timestamp,
    pub actor: VersionAuthor,
}
