//! Behaviour the store must show on every backend.

use hub_store::{
    Commit, Failure, LogKey, NewNotification, NewQuarantined, QuarantineStage, Store, StoreError,
    SubscriptionWrite,
};

/// The incarnation of a stored subscription: what positions on its log are keyed by.
pub(crate) async fn key(store: &Store, tenant: &str, id: &str) -> LogKey {
    store
        .get_subscription(tenant, id)
        .await
        .unwrap()
        .unwrap()
        .log_key
}

/// A failed attempt with no retry pending, after nothing delivered.
pub(crate) fn failure(error: &str, attempts: i64) -> Failure<'_> {
    Failure {
        delivered_through: 0,
        attempts,
        error,
        next_attempt_in_ms: None,
    }
}

pub(crate) fn write(status: &str) -> SubscriptionWrite {
    SubscriptionWrite {
        status: status.into(),
        criteria: "Observation?code=1".into(),
        channel_type: "rest-hook".into(),
        endpoint: "http://example.test/hook".into(),
        resource: r#"{"resourceType":"Subscription"}"#.into(),
        secret: Some("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".into()),
        client_certificate: None,
        owner: None,
    }
}

pub(crate) fn note(sub: &str, event: &str) -> NewNotification {
    note_for("default", sub, event)
}

fn note_for(tenant: &str, sub: &str, event: &str) -> NewNotification {
    NewNotification {
        tenant: tenant.into(),
        subscription_id: sub.into(),
        event_id: event.into(),
        action: "create".into(),
        focus_type: "Observation".into(),
        focus_id: "o1".into(),
        focus_version: Some("1".into()),
        occurred_at: "2024-01-01T00:00:00Z".into(),
        resource: Some(r#"{"resourceType":"Observation","id":"o1"}"#.into()),
    }
}

pub(crate) async fn subscription_crud_with_versions(store: Store) {
    let g0 = store.subscriptions_generation().await.unwrap();
    let row = store
        .create_subscription("default", "s1", &write("requested"))
        .await
        .unwrap();
    assert_eq!((row.version_id, row.status.as_str()), (1, "requested"));
    assert!(matches!(
        store
            .create_subscription("default", "s1", &write("requested"))
            .await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(store.subscriptions_generation().await.unwrap() > g0);

    let got = store
        .get_subscription("default", "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, row);

    let up = store
        .update_subscription("default", "s1", Some(1), &write("active"))
        .await
        .unwrap();
    assert_eq!((up.version_id, up.status.as_str()), (2, "active"));
    match store
        .update_subscription("default", "s1", Some(1), &write("off"))
        .await
    {
        Err(StoreError::VersionConflict { current }) => assert_eq!(current, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .update_subscription("default", "nope", None, &write("off"))
            .await,
        Err(StoreError::NotFound)
    ));

    store
        .create_subscription("default", "s2", &write("off"))
        .await
        .unwrap();
    let active = store
        .search_subscriptions("default", &["active".into()], 100)
        .await
        .unwrap();
    assert_eq!(
        active.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["s1"]
    );
    assert_eq!(
        store
            .search_subscriptions("default", &[], 100)
            .await
            .unwrap()
            .len(),
        2
    );
    let live = store.live_subscriptions().await.unwrap();
    assert_eq!(live.len(), 1, "off subscriptions are not live");

    store
        .set_subscription_status("default", "s1", 2, "error", Some("HTTP 500"))
        .await
        .unwrap();
    let e = store
        .get_subscription("default", "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.status.as_str(), e.version_id),
        ("error", 2),
        "hub status changes make no version"
    );
    assert_eq!(e.error.as_deref(), Some("HTTP 500"));
    let up = store
        .update_subscription("default", "s1", None, &write("requested"))
        .await
        .unwrap();
    assert_eq!(
        (up.version_id, up.error),
        (3, None),
        "a client update clears the error"
    );
    // a worker still acting on version 2 cannot overwrite the client's newer `requested`
    let applied = store
        .set_subscription_status("default", "s1", 2, "off", Some("gave up"))
        .await
        .unwrap();
    assert!(!applied, "a stale version's status change is refused");
    let now = store
        .get_subscription("default", "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.status.as_str(), now.error.as_deref()),
        ("requested", None)
    );

    assert!(store.delete_subscription("default", "s1").await.unwrap());
    assert!(!store.delete_subscription("default", "s1").await.unwrap());
    assert!(
        store
            .get_subscription("default", "s1")
            .await
            .unwrap()
            .is_none()
    );
}

pub(crate) async fn event_numbers_are_gap_free_and_deduplicated(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    store
        .create_subscription("default", "s2", &write("active"))
        .await
        .unwrap();
    let logged = store
        .append_notifications(&[note("s1", "e1"), note("s2", "e1"), note("s1", "e2")])
        .await
        .unwrap();
    let nums: Vec<(String, i64)> = logged
        .iter()
        .map(|n| (n.subscription_id.clone(), n.event_number))
        .collect();
    assert_eq!(
        nums,
        vec![("s1".into(), 1), ("s2".into(), 1), ("s1".into(), 2)]
    );

    // The same events again (a matcher re-reading after a crash) add nothing.
    let again = store
        .append_notifications(&[
            note("s1", "e1"),
            note("s1", "e2"),
            note("s1", "e3"),
            note("gone", "e3"),
        ])
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_number, 3);
    let row = store
        .get_subscription("default", "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.events_since_start, 3);

    let after = store
        .notifications_after(key(&store, "default", "s1").await, 1, 10)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|n| n.event_number).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(after[0].event_id, "e2");
    assert_ne!(after[0].notification_id, after[1].notification_id);
    assert_eq!(
        store
            .notifications_after(key(&store, "default", "s1").await, 0, 1)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub(crate) async fn bursts_for_one_subscription_take_a_block_of_numbers(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    store
        .create_subscription("default", "s2", &write("active"))
        .await
        .unwrap();
    store
        .append_notifications(&[note("s1", "e1")])
        .await
        .unwrap();
    let burst: Vec<NewNotification> = ["e1", "e2", "e3", "e2", "e4"]
        .iter()
        .map(|e| note("s1", e))
        .chain([note("s2", "e1"), note("gone", "e9")])
        .collect();
    let logged = store.append_notifications(&burst).await.unwrap();
    let got: Vec<(String, String, i64)> = logged
        .iter()
        .map(|n| {
            (
                n.subscription_id.clone(),
                n.event_id.clone(),
                n.event_number,
            )
        })
        .collect();
    let expected: Vec<(String, String, i64)> = [
        ("s1", "e2", 2),
        ("s1", "e3", 3),
        ("s1", "e4", 4),
        ("s2", "e1", 1),
    ]
    .iter()
    .map(|(s, e, n)| ((*s).to_owned(), (*e).to_owned(), *n))
    .collect();
    assert_eq!(
        got, expected,
        "input order, duplicates and the unknown subscription dropped"
    );
    let big: Vec<NewNotification> = (0..1200).map(|i| note("s2", &format!("b{i}"))).collect();
    let logged = store.append_notifications(&big).await.unwrap();
    assert_eq!(logged.len(), 1200);
    assert_eq!(logged.last().unwrap().event_number, 1201);
    let all = store
        .notifications_after(key(&store, "default", "s2").await, 0, 5000)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|n| n.event_number).collect::<Vec<_>>(),
        (1..=1201).collect::<Vec<_>>()
    );
}

pub(crate) async fn concurrent_appends_never_repeat_or_skip_a_number(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let batch = [
                    note("s1", &format!("w{w}-{i}")),
                    note("s1", &format!("shared-{i}")),
                ];
                store.append_notifications(&batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store
        .notifications_after(key(&store, "default", "s1").await, 0, 1000)
        .await
        .unwrap();
    let nums: Vec<i64> = all.iter().map(|n| n.event_number).collect();
    assert_eq!(
        nums,
        (1..=50).collect::<Vec<_>>(),
        "40 own events + 10 shared, no gaps"
    );
}

/// Two matchers logging batches that name the same subscriptions in opposite orders (two
/// partitions, events for the same patients' subscriptions) must not deadlock: rows are
/// locked in one order whatever the batch order.
pub(crate) async fn opposite_batch_orders_never_deadlock(store: Store) {
    let subs = ["a", "b", "c", "d"];
    for s in subs {
        store
            .create_subscription("default", s, &write("active"))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let mut order = subs.to_vec();
                if w == 1 {
                    order.reverse();
                }
                // two events per subscription, so every subscription takes the group path
                let batch: Vec<NewNotification> = order
                    .iter()
                    .flat_map(|s| {
                        [
                            note(s, &format!("w{w}-{i}-x")),
                            note(s, &format!("w{w}-{i}-y")),
                        ]
                    })
                    .collect();
                store.append_notifications(&batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in subs {
        let all = store
            .notifications_after(key(&store, "default", s).await, 0, 1000)
            .await
            .unwrap();
        let nums: Vec<i64> = all.iter().map(|n| n.event_number).collect();
        assert_eq!(nums, (1..=160).collect::<Vec<_>>(), "subscription {s}");
    }
}

/// The delivery role's pool reads and writes the same data through connections of its own:
/// however busy it is, it never holds one of the main pool's connections.
pub(crate) async fn a_pool_of_its_own_shares_data_not_connections(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let own = store.own_pool(2).await.unwrap();
    assert!(
        own.get_subscription("default", "s1")
            .await
            .unwrap()
            .is_some()
    );
    let s1 = key(&store, "default", "s1").await;
    own.record_delivered(s1, 0).await.unwrap();
    let main_before = store.pool_usage().0;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let own = own.clone();
            tokio::spawn(async move { own.delivery_state(s1).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(own.pool_usage().0 <= 2, "{:?}", own.pool_usage());
    assert_eq!(
        store.pool_usage().0,
        main_before,
        "the main pool opened nothing"
    );
    // and what one pool writes, the other reads
    store.record_delivered(s1, 0).await.unwrap();
    assert_eq!(own.delivery_state(s1).await.unwrap().delivered_through, 0);
}

/// What is read back is exactly what was logged: text with quotes, escapes, non-ASCII and
/// line breaks, decimals as written, absent values as absent.
pub(crate) async fn notifications_read_back_exactly(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let mut odd = note("s1", "e-odd");
    odd.focus_id = "o\"1\\é".into();
    odd.focus_version = None;
    odd.resource = Some(
        "{\"resourceType\":\"Observation\",\"note\":\"a\\nb \u{1F600}\",\"value\":1.50}".into(),
    );
    let mut deleted = note("s1", "e-deleted");
    deleted.action = "delete".into();
    deleted.resource = None;
    // kept as written: whitespace, escapes, brackets inside strings, numbers as written
    // (a resource is a JSON value as a parser checked it: nothing around it)
    let mut spaced = note("s1", "e-spaced");
    spaced.resource = Some(
        "{\r\n  \"resourceType\" : \"Observation\",\t\"note\": \"],[\\\"x\\u0041\",\n  \"component\": [ [ ] , { } ], \"value\": 1e2 }".into(),
    );
    let logged = store
        .append_notifications(&[odd.clone(), deleted.clone(), spaced.clone()])
        .await
        .unwrap();
    let read = store
        .notifications_after(key(&store, "default", "s1").await, 0, 10)
        .await
        .unwrap();
    assert_eq!(read, logged);
    assert_eq!(read[0].note, odd);
    assert_eq!(read[1].note, deleted);
    assert_eq!(read[2].note, spaced);
    assert!(
        store
            .notifications_after(key(&store, "default", "s1").await, 3, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn delivery_state_moves_forward_only(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let s = store
        .delivery_state(key(&store, "default", "s1").await)
        .await
        .unwrap();
    assert_eq!((s.delivered_through, s.attempts), (0, 0));
    let s1 = key(&store, "default", "s1").await;
    let failed = |error, attempts| store.record_failure(s1, failure(error, attempts), None);
    assert!(failed("connection refused", 1).await.unwrap());
    assert!(failed("timeout", 2).await.unwrap());
    let s = store
        .delivery_state(key(&store, "default", "s1").await)
        .await
        .unwrap();
    assert_eq!((s.attempts, s.last_error.as_deref()), (2, Some("timeout")));
    store
        .record_delivered(key(&store, "default", "s1").await, 5)
        .await
        .unwrap();
    store
        .record_delivered(key(&store, "default", "s1").await, 3)
        .await
        .unwrap();
    let s = store
        .delivery_state(key(&store, "default", "s1").await)
        .await
        .unwrap();
    assert_eq!(
        (s.delivered_through, s.attempts, s.last_error),
        (5, 0, None)
    );
    assert!(s.last_success_at.is_some());
}

pub(crate) async fn tenants_are_isolated(store: Store) {
    store
        .create_subscription("a", "s1", &write("active"))
        .await
        .unwrap();
    store
        .create_subscription("b", "s1", &write("active"))
        .await
        .unwrap();
    store
        .append_notifications(&[note_for("a", "s1", "e1")])
        .await
        .unwrap();
    assert!(
        store
            .notifications_after(key(&store, "b", "s1").await, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .search_subscriptions("a", &[], 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.delete_subscription("a", "s1").await.unwrap());
    assert!(store.get_subscription("b", "s1").await.unwrap().is_some());
}

pub(crate) async fn leases_give_each_subscription_one_owner(store: Store) {
    // leases expire on the database's clock (here it is the host's, so they agree)
    let db = store.db_now_ms().await.unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (db - host).abs() < 5_000,
        "database clock {db} vs host {host}"
    );
    let wanted = created(&store, (0..4).map(|i| format!("s{i}"))).await;
    let a = store
        .claim_leases("a", pairs(&wanted), 60_000)
        .await
        .unwrap();
    assert_eq!(a.len(), 4, "the first process takes what nobody holds");
    let b = store
        .claim_leases("b", pairs(&wanted), 60_000)
        .await
        .unwrap();
    assert!(b.is_empty(), "live leases stay with their owner");
    assert_eq!(
        store
            .claim_leases("a", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .len(),
        4,
        "renewal"
    );
    // a stops renewing (its leases expire): b takes over.
    let a = store.claim_leases("a", pairs(&wanted), -1).await.unwrap();
    assert_eq!(a.len(), 4);
    let b = store
        .claim_leases("b", pairs(&wanted), 60_000)
        .await
        .unwrap();
    assert_eq!(b.len(), 4, "expired leases move on");
    // fencing: the cursor moves only for the lease's owner; a stale owner is refused
    assert!(
        store
            .record_delivered_by(key(&store, "default", "s0").await, 3, Some("b"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_delivered_by(key(&store, "default", "s0").await, 7, Some("a"))
            .await
            .unwrap(),
        "a lost its lease: its progress is refused"
    );
    assert_eq!(
        store
            .delivery_state(key(&store, "default", "s0").await)
            .await
            .unwrap()
            .delivered_through,
        3
    );
    store.release_leases("b").await.unwrap();
    assert_eq!(
        store
            .claim_leases("c", pairs(&wanted[..2]), 60_000)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// Rebalancing: the lease count of every live process, and handing some leases back.
pub(crate) async fn some_leases_are_handed_back_for_another_to_claim(store: Store) {
    let wanted = created(&store, (0..4).map(|i| format!("s{i}"))).await;
    let a = store
        .claim_leases("a", pairs(&wanted), 60_000)
        .await
        .unwrap();
    assert_eq!(a.len(), 4);
    store.heartbeat("b", 60_000).await.unwrap();
    let counts = store.lease_counts().await.unwrap();
    assert_eq!(counts.get("a"), Some(&4));
    assert_eq!(
        counts.get("b"),
        Some(&0),
        "a live process holding nothing counts"
    );
    let give: Vec<_> = a.iter().copied().take(2).collect();
    // only the owner's leases go
    assert_eq!(store.release_some("b", &give).await.unwrap(), 0);
    assert_eq!(store.release_some("a", &give).await.unwrap(), 2);
    let b = store
        .claim_leases("b", pairs(&wanted), 60_000)
        .await
        .unwrap();
    assert_eq!(b.len(), 2, "b takes exactly what a handed back");
    assert!(b.iter().all(|k| give.contains(k)));
    let counts = store.lease_counts().await.unwrap();
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&2), Some(&2)));
}

pub(crate) async fn topics_by_id_and_url(store: Store) {
    let (t, created) = store
        .put_topic("default", "lab", "http://example.org/t/lab", "{}", None)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(t.version_id, 1);
    let (t, created) = store
        .put_topic(
            "default",
            "lab",
            "http://example.org/t/lab",
            "{\"a\":1}",
            None,
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(t.version_id, 2);
    // another id with the same URL in the tenant is refused; another tenant may reuse it
    assert!(matches!(
        store
            .put_topic("default", "lab2", "http://example.org/t/lab", "{}", None)
            .await,
        Err(StoreError::AlreadyExists)
    ));
    store
        .put_topic("other", "lab", "http://example.org/t/lab", "{}", None)
        .await
        .unwrap();
    let found = store
        .topic_by_url("default", "http://example.org/t/lab")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.resource, "{\"a\":1}");
    assert_eq!(store.list_topics(Some("default")).await.unwrap().len(), 1);
    assert_eq!(store.list_topics(None).await.unwrap().len(), 2);
    let g = store.subscriptions_generation().await.unwrap();
    assert!(store.delete_topic("default", "lab").await.unwrap());
    assert!(
        store.subscriptions_generation().await.unwrap() > g,
        "topic changes reload matchers"
    );
    assert!(store.get_topic("default", "lab").await.unwrap().is_none());
}

pub(crate) async fn retention_purges_only_delivered_and_never_reuses_numbers(store: Store) {
    store
        .create_subscription("default", "r1", &write("active"))
        .await
        .unwrap();
    store
        .append_notifications(&[note("r1", "e1"), note("r1", "e2"), note("r1", "e3")])
        .await
        .unwrap();
    store
        .record_delivered(key(&store, "default", "r1").await, 2)
        .await
        .unwrap();
    let purged = store
        .purge_notifications("9999-12-31T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(purged, 2, "only the delivered ones");
    let left = store
        .notifications_after(key(&store, "default", "r1").await, 0, 10)
        .await
        .unwrap();
    assert_eq!(left.iter().map(|n| n.event_number).collect::<Vec<_>>(), [3]);
    let logged = store
        .append_notifications(&[note("r1", "e4")])
        .await
        .unwrap();
    assert_eq!(logged[0].event_number, 4, "numbers continue after a purge");
    assert_eq!(
        store
            .purge_notifications("2000-01-01T00:00:00Z")
            .await
            .unwrap(),
        0,
        "nothing is older than the cutoff"
    );
}

pub(crate) async fn last_versions_are_kept_per_resource(store: Store) {
    let k = |id: &str| {
        (
            "default".to_owned(),
            "Observation".to_owned(),
            id.to_owned(),
        )
    };
    assert!(store.last_versions(&[k("a")]).await.unwrap().is_empty());
    store
        .put_versions(&[
            (k("a"), Some("{\"v\":1}".into()), 10),
            (k("b"), Some("{\"v\":1}".into()), 10),
        ])
        .await
        .unwrap();
    store
        .put_versions(&[(k("a"), Some("{\"v\":2}".into()), 20), (k("b"), None, 20)])
        .await
        .unwrap();
    let got = store
        .last_versions(&[k("a"), k("b"), k("c")])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[&k("a")], "{\"v\":2}");
    // another tenant's resource with the same id is another resource
    let other = ("t2".to_owned(), "Observation".to_owned(), "a".to_owned());
    assert!(store.last_versions(&[other]).await.unwrap().is_empty());
    // many keys at once
    let many: Vec<_> = (0..250).map(|i| k(&format!("m{i}"))).collect();
    let items: Vec<_> = many
        .iter()
        .map(|k| (k.clone(), Some("{}".to_owned()), 1))
        .collect();
    store.put_versions(&items).await.unwrap();
    assert_eq!(store.last_versions(&many).await.unwrap().len(), 250);
}

/// A change read late (replayed, or from a lagging partition), older than the version
/// remembered, leaves the newer one: `%previous` is the newest version whatever the order
/// the changes are read in; an older update does not revive a deleted resource. (Before, the
/// last one written won.)
pub(crate) async fn an_older_version_never_replaces_a_newer_one(store: Store) {
    let k = |id: &str| {
        (
            "default".to_owned(),
            "Observation".to_owned(),
            id.to_owned(),
        )
    };
    store
        .put_versions(&[(k("a"), Some("{\"v\":3}".into()), 300)])
        .await
        .unwrap();
    store
        .put_versions(&[(k("a"), Some("{\"v\":1}".into()), 100)])
        .await
        .unwrap();
    let got = store.last_versions(&[k("a")]).await.unwrap();
    assert_eq!(
        got[&k("a")],
        "{\"v\":3}",
        "the replayed older version stays out"
    );
    // the same instant: the later write wins (two changes a producer stamped alike)
    store
        .put_versions(&[(k("a"), Some("{\"v\":4}".into()), 300)])
        .await
        .unwrap();
    assert_eq!(
        store.last_versions(&[k("a")]).await.unwrap()[&k("a")],
        "{\"v\":4}"
    );
    // deleted, then an older update read late: still deleted
    store.put_versions(&[(k("a"), None, 400)]).await.unwrap();
    store
        .put_versions(&[(k("a"), Some("{\"v\":2}".into()), 200)])
        .await
        .unwrap();
    assert!(store.last_versions(&[k("a")]).await.unwrap().is_empty());
    // a newer create after the deletion is remembered
    store
        .put_versions(&[(k("a"), Some("{\"v\":5}".into()), 500)])
        .await
        .unwrap();
    assert_eq!(
        store.last_versions(&[k("a")]).await.unwrap()[&k("a")],
        "{\"v\":5}"
    );
}

pub(crate) async fn ws_tokens_bind_until_they_expire(store: Store) {
    let holder = r#"{"subject":"key:k1","key":"k1","scopes":"system/*.rs"}"#;
    store
        .create_ws_token("tok1", "default", "s1", "9999-01-01T00:00:00Z", holder)
        .await
        .unwrap();
    store
        .create_ws_token("old", "default", "s1", "2000-01-01T00:00:00Z", holder)
        .await
        .unwrap();
    let bound = hub_store::WsToken {
        tenant: "default".to_owned(),
        subscription_id: "s1".to_owned(),
        holder: Some(holder.to_owned()),
    };
    // the credential it was issued to comes back with it, on a look and on a use
    assert_eq!(store.ws_token("tok1").await.unwrap(), Some(bound.clone()));
    assert_eq!(store.ws_token("old").await.unwrap(), None, "expired");
    assert_eq!(store.ws_token("nope").await.unwrap(), None);
    assert_eq!(store.take_ws_token("tok1").await.unwrap(), Some(bound));
    assert_eq!(store.take_ws_token("tok1").await.unwrap(), None, "used up");
}

pub(crate) async fn secrets_live_in_their_own_columns(store: Store) {
    let mut w = write("requested");
    w.client_certificate = Some("-----BEGIN CERTIFICATE-----".into());
    let row = store
        .create_subscription("default", "s1", &w)
        .await
        .unwrap();
    assert_eq!(row.secret, w.secret);
    assert_eq!(row.client_certificate, w.client_certificate);
    assert!(!row.resource.contains("whsec_"));
    // rows from before the columns existed are found and moved once
    assert!(
        store
            .subscriptions_without_secret()
            .await
            .unwrap()
            .is_empty()
    );
    let mut legacy = write("requested");
    legacy.secret = None;
    store
        .create_subscription("default", "old", &legacy)
        .await
        .unwrap();
    let found = store.subscriptions_without_secret().await.unwrap();
    assert_eq!(found.len(), 1);
    store
        .move_secrets("default", "old", "{}", Some("whsec_x"), None)
        .await
        .unwrap();
    let moved = store
        .get_subscription("default", "old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (moved.resource.as_str(), moved.secret.as_deref()),
        ("{}", Some("whsec_x"))
    );
    assert_eq!(moved.version_id, 1, "moving secrets is not a client edit");
    assert!(
        store
            .subscriptions_without_secret()
            .await
            .unwrap()
            .is_empty()
    );
}

/// The start-up re-seal: rows that may hold a first-format sealed value or a header are
/// found; a re-seal is written only while the row is at the version it was read at, and is
/// not a new version.
pub(crate) async fn resealing_is_fenced_by_version(store: Store) {
    let mut old = write("requested");
    old.secret = Some("enc:v1:k:AAAA".into());
    store
        .create_subscription("default", "old", &old)
        .await
        .unwrap();
    let mut headed = write("requested");
    headed.resource = r#"{"channel":{"header":["X-Api-Key: k"]}}"#.into();
    store
        .create_subscription("default", "headed", &headed)
        .await
        .unwrap();
    store
        .create_subscription("default", "plain", &write("requested"))
        .await
        .unwrap();
    let mut found: Vec<String> = store
        .subscriptions_to_reseal()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.clone())
        .collect();
    found.sort();
    assert_eq!(found, ["headed", "old"]);
    let values = hub_store::SubscriptionSecrets {
        resource: "{}",
        secret: Some("enc:v2:k:BBBB"),
        client_certificate: None,
    };
    // a client wrote version 2 meanwhile: the re-seal of version 1 is not written
    store
        .update_subscription("default", "old", None, &old)
        .await
        .unwrap();
    assert!(
        !store
            .reseal_subscription("default", "old", 1, &values)
            .await
            .unwrap()
    );
    assert!(
        store
            .reseal_subscription("default", "old", 2, &values)
            .await
            .unwrap()
    );
    let row = store
        .get_subscription("default", "old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.version_id, 2, "re-sealing is not a client edit");
    assert_eq!(
        (row.resource.as_str(), row.secret.as_deref()),
        ("{}", Some("enc:v2:k:BBBB"))
    );
}

pub(crate) async fn quarantine_keeps_one_row_per_position(store: Store) {
    let q = |source: &str, tenant: Option<&str>| NewQuarantined {
        source: source.into(),
        tenant: tenant.map(Into::into),
        event_id: None,
        record_key: Some("Observation/1".into()),
        payload: vec![0xff, b'{'],
        stage: QuarantineStage::Parse,
        reason: "not valid JSON".into(),
    };
    store
        .quarantine(&[
            q("fhir.changes/0@1", None),
            q("fhir.changes/0@2", Some("a")),
        ])
        .await
        .unwrap();
    // a batch re-read after a crash quarantines nothing twice
    store
        .quarantine(&[q("fhir.changes/0@1", None)])
        .await
        .unwrap();
    assert_eq!(store.count_quarantined().await.unwrap(), 2);
    let all = store.list_quarantined(None, 0, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].record, q("fhir.changes/0@1", None));
    let of_a = store.list_quarantined(Some("a"), 0, 10).await.unwrap();
    assert_eq!(of_a.len(), 1);
    let page = store.list_quarantined(None, all[0].id, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(store.quarantined(all[1].id).await.unwrap(), all[1]);
    store.release_quarantined(all[0].id).await.unwrap();
    assert!(matches!(
        store.release_quarantined(all[0].id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.quarantined(all[0].id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.count_quarantined().await.unwrap(), 1);
}

pub(crate) async fn matching_changes_name_what_each_write_touched(store: Store) {
    use hub_store::MatchingChanges;
    let gen_of = |gens: &[(String, i64)], t: &str| {
        gens.iter()
            .find(|(n, _)| n == t)
            .map(|(_, g)| *g)
            .unwrap_or(0)
    };
    store
        .create_subscription("a", "s1", &write("requested"))
        .await
        .unwrap();
    let g0 = gen_of(&store.tenant_generations().await.unwrap(), "a");
    store
        .create_subscription("a", "s2", &write("requested"))
        .await
        .unwrap();
    store
        .update_subscription("a", "s1", None, &write("active"))
        .await
        .unwrap();
    store.delete_subscription("a", "s2").await.unwrap();
    // another tenant's writes are not this tenant's changes
    store
        .create_subscription("b", "s9", &write("requested"))
        .await
        .unwrap();
    let g1 = gen_of(&store.tenant_generations().await.unwrap(), "a");
    assert_eq!(g1, g0 + 3, "one generation per client write");
    assert_eq!(
        store.matching_changes("a", g0, g1).await.unwrap(),
        MatchingChanges::Subscriptions {
            generation: g1,
            ids: vec!["s1".into(), "s2".into()]
        }
    );
    // up to a generation read earlier, not beyond
    assert_eq!(
        store.matching_changes("a", g0, g0 + 1).await.unwrap(),
        MatchingChanges::Subscriptions {
            generation: g0 + 1,
            ids: vec!["s2".into()]
        }
    );
    assert_eq!(
        store.matching_changes("a", g1, g1).await.unwrap(),
        MatchingChanges::Subscriptions {
            generation: g1,
            ids: vec![]
        }
    );
    // the hub's status changes are not changes
    store
        .set_subscription_status("a", "s1", 2, "error", Some("down"))
        .await
        .unwrap();
    assert_eq!(gen_of(&store.tenant_generations().await.unwrap(), "a"), g1);
    // only live subscriptions are read back
    let live = store
        .live_subscriptions_among("a", &["s1".into(), "s2".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(
        live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );
    // a topic write needs the tenant read whole
    store
        .put_topic("a", "t1", "http://x/t", "{}", None)
        .await
        .unwrap();
    let g2 = gen_of(&store.tenant_generations().await.unwrap(), "a");
    assert_eq!(
        store.matching_changes("a", g1, g2).await.unwrap(),
        MatchingChanges::Rebuild
    );
    // so does a matcher further behind than the changes kept
    assert_eq!(
        store.matching_changes("a", g2 - 20_000, g2).await.unwrap(),
        MatchingChanges::Rebuild
    );
    // from the tenant's first write on, every change is there
    assert_eq!(
        store.matching_changes("a", g0 - 1, g1).await.unwrap(),
        MatchingChanges::Subscriptions {
            generation: g1,
            ids: vec!["s1".into(), "s2".into()]
        }
    );
}

pub(crate) async fn generations_move_per_tenant_and_only_on_client_writes(store: Store) {
    let gen_of =
        |gens: &[(String, i64)], t: &str| gens.iter().find(|(n, _)| n == t).map(|(_, g)| *g);
    store
        .create_subscription("a", "s1", &write("requested"))
        .await
        .unwrap();
    store
        .create_subscription("b", "s1", &write("requested"))
        .await
        .unwrap();
    let g0 = store.tenant_generations().await.unwrap();
    let (a0, b0) = (gen_of(&g0, "a").unwrap(), gen_of(&g0, "b").unwrap());
    // the hub's own status changes rebuild nothing
    store
        .set_subscription_status("a", "s1", 1, "error", Some("endpoint down"))
        .await
        .unwrap();
    store
        .set_subscription_status("a", "s1", 1, "active", None)
        .await
        .unwrap();
    assert_eq!(
        gen_of(&store.tenant_generations().await.unwrap(), "a"),
        Some(a0)
    );
    // a client write moves its own tenant only
    store
        .update_subscription("a", "s1", None, &write("requested"))
        .await
        .unwrap();
    let g1 = store.tenant_generations().await.unwrap();
    assert!(gen_of(&g1, "a").unwrap() > a0);
    assert_eq!(gen_of(&g1, "b"), Some(b0));
    store
        .put_topic("b", "t1", "http://x/t", "{}", None)
        .await
        .unwrap();
    assert!(gen_of(&store.tenant_generations().await.unwrap(), "b").unwrap() > b0);
    // an `off` subscription generates nothing, even from a matcher whose index is behind
    store
        .set_subscription_status("a", "s1", 2, "off", Some("gone"))
        .await
        .unwrap();
    let mut n = note("s1", "e-off");
    n.tenant = "a".into();
    assert!(
        store
            .append_notifications(&[n.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    let mut burst = vec![n.clone(), n];
    burst[1].event_id = "e-off-2".into();
    assert!(store.append_notifications(&burst).await.unwrap().is_empty());
    assert_eq!(store.live_subscriptions_of("b").await.unwrap().len(), 1);
}

pub(crate) async fn versions_are_kept_and_continue_after_a_delete(store: Store) {
    let mut w = write("requested");
    store
        .create_subscription("default", "s1", &w)
        .await
        .unwrap();
    w.resource = r#"{"resourceType":"Subscription","reason":"v2"}"#.into();
    store
        .update_subscription("default", "s1", Some(1), &w)
        .await
        .unwrap();
    assert!(store.delete_subscription("default", "s1").await.unwrap());
    let h = store
        .history("default", "Subscription", "s1")
        .await
        .unwrap();
    let versions: Vec<(i64, bool)> = h
        .iter()
        .map(|v| (v.version_id, v.resource.is_some()))
        .collect();
    assert_eq!(versions, vec![(3, false), (2, true), (1, true)]);
    assert!(h[1].resource.as_deref().unwrap().contains("v2"));
    // a re-create continues the numbering, with a fresh delivery cursor
    let again = store
        .create_subscription("default", "s1", &w)
        .await
        .unwrap();
    assert_eq!(again.version_id, 4);
    assert_eq!(
        store
            .delivery_state(key(&store, "default", "s1").await)
            .await
            .unwrap()
            .delivered_through,
        0
    );
    let v1 = store
        .version("default", "Subscription", "s1", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v1.resource.as_deref(),
        Some(r#"{"resourceType":"Subscription"}"#)
    );
    assert!(
        store
            .version("default", "Subscription", "s1", 9)
            .await
            .unwrap()
            .is_none()
    );
    // topics: history, and If-Match
    store
        .put_topic("default", "t", "http://x/t", "{}", None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_topic("default", "t", "http://x/t", "{}", Some(5))
            .await,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    assert!(matches!(
        store
            .put_topic("default", "nope", "http://x/n", "{}", Some(1))
            .await,
        Err(StoreError::NotFound)
    ));
    let (t2, created) = store
        .put_topic("default", "t", "http://x/t", "{}", Some(1))
        .await
        .unwrap();
    assert_eq!((t2.version_id, created), (2, false));
    assert!(store.delete_topic("default", "t").await.unwrap());
    assert_eq!(
        store
            .history("default", "SubscriptionTopic", "t")
            .await
            .unwrap()
            .len(),
        3
    );
    // other tenants see nothing
    assert!(
        store
            .history("other", "Subscription", "s1")
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn consumer_offsets_only_move_forward(store: Store) {
    for (tenant, id) in [("t", "s1"), ("t", "s2"), ("u", "s1")] {
        store
            .create_subscription(tenant, id, &write("active"))
            .await
            .unwrap();
    }
    let (s1, s2, u1) = (
        key(&store, "t", "s1").await,
        key(&store, "t", "s2").await,
        key(&store, "u", "s1").await,
    );
    assert_eq!(store.committed_offset("t", "etl", s1).await.unwrap(), 0);
    // never committed is not the same as committed 0 (the auto-reset policy decides)
    assert_eq!(store.committed("t", "etl", s1).await.unwrap(), None);
    let zero = store.next_consumer_generation("t", "zero").await.unwrap();
    assert_eq!(
        store.commit_offset("t", "zero", s1, 0, zero).await.unwrap(),
        Commit::Committed(0)
    );
    assert_eq!(store.committed("t", "zero", s1).await.unwrap(), Some(0));
    // a consumer never read has no generation to commit with
    assert_eq!(
        store.commit_offset("t", "etl", s1, 5, 1).await.unwrap(),
        Commit::Fenced { current: 0 }
    );
    assert_eq!(store.next_consumer_generation("t", "etl").await.unwrap(), 1);
    assert_eq!(
        store.commit_offset("t", "etl", s1, 5, 1).await.unwrap(),
        Commit::Committed(5)
    );
    assert_eq!(
        store.commit_offset("t", "etl", s1, 3, 1).await.unwrap(),
        Commit::Committed(5)
    );
    // a newer Consume fences the older generation's commits
    assert_eq!(store.next_consumer_generation("t", "etl").await.unwrap(), 2);
    assert_eq!(
        store.commit_offset("t", "etl", s1, 7, 1).await.unwrap(),
        Commit::Fenced { current: 2 }
    );
    assert_eq!(
        store.commit_offset("t", "etl", s1, 9, 2).await.unwrap(),
        Commit::Committed(9)
    );
    assert_eq!(store.committed_offset("t", "etl", s1).await.unwrap(), 9);
    // generations are per consumer and tenant
    assert_eq!(store.consumer_generation("t", "other").await.unwrap(), 0);
    assert_eq!(store.consumer_generation("u", "etl").await.unwrap(), 0);
    assert_eq!(store.next_consumer_generation("u", "etl").await.unwrap(), 1);
    // per consumer, per subscription, per tenant
    assert_eq!(store.committed_offset("t", "other", s1).await.unwrap(), 0);
    assert_eq!(store.committed_offset("t", "etl", s2).await.unwrap(), 0);
    assert_eq!(store.committed_offset("u", "etl", u1).await.unwrap(), 0);
    // another tenant's incarnation is not this tenant's to commit on
    assert!(matches!(
        store.commit_offset("u", "etl", s1, 1, 1).await,
        Err(StoreError::NotFound)
    ));
}

/// Housekeeping removes leases and consumer offsets of deleted subscriptions and, past a
/// cut-off, last-known resource versions; what live subscriptions use stays.
pub(crate) async fn housekeeping_purges_what_nothing_needs(store: Store) {
    for id in ["live", "gone"] {
        store
            .create_subscription("default", id, &write("requested"))
            .await
            .unwrap();
    }
    let wanted = claims(&store, ["live", "gone"].map(String::from)).await;
    assert_eq!(
        store
            .claim_leases("p", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .len(),
        2
    );
    let generation = store
        .next_consumer_generation("default", "c")
        .await
        .unwrap();
    for (_, _, k) in &wanted {
        store
            .commit_offset("default", "c", *k, 1, generation)
            .await
            .unwrap();
    }
    assert!(store.delete_subscription("default", "gone").await.unwrap());
    let key = (
        "default".to_owned(),
        "Observation".to_owned(),
        "o1".to_owned(),
    );
    store
        .put_versions(&[(key.clone(), Some("{}".to_owned()), 1)])
        .await
        .unwrap();
    let now = "2999-01-01T00:00:00Z";
    let p = store.purge_stale(now, None).await.unwrap();
    // the delete took the gone subscription's lease and offsets with it
    assert_eq!(
        (p.leases, p.consumer_offsets, p.resource_versions),
        (0, 0, 0),
        "{p:?}"
    );
    // the live subscription keeps its lease and its consumer's offset
    assert!(
        store
            .claim_leases("q", pairs(&wanted[..1]), 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .committed_offset("default", "c", wanted[0].2)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .last_versions(std::slice::from_ref(&key))
            .await
            .unwrap()
            .len(),
        1
    );
    let p = store.purge_stale(now, Some(now)).await.unwrap();
    assert_eq!(p.resource_versions, 1);
    assert!(store.last_versions(&[key]).await.unwrap().is_empty());
}

pub(crate) async fn audit_rows_are_searched_and_purged(store: Store) {
    use hub_store::{AuditQuery, NewAudit};
    // more than one INSERT's worth of rows
    let rows: Vec<NewAudit> = (0..2_500)
        .map(|i| NewAudit {
            tenant: if i % 2 == 0 { "a" } else { "b" }.into(),
            kind: "disclosure".into(),
            action: "R".into(),
            agent: format!("key:{}", i % 5),
            entity: Some(format!("Observation/{i}")),
            subscription_id: Some("s1".into()),
            channel: Some("sse".into()),
            outcome: "0".into(),
            detail: None,
        })
        .collect();
    store.audit(&rows).await.unwrap();
    let q = |tenant: Option<&str>, agent: Option<&str>, entity: Option<&str>| AuditQuery {
        tenant: tenant.map(str::to_owned),
        agent: agent.map(str::to_owned),
        entity: entity.map(str::to_owned),
        limit: 10_000,
        ..Default::default()
    };
    assert_eq!(
        store
            .audit_events(&q(None, None, None))
            .await
            .unwrap()
            .len(),
        2_500
    );
    assert_eq!(
        store
            .audit_events(&q(Some("a"), None, None))
            .await
            .unwrap()
            .len(),
        1_250
    );
    let one = store
        .audit_events(&q(Some("a"), None, Some("Observation/42")))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].audit.agent, "key:2");
    assert_eq!(
        store
            .audit_events(&q(None, Some("key:0"), None))
            .await
            .unwrap()
            .len(),
        500
    );
    // newest first, limited
    let mut limited = q(None, None, None);
    limited.limit = 3;
    let newest = store.audit_events(&limited).await.unwrap();
    assert_eq!(newest.len(), 3);
    assert!(newest[0].id > newest[1].id);
    // a date range that ends before anything was recorded finds nothing; purge removes all
    let mut before = q(None, None, None);
    before.until = Some("2000-01-01T00:00:00Z".into());
    assert!(store.audit_events(&before).await.unwrap().is_empty());
    assert_eq!(
        store.purge_audit("9999-01-01T00:00:00Z").await.unwrap(),
        2_500
    );
}

pub(crate) async fn api_keys_are_created_changed_and_revoked(store: Store) {
    let key = hub_store::ApiKeyRow {
        id: "0123456789abcdef".into(),
        tenant: "t".into(),
        name: "n".into(),
        secret_hash: "h".into(),
        scopes: "system/Subscription.r".into(),
        patient: None,
        created_at: String::new(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    let g0 = store.subscriptions_generation().await.unwrap();
    let made = store.create_api_key(&key).await.unwrap();
    assert!(!made.created_at.is_empty());
    assert!(
        store.subscriptions_generation().await.unwrap() > g0,
        "keys move matching"
    );
    assert!(
        store
            .set_api_key_scopes(&key.id, "hub/admin")
            .await
            .unwrap()
    );
    assert_eq!(
        store.api_key(&key.id).await.unwrap().unwrap().scopes,
        "hub/admin"
    );
    store.touch_api_key(&key.id).await.unwrap();
    assert!(
        store
            .api_key(&key.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_some()
    );
    assert_eq!(store.api_keys(Some("t")).await.unwrap().len(), 1);
    assert!(store.api_keys(Some("other")).await.unwrap().is_empty());
    assert!(store.revoke_api_key(&key.id).await.unwrap());
    assert!(
        !store.revoke_api_key(&key.id).await.unwrap(),
        "revoked once"
    );
    assert!(
        !store.set_api_key_scopes(&key.id, "x").await.unwrap(),
        "a revoked key stays as it was"
    );
    assert!(
        store
            .api_key(&key.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
}

pub(crate) async fn one_event_reaching_many_subscriptions_reads_back_for_each(store: Store) {
    let subs: Vec<String> = (0..120).map(|i| format!("fan-{i:03}")).collect();
    for s in &subs {
        store
            .create_subscription("default", s, &write("active"))
            .await
            .unwrap();
    }
    store
        .set_subscription_status("default", "fan-007", 1, "off", None)
        .await
        .unwrap();
    let batch: Vec<NewNotification> = subs
        .iter()
        .flat_map(|s| [note(s, "e1"), note(s, "e2")])
        .collect();
    let logged = store.append_notifications(&batch).await.unwrap();
    assert_eq!(
        logged.len(),
        2 * 119,
        "all but the subscription that is off"
    );
    let ids: std::collections::HashSet<&str> =
        logged.iter().map(|n| n.notification_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        logged.len(),
        "every notification has an id of its own"
    );
    for s in subs.iter().filter(|s| *s != "fan-007") {
        let read = store
            .notifications_after(key(&store, "default", s).await, 0, 10)
            .await
            .unwrap();
        let mine: Vec<&hub_store::Notification> =
            logged.iter().filter(|n| &n.subscription_id == s).collect();
        assert_eq!(
            read.iter().collect::<Vec<_>>(),
            mine,
            "{s} reads what was logged"
        );
        assert_eq!(
            read.iter()
                .map(|n| (n.event_id.as_str(), n.event_number))
                .collect::<Vec<_>>(),
            [("e1", 1), ("e2", 2)]
        );
        assert_eq!(read[0].resource, note(s, "e1").resource);
    }
    // The same event again reaches only a subscription that does not have it yet.
    store
        .create_subscription("default", "late", &write("active"))
        .await
        .unwrap();
    let again: Vec<NewNotification> = ["fan-000", "fan-001", "late"]
        .iter()
        .map(|s| note(s, "e1"))
        .collect();
    let logged = store.append_notifications(&again).await.unwrap();
    assert_eq!(
        logged
            .iter()
            .map(|n| (n.subscription_id.as_str(), n.event_number))
            .collect::<Vec<_>>(),
        [("late", 1)]
    );
    // A deleted and re-created id starts an empty log, with new ids for the same events.
    let before = store
        .notifications_after(key(&store, "default", "fan-000").await, 0, 10)
        .await
        .unwrap();
    assert!(
        store
            .delete_subscription("default", "fan-000")
            .await
            .unwrap()
    );
    store
        .create_subscription("default", "fan-000", &write("active"))
        .await
        .unwrap();
    assert!(
        store
            .notifications_after(key(&store, "default", "fan-000").await, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let logged = store
        .append_notifications(&[note("fan-000", "e1")])
        .await
        .unwrap();
    assert_eq!(logged[0].event_number, 1);
    assert_ne!(logged[0].notification_id, before[0].notification_id);
}

pub(crate) async fn a_heartbeat_says_whether_leases_are_still_held(store: Store) {
    let wanted = created(&store, (0..3).map(|i| format!("h{i}"))).await;
    let first = store.heartbeat("a", 60_000).await.unwrap();
    assert!(!first.kept, "a new process holds nothing yet");
    assert!(first.others.is_empty());
    assert_eq!(
        store
            .claim_leases("a", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(store.heartbeat("a", 60_000).await.unwrap().kept);
    let b = store.heartbeat("b", 60_000).await.unwrap();
    assert_eq!(b.others.into_iter().collect::<Vec<_>>(), ["a"]);
    assert!(
        store
            .claim_leases("b", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .is_empty(),
        "a's heartbeat is live: its leases stay"
    );
    // a stops beating: b sees it gone and takes what it held
    assert!(store.heartbeat("a", -1).await.unwrap().kept);
    let b = store.heartbeat("b", 60_000).await.unwrap();
    assert!(b.others.is_empty(), "{b:?}");
    assert_eq!(
        store
            .claim_leases("b", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .len(),
        3
    );
    // a comes back: told its heartbeat lapsed, so it stops rather than send beside b
    let a = store.heartbeat("a", 60_000).await.unwrap();
    assert!(!a.kept);
    assert!(
        store
            .claim_leases("a", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    // b leaves cleanly: a sees it gone and takes over at once
    store.release_leases("b").await.unwrap();
    assert!(
        store
            .heartbeat("a", 60_000)
            .await
            .unwrap()
            .others
            .is_empty()
    );
    assert_eq!(
        store
            .claim_leases("a", pairs(&wanted), 60_000)
            .await
            .unwrap()
            .len(),
        3
    );
}

/// A lease claim: tenant, id and incarnation.
type Claim = (String, String, LogKey);

/// Lease keys as the store takes them.
fn pairs(wanted: &[Claim]) -> impl Iterator<Item = (&str, &str, LogKey)> {
    wanted.iter().map(|(t, i, k)| (t.as_str(), i.as_str(), *k))
}

/// Create `ids` in the default tenant; their lease claims.
async fn created(store: &Store, ids: impl IntoIterator<Item = String>) -> Vec<Claim> {
    let ids: Vec<String> = ids.into_iter().collect();
    for id in &ids {
        store
            .create_subscription("default", id, &write("active"))
            .await
            .unwrap();
    }
    claims(store, ids).await
}

/// The lease claims of existing subscriptions of the default tenant.
async fn claims(store: &Store, ids: impl IntoIterator<Item = String>) -> Vec<Claim> {
    let mut out = Vec::new();
    for id in ids {
        let k = key(store, "default", &id).await;
        out.push(("default".to_owned(), id, k));
    }
    out
}

/// A subscription deleted and re-created with the same id is a new log: nothing of the old
/// incarnation (a worker still sending for it, a consumer's offset, a lease, a read at an
/// old position) moves or reads the new one.
pub(crate) async fn an_old_incarnation_moves_nothing_of_the_new_one(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let old = key(&store, "default", "s1").await;
    let notes: Vec<_> = (1..=3).map(|i| note("s1", &format!("old{i}"))).collect();
    store.append_notifications(&notes).await.unwrap();
    let claim = [("default", "s1", old)];
    assert!(
        store
            .claim_leases("a", claim, 60_000)
            .await
            .unwrap()
            .contains(&old)
    );
    assert!(store.record_delivered_by(old, 2, Some("a")).await.unwrap());
    let generation = store
        .next_consumer_generation("default", "c")
        .await
        .unwrap();
    assert_eq!(
        store
            .commit_offset("default", "c", old, 3, generation)
            .await
            .unwrap(),
        Commit::Committed(3)
    );

    assert!(store.delete_subscription("default", "s1").await.unwrap());
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let new = key(&store, "default", "s1").await;
    assert_ne!(old, new, "a re-created id is a new incarnation");
    let notes: Vec<_> = (1..=2).map(|i| note("s1", &format!("new{i}"))).collect();
    let logged = store.append_notifications(&notes).await.unwrap();
    assert!(logged.iter().all(|n| n.log_key == new));
    // the same process holds the new incarnation's lease
    assert!(
        store
            .claim_leases("a", [("default", "s1", new)], 60_000)
            .await
            .unwrap()
            .contains(&new)
    );

    // the old worker's progress and failures are refused, and move nothing
    assert!(!store.record_delivered_by(old, 21, Some("a")).await.unwrap());
    assert!(
        !store
            .record_failure(old, failure("timeout", 4), Some("a"))
            .await
            .unwrap()
    );
    let d = store.delivery_state(new).await.unwrap();
    assert_eq!((d.delivered_through, d.attempts), (0, 0), "{d:?}");
    // the consumer starts the new log from its start; a commit on the old one is refused
    assert_eq!(
        store.committed_offset("default", "c", new).await.unwrap(),
        0
    );
    assert!(matches!(
        store
            .commit_offset("default", "c", old, 3, generation)
            .await,
        Err(StoreError::NotFound)
    ));
    // nor may a commit of that (older) Consume move the NEW log: the numbers it read are
    // the old log's (found by review: "commit c1 s1 25 1" after a delete and re-create
    // answered committed 25, and the consumer skipped the new log's events 1-25)
    assert_eq!(
        store
            .commit_offset("default", "c", new, 2, generation)
            .await
            .unwrap(),
        Commit::Recreated
    );
    assert_eq!(
        store.committed_offset("default", "c", new).await.unwrap(),
        0
    );
    // a Consume begun after the re-creation commits on the new log
    let again = store
        .next_consumer_generation("default", "c")
        .await
        .unwrap();
    assert_eq!(
        store
            .commit_offset("default", "c", new, 2, again)
            .await
            .unwrap(),
        Commit::Committed(2)
    );
    // reads are of one incarnation
    assert!(
        store
            .notifications_after(old, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.first_retained(old).await.unwrap(), None);
    let read = store.notifications_after(new, 0, 10).await.unwrap();
    let numbers: Vec<(i64, &str)> = read
        .iter()
        .map(|n| (n.event_number, n.event_id.as_str()))
        .collect();
    assert_eq!(numbers, [(1, "new1"), (2, "new2")]);
    assert_eq!(store.first_retained(new).await.unwrap(), Some(1));
}

/// Reactivating a subscription that was off skips what it missed in the update's own
/// transaction: no event logged after the reactivation can be skipped.
pub(crate) async fn reactivating_skips_the_backlog_in_the_same_write(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let notes: Vec<_> = (0..3).map(|i| note("s1", &format!("e{i}"))).collect();
    store.append_notifications(&notes).await.unwrap();
    store
        .update_subscription("default", "s1", None, &write("off"))
        .await
        .unwrap();
    let s1 = key(&store, "default", "s1").await;
    assert_eq!(store.delivery_state(s1).await.unwrap().delivered_through, 0);
    let row = store
        .update_subscription("default", "s1", None, &write("requested"))
        .await
        .unwrap();
    assert_eq!(row.events_since_start, 3);
    assert_eq!(store.delivery_state(s1).await.unwrap().delivered_through, 3);
    // a later event is delivered
    store
        .append_notifications(&[note("s1", "e3")])
        .await
        .unwrap();
    let next = store.notifications_after(s1, 3, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    // an update that is not a reactivation moves nothing
    store
        .update_subscription("default", "s1", None, &write("active"))
        .await
        .unwrap();
    assert_eq!(store.delivery_state(s1).await.unwrap().delivered_through, 3);
}

/// A failed attempt is stored with when the schedule tries again, so that a restarted
/// worker resumes the schedule; a success clears it.
pub(crate) async fn a_pending_retry_is_kept_with_the_delivery_state(store: Store) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let s1 = key(&store, "default", "s1").await;
    let pending = Failure {
        delivered_through: 2,
        attempts: 3,
        error: "503",
        next_attempt_in_ms: Some(600_000),
    };
    assert!(store.record_failure(s1, pending, None).await.unwrap());
    let d = store.delivery_state(s1).await.unwrap();
    assert_eq!((d.delivered_through, d.attempts), (2, 3));
    let due = d.next_attempt_in_ms.unwrap();
    assert!(due > 0 && due <= 600_000, "{due}");
    // a failure with no retry pending (a heartbeat) keeps none
    assert!(
        store
            .record_failure(s1, failure("refused", 1), None)
            .await
            .unwrap()
    );
    let d = store.delivery_state(s1).await.unwrap();
    assert_eq!((d.delivered_through, d.next_attempt_in_ms), (2, None));
    assert!(store.record_failure(s1, pending, None).await.unwrap());
    assert!(store.record_delivered(s1, 3).await.unwrap());
    let d = store.delivery_state(s1).await.unwrap();
    assert_eq!((d.attempts, d.next_attempt_in_ms), (0, None));
    // fenced by the lease like progress: nobody holds it, so an owner's write is refused
    assert!(
        !store
            .record_failure(s1, pending, Some("nobody"))
            .await
            .unwrap()
    );
}

/// The sealing keys' fingerprints are recorded once per key id, and sealed values are counted
/// by key id (a key id holding LIKE's wildcards matches only itself).
pub(crate) async fn sealing_keys_are_recorded_and_sealed_values_counted(store: Store) {
    assert!(store.sealing_keys().await.unwrap().is_empty());
    store.record_sealing_key("k1", "fp-1").await.unwrap();
    store.record_sealing_key("k1", "fp-other").await.unwrap();
    store.record_sealing_key("k_2", "fp-2").await.unwrap();
    let keys = store.sealing_keys().await.unwrap();
    assert_eq!(
        keys.get("k1").map(String::as_str),
        Some("fp-1"),
        "the first is kept"
    );
    assert_eq!(keys.len(), 2);

    assert_eq!(store.count_sealed(None).await.unwrap(), 0);
    let mut sealed = write("active");
    sealed.secret = Some("enc:v1:k1:AAAA".into());
    store
        .create_subscription("default", "a", &sealed)
        .await
        .unwrap();
    let mut in_header = write("active");
    in_header.resource =
        r#"{"resourceType":"Subscription","channel":{"header":["X-Key: enc:v1:kx2:BBBB"]}}"#.into();
    store
        .create_subscription("default", "b", &in_header)
        .await
        .unwrap();
    store
        .create_subscription("default", "c", &write("active"))
        .await
        .unwrap();
    assert_eq!(store.count_sealed(None).await.unwrap(), 2);
    assert_eq!(store.count_sealed(Some("k1")).await.unwrap(), 1);
    assert_eq!(store.count_sealed(Some("kx2")).await.unwrap(), 1);
    assert_eq!(
        store.count_sealed(Some("k_2")).await.unwrap(),
        0,
        "_ is not a wildcard"
    );
    assert_eq!(
        store.count_sealed(Some("k%")).await.unwrap(),
        0,
        "% is not a wildcard"
    );
}
