//! Nothing a producer writes to the topic stops the matcher: records written straight to the
//! log (as any Kafka producer can) with NUL, invalid UTF-8, control characters and huge
//! strings in every envelope field and in the key are each quarantined with a sanitized
//! reason and key, and the events after them are delivered; a record the store itself
//! refuses is quarantined (stage `store`), and one it refuses even there goes to the spool
//! file. On SQLite and PostgreSQL, the embedded log and (when present) a real broker.

use std::time::Duration;

use hub_log::EventLog;
use serde_json::Value;

use crate::harness::{Hub, HubEnv, envelope, glucose, require_external};
use crate::hostile_records::{Records, flood};
use crate::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(60);
const CRITERIA: &str = "Observation?code=http://loinc.org|2345-7";

/// Publish the flood with `write`, then a good event through the API: every poison record
/// is quarantined with sanitized text, every good one delivered, and the hub stays ready.
async fn survives_the_flood(hub: &Hub, write: impl AsyncFn(Records), bytes: bool) {
    let mut rx = TestReceiver::start().await;
    let sub = hub.subscribe(CRITERIA, &rx.url, true).await;
    hub.wait_status(&sub, "active").await;
    let (poison, good, mut ids) = flood(bytes);
    let poisoned = poison.len();
    write(poison).await;
    write(good).await;
    let (status, body) = hub
        .post_json("/events", &envelope(&glucose("after"), "create"))
        .await;
    assert_eq!(status, 202, "{body}");
    ids.push("after".into());

    let mut got = Vec::new();
    for _ in 0..ids.len() {
        let r = rx.next(WAIT).await;
        if r.path.ends_with("/nul") {
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains(r"a\u0000b"), "{body}");
        }
        got.push(r.path.rsplit('/').next().unwrap().to_owned());
    }
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    rx.assert_quiet(Duration::from_millis(300)).await;

    let q = quarantined(hub, poisoned).await;
    assert_eq!(q["total"], poisoned, "every poison record quarantined once");
    for item in q["items"].as_array().unwrap() {
        assert_eq!(item["stage"], "parse", "{item}");
        for text in [&item["reason"], &item["key"]] {
            let text = text.as_str().unwrap();
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(text.len() <= 2048, "{}", text.len());
        }
        assert!(item["payload"].is_object(), "the bytes are kept: {item}");
    }
    // the matcher moved on: an event published now is matched and delivered
    let (status, body) = hub
        .post_json("/events", &envelope(&glucose("later"), "create"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/later");
    let (status, ready) = hub.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["components"]["matcher"]["status"], "pass", "{ready}");
}

/// The quarantine once it holds `n` records (or as it is after a minute).
async fn quarantined(hub: &Hub, n: usize) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, q) = hub
            .get(&format!("/admin/quarantine?count={}", n + 10))
            .await;
        assert_eq!(status, 200, "{q}");
        if q["total"] == n || std::time::Instant::now() > deadline {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Write records straight into a hub's embedded log.
async fn embedded_writer(hub: &Hub) -> impl AsyncFn(Records) {
    let log = hub_log::embedded::EmbeddedLog::open(&hub.data_dir.path().join("log.db"))
        .await
        .unwrap();
    async move |records: Records| {
        let records: Vec<hub_log::Record> = records
            .into_iter()
            .map(|(key, payload)| hub_log::Record {
                key: String::from_utf8(key).unwrap(),
                payload,
            })
            .collect();
        log.publish("fhir.changes", &records).await.unwrap();
    }
}

async fn postgres_env(prefix: &str) -> Option<(HubEnv, String)> {
    let pg = require_external("FHIR_HUB_TEST_DATABASE_URL")?;
    let url = hub_store::fresh_postgres_schema(&pg, prefix).await.unwrap();
    Some((HubEnv::default().arg("--database-url").arg(&url), url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_any_bytes_on_the_log_never_stop_the_matcher() {
    let hub = Hub::start(HubEnv::default()).await;
    let write = embedded_writer(&hub).await;
    survives_the_flood(&hub, write, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_any_bytes_on_the_log_never_stop_the_matcher() {
    let Some((env, _)) = postgres_env("poison").await else {
        return;
    };
    let hub = Hub::start(env).await;
    let write = embedded_writer(&hub).await;
    survives_the_flood(&hub, write, false).await;
}

/// The same flood written to a real broker with a Kafka client (keys as raw bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_any_bytes_on_the_topic_never_stop_the_matcher() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(brokers) = require_external("FHIR_HUB_TEST_KAFKA") else {
        return;
    };
    let Some((env, _)) = postgres_env("poisonk").await else {
        return;
    };
    let topic = format!("fhir.changes.{}", uuid::Uuid::new_v4().simple());
    let env = env
        .arg("--kafka-brokers")
        .arg(&brokers)
        .var("HUB_LOG__CHANGES_TOPIC", &topic)
        .var("HUB_KAFKA__PARTITIONS", "1")
        .var("HUB_KAFKA__MATCHER_GROUP", &format!("g-{topic}"));
    let hub = Hub::start(env).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "20000")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let write = async |records: Records| {
        for (key, payload) in records {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(20),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    survives_the_flood(&hub, write, true).await;
}

/// Make the store refuse two events (one of them even into quarantine), as a database can
/// for reasons the matcher cannot know in advance: the first is quarantined at stage
/// `store`, the second parked in the spool file, and the event after them is delivered.
async fn store_refusals_are_set_aside(hub: &Hub, refuse: impl AsyncFnOnce()) {
    let mut rx = TestReceiver::start().await;
    let sub = hub.subscribe(CRITERIA, &rx.url, true).await;
    hub.wait_status(&sub, "active").await;
    refuse().await;
    let write = embedded_writer(hub).await;
    let refused = envelope(&glucose("refused-1"), "create").to_string();
    let spooled = envelope(&glucose("refused-2"), "create").to_string();
    write(vec![
        (b"Observation/refused-1".to_vec(), refused.into_bytes()),
        (b"spool-me".to_vec(), spooled.clone().into_bytes()),
    ])
    .await;
    let (status, body) = hub
        .post_json("/events", &envelope(&glucose("after"), "create"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/after");
    rx.assert_quiet(Duration::from_millis(300)).await;

    let q = quarantined(hub, 1).await;
    assert_eq!(q["total"], 1, "{q}");
    let item = &q["items"][0];
    assert_eq!(
        (item["stage"].as_str(), item["key"].as_str()),
        (Some("store"), Some("Observation/refused-1")),
        "{item}"
    );
    assert!(
        item["reason"].as_str().unwrap().contains("refused"),
        "{item}"
    );
    // the matcher moved on (and so wrote the spool before this batch)
    let (status, body) = hub
        .post_json("/events", &envelope(&glucose("later"), "create"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/later");
    let spool = std::fs::read_to_string(hub.data_dir.path().join("quarantine-spool.ndjson"))
        .expect("the spool file");
    let lines: Vec<Value> = spool
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{spool}");
    assert_eq!(lines[0]["key"], "spool-me");
    assert_eq!(lines[0]["stage"], "store");
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("fhir_hub_events_parked_total{outcome=\"spooled\"} 1"),
        "{metrics}"
    );
    let (status, ready) = hub.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_record_the_store_refuses_is_set_aside() {
    let hub = Hub::start(HubEnv::default()).await;
    let db = hub.data_dir.path().join("hub.db");
    store_refusals_are_set_aside(&hub, async || {
        let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        for sql in [
            "CREATE TRIGGER refuse BEFORE INSERT ON logged_events
             WHEN NEW.focus_id LIKE 'refused%' BEGIN SELECT RAISE(ABORT, 'refused'); END",
            "CREATE TRIGGER refuse_q BEFORE INSERT ON quarantined_events
             WHEN NEW.record_key = 'spool-me' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        ] {
            sqlx::query(sql).execute(&raw).await.unwrap();
        }
        raw.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_record_the_store_refuses_is_set_aside() {
    let Some((env, url)) = postgres_env("refuse").await else {
        return;
    };
    let hub = Hub::start(env).await;
    store_refusals_are_set_aside(&hub, async || {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        for sql in [
            "ALTER TABLE logged_events ADD CONSTRAINT refuse CHECK (focus_id NOT LIKE 'refused%')",
            "ALTER TABLE quarantined_events ADD CONSTRAINT refuse_q
             CHECK (record_key IS DISTINCT FROM 'spool-me')",
        ] {
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
    })
    .await;
}
