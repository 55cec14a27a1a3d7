//! Making what a batch caused durable, in bounded transactions, without letting any one
//! record hold the partition.
//!
//! - Notifications are logged in chunks of at most `matcher.max_notifications_per_transaction`
//!   (an event reaching 10,000 subscriptions in a batch of 500 is 5 million notifications:
//!   held at once they exhaust memory, and the re-read batch would do it again). Chunks are
//!   written in batch order, one after the other, so per-subscription order holds; event
//!   numbers stay gap-free (each chunk takes its numbers in its own transaction); and a
//!   batch re-read after a crash between chunks adds nothing for what was logged (the store
//!   skips an event already logged for a subscription).
//! - A store that is down is waited for (nothing is acknowledged until it is back). A store
//!   that *refuses* what it is given ([`StoreError::Refused`]) refuses it again on every
//!   retry: the chunk is then written one event at a time, and each event the store refuses
//!   is set aside for quarantine (stage `store`).
//! - Quarantine itself is written the same way: all at once, then one record at a time, and
//!   a record the store refuses even there is parked in the [`Spool`].

use std::future::Future;

use hub_store::{NewNotification, NewQuarantined, Notification, Sanitized, StoreError};
use tokio_util::sync::CancellationToken;

use super::spool::Spool;
use crate::metrics::Metrics;
use crate::retry::until_done;

/// What the matcher writes to (the store; a fake in tests).
pub trait BatchStore: Sync {
    fn append(
        &self,
        notes: &[NewNotification],
    ) -> impl Future<Output = Result<Vec<Notification>, StoreError>> + Send;

    fn quarantine(
        &self,
        records: &[NewQuarantined],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn put_versions(
        &self,
        items: &[hub_store::VersionAt],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl BatchStore for hub_store::Store {
    fn append(
        &self,
        notes: &[NewNotification],
    ) -> impl Future<Output = Result<Vec<Notification>, StoreError>> + Send {
        self.append_notifications(notes)
    }

    fn quarantine(
        &self,
        records: &[NewQuarantined],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        hub_store::Store::quarantine(self, records)
    }

    fn put_versions(
        &self,
        items: &[hub_store::VersionAt],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        hub_store::Store::put_versions(self, items)
    }
}

/// Whether retrying cannot help: the database refused the data itself.
fn refused(e: &StoreError) -> bool {
    matches!(e, StoreError::Refused(_))
}

/// A batch's notifications, logged in chunks as they are added. Methods return `None` when
/// the matcher was told to stop while the store was unavailable (nothing more is written;
/// the batch is not acknowledged).
pub struct Chunks<'a, S, W> {
    store: &'a S,
    shutdown: &'a CancellationToken,
    max: usize,
    pending: Vec<NewNotification>,
    /// Which record each run of `pending` came from: (record, notifications), in order.
    runs: Vec<(usize, usize)>,
    /// Called with each chunk once it is durable (to wake its readers).
    logged: W,
    count: usize,
    refused: Vec<(usize, StoreError)>,
}

impl<'a, S: BatchStore, W: FnMut(&[Notification])> Chunks<'a, S, W> {
    /// Chunks of at most `max` notifications (at least 1).
    pub fn new(store: &'a S, shutdown: &'a CancellationToken, max: usize, logged: W) -> Self {
        let max = max.max(1);
        Chunks {
            store,
            shutdown,
            max,
            pending: Vec::new(),
            runs: Vec::new(),
            logged,
            count: 0,
            refused: Vec::new(),
        }
    }

    /// Add a notification caused by record `record` (records in batch order); a full chunk
    /// is logged before this returns.
    pub async fn push(&mut self, record: usize, note: NewNotification) -> Option<()> {
        self.pending.push(note);
        match self.runs.last_mut() {
            Some((r, n)) if *r == record => *n += 1,
            _ => self.runs.push((record, 1)),
        }
        if self.pending.len() >= self.max {
            self.flush().await?;
        }
        Some(())
    }

    /// Log what is pending.
    pub async fn flush(&mut self) -> Option<()> {
        if self.pending.is_empty() {
            return Some(());
        }
        let notes = std::mem::take(&mut self.pending);
        let runs = std::mem::take(&mut self.runs);
        let (store, shutdown) = (self.store, self.shutdown);
        match append(store, shutdown, &notes).await? {
            Ok(logged) => self.done(&logged),
            // one event's notifications: it is the one refused
            Err(e) if runs.len() == 1 => self.refused.extend(runs.first().map(|r| (r.0, e))),
            Err(e) => {
                tracing::warn!(error = %e, records = runs.len(), "the store refused a chunk of notifications; logging its events one at a time");
                let mut at = 0;
                for (record, n) in runs {
                    let one = notes.get(at..at + n).unwrap_or_default();
                    at += n;
                    match append(store, shutdown, one).await? {
                        Ok(logged) => self.done(&logged),
                        Err(e) => self.refused.push((record, e)),
                    }
                }
            }
        }
        Some(())
    }

    fn done(&mut self, logged: &[Notification]) {
        self.count += logged.len();
        (self.logged)(logged);
    }

    /// Notifications logged so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The records whose notifications the store refused (each once, in batch order), with
    /// why: for quarantine.
    pub fn refused(&mut self) -> Vec<(usize, StoreError)> {
        let mut out: Vec<(usize, StoreError)> = Vec::new();
        for (record, e) in self.refused.drain(..) {
            if !out.iter().any(|(r, _)| *r == record) {
                out.push((record, e));
            }
        }
        out
    }
}

async fn append<S: BatchStore>(
    store: &S,
    shutdown: &CancellationToken,
    notes: &[NewNotification],
) -> Option<Result<Vec<Notification>, StoreError>> {
    let what = "logging notifications";
    until_done(shutdown, what, || store.append(notes), refused).await
}

async fn put_quarantined<S: BatchStore>(
    store: &S,
    shutdown: &CancellationToken,
    records: &[NewQuarantined],
) -> Option<Result<(), StoreError>> {
    let what = "quarantining change events";
    until_done(shutdown, what, || store.quarantine(records), refused).await
}

async fn put_versions<S: BatchStore>(
    store: &S,
    shutdown: &CancellationToken,
    items: &[hub_store::VersionAt],
) -> Option<Result<(), StoreError>> {
    let what = "recording resource versions";
    until_done(shutdown, what, || store.put_versions(items), refused).await
}

/// Quarantine `dead`: together when the store takes them, else one at a time, a record it
/// refuses parked in the spool.
pub async fn quarantine<S: BatchStore>(
    store: &S,
    shutdown: &CancellationToken,
    dead: &[NewQuarantined],
    spool: &Spool,
    metrics: &Metrics,
) -> Option<()> {
    if dead.is_empty() {
        return Some(());
    }
    if put_quarantined(store, shutdown, dead).await?.is_ok() {
        return Some(());
    }
    for q in dead {
        if let Err(e) = put_quarantined(store, shutdown, std::slice::from_ref(q)).await? {
            spool.park(q, &e.to_string(), metrics);
        }
    }
    Some(())
}

/// Record the versions a batch leaves; one the store refuses is left out (logged at ERROR:
/// a topic comparing with the version before then compares with an older one).
pub async fn record_versions<S: BatchStore>(
    store: &S,
    shutdown: &CancellationToken,
    latest: &[hub_store::VersionAt],
) -> Option<()> {
    if latest.is_empty() || put_versions(store, shutdown, latest).await?.is_ok() {
        return Some(());
    }
    for one in latest {
        if let Err(e) = put_versions(store, shutdown, std::slice::from_ref(one)).await? {
            // the resource's id may identify a person: named by tenant and type only
            let (tenant, kind, _) = &one.0;
            tracing::error!(
                tenant = %Sanitized::new(tenant),
                resource_type = %Sanitized::new(kind),
                error = %e,
                "the store refused a resource version; topics comparing with the version before will compare with an older one"
            );
        }
    }
    Some(())
}

#[cfg(test)]
#[path = "durable_tests.rs"]
mod tests;
