//! Matching generations: how every matcher instance learns, cheaply, that what it matches
//! against changed. Client writes to subscriptions and topics bump the tenant's counter in
//! the same transaction; the hub's own status changes (active ↔ error, off) do not, so an
//! endpoint that flaps never makes a matcher rebuild anything.
//!
//! On PostgreSQL a bump also sends a `NOTIFY` (delivered on commit), so other processes learn
//! of the write at once (`listen`).
//!
//! Each bump also records what it changed (`matching_changes`): one subscription, which a
//! matcher re-reads and re-indexes in place, or nothing in particular (a topic, an API key),
//! which rebuilds the tenant.

use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError};

const PREFIX: &str = "subscriptions:";

/// How many changes per tenant are kept: a matcher further behind rebuilds the tenant.
pub(crate) const KEPT_CHANGES: i64 = 10_000;

/// Bump `tenant`'s generation (and the global one) inside a client write's transaction,
/// recording that `subscription` changed (`None`: something that needs a rebuild).
pub(crate) async fn bump(
    tx: &mut Transaction<'_, Any>,
    backend: crate::Backend,
    tenant: &str,
    subscription: Option<&str>,
) -> Result<(), StoreError> {
    if backend == crate::Backend::Postgres {
        // delivery and matchers in other processes look now, not at their next poll
        crate::listen::notify_written(tx, tenant).await?;
    }
    sqlx::query("UPDATE hub_counters SET value = value + 1 WHERE name = 'subscriptions'")
        .execute(&mut **tx)
        .await?;
    let row = sqlx::query(
        "INSERT INTO hub_counters (name, value) VALUES ($1, 1)
         ON CONFLICT (name) DO UPDATE SET value = hub_counters.value + 1
         RETURNING value",
    )
    .bind(format!("{PREFIX}{tenant}"))
    .fetch_one(&mut **tx)
    .await?;
    let generation: i64 = row.try_get(0)?;
    sqlx::query(
        "INSERT INTO matching_changes (tenant, generation, subscription_id) VALUES ($1, $2, $3)",
    )
    .bind(tenant)
    .bind(generation)
    .bind(subscription)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What changed matching in one tenant after some generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchingChanges {
    /// The subscriptions to re-read, as of `generation` (each once, in no particular order).
    Subscriptions { generation: i64, ids: Vec<String> },
    /// Something other than subscriptions changed, or the changes are no longer all kept:
    /// read the tenant again.
    Rebuild,
}

impl Store {
    /// A number that changes whenever any client write changes matching, in any tenant.
    pub async fn subscriptions_generation(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM hub_counters WHERE name = 'subscriptions'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// What changed matching in `tenant` after generation `after`, up to `until` (a value
    /// [`Store::tenant_generations`] gave).
    pub async fn matching_changes(
        &self,
        tenant: &str,
        after: i64,
        until: i64,
    ) -> Result<MatchingChanges, StoreError> {
        if until - after > KEPT_CHANGES {
            return Ok(MatchingChanges::Rebuild);
        }
        let rows = sqlx::query(
            "SELECT generation, subscription_id FROM matching_changes
             WHERE tenant = $1 AND generation > $2 AND generation <= $3 ORDER BY generation",
        )
        .bind(tenant)
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut expected = after + 1;
        for r in rows {
            let generation: i64 = r.try_get(0)?;
            let id: Option<String> = r.try_get(1)?;
            // generations are gap-free per tenant; a gap means rows were purged
            match id {
                Some(id) if generation == expected => ids.push(id),
                _ => return Ok(MatchingChanges::Rebuild),
            }
            expected += 1;
        }
        if expected != until + 1 {
            return Ok(MatchingChanges::Rebuild);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(MatchingChanges::Subscriptions {
            generation: until,
            ids,
        })
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
