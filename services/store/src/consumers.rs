//! Committed positions of named stream consumers (gRPC `Consume`/`Commit`), per subscription
//! incarnation ([`LogKey`]): a consumer of a subscription deleted and re-created with the
//! same id starts on the new log, never at the old log's offset.

use sqlx::Row;

use crate::{LogKey, Store, StoreError, now};

impl Store {
    /// Move a consumer's position on a subscription incarnation forward to `event_number`
    /// (a lower number leaves it as it is); returns the position now stored, or
    /// [`StoreError::NotFound`] when that incarnation no longer exists (the subscription was
    /// deleted, perhaps re-created: a commit for the old log moves nothing).
    pub async fn commit_offset(
        &self,
        tenant: &str,
        consumer: &str,
        key: LogKey,
        event_number: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_offsets (tenant, consumer, log_key, subscription_id,
                 event_number, committed_at)
             SELECT $1, $2, s.log_key, s.id, $4, $5 FROM subscriptions s
             WHERE s.tenant = $1 AND s.log_key = $3
             ON CONFLICT (tenant, consumer, log_key) DO UPDATE SET
                 event_number = CASE WHEN consumer_offsets.event_number > excluded.event_number
                     THEN consumer_offsets.event_number ELSE excluded.event_number END,
                 committed_at = excluded.committed_at
             RETURNING event_number",
        )
        .bind(tenant)
        .bind(consumer)
        .bind(key.get())
        .bind(event_number)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(row.try_get(0)?),
            None => Err(StoreError::NotFound),
        }
    }

    /// A consumer's committed position on a subscription incarnation (0: never committed).
    pub async fn committed_offset(
        &self,
        tenant: &str,
        consumer: &str,
        key: LogKey,
    ) -> Result<i64, StoreError> {
        Ok(self.committed(tenant, consumer, key).await?.unwrap_or(0))
    }

    /// A consumer's committed position on a subscription incarnation; `None` when it never
    /// committed one (where its auto-reset policy decides the start).
    pub async fn committed(
        &self,
        tenant: &str,
        consumer: &str,
        key: LogKey,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT event_number FROM consumer_offsets
             WHERE tenant = $1 AND consumer = $2 AND log_key = $3",
        )
        .bind(tenant)
        .bind(consumer)
        .bind(key.get())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
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
        // the database's clock as the statement runs, not as read before it (see `leases`)
        let now = crate::leases::db_now_sql(self.backend);
        let got = sqlx::query(&format!(
            "INSERT INTO consumer_claims (tenant, consumer, owner, expires_at)
             VALUES ($1, $2, $3, {now} + $4)
             ON CONFLICT (tenant, consumer) DO UPDATE
             SET owner = excluded.owner, expires_at = excluded.expires_at
             WHERE consumer_claims.owner = excluded.owner OR consumer_claims.expires_at < {now}
             RETURNING owner"
        ))
        .bind(tenant)
        .bind(consumer)
        .bind(owner)
        .bind(ttl_ms)
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
