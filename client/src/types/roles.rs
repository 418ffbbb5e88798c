//! Roles in an organization and a project, and what a project role may do in an environment.
//! Their order is their strength: `Viewer < Member < Admin < Owner`, `None < Read < ReadWrite`.

use std::str::FromStr;

/// A role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrgRole {
    Viewer,
    Member,
    Admin,
    Owner,
}

/// A role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProjectRole {
    Viewer,
    Developer,
    Admin,
}

/// What a project role may do with one environment's secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EnvAccess {
    None,
    Read,
    ReadWrite,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)*
                    _ => Err(format!(
                        "must be one of: {}",
                        [$($text),*].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "server")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),*]))
                    .into()
            }
        }

        #[cfg(feature = "server")]
        impl utoipa::ToSchema for $ty {}
    };
}

string_enum!(OrgRole { Owner = "owner", Admin = "admin", Member = "member", Viewer = "viewer" });
string_enum!(ProjectRole { Admin = "admin", Developer = "developer", Viewer = "viewer" });
string_enum!(EnvAccess { None = "none", Read = "read", ReadWrite = "read-write" });

impl ProjectRole {
    /// What the role may do in an environment without a policy of its own.
    pub fn default_access(self) -> EnvAccess {
        match self {
            Self::Admin | Self::Developer => EnvAccess::ReadWrite,
            Self::Viewer => EnvAccess::Read,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_travel_as_their_documented_names() {
        for &access in EnvAccess::ALL {
            let json = serde_json::to_string(&access).unwrap();
            assert_eq!(json, format!("\"{access}\""));
            assert_eq!(serde_json::from_str::<EnvAccess>(&json).ok(), Some(access));
        }
        assert_eq!(
            serde_json::from_str::<ProjectRole>("\"developer\"").ok(),
            Some(ProjectRole::Developer)
        );
        assert!(serde_json::from_str::<OrgRole>("\"root\"").is_err());
    }
}
