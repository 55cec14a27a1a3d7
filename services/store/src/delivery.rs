//! Delivery state per subscription: how far delivery has got and how it went.

use sqlx::Row;

use crate::{Store, StoreError, now};

/// Where delivery of one subscription stands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryState {
    /// Every event number up to this one has been delivered.
    pub delivered_through: i64,
    /// Failed attempts since the last success.
    pub attempts: i64,
    pub last_attempt_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
}

impl Store {
    pub async fn delivery_state(
        &self,
        tenant: &str,
        subscription_id: &str,
    ) -> Result<DeliveryState, StoreError> {
        let row = sqlx::query(
            "SELECT delivered_through, attempts, last_attempt_at, last_success_at, last_error
             FROM delivery_state WHERE tenant = $1 AND subscription_id = $2",
        )
        .bind(tenant)
        .bind(subscription_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(DeliveryState::default());
        };
        Ok(DeliveryState {
            delivered_through: r.try_get(0)?,
            attempts: r.try_get(1)?,
            last_attempt_at: r.try_get(2)?,
            last_success_at: r.try_get(3)?,
            last_error: r.try_get(4)?,
        })
    }

    /// Record that every event up to `event_number` was delivered.
    pub async fn record_delivered(
        &self,
        tenant: &str,
        subscription_id: &str,
        event_number: i64,
    ) -> Result<(), StoreError> {
        self.record_delivered_by(tenant, subscription_id, event_number, None)
            .await
            .map(|_| ())
    }

    /// [`Store::record_delivered`] fenced by the delivery lease: written only while `owner`
    /// holds the subscription's lease. A process that lost its lease (it stalled past the
    /// lease's TTL, or could not renew it) and still runs a worker has its progress refused
    /// and learns it must stop: two processes never move one cursor. Returns whether the
    /// progress was recorded.
    pub async fn record_delivered_by(
        &self,
        tenant: &str,
        subscription_id: &str,
        event_number: i64,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        let t = now();
        let done = sqlx::query(
            "INSERT INTO delivery_state (tenant, subscription_id, delivered_through, attempts,
                 last_attempt_at, last_success_at, last_error)
             SELECT $1, $2, $3, 0, $4, $4, NULL
             WHERE $5 IS NULL OR EXISTS (SELECT 1 FROM delivery_leases l
                 WHERE l.tenant = $1 AND l.subscription_id = $2 AND l.owner = $5)
             ON CONFLICT (tenant, subscription_id) DO UPDATE SET
                 delivered_through = CASE WHEN delivery_state.delivered_through > excluded.delivered_through
                     THEN delivery_state.delivered_through ELSE excluded.delivered_through END,
                 attempts = 0, last_attempt_at = excluded.last_attempt_at,
                 last_success_at = excluded.last_success_at, last_error = NULL",
        )
        .bind(tenant)
        .bind(subscription_id)
        .bind(event_number)
        .bind(t)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Record a failed attempt.
    pub async fn record_failure(
        &self,
        tenant: &str,
        subscription_id: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO delivery_state (tenant, subscription_id, attempts, last_attempt_at, last_error)
             VALUES ($1, $2, 1, $3, $4)
             ON CONFLICT (tenant, subscription_id) DO UPDATE SET
                 attempts = delivery_state.attempts + 1,
                 last_attempt_at = excluded.last_attempt_at, last_error = excluded.last_error",
        )
        .bind(tenant)
        .bind(subscription_id)
        .bind(now())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
