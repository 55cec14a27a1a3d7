//! No reader waits only on wake-ups: a notification logged without one (as when a `LISTEN`
//! connection goes silent) still reaches the reader, at its next safety read.

use std::time::Duration;

use fhir_hub::channels::stream::{Item, SubscriptionStream};
use tokio_util::sync::CancellationToken;

use crate::spawn_hub_with;

#[tokio::test]
async fn a_reader_finds_what_was_logged_without_a_wake_up() {
    let t = spawn_hub_with(|c| c.database.safety_read_ms = 200).await;
    let hub = &t.hub;
    let sub = crate::websocket_subscription(hub).await;
    let mut stream = SubscriptionStream::open(hub, &sub, 0);
    let stop = CancellationToken::new();
    let reader = tokio::spawn(async move {
        let got = stream.next(10, None, &stop).await;
        (got, stream)
    });
    // the reader has looked (nothing yet) and waits
    tokio::time::sleep(Duration::from_millis(100)).await;
    // logged behind the wake-ups' back: no watch moves
    let note = hub_store::NewNotification {
        tenant: "default".into(),
        subscription_id: "s1".into(),
        event_id: "e1".into(),
        action: "create".into(),
        focus_type: "Observation".into(),
        focus_id: "o1".into(),
        focus_version: None,
        occurred_at: "2024-01-01T00:00:00Z".into(),
        resource: None,
    };
    hub.store.append_notifications(&[note]).await.unwrap();
    let (got, _stream) = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the reader waited only on a wake-up that never came")
        .unwrap();
    match got {
        Some(Ok(Item::Notifications(n))) => assert_eq!(n[0].event_number, 1),
        other => panic!("{other:?}"),
    }
}
