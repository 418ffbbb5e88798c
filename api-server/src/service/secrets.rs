//! Secrets of an environment: sealed with the project's DEK, versioned, soft-deleted,
//! referencing each other, imported and exported. Every read of values is audited.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::auth::{Caller, Subject};
use crate::authz::Action;
use crate::crypto::envelope::{Dek, DekContext, Field, ValueAad, WrappedDek};
use crate::db;
use crate::db::audit::AuditRow;
use crate::db::cache::{Change, Snapshot};
use crate::db::secrets::{DekRow, NewVersion, SealedRow, VersionRow};
use crate::error::{ApiError, ApiResult};
use crate::ids::{EnvironmentId, OrgId, ProjectId, Timestamp};
use crate::secrets::formats::{self, Format};
use crate::secrets::references::{self, Lookup, LookupError, Place};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome};
use crate::service::events;
use crate::service::tenancy::{self, EnvCtx, EnvPath, ProjectCtx};
use crate::service::write_queue::{DrainGuard, Pushed, WriteQueues};
use crate::state::AppState;
use coffer_client::types::{ChangeAction, KeyChange};

pub const MAX_KEY_LEN: usize = 256;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_COMMENT_CHARS: usize = 4096;

/// Audit actions of this module.
pub mod action {
    pub const READ: &str = "secrets.read";
    pub const CREATED: &str = "secret.created";
    pub const UPDATED: &str = "secret.updated";
    pub const DELETED: &str = "secret.deleted";
    pub const RESTORED: &str = "secret.restored";
    pub const ROLLED_BACK: &str = "secret.rolled_back";
    pub const BULK_UPSERTED: &str = "secrets.bulk_upserted";
    pub const IMPORTED: &str = "secrets.imported";
    pub const EXPORTED: &str = "secrets.exported";
    pub const COPIED: &str = "secrets.copied";
    pub const COMPARED: &str = "secrets.compared";
    pub const KEY_ROTATED: &str = "project.key_rotated";
}

/// A secret as its reader sees it.
#[derive(Debug, Clone)]
pub struct SecretValue {
    pub key: String,
    pub value: SecretString,
    pub comment: Option<SecretString>,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A value to write.
#[derive(Debug, Clone)]
pub struct SecretInput {
    pub key: String,
    pub value: SecretString,
    /// `None`: keep the current comment (none for a new secret).
    pub comment: Option<SecretString>,
}

/// `^[A-Za-z_][A-Za-z0-9_.-]*$`, at most 256 characters.
pub fn check_key(key: &str) -> ApiResult<()> {
    let mut bytes = key.bytes();
    let ok = key.len() <= MAX_KEY_LEN
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            "invalid_key",
            format!(
                "secret keys match ^[A-Za-z_][A-Za-z0-9_.-]*$ and have at most {MAX_KEY_LEN} characters"
            ),
        ))
    }
}

fn check_input(input: &SecretInput) -> ApiResult<()> {
    check_key(&input.key)?;
    if input.value.expose_secret().len() > MAX_VALUE_BYTES {
        return Err(ApiError::validation(
            "value_too_large",
            format!(
                "the value of `{}` is over {} KiB",
                input.key,
                MAX_VALUE_BYTES / 1024
            ),
        ));
    }
    if input
        .comment
        .as_ref()
        .is_some_and(|c| c.expose_secret().chars().count() > MAX_COMMENT_CHARS)
    {
        return Err(ApiError::validation(
            "comment_too_long",
            format!(
                "the comment of `{}` is over {MAX_COMMENT_CHARS} characters",
                input.key
            ),
        ));
    }
    Ok(())
}

fn crypto_failure(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(anyhow::anyhow!("stored secret cannot be decrypted: {e}"))
}

fn dek_context(org: OrgId, project: ProjectId, dek_id: &str) -> DekContext {
    DekContext {
        org_id: org.to_string(),
        project_id: project.to_string(),
        dek_id: dek_id.to_owned(),
    }
}

/// Takes the project's key lock (see [`db::secrets::lock_project_keys`]) in `conn`'s
/// transaction; the project being gone by now is a 404.
async fn lock_project_keys(conn: &mut sqlx::AnyConnection, project: ProjectId) -> ApiResult<()> {
    if db::secrets::lock_project_keys(conn, project).await? {
        Ok(())
    } else {
        Err(ApiError::not_found("project"))
    }
}

/// Creates a project's first (or next) DEK inside the caller's transaction. The caller holds the
/// project's key lock, or created the project in this same transaction.
pub async fn create_dek(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    org: OrgId,
    project: ProjectId,
    version: i64,
) -> Result<DekRow, sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let dek = Dek::generate();
    let wrapped = state.keyring.wrap(&dek, &dek_context(org, project, &id));
    let row = DekRow {
        id,
        project_id: project,
        version,
        kek_id: wrapped.kek_id,
        wrapped: wrapped.ciphertext,
        encryptions: 0,
    };
    db::secrets::insert_dek(&mut *conn, &row, Timestamp::now()).await?;
    state.deks.insert(row.id.clone(), Arc::new(dek));
    Ok(row)
}

/// The unwrapped DEK `row`, from the cache when it is there.
fn unwrap_dek(state: &AppState, org: OrgId, row: &DekRow) -> ApiResult<Arc<Dek>> {
    if let Some(dek) = state.deks.get(&row.id) {
        return Ok(dek);
    }
    let wrapped = WrappedDek {
        kek_id: row.kek_id.clone(),
        ciphertext: row.wrapped.clone(),
    };
    let dek = Arc::new(
        state
            .keyring
            .unwrap(&wrapped, &dek_context(org, row.project_id, &row.id))
            .map_err(crypto_failure)?,
    );
    state.deks.insert(row.id.clone(), dek.clone());
    Ok(dek)
}

/// The environment's live secrets, sealed, with its validators (see [`db::cache`]).
async fn snapshot(state: &AppState, ctx: &EnvCtx) -> ApiResult<Arc<Snapshot>> {
    db::secrets::snapshot(&state.db, ctx.project.org.org.id, ctx.env.id)
        .await?
        .ok_or_else(|| ApiError::not_found("environment"))
}

/// Opens sealed rows of one environment; each distinct DEK is unwrapped once.
async fn open_rows(
    state: &AppState,
    ctx: &EnvCtx,
    rows: &[SealedRow],
) -> ApiResult<Vec<SecretValue>> {
    let org = ctx.project.org.org.id;
    let project = ctx.project.project.id;
    let mut deks: HashMap<String, Arc<Dek>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let dek = match deks.get(&row.dek_id) {
            Some(dek) => dek.clone(),
            None => {
                let dek = match state.deks.get(&row.dek_id) {
                    Some(dek) => dek,
                    None => {
                        let stored = db::secrets::dek(state.db.pool(), project, &row.dek_id)
                            .await?
                            .ok_or_else(|| crypto_failure("missing DEK"))?;
                        unwrap_dek(state, org, &stored)?
                    }
                };
                deks.insert(row.dek_id.clone(), dek.clone());
                dek
            }
        };
        let aad = |field| ValueAad {
            org_id: org.to_string(),
            project_id: project.to_string(),
            environment_id: ctx.env.id.to_string(),
            key: row.key.clone(),
            version: row.version,
            field,
        };
        let value = text(
            dek.open(&row.value_ct, &aad(Field::Value))
                .map_err(crypto_failure)?,
        )?;
        let comment = match &row.comment_ct {
            Some(ct) => Some(text(
                dek.open(ct, &aad(Field::Comment)).map_err(crypto_failure)?,
            )?),
            None => None,
        };
        out.push(SecretValue {
            key: row.key.clone(),
            value,
            comment,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        });
    }
    Ok(out)
}

fn text(bytes: Zeroizing<Vec<u8>>) -> ApiResult<SecretString> {
    let s = std::str::from_utf8(&bytes).map_err(|_| crypto_failure("not UTF-8"))?;
    Ok(SecretString::from(s.to_owned()))
}

/// One version just written, as its writer sees it (the value is the writer's own).
struct Written {
    key: String,
    version: i64,
    comment: Option<SecretString>,
    created_at: Timestamp,
}

/// The DEK that sealed a write's versions and how many encryptions it made: for
/// [`db::secrets::finish_write`].
struct Sealed {
    dek_id: String,
    seals: i64,
}

/// Writes new versions of `inputs` in `tx`. An input without a comment keeps the current one,
/// given in `kept_comments` by key. The write ends with [`db::secrets::finish_write`].
async fn write_versions(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    principal: &Caller,
    inputs: &[SecretInput],
    kept_comments: &HashMap<&str, SecretString>,
    now: Timestamp,
) -> ApiResult<(Vec<Written>, Sealed)> {
    let (dek_row, dek) = write_dek(state, tx, ctx).await?;
    let (written, seals) = seal_versions(
        tx,
        ctx,
        principal,
        (&dek_row, &dek),
        inputs,
        kept_comments,
        None,
        now,
    )
    .await?;
    Ok((
        written,
        Sealed {
            dek_id: dek_row.id,
            seals,
        },
    ))
}

/// The project's DEK for a write, under the project's key lock: the active one, or a new one
/// when there is none or it has sealed enough.
async fn write_dek(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &EnvCtx,
) -> ApiResult<(DekRow, Arc<Dek>)> {
    // The key lock is taken before the DEK is read: a rotation that commits first is seen, one
    // that starts later waits.
    if !db::secrets::lock_project_keys(tx, ctx.project.project.id).await? {
        return Err(ApiError::not_found("project"));
    }
    keys_locked_dek(state, tx, ctx).await
}

/// [`write_dek`] once the project's key lock is held.
async fn keys_locked_dek(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &EnvCtx,
) -> ApiResult<(DekRow, Arc<Dek>)> {
    project_keys_locked_dek(state, tx, &ctx.project).await
}

/// The project's DEK for sealing something (it counts the encryptions itself), under the
/// project's key lock taken here: see [`write_dek`].
pub async fn dek_for_sealing(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &ProjectCtx,
) -> ApiResult<(String, Arc<Dek>)> {
    lock_project_keys(tx, ctx.project.id).await?;
    let (row, dek) = project_keys_locked_dek(state, tx, ctx).await?;
    Ok((row.id, dek))
}

/// Seals `plain` for `aad` with the project's current data key, counting the encryption in
/// `tx` (for material other subsystems keep under the project's key: webhook secrets, dynamic
/// secrets' connections).
pub async fn seal_with_project_key(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &ProjectCtx,
    plain: &[u8],
    aad: &ValueAad,
) -> ApiResult<(String, Vec<u8>)> {
    let (dek_id, dek) = dek_for_sealing(state, tx, ctx).await?;
    let ct = dek.seal(plain, aad);
    db::secrets::count_encryptions(&mut **tx, &dek_id, 1).await?;
    Ok((dek_id, ct))
}

/// The DEK `dek_id` of a project, unwrapped, for opening what it sealed.
pub async fn project_dek(
    state: &AppState,
    org: OrgId,
    project: ProjectId,
    dek_id: &str,
) -> ApiResult<Arc<Dek>> {
    if let Some(dek) = state.deks.get(dek_id) {
        return Ok(dek);
    }
    let row = db::secrets::dek(state.db.pool(), project, dek_id)
        .await?
        .ok_or_else(|| crypto_failure("missing DEK"))?;
    unwrap_dek(state, org, &row)
}

async fn project_keys_locked_dek(
    state: &AppState,
    tx: &mut db::Tx,
    ctx: &ProjectCtx,
) -> ApiResult<(DekRow, Arc<Dek>)> {
    let org = ctx.org.org.id;
    let project = ctx.project.id;
    let active = db::secrets::active_dek(&mut **tx, project).await?;
    let dek_row = match active {
        Some(row)
            if u64::try_from(row.encryptions).unwrap_or(0)
                < crate::crypto::envelope::DEK_ROTATE_AFTER =>
        {
            row
        }
        Some(row) => create_dek(state, tx, org, project, row.version + 1).await?,
        None => create_dek(state, tx, org, project, 1).await?,
    };
    let dek = unwrap_dek(state, org, &dek_row)?;
    Ok((dek_row, dek))
}

/// Seals `inputs` with `dek` and inserts them as new versions; also how many encryptions that
/// made. An input without a comment keeps the one in `kept_comments`. `next`, when given, is
/// the version each input gets (in order), as read under the environment's lock: then the secret
/// and its version are written in one statement (PostgreSQL), else its version comes first.
#[allow(clippy::too_many_arguments)]
async fn seal_versions(
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    principal: &Caller,
    (dek_row, dek): (&DekRow, &Dek),
    inputs: &[SecretInput],
    kept_comments: &HashMap<&str, SecretString>,
    next: Option<&[i64]>,
    now: Timestamp,
) -> ApiResult<(Vec<Written>, i64)> {
    let org = ctx.project.org.org.id;
    let project = ctx.project.project.id;
    let (actor_type, actor_id) = principal.actor();
    let mut written = Vec::with_capacity(inputs.len());
    let mut seals = 0i64;
    for (i, input) in inputs.iter().enumerate() {
        let comment = match &input.comment {
            Some(c) => Some(c.clone()),
            None => kept_comments.get(input.key.as_str()).cloned(),
        };
        let comment = comment.filter(|c| !c.expose_secret().is_empty());
        let known = next.and_then(|n| n.get(i).copied());
        let (secret, version, created_at) = match known {
            Some(version) => (None, version, now),
            None => {
                let (secret, version, created_at) =
                    db::secrets::next_version(&mut **tx, ctx.env.id, &input.key, now).await?;
                (Some(secret), version, created_at)
            }
        };
        let aad = |field| ValueAad {
            org_id: org.to_string(),
            project_id: project.to_string(),
            environment_id: ctx.env.id.to_string(),
            key: input.key.clone(),
            version,
            field,
        };
        let value_ct = dek.seal(input.value.expose_secret().as_bytes(), &aad(Field::Value));
        let comment_ct = comment
            .as_ref()
            .map(|c| dek.seal(c.expose_secret().as_bytes(), &aad(Field::Comment)));
        seals += 1 + i64::from(comment_ct.is_some());
        let new = NewVersion {
            version,
            dek_id: &dek_row.id,
            value_ct: &value_ct,
            comment_ct: comment_ct.as_deref(),
            has_references: references::has_references(input.value.expose_secret()),
            created_at: now,
            actor_type,
            actor_id: &actor_id,
        };
        let created_at = match secret {
            Some(secret) => {
                db::secrets::insert_version(&mut **tx, secret, &new).await?;
                created_at
            }
            None => db::secrets::upsert_with_version(tx, ctx.env.id, &input.key, &new).await?,
        };
        written.push(Written {
            key: input.key.clone(),
            version,
            comment,
            created_at,
        });
    }
    Ok((written, seals))
}

pub(super) fn audit(
    meta: &ClientMeta,
    principal: &Caller,
    ctx: &EnvCtx,
    what: &'static str,
) -> AuditEvent {
    AuditEvent::new(what, Outcome::Success, meta)
        .by(principal)
        .org(ctx.project.org.org.id)
        .project(ctx.project.project.id)
        .environment(ctx.env.id)
}

/// The current value of one secret, unresolved, for this server's own upkeep (not audited:
/// it never leaves the server). `None` when there is no live secret `key`.
pub async fn current_raw_value(
    state: &AppState,
    org: OrgId,
    project: ProjectId,
    env: EnvironmentId,
    key: &str,
) -> ApiResult<Option<SecretString>> {
    let Some(row) = db::secrets::live_one(&state.db, org, env, key).await? else {
        return Ok(None);
    };
    let dek = project_dek(state, org, project, &row.dek_id).await?;
    let aad = ValueAad {
        org_id: org.to_string(),
        project_id: project.to_string(),
        environment_id: env.to_string(),
        key: row.key.clone(),
        version: row.version,
        field: Field::Value,
    };
    text(dek.open(&row.value_ct, &aad).map_err(crypto_failure)?).map(Some)
}

/// The environment's current values by key (unresolved).
pub(super) async fn current_values(
    state: &AppState,
    ctx: &EnvCtx,
) -> ApiResult<BTreeMap<String, SecretValue>> {
    let snapshot = snapshot(state, ctx).await?;
    Ok(open_rows(state, ctx, &snapshot.rows)
        .await?
        .into_iter()
        .map(|s| (s.key.clone(), s))
        .collect())
}

/// The environment's current secrets' metadata, by key; nothing is decrypted.
pub(super) async fn metadata(
    state: &AppState,
    ctx: &EnvCtx,
) -> ApiResult<Vec<super::dashboard::SecretMeta>> {
    let snapshot = snapshot(state, ctx).await?;
    let mut listed: Vec<_> = snapshot
        .rows
        .iter()
        .map(|r| super::dashboard::SecretMeta {
            key: r.key.clone(),
            version: r.version,
            updated_at: r.updated_at,
            has_comment: r.comment_ct.is_some(),
        })
        .collect();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(listed)
}

/// Reads referenced places for the resolver, checking the caller may read each environment.
/// Only the referenced secret is fetched and decrypted, never a whole environment, so what a
/// resolution loads is bounded by what it substitutes.
struct OrgLookup<'a> {
    state: &'a AppState,
    principal: &'a Caller,
    org: &'a str,
    envs: HashMap<(String, String), Result<EnvCtx, LookupError>>,
    /// The environments read through references, and which of their keys: audited after.
    read: BTreeMap<(String, String), (ProjectId, EnvironmentId, BTreeSet<String>)>,
}

impl<'a> OrgLookup<'a> {
    fn new(state: &'a AppState, principal: &'a Caller, org: &'a str) -> Self {
        Self {
            state,
            principal,
            org,
            envs: HashMap::new(),
            read: BTreeMap::new(),
        }
    }

    /// One read event per environment whose values were used through a reference.
    fn read_events(&self, meta: &ClientMeta, org: OrgId) -> Vec<AuditEvent> {
        self.read
            .values()
            .map(|(project, env, keys)| {
                AuditEvent::new(action::READ, Outcome::Success, meta)
                    .by(self.principal)
                    .org(org)
                    .project(project)
                    .environment(env)
                    .details(json!({ "keys": keys, "via_reference": true }))
            })
            .collect()
    }
}

impl Lookup for OrgLookup<'_> {
    async fn raw_value(&mut self, place: &Place) -> Result<Option<SecretString>, LookupError> {
        let at = (place.project.clone(), place.env.clone());
        if !self.envs.contains_key(&at) {
            let path = EnvPath {
                org: self.org,
                project: &place.project,
                env: &place.env,
            };
            let ctx =
                match tenancy::environment(self.state, self.principal, path, Action::SecretsRead)
                    .await
                {
                    Ok(ctx) => Ok(ctx),
                    Err(ApiError::NotFound { .. }) => Err(LookupError::Hidden),
                    Err(ApiError::Forbidden { .. }) => Err(LookupError::Forbidden),
                    Err(e) => Err(LookupError::Internal(e.to_string())),
                };
            self.envs.insert(at.clone(), ctx);
        }
        let ctx = match &self.envs[&at] {
            Ok(ctx) => ctx.clone(),
            Err(e) => return Err(e.clone()),
        };
        let internal = |e: ApiError| LookupError::Internal(e.to_string());
        let org = ctx.project.org.org.id;
        let row = db::secrets::live_one(&self.state.db, org, ctx.env.id, &place.key)
            .await
            .map_err(|e| internal(e.into()))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let value = open_rows(self.state, &ctx, &[row])
            .await
            .map_err(internal)?
            .pop()
            .map(|s| s.value);
        if value.is_some() {
            self.read
                .entry(at)
                .or_insert_with(|| (ctx.project.project.id, ctx.env.id, BTreeSet::new()))
                .2
                .insert(place.key.clone());
        }
        Ok(value)
    }
}

/// The limits of one request's reference resolution.
fn limits(state: &AppState) -> references::Limits {
    references::Limits {
        max_value_bytes: MAX_VALUE_BYTES,
        max_total_bytes: usize::try_from(state.config.max_resolved_bytes).unwrap_or(usize::MAX),
        max_references: usize::try_from(state.config.max_resolved_references).unwrap_or(usize::MAX),
    }
}

fn reference_error(e: references::RefError) -> ApiError {
    use references::RefError;
    match e {
        RefError::Lookup(cause) => ApiError::internal(anyhow::anyhow!(cause)),
        e @ RefError::ValueTooLarge { .. } => {
            ApiError::validation("resolved_value_too_large", e.to_string())
        }
        e @ (RefError::TooManyBytes { .. } | RefError::TooManyReferences { .. }) => {
            ApiError::validation("resolution_limit_exceeded", e.to_string())
        }
        other => ApiError::validation("reference_error", other.to_string()),
    }
}

/// Resolves `${…}` references in `values` (in place); returns the read events of the
/// environments read through them, to be stored with the request's own.
async fn resolve(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    ctx: &EnvCtx,
    values: &mut [SecretValue],
) -> ApiResult<Vec<AuditEvent>> {
    if !values
        .iter()
        .any(|v| references::needs_resolution(v.value.expose_secret()))
    {
        return Ok(Vec::new());
    }
    let raw: BTreeMap<String, SecretString> = values
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    let mut lookup = OrgLookup::new(state, principal, &ctx.project.org.org.slug);
    let resolved = references::resolve_all(
        &ctx.project.project.slug,
        &ctx.env.slug,
        &raw,
        &mut lookup,
        limits(state),
    )
    .await
    .map_err(reference_error)?;
    for v in values.iter_mut() {
        if let Some(r) = resolved.get(&v.key) {
            v.value = r.clone();
        }
    }
    Ok(lookup.read_events(meta, ctx.project.org.org.id))
}

/// The answer to a bulk read.
#[derive(Debug)]
pub enum BulkRead {
    /// The caller's copy (`If-None-Match`) is current: nothing was decrypted.
    NotModified { etag: String, revision: i64 },
    Values {
        etag: String,
        revision: i64,
        secrets: Vec<SecretValue>,
    },
}

/// Every secret of an environment, resolved unless `resolve` is false; `304` semantics when
/// `if_none_match` names the current entity tag.
pub async fn read_all(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    resolve_refs: bool,
    if_none_match: Option<&str>,
) -> ApiResult<BulkRead> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsRead).await?;
    let snapshot = snapshot(state, &ctx).await?;
    let (revision, org_revision) = (snapshot.revision, snapshot.org_revision);
    // The environment's id: one deleted and created again starts its revisions afresh.
    // Resolved values may change with other environments: then the tag covers the organization.
    let env_id = ctx.env.id;
    let etag = if resolve_refs && snapshot.has_references() {
        format!("\"{env_id}.e{revision}.o{org_revision}\"")
    } else {
        format!(
            "\"{env_id}.e{revision}{}\"",
            if resolve_refs { "" } else { ".raw" }
        )
    };
    if if_none_match.is_some_and(|tags| {
        tags.split(',')
            .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
    }) {
        return Ok(BulkRead::NotModified { etag, revision });
    }
    let mut secrets = open_rows(state, &ctx, &snapshot.rows).await?;
    let mut events = if resolve_refs {
        resolve(state, meta, principal, &ctx, &mut secrets).await?
    } else {
        Vec::new()
    };
    let keys: Vec<&str> = secrets.iter().map(|s| s.key.as_str()).collect();
    events.push(
        audit(meta, principal, &ctx, action::READ)
            .details(json!({ "keys": keys, "resolved": resolve_refs })),
    );
    // Kept before any value leaves: a read that cannot be audited is refused.
    state.audit.record(events).await?;
    state.metrics.secrets_read.inc_by(secrets.len() as u64);
    Ok(BulkRead::Values {
        etag,
        revision,
        secrets,
    })
}

/// One secret (current version, or `version`).
pub async fn read_one(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    key: &str,
    version: Option<i64>,
    resolve_refs: bool,
) -> ApiResult<SecretValue> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsRead).await?;
    let mut values = match version {
        None => {
            let org = ctx.project.org.org.id;
            let row = db::secrets::live_one(&state.db, org, ctx.env.id, key)
                .await?
                .ok_or_else(|| ApiError::not_found("secret"))?;
            open_rows(state, &ctx, &[row]).await?
        }
        Some(_) => {
            let row = {
                let mut conn = state.db.read_connection().await?;
                let found = db::secrets::one(&mut *conn, ctx.env.id, key, version).await;
                conn.settle(found)?
            };
            let row = row.ok_or_else(|| ApiError::not_found("secret version"))?;
            open_rows(state, &ctx, &[row]).await?
        }
    };
    let mut events = Vec::new();
    // The rest of the environment is loaded only for a value that refers to it.
    if resolve_refs && references::needs_resolution(values[0].value.expose_secret()) {
        let place = Place {
            project: ctx.project.project.slug.clone(),
            env: ctx.env.slug.clone(),
            key: key.to_owned(),
        };
        let same_env: BTreeMap<String, SecretString> = current_values(state, &ctx)
            .await?
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
        let mut lookup = OrgLookup::new(state, principal, &ctx.project.org.org.slug);
        let resolved = references::resolve_one(
            &place,
            &values[0].value,
            &same_env,
            &mut lookup,
            limits(state),
        )
        .await
        .map_err(reference_error)?;
        events = lookup.read_events(meta, ctx.project.org.org.id);
        values[0].value = resolved;
    }
    events.push(
        audit(meta, principal, &ctx, action::READ)
            .details(json!({ "keys": [key], "version": version, "resolved": resolve_refs })),
    );
    state.audit.record(events).await?;
    state.metrics.secrets_read.inc();
    values.pop().ok_or_else(|| ApiError::not_found("secret"))
}

/// The versions of one secret, newest first (metadata only).
pub async fn versions(
    state: &AppState,
    principal: &Caller,
    at: EnvPath<'_>,
    key: &str,
    before: Option<i64>,
    limit: u32,
) -> ApiResult<Vec<VersionRow>> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsRead).await?;
    let row = db::secrets::one(state.db.pool(), ctx.env.id, key, None)
        .await?
        .ok_or_else(|| ApiError::not_found("secret"))?;
    Ok(db::secrets::versions(state.db.pool(), row.id, before, i64::from(limit) + 1).await?)
}

/// Checks the references of the values about to be written, taking the environment's other
/// values and the rest of the request into account (see [`references::check_written`]).
async fn check_references(
    state: &AppState,
    principal: &Caller,
    ctx: &EnvCtx,
    current: &BTreeMap<String, SecretValue>,
    to_write: &[SecretInput],
) -> ApiResult<()> {
    if !to_write
        .iter()
        .any(|i| references::needs_resolution(i.value.expose_secret()))
    {
        return Ok(());
    }
    let mut after: BTreeMap<String, SecretString> = current
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    for input in to_write {
        after.insert(input.key.clone(), input.value.clone());
    }
    let written: Vec<&str> = to_write.iter().map(|i| i.key.as_str()).collect();
    let mut lookup = OrgLookup::new(state, principal, &ctx.project.org.org.slug);
    references::check_written(
        &ctx.project.project.slug,
        &ctx.env.slug,
        &after,
        &written,
        &mut lookup,
        limits(state),
    )
    .await
    .map_err(reference_error)
}

fn too_many_secrets(max: i64) -> ApiError {
    ApiError::validation(
        "too_many_secrets",
        format!("an environment holds at most {max} secrets; delete some first"),
    )
}

/// Refuses a bulk write or import of more entries than configured, before any other work.
pub(super) fn check_entry_count(state: &AppState, entries: usize) -> ApiResult<()> {
    let max = state.config.max_bulk_entries;
    if entries > usize::try_from(max).unwrap_or(usize::MAX) {
        return Err(ApiError::validation(
            "too_many_entries",
            format!("a bulk write or import holds at most {max} entries; this one has {entries}"),
        ));
    }
    Ok(())
}

/// Writes `inputs` in one transaction: creating, updating, and leaving identical ones alone.
/// Whether a bulk write replaces the values of the keys the environment already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overwrite {
    Yes,
    /// They are left alone and reported as skipped.
    No,
}

/// How a bulk write goes.
#[derive(Debug)]
pub(super) struct BulkWrite {
    /// Its audit action.
    pub what: &'static str,
    pub overwrite: Overwrite,
    /// Audit events of other environments recorded in the same transaction (the read of a
    /// copy's source).
    pub also: Vec<AuditEvent>,
    /// More details of its audit event (an object), beside what it created and updated.
    pub details: serde_json::Value,
}

impl BulkWrite {
    /// A write that replaces what it finds, audited as `what`.
    fn replacing(what: &'static str) -> Self {
        Self {
            what,
            overwrite: Overwrite::Yes,
            also: Vec::new(),
            details: json!({}),
        }
    }
}

/// Writes `inputs` in one transaction.
pub(super) async fn upsert(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    ctx: &EnvCtx,
    inputs: Vec<SecretInput>,
    how: BulkWrite,
) -> ApiResult<UpsertReport> {
    let BulkWrite {
        what,
        overwrite,
        also,
        details: extra,
    } = how;
    for input in &inputs {
        check_input(input)?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = inputs.iter().find(|i| !seen.insert(i.key.as_str())) {
        return Err(ApiError::validation(
            "duplicate_key",
            format!("`{}` appears twice", dup.key),
        ));
    }
    // Every current value: what is unchanged is told by comparing values.
    let current = current_values(state, ctx).await?;
    let mut report = UpsertReport::default();
    let mut to_write = Vec::new();
    for input in inputs {
        match current.get(&input.key) {
            Some(cur)
                if cur.value.expose_secret() == input.value.expose_secret()
                    && input.comment.as_ref().is_none_or(|c| {
                        c.expose_secret() == cur.comment.as_ref().map_or("", |x| x.expose_secret())
                    }) =>
            {
                report.unchanged.push(input.key);
            }
            Some(_) if overwrite == Overwrite::No => report.skipped.push(input.key),
            Some(_) => {
                report.updated.push(input.key.clone());
                to_write.push(input);
            }
            None => {
                report.created.push(input.key.clone());
                to_write.push(input);
            }
        }
    }
    let max_secrets = i64::from(state.config.max_secrets_per_environment);
    let live = i64::try_from(current.len()).unwrap_or(i64::MAX);
    let created = i64::try_from(report.created.len()).unwrap_or(i64::MAX);
    if live.saturating_add(created) > max_secrets {
        return Err(too_many_secrets(max_secrets));
    }
    check_references(state, principal, ctx, &current, &to_write).await?;
    let kept_comments: HashMap<&str, SecretString> = current
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.comment.clone()?)))
        .collect();
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let mut sealed = None;
    if !to_write.is_empty() {
        report.revision = Some(lock_and_bump_environment(&mut tx, ctx, now).await?);
        if overwrite == Overwrite::No {
            // Under the lock: a key created since the values were read is not overwritten.
            for key in &report.created {
                let row = db::secrets::one(&mut *tx, ctx.env.id, key, None).await?;
                if row.is_some_and(|r| r.deleted_at.is_none()) {
                    return Err(ApiError::conflict(
                        "concurrent_write",
                        format!("`{key}` was created meanwhile; nothing was written, try again"),
                    ));
                }
            }
        }
        let (written, seals) = write_versions(
            state,
            &mut tx,
            ctx,
            principal,
            &to_write,
            &kept_comments,
            now,
        )
        .await?;
        // Counted again under the lock: concurrent writers may have added secrets since.
        if db::secrets::count_live(&mut *tx, ctx.env.id).await? > max_secrets {
            return Err(too_many_secrets(max_secrets));
        }
        report.versions = written.into_iter().map(|w| (w.key, w.version)).collect();
        sealed = Some(seals);
        for input in &to_write {
            let had = current
                .get(&input.key)
                .is_some_and(|c| references::has_references(c.value.expose_secret()));
            events::index_references(&mut tx, ctx, &input.key, &input.value, had).await?;
        }
        if let Some(revision) = report.revision {
            let changes = events::written(&report.created, &report.updated);
            events::secrets_changed(
                &mut tx,
                ctx,
                revision,
                changes,
                &events::actor(principal),
                now,
            )
            .await?;
        }
    }
    let mut details = json!({ "created": report.created, "updated": report.updated, "unchanged": report.unchanged.len() });
    if !report.skipped.is_empty() {
        details["skipped"] = json!(report.skipped);
    }
    if let (Some(details), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
        details.extend(extra);
    }
    let event = audit(meta, principal, ctx, what).details(details);
    match sealed {
        Some(s) => {
            let org = ctx.project.org.org.id;
            db::secrets::finish_write(&mut tx, &s.dek_id, s.seals, org, event.row()).await?;
        }
        None => event.record(&mut *tx).await?,
    }
    if !also.is_empty() {
        let rows: Vec<AuditRow> = also.iter().map(|e| e.row().clone()).collect();
        db::audit::insert_many(&mut tx, &rows).await?;
    }
    tx.commit().await?;
    state
        .metrics
        .secrets_written
        .inc_by((report.created.len() + report.updated.len()) as u64);
    Ok(report)
}

/// The first statement of a write of the environment: its next revision, and its write lock.
async fn lock_and_bump_environment(
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    now: Timestamp,
) -> ApiResult<i64> {
    changes_environment(tx, ctx);
    db::secrets::lock_and_bump_environment(&mut **tx, ctx.env.id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("environment"))
}

/// Records on `tx` that it changes the environment's secrets (see [`db::Tx::changed`]).
fn changes_environment(tx: &mut db::Tx, ctx: &EnvCtx) {
    tx.changed(Change::Environment {
        org: ctx.project.org.org.id,
        env: ctx.env.id,
    });
}

/// How a single-secret write treats a live secret of the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfLive {
    /// 409: creating only.
    Conflict,
    /// A new version of it.
    Update,
}

/// Single-secret writes waiting for their environment's next transaction (see
/// [`write_queue`](super::write_queue)).
pub type SecretWrites = WriteQueues<WriteJob>;

/// Writes of one environment taken into one transaction, at most.
const MAX_BATCH: usize = 64;

/// Writes one environment may have waiting; more are answered 503.
pub const MAX_WAITING_WRITES: usize = 1024;

/// A single-secret write waiting for its environment's transaction.
pub struct WriteJob {
    ctx: EnvCtx,
    meta: ClientMeta,
    principal: Caller,
    input: SecretInput,
    if_live: IfLive,
    what: &'static str,
    reply: oneshot::Sender<ApiResult<SecretValue>>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteJob")
            .field("env", &self.ctx.env.id)
            .field("key", &self.input.key)
            .finish_non_exhaustive()
    }
}

/// Writes one secret and answers with what was written. The checks that need no lock run
/// here; the write waits in its environment's queue and is committed with the writes queued
/// beside it (see [`write_batch`]).
async fn write_one(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    ctx: &EnvCtx,
    input: SecretInput,
    if_live: IfLive,
    what: &'static str,
) -> ApiResult<SecretValue> {
    check_input(&input)?;
    if references::needs_resolution(input.value.expose_secret()) {
        let current = current_values(state, ctx).await?;
        check_references(
            state,
            principal,
            ctx,
            &current,
            std::slice::from_ref(&input),
        )
        .await?;
    }
    let (reply, answer) = oneshot::channel();
    let env = ctx.env.id;
    let job = WriteJob {
        ctx: ctx.clone(),
        meta: meta.clone(),
        principal: principal.clone(),
        input,
        if_live,
        what,
        reply,
    };
    match state.secret_writes.push(env, job) {
        Pushed::Queued => {}
        Pushed::StartDrain => {
            tokio::spawn(drain_writes(state.clone(), env));
        }
        Pushed::Full(_) => {
            return Err(ApiError::Unavailable {
                message: "too many writes to this environment are waiting; try again".into(),
                retry_after: Some(std::time::Duration::from_secs(1)),
            });
        }
    }
    answer.await.map_err(|_| {
        ApiError::internal(anyhow::anyhow!(
            "the write task of the environment ended without an answer"
        ))
    })?
}

/// Writes the environment's queued writes, a batch per transaction, until none is left.
async fn drain_writes(state: AppState, env: EnvironmentId) {
    let _guard = DrainGuard {
        queues: state.secret_writes.clone(),
        env,
    };
    loop {
        let jobs = state.secret_writes.take(env, MAX_BATCH);
        if jobs.is_empty() {
            return;
        }
        let answers = match write_batch(&state, &jobs).await {
            Ok(values) => values.into_iter().map(Ok).collect(),
            Err(e) if jobs.len() == 1 => vec![Err(e)],
            // The database failed or is busy (a commit may even have landed): every write of
            // the batch is answered so, none is tried again.
            Err(ApiError::Unavailable {
                message,
                retry_after,
            }) => jobs
                .iter()
                .map(|_| {
                    Err(ApiError::Unavailable {
                        message: message.clone(),
                        retry_after,
                    })
                })
                .collect(),
            Err(e @ ApiError::Internal(_)) => {
                let message = format!("{:#}", anyhow::Error::from(e));
                jobs.iter()
                    .map(|_| {
                        Err(ApiError::internal(anyhow::anyhow!(
                            "a batch of writes failed: {message}"
                        )))
                    })
                    .collect()
            }
            // One write that fails (a conflict, a limit) fails its batch: each is then written
            // on its own, and answered for itself.
            Err(_) => {
                let mut answers = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    let one = write_batch(&state, std::slice::from_ref(job)).await;
                    answers.push(one.and_then(|mut v| {
                        v.pop().ok_or_else(|| {
                            ApiError::internal(anyhow::anyhow!("a write wrote nothing"))
                        })
                    }));
                }
                answers
            }
        };
        for (job, answer) in jobs.into_iter().zip(answers) {
            // Its request may have gone: the write stands all the same.
            let _ = job.reply.send(answer);
        }
    }
}

/// Writes `jobs` (all of one environment) in one transaction, one after the other as if each
/// were alone, and answers with what each wrote. Reads only what the checks need: each key's
/// current row, under the environment's lock (whether it is live, its comment, which an input
/// without one keeps); the live count only when a write adds a live secret. One lock, one data
/// key, one audit statement and one commit for all.
async fn write_batch(state: &AppState, jobs: &[WriteJob]) -> ApiResult<Vec<SecretValue>> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let ctx = &first.ctx;
    changes_environment(&mut tx, ctx);
    let revision =
        db::secrets::lock_environment_and_keys(&mut tx, ctx.env.id, ctx.project.project.id, now)
            .await?
            .ok_or_else(|| ApiError::not_found("environment"))?;
    let (dek_row, dek) = keys_locked_dek(state, &mut tx, ctx).await?;
    let mut values = Vec::with_capacity(jobs.len());
    let mut audit_events = Vec::with_capacity(jobs.len());
    let mut seals = 0;
    let mut adds = false;
    // The batch's changes by key, each as the batch's writes leave it, and who made them.
    let mut changes: BTreeMap<&str, ChangeAction> = BTreeMap::new();
    let mut actor = None;
    for job in jobs {
        let (ctx, input) = (&job.ctx, &job.input);
        let row = db::secrets::one(&mut *tx, ctx.env.id, &input.key, None).await?;
        // Read under the environment's lock: the version this write makes, deleted or not.
        let next = row.as_ref().map_or(1, |r| r.version + 1);
        let had_references = row.as_ref().is_some_and(|r| r.has_references != 0);
        let live = row.filter(|r| r.deleted_at.is_none());
        if live.is_some() && job.if_live == IfLive::Conflict {
            return Err(ApiError::conflict(
                "secret_exists",
                format!("`{}` already exists; update it with PUT", input.key),
            ));
        }
        let mut kept_comments = HashMap::new();
        if let Some(row) = live
            .as_ref()
            .filter(|r| r.comment_ct.is_some() && input.comment.is_none())
            && let Some(comment) = open_rows(state, ctx, std::slice::from_ref(row))
                .await?
                .pop()
                .and_then(|s| s.comment)
        {
            kept_comments.insert(input.key.as_str(), comment);
        }
        let (mut written, n) = seal_versions(
            &mut tx,
            ctx,
            &job.principal,
            (&dek_row, &dek),
            std::slice::from_ref(input),
            &kept_comments,
            Some(&[next]),
            now,
        )
        .await?;
        seals += n;
        adds |= live.is_none();
        events::index_references(&mut tx, ctx, &input.key, &input.value, had_references).await?;
        let action = match (live.is_some(), changes.get(input.key.as_str())) {
            // Created earlier in this batch: still a creation as far as readers can tell.
            (_, Some(ChangeAction::Created)) | (false, _) => ChangeAction::Created,
            (true, _) => ChangeAction::Updated,
        };
        changes.insert(&input.key, action);
        actor = Some(events::actor(&job.principal));
        let (created, updated) = if live.is_some() {
            (vec![], vec![input.key.as_str()])
        } else {
            (vec![input.key.as_str()], vec![])
        };
        audit_events.push(
            audit(&job.meta, &job.principal, ctx, job.what)
                .details(json!({ "created": created, "updated": updated, "unchanged": 0 })),
        );
        let written = written
            .pop()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a write wrote nothing")))?;
        values.push(SecretValue {
            key: written.key,
            value: input.value.clone(),
            comment: written.comment,
            version: written.version,
            created_at: written.created_at,
            updated_at: now,
        });
    }
    if adds {
        let max_secrets = i64::from(state.config.max_secrets_per_environment);
        if db::secrets::count_live(&mut *tx, first.ctx.env.id).await? > max_secrets {
            return Err(too_many_secrets(max_secrets));
        }
    }
    let changes = changes
        .into_iter()
        .map(|(key, action)| KeyChange {
            key: key.to_owned(),
            action,
        })
        .collect();
    if let Some(actor) = &actor {
        events::secrets_changed(&mut tx, &first.ctx, revision, changes, actor, now).await?;
    }
    let org = first.ctx.project.org.org.id;
    let (event, more) = audit_events
        .split_first()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a write wrote nothing")))?;
    db::secrets::finish_write(&mut tx, &dek_row.id, seals, org, event.row()).await?;
    if !more.is_empty() {
        let rows: Vec<AuditRow> = more.iter().map(|e| e.row().clone()).collect();
        db::audit::insert_many(&mut tx, &rows).await?;
    }
    tx.commit().await?;
    state.metrics.secrets_written.inc_by(values.len() as u64);
    Ok(values)
}

/// What a bulk write did.
#[derive(Debug, Default)]
pub struct UpsertReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// Keys the environment had with another value, left alone ([`Overwrite::No`]).
    pub skipped: Vec<String>,
    /// The environment's revision after the write (`None`: nothing changed).
    pub revision: Option<i64>,
    pub versions: BTreeMap<String, i64>,
}

/// Creates a secret; 409 when a live one has this key.
pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    input: SecretInput,
) -> ApiResult<SecretValue> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    write_one(
        state,
        meta,
        principal,
        &ctx,
        input,
        IfLive::Conflict,
        action::CREATED,
    )
    .await
}

/// Creates or updates one secret.
pub async fn put(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    input: SecretInput,
) -> ApiResult<SecretValue> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    write_one(
        state,
        meta,
        principal,
        &ctx,
        input,
        IfLive::Update,
        action::UPDATED,
    )
    .await
}

async fn fetch_after_write(state: &AppState, ctx: &EnvCtx, key: &str) -> ApiResult<SecretValue> {
    let row = db::secrets::one(state.db.pool(), ctx.env.id, key, None)
        .await?
        .ok_or_else(|| ApiError::not_found("secret"))?;
    open_rows(state, ctx, &[row])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("secret"))
}

/// Writes many secrets in one transaction.
pub async fn bulk_upsert(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    inputs: Vec<SecretInput>,
) -> ApiResult<UpsertReport> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    check_entry_count(state, inputs.len())?;
    upsert(
        state,
        meta,
        principal,
        &ctx,
        inputs,
        BulkWrite::replacing(action::BULK_UPSERTED),
    )
    .await
}

/// Deletes a secret, keeping its history (restorable).
pub async fn delete(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    key: &str,
) -> ApiResult<()> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    // The same lock order as every write of the environment: environment first, then secrets.
    let revision = lock_and_bump_environment(&mut tx, &ctx, now).await?;
    if !db::secrets::mark_deleted(&mut *tx, ctx.env.id, key, now).await? {
        return Err(ApiError::not_found("secret"));
    }
    key_changed(
        &mut tx,
        &ctx,
        principal,
        (revision, now),
        key,
        ChangeAction::Deleted,
    )
    .await?;
    db::secrets::bump_org_revision(&mut *tx, ctx.project.org.org.id).await?;
    audit(meta, principal, &ctx, action::DELETED)
        .details(json!({ "keys": [key] }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Records the event of a change of one key, bringing the environment to `revision`.
async fn key_changed(
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    principal: &Caller,
    (revision, now): (i64, Timestamp),
    key: &str,
    action: ChangeAction,
) -> ApiResult<()> {
    let change = KeyChange {
        key: key.to_owned(),
        action,
    };
    events::secrets_changed(
        tx,
        ctx,
        revision,
        vec![change],
        &events::actor(principal),
        now,
    )
    .await
}

/// Brings a deleted secret back at its last version.
pub async fn restore(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    key: &str,
) -> ApiResult<SecretValue> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let revision = lock_and_bump_environment(&mut tx, &ctx, now).await?;
    if !db::secrets::restore(&mut *tx, ctx.env.id, key, now).await? {
        return Err(ApiError::not_found("deleted secret"));
    }
    key_changed(
        &mut tx,
        &ctx,
        principal,
        (revision, now),
        key,
        ChangeAction::Restored,
    )
    .await?;
    let max_secrets = i64::from(state.config.max_secrets_per_environment);
    if db::secrets::count_live(&mut *tx, ctx.env.id).await? > max_secrets {
        return Err(too_many_secrets(max_secrets));
    }
    db::secrets::bump_org_revision(&mut *tx, ctx.project.org.org.id).await?;
    audit(meta, principal, &ctx, action::RESTORED)
        .details(json!({ "keys": [key] }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    fetch_after_write(state, &ctx, key).await
}

/// Makes the value (and comment) of `version` current again, as a new version.
pub async fn rollback(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    key: &str,
    version: i64,
) -> ApiResult<SecretValue> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    let row = db::secrets::one(state.db.pool(), ctx.env.id, key, None).await?;
    if row.as_ref().is_none_or(|r| r.deleted_at.is_some()) {
        return Err(ApiError::not_found("secret"));
    }
    let old = db::secrets::one(state.db.pool(), ctx.env.id, key, Some(version))
        .await?
        .ok_or_else(|| ApiError::not_found("secret version"))?;
    let old = open_rows(state, &ctx, &[old])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("secret version"))?;
    let input = SecretInput {
        key: key.to_owned(),
        value: old.value,
        comment: Some(
            old.comment
                .unwrap_or_else(|| SecretString::from(String::new())),
        ),
    };
    write_one(
        state,
        meta,
        principal,
        &ctx,
        input,
        IfLive::Update,
        action::ROLLED_BACK,
    )
    .await
}

/// Imports a file into the environment in one transaction; a malformed file changes nothing.
pub async fn import(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    format: Format,
    body: &str,
) -> ApiResult<UpsertReport> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    let inputs = parse_import(state, format, body)?;
    upsert(
        state,
        meta,
        principal,
        &ctx,
        inputs,
        BulkWrite::replacing(action::IMPORTED),
    )
    .await
}

/// What an import of `body` would do, without doing it: the keys it would create, update and
/// leave unchanged. The caller must be able to write the environment; its current values are
/// compared (audited as a comparison), never returned.
pub async fn import_preview(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    format: Format,
    body: &str,
) -> ApiResult<UpsertReport> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    let inputs = parse_import(state, format, body)?;
    let current = current_values(state, &ctx).await?;
    let mut report = UpsertReport::default();
    for input in &inputs {
        match current.get(&input.key) {
            None => report.created.push(input.key.clone()),
            Some(v) if v.value.expose_secret() == input.value.expose_secret() => {
                report.unchanged.push(input.key.clone());
            }
            Some(_) => report.updated.push(input.key.clone()),
        }
    }
    state
        .audit
        .record(vec![
            audit(meta, principal, &ctx, action::COMPARED).details(json!({
                "keys": current.len(),
                "view": "import_preview",
            })),
        ])
        .await?;
    Ok(report)
}

/// The entries of an import file, checked: no body is an empty file whatever the format (an
/// empty JSON document is not JSON); at most `COFFER_MAX_BULK_ENTRIES`; every key valid.
fn parse_import(state: &AppState, format: Format, body: &str) -> ApiResult<Vec<SecretInput>> {
    let entries = if body.is_empty() {
        Vec::new()
    } else {
        formats::parse(format, body, MAX_VALUE_BYTES)
            .map_err(|e| ApiError::validation("invalid_file", e.to_string()))?
    };
    check_entry_count(state, entries.len())?;
    for entry in &entries {
        check_key(&entry.key).map_err(|_| {
            // A malformed line may be a piece of a value (a continuation of a multi-line
            // one): where the line says which entry it is, the key is not quoted at all.
            let which = match entry.line {
                Some(line) => format!("line {line}: the key"),
                None => format!("the key `{}`", quoted_key(&entry.key)),
            };
            ApiError::validation(
                "invalid_file",
                format!(
                    "{which} is not valid (keys match ^[A-Za-z_][A-Za-z0-9_.-]*$, at most \
                     {MAX_KEY_LEN} characters)"
                ),
            )
        })?;
    }
    Ok(entries
        .into_iter()
        .map(|e| SecretInput {
            key: e.key,
            value: e.value,
            comment: None,
        })
        .collect())
}

/// At most 64 characters of an invalid key, with control characters left out.
fn quoted_key(key: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut quoted: String = key
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CHARS)
        .collect();
    if key
        .chars()
        .filter(|c| !c.is_control())
        .nth(MAX_CHARS)
        .is_some()
    {
        quoted.push('…');
    }
    quoted
}

/// The environment's secrets as a file.
pub async fn export(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    format: Format,
    resolve_refs: bool,
) -> ApiResult<String> {
    let ctx = tenancy::environment(state, principal, at, Action::SecretsRead).await?;
    let snapshot = snapshot(state, &ctx).await?;
    let mut secrets = open_rows(state, &ctx, &snapshot.rows).await?;
    let mut events = if resolve_refs {
        resolve(state, meta, principal, &ctx, &mut secrets).await?
    } else {
        Vec::new()
    };
    let pairs: Vec<(&str, &str)> = secrets
        .iter()
        .map(|s| (s.key.as_str(), s.value.expose_secret()))
        .collect();
    let file = formats::render(format, &pairs);
    let keys: Vec<&str> = secrets.iter().map(|s| s.key.as_str()).collect();
    events.push(
        audit(meta, principal, &ctx, action::EXPORTED)
            .details(json!({ "keys": keys, "format": format.as_str(), "resolved": resolve_refs })),
    );
    state.audit.record(events).await?;
    state.metrics.secrets_read.inc_by(secrets.len() as u64);
    Ok(file)
}

/// What a data-key rotation did.
#[derive(Debug, Clone, Copy)]
pub struct DekRotation {
    pub dek_version: i64,
    pub reencrypted_versions: usize,
}

/// Gives the project a new DEK and re-encrypts every version of every secret with it, in one
/// transaction; the old DEKs are retired.
pub async fn rotate_project_dek(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    org: &str,
    project: &str,
) -> ApiResult<DekRotation> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectUpdate).await?;
    let (org_id, project_id) = (ctx.org.org.id, ctx.project.id);
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    // Writes in flight finish first (their versions are re-encrypted below); later ones wait.
    lock_project_keys(&mut tx, project_id).await?;
    let version = db::secrets::active_dek(&mut *tx, project_id)
        .await?
        .map_or(1, |d| d.version + 1);
    let new_row = create_dek(state, &mut tx, org_id, project_id, version).await?;
    let new_dek = unwrap_dek(state, org_id, &new_row)?;
    tx.changed(Change::Everything);
    let stored = db::secrets::project_versions(&mut *tx, project_id).await?;
    let mut old: HashMap<String, Arc<Dek>> = HashMap::new();
    let mut seals = 0i64;
    for v in &stored {
        if !old.contains_key(&v.dek_id) {
            let row = db::secrets::dek(&mut *tx, project_id, &v.dek_id)
                .await?
                .ok_or_else(|| crypto_failure("missing DEK"))?;
            old.insert(v.dek_id.clone(), unwrap_dek(state, org_id, &row)?);
        }
        let dek = &old[&v.dek_id];
        let aad = |field| ValueAad {
            org_id: org_id.to_string(),
            project_id: project_id.to_string(),
            environment_id: v.environment_id.to_string(),
            key: v.key.clone(),
            version: v.version,
            field,
        };
        let value = dek
            .open(&v.value_ct, &aad(Field::Value))
            .map_err(crypto_failure)?;
        let value_ct = new_dek.seal(&value, &aad(Field::Value));
        let comment_ct = match &v.comment_ct {
            Some(ct) => Some(new_dek.seal(
                &dek.open(ct, &aad(Field::Comment)).map_err(crypto_failure)?,
                &aad(Field::Comment),
            )),
            None => None,
        };
        seals += 1 + i64::from(comment_ct.is_some());
        db::secrets::reseal_version(
            &mut *tx,
            v.secret_id,
            v.version,
            &new_row.id,
            &value_ct,
            comment_ct.as_deref(),
        )
        .await?;
    }
    seals += crate::service::webhooks::reseal_secrets(
        state,
        &mut tx,
        (org_id, project_id),
        (&new_row.id, &new_dek),
        &mut old,
    )
    .await?;
    seals += crate::service::dynamic::reseal_connections(
        state,
        &mut tx,
        (org_id, project_id),
        (&new_row.id, &new_dek),
        &mut old,
    )
    .await?;
    db::secrets::count_encryptions(&mut *tx, &new_row.id, seals).await?;
    db::secrets::retire_deks_except(&mut *tx, project_id, &new_row.id, now).await?;
    // The key lock makes this impossible; a rotation that reported success while a value stayed
    // under a retired key would be worse than one that fails, so it is checked before commit.
    let stale = db::secrets::versions_under_retired_deks(&mut *tx, project_id).await?
        + db::webhooks::secrets_under_retired_deks(&mut *tx, project_id).await?
        + db::dynamic::sealed_under_retired_deks(&mut *tx, project_id).await?;
    if stale != 0 {
        return Err(ApiError::internal(anyhow::anyhow!(
            "data-key rotation of project {project_id} rolled back: {stale} version(s) are still sealed under a retired key"
        )));
    }
    AuditEvent::new(action::KEY_ROTATED, Outcome::Success, meta)
        .by(principal)
        .org(org_id)
        .project(project_id)
        .target("project", project_id)
        .details(json!({ "dek_version": version, "reencrypted_versions": stored.len() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    for id in old.keys() {
        state.deks.invalidate(id);
    }
    Ok(DekRotation {
        dek_version: version,
        reencrypted_versions: stored.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_env_var_names() {
        for good in ["A", "_x", "DATABASE_URL", "a.b-c_9", &"K".repeat(256)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "9A", "-A", "A B", "A=B", "ä", &"K".repeat(257)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
