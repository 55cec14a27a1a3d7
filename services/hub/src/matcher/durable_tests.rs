use std::collections::HashMap;
use std::sync::Mutex;

use hub_store::{QuarantineStage, Store};

use super::*;

fn note(sub: &str, event: &str) -> NewNotification {
    NewNotification {
        tenant: "default".into(),
        subscription_id: sub.into(),
        event_id: event.into(),
        action: "create".into(),
        focus_type: "Observation".into(),
        focus_id: event.into(),
        focus_version: None,
        occurred_at: "2024-01-01T00:00:00Z".into(),
        resource: None,
    }
}

fn dead(n: usize, key: &str) -> NewQuarantined {
    NewQuarantined {
        source: Sanitized::new(&format!("t/0@{n}")),
        tenant: None,
        event_id: None,
        record_key: Some(Sanitized::new(key)),
        payload: b"{}".to_vec(),
        stage: QuarantineStage::Store,
        reason: Sanitized::new("refused"),
    }
}

/// A store that numbers notifications per subscription, refuses any write naming `refused`
/// (as a focus id or a record key), and is down for its first `down` calls.
#[derive(Default)]
struct Fake {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    down: usize,
    appends: Vec<usize>,
    numbers: HashMap<String, i64>,
    quarantined: Vec<String>,
}

impl Fake {
    fn calls(&self) -> Vec<usize> {
        self.state.lock().unwrap().appends.clone()
    }

    fn down(&self) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        if s.down > 0 {
            s.down -= 1;
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(())
    }
}

impl BatchStore for Fake {
    async fn append(&self, notes: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        self.down()?;
        let mut s = self.state.lock().unwrap();
        s.appends.push(notes.len());
        if notes.iter().any(|n| n.focus_id == "refused") {
            return Err(StoreError::Refused("invalid byte sequence".into()));
        }
        Ok(notes
            .iter()
            .map(|n| {
                let number = s.numbers.entry(n.subscription_id.clone()).or_default();
                *number += 1;
                Notification {
                    log_key: hub_store::LogKey::for_tests(1),
                    event_number: *number,
                    notification_id: String::new(),
                    created_at: String::new(),
                    note: n.clone(),
                }
            })
            .collect())
    }

    async fn quarantine(&self, records: &[NewQuarantined]) -> Result<(), StoreError> {
        self.down()?;
        let refused = |q: &NewQuarantined| {
            q.record_key
                .as_ref()
                .is_some_and(|k| k.as_str() == "refused")
        };
        if records.iter().any(refused) {
            return Err(StoreError::Refused("too large".into()));
        }
        let mut s = self.state.lock().unwrap();
        s.quarantined
            .extend(records.iter().map(|q| q.source.to_string()));
        Ok(())
    }

    async fn put_versions(&self, _: &[hub_store::VersionAt]) -> Result<(), StoreError> {
        self.down()
    }
}

/// `events` events, each reaching subscriptions `subs`, through chunks of `max`: the
/// numbers each subscription got, in the order it got them, and the records refused.
async fn run<S: BatchStore>(
    store: &S,
    events: &[&str],
    subs: &[&str],
    max: usize,
) -> (Vec<(String, String, i64)>, Vec<usize>, usize) {
    let stop = CancellationToken::new();
    let mut seen = Vec::new();
    let mut chunks = Chunks::new(store, &stop, max, |logged: &[Notification]| {
        seen.extend(logged.iter().map(|n| {
            (
                n.subscription_id.clone(),
                n.event_id.clone(),
                n.event_number,
            )
        }));
    });
    for (i, e) in events.iter().enumerate() {
        for s in subs {
            chunks.push(i, note(s, e)).await.unwrap();
        }
    }
    chunks.flush().await.unwrap();
    let refused = chunks.refused().into_iter().map(|(i, _)| i).collect();
    let count = chunks.count();
    drop(chunks);
    (seen, refused, count)
}

#[tokio::test]
async fn a_batch_is_logged_in_chunks_of_at_most_the_bound_in_batch_order() {
    let fake = Fake::default();
    let events = ["e0", "e1", "e2", "e3", "e4", "e5", "e6"];
    let (seen, refused, count) = run(&fake, &events, &["a", "b", "c"], 4).await;
    assert_eq!(fake.calls(), [4, 4, 4, 4, 4, 1]);
    assert_eq!((count, refused), (21, vec![]));
    for sub in ["a", "b", "c"] {
        let got: Vec<(&str, i64)> = seen
            .iter()
            .filter(|s| s.0 == sub)
            .map(|s| (s.1.as_str(), s.2))
            .collect();
        let want: Vec<(&str, i64)> = events.iter().copied().zip(1..).collect();
        assert_eq!(
            got, want,
            "{sub}: every event, in order, numbered without gaps"
        );
    }
}

#[tokio::test]
async fn an_event_the_store_refuses_is_set_aside_and_the_rest_are_logged() {
    let fake = Fake::default();
    let (seen, refused, count) = run(&fake, &["e0", "e1", "refused", "e3"], &["a", "b"], 100).await;
    // the whole chunk, refused; then one event at a time
    assert_eq!(fake.calls(), [8, 2, 2, 2, 2]);
    assert_eq!((count, refused), (6, vec![2]));
    let a: Vec<(&str, i64)> = seen
        .iter()
        .filter(|s| s.0 == "a")
        .map(|s| (s.1.as_str(), s.2))
        .collect();
    assert_eq!(a, [("e0", 1), ("e1", 2), ("e3", 3)]);
    // an event alone in its chunk is refused at once
    let fake = Fake::default();
    let (_, refused, count) = run(&fake, &["refused", "e1"], &["a", "b"], 2).await;
    assert_eq!((count, refused), (2, vec![0]));
    assert_eq!(fake.calls(), [2, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_is_down_is_waited_for_not_skipped() {
    let fake = Fake::default();
    fake.state.lock().unwrap().down = 3;
    let (_, refused, count) = run(&fake, &["e0", "e1"], &["a"], 1).await;
    assert_eq!((count, refused), (2, vec![]));
    assert_eq!(fake.calls(), [1, 1]);
}

#[tokio::test]
async fn quarantine_goes_one_at_a_time_then_to_the_spool() {
    let fake = Fake::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(spool::SPOOL_FILE);
    let spool = Spool::new(path.clone(), 1 << 20);
    let metrics = Metrics::default();
    let stop = CancellationToken::new();
    let records = [dead(1, "ok"), dead(2, "refused"), dead(3, "ok")];
    quarantine(&fake, &stop, &records, &spool, &metrics)
        .await
        .unwrap();
    assert_eq!(fake.state.lock().unwrap().quarantined, ["t/0@1", "t/0@3"]);
    let spooled = std::fs::read_to_string(&path).unwrap();
    assert_eq!(spooled.lines().count(), 1, "{spooled}");
    assert!(spooled.contains("t/0@2"), "{spooled}");
    assert!(
        metrics
            .render(&[], None)
            .contains("fhir_hub_events_parked_total{outcome=\"spooled\"} 1")
    );
}

use super::super::spool;

/// On a real store: chunks smaller than the batch still number every subscription's events
/// without a gap, in batch order; re-processing the batch (a crash before the ack) adds
/// nothing.
#[tokio::test]
async fn chunks_on_the_store_number_without_gaps_and_replay_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let store = Store::connect(&url).await.unwrap();
    let subs = ["s0", "s1", "s2", "s3"];
    for s in subs {
        let write = hub_store::SubscriptionWrite {
            status: "active".into(),
            criteria: "Observation?code=1".into(),
            channel_type: "rest-hook".into(),
            endpoint: "http://example.test/hook".into(),
            resource: r#"{"resourceType":"Subscription"}"#.into(),
            secret: None,
            client_certificate: None,
            owner: None,
        };
        store
            .create_subscription("default", s, &write)
            .await
            .unwrap();
    }
    let events = ["e0", "e1", "e2", "e3", "e4"];
    let (_, _, count) = run(&store, &events, &subs, 3).await;
    assert_eq!(count, 20);
    for s in subs {
        let key = store
            .get_subscription("default", s)
            .await
            .unwrap()
            .unwrap()
            .log_key;
        let read = store.notifications_after(key, 0, 100).await.unwrap();
        let got: Vec<(&str, i64)> = read
            .iter()
            .map(|n| (n.event_id.as_str(), n.event_number))
            .collect();
        let want: Vec<(&str, i64)> = events.iter().copied().zip(1..).collect();
        assert_eq!(got, want, "{s}");
    }
    let (_, _, again) = run(&store, &events, &subs, 3).await;
    assert_eq!(again, 0, "a re-read batch adds nothing");
}
