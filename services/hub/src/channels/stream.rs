//! The transport-neutral subscription stream: from a position (the last event number a
//! reader has), the backlog from the notification log in order, then the live tail.
//!
//! The stream keeps no cursor in the store: the reader owns its position (the rest-hook
//! worker records `delivered_through`; a stream client resumes from the number it last
//! saw). It queries the log only when its subscription's wake-up moved past what it has
//! read (or while the cross-process listener is down), and otherwise once per
//! `database.safety_read_ms` in case a wake-up was lost, so an idle subscription costs a
//! small query now and then. A position whose following events were purged by retention is answered
//! explicitly ([`Item::HistoryGone`]), never skipped silently.

use std::time::Duration;

use hub_store::{LogKey, Notification, Store, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wake::Logged;
use crate::state::Hub;

/// What a reader gets next.
#[derive(Debug)]
pub enum Item {
    /// The next notifications in event-number order (at most the `max` asked for).
    Notifications(Vec<Notification>),
    /// Nothing arrived before the reader's quiet deadline (time for a heartbeat).
    Quiet,
    /// Events after the reader's position were purged: the stream continues with
    /// `resumes_at`. Readers tell their client (close code, SSE event, gRPC status).
    HistoryGone { after: i64, resumes_at: i64 },
    /// The reader, once caught up, fell more than `streams.max_lag_events` behind the head:
    /// it reads slower than events arrive. Readers end the stream saying so (the slow-reader
    /// policy); the client resumes from its last event number.
    Lagging { behind: i64 },
    /// The subscription was deleted, or deleted and created again with its id (a new log):
    /// this incarnation's log has nothing more. Readers end the stream saying so; a reader
    /// of the new one starts again (its numbers start at 1).
    Deleted,
}

/// A stream taken apart to park ([`SubscriptionStream::into_idle`]).
#[derive(Debug)]
pub struct Idle {
    /// The incarnation read.
    pub log_key: LogKey,
    /// The last event number handed out.
    pub position: i64,
    /// The subscription's watch as its reader last looked at it: parking checks it did not
    /// move since ([`super::wake::Wakeups::park`]).
    pub wake: watch::Receiver<Logged>,
}

/// The most notifications one read of the log loads, whatever a channel asks for: with
/// `backport-max-count` up to 1,000 and a websocket's outbox of 1,024 messages, a backlog
/// would otherwise be read a million rows at a time and trimmed to the byte budget after.
pub const MAX_READ: usize = 1_000;

/// One reader's view of one subscription.
pub struct SubscriptionStream {
    /// When the subscription's row was last compared with the incarnation read (a deleted
    /// or re-created subscription wakes no reader of the old log: looked at once per
    /// `database.safety_read_ms`).
    row_checked: Instant,
    store: Store,
    wakeups: std::sync::Arc<super::wake::Wakeups>,
    tenant: String,
    id: String,
    /// The incarnation read: its position means nothing on another's log.
    log_key: LogKey,
    position: i64,
    wake: watch::Receiver<Logged>,
    polling: watch::Receiver<bool>,
    poll: Duration,
    /// The longest it goes without reading the log, woken or not (`database.safety_read_ms`):
    /// a wake-up lost anywhere costs this much delay, never a stall.
    safety: Duration,
    /// When it last read the log.
    looked_at: Instant,
    /// The most notification bytes handed out at once (`streams.max_buffer_bytes`).
    max_bytes: usize,
    /// Read the log at the next call whatever the wake-up says (at open, after a wake).
    look: bool,
    /// At open the wake-up knows nothing yet: an empty log is checked against the count.
    opened: bool,
    /// Most events the reader may fall behind the head once caught up (0: no limit).
    max_lag: i64,
    /// Whether a read found the log's end: a reader replaying an older backlog is not
    /// lagging, only one that was live and fell behind.
    caught_up: bool,
}

impl SubscriptionStream {
    /// A stream of `sub`'s incarnation after event number `after` (0: from the start).
    pub fn open(hub: &Hub, sub: &crate::model::Subscription, after: i64) -> SubscriptionStream {
        let (tenant, id) = (sub.tenant(), sub.id());
        SubscriptionStream {
            store: hub.store.clone(),
            wakeups: std::sync::Arc::clone(&hub.wakeups),
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            log_key: sub.log_key,
            position: after.max(0),
            wake: hub.wakeups.watch(tenant, id),
            polling: hub.wakeups.polling(),
            poll: Duration::from_millis(hub.config.delivery.poll_ms),
            safety: Duration::from_millis(hub.config.database.safety_read_ms),
            looked_at: Instant::now(),
            max_bytes: hub.config.streams.max_buffer_bytes,
            look: true,
            opened: true,
            row_checked: Instant::now(),
            max_lag: hub.config.streams.max_lag_events,
            caught_up: false,
        }
    }

    /// Read batches within `bytes` instead of `streams.max_buffer_bytes` (a reader that keeps
    /// two batches in memory gives each half).
    pub fn with_budget(mut self, bytes: usize) -> SubscriptionStream {
        self.max_bytes = bytes;
        self
    }

    /// No maximum lag: for a reader whose falling behind is its business (the rest-hook
    /// worker of an endpoint that was down), not a client's stream.
    pub fn without_lag_limit(mut self) -> SubscriptionStream {
        self.max_lag = 0;
        self
    }

    /// The last event number handed out.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether its reader may park: false when it must look at the log again first
    /// (something was logged, or a read was cut short).
    pub fn parkable(&self) -> bool {
        !self.look
    }

    /// The stream taken apart to park its reader (when [`SubscriptionStream::parkable`]).
    pub fn into_idle(self) -> Idle {
        Idle {
            log_key: self.log_key,
            position: self.position,
            wake: self.wake,
        }
    }

    /// Up to `max` notifications after the position, waiting for them until
    /// `quiet_until` (then [`Item::Quiet`]); `None` once `stop` is cancelled. A store error
    /// is returned as is; the position does not move, so the caller may simply call again.
    pub async fn next(
        &mut self,
        max: usize,
        quiet_until: Option<Instant>,
        stop: &CancellationToken,
    ) -> Option<Result<Item, StoreError>> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            // another incarnation's number says nothing about this log
            let known = self.wake.borrow_and_update().number_of(self.log_key);
            let behind = known.saturating_sub(self.position);
            if self.caught_up && self.max_lag > 0 && behind > self.max_lag {
                // said once: the reader ends its stream
                self.caught_up = false;
                return Some(Ok(Item::Lagging { behind }));
            }
            let polling = *self.polling.borrow_and_update();
            if self.look || known > self.position || polling {
                self.look = false;
                self.looked_at = Instant::now();
                match self.read(max, known).await {
                    Ok(Some(item)) => return Some(Ok(item)),
                    // something was logged while we looked: look again at once
                    Ok(None) if self.look => continue,
                    Ok(None) => {}
                    Err(e) => {
                        self.look = true;
                        return Some(Err(e));
                    }
                }
            }
            let quiet = async {
                match quiet_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let poll = async {
                if polling {
                    tokio::time::sleep(self.poll).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = quiet => return Some(Ok(Item::Quiet)),
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        // the registry dropped our sender: keep going by polling
                        tokio::time::sleep(self.poll).await;
                    }
                    self.look = true;
                }
                _ = self.polling.changed() => self.look = true,
                _ = poll => {}
                // never wait only on a wake-up: one lost (a LISTEN connection gone silent,
                // a bug) delays the reader by this much
                _ = tokio::time::sleep_until(self.looked_at + self.safety) => self.look = true,
            }
        }
    }

    /// One look at the log. `None` when there is nothing after the position.
    async fn read(&mut self, max: usize, known: i64) -> Result<Option<Item>, StoreError> {
        // whatever a channel asks (a websocket asks its outbox × `backport-max-count`), one
        // read loads at most MAX_READ rows: the byte budget below only trims what was loaded
        let max = i64::try_from(max.clamp(1, MAX_READ)).unwrap_or(i64::MAX);
        // readers at the head take what this process just logged from memory
        let cached = self.wakeups.recent_after(
            (&self.tenant, &self.id),
            self.log_key,
            self.position,
            usize::try_from(max).unwrap_or(usize::MAX),
        );
        let mut notes = match cached {
            Some(notes) => notes,
            None => {
                self.store
                    .notifications_after(self.log_key, self.position, max)
                    .await?
            }
        };
        // within the byte budget (at least one): the rest is read at the next call
        let fits = within_budget(&notes, self.max_bytes);
        let cut = fits < notes.len();
        notes.truncate(fits);
        if let Some(first) = notes.first() {
            if first.event_number > self.position.saturating_add(1) {
                let gone = Item::HistoryGone {
                    after: self.position,
                    resumes_at: first.event_number,
                };
                self.position = first.event_number - 1;
                self.look = true;
                return Ok(Some(gone));
            }
            if let Some(last) = notes.last() {
                self.position = last.event_number;
            }
            // a full batch: there may be more waiting
            self.look = cut || notes.len() as i64 == max;
            // a short batch read to the log's end
            self.caught_up |= !self.look;
            self.opened = false;
            return Ok(Some(Item::Notifications(notes)));
        }
        // Nothing after the position although more may have been logged. Read the count
        // first, then look again: an event counted is committed with its row, so a row still
        // missing now was purged (the other order races with a matcher committing between
        // the two reads and would call a fresh event gone).
        let check = std::mem::take(&mut self.opened) || known > self.position;
        if !check && self.row_checked.elapsed() >= self.safety {
            self.row_checked = Instant::now();
            match self.store.get_subscription(&self.tenant, &self.id).await? {
                Some(row) if row.log_key == self.log_key => {}
                _ => return Ok(Some(Item::Deleted)),
            }
        }
        if !check {
            self.caught_up = true;
            return Ok(None);
        }
        self.row_checked = Instant::now();
        let Some(row) = self.store.get_subscription(&self.tenant, &self.id).await? else {
            return Ok(Some(Item::Deleted));
        };
        if row.log_key != self.log_key {
            // deleted and re-created: this incarnation's log has nothing more
            return Ok(Some(Item::Deleted));
        }
        if row.events_since_start <= self.position {
            self.caught_up = true;
            return Ok(None);
        }
        let again = self
            .store
            .notifications_after(self.log_key, self.position, 1)
            .await?;
        if !again.is_empty() {
            // logged meanwhile: the next call reads it as usual
            self.look = true;
            return Ok(None);
        }
        let gone = Item::HistoryGone {
            after: self.position,
            resumes_at: row.events_since_start + 1,
        };
        self.position = row.events_since_start;
        Ok(Some(gone))
    }
}

/// What a notification costs in memory, roughly: its resource and a fixed part.
fn size_of(n: &Notification) -> usize {
    n.resource.as_ref().map_or(0, |r| r.len()) + 256
}

/// How many of `notes` fit in `budget` bytes; at least one, so a notification larger than
/// the budget still goes out, alone.
fn within_budget(notes: &[Notification], budget: usize) -> usize {
    let mut used = 0usize;
    let fit = notes
        .iter()
        .take_while(|n| {
            used = used.saturating_add(size_of(n));
            used <= budget
        })
        .count();
    fit.max(1).min(notes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(bytes: usize) -> Notification {
        Notification {
            log_key: hub_store::LogKey::for_tests(1),
            event_number: 1,
            notification_id: String::new(),
            created_at: String::new(),
            note: hub_store::NewNotification {
                tenant: String::new(),
                subscription_id: String::new(),
                event_id: String::new(),
                action: String::new(),
                focus_type: String::new(),
                focus_id: String::new(),
                focus_version: None,
                occurred_at: String::new(),
                resource: Some("x".repeat(bytes).into()),
            },
        }
    }

    #[test]
    fn batches_stay_within_the_byte_budget() {
        let notes: Vec<Notification> = (0..10).map(|_| note(1000)).collect();
        assert_eq!(within_budget(&notes, 1 << 20), 10);
        assert_eq!(within_budget(&notes, 3 * 1256), 3);
        // one larger than the budget still goes, alone
        assert_eq!(within_budget(&[note(5 << 20), note(1)], 1 << 20), 1);
        assert_eq!(within_budget(&[], 10), 0);
    }
}
