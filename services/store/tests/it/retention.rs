//! Retention and the gaps it may leave, on every backend, with a second connection to the
//! same database for what the store's API cannot do (age rows, take one out).

use hub_store::Store;
use sqlx::AnyPool;

use crate::contract::{note, write};

/// The event numbers `sub` reads after `after`.
async fn numbers(store: &Store, sub: &str, after: i64) -> Vec<i64> {
    let Some(row) = store.get_subscription("default", sub).await.unwrap() else {
        return Vec::new();
    };
    store
        .notifications_after(row.log_key, after, 1000)
        .await
        .unwrap()
        .iter()
        .map(|n| n.event_number)
        .collect()
}

/// The log key of `sub`'s incarnation.
async fn key(store: &Store, sub: &str) -> hub_store::LogKey {
    store
        .get_subscription("default", sub)
        .await
        .unwrap()
        .unwrap()
        .log_key
}

async fn run(raw: &AnyPool, sql: &str) {
    sqlx::query(sql).execute(raw).await.unwrap();
}

async fn count(raw: &AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(raw)
        .await
        .unwrap()
}

async fn stream_subscription(store: &Store, id: &str) {
    let mut w = write("active");
    w.channel_type = "websocket".into();
    store.create_subscription("default", id, &w).await.unwrap();
}

/// A number missing inside the log (its row purged, or its event gone) ends a read there:
/// the next read starts above it, where the reader sees its history is gone. It is never
/// skipped inside a batch.
pub(crate) async fn a_read_stops_at_a_missing_number(store: Store, raw: AnyPool) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let batch: Vec<_> = (1..=6).map(|i| note("s1", &format!("e{i}"))).collect();
    store.append_notifications(&batch).await.unwrap();
    // a notification taken out of the middle
    run(&raw, "DELETE FROM notification_log WHERE event_number = 3").await;
    assert_eq!(numbers(&store, "s1", 0).await, [1, 2]);
    assert_eq!(
        numbers(&store, "s1", 2).await,
        [4, 5, 6],
        "starts above the gap"
    );
    // a notification whose event is gone (what a purge racing an append used to leave)
    run(&raw, "DELETE FROM logged_events WHERE event_id = 'e5'").await;
    assert_eq!(numbers(&store, "s1", 3).await, [4]);
    assert_eq!(numbers(&store, "s1", 4).await, [6]);
}

/// An event first logged long ago and logged again now (for a subscription created since)
/// is as new as its newest notification: retention by age does not take that one at once.
pub(crate) async fn an_event_logged_again_is_kept_as_long_as_a_new_one(store: Store, raw: AnyPool) {
    stream_subscription(&store, "old").await;
    stream_subscription(&store, "new").await;
    store
        .append_notifications(&[note("old", "e1")])
        .await
        .unwrap();
    run(
        &raw,
        "UPDATE logged_events SET logged_at = '2000-01-01T00:00:00Z'",
    )
    .await;
    let logged = store
        .append_notifications(&[note("new", "e1")])
        .await
        .unwrap();
    assert_eq!(logged.len(), 1);
    store
        .purge_notifications("2001-01-01T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(
        numbers(&store, "new", 0).await,
        [1],
        "logged now, purged at once"
    );
}

/// Retention a few rows per statement: the same outcome as in one go, whatever the batch.
pub(crate) async fn retention_in_small_batches_purges_what_it_should(store: Store, raw: AnyPool) {
    store
        .create_subscription("default", "hook", &write("active"))
        .await
        .unwrap();
    stream_subscription(&store, "ws").await;
    stream_subscription(&store, "recent").await;
    let mut batch = Vec::new();
    for i in 1..=10 {
        batch.push(note("hook", &format!("e{i}")));
        batch.push(note("ws", &format!("e{i}")));
    }
    store.append_notifications(&batch).await.unwrap();
    run(
        &raw,
        "UPDATE logged_events SET logged_at = '2000-01-01T00:00:00Z'",
    )
    .await;
    // events of the same instant and of later ones, and one that is not old
    run(
        &raw,
        "UPDATE logged_events SET logged_at = '2000-01-02T00:00:00Z' WHERE event_id IN ('e9', 'e10')",
    )
    .await;
    store
        .append_notifications(&[note("recent", "fresh")])
        .await
        .unwrap();
    store
        .record_delivered(key(&store, "hook").await, 5)
        .await
        .unwrap();
    let purged = store
        .purge_notifications_by("2001-01-01T00:00:00Z", 3)
        .await
        .unwrap();
    assert_eq!(
        purged,
        5 + 10,
        "the delivered rest-hook ones and every stream one"
    );
    assert_eq!(numbers(&store, "hook", 0).await, [6, 7, 8, 9, 10]);
    assert!(numbers(&store, "ws", 0).await.is_empty());
    assert_eq!(numbers(&store, "recent", 0).await, [1]);
    assert_eq!(
        count(&raw, "SELECT COUNT(*) FROM logged_events").await,
        6,
        "e6..e10 (undelivered) and the recent one; the rest had no notification left"
    );
    assert_eq!(
        store
            .purge_notifications_by("2001-01-01T00:00:00Z", 1)
            .await
            .unwrap(),
        0,
        "nothing more to purge"
    );
    store
        .record_delivered(key(&store, "hook").await, 10)
        .await
        .unwrap();
    assert_eq!(
        store
            .purge_notifications_by("2001-01-01T00:00:00Z", 2)
            .await
            .unwrap(),
        5
    );
    assert_eq!(count(&raw, "SELECT COUNT(*) FROM logged_events").await, 1);
}

/// A purge running while the same events are logged again for other subscriptions never
/// leaves a notification without its event: every one logged reads back, in order.
pub(crate) async fn purges_racing_appends_leave_no_hole(store: Store, _raw: AnyPool) {
    stream_subscription(&store, "ws").await;
    store
        .create_subscription("default", "hook", &write("active"))
        .await
        .unwrap();
    let rounds = 150;
    for i in 0..rounds {
        let event = format!("e{i}");
        // the event is stored, and its only notification is purgeable at once
        store
            .append_notifications(&[note("ws", &event)])
            .await
            .unwrap();
        let again = [note("hook", &event)];
        let purge = store.purge_notifications("9999-12-31T00:00:00Z");
        let append = store.append_notifications(&again);
        let (purged, appended) = tokio::join!(purge, append);
        purged.unwrap();
        assert_eq!(appended.unwrap().len(), 1);
    }
    let read = numbers(&store, "hook", 0).await;
    assert_eq!(read.len(), rounds, "{read:?}");
}

/// A reader starting "at a time" starts at the first retained event logged at or after it
/// (`first_logged_since`, the hub's `from=<instant>`); a purged one is not found any more.
pub(crate) async fn a_start_at_a_time_is_the_first_event_logged_then_or_later(
    store: Store,
    raw: AnyPool,
) {
    stream_subscription(&store, "s1").await;
    let batch: Vec<_> = (1..=4).map(|i| note("s1", &format!("e{i}"))).collect();
    store.append_notifications(&batch).await.unwrap();
    for (event, at) in [
        ("e1", "2026-01-01T00:00:00Z"),
        ("e2", "2026-01-02T00:00:00Z"),
        ("e3", "2026-01-03T00:00:00Z"),
        ("e4", "2026-01-04T00:00:00Z"),
    ] {
        run(
            &raw,
            &format!("UPDATE logged_events SET logged_at = '{at}' WHERE event_id = '{event}'"),
        )
        .await;
    }
    let k = key(&store, "s1").await;
    let at = |t: &'static str| {
        let store = store.clone();
        async move { store.first_logged_since(k, t).await.unwrap() }
    };
    assert_eq!(at("2025-12-31T00:00:00Z").await, Some(1));
    assert_eq!(at("2026-01-02T00:00:00Z").await, Some(2), "at the instant");
    assert_eq!(at("2026-01-02T12:00:00Z").await, Some(3));
    assert_eq!(at("2026-02-01T00:00:00Z").await, None, "after the last");
    store
        .purge_notifications("2026-01-03T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(
        at("2025-12-31T00:00:00Z").await,
        Some(3),
        "purged ones are gone"
    );
}
