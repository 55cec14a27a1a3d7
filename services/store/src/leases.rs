//! Delivery leases: one delivery process at a time per subscription, so several processes
//! can run the delivery role without sending every notification twice. A process renews one
//! heartbeat row while it runs (not each lease); the leases of a process whose heartbeat
//! lapsed are taken over by another. Expiry is measured on the database's clock, the one
//! clock every process shares, read inside the very statement that compares or writes it: a
//! clock value read first and used in a later statement is stale by the time that runs
//! (after a pause, a lock wait, a slow round trip), and with it two processes could both
//! believe they hold a lease. Leases are keyed by the subscription's incarnation
//! ([`LogKey`]): a lease on a deleted subscription is not one on its re-created successor.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sqlx::Row;

use crate::{Backend, LogKey, Store, StoreError};

/// What a delivery process's heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The heartbeat was still live: every lease the process held is still its own. `false`
    /// when it had lapsed (others may have taken its subscriptions) or there was none yet.
    pub kept: bool,
    /// The other delivery processes alive now.
    pub others: BTreeSet<String>,
}

/// The database's clock in milliseconds since the epoch, as an SQL expression: evaluated
/// when the statement that holds it runs (after any lock wait), not when it was prepared.
pub(crate) fn db_now_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(floor(extract(epoch from clock_timestamp()) * 1000) AS BIGINT)",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

impl Store {
    /// The database's clock in milliseconds since the epoch: every delivery process compares
    /// lease expiry against this one clock, so a host whose clock runs ahead cannot take
    /// over live leases, nor one that runs behind keep expired ones.
    pub async fn db_now_ms(&self) -> Result<i64, StoreError> {
        let sql = format!("SELECT {}", db_now_sql(self.backend));
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }

    /// Renew `owner`'s heartbeat (one row, however many leases it holds) until `ttl_ms` from
    /// now on the database's clock, and say whether its leases are still its own and which
    /// other delivery processes are alive.
    pub async fn heartbeat(&self, owner: &str, ttl_ms: i64) -> Result<Heartbeat, StoreError> {
        // kept only if still live when this statement runs (it may have waited on a lock)
        let now = db_now_sql(self.backend);
        let kept = sqlx::query(&format!(
            "UPDATE delivery_owners SET expires_at = {now} + $2
             WHERE owner = $1 AND expires_at >= {now}"
        ))
        .bind(owner)
        .bind(ttl_ms)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0;
        if !kept {
            self.register(owner, ttl_ms).await?;
        }
        let mut others = BTreeSet::new();
        for row in sqlx::query(&format!(
            "SELECT owner FROM delivery_owners WHERE expires_at >= {now}"
        ))
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

    /// (Re)register `owner`'s heartbeat until `ttl_ms` from now.
    async fn register(&self, owner: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let now = db_now_sql(self.backend);
        // processes gone for a day: their rows say nothing any more (a restart is a new owner)
        sqlx::query(&format!(
            "DELETE FROM delivery_owners WHERE expires_at < {now} - 86400000"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO delivery_owners (owner, expires_at) VALUES ($1, {now} + $2)
             ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at"
        ))
        .bind(owner)
        .bind(ttl_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Renew `owner`'s heartbeat and claim the `wanted` subscription incarnations (tenant,
    /// id, log key) that nobody holds, or whose holder's heartbeat lapsed. Returns every
    /// incarnation `owner` now holds among `wanted`. A few statements per 200 subscriptions,
    /// whatever the lease table holds.
    pub async fn claim_leases<'a>(
        &self,
        owner: &str,
        wanted: impl IntoIterator<Item = (&'a str, &'a str, LogKey)>,
        ttl_ms: i64,
    ) -> Result<HashSet<LogKey>, StoreError> {
        let mut keys: Vec<(&str, &str, LogKey)> = wanted.into_iter().collect();
        self.register(owner, ttl_ms).await?;
        keys.sort_unstable_by_key(|k| k.2);
        keys.dedup_by_key(|k| k.2);
        let mut held = HashSet::new();
        let now = db_now_sql(self.backend);
        for chunk in keys.chunks(200) {
            // every value in the order it appears (SQLite numbers `?` that way)
            let p = crate::placeholders(self.backend, 1, chunk.len() * 4);
            let values: Vec<String> = p
                .chunks(4)
                .map(|r| format!("({}, {}, {}, {}, 0)", r[0], r[1], r[2], r[3]))
                .collect();
            // Insert, or take over a lease whose owner is not alive (on the database's clock
            // as this statement runs); a live owner's stays.
            let sql = format!(
                "INSERT INTO delivery_leases (log_key, tenant, subscription_id, owner, expires_at)
                 VALUES {}
                 ON CONFLICT (log_key) DO UPDATE SET owner = excluded.owner
                 WHERE delivery_leases.owner = excluded.owner OR NOT EXISTS (
                     SELECT 1 FROM delivery_owners o
                     WHERE o.owner = delivery_leases.owner AND o.expires_at >= {now})
                 RETURNING log_key",
                values.join(", "),
            );
            let mut q = sqlx::query(&sql);
            for &(tenant, id, key) in chunk {
                q = q.bind(key.get()).bind(tenant).bind(id).bind(owner);
            }
            for row in q.fetch_all(&self.pool).await? {
                held.insert(LogKey::new(row.try_get(0)?));
            }
        }
        Ok(held)
    }

    /// The delivery processes alive now (heartbeat not lapsed) and how many leases each holds.
    pub async fn lease_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let now = db_now_sql(self.backend);
        let mut out = BTreeMap::new();
        for row in sqlx::query(&format!(
            "SELECT o.owner, count(l.log_key) FROM delivery_owners o
             LEFT JOIN delivery_leases l ON l.owner = o.owner
             WHERE o.expires_at >= {now} GROUP BY o.owner"
        ))
        .fetch_all(&self.pool)
        .await?
        {
            let n: i64 = row.try_get(1)?;
            out.insert(row.try_get(0)?, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// Give up these leases of `owner` (rebalancing), so that another process claims them;
    /// how many were given up.
    pub async fn release_some(&self, owner: &str, keys: &[LogKey]) -> Result<u64, StoreError> {
        let mut released = 0;
        for chunk in keys.chunks(500) {
            // every value in the order it appears (SQLite numbers `?` that way)
            let p = crate::placeholders(self.backend, 1, chunk.len() + 1);
            let sql = format!(
                "DELETE FROM delivery_leases WHERE owner = {} AND log_key IN ({})",
                p[0],
                p[1..].join(", ")
            );
            let mut q = sqlx::query(&sql).bind(owner);
            for key in chunk {
                q = q.bind(key.get());
            }
            released += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(released)
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
