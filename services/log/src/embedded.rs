//! The embedded single-node log: one SQLite file, one partition per topic.
//!
//! Publishing a batch is all-or-nothing; publishes that arrive together are committed in
//! one transaction by the append task (group commit). Consumers in the
//! same process are woken at once through a [`Notify`]; writers in other processes (such as
//! `fhir-hub publish`) are seen within the poll interval.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{Notify, mpsc, oneshot};

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
    /// One writer at a time in this process: writers queue here, in order, instead of in
    /// SQLite's busy handler, whose sleeps (1 ms growing to 100 ms) were the tail of the
    /// publish-to-notification latency.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Publishes go to the append task, which commits what arrived together in one
    /// transaction (group commit).
    appends: mpsc::Sender<AppendJob>,
}

type AppendJob = (String, Vec<Record>, oneshot::Sender<Result<(), LogError>>);

/// The most records one group commit takes.
const MAX_GROUP_RECORDS: usize = 5_000;

/// Records per multi-row INSERT (5 parameters each).
const INSERT_CHUNK: usize = 500;

/// What the append task needs (not the sender: the task ends when every log is dropped).
struct Appender {
    pool: SqlitePool,
    appended: Arc<Notify>,
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Appender {
    /// Append every job's records, each job's in order after the previous job's, in one
    /// transaction. BEGIN IMMEDIATE takes the write lock first, so two writers (another
    /// process) never read the same next offset; the sqlx transaction rolls back if
    /// anything fails, and then every job of the group fails (each job stays
    /// all-or-nothing).
    async fn append(&self, jobs: &[AppendJob]) -> Result<(), LogError> {
        let _writing = self.writing.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut next: HashMap<&str, i64> = HashMap::new();
        let now = now_millis();
        let mut rows: Vec<(&str, i64, &Record)> = Vec::new();
        for (topic, records, _) in jobs {
            let at = match next.get(topic.as_str()) {
                Some(n) => *n,
                None => sqlx::query(
                    "SELECT COALESCE(MAX(record_offset) + 1, 0) FROM log_records WHERE topic = ?",
                )
                .bind(topic)
                .fetch_one(&mut *tx)
                .await?
                .get(0),
            };
            for (i, r) in records.iter().enumerate() {
                rows.push((topic, at + i as i64, r));
            }
            next.insert(topic, at + records.len() as i64);
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO log_records (topic, record_offset, record_key, payload, appended_at) \
                 VALUES {values}"
            );
            let mut q = sqlx::query(&sql);
            for (topic, offset, r) in chunk {
                q = q
                    .bind(*topic)
                    .bind(*offset)
                    .bind(&r.key)
                    .bind(&r.payload)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.appended.notify_waiters();
        Ok(())
    }

    async fn run(self, mut rx: mpsc::Receiver<AppendJob>) {
        while let Some(first) = rx.recv().await {
            let mut count = first.1.len();
            let mut jobs = vec![first];
            while count < MAX_GROUP_RECORDS {
                match rx.try_recv() {
                    Ok(job) => {
                        count += job.1.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            match self.append(&jobs).await {
                Ok(()) => {
                    for (_, _, done) in jobs {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for (_, _, done) in jobs {
                        let _ = done.send(Err(LogError::Backend(why.clone())));
                    }
                }
            }
        }
    }
}

impl EmbeddedLog {
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
        let appended = Arc::new(Notify::new());
        let writing: Arc<tokio::sync::Mutex<()>> = Arc::default();
        let (appends, rx) = mpsc::channel(1024);
        let appender = Appender {
            pool: pool.clone(),
            appended: Arc::clone(&appended),
            writing: Arc::clone(&writing),
        };
        tokio::spawn(appender.run(rx));
        Ok(Self {
            pool,
            appended,
            writing,
            appends,
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
        let _writing = self.writing.lock().await;
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
        // The transaction runs in the append task: a request dropped mid-way (a client
        // that disconnects) cannot cancel it between BEGIN and COMMIT, so no connection goes
        // back to the pool inside its transaction (holding the write lock, or showing
        // uncommitted rows whose offsets a later publish would reuse). Publishes that arrive
        // while a commit runs go into the next one together.
        let (done, committed) = oneshot::channel();
        self.appends
            .send((topic.to_owned(), records.to_vec(), done))
            .await
            .map_err(|_| LogError::Unavailable("the append task has stopped".into()))?;
        committed
            .await
            .map_err(|_| LogError::Backend("the append task dropped a publish".into()))?
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
        let _writing = self.writing.lock().await;
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

    async fn partition_lag(&self, topic: &str, group: &str) -> Result<Vec<(i32, u64)>, LogError> {
        let end: i64 = sqlx::query(
            "SELECT COALESCE(MAX(record_offset) + 1, 0) FROM log_records WHERE topic = ?",
        )
        .bind(topic)
        .fetch_one(&self.pool)
        .await?
        .get(0);
        let position = self.committed(topic, group).await?;
        // one partition
        Ok(vec![(
            0,
            u64::try_from(end.saturating_sub(position)).unwrap_or(0),
        )])
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
            "SELECT record_offset, record_key, payload, appended_at FROM log_records
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
                published_ms: r.try_get(3).ok(),
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
        let _writing = self.log.writing.lock().await;
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
