//! The delivery role: one worker per live rest-hook subscription sends its notifications in
//! event-number order, signed, retried on the schedule, with the status machine of the FHIR
//! specification and the Backport IG (requested → handshake → active; error while failing;
//! off on 410 Gone or when the schedule runs out; only the client reactivates).
//!
//! Isolation: every subscription has its own worker (its order, its retries); requests go
//! through one HTTP client per endpoint origin with a cap on concurrent requests
//! ([`clients`]), so a slow or dead endpoint only delays the subscriptions pointing at it.
//! A worker is the rest-hook *reader* of its subscription's stream (`channels::stream`): it is woken only when its subscription
//! logs something, and its cursor is `delivered_through`, stored after each batch, so a
//! restart resumes where delivery stopped; a notification whose success was not yet
//! recorded is sent again with the same `webhook-id`.

use std::collections::HashMap;
use std::time::Duration;

use hub_fhir::subscription::{ChannelType, Status};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::model::Subscription;

pub mod clients;
pub mod schedule;
pub mod send;
pub mod sign;
pub mod ssrf;
pub mod worker;

struct Running {
    version: i64,
    stop: CancellationToken,
}

/// Run delivery until `shutdown`.
pub async fn run(hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let poll = Duration::from_millis(hub.config.delivery.poll_ms);
    let mut workers: HashMap<(String, String), Running> = HashMap::new();
    let mut tasks = JoinSet::new();
    // This process's identity for delivery leases.
    let owner = format!("delivery-{}", uuid::Uuid::new_v4());
    let ttl = hub.config.delivery.lease_ttl_ms;
    let lease_ttl = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
    let mut renewed = tokio::time::Instant::now();
    let clients = std::sync::Arc::new(clients::Clients::default());

    // One query (and one lease renewal) per poll, however many subscriptions: the workers
    // themselves wait on their subscription's wake-up.
    while !shutdown.is_cancelled() {
        match hub.subscriptions.live(&hub.store).await {
            Ok(subs) => {
                let subs: Vec<Subscription> = subs
                    .into_iter()
                    .filter(|s| s.channel_type() == ChannelType::RestHook)
                    .collect();
                let wanted: Vec<(String, String)> = subs
                    .iter()
                    .map(|s| (s.tenant.clone(), s.id.clone()))
                    .collect();
                match hub.store.claim_leases(&owner, &wanted, ttl).await {
                    Ok(held) => {
                        renewed = tokio::time::Instant::now();
                        let mine: Vec<Subscription> = subs
                            .into_iter()
                            .filter(|s| held.contains(&(s.tenant.clone(), s.id.clone())))
                            .collect();
                        reconcile(
                            &hub,
                            &shutdown,
                            &owner,
                            &clients,
                            mine,
                            &mut workers,
                            &mut tasks,
                        )
                        .await;
                    }
                    // Keep what runs while the leases last: if the store is back in time,
                    // nothing changes. Past their TTL another process may own them: stop
                    // every worker rather than send beside it.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew delivery leases");
                        if renewed.elapsed() > lease_ttl && !workers.is_empty() {
                            tracing::warn!(
                                workers = workers.len(),
                                "delivery leases expired unrenewed; stopping every worker"
                            );
                            reconcile(
                                &hub,
                                &shutdown,
                                &owner,
                                &clients,
                                Vec::new(),
                                &mut workers,
                                &mut tasks,
                            )
                            .await;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list subscriptions for delivery"),
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a delivery worker crashed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
            // a subscription written here starts its worker now, not at the next poll
            _ = hub.subscription_writes.notified() => {}
        }
    }
    tracing::info!(
        workers = workers.len(),
        "delivery draining in-flight requests"
    );
    for w in workers.values() {
        w.stop.cancel();
    }
    while tasks.join_next().await.is_some() {}
    // Hand the subscriptions over at once instead of after the lease expires.
    if let Err(e) = hub.store.release_leases(&owner).await {
        tracing::warn!(error = %e, "cannot release delivery leases; they expire on their own");
    }
    Ok(())
}

async fn reconcile(
    hub: &Hub,
    shutdown: &CancellationToken,
    owner: &str,
    clients: &std::sync::Arc<clients::Clients>,
    subs: Vec<Subscription>,
    workers: &mut HashMap<(String, String), Running>,
    tasks: &mut JoinSet<()>,
) {
    let wanted: HashMap<(String, String), Subscription> = subs
        .into_iter()
        .map(|s| ((s.tenant.clone(), s.id.clone()), s))
        .collect();
    // A worker lives as long as its subscription version: a client update restarts it.
    workers.retain(|key, w| {
        let keep =
            !w.stop.is_cancelled() && wanted.get(key).is_some_and(|s| s.version == w.version);
        if !keep {
            w.stop.cancel();
        }
        keep
    });
    for (key, sub) in wanted {
        if workers.contains_key(&key) {
            continue;
        }
        let version = sub.version;
        let Some(worker) = start_worker(hub, shutdown, owner, clients, sub).await else {
            continue;
        };
        workers.insert(
            key,
            Running {
                version,
                stop: worker.stop.clone(),
            },
        );
        let stop = worker.stop.clone();
        let id = worker.sub.id.clone();
        tasks.spawn(supervised(id, stop, worker.run()));
    }
}

/// Run a worker; however it ends (finished, stopped, or a panic), cancel its token, so the
/// next reconcile sees it gone and starts a new one while this process holds the lease. A
/// panicking worker that kept its entry would hold the subscription's lease and deliver
/// nothing, silently, for ever.
async fn supervised(subscription: String, stop: CancellationToken, run: impl Future<Output = ()>) {
    use futures::FutureExt;
    if std::panic::AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(%subscription, "a delivery worker panicked; a new one starts at the next poll");
    }
    stop.cancel();
}

/// A worker for a subscription: a checked endpoint and its origin's HTTP client, pinned to
/// the checked address, with the subscription's client certificate.
async fn start_worker(
    hub: &Hub,
    shutdown: &CancellationToken,
    owner: &str,
    clients: &std::sync::Arc<clients::Clients>,
    sub: Subscription,
) -> Option<worker::Worker> {
    let Some(secret) = sub.secret.clone() else {
        tracing::error!(subscription = %sub.id, "stored subscription has no signing secret");
        return None;
    };
    let channel = &sub.spec.channel;
    let checked = match hub.egress.check(&channel.endpoint).await {
        Ok(c) => c,
        Err(why) => {
            if sub.status != Status::Error {
                let msg = format!("endpoint refused: {why}");
                tracing::warn!(subscription = %sub.id, tenant = %sub.tenant, %msg, "not delivering");
                let _ = hub
                    .store
                    .set_subscription_status(
                        &sub.tenant,
                        &sub.id,
                        sub.version,
                        Status::Error.as_str(),
                        Some(&msg),
                    )
                    .await;
            }
            return None;
        }
    };
    let client = match clients.get(hub, &sub, &checked) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(subscription = %sub.id, error = %e, "cannot build an HTTP client");
            return None;
        }
    };
    Some(worker::Worker {
        hub: hub.clone(),
        client: std::sync::Mutex::new(client),
        clients: std::sync::Arc::clone(clients),
        pinned_addr: std::sync::Mutex::new(checked.pinned.as_ref().map(|(_, a)| *a)),
        sub,
        secret,
        stop: shutdown.child_token(),
        owner: owner.to_owned(),
    })
}

/// Hourly housekeeping: delivered notifications older than `database.retention_days`;
/// embedded-log records every group has read, as old; leases and consumer offsets of
/// deleted subscriptions; resource versions unchanged for `database.previous_versions_days`;
/// audit rows older than `audit.retention_days`.
pub async fn retention(hub: Hub, shutdown: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_worker_gives_its_place_back() {
        let stop = CancellationToken::new();
        supervised("s1".into(), stop.clone(), async {
            panic!("a bug in a worker");
        })
        .await;
        assert!(stop.is_cancelled(), "reconcile must see the worker gone");
        let stop = CancellationToken::new();
        supervised("s2".into(), stop.clone(), async {}).await;
        assert!(stop.is_cancelled());
    }
}
