//! Subscription rows.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, now};

/// A stored Subscription: what the client's last write stored, and the hub's state of it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRow {
    pub tenant: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: String,
    pub events_since_start: i64,
    /// Why the hub set the status to error or off (Subscription.error).
    pub error: Option<String>,
    /// Its incarnation: what every position on its log is keyed by.
    pub log_key: crate::LogKey,
    /// As written, with the hub's current `status`.
    pub write: SubscriptionWrite,
}

impl std::ops::Deref for SubscriptionRow {
    type Target = SubscriptionWrite;

    /// A row reads as what was written (`row.status`, `row.resource`).
    fn deref(&self) -> &SubscriptionWrite {
        &self.write
    }
}

/// What a create or update writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionWrite {
    pub status: String,
    pub criteria: String,
    pub channel_type: String,
    pub endpoint: String,
    /// The resource JSON without `id`/`meta` and without secrets: the store stamps `id` and
    /// `meta` on read.
    pub resource: String,
    /// The Standard Webhooks signing secret; never part of `resource`.
    pub secret: Option<String>,
    /// PEM client certificate and key for mutual TLS; never part of `resource`.
    pub client_certificate: Option<String>,
    /// Who wrote it (JSON from the hub's auth layer: subject, key id, scopes, patient); what
    /// the subscription may receive is decided from it. `None` for rows from before owners.
    pub owner: Option<String>,
}

/// The FHIR type, in the version history.
const TYPE: &str = "Subscription";

fn version_of(row: &SubscriptionRow) -> crate::history::Version {
    crate::history::Version {
        version_id: row.version_id,
        last_updated: row.last_updated.clone(),
        resource: Some(row.resource.clone()),
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Bind a write as `$1` tenant, `$2` id, `$3` now, `$4`..`$8` status, criteria, channel type,
/// endpoint, resource, `$9` secret, `$10` client certificate.
fn bind_write<'q>(
    q: AnyQuery<'q>,
    tenant: &'q str,
    id: &'q str,
    w: &'q SubscriptionWrite,
) -> AnyQuery<'q> {
    q.bind(tenant)
        .bind(id)
        .bind(now())
        .bind(&w.status)
        .bind(&w.criteria)
        .bind(&w.channel_type)
        .bind(&w.endpoint)
        .bind(&w.resource)
        .bind(&w.secret)
        .bind(&w.client_certificate)
}

/// Run a statement whose `$1` is the tenant and `$2` a subscription id.
async fn keyed(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sql: &str,
    tenant: &str,
    id: &str,
) -> Result<(), StoreError> {
    sqlx::query(sql)
        .bind(tenant)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const COLUMNS: &str = "tenant, id, version_id, last_updated, status, criteria, channel_type, \
                       endpoint, resource, events_since_start, error, secret, client_certificate, owner, \
                       log_key";

fn from_row(r: &AnyRow) -> Result<SubscriptionRow, sqlx::Error> {
    Ok(SubscriptionRow {
        tenant: r.try_get(0)?,
        id: r.try_get(1)?,
        version_id: r.try_get(2)?,
        last_updated: r.try_get(3)?,
        events_since_start: r.try_get(9)?,
        error: r.try_get(10)?,
        log_key: crate::LogKey::new(r.try_get(14)?),
        write: SubscriptionWrite {
            status: r.try_get(4)?,
            criteria: r.try_get(5)?,
            channel_type: r.try_get(6)?,
            endpoint: r.try_get(7)?,
            resource: r.try_get(8)?,
            secret: r.try_get(11)?,
            client_certificate: r.try_get(12)?,
            owner: r.try_get(13)?,
        },
    })
}

/// A subscription's stored resource and sealed columns, as [`Store::reseal_subscription`]
/// writes them.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionSecrets<'a> {
    pub resource: &'a str,
    pub secret: Option<&'a str>,
    pub client_certificate: Option<&'a str>,
}

impl Store {
    /// Insert a new subscription with id `id`, at version 1 (or one past the versions a
    /// deleted subscription of that id had).
    pub async fn create_subscription(
        &self,
        tenant: &str,
        id: &str,
        w: &SubscriptionWrite,
    ) -> Result<SubscriptionRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::generations::bump(&mut tx, self.backend, tenant, Some(id)).await?;
        let version = crate::history::next_version(&mut tx, tenant, TYPE, id).await?;
        // its notification log's key: never reused, so a re-created id starts an empty log
        let log_key: i64 = sqlx::query(
            "UPDATE hub_counters SET value = value + 1 WHERE name = 'log_keys' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let sql = format!(
            "INSERT INTO subscriptions ({COLUMNS})
             VALUES ($1, $2, $11, $3, $4, $5, $6, $7, $8, 0, NULL, $9, $10, $12, $13)
             ON CONFLICT (tenant, id) DO NOTHING RETURNING {COLUMNS}"
        );
        let q = sqlx::query(&sql);
        let inserted = bind_write(q, tenant, id, w)
            .bind(version)
            .bind(&w.owner)
            .bind(log_key)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = inserted else {
            return Err(StoreError::AlreadyExists);
        };
        let row = from_row(&row)?;
        crate::history::record(&mut tx, tenant, TYPE, id, &version_of(&row)).await?;
        // its delivery cursor, keyed by the new log key: nothing a deleted predecessor left
        // (nor its worker, still sending) can move it
        sqlx::query(
            "INSERT INTO delivery_state (log_key, tenant, subscription_id) VALUES ($1, $2, $3)",
        )
        .bind(log_key)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn get_subscription(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// Replace a subscription. With `if_version`, fail with
    /// [`StoreError::VersionConflict`] unless the stored version is that one.
    pub async fn update_subscription(
        &self,
        tenant: &str,
        id: &str,
        if_version: Option<i64>,
        w: &SubscriptionWrite,
    ) -> Result<SubscriptionRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::generations::bump(&mut tx, self.backend, tenant, Some(id)).await?;
        // The status before: locked (PostgreSQL; SQLite holds its write lock already) so that
        // no matcher logs for it between this read and the commit.
        let lock = match self.backend {
            crate::Backend::Postgres => " FOR UPDATE",
            crate::Backend::Sqlite => "",
        };
        let before: Option<String> = sqlx::query(&format!(
            "SELECT status FROM subscriptions WHERE tenant = $1 AND id = $2{lock}"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let sql = format!(
            "UPDATE subscriptions SET version_id = version_id + 1, last_updated = $3,
                 status = $4, criteria = $5, channel_type = $6, endpoint = $7, resource = $8,
                 error = NULL, secret = $9, client_certificate = $10, owner = $12
             WHERE tenant = $1 AND id = $2 AND ($11 < 0 OR version_id = $11)
             RETURNING {COLUMNS}"
        );
        let updated = bind_write(sqlx::query(&sql), tenant, id, w)
            .bind(if_version.unwrap_or(-1))
            .bind(&w.owner)
            .fetch_optional(&mut *tx)
            .await?;
        match updated {
            Some(row) => {
                let row = from_row(&row)?;
                crate::history::record(&mut tx, tenant, TYPE, id, &version_of(&row)).await?;
                // Reactivating a subscription that was off: what it missed stays readable with
                // `$events` instead of arriving as a flood. In this transaction, with the row
                // locked: an event logged after the reactivation is never skipped.
                if before.as_deref() == Some("off") && w.status == "requested" {
                    sqlx::query(
                        "UPDATE delivery_state SET delivered_through = $2,
                             attempts = 0, next_attempt_at = NULL
                         WHERE log_key = $1",
                    )
                    .bind(row.log_key.get())
                    .bind(row.events_since_start)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(row)
            }
            None => {
                let sql = "SELECT version_id FROM subscriptions WHERE tenant = $1 AND id = $2";
                let current = crate::history::keyed_number(&mut tx, sql, tenant, id).await?;
                match current {
                    Some(current) => Err(StoreError::VersionConflict { current }),
                    None => Err(StoreError::NotFound),
                }
            }
        }
    }

    /// A hub-driven status change (active → error, error → active, → off), with the reason,
    /// made by whoever acted on `version` of the subscription. It does not make a new
    /// version: versions are the client's edits, and delivery restarts a subscription's
    /// worker only when its version changes. Fenced by that version: a worker still running
    /// for an older version (the client has since set `requested` or `off`, or deleted and
    /// re-created the id) changes nothing. Returns whether the status was written.
    pub async fn set_subscription_status(
        &self,
        tenant: &str,
        id: &str,
        version: i64,
        status: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        // not a client write: no generation bump, no index rebuild anywhere (the notification
        // log refuses events for an `off` subscription by itself)
        let done = sqlx::query(
            "UPDATE subscriptions SET status = $3, error = $4, last_updated = $5
             WHERE tenant = $1 AND id = $2 AND version_id = $6",
        )
        .bind(tenant)
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(now())
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Delete a subscription with its notification log and delivery state.
    /// Returns whether it existed.
    pub async fn delete_subscription(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::generations::bump(&mut tx, self.backend, tenant, Some(id)).await?;
        // its log and every position on it first: the log key is found through the row
        for table in [
            "notification_log",
            "delivery_state",
            "delivery_leases",
            "consumer_offsets",
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE log_key IN
                     (SELECT log_key FROM subscriptions WHERE tenant = $1 AND id = $2)"
            );
            let sql = sql.as_str();
            keyed(&mut tx, sql, tenant, id).await?;
        }
        let deleted =
            crate::history::delete_versioned(&mut tx, "subscriptions", TYPE, tenant, id).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// A tenant's subscriptions, optionally with one of `statuses`, ordered by id.
    pub async fn search_subscriptions(
        &self,
        tenant: &str,
        statuses: &[String],
        limit: i64,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE tenant = $1 ORDER BY id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let row = from_row(r)?;
            if statuses.is_empty() || statuses.contains(&row.status) {
                out.push(row);
                if out.len() as i64 >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every subscription of every tenant that can produce notifications
    /// (requested, active or error), for the matcher's index.
    pub async fn live_subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE status IN ('requested', 'active', 'error')"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Subscriptions written before secrets had their own columns (both columns empty), for
    /// the one-time move at start-up.
    pub async fn subscriptions_without_secret(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE secret IS NULL AND client_certificate IS NULL"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Move a subscription's secrets into their columns and store the resource without them.
    /// Not a new version: the client's content is unchanged.
    pub async fn move_secrets(
        &self,
        tenant: &str,
        id: &str,
        resource: &str,
        secret: Option<&str>,
        client_certificate: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE subscriptions SET resource = $3, secret = $4, client_certificate = $5
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(resource)
        .bind(secret)
        .bind(client_certificate)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Subscriptions that may hold a value sealed in the first format (`enc:v1:`) or a
    /// channel header stored plain, for the one-time re-seal at start-up (the hub decides
    /// per row; this only narrows the rows it reads).
    pub async fn subscriptions_to_reseal(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions
             WHERE secret LIKE 'enc:v1:%' OR client_certificate LIKE 'enc:v1:%'
                OR resource LIKE '%\"header\"%' OR resource LIKE '%\"parameter\"%'"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Store a subscription's values sealed again, if it is still at `version` (a client
    /// write in between wins). Not a new version: the client's content is unchanged.
    pub async fn reseal_subscription(
        &self,
        tenant: &str,
        id: &str,
        version: i64,
        resealed: &SubscriptionSecrets<'_>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE subscriptions SET resource = $3, secret = $4, client_certificate = $5
             WHERE tenant = $1 AND id = $2 AND version_id = $6",
        )
        .bind(tenant)
        .bind(id)
        .bind(resealed.resource)
        .bind(resealed.secret)
        .bind(resealed.client_certificate)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// One tenant's live subscriptions (requested, active or error).
    pub async fn live_subscriptions_of(
        &self,
        tenant: &str,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions
             WHERE tenant = $1 AND status IN ('requested', 'active', 'error')"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Those of `ids` in `tenant` that are live (requested, active or error).
    pub async fn live_subscriptions_among(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let p = crate::placeholders(self.backend, 1, chunk.len() + 1);
            let sql = format!(
                "SELECT {COLUMNS} FROM subscriptions
                 WHERE tenant = {} AND status IN ('requested', 'active', 'error')
                   AND id IN ({})",
                p[0],
                p[1..].join(", ")
            );
            let mut q = sqlx::query(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(from_row(&r)?);
            }
        }
        Ok(out)
    }

    /// How many subscriptions of `tenant` have an owner whose stored JSON starts with
    /// `owner_prefix`.
    pub async fn count_owned_subscriptions(
        &self,
        tenant: &str,
        owner_prefix: &str,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM subscriptions WHERE tenant = $1 AND substr(owner, 1, CAST($3 AS INTEGER)) = $2",
        )
        .bind(tenant)
        .bind(owner_prefix)
        .bind(owner_prefix.chars().count() as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Give every subscription of `tenant` whose owner JSON starts with `owner_prefix` the
    /// owner `owner` (a token client's current grant); the tenant's generation moves when any
    /// changed, so matchers apply the new grant. The number changed.
    pub async fn refresh_owner(
        &self,
        tenant: &str,
        owner_prefix: &str,
        owner: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE subscriptions SET owner = $4
             WHERE tenant = $1 AND substr(owner, 1, CAST($3 AS INTEGER)) = $2 AND owner <> $4",
        )
        .bind(tenant)
        .bind(owner_prefix)
        .bind(owner_prefix.chars().count() as i64)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            crate::generations::bump(&mut tx, self.backend, tenant, None).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// How many subscriptions (all tenants) have each status.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) FROM subscriptions GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
