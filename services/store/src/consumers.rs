//! Committed positions of named stream consumers (gRPC `Consume`/`Commit`).

use sqlx::Row;

use crate::{Store, StoreError, now};

impl Store {
    /// Move a consumer's position on a subscription forward to `event_number` (a lower
    /// number leaves it as it is); returns the position now stored.
    pub async fn commit_offset(
        &self,
        tenant: &str,
        consumer: &str,
        subscription_id: &str,
        event_number: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_offsets (tenant, consumer, subscription_id, event_number, committed_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, consumer, subscription_id) DO UPDATE SET
                 event_number = CASE WHEN consumer_offsets.event_number > excluded.event_number
                     THEN consumer_offsets.event_number ELSE excluded.event_number END,
                 committed_at = excluded.committed_at
             RETURNING event_number",
        )
        .bind(tenant)
        .bind(consumer)
        .bind(subscription_id)
        .bind(event_number)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// A consumer's committed position on a subscription (0: never committed).
    pub async fn committed_offset(
        &self,
        tenant: &str,
        consumer: &str,
        subscription_id: &str,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT event_number FROM consumer_offsets
             WHERE tenant = $1 AND consumer = $2 AND subscription_id = $3",
        )
        .bind(tenant)
        .bind(consumer)
        .bind(subscription_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Claim (or renew) a named consumer for `owner` (one connection) for `ttl_ms` on the
    /// database's clock; `false` while another owner holds an unexpired claim.
    pub async fn claim_consumer(
        &self,
        tenant: &str,
        consumer: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = self.db_now_ms().await?;
        let got = sqlx::query(
            "INSERT INTO consumer_claims (tenant, consumer, owner, expires_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant, consumer) DO UPDATE
             SET owner = excluded.owner, expires_at = excluded.expires_at
             WHERE consumer_claims.owner = excluded.owner OR consumer_claims.expires_at < $5
             RETURNING owner",
        )
        .bind(tenant)
        .bind(consumer)
        .bind(owner)
        .bind(now + ttl_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(got.is_some())
    }

    /// Give a claim up (the connection ended).
    pub async fn release_consumer(
        &self,
        tenant: &str,
        consumer: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM consumer_claims WHERE tenant = $1 AND consumer = $2 AND owner = $3",
        )
        .bind(tenant)
        .bind(consumer)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
