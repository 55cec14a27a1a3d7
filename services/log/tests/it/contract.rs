//! Behaviour every [`EventLog`] backend must show.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use hub_log::{Consumed, EventLog, LogConsumer, Record};

pub(crate) async fn publish_n(log: &dyn EventLog, topic: &str, range: Range<u32>) {
    let records: Vec<Record> = range
        .map(|i| Record {
            key: "Observation/1".into(),
            payload: i.to_string().into_bytes(),
        })
        .collect();
    log.publish(topic, &records).await.unwrap();
}

/// Poll until `n` records arrived (a group join on a real broker takes seconds).
pub(crate) async fn collect(c: &mut dyn LogConsumer, n: usize) -> Vec<Consumed> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records",
            out.len()
        );
        out.extend(
            c.poll(n - out.len(), Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    out
}

fn payloads(v: &[Consumed]) -> Vec<String> {
    v.iter()
        .map(|c| String::from_utf8_lossy(&c.payload).into_owned())
        .collect()
}

pub(crate) async fn publishes_and_consumes_in_key_order(log: Arc<dyn EventLog>, topic: &str) {
    log.create_topics(&[topic]).await.unwrap();
    log.create_topics(&[topic]).await.unwrap(); // idempotent
    publish_n(&*log, topic, 0..20).await;
    let mut c = log.consumer(topic, "g1").await.unwrap();
    let got = collect(&mut *c, 20).await;
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&got), expected);
    assert!(
        got.iter()
            .all(|r| r.key.as_deref() == Some("Observation/1"))
    );
    c.close().await.unwrap();
}

pub(crate) async fn unacked_records_are_redelivered_to_the_group(
    log: Arc<dyn EventLog>,
    topic: &str,
) {
    log.create_topics(&[topic]).await.unwrap();
    publish_n(&*log, topic, 0..10).await;
    let mut c = log.consumer(topic, "g").await.unwrap();
    let got = collect(&mut *c, 10).await;
    c.ack(&got[..4]).await.unwrap();
    c.close().await.unwrap();

    let mut c = log.consumer(topic, "g").await.unwrap();
    let again = collect(&mut *c, 6).await;
    let expected: Vec<String> = (4..10).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&again), expected);
    c.close().await.unwrap();
}

pub(crate) async fn groups_are_independent(log: Arc<dyn EventLog>, topic: &str) {
    log.create_topics(&[topic]).await.unwrap();
    publish_n(&*log, topic, 0..3).await;
    let mut a = log.consumer(topic, "a").await.unwrap();
    let got = collect(&mut *a, 3).await;
    a.ack(&got).await.unwrap();
    a.close().await.unwrap();
    let mut b = log.consumer(topic, "b").await.unwrap();
    assert_eq!(collect(&mut *b, 3).await.len(), 3);
    b.close().await.unwrap();
}

pub(crate) async fn dropping_a_consumer_mid_stream_does_not_hang(
    log: Arc<dyn EventLog>,
    topic: &str,
) {
    log.create_topics(&[topic]).await.unwrap();
    publish_n(&*log, topic, 0..50).await;
    let mut c = log.consumer(topic, "g").await.unwrap();
    let got = collect(&mut *c, 5).await;
    c.ack(&got).await.unwrap();
    // No close: the consumer is simply dropped with records still buffered.
    tokio::time::timeout(Duration::from_secs(20), async move { drop(c) })
        .await
        .expect("dropping a consumer hung");
}

/// A group's lag: everything for a group that never read, what it has not acknowledged
/// after it committed.
pub(crate) async fn lag_counts_what_the_group_has_not_acknowledged(
    log: Arc<dyn EventLog>,
    topic: &str,
) {
    log.create_topics(&[topic]).await.unwrap();
    publish_n(&*log, topic, 0..10).await;
    assert_eq!(log.lag(topic, "lagging").await.unwrap(), 10);
    let mut c = log.consumer(topic, "lagging").await.unwrap();
    let got = collect(&mut *c, 10).await;
    // one key, so one partition: acknowledging the first four leaves six
    c.ack(&got[..4]).await.unwrap();
    c.close().await.unwrap();
    assert_eq!(log.lag(topic, "lagging").await.unwrap(), 6);
    assert_eq!(log.lag(topic, "another").await.unwrap(), 10);
}

pub(crate) async fn health_reports_ok(log: Arc<dyn EventLog>, _topic: &str) {
    log.health().await.unwrap();
}
