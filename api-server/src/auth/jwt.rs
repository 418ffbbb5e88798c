//! Access tokens: HS256 JWTs, algorithm pinned; signature, `exp`, `nbf` (when present), `iss`
//! and `aud` checked.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, Timestamp, UserId};

pub const ISSUER: &str = "coffer";
pub const AUDIENCE: &str = "coffer-api";

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub sid: SessionId,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn new(secret: &SecretString, ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        // Not issued with one, but a token that says it is not valid yet is not (RFC 7519).
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new access token for a session.
    pub fn issue(
        &self,
        user: UserId,
        session: SessionId,
        now: Timestamp,
    ) -> Result<SecretString, jsonwebtoken::errors::Error> {
        let iat = now.millis() / 1000;
        let claims = Claims {
            sub: user,
            sid: session,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat,
            exp: iat + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(SecretString::from)
    }

    /// The claims of a valid token; `None` for anything else (bad signature, expired, other
    /// algorithm, wrong issuer or audience, malformed).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(
            &SecretString::from(secret.to_owned()),
            Duration::from_secs(900),
        )
    }

    #[test]
    fn a_token_verifies_with_its_key_only() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let (u, s) = (UserId::new(), SessionId::new());
        let t = k.issue(u, s, Timestamp::now()).unwrap();
        let claims = k.verify(t.expose_secret()).unwrap();
        assert_eq!((claims.sub, claims.sid), (u, s));
        assert!(
            keys("another secret of thirty-two bytes!")
                .verify(t.expose_secret())
                .is_none()
        );
    }

    #[test]
    fn expired_tampered_and_unsigned_tokens_are_refused() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let old = Timestamp::now().minus(Duration::from_secs(3600));
        let expired = k.issue(UserId::new(), SessionId::new(), old).unwrap();
        assert!(k.verify(expired.expose_secret()).is_none());

        let good = k
            .issue(UserId::new(), SessionId::new(), Timestamp::now())
            .unwrap();
        let parts: Vec<&str> = good.expose_secret().split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(k.verify(&format!("{none_header}.{}.", parts[1])).is_none());
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = serde_json::json!(UserId::new());
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
        assert!(
            k.verify(&format!("{}.{forged}.{}", parts[0], parts[2]))
                .is_none()
        );
    }
}
