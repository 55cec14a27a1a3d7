//! The stream core's maximum lag (`streams.max_lag_events`): a reader that was live and fell
//! further behind its subscription's head is told so once; a reader replaying an older
//! backlog is not held to it.

use fhir_hub::channels::stream::{Item, SubscriptionStream};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::spawn_hub_with;

fn notes(from: usize, n: usize) -> Vec<hub_store::NewNotification> {
    (from..from + n)
        .map(|i| hub_store::NewNotification {
            tenant: "default".into(),
            subscription_id: "s1".into(),
            event_id: format!("e{i}"),
            action: "create".into(),
            focus_type: "Observation".into(),
            focus_id: format!("o{i}"),
            focus_version: None,
            occurred_at: "2024-01-01T00:00:00Z".into(),
            resource: None,
        })
        .collect()
}

#[tokio::test]
async fn a_live_reader_that_falls_behind_is_told_and_a_replaying_one_is_not() {
    let t = spawn_hub_with(|c| c.streams.max_lag_events = 5).await;
    let hub = &t.hub;
    let sub = crate::websocket_subscription(hub).await;
    let stop = CancellationToken::new();
    let soon = || Some(Instant::now() + Duration::from_millis(50));

    // a live reader at the head
    let mut live = SubscriptionStream::open(hub, &sub, 0);
    assert!(matches!(
        live.next(100, soon(), &stop).await,
        Some(Ok(Item::Quiet))
    ));
    // three logged: within the limit, read as usual
    let logged = hub.store.append_notifications(&notes(0, 3)).await.unwrap();
    hub.wakeups.logged_here(&logged);
    match live.next(100, soon(), &stop).await {
        Some(Ok(Item::Notifications(n))) => assert_eq!(n.len(), 3),
        other => panic!("{other:?}"),
    }
    // ten more while it does not read: more than five behind
    let logged = hub.store.append_notifications(&notes(3, 10)).await.unwrap();
    hub.wakeups.logged_here(&logged);
    match live.next(100, soon(), &stop).await {
        Some(Ok(Item::Lagging { behind })) => assert_eq!(behind, 10),
        other => panic!("{other:?}"),
    }

    // a reader replaying from the start is thirteen behind, and reads its backlog
    let mut replay = SubscriptionStream::open(hub, &sub, 0);
    match replay.next(100, soon(), &stop).await {
        Some(Ok(Item::Notifications(n))) => assert_eq!(n.len(), 13),
        other => panic!("{other:?}"),
    }
}
