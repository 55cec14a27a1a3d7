//! PostgreSQL session limits: a frozen process holding a row lock (a `FOR UPDATE` in an
//! open transaction) neither blocks the store's writes for ever nor keeps its locks for
//! ever.

use std::time::Duration;

use hub_store::{Store, StoreError, Timeouts};
use sqlx::Connection;

use crate::contract::{note, write};

/// Longer than any limit set here: a write still waiting then is hanging.
const HANG: Duration = Duration::from_secs(60);

/// Another connection holds the subscription row (`SELECT … FOR UPDATE` in an open
/// transaction): the store's subscription write and the matcher's append each fail with a
/// timeout error instead of waiting for it, and succeed once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_elsewhere_fails_writes_with_a_timeout() {
    let Some(url) = crate::postgres_url().await else {
        return;
    };
    let limits = Timeouts {
        lock_ms: 300,
        ..Timeouts::default()
    };
    let store = Store::connect_with(&url, limits).await.unwrap();
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT id FROM subscriptions WHERE id = 's1' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();

    let update = tokio::time::timeout(
        HANG,
        store.update_subscription("default", "s1", None, &write("off")),
    )
    .await
    .expect("the write waited for the lock instead of timing out");
    match update {
        Err(StoreError::Timeout(why)) => assert!(why.contains("lock timeout"), "{why}"),
        other => panic!("{other:?}"),
    }
    let append = tokio::time::timeout(HANG, store.append_notifications(&[note("s1", "e1")]))
        .await
        .expect("the append waited for the lock instead of timing out");
    assert!(matches!(append, Err(StoreError::Timeout(_))), "{append:?}");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let logged = store
        .append_notifications(&[note("s1", "e1")])
        .await
        .unwrap();
    assert_eq!(logged[0].event_number, 1, "nothing was half-written");
}

/// A session that sits idle inside a transaction (a process frozen mid-transaction) is
/// ended by the server, and its lock with it: a write that waits for the lock goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_cut_and_its_lock_released() {
    let Some(url) = crate::postgres_url().await else {
        return;
    };
    let limits = Timeouts {
        idle_in_transaction_ms: 300,
        lock_ms: 0,
        ..Timeouts::default()
    };
    let store = Store::connect_with(&url, limits).await.unwrap();
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    // a session as the store sets every pooled one up, frozen with the row locked
    let mut frozen = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(&limits.session_sql())
        .execute(&mut frozen)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut frozen).await.unwrap();
    sqlx::query("SELECT id FROM subscriptions WHERE id = 's1' FOR UPDATE")
        .execute(&mut frozen)
        .await
        .unwrap();
    // no lock timeout here: the write waits, and goes through once the server cuts the
    // idle session
    let update = tokio::time::timeout(
        HANG,
        store.update_subscription("default", "s1", None, &write("off")),
    )
    .await
    .expect("the idle transaction kept its lock");
    assert_eq!(update.unwrap().status, "off");
    let after = sqlx::query("SELECT 1").execute(&mut frozen).await;
    assert!(after.is_err(), "the idle session was ended: {after:?}");
}

/// Every pooled session of the store carries the limits (read back from the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_carry_the_limits() {
    let Some(url) = crate::postgres_url().await else {
        return;
    };
    let limits = Timeouts {
        lock_ms: 1234,
        statement_ms: 56789,
        idle_in_transaction_ms: 4321,
    };
    let store = Store::connect_with(&url, limits).await.unwrap();
    assert_eq!(
        store.session_limits().await.unwrap(),
        ["1234ms", "56789ms", "4321ms"]
    );
    let own = store.own_pool(2).await.unwrap();
    assert_eq!(
        own.session_limits().await.unwrap(),
        ["1234ms", "56789ms", "4321ms"]
    );
}
