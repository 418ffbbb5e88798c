//! Secrets shared between the environments of a project: two environments compared key by key,
//! and secrets copied (or referenced) from one into another.

use std::collections::{BTreeMap, BTreeSet};

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;

use coffer_client::types::{
    ComparedKey, ComparedVersion, Comparison, ComparisonSummary, CopySecretsRequest, KeyComparison,
    Revealed,
};

use crate::auth::Caller;
use crate::authz::Action;
use crate::error::{ApiError, ApiResult};
use crate::service::ClientMeta;
use crate::service::secrets::{
    self, BulkWrite, Overwrite, SecretInput, SecretValue, UpsertReport, action, audit,
};
use crate::service::tenancy::{self, EnvCtx, EnvPath};
use crate::state::AppState;

/// The most keys a copy's refusal names; the rest are counted.
const MAX_NAMED_KEYS: usize = 20;

/// Environments `base` and `head` of a project side by side. Both must be readable by the
/// caller, since whether two values are equal tells something of them; the values themselves
/// are in the answer only with `reveal` (audited as reads of both environments; otherwise the
/// comparison is audited as such).
pub async fn compare(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    org: &str,
    project: &str,
    (base, head): (&str, &str),
    reveal: bool,
) -> ApiResult<Comparison> {
    let at = |env| EnvPath { org, project, env };
    let base_ctx = tenancy::environment(state, principal, at(base), Action::SecretsRead).await?;
    let head_ctx = tenancy::environment(state, principal, at(head), Action::SecretsRead).await?;
    let base_values = secrets::current_values(state, &base_ctx).await?;
    let head_values = secrets::current_values(state, &head_ctx).await?;

    let version = |value: &SecretValue| ComparedVersion {
        version: value.version,
        updated_at: value.updated_at,
        value: reveal.then(|| Revealed(value.value.clone())),
    };
    let mut summary = ComparisonSummary::default();
    let keys: BTreeSet<&String> = base_values.keys().chain(head_values.keys()).collect();
    let keys: Vec<ComparedKey> = keys
        .into_iter()
        .map(|key| {
            let (b, h) = (base_values.get(key), head_values.get(key));
            let status = match (b, h) {
                (Some(b), Some(h)) if b.value.expose_secret() == h.value.expose_secret() => {
                    summary.same += 1;
                    KeyComparison::Same
                }
                (Some(_), Some(_)) => {
                    summary.different += 1;
                    KeyComparison::Different
                }
                (Some(_), None) => {
                    summary.only_in_base += 1;
                    KeyComparison::OnlyInBase
                }
                (None, _) => {
                    summary.only_in_head += 1;
                    KeyComparison::OnlyInHead
                }
            };
            ComparedKey {
                key: key.clone(),
                status,
                base: b.map(version),
                head: h.map(version),
            }
        })
        .collect();

    let event = |ctx: &EnvCtx, values: &BTreeMap<String, SecretValue>, other: &str| {
        let keys: Vec<&String> = values.keys().collect();
        if reveal {
            audit(meta, principal, ctx, action::READ)
                .details(json!({ "keys": keys, "resolved": false, "compared_with": other }))
        } else {
            audit(meta, principal, ctx, action::COMPARED)
                .details(json!({ "keys": keys.len(), "compared_with": other }))
        }
    };
    // Kept before the answer leaves, as for every read.
    state
        .audit
        .record(vec![
            event(&base_ctx, &base_values, head),
            event(&head_ctx, &head_values, base),
        ])
        .await?;
    if reveal {
        state
            .metrics
            .secrets_read
            .inc_by((base_values.len() + head_values.len()) as u64);
    }
    Ok(Comparison {
        base: base_ctx.env.slug.clone(),
        head: head_ctx.env.slug.clone(),
        summary,
        keys,
    })
}

/// Copies secrets of environment `req.from` into the environment at `at`, in one transaction:
/// the values as stored (a reference is copied as written), or, with `as_reference`, references
/// to them. Keys the target already has with another value are skipped unless `overwrite`.
/// The caller must be able to read the source and write the target; otherwise, or when a key
/// is not in the source, nothing changes. Audited in the target (`secrets.copied`) and in the
/// source (a read), in the same transaction.
pub async fn copy(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Caller,
    at: EnvPath<'_>,
    req: CopySecretsRequest,
) -> ApiResult<UpsertReport> {
    let target = tenancy::environment(state, principal, at, Action::SecretsWrite).await?;
    let from = EnvPath {
        org: at.org,
        project: at.project,
        env: &req.from,
    };
    let source = tenancy::environment(state, principal, from, Action::SecretsRead).await?;
    if source.env.id == target.env.id {
        return Err(ApiError::validation(
            "same_environment",
            "`from` names the environment copied into",
        ));
    }
    if let Some(keys) = &req.keys {
        secrets::check_entry_count(state, keys.len())?;
        let mut seen = BTreeSet::new();
        for key in keys {
            secrets::check_key(key)?;
            if !seen.insert(key.as_str()) {
                return Err(ApiError::validation(
                    "duplicate_key",
                    format!("`{key}` appears twice"),
                ));
            }
        }
    }
    let mut values = secrets::current_values(state, &source).await?;
    let selected: Vec<SecretValue> = match &req.keys {
        None => values.into_values().collect(),
        Some(keys) => {
            let missing: Vec<&str> = keys
                .iter()
                .filter(|k| !values.contains_key(k.as_str()))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                let mut named = missing
                    .iter()
                    .take(MAX_NAMED_KEYS)
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                if missing.len() > MAX_NAMED_KEYS {
                    named.push_str(&format!(" and {} more", missing.len() - MAX_NAMED_KEYS));
                }
                return Err(ApiError::validation(
                    "unknown_keys",
                    format!("not in `{}`: {named}; nothing was copied", source.env.slug),
                ));
            }
            keys.iter().filter_map(|k| values.remove(k)).collect()
        }
    };
    secrets::check_entry_count(state, selected.len())?;
    let keys: Vec<String> = selected.iter().map(|v| v.key.clone()).collect();
    let inputs = selected
        .into_iter()
        .map(|v| SecretInput {
            value: if req.as_reference {
                reference_to(&source, &v.key)
            } else {
                v.value
            },
            key: v.key,
            comment: v.comment,
        })
        .collect();
    let read = audit(meta, principal, &source, action::READ).details(json!({
        "keys": keys,
        "resolved": false,
        "copied_to": target.env.slug,
        "as_reference": req.as_reference,
    }));
    let report = secrets::upsert(
        state,
        meta,
        principal,
        &target,
        inputs,
        BulkWrite {
            what: action::COPIED,
            overwrite: if req.overwrite {
                Overwrite::Yes
            } else {
                Overwrite::No
            },
            also: vec![read],
            details: json!({ "from": source.env.slug, "as_reference": req.as_reference }),
        },
    )
    .await?;
    if !req.as_reference {
        state.metrics.secrets_read.inc_by(keys.len() as u64);
    }
    Ok(report)
}

/// `${env.KEY}`, or `${project.env.KEY}` for a key with a dot (after the second dot everything
/// is the key).
fn reference_to(source: &EnvCtx, key: &str) -> SecretString {
    let env = &source.env.slug;
    SecretString::from(if key.contains('.') {
        format!("${{{}.{env}.{key}}}", source.project.project.slug)
    } else {
        format!("${{{env}.{key}}}")
    })
}
