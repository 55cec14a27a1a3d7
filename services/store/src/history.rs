//! Version history of the resources clients write (FHIR `vread` and `_history`). Each write
//! records its version in the same transaction; a delete records a version without a
//! resource; a re-create continues the numbering.

use sqlx::{Any, Row, Transaction};

use crate::{Store, StoreError};

/// One version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version_id: i64,
    pub last_updated: String,
    /// The resource as stored (no `id`/`meta`); `None`: this version is a delete.
    pub resource: Option<String>,
}

/// The version a create of `id` gets: one past the last it ever had.
pub(crate) async fn next_version(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    resource_type: &str,
    id: &str,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT COALESCE(MAX(version_id), 0) FROM resource_history
         WHERE tenant = $1 AND resource_type = $2 AND id = $3",
    )
    .bind(tenant)
    .bind(resource_type)
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let last: i64 = row.try_get(0)?;
    Ok(last + 1)
}

pub(crate) async fn record(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    resource_type: &str,
    id: &str,
    v: &Version,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO resource_history (tenant, resource_type, id, version_id, last_updated, resource)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(resource_type)
    .bind(id)
    .bind(v.version_id)
    .bind(&v.last_updated)
    .bind(v.resource.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One `i64` column of the row of `tenant`/`id` that `sql` selects or returns (`$1` is the
/// tenant, `$2` the id); `None` when there is no such row.
pub(crate) async fn keyed_number(
    tx: &mut Transaction<'_, Any>,
    sql: &str,
    tenant: &str,
    id: &str,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query(sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Delete `id` from `table` and record the delete as its next version; whether it existed.
pub(crate) async fn delete_versioned(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    resource_type: &str,
    tenant: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let sql = format!("DELETE FROM {table} WHERE tenant = $1 AND id = $2 RETURNING version_id");
    let Some(last) = keyed_number(tx, &sql, tenant, id).await? else {
        return Ok(false);
    };
    let gone = Version {
        version_id: last + 1,
        last_updated: crate::now(),
        resource: None,
    };
    record(tx, tenant, resource_type, id, &gone).await?;
    Ok(true)
}

impl Store {
    /// Every version of a resource, newest first.
    pub async fn history(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<Version>, StoreError> {
        let rows = sqlx::query(
            "SELECT version_id, last_updated, resource FROM resource_history
             WHERE tenant = $1 AND resource_type = $2 AND id = $3 ORDER BY version_id DESC",
        )
        .bind(tenant)
        .bind(resource_type)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Version {
                    version_id: r.try_get(0)?,
                    last_updated: r.try_get(1)?,
                    resource: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// One version of a resource.
    pub async fn version(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> Result<Option<Version>, StoreError> {
        Ok(self
            .history(tenant, resource_type, id)
            .await?
            .into_iter()
            .find(|v| v.version_id == version_id))
    }
}
