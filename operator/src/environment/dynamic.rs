//! Dynamic secrets (`spec.dynamicSecrets`): leases of short-lived database credentials issued
//! by coffer-server, each written into a Secret of its own.
//!
//! The pure part ([`validate`], [`step`], [`desired_secret`]) says what an entry needs next
//! from its spec, its status and its Secret; [`reconcile`] does it. The status is the
//! operator's memory: every lease is recorded there before its credentials are written
//! (`pending`), and every lease is issued with an idempotency key made of the resource's uid,
//! the entry's name, the generation it was first seen at (`epoch`) and a counter (`rotation`),
//! so a retry after a crash, an operator restart or a leader change gets the same lease again
//! instead of a second one.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_client::{IssueLeaseRequest, IssuedLease, RenewLeaseRequest};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource as _, ResourceExt as _};
use secrecy::{ExposeSecret as _, SecretString};

use super::build::{self, ENVIRONMENT_LABEL, LIMITS, MANAGED_BY, MANAGED_BY_LABEL, Ownership};
use super::build::{ShapeError, is_secret_key, template};
use super::rollout;
use crate::conditions::{self, Reason, State};
use crate::context::{Context, Error, post_params};
use crate::crd::{
    CONDITION_LEASED, CONDITION_READY, DynamicSecretSpec, DynamicSecretStatus, Environment,
    EnvironmentStatus, MAX_DYNAMIC_SECRETS, PendingLease, RetiringLease, SpecError, parse_duration,
};
use crate::credentials::Connection;
use crate::metrics::LeaseOperation;
use crate::source::{SourceKey, reason_for};

/// On a dynamic secret's Secret: the entry (`spec.dynamicSecrets[].name`) it holds.
pub const DYNAMIC_SECRET_LABEL: &str = "coffer.dev/dynamic-secret";
/// The keys of the credentials in the Secret, and the names templates read them by.
pub const USERNAME: &str = "username";
pub const PASSWORD: &str = "password";
pub const CONNECTION_URL: &str = "connection_url";
const CREDENTIAL_KEYS: [&str; 3] = [USERNAME, PASSWORD, CONNECTION_URL];
/// The shortest lease TTL and renewal lead accepted in the spec.
const MIN_TTL: Duration = Duration::from_secs(1);
/// At most this many replaced leases are remembered for their revocation; an older one is
/// left to expire (coffer-server revokes it at its expiry).
const MAX_RETIRING: usize = 8;
/// Issues after a 409 `idempotency_key_used` (each under the next counter) within one pass.
const ISSUE_ATTEMPTS: usize = 3;

fn shape_error(field: impl Into<String>, problem: impl Into<String>) -> ShapeError {
    ShapeError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Whether `name` is a DNS-1123 subdomain (what a Secret's name must be).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `name` can name a dynamic secret in coffer-server: `[a-z0-9-]`, 1 to 63.
fn is_dynamic_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn duration_field(field: &str, value: &str) -> Result<Duration, ShapeError> {
    let parsed = parse_duration(value).map_err(|e| match e {
        SpecError::InvalidRefreshInterval { reason, .. } => shape_error(
            field,
            format!(
                "{value:?} is not a duration: {reason} (use hours, minutes and seconds, e.g. \
                 \"90s\", \"10m\", \"1h\")"
            ),
        ),
        other => shape_error(field, other.to_string()),
    })?;
    if parsed < MIN_TTL {
        return Err(shape_error(field, format!("{value:?} is shorter than 1s")));
    }
    Ok(parsed)
}

/// Stand-ins for the credentials, to check templates without any.
fn sample_credentials() -> BTreeMap<String, SecretString> {
    CREDENTIAL_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), SecretString::from("x".to_owned())))
        .collect()
}

/// Checks `spec.dynamicSecrets` of `env`: at most [`MAX_DYNAMIC_SECRETS`], names and Secret
/// names well formed and distinct, no Secret shared with the synced one or another entry,
/// durations that parse, templates that read only the credentials.
pub fn validate(env: &Environment) -> Result<(), ShapeError> {
    let entries = &env.spec.dynamic_secrets;
    if entries.len() > MAX_DYNAMIC_SECRETS {
        return Err(shape_error(
            "spec.dynamicSecrets",
            format!(
                "{} entries, more than the {MAX_DYNAMIC_SECRETS} allowed",
                entries.len()
            ),
        ));
    }
    let synced = env.secret_name();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut secrets: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = |f: &str| format!("spec.dynamicSecrets[{i}].{f}");
        if !is_dynamic_secret_name(&entry.name) {
            return Err(shape_error(
                field("name"),
                format!(
                    "{:?} is not the name of a dynamic secret: lowercase letters, digits and \
                     `-`, 1 to 63 characters",
                    entry.name
                ),
            ));
        }
        if let Some(other) = names.insert(&entry.name, i) {
            return Err(shape_error(
                field("name"),
                format!(
                    "{:?} is also the name of spec.dynamicSecrets[{other}]",
                    entry.name
                ),
            ));
        }
        if !is_dns_subdomain(&entry.secret_name) {
            return Err(shape_error(
                field("secretName"),
                format!(
                    "{:?} is not a valid Secret name: lowercase letters, digits, `-` and `.`, \
                     at most 253 characters, starting and ending with a letter or digit",
                    entry.secret_name
                ),
            ));
        }
        if entry.secret_name == synced {
            return Err(shape_error(
                field("secretName"),
                format!(
                    "Secret {synced:?} is the synced Secret of this Environment \
                     (spec.sync.secretName): choose another name"
                ),
            ));
        }
        if let Some(other) = secrets.insert(&entry.secret_name, i) {
            return Err(shape_error(
                field("secretName"),
                format!(
                    "Secret {:?} is also written by spec.dynamicSecrets[{other}]: each entry \
                     needs a Secret of its own",
                    entry.secret_name
                ),
            ));
        }
        let ttl = entry
            .ttl
            .as_deref()
            .map(|t| duration_field(&field("ttl"), t))
            .transpose()?;
        let before = entry
            .renew_before
            .as_deref()
            .map(|t| duration_field(&field("renewBefore"), t))
            .transpose()?;
        if let (Some(ttl), Some(before)) = (ttl, before)
            && before >= ttl
        {
            return Err(shape_error(
                field("renewBefore"),
                "must be shorter than the ttl: a lease would be renewed as soon as it is issued",
            ));
        }
        if let Some(target) = entry.rollout_restart.iter().find(|t| t.name.is_empty()) {
            return Err(shape_error(
                field("rolloutRestart"),
                format!("a {:?} without a name", target.kind),
            ));
        }
        if entry.templates.len() > LIMITS.templates {
            return Err(shape_error(
                field("templates"),
                format!("more than the {} templates allowed", LIMITS.templates),
            ));
        }
        for (key, text) in &entry.templates {
            let field = format!("spec.dynamicSecrets[{i}].templates[{key:?}]");
            if !is_secret_key(key) {
                return Err(shape_error(
                    field,
                    format!("{key:?} is not a valid Secret key"),
                ));
            }
            if CREDENTIAL_KEYS.contains(&key.as_str()) {
                return Err(shape_error(
                    field,
                    format!("{key:?} is a key of the credentials themselves"),
                ));
            }
            if text.len() > LIMITS.template_bytes {
                return Err(shape_error(field, "the template is too large"));
            }
            let parsed = template::parse(text)
                .map_err(|e| shape_error(&field, format!("at byte {}: {}", e.offset, e.problem)))?;
            // Anything else (a `b64dec` of a stand-in, say) depends on the real credentials:
            // told when they are written.
            if let Err(template::RenderError::UnknownKey { offset, name }) =
                parsed.render(&sample_credentials(), LIMITS.data_bytes)
            {
                return Err(shape_error(
                    &field,
                    format!(
                        "at byte {offset}: .{name} is not one of .username, .password, \
                         .connection_url"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The idempotency key of lease number `rotation` of entry `name` of the resource `uid`, which
/// first saw the entry at generation `epoch`.
pub fn idempotency_key(uid: &str, name: &str, epoch: i64, rotation: i64) -> String {
    format!("coffer-operator/{uid}/{name}/{epoch}/{rotation}")
}

/// Everything an entry's lease timing depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The TTL asked for (`None`: the dynamic secret's default).
    pub ttl: Option<Duration>,
    /// The renewal lead asked for (`None`: a third of the lease's TTL).
    pub renew_before: Option<Duration>,
}

impl Timing {
    /// The timing of a valid entry.
    pub fn of(spec: &DynamicSecretSpec) -> Self {
        let parse = |v: &Option<String>| v.as_deref().and_then(|t| parse_duration(t).ok());
        Self {
            ttl: parse(&spec.ttl),
            renew_before: parse(&spec.renew_before),
        }
    }

    /// How long before expiry (and before the maximum TTL) a lease that lasted `lease` when
    /// issued is renewed (or replaced).
    pub fn lead(&self, lease: Option<Duration>) -> Duration {
        self.renew_before
            .or_else(|| self.ttl.or(lease).map(|t| t / 3))
            .unwrap_or(MIN_TTL)
            .max(MIN_TTL)
    }
}

/// A lease as coffer-server reported it, in the operator's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    pub expires_at: Timestamp,
    pub max_expires_at: Timestamp,
}

fn timestamp(t: coffer_client::ids::Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.millis()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// When a lease with `times` is renewed, `jitter` (0 to 1) of a tenth of the lead earlier so
/// that leases issued together are not renewed in one wave; or, once a renewal could extend it
/// by less than the lead, when it is replaced by the next lease (`lead` before its maximum).
pub fn renew_at(times: LeaseTimes, lead: Duration, jitter: f64) -> Timestamp {
    let lead = SignedDuration::try_from(lead).unwrap_or(SignedDuration::MAX);
    let spread = lead / 10;
    let early = SignedDuration::from_secs_f64(spread.as_secs_f64() * jitter.clamp(0.0, 1.0));
    let replace = times
        .max_expires_at
        .saturating_sub(lead)
        .unwrap_or(times.max_expires_at);
    if times.expires_at.duration_until(times.max_expires_at) < lead {
        return replace;
    }
    let renew = times
        .expires_at
        .saturating_sub(lead + early)
        .unwrap_or(times.expires_at);
    renew.min(replace)
}

/// The state of an entry's Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No Secret of the name.
    Missing,
    /// Ours, with data whose hash matches the status (or not).
    Ours { intact: bool },
    /// Someone else's: never written.
    Foreign,
}

/// What an entry needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// First seen: record it (its epoch) before its first lease.
    Claim,
    /// Issue a lease with counter `rotation` and write its credentials; `why` for the event,
    /// `restart` when the Secret had other credentials before.
    Issue {
        rotation: i64,
        why: String,
        restart: bool,
    },
    /// The Secret holds the pending lease's credentials already: make it the current lease
    /// (restarting the workloads when `restart`).
    Finish { restart: bool },
    /// Renew the current lease.
    Renew { lease_id: String },
    /// Nothing until `at`.
    Wait { at: Option<Timestamp> },
    /// The Secret's name is taken by someone else's Secret.
    Blocked,
}

/// The entry's status fields that say which Secret and templates its credentials were
/// written with: a change of either needs new credentials.
pub fn shape_hash(spec: &DynamicSecretSpec, hash_key: &[u8]) -> String {
    let mut data = BTreeMap::new();
    data.insert(
        "secretName".to_owned(),
        ByteString(spec.secret_name.clone().into_bytes()),
    );
    for (k, v) in &spec.templates {
        data.insert(format!("templates/{k}"), ByteString(v.clone().into_bytes()));
    }
    build::secret_hash(hash_key, &data)
}

/// What `spec`'s entry needs at `now`, given its `status` and its Secret (`found`, with the
/// hash of its data when it has any).
pub fn step(
    spec: &DynamicSecretSpec,
    status: Option<&DynamicSecretStatus>,
    (found, written): (Found, Option<String>),
    shape: &str,
    now: Timestamp,
) -> Step {
    let Some(status) = status else {
        return Step::Claim;
    };
    let had_credentials = status.lease_id.is_some();
    if let Some(pending) = &status.pending {
        // Issued before, credentials maybe not written: issued again under the same key, the
        // same lease comes back.
        return match found {
            Found::Foreign => Step::Blocked,
            Found::Ours { .. }
                if pending.secret_hash.is_some() && written == pending.secret_hash =>
            {
                Step::Finish {
                    restart: had_credentials,
                }
            }
            _ => Step::Issue {
                rotation: pending.rotation,
                why: format!("lease {} was issued; writing it", pending.lease_id),
                restart: had_credentials,
            },
        };
    }
    let issue = |why: String| Step::Issue {
        rotation: status.rotation,
        why,
        restart: had_credentials,
    };
    let secret = &spec.secret_name;
    let Some(lease_id) = &status.lease_id else {
        return match found {
            Found::Foreign => Step::Blocked,
            _ => issue("the first lease".to_owned()),
        };
    };
    match found {
        Found::Foreign => return Step::Blocked,
        Found::Missing => return issue(format!("Secret {secret:?} was deleted")),
        Found::Ours { intact: false } => {
            return issue(format!("Secret {secret:?} was edited"));
        }
        Found::Ours { intact: true } => {}
    }
    if status.shape_hash.as_deref() != Some(shape) {
        return issue("secretName or templates changed".to_owned());
    }
    let lead = Timing::of(spec).lead(status.lease_seconds.map(seconds));
    let lead_signed = SignedDuration::try_from(lead).unwrap_or(SignedDuration::MAX);
    if let Some(max) = &status.max_expires_at
        && now >= max.0.saturating_sub(lead_signed).unwrap_or(max.0)
    {
        return issue("the lease nears its maximum TTL".to_owned());
    }
    let renew = status.renew_at.as_ref().map(|t| t.0).or_else(|| {
        let expires = status.expires_at.as_ref()?.0;
        expires.saturating_sub(lead_signed).ok()
    });
    let at_max = status.expires_at.is_some() && status.expires_at == status.max_expires_at;
    match renew {
        Some(at) if now < at => Step::Wait { at: Some(at) },
        // Renewed up to its maximum already: nothing more to renew.
        _ if at_max => issue("the lease reached its maximum TTL".to_owned()),
        _ => Step::Renew {
            lease_id: lease_id.clone(),
        },
    }
}

fn seconds(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// The TTL to renew with at `now`: the one asked for (or the lease's first), never past the
/// maximum.
pub fn renew_ttl(
    spec: &DynamicSecretSpec,
    status: &DynamicSecretStatus,
    now: Timestamp,
) -> Option<u64> {
    let wanted = Timing::of(spec)
        .ttl
        .or(status.lease_seconds.map(seconds))?
        .as_secs();
    let left = status
        .max_expires_at
        .as_ref()
        .map(|max| max.0.duration_since(now).as_secs().max(1))
        .and_then(|s| u64::try_from(s).ok());
    Some(left.map_or(wanted, |left| wanted.min(left)))
}

/// The Secret holding `lease`'s credentials for entry `spec` of `env`: the credentials, the
/// templates rendered with them, our labels and a controller owner reference (it goes with
/// the `Environment`; its leases are revoked by then).
pub fn desired_secret(
    env: &Environment,
    spec: &DynamicSecretSpec,
    lease: &IssuedLease,
) -> Result<Secret, ShapeError> {
    let credentials: BTreeMap<String, SecretString> = [
        (USERNAME, SecretString::from(lease.username.clone())),
        (PASSWORD, lease.password.0.clone()),
        (CONNECTION_URL, lease.connection_url.0.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut data: BTreeMap<String, ByteString> = credentials
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.expose_secret().as_bytes().to_vec())))
        .collect();
    for (key, text) in &spec.templates {
        let field = || format!("spec.dynamicSecrets[{:?}].templates[{key:?}]", spec.name);
        let parsed = template::parse(text)
            .map_err(|e| shape_error(field(), format!("at byte {}: {}", e.offset, e.problem)))?;
        let rendered = parsed
            .render(&credentials, LIMITS.data_bytes)
            .map_err(|e| match e {
                template::RenderError::UnknownKey { offset, name } => {
                    shape_error(field(), format!("at byte {offset}: .{name} is unknown"))
                }
                template::RenderError::BadInput {
                    offset,
                    function,
                    problem,
                } => shape_error(field(), format!("at byte {offset}: {function}: {problem}")),
                template::RenderError::TooLarge => shape_error(field(), "too large"),
            })?;
        data.insert(key.clone(), ByteString(rendered.to_vec()));
    }
    let labels = [
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (ENVIRONMENT_LABEL.to_owned(), env.name_any()),
        (DYNAMIC_SECRET_LABEL.to_owned(), spec.name.clone()),
    ]
    .into();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(spec.secret_name.clone()),
            namespace: env.namespace(),
            labels: Some(labels),
            owner_references: env.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    })
}

/// What the dynamic secrets of one pass came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// When something is due next (a renewal, a revocation).
    pub wake: Option<Duration>,
    /// The first failure, to retry with backoff.
    pub failure: Option<Failure>,
}

/// Why an entry could not get what it needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Retried with backoff (coffer-server failed), or only on a change (spec, Secret).
    pub transient: bool,
}

impl Failure {
    fn from_client(e: &coffer_client::Error, doing: String) -> Self {
        let reason = match (e.status(), e.code()) {
            (Some(404), _) => Reason::DynamicSecretNotFound,
            (Some(502), _) | (_, Some("engine_failed")) => Reason::LeaseFailed,
            _ => reason_for(e),
        };
        let retry_after = match e {
            coffer_client::Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        };
        Self {
            reason,
            message: format!("{doing} failed: {e}"),
            retry_after,
            transient: true,
        }
    }

    pub fn into_error(self) -> Error {
        Error::Leases {
            reason: self.reason,
            message: self.message,
            retry_after: self.retry_after,
        }
    }
}

/// The place leases are issued for, and with which client.
#[derive(Debug)]
pub struct Place<'a> {
    pub connection: &'a Connection,
    pub source: &'a SourceKey,
}

impl Place<'_> {
    fn client(&self) -> &coffer_client::Client {
        &self.connection.client
    }

    fn describe(&self, name: &str) -> String {
        format!("dynamic secret {name:?} of {}", self.source.place())
    }

    async fn revoke(&self, ctx: &Context, name: &str, lease_id: &str) -> Result<(), Failure> {
        let s = self.source;
        let revoked = self
            .client()
            .revoke_lease(&s.org, &s.project, &s.environment, name, lease_id)
            .await;
        match revoked {
            Ok(_) => {
                ctx.metrics.lease(LeaseOperation::Revoke, true);
                Ok(())
            }
            // Gone already (or the dynamic secret is): nothing left to revoke.
            Err(e) if e.is_not_found() => {
                ctx.metrics.lease(LeaseOperation::Revoke, true);
                Ok(())
            }
            Err(e) => {
                ctx.metrics.lease(LeaseOperation::Revoke, false);
                let doing = format!("revoking lease {lease_id} of {}", self.describe(name));
                Err(Failure::from_client(&e, doing))
            }
        }
    }

    /// The lease issued with `key`, if coffer-server still lists it among the newest.
    async fn lease_with_key(&self, name: &str, key: &str) -> Result<Option<String>, Failure> {
        let s = self.source;
        let page = self
            .client()
            .list_leases(&s.org, &s.project, &s.environment, name)
            .await
            .map_err(|e| {
                Failure::from_client(&e, format!("listing the leases of {}", self.describe(name)))
            })?;
        Ok(page
            .items
            .into_iter()
            .find(|l| l.idempotency_key.as_deref() == Some(key))
            .map(|l| l.id))
    }

    /// Issues a lease under counter `rotation` (or, when that key was used up, a later one):
    /// the lease and the counter it was issued under.
    async fn issue(
        &self,
        ctx: &Context,
        env: &Environment,
        spec: &DynamicSecretSpec,
        status: &DynamicSecretStatus,
        mut rotation: i64,
    ) -> Result<(IssuedLease, i64), Failure> {
        let s = self.source;
        let uid = env.metadata.uid.as_deref().unwrap_or_default();
        let request = IssueLeaseRequest {
            ttl: Timing::of(spec).ttl.map(|t| t.as_secs()),
        };
        for _ in 0..ISSUE_ATTEMPTS {
            let key = idempotency_key(uid, &spec.name, status.epoch, rotation);
            let issued = self
                .client()
                .issue_lease(
                    &s.org,
                    &s.project,
                    &s.environment,
                    &spec.name,
                    &request,
                    Some(&key),
                )
                .await;
            match issued {
                Ok(lease) => {
                    ctx.metrics.lease(LeaseOperation::Issue, true);
                    return Ok((lease, rotation));
                }
                // Issued before, its credentials can no longer be had: revoke it, take the next
                // counter.
                Err(e) if e.code() == Some("idempotency_key_used") => {
                    let known = status
                        .pending
                        .as_ref()
                        .filter(|p| p.rotation == rotation)
                        .map(|p| p.lease_id.clone());
                    let used = match known {
                        Some(id) => Some(id),
                        None => self.lease_with_key(&spec.name, &key).await?,
                    };
                    if let Some(id) = used {
                        self.revoke(ctx, &spec.name, &id).await?;
                    }
                    rotation += 1;
                }
                Err(e) => {
                    ctx.metrics.lease(LeaseOperation::Issue, false);
                    let doing = format!("issuing a lease of {}", self.describe(&spec.name));
                    return Err(Failure::from_client(&e, doing));
                }
            }
        }
        Err(Failure {
            reason: Reason::RequestRejected,
            message: format!(
                "issuing a lease of {}: {ISSUE_ATTEMPTS} idempotency keys in a row were used \
                 already",
                self.describe(&spec.name)
            ),
            retry_after: None,
            transient: true,
        })
    }
}

/// One pass over the dynamic secrets of `env`: `status` (the resource's status being drafted)
/// is brought up to date as leases are issued, renewed and revoked, and saved before each
/// Secret write that depends on it.
pub async fn reconcile(
    env: &Environment,
    place: &Place<'_>,
    ctx: &Context,
    status: &mut EnvironmentStatus,
) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    let now = Timestamp::now;
    let mut failures: Vec<(String, Failure)> = Vec::new();
    // Entries no longer in the spec: revoke, then forget.
    let wanted: Vec<&str> = env
        .spec
        .dynamic_secrets
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let mut kept = Vec::new();
    for entry in std::mem::take(&mut status.dynamic_secrets) {
        if wanted.contains(&entry.name.as_str()) {
            kept.push(entry);
            continue;
        }
        match retire_entry(env, place, ctx, &entry).await {
            Ok(()) => {
                let note = format!(
                    "revoked the leases of dynamic secret {:?} (removed from \
                     spec.dynamicSecrets)",
                    entry.name
                );
                super::act::event(ctx, env, false, "LeaseRevoked", "Revoke", note).await;
            }
            Err(Step2::Kube(e)) => {
                status.dynamic_secrets = kept;
                return Err(e);
            }
            Err(Step2::Failed(f)) => {
                failures.push((entry.name.clone(), f));
                kept.push(entry);
            }
        }
    }
    status.dynamic_secrets = kept;

    for spec in &env.spec.dynamic_secrets {
        let done = entry(env, spec, place, ctx, status).await;
        let index = status
            .dynamic_secrets
            .iter()
            .position(|s| s.name == spec.name);
        match done {
            Ok(()) => {
                if let Some(i) = index {
                    let s = &mut status.dynamic_secrets[i];
                    s.reason = None;
                    s.message = None;
                }
            }
            Err(Step2::Kube(e)) => return Err(e),
            Err(Step2::Failed(f)) => {
                if let Some(i) = index {
                    let s = &mut status.dynamic_secrets[i];
                    s.reason = Some(f.reason.as_str().to_owned());
                    s.message = Some(f.message.clone());
                }
                failures.push((spec.name.clone(), f));
            }
        }
    }
    // Revocations due, of every entry.
    for i in 0..status.dynamic_secrets.len() {
        let name = status.dynamic_secrets[i].name.clone();
        let due: Vec<RetiringLease> = status.dynamic_secrets[i]
            .retiring
            .iter()
            .filter(|r| r.revoke_at.0 <= now())
            .cloned()
            .collect();
        for retiring in due {
            match retire_lease(env, place, ctx, &name, &retiring).await {
                Ok(()) => status.dynamic_secrets[i]
                    .retiring
                    .retain(|r| r.lease_id != retiring.lease_id),
                Err(Step2::Kube(e)) => return Err(e),
                Err(Step2::Failed(f)) => failures.push((name.clone(), f)),
            }
        }
    }
    outcome.wake = next_wake(status, now());
    set_condition(env, status, &failures, now());
    outcome.failure = failures.into_iter().map(|(_, f)| f).next();
    Ok(outcome)
}

/// The earliest deadline of `status`'s leases (a renewal, a revocation), from `now`.
pub fn next_wake(status: &EnvironmentStatus, now: Timestamp) -> Option<Duration> {
    status
        .dynamic_secrets
        .iter()
        .flat_map(|s| {
            s.renew_at
                .iter()
                .map(|t| t.0)
                .chain(s.retiring.iter().map(|r| r.revoke_at.0))
        })
        .min()
        .map(|at| {
            Duration::try_from(at.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(200))
        })
}

/// Sets the `Leased` condition (and turns `Ready` false while a lease fails), or removes it
/// when there are no dynamic secrets.
fn set_condition(
    env: &Environment,
    status: &mut EnvironmentStatus,
    failures: &[(String, Failure)],
    now: Timestamp,
) {
    if env.spec.dynamic_secrets.is_empty() && status.dynamic_secrets.is_empty() {
        status.conditions.retain(|c| c.type_ != CONDITION_LEASED);
        return;
    }
    let generation = env.metadata.generation;
    let set = |conditions: &mut Vec<Condition>, type_, state: State, reason, message: String| {
        conditions::set(conditions, type_, state, reason, message, generation, now);
    };
    match failures.first() {
        None => {
            let leased = status
                .dynamic_secrets
                .iter()
                .filter(|s| s.lease_id.is_some())
                .count();
            let message = format!("{leased} dynamic secret(s) leased");
            set(
                &mut status.conditions,
                CONDITION_LEASED,
                State::True,
                Reason::Leased,
                message,
            );
        }
        Some((name, failure)) => {
            let message = format!(
                "spec.dynamicSecrets[{name:?}]: {}; its Secret keeps its current credentials",
                failure.message
            );
            set(
                &mut status.conditions,
                CONDITION_LEASED,
                State::False,
                failure.reason,
                message.clone(),
            );
            let ready = conditions::reason_of(&status.conditions, CONDITION_READY);
            let ready_true = status
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_READY && c.status == "True");
            if ready_true || ready.is_none() {
                set(
                    &mut status.conditions,
                    CONDITION_READY,
                    State::False,
                    failure.reason,
                    message,
                );
                // Failing as before: the pass that set `Ready` true again does not count as a
                // transition, so an unchanged failure is an unchanged status.
                let before = env.status.iter().flat_map(|s| &s.conditions).find(|c| {
                    c.type_ == CONDITION_READY
                        && c.status == "False"
                        && c.reason == failure.reason.as_str()
                });
                let after = status
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == CONDITION_READY);
                if let (Some(before), Some(after)) = (before, after) {
                    after.last_transition_time = before.last_transition_time.clone();
                }
            }
        }
    }
}

/// A step that did not go through.
enum Step2 {
    /// Kubernetes failed: left to the controller's retry policy.
    Kube(Error),
    /// coffer-server failed, or the entry cannot be acted on: reported in the status.
    Failed(Failure),
}

impl From<Failure> for Step2 {
    fn from(f: Failure) -> Self {
        Self::Failed(f)
    }
}

impl From<kube::Error> for Step2 {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e.into())
    }
}

impl From<Error> for Step2 {
    fn from(e: Error) -> Self {
        Self::Kube(e)
    }
}

/// Writes `status` with the dynamic secrets as they are now, so that what was issued is
/// recorded before anything depends on it.
async fn save(ctx: &Context, env: &Environment, status: &EnvironmentStatus) -> Result<(), Error> {
    let mut saved = env.status.clone().unwrap_or_default();
    saved.dynamic_secrets = status.dynamic_secrets.clone();
    crate::status::write(ctx, env, &saved, "Lease").await
}

fn found(
    secret: Option<&Secret>,
    env: &Environment,
    status: Option<&DynamicSecretStatus>,
    hash_key: &[u8],
) -> Found {
    match secret {
        None => Found::Missing,
        Some(s) if build::ownership(s, env) != Ownership::Owned => Found::Foreign,
        Some(s) => {
            let empty = BTreeMap::new();
            let hash = build::secret_hash(hash_key, s.data.as_ref().unwrap_or(&empty));
            Found::Ours {
                intact: status.and_then(|st| st.secret_hash.as_deref()) == Some(hash.as_str()),
            }
        }
    }
}

/// Brings one entry to what it needs.
async fn entry(
    env: &Environment,
    spec: &DynamicSecretSpec,
    place: &Place<'_>,
    ctx: &Context,
    status: &mut EnvironmentStatus,
) -> Result<(), Step2> {
    let namespace = env.namespace().unwrap_or_default();
    let shape = shape_hash(spec, &ctx.hash_key);
    loop {
        let index = status
            .dynamic_secrets
            .iter()
            .position(|s| s.name == spec.name);
        let current = index.map(|i| &status.dynamic_secrets[i]);
        let secret = ctx
            .stores
            .secret(&ctx.kube, &namespace, &spec.secret_name)
            .await?;
        let found = found(secret.as_ref(), env, current, &ctx.hash_key);
        let written = secret.as_ref().map(|s| {
            let empty = BTreeMap::new();
            build::secret_hash(&ctx.hash_key, s.data.as_ref().unwrap_or(&empty))
        });
        match step(spec, current, (found, written), &shape, Timestamp::now()) {
            Step::Claim => {
                status.dynamic_secrets.push(DynamicSecretStatus {
                    name: spec.name.clone(),
                    epoch: env.metadata.generation.unwrap_or_default(),
                    ..DynamicSecretStatus::default()
                });
                save(ctx, env, status).await?;
            }
            Step::Blocked => {
                return Err(Step2::Failed(Failure {
                    reason: Reason::SecretNotOwned,
                    message: format!(
                        "Secret {:?} exists and is not this Environment's; it was left \
                         untouched (delete it or choose another secretName)",
                        spec.secret_name
                    ),
                    retry_after: None,
                    transient: false,
                }));
            }
            Step::Wait { .. } => return Ok(()),
            Step::Finish { restart } => {
                let i = index.unwrap_or_default();
                let entry = &mut status.dynamic_secrets[i];
                let why = "its credentials were written before";
                return finish(env, spec, place, ctx, entry, restart, &shape, why).await;
            }
            Step::Renew { lease_id } => {
                let i = index.unwrap_or_default();
                match renew(env, spec, place, ctx, &status.dynamic_secrets[i], &lease_id).await? {
                    Some(updated) => {
                        status.dynamic_secrets[i] = updated;
                        return Ok(());
                    }
                    // Cannot be renewed (past its maximum, or gone): the next lease, now.
                    None => {
                        let s = &mut status.dynamic_secrets[i];
                        s.max_expires_at = Some(Time(Timestamp::now()));
                    }
                }
            }
            Step::Issue {
                rotation,
                why,
                restart,
            } => {
                let i = index.unwrap_or_default();
                issue_and_write(
                    env,
                    spec,
                    place,
                    ctx,
                    status,
                    i,
                    (rotation, why, restart),
                    secret.as_ref(),
                    &shape,
                )
                .await?;
                return Ok(());
            }
        }
    }
}

/// Renews the lease: the entry's status afterwards, or `None` when the lease cannot be
/// renewed (it nears its maximum TTL, or is no longer active) and needs replacing.
async fn renew(
    env: &Environment,
    spec: &DynamicSecretSpec,
    place: &Place<'_>,
    ctx: &Context,
    status: &DynamicSecretStatus,
    lease_id: &str,
) -> Result<Option<DynamicSecretStatus>, Step2> {
    let s = place.source;
    let request = RenewLeaseRequest {
        ttl: renew_ttl(spec, status, Timestamp::now()),
    };
    let renewed = place
        .client()
        .renew_lease(
            &s.org,
            &s.project,
            &s.environment,
            &spec.name,
            lease_id,
            &request,
        )
        .await;
    match renewed {
        Ok(lease) => {
            ctx.metrics.lease(LeaseOperation::Renew, true);
            let times = LeaseTimes {
                expires_at: timestamp(lease.expires_at),
                max_expires_at: timestamp(lease.max_expires_at),
            };
            let lead = Timing::of(spec).lead(status.lease_seconds.map(seconds));
            let mut next = status.clone();
            next.expires_at = Some(Time(times.expires_at));
            next.max_expires_at = Some(Time(times.max_expires_at));
            next.renew_at = Some(Time(renew_at(times, lead, jitter())));
            tracing::debug!(
                namespace = %env.namespace().unwrap_or_default(), environment = %env.name_any(),
                dynamic_secret = %spec.name, lease = %lease_id, "lease renewed"
            );
            Ok(Some(next))
        }
        Err(e)
            if e.status() == Some(422)
                || e.is_not_found()
                || e.code() == Some("lease_not_active") =>
        {
            ctx.metrics.lease(LeaseOperation::Renew, true);
            Ok(None)
        }
        Err(e) => {
            ctx.metrics.lease(LeaseOperation::Renew, false);
            let doing = format!(
                "renewing lease {lease_id} of {}",
                place.describe(&spec.name)
            );
            Err(Step2::Failed(Failure::from_client(&e, doing)))
        }
    }
}

fn jitter() -> f64 {
    use rand::Rng as _;
    rand::thread_rng().r#gen::<f64>()
}

/// Issues a lease (or gets the pending one again), records it as pending, writes the Secret
/// and [`finish`]es.
#[allow(
    clippy::too_many_arguments,
    reason = "one step of one entry: each argument a distinct part of it"
)]
async fn issue_and_write(
    env: &Environment,
    spec: &DynamicSecretSpec,
    place: &Place<'_>,
    ctx: &Context,
    status: &mut EnvironmentStatus,
    i: usize,
    (rotation, why, restart): (i64, String, bool),
    current: Option<&Secret>,
    shape: &str,
) -> Result<(), Step2> {
    let (lease, rotation) = place
        .issue(ctx, env, spec, &status.dynamic_secrets[i], rotation)
        .await?;
    let now = Timestamp::now();
    let desired = match desired_secret(env, spec, &lease) {
        Ok(desired) => desired,
        Err(e) => {
            // The lease cannot be written: it goes at once.
            place.revoke(ctx, &spec.name, &lease.id).await?;
            let entry = &mut status.dynamic_secrets[i];
            entry.rotation = entry.rotation.max(rotation + 1);
            entry.pending = None;
            return Err(Step2::Failed(Failure {
                reason: Reason::InvalidSpec,
                message: e.to_string(),
                retry_after: None,
                transient: false,
            }));
        }
    };
    let empty = BTreeMap::new();
    let hash = build::secret_hash(&ctx.hash_key, desired.data.as_ref().unwrap_or(&empty));
    let expires_at = timestamp(lease.expires_at);
    let pending = PendingLease {
        lease_id: lease.id.clone(),
        rotation,
        secret_hash: Some(hash),
        expires_at: Some(Time(expires_at)),
        max_expires_at: Some(Time(timestamp(lease.max_expires_at))),
        lease_seconds: Some(expires_at.duration_since(now).as_secs().max(1)),
    };
    let entry = &mut status.dynamic_secrets[i];
    if entry.pending.as_ref() != Some(&pending) {
        if let Some(stale) = entry.pending.take()
            && stale.lease_id != lease.id
        {
            // A pending lease that did not come back under its key (it was revoked as used up,
            // or is another one): make sure it goes.
            retiring_push(entry, &stale.lease_id, now, None);
        }
        entry.pending = Some(pending);
        entry.rotation = entry.rotation.max(rotation + 1);
        save(ctx, env, status).await?;
    }
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    write_secret(&secrets, current, &desired).await?;
    finish(
        env,
        spec,
        place,
        ctx,
        &mut status.dynamic_secrets[i],
        restart,
        shape,
        &why,
    )
    .await
}

/// The Secret holds the pending lease's credentials: restarts the workloads when they changed,
/// makes the pending lease the current one, and has the one it replaces revoked after the
/// grace period.
#[allow(
    clippy::too_many_arguments,
    reason = "one step of one entry: each argument a distinct part of it"
)]
async fn finish(
    env: &Environment,
    spec: &DynamicSecretSpec,
    place: &Place<'_>,
    ctx: &Context,
    entry: &mut DynamicSecretStatus,
    restart: bool,
    shape: &str,
    why: &str,
) -> Result<(), Step2> {
    let Some(pending) = entry.pending.clone() else {
        return Ok(());
    };
    let hash = pending.secret_hash.clone().unwrap_or_default();
    let mut restarted = Vec::new();
    if restart {
        let workloads = &ctx.stores.workloads;
        let targets = &spec.rollout_restart;
        let done =
            rollout::restart(&ctx.kube, workloads, env, targets, &spec.secret_name, &hash).await?;
        if !done.missing.is_empty() {
            let note = format!(
                "spec.dynamicSecrets[{:?}].rolloutRestart: not found: {}",
                spec.name,
                done.missing.join(", ")
            );
            super::act::event(ctx, env, true, "RolloutTargetNotFound", "Restart", note).await;
        }
        if !done.refused.is_empty() {
            let note = format!(
                "spec.dynamicSecrets[{:?}].rolloutRestart: not restarted, as they neither read \
                 Secret {:?} nor are annotated {}: \"true\": {}",
                spec.name,
                spec.secret_name,
                rollout::RELOAD_ANNOTATION,
                done.refused.join(", ")
            );
            super::act::event(ctx, env, true, "RolloutTargetRefused", "Restart", note).await;
        }
        if !done.restarted.is_empty() {
            let note = format!("restarted {}", done.restarted.join(", "));
            super::act::event(ctx, env, false, "RolloutRestarted", "Restart", note).await;
        }
        restarted = done.restarted;
    }

    let now = Timestamp::now();
    let grace = ctx.config.lease_revoke_grace;
    if let Some(previous) = entry.lease_id.take()
        && previous != pending.lease_id
    {
        // Its Secret goes with it when the entry moved to another Secret.
        let old_secret = entry
            .secret_name
            .clone()
            .filter(|old| *old != spec.secret_name);
        let until = entry.expires_at.as_ref().map(|t| t.0);
        let at = now
            .saturating_add(SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX))
            .unwrap_or(now);
        let at = until.map_or(at, |until| at.min(until));
        retiring_push(entry, &previous, at, old_secret);
    }
    let times = LeaseTimes {
        expires_at: pending.expires_at.as_ref().map_or(now, |t| t.0),
        max_expires_at: pending.max_expires_at.as_ref().map_or(now, |t| t.0),
    };
    let lasts = pending.lease_seconds.unwrap_or(1);
    let lead = Timing::of(spec).lead(Some(seconds(lasts)));
    entry.lease_id = Some(pending.lease_id.clone());
    entry.pending = None;
    entry.rotation = entry.rotation.max(pending.rotation + 1);
    entry.secret_name = Some(spec.secret_name.clone());
    entry.expires_at = Some(Time(times.expires_at));
    entry.max_expires_at = Some(Time(times.max_expires_at));
    entry.lease_seconds = Some(lasts);
    entry.renew_at = Some(Time(renew_at(times, lead, jitter())));
    entry.secret_hash = Some(hash);
    entry.shape_hash = Some(shape.to_owned());
    entry.restarted_workloads = restarted;
    let note = format!(
        "Secret {:?} holds the credentials of lease {} of {} ({why})",
        spec.secret_name,
        pending.lease_id,
        place.describe(&spec.name)
    );
    super::act::event(ctx, env, false, "LeaseIssued", "Issue", note).await;
    Ok(())
}

fn retiring_push(
    entry: &mut DynamicSecretStatus,
    lease_id: &str,
    at: Timestamp,
    secret_name: Option<String>,
) {
    if entry.retiring.iter().any(|r| r.lease_id == lease_id) {
        return;
    }
    entry.retiring.push(RetiringLease {
        lease_id: lease_id.to_owned(),
        revoke_at: Time(at),
        secret_name,
    });
    if entry.retiring.len() > MAX_RETIRING {
        entry.retiring.remove(0);
    }
}

/// Creates the Secret or replaces `current` (ours) with `desired`.
async fn write_secret(
    secrets: &Api<Secret>,
    current: Option<&Secret>,
    desired: &Secret,
) -> Result<(), Step2> {
    let post: PostParams = post_params();
    let written = match current {
        None => secrets.create(&post, desired).await.map(drop),
        Some(current) => {
            let mut next = desired.clone();
            next.metadata.resource_version = current.metadata.resource_version.clone();
            let mut labels = current.metadata.labels.clone().unwrap_or_default();
            labels.extend(desired.metadata.labels.clone().unwrap_or_default());
            next.metadata.labels = Some(labels);
            next.metadata.annotations = current.metadata.annotations.clone();
            if current.type_ != desired.type_ || current.immutable == Some(true) {
                super::act::delete_owned(secrets, current).await?;
                next.metadata.resource_version = None;
                secrets.create(&post, &next).await.map(drop)
            } else {
                secrets
                    .replace(&desired.name_any(), &post, &next)
                    .await
                    .map(drop)
            }
        }
    };
    match written {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => Err(Step2::Failed(Failure {
            reason: Reason::InvalidSpec,
            message: format!(
                "Kubernetes refused Secret {:?}: {}",
                desired.name_any(),
                e.message
            ),
            retry_after: None,
            transient: false,
        })),
        Err(e) => Err(Step2::Kube(e.into())),
    }
}

/// Revokes a replaced lease, then deletes the Secret it leaves behind (if any, and ours).
async fn retire_lease(
    env: &Environment,
    place: &Place<'_>,
    ctx: &Context,
    name: &str,
    retiring: &RetiringLease,
) -> Result<(), Step2> {
    place.revoke(ctx, name, &retiring.lease_id).await?;
    if let Some(secret) = &retiring.secret_name {
        delete_secret(env, ctx, secret).await?;
    }
    Ok(())
}

async fn delete_secret(env: &Environment, ctx: &Context, name: &str) -> Result<(), Step2> {
    let namespace = env.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    if let Some(current) = secrets.get_opt(name).await?
        && build::ownership(&current, env) == Ownership::Owned
    {
        super::act::delete_owned(&secrets, &current).await?;
    }
    Ok(())
}

/// Revokes every lease of a removed entry (and one issued but not recorded, found by its
/// key), then deletes its Secret.
async fn retire_entry(
    env: &Environment,
    place: &Place<'_>,
    ctx: &Context,
    entry: &DynamicSecretStatus,
) -> Result<(), Step2> {
    revoke_all(env, place, ctx, entry).await?;
    if let Some(secret) = &entry.secret_name {
        delete_secret(env, ctx, secret).await?;
    }
    for retiring in &entry.retiring {
        if let Some(secret) = &retiring.secret_name {
            delete_secret(env, ctx, secret).await?;
        }
    }
    Ok(())
}

/// Revokes every lease `entry` knows of, and the one its next key may have issued before a
/// crash kept it from being recorded.
async fn revoke_all(
    env: &Environment,
    place: &Place<'_>,
    ctx: &Context,
    entry: &DynamicSecretStatus,
) -> Result<(), Failure> {
    let uid = env.metadata.uid.as_deref().unwrap_or_default();
    let key = idempotency_key(uid, &entry.name, entry.epoch, entry.rotation);
    let unrecorded = place.lease_with_key(&entry.name, &key).await;
    let unrecorded = match unrecorded {
        Ok(found) => found,
        // The dynamic secret itself is gone: so are its leases.
        Err(f) if f.reason == Reason::DynamicSecretNotFound => return Ok(()),
        Err(f) => return Err(f),
    };
    let leases = entry
        .lease_id
        .iter()
        .chain(entry.pending.iter().map(|p| &p.lease_id))
        .chain(entry.retiring.iter().map(|r| &r.lease_id))
        .chain(unrecorded.iter());
    for lease in leases {
        place.revoke(ctx, &entry.name, lease).await?;
    }
    Ok(())
}

/// On deletion of `env`: revokes the leases of every dynamic secret in its status. `Ok(false)`
/// when there was nothing to revoke.
pub async fn revoke_on_delete(
    env: &Environment,
    place: &Place<'_>,
    ctx: &Context,
) -> Result<bool, Failure> {
    let entries = env
        .status
        .as_ref()
        .map(|s| s.dynamic_secrets.as_slice())
        .unwrap_or_default();
    for entry in entries {
        revoke_all(env, place, ctx, entry).await?;
    }
    Ok(!entries.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coffer_client::Revealed;

    use super::*;
    use crate::crd::EnvironmentSpec;

    fn environment(dynamic: serde_json::Value) -> Environment {
        let spec: EnvironmentSpec = serde_json::from_value(serde_json::json!({
            "projectRef": { "name": "web" },
            "environment": "production",
            "sync": { "secretName": "web-env" },
            "dynamicSecrets": dynamic,
        }))
        .unwrap();
        let mut env = Environment::new("web-prod", spec);
        env.metadata.namespace = Some("apps".into());
        env.metadata.uid = Some("0b5c5d2e-5f42-4a53-9d3b-5f1a4c2b8e11".into());
        env.metadata.generation = Some(4);
        env
    }

    fn entry(extra: serde_json::Value) -> serde_json::Value {
        let mut e = serde_json::json!({ "name": "db", "secretName": "db-creds" });
        if let (Some(e), serde_json::Value::Object(extra)) = (e.as_object_mut(), extra) {
            e.extend(extra);
        }
        e
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn problem(env: &Environment) -> String {
        validate(env).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_list_of_dynamic_secrets_passes() {
        let env = environment(serde_json::json!([
            entry(serde_json::json!({ "ttl": "1h", "renewBefore": "10m",
                "templates": { "DATABASE_URL": "{{ .connection_url }}" } })),
            { "name": "reporting", "secretName": "reporting.creds" },
        ]));
        validate(&env).unwrap();
    }

    #[test]
    fn two_entries_never_share_a_name_or_a_secret_nor_take_the_synced_one() {
        let same_name = environment(serde_json::json!([
            entry(serde_json::json!({})),
            entry(serde_json::json!({ "secretName": "other" })),
        ]));
        assert!(problem(&same_name).starts_with("spec.dynamicSecrets[1].name:"));
        let same_secret = environment(serde_json::json!([
            entry(serde_json::json!({})),
            entry(serde_json::json!({ "name": "other" })),
        ]));
        let message = problem(&same_secret);
        assert!(
            message.starts_with("spec.dynamicSecrets[1].secretName:"),
            "{message}"
        );
        assert!(message.contains("spec.dynamicSecrets[0]"), "{message}");
        let synced = environment(serde_json::json!([entry(
            serde_json::json!({ "secretName": "web-env" })
        )]));
        assert!(problem(&synced).contains("synced Secret"));
    }

    #[test]
    fn secret_names_must_be_dns_subdomains_and_entries_are_bounded() {
        for bad in ["Db", "db_creds", "-db", "db.", "", &"a".repeat(254)] {
            let env = environment(serde_json::json!([entry(
                serde_json::json!({ "secretName": bad })
            )]));
            assert!(
                problem(&env).starts_with("spec.dynamicSecrets[0].secretName:"),
                "{bad}"
            );
        }
        assert!(is_dns_subdomain("db-creds.v1"));
        let many: Vec<_> = (0..21)
            .map(|i| serde_json::json!({ "name": format!("d{i}"), "secretName": format!("s{i}") }))
            .collect();
        let env = environment(serde_json::Value::Array(many));
        assert!(problem(&env).contains("more than the 20 allowed"));
    }

    #[test]
    fn durations_and_templates_are_checked() {
        let cases = [
            (
                serde_json::json!({ "ttl": "soon" }),
                "ttl: \"soon\" is not a duration",
            ),
            (serde_json::json!({ "ttl": "0s" }), "shorter than 1s"),
            (
                serde_json::json!({ "ttl": "1m", "renewBefore": "1m" }),
                "must be shorter than the ttl",
            ),
            (
                serde_json::json!({ "templates": { "URL": "{{ .DB_HOST }}" } }),
                ".DB_HOST is not one of",
            ),
            (
                serde_json::json!({ "templates": { "password": "{{ .username }}" } }),
                "a key of the credentials",
            ),
            (
                serde_json::json!({ "templates": { "URL": "{{ .username" } }),
                "templates[\"URL\"]: at byte",
            ),
        ];
        for (extra, expected) in cases {
            let env = environment(serde_json::json!([entry(extra.clone())]));
            let message = problem(&env);
            assert!(message.contains(expected), "{extra}: {message}");
        }
    }

    #[test]
    fn the_example_is_valid() {
        let example: Environment =
            serde_norway::from_str(include_str!("../../examples/environment-dynamic.yaml"))
                .unwrap();
        validate(&example).unwrap();
        let timing = Timing::of(&example.spec.dynamic_secrets[0]);
        assert_eq!(timing.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(timing.lead(None), Duration::from_secs(600));
    }

    #[test]
    fn idempotency_keys_differ_by_resource_entry_epoch_and_rotation() {
        let keys = [
            idempotency_key("u1", "db", 3, 0),
            idempotency_key("u2", "db", 3, 0),
            idempotency_key("u1", "db2", 3, 0),
            idempotency_key("u1", "db", 7, 0),
            idempotency_key("u1", "db", 3, 1),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }

    fn spec(extra: serde_json::Value) -> DynamicSecretSpec {
        serde_json::from_value(entry(extra)).unwrap()
    }

    const SHAPE: &str = "shape";

    /// An entry with lease `l1` issued at `at(0)` for 60 s, at most until `at(300)`.
    fn leased() -> DynamicSecretStatus {
        let times = LeaseTimes {
            expires_at: at(60),
            max_expires_at: at(300),
        };
        DynamicSecretStatus {
            name: "db".into(),
            secret_name: Some("db-creds".into()),
            epoch: 4,
            rotation: 1,
            lease_id: Some("l1".into()),
            expires_at: Some(Time(times.expires_at)),
            max_expires_at: Some(Time(times.max_expires_at)),
            lease_seconds: Some(60),
            renew_at: Some(Time(renew_at(times, Duration::from_secs(20), 0.0))),
            secret_hash: Some("h".into()),
            shape_hash: Some(SHAPE.into()),
            ..DynamicSecretStatus::default()
        }
    }

    const OURS: Found = Found::Ours { intact: true };

    #[test]
    fn a_new_entry_is_claimed_then_issued_its_first_lease_without_a_restart() {
        let s = spec(serde_json::json!({}));
        assert_eq!(
            step(&s, None, (Found::Missing, None), SHAPE, at(0)),
            Step::Claim
        );
        let claimed = DynamicSecretStatus {
            name: "db".into(),
            epoch: 4,
            ..DynamicSecretStatus::default()
        };
        assert_eq!(
            step(&s, Some(&claimed), (Found::Missing, None), SHAPE, at(0)),
            Step::Issue {
                rotation: 0,
                why: "the first lease".into(),
                restart: false
            }
        );
        assert_eq!(
            step(&s, Some(&claimed), (Found::Foreign, None), SHAPE, at(0)),
            Step::Blocked,
            "no lease is issued for a Secret that cannot be written"
        );
    }

    #[test]
    fn a_lease_waits_then_is_renewed_a_third_of_its_ttl_before_expiry() {
        let s = spec(serde_json::json!({}));
        let status = leased();
        assert_eq!(
            step(&s, Some(&status), (OURS, None), SHAPE, at(10)),
            Step::Wait { at: Some(at(40)) }
        );
        assert_eq!(
            step(&s, Some(&status), (OURS, None), SHAPE, at(40)),
            Step::Renew {
                lease_id: "l1".into()
            }
        );
        // An operator restart or an unrelated edit changes none of this: still waiting.
        assert!(matches!(
            step(&s, Some(&status), (OURS, None), SHAPE, at(39)),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn renewal_is_jittered_earlier_never_later() {
        let times = LeaseTimes {
            expires_at: at(600),
            max_expires_at: at(6000),
        };
        let lead = Duration::from_secs(100);
        assert_eq!(renew_at(times, lead, 0.0), at(500));
        assert_eq!(renew_at(times, lead, 1.0), at(490));
        let mid = renew_at(times, lead, 0.5);
        assert!(mid < at(500) && mid > at(490));
        // Too near its maximum to be extended by the lead: replaced, `lead` before the maximum.
        let near = LeaseTimes {
            expires_at: at(600),
            max_expires_at: at(650),
        };
        assert_eq!(renew_at(near, lead, 1.0), at(550));
    }

    #[test]
    fn the_next_lease_is_issued_before_the_maximum_ttl_and_restarts() {
        let s = spec(serde_json::json!({}));
        let mut status = leased();
        status.max_expires_at = Some(Time(at(100)));
        assert_eq!(
            step(&s, Some(&status), (OURS, None), SHAPE, at(80)),
            Step::Issue {
                rotation: 1,
                why: "the lease nears its maximum TTL".into(),
                restart: true
            }
        );
        // Renewed up to its maximum: replaced at its renewal time.
        let mut status = leased();
        status.expires_at = Some(Time(at(150)));
        status.max_expires_at = Some(Time(at(150)));
        status.renew_at = Some(Time(at(90)));
        assert!(matches!(
            step(&s, Some(&status), (OURS, None), SHAPE, at(89)),
            Step::Wait { .. }
        ));
        assert!(matches!(
            step(&s, Some(&status), (OURS, None), SHAPE, at(95)),
            Step::Issue { restart: true, .. }
        ));
    }

    #[test]
    fn a_lost_or_edited_secret_or_a_new_shape_gets_new_credentials() {
        let s = spec(serde_json::json!({}));
        let status = leased();
        for (found, shape, why) in [
            (Found::Missing, SHAPE, "was deleted"),
            (Found::Ours { intact: false }, SHAPE, "was edited"),
            (OURS, "other", "secretName or templates changed"),
        ] {
            match step(&s, Some(&status), (found, None), shape, at(1)) {
                Step::Issue {
                    rotation: 1,
                    why: w,
                    restart: true,
                } => assert!(w.contains(why), "{w}"),
                other => panic!("{found:?}: {other:?}"),
            }
        }
        assert_eq!(
            step(&s, Some(&status), (Found::Foreign, None), SHAPE, at(1)),
            Step::Blocked
        );
    }

    #[test]
    fn a_pending_lease_is_issued_again_under_its_own_key() {
        let s = spec(serde_json::json!({}));
        let mut status = leased();
        status.rotation = 2;
        status.pending = Some(PendingLease {
            lease_id: "l2".into(),
            rotation: 1,
            secret_hash: Some("h2".into()),
            ..PendingLease::default()
        });
        match step(&s, Some(&status), (OURS, Some("h".into())), SHAPE, at(1)) {
            Step::Issue {
                rotation: 1,
                restart: true,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        // Its credentials are in the Secret already: no request, only the rest of the step.
        assert_eq!(
            step(&s, Some(&status), (OURS, Some("h2".into())), SHAPE, at(1)),
            Step::Finish { restart: true }
        );
    }

    #[test]
    fn renewals_ask_for_the_ttl_but_never_past_the_maximum() {
        let s = spec(serde_json::json!({ "ttl": "60s" }));
        let status = leased();
        assert_eq!(renew_ttl(&s, &status, at(40)), Some(60));
        assert_eq!(renew_ttl(&s, &status, at(280)), Some(20));
        let default = spec(serde_json::json!({}));
        assert_eq!(
            renew_ttl(&default, &status, at(40)),
            Some(60),
            "the lease's own"
        );
    }

    #[test]
    fn the_secret_holds_the_credentials_and_the_templates_and_is_owned() {
        let env = environment(serde_json::json!([entry(serde_json::json!({
            "templates": { "DSN": "user={{ .username }} password={{ .password }}" }
        }))]));
        let lease = IssuedLease {
            id: "l1".into(),
            username: "coffer_u".into(),
            password: Revealed(SecretString::from("pw".to_owned())),
            connection_url: Revealed(SecretString::from("postgres://coffer_u:pw@db/x".to_owned())),
            expires_at: coffer_client::ids::Timestamp(0),
            max_expires_at: coffer_client::ids::Timestamp(0),
            renewable: true,
        };
        let secret = desired_secret(&env, &env.spec.dynamic_secrets[0], &lease).unwrap();
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text("username"), "coffer_u");
        assert_eq!(text("password"), "pw");
        assert_eq!(text("connection_url"), "postgres://coffer_u:pw@db/x");
        assert_eq!(text("DSN"), "user=coffer_u password=pw");
        let labels = secret.metadata.labels.unwrap();
        assert_eq!(labels[DYNAMIC_SECRET_LABEL], "db");
        assert_eq!(labels[ENVIRONMENT_LABEL], "web-prod");
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.controller, Some(true));
    }
}
