//! Delivery state per subscription incarnation: how far delivery has got and how it went.
//!
//! Keyed by the subscription's [`LogKey`], never by its id: a worker still sending for a
//! deleted subscription cannot move the cursor of one re-created with the same id.

use sqlx::Row;

use crate::{LogKey, Store, StoreError, now};

/// Where delivery of one subscription stands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryState {
    /// Every event number up to this one has been delivered.
    pub delivered_through: i64,
    /// Consecutive failed attempts of the message being retried (or of heartbeats).
    pub attempts: i64,
    pub last_attempt_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    /// When the message after `delivered_through` is to be tried again, in milliseconds
    /// from now on the database's clock (0: due now); `None` when no retry is pending.
    pub next_attempt_in_ms: Option<i64>,
}

/// A failed attempt of the message after `delivered_through`, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure<'a> {
    /// What was delivered before the failing message (recorded with the failure, so the
    /// retry state stored belongs to the message right after it).
    pub delivered_through: i64,
    /// Consecutive failures of this message (or heartbeat) so far.
    pub attempts: i64,
    pub error: &'a str,
    /// When the schedule tries it again, in milliseconds from now (`None`: no retry
    /// pending, as after a failed heartbeat).
    pub next_attempt_in_ms: Option<i64>,
}

impl Store {
    pub async fn delivery_state(&self, key: LogKey) -> Result<DeliveryState, StoreError> {
        let sql = format!(
            "SELECT delivered_through, attempts, last_attempt_at, last_success_at, last_error,
                 next_attempt_at - {} FROM delivery_state WHERE log_key = $1",
            crate::leases::db_now_sql(self.backend)
        );
        let row = sqlx::query(&sql)
            .bind(key.get())
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
            next_attempt_in_ms: r.try_get::<Option<i64>, _>(5)?.map(|ms| ms.max(0)),
        })
    }

    /// Record that every event up to `event_number` was delivered.
    pub async fn record_delivered(
        &self,
        key: LogKey,
        event_number: i64,
    ) -> Result<bool, StoreError> {
        self.record_delivered_by(key, event_number, None).await
    }

    /// [`Store::record_delivered`] fenced by the delivery lease: written only while `owner`
    /// holds the lease of this incarnation. A process that lost its lease (it stalled past
    /// the lease's TTL, or could not renew it), or whose subscription was deleted (and
    /// perhaps re-created: another incarnation), and still runs a worker has its progress
    /// refused and learns it must stop: two processes never move one cursor, and one
    /// incarnation never moves another's. Returns whether the progress was recorded.
    pub async fn record_delivered_by(
        &self,
        key: LogKey,
        event_number: i64,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE delivery_state SET
                 delivered_through = CASE WHEN delivered_through > $2
                     THEN delivered_through ELSE $2 END,
                 attempts = 0, last_attempt_at = $3, last_success_at = $3, last_error = NULL,
                 next_attempt_at = NULL
             WHERE log_key = $1 AND ($4 IS NULL OR EXISTS (SELECT 1 FROM delivery_leases l
                 WHERE l.log_key = $1 AND l.owner = $4))",
        )
        .bind(key.get())
        .bind(event_number)
        .bind(now())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Record a failed attempt (fenced like [`Store::record_delivered_by`]), with when the
    /// schedule tries again, so that a restarted worker resumes the schedule instead of
    /// starting it over. Returns whether it was recorded.
    pub async fn record_failure(
        &self,
        key: LogKey,
        failure: Failure<'_>,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE delivery_state SET
                 delivered_through = CASE WHEN delivered_through > $2
                     THEN delivered_through ELSE $2 END,
                 attempts = $3, last_attempt_at = $4, last_error = $5,
                 next_attempt_at = {} + $6
             WHERE log_key = $1 AND ($7 IS NULL OR EXISTS (SELECT 1 FROM delivery_leases l
                 WHERE l.log_key = $1 AND l.owner = $7))",
            crate::leases::db_now_sql(self.backend)
        );
        let done = sqlx::query(&sql)
            .bind(key.get())
            .bind(failure.delivered_through)
            .bind(failure.attempts)
            .bind(now())
            .bind(failure.error)
            .bind(failure.next_attempt_in_ms)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
