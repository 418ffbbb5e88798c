use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret in a response body (a new credential, or a value its reader may see). Serialises
/// in clear; `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Revealed(pub SecretString);

impl Revealed {
    /// The secret itself. Keep it out of logs, errors and `Debug` output.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn into_inner(self) -> SecretString {
        self.0
    }
}

impl From<SecretString> for Revealed {
    fn from(secret: SecretString) -> Self {
        Self(secret)
    }
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revealed([redacted])")
    }
}

impl Serialize for Revealed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Revealed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SecretString::deserialize(d).map(Self)
    }
}

#[cfg(feature = "server")]
impl utoipa::PartialSchema for Revealed {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <String as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "server")]
impl utoipa::ToSchema for Revealed {}

/// `serialize_with` helpers for request fields holding a secret: `secrecy` does not serialise a
/// `SecretString` on its own, so that a secret is only ever written out on purpose.
pub(crate) mod expose {
    use secrecy::{ExposeSecret as _, SecretString};
    use serde::Serializer;

    pub(crate) fn secret<S: Serializer>(value: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.expose_secret())
    }

    pub(crate) fn optional_secret<S: Serializer>(
        value: &Option<SecretString>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_some(value.expose_secret()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_revealed_secret_travels_in_clear_but_never_debugs() {
        let r: Revealed = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(r.expose(), "hunter2");
        assert_eq!(
            serde_json::to_string(&r).ok().as_deref(),
            Some("\"hunter2\"")
        );
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
