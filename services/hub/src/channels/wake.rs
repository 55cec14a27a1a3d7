//! Wake the reader that cares.
//!
//! Each subscription with a reader in this process has a `watch` channel holding the highest
//! event number known to be logged for it. The matcher in this process sets it right after
//! its store transaction commits; on PostgreSQL, a `LISTEN` connection sets it for
//! notifications logged by any process (the logging transaction sends a `NOTIFY`). A reader
//! queries the store only when its number moved past what it has read: an idle
//! subscription costs no query and no wake-up. When the `LISTEN` connection is lost,
//! readers poll until it is back, then every reader is woken once (something may have been
//! missed meanwhile): polling is only the fallback. A connection can also go silent without
//! failing (a NAT or a load balancer drops it without a reset): the listener pings itself
//! through the pool every `database.listen_ping_ms` and is replaced like a lost one when
//! nothing comes back. And no reader waits only on wake-ups: each also looks at the log at
//! least every `database.safety_read_ms` (parked subscriptions through the delivery loop).
//!
//! A rest-hook subscription with nothing to send has no reader at all: its delivery worker
//! *parks* (ends) and the subscription is registered here with its position; the first
//! wake-up past that position sends its key to the delivery loop, which starts a worker
//! again. A parked subscription costs a map entry: no task, no watch, no wake-up.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use hub_store::Heard;
use hub_store::{LogKey, Notification};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::model::{KeyMap, Pair, SubKey};
use crate::state::Hub;

/// What a reader's watch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Logged {
    /// The highest event number known to be logged.
    pub number: i64,
    /// Bumped when every reader must look again (the listener reconnected).
    pub epoch: u64,
    /// The incarnation `number` belongs to (`None`: not said). A subscription deleted and
    /// re-created with the same id starts its numbers again: a number of another
    /// incarnation says nothing about a reader's log, and the new one's lower numbers must
    /// still wake its readers.
    pub log_key: Option<LogKey>,
}

impl Logged {
    /// The highest number known logged in `key`'s log (0 when what is known is another
    /// incarnation's).
    pub fn number_of(&self, key: LogKey) -> i64 {
        if self.log_key.is_none_or(|k| k == key) {
            self.number
        } else {
            0
        }
    }
}

/// Recently logged notifications of one subscription, contiguous in event number, so that
/// the readers at the head (a dashboard open in a thousand browsers) take a new event from
/// memory instead of one query each. Filled only by this process's matcher; anything logged
/// elsewhere (or a gap) starts it over, and a reader it cannot serve queries the log.
#[derive(Debug, Default)]
struct Recent {
    notes: VecDeque<Notification>,
    bytes: usize,
}

/// The most a subscription's recent-notifications cache holds.
const RECENT_MAX: usize = 256;
const RECENT_MAX_BYTES: usize = 256 * 1024;

impl Recent {
    fn push(&mut self, n: &Notification) {
        // a gap, or another incarnation's log: start over
        if self
            .notes
            .back()
            .is_some_and(|b| b.event_number + 1 != n.event_number || b.log_key != n.log_key)
        {
            self.notes.clear();
            self.bytes = 0;
        }
        self.bytes += cost(n);
        self.notes.push_back(n.clone());
        while self.notes.len() > RECENT_MAX || self.bytes > RECENT_MAX_BYTES {
            match self.notes.pop_front() {
                Some(old) => self.bytes -= cost(&old),
                None => break,
            }
        }
    }

    /// Up to `max` notifications of `key`'s log after `position`, if this cache holds
    /// `position + 1` of that log.
    fn after(&self, key: LogKey, position: i64, max: usize) -> Option<Vec<Notification>> {
        if self.notes.front()?.log_key != key {
            return None;
        }
        let first = self.notes.front()?.event_number;
        let last = self.notes.back()?.event_number;
        // positions come from clients (Last-Event-ID, a resume number): any i64
        let next = position.saturating_add(1);
        if first > next || last <= position {
            return None;
        }
        let skip = usize::try_from(next.saturating_sub(first)).ok()?;
        Some(self.notes.iter().skip(skip).take(max).cloned().collect())
    }
}

fn cost(n: &Notification) -> usize {
    n.resource.as_ref().map_or(0, |r| r.len()) + 256
}

#[derive(Debug)]
struct Entry {
    tx: watch::Sender<Logged>,
    recent: Recent,
}

/// The parked rest-hook subscriptions (see the module documentation).
#[derive(Debug, Default)]
struct Parking {
    /// Each parked subscription's position: a wake-up past it unparks.
    parked: KeyMap<i64>,
    /// The delivery loop's end (`None`: no delivery role here, nothing parks).
    unpark: Option<mpsc::UnboundedSender<SubKey>>,
}

impl Parking {
    /// Send every parked subscription back (a wake-up may have been missed).
    fn unpark_all(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        if let Some(tx) = &self.unpark {
            for key in parked.into_keys() {
                let _ = tx.send(key);
            }
        }
    }
}

/// Per-subscription wake-ups for this process.
#[derive(Debug)]
pub struct Wakeups {
    /// Locked before `parking` wherever both are.
    subs: Mutex<KeyMap<Entry>>,
    parking: Mutex<Parking>,
    epoch: Mutex<u64>,
    /// Whether readers must poll: true while a needed `LISTEN` connection is down.
    polling: watch::Sender<bool>,
}

impl Wakeups {
    /// `cross_process`: whether other processes may log notifications (PostgreSQL). Until
    /// the listener connects, readers poll.
    pub fn new(cross_process: bool) -> Wakeups {
        Wakeups {
            subs: Mutex::default(),
            parking: Mutex::default(),
            epoch: Mutex::new(0),
            polling: watch::Sender::new(cross_process),
        }
    }

    /// The watch of one subscription.
    pub fn watch(&self, tenant: &str, id: &str) -> watch::Receiver<Logged> {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = subs.get(&Pair(tenant, id)) {
            return entry.tx.subscribe();
        }
        let epoch = *self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let tx = watch::Sender::new(Logged {
            number: 0,
            epoch,
            log_key: None,
        });
        let rx = tx.subscribe();
        subs.insert(
            SubKey::new(tenant, id),
            Entry {
                tx,
                recent: Recent::default(),
            },
        );
        rx
    }

    /// A subscription's log reached `number` (logged by another process): wake its readers
    /// (only if it moved).
    pub fn logged(&self, tenant: &str, id: &str, key: Option<LogKey>, number: i64) {
        self.moved(tenant, id, key, number, None);
    }

    /// This process logged `notes` (in event-number order per subscription): keep them for
    /// the readers at the head and wake them.
    pub fn logged_here(&self, notes: &[Notification]) {
        for n in notes {
            let key = Some(n.log_key);
            self.moved(&n.tenant, &n.subscription_id, key, n.event_number, Some(n));
        }
    }

    fn moved(
        &self,
        tenant: &str,
        id: &str,
        log_key: Option<LogKey>,
        number: i64,
        note: Option<&Notification>,
    ) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let key = Pair(tenant, id);
        // A parked subscription goes back to the delivery loop (its worker may have parked
        // while still holding a watch below). The loop cannot start its worker before this
        // returns (opening a stream takes the lock held here).
        let unparked = {
            let mut parking = self.parking.lock().unwrap_or_else(|p| p.into_inner());
            let go = parking.parked.get(&key).is_some_and(|at| number > *at);
            let parked = if go {
                parking.parked.remove_entry(&key).map(|(k, _)| k)
            } else {
                None
            };
            if let (Some(k), Some(tx)) = (&parked, &parking.unpark) {
                let _ = tx.send(k.clone());
            }
            parked
        };
        match subs.get_mut(&key) {
            // readers, or a worker about to start: keep the notification for them
            Some(entry) if unparked.is_some() || entry.tx.receiver_count() > 0 => {
                if let Some(n) = note {
                    entry.recent.push(n);
                }
                entry.tx.send_if_modified(|l| {
                    if log_key.is_some() && log_key != l.log_key {
                        // another incarnation's numbers: they start again
                        *l = Logged {
                            number,
                            epoch: l.epoch,
                            log_key,
                        };
                        true
                    } else if number > l.number {
                        l.number = number;
                        true
                    } else {
                        false
                    }
                });
            }
            Some(_) => {
                subs.remove(&key);
            }
            None => {
                // the woken worker takes the notification from memory, not from the log
                if let (Some(parked), Some(n)) = (unparked, note) {
                    let epoch = *self.epoch.lock().unwrap_or_else(|p| p.into_inner());
                    let mut recent = Recent::default();
                    recent.push(n);
                    subs.insert(
                        parked,
                        Entry {
                            tx: watch::Sender::new(Logged {
                                number,
                                epoch,
                                log_key,
                            }),
                            recent,
                        },
                    );
                }
            }
        }
    }

    /// Where this process's delivery loop learns that a parked subscription has something
    /// to send (its key); parking is refused until this is called. Called again, it starts
    /// over: what was parked is forgotten.
    pub fn parking(&self) -> mpsc::UnboundedReceiver<SubKey> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut parking = self.parking.lock().unwrap_or_else(|p| p.into_inner());
        parking.parked.clear();
        parking.unpark = Some(tx);
        rx
    }

    /// Park a subscription whose reader has read everything through `position` and hands
    /// over its watch: from now on the first wake-up past `position` sends its key to the
    /// delivery loop ([`Wakeups::parking`]). Refused (false) when the watch moved since
    /// the reader last looked, when readers must poll, or when no delivery loop listens:
    /// the reader then goes on reading.
    pub fn park(
        &self,
        key: &SubKey,
        log_key: LogKey,
        position: i64,
        mut watch: watch::Receiver<Logged>,
    ) -> bool {
        // under the lock `moved` takes: no wake-up falls between the check and the entry
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if *self.polling.borrow() || watch.has_changed().unwrap_or(true) {
            return false;
        }
        if watch.borrow_and_update().number_of(log_key) > position {
            return false;
        }
        let mut parking = self.parking.lock().unwrap_or_else(|p| p.into_inner());
        if parking.unpark.is_none() {
            return false;
        }
        // the parked worker's watch was its only reader: the entry goes with it (a parked
        // subscription is one map entry, not a channel and a cache)
        if subs.get(key).is_some_and(|e| e.tx.receiver_count() <= 1) {
            subs.remove(key);
            // the map was as large as all the workers that ran at once: give that back
            if subs.capacity() > 1024 && subs.len() * 4 < subs.capacity() {
                let keep = subs.len() * 2;
                subs.shrink_to(keep);
            }
        }
        drop(watch);
        parking.parked.insert(key.clone(), position);
        true
    }

    /// Forget a parked subscription (its delivery stopped here); whether it was parked.
    pub fn unpark(&self, key: &SubKey) -> bool {
        let mut parking = self.parking.lock().unwrap_or_else(|p| p.into_inner());
        parking.parked.remove(key).is_some()
    }

    /// How many subscriptions are parked.
    pub fn parked(&self) -> usize {
        let parking = self.parking.lock().unwrap_or_else(|p| p.into_inner());
        parking.parked.len()
    }

    /// Up to `max` notifications of `log_key`'s log after `position` from memory, when this
    /// process logged them recently; `None`: ask the log.
    pub fn recent_after(
        &self,
        (tenant, id): (&str, &str),
        log_key: LogKey,
        position: i64,
        max: usize,
    ) -> Option<Vec<Notification>> {
        let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.get(&Pair(tenant, id))?
            .recent
            .after(log_key, position, max)
    }

    /// Wake every reader once, whatever its number.
    pub fn wake_all(&self) {
        // `subs` before `epoch`, as in `watch`
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        *epoch += 1;
        subs.retain(|_, e| e.tx.receiver_count() > 0);
        for e in subs.values() {
            e.tx.send_modify(|l| l.epoch = *epoch);
        }
        self.parking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unpark_all();
    }

    /// How many subscriptions have a reader in this process.
    pub fn readers(&self) -> usize {
        let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.values().filter(|e| e.tx.receiver_count() > 0).count()
    }

    /// Whether readers must poll now, and a receiver to learn when that changes.
    pub fn polling(&self) -> watch::Receiver<bool> {
        self.polling.subscribe()
    }

    fn set_polling(&self, on: bool) {
        // with the lock `park` holds: nothing parks after this while polling
        let _subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        self.polling.send_if_modified(|p| {
            let changed = *p != on;
            *p = on;
            changed
        });
        if on {
            // parked subscriptions would miss what other processes log meanwhile
            self.parking
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unpark_all();
        }
    }
}

/// Keep a `LISTEN` connection open (PostgreSQL) and turn its notifications into wake-ups;
/// returns at once on SQLite. Readers poll while it is down. A connection that goes silent
/// (its own pings stop coming back) is replaced like one that failed.
pub async fn listen(hub: Hub, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    let ping_every = Duration::from_millis(hub.config.database.listen_ping_ms.max(100));
    loop {
        match hub.store.listen_logged().await {
            Ok(None) => return,
            Ok(Some(mut listener)) => {
                tracing::info!("listening for notifications logged by other processes");
                hub.wakeups.set_polling(false);
                // anything logged while we were not listening is found by one look each
                hub.wakeups.wake_all();
                wait = Duration::from_millis(200);
                match hear(&hub, &mut listener, ping_every, &shutdown).await {
                    None => return,
                    Some(lost) => lost.emit(&hub.metrics),
                }
                hub.wakeups.set_polling(true);
            }
            Err(e) => {
                hub.wakeups.set_polling(true);
                tracing::warn!(error = %e, "cannot LISTEN for logged notifications; readers poll meanwhile");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Turn what `listener` hears into wake-ups, pinging it every `ping_every`, until it fails or
/// hears nothing for two periods (why it must be replaced), or `shutdown` (`None`).
async fn hear(
    hub: &Hub,
    listener: &mut hub_store::LoggedListener,
    ping_every: Duration,
    shutdown: &CancellationToken,
) -> Option<crate::metrics::ListenerLost> {
    use crate::metrics::ListenerLost;
    let channel = listener.ping_channel().to_owned();
    let mut heard_at = tokio::time::Instant::now();
    // the first tick is at once: a connection silent from the start is found too
    let mut tick = tokio::time::interval(ping_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let got = {
            // one receive, kept across pings: never dropped half-read
            let recv = listener.recv();
            tokio::pin!(recv);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    got = &mut recv => break got,
                    _ = tick.tick() => {
                        let silent = heard_at.elapsed();
                        if silent >= ping_every * 2 {
                            return Some(ListenerLost::Silent(silent));
                        }
                        // through the pool, on a task of its own: a stuck pool cannot stop
                        // this loop from noticing the silence
                        let (store, channel) = (hub.store.clone(), channel.clone());
                        tokio::spawn(async move {
                            let ping = tokio::time::timeout(ping_every, store.ping_listener(&channel));
                            if let Ok(Err(e)) = ping.await {
                                tracing::debug!(error = %e, "cannot ping the LISTEN connection");
                            }
                        });
                    }
                }
            }
        };
        heard_at = tokio::time::Instant::now();
        match got {
            Ok(Heard::Logged(all)) => {
                for l in all {
                    hub.wakeups
                        .logged(&l.tenant, &l.subscription_id, l.log_key(), l.event_number);
                }
            }
            // another process's client write: delivery looks now
            Ok(Heard::Written(_)) => hub.subscription_writes.notify_one(),
            Ok(Heard::Pong) => {}
            Err(e) => return Some(ListenerLost::Failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: LogKey = LogKey::for_tests(1);

    fn note(n: i64) -> Notification {
        Notification {
            log_key: K,
            event_number: n,
            notification_id: format!("n{n}"),
            created_at: String::new(),
            note: hub_store::NewNotification {
                tenant: "t".into(),
                subscription_id: "a".into(),
                event_id: format!("e{n}"),
                action: "create".into(),
                focus_type: "Observation".into(),
                focus_id: "o".into(),
                focus_version: None,
                occurred_at: String::new(),
                resource: None,
            },
        }
    }

    #[tokio::test]
    async fn readers_at_the_head_are_served_from_memory() {
        let w = Wakeups::new(false);
        let _reader = w.watch("t", "a");
        w.logged_here(&[note(1), note(2), note(3)]);
        let got: Vec<i64> = w
            .recent_after(("t", "a"), K, 1, 10)
            .unwrap()
            .iter()
            .map(|n| n.event_number)
            .collect();
        assert_eq!(got, [2, 3]);
        assert_eq!(w.recent_after(("t", "a"), K, 3, 10), None, "nothing newer");
        // a gap (logged by another process) starts the cache over: 5 cannot serve 3 → 4
        w.logged_here(&[note(5)]);
        assert_eq!(w.recent_after(("t", "a"), K, 3, 10), None);
        assert_eq!(w.recent_after(("t", "a"), K, 4, 10).unwrap().len(), 1);
        // no reader, no cache
        w.logged_here(&[note(1)].map(|mut n| {
            n.note.subscription_id = "nobody".into();
            n
        }));
        assert_eq!(w.recent_after(("t", "nobody"), K, 0, 10), None);
        let mut r = Recent::default();
        for i in 1..=(RECENT_MAX as i64 + 10) {
            r.push(&note(i));
        }
        assert_eq!(r.notes.len(), RECENT_MAX);
        assert_eq!(r.after(K, 0, 10), None, "evicted");
        // any position a client may send: no overflow, no panic
        for p in [i64::MIN, -1, i64::MAX - 1, i64::MAX] {
            let _ = r.after(K, p, 10);
            let _ = w.recent_after(("t", "a"), K, p, 10);
        }
    }

    #[tokio::test]
    async fn a_parked_subscription_is_sent_back_once_its_log_moves_past_it() {
        let w = Wakeups::new(false);
        let a = w.watch("t", "a");
        assert!(
            !w.park(&SubKey::new("t", "a"), K, 0, a),
            "nothing listens for unparking yet"
        );
        let mut unparked = w.parking();
        // parked at 3; a wake-up at or below it sends nothing
        let a = w.watch("t", "a");
        assert!(w.park(&SubKey::new("t", "a"), K, 3, a));
        assert_eq!(w.parked(), 1);
        assert_eq!(w.readers(), 0);
        assert!(w.subs.lock().unwrap().is_empty(), "no watch kept for it");
        w.logged("t", "a", None, 3);
        w.logged("t", "b", None, 9);
        assert!(unparked.try_recv().is_err());
        w.logged_here(&[note(4)]);
        assert_eq!(unparked.try_recv().ok(), Some(SubKey::new("t", "a")));
        assert_eq!(w.parked(), 0, "sent back once");
        // the worker it wakes finds the notification in memory
        let _worker = w.watch("t", "a");
        assert_eq!(
            w.recent_after(("t", "a"), K, 3, 10).map(|n| n.len()),
            Some(1)
        );
        w.logged("t", "a", None, 5);
        assert!(unparked.try_recv().is_err());

        // a watch that moved after its reader looked: parking is refused
        let mut a = w.watch("t", "a");
        a.borrow_and_update();
        w.logged("t", "a", None, 6);
        assert!(!w.park(&SubKey::new("t", "a"), K, 5, a));
        // a watch already past the position: refused
        let mut a = w.watch("t", "a");
        a.borrow_and_update();
        assert!(!w.park(&SubKey::new("t", "a"), K, 5, a));
        // forgotten (its delivery stopped here): nothing is sent
        let mut a = w.watch("t", "a");
        a.borrow_and_update();
        assert!(w.park(&SubKey::new("t", "a"), K, 6, a));
        assert!(w.unpark(&SubKey::new("t", "a")));
        w.logged("t", "a", None, 7);
        assert!(unparked.try_recv().is_err());

        // every reader woken (the listener reconnected): every parked one is sent back
        let mut b = w.watch("t", "b");
        b.borrow_and_update();
        assert!(w.park(&SubKey::new("t", "b"), K, 9, b));
        w.wake_all();
        assert_eq!(unparked.try_recv().ok(), Some(SubKey::new("t", "b")));
        // while readers poll nothing parks, and what was parked is sent back
        let mut b = w.watch("t", "b");
        b.borrow_and_update();
        assert!(w.park(&SubKey::new("t", "b"), K, 9, b));
        w.set_polling(true);
        assert_eq!(unparked.try_recv().ok(), Some(SubKey::new("t", "b")));
        let mut b = w.watch("t", "b");
        b.borrow_and_update();
        assert!(!w.park(&SubKey::new("t", "b"), K, 9, b));
    }

    /// A subscription deleted and re-created with the same id starts its numbers again: its
    /// readers are woken by the new log's lower numbers, and the recent cache never hands
    /// one incarnation's notifications to a reader of the other.
    #[tokio::test]
    async fn a_re_created_subscription_is_another_log() {
        let (old, new) = (LogKey::for_tests(1), LogKey::for_tests(2));
        let of = |key: LogKey, n: i64| {
            let mut x = note(n);
            x.log_key = key;
            x
        };
        let w = Wakeups::new(false);
        let mut reader = w.watch("t", "a");
        w.logged_here(&[of(old, 20), of(old, 21)]);
        assert_eq!(reader.borrow_and_update().number_of(old), 21);
        w.logged_here(&[of(new, 1)]);
        assert!(
            reader.has_changed().unwrap(),
            "the new log's 1 wakes its readers"
        );
        let seen = *reader.borrow_and_update();
        assert_eq!((seen.number_of(new), seen.number_of(old)), (1, 0));
        // a reader of the old log at 0 is not served the new log's 1, nor the reverse
        assert_eq!(w.recent_after(("t", "a"), old, 0, 10), None);
        assert_eq!(w.recent_after(("t", "a"), old, 20, 10), None);
        let got = w.recent_after(("t", "a"), new, 0, 10).unwrap();
        assert_eq!((got.len(), got[0].log_key), (1, new));
        // across processes (NOTIFY with its log key) as well
        w.logged("t", "a", Some(new), 2);
        assert!(reader.has_changed().unwrap());
        assert_eq!(reader.borrow_and_update().number_of(new), 2);
        // a parked reader of the new log is not refused parking by the old log's numbers
        let _unparked = w.parking();
        w.logged("t", "a", Some(old), 21);
        let mut watch = w.watch("t", "a");
        watch.borrow_and_update();
        assert!(w.park(&SubKey::new("t", "a"), new, 2, watch));
    }

    #[tokio::test]
    async fn only_the_subscription_that_logged_wakes() {
        let w = Wakeups::new(false);
        let mut a = w.watch("t", "a");
        let mut b = w.watch("t", "b");
        w.logged("t", "a", None, 3);
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        assert_eq!(a.borrow_and_update().number, 3);
        // the same number again (in-process and NOTIFY both report it) wakes nobody
        w.logged("t", "a", None, 3);
        assert!(!a.has_changed().unwrap());
        w.wake_all();
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        assert_eq!(b.borrow_and_update().epoch, 1);
        // unknown subscriptions and readers that went away cost nothing
        w.logged("t", "nobody", None, 1);
        drop(a);
        w.logged("t", "a", None, 4);
        assert_eq!(w.readers(), 1);
        assert!(!*w.polling().borrow());
        assert!(*Wakeups::new(true).polling().borrow());
    }
}
