use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{EnvironmentId, ProjectId, Timestamp};
#[cfg(feature = "server")]
use crate::types::formats;
use crate::types::{ProjectRole, integer};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    #[cfg_attr(feature = "server", schema(value_type = formats::Name))]
    pub name: String,
    #[cfg_attr(feature = "server", schema(value_type = formats::Slug))]
    pub slug: String,
    /// Environment slugs, in order, each once (default: development, staging, production).
    #[cfg_attr(
        feature = "server",
        schema(schema_with = formats::project_environments)
    )]
    pub environments: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    #[cfg_attr(feature = "server", schema(value_type = formats::Name))]
    pub name: String,
}

/// An environment of a project.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Environment {
    pub id: EnvironmentId,
    pub slug: String,
    pub name: String,
    /// Its place in the project's order, from 0.
    pub position: i64,
    /// Increases with every change to the environment's secrets.
    pub revision: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A project with its environments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Project {
    pub id: ProjectId,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The caller's project role (owners and admins of the organization: `admin`).
    pub role: Option<ProjectRole>,
    pub environments: Option<Vec<Environment>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironmentRequest {
    #[cfg_attr(feature = "server", schema(value_type = formats::Slug))]
    pub slug: String,
    #[cfg_attr(feature = "server", schema(value_type = Option<formats::Name>))]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironmentRequest {
    #[cfg_attr(feature = "server", schema(value_type = Option<formats::Name>))]
    pub name: Option<String>,
    /// Move the environment to this index in the project's order (past the end: last).
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(format = Int64, maximum = 4_294_967_295_u64))]
    pub position: Option<u32>,
}

/// An environment with its role policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EnvironmentDetail {
    #[serde(flatten)]
    pub environment: Environment,
    /// What each project role may do here, where it differs from the role's default.
    pub policies: BTreeMap<String, String>,
}
