//! Retention purge at scale on PostgreSQL: the statements retention ran before migration 0019
//! against the batched purge, on the same generated data. Not a test (it takes minutes and
//! gigabytes); run it by hand:
//!
//! ```text
//! FHIR_HUB_TEST_DATABASE_URL=postgres://... \
//!   cargo run --release -p hub-store --example purge_bench -- [rows] [old-timeout-secs]
//! ```
//!
//! `rows` notification rows (default 10,000,000) are spread over five subscriptions (four
//! websocket, one rest-hook that delivered everything), so `rows / 5` events; the older half
//! of the events is past the cut-off. Each side gets a schema of its own, filled with
//! `generate_series`; "before" drops the indexes 0019 added, as the old schema had none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hub_store::{Store, SubscriptionWrite};
use sqlx::PgPool;

const SUBSCRIPTIONS: i64 = 5;

fn write(channel: &str) -> SubscriptionWrite {
    SubscriptionWrite {
        status: "active".into(),
        criteria: "Observation?code=1".into(),
        channel_type: channel.into(),
        endpoint: "http://example.test/hook".into(),
        resource: r#"{"resourceType":"Subscription"}"#.into(),
        secret: Some("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".into()),
        client_certificate: None,
        owner: None,
    }
}

/// A fresh schema with `events` events logged for five subscriptions; the cut-off instant.
async fn fill(base: &str, prefix: &str, events: i64) -> (Store, PgPool, String) {
    let url = hub_store::fresh_postgres_schema(base, prefix)
        .await
        .unwrap();
    let store = Store::connect(&url).await.unwrap();
    for i in 0..SUBSCRIPTIONS {
        let channel = if i == 0 { "rest-hook" } else { "websocket" };
        store
            .create_subscription("default", &format!("s{i}"), &write(channel))
            .await
            .unwrap();
    }
    let raw = PgPool::connect(&url).await.unwrap();
    let t = Instant::now();
    // one event a second from 2000-01-01 on
    let at = "to_char(timestamp '2000-01-01' + g * interval '1 second', \
              'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
    sqlx::query(&format!(
        "INSERT INTO logged_events (seq, tenant, event_id, action, focus_type, focus_id,
             focus_version, occurred_at, logged_at, resource)
         SELECT g, 'default', 'e' || g, 'update', 'Observation', 'o' || (g % 1000), '1',
             {at}, {at}, '{{\"resourceType\":\"Observation\"}}'
         FROM generate_series(1, $1) g"
    ))
    .bind(events)
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO notification_log (log_key, event_number, event_seq)
         SELECT s.log_key, g, g FROM generate_series(1, $1) g CROSS JOIN subscriptions s",
    )
    .bind(events)
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query("UPDATE subscriptions SET events_since_start = $1")
        .bind(events)
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO delivery_state (tenant, subscription_id, delivered_through)
         VALUES ('default', 's0', $1) ON CONFLICT (tenant, subscription_id)
         DO UPDATE SET delivered_through = excluded.delivered_through",
    )
    .bind(events)
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&raw).await.unwrap();
    let cutoff: String = sqlx::query_scalar(&format!(
        "SELECT {} FROM (SELECT $1::bigint / 2 AS g) half",
        at
    ))
    .bind(events)
    .fetch_one(&raw)
    .await
    .unwrap();
    eprintln!(
        "{prefix}: {} notification rows, {events} events, filled in {:.1?}",
        events * SUBSCRIPTIONS,
        t.elapsed()
    );
    (store, raw, cutoff)
}

/// What retention ran before: two statements, the second with `NOT IN`.
async fn old_purge(raw: &PgPool, before: &str, limit: Duration) -> Result<u64, sqlx::Error> {
    let mut tx = raw.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = {}",
        limit.as_millis()
    ))
    .execute(&mut *tx)
    .await?;
    let n = sqlx::query(
        "DELETE FROM notification_log
         WHERE event_seq IN (SELECT seq FROM logged_events WHERE logged_at < $1)
         AND (NOT EXISTS (SELECT 1 FROM subscriptions s
                  WHERE s.log_key = notification_log.log_key AND s.channel_type = 'rest-hook')
              OR event_number <= (SELECT d.delivered_through FROM subscriptions s
                  JOIN delivery_state d ON d.tenant = s.tenant AND d.subscription_id = s.id
                  WHERE s.log_key = notification_log.log_key))",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    eprintln!("before: the first statement (notifications) is done");
    sqlx::query(
        "DELETE FROM logged_events WHERE logged_at < $1
         AND seq NOT IN (SELECT event_seq FROM notification_log)",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(n)
}

#[tokio::main]
async fn main() {
    let base = std::env::var("FHIR_HUB_TEST_DATABASE_URL")
        .expect("FHIR_HUB_TEST_DATABASE_URL names the PostgreSQL to fill");
    let mut args = std::env::args().skip(1);
    let rows: i64 = args.next().map_or(10_000_000, |a| a.parse().unwrap());
    let limit = Duration::from_secs(args.next().map_or(600, |a| a.parse().unwrap()));
    let events = rows / SUBSCRIPTIONS;

    // PURGE_BENCH_AFTER=1: only the batched purge
    let after_only = std::env::var("PURGE_BENCH_AFTER").is_ok_and(|v| v == "1");
    if !after_only {
        before(&base, events, limit).await;
    }
    let (store, raw, cutoff) = fill(&base, "bench_after", events).await;
    let t = Instant::now();
    let n = store.purge_notifications(&cutoff).await.unwrap();
    println!(
        "after: purged {n} notifications in {:.1?} (batches of {})",
        t.elapsed(),
        hub_store::RETENTION_BATCH
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM logged_events")
        .fetch_one(&raw)
        .await
        .unwrap();
    println!("after: {left} events left of {events}");
    drop_schema(&raw).await;
}

/// Drop the schema `raw` works in (the rows take gigabytes).
async fn drop_schema(raw: &PgPool) {
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(raw)
        .await
        .unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(raw)
        .await
        .unwrap();
    raw.close().await;
}

async fn before(base: &str, events: i64, limit: Duration) {
    let (_store, raw, cutoff) = fill(base, "bench_before", events).await;
    for index in ["logged_events_logged_at", "notification_log_event_seq"] {
        sqlx::query(&format!("DROP INDEX {index}"))
            .execute(&raw)
            .await
            .unwrap();
    }
    let t = Instant::now();
    match old_purge(&raw, &cutoff, limit).await {
        Ok(n) => println!("before: purged {n} notifications in {:.1?}", t.elapsed()),
        Err(e) => println!("before: did not finish: {e} after {:.1?}", t.elapsed()),
    }
    drop_schema(&raw).await;
}
