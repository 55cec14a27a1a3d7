//! Positions fenced by incarnation, and a delivery that recovers on its own: a subscription
//! deleted and re-created with the same id is a new log; a worker that cannot start is tried
//! again; a retry schedule survives restarts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, glucose};
use crate::receiver::{NamedReceiver, TestReceiver};

const WAIT: Duration = Duration::from_secs(30);

fn rest_hook(id: &str, endpoint: &str) -> Value {
    json!({"resourceType": "Subscription", "id": id, "status": "requested", "reason": "e2e",
           "criteria": "Observation?code=2345-7",
           "channel": {"type": "rest-hook", "endpoint": endpoint,
                       "payload": "application/fhir+json"}})
}

/// The `delivery-state` part named `name` of a subscription's `$status`.
async fn delivery_part(hub: &Hub, id: &str, name: &str) -> Value {
    let (_, st) = hub.get(&format!("/fhir/Subscription/{id}/$status")).await;
    let params = &st["entry"][0]["resource"]["parameter"];
    let parts = params
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "delivery-state")
        .map(|p| p["part"].clone())
        .unwrap_or(Value::Null);
    parts
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Delete + re-create under load against a slow receiver: the old incarnation's worker is
/// still sending event 21 when the client deletes `s1` and puts it again; its progress
/// must not land on the new incarnation. The new one's numbers start at 1 and every one is
/// delivered (before the fix: `delivered-through 21`, nothing sent until event 22).
#[tokio::test]
async fn a_re_created_subscription_starts_at_one_and_loses_nothing() {
    let mut rx = TestReceiver::start().await;
    let hub = Hub::start(HubEnv::default()).await;
    let put = hub
        .put_json("/fhir/Subscription/s1", &rest_hook("s1", &rx.url), None)
        .await;
    assert!(put.status().is_success(), "{}", put.status());
    hub.wait_status("s1", "active").await;
    for i in 1..=20 {
        hub.post_json("/events", &glucose(&format!("old{i}"))).await;
    }
    for _ in 1..=20 {
        rx.next(WAIT).await;
    }
    // event 21 goes to a slow receiver; the client deletes and re-creates meanwhile
    rx.delay(Duration::from_secs(2));
    hub.post_json("/events", &glucose("old21")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deleted = hub
        .http
        .delete(format!("{}/fhir/Subscription/s1", hub.url))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let put = hub
        .put_json("/fhir/Subscription/s1", &rest_hook("s1", &rx.url), None)
        .await;
    assert!(put.status().is_success(), "{}", put.status());
    hub.wait_status("s1", "active").await;
    rx.delay(Duration::ZERO);
    for i in 1..=5 {
        hub.post_json("/events", &glucose(&format!("new{i}"))).await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let r = rx.next(WAIT).await;
        if let Some(id) = r.path.strip_prefix("/hook/Observation/new") {
            got.push(id.to_owned());
        }
    }
    got.sort();
    got.dedup();
    assert_eq!(got, ["1", "2", "3", "4", "5"], "every new event, once each");
    hub.wait_events("s1", 5).await;
    let through = delivery_part(&hub, "s1", "delivered-through").await;
    assert_eq!(
        through["valueString"], "5",
        "the new incarnation's numbers start at 1"
    );
}

/// A worker that cannot start (its endpoint's name resolves to a refused address) shows
/// `error` with the reason and is tried again with backoff: once the name points back, the
/// events logged meanwhile are delivered (before the fix: never retried, the lease held by
/// no worker).
#[tokio::test]
async fn a_worker_that_cannot_start_is_tried_again() {
    let Some(NamedReceiver {
        hosts,
        mut rx,
        endpoint,
        ..
    }) = NamedReceiver::start("start").await
    else {
        return;
    };
    let mut hub = Hub::start(HubEnv::default()).await;
    let id = hub
        .subscribe("Observation?code=2345-7", &endpoint, true)
        .await;
    hub.wait_status(&id, "active").await;
    // the hub restarts while the name points at an address it refuses (link-local)
    hub.terminate();
    assert!(hosts.point_to("169.254.169.254"));
    let dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);
    let hub = Hub::start_in(HubEnv::default(), dir).await;
    let sub = hub.wait_status(&id, "error").await;
    let error = sub.to_string();
    assert!(error.contains("endpoint refused"), "{sub}");
    hub.post_json("/events", &glucose("late1")).await;
    hub.wait_events(&id, 1).await;
    // the name points back: the next try starts the worker and the event arrives
    assert!(hosts.point_to("127.0.0.2"));
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/late1");
    hub.wait_status(&id, "active").await;
    drop(hosts);
}

/// A subscription failing across frequent restarts still reaches the end of its retry
/// schedule and turns `off`: each restart resumes the schedule where it was instead of
/// starting it again (before the fix: every restart tried at once and waited the first
/// interval again, so it never turned off).
#[tokio::test]
async fn a_retry_schedule_survives_restarts() {
    let rx = TestReceiver::start().await;
    // three attempts six seconds apart; the hub restarts every three seconds
    let env = HubEnv::default().var("HUB_DELIVERY__RETRY_SCHEDULE", r#"["0s","6s","6s"]"#);
    let mut hub = Hub::start(env.clone()).await;
    let id = hub
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    hub.wait_status(&id, "active").await;
    rx.respond_with(503);
    hub.post_json("/events", &glucose("failing")).await;
    // the pending retry is shown
    let deadline = std::time::Instant::now() + WAIT;
    while delivery_part(&hub, &id, "next-attempt").await.is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "no next-attempt in $status"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, sub) = hub.get(&format!("/fhir/Subscription/{id}")).await;
        if sub["status"] == "off" {
            return;
        }
        hub.terminate();
        let dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
        drop(hub);
        hub = Hub::start_in(env.clone(), dir).await;
    }
    let (_, sub) = hub.get(&format!("/fhir/Subscription/{id}")).await;
    panic!("never turned off across restarts: {sub}");
}

/// A worker whose progress is refused (another live process holds its lease now) stops,
/// and its process drops the lease and starts no worker until it holds it again (before the
/// fix: the loop restarted it at once, and it sent the same notification again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_progress_is_refused_is_not_restarted() {
    let Some(pg) = crate::harness::require_external("FHIR_HUB_TEST_DATABASE_URL") else {
        return;
    };
    let db = hub_store::fresh_postgres_schema(&pg, "refused")
        .await
        .unwrap();
    let hub = Hub::start(HubEnv::default().arg("--database-url").arg(&db)).await;
    let mut rx = TestReceiver::start().await;
    let id = hub
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    hub.wait_status(&id, "active").await;
    // another delivery process, alive, holds the lease now
    let raw = sqlx::PgPool::connect(&db).await.unwrap();
    for sql in [
        "INSERT INTO delivery_owners (owner, expires_at) VALUES ('intruder', 99999999999999)",
        "UPDATE delivery_leases SET owner = 'intruder'",
    ] {
        sqlx::query(sql).execute(&raw).await.unwrap();
    }
    hub.post_json("/events", &glucose("refused1")).await;
    let first = rx.next(WAIT).await;
    assert_eq!(first.path, "/hook/Observation/refused1");
    // its progress is refused: it stops, and is not started again beside the holder
    rx.assert_quiet(Duration::from_secs(3)).await;
}
