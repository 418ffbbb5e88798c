use kube::{CustomResource, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::DeletionPolicy;

/// A project in coffer-server that the `Environment` resources of this namespace sync from, and
/// the credentials the operator uses to reach it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[allow(
    clippy::duplicated_attributes,
    reason = "printer columns repeat `type_ = ...`, which clippy takes for duplicates"
)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "Project",
    namespaced,
    status = "ProjectStatus",
    shortname = "cproj",
    category = "coffer",
    doc = "A project in coffer-server that the Environment resources of this namespace sync from.",
    printcolumn(
        name = "Organization",
        type_ = "string",
        json_path = ".spec.organization",
        description = "Organization slug in coffer-server"
    ),
    printcolumn(
        name = "Project",
        type_ = "string",
        json_path = ".spec.project",
        description = "Project slug in coffer-server (the resource's name when empty)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSpec {
    /// Slug of the organization in coffer-server that owns the project.
    pub organization: String,
    /// Slug of the project in coffer-server. Defaults to the name of this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Display name of the project, used when the operator creates it (see `create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Create the project in coffer-server when it does not exist. Default: false, and a
    /// missing project is reported in the Ready condition.
    #[serde(default)]
    pub create: bool,
    /// Base URL of coffer-server, e.g. `https://coffer.example.com`. Defaults to the operator's
    /// configured server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// A key of a Secret in this namespace that holds the coffer-server token to use (a service
    /// token, or an API key when the operator must create or delete projects or environments).
    /// Defaults to the operator's own token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<CredentialsRef>,
    /// A key of a ConfigMap in this namespace holding PEM CA certificates to trust, besides
    /// the system's and the operator's (`COFFER_CA_BUNDLE`), for coffer-server's TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<ConfigMapKeyRef>,
    /// What happens to the project in coffer-server when this resource is deleted: `Retain`
    /// (default) keeps it, `Delete` deletes it, but only a project that this resource created
    /// (`create`) and that is still the one it created, with the credentials of
    /// `credentialsRef` (never the operator's own); any other project is kept.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A key of a Secret in the same namespace as the resource that refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct CredentialsRef {
    /// Name of the Secret.
    pub name: String,
    /// Key in the Secret's data whose value is the token.
    pub key: String,
}

/// A key of a ConfigMap in the same namespace as the resource that refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    pub name: String,
    /// Key in the ConfigMap's data.
    pub key: String,
}

/// The observed state of a `Project`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    /// Id of the project in coffer-server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Id of the project this resource created in coffer-server: the only project that
    /// `deletionPolicy: Delete` may delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_project_id: Option<String>,
    /// Current state of the resource; the `Ready` condition says whether the project is
    /// reachable with the configured credentials, and if not, why.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the spec that the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Project {
    /// The project's slug in coffer-server: `spec.project`, or else the resource's name.
    pub fn project_slug(&self) -> String {
        match &self.spec.project {
            Some(slug) if !slug.is_empty() => slug.clone(),
            _ => self.name_any(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(project: Option<&str>) -> ProjectSpec {
        ProjectSpec {
            organization: "acme".to_owned(),
            project: project.map(str::to_owned),
            display_name: None,
            create: false,
            server_url: None,
            credentials_ref: None,
            ca_bundle_ref: None,
            deletion_policy: DeletionPolicy::default(),
        }
    }

    #[test]
    fn the_project_slug_is_the_spec_value_when_given() {
        assert_eq!(
            Project::new("web", spec(Some("storefront"))).project_slug(),
            "storefront"
        );
    }

    #[test]
    fn the_project_slug_defaults_to_the_resource_name() {
        assert_eq!(Project::new("web", spec(None)).project_slug(), "web");
        assert_eq!(Project::new("web", spec(Some(""))).project_slug(), "web");
    }
}
