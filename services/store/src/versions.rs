//! The last seen version of resources whose changes topics compare with the version before.

use std::collections::HashMap;

use sqlx::Row;

use crate::{Store, StoreError, now};

/// `(tenant, resource type, resource id)`.
pub type ResourceKey = (String, String, String);

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
                out.insert(
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
                    row.try_get(3)?,
                );
            }
        }
        Ok(out)
    }

    /// Record the latest versions (`None`: the resource was deleted), in one transaction.
    pub async fn put_versions(
        &self,
        items: &[(ResourceKey, Option<String>)],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let at = now();
        for ((t, ty, id), resource) in items {
            match resource {
                Some(r) => {
                    sqlx::query(
                        "INSERT INTO resource_versions (tenant, resource_type, resource_id, resource, updated_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (tenant, resource_type, resource_id)
                         DO UPDATE SET resource = excluded.resource, updated_at = excluded.updated_at",
                    )
                    .bind(t)
                    .bind(ty)
                    .bind(id)
                    .bind(r)
                    .bind(&at)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "DELETE FROM resource_versions WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3",
                    )
                    .bind(t)
                    .bind(ty)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
