//! Retention and housekeeping, one purger per process whatever its roles: an api+matcher
//! deployment (stream subscribers only, no delivery role) purges as much as one that
//! delivers. Several processes purging at once is safe: the store deletes in bounded
//! batches only what is still old when each batch runs.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::Hub;

/// Hourly housekeeping: delivered notifications older than `database.retention_days`;
/// embedded-log records every group has read, as old; leases and consumer offsets of
/// deleted subscriptions; resource versions unchanged for `database.previous_versions_days`;
/// audit rows older than `audit.retention_days`.
pub async fn run(hub: Hub, shutdown: CancellationToken) {
    let days = hub.config.database.retention_days;
    let version_days = hub.config.database.previous_versions_days;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    let instant = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = time::OffsetDateTime::now_utc();
        let ago = |d: u32| now - time::Duration::days(i64::from(d));
        if days > 0
            && let Some(before) = instant(ago(days))
        {
            match hub.store.purge_notifications(&before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, %before, "notification log retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "notification log retention failed; retrying next hour")
                }
            }
            let before_ms = ago(days).unix_timestamp().saturating_mul(1000);
            match hub.log.purge_consumed(before_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "event log retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "event log retention failed; retrying next hour")
                }
            }
        }
        let audit_days = hub.config.audit.retention_days;
        if audit_days > 0
            && let Some(before) = instant(ago(audit_days))
        {
            match hub.store.purge_audit(&before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, %before, "audit trail retention"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed; retrying next hour"),
            }
        }
        let Some(now) = instant(now) else {
            continue;
        };
        let versions_before = (version_days > 0)
            .then(|| instant(ago(version_days)))
            .flatten();
        match hub
            .store
            .purge_stale(&now, versions_before.as_deref())
            .await
        {
            Ok(p) if p.total() == 0 => {}
            Ok(p) => tracing::info!(
                leases = p.leases,
                consumer_offsets = p.consumer_offsets,
                ws_tokens = p.ws_tokens,
                resource_versions = p.resource_versions,
                matching_changes = p.matching_changes,
                "housekeeping"
            ),
            Err(e) => tracing::warn!(error = %e, "housekeeping failed; retrying next hour"),
        }
    }
}
