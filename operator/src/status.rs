//! The one place where both controllers write the status of their resources: only when it
//! differs from what was read, as a whole (a field the new status leaves out is removed), and
//! with a Warning event when the `Ready` condition enters a new failure (once per transition,
//! not once per retry).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Patch;
use kube::core::object::HasStatus;
use kube::{Api, Resource, ResourceExt as _};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::conditions;
use crate::context::{Context, Error, patch_params};
use crate::crd::{CONDITION_READY, EnvironmentStatus, ProjectStatus};

/// A status with conditions.
pub trait Conditioned: Serialize + JsonSchema + PartialEq + Clone + Default {
    fn conditions(&self) -> &[Condition];
}

impl Conditioned for EnvironmentStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditioned for ProjectStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// Makes the status of `object` `next`: writes nothing when it already is, and publishes a
/// Warning event (with `action`) when `Ready` turns to a failure it was not in before.
pub async fn write<K>(
    ctx: &Context,
    object: &K,
    next: &K::Status,
    action: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + HasStatus
        + Clone
        + DeserializeOwned
        + Debug,
    K::Status: Conditioned,
{
    let before = object.status().cloned().unwrap_or_default();
    if before == *next {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), &object.namespace().unwrap_or_default());
    api.patch_status(
        &object.name_any(),
        &patch_params(),
        &Patch::Merge(json!({ "status": merge_patch(next) })),
    )
    .await?;
    ctx.metrics.status_written(&K::kind(&()));
    let was = conditions::reason_of(before.conditions(), CONDITION_READY);
    let ready = next
        .conditions()
        .iter()
        .find(|c| c.type_ == CONDITION_READY);
    if let Some(ready) = ready
        && ready.status == "False"
        && was != Some(ready.reason.as_str())
    {
        ctx.event(
            &object.object_ref(&()),
            true,
            &ready.reason,
            action,
            ready.message.clone(),
        )
        .await;
    }
    Ok(())
}

/// The JSON merge patch (RFC 7386) that makes a status exactly `next`. A field `next` leaves
/// out (an `Option` that is `None`) is sent as `null`, which removes it; left out of the patch,
/// it would keep its old value, the status would never match, and every pass would write it
/// again.
#[expect(
    clippy::expect_used,
    reason = "a status is strings, numbers, lists and structs: always representable in JSON"
)]
pub fn merge_patch<S: Serialize + JsonSchema>(next: &S) -> Value {
    let mut value = serde_json::to_value(next).expect("a status serialises to JSON");
    let schema = schemars::schema_for!(S);
    let fields = schema.get("properties").and_then(Value::as_object);
    if let (Some(object), Some(fields)) = (value.as_object_mut(), fields) {
        for name in fields.keys() {
            object.entry(name.clone()).or_insert(Value::Null);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_status_patch_removes_the_fields_the_status_leaves_out() {
        let status = EnvironmentStatus {
            synced_keys: Some(2),
            ..EnvironmentStatus::default()
        };
        let patch = merge_patch(&status);
        assert_eq!(patch["syncedKeys"], json!(2));
        for removed in [
            "revision",
            "secretHash",
            "lastSyncTime",
            "observedGeneration",
        ] {
            assert_eq!(patch.get(removed), Some(&Value::Null), "{removed}");
        }
        assert_eq!(patch["conditions"], json!([]));
        let project = merge_patch(&ProjectStatus::default());
        assert_eq!(project.get("projectId"), Some(&Value::Null));
    }
}
