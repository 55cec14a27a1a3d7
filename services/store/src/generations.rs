//! Matching generations: how every matcher instance learns, cheaply, that what it matches
//! against changed. Client writes to subscriptions and topics bump the tenant's counter in
//! the same transaction; the hub's own status changes (active ↔ error, off) do not, so an
//! endpoint that flaps never makes a matcher rebuild anything.

use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError};

const PREFIX: &str = "subscriptions:";

/// Bump `tenant`'s generation (and the global one) inside a client write's transaction.
pub(crate) async fn bump(tx: &mut Transaction<'_, Any>, tenant: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE hub_counters SET value = value + 1 WHERE name = 'subscriptions'")
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO hub_counters (name, value) VALUES ($1, 1)
         ON CONFLICT (name) DO UPDATE SET value = hub_counters.value + 1",
    )
    .bind(format!("{PREFIX}{tenant}"))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// A number that changes whenever any client write changes matching, in any tenant.
    pub async fn subscriptions_generation(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM hub_counters WHERE name = 'subscriptions'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Every tenant that has (or had) subscriptions or topics, with its generation.
    pub async fn tenant_generations(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT name, value FROM hub_counters WHERE name LIKE 'subscriptions:%'")
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get(0)?;
            if let Some(tenant) = name.strip_prefix(PREFIX) {
                out.push((tenant.to_owned(), r.try_get(1)?));
            }
        }
        Ok(out)
    }
}
