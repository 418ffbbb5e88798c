use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
#[cfg(feature = "server")]
use crate::types::formats;
use crate::types::revealed::expose;
use crate::types::{Revealed, integer};

/// A secret and its current (or requested) version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Secret {
    #[cfg_attr(feature = "server", schema(example = "DATABASE_URL"))]
    pub key: String,
    pub value: Revealed,
    pub comment: Option<Revealed>,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Every secret of an environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SecretsPage {
    /// The environment's revision: it increases with every change.
    pub revision: i64,
    pub secrets: Vec<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSecretRequest {
    #[cfg_attr(feature = "server", schema(value_type = formats::SecretKey))]
    pub key: String,
    #[cfg_attr(feature = "server", schema(value_type = String))]
    #[serde(serialize_with = "expose::secret")]
    pub value: SecretString,
    #[cfg_attr(feature = "server", schema(value_type = Option<String>))]
    #[serde(serialize_with = "expose::optional_secret")]
    pub comment: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    #[cfg_attr(feature = "server", schema(value_type = String))]
    #[serde(serialize_with = "expose::secret")]
    pub value: SecretString,
    /// Absent: keep the current comment; empty: remove it.
    #[cfg_attr(feature = "server", schema(value_type = Option<String>))]
    #[serde(serialize_with = "expose::optional_secret")]
    pub comment: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BulkUpsertRequest {
    pub secrets: Vec<CreateSecretRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to restore (versions count from 1).
    #[serde(deserialize_with = "integer::whole")]
    #[cfg_attr(feature = "server", schema(minimum = 1))]
    pub version: i64,
}

/// What a bulk write or an import did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WriteReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// The environment's revision afterwards.
    pub revision: Option<i64>,
}

/// How a key stands between the two environments of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyComparison {
    OnlyInBase,
    OnlyInHead,
    /// In both, with different values.
    Different,
    /// In both, with the same value.
    Same,
}

/// A key's current version in one environment of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ComparedVersion {
    pub version: i64,
    pub updated_at: Timestamp,
    /// The value as stored (references unresolved); only with `reveal=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Revealed>,
}

/// One key of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ComparedKey {
    pub key: String,
    pub status: KeyComparison,
    pub base: Option<ComparedVersion>,
    pub head: Option<ComparedVersion>,
}

/// How many keys of a comparison stand each way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ComparisonSummary {
    pub only_in_base: usize,
    pub only_in_head: usize,
    pub different: usize,
    pub same: usize,
}

/// Two environments of a project side by side, key by key (sorted by key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Comparison {
    pub base: String,
    pub head: String,
    pub summary: ComparisonSummary,
    pub keys: Vec<ComparedKey>,
}

/// Copies secrets of another environment of the project into this one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CopySecretsRequest {
    /// The source environment (slug).
    #[cfg_attr(feature = "server", schema(value_type = formats::Slug))]
    pub from: String,
    /// The keys to copy, each once (each must exist in the source); absent: every secret of the
    /// source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(schema_with = formats::key_set))]
    pub keys: Option<Vec<String>>,
    /// Replace the values of keys the target already has; otherwise they are skipped.
    #[serde(default)]
    pub overwrite: bool,
    /// Write references (`${from.KEY}`) instead of the values, so the target follows the source.
    #[serde(default)]
    pub as_reference: bool,
}

/// What a copy did, key by key (values are never echoed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CopyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// Keys the target already had with another value, left alone (no `overwrite`).
    pub skipped: Vec<String>,
    /// The target environment's revision afterwards (`null`: nothing changed).
    pub revision: Option<i64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn a_write_request_sends_its_secret_and_reads_back_as_the_server_does() {
        let req = PutSecretRequest {
            value: SecretString::from("s3cr3t"),
            comment: None,
        };
        let body = serde_json::to_value(&req).unwrap();
        assert_eq!(body, json!({ "value": "s3cr3t", "comment": null }));
        let back: PutSecretRequest = serde_json::from_value(body).unwrap();
        assert!(back.comment.is_none());
        assert!(!format!("{back:?}").contains("s3cr3t"));
        let bulk = BulkUpsertRequest {
            secrets: vec![CreateSecretRequest {
                key: "A".into(),
                value: SecretString::from("1"),
                comment: Some(SecretString::from("why")),
            }],
        };
        assert_eq!(
            serde_json::to_value(&bulk).unwrap(),
            json!({ "secrets": [{ "key": "A", "value": "1", "comment": "why" }] })
        );
    }

    #[test]
    fn responses_tolerate_fields_added_later_and_requests_do_not() {
        let report: WriteReport = serde_json::from_value(json!({
            "created": 1, "updated": 0, "unchanged": 2, "revision": 7, "deleted": 0
        }))
        .unwrap();
        assert_eq!((report.created, report.revision), (1, Some(7)));
        assert!(
            serde_json::from_value::<RollbackRequest>(json!({ "version": 1, "x": 1 })).is_err()
        );
    }
}
