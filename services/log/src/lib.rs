//! The event log: where change events wait between the ingest API and the matcher.
//!
//! One trait, [`EventLog`], with two backends:
//! - [`kafka::KafkaLog`] for production: Apache Kafka through rdkafka, idempotent producer
//!   with `acks=all`, consumer groups that store offsets only after the caller acknowledges
//!   that the work a record caused is durable (`enable.auto.offset.store=false`).
//! - [`embedded::EmbeddedLog`] for the no-setup default: a single-node, single-partition log
//!   in a SQLite file with the same at-least-once contract.
//!
//! Records are keyed (`Type/id` for change events) so one resource's changes keep their order.

use std::time::Duration;

use async_trait::async_trait;

pub mod embedded;
pub mod kafka;
mod kafka_context;

/// Errors of the log backends.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("event log error: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        LogError::Backend(e.to_string())
    }
}

impl From<rdkafka::error::KafkaError> for LogError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        LogError::Backend(e.to_string())
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub payload: Vec<u8>,
}

/// A record read from the log, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// When the record was appended, in Unix milliseconds, where the log knows it (Kafka's
    /// record timestamp; the embedded log's append time): for the publish-to-logged latency.
    pub published_ms: Option<i64>,
}

/// The event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Which backend this is (`kafka`, `embedded`), for health and metrics.
    fn backend(&self) -> &'static str;

    /// Create topics that do not exist yet. A broker that refuses (no permission) is not an
    /// error as long as the topics exist.
    async fn create_topics(&self, topics: &[&str]) -> Result<(), LogError>;

    /// Publish records in order. Returns only when every record is durable (Kafka: acked by
    /// all in-sync replicas). On error some records may have been written: callers retry,
    /// and consumers deduplicate on the event id.
    async fn publish(&self, topic: &str, records: &[Record]) -> Result<(), LogError>;

    /// Publish many records in order, `chunk` at a time, calling `progress` with the number
    /// of each chunk once it is durable. A log that can keep several chunks in flight without
    /// reordering them (Kafka) does; by default each chunk waits for the one before.
    async fn publish_many(
        &self,
        topic: &str,
        records: &[Record],
        chunk: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(), LogError> {
        for c in records.chunks(chunk.max(1)) {
            self.publish(topic, c).await?;
            progress(c.len());
        }
        Ok(())
    }

    /// Join consumer group `group` on `topic`.
    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn LogConsumer>, LogError>;

    /// A cheap liveness check of the backend.
    async fn health(&self) -> Result<(), LogError>;

    /// How many records of `topic` consumer group `group` has yet to acknowledge (the sum
    /// over partitions of end offset minus committed position; a partition the group never
    /// committed counts from its first record). Readable from any process, so the api can
    /// report the matchers' lag.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64, LogError> {
        let partitions = self.partition_lag(topic, group).await?;
        Ok(partitions
            .iter()
            .fold(0u64, |sum, &(_, lag)| sum.saturating_add(lag)))
    }

    /// [`EventLog::lag`] per partition: `(partition, records not yet acknowledged)`.
    async fn partition_lag(&self, topic: &str, group: &str) -> Result<Vec<(i32, u64)>, LogError>;

    /// Delete records appended before `before_ms` (Unix milliseconds) that every consumer
    /// group has acknowledged; the number deleted. Kafka keeps its own retention
    /// (`retention.ms` on the topic), so only the embedded log does anything here.
    async fn purge_consumed(&self, before_ms: i64) -> Result<u64, LogError> {
        let _ = before_ms;
        Ok(0)
    }
}

/// One member of a consumer group.
///
/// The contract is at-least-once: records come back from [`poll`](Self::poll) in offset order
/// per partition; the group's position moves only when the caller [`ack`](Self::ack)s, which
/// it does after what the records caused is durable. After a crash or rebalance, records
/// that were polled but not acked are delivered again.
#[async_trait]
pub trait LogConsumer: Send {
    /// Up to `max` records, waiting at most `max_wait` for the first one.
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Consumed>, LogError>;

    /// Mark everything up to and including these records as done.
    async fn ack(&mut self, records: &[Consumed]) -> Result<(), LogError>;

    /// Commit acknowledged positions now and leave the group.
    async fn close(self: Box<Self>) -> Result<(), LogError>;
}

/// The highest offset per (topic, partition) among `records`.
pub(crate) fn highest_offsets(records: &[Consumed]) -> Vec<(String, i32, i64)> {
    let mut out: Vec<(String, i32, i64)> = Vec::new();
    for r in records {
        match out
            .iter_mut()
            .find(|(t, p, _)| *t == r.topic && *p == r.partition)
        {
            Some(entry) => entry.2 = entry.2.max(r.offset),
            None => out.push((r.topic.clone(), r.partition, r.offset)),
        }
    }
    out
}
