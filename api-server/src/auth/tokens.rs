//! Opaque bearer tokens: refresh tokens, API keys, password-reset tokens. 256 random bits each;
//! only their SHA-256 is stored (a fast hash suffices for a full-entropy secret and keeps lookups
//! indexable).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Prefix of every API key and service token, so leaked keys are easy to scan for.
pub const API_KEY_PREFIX: &str = "cfr_";
/// Prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "cfrt_";
/// Prefix of password-reset tokens.
pub const PASSWORD_RESET_PREFIX: &str = "cfp_";
/// Prefix of the dashboard's session cookies.
pub const WEB_SESSION_PREFIX: &str = "cfw_";

/// A new random token `prefix` + 43 base64url characters.
pub fn generate(prefix: &str) -> SecretString {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    SecretString::from(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ))
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The part of an API key that may be shown again later (`cfr_` and 8 characters).
pub fn display_prefix(token: &SecretString) -> String {
    token
        .expose_secret()
        .chars()
        .take(API_KEY_PREFIX.len() + 8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hash_stably() {
        let a = generate(API_KEY_PREFIX);
        let b = generate(API_KEY_PREFIX);
        assert!(a.expose_secret().starts_with("cfr_"));
        assert_eq!(a.expose_secret().len(), 4 + 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(hash(a.expose_secret()), hash(a.expose_secret()));
        assert_eq!(display_prefix(&a).len(), 12);
    }
}
