//! The audit trail's writer: group commit. Every writer (a request handler, a stream reader,
//! a delivery worker) hands its rows over and waits until they are stored, so nothing is
//! disclosed before its audit row is durable; rows that arrive while a write is running go
//! into the next write together. Identical rows of one write (one credential reading the same
//! notification on 10,000 connections) become one row that says how many connections
//! received it: one event fanned out to 10,000 stream readers is one INSERT.
//!
//! Refused credentials never come through here one by one: they are counted per peer
//! (`auth::refusals`) and written by [`flush_refusals`] as one row per peer and window,
//! directly, so a flood of bad credentials neither fills the trail nor makes authenticated
//! requests wait behind its rows.
//!
//! A disclosure waits for its rows and learns whether they were written: with
//! `audit.fail_closed` (the default) nothing is disclosed without its audit row
//! ([`Unaudited`]).

use std::sync::Weak;
use std::time::Duration;

use hub_store::{NewAudit, Store};
use tokio::sync::{mpsc, oneshot};

use crate::auth::refusals::Refusals;

/// Most rows one write takes.
const MAX_BATCH: usize = 5_000;

/// `true` once the rows are stored.
type Job = (Vec<NewAudit>, oneshot::Sender<bool>);

/// The audit rows of a disclosure could not be written, and `audit.fail_closed` holds it back.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the audit trail cannot be written, and nothing is disclosed without its audit row (audit.fail_closed); try again later"
)]
pub struct Unaudited;

impl From<Unaudited> for crate::api::ApiError {
    fn from(e: Unaudited) -> Self {
        crate::api::ApiError::unavailable(e.to_string())
    }
}

/// The audit rows could not be written (the failure is logged).
#[derive(Debug, Clone, Copy)]
pub struct WriteFailed;

/// Where audit rows go.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Job>,
    store: Store,
}

impl AuditSink {
    /// Start the writer task (it ends when every sink is dropped).
    pub fn start(store: Store) -> AuditSink {
        let (tx, rx) = mpsc::channel(10_000);
        tokio::spawn(write_loop(store.clone(), rx));
        AuditSink { tx, store }
    }

    /// Store `rows`, returning once they are written or the write failed (logged loudly).
    pub async fn record(&self, rows: Vec<NewAudit>) -> Result<(), WriteFailed> {
        if rows.is_empty() {
            return Ok(());
        }
        let (done, written) = oneshot::channel();
        let ok = match self.tx.send((rows, done)).await {
            Ok(()) => written.await.unwrap_or(false),
            // the writer is gone (shutting down): write directly
            Err(mpsc::error::SendError((rows, _))) => write(&self.store, &rows).await,
        };
        if ok { Ok(()) } else { Err(WriteFailed) }
    }
}

async fn write(store: &Store, rows: &[NewAudit]) -> bool {
    match store.audit(rows).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, rows = rows.len(), "could not write the audit trail");
            false
        }
    }
}

/// Write the refusals counted since the last call: one row per tenant and peer.
pub async fn write_refusals(store: &Store, refusals: &Refusals, window: Duration) {
    let rows = refusals.take(window);
    if !rows.is_empty() {
        write(store, &rows).await;
    }
}

/// Every `window`, write the refusals counted meanwhile; ends when the counter is dropped
/// (its hub is gone).
pub fn flush_refusals(store: Store, refusals: Weak<Refusals>, window: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(window.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(r) = refusals.upgrade() else { return };
            write_refusals(&store, &r, window).await;
        }
    });
}

/// Identical rows as one, in first-seen order; the detail of a row that stood for several
/// says to how many connections it went.
fn collapse(rows: Vec<NewAudit>) -> Vec<NewAudit> {
    if rows.len() < 2 {
        return rows;
    }
    // each distinct row once, with how many times it came
    let mut first: std::collections::HashMap<NewAudit, usize> =
        std::collections::HashMap::with_capacity(rows.len());
    let mut distinct: Vec<(NewAudit, usize)> = Vec::with_capacity(rows.len());
    for r in rows {
        match first.get(&r) {
            Some(&i) => distinct[i].1 += 1,
            None => {
                first.insert(r.clone(), distinct.len());
                distinct.push((r, 1));
            }
        }
    }
    distinct
        .into_iter()
        .map(|(mut r, n)| {
            if n > 1 {
                r.detail = Some(match r.detail.take() {
                    Some(d) => format!("{d} (to {n} connections)"),
                    None => format!("to {n} connections"),
                });
            }
            r
        })
        .collect()
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut rows = first.0;
        let mut waiting = vec![first.1];
        while rows.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((more, done)) => {
                    rows.extend(more);
                    waiting.push(done);
                }
                Err(_) => break,
            }
        }
        let ok = write(&store, &collapse(rows)).await;
        for w in waiting {
            let _ = w.send(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(agent: &str, detail: &str) -> NewAudit {
        NewAudit {
            tenant: "t".into(),
            kind: "disclosure".into(),
            action: "R".into(),
            agent: agent.into(),
            entity: Some("Observation/1".into()),
            subscription_id: Some("s".into()),
            channel: Some("sse".into()),
            outcome: "0".into(),
            detail: Some(detail.into()),
        }
    }

    #[test]
    fn identical_rows_become_one_that_counts_the_connections() {
        let mut rows = vec![row("key:a", "event 1"); 3];
        rows.push(row("key:b", "event 1"));
        rows.push(row("key:a", "event 2"));
        let out = collapse(rows);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].detail.as_deref(), Some("event 1 (to 3 connections)"));
        assert_eq!(
            (out[1].agent.as_str(), out[1].detail.as_deref()),
            ("key:b", Some("event 1"))
        );
        assert_eq!(out[2].detail.as_deref(), Some("event 2"));
        assert_eq!(collapse(vec![row("key:a", "e")]), vec![row("key:a", "e")]);
    }
}
