//! The last seen version of resources whose changes topics compare with the version before.

use std::collections::HashMap;

use sqlx::Row;

use crate::{Store, StoreError, now};

/// `(tenant, resource type, resource id)`.
pub type ResourceKey = (String, String, String);

/// A resource as a change left it (`None`: deleted) and when that change happened (unix
/// microseconds of its `occurredAt`).
pub type VersionAt = (ResourceKey, Option<String>, i64);

impl Store {
    /// The stored last versions of `keys` (absent keys are simply missing from the answer).
    pub async fn last_versions(
        &self,
        keys: &[ResourceKey],
    ) -> Result<HashMap<ResourceKey, String>, StoreError> {
        let mut out = HashMap::new();
        // bounded statements: 100 keys each
        for chunk in keys.chunks(100) {
            let mut sql = String::from(
                "SELECT tenant, resource_type, resource_id, resource FROM resource_versions WHERE ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                let p = crate::placeholders(self.backend, i * 3 + 1, 3);
                sql.push_str(&format!(
                    "(tenant = {} AND resource_type = {} AND resource_id = {})",
                    p[0], p[1], p[2]
                ));
            }
            let mut q = sqlx::query(&sql);
            for (t, ty, id) in chunk {
                q = q.bind(t).bind(ty).bind(id);
            }
            for row in q.fetch_all(&self.pool).await? {
                let resource: String = row.try_get(3)?;
                // an empty resource remembers a deletion: no previous version
                if resource.is_empty() {
                    continue;
                }
                out.insert(
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
                    resource,
                );
            }
        }
        Ok(out)
    }

    /// Record the versions changes left, in one transaction. A version older than the one
    /// remembered (a change replayed, or read late) is not kept: `%previous` stays the newest.
    /// A deletion is remembered as an empty resource, so an older update cannot revive it.
    pub async fn put_versions(&self, items: &[VersionAt]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let at = now();
        for ((t, ty, id), resource, changed_us) in items {
            sqlx::query(
                "INSERT INTO resource_versions
                     (tenant, resource_type, resource_id, resource, updated_at, changed_us)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant, resource_type, resource_id)
                 DO UPDATE SET resource = excluded.resource, updated_at = excluded.updated_at,
                     changed_us = excluded.changed_us
                 WHERE resource_versions.changed_us IS NULL
                    OR resource_versions.changed_us <= excluded.changed_us",
            )
            .bind(t)
            .bind(ty)
            .bind(id)
            .bind(resource.as_deref().unwrap_or(""))
            .bind(&at)
            .bind(changed_us)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
