//! Housekeeping: rows nothing needs any more, purged so that no table grows without bound.

use crate::{Store, StoreError};

/// What one [`Store::purge_stale`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Delivery leases of subscriptions that no longer exist.
    pub leases: u64,
    /// Named gRPC consumers' offsets for subscriptions that no longer exist.
    pub consumer_offsets: u64,
    /// Websocket/SSE binding tokens past their expiry.
    pub ws_tokens: u64,
    /// Last-known resource versions (the `%previous` the matcher supplies) not updated since
    /// the cut-off.
    pub resource_versions: u64,
    /// Matching changes beyond the last `KEPT_CHANGES` of each tenant.
    pub matching_changes: u64,
}

impl Purged {
    pub fn total(&self) -> u64 {
        self.leases
            + self.consumer_offsets
            + self.ws_tokens
            + self.resource_versions
            + self.matching_changes
    }
}

impl Store {
    /// Remove what is stale at `now` (a stored instant): leases and consumer offsets of
    /// deleted subscriptions, expired binding tokens, and, when `versions_before` is given,
    /// last-known resource versions not updated since then (a resource changed again after
    /// that long is compared without a `%previous`, as a first change is).
    pub async fn purge_stale(
        &self,
        now: &str,
        versions_before: Option<&str>,
    ) -> Result<Purged, StoreError> {
        let gone = |table: &str| {
            format!(
                "DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM subscriptions s \
                 WHERE s.log_key = {table}.log_key)"
            )
        };
        let leases = sqlx::query(&gone("delivery_leases"))
            .execute(&self.pool)
            .await?
            .rows_affected();
        let consumer_offsets = sqlx::query(&gone("consumer_offsets"))
            .execute(&self.pool)
            .await?
            .rows_affected();
        let ws_tokens = sqlx::query("DELETE FROM ws_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let resource_versions = match versions_before {
            // a version written again meanwhile is newer than the cut-off: kept
            Some(before) => {
                self.delete_in_batches(
                    "DELETE FROM resource_versions
                     WHERE (tenant, resource_type, resource_id) IN (
                         SELECT tenant, resource_type, resource_id FROM resource_versions
                         WHERE updated_at < $1 ORDER BY updated_at LIMIT $2)
                     AND updated_at < $1",
                    before,
                    crate::RETENTION_BATCH,
                )
                .await?
            }
            None => 0,
        };
        let matching_changes = sqlx::query(
            "DELETE FROM matching_changes WHERE generation <= (
                 SELECT c.value FROM hub_counters c
                 WHERE c.name = 'subscriptions:' || matching_changes.tenant) - $1",
        )
        .bind(crate::generations::KEPT_CHANGES)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Purged {
            leases,
            consumer_offsets,
            ws_tokens,
            resource_versions,
            matching_changes,
        })
    }
}
