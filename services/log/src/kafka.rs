//! The Kafka backend (rdkafka with its bundled librdkafka).
//!
//! Producer: idempotent, `acks=all`, murmur2 partitioning so keys land where Java clients
//! put them. Consumer: classic consumer-group protocol, auto-commit of *stored* offsets only
//! (`enable.auto.offset.store=false`): an offset is stored when the caller acks, which it does
//! after the work the record caused is durable.
//!
//! rdkafka trap (seen with MockCluster and tansu): dropping a consumer while a
//! `TopicPartitionList` taken from it is alive hangs in `rd_kafka_destroy`. Lists here are
//! built, used and dropped within one call, never kept; consumers are dropped inside
//! `spawn_blocking` with a timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka_context::HubContext;
use crate::{Consumed, EventLog, LogConsumer, LogError, Record, highest_offsets};

/// How the Kafka backend connects and how it creates topics.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Partitions for topics the hub creates.
    pub partitions: i32,
    /// Replication factor for topics the hub creates.
    pub replication: i32,
    /// Extra librdkafka properties (security.protocol, sasl.*, ...), applied last.
    pub client: BTreeMap<String, String>,
    /// Time limit for metadata and admin calls.
    pub request_timeout: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: 6,
            replication: 1,
            client: BTreeMap::new(),
            request_timeout: Duration::from_secs(10),
        }
    }

    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "fhir-hub");
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c
    }
}

/// Set `pinned` keys after the operator's `kafka.client` overrides, saying so when an
/// override tried to change one: the at-least-once guarantees depend on them.
fn pin(cfg: &mut ClientConfig, pinned: &[(&str, &str)]) {
    for (k, v) in pinned {
        if cfg.get(k).is_some_and(|old| old != *v) {
            tracing::warn!(
                key = k,
                "kafka.client cannot change this setting; ignoring the override"
            );
        }
        cfg.set(*k, *v);
    }
}

/// Chunks of one [`EventLog::publish_many`] queued before the oldest must be acknowledged.
const MAX_CHUNKS_IN_FLIGHT: usize = 8;
/// How long a record may wait for room in the producer's queue.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

fn produce_error(topic: &str, e: KafkaError) -> LogError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            LogError::UnknownTopic(topic.to_owned())
        }
        other => LogError::Unavailable(other.to_string()),
    }
}

/// Wait until every queued record is acknowledged (or one failed).
async fn wait_delivered(
    topic: &str,
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
) -> Result<(), LogError> {
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(produce_error(topic, e)),
            Err(_) => return Err(LogError::Unavailable("the producer was dropped".into())),
        }
    }
    Ok(())
}

/// The Kafka event log.
pub struct KafkaLog {
    settings: KafkaSettings,
    producer: FutureProducer<HubContext>,
    /// One client per group for [`EventLog::lag`], made at the first ask and kept: `/ready`
    /// is asked every few seconds, and a librdkafka client is threads and connections.
    lag_readers: std::sync::Mutex<std::collections::HashMap<String, Arc<BaseConsumer<HubContext>>>>,
}

impl KafkaLog {
    pub fn new(settings: KafkaSettings) -> Result<Self, LogError> {
        let mut cfg = settings.base_config();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5");
        for (k, v) in &settings.client {
            cfg.set(k, v);
        }
        // what no-loss rests on cannot be switched off by `kafka.client`
        pin(&mut cfg, &[("enable.idempotence", "true"), ("acks", "all")]);
        let producer: FutureProducer<HubContext> = cfg.create_with_context(HubContext)?;
        Ok(Self {
            settings,
            producer,
            lag_readers: std::sync::Mutex::default(),
        })
    }

    /// Queue `records` in order, waiting (in order) while the producer's queue is full.
    async fn enqueue(
        &self,
        topic: &str,
        records: &[Record],
    ) -> Result<Vec<rdkafka::producer::DeliveryFuture>, LogError> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let mut record = FutureRecord::to(topic).key(&r.key).payload(&r.payload);
            let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
            loop {
                match self.producer.send_result(record) {
                    Ok(d) => {
                        out.push(d);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(produce_error(topic, e)),
                }
            }
        }
        Ok(out)
    }

    /// The kept client that reads `group`'s committed offsets. It never subscribes, so it
    /// never joins the group.
    fn lag_reader(&self, group: &str) -> Result<Arc<BaseConsumer<HubContext>>, LogError> {
        let mut readers = self
            .lag_readers
            .lock()
            .map_err(|_| LogError::Backend("lag reader lock poisoned".into()))?;
        if let Some(c) = readers.get(group) {
            return Ok(Arc::clone(c));
        }
        let mut cfg = self.settings.base_config();
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer: Arc<BaseConsumer<HubContext>> =
            Arc::new(cfg.create_with_context(HubContext)?);
        readers.insert(group.to_owned(), Arc::clone(&consumer));
        Ok(consumer)
    }

    fn topic_names(&self) -> Result<Vec<String>, LogError> {
        let md = self
            .producer
            .client()
            .fetch_metadata(None, self.settings.request_timeout)
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(md.topics().iter().map(|t| t.name().to_owned()).collect())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    async fn create_topics(&self, topics: &[&str]) -> Result<(), LogError> {
        // Ask only for what is missing: with restrictive ACLs the hub may not be allowed to
        // create topics that operators created for it.
        let existing = self.topic_names()?;
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| !existing.iter().any(|e| e == t))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<HubContext> = self
            .settings
            .base_config()
            .create_with_context(HubContext)?;
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.settings.partitions,
                    TopicReplication::Fixed(self.settings.replication),
                )
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(self.settings.request_timeout))
            .request_timeout(Some(self.settings.request_timeout));
        let call = admin.create_topics(&new, &opts);
        match tokio::time::timeout(self.settings.request_timeout * 2, call)
            .await
            .unwrap_or_else(|_| Err(KafkaError::AdminOpCreation("timed out".into())))
        {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(name) => tracing::info!(topic = %name, "created Kafka topic"),
                        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::debug!(topic = %name, "Kafka topic exists");
                        }
                        Err((name, code)) => {
                            tracing::warn!(topic = %name, error = %code, "could not create Kafka topic");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Kafka admin request failed"),
        }
        // Whatever the admin call said, the topics must exist now.
        let settings_timeout = self.settings.request_timeout;
        let deadline = tokio::time::Instant::now() + settings_timeout;
        loop {
            let existing = self.topic_names()?;
            let missing: Vec<&&str> = topics
                .iter()
                .filter(|t| !existing.iter().any(|e| e == **t))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::UnknownTopic(
                    missing
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn publish(&self, topic: &str, records: &[Record]) -> Result<(), LogError> {
        let deliveries = self.enqueue(topic, records).await?;
        wait_delivered(topic, deliveries).await
    }

    async fn publish_many(
        &self,
        topic: &str,
        records: &[Record],
        chunk: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(), LogError> {
        // Chunks are queued in order by this one task, so they stay in order however many
        // are in flight; the idempotent producer keeps them in order on the wire.
        let mut in_flight = std::collections::VecDeque::new();
        for c in records.chunks(chunk.max(1)) {
            in_flight.push_back((c.len(), self.enqueue(topic, c).await?));
            if in_flight.len() > MAX_CHUNKS_IN_FLIGHT
                && let Some((n, d)) = in_flight.pop_front()
            {
                wait_delivered(topic, d).await?;
                progress(n);
            }
        }
        for (n, d) in in_flight {
            wait_delivered(topic, d).await?;
            progress(n);
        }
        Ok(())
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let mut cfg = self.settings.base_config();
        cfg.set("group.id", group)
            .set("group.protocol", "classic")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // librdkafka waits up to 500 ms for a fetch to fill by default: half a second of
            // latency on every event when traffic is light. A short wait keeps an idle
            // subscription's next event near real time (`kafka.client` can override it).
            .set("fetch.wait.max.ms", "10");
        for (k, v) in &self.settings.client {
            cfg.set(k, v);
        }
        // offsets are stored only after what a record caused is durable: not overridable
        pin(
            &mut cfg,
            &[("group.id", group), ("enable.auto.offset.store", "false")],
        );
        let consumer: StreamConsumer<HubContext> = cfg.create_with_context(HubContext)?;
        consumer.subscribe(&[topic])?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
        }))
    }

    async fn partition_lag(&self, topic: &str, group: &str) -> Result<Vec<(i32, u64)>, LogError> {
        let consumer = self.lag_reader(group)?;
        let topic = topic.to_owned();
        let timeout = self.settings.request_timeout.min(Duration::from_secs(3));
        tokio::task::spawn_blocking(move || -> Result<Vec<(i32, u64)>, LogError> {
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let mut tpl = TopicPartitionList::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition(&topic, p.id());
                }
            }
            let committed = consumer.committed_offsets(tpl, timeout)?;
            let mut lag = Vec::new();
            for e in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(&topic, e.partition(), timeout)?;
                let position = match e.offset() {
                    Offset::Offset(o) => o.max(low),
                    _ => low,
                };
                lag.push((e.partition(), u64::try_from(high - position).unwrap_or(0)));
            }
            Ok(lag)
        })
        .await
        .map_err(|e| LogError::Backend(e.to_string()))?
    }

    async fn health(&self) -> Result<(), LogError> {
        let producer = self.producer.clone();
        let timeout = self.settings.request_timeout.min(Duration::from_secs(3));
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| LogError::Unavailable(e.to_string()))
        })
        .await
        .map_err(|e| LogError::Backend(e.to_string()))?
    }
}

struct KafkaConsumer {
    /// `None` only after `close`.
    consumer: Option<StreamConsumer<HubContext>>,
}

impl KafkaConsumer {
    fn get(&self) -> Result<&StreamConsumer<HubContext>, LogError> {
        self.consumer
            .as_ref()
            .ok_or_else(|| LogError::Backend("consumer is closed".into()))
    }
}

fn to_consumed(m: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    Consumed {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        published_ms: m.timestamp().to_millis(),
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Consumed>, LogError> {
        let consumer = self.get()?;
        let mut out = Vec::new();
        match tokio::time::timeout(max_wait, consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Err(e)) => return Err(LogError::Unavailable(e.to_string())),
            Ok(Ok(m)) => out.push(to_consumed(&m)),
        }
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(to_consumed(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error while batching");
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, records: &[Consumed]) -> Result<(), LogError> {
        let consumer = self.get()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in highest_offsets(records) {
            // The stored offset is the next one to read.
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
        }
        let result = consumer.store_offsets(&tpl);
        drop(tpl);
        match result {
            Ok(()) => Ok(()),
            // After a rebalance the partition may belong to another member now; it will
            // re-read from the last commit, which at-least-once allows.
            Err(e) => {
                tracing::warn!(error = %e, "could not store offsets (partition revoked?)");
                Ok(())
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), LogError> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        let task = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "final Kafka commit failed"),
            }
            consumer.unsubscribe();
            drop(consumer);
        });
        if tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .is_err()
        {
            tracing::error!("Kafka consumer did not close within 15 s; abandoning it");
        }
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            // Never destroy a consumer on an async worker thread: it may block.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn_blocking(move || drop(consumer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Managed Kafka services (Amazon MSK, Confluent Cloud, Aiven, Azure Event Hubs) take TLS
    /// and SASL only. The bundled librdkafka is built with OpenSSL, so the producer and the
    /// consumer are made with those settings; a build without it refused `SASL_SSL` when the
    /// client was made ("OpenSSL not available at build time").
    #[tokio::test]
    async fn clients_are_made_with_tls_and_sasl_settings() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
            ("SASL_PLAINTEXT", Some("SCRAM-SHA-256")),
        ] {
            let mut settings = KafkaSettings::new("127.0.0.1:1");
            settings
                .client
                .insert("security.protocol".into(), protocol.into());
            if let Some(m) = mechanism {
                for (k, v) in [
                    ("sasl.mechanisms", m),
                    ("sasl.username", "hub"),
                    ("sasl.password", "secret"),
                ] {
                    settings.client.insert(k.into(), v.into());
                }
            }
            let log = KafkaLog::new(settings)
                .unwrap_or_else(|e| panic!("{protocol} {mechanism:?}: producer: {e}"));
            let consumer = log
                .consumer("fhir.changes", "fhir-hub-matcher")
                .await
                .unwrap_or_else(|e| panic!("{protocol} {mechanism:?}: consumer: {e}"));
            drop(consumer);
        }
        // what the build cannot do is still refused when the client is made, not later
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        settings
            .client
            .insert("security.protocol".into(), "NOPE".into());
        assert!(KafkaLog::new(settings).is_err());
    }
}
