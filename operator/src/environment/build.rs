//! What the Secret synced from an environment should be: a pure function of the `Environment`
//! resource and the environment's values, tested without a cluster.

pub(crate) mod template;

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::context::FIELD_MANAGER;
use crate::crd::{CreationPolicy, DeletionPolicy, Environment, SyncSpec, key_selected};
use template::{RenderError, Template};

/// `app.kubernetes.io/managed-by` on every Secret the operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "coffer-operator";
/// The name of the `Environment` a synced Secret comes from.
pub const ENVIRONMENT_LABEL: &str = "coffer.dev/environment";
/// `"true"` on a Secret its owner lets `Environment`s merge keys into (`creationPolicy: Merge`):
/// whoever may create an `Environment` but not edit a Secret cannot make the operator edit it.
pub const MERGE_LABEL: &str = "coffer.dev/merge";

/// Whether `secret`'s owner lets `Environment`s merge into it ([`MERGE_LABEL`]).
pub fn merge_allowed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MERGE_LABEL))
        .is_some_and(|v| v == "true")
}

/// Bounds on `spec.sync.templates` and on the data of a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Templates per `Environment`.
    pub templates: usize,
    /// Bytes of one template's text.
    pub template_bytes: usize,
    /// Bytes of all values of the Secret together (what Kubernetes allows a Secret).
    pub data_bytes: usize,
}

/// The bounds in force.
pub const LIMITS: Limits = Limits {
    templates: 100,
    template_bytes: 64 * 1024,
    data_bytes: 1024 * 1024,
};

/// `spec.sync` cannot be acted on, alone or with the environment's values: which field, and
/// why. Names keys, templates and offsets, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ShapeError {
    pub field: String,
    pub problem: String,
}

fn shape_error(field: impl Into<String>, problem: impl Into<String>) -> ShapeError {
    ShapeError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Whether `key` may be a key of a Secret: `[-._a-zA-Z0-9]+`, at most 253 characters (and
/// not `.` or `..`, which Kubernetes refuses too).
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const SECRET_KEY_RULE: &str =
    "a Secret key is letters, digits, `-`, `_` and `.`, at most 253 characters";

/// What `spec.sync` makes of an environment's values: which keys are written under which
/// names, and the templates, parsed.
#[derive(Debug)]
pub struct Shape<'a> {
    sync: &'a SyncSpec,
    /// coffer-server key -> the Secret keys it is written as.
    renames: BTreeMap<&'a str, Vec<&'a str>>,
    templates: Vec<(&'a str, Template)>,
    limits: Limits,
}

/// Checks `sync` on its own (no values needed) and prepares it: key names, renames, templates
/// (count, size, syntax) and how the policies combine.
pub fn shape(sync: &SyncSpec, limits: Limits) -> Result<Shape<'_>, ShapeError> {
    if sync.creation_policy != CreationPolicy::Owner
        && sync.deletion_policy == DeletionPolicy::Delete
    {
        return Err(shape_error(
            "spec.sync.deletionPolicy",
            format!(
                "Delete cannot go with creationPolicy {:?}, which never deletes the Secret; \
                 use Retain",
                sync.creation_policy
            ),
        ));
    }
    if sync.creation_policy == CreationPolicy::Merge && sync.immutable {
        return Err(shape_error(
            "spec.sync.immutable",
            "creationPolicy Merge writes into a Secret someone else created: whether it is \
             immutable is theirs to decide",
        ));
    }
    let mut renames: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // Secret key -> the field that writes it
    let mut targets: BTreeMap<&str, String> = BTreeMap::new();
    for (i, mapping) in sync.keys.iter().enumerate() {
        if !template::is_coffer_key(&mapping.from) {
            return Err(shape_error(
                format!("spec.sync.keys[{i}].from"),
                format!("{:?} is not the name of a coffer-server key", mapping.from),
            ));
        }
        if !is_secret_key(&mapping.to) {
            return Err(shape_error(
                format!("spec.sync.keys[{i}].to"),
                format!(
                    "{:?} is not a valid Secret key: {SECRET_KEY_RULE}",
                    mapping.to
                ),
            ));
        }
        if let Some(other) = targets.insert(&mapping.to, format!("spec.sync.keys[{i}]")) {
            return Err(shape_error(
                format!("spec.sync.keys[{i}].to"),
                format!(
                    "Secret key {:?} is already written by {other}: two sources cannot \
                     write one key",
                    mapping.to
                ),
            ));
        }
        renames.entry(&mapping.from).or_default().push(&mapping.to);
    }
    if sync.templates.len() > limits.templates {
        return Err(shape_error(
            "spec.sync.templates",
            format!(
                "{} templates, more than the {} allowed",
                sync.templates.len(),
                limits.templates
            ),
        ));
    }
    let mut templates = Vec::with_capacity(sync.templates.len());
    for (key, text) in &sync.templates {
        let field = format!("spec.sync.templates[{key:?}]");
        if !is_secret_key(key) {
            return Err(shape_error(
                field,
                format!("{key:?} is not a valid Secret key: {SECRET_KEY_RULE}"),
            ));
        }
        if let Some(other) = targets.get(key.as_str()) {
            return Err(shape_error(
                field,
                format!(
                    "Secret key {key:?} is already written by {other}: two sources cannot \
                     write one key"
                ),
            ));
        }
        if text.len() > limits.template_bytes {
            return Err(shape_error(
                field,
                format!(
                    "the template is {} bytes, more than the {} allowed",
                    text.len(),
                    limits.template_bytes
                ),
            ));
        }
        let parsed = template::parse(text).map_err(|e| {
            shape_error(
                field.clone(),
                format!("at byte {}: {}", e.offset, e.problem),
            )
        })?;
        templates.push((key.as_str(), parsed));
    }
    Ok(Shape {
        sync,
        renames,
        templates,
        limits,
    })
}

impl Shape<'_> {
    /// The Secret's data: the selected values under their (renamed) keys, then the templates
    /// rendered with every value of the environment. Refuses two sources for one key, a
    /// template reading a key the environment lacks, and data beyond the limit.
    pub fn data(
        &self,
        values: &BTreeMap<String, SecretString>,
    ) -> Result<BTreeMap<String, ByteString>, ShapeError> {
        let sync = self.sync;
        let mut data = BTreeMap::new();
        // Secret key -> the coffer-server key it comes from
        let mut sources: BTreeMap<&str, &str> = BTreeMap::new();
        let mut total: usize = 0;
        for (key, value) in values {
            if !key_selected(key, &sync.include, &sync.exclude) {
                continue;
            }
            let same = [key.as_str()];
            let targets = self
                .renames
                .get(key.as_str())
                .map_or(&same[..], Vec::as_slice);
            for &target in targets {
                if let Some(other) = sources.insert(target, key.as_str()) {
                    return Err(shape_error(
                        "spec.sync.keys",
                        format!(
                            "Secret key {target:?} would be written from both {other:?} and \
                             {key:?}; rename or exclude one of them"
                        ),
                    ));
                }
                let bytes = value.expose_secret().as_bytes();
                total = total.saturating_add(bytes.len());
                data.insert(target.to_owned(), ByteString(bytes.to_vec()));
            }
        }
        let too_large = || {
            shape_error(
                "spec.sync",
                format!(
                    "the Secret's data would exceed {} bytes, the most a Secret may hold",
                    self.limits.data_bytes
                ),
            )
        };
        if total > self.limits.data_bytes {
            return Err(too_large());
        }
        for (key, template) in &self.templates {
            let field = || format!("spec.sync.templates[{key:?}]");
            if let Some(source) = sources.get(key) {
                return Err(shape_error(
                    field(),
                    format!(
                        "Secret key {key:?} is also written from the key {source:?}; rename or \
                         exclude that key"
                    ),
                ));
            }
            let rendered = template
                .render(values, self.limits.data_bytes - total)
                .map_err(|e| match e {
                    RenderError::UnknownKey { offset, name } => shape_error(
                        field(),
                        format!("at byte {offset}: .{name} is not a key of the environment"),
                    ),
                    RenderError::BadInput {
                        offset,
                        function,
                        problem,
                    } => shape_error(field(), format!("at byte {offset}: {function}: {problem}")),
                    RenderError::TooLarge => too_large(),
                })?;
            total += rendered.len();
            data.insert((*key).to_owned(), ByteString(rendered.to_vec()));
        }
        Ok(data)
    }
}

/// Checks `sync` on its own, with the limits in force.
pub fn validate(sync: &SyncSpec) -> Result<(), ShapeError> {
    shape(sync, LIMITS).map(drop)
}

/// The Secret to apply, with the hash of its data and how many keys it holds.
#[derive(Debug, Clone)]
pub struct DesiredSecret {
    pub secret: Secret,
    /// `<key id>:<HMAC-SHA256 of the data>` under the operator's key (see [`secret_hash`]):
    /// changes exactly when the data or the key does, reveals nothing of either.
    pub hash: String,
    pub keys: usize,
}

/// The Secret for `env` holding what `spec.sync` makes of `values`. Under `deletionPolicy:
/// Delete` a controller owner reference makes the Secret the Environment's, so the garbage
/// collector removes it with the Environment in any propagation mode. Under `Retain` it has
/// none: the garbage collector deletes the dependents of an owner deleted with foreground
/// propagation before the operator's finalizer runs, so any owner reference would defeat
/// `Retain`. The Secret is then known by its labels (see [`ownership`]). Under
/// `creationPolicy: Merge` it is what is applied to someone else's Secret: the data and the
/// spec's labels and annotations only (see [`merge`]).
pub fn desired_secret(
    env: &Environment,
    values: &BTreeMap<String, SecretString>,
    hash_key: &[u8],
) -> Result<DesiredSecret, ShapeError> {
    let sync = &env.spec.sync;
    let data = shape(sync, LIMITS)?.data(values)?;
    let merge = sync.creation_policy == CreationPolicy::Merge;
    let mut labels = sync.labels.clone();
    if !merge {
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        labels.insert(ENVIRONMENT_LABEL.to_owned(), env.name_any());
    }
    let hash = secret_hash(hash_key, &data);
    let keys = data.len();
    let owned = sync.creation_policy == CreationPolicy::Owner
        && sync.deletion_policy == DeletionPolicy::Delete;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(env.secret_name()),
            namespace: env.namespace(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!sync.annotations.is_empty()).then(|| sync.annotations.clone()),
            owner_references: if owned {
                env.controller_owner_ref(&()).map(|r| vec![r])
            } else {
                None
            },
            ..ObjectMeta::default()
        },
        type_: (!merge).then(|| sync.type_.clone()),
        immutable: sync.immutable.then_some(true),
        data: Some(data),
        ..Secret::default()
    };
    Ok(DesiredSecret { secret, hash, keys })
}

/// `<key id>:<mac>`: the [`key_id`] of `hash_key`, and the HMAC-SHA256 over the data in a
/// canonical, unambiguous encoding (length-prefixed keys and values in key order),
/// hex-encoded. The key id says which key a hash was made with, so a hash made with another
/// key (the key Secret was lost and regenerated) is not taken for changed data.
pub fn secret_hash(hash_key: &[u8], data: &BTreeMap<String, ByteString>) -> String {
    format!("{}:{}", key_id(hash_key), data_mac(hash_key, data))
}

/// Names the hash key without revealing it: the first 8 bytes of an HMAC of a fixed label
/// under the key, hex-encoded (16 characters).
pub fn key_id(hash_key: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(hash_key) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(b"coffer.dev/secret-hash key id");
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// The key id of a hash made by [`secret_hash`]; `None` for a hash without one (written by
/// an operator version that did not record it).
pub fn hash_key_id(hash: &str) -> Option<&str> {
    hash.split_once(':').map(|(id, _)| id)
}

fn data_mac(hash_key: &[u8], data: &BTreeMap<String, ByteString>) -> String {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(hash_key) else {
        unreachable!("HMAC takes keys of any length")
    };
    for (key, value) in data {
        mac.update(&(key.len() as u64).to_be_bytes());
        mac.update(key.as_bytes());
        mac.update(&(value.0.len() as u64).to_be_bytes());
        mac.update(&value.0);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whose a Secret found under the target name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Its controller owner reference is this `Environment` (same uid).
    Owned,
    /// Written by the operator for an `Environment` of this name under deletion policy
    /// `Retain` (or released when one was deleted): no controller owner, our labels. Synced
    /// like an owned one, never deleted.
    Released,
    /// Anyone else's: never overwritten.
    Foreign,
}

/// Whose `secret` is, from the point of view of `env`.
pub fn ownership(secret: &Secret, env: &Environment) -> Ownership {
    let controller = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match controller {
        Some(owner) => {
            if env.metadata.uid.as_deref() == Some(owner.uid.as_str()) {
                Ownership::Owned
            } else {
                Ownership::Foreign
            }
        }
        None => {
            let labels = secret.metadata.labels.as_ref();
            let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
            if label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
                && label(ENVIRONMENT_LABEL) == Some(env.name_any().as_str())
            {
                Ownership::Released
            } else {
                Ownership::Foreign
            }
        }
    }
}

/// What must be done to turn `current` (ours) into `desired`.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Nothing: the Secret is as it should be.
    None,
    /// Replace it with this object (same name and resource version).
    Replace(Box<Secret>),
    /// Its type differs, or it is immutable and should not be, neither of which can change:
    /// delete it and create anew.
    Recreate,
    /// It is immutable and its data differs: the data stays as it is, and the rest is made
    /// to match by this object, when anything else differs.
    Frozen(Option<Box<Secret>>),
}

/// How `current` differs from `desired`, a Secret for `env`. Labels, annotations and owner
/// references that others added are kept; the data, the type, our labels and annotations and
/// our owner reference (present or absent, by the deletion policy) are made to match.
pub fn update(current: &Secret, desired: &Secret, env: &Environment) -> Update {
    let opaque = |s: &Secret| s.type_.clone().unwrap_or_else(|| "Opaque".to_owned());
    let immutable = |s: &Secret| s.immutable == Some(true);
    if opaque(current) != opaque(desired) || (immutable(current) && !immutable(desired)) {
        return Update::Recreate;
    }
    let mut next = current.clone();
    next.metadata.managed_fields = None;
    next.string_data = None;
    let empty = BTreeMap::new();
    let mut frozen = false;
    if next.data.as_ref().unwrap_or(&empty) != desired.data.as_ref().unwrap_or(&empty) {
        if immutable(current) {
            frozen = true;
        } else {
            next.data = desired.data.clone();
        }
    }
    if immutable(desired) && !immutable(current) {
        next.immutable = Some(true);
    }
    for (field, wanted) in [
        (&mut next.metadata.labels, &desired.metadata.labels),
        (
            &mut next.metadata.annotations,
            &desired.metadata.annotations,
        ),
    ] {
        for (k, v) in wanted.iter().flatten() {
            let map = field.get_or_insert_with(BTreeMap::new);
            if map.get(k) != Some(v) {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    match desired.metadata.owner_references.iter().flatten().next() {
        Some(ours) => {
            let refs = next.metadata.owner_references.get_or_insert_with(Vec::new);
            if !refs.iter().any(|r| r == ours) {
                refs.retain(|r| r.uid != ours.uid && r.controller != Some(true));
                refs.push(ours.clone());
            }
        }
        None => {
            if let (Some(refs), Some(uid)) =
                (&mut next.metadata.owner_references, &env.metadata.uid)
            {
                refs.retain(|r| &r.uid != uid);
                if refs.is_empty() {
                    next.metadata.owner_references = None;
                }
            }
        }
    }
    let mut compare = current.clone();
    compare.metadata.managed_fields = None;
    compare.string_data = None;
    let changed = compare != next;
    match (frozen, changed) {
        (true, changed) => Update::Frozen(changed.then(|| Box::new(next))),
        (false, false) => Update::None,
        (false, true) => Update::Replace(Box::new(next)),
    }
}

/// The field manager of `env`'s server-side applies (`creationPolicy: Merge`):
/// `coffer-operator/<name>`, one per `Environment`, so that several merging into one Secret
/// keep their keys apart (with its uid instead of a name too long for a field manager).
pub fn merge_manager(env: &Environment) -> String {
    let by_name = format!("{FIELD_MANAGER}/{}", env.name_any());
    if by_name.len() <= 128 {
        by_name
    } else {
        format!(
            "{FIELD_MANAGER}/{}",
            env.metadata.uid.as_deref().unwrap_or_default()
        )
    }
}

/// What the server-side applies of field manager `manager` own in `secret`: the data keys,
/// labels and annotations an `Environment` wrote under `creationPolicy: Merge`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub data: BTreeSet<String>,
    pub labels: BTreeSet<String>,
    pub annotations: BTreeSet<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// Reads [`Applied`] from `secret`'s managed fields.
pub fn applied(secret: &Secret, manager: &str) -> Applied {
    let mut applied = Applied::default();
    let entries = secret.metadata.managed_fields.iter().flatten();
    for entry in entries.filter(|e| {
        e.manager.as_deref() == Some(manager) && e.operation.as_deref() == Some("Apply")
    }) {
        let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else {
            continue;
        };
        let names = |value: Option<&serde_json::Value>| -> Vec<String> {
            value
                .and_then(serde_json::Value::as_object)
                .map(|o| {
                    o.keys()
                        .filter_map(|k| k.strip_prefix("f:").map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        applied.data.extend(names(fields.get("f:data")));
        let metadata = fields.get("f:metadata");
        applied
            .labels
            .extend(names(metadata.and_then(|m| m.get("f:labels"))));
        applied
            .annotations
            .extend(names(metadata.and_then(|m| m.get("f:annotations"))));
    }
    applied
}

/// Under `creationPolicy: Merge`: the object to server-side apply as `manager` to `current`
/// (someone else's Secret) so that it holds `desired`'s data, labels and annotations, and no
/// longer those an earlier apply wrote and `desired` lacks; `None` when it already does. It
/// carries `current`'s resource version, so it never creates a Secret deleted meanwhile.
pub fn merge(current: &Secret, desired: &Secret, manager: &str) -> Option<Box<Secret>> {
    let before = applied(current, manager);
    let keys = |m: Option<&BTreeMap<String, String>>| -> BTreeSet<String> {
        m.into_iter().flatten().map(|(k, _)| k.clone()).collect()
    };
    let contains_all = |have: Option<&BTreeMap<String, String>>,
                        want: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    };
    let empty = BTreeMap::new();
    let want_data = desired.data.as_ref().unwrap_or(&empty);
    let have_data = current.data.as_ref().unwrap_or(&empty);
    let up_to_date = before.data == want_data.keys().cloned().collect()
        && want_data.iter().all(|(k, v)| have_data.get(k) == Some(v))
        && before.labels == keys(desired.metadata.labels.as_ref())
        && contains_all(
            current.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        )
        && before.annotations == keys(desired.metadata.annotations.as_ref())
        && contains_all(
            current.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
        );
    if up_to_date {
        return None;
    }
    Some(Box::new(Secret {
        metadata: ObjectMeta {
            name: current.metadata.name.clone(),
            namespace: current.metadata.namespace.clone(),
            resource_version: current.metadata.resource_version.clone(),
            labels: desired.metadata.labels.clone(),
            annotations: desired.metadata.annotations.clone(),
            ..ObjectMeta::default()
        },
        data: Some(want_data.clone()),
        ..Secret::default()
    }))
}

/// What to do with a Secret the `Environment` no longer syncs into: the one under its old
/// `secretName`, or its Secret when it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Ours, owned, `creationPolicy: Owner` with `deletionPolicy: Delete`: delete it.
    Delete,
    /// Ours, owned, but to be kept: remove our owner reference (our labels stay, so an
    /// `Environment` of the same name takes it back).
    Release,
    /// Someone else's, with keys this `Environment` merged in: remove what its applies wrote.
    RemoveKeys,
    /// Nothing of ours to undo: released already, or not ours.
    Nothing,
}

/// What to do with `secret`, which `env` no longer syncs into.
pub fn retire(secret: &Secret, env: &Environment) -> Retire {
    let sync = &env.spec.sync;
    match ownership(secret, env) {
        Ownership::Owned
            if sync.creation_policy == CreationPolicy::Owner
                && sync.deletion_policy == DeletionPolicy::Delete =>
        {
            Retire::Delete
        }
        Ownership::Owned => Retire::Release,
        Ownership::Released => Retire::Nothing,
        Ownership::Foreign if !applied(secret, &merge_manager(env)).is_empty() => {
            Retire::RemoveKeys
        }
        Ownership::Foreign => Retire::Nothing,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::crd::EnvironmentSpec;

    fn environment(sync: serde_json::Value) -> Environment {
        let spec: EnvironmentSpec = serde_json::from_value(serde_json::json!({
            "projectRef": { "name": "web" },
            "environment": "production",
            "sync": sync,
        }))
        .unwrap();
        let mut env = Environment::new("web-prod", spec);
        env.metadata.namespace = Some("apps".into());
        env.metadata.uid = Some("0b5c5d2e-5f42-4a53-9d3b-5f1a4c2b8e11".into());
        env
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned())))
            .collect()
    }

    /// The Secret for data that fits the spec.
    fn desired_secret(
        env: &Environment,
        values: &BTreeMap<String, SecretString>,
        hash_key: &[u8],
    ) -> DesiredSecret {
        super::desired_secret(env, values, hash_key).unwrap()
    }

    #[test]
    fn the_secret_holds_exactly_the_selected_keys() {
        let env = environment(
            serde_json::json!({ "include": ["DB_*", "API_KEY"], "exclude": ["DB_ADMIN_*"] }),
        );
        let d = desired_secret(
            &env,
            &values(&[
                ("DB_URL", "u"),
                ("DB_ADMIN_PASSWORD", "p"),
                ("API_KEY", "k"),
                ("OTHER", "o"),
            ]),
            b"k",
        );
        let keys: Vec<&String> = d.secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["API_KEY", "DB_URL"]);
        assert_eq!(d.keys, 2);
        assert_eq!(d.secret.data.unwrap()["DB_URL"].0, b"u");
    }

    #[test]
    fn the_secret_is_named_labelled_typed_and_owned_by_its_environment() {
        let env = environment(serde_json::json!({
            "secretName": "web-secrets", "type": "kubernetes.io/dockerconfigjson",
            "labels": { "team": "payments", "app.kubernetes.io/managed-by": "someone-else" },
            "annotations": { "note": "synced" },
        }));
        let d = desired_secret(&env, &values(&[("A", "1")]), b"k");
        let meta = &d.secret.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-secrets"));
        assert_eq!(meta.namespace.as_deref(), Some("apps"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY, "our label wins");
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels[ENVIRONMENT_LABEL], "web-prod");
        assert_eq!(meta.annotations.as_ref().unwrap()["note"], "synced");
        assert_eq!(
            d.secret.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        assert_eq!(
            meta.owner_references, None,
            "deletionPolicy Retain: no owner"
        );
    }

    #[test]
    fn only_the_delete_policy_makes_the_environment_the_secrets_owner() {
        let env = environment(serde_json::json!({ "deletionPolicy": "Delete" }));
        let d = desired_secret(&env, &values(&[("A", "1")]), b"k");
        let owner = &d.secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Environment", "web-prod", Some(true))
        );
        assert_eq!(ownership(&d.secret, &env), Ownership::Owned);

        // Retain: the same Secret is ours by its labels alone.
        let retain = environment(serde_json::json!({}));
        let d = desired_secret(&retain, &values(&[("A", "1")]), b"k");
        assert_eq!(d.secret.metadata.owner_references, None);
        assert_eq!(ownership(&d.secret, &retain), Ownership::Released);
    }

    #[test]
    fn switching_the_deletion_policy_adds_or_removes_only_our_owner_reference() {
        let delete = environment(serde_json::json!({ "deletionPolicy": "Delete" }));
        let retain = environment(serde_json::json!({}));
        let data = values(&[("A", "1")]);
        let mut owned = desired_secret(&delete, &data, b"k").secret;
        owned.metadata.resource_version = Some("7".into());
        let other = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "keeper".into(),
            uid: "another-uid".into(),
            ..Default::default()
        };
        owned
            .metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(other.clone());

        // Delete -> Retain: our reference goes, another owner's stays.
        let released = desired_secret(&retain, &data, b"k").secret;
        let Update::Replace(next) = update(&owned, &released, &retain) else {
            panic!("expected a replace")
        };
        assert_eq!(next.metadata.owner_references, Some(vec![other.clone()]));
        let mut only_ours = owned.clone();
        only_ours.metadata.owner_references.as_mut().unwrap().pop();
        let Update::Replace(next) = update(&only_ours, &released, &retain) else {
            panic!("expected a replace")
        };
        assert_eq!(next.metadata.owner_references, None);
        assert_eq!(update(&next, &released, &retain), Update::None);

        // Retain -> Delete: our reference comes back.
        let wanted = desired_secret(&delete, &data, b"k").secret;
        let Update::Replace(next) = update(&next, &wanted, &delete) else {
            panic!("expected a replace")
        };
        assert_eq!(
            next.metadata.owner_references,
            wanted.metadata.owner_references
        );
    }

    #[test]
    fn the_secret_defaults_to_an_opaque_secret_named_after_the_environment() {
        let env = environment(serde_json::json!({}));
        let d = desired_secret(&env, &values(&[]), b"k");
        assert_eq!(d.secret.metadata.name.as_deref(), Some("web-prod"));
        assert_eq!(d.secret.type_.as_deref(), Some("Opaque"));
        assert!(d.secret.data.unwrap().is_empty());
    }

    fn secret(labels: &[(&str, &str)], owner_uid: Option<&str>) -> Secret {
        let env = environment(serde_json::json!({ "deletionPolicy": "Delete" }));
        let mut s = desired_secret(&env, &values(&[("A", "1")]), b"k").secret;
        s.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        match owner_uid {
            Some(uid) => s.metadata.owner_references.as_mut().unwrap()[0].uid = uid.to_owned(),
            None => s.metadata.owner_references = None,
        }
        s
    }

    #[test]
    fn a_secret_is_ours_by_its_controller_reference_or_our_labels() {
        let env = environment(serde_json::json!({}));
        let uid = env.metadata.uid.clone().unwrap();
        assert_eq!(ownership(&secret(&[], Some(&uid)), &env), Ownership::Owned);
        assert_eq!(
            ownership(&secret(&[], Some("another-uid")), &env),
            Ownership::Foreign
        );
        assert_eq!(ownership(&secret(&[], None), &env), Ownership::Foreign);
        let ours = [
            (MANAGED_BY_LABEL, MANAGED_BY),
            (ENVIRONMENT_LABEL, "web-prod"),
        ];
        assert_eq!(ownership(&secret(&ours, None), &env), Ownership::Released);
        let other_env = [
            (MANAGED_BY_LABEL, MANAGED_BY),
            (ENVIRONMENT_LABEL, "web-dev"),
        ];
        assert_eq!(
            ownership(&secret(&other_env, None), &env),
            Ownership::Foreign
        );
        // our labels do not win over another controller
        assert_eq!(
            ownership(&secret(&ours, Some("another-uid")), &env),
            Ownership::Foreign
        );
    }

    #[test]
    fn an_up_to_date_secret_needs_no_write() {
        let env = environment(serde_json::json!({ "labels": { "team": "a" } }));
        let desired = desired_secret(&env, &values(&[("A", "1"), ("B", "2")]), b"k").secret;
        let mut current = desired.clone();
        current.metadata.resource_version = Some("7".into());
        current
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by-someone".into(), "x".into());
        assert_eq!(update(&current, &desired, &env), Update::None);
    }

    #[test]
    fn edited_data_labels_and_owners_are_restored_and_other_additions_kept() {
        let env = environment(
            serde_json::json!({ "labels": { "team": "a" }, "deletionPolicy": "Delete" }),
        );
        let desired = desired_secret(&env, &values(&[("A", "1"), ("B", "2")]), b"k").secret;
        let mut current = desired.clone();
        current.metadata.resource_version = Some("7".into());
        let data = current.data.as_mut().unwrap();
        data.insert("A".into(), ByteString(b"tampered".to_vec()));
        data.insert("EXTRA".into(), ByteString(b"x".to_vec()));
        data.remove("B");
        let labels = current.metadata.labels.as_mut().unwrap();
        labels.remove("team");
        labels.insert("added-by-someone".into(), "x".into());
        current.metadata.owner_references = None;
        let Update::Replace(next) = update(&current, &desired, &env) else {
            panic!("expected a replace")
        };
        assert_eq!(next.data, desired.data);
        assert_eq!(next.metadata.resource_version.as_deref(), Some("7"));
        let labels = next.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["added-by-someone"], "x");
        assert_eq!(
            next.metadata.owner_references,
            desired.metadata.owner_references
        );
    }

    #[test]
    fn a_changed_type_needs_a_new_secret() {
        let env = environment(serde_json::json!({ "type": "kubernetes.io/tls" }));
        let desired = desired_secret(&env, &values(&[]), b"k").secret;
        let current = secret(&[], None);
        assert_eq!(update(&current, &desired, &env), Update::Recreate);
    }

    #[test]
    fn the_hash_changes_with_the_data_only_and_reveals_nothing() {
        let env = environment(serde_json::json!({}));
        let a = desired_secret(&env, &values(&[("A", "s3cr3t"), ("B", "2")]), b"key");
        let again = desired_secret(&env, &values(&[("B", "2"), ("A", "s3cr3t")]), b"key");
        let changed = desired_secret(&env, &values(&[("A", "s3cr3u"), ("B", "2")]), b"key");
        // Moving a byte between key and value is a different secret.
        let shifted = desired_secret(&env, &values(&[("AB", ""), ("B", "2")]), b"key");
        let other_key = desired_secret(&env, &values(&[("A", "s3cr3t"), ("B", "2")]), b"other");
        assert_eq!(a.hash, again.hash);
        assert_ne!(a.hash, changed.hash);
        assert_ne!(a.hash, shifted.hash);
        assert_ne!(a.hash, other_key.hash);
        assert_eq!(a.hash.len(), 16 + 1 + 64);
        assert!(!a.hash.contains("s3cr3t"));
        // The key id names the key, and only the key.
        assert_eq!(hash_key_id(&a.hash), Some(key_id(b"key").as_str()));
        assert_eq!(hash_key_id(&changed.hash), hash_key_id(&a.hash));
        assert_eq!(
            hash_key_id(&other_key.hash),
            Some(key_id(b"other").as_str())
        );
        assert_ne!(key_id(b"key"), key_id(b"other"));
        assert!(!key_id(b"key").contains(&hex::encode(b"key")));
        assert_eq!(hash_key_id(&"0".repeat(64)), None);
    }

    /// The data `env` makes of `pairs`, as text, or the error.
    fn data_of(env: &Environment, pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        super::desired_secret(env, &values(pairs), b"k")
            .map(|d| {
                d.secret
                    .data
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_are_renamed_after_include_and_exclude_select_them_by_their_coffer_names() {
        let env = environment(serde_json::json!({
            "include": ["TLS_*", "DB_PASSWORD", "OTHER"],
            "exclude": ["TLS_OLD"],
            "keys": [
                { "from": "TLS_CERT", "to": "tls.crt" },
                { "from": "TLS_KEY", "to": "tls.key" },
                { "from": "TLS_CERT", "to": "ca.crt" },
                { "from": "DB_PASSWORD", "to": "password" },
                { "from": "TLS_OLD", "to": "old.crt" },
                { "from": "NOT_SELECTED", "to": "x" },
            ],
        }));
        let data = data_of(
            &env,
            &[
                ("TLS_CERT", "C"),
                ("TLS_KEY", "K"),
                ("TLS_OLD", "O"),
                ("DB_PASSWORD", "P"),
                ("NOT_SELECTED", "N"),
                ("OTHER", "1"),
            ],
        );
        assert_eq!(
            data.unwrap(),
            text(&[
                ("OTHER", "1"),
                ("ca.crt", "C"),
                ("password", "P"),
                ("tls.crt", "C"),
                ("tls.key", "K"),
            ])
        );
    }

    #[test]
    fn key_mappings_must_name_a_coffer_key_and_a_valid_secret_key_once() {
        let long = "a".repeat(254);
        let cases = [
            (
                serde_json::json!([{ "from": "A", "to": "a/b" }]),
                "spec.sync.keys[0].to",
                "not a valid Secret key",
            ),
            (
                serde_json::json!([{ "from": "A", "to": "" }]),
                "spec.sync.keys[0].to",
                "not a valid Secret key",
            ),
            (
                serde_json::json!([{ "from": "A", "to": ".." }]),
                "spec.sync.keys[0].to",
                "not a valid Secret key",
            ),
            (
                serde_json::json!([{ "from": "A", "to": long }]),
                "spec.sync.keys[0].to",
                "at most 253",
            ),
            (
                serde_json::json!([{ "from": "1A", "to": "a" }]),
                "spec.sync.keys[0].from",
                "not the name of a coffer-server key",
            ),
            (
                serde_json::json!([{ "from": "A", "to": "x" }, { "from": "B", "to": "x" }]),
                "spec.sync.keys[1].to",
                "already written by spec.sync.keys[0]",
            ),
        ];
        for (keys, field, problem) in cases {
            let env = environment(serde_json::json!({ "keys": keys }));
            let e = validate(&env.spec.sync).unwrap_err();
            assert_eq!(e.field, field, "{keys}");
            assert!(e.problem.contains(problem), "{keys}: {e}");
        }
        let fine = "a".repeat(253);
        let env = environment(serde_json::json!({ "keys": [
            { "from": "A", "to": fine }, { "from": "B.x-y", "to": ".dockerconfigjson" },
        ] }));
        assert_eq!(validate(&env.spec.sync), Ok(()));
    }

    #[test]
    fn two_sources_for_one_secret_key_are_refused_naming_both_and_no_value() {
        let env = environment(serde_json::json!({ "keys": [{ "from": "A", "to": "B" }] }));
        let e = data_of(&env, &[("A", "s3cr3t"), ("B", "other")]).unwrap_err();
        assert!(e.starts_with("spec.sync.keys: "), "{e}");
        assert!(
            e.contains("\"B\" would be written from both \"A\" and \"B\""),
            "{e}"
        );
        assert!(!e.contains("s3cr3t") && !e.contains("other"));
        // excluding one of them settles it
        let env = environment(
            serde_json::json!({ "keys": [{ "from": "A", "to": "B" }], "exclude": ["B"] }),
        );
        assert_eq!(
            data_of(&env, &[("A", "1"), ("B", "2")]).unwrap(),
            text(&[("B", "1")])
        );

        let env = environment(serde_json::json!({
            "keys": [{ "from": "A", "to": "URL" }], "templates": { "URL": "x" },
        }));
        let e = validate(&env.spec.sync).unwrap_err();
        assert_eq!(e.field, "spec.sync.templates[\"URL\"]");
        assert!(
            e.problem.contains("already written by spec.sync.keys[0]"),
            "{e}"
        );
        let env = environment(serde_json::json!({ "templates": { "URL": "x" } }));
        let e = data_of(&env, &[("URL", "raw")]).unwrap_err();
        assert!(e.contains("also written from the key \"URL\""), "{e}");
    }

    #[test]
    fn templates_build_keys_from_every_value_of_the_environment() {
        let env = environment(serde_json::json!({
            "include": ["APP_*"],
            "type": "kubernetes.io/dockerconfigjson",
            "templates": {
                "DATABASE_URL": "postgres://{{ .DB_USER }}:{{.DB_PASSWORD}}@db:5432/app",
                ".dockerconfigjson": concat!(
                    "{\"auths\":{\"registry.example\":{",
                    "\"username\":{{ .REG_USER | toJson }},",
                    "\"password\":{{ .REG_PASSWORD | toJson }},",
                    "\"auth\":\"{{ .REG_USER \":\" .REG_PASSWORD | b64enc }}\"}}}",
                ),
            },
        }));
        let data = data_of(
            &env,
            &[
                ("APP_MODE", "prod"),
                ("DB_USER", "app"),
                ("DB_PASSWORD", "pw"),
                ("REG_USER", "bot"),
                ("REG_PASSWORD", "p\"w"),
            ],
        )
        .unwrap();
        let data: BTreeMap<_, _> = data.into_iter().collect();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [".dockerconfigjson", "APP_MODE", "DATABASE_URL"]
        );
        assert_eq!(data["DATABASE_URL"], "postgres://app:pw@db:5432/app");
        let config: serde_json::Value = serde_json::from_str(&data[".dockerconfigjson"]).unwrap();
        let entry = &config["auths"]["registry.example"];
        assert_eq!(entry["password"], "p\"w");
        assert_eq!(entry["auth"], "Ym90OnAidw==");
    }

    #[test]
    fn template_errors_name_the_template_and_the_place_never_a_value() {
        let env = environment(serde_json::json!({
            "templates": { "URL": "postgres://{{ .USER }}:{{ .PASSWORD }}@db" },
        }));
        let e = data_of(&env, &[("USER", "s3cr3t-user")]).unwrap_err();
        assert_eq!(
            e,
            "spec.sync.templates[\"URL\"]: at byte 26: .PASSWORD is not a key of the environment"
        );
        let env = environment(serde_json::json!({ "templates": { "K": "{{ .A | b64dec }}" } }));
        let e = data_of(&env, &[("A", "not base64!")]).unwrap_err();
        assert_eq!(
            e,
            "spec.sync.templates[\"K\"]: at byte 8: b64dec: the input is not base64"
        );

        let cases = [
            (
                serde_json::json!({ "K": "{{ .A " }),
                "spec.sync.templates[\"K\"]",
                "at byte 0: `{{` is not closed",
            ),
            (
                serde_json::json!({ "K": "{{ .A | sha1 }}" }),
                "spec.sync.templates[\"K\"]",
                "at byte 8: unknown function `sha1`",
            ),
            (
                serde_json::json!({ "bad/key": "x" }),
                "spec.sync.templates[\"bad/key\"]",
                "not a valid Secret key",
            ),
        ];
        for (templates, field, problem) in cases {
            let env = environment(serde_json::json!({ "templates": templates }));
            let e = validate(&env.spec.sync).unwrap_err();
            assert_eq!(e.field, field, "{templates}");
            assert!(e.problem.contains(problem), "{templates}: {e}");
        }
    }

    #[test]
    fn templates_are_bounded_in_number_size_and_output() {
        let small = Limits {
            templates: 2,
            template_bytes: 16,
            data_bytes: 32,
        };
        let sync = |templates: serde_json::Value| {
            environment(serde_json::json!({ "templates": templates }))
                .spec
                .sync
        };
        let e = shape(
            &sync(serde_json::json!({ "A": "", "B": "", "C": "" })),
            small,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.sync.templates: 3 templates, more than the 2 allowed"
        );
        assert!(shape(&sync(serde_json::json!({ "A": "", "B": "" })), small).is_ok());
        let e = shape(&sync(serde_json::json!({ "A": "x".repeat(17) })), small).unwrap_err();
        assert!(
            e.problem.contains("17 bytes, more than the 16 allowed"),
            "{e}"
        );
        assert!(shape(&sync(serde_json::json!({ "A": "x".repeat(16) })), small).is_ok());

        // 10 bytes of raw data leave 22 for templates
        let spec = sync(serde_json::json!({ "T": "{{ .V .V .V }}" }));
        let pass = |v: &str| {
            shape(&spec, small)
                .unwrap()
                .data(&values(&[("RAW", "0123456789"), ("V", v)]))
                .map(|d| d.len())
        };
        assert!(pass("1234567").is_err(), "10 + 7 + 21 = 38 bytes");
        let e = pass("12345678").unwrap_err();
        assert_eq!(e.field, "spec.sync");
        assert!(e.problem.contains("exceed 32 bytes"), "{e}");
        assert_eq!(pass("1234"), Ok(3), "10 + 4 + 12 = 26 bytes");
        // raw data alone over the limit
        let raw = shape(&sync(serde_json::json!({})), small)
            .unwrap()
            .data(&values(&[("RAW", &"x".repeat(33))]));
        assert!(raw.unwrap_err().problem.contains("exceed 32 bytes"));
        assert_eq!(LIMITS.templates, 100);
        assert_eq!(LIMITS.template_bytes, 64 * 1024);
        assert_eq!(LIMITS.data_bytes, 1024 * 1024);
    }

    #[test]
    fn orphan_and_merge_never_delete_and_merge_is_never_immutable() {
        for policy in ["Orphan", "Merge"] {
            let env = environment(
                serde_json::json!({ "creationPolicy": policy, "deletionPolicy": "Delete" }),
            );
            let e = validate(&env.spec.sync).unwrap_err();
            assert_eq!(e.field, "spec.sync.deletionPolicy");
            assert!(e.problem.contains(policy), "{e}");
            let env = environment(serde_json::json!({ "creationPolicy": policy }));
            assert_eq!(validate(&env.spec.sync), Ok(()));
        }
        let env = environment(serde_json::json!({ "creationPolicy": "Merge", "immutable": true }));
        assert_eq!(
            validate(&env.spec.sync).unwrap_err().field,
            "spec.sync.immutable"
        );
        let env = environment(serde_json::json!({ "creationPolicy": "Orphan", "immutable": true }));
        assert_eq!(validate(&env.spec.sync), Ok(()));
    }

    #[test]
    fn an_orphan_secret_carries_our_labels_but_no_owner_reference() {
        let env = environment(serde_json::json!({ "creationPolicy": "Orphan" }));
        let d = desired_secret(&env, &values(&[("A", "1")]), b"k");
        assert_eq!(d.secret.metadata.owner_references, None);
        assert_eq!(ownership(&d.secret, &env), Ownership::Released);
    }

    #[test]
    fn an_immutable_secret_keeps_its_data_but_follows_the_metadata() {
        let env = environment(serde_json::json!({ "immutable": true, "labels": { "team": "a" } }));
        let first = desired_secret(&env, &values(&[("A", "1")]), b"k").secret;
        assert_eq!(first.immutable, Some(true));
        let mut current = first.clone();
        current.metadata.resource_version = Some("7".into());
        assert_eq!(update(&current, &first, &env), Update::None);

        let changed = desired_secret(&env, &values(&[("A", "2")]), b"k").secret;
        assert_eq!(update(&current, &changed, &env), Update::Frozen(None));
        current.metadata.labels.as_mut().unwrap().remove("team");
        let Update::Frozen(Some(next)) = update(&current, &changed, &env) else {
            panic!("expected a metadata write")
        };
        assert_eq!(next.data, first.data, "the data stays");
        assert_eq!(next.metadata.labels.as_ref().unwrap()["team"], "a");

        // Turning `immutable` off needs a new Secret; turning it on does not.
        let mutable = environment(serde_json::json!({ "labels": { "team": "a" } }));
        let wanted = desired_secret(&mutable, &values(&[("A", "1")]), b"k").secret;
        assert_eq!(update(&current, &wanted, &mutable), Update::Recreate);
        let mut plain = wanted.clone();
        plain.metadata.resource_version = Some("7".into());
        let Update::Replace(next) = update(&plain, &first, &env) else {
            panic!("expected a replace")
        };
        assert_eq!(next.immutable, Some(true));
    }

    /// The field manager of the test's `Environment` `web-prod`.
    const MANAGER: &str = "coffer-operator/web-prod";

    fn managed(
        fields: serde_json::Value,
    ) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        vec![
            ManagedFieldsEntry {
                manager: Some(MANAGER.into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(fields)),
                ..Default::default()
            },
            // someone else's, another Environment's merge, and the operator's non-apply
            // writes are not what this Environment merged
            ManagedFieldsEntry {
                manager: Some(format!("{FIELD_MANAGER}/web-dev")),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({ "f:data": { "f:DEV": {} } }))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("kubectl-create".into()),
                operation: Some("Update".into()),
                fields_v1: Some(FieldsV1(
                    serde_json::json!({ "f:data": { "f:FOREIGN": {} } }),
                )),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some(FIELD_MANAGER.into()),
                operation: Some("Update".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({ "f:data": { "f:OTHER": {} } }))),
                ..Default::default()
            },
        ]
    }

    /// Someone else's Secret holding `FOREIGN` and what a merge of `ours` wrote.
    fn merged(ours: &[(&str, &str)]) -> Secret {
        let mut data: BTreeMap<String, ByteString> = ours
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect();
        data.insert("FOREIGN".into(), ByteString(b"f".to_vec()));
        let fields: serde_json::Map<String, serde_json::Value> = ours
            .iter()
            .map(|(k, _)| (format!("f:{k}"), serde_json::json!({})))
            .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some("shared".into()),
                namespace: Some("apps".into()),
                resource_version: Some("42".into()),
                labels: Some([("owner-label".to_owned(), "x".to_owned())].into()),
                managed_fields: Some(managed(serde_json::json!({ "f:data": fields }))),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    #[test]
    fn merged_keys_are_read_from_our_applies_only() {
        let secret = merged(&[("A", "1"), ("tls.crt", "c")]);
        let a = applied(&secret, MANAGER);
        assert_eq!(a.data, ["A".to_owned(), "tls.crt".to_owned()].into());
        assert!(a.labels.is_empty() && !a.is_empty());
        assert!(applied(&merged(&[]), MANAGER).is_empty());
    }

    #[test]
    fn a_merge_applies_only_our_keys_and_labels_when_they_differ() {
        let env = environment(serde_json::json!({
            "creationPolicy": "Merge", "secretName": "shared", "labels": { "team": "a" },
        }));
        let desired = desired_secret(&env, &values(&[("A", "1"), ("B", "2")]), b"k").secret;
        assert_eq!(desired.type_, None, "the type is the Secret's creator's");
        assert_eq!(
            desired.metadata.labels,
            Some([("team".to_owned(), "a".to_owned())].into())
        );

        // first merge: our keys and labels, with the resource version as a precondition
        let current = merged(&[]);
        let apply = merge(&current, &desired, MANAGER).unwrap();
        assert_eq!(apply.data, desired.data);
        assert_eq!(apply.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(apply.metadata.labels, desired.metadata.labels);
        assert_eq!((apply.type_.as_ref(), apply.immutable), (None, None));

        // merged already: nothing to do
        let mut current = merged(&[("A", "1"), ("B", "2")]);
        current
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        let mut fields = serde_json::json!({ "f:data": { "f:A": {}, "f:B": {} },
            "f:metadata": { "f:labels": { "f:team": {} } } });
        current.metadata.managed_fields = Some(managed(fields.clone()));
        assert_eq!(merge(&current, &desired, MANAGER), None);

        // a value edited by hand, a key gone from coffer-server, a label dropped: apply again
        let mut edited = current.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("A".into(), ByteString(b"x".to_vec()));
        assert!(merge(&edited, &desired, MANAGER).is_some());
        let fewer = desired_secret(&env, &values(&[("A", "1")]), b"k").secret;
        let apply = merge(&current, &fewer, MANAGER).unwrap();
        assert_eq!(apply.data.unwrap().keys().collect::<Vec<_>>(), ["A"]);
        fields["f:metadata"]["f:labels"] = serde_json::json!({ "f:team": {}, "f:old": {} });
        current.metadata.managed_fields = Some(managed(fields));
        assert!(merge(&current, &desired, MANAGER).is_some());
    }

    #[test]
    fn a_secret_no_longer_synced_is_deleted_released_emptied_of_our_keys_or_left() {
        let delete = environment(serde_json::json!({ "deletionPolicy": "Delete" }));
        let retain = environment(serde_json::json!({}));
        let orphan = environment(serde_json::json!({ "creationPolicy": "Orphan" }));
        let owned = desired_secret(&delete, &values(&[("A", "1")]), b"k").secret;
        assert_eq!(retire(&owned, &delete), Retire::Delete);
        assert_eq!(retire(&owned, &retain), Retire::Release);
        assert_eq!(retire(&owned, &orphan), Retire::Release);
        let released = desired_secret(&retain, &values(&[("A", "1")]), b"k").secret;
        for env in [&delete, &retain, &orphan] {
            assert_eq!(retire(&released, env), Retire::Nothing);
        }
        let merge = environment(serde_json::json!({ "creationPolicy": "Merge" }));
        assert_eq!(retire(&merged(&[("A", "1")]), &merge), Retire::RemoveKeys);
        assert_eq!(retire(&merged(&[]), &merge), Retire::Nothing);
        assert_eq!(merge_manager(&merge), MANAGER);
        let mut other = environment(serde_json::json!({ "creationPolicy": "Merge" }));
        other.metadata.name = Some("web-dev".into());
        assert_eq!(
            retire(&merged(&[]), &other),
            Retire::RemoveKeys,
            "its own merge only"
        );
        let mut long = other.clone();
        long.metadata.name = Some("x".repeat(200));
        assert_eq!(
            merge_manager(&long),
            "coffer-operator/0b5c5d2e-5f42-4a53-9d3b-5f1a4c2b8e11"
        );
        assert_eq!(retire(&secret(&[], None), &delete), Retire::Nothing);
    }
}
