use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
use crate::types::Revealed;
use crate::types::revealed::expose;

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
