//! Wake-up benchmark (docs/benchmarks.md): how fast a reader in one process learns that a
//! matcher in another process logged a notification, and what idle subscriptions cost.
//!
//! `FHIR_HUB_TEST_DATABASE_URL=postgres://… cargo bench -p fhir-hub --bench wakeups`
//!
//! 1. Latency: this process opens one subscription stream (the reader, with the `LISTEN`
//!    task, as a delivery or API process runs it); a second OS process (this binary again,
//!    as the writer) logs notifications through the store as the matcher does, one every
//!    20 ms. Each notification's event id carries the writer's clock before the append; the
//!    reader subtracts it on receipt. p50/p95/p99/max are printed.
//! 2. Idle cost: 10,000 subscriptions, each with an open stream waiting for news, and no
//!    events: statements per second on the database (`pg_stat_database`), with the wake-ups
//!    as built, then with every reader forced to poll (the old design: one query per
//!    subscription per `delivery.poll_ms`), in the same run.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fhir_hub::channels::stream::{Item, SubscriptionStream};
use fhir_hub::channels::wake::Wakeups;
use hub_store::{NewNotification, Store, SubscriptionWrite};
use tokio_util::sync::CancellationToken;

const LATENCY_EVENTS: usize = 300;
const IDLE_SUBSCRIPTIONS: usize = 10_000;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn write(i: usize) -> SubscriptionWrite {
    SubscriptionWrite {
        status: "active".into(),
        criteria: "Observation?code=1".into(),
        channel_type: "websocket".into(),
        endpoint: String::new(),
        resource: format!(r#"{{"resourceType":"Subscription","reason":"bench {i}"}}"#),
        secret: None,
        client_certificate: None,
        owner: None,
    }
}

fn note(sub: &str, event_id: String) -> NewNotification {
    NewNotification {
        tenant: "default".into(),
        subscription_id: sub.into(),
        event_id,
        action: "create".into(),
        focus_type: "Observation".into(),
        focus_id: "o1".into(),
        focus_version: None,
        occurred_at: "2024-01-01T00:00:00Z".into(),
        resource: None,
    }
}

/// The writer process: log LATENCY_EVENTS notifications for subscription `lat`.
async fn writer(url: &str) {
    let store = Store::connect(url).await.unwrap();
    for i in 0..LATENCY_EVENTS {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let id = format!("{}-{i}", now_nanos());
        store
            .append_notifications(&[note("lat", id)])
            .await
            .unwrap();
    }
}

async fn statements(store: &Store) -> i64 {
    store.database_statements().await.unwrap()
}

fn config(url: &str, dir: &std::path::Path) -> fhir_hub::config::Config {
    let mut c = fhir_hub::config::Config::defaults().unwrap();
    c.database.url = url.to_owned();
    c.server.data_dir = dir.to_owned();
    c
}

/// Statements per second over `secs`, after `settle` seconds. PostgreSQL publishes an idle
/// connection's statistics up to 10 s late, so the settling time must cover the readers'
/// first reads (each reads its empty backlog once when it opens) plus that delay.
async fn idle_rate(store: &Store, settle: u64, secs: u64) -> f64 {
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let before = statements(store).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = statements(store).await;
    // minus the measuring statements themselves
    (after - before - 2).max(0) as f64 / secs as f64
}

#[tokio::main]
async fn main() {
    let Ok(base) = std::env::var("FHIR_HUB_TEST_DATABASE_URL") else {
        eprintln!("set FHIR_HUB_TEST_DATABASE_URL to a PostgreSQL server");
        return;
    };
    if let Ok(url) = std::env::var("WAKEUPS_BENCH_WRITER") {
        writer(&url).await;
        return;
    }
    let url = hub_store::fresh_postgres_schema(&base, "wake")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&url).await.unwrap();
    store
        .create_subscription("default", "lat", &write(0))
        .await
        .unwrap();

    // 1. cross-process latency
    let hub = fhir_hub::Hub::connect(config(&url, dir.path()))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(fhir_hub::channels::wake::listen(hub.clone(), stop.clone()));
    while *hub.wakeups.polling().borrow() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lat_sub = hub.subscriptions.get(&hub.store, "default", "lat").await;
    let lat_sub = lat_sub.unwrap().unwrap();
    let mut stream = SubscriptionStream::open(&hub, &lat_sub, 0);
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .env("WAKEUPS_BENCH_WRITER", &url)
        .arg("--bench")
        .spawn()
        .unwrap();
    let mut lat = Vec::with_capacity(LATENCY_EVENTS);
    while lat.len() < LATENCY_EVENTS {
        match stream.next(100, None, &stop).await {
            Some(Ok(Item::Notifications(notes))) => {
                let got = now_nanos();
                for n in notes {
                    let sent: u128 = n.event_id.split('-').next().unwrap().parse().unwrap();
                    lat.push(got.saturating_sub(sent) as f64 / 1e6);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    child.wait().unwrap();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "cross-process wake-up (writer process → LISTEN/NOTIFY → reader stream), {} events: \
         p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        q(0.50),
        q(0.95),
        q(0.99),
        lat[lat.len() - 1]
    );

    // 2. idle subscriptions
    for i in 0..IDLE_SUBSCRIPTIONS {
        store
            .create_subscription("default", &format!("idle{i}"), &write(i))
            .await
            .unwrap();
    }
    let run_readers = |hub: fhir_hub::Hub, stop: CancellationToken| {
        for i in 0..IDLE_SUBSCRIPTIONS {
            let (hub, stop) = (hub.clone(), stop.clone());
            tokio::spawn(async move {
                let id = format!("idle{i}");
                let sub = hub.subscriptions.get(&hub.store, "default", &id).await;
                let mut s = SubscriptionStream::open(&hub, &sub.unwrap().unwrap(), 0);
                while let Some(Ok(_)) = s.next(100, None, &stop).await {}
            });
        }
    };
    let readers = stop.child_token();
    run_readers(hub.clone(), readers.clone());
    let woken = idle_rate(&store, 25, 20).await;
    readers.cancel();
    println!(
        "{IDLE_SUBSCRIPTIONS} idle subscriptions, per-subscription wake-ups: {woken:.1} statements/s on the database"
    );
    // the old design: every reader polls every delivery.poll_ms
    let mut polling = hub.clone();
    polling.wakeups = Arc::new(Wakeups::new(true));
    let readers = stop.child_token();
    run_readers(polling, readers.clone());
    let polled = idle_rate(&store, 15, 10).await;
    readers.cancel();
    println!(
        "{IDLE_SUBSCRIPTIONS} idle subscriptions, polling every {} ms (the design before): {polled:.1} statements/s",
        hub.config.delivery.poll_ms
    );
    stop.cancel();
}
