//! API keys: generated, shown once, stored hashed, checked in constant time.
//!
//! A key reads `chorus_<id>_<secret>`. The `id` (16 hex characters) names the row and may be
//! shown and logged; the `secret` (256 random bits from the operating system, base64url) is only
//! ever stored as its SHA-256. Authenticating looks the row up by id and compares digests in
//! constant time, so neither the lookup nor the comparison depends on the secret. A 256-bit
//! secret needs no slow password hash: guessing it is out of reach, and a stolen table holds
//! nothing that authenticates.
//!
//! Every check reads the row, so a revoked key stops working on its next request, on every pod.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_core::auth::{Caller, Scopes};
use chorus_core::fair::Band;
use chorus_core::ids::Tenant;
use chrono::{DateTime, SubsecRound, Utc};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::entity::{api_keys, tenants};
use crate::{Store, StoreError};

const PREFIX: &str = "chorus_";
/// Hex characters of a key id (64 bits: unique enough to name rows, not a secret).
const ID_LEN: usize = 16;
/// Random bytes of a secret.
const SECRET_BYTES: usize = 32;

/// A key as listings show it: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: Tenant,
    pub name: String,
    pub scopes: Scopes,
    pub rpm: Option<u32>,
    pub max_band: Band,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a key may use beyond its scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute at one edge process; none means the edge's default.
    pub rpm: Option<u32>,
    /// The highest band its requests are served at.
    pub max_band: Band,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self {
            rpm: None,
            max_band: Band::Interactive,
        }
    }
}

/// A key just created: its details, and the key itself, which is never shown again.
#[derive(Debug)]
pub struct NewKey {
    pub info: KeyInfo,
    pub key: SecretString,
}

/// The parts of a presented key, if it has the shape of one.
fn split(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl Store {
    /// Makes a key for `tenant` (recording the tenant if it is new).
    #[tracing::instrument(name = "store.create_key", skip_all, fields(tenant = %tenant))]
    pub async fn create_key(
        &self,
        tenant: &Tenant,
        name: &str,
        scopes: Scopes,
        limits: KeyLimits,
    ) -> Result<NewKey, StoreError> {
        if scopes.is_empty() {
            return Err(StoreError::NoScope);
        }
        let mut random = [0u8; 8 + SECRET_BYTES];
        OsRng
            .try_fill_bytes(&mut random)
            .map_err(|source| StoreError::Randomness { source })?;
        let (id_bytes, secret_bytes) = random.split_at(8);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
        let now = Utc::now().trunc_subsecs(3);

        let txn = self.begin_write().await?;
        tenants::Entity::insert(
            tenants::Model {
                id: tenant.to_string(),
                created_at: now,
            }
            .into_active_model(),
        )
        .on_conflict(
            OnConflict::column(tenants::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let row = api_keys::Model {
            id: id.as_str().into(),
            tenant: tenant.to_string(),
            name: name.into(),
            scopes: scopes.to_string(),
            rpm: limits.rpm.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
            max_band: limits.max_band.as_str().to_owned(),
            secret_sha256: digest(&secret),
            created_at: now,
            revoked_at: None,
        }
        .into_active_model()
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(NewKey {
            info: key_info(row)?,
            key: SecretString::from(format!("{PREFIX}{id}_{secret}")),
        })
    }

    /// The keys of `tenant` (or of every tenant), oldest first.
    pub async fn list_keys(&self, tenant: Option<&Tenant>) -> Result<Vec<KeyInfo>, StoreError> {
        let mut query = api_keys::Entity::find();
        if let Some(tenant) = tenant {
            query = query.filter(api_keys::Column::Tenant.eq(tenant.as_str()));
        }
        query
            .order_by_asc(api_keys::Column::CreatedAt)
            .order_by_asc(api_keys::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(key_info)
            .collect()
    }

    /// Revokes a key at once; the key as it is afterwards, `None` if there is no such key.
    /// Revoking a revoked key changes nothing.
    #[tracing::instrument(name = "store.revoke_key", skip_all, fields(key = id))]
    pub async fn revoke_key(&self, id: &str) -> Result<Option<KeyInfo>, StoreError> {
        let Some(row) = api_keys::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        if row.revoked_at.is_some() {
            return key_info(row).map(Some);
        }
        let mut active = row.into_active_model();
        active.revoked_at = ActiveValue::Set(Some(Utc::now().trunc_subsecs(3)));
        key_info(active.update(&self.db).await?).map(Some)
    }

    /// Who `presented` authenticates as: `None` for anything but a live key.
    pub async fn authenticate(
        &self,
        presented: &SecretString,
    ) -> Result<Option<Caller>, StoreError> {
        let Some((id, secret)) = split(presented.expose_secret()) else {
            return Ok(None);
        };
        let Some(row) = api_keys::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        let matches: bool = digest(secret).ct_eq(&row.secret_sha256).into();
        if !matches || row.revoked_at.is_some() {
            return Ok(None);
        }
        let info = key_info(row)?;
        Ok(Some(Caller {
            tenant: info.tenant,
            key_id: Some(info.id),
            scopes: info.scopes,
            rpm: info.rpm,
            max_band: info.max_band,
        }))
    }
}

fn key_info(row: api_keys::Model) -> Result<KeyInfo, StoreError> {
    Ok(KeyInfo {
        tenant: Tenant::new(row.tenant.clone())
            .map_err(|source| StoreError::BadTenant { source })?,
        scopes: row
            .scopes
            .parse::<Scopes>()
            .map_err(|source| StoreError::BadScopes { source })?,
        rpm: row.rpm.map(|r| u32::try_from(r).unwrap_or(0)),
        max_band: Band::parse(&row.max_band).ok_or_else(|| StoreError::BadBand {
            band: row.max_band.clone(),
        })?,
        name: row.name.into(),
        created_at: row.created_at,
        revoked_at: row.revoked_at,
        id: row.id.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_are_looked_up() {
        let id = "0123456789abcdef";
        assert_eq!(split(&format!("chorus_{id}_s3cr3t")), Some((id, "s3cr3t")));
        for bad in [
            "",
            "chorus_",
            "chorus_0123456789abcdef",
            "chorus_0123456789abcdef_",
            "chorus_0123_secret",
            "chorus_0123456789abcdeg_secret",
            "sk-0123456789abcdef_secret",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }
}
