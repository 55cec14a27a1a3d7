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

/// A hub on the test broker (its own changes topic and group) and a fresh PostgreSQL schema;
/// `None` when those are not available (and not required).
async fn kafka_hub() -> Option<(String, String, Hub)> {
    let brokers = require_external("FHIR_HUB_TEST_KAFKA")?;
    let pg = require_external("FHIR_HUB_TEST_DATABASE_URL")?;
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
    Some((brokers, topic, hub))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_written_to_kafka_reaches_the_rest_hook() {
    let Some((brokers, topic, hub)) = kafka_hub().await else {
        return;
    };
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

/// A topic-based subscription fed by bare resources that another system writes to Kafka
/// (no envelope, no `previous`): "became final" fires once, numbered 1, with PostgreSQL
/// keeping the versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_resources_on_kafka_drive_a_topic_subscription() {
    let Some((brokers, topic, hub)) = kafka_hub().await else {
        return;
    };
    let (c, _) = hub
        .post_json("/fhir/SubscriptionTopic", &crate::topics::topic())
        .await;
    assert_eq!(c, 201);
    let mut rx = TestReceiver::start().await;
    let (c, s) = hub
        .post_json(
            "/fhir/Subscription",
            &crate::topics::subscription(&rx.url, Some("full-resource"), Some("patient=Patient/k")),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    hub.wait_status(s["id"].as_str().unwrap(), "active").await;

    let mut v1 = crate::topics::obs("kt1", "preliminary", "Patient/k");
    v1["meta"] = serde_json::json!({"versionId": "1"});
    let mut v2 = crate::topics::obs("kt1", "final", "Patient/k");
    v2["meta"] = serde_json::json!({"versionId": "2"});
    let mut v3 = v2.clone();
    v3["meta"] = serde_json::json!({"versionId": "3"});
    for v in [&v1, &v2, &v3] {
        produce(&brokers, &topic, "Observation/kt1", v).await;
    }
    let r = rx.next(Duration::from_secs(30)).await;
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    let params = b["entry"][0]["resource"]["parameter"].as_array().unwrap();
    let ev = params
        .iter()
        .find(|p| p["name"] == "notification-event")
        .unwrap();
    assert_eq!(ev["part"][0]["valueString"], "1");
    assert_eq!(b["entry"][1]["resource"]["meta"]["versionId"], "2");
    rx.assert_quiet(Duration::from_secs(2)).await;
}
