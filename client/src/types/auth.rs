use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::ids::{Timestamp, UserId};
use crate::types::Revealed;
use crate::types::revealed::expose;

/// `POST /api/v1/auth/login`: email and password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    #[serde(serialize_with = "expose::secret")]
    #[cfg_attr(feature = "server", schema(value_type = String, format = Password))]
    pub password: SecretString,
}

/// `POST /api/v1/auth/refresh`: a refresh token, which works once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[serde(serialize_with = "expose::secret")]
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub refresh_token: SecretString,
}

/// A user account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub created_at: Timestamp,
}

/// The tokens of a login session: the access token for `Authorization: Bearer`, the refresh
/// token to trade for new tokens (once) when it expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SessionTokens {
    pub access_token: Revealed,
    pub refresh_token: Revealed,
    #[cfg_attr(feature = "server", schema(example = "Bearer"))]
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// The answer to a login (or a registration): the user and the session's tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LoggedIn {
    pub user: User,
    #[serde(flatten)]
    pub tokens: SessionTokens,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn a_login_answer_reads_as_the_user_and_tokens_that_never_debug() {
        let answer: LoggedIn = serde_json::from_value(json!({
            "user": { "id": "0193a5c0-0000-7000-8000-000000000001", "email": "ann@example.com",
                      "name": "Ann", "created_at": "2026-01-01T00:00:00Z" },
            "access_token": "jwt-secret-part", "refresh_token": "refresh-secret-part",
            "token_type": "Bearer", "expires_in": 900
        }))
        .unwrap();
        assert_eq!(answer.user.email, "ann@example.com");
        assert_eq!(answer.tokens.access_token.expose(), "jwt-secret-part");
        assert_eq!(answer.tokens.expires_in, 900);
        let debug = format!("{answer:?}");
        assert!(!debug.contains("secret-part"), "{debug}");

        let req = RefreshRequest {
            refresh_token: SecretString::from("refresh-secret-part"),
        };
        assert!(!format!("{req:?}").contains("secret-part"));
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({ "refresh_token": "refresh-secret-part" })
        );
    }
}
