//! Cross-process wake-ups on PostgreSQL: the transaction that logs notifications sends one
//! `NOTIFY` per subscription (delivered on commit), and readers in every process `LISTEN`.
//! SQLite is one process (the embedded default), so it has no listener.

use sqlx::postgres::PgListener;
use sqlx::{Any, Transaction};

use crate::{Notification, Store, StoreError};

/// The PostgreSQL channel.
const CHANNEL: &str = "fhir_hub_logged";

/// What a notification on the channel says: this subscription's log reached this number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    #[serde(rename = "t")]
    pub tenant: String,
    #[serde(rename = "s")]
    pub subscription_id: String,
    #[serde(rename = "n")]
    pub event_number: i64,
}

/// One `NOTIFY` per subscription with the highest number logged for it.
pub(crate) async fn notify_logged<'n>(
    tx: &mut Transaction<'_, Any>,
    logged: impl Iterator<Item = &'n Notification>,
) -> Result<(), StoreError> {
    let mut top: Vec<Logged> = Vec::new();
    for n in logged {
        match top
            .iter_mut()
            .find(|l| l.tenant == n.tenant && l.subscription_id == n.subscription_id)
        {
            Some(l) => l.event_number = l.event_number.max(n.event_number),
            None => top.push(Logged {
                tenant: n.tenant.clone(),
                subscription_id: n.subscription_id.clone(),
                event_number: n.event_number,
            }),
        }
    }
    for l in top {
        let payload = serde_json::to_string(&l).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A `LISTEN` connection for logged notifications.
pub struct LoggedListener {
    inner: PgListener,
}

impl LoggedListener {
    /// The next notification; an error means the connection is gone (the caller reconnects
    /// and, since some may have been missed, wakes every reader once).
    pub async fn recv(&mut self) -> Result<Logged, StoreError> {
        loop {
            let n =
                self.inner.try_recv().await?.ok_or_else(|| {
                    StoreError::Unavailable("the LISTEN connection closed".into())
                })?;
            match serde_json::from_str::<Logged>(n.payload()) {
                Ok(l) => return Ok(l),
                Err(e) => {
                    tracing::warn!(payload = n.payload(), error = %e, "ignoring an unreadable notification")
                }
            }
        }
    }
}

impl Store {
    /// A listener for notifications logged by any process; `None` on SQLite (one process).
    pub async fn listen_logged(&self) -> Result<Option<LoggedListener>, StoreError> {
        if self.backend != crate::Backend::Postgres {
            return Ok(None);
        }
        let url = &*self.url;
        let mut inner = PgListener::connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        inner.listen(CHANNEL).await?;
        Ok(Some(LoggedListener { inner }))
    }
}
