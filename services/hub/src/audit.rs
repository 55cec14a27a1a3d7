//! The audit trail's writer: group commit. Every writer (a request handler, a stream reader,
//! a delivery worker) hands its rows over and waits until they are stored, so nothing is
//! disclosed before its audit row is durable; rows that arrive while a write is running go
//! into the next write together. One event fanned out to 10,000 stream readers becomes a few
//! multi-row INSERTs, not 10,000 statements.

use hub_store::{NewAudit, Store};
use tokio::sync::{mpsc, oneshot};

/// Most rows one write takes.
const MAX_BATCH: usize = 5_000;

type Job = (Vec<NewAudit>, oneshot::Sender<()>);

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

    /// Store `rows`, returning once they are written (or the write failed, which is logged
    /// loudly: the action they record has happened).
    pub async fn record(&self, rows: Vec<NewAudit>) {
        if rows.is_empty() {
            return;
        }
        let (done, written) = oneshot::channel();
        match self.tx.send((rows, done)).await {
            Ok(()) => {
                let _ = written.await;
            }
            // the writer is gone (shutting down): write directly
            Err(mpsc::error::SendError((rows, _))) => write(&self.store, &rows).await,
        }
    }
}

async fn write(store: &Store, rows: &[NewAudit]) {
    if let Err(e) = store.audit(rows).await {
        tracing::error!(error = %e, rows = rows.len(), "could not write the audit trail");
    }
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
        write(&store, &rows).await;
        for w in waiting {
            let _ = w.send(());
        }
    }
}
