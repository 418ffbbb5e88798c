//! Key management: moving every data key to the active master key.

use crate::crypto::envelope::{DekContext, WrappedDek};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Master key ids that wrap stored data keys but are not loaded: their data cannot be read.
pub async fn missing_master_keys(state: &AppState) -> Result<Vec<String>, sqlx::Error> {
    let used = db::secrets::kek_ids_in_use(state.db.pool()).await?;
    Ok(used
        .into_iter()
        .filter(|id| !state.keyring.contains(id))
        .collect())
}

/// Re-wraps, in one transaction, every DEK that another master key wraps with the active one.
/// Returns how many moved. Values are untouched: only the small wrapped keys change.
///
/// DEKs being created or changed meanwhile (by a write, a data-key rotation, a new project) are
/// waited for, and later ones wait for the rewrap: so when it commits no DEK is wrapped by another
/// master key, which is checked before commit. A server still configured with the old master key
/// as its active one goes on wrapping new DEKs with it: start-up refuses the old key's removal
/// while any DEK needs it.
pub async fn rewrap_all(state: &AppState) -> ApiResult<usize> {
    let active = state.keyring.active_id().to_owned();
    let mut tx = state.db.begin().await?;
    db::secrets::lock_deks_table(&mut tx).await?;
    let rows = db::secrets::deks_not_wrapped_by(&mut *tx, &active).await?;
    for row in &rows {
        let context = DekContext {
            org_id: row.org_id.to_string(),
            project_id: row.project_id.to_string(),
            dek_id: row.id.clone(),
        };
        let wrapped = WrappedDek {
            kek_id: row.kek_id.clone(),
            ciphertext: row.wrapped.clone(),
        };
        let rewrapped = state.keyring.rewrap(&wrapped, &context).map_err(|e| {
            ApiError::internal(anyhow::anyhow!(
                "data key {} cannot be unwrapped: {e}",
                row.id
            ))
        })?;
        db::secrets::set_wrapped(&mut *tx, &row.id, &rewrapped.kek_id, &rewrapped.ciphertext)
            .await?;
    }
    let left = db::secrets::count_deks_not_wrapped_by(&mut *tx, &active).await?;
    if left != 0 {
        return Err(ApiError::internal(anyhow::anyhow!(
            "{left} data key(s) are still wrapped by another master key"
        )));
    }
    tx.commit().await?;
    state.deks.clear();
    Ok(rows.len())
}
