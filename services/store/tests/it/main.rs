//! The store contract, run against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `FHIR_HUB_TEST_DATABASE_URL` (`scripts/test.sh` sets it); each test
//! gets a schema of its own. Without the variable the PostgreSQL half is skipped, unless
//! `FHIR_HUB_REQUIRE_EXTERNAL=1`, which turns the skip into a failure.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod contract;

use hub_store::Store;

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// A fresh schema on the test PostgreSQL server, or `None` to skip.
async fn postgres() -> Option<Store> {
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
    let url = hub_store::fresh_postgres_schema(&base, "t").await.unwrap();
    Some(Store::connect(&url).await.unwrap())
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

contract_suite!(
    subscription_crud_with_versions,
    event_numbers_are_gap_free_and_deduplicated,
    bursts_for_one_subscription_take_a_block_of_numbers,
    concurrent_appends_never_repeat_or_skip_a_number,
    opposite_batch_orders_never_deadlock,
    a_pool_of_its_own_shares_data_not_connections,
    notifications_read_back_exactly,
    delivery_state_moves_forward_only,
    tenants_are_isolated,
    leases_give_each_subscription_one_owner,
    audit_rows_are_searched_and_purged,
    api_keys_are_created_changed_and_revoked,
    topics_by_id_and_url,
    retention_purges_only_delivered_and_never_reuses_numbers,
    last_versions_are_kept_per_resource,
    ws_tokens_bind_until_they_expire,
    secrets_live_in_their_own_columns,
    quarantine_keeps_one_row_per_position,
    generations_move_per_tenant_and_only_on_client_writes,
    matching_changes_name_what_each_write_touched,
    versions_are_kept_and_continue_after_a_delete,
    consumer_offsets_only_move_forward,
    housekeeping_purges_what_nothing_needs,
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
