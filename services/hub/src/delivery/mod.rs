//! The delivery role: one worker per live rest-hook subscription sends its notifications in
//! event-number order, signed, retried on the schedule, with the status machine of the FHIR
//! specification and the Backport IG (requested → handshake → active; error while failing;
//! off on 410 Gone or when the schedule runs out; only the client reactivates).
//!
//! Isolation: every busy subscription has its own worker (its order, its retries); requests
//! go through one HTTP client per endpoint origin with a cap on concurrent requests
//! ([`clients`]), so a slow or dead endpoint only delays the subscriptions pointing at it.
//! A worker is the rest-hook *reader* of its subscription's stream (`channels::stream`): it
//! is woken only when its subscription logs something, and its cursor is
//! `delivered_through`, stored after each batch, so a restart resumes where delivery
//! stopped; a notification whose success was not yet recorded is sent again with the same
//! `webhook-id`.
//!
//! An idle subscription has no worker: after `delivery.park_idle_after_ms` with nothing to
//! send its worker ends and the subscription is *parked* — a slot in this loop's map and an
//! entry in the wake-ups (`channels::wake`) — until its log moves past its position or its
//! heartbeat is due; then the loop starts a worker from where the last one stopped. 100,000
//! per-patient subscriptions cost tasks only for the ones with something to send.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet};
use std::time::Duration;

use hub_fhir::subscription::Status;
use hub_store::LogKey;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::model::{KeyMap, SubKey, Subscription};
use crate::state::Hub;
use known::Known;

pub mod clients;
mod known;
mod rebalance;
pub mod retries;
pub mod schedule;
pub mod send;
pub mod sign;
pub mod special;
pub mod ssrf;
mod start;
pub mod worker;

/// One subscription's delivery in this process.
enum Slot {
    /// A worker runs; `serial` tells its end from an earlier worker's.
    Running {
        version: i64,
        serial: u64,
        stop: CancellationToken,
    },
    /// No task: registered in the wake-ups, started again from `resume`.
    Parked {
        version: i64,
        resume: worker::Resume,
    },
    /// Its worker could not start (the endpoint does not resolve or is refused, a client
    /// cannot be built, a secret is missing): tried again at `due`, with backoff.
    Waiting {
        version: i64,
        /// Failed starts so far.
        attempt: u32,
        due: tokio::time::Instant,
    },
}

impl Slot {
    fn version(&self) -> i64 {
        match self {
            Slot::Running { version, .. }
            | Slot::Parked { version, .. }
            | Slot::Waiting { version, .. } => *version,
        }
    }

    /// Delivering (or parked), not ended.
    fn live(&self) -> bool {
        match self {
            Slot::Running { stop, .. } => !stop.is_cancelled(),
            Slot::Parked { .. } | Slot::Waiting { .. } => true,
        }
    }
}

/// A lease this process holds: on which incarnation of the subscription, and its worker or
/// parked slot (`None`: held, nothing running).
struct Held {
    log_key: LogKey,
    slot: Option<Slot>,
}

/// What a worker's supervisor reports when the worker ended on its own.
type EndedMsg = (Key, u64, worker::Ended);

/// A subscription: its tenant and id, shared with its typed form and the wake-ups.
type Key = SubKey;

/// What the delivery loop keeps between passes.
struct Delivery {
    hub: Hub,
    shutdown: CancellationToken,
    /// This process's identity for delivery leases.
    owner: String,
    clients: std::sync::Arc<clients::Clients>,
    known: Known,
    /// The subscriptions this process holds the lease of (of one incarnation each), with
    /// its worker or parked slot. One map, so one key per subscription.
    leases: KeyMap<Held>,
    /// The last worker's serial.
    serial: u64,
    tasks: JoinSet<()>,
    /// Workers that ended on their own (parked, the subscription turned off, a lost lease,
    /// a panic).
    ended: tokio::sync::mpsc::UnboundedSender<EndedMsg>,
    /// When parked subscriptions' heartbeats are due (entries of subscriptions that were
    /// started meanwhile are skipped when they come up).
    beats: BinaryHeap<Reverse<(tokio::time::Instant, Key)>>,
    /// When workers that failed to start are tried again (entries whose slot moved on are
    /// skipped).
    restarts: BinaryHeap<Reverse<(tokio::time::Instant, Key)>>,
    /// Whether the last rebalancing round found leases free (`rebalance`).
    free_before: bool,
}

impl Delivery {
    /// Stop every worker and forget every lease (they lapsed: others may hold them now).
    fn stop_all(&mut self) {
        for (key, held) in self.leases.drain() {
            match held.slot {
                Some(Slot::Running { stop, .. }) => stop.cancel(),
                Some(Slot::Parked { .. }) => {
                    self.hub.wakeups.unpark(&key);
                }
                Some(Slot::Waiting { .. }) | None => {}
            }
        }
        self.beats.clear();
        self.restarts.clear();
    }

    /// The worker or parked slot of a subscription this process holds.
    fn slot(&self, key: &Key) -> Option<&Slot> {
        self.leases.get(key).and_then(|h| h.slot.as_ref())
    }

    /// Whether this process holds the lease of `sub`'s incarnation.
    fn holds(&self, sub: &Subscription) -> bool {
        self.leases
            .get(&sub.key)
            .is_some_and(|h| h.log_key == sub.log_key)
    }

    /// Stop a subscription's worker, or forget it parked (its lease is kept).
    fn stop(&mut self, key: &Key) {
        match self.leases.get_mut(key).and_then(|h| h.slot.take()) {
            Some(Slot::Running { stop, .. }) => stop.cancel(),
            Some(Slot::Parked { .. }) => {
                self.hub.wakeups.unpark(key);
            }
            Some(Slot::Waiting { .. }) | None => {}
        }
    }

    /// Start, restart or stop the workers of `keys` to match what is known and held.
    async fn reconcile(&mut self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            // held on this incarnation: a lease on a deleted one is not one on its successor
            let want = self.known.subs.get(&key).filter(|s| self.holds(s));
            // A worker lives as long as its subscription version: a client update restarts it.
            if let (Some(w), Some(s)) = (self.slot(&key), want)
                && s.version == w.version()
                && w.live()
            {
                continue;
            }
            let want = want.cloned();
            self.stop(&key);
            let Some(sub) = want else {
                let current = self.known.subs.get(&key).map(|s| s.log_key);
                if self
                    .leases
                    .get(&key)
                    .is_some_and(|h| Some(h.log_key) != current)
                {
                    self.leases.remove(&key);
                }
                continue;
            };
            self.start(key, sub, None, 0).await;
        }
    }

    /// Start a worker for `sub` (from `resume` when it was parked); `failed`: starts of
    /// this version that failed before. A start that fails is tried again with backoff, and
    /// the subscription shows `error` with the reason meanwhile.
    async fn start(
        &mut self,
        key: Key,
        mut sub: Subscription,
        resume: Option<worker::Resume>,
        failed: u32,
    ) {
        let version = sub.version;
        let log_key = sub.log_key;
        if failed > 0 && sub.status == Status::Active {
            // shown as `error` since the failed start: its first success says `active` again
            sub.status = Status::Error;
        }
        // a subscription that slept long wakes with its name resolved again: the address it
        // had may have moved meanwhile (DNS) and still answer
        let fresh = Duration::from_millis(self.hub.config.delivery.reresolve_parked_after_ms);
        let worker = match resume.as_ref().filter(|r| r.last_sent.elapsed() < fresh) {
            Some(r) => start::new_worker(
                &self.hub,
                &self.shutdown,
                &self.owner,
                &self.clients,
                sub,
                r.client.clone(),
                r.pinned,
            ),
            None => {
                let parts = (
                    &self.hub,
                    &self.shutdown,
                    self.owner.as_str(),
                    &self.clients,
                );
                start::start_worker(parts, sub).await
            }
        };
        let mut worker = match worker {
            Ok(w) => w,
            Err(failure) => {
                let attempt = failed.saturating_add(1);
                let wait = start::backoff(attempt);
                failure.report(&self.hub, attempt, wait).await;
                let due = tokio::time::Instant::now() + wait;
                self.leases.insert(
                    key.clone(),
                    Held {
                        log_key,
                        slot: Some(Slot::Waiting {
                            version,
                            attempt,
                            due,
                        }),
                    },
                );
                self.restarts.push(Reverse((due, key)));
                return;
            }
        };
        worker.resume = resume;
        self.serial += 1;
        let serial = self.serial;
        let stop = worker.stop.clone();
        // only held subscriptions are started: the lease's entry gets the worker
        self.leases.insert(
            key.clone(),
            Held {
                log_key,
                slot: Some(Slot::Running {
                    version,
                    serial,
                    stop: stop.clone(),
                }),
            },
        );
        let ended = self.ended.clone();
        // The worker's future on the heap once, behind a pointer: an idle worker's task
        // is its size (a 2 KB state machine), not twice it (the heap profile of 5,000
        // idle subscriptions found each task at 4.5 KB with the future inline).
        self.tasks
            .spawn(supervised(key, serial, stop, ended, Box::pin(worker.run())));
    }

    /// Start a parked subscription's worker again from where the last one stopped.
    async fn resume(&mut self, key: Key, version: i64, resume: worker::Resume) {
        let Some(held) = self.leases.get_mut(&key) else {
            return; // no longer held
        };
        held.slot = None;
        let held_key = held.log_key;
        let Some(sub) = self.known.subs.get(&key).cloned() else {
            return;
        };
        if sub.log_key != held_key {
            return; // another incarnation: the next pass claims it
        }
        // a subscription written since it parked starts over (as `reconcile` would)
        let resume = (sub.version == version).then_some(resume);
        self.start(key, sub, resume, 0).await;
    }

    /// A worker ended on its own; true when its subscription must be read again.
    async fn ended(&mut self, key: Key, serial: u64, ended: worker::Ended) -> bool {
        let version = match self.slot(&key) {
            Some(Slot::Running {
                serial: s, version, ..
            }) if *s == serial => *version,
            // an earlier worker's end: the loop stopped it and moved on
            _ => return false,
        };
        match ended {
            worker::Ended::Done => true,
            // not this process's (or this incarnation's) any more: drop the lease, and start
            // nothing until a claim gets it again
            worker::Ended::Refused => {
                self.leases.remove(&key);
                true
            }
            worker::Ended::Parked(resume, idle) => {
                if self
                    .hub
                    .wakeups
                    .park(&key, idle.log_key, idle.position, idle.wake)
                {
                    let period = self
                        .known
                        .subs
                        .get(&key)
                        .and_then(|s| s.spec.channel.heartbeat_secs);
                    if let Some(secs) = period {
                        let due = resume.last_sent + Duration::from_secs(u64::from(secs));
                        self.beats.push(Reverse((due, key.clone())));
                    }
                    if let Some(held) = self.leases.get_mut(&key) {
                        held.slot = Some(Slot::Parked { version, resume });
                    }
                } else {
                    // something was logged as it parked: on at once
                    self.resume(key, version, resume).await;
                }
                false
            }
        }
    }

    /// A parked subscription's log moved: start its worker.
    async fn unparked(&mut self, key: Key) {
        if let Some(Slot::Parked { version, resume }) = self.slot(&key) {
            let (version, resume) = (*version, resume.clone());
            self.resume(key, version, resume).await;
        }
    }

    /// Start the parked subscriptions whose heartbeat is due.
    async fn heartbeats_due(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(Reverse((due, _))) = self.beats.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, key))) = self.beats.pop() else {
                break;
            };
            let Some(Slot::Parked { version, resume }) = self.slot(&key) else {
                continue; // started meanwhile
            };
            let (version, resume) = (*version, resume.clone());
            let period = self
                .known
                .subs
                .get(&key)
                .and_then(|s| s.spec.channel.heartbeat_secs);
            let current = period
                .is_some_and(|secs| resume.last_sent + Duration::from_secs(u64::from(secs)) == due);
            // false: its log moved meanwhile and the loop is about to hear of it
            if current && self.hub.wakeups.unpark(&key) {
                self.resume(key, version, resume).await;
            }
        }
    }

    /// Start again the workers whose failed start is due for another try.
    async fn restarts_due(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(Reverse((due, _))) = self.restarts.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, key))) = self.restarts.pop() else {
                break;
            };
            let Some(&Slot::Waiting {
                version,
                attempt,
                due: at,
            }) = self.slot(&key)
            else {
                continue; // stopped or started meanwhile
            };
            let Some(sub) = self.known.subs.get(&key).cloned() else {
                continue;
            };
            if at != due || sub.version != version || !self.holds(&sub) {
                continue; // a client write or a lost lease moved it on; `reconcile` decides
            }
            self.start(key, sub, None, attempt).await;
        }
    }

    /// The safety read of parked subscriptions: start those whose log moved past what was
    /// delivered although no wake-up said so (one lost on a silent `LISTEN` connection).
    async fn unpark_behind(&mut self) {
        let parked = |h: &Held| matches!(h.slot, Some(Slot::Parked { .. }));
        if !self.leases.values().any(parked) {
            return;
        }
        let behind = match self.hub.store.rest_hooks_behind().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which parked subscriptions are behind");
                return;
            }
        };
        let mut started = 0usize;
        for (tenant, id) in behind {
            let key = match self.leases.get_key_value(&crate::model::Pair(&tenant, &id)) {
                Some((key, slot)) if parked(slot) => key.clone(),
                _ => continue,
            };
            // false: a wake-up sent it to the loop meanwhile
            if self.hub.wakeups.unpark(&key) {
                self.unparked(key).await;
                started += 1;
            }
        }
        if started > 0 {
            tracing::info!(
                subscriptions = started,
                "the safety read started parked subscriptions whose wake-up never came"
            );
        }
    }

    /// Reap the tasks of workers that ended.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a delivery worker crashed");
            }
        }
    }

    /// Subscriptions with a worker running, and parked.
    fn count(&self) -> (usize, usize) {
        let (mut running, mut parked) = (0, 0);
        for slot in self.leases.values().filter_map(|h| h.slot.as_ref()) {
            match slot {
                Slot::Running { .. } => running += 1,
                Slot::Parked { .. } => parked += 1,
                Slot::Waiting { .. } => {}
            }
        }
        (running, parked)
    }

    /// Claim the leases of the known incarnations of `keys` this process does not hold;
    /// the ones it got.
    async fn claim(&mut self, keys: Vec<Key>) -> Vec<Key> {
        let subs: Vec<(Key, LogKey)> = keys
            .into_iter()
            .filter_map(|k| self.known.subs.get(&k).map(|s| (k, s.log_key)))
            .collect();
        if subs.is_empty() {
            return Vec::new();
        }
        let ttl = self.hub.config.delivery.lease_ttl_ms;
        let wanted = subs.iter().map(|(k, log_key)| {
            let (tenant, id) = k.pair();
            (tenant, id, *log_key)
        });
        let claimed = self.hub.store.claim_leases(&self.owner, wanted, ttl).await;
        match claimed {
            Ok(got) => {
                let mut out = Vec::with_capacity(got.len());
                for (key, log_key) in subs {
                    if !got.contains(&log_key) {
                        continue;
                    }
                    // a lease held on an earlier incarnation goes, with its worker
                    if self.leases.get(&key).is_some_and(|h| h.log_key != log_key) {
                        self.stop(&key);
                    }
                    let held = self.leases.entry(key.clone()).or_insert(Held {
                        log_key,
                        slot: None,
                    });
                    held.log_key = log_key;
                    out.push(key);
                }
                out
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
    let mut unparked_rx = hub.wakeups.parking();
    let mut d = Delivery {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        owner: format!("delivery-{}", uuid::Uuid::new_v4()),
        clients: std::sync::Arc::new(clients::Clients::default()),
        known: Known::default(),
        leases: KeyMap::default(),
        serial: 0,
        tasks: JoinSet::new(),
        ended,
        beats: BinaryHeap::new(),
        restarts: BinaryHeap::new(),
        free_before: false,
    };
    let mut renewed = tokio::time::Instant::now();
    let mut rebalanced = tokio::time::Instant::now();
    let mut others: BTreeSet<String> = BTreeSet::new();
    let mut recheck: Vec<Key> = Vec::new();
    // Never wait only on wake-ups: parked subscriptions are looked at this often as well.
    let mut safety =
        tokio::time::interval(Duration::from_millis(hub.config.database.safety_read_ms));
    safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    'passes: while !shutdown.is_cancelled() {
        let mut claim_all = false;
        match hub.store.heartbeat(&d.owner, ttl).await {
            Ok(hb) => {
                renewed = tokio::time::Instant::now();
                if !hb.kept {
                    if !d.leases.is_empty() {
                        tracing::warn!(
                            subscriptions = d.leases.len(),
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
                if renewed.elapsed() > lease_ttl && !d.leases.is_empty() {
                    tracing::warn!(
                        subscriptions = d.leases.len(),
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
        // leases spread over the processes alive (delivery/rebalance.rs)
        if !others.is_empty() && rebalanced.elapsed() >= lease_ttl {
            rebalanced = tokio::time::Instant::now();
            claim_all |= d.rebalance().await;
        }
        let mut dirty: HashSet<Key> = match d.known.refresh(&hub).await {
            Ok(changed) => changed.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read subscription changes for delivery");
                HashSet::new()
            }
        };
        for key in std::mem::take(&mut recheck) {
            match d.known.recheck(&hub, &key).await {
                Ok(()) => {
                    dirty.insert(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, subscription = %key.id(), "cannot read a subscription again");
                    recheck.push(key);
                }
            }
        }
        let wanted: Vec<Key> = if claim_all {
            d.known
                .subs
                .values()
                .filter(|s| !d.holds(s))
                .map(|s| s.key.clone())
                .collect()
        } else {
            dirty
                .iter()
                .filter(|k| d.known.subs.get(*k).is_some_and(|s| !d.holds(s)))
                .cloned()
                .collect()
        };
        dirty.extend(d.claim(wanted).await);
        d.reconcile(dirty).await;
        d.reap();
        let (running, parked) = d.count();
        hub.metrics.delivery_workers(running, parked);
        // Between passes: workers that end or park, parked subscriptions whose log moved or
        // whose heartbeat is due; none of these costs a pass (a store query).
        let next_pass = tokio::time::Instant::now() + poll;
        loop {
            let beat = d.beats.peek().map(|Reverse((due, _))| *due);
            let restart = d.restarts.peek().map(|Reverse((due, _))| *due);
            tokio::select! {
                _ = shutdown.cancelled() => break 'passes,
                _ = tokio::time::sleep_until(next_pass) => break,
                // a subscription written here starts its worker now, not at the next poll
                _ = hub.subscription_writes.notified() => break,
                Some((key, serial, ended)) = ended_rx.recv() => {
                    // one that ended (not parked) is looked at again now
                    if d.ended(key.clone(), serial, ended).await {
                        recheck.push(key);
                        break;
                    }
                }
                Some(key) = unparked_rx.recv() => d.unparked(key).await,
                _ = safety.tick() => d.unpark_behind().await,
                _ = tokio::time::sleep_until(beat.unwrap_or(next_pass)), if beat.is_some() => {
                    d.heartbeats_due().await;
                }
                _ = tokio::time::sleep_until(restart.unwrap_or(next_pass)), if restart.is_some() => {
                    d.restarts_due().await;
                }
            }
            d.reap();
        }
    }
    tracing::info!(
        subscriptions = d.leases.len(),
        "delivery draining in-flight requests"
    );
    for held in d.leases.values() {
        if let Some(Slot::Running { stop, .. }) = &held.slot {
            stop.cancel();
        }
    }
    while d.tasks.join_next().await.is_some() {}
    // Hand the subscriptions over at once instead of after the heartbeat lapses.
    if let Err(e) = hub.store.release_leases(&d.owner).await {
        tracing::warn!(error = %e, "cannot release delivery leases; they lapse on their own");
    }
    Ok(())
}

/// Run a worker; however it ends (finished, parked, stopped, or a panic), cancel its token.
/// One that ended on its own (not stopped: it parked, its subscription turned off, its lease
/// was lost, or it panicked) is reported on `ended`: the loop parks it, or reads its
/// subscription again and starts a new worker while this process holds the lease. A panicking worker that kept its entry
/// would hold the subscription's lease and deliver nothing, silently, for ever.
async fn supervised(
    key: Key,
    serial: u64,
    stop: CancellationToken,
    ended: tokio::sync::mpsc::UnboundedSender<EndedMsg>,
    run: impl Future<Output = worker::Ended>,
) {
    use futures::FutureExt;
    let how = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(how) => how,
        Err(_) => {
            tracing::error!(subscription = %key.id(), "a delivery worker panicked; a new one starts at the next pass");
            worker::Ended::Done
        }
    };
    if !stop.is_cancelled() {
        stop.cancel();
        let _ = ended.send((key, serial, how));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        SubKey::new("default", id)
    }

    fn done(msg: Option<EndedMsg>) -> Option<(Key, u64)> {
        msg.and_then(|(k, serial, how)| matches!(how, worker::Ended::Done).then_some((k, serial)))
    }

    #[tokio::test]
    async fn a_worker_that_ends_on_its_own_is_looked_at_again() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        supervised(key("s1"), 1, stop.clone(), tx.clone(), async {
            panic!("a bug in a worker");
        })
        .await;
        assert!(stop.is_cancelled(), "reconcile must see the worker gone");
        assert_eq!(done(rx.try_recv().ok()), Some((key("s1"), 1)));
        let stop = CancellationToken::new();
        supervised(key("s2"), 2, stop.clone(), tx.clone(), async {
            worker::Ended::Done
        })
        .await;
        assert!(stop.is_cancelled());
        assert_eq!(done(rx.try_recv().ok()), Some((key("s2"), 2)));
        // one stopped by the loop is not reported: the loop knows
        let stop = CancellationToken::new();
        stop.cancel();
        supervised(key("s3"), 3, stop, tx, async { worker::Ended::Done }).await;
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_idle_worker_task_stays_small() {
        fn task_size<F: Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        // what each live rest-hook subscription's task holds inline, the worker boxed
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let boxed: std::pin::Pin<Box<dyn Future<Output = worker::Ended> + Send>> =
            Box::pin(async { worker::Ended::Done });
        let task = supervised(key("s"), 1, CancellationToken::new(), tx, boxed);
        assert!(task_size(&task) <= 512, "{} bytes", task_size(&task));
    }
}
