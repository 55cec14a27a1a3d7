//! The embedded single-node log: one SQLite file, one partition per topic.
//!
//! Publishing a batch is one transaction, so a batch is all-or-nothing. Consumers in the
//! same process are woken at once through a [`Notify`]; writers in other processes (such as
//! `fhir-hub publish`) are seen within the poll interval.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;

use crate::{Consumed, EventLog, LogConsumer, LogError, Record, highest_offsets};

/// How often a waiting consumer looks for records written by another process.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(200);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS log_topics (name TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS log_records (
        topic TEXT NOT NULL,
        record_offset INTEGER NOT NULL,
        record_key TEXT,
        payload BLOB NOT NULL,
        appended_at INTEGER NOT NULL,
        PRIMARY KEY (topic, record_offset)
    )",
    "CREATE TABLE IF NOT EXISTS log_group_offsets (
        group_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (group_id, topic)
    )",
];

/// The embedded log.
#[derive(Clone)]
pub struct EmbeddedLog {
    pool: SqlitePool,
    /// Wakes this process's consumers when this process appends.
    appended: Arc<Notify>,
}

impl EmbeddedLog {
    /// Append `records` to `topic` in one transaction. BEGIN IMMEDIATE takes the write lock
    /// first, so two writers never read the same next offset; the sqlx transaction rolls
    /// back if anything fails.
    async fn append(&self, topic: &str, records: &[Record]) -> Result<(), LogError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(record_offset) + 1, 0) FROM log_records WHERE topic = ?",
        )
        .bind(topic)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let now = now_millis();
        for (i, r) in records.iter().enumerate() {
            sqlx::query(
                "INSERT INTO log_records (topic, record_offset, record_key, payload, appended_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(topic)
            .bind(next + i as i64)
            .bind(&r.key)
            .bind(&r.payload)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.appended.notify_waiters();
        Ok(())
    }

    /// The group's committed position on `topic`: the next offset it reads (0 if never).
    async fn committed(&self, topic: &str, group: &str) -> Result<i64, LogError> {
        Ok(sqlx::query(
            "SELECT next_offset FROM log_group_offsets WHERE group_id = ? AND topic = ?",
        )
        .bind(group)
        .bind(topic)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
    }

    /// Open (creating if needed) the log in `path`.
    pub async fn open(path: &Path) -> Result<Self, LogError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                LogError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(Self {
            pool,
            appended: Arc::new(Notify::new()),
        })
    }

    async fn topic_exists(&self, topic: &str) -> Result<bool, LogError> {
        Ok(sqlx::query("SELECT 1 FROM log_topics WHERE name = ?")
            .bind(topic)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn create_topics(&self, topics: &[&str]) -> Result<(), LogError> {
        for t in topics {
            sqlx::query("INSERT INTO log_topics (name) VALUES (?) ON CONFLICT DO NOTHING")
                .bind(t)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, records: &[Record]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        if !self.topic_exists(topic).await? {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        }
        // The transaction runs in a task of its own: a request dropped mid-way (a client
        // that disconnects) cannot cancel it between BEGIN and COMMIT, so no connection goes
        // back to the pool inside its transaction (holding the write lock, or showing
        // uncommitted rows whose offsets a later publish would reuse).
        let log = self.clone();
        let topic = topic.to_owned();
        let records = records.to_vec();
        tokio::spawn(async move { log.append(&topic, &records).await })
            .await
            .map_err(|e| LogError::Backend(format!("the append task failed: {e}")))?
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        if !self.topic_exists(topic).await? {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        }
        let position = self.committed(topic, group).await?;
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            position,
        }))
    }

    async fn health(&self) -> Result<(), LogError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn purge_consumed(&self, before_ms: i64) -> Result<u64, LogError> {
        // A topic no group has read keeps everything (a group may still come). The newest
        // record of a topic always stays: the next offset is counted from it, and offsets
        // must never be reused.
        let n = sqlx::query(
            "DELETE FROM log_records WHERE appended_at < ? AND record_offset < \
             (SELECT MIN(g.next_offset) FROM log_group_offsets g WHERE g.topic = log_records.topic) \
             AND record_offset < (SELECT MAX(r.record_offset) FROM log_records r \
             WHERE r.topic = log_records.topic)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64, LogError> {
        let end: i64 = sqlx::query(
            "SELECT COALESCE(MAX(record_offset) + 1, 0) FROM log_records WHERE topic = ?",
        )
        .bind(topic)
        .fetch_one(&self.pool)
        .await?
        .get(0);
        let position = self.committed(topic, group).await?;
        Ok(u64::try_from(end.saturating_sub(position)).unwrap_or(0))
    }
}

struct EmbeddedConsumer {
    log: EmbeddedLog,
    topic: String,
    group: String,
    /// Next offset to read (in memory; the committed one is in `log_group_offsets`).
    position: i64,
}

impl EmbeddedConsumer {
    async fn fetch(&self, max: usize) -> Result<Vec<Consumed>, LogError> {
        let rows = sqlx::query(
            "SELECT record_offset, record_key, payload FROM log_records
             WHERE topic = ? AND record_offset >= ? ORDER BY record_offset LIMIT ?",
        )
        .bind(&self.topic)
        .bind(self.position)
        .bind(max as i64)
        .fetch_all(&self.log.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Consumed {
                topic: self.topic.clone(),
                partition: 0,
                offset: r.get(0),
                key: r.get(1),
                payload: r.get(2),
            })
            .collect())
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Consumed>, LogError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Register interest before looking, so an append between the query and the
            // wait is not missed.
            let notified = self.log.appended.notified();
            let batch = self.fetch(max.max(1)).await?;
            if let Some(last) = batch.last() {
                self.position = last.offset + 1;
                return Ok(batch);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wait = (deadline - now).min(CROSS_PROCESS_POLL);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    async fn ack(&mut self, records: &[Consumed]) -> Result<(), LogError> {
        for (topic, _, offset) in highest_offsets(records) {
            sqlx::query(
                "INSERT INTO log_group_offsets (group_id, topic, next_offset) VALUES (?, ?, ?)
                 ON CONFLICT (group_id, topic)
                 DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
            )
            .bind(&self.group)
            .bind(&topic)
            .bind(offset + 1)
            .execute(&self.log.pool)
            .await?;
        }
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), LogError> {
        Ok(())
    }
}
