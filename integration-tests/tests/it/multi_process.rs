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

/// Every role is observable: a matcher-only and a delivery-only process (Kafka, PostgreSQL)
/// each answer `/health`, `/ready` and `/metrics` on an admin listener of their own (a free
/// loopback port printed at start, no `admin.listen` set), and each process's metrics count
/// its own work: the matcher consumed and logged, the delivery process delivered, with the
/// latency histograms of both. Before, these processes bound no port at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_answer_health_ready_and_metrics_on_their_admin_listener() {
    let Some(brokers) = require_external("FHIR_HUB_TEST_KAFKA") else {
        return;
    };
    let Some(base) = on_fresh_schema("admin").await else {
        return;
    };
    let topic = format!("fhir.changes.{}", uuid::Uuid::new_v4().simple());
    let base = base
        .arg("--kafka-brokers")
        .arg(&brokers)
        .var("HUB_LOG__CHANGES_TOPIC", &topic)
        .var("HUB_KAFKA__PARTITIONS", "2")
        .var("HUB_KAFKA__MATCHER_GROUP", &format!("g-{topic}"));
    let api = Hub::start(base.clone().arg("--roles").arg("api")).await;
    let matcher = Headless::start(&base.clone().arg("--roles").arg("matcher"));
    let delivery = Headless::start(&base.clone().arg("--roles").arg("delivery"));
    let http = reqwest::Client::new();
    let (matcher_url, delivery_url) = (matcher.admin_url().await, delivery.admin_url().await);
    for url in [&matcher_url, &delivery_url] {
        for path in ["/health", "/ready"] {
            let res = http.get(format!("{url}{path}")).send().await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(status, 200, "{url}{path}: {body}");
            assert_eq!(body["status"], "pass", "{url}{path}: {body}");
        }
    }

    let mut rx = TestReceiver::start().await;
    let id = api
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    api.wait_status(&id, "active").await;
    for i in 0..3 {
        api.post_json("/events", &glucose(&format!("adm{i}"))).await;
    }
    for _ in 0..3 {
        rx.next(Duration::from_secs(30)).await;
    }
    let scrape = |url: String| {
        let http = http.clone();
        async move {
            let res = http.get(format!("{url}/metrics")).send().await.unwrap();
            assert_eq!(
                res.status().as_u16(),
                200,
                "{url}/metrics asks no credential"
            );
            let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
            res.text().await.unwrap()
        }
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    // the delivery process records progress after the answer: give its metrics a moment
    let mut delivered = String::new();
    for _ in 0..50 {
        delivered = scrape(delivery_url.clone()).await;
        if value(
            &delivered,
            "fhir_hub_logged_to_delivered_seconds_count{channel=\"rest-hook\"}",
        ) >= 3.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        value(
            &delivered,
            "fhir_hub_delivery_attempts_total{outcome=\"delivered\"}"
        ) >= 4.0,
        "a handshake and three notifications:\n{delivered}"
    );
    assert!(
        value(
            &delivered,
            "fhir_hub_logged_to_delivered_seconds_count{channel=\"rest-hook\"}"
        ) >= 3.0,
        "{delivered}"
    );
    assert!(
        delivered.contains("process_resident_memory_bytes"),
        "{delivered}"
    );
    assert_eq!(
        value(&delivered, "fhir_hub_events_consumed_total"),
        0.0,
        "{delivered}"
    );

    let matched = scrape(matcher_url.clone()).await;
    assert!(
        value(&matched, "fhir_hub_events_consumed_total") >= 3.0,
        "{matched}"
    );
    assert_eq!(
        value(&matched, "fhir_hub_notifications_logged_total"),
        3.0,
        "{matched}"
    );
    assert!(
        value(&matched, "fhir_hub_publish_to_logged_seconds_count") >= 3.0,
        "{matched}"
    );
    assert!(
        value(&matched, "fhir_hub_match_batch_seconds_count") >= 1.0,
        "{matched}"
    );
    assert!(
        matched.contains("fhir_hub_consumer_lag{partition=\"0\"}")
            && matched.contains("fhir_hub_consumer_lag{partition=\"1\"}"),
        "lag per partition:\n{matched}"
    );
    // the api process counts its own requests, by route template (never a raw id)
    let text = api.metrics().await;
    assert!(
        text.contains("fhir_hub_http_request_duration_seconds_count{method=\"POST\",route=\"/events\",status=\"2xx\"}"),
        "{text}"
    );
    assert!(
        !text.contains(&id),
        "no subscription id in a label:\n{text}"
    );
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
