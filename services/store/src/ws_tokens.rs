//! WebSocket binding tokens.

use sqlx::Row;

use crate::{Store, StoreError, now};

impl Store {
    /// Store a token for `subscription_id` valid until `expires_at` (a stored instant), and
    /// drop expired ones.
    pub async fn create_ws_token(
        &self,
        token: &str,
        tenant: &str,
        subscription_id: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ws_tokens WHERE expires_at < $1")
            .bind(now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO ws_tokens (token, tenant, subscription_id, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token)
        .bind(tenant)
        .bind(subscription_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tenant and subscription a token binds, if it exists and has not expired.
    pub async fn ws_token(&self, token: &str) -> Result<Option<(String, String)>, StoreError> {
        self.token_binding(
            "SELECT tenant, subscription_id FROM ws_tokens WHERE token = $1 AND expires_at >= $2",
            token,
        )
        .await
    }

    /// Use a token up: the tenant and subscription it binds, if it existed and had not
    /// expired; it cannot bind again.
    pub async fn take_ws_token(&self, token: &str) -> Result<Option<(String, String)>, StoreError> {
        self.token_binding(
            "DELETE FROM ws_tokens WHERE token = $1 AND expires_at >= $2
             RETURNING tenant, subscription_id",
            token,
        )
        .await
    }

    /// `(tenant, subscription_id)` of a statement over one unexpired token (`$1` the token,
    /// `$2` now).
    async fn token_binding(
        &self,
        sql: &str,
        token: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(sql)
            .bind(token)
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }
}
