//! One read of a subscription's log loads a bounded number of rows, whatever a channel asks
//! for (a websocket asked its outbox × `backport-max-count`: up to a million rows per read).

use fhir_hub::channels::stream::{Item, MAX_READ, SubscriptionStream};
use tokio_util::sync::CancellationToken;

use crate::spawn_hub_with;

#[tokio::test]
async fn a_read_loads_at_most_max_read_rows() {
    // a byte budget that would take everything: only the row bound applies
    let t = spawn_hub_with(|c| c.streams.max_buffer_bytes = 1 << 30).await;
    let hub = &t.hub;
    let sub = crate::websocket_subscription(hub).await;
    let notes: Vec<_> = (0..MAX_READ + 500)
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
        .collect();
    hub.store.append_notifications(&notes).await.unwrap();
    let mut stream = SubscriptionStream::open(hub, &sub, 0);
    let stop = CancellationToken::new();
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < MAX_READ + 500 {
        match stream.next(1_024 * 1_000, None, &stop).await {
            Some(Ok(Item::Notifications(n))) => sizes.push(n.len()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sizes, [MAX_READ, 500]);
}
