//! The per-subscription notification log.
//!
//! Event numbers are assigned here, inside the same transaction that stores the
//! notification: `events_since_start` is incremented on the subscription row (which locks it
//! on PostgreSQL and takes the write lock on SQLite) and the new value is the event number.
//! A change event already logged for a subscription is skipped by the same statement, so a
//! matcher that re-reads the log after a crash or rebalance adds nothing and leaves no gap.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, now};

/// A notification to log for one subscription.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub tenant: String,
    pub subscription_id: String,
    pub event_id: String,
    pub action: String,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: Option<String>,
    pub occurred_at: String,
    /// The resource JSON as carried by the event.
    pub resource: Option<String>,
}

/// A logged notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub tenant: String,
    pub subscription_id: String,
    pub event_number: i64,
    pub notification_id: String,
    pub event_id: String,
    pub action: String,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: Option<String>,
    pub occurred_at: String,
    pub created_at: String,
    pub resource: Option<String>,
}

const COLUMNS: &str = "tenant, subscription_id, event_number, notification_id, event_id, action, \
                       focus_type, focus_id, focus_version, occurred_at, created_at, resource";

fn from_row(r: &AnyRow) -> Result<Notification, sqlx::Error> {
    Ok(Notification {
        tenant: r.try_get(0)?,
        subscription_id: r.try_get(1)?,
        event_number: r.try_get(2)?,
        notification_id: r.try_get(3)?,
        event_id: r.try_get(4)?,
        action: r.try_get(5)?,
        focus_type: r.try_get(6)?,
        focus_id: r.try_get(7)?,
        focus_version: r.try_get(8)?,
        occurred_at: r.try_get(9)?,
        created_at: r.try_get(10)?,
        resource: r.try_get(11)?,
    })
}

impl Store {
    /// Log notifications in one transaction, assigning each the next event number of its
    /// subscription. Duplicates (same subscription and change event) and notifications for
    /// subscriptions deleted meanwhile are skipped. Returns what was logged.
    pub async fn append_notifications(
        &self,
        batch: &[NewNotification],
    ) -> Result<Vec<Notification>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Two matchers racing on the same event after a rebalance: the loser's INSERT hits
        // the unique key and its transaction fails; the retry sees the winner's rows.
        match self.append_once(batch).await {
            Err(StoreError::Database(e)) if e.contains("unique") || e.contains("UNIQUE") => {
                tracing::info!("notification batch raced another matcher; retrying");
                self.append_once(batch).await
            }
            other => other,
        }
    }

    async fn append_once(
        &self,
        batch: &[NewNotification],
    ) -> Result<Vec<Notification>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut logged = Vec::with_capacity(batch.len());
        let created_at = now();
        for n in batch {
            let number: Option<i64> = sqlx::query(
                "UPDATE subscriptions SET events_since_start = events_since_start + 1
                 WHERE tenant = $1 AND id = $2 AND NOT EXISTS (
                     SELECT 1 FROM notifications
                     WHERE tenant = $1 AND subscription_id = $2 AND event_id = $3)
                 RETURNING events_since_start",
            )
            .bind(&n.tenant)
            .bind(&n.subscription_id)
            .bind(&n.event_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            let Some(event_number) = number else { continue };
            let row = sqlx::query(&format!(
                "INSERT INTO notifications ({COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
            ))
            .bind(&n.tenant)
            .bind(&n.subscription_id)
            .bind(event_number)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&n.event_id)
            .bind(&n.action)
            .bind(&n.focus_type)
            .bind(&n.focus_id)
            .bind(&n.focus_version)
            .bind(&n.occurred_at)
            .bind(&created_at)
            .bind(&n.resource)
            .fetch_one(&mut *tx)
            .await?;
            logged.push(from_row(&row)?);
        }
        tx.commit().await?;
        Ok(logged)
    }

    /// Notifications of a subscription with event numbers above `after`, in order.
    pub async fn notifications_after(
        &self,
        tenant: &str,
        subscription_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications
             WHERE tenant = $1 AND subscription_id = $2 AND event_number > $3
             ORDER BY event_number LIMIT $4"
        ))
        .bind(tenant)
        .bind(subscription_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }
}
