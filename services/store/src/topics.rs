//! SubscriptionTopic rows. A write bumps the same counter as subscriptions, so every
//! matcher reloads its topic index before matching the next batch.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, now};

/// A stored SubscriptionTopic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRow {
    pub tenant: String,
    pub id: String,
    pub url: String,
    pub version_id: i64,
    pub last_updated: String,
    pub resource: String,
}

const COLUMNS: &str = "tenant, id, url, version_id, last_updated, resource";
/// The FHIR type, in the version history.
const TYPE: &str = "SubscriptionTopic";

fn from_row(r: &AnyRow) -> Result<TopicRow, sqlx::Error> {
    Ok(TopicRow {
        tenant: r.try_get(0)?,
        id: r.try_get(1)?,
        url: r.try_get(2)?,
        version_id: r.try_get(3)?,
        last_updated: r.try_get(4)?,
        resource: r.try_get(5)?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

impl Store {
    /// Create or replace the topic `id`; returns the row and whether it was created. With
    /// `if_version`, fail with [`StoreError::VersionConflict`] unless the stored version is
    /// that one ([`StoreError::NotFound`] when there is none).
    /// [`StoreError::AlreadyExists`] when another topic of the tenant has the same URL.
    pub async fn put_topic(
        &self,
        tenant: &str,
        id: &str,
        url: &str,
        resource: &str,
        if_version: Option<i64>,
    ) -> Result<(TopicRow, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::generations::bump(&mut tx, self.backend, tenant, None).await?;
        if let Some(want) = if_version {
            let sql = "SELECT version_id FROM topics WHERE tenant = $1 AND id = $2";
            let current = crate::history::keyed_number(&mut tx, sql, tenant, id).await?;
            match current {
                None => return Err(StoreError::NotFound),
                Some(current) if current != want => {
                    return Err(StoreError::VersionConflict { current });
                }
                Some(_) => {}
            }
        }
        let updated = sqlx::query(&format!(
            "UPDATE topics SET url = $3, version_id = version_id + 1, last_updated = $4, resource = $5
             WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(url)
        .bind(now())
        .bind(resource)
        .fetch_optional(&mut *tx)
        .await;
        let (row, created) = match updated {
            Ok(Some(r)) => (from_row(&r)?, false),
            Ok(None) => {
                let version = crate::history::next_version(&mut tx, tenant, TYPE, id).await?;
                let r = sqlx::query(&format!(
                    "INSERT INTO topics ({COLUMNS}) VALUES ($1, $2, $3, $6, $4, $5) RETURNING {COLUMNS}"
                ))
                .bind(tenant)
                .bind(id)
                .bind(url)
                .bind(now())
                .bind(resource)
                .bind(version)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::AlreadyExists
                    } else {
                        e.into()
                    }
                })?;
                (from_row(&r)?, true)
            }
            Err(e) if is_unique_violation(&e) => return Err(StoreError::AlreadyExists),
            Err(e) => return Err(e.into()),
        };
        let v = crate::history::Version {
            version_id: row.version_id,
            last_updated: row.last_updated.clone(),
            resource: Some(row.resource.clone()),
        };
        crate::history::record(&mut tx, tenant, TYPE, id, &v).await?;
        tx.commit().await?;
        Ok((row, created))
    }

    pub async fn get_topic(&self, tenant: &str, id: &str) -> Result<Option<TopicRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM topics WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    pub async fn topic_by_url(
        &self,
        tenant: &str,
        url: &str,
    ) -> Result<Option<TopicRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM topics WHERE tenant = $1 AND url = $2"
        ))
        .bind(tenant)
        .bind(url)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// A tenant's topics ordered by id; every tenant's when `tenant` is `None`.
    pub async fn list_topics(&self, tenant: Option<&str>) -> Result<Vec<TopicRow>, StoreError> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM topics WHERE tenant = $1 ORDER BY id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM topics ORDER BY tenant, id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Delete a topic; returns whether it existed.
    pub async fn delete_topic(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::generations::bump(&mut tx, self.backend, tenant, None).await?;
        let deleted = crate::history::delete_versioned(&mut tx, "topics", TYPE, tenant, id).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
