//! The transport-neutral subscription stream: from a position (the last event number a
//! reader has), the backlog from the notification log in order, then the live tail.
//!
//! The stream keeps no cursor in the store: the reader owns its position (the rest-hook
//! worker records `delivered_through`; a stream client resumes from the number it last
//! saw). It queries the log only when its subscription's wake-up moved past what it has
//! read (or while the cross-process listener is down), so an idle subscription costs
//! nothing. A position whose following events were purged by retention is answered
//! explicitly ([`Item::HistoryGone`]), never skipped silently.

use std::time::Duration;

use hub_store::{Notification, Store, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wake::Logged;
use crate::Hub;

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
}

/// One reader's view of one subscription.
pub struct SubscriptionStream {
    store: Store,
    tenant: String,
    id: String,
    position: i64,
    wake: watch::Receiver<Logged>,
    polling: watch::Receiver<bool>,
    poll: Duration,
    /// Read the log at the next call whatever the wake-up says (at open, after a wake).
    look: bool,
    /// At open the wake-up knows nothing yet: an empty log is checked against the count.
    opened: bool,
}

impl SubscriptionStream {
    /// A stream of `tenant`/`id` after event number `after` (0: from the start).
    pub fn open(hub: &Hub, tenant: &str, id: &str, after: i64) -> SubscriptionStream {
        SubscriptionStream {
            store: hub.store.clone(),
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            position: after.max(0),
            wake: hub.wakeups.watch(tenant, id),
            polling: hub.wakeups.polling(),
            poll: Duration::from_millis(hub.config.delivery.poll_ms),
            look: true,
            opened: true,
        }
    }

    /// The last event number handed out.
    pub fn position(&self) -> i64 {
        self.position
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
            let known = *self.wake.borrow_and_update();
            let polling = *self.polling.borrow_and_update();
            if self.look || known.number > self.position || polling {
                self.look = false;
                match self.read(max, known.number).await {
                    Ok(Some(item)) => return Some(Ok(item)),
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
            }
        }
    }

    /// One look at the log. `None` when there is nothing after the position.
    async fn read(&mut self, max: usize, known: i64) -> Result<Option<Item>, StoreError> {
        let max = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let notes = self
            .store
            .notifications_after(&self.tenant, &self.id, self.position, max)
            .await?;
        if let Some(first) = notes.first() {
            if first.event_number > self.position + 1 {
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
            self.look = notes.len() as i64 == max;
            self.opened = false;
            return Ok(Some(Item::Notifications(notes)));
        }
        // Nothing after the position although more was logged: purged by retention.
        let check = std::mem::take(&mut self.opened) || known > self.position;
        if check
            && let Some(row) = self.store.get_subscription(&self.tenant, &self.id).await?
            && row.events_since_start > self.position
        {
            let gone = Item::HistoryGone {
                after: self.position,
                resumes_at: row.events_since_start + 1,
            };
            self.position = row.events_since_start;
            return Ok(Some(gone));
        }
        Ok(None)
    }
}
