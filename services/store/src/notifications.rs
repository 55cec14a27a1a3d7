//! The per-subscription notification log, stored fanned out.
//!
//! A change event that reaches any subscription is stored once (`logged_events`, its
//! resource included); each subscription it reaches gets a short row in `notification_log`:
//! the subscription's log key, its event number and which event. One event matching 10,000
//! subscriptions writes one copy of the resource and 10,000 rows of a few bytes.
//!
//! Event numbers are assigned here, inside the same transaction that stores the
//! notification: `events_since_start` is incremented on the subscription row (which locks it
//! on PostgreSQL and takes the write lock on SQLite) and the new value is the event number.
//! A change event already logged for a subscription is skipped, so a matcher that re-reads
//! the log after a crash or rebalance adds nothing and leaves no gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::logged_events::{StoredEvent, store_events};
use crate::{Backend, LogKey, Store, StoreError, now, placeholders};

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
    /// The resource JSON as carried by the event, shared by every notification of the event
    /// (and stored once for all of them).
    pub resource: Option<Arc<str>>,
}

/// A logged notification: what was logged, with the number and id the log gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The incarnation of the subscription whose log holds it.
    pub log_key: LogKey,
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

/// Notification ids are UUIDv5 names under this namespace (fixed: ids must not change
/// between releases, or a replay would look like a new message to a receiver).
const ID_NAMESPACE: uuid::Uuid = uuid::uuid!("97613067-05f3-4e86-a52b-44d10c0277ff");

/// The id of a notification: derived from what identifies it (tenant, subscription, the
/// subscription's log key, which differs for a re-created id, and the change event), so it
/// is the same on every retry and replay without being stored. Rows logged before the
/// fanned-out log keep the id they were stored with.
fn notification_id(tenant: &str, subscription_id: &str, log_key: i64, event_id: &str) -> String {
    let name = format!("{tenant}\n{subscription_id}\n{log_key}\n{event_id}");
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// What a read selects, in this order (the resource last).
const READ_COLUMNS: &str = "e.tenant, s.id, n.event_number, n.notification_id, e.event_id, \
                            e.action, e.focus_type, e.focus_id, e.focus_version, e.occurred_at, \
                            e.logged_at, n.log_key, e.resource";

/// [`READ_COLUMNS`] by name but the resource, as a subquery yields them.
const NAMES_BUT_RESOURCE: &str = "tenant, id, event_number, notification_id, event_id, action, \
                                  focus_type, focus_id, focus_version, occurred_at, logged_at, \
                                  log_key";

/// The log of one subscription incarnation joined with its events; binds log key, after,
/// limit.
const READ_FROM: &str = "FROM notification_log n
     JOIN subscriptions s ON s.log_key = n.log_key
     JOIN logged_events e ON e.seq = n.event_seq
     WHERE n.log_key = $1 AND n.event_number > $2
     ORDER BY n.event_number LIMIT $3";

/// The columns of one read row, in [`READ_COLUMNS`] order; the resource as `R` (its text,
/// or its JSON borrowed from a read of many rows).
type Columns<R> = (
    String,
    String,
    i64,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    Option<R>,
);

fn from_columns<R>(c: Columns<R>, text: impl Fn(R) -> Arc<str>) -> Notification {
    let notification_id =
        c.3.unwrap_or_else(|| notification_id(&c.0, &c.1, c.11, &c.4));
    Notification {
        log_key: LogKey::new(c.11),
        event_number: c.2,
        notification_id,
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
            resource: c.12.map(text),
        },
    }
}

fn from_row(r: &AnyRow) -> Result<Notification, sqlx::Error> {
    let c: Columns<String> = (
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
        r.try_get(7)?,
        r.try_get(8)?,
        r.try_get(9)?,
        r.try_get(10)?,
        r.try_get(11)?,
        r.try_get(12)?,
    );
    Ok(from_columns(c, Arc::from))
}

/// Rows read as one JSON array of arrays in [`READ_COLUMNS`] order, each resource read as
/// `R` ([`RAW_ROWS`]: its JSON; [`ESCAPED_ROWS`]: a JSON string).
fn from_json_rows<'a, R: serde::Deserialize<'a>>(
    text: &'a str,
    resource: impl Fn(R) -> Arc<str>,
) -> serde_json::Result<Vec<Notification>> {
    let rows: Vec<Columns<R>> = serde_json::from_str(text)?;
    Ok(rows
        .into_iter()
        .map(|c| from_columns(c, &resource))
        .collect())
}

/// SQLite: a subscription's rows as one JSON array of arrays in one result row, each
/// resource embedded as the JSON it is stored as (not escaped into a string, which cost
/// SQLite a pass over every resource and the reader another to unescape it).
static RAW_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT '[' || coalesce(group_concat(
             rtrim(json_array({NAMES_BUT_RESOURCE}), ']') || ',' || coalesce(resource, 'null') || ']',
             ',' ORDER BY event_number), '') || ']'
         FROM (SELECT {READ_COLUMNS} {READ_FROM})"
    )
});

/// SQLite: the same rows with each resource as a JSON string (what [`RAW_ROWS`] falls back
/// to).
static ESCAPED_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT json_group_array(json_array({NAMES_BUT_RESOURCE}, resource) ORDER BY event_number) FROM
         (SELECT {READ_COLUMNS} {READ_FROM})"
    )
});

/// A tenant and an id, borrowed from the batch.
pub(crate) type Key<'a> = (&'a str, &'a str);

/// Rows per multi-row statement: well under SQLite's and PostgreSQL's bound-value limits.
pub(crate) const CHUNK: usize = 500;

/// The rows `sql(tenant placeholder, list placeholders)` selects for `ids` of one tenant,
/// [`CHUNK`] ids per statement, each paired with the id (from `ids`) its first column names.
async fn among<'a>(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    sql: impl Fn(&str, &str) -> String,
    tenant: &str,
    ids: &[&'a str],
) -> Result<Vec<(&'a str, AnyRow)>, StoreError> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let p = placeholders(backend, 1, chunk.len() + 1);
        let text = sql(&p[0], &p[1..].join(", "));
        let mut q = sqlx::query(&text).bind(tenant);
        for id in chunk {
            q = q.bind(*id);
        }
        let named: HashMap<&str, &'a str> = chunk.iter().map(|id| (*id, *id)).collect();
        for row in q.fetch_all(&mut **tx).await? {
            let id: String = row.try_get(0)?;
            if let Some(id) = named.get(id.as_str()) {
                out.push((*id, row));
            }
        }
    }
    Ok(out)
}

/// The log keys of the batch's subscriptions that can take notifications (neither deleted
/// nor `off`), their rows locked in key order on PostgreSQL (SQLite holds its one write lock
/// already) so two matchers never wait on each other in a cycle.
async fn lock_subscriptions<'a>(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    batch: &'a [NewNotification],
) -> Result<HashMap<Key<'a>, i64>, StoreError> {
    let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in batch {
        by_tenant
            .entry(n.tenant.as_str())
            .or_default()
            .push(&n.subscription_id);
    }
    let lock = match backend {
        Backend::Postgres => " ORDER BY id FOR UPDATE",
        Backend::Sqlite => "",
    };
    let sql = |t: &str, list: &str| {
        format!(
            "SELECT id, log_key FROM subscriptions
             WHERE tenant = {t} AND id IN ({list}) AND status <> 'off'{lock}"
        )
    };
    let mut keys = HashMap::new();
    for (tenant, mut ids) in by_tenant {
        ids.sort_unstable();
        ids.dedup();
        for (id, row) in among(backend, tx, sql, tenant, &ids).await? {
            if let Some(key) = row.try_get::<Option<i64>, _>(1)? {
                keys.insert((tenant, id), key);
            }
        }
    }
    Ok(keys)
}

/// Of these (log key, event) pairs, the ones already in the log.
async fn already_logged(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    pairs: &[(i64, i64)],
) -> Result<HashSet<(i64, i64)>, StoreError> {
    let mut found = HashSet::new();
    if pairs.is_empty() {
        return Ok(found);
    }
    let mut keys: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let mut seqs: Vec<i64> = pairs.iter().map(|p| p.1).collect();
    for v in [&mut keys, &mut seqs] {
        v.sort_unstable();
        v.dedup();
    }
    let wanted: HashSet<(i64, i64)> = pairs.iter().copied().collect();
    for keys in keys.chunks(CHUNK / 2) {
        for seqs in seqs.chunks(CHUNK / 2) {
            let sql = format!(
                "SELECT log_key, event_seq FROM notification_log
                 WHERE log_key IN ({}) AND event_seq IN ({})",
                placeholders(backend, 1, keys.len()).join(", "),
                placeholders(backend, keys.len() + 1, seqs.len()).join(", ")
            );
            let mut q = sqlx::query(&sql);
            for k in keys.iter().chain(seqs) {
                q = q.bind(*k);
            }
            for row in q.fetch_all(&mut **tx).await? {
                let pair: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                if wanted.contains(&pair) {
                    found.insert(pair);
                }
            }
        }
    }
    Ok(found)
}

/// Add `count` to the event counter of each log key; the new top number of each.
async fn take_numbers(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    counts: &BTreeMap<i64, i64>,
) -> Result<HashMap<i64, i64>, StoreError> {
    let mut by_count: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (key, count) in counts {
        by_count.entry(*count).or_default().push(*key);
    }
    let mut tops = HashMap::with_capacity(counts.len());
    for (count, keys) in by_count {
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "UPDATE subscriptions SET events_since_start = events_since_start + {}
                 WHERE log_key IN ({}) RETURNING log_key, events_since_start",
                placeholders(backend, 1, 1).join(""),
                placeholders(backend, 2, chunk.len()).join(", ")
            );
            let mut q = sqlx::query(&sql).bind(count);
            for k in chunk {
                q = q.bind(*k);
            }
            for row in q.fetch_all(&mut **tx).await? {
                tops.insert(row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
            }
        }
    }
    Ok(tops)
}

impl Store {
    /// Log notifications in one transaction, assigning each the next event number of its
    /// subscription. Duplicates (same subscription and change event) and notifications for
    /// subscriptions deleted or turned `off` meanwhile are skipped (an `off` subscription
    /// generates nothing, whether or not a matcher's index has caught up). Returns what was
    /// logged, in batch order.
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
        let backend = self.backend;
        let created_at = now();
        let mut tx = self.pool.begin().await?;
        // The events first: a write, so SQLite's write lock is held from here on.
        let events = store_events(backend, &mut tx, batch, &created_at).await?;
        let keys = lock_subscriptions(backend, &mut tx, batch).await?;

        // What each notification would be: (batch index, log key, event); the ones whose
        // subscription is gone or off are dropped, and so are repeats within the batch.
        let mut planned: Vec<(usize, i64, &StoredEvent)> = Vec::with_capacity(batch.len());
        let mut in_batch: HashSet<(i64, i64)> = HashSet::with_capacity(batch.len());
        for (i, n) in batch.iter().enumerate() {
            let (Some(key), Some(event)) = (
                keys.get(&(n.tenant.as_str(), n.subscription_id.as_str())),
                events.get(&(n.tenant.as_str(), n.event_id.as_str())),
            ) else {
                continue;
            };
            if in_batch.insert((*key, event.seq)) {
                planned.push((i, *key, event));
            }
        }
        // Only an event stored before this transaction can be in a subscription's log.
        let old: Vec<(i64, i64)> = planned
            .iter()
            .filter(|(_, _, e)| !e.fresh)
            .map(|(_, k, e)| (*k, e.seq))
            .collect();
        let done = already_logged(backend, &mut tx, &old).await?;
        planned.retain(|(_, k, e)| !done.contains(&(*k, e.seq)));

        let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
        for (_, key, _) in &planned {
            *counts.entry(*key).or_default() += 1;
        }
        let tops = take_numbers(backend, &mut tx, &counts).await?;
        // The next number of each subscription: its block's first, taken in batch order.
        let mut next: HashMap<i64, i64> = counts
            .iter()
            .filter_map(|(k, c)| tops.get(k).map(|top| (*k, top - c + 1)))
            .collect();
        let mut rows: Vec<(usize, i64, i64, &StoredEvent)> = Vec::with_capacity(planned.len());
        for (i, key, event) in planned {
            if let Some(n) = next.get_mut(&key) {
                rows.push((i, key, *n, event));
                *n += 1;
            }
        }
        for chunk in rows.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|j| format!("({})", placeholders(backend, j * 3 + 1, 3).join(", ")))
                .collect();
            let sql = format!(
                "INSERT INTO notification_log (log_key, event_number, event_seq) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (_, key, number, event) in chunk {
                q = q.bind(*key).bind(*number).bind(event.seq);
            }
            q.execute(&mut *tx).await?;
        }
        // Every value of the rows is known here: nothing is read back.
        let logged: Vec<Notification> = rows
            .iter()
            .map(|(i, key, number, event)| {
                let n = &batch[*i];
                Notification {
                    log_key: LogKey::new(*key),
                    event_number: *number,
                    notification_id: notification_id(
                        &n.tenant,
                        &n.subscription_id,
                        *key,
                        &n.event_id,
                    ),
                    created_at: event.logged_at.clone(),
                    note: n.clone(),
                }
            })
            .collect();
        if backend == Backend::Postgres {
            // Readers in other processes wake on this; PostgreSQL delivers it on commit.
            crate::listen::notify_logged(&mut tx, logged.iter()).await?;
        }
        tx.commit().await?;
        Ok(logged)
    }

    /// Notifications of a subscription incarnation with event numbers above `after`, in
    /// order and contiguous (none once that incarnation is deleted, whatever was created with
    /// its id since): a read ends before a missing number (purged by retention, or its event
    /// gone), so a missing number is never skipped inside a batch. Only the first row may be
    /// above `after + 1`: that is where a reader learns its history is gone.
    pub async fn notifications_after(
        &self,
        key: LogKey,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut rows = self.read_after(key, after, limit).await?;
        let run = rows
            .windows(2)
            .position(|w| w[1].event_number != w[0].event_number + 1)
            .map_or(rows.len(), |i| i + 1);
        rows.truncate(run);
        Ok(rows)
    }

    /// The rows of [`Store::notifications_after`] as the log holds them.
    async fn read_after(
        &self,
        key: LogKey,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        if self.backend == Backend::Sqlite {
            // The driver hands every result row from SQLite's thread to the runtime on its
            // own (a channel send and a wake-up each), which was half of what a stream replay
            // cost per notification: the rows come back as one JSON array in one row instead.
            let read = |sql: &'static str| {
                sqlx::query(sql)
                    .bind(key.get())
                    .bind(after)
                    .bind(limit)
                    .fetch_one(&self.pool)
            };
            let raw = read(RAW_ROWS.as_str()).await?;
            let embedded = |r: &serde_json::value::RawValue| Arc::from(r.get());
            if let Ok(rows) = from_json_rows(&raw.try_get::<String, _>(0)?, embedded) {
                return Ok(rows);
            }
            // Resources are stored as the JSON a parser accepted, so this is a row written
            // otherwise: read with the resource as a string, it still reaches its reader.
            tracing::warn!(
                log_key = key.get(),
                after,
                "a stored resource is not JSON; reading the rows with it as a string"
            );
            let escaped = read(ESCAPED_ROWS.as_str()).await?;
            return from_json_rows(&escaped.try_get::<String, _>(0)?, |r: String| Arc::from(r))
                .map_err(|e| StoreError::Corrupt(format!("notification rows: {e}")));
        }
        let rows = sqlx::query(&format!("SELECT {READ_COLUMNS} {READ_FROM}"))
            .bind(key.get())
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// The lowest event number still in the log of a subscription incarnation (`None` when
    /// its log is empty): a reader asking for anything below it gets "history gone".
    pub async fn first_retained(&self, key: LogKey) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(event_number) FROM notification_log WHERE log_key = $1")
            .bind(key.get())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The lowest event number still in the log of a subscription incarnation whose event
    /// was first logged at or after `since` (a stored instant, RFC 3339 UTC); `None` when
    /// none was. Where a reader asking to start "at a time" starts.
    pub async fn first_logged_since(
        &self,
        key: LogKey,
        since: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            // in event-number order, stopping at the first: no scan of the whole log
            "SELECT n.event_number FROM notification_log n
             JOIN logged_events e ON e.seq = n.event_seq
             WHERE n.log_key = $1 AND e.logged_at >= $2
             ORDER BY n.event_number LIMIT 1",
        )
        .bind(key.get())
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}
