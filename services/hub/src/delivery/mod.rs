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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use hub_fhir::subscription::{ChannelType, Status};
use hub_store::MatchingChanges;
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

/// A subscription: its tenant and id.
type Key = (String, String);

/// The live rest-hook subscriptions as this process knows them, kept current from the tenant
/// generations: a pass re-reads only the subscriptions written since the last one (a client
/// write anywhere moves its tenant's generation), so 100,000 idle subscriptions cost no query.
#[derive(Default)]
struct Known {
    generations: HashMap<String, i64>,
    subs: HashMap<Key, Subscription>,
}

impl Known {
    /// Bring up to date; the subscriptions that were added, changed or removed.
    async fn refresh(&mut self, hub: &Hub) -> Result<Vec<Key>, hub_store::StoreError> {
        let mut changed = Vec::new();
        for (tenant, generation) in hub.store.tenant_generations().await? {
            let at = self.generations.get(&tenant).copied();
            if at == Some(generation) {
                continue;
            }
            let changes = match at {
                Some(at) => hub.store.matching_changes(&tenant, at, generation).await?,
                None => MatchingChanges::Rebuild,
            };
            let rest_hook = |s: &Subscription| s.channel_type() == ChannelType::RestHook;
            match changes {
                MatchingChanges::Subscriptions { generation, ids } => {
                    let rows = hub.store.live_subscriptions_among(&tenant, &ids).await?;
                    let mut now: HashMap<String, Subscription> = hub
                        .subscriptions
                        .read_all(rows)
                        .into_iter()
                        .filter(rest_hook)
                        .map(|s| (s.id.clone(), s))
                        .collect();
                    for id in ids {
                        let key = (tenant.clone(), id);
                        match now.remove(&key.1) {
                            Some(s) => self.subs.insert(key.clone(), s),
                            None => self.subs.remove(&key),
                        };
                        changed.push(key);
                    }
                    self.generations.insert(tenant, generation);
                }
                MatchingChanges::Rebuild => {
                    let rows = hub.store.live_subscriptions_of(&tenant).await?;
                    let before: Vec<Key> = self
                        .subs
                        .keys()
                        .filter(|k| k.0 == tenant)
                        .cloned()
                        .collect();
                    for key in before {
                        self.subs.remove(&key);
                        changed.push(key);
                    }
                    for s in hub
                        .subscriptions
                        .read_all(rows)
                        .into_iter()
                        .filter(rest_hook)
                    {
                        let key = (s.tenant.clone(), s.id.clone());
                        changed.push(key.clone());
                        self.subs.insert(key, s);
                    }
                    self.generations.insert(tenant, generation);
                }
            }
        }
        Ok(changed)
    }

    /// Read one subscription again (its worker ended on its own: it may be off now).
    async fn recheck(&mut self, hub: &Hub, key: &Key) -> Result<(), crate::model::ModelError> {
        match hub.subscriptions.get(&hub.store, &key.0, &key.1).await? {
            Some(s) if s.status != Status::Off && s.channel_type() == ChannelType::RestHook => {
                self.subs.insert(key.clone(), s);
            }
            _ => {
                self.subs.remove(key);
            }
        }
        Ok(())
    }
}

/// What the delivery loop keeps between passes.
struct Delivery {
    hub: Hub,
    shutdown: CancellationToken,
    /// This process's identity for delivery leases.
    owner: String,
    clients: std::sync::Arc<clients::Clients>,
    known: Known,
    /// The subscriptions this process holds the lease of.
    held: HashSet<Key>,
    workers: HashMap<Key, Running>,
    tasks: JoinSet<()>,
    /// Workers that ended on their own (the subscription turned off, a lost lease, a panic).
    ended: tokio::sync::mpsc::UnboundedSender<Key>,
}

impl Delivery {
    /// Stop every worker and forget every lease (they lapsed: others may hold them now).
    fn stop_all(&mut self) {
        for w in self.workers.values() {
            w.stop.cancel();
        }
        self.workers.clear();
        self.held.clear();
    }

    /// Start, restart or stop the workers of `keys` to match what is known and held.
    async fn reconcile(&mut self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            let want = self
                .known
                .subs
                .get(&key)
                .filter(|_| self.held.contains(&key));
            // A worker lives as long as its subscription version: a client update restarts it.
            if let (Some(w), Some(s)) = (self.workers.get(&key), want)
                && s.version == w.version
                && !w.stop.is_cancelled()
            {
                continue;
            }
            if let Some(w) = self.workers.remove(&key) {
                w.stop.cancel();
            }
            let Some(sub) = want.cloned() else {
                if !self.known.subs.contains_key(&key) {
                    self.held.remove(&key);
                }
                continue;
            };
            let version = sub.version;
            let Some(worker) =
                start_worker(&self.hub, &self.shutdown, &self.owner, &self.clients, sub).await
            else {
                continue;
            };
            let stop = worker.stop.clone();
            self.workers.insert(
                key.clone(),
                Running {
                    version,
                    stop: stop.clone(),
                },
            );
            let ended = self.ended.clone();
            // The worker's future on the heap once, behind a pointer: an idle worker's task
            // is its size (a 2 KB state machine), not twice it (the heap profile of 5,000
            // idle subscriptions found each task at 4.5 KB with the future inline).
            self.tasks
                .spawn(supervised(key, stop, ended, Box::pin(worker.run())));
        }
    }

    /// Claim the leases of `keys` this process does not hold; the ones it got.
    async fn claim(&mut self, keys: Vec<Key>) -> Vec<Key> {
        if keys.is_empty() {
            return Vec::new();
        }
        let ttl = self.hub.config.delivery.lease_ttl_ms;
        match self.hub.store.claim_leases(&self.owner, &keys, ttl).await {
            Ok(got) => {
                self.held.extend(got.iter().cloned());
                got.into_iter().collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim delivery leases; trying again next pass");
                Vec::new()
            }
        }
    }
}

/// Run delivery until `shutdown`.
///
/// Each pass renews this process's heartbeat (one row), reads what subscriptions were written
/// since the last pass, claims the new ones (and, when another delivery process stopped, the
/// ones it held), and starts or stops only the workers of what changed. The workers wait on
/// their subscription's wake-up: an idle subscription costs no query and no wake-up.
pub async fn run(hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let poll = Duration::from_millis(hub.config.delivery.poll_ms);
    let ttl = hub.config.delivery.lease_ttl_ms;
    let lease_ttl = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
    let (ended, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut d = Delivery {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        owner: format!("delivery-{}", uuid::Uuid::new_v4()),
        clients: std::sync::Arc::new(clients::Clients::default()),
        known: Known::default(),
        held: HashSet::new(),
        workers: HashMap::new(),
        tasks: JoinSet::new(),
        ended,
    };
    let mut renewed = tokio::time::Instant::now();
    let mut others: BTreeSet<String> = BTreeSet::new();
    let mut recheck: Vec<Key> = Vec::new();

    while !shutdown.is_cancelled() {
        let mut claim_all = false;
        match hub.store.heartbeat(&d.owner, ttl).await {
            Ok(hb) => {
                renewed = tokio::time::Instant::now();
                if !hb.kept {
                    if !d.workers.is_empty() {
                        tracing::warn!(
                            workers = d.workers.len(),
                            "this process's delivery heartbeat lapsed; stopping every worker and claiming again"
                        );
                    }
                    d.stop_all();
                    claim_all = true;
                }
                // a delivery process stopped (or lapsed): what it held is free
                if others.iter().any(|o| !hb.others.contains(o)) {
                    claim_all = true;
                }
                others = hb.others;
            }
            // Keep what runs while the heartbeat lasts: if the store is back in time, nothing
            // changes. Past its TTL another process may own the leases: stop every worker
            // rather than send beside it.
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the delivery heartbeat");
                if renewed.elapsed() > lease_ttl && !d.workers.is_empty() {
                    tracing::warn!(
                        workers = d.workers.len(),
                        "delivery heartbeat expired unrenewed; stopping every worker"
                    );
                    d.stop_all();
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(poll) => continue,
                }
            }
        }
        let mut dirty: HashSet<Key> = match d.known.refresh(&hub).await {
            Ok(changed) => changed.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read subscription changes for delivery");
                HashSet::new()
            }
        };
        while let Ok(key) = ended_rx.try_recv() {
            recheck.push(key);
        }
        for key in std::mem::take(&mut recheck) {
            match d.known.recheck(&hub, &key).await {
                Ok(()) => {
                    dirty.insert(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, subscription = %key.1, "cannot read a subscription again");
                    recheck.push(key);
                }
            }
        }
        let wanted: Vec<Key> = if claim_all {
            d.known
                .subs
                .keys()
                .filter(|k| !d.held.contains(*k))
                .cloned()
                .collect()
        } else {
            dirty
                .iter()
                .filter(|k| d.known.subs.contains_key(*k) && !d.held.contains(*k))
                .cloned()
                .collect()
        };
        dirty.extend(d.claim(wanted).await);
        d.reconcile(dirty).await;
        while let Some(done) = d.tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a delivery worker crashed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
            // a subscription written here starts its worker now, not at the next poll
            _ = hub.subscription_writes.notified() => {}
            // a worker that ended on its own is looked at again now
            Some(key) = ended_rx.recv() => recheck.push(key),
        }
    }
    tracing::info!(
        workers = d.workers.len(),
        "delivery draining in-flight requests"
    );
    for w in d.workers.values() {
        w.stop.cancel();
    }
    while d.tasks.join_next().await.is_some() {}
    // Hand the subscriptions over at once instead of after the heartbeat lapses.
    if let Err(e) = hub.store.release_leases(&d.owner).await {
        tracing::warn!(error = %e, "cannot release delivery leases; they lapse on their own");
    }
    Ok(())
}

/// Run a worker; however it ends (finished, stopped, or a panic), cancel its token. One that
/// ended on its own (not stopped: its subscription turned off, its lease was lost, or it
/// panicked) is reported on `ended`, so the next pass reads its subscription again and starts
/// a new worker while this process holds the lease. A panicking worker that kept its entry
/// would hold the subscription's lease and deliver nothing, silently, for ever.
async fn supervised(
    key: Key,
    stop: CancellationToken,
    ended: tokio::sync::mpsc::UnboundedSender<Key>,
    run: impl Future<Output = ()>,
) {
    use futures::FutureExt;
    if std::panic::AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(subscription = %key.1, "a delivery worker panicked; a new one starts at the next pass");
    }
    if !stop.is_cancelled() {
        stop.cancel();
        let _ = ended.send(key);
    }
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

    fn key(id: &str) -> Key {
        ("default".into(), id.into())
    }

    #[tokio::test]
    async fn a_worker_that_ends_on_its_own_is_looked_at_again() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        supervised(key("s1"), stop.clone(), tx.clone(), async {
            panic!("a bug in a worker");
        })
        .await;
        assert!(stop.is_cancelled(), "reconcile must see the worker gone");
        assert_eq!(rx.try_recv().ok(), Some(key("s1")));
        let stop = CancellationToken::new();
        supervised(key("s2"), stop.clone(), tx.clone(), async {}).await;
        assert!(stop.is_cancelled());
        assert_eq!(rx.try_recv().ok(), Some(key("s2")));
        // one stopped by the loop is not reported: the loop knows
        let stop = CancellationToken::new();
        stop.cancel();
        supervised(key("s3"), stop, tx, async {}).await;
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_idle_worker_task_stays_small() {
        fn task_size<F: Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        // what each live rest-hook subscription's task holds inline, the worker boxed
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let boxed: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async {});
        let task = supervised(key("s"), CancellationToken::new(), tx, boxed);
        assert!(task_size(&task) <= 512, "{} bytes", task_size(&task));
    }
}
