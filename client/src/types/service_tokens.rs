use serde::{Deserialize, Serialize};

use crate::ids::{ServiceTokenId, Timestamp};
#[cfg(feature = "server")]
use crate::types::formats;
use crate::types::{Revealed, integer};

/// `read` or `read-write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum TokenAccess {
    #[serde(rename = "read")]
    Read,
    #[serde(rename = "read-write")]
    ReadWrite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateServiceTokenRequest {
    #[cfg_attr(feature = "server", schema(value_type = formats::Name))]
    pub name: String,
    /// The project's slug.
    #[cfg_attr(feature = "server", schema(value_type = formats::Slug))]
    pub project: String,
    /// Slugs of the environments the token may reach (at least one).
    #[cfg_attr(feature = "server", schema(value_type = Vec<formats::Slug>, min_items = 1))]
    pub environments: Vec<String>,
    pub access: TokenAccess,
    /// Days until the token stops working (1 to 3650); without it the token does not expire.
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 3650))]
    pub expires_in_days: Option<u32>,
}

/// A service token's metadata (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ServiceToken {
    pub id: ServiceTokenId,
    pub name: String,
    #[cfg_attr(feature = "server", schema(example = "cfr_AbCd1234"))]
    pub prefix: String,
    pub project: String,
    pub environments: Vec<String>,
    pub access: TokenAccess,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A token with its secret: store it now, it is not shown again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct IssuedServiceToken {
    #[serde(flatten)]
    pub service_token: ServiceToken,
    pub token: Revealed,
    /// Until when the previous secret still works (after a rotation).
    pub previous_token_expires_at: Option<Timestamp>,
}
