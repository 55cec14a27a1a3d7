//! Delivery leases: one delivery process at a time per subscription, so several processes
//! can run the delivery role without sending every notification twice. A process renews its
//! leases while it runs; a lease not renewed in time is taken over by another process.
//! Expiry is measured on the database's clock, the one clock every process shares.

use std::collections::HashSet;

use sqlx::Row;

use crate::{Store, StoreError};

impl Store {
    /// The database's clock in milliseconds since the epoch: every delivery process compares
    /// lease expiry against this one clock, so a host whose clock runs ahead cannot take
    /// over live leases, nor one that runs behind keep expired ones.
    pub async fn db_now_ms(&self) -> Result<i64, StoreError> {
        let sql = match self.backend {
            crate::Backend::Postgres => {
                "SELECT CAST(floor(extract(epoch from clock_timestamp()) * 1000) AS BIGINT)"
            }
            crate::Backend::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
            }
        };
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }

    /// Renew `owner`'s leases and claim the `wanted` subscriptions that nobody holds (or
    /// whose holder let the lease expire). Returns every subscription `owner` now holds
    /// among `wanted`.
    pub async fn claim_leases(
        &self,
        owner: &str,
        wanted: &[(String, String)],
        ttl_ms: i64,
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let now = self.db_now_ms().await?;
        let until = now + ttl_ms;
        sqlx::query("UPDATE delivery_leases SET expires_at = $2 WHERE owner = $1")
            .bind(owner)
            .bind(until)
            .execute(&self.pool)
            .await?;
        let mut held: HashSet<(String, String)> = HashSet::new();
        let mut taken: HashSet<(String, String)> = HashSet::new();
        for row in
            sqlx::query("SELECT tenant, subscription_id, owner, expires_at FROM delivery_leases")
                .fetch_all(&self.pool)
                .await?
        {
            let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let who: String = row.try_get(2)?;
            let expires: i64 = row.try_get(3)?;
            if who == owner {
                held.insert(key);
            } else if expires >= now {
                taken.insert(key);
            }
        }
        for key in wanted {
            if held.contains(key) || taken.contains(key) {
                continue;
            }
            // Insert, or take over an expired lease; a live lease of another owner stays.
            let got = sqlx::query(
                "INSERT INTO delivery_leases (tenant, subscription_id, owner, expires_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, subscription_id) DO UPDATE
                 SET owner = excluded.owner, expires_at = excluded.expires_at
                 WHERE delivery_leases.owner = excluded.owner OR delivery_leases.expires_at < $5
                 RETURNING owner",
            )
            .bind(&key.0)
            .bind(&key.1)
            .bind(owner)
            .bind(until)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if got.is_some() {
                held.insert(key.clone());
            }
        }
        let wanted: HashSet<&(String, String)> = wanted.iter().collect();
        held.retain(|k| wanted.contains(k));
        Ok(held)
    }

    /// Give up every lease of `owner` (clean shutdown), so others take over at once.
    pub async fn release_leases(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM delivery_leases WHERE owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
