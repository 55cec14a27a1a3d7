//! Committed positions of named stream consumers (gRPC `Consume`/`Commit`), per subscription
//! incarnation ([`LogKey`]): a consumer of a subscription deleted and re-created with the
//! same id starts on the new log, never at the old log's offset.
//!
//! Commits are fenced by the consumer's generation: each `Consume` starts a new one
//! ([`Store::next_consumer_generation`]) and a commit carrying any other is refused, so a
//! connection that lost its consumer to a newer one cannot move the position.

use sqlx::Row;

use crate::{LogKey, Store, StoreError, now};

impl Store {
    /// Start a new generation of a consumer (a `Consume` took it); returns its number, 1 for
    /// a consumer never read before.
    pub async fn next_consumer_generation(
        &self,
        tenant: &str,
        consumer: &str,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_generations (tenant, consumer, generation, log_key_ceiling)
             VALUES ($1, $2, 1,
                 COALESCE((SELECT value FROM hub_counters WHERE name = 'log_keys'), 0))
             ON CONFLICT (tenant, consumer) DO UPDATE
             SET generation = consumer_generations.generation + 1,
                 log_key_ceiling = excluded.log_key_ceiling
             RETURNING generation",
        )
        .bind(tenant)
        .bind(consumer)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// A consumer's current generation (0: never read).
    pub async fn consumer_generation(
        &self,
        tenant: &str,
        consumer: &str,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT generation FROM consumer_generations WHERE tenant = $1 AND consumer = $2",
        )
        .bind(tenant)
        .bind(consumer)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Move a consumer's position on a subscription incarnation forward to `event_number`
    /// (a lower number leaves it as it is) if `generation` is the consumer's current one, in
    /// one statement: a newer `Consume` fences every older connection's commits.
    /// [`StoreError::NotFound`] when that incarnation no longer exists (the subscription was
    /// deleted, perhaps re-created: a commit for the old log moves nothing).
    pub async fn commit_offset(
        &self,
        tenant: &str,
        consumer: &str,
        key: LogKey,
        event_number: i64,
        generation: i64,
    ) -> Result<Commit, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_offsets (tenant, consumer, log_key, subscription_id,
                 event_number, committed_at)
             SELECT $1, $2, s.log_key, s.id, $4, $5 FROM subscriptions s
             WHERE s.tenant = $1 AND s.log_key = $3
               AND EXISTS (SELECT 1 FROM consumer_generations g
                           WHERE g.tenant = $1 AND g.consumer = $2 AND g.generation = $6
                             AND g.log_key_ceiling >= s.log_key)
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
        .bind(generation)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(Commit::Committed(row.try_get(0)?));
        }
        let current = self.consumer_generation(tenant, consumer).await?;
        if current != generation {
            return Ok(Commit::Fenced { current });
        }
        let exists = sqlx::query("SELECT 1 FROM subscriptions WHERE tenant = $1 AND log_key = $2")
            .bind(tenant)
            .bind(key.get())
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if exists {
            // the incarnation is newer than what this generation's Consume could read
            return Ok(Commit::Recreated);
        }
        Err(StoreError::NotFound)
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

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The position now stored.
    Committed(i64),
    /// Refused: the commit's generation is not the consumer's current one (0: never read).
    Fenced { current: i64 },
    /// Refused: the subscription was created (or deleted and re-created with its id) after
    /// the generation's `Consume` began, so the numbers cannot be from its log.
    Recreated,
}
