//! The Kafka + PostgreSQL configuration end to end, against a real broker process (tansu).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::harness::{Hub, HubEnv, envelope, glucose, other_observation, require_external};
use crate::receiver::TestReceiver;

async fn produce(brokers: &str, topic: &str, key: &str, value: &Value) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let payload = value.to_string();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::from_secs(20),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_written_to_kafka_reaches_the_rest_hook() {
    let Some(brokers) = require_external("FHIR_HUB_TEST_KAFKA") else {
        return;
    };
    let Some(pg) = require_external("FHIR_HUB_TEST_DATABASE_URL") else {
        return;
    };
    let topic = format!("fhir.changes.{}", uuid::Uuid::new_v4().simple());
    let env = HubEnv::default()
        .arg("--kafka-brokers")
        .arg(&brokers)
        .arg("--database-url")
        .arg(&hub_store::fresh_postgres_schema(&pg, "e2e").await.unwrap())
        .var("HUB_LOG__CHANGES_TOPIC", &topic)
        .var("HUB_KAFKA__PARTITIONS", "3")
        .var("HUB_KAFKA__MATCHER_GROUP", &format!("g-{topic}"));
    let hub = Hub::start(env).await;
    let (_, health) = hub.get("/health").await;
    assert_eq!(health["components"]["log"]["backend"], "kafka", "{health}");
    assert_eq!(
        health["components"]["store"]["backend"], "postgres",
        "{health}"
    );

    let mut rx = TestReceiver::start().await;
    hub.subscribe("Observation?code=http://loinc.org|2345-7", &rx.url, true)
        .await;

    // Another system writes straight to the topic: a bare resource and an envelope.
    produce(&brokers, &topic, "Observation/k0", &other_observation("k0")).await;
    produce(&brokers, &topic, "Observation/k1", &glucose("k1")).await;
    produce(
        &brokers,
        &topic,
        "Observation/k2",
        &envelope(&glucose("k2"), "update"),
    )
    .await;

    let mut paths = vec![
        rx.next(Duration::from_secs(60)).await.path,
        rx.next(Duration::from_secs(30)).await.path,
    ];
    paths.sort();
    assert_eq!(paths, vec!["/hook/Observation/k1", "/hook/Observation/k2"]);

    // The hub's own ingest API publishes to the same topic.
    let (status, _) = hub.post_json("/events", &glucose("k3")).await;
    assert_eq!(status, 202);
    assert_eq!(
        rx.next(Duration::from_secs(30)).await.path,
        "/hook/Observation/k3"
    );
    rx.assert_quiet(Duration::from_millis(1000)).await;
}
