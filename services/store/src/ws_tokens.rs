//! WebSocket (and SSE `?token=`) binding tokens.

use sqlx::Row;

use crate::{Store, StoreError, now};

/// What a binding token binds, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsToken {
    pub tenant: String,
    pub subscription_id: String,
    /// The credential it was issued to, as the hub wrote it (`None`: a token from before the
    /// hub kept it, which binds nothing).
    pub holder: Option<String>,
}

impl Store {
    /// Store a token for `subscription_id` valid until `expires_at` (a stored instant),
    /// issued to `holder`, and drop expired ones.
    pub async fn create_ws_token(
        &self,
        token: &str,
        tenant: &str,
        subscription_id: &str,
        expires_at: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ws_tokens WHERE expires_at < $1")
            .bind(now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO ws_tokens (token, tenant, subscription_id, expires_at, holder)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token)
        .bind(tenant)
        .bind(subscription_id)
        .bind(expires_at)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What a token binds, if it exists and has not expired.
    pub async fn ws_token(&self, token: &str) -> Result<Option<WsToken>, StoreError> {
        self.token_binding(
            "SELECT tenant, subscription_id, holder FROM ws_tokens
             WHERE token = $1 AND expires_at >= $2",
            token,
        )
        .await
    }

    /// Use a token up: what it binds, if it existed and had not expired; it cannot bind
    /// again.
    pub async fn take_ws_token(&self, token: &str) -> Result<Option<WsToken>, StoreError> {
        self.token_binding(
            "DELETE FROM ws_tokens WHERE token = $1 AND expires_at >= $2
             RETURNING tenant, subscription_id, holder",
            token,
        )
        .await
    }

    /// The binding of a statement over one unexpired token (`$1` the token, `$2` now).
    async fn token_binding(&self, sql: &str, token: &str) -> Result<Option<WsToken>, StoreError> {
        let row = sqlx::query(sql)
            .bind(token)
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(WsToken {
                tenant: r.try_get(0)?,
                subscription_id: r.try_get(1)?,
                holder: r.try_get(2)?,
            }),
            None => None,
        })
    }
}
