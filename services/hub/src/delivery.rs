//! The delivery role: one worker per live rest-hook subscription sends its notifications in
//! event-number order, retrying with backoff until the endpoint takes each one.
//!
//! Isolation: every subscription has its own worker, so a slow or dead endpoint only delays
//! its own notifications. Progress (`delivered_through`) is stored after each success, so a
//! restart resumes where delivery stopped; a notification whose success was not yet recorded
//! is sent again with the same `webhook-id`.
//!
//! Model: a pending dispatch ends as [`Outcome::Delivered`] or [`Outcome::Failed`]; only the
//! first moves the cursor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hub_fhir::subscription::{self, Channel};
use hub_store::{Notification, SubscriptionRow};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Hub;

/// How one attempt ended.
#[derive(Debug)]
pub enum Outcome {
    Delivered { status: u16 },
    Failed { reason: String },
}

/// The wait before retry number `attempt` (1-based): doubling from `initial`, capped at
/// `max`, with +/-20% jitter so endpoints coming back are not hit by every worker at once.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
    let base = exp.min(max);
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter).min(max)
}

/// Send one notification over a rest-hook channel.
///
/// R4 semantics: without a payload the hub POSTs an empty body to the endpoint; with a
/// payload it PUTs the resource to `[endpoint]/[type]/[id]`.
pub async fn send(client: &reqwest::Client, channel: &Channel, n: &Notification) -> Outcome {
    let endpoint = channel.endpoint.trim_end_matches('/');
    let mut req = match (&channel.payload, &n.resource) {
        (Some(mime), Some(body)) => client
            .put(format!("{endpoint}/{}/{}", n.focus_type, n.focus_id))
            .header(reqwest::header::CONTENT_TYPE, mime.as_str())
            .body(body.clone()),
        _ => client.post(&channel.endpoint),
    };
    for (name, value) in &channel.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    req = req.header("webhook-id", n.notification_id.as_str());
    match req.send().await {
        Ok(res) if res.status().is_success() => Outcome::Delivered {
            status: res.status().as_u16(),
        },
        Ok(res) => Outcome::Failed {
            reason: format!("endpoint answered HTTP {}", res.status().as_u16()),
        },
        Err(e) if e.is_timeout() => Outcome::Failed {
            reason: "request timed out".into(),
        },
        Err(e) => Outcome::Failed {
            reason: format!("request failed: {e}"),
        },
    }
}

struct Worker {
    version: i64,
    stop: CancellationToken,
}

/// Run delivery until `shutdown`.
pub async fn run(hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = &hub.config.delivery;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fhir-hub/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let poll = Duration::from_millis(cfg.poll_ms);
    // Rung when new notifications may be waiting: workers re-read the store.
    let work = Arc::new(Notify::new());
    let mut workers: HashMap<(String, String), Worker> = HashMap::new();
    let mut tasks = JoinSet::new();

    while !shutdown.is_cancelled() {
        let logged = hub.notifications_logged.notified();
        match hub.store.live_subscriptions().await {
            Ok(rows) => {
                reconcile(
                    &hub,
                    &client,
                    &work,
                    &shutdown,
                    &rows,
                    &mut workers,
                    &mut tasks,
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot list subscriptions for delivery"),
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a delivery worker crashed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = logged => work.notify_waiters(),
            _ = tokio::time::sleep(poll) => work.notify_waiters(),
        }
    }
    tracing::info!(
        workers = workers.len(),
        "delivery draining in-flight requests"
    );
    for w in workers.values() {
        w.stop.cancel();
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn reconcile(
    hub: &Hub,
    client: &reqwest::Client,
    work: &Arc<Notify>,
    shutdown: &CancellationToken,
    rows: &[SubscriptionRow],
    workers: &mut HashMap<(String, String), Worker>,
    tasks: &mut JoinSet<()>,
) {
    let wanted: HashMap<(String, String), &SubscriptionRow> = rows
        .iter()
        .filter(|r| {
            r.channel_type == "rest-hook" && matches!(r.status.as_str(), "active" | "error")
        })
        .map(|r| ((r.tenant.clone(), r.id.clone()), r))
        .collect();
    workers.retain(|key, w| {
        let keep = wanted.get(key).is_some_and(|r| r.version_id == w.version);
        if !keep {
            w.stop.cancel();
        }
        keep
    });
    for (key, row) in wanted {
        if workers.contains_key(&key) {
            continue;
        }
        let channel = match serde_json::from_str(&row.resource)
            .map_err(|e| e.to_string())
            .and_then(|v| subscription::validate(&v).map_err(|oo| oo.summary()))
        {
            Ok(spec) => spec.channel,
            Err(e) => {
                tracing::error!(subscription = %row.id, tenant = %row.tenant, error = %e, "stored subscription is not deliverable");
                continue;
            }
        };
        let stop = shutdown.child_token();
        workers.insert(
            key,
            Worker {
                version: row.version_id,
                stop: stop.clone(),
            },
        );
        let ctx = WorkerCtx {
            hub: hub.clone(),
            client: client.clone(),
            work: Arc::clone(work),
            tenant: row.tenant.clone(),
            id: row.id.clone(),
            channel,
            stop,
        };
        tasks.spawn(ctx.run());
    }
}

struct WorkerCtx {
    hub: Hub,
    client: reqwest::Client,
    work: Arc<Notify>,
    tenant: String,
    id: String,
    channel: Channel,
    stop: CancellationToken,
}

impl WorkerCtx {
    async fn run(self) {
        let cfg = &self.hub.config.delivery;
        let initial = Duration::from_millis(cfg.retry_initial_ms);
        let max = Duration::from_millis(cfg.retry_max_ms);
        let idle = Duration::from_millis(cfg.poll_ms);
        let store = &self.hub.store;
        let mut delivered = loop {
            match store.delivery_state(&self.tenant, &self.id).await {
                Ok(s) => break s.delivered_through,
                Err(e) => {
                    tracing::warn!(subscription = %self.id, error = %e, "cannot read delivery state");
                    if self.pause(initial).await {
                        return;
                    }
                }
            }
        };
        loop {
            let wake = self.work.notified();
            let batch = match store
                .notifications_after(&self.tenant, &self.id, delivered, cfg.batch_size)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(subscription = %self.id, error = %e, "cannot read notifications");
                    if self.pause(initial).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = wake => {}
                    _ = tokio::time::sleep(idle) => {}
                }
                continue;
            }
            for n in &batch {
                let mut attempt = 0u32;
                loop {
                    if self.stop.is_cancelled() {
                        return;
                    }
                    // An attempt under way is finished even during shutdown.
                    match send(&self.client, &self.channel, n).await {
                        Outcome::Delivered { status } => {
                            tracing::debug!(subscription = %self.id, event_number = n.event_number, status, "delivered");
                            while let Err(e) = store
                                .record_delivered(&self.tenant, &self.id, n.event_number)
                                .await
                            {
                                // Unrecorded, it would be sent again: a duplicate, never a loss.
                                tracing::warn!(subscription = %self.id, error = %e, "cannot record delivery");
                                if self.pause(initial).await {
                                    return;
                                }
                            }
                            delivered = n.event_number;
                            break;
                        }
                        Outcome::Failed { reason } => {
                            attempt += 1;
                            let wait = backoff(attempt, initial, max);
                            tracing::warn!(subscription = %self.id, tenant = %self.tenant, event_number = n.event_number, attempt, retry_in_ms = wait.as_millis() as u64, %reason, "delivery failed");
                            if let Err(e) =
                                store.record_failure(&self.tenant, &self.id, &reason).await
                            {
                                tracing::warn!(subscription = %self.id, error = %e, "cannot record failure");
                            }
                            if self.pause(wait).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sleep unless stopped; true when stopped.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for (attempt, base) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (6, 32.0)] {
            let d = backoff(attempt, i, m).as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "attempt {attempt}: {d}"
            );
        }
        assert!(backoff(20, i, m) <= m);
        assert!(backoff(u32::MAX, i, m) <= m);
    }
}
