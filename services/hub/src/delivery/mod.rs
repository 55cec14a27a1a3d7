//! The delivery role: one worker per live rest-hook subscription sends its notifications in
//! event-number order, signed, retried on the schedule, with the status machine of the FHIR
//! specification and the Backport IG (requested → handshake → active; error while failing;
//! off on 410 Gone or when the schedule runs out; only the client reactivates).
//!
//! Isolation: every subscription has its own worker and its own HTTP client, so a slow or
//! dead endpoint only delays its own notifications. Progress (`delivered_through`) is stored
//! after each success, so a restart resumes where delivery stopped; a notification whose
//! success was not yet recorded is sent again with the same `webhook-id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hub_fhir::subscription;
use hub_store::SubscriptionRow;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Hub;

pub mod schedule;
pub mod send;
pub mod sign;
pub mod ssrf;
pub mod worker;

/// The Subscription.channel extension that carries the Standard Webhooks signing secret.
pub const SECRET_EXTENSION: &str = "urn:fhir-hub:webhook-secret";

/// The signing secret stored in a Subscription resource, if any (on `channel` in the R4
/// form, on the resource in the R5 form).
pub fn secret_of(resource: &Value) -> Option<&str> {
    ["/channel/extension", "/extension"].iter().find_map(|p| {
        resource
            .pointer(p)?
            .as_array()?
            .iter()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_EXTENSION))?
            .get("valueString")?
            .as_str()
    })
}

struct Running {
    version: i64,
    stop: CancellationToken,
}

/// Run delivery until `shutdown`.
pub async fn run(hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let poll = Duration::from_millis(hub.config.delivery.poll_ms);
    // Rung when new notifications may be waiting: workers re-read the store.
    let work = Arc::new(Notify::new());
    let mut workers: HashMap<(String, String), Running> = HashMap::new();
    let mut tasks = JoinSet::new();
    // This process's identity for delivery leases.
    let owner = format!("delivery-{}", uuid::Uuid::new_v4());
    let ttl = hub.config.delivery.lease_ttl_ms;

    while !shutdown.is_cancelled() {
        let logged = hub.notifications_logged.notified();
        match hub.store.live_subscriptions().await {
            Ok(rows) => {
                let rows: Vec<SubscriptionRow> = rows
                    .into_iter()
                    .filter(|r| r.channel_type == "rest-hook")
                    .collect();
                let wanted: Vec<(String, String)> = rows
                    .iter()
                    .map(|r| (r.tenant.clone(), r.id.clone()))
                    .collect();
                match hub.store.claim_leases(&owner, &wanted, ttl).await {
                    Ok(held) => {
                        let mine: Vec<SubscriptionRow> = rows
                            .into_iter()
                            .filter(|r| held.contains(&(r.tenant.clone(), r.id.clone())))
                            .collect();
                        reconcile(&hub, &work, &shutdown, &mine, &mut workers, &mut tasks).await;
                    }
                    // Keep what runs: if the store is back within the lease, nothing changes.
                    Err(e) => tracing::warn!(error = %e, "cannot renew delivery leases"),
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
            _ = logged => work.notify_waiters(),
            _ = tokio::time::sleep(poll) => work.notify_waiters(),
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
    work: &Arc<Notify>,
    shutdown: &CancellationToken,
    rows: &[SubscriptionRow],
    workers: &mut HashMap<(String, String), Running>,
    tasks: &mut JoinSet<()>,
) {
    let wanted: HashMap<(String, String), &SubscriptionRow> = rows
        .iter()
        .filter(|r| r.channel_type == "rest-hook")
        .map(|r| ((r.tenant.clone(), r.id.clone()), r))
        .collect();
    // A worker lives as long as its subscription version: a client update restarts it.
    workers.retain(|key, w| {
        let keep =
            !w.stop.is_cancelled() && wanted.get(key).is_some_and(|r| r.version_id == w.version);
        if !keep {
            w.stop.cancel();
        }
        keep
    });
    for (key, row) in wanted {
        if workers.contains_key(&key) {
            continue;
        }
        let Some(worker) = prepare(hub, work, shutdown, row).await else {
            continue;
        };
        workers.insert(
            key,
            Running {
                version: row.version_id,
                stop: worker.stop.clone(),
            },
        );
        let stop = worker.stop.clone();
        tasks.spawn(async move {
            worker.run().await;
            // Finished (off, or stopped): let reconcile start a new one when the row changes.
            stop.cancel();
        });
    }
}

/// Build a worker for a row: its channel, secret, a checked endpoint and a client pinned to
/// the checked address.
async fn prepare(
    hub: &Hub,
    work: &Arc<Notify>,
    shutdown: &CancellationToken,
    row: &SubscriptionRow,
) -> Option<worker::Worker> {
    let resource: Value = serde_json::from_str(&row.resource).ok()?;
    let (channel, topic) = match subscription::validate(&resource) {
        Ok(spec) => (spec.channel, spec.topic),
        Err(oo) => {
            tracing::error!(subscription = %row.id, tenant = %row.tenant, error = %oo.summary(), "stored subscription is not deliverable");
            return None;
        }
    };
    let Some(secret) = secret_of(&resource).map(str::to_owned) else {
        tracing::error!(subscription = %row.id, "stored subscription has no signing secret");
        return None;
    };
    let checked = match hub.egress.check(&channel.endpoint).await {
        Ok(c) => c,
        Err(why) => {
            if row.status != "error" {
                let msg = format!("endpoint refused: {why}");
                tracing::warn!(subscription = %row.id, tenant = %row.tenant, %msg, "not delivering");
                let _ = hub
                    .store
                    .set_subscription_status(&row.tenant, &row.id, "error", Some(&msg))
                    .await;
            }
            return None;
        }
    };
    // backport-timeout, when the subscription sets one, replaces the hub's request timeout
    let timeout = topic
        .as_ref()
        .and_then(|t| t.timeout_secs)
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(Duration::from_millis(
            hub.config.delivery.request_timeout_ms,
        ));
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fhir-hub/", env!("CARGO_PKG_VERSION")));
    if let Some((name, addr)) = &checked.pinned {
        builder = builder.resolve(name, *addr);
    }
    for root in hub.extra_roots.iter() {
        builder = builder.add_root_certificate(root.clone());
    }
    if let Some(pem) = &channel.client_certificate {
        match reqwest::Identity::from_pem(pem.as_bytes()) {
            Ok(identity) => builder = builder.identity(identity),
            Err(e) => {
                tracing::error!(subscription = %row.id, error = %e, "stored client certificate is unusable");
                return None;
            }
        }
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(subscription = %row.id, error = %e, "cannot build an HTTP client");
            return None;
        }
    };
    Some(worker::Worker {
        hub: hub.clone(),
        client,
        work: Arc::clone(work),
        tenant: row.tenant.clone(),
        id: row.id.clone(),
        version: row.version_id,
        status: row.status.clone(),
        channel,
        topic,
        base: hub.config.base_url(),
        secret,
        stop: shutdown.child_token(),
    })
}

/// Purge delivered notifications older than `database.retention_days`, hourly.
pub async fn retention(hub: Hub, shutdown: CancellationToken) {
    let days = hub.config.database.retention_days;
    if days == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
        let Ok(before) = cutoff.format(&time::format_description::well_known::Rfc3339) else {
            continue;
        };
        match hub.store.purge_notifications(&before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, %before, "notification log retention"),
            Err(e) => {
                tracing::warn!(error = %e, "notification log retention failed; retrying next hour")
            }
        }
    }
}
