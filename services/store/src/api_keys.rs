//! API keys: the hub stores a key's id, tenant, scopes and a hash of its secret, never the
//! secret. Creating, changing or revoking a key bumps its tenant's matching generation, so
//! matchers re-read what the subscriptions it owns may receive.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, now};

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub secret_hash: String,
    /// Space-separated.
    pub scopes: String,
    pub patient: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

const COLUMNS: &str = "id, tenant, name, secret_hash, scopes, patient, created_at, expires_at, \
                       revoked_at, last_used_at";

fn from_row(r: &AnyRow) -> Result<ApiKeyRow, sqlx::Error> {
    Ok(ApiKeyRow {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        name: r.try_get(2)?,
        secret_hash: r.try_get(3)?,
        scopes: r.try_get(4)?,
        patient: r.try_get(5)?,
        created_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
        last_used_at: r.try_get(9)?,
    })
}

impl Store {
    /// Store a new key (`created_at` is set here).
    pub async fn create_api_key(&self, key: &ApiKeyRow) -> Result<ApiKeyRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::generations::bump(&mut tx, self.backend, &key.tenant, None).await?;
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)
             RETURNING {COLUMNS}"
        ))
        .bind(&key.id)
        .bind(&key.tenant)
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(&key.scopes)
        .bind(&key.patient)
        .bind(now())
        .bind(&key.expires_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(from_row(&row)?)
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// Keys, newest first; of one tenant when given.
    pub async fn api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE ($1 = '' OR tenant = $1)
             ORDER BY created_at DESC, id"
        ))
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Revoke a key at once; `false` when there is no such (unrevoked) key.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        self.change_usable_key(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL
             RETURNING tenant",
            id,
            &now(),
        )
        .await
    }

    /// Change a usable key's scopes (at once: its tenant's matchers re-read what the
    /// subscriptions it owns may receive); `false` when there is no such usable key.
    pub async fn set_api_key_scopes(&self, id: &str, scopes: &str) -> Result<bool, StoreError> {
        self.change_usable_key(
            "UPDATE api_keys SET scopes = $2 WHERE id = $1 AND revoked_at IS NULL
             RETURNING tenant",
            id,
            scopes,
        )
        .await
    }

    /// Run a key update (`$1` id, `$2` value, `RETURNING tenant`) and move the key's tenant's
    /// generation in the same transaction; `false` when no row changed.
    async fn change_usable_key(
        &self,
        sql: &str,
        id: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let tenant: Option<String> = sqlx::query(sql)
            .bind(id)
            .bind(value)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let Some(tenant) = tenant else {
            return Ok(false);
        };
        crate::generations::bump(&mut tx, self.backend, &tenant, None).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Record that a key was used (callers throttle this).
    pub async fn touch_api_key(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
