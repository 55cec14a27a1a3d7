//! The per-subscription notification log.
//!
//! Event numbers are assigned here, inside the same transaction that stores the
//! notification: `events_since_start` is incremented on the subscription row (which locks it
//! on PostgreSQL and takes the write lock on SQLite) and the new value is the event number.
//! A change event already logged for a subscription is skipped by the same statement, so a
//! matcher that re-reads the log after a crash or rebalance adds nothing and leaves no gap.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError, now};

/// A notification to log for one subscription.
#[derive(Debug, Clone, PartialEq)]
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

/// A logged notification: what was logged, with the number and id the log gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event_number: i64,
    /// Stable across retries and replays (the `webhook-id`).
    pub notification_id: String,
    pub created_at: String,
    pub note: NewNotification,
}

impl std::ops::Deref for Notification {
    type Target = NewNotification;

    /// A logged notification reads as what was logged (`n.focus_type`, `n.resource`).
    fn deref(&self) -> &NewNotification {
        &self.note
    }
}

const COLUMNS: &str = "tenant, subscription_id, event_number, notification_id, event_id, action, \
                       focus_type, focus_id, focus_version, occurred_at, created_at, resource";

fn from_row(r: &AnyRow) -> Result<Notification, sqlx::Error> {
    Ok(Notification {
        event_number: r.try_get(2)?,
        notification_id: r.try_get(3)?,
        created_at: r.try_get(10)?,
        note: NewNotification {
            tenant: r.try_get(0)?,
            subscription_id: r.try_get(1)?,
            event_id: r.try_get(4)?,
            action: r.try_get(5)?,
            focus_type: r.try_get(6)?,
            focus_id: r.try_get(7)?,
            focus_version: r.try_get(8)?,
            occurred_at: r.try_get(9)?,
            resource: r.try_get(11)?,
        },
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Bind the twelve columns of one notification row, in `COLUMNS` order.
fn bind_row<'q>(
    q: AnyQuery<'q>,
    n: &'q NewNotification,
    number: i64,
    id: &'q str,
    created_at: &'q str,
) -> AnyQuery<'q> {
    q.bind(&n.tenant)
        .bind(&n.subscription_id)
        .bind(number)
        .bind(id)
        .bind(&n.event_id)
        .bind(&n.action)
        .bind(&n.focus_type)
        .bind(&n.focus_id)
        .bind(&n.focus_version)
        .bind(&n.occurred_at)
        .bind(created_at)
        .bind(&n.resource)
}

/// A new notification id: time-ordered, unique, made here rather than by the database so
/// that a logged row need not be read back.
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What a row written with these values holds, without reading it back.
fn logged(n: &NewNotification, number: i64, id: String, created_at: &str) -> Notification {
    Notification {
        event_number: number,
        notification_id: id,
        created_at: created_at.to_owned(),
        note: n.clone(),
    }
}

/// Rows read as one JSON array of arrays, each in [`COLUMNS`] order.
fn from_json_rows(text: &str) -> Result<Vec<Notification>, StoreError> {
    type Columns = (
        String,
        String,
        i64,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        Option<String>,
    );
    let rows: Vec<Columns> = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("notification rows: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|c| Notification {
            event_number: c.2,
            notification_id: c.3,
            created_at: c.10,
            note: NewNotification {
                tenant: c.0,
                subscription_id: c.1,
                event_id: c.4,
                action: c.5,
                focus_type: c.6,
                focus_id: c.7,
                focus_version: c.8,
                occurred_at: c.9,
                resource: c.11,
            },
        })
        .collect())
}

/// One event for one subscription: the counter update skips an event already logged.
async fn append_one(
    tx: &mut Transaction<'_, Any>,
    n: &NewNotification,
    created_at: &str,
) -> Result<Option<Notification>, StoreError> {
    let number: Option<i64> = sqlx::query(
        "UPDATE subscriptions SET events_since_start = events_since_start + 1
         WHERE tenant = $1 AND id = $2 AND status <> 'off' AND NOT EXISTS (
             SELECT 1 FROM notifications
             WHERE tenant = $1 AND subscription_id = $2 AND event_id = $3)
         RETURNING events_since_start",
    )
    .bind(&n.tenant)
    .bind(&n.subscription_id)
    .bind(&n.event_id)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    let Some(event_number) = number else {
        return Ok(None);
    };
    let sql = format!(
        "INSERT INTO notifications ({COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    );
    let id = new_id();
    bind_row(sqlx::query(&sql), n, event_number, &id, created_at)
        .execute(&mut **tx)
        .await?;
    Ok(Some(logged(n, event_number, id, created_at)))
}

impl Store {
    /// Log notifications in one transaction, assigning each the next event number of its
    /// subscription. Duplicates (same subscription and change event) and notifications for
    /// subscriptions deleted or turned `off` meanwhile are skipped (an `off` subscription
    /// generates nothing, whether or not a matcher's index has caught up). Returns what was
    /// logged.
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
        // Group by subscription, keeping each subscription's events in order, so that a burst
        // fanning out to many subscriptions costs a few statements per subscription.
        let mut order: Vec<(&str, &str)> = Vec::new();
        let mut groups: HashMap<(&str, &str), Vec<(usize, &NewNotification)>> = HashMap::new();
        for (i, n) in batch.iter().enumerate() {
            let key = (n.tenant.as_str(), n.subscription_id.as_str());
            let g = groups.entry(key).or_insert_with(|| {
                order.push(key);
                Vec::new()
            });
            g.push((i, n));
        }
        // Rows are locked in one order whatever the batch order: two matchers whose batches
        // name the same subscriptions in different orders would otherwise deadlock.
        order.sort_unstable();
        let mut tx = self.pool.begin().await?;
        let created_at = now();
        let mut logged: Vec<(usize, Notification)> = Vec::with_capacity(batch.len());
        for key in order {
            let group = groups.remove(&key).unwrap_or_default();
            if let [(i, n)] = group.as_slice() {
                if let Some(row) = append_one(&mut tx, n, &created_at).await? {
                    logged.push((*i, row));
                }
            } else {
                let rows =
                    Self::append_group(self.backend, &mut tx, key, &group, &created_at).await?;
                logged.extend(rows);
            }
        }
        if self.backend == crate::Backend::Postgres {
            // Readers in other processes wake on this; PostgreSQL delivers it on commit.
            crate::listen::notify_logged(&mut tx, logged.iter().map(|(_, n)| n)).await?;
        }
        tx.commit().await?;
        logged.sort_by_key(|(i, _)| *i);
        Ok(logged.into_iter().map(|(_, n)| n).collect())
    }

    /// Several events for one subscription: lock it, drop events already logged, take a
    /// block of event numbers with one update, insert the rows together.
    async fn append_group(
        backend: crate::Backend,
        tx: &mut Transaction<'_, Any>,
        (tenant, sub): (&str, &str),
        group: &[(usize, &NewNotification)],
        created_at: &str,
    ) -> Result<Vec<(usize, Notification)>, StoreError> {
        // A no-op write first: it locks the row on PostgreSQL and takes SQLite's write lock
        // before anything is read, so no other writer can slip in between.
        let lock = "UPDATE subscriptions SET events_since_start = events_since_start
                    WHERE tenant = $1 AND id = $2 AND status <> 'off' RETURNING 1";
        if sqlx::query(lock)
            .bind(tenant)
            .bind(sub)
            .fetch_optional(&mut **tx)
            .await?
            .is_none()
        {
            return Ok(Vec::new()); // deleted or turned off meanwhile
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for chunk in group.chunks(500) {
            let p = crate::placeholders(backend, 1, chunk.len() + 2);
            let sql = format!(
                "SELECT event_id FROM notifications WHERE tenant = {} AND subscription_id = {}
                 AND event_id IN ({})",
                p[0],
                p[1],
                p[2..].join(", ")
            );
            let mut q = sqlx::query(&sql).bind(tenant).bind(sub);
            for (_, n) in chunk {
                q = q.bind(n.event_id.as_str());
            }
            for row in q.fetch_all(&mut **tx).await? {
                let id: String = row.try_get(0)?;
                if let Some((_, n)) = group.iter().find(|(_, n)| n.event_id == id) {
                    seen.insert(n.event_id.as_str());
                }
            }
        }
        let fresh: Vec<&(usize, &NewNotification)> = group
            .iter()
            .filter(|(_, n)| seen.insert(n.event_id.as_str()))
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let k = fresh.len() as i64;
        let top: Option<i64> = sqlx::query(
            "UPDATE subscriptions SET events_since_start = events_since_start + $3
             WHERE tenant = $1 AND id = $2 RETURNING events_since_start",
        )
        .bind(tenant)
        .bind(sub)
        .bind(k)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let Some(top) = top else {
            return Ok(Vec::new());
        };
        let mut next = top - k + 1;
        let mut out = Vec::with_capacity(fresh.len());
        for chunk in fresh.chunks(400) {
            let mut values = Vec::with_capacity(chunk.len());
            for j in 0..chunk.len() {
                let p = crate::placeholders(backend, j * 12 + 1, 12);
                values.push(format!("({})", p.join(", ")));
            }
            // Nothing is read back: every value of the rows is known here (reading them back
            // copied each resource out of SQLite again and handed every row over on its own).
            let sql = format!(
                "INSERT INTO notifications ({COLUMNS}) VALUES {}",
                values.join(", ")
            );
            let ids: Vec<String> = chunk.iter().map(|_| new_id()).collect();
            let mut q = sqlx::query(&sql);
            for (j, (_, n)) in chunk.iter().enumerate() {
                q = bind_row(q, n, next + j as i64, &ids[j], created_at);
            }
            q.execute(&mut **tx).await?;
            for ((i, n), id) in chunk.iter().zip(ids) {
                out.push((*i, logged(n, next, id, created_at)));
                next += 1;
            }
        }
        Ok(out)
    }

    /// Notifications of a subscription with event numbers above `after`, in order.
    pub async fn notifications_after(
        &self,
        tenant: &str,
        subscription_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        if self.backend == crate::Backend::Sqlite {
            // The driver hands every result row from SQLite's thread to the runtime on its
            // own (a channel send and a wake-up each), which was half of what a stream replay
            // cost per notification: the rows come back as one JSON array in one row instead.
            let row = sqlx::query(&format!(
                "SELECT json_group_array(json_array({COLUMNS}) ORDER BY event_number) FROM
                 (SELECT {COLUMNS} FROM notifications
                  WHERE tenant = ? AND subscription_id = ? AND event_number > ?
                  ORDER BY event_number LIMIT ?)"
            ))
            .bind(tenant)
            .bind(subscription_id)
            .bind(after)
            .bind(limit)
            .fetch_one(&self.pool)
            .await?;
            return from_json_rows(&row.try_get::<String, _>(0)?);
        }
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

    /// The lowest event number still in the log for a subscription (`None` when its log is
    /// empty): a reader asking for anything below it gets "history gone".
    pub async fn first_retained(
        &self,
        tenant: &str,
        subscription_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(event_number) FROM notifications WHERE tenant = $1 AND subscription_id = $2",
        )
        .bind(tenant)
        .bind(subscription_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Retention: delete notifications created before `before` (a stored instant). A
    /// rest-hook subscription's notifications go only once its delivery cursor passed them
    /// (undelivered ones stay whatever their age); a stream subscription's (websocket) go by
    /// age alone, since its readers are clients that come and go: one asking for purged
    /// history is told so. Event numbers are never reused.
    pub async fn purge_notifications(&self, before: &str) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "DELETE FROM notifications WHERE created_at < $1 AND (event_number <= \
             (SELECT d.delivered_through FROM delivery_state d \
              WHERE d.tenant = notifications.tenant AND d.subscription_id = notifications.subscription_id) \
             OR NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.tenant = notifications.tenant \
              AND s.id = notifications.subscription_id AND s.channel_type = 'rest-hook'))",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }
}
