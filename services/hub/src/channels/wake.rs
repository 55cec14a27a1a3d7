//! Wake the reader that cares.
//!
//! Each subscription with a reader in this process has a `watch` channel holding the highest
//! event number known to be logged for it. The matcher in this process sets it right after
//! its store transaction commits; on PostgreSQL, a `LISTEN` connection sets it for
//! notifications logged by any process (the logging transaction sends a `NOTIFY`). A reader
//! queries the store only when its number moved past what it has read: an idle
//! subscription costs no query and no wake-up. When the `LISTEN` connection is lost,
//! readers poll until it is back, then every reader is woken once (something may have been
//! missed meanwhile): polling is only the fallback.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Hub;

/// What a reader's watch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Logged {
    /// The highest event number known to be logged.
    pub number: i64,
    /// Bumped when every reader must look again (the listener reconnected).
    pub epoch: u64,
}

type Key = (String, String);

/// Per-subscription wake-ups for this process.
#[derive(Debug)]
pub struct Wakeups {
    subs: Mutex<HashMap<Key, watch::Sender<Logged>>>,
    epoch: Mutex<u64>,
    /// Whether readers must poll: true while a needed `LISTEN` connection is down.
    polling: watch::Sender<bool>,
}

impl Wakeups {
    /// `cross_process`: whether other processes may log notifications (PostgreSQL). Until
    /// the listener connects, readers poll.
    pub fn new(cross_process: bool) -> Wakeups {
        Wakeups {
            subs: Mutex::new(HashMap::new()),
            epoch: Mutex::new(0),
            polling: watch::Sender::new(cross_process),
        }
    }

    /// The watch of one subscription.
    pub fn watch(&self, tenant: &str, id: &str) -> watch::Receiver<Logged> {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = *self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        subs.entry((tenant.to_owned(), id.to_owned()))
            .or_insert_with(|| watch::Sender::new(Logged { number: 0, epoch }))
            .subscribe()
    }

    /// A subscription's log reached `number`: wake its readers (only if it moved).
    pub fn logged(&self, tenant: &str, id: &str, number: i64) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), id.to_owned());
        let Some(tx) = subs.get(&key) else {
            return; // no reader here
        };
        if tx.receiver_count() == 0 {
            subs.remove(&key);
            return;
        }
        tx.send_if_modified(|l| {
            if number > l.number {
                l.number = number;
                true
            } else {
                false
            }
        });
    }

    /// Wake every reader once, whatever its number.
    pub fn wake_all(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        *epoch += 1;
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|_, tx| tx.receiver_count() > 0);
        for tx in subs.values() {
            tx.send_modify(|l| l.epoch = *epoch);
        }
    }

    /// How many subscriptions have a reader in this process.
    pub fn readers(&self) -> usize {
        let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.values().filter(|tx| tx.receiver_count() > 0).count()
    }

    /// Whether readers must poll now, and a receiver to learn when that changes.
    pub fn polling(&self) -> watch::Receiver<bool> {
        self.polling.subscribe()
    }

    fn set_polling(&self, on: bool) {
        self.polling.send_if_modified(|p| {
            let changed = *p != on;
            *p = on;
            changed
        });
    }
}

/// Keep a `LISTEN` connection open (PostgreSQL) and turn its notifications into wake-ups;
/// returns at once on SQLite. Readers poll while it is down.
pub async fn listen(hub: Hub, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    loop {
        match hub.store.listen_logged().await {
            Ok(None) => return,
            Ok(Some(mut listener)) => {
                tracing::info!("listening for notifications logged by other processes");
                hub.wakeups.set_polling(false);
                // anything logged while we were not listening is found by one look each
                hub.wakeups.wake_all();
                wait = Duration::from_millis(200);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        got = listener.recv() => match got {
                            Ok(l) => hub.wakeups.logged(&l.tenant, &l.subscription_id, l.event_number),
                            Err(e) => {
                                tracing::warn!(error = %e, "the LISTEN connection was lost; readers poll until it is back");
                                break;
                            }
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_subscription_that_logged_wakes() {
        let w = Wakeups::new(false);
        let mut a = w.watch("t", "a");
        let mut b = w.watch("t", "b");
        w.logged("t", "a", 3);
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        assert_eq!(a.borrow_and_update().number, 3);
        // the same number again (in-process and NOTIFY both report it) wakes nobody
        w.logged("t", "a", 3);
        assert!(!a.has_changed().unwrap());
        w.wake_all();
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        assert_eq!(b.borrow_and_update().epoch, 1);
        // unknown subscriptions and readers that went away cost nothing
        w.logged("t", "nobody", 1);
        drop(a);
        w.logged("t", "a", 4);
        assert_eq!(w.readers(), 1);
        assert!(!*w.polling().borrow());
        assert!(*Wakeups::new(true).polling().borrow());
    }
}
