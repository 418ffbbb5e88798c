use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
#[cfg(feature = "server")]
use crate::types::formats;
use crate::types::{EventType, Revealed, integer};

/// A project's webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Webhook {
    pub id: String,
    #[cfg_attr(
        feature = "server",
        schema(example = "https://hooks.example.com/coffer")
    )]
    pub url: String,
    /// Only events of these environments (slugs); absent: all of them.
    pub environments: Option<Vec<String>>,
    /// Only these event types; absent: all of them.
    pub events: Option<Vec<EventType>>,
    pub enabled: bool,
    /// Why it was disabled (by hand, or after too many failed attempts in a row).
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i64,
    /// Until when the previous signing secret signs too (after a rotation).
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A webhook just created, with its signing secret: shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret (`whsec_…`): HMAC-SHA256 keys are its UTF-8 bytes.
    pub secret: Revealed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    #[cfg_attr(feature = "server", schema(value_type = formats::WebhookUrl))]
    pub url: String,
    /// Only events of these environments (1 to 100 slugs); absent: all of them.
    #[cfg_attr(
        feature = "server",
        schema(value_type = Option<Vec<formats::Slug>>, min_items = 1, max_items = 100)
    )]
    pub environments: Option<Vec<String>>,
    /// Only these event types (at least one); absent: all of them.
    #[cfg_attr(feature = "server", schema(min_items = 1))]
    pub events: Option<Vec<EventType>>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// Changes to a webhook; absent fields stay. `environments`/`events` set to `null` mean all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[cfg_attr(feature = "server", schema(value_type = Option<formats::WebhookUrl>))]
    pub url: Option<String>,
    #[serde(default, with = "double_option")]
    #[cfg_attr(
        feature = "server",
        schema(value_type = Option<Vec<formats::Slug>>, min_items = 1, max_items = 100)
    )]
    pub environments: Option<Option<Vec<String>>>,
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "server", schema(value_type = Option<Vec<EventType>>, min_items = 1))]
    pub events: Option<Option<Vec<EventType>>>,
    /// Enabling a disabled webhook clears its failure count.
    pub enabled: Option<bool>,
}

/// A field that may be absent (`None`), null (`Some(None)`) or set.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateWebhookSecretRequest {
    /// How long the previous secret keeps signing too, in seconds (0 to 604800; default 86400).
    #[serde(default, deserialize_with = "integer::optional")]
    #[cfg_attr(feature = "server", schema(maximum = 604_800))]
    pub overlap_seconds: Option<u64>,
}

/// A new signing secret: shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WebhookSecret {
    pub secret: Revealed,
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// A delivery queued (a ping or a redelivery).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct QueuedDelivery {
    pub delivery_id: String,
}

/// One attempt to deliver an event (or a ping) to a webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WebhookAttempt {
    pub id: String,
    pub delivery_id: String,
    /// The event delivered; absent for a ping.
    pub event_id: Option<i64>,
    /// The event's type, or `ping`.
    pub kind: String,
    /// From 1.
    pub attempt: i64,
    /// `succeeded`, `retrying` or `failed` (no attempt follows).
    pub status: String,
    pub started_at: Timestamp,
    pub duration_ms: i64,
    /// The receiver's HTTP status, when it answered.
    pub response_status: Option<i64>,
    /// The first KiB of the receiver's answer.
    pub response_body: Option<String>,
    /// Why there was no answer (connection refused, timeout, address not allowed…).
    pub error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
}
