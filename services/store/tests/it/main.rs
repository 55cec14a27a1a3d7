//! The store contract, run against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `FHIR_HUB_TEST_DATABASE_URL` (`scripts/test.sh` sets it); each test
//! gets a schema of its own. Without the variable the PostgreSQL half is skipped, unless
//! `FHIR_HUB_REQUIRE_EXTERNAL=1`, which turns the skip into a failure.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod contract;
mod producer_text;
mod retention;
mod schema;
mod timeouts;

use hub_store::Store;

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// A fresh schema on the test PostgreSQL server, or `None` to skip.
async fn postgres() -> Option<Store> {
    postgres_with_url().await.map(|(store, _)| store)
}

/// [`postgres`], with the URL of its schema (for a connection of the test's own).
async fn postgres_with_url() -> Option<(Store, String)> {
    let url = postgres_url().await?;
    Some((Store::connect(&url).await.unwrap(), url))
}

/// The URL of a fresh schema on the test PostgreSQL server, or `None` to skip.
async fn postgres_url() -> Option<String> {
    let base = match std::env::var("FHIR_HUB_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var("FHIR_HUB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                "FHIR_HUB_TEST_DATABASE_URL is not set but FHIR_HUB_REQUIRE_EXTERNAL=1"
            );
            eprintln!("skipping: FHIR_HUB_TEST_DATABASE_URL is not set");
            return None;
        }
    };
    Some(hub_store::fresh_postgres_schema(&base, "t").await.unwrap())
}

macro_rules! contract_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = super::sqlite().await;
                    super::contract::$name(store).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::postgres().await else { return };
                    assert_eq!(store.backend(), hub_store::Backend::Postgres);
                    super::contract::$name(store).await;
                }
            )*
        }
    };
}

/// A second connection to the store's database, for what its API cannot do.
async fn raw(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::pool::PoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

macro_rules! raw_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_raw {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, dir) = super::sqlite().await;
                    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
                    super::retention::$name(store, super::raw(&url).await).await;
                }
            )*
        }
        mod postgres_raw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((store, url)) = super::postgres_with_url().await else { return };
                    super::retention::$name(store, super::raw(&url).await).await;
                }
            )*
        }
    };
}

raw_suite!(
    a_read_stops_at_a_missing_number,
    an_event_logged_again_is_kept_as_long_as_a_new_one,
    retention_in_small_batches_purges_what_it_should,
    purges_racing_appends_leave_no_hole,
    a_start_at_a_time_is_the_first_event_logged_then_or_later,
);

contract_suite!(
    subscription_crud_with_versions,
    resealing_is_fenced_by_version,
    event_numbers_are_gap_free_and_deduplicated,
    bursts_for_one_subscription_take_a_block_of_numbers,
    concurrent_appends_never_repeat_or_skip_a_number,
    opposite_batch_orders_never_deadlock,
    a_pool_of_its_own_shares_data_not_connections,
    notifications_read_back_exactly,
    delivery_state_moves_forward_only,
    tenants_are_isolated,
    leases_give_each_subscription_one_owner,
    some_leases_are_handed_back_for_another_to_claim,
    audit_rows_are_searched_and_purged,
    api_keys_are_created_changed_and_revoked,
    topics_by_id_and_url,
    retention_purges_only_delivered_and_never_reuses_numbers,
    last_versions_are_kept_per_resource,
    an_older_version_never_replaces_a_newer_one,
    ws_tokens_bind_until_they_expire,
    secrets_live_in_their_own_columns,
    sealing_keys_are_recorded_and_sealed_values_counted,
    quarantine_keeps_one_row_per_position,
    generations_move_per_tenant_and_only_on_client_writes,
    matching_changes_name_what_each_write_touched,
    versions_are_kept_and_continue_after_a_delete,
    consumer_offsets_only_move_forward,
    housekeeping_purges_what_nothing_needs,
    one_event_reaching_many_subscriptions_reads_back_for_each,
    a_heartbeat_says_whether_leases_are_still_held,
    an_old_incarnation_moves_nothing_of_the_new_one,
    reactivating_skips_the_backlog_in_the_same_write,
    a_pending_retry_is_kept_with_the_delivery_state,
);

#[tokio::test]
async fn sqlite_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("nested/dir/hub.db").display()
    );
    {
        let store = Store::connect(&url).await.unwrap();
        store
            .create_subscription("default", "s1", &contract::write("active"))
            .await
            .unwrap();
        store
            .append_notifications(&[contract::note("s1", "e1")])
            .await
            .unwrap();
        store.close().await;
    }
    let store = Store::connect(&url).await.unwrap();
    let logged = store
        .append_notifications(&[contract::note("s1", "e2")])
        .await
        .unwrap();
    assert_eq!(logged[0].event_number, 2);
}

/// The store a SQLite file holds, opened beside the `Store` for what the contract cannot see.
async fn raw_sqlite(dir: &tempfile::TempDir) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    sqlx::SqlitePool::connect(&url).await.unwrap()
}

#[tokio::test]
async fn an_event_is_stored_once_however_many_subscriptions_it_reaches() {
    let (store, dir) = sqlite().await;
    let mut batch = Vec::new();
    for i in 0..300 {
        let id = format!("s{i}");
        store
            .create_subscription("default", &id, &contract::write("active"))
            .await
            .unwrap();
        batch.push(contract::note(&id, "e1"));
    }
    assert_eq!(store.append_notifications(&batch).await.unwrap().len(), 300);
    let raw = raw_sqlite(&dir).await;
    let count = |sql: &'static str| {
        let raw = raw.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&raw)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM logged_events").await, 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM logged_events WHERE resource IS NOT NULL").await,
        1
    );
    assert_eq!(count("SELECT COUNT(*) FROM notification_log").await, 300);
    // Purging everything delivered takes the rows and then the event nobody refers to.
    for i in 0..300 {
        store
            .record_delivered(contract::key(&store, "default", &format!("s{i}")).await, 1)
            .await
            .unwrap();
    }
    let purged = store
        .purge_notifications("9999-12-31T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(purged, 300);
    assert_eq!(count("SELECT COUNT(*) FROM logged_events").await, 0);
}

/// Run the migrations below version 15 (the log before it was fanned out), write a log in
/// that shape, then open it as a `Store`: the rest migrate it.
async fn old_log_migrates(url: &str, dir: &str) {
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(&format!(
        "{}/migrations/{dir}",
        env!("CARGO_MANIFEST_DIR")
    )))
    .await
    .unwrap();
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 15)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let old = [
        (
            "s1",
            1,
            "old-1",
            "e1",
            Some(r#"{"resourceType":"Observation","id":"a"}"#),
        ),
        ("s1", 2, "old-2", "e2", None),
        (
            "s2",
            1,
            "old-3",
            "e1",
            Some(r#"{"resourceType":"Observation","id":"a"}"#),
        ),
    ];
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    migrator.run(&pool).await.unwrap();
    for (id, events) in [("s1", 2_i64), ("s2", 1)] {
        sqlx::query(
            "INSERT INTO subscriptions (tenant, id, version_id, last_updated, status,
                 criteria, channel_type, endpoint, resource, events_since_start)
             VALUES ('default', $1, 1, '2024-01-01T00:00:00Z', 'active',
                 'Observation?code=1', 'rest-hook', 'http://example.test/hook',
                 '{}', $2)",
        )
        .bind(id)
        .bind(events)
        .execute(&pool)
        .await
        .unwrap();
    }
    for (sub, number, nid, event, resource) in old {
        sqlx::query(
            "INSERT INTO notifications (tenant, subscription_id, event_number,
                 notification_id, event_id, action, focus_type, focus_id,
                 focus_version, occurred_at, created_at, resource)
             VALUES ('default', $1, $2, $3, $4, 'create', 'Observation', 'a', '1',
                 '2024-01-01T00:00:00Z', '2024-01-01T00:00:01Z', $5)",
        )
        .bind(sub)
        .bind(number)
        .bind(nid)
        .bind(event)
        .bind(resource)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let store = Store::connect(url).await.unwrap();
    let s1 = store
        .notifications_after(contract::key(&store, "default", "s1").await, 0, 10)
        .await
        .unwrap();
    let s2 = store
        .notifications_after(contract::key(&store, "default", "s2").await, 0, 10)
        .await
        .unwrap();
    let got: Vec<(&str, i64, &str, &str, Option<&str>)> = s1
        .iter()
        .chain(&s2)
        .map(|n| {
            (
                n.subscription_id.as_str(),
                n.event_number,
                n.notification_id.as_str(),
                n.event_id.as_str(),
                n.resource.as_deref(),
            )
        })
        .collect();
    assert_eq!(got, old, "every row, with the id it was delivered with");
    assert_eq!(s1[0].created_at, "2024-01-01T00:00:01Z");
    let next = store
        .append_notifications(&[contract::note("s1", "e3"), contract::note("s2", "e2")])
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|n| n.event_number).collect::<Vec<_>>(),
        [3, 2],
        "numbering continues"
    );
    let created = store
        .create_subscription("default", "s3", &contract::write("active"))
        .await
        .unwrap();
    assert_eq!(created.events_since_start, 0);
    let logged = store
        .append_notifications(&[contract::note("s3", "e1")])
        .await
        .unwrap();
    assert_eq!(
        logged[0].event_number, 1,
        "a new subscription gets a log key of its own"
    );
}

#[tokio::test]
async fn sqlite_log_from_before_fan_out_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    old_log_migrates(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_log_from_before_fan_out_migrates() {
    let Ok(base) = std::env::var("FHIR_HUB_TEST_DATABASE_URL") else {
        eprintln!("skipping: FHIR_HUB_TEST_DATABASE_URL is not set");
        return;
    };
    let url = hub_store::fresh_postgres_schema(&base, "m").await.unwrap();
    old_log_migrates(&url, "postgres").await;
}

/// SQLite reads a subscription's rows with each resource embedded as its JSON. A stored
/// resource that is not JSON (written by something other than the hub) still reads back,
/// as it is stored, through the escaped read.
#[tokio::test]
async fn sqlite_reads_a_stored_resource_that_is_not_json() {
    let (store, dir) = sqlite().await;
    store
        .create_subscription("default", "s1", &contract::write("active"))
        .await
        .unwrap();
    let notes = [
        contract::note("s1", "e1"),
        contract::note("s1", "e2"),
        contract::note("s1", "e3"),
    ];
    store.append_notifications(&notes).await.unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    for bad in ["not json", "null],[\"x\"", "{\"a\":1} 2", ""] {
        sqlx::query("UPDATE logged_events SET resource = ? WHERE event_id = 'e2'")
            .bind(bad)
            .execute(&raw)
            .await
            .unwrap();
        let read = store
            .notifications_after(contract::key(&store, "default", "s1").await, 0, 10)
            .await
            .unwrap();
        assert_eq!(
            read.iter().map(|n| n.event_number).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "{bad}"
        );
        assert_eq!(read[1].note.resource.as_deref(), Some(bad));
        assert_eq!(read[0].note, notes[0]);
        assert_eq!(read[2].note, notes[2]);
    }
}

/// A heartbeat is judged on the database's clock when its statement applies, not when its
/// process read the clock: here a's renewal waits on a concurrent write to its row past its
/// expiry, meanwhile b sees a gone and takes its lease over; when a's renewal applies, a is
/// told its heartbeat lapsed (and stops), rather than both believing they hold the lease.
/// PostgreSQL only: SQLite has one writer at a time, so the interleaving cannot arise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_applied_after_its_expiry_is_not_kept() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    a.create_subscription("default", "s1", &contract::write("active"))
        .await
        .unwrap();
    let s1 = contract::key(&a, "default", "s1").await;
    let ttl = 2_000;
    a.heartbeat("a", ttl).await.unwrap();
    let claim = [("default", "s1", s1)];
    assert!(a.claim_leases("a", claim, ttl).await.unwrap().contains(&s1));
    // a concurrent write holds a's heartbeat row
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    sqlx::query("UPDATE delivery_owners SET expires_at = expires_at WHERE owner = 'a'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let renewal = tokio::spawn({
        let a = a.clone();
        async move { a.heartbeat("a", ttl).await.unwrap() }
    });
    // a's heartbeat lapses meanwhile: b takes the lease over
    tokio::time::sleep(std::time::Duration::from_millis(2 * ttl as u64)).await;
    assert!(
        b.claim_leases("b", claim, 60_000)
            .await
            .unwrap()
            .contains(&s1)
    );
    tx.commit().await.unwrap();
    let renewed = renewal.await.unwrap();
    assert!(
        !renewed.kept,
        "a's renewal applied after its expiry and after b took over: a must stop"
    );
    // and a's progress is refused: b holds the lease
    assert!(!a.record_delivered_by(s1, 1, Some("a")).await.unwrap());
    assert!(b.record_delivered_by(s1, 1, Some("b")).await.unwrap());
}

/// Migration 0018 keys positions by incarnation: a database written before it keeps every
/// cursor, lease and offset of its subscriptions, drops those of deleted ones, and gives a
/// subscription that had no delivery row one (progress only updates it).
#[tokio::test]
async fn positions_survive_the_move_to_log_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut before = sqlx::migrate::Migrator::new(path).await.unwrap();
    let older: Vec<_> = before
        .migrations
        .iter()
        .filter(|m| m.version < 18)
        .cloned()
        .collect();
    before.migrations = older.into();
    before.run(&pool).await.unwrap();
    for sql in [
        "INSERT INTO subscriptions (tenant, id, version_id, last_updated, status, criteria,
             channel_type, endpoint, resource, events_since_start, log_key)
         VALUES ('default', 's1', 1, '2024-01-01T00:00:00Z', 'active', 'Observation?code=1',
             'rest-hook', 'http://example.test/hook', '{}', 5, 7),
                ('default', 's2', 1, '2024-01-01T00:00:00Z', 'active', 'Observation?code=1',
             'rest-hook', 'http://example.test/hook', '{}', 0, 8)",
        "INSERT INTO delivery_state (tenant, subscription_id, delivered_through, attempts)
         VALUES ('default', 's1', 4, 2), ('default', 'gone', 9, 0)",
        "INSERT INTO delivery_leases (tenant, subscription_id, owner, expires_at)
         VALUES ('default', 's1', 'p', 0), ('default', 'gone', 'p', 0)",
        "INSERT INTO consumer_offsets (tenant, consumer, subscription_id, event_number, committed_at)
         VALUES ('default', 'c', 's1', 3, '2024-01-01T00:00:00Z'),
                ('default', 'c', 'gone', 9, '2024-01-01T00:00:00Z')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::connect(&url).await.unwrap();
    let s1 = contract::key(&store, "default", "s1").await;
    let s2 = contract::key(&store, "default", "s2").await;
    let d = store.delivery_state(s1).await.unwrap();
    assert_eq!((d.delivered_through, d.attempts), (4, 2));
    assert_eq!(store.committed_offset("default", "c", s1).await.unwrap(), 3);
    assert!(
        store.record_delivered(s2, 0).await.unwrap(),
        "s2 got its row"
    );
    // s1's lease is still p's: another process cannot take it while p is alive
    store.heartbeat("p", 60_000).await.unwrap();
    let claim = [("default", "s1", s1)];
    assert!(
        store
            .claim_leases("q", claim, 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    let p = store
        .purge_stale("2999-01-01T00:00:00Z", None)
        .await
        .unwrap();
    assert_eq!(
        (p.leases, p.consumer_offsets),
        (0, 0),
        "the gone ones were dropped"
    );
}
