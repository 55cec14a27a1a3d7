//! Rollback safety: a binary refuses a schema a newer binary migrated, on both backends.

use hub_store::{Backend, Store};
use sqlx::Connection;

/// Record a migration newer than this binary knows, as a newer fhir-hub would have.
async fn migrate_beyond(url: &str, backend: Backend) -> i64 {
    let newer = Store::schema_version(backend) + 1;
    let sql = format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({newer}, 'from the future', true, x'00', 0)"
    );
    let sql = if backend == Backend::Postgres {
        sql.replace("x'00'", "'\\x00'::bytea")
    } else {
        sql
    };
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(&sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    newer
}

async fn refused(url: &str, backend: Backend) {
    Store::connect(url).await.unwrap().close().await;
    let newer = migrate_beyond(url, backend).await;
    let e = Store::connect(url).await.unwrap_err().to_string();
    assert!(
        e.contains("newer than this fhir-hub")
            && e.contains(&format!("migration {newer}"))
            && e.contains("restore the backup"),
        "{e}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_on_sqlite() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    refused(&url, Backend::Sqlite).await;
}

#[tokio::test]
async fn a_newer_schema_is_refused_on_postgres() {
    sqlx::any::install_default_drivers();
    let Some(url) = crate::postgres_url().await else {
        return;
    };
    refused(&url, Backend::Postgres).await;
}
