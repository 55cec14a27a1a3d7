//! Roles in separate processes sharing PostgreSQL: one api+matcher process and two
//! delivery processes. Each notification is delivered once (leases), and when the delivery
//! process holding the subscriptions is killed, the other takes over.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::{Headless, Hub, HubEnv, glucose, require_external};
use crate::receiver::TestReceiver;

/// Hubs on a PostgreSQL schema of their own; `None` (the test skips) without
/// `FHIR_HUB_TEST_DATABASE_URL`.
async fn on_fresh_schema(prefix: &str) -> Option<HubEnv> {
    let pg = require_external("FHIR_HUB_TEST_DATABASE_URL")?;
    let db = hub_store::fresh_postgres_schema(&pg, prefix).await.unwrap();
    Some(HubEnv::default().arg("--database-url").arg(&db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_processes_share_subscriptions_and_take_over() {
    let Some(base) = on_fresh_schema("multi").await else {
        return;
    };
    let base = base.var("HUB_DELIVERY__LEASE_TTL_MS", "2000");
    let api = Hub::start(base.clone().arg("--roles").arg("api,matcher")).await;
    let delivery = base.clone().arg("--roles").arg("delivery");
    let mut first = Headless::start(&delivery);

    let mut rx = TestReceiver::start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            api.subscribe("Observation?code=2345-7", &rx.url, true)
                .await,
        );
    }
    for id in &ids {
        api.wait_status(id, "active").await;
    }
    // The second delivery process starts after the first holds every lease.
    let _second = Headless::start(&delivery);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut seen = HashSet::new();
    for i in 0..3 {
        api.post_json("/events", &glucose(&format!("mp{i}"))).await;
    }
    for _ in 0..15 {
        let r = rx.next(Duration::from_secs(20)).await;
        let id = r.headers["webhook-id"].to_str().unwrap().to_owned();
        assert!(seen.insert(id), "a notification was delivered twice");
    }
    rx.assert_quiet(Duration::from_millis(1000)).await;

    // The process holding the leases dies without releasing them.
    let _ = first.child.kill();
    let _ = first.child.wait();
    for i in 3..5 {
        api.post_json("/events", &glucose(&format!("mp{i}"))).await;
    }
    for _ in 0..10 {
        let r = rx.next(Duration::from_secs(30)).await;
        let id = r.headers["webhook-id"].to_str().unwrap().to_owned();
        assert!(seen.insert(id), "a notification was delivered twice");
    }
    assert_eq!(seen.len(), 25);
}

/// A subscription written through one process starts delivering in a delivery process of
/// its own at once: the write's `NOTIFY` wakes it, not its next poll (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_written_elsewhere_wakes_delivery_at_once() {
    let Some(base) = on_fresh_schema("written").await else {
        return;
    };
    let base = base
        .var("HUB_DELIVERY__POLL_MS", "30000")
        .var("HUB_DELIVERY__LEASE_TTL_MS", "120000");
    let api = Hub::start(base.clone().arg("--roles").arg("api,matcher")).await;
    let _delivery = Headless::start(&base.clone().arg("--roles").arg("delivery"));
    // the delivery process's first pass (at start) is over
    tokio::time::sleep(Duration::from_millis(2000)).await;

    let mut rx = TestReceiver::start().await;
    let t = std::time::Instant::now();
    let id = api
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    // active: its handshake was answered
    api.wait_status(&id, "active").await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "active after {:?}: the delivery process waited for its poll",
        t.elapsed()
    );
    api.post_json("/events", &glucose("written-1")).await;
    let r = rx.next(Duration::from_secs(10)).await;
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("written-1"), "{body}");
}

/// A delivery process added to a running cluster takes a share of the subscriptions: the
/// first hands idle ones back down to its share and the new one claims them (before: every
/// lease stayed with the first process, and the second sat idle for ever). Each
/// notification is still delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_process_added_later_takes_its_share() {
    let Some(pg) = require_external("FHIR_HUB_TEST_DATABASE_URL") else {
        return;
    };
    let db = hub_store::fresh_postgres_schema(&pg, "rebalance")
        .await
        .unwrap();
    let base = HubEnv::default()
        .arg("--database-url")
        .arg(&db)
        .var("HUB_DELIVERY__LEASE_TTL_MS", "2000")
        .var("HUB_DELIVERY__PARK_IDLE_AFTER_MS", "200");
    let api = Hub::start(base.clone().arg("--roles").arg("api,matcher")).await;
    let delivery = base.clone().arg("--roles").arg("delivery");
    let _first = Headless::start(&delivery);
    let mut rx = TestReceiver::start().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            api.subscribe("Observation?code=2345-7", &rx.url, true)
                .await,
        );
    }
    for id in &ids {
        api.wait_status(id, "active").await;
    }
    let raw = sqlx::PgPool::connect(&db).await.unwrap();
    let counts = || async {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT owner, count(*) FROM delivery_leases GROUP BY owner ORDER BY 2")
                .fetch_all(&raw)
                .await
                .unwrap();
        rows.into_iter().map(|(_, n)| n).collect::<Vec<i64>>()
    };
    assert_eq!(
        counts().await,
        vec![6],
        "the first process holds every lease"
    );

    let _second = Headless::start(&delivery);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = counts().await;
        if now == vec![3, 3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leases per delivery process after 60 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut seen = HashSet::new();
    for i in 0..2 {
        api.post_json("/events", &glucose(&format!("rb{i}"))).await;
    }
    for _ in 0..12 {
        let r = rx.next(Duration::from_secs(30)).await;
        let id = r.headers["webhook-id"].to_str().unwrap().to_owned();
        assert!(seen.insert(id), "a notification was delivered twice");
    }
    rx.assert_quiet(Duration::from_millis(1000)).await;
    assert_eq!(counts().await, vec![3, 3], "the share stays put");
}
