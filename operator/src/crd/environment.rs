use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, SpecError};

/// The shortest `spec.sync.refreshInterval` accepted.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
const MIN_REFRESH_INTERVAL_TEXT: &str = "5s";
const DEFAULT_REFRESH_INTERVAL: &str = "5m";
const DEFAULT_SECRET_TYPE: &str = "Opaque";

/// An environment of a coffer-server project, synced into a Kubernetes Secret of this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[allow(
    clippy::duplicated_attributes,
    reason = "printer columns repeat `type_ = ...`, which clippy takes for duplicates"
)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "Environment",
    namespaced,
    status = "EnvironmentStatus",
    shortname = "cenv",
    category = "coffer",
    doc = "An environment of a coffer-server project, synced into a Secret of this namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Sync",
        type_ = "string",
        json_path = ".status.syncMode",
        description = "How changes reach the Secret: Push (event stream) or Poll (refreshInterval)"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.revision",
        description = "Revision of the environment in coffer-server that was last synced"
    ),
    printcolumn(
        name = "Keys",
        type_ = "integer",
        json_path = ".status.syncedKeys",
        description = "Number of keys in the synced Secret"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The `Project` (in this namespace) that the environment belongs to.
    pub project_ref: ProjectRef,
    /// Slug of the environment in coffer-server, e.g. `production`.
    pub environment: String,
    /// Create the environment in coffer-server when it does not exist. Default: false, and a
    /// missing environment is reported in the Ready condition.
    #[serde(default)]
    pub create: bool,
    /// How the environment's secrets are written into a Kubernetes Secret.
    #[serde(default)]
    pub sync: SyncSpec,
    /// Dynamic secrets of the environment (short-lived database credentials, configured in
    /// coffer-server), each leased into a Secret of its own: the operator issues a lease once,
    /// renews it before it expires, and before its maximum TTL issues the next one, writes it,
    /// restarts the workloads named and revokes the previous lease after a grace period.
    /// Removing an entry, or deleting this resource, revokes its leases. At most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub dynamic_secrets: Vec<DynamicSecretSpec>,
}

/// The most `spec.dynamicSecrets` entries of one `Environment`.
pub const MAX_DYNAMIC_SECRETS: usize = 20;

/// A dynamic secret of the environment, leased into a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicSecretSpec {
    /// Name of the dynamic secret in coffer-server (in this environment): lowercase letters,
    /// digits and `-`, at most 63 characters.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Name of the Secret (in this namespace) that holds the lease's credentials under the keys
    /// `username`, `password` and `connection_url`. It must differ from the synced Secret and
    /// from the Secret of every other entry; a Secret of that name that is not this
    /// resource's is never overwritten.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
    /// How long each lease lasts, and how far each renewal extends it, e.g. `1h` or `90s`
    /// (hours, minutes and seconds). Default: the dynamic secret's default TTL. Never beyond
    /// its maximum TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Renew a lease this long before it expires (and issue the next one this long before
    /// its maximum TTL), e.g. `10m`. Default: one third of the lease's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Workloads in this namespace to restart when the Secret gets new credentials (the next
    /// lease), as `spec.sync.rolloutRestart` does for the synced Secret. Not on the first
    /// lease, never on a renewal (the credentials stay the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_restart: Vec<RolloutTarget>,
    /// More keys of the Secret, built from the credentials: `{{ .username }}`,
    /// `{{ .password }}` and `{{ .connection_url }}` are replaced (same syntax as
    /// `spec.sync.templates`), e.g. `DATABASE_URL: "{{ .connection_url }}"`. A change here
    /// (or of `secretName`) takes effect with new credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,
}

/// A reference to a `Project` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ProjectRef {
    /// Name of the `Project` resource.
    pub name: String,
}

/// How an environment is written into a Kubernetes Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// Name of the Secret to write, in this namespace. Defaults to the name of this resource.
    /// An existing Secret that this resource does not own is never overwritten (unless
    /// `creationPolicy` is `Merge`). When the name changes, the Secret of the old name is
    /// cleaned up as on deletion of this resource: deleted under `deletionPolicy: Delete`,
    /// left in place (no longer synced) under `Retain`, its merged keys removed under `Merge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Type of the Secret. Default: `Opaque`.
    #[serde(default = "default_secret_type", rename = "type")]
    pub type_: String,
    /// Labels to set on the Secret, besides the operator's own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations to set on the Secret, besides the operator's own.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Glob patterns (`*` matches any run of characters, `?` one character) of the keys to
    /// sync, by their names in coffer-server (before `keys` renames them). Empty: every key.
    #[serde(default)]
    pub include: Vec<String>,
    /// Glob patterns of keys not to sync, even when `include` selects them (names in
    /// coffer-server).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Renames: each synced key named `from` (in coffer-server) is written as `to` instead,
    /// e.g. `{from: TLS_CERT, to: tls.crt}`. `include`/`exclude` select by the coffer-server
    /// name first; a key they leave out is not written under any name. One key may be written
    /// under several names; two keys (or a key and a template) written to one Secret key are
    /// refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyMapping>,
    /// Secret keys built from the environment's values: `{{ .KEY }}` is replaced with the value
    /// of the coffer-server key `KEY` (any key of the environment, whether synced or not),
    /// e.g. `DATABASE_URL: "postgres://{{ .DB_USER }}:{{ .DB_PASSWORD }}@db:5432/app"`.
    /// Inside `{{ }}`: one or more operands (`.KEY` or a "quoted string"), concatenated, then
    /// optionally piped through `b64enc`, `b64dec` or `toJson` (a JSON string literal), e.g.
    /// `{{ .USER ":" .PASSWORD | b64enc }}`. An unknown key or function or a syntax error is
    /// `InvalidSpec`. At most 100 templates of at most 64 KiB each; the Secret's data stays
    /// within 1 MiB.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,
    /// Create the Secret immutable. Its data then never changes in place: when the
    /// environment's data changes, the Secret keeps the data it was created with and `Ready`
    /// turns `False` with reason `SecretImmutable`; delete the Secret to have it created anew
    /// with the current data. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
    /// Whose the Secret is: `Owner` (default) creates and manages it; `Orphan` creates and
    /// updates it but never deletes it (needs `deletionPolicy: Retain`); `Merge` writes the
    /// synced keys into an existing Secret someone else created and labelled
    /// `coffer.dev/merge: "true"`, keeping its other keys, labels and type, never creates it,
    /// and removes only its own keys when this resource is deleted (needs `deletionPolicy:
    /// Retain`).
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    /// How often the environment is read from coffer-server, as hours, minutes and seconds,
    /// e.g. `30s`, `5m`, `1h30m`. Default: `5m`; minimum: `5s`. While the operator follows the
    /// project's event stream (`status.syncMode: Push`) a change arrives within about a second
    /// and this is the safety net; while it cannot (`Poll`), changes arrive at this pace.
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: String,
    /// What happens to the Secret when this resource is deleted: `Retain` (default) leaves it
    /// in place without this resource's owner reference, `Delete` deletes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Workloads whose pods are restarted (by a rolling update) when the synced data changes.
    #[serde(default)]
    pub rollout_restart: Vec<RolloutTarget>,
}

impl Default for SyncSpec {
    fn default() -> Self {
        Self {
            secret_name: None,
            type_: default_secret_type(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            keys: Vec::new(),
            templates: BTreeMap::new(),
            immutable: false,
            creation_policy: CreationPolicy::default(),
            refresh_interval: default_refresh_interval(),
            deletion_policy: DeletionPolicy::default(),
            rollout_restart: Vec::new(),
        }
    }
}

fn default_secret_type() -> String {
    DEFAULT_SECRET_TYPE.to_owned()
}

fn default_refresh_interval() -> String {
    DEFAULT_REFRESH_INTERVAL.to_owned()
}

/// A synced key written under another name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct KeyMapping {
    /// The key's name in coffer-server.
    pub from: String,
    /// The key in the Secret: letters, digits, `-`, `_` and `.`, at most 253 characters
    /// (e.g. `password`, `tls.crt`, `.dockerconfigjson`).
    pub to: String,
}

/// Who creates the Secret and who may delete it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CreationPolicy {
    /// The operator creates the Secret and keeps it; `deletionPolicy` says what happens to it
    /// when this resource is deleted. A Secret of the name that is not the operator's is
    /// never touched.
    #[default]
    Owner,
    /// Like `Owner`, but the Secret is never deleted by the operator and never carries an
    /// owner reference: not on deletion of this resource, not when `secretName` changes.
    Orphan,
    /// Write the synced keys into an existing Secret that its owner labelled
    /// `coffer.dev/merge: "true"` (server-side apply, field manager
    /// `coffer-operator/<name of this resource>`), keeping its other keys, labels and type.
    /// A missing Secret is reported (`SecretNotFound`), never created; on deletion of this
    /// resource (or a change of `secretName`) only the keys written here are removed.
    Merge,
}

/// A workload in this namespace to restart when the synced data changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RolloutTarget {
    /// Kind of the workload.
    pub kind: WorkloadKind,
    /// Name of the workload.
    pub name: String,
}

/// A kind of workload that can be restarted by patching its pod template.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadKind {
    /// An `apps/v1` Deployment.
    Deployment,
    /// An `apps/v1` StatefulSet.
    StatefulSet,
    /// An `apps/v1` DaemonSet.
    DaemonSet,
}

/// How changes reach the Secret now: `Push` while the operator follows coffer-server's event
/// stream of the project (a change arrives within about a second), `Poll` while it cannot (a
/// change arrives at the latest after `spec.sync.refreshInterval`). The environment is read
/// every `refreshInterval` either way.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SyncMode {
    /// The operator follows coffer-server's event stream of the project: a change arrives
    /// within about a second.
    Push,
    /// The event stream is not connected (coffer-server cannot be reached or refuses it, or the
    /// operator runs with `COFFER_EVENT_STREAMS=false`): a change arrives at the latest after
    /// `spec.sync.refreshInterval`.
    Poll,
}

/// The observed state of an `Environment`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// Revision of the environment in coffer-server that the Secret was last synced from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// HMAC of the synced data, to notice changes; never the data itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// Number of keys in the synced Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_keys: Option<i64>,
    /// Name of the Secret last synced: when `spec.sync.secretName` changes, the Secret of the
    /// old name is cleaned up by the policies (deleted, released, or its keys removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the Secret was last written or confirmed up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// How changes reach the Secret now (see [`SyncMode`]); unset while no environment is
    /// read (an invalid spec, a missing `Project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_mode: Option<SyncMode>,
    /// Workloads (`Kind/name`) restarted after the last change of the synced data.
    #[serde(default)]
    pub restarted_workloads: Vec<String>,
    /// Current state of the resource: `Ready` (everything works) and `Synced` (the Secret holds
    /// the environment's current keys), each with a reason when not true.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the spec that the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The leases of `spec.dynamicSecrets` (and of entries removed whose leases are not
    /// revoked yet): ids and expiry, never credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dynamic_secrets: Vec<DynamicSecretStatus>,
}

/// Where a dynamic secret's leases are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicSecretStatus {
    /// The entry's `name`.
    pub name: String,
    /// The Secret that holds the current lease's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The `metadata.generation` at which the entry was first seen: with `rotation`, part of
    /// the idempotency key of each lease, so an entry added again after removal never reuses
    /// the key of an earlier lease.
    pub epoch: i64,
    /// The counter in the idempotency key of the entry's next lease: one more with each lease
    /// issued, kept here so that no key is ever used twice.
    pub rotation: i64,
    /// The lease whose credentials the Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// When the current lease expires unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The current lease is never renewed beyond this: the next one is issued before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_expires_at: Option<Time>,
    /// Seconds the current lease lasted when issued: one third of it is the default
    /// `renewBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<i64>,
    /// When the operator renews the current lease (or issues the next one) at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,
    /// HMAC of the Secret's data (never the data): a Secret deleted or edited by hand gets new
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// HMAC of `secretName` and `templates` as the Secret was written: a change issues new
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape_hash: Option<String>,
    /// A lease issued whose credentials are not in the Secret yet: recorded first, so that a
    /// crash before the Secret is written loses no lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingLease>,
    /// Leases replaced by a newer one, revoked once their grace period is over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringLease>,
    /// Workloads (`Kind/name`) restarted for the current credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarted_workloads: Vec<String>,
    /// Why the last attempt to issue, renew or revoke failed (cleared once one succeeds); the
    /// Secret keeps its credentials meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What failed, in words (never a credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A lease just issued.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingLease {
    pub lease_id: String,
    /// The `rotation` it was issued for.
    pub rotation: i64,
    /// HMAC of the Secret's data with its credentials: when the Secret holds it, they were
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_expires_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<i64>,
}

/// A lease on its way out, with the Secret it was written to when that Secret goes with it
/// (the entry's `secretName` changed, or the entry was removed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiringLease {
    pub lease_id: String,
    /// When it is revoked.
    pub revoke_at: Time,
    /// A Secret of this resource deleted once the lease is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

impl Environment {
    /// Name of the target Secret: `spec.sync.secretName`, or else the resource's name.
    pub fn secret_name(&self) -> String {
        match &self.spec.sync.secret_name {
            Some(name) if !name.is_empty() => name.clone(),
            _ => self.name_any(),
        }
    }

    /// `spec.sync.refreshInterval`, parsed and checked.
    pub fn refresh_interval(&self) -> Result<Duration, SpecError> {
        parse_refresh_interval(&self.spec.sync.refresh_interval)
    }
}

/// Parses a refresh interval: a [`parse_duration`] of at least [`MIN_REFRESH_INTERVAL`].
pub fn parse_refresh_interval(value: &str) -> Result<Duration, SpecError> {
    let interval = parse_duration(value)?;
    if interval < MIN_REFRESH_INTERVAL {
        return Err(SpecError::RefreshIntervalTooShort {
            value: value.to_owned(),
            minimum: MIN_REFRESH_INTERVAL_TEXT,
        });
    }
    Ok(interval)
}

/// Parses a duration: one or more `<number><unit>` parts with the units `h`, `m` and `s`, each
/// at most once and in that order (`30s`, `5m`, `1h30m`, `2h0m15s`). Refuses anything else.
pub fn parse_duration(value: &str) -> Result<Duration, SpecError> {
    let invalid = |reason| SpecError::InvalidRefreshInterval {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut rest = value;
    let mut seconds: u64 = 0;
    // units still allowed, largest first, so each appears once and in order
    let mut units: &[(char, u64)] = &[('h', 3600), ('m', 60), ('s', 1)];
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let Some(unit) = chars.next() else {
            return Err(invalid("a number has no unit (h, m or s)"));
        };
        if unit == 'm' && chars.as_str().starts_with('s') {
            return Err(invalid("milliseconds are not supported"));
        }
        let Some(position) = units.iter().position(|(u, _)| *u == unit) else {
            return Err(if ['h', 'm', 's'].contains(&unit) {
                invalid("units must appear once each, in the order h, m, s")
            } else {
                invalid("unknown unit (use h, m or s)")
            });
        };
        let factor = units[position].1;
        units = &units[position + 1..];
        let part = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .and_then(|n| n.checked_add(seconds));
        seconds = part.ok_or_else(|| invalid("it is too large"))?;
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(seconds))
}

/// Whether `key` is synced: it matches one of `include` (or `include` is empty) and none of
/// `exclude`. Patterns are globs where `*` matches any run of characters and `?` one character.
pub fn key_selected(key: &str, include: &[String], exclude: &[String]) -> bool {
    let included = include.is_empty() || include.iter().any(|p| glob_matches(p, key));
    included && !exclude.iter().any(|p| glob_matches(p, key))
}

/// Glob matching with `*` and `?`, linear in practice: on a mismatch, backtrack only to the last
/// `*` (an earlier one can never do better).
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // position of the last `*` in the pattern, and where in the text it started matching
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    // let the `*` swallow one more character
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn environment(name: &str, secret_name: Option<&str>) -> Environment {
        Environment::new(
            name,
            EnvironmentSpec {
                project_ref: ProjectRef {
                    name: "web".to_owned(),
                },
                environment: "production".to_owned(),
                create: false,
                sync: SyncSpec {
                    secret_name: secret_name.map(str::to_owned),
                    ..SyncSpec::default()
                },
                dynamic_secrets: Vec::new(),
            },
        )
    }

    fn strings(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn refresh_intervals_combine_hours_minutes_and_seconds() {
        let cases = [
            ("5s", 5),
            ("30s", 30),
            ("5m", 300),
            ("1m30s", 90),
            ("2h", 7200),
            ("1h30m", 5400),
            ("1h0m5s", 3605),
            ("0h0m10s", 10),
            ("90s", 90),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_refresh_interval(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
    }

    #[test]
    fn the_default_refresh_interval_is_five_minutes() {
        assert_eq!(
            environment("app", None).refresh_interval(),
            Ok(Duration::from_secs(300))
        );
    }

    #[test]
    fn refresh_intervals_below_five_seconds_are_refused() {
        for text in ["4s", "0s", "0m", "0h0m4s"] {
            let error = parse_refresh_interval(text).unwrap_err();
            assert!(
                matches!(error, SpecError::RefreshIntervalTooShort { .. }),
                "{text}: {error}"
            );
            assert!(error.to_string().contains("minimum of 5s"), "{error}");
        }
    }

    #[test]
    fn malformed_refresh_intervals_are_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("5", "no unit"),
            ("m", "expected a number"),
            ("five minutes", "expected a number"),
            ("5 m", "unknown unit"),
            ("1d", "unknown unit"),
            ("-5m", "expected a number"),
            ("1.5h", "unknown unit"),
            ("500ms", "milliseconds"),
            ("30s1m", "order h, m, s"),
            ("1m1m", "order h, m, s"),
            ("99999999999999999999h", "too large"),
            ("5124095576030432h", "too large"),
        ];
        for (text, reason) in cases {
            let error = parse_refresh_interval(text).unwrap_err();
            assert!(
                matches!(error, SpecError::InvalidRefreshInterval { .. }),
                "{text}: {error}"
            );
            let message = error.to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("e.g. \"30s\""), "{message}");
        }
    }

    #[test]
    fn the_secret_name_is_the_spec_value_when_given() {
        assert_eq!(environment("app", Some("app-env")).secret_name(), "app-env");
    }

    #[test]
    fn the_secret_name_defaults_to_the_resource_name() {
        assert_eq!(environment("app", None).secret_name(), "app");
        assert_eq!(environment("app", Some("")).secret_name(), "app");
    }

    #[test]
    fn an_empty_include_list_selects_every_key() {
        assert!(key_selected("DATABASE_URL", &[], &[]));
        assert!(key_selected("", &[], &[]));
    }

    #[test]
    fn include_patterns_select_matching_keys_only() {
        let include = strings(&["DB_*", "API_KEY"]);
        assert!(key_selected("DB_HOST", &include, &[]));
        assert!(key_selected("DB_", &include, &[]));
        assert!(key_selected("API_KEY", &include, &[]));
        assert!(!key_selected("API_KEY_2", &include, &[]));
        assert!(!key_selected("MY_DB_HOST", &include, &[]));
    }

    #[test]
    fn exclude_patterns_win_over_include_patterns() {
        let include = strings(&["DB_*"]);
        let exclude = strings(&["*_PASSWORD"]);
        assert!(key_selected("DB_HOST", &include, &exclude));
        assert!(!key_selected("DB_PASSWORD", &include, &exclude));
        assert!(!key_selected("ADMIN_PASSWORD", &[], &exclude));
        assert!(key_selected("ADMIN_USER", &[], &exclude));
    }

    #[test]
    fn globs_match_whole_keys_with_star_and_question_mark() {
        let cases = [
            ("*", "", true),
            ("*", "ANYTHING", true),
            ("A?C", "ABC", true),
            ("A?C", "AC", false),
            ("A?C", "ABBC", false),
            ("*_URL", "DATABASE_URL", true),
            ("*_URL", "DATABASE_URL_OLD", false),
            ("A*B*C", "AXXBYYBZZC", true),
            ("A*B*C", "AXXBYYBZZ", false),
            ("**X", "ABX", true),
            ("a", "A", false),
            ("Ä?", "ÄÖ", true),
            ("", "", true),
            ("", "A", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(glob_matches(pattern, key), expected, "{pattern} ~ {key}");
        }
    }
}
