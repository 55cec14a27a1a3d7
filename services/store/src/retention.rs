//! Retention: old notifications, the events no notification refers to any more, and old
//! audit rows, deleted in bounded batches.
//!
//! Each statement deletes at most one batch, found through an index (migration 0019), and
//! commits on its own: no statement holds a lock (or SQLite's one connection) for longer
//! than a batch takes, so appends and reads go on between batches, and a purge costs what it
//! deletes whatever the tables hold. Several processes may purge at once: every statement
//! deletes only what is still old when it runs.

use sqlx::Row;

use crate::{Backend, Store, StoreError, placeholders};

/// Rows (or, for the notification log, events) one retention statement takes at most.
pub const RETENTION_BATCH: i64 = 5_000;

/// The old events of one step of the notification log's retention: those after `from` up to
/// and including `to`, in (logged_at, seq) order.
struct Span {
    from: (String, i64),
    to: (String, i64),
}

/// What the notification-log statements share: the events of the span that are old, by
/// when they were first logged and when they were last logged again. Binds: $1 before, $2
/// and $3 the span's start (exclusive), $4 and $5 its end.
const OLD_EVENTS_OF_SPAN: &str =
    "(e.logged_at, e.seq) > ($2, $3) AND (e.logged_at, e.seq) <= ($4, $5)
     AND e.logged_at < $1 AND (e.relogged_at IS NULL OR e.relogged_at < $1)";

impl Store {
    /// Retention: delete notifications of events logged before `before` (a stored instant).
    /// A rest-hook subscription's notifications go only once its delivery cursor passed them
    /// (undelivered ones stay whatever their age); a stream subscription's (websocket) go by
    /// age alone, since its readers are clients that come and go: one asking for purged
    /// history is told so. Event numbers are never reused. Then the events no notification
    /// refers to any more go too. An event logged again (for another subscription) counts
    /// as logged then. Returns the notifications deleted.
    pub async fn purge_notifications(&self, before: &str) -> Result<u64, StoreError> {
        self.purge_notifications_by(before, RETENTION_BATCH).await
    }

    /// [`Store::purge_notifications`], at most `batch` events or notifications per
    /// statement.
    pub async fn purge_notifications_by(
        &self,
        before: &str,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut purged = 0;
        let mut from = (String::new(), i64::MIN);
        // Events per step, so that a step holds about a batch of notifications: fewer when
        // each event reached many subscriptions.
        let mut events = batch;
        // The old events in order, `batch` at a time: each step deletes its notifications,
        // then the events left without any. The cursor only moves forward, so an event kept
        // (an undelivered rest-hook notification) is passed once, not read again each step.
        loop {
            let last = sqlx::query(
                "SELECT logged_at, seq FROM (
                     SELECT logged_at, seq FROM logged_events
                     WHERE logged_at < $1 AND (logged_at, seq) > ($2, $3)
                     ORDER BY logged_at, seq LIMIT $4) span
                 ORDER BY logged_at DESC, seq DESC LIMIT 1",
            )
            .bind(before)
            .bind(&from.0)
            .bind(from.1)
            .bind(events)
            .fetch_optional(&self.pool)
            .await?;
            let Some(last) = last else {
                return Ok(purged);
            };
            let span = Span {
                from,
                to: (last.try_get(0)?, last.try_get(1)?),
            };
            let n = self.purge_span(before, &span, batch).await?;
            purged += n;
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            events = if n > batch {
                (events.saturating_mul(batch) / n).max(1)
            } else if n < batch / 2 {
                events.saturating_mul(2).min(batch)
            } else {
                events
            };
            from = span.to;
        }
    }

    /// Delete the old notifications of the events of `span`, `batch` at a time, then those
    /// of its events no notification refers to any more.
    async fn purge_span(&self, before: &str, span: &Span, batch: i64) -> Result<u64, StoreError> {
        let notifications = format!(
            "DELETE FROM notification_log WHERE (log_key, event_number) IN (
                 SELECT n.log_key, n.event_number FROM logged_events e
                 JOIN notification_log n ON n.event_seq = e.seq
                 WHERE {OLD_EVENTS_OF_SPAN}
                 AND (NOT EXISTS (SELECT 1 FROM subscriptions s
                          WHERE s.log_key = n.log_key AND s.channel_type = 'rest-hook')
                      OR n.event_number <= (SELECT d.delivered_through FROM delivery_state d
                          WHERE d.log_key = n.log_key))
                 LIMIT $6)"
        );
        let mut purged = 0;
        loop {
            let n = sqlx::query(&notifications)
                .bind(before)
                .bind(&span.from.0)
                .bind(span.from.1)
                .bind(&span.to.0)
                .bind(span.to.1)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            purged += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                break;
            }
        }
        match self.backend {
            Backend::Sqlite => {
                // one statement, and SQLite has one writer: no append runs meanwhile
                sqlx::query(&format!(
                    "DELETE FROM logged_events WHERE seq IN (
                         SELECT e.seq FROM logged_events e WHERE {OLD_EVENTS_OF_SPAN})
                     AND NOT EXISTS (SELECT 1 FROM notification_log n
                         WHERE n.event_seq = logged_events.seq)"
                ))
                .bind(before)
                .bind(&span.from.0)
                .bind(span.from.1)
                .bind(&span.to.0)
                .bind(span.to.1)
                .execute(&self.pool)
                .await?;
            }
            Backend::Postgres => self.purge_events_locked(before, span).await?,
        }
        Ok(purged)
    }

    /// PostgreSQL: delete the events of `span` no notification refers to, racing no append.
    /// An append logging an event again locks its row (it marks it `relogged_at`) before it
    /// adds the notification; a `DELETE` that only waited for that lock would still judge
    /// "no notification refers to it" by what it saw when it started, and leave the new
    /// notification without its event. So the events are locked first, skipping those an
    /// append holds (they are being logged again), and judged by a statement that starts
    /// after: an append that comes later finds its event gone and stores it again.
    async fn purge_events_locked(&self, before: &str, span: &Span) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT e.seq FROM logged_events e WHERE {OLD_EVENTS_OF_SPAN}
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(before)
        .bind(&span.from.0)
        .bind(span.from.1)
        .bind(&span.to.0)
        .bind(span.to.1)
        .fetch_all(&mut *tx)
        .await?;
        if !locked.is_empty() {
            let list = placeholders(Backend::Postgres, 1, locked.len()).join(", ");
            let sql = format!(
                "DELETE FROM logged_events WHERE seq IN ({list})
                 AND NOT EXISTS (SELECT 1 FROM notification_log n
                     WHERE n.event_seq = logged_events.seq)"
            );
            let mut q = sqlx::query(&sql);
            for seq in &locked {
                q = q.bind(*seq);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Remove audit rows recorded before `before` (housekeeping, `audit.retention_days`).
    pub async fn purge_audit(&self, before: &str) -> Result<u64, StoreError> {
        self.delete_in_batches(
            "DELETE FROM audit_events WHERE id IN (
                 SELECT id FROM audit_events WHERE recorded < $1 ORDER BY recorded, id LIMIT $2)",
            before,
            RETENTION_BATCH,
        )
        .await
    }

    /// Run `sql` (binds: `arg`, then a batch size it deletes at most) until it deletes less
    /// than a batch; the rows deleted.
    pub(crate) async fn delete_in_batches(
        &self,
        sql: &str,
        arg: &str,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            let n = sqlx::query(sql)
                .bind(arg)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            deleted += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
        }
    }
}
