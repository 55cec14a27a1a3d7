//! Cross-process wake-ups on PostgreSQL: the transaction that logs notifications sends the
//! subscriptions it logged for, in as few `NOTIFY`s as fit (delivered on commit), and readers
//! in every process `LISTEN`.
//! SQLite is one process (the embedded default), so it has no listener.

use std::collections::HashMap;

use sqlx::postgres::PgListener;
use sqlx::{Any, Row, Transaction};

use crate::{Notification, Store, StoreError};

/// The PostgreSQL channel of logged notifications.
const CHANNEL: &str = "fhir_hub_logged";

/// The PostgreSQL channel of client writes that change matching (subscriptions, topics, API
/// keys); the payload is the tenant.
const WRITTEN: &str = "fhir_hub_written";

/// What a `LISTEN` connection heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Notifications were logged for these subscriptions.
    Logged(Vec<Logged>),
    /// A client wrote a subscription (or a topic, or an API key) of this tenant.
    Written(String),
    /// This listener's own ping came back ([`Store::ping_listener`]): the connection hears.
    Pong,
}

/// Say, on commit, that a client write changed what `tenant` matches.
pub(crate) async fn notify_written(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
) -> Result<(), StoreError> {
    notify(tx, WRITTEN, tenant).await
}

/// `NOTIFY` on `channel`, delivered when `tx` commits.
async fn notify(
    tx: &mut Transaction<'_, Any>,
    channel: &str,
    payload: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What a notification on the channel says: this subscription's log reached this number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    #[serde(rename = "t")]
    pub tenant: String,
    #[serde(rename = "s")]
    pub subscription_id: String,
    #[serde(rename = "n")]
    pub event_number: i64,
    /// The incarnation logged for (absent in payloads of older releases).
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    key: Option<i64>,
}

impl Logged {
    /// The subscription incarnation whose log moved, when the payload says.
    pub fn log_key(&self) -> Option<crate::LogKey> {
        self.key.map(crate::LogKey::new)
    }
}

/// PostgreSQL refuses a payload of 8,000 bytes or more; a `NOTIFY` carries the subscriptions
/// that fit below this.
const MAX_PAYLOAD: usize = 7_000;

/// The highest number logged for each subscription, several subscriptions to a `NOTIFY`
/// (one event reaching 10,000 subscriptions sends a few dozen, not 10,000).
pub(crate) async fn notify_logged<'n>(
    tx: &mut Transaction<'_, Any>,
    logged: impl Iterator<Item = &'n Notification>,
) -> Result<(), StoreError> {
    let mut top: Vec<Logged> = Vec::new();
    let mut at: HashMap<(&str, &str), usize> = HashMap::new();
    for n in logged {
        match at.get(&(n.tenant.as_str(), n.subscription_id.as_str())) {
            Some(i) => top[*i].event_number = top[*i].event_number.max(n.event_number),
            None => {
                at.insert((&n.tenant, &n.subscription_id), top.len());
                top.push(Logged {
                    tenant: n.tenant.clone(),
                    subscription_id: n.subscription_id.clone(),
                    event_number: n.event_number,
                    key: Some(n.log_key.get()),
                });
            }
        }
    }
    let mut payloads = Vec::new();
    let mut payload = String::from("[");
    for l in &top {
        let one = serde_json::to_string(l).map_err(|e| StoreError::Database(e.to_string()))?;
        if payload.len() > 1 && payload.len() + one.len() + 2 > MAX_PAYLOAD {
            payload.push(']');
            payloads.push(std::mem::replace(&mut payload, String::from("[")));
        }
        if payload.len() > 1 {
            payload.push(',');
        }
        payload.push_str(&one);
    }
    if payload.len() > 1 {
        payload.push(']');
        payloads.push(payload);
    }
    for payload in payloads {
        notify(tx, CHANNEL, &payload).await?;
    }
    Ok(())
}

/// A `LISTEN` connection for logged notifications.
pub struct LoggedListener {
    inner: PgListener,
    /// The channel only this listener listens on: its pings come back there.
    ping: String,
}

impl LoggedListener {
    /// Where this listener's pings go ([`Store::ping_listener`]).
    pub fn ping_channel(&self) -> &str {
        &self.ping
    }

    /// The next notification; an error means the connection is gone (the caller reconnects
    /// and, since some may have been missed, wakes every reader once).
    pub async fn recv(&mut self) -> Result<Heard, StoreError> {
        loop {
            let n =
                self.inner.try_recv().await?.ok_or_else(|| {
                    StoreError::Unavailable("the LISTEN connection closed".into())
                })?;
            if n.channel() == WRITTEN {
                return Ok(Heard::Written(n.payload().to_owned()));
            }
            if n.channel() == self.ping {
                return Ok(Heard::Pong);
            }
            match serde_json::from_str::<Vec<Logged>>(n.payload()) {
                Ok(l) => return Ok(Heard::Logged(l)),
                Err(e) => {
                    tracing::warn!(payload = n.payload(), error = %e, "ignoring an unreadable notification")
                }
            }
        }
    }
}

impl Store {
    /// A listener for notifications logged, and client writes made, by any process; `None`
    /// on SQLite (one process).
    pub async fn listen_logged(&self) -> Result<Option<LoggedListener>, StoreError> {
        if self.backend != crate::Backend::Postgres {
            return Ok(None);
        }
        let url = &*self.url;
        let mut inner = PgListener::connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let ping = format!("fhir_hub_ping_{}", uuid::Uuid::new_v4().simple());
        inner.listen_all([CHANNEL, WRITTEN, ping.as_str()]).await?;
        // The server probes this session's socket after a minute of quiet, so a connection
        // that died on the way frees its backend instead of holding it for hours. (sqlx sets
        // no keepalive on the client's socket: the pings are what find a silent path here.)
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '60', false),
                    set_config('tcp_keepalives_interval', '10', false),
                    set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut inner)
        .await?;
        Ok(Some(LoggedListener { inner, ping }))
    }

    /// Send the listener whose [`LoggedListener::ping_channel`] is `channel` a ping through
    /// this store's pool: it hears [`Heard::Pong`] once the
    /// `NOTIFY` went through the server and back over its connection. A listener that stops
    /// hearing its pings sits on a connection gone silent (a NAT or a load balancer dropped
    /// it without a reset), which TCP alone may not notice for hours.
    pub async fn ping_listener(&self, channel: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// The live rest-hook subscriptions whose log holds more than was delivered: what the
    /// delivery role's safety read looks for among the subscriptions it has parked (one
    /// parked with a notification waiting missed its wake-up).
    pub async fn rest_hooks_behind(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.tenant, s.id FROM subscriptions s
             LEFT JOIN delivery_state d ON d.log_key = s.log_key
             WHERE s.channel_type = 'rest-hook' AND s.status <> 'off'
             AND s.events_since_start > COALESCE(d.delivered_through, 0)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
