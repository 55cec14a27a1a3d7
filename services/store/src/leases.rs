//! Delivery leases: one delivery process at a time per subscription, so several processes
//! can run the delivery role without sending every notification twice. A process renews one
//! heartbeat row while it runs (not each lease); the leases of a process whose heartbeat
//! lapsed are taken over by another. Expiry is measured on the database's clock, the one
//! clock every process shares.

use std::collections::{BTreeSet, HashSet};

use sqlx::Row;

use crate::{Store, StoreError};

/// What a delivery process's heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The heartbeat was still live: every lease the process held is still its own. `false`
    /// when it had lapsed (others may have taken its subscriptions) or there was none yet.
    pub kept: bool,
    /// The other delivery processes alive now.
    pub others: BTreeSet<String>,
}

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

    /// Renew `owner`'s heartbeat (one row, however many leases it holds) until `ttl_ms` from
    /// now on the database's clock, and say whether its leases are still its own and which
    /// other delivery processes are alive.
    pub async fn heartbeat(&self, owner: &str, ttl_ms: i64) -> Result<Heartbeat, StoreError> {
        let now = self.db_now_ms().await?;
        let kept = sqlx::query(
            "UPDATE delivery_owners SET expires_at = $2 WHERE owner = $1 AND expires_at >= $3",
        )
        .bind(owner)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0;
        if !kept {
            self.register(owner, now + ttl_ms).await?;
        }
        let mut others = BTreeSet::new();
        for row in sqlx::query("SELECT owner FROM delivery_owners WHERE expires_at >= $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?
        {
            let who: String = row.try_get(0)?;
            if who != owner {
                others.insert(who);
            }
        }
        Ok(Heartbeat { kept, others })
    }

    async fn register(&self, owner: &str, until: i64) -> Result<(), StoreError> {
        // processes gone for a day: their rows say nothing any more (a restart is a new owner)
        sqlx::query("DELETE FROM delivery_owners WHERE expires_at < $1")
            .bind(until - 86_400_000)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO delivery_owners (owner, expires_at) VALUES ($1, $2)
             ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(owner)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Renew `owner`'s heartbeat and claim the `wanted` subscriptions that nobody holds, or
    /// whose holder's heartbeat lapsed. Returns every subscription `owner` now holds among
    /// `wanted`. A few statements per 200 subscriptions, whatever the lease table holds.
    pub async fn claim_leases<'a>(
        &self,
        owner: &str,
        wanted: impl IntoIterator<Item = (&'a str, &'a str)>,
        ttl_ms: i64,
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let mut keys: Vec<(&str, &str)> = wanted.into_iter().collect();
        let now = self.db_now_ms().await?;
        self.register(owner, now + ttl_ms).await?;
        keys.sort_unstable();
        keys.dedup();
        let mut held = HashSet::new();
        for chunk in keys.chunks(200) {
            // every value in the order it appears (SQLite numbers `?` that way)
            let p = crate::placeholders(self.backend, 1, chunk.len() * 3 + 1);
            let values: Vec<String> = p[..chunk.len() * 3]
                .chunks(3)
                .map(|r| format!("({}, {}, {}, 0)", r[0], r[1], r[2]))
                .collect();
            // Insert, or take over a lease whose owner is not alive; a live owner's stays.
            let sql = format!(
                "INSERT INTO delivery_leases (tenant, subscription_id, owner, expires_at)
                 VALUES {}
                 ON CONFLICT (tenant, subscription_id) DO UPDATE SET owner = excluded.owner
                 WHERE delivery_leases.owner = excluded.owner OR NOT EXISTS (
                     SELECT 1 FROM delivery_owners o
                     WHERE o.owner = delivery_leases.owner AND o.expires_at >= {})
                 RETURNING tenant, subscription_id",
                values.join(", "),
                p[chunk.len() * 3]
            );
            let mut q = sqlx::query(&sql);
            for &(tenant, id) in chunk {
                q = q.bind(tenant).bind(id).bind(owner);
            }
            let q = q.bind(now);
            for row in q.fetch_all(&self.pool).await? {
                held.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(held)
    }

    /// Give up every lease of `owner` (clean shutdown), so others take over at once.
    pub async fn release_leases(&self, owner: &str) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM delivery_leases WHERE owner = $1",
            "DELETE FROM delivery_owners WHERE owner = $1",
        ] {
            sqlx::query(sql).bind(owner).execute(&self.pool).await?;
        }
        Ok(())
    }
}
