//! One subscription's delivery: handshake, then every notification in event-number order,
//! each retried on the schedule until it is delivered, the endpoint says 410 Gone, or the
//! schedule runs out; with the subscription's status following along
//! (requested → active → error → active, or off).

use std::time::Duration;

use hub_fhir::subscription::Channel;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::schedule::Schedule;
use super::send::{self, Dispatch, Outcome};
use crate::Hub;
use crate::metrics::{DeliveryAttempt, StatusChanged};
use hub_fhir::notification::StatusInfo;
use hub_fhir::subscription::TopicSubscription;

/// How the retries of one message ended.
#[derive(Debug, PartialEq)]
pub enum Final {
    Delivered,
    /// 410 Gone.
    Gone(String),
    /// Every attempt of the schedule failed.
    GaveUp(String),
    Stopped,
}

/// One attempt of one message, and what to do with a failure.
pub trait Attempt {
    fn attempt(&mut self) -> impl Future<Output = Outcome> + Send;
    /// Called after each failed attempt (1-based count of consecutive failures).
    fn failed(&mut self, failures: usize, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Try a message on the schedule: wait `schedule[i]` before attempt `i`.
pub async fn deliver_with_retries<A: Attempt + Send>(
    a: &mut A,
    schedule: &Schedule,
    stop: &CancellationToken,
) -> Final {
    let mut retry_after = None;
    let mut last = String::new();
    for attempt in 0.. {
        let Some(wait) = schedule.wait(attempt, retry_after) else {
            return Final::GaveUp(format!("gave up after {attempt} attempts: {last}"));
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return Final::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if stop.is_cancelled() {
            return Final::Stopped;
        }
        match a.attempt().await {
            Outcome::Delivered { .. } => return Final::Delivered,
            Outcome::Failed {
                reason, gone: true, ..
            } => return Final::Gone(reason),
            Outcome::Failed {
                reason,
                retry_after: ra,
                ..
            } => {
                a.failed(attempt + 1, &reason).await;
                retry_after = ra;
                last = reason;
            }
        }
    }
    Final::Stopped
}

pub(super) struct Worker {
    pub hub: Hub,
    pub client: reqwest::Client,
    pub work: std::sync::Arc<Notify>,
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub status: String,
    pub channel: Channel,
    /// Topic-based: notifications are Backport IG bundles.
    pub topic: Option<TopicSubscription>,
    /// The FHIR base URL for references in bundles.
    pub base: String,
    pub secret: String,
    pub stop: CancellationToken,
}

struct HttpAttempt<'a> {
    w: &'a Worker,
    dispatch: Dispatch,
    status: &'a mut String,
}

impl Attempt for HttpAttempt<'_> {
    async fn attempt(&mut self) -> Outcome {
        let outcome = send::send(
            &self.w.client,
            &self.w.channel,
            &self.w.secret,
            &self.dispatch,
        )
        .await;
        let event = match &outcome {
            Outcome::Delivered { .. } => DeliveryAttempt::Delivered,
            Outcome::Failed { gone: true, .. } => DeliveryAttempt::Gone,
            Outcome::Failed { .. } => DeliveryAttempt::Failed,
        };
        event.emit(&self.w.hub.metrics);
        outcome
    }

    async fn failed(&mut self, failures: usize, reason: &str) {
        let w = self.w;
        tracing::warn!(subscription = %w.id, tenant = %w.tenant, failures, %reason, "delivery attempt failed");
        if let Err(e) = w.hub.store.record_failure(&w.tenant, &w.id, reason).await {
            tracing::warn!(subscription = %w.id, error = %e, "cannot record a failure");
        }
        if failures >= w.hub.config.delivery.error_after_failures && self.status.as_str() != "error"
        {
            w.set_status("error", Some(reason)).await;
            "error".clone_into(self.status);
        }
    }
}

/// The longest a worker delivers without recording its progress.
const RECORD_EVERY: Duration = Duration::from_millis(500);

impl Worker {
    /// Record that everything up to `through` is delivered; false if stopped while the
    /// store was unavailable (the next worker resends from the last record: duplicates with
    /// the same webhook-id, never a loss).
    async fn record(&self, through: i64) -> bool {
        loop {
            match self
                .hub
                .store
                .record_delivered(&self.tenant, &self.id, through)
                .await
            {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(subscription = %self.id, error = %e, "cannot record a delivery");
                    tokio::select! {
                        _ = self.stop.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// One heartbeat attempt: not retried (the next one comes a period later), but failures
    /// count towards `error` like any other.
    async fn heartbeat(&self, status: &mut String, failures: &mut usize) {
        let d = match &self.topic {
            Some(t) => {
                let since = self.events_since_start().await;
                send::topic_message(
                    &self.channel,
                    &self.topic_status(t, status, "heartbeat", since),
                    t,
                    &[],
                    None,
                )
            }
            None => send::heartbeat(&self.channel, &self.id),
        };
        let mut attempt = HttpAttempt {
            w: self,
            dispatch: d,
            status,
        };
        match attempt.attempt().await {
            Outcome::Delivered { .. } => {
                *failures = 0;
                if status.as_str() == "error" {
                    self.set_status("active", None).await;
                    "active".clone_into(status);
                }
            }
            Outcome::Failed { reason, .. } => {
                *failures += 1;
                attempt.failed(*failures, &reason).await;
            }
        }
    }

    /// The subscription's event count, for handshakes and heartbeats.
    async fn events_since_start(&self) -> i64 {
        match self
            .hub
            .store
            .get_subscription(&self.tenant, &self.id)
            .await
        {
            Ok(Some(row)) => row.events_since_start,
            _ => 0,
        }
    }

    fn topic_status<'s>(
        &'s self,
        t: &'s TopicSubscription,
        status: &'s str,
        kind: &'static str,
        events_since_start: i64,
    ) -> StatusInfo<'s> {
        StatusInfo {
            base: &self.base,
            subscription_id: &self.id,
            topic: Some(&t.topic),
            // a handshake goes out while requested; the bundle reports what it is for
            status,
            kind,
            events_since_start,
            error: None,
        }
    }

    async fn set_status(&self, status: &str, error: Option<&str>) {
        StatusChanged {
            subscription: &self.id,
            tenant: &self.tenant,
            to: status,
            error,
        }
        .emit(&self.hub.metrics);
        if let Err(e) = self
            .hub
            .store
            .set_subscription_status(&self.tenant, &self.id, status, error)
            .await
        {
            tracing::error!(subscription = %self.id, error = %e, "cannot record a status change");
        }
    }

    /// Retry one message; on success bring an errored subscription back to active.
    async fn deliver(&self, dispatch: Dispatch, status: &mut String) -> Final {
        let schedule: &Schedule = &self.hub.schedule;
        let mut attempt = HttpAttempt {
            w: self,
            dispatch,
            status,
        };
        let result = deliver_with_retries(&mut attempt, schedule, &self.stop).await;
        match &result {
            Final::Delivered if status.as_str() != "active" => {
                self.set_status("active", None).await;
                "active".clone_into(status);
            }
            Final::Gone(reason) => {
                self.set_status(
                    "off",
                    Some(&format!("the endpoint answered 410 Gone ({reason})")),
                )
                .await;
            }
            Final::GaveUp(reason) => self.set_status("off", Some(reason)).await,
            _ => {}
        }
        result
    }

    pub(super) async fn run(self) {
        let mut status = self.status.clone();
        if status == "requested" {
            let d = match &self.topic {
                Some(t) => {
                    let since = self.events_since_start().await;
                    send::topic_message(
                        &self.channel,
                        &self.topic_status(t, &status, "handshake", since),
                        t,
                        &[],
                        Some(format!("handshake-{}-{}", self.id, self.version)),
                    )
                }
                None => send::handshake(&self.channel, &self.id, self.version),
            };
            if self.deliver(d, &mut status).await != Final::Delivered {
                return;
            }
            tracing::info!(subscription = %self.id, "handshake accepted");
        }
        let store = &self.hub.store;
        let cfg = &self.hub.config.delivery;
        let heartbeat = self
            .channel
            .heartbeat_secs
            .map(|s| Duration::from_secs(u64::from(s)));
        let mut last_sent = tokio::time::Instant::now();
        let mut heartbeat_failures = 0usize;
        let idle = Duration::from_millis(cfg.poll_ms);
        let mut delivered = match store.delivery_state(&self.tenant, &self.id).await {
            Ok(s) => s.delivered_through,
            Err(e) => {
                tracing::warn!(subscription = %self.id, error = %e, "cannot read delivery state; worker restarts later");
                return;
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
                    Vec::new()
                }
            };
            if batch.is_empty() {
                let mut nap = idle;
                if let Some(period) = heartbeat {
                    let due = period.saturating_sub(last_sent.elapsed());
                    if due.is_zero() {
                        self.heartbeat(&mut status, &mut heartbeat_failures).await;
                        last_sent = tokio::time::Instant::now();
                        continue;
                    }
                    nap = nap.min(due);
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = wake => {}
                    _ = tokio::time::sleep(nap) => {}
                }
                continue;
            }
            // Progress is recorded once per batch (and at least every RECORD_EVERY), not per
            // notification: a crash re-sends at most that much, with the same webhook-ids.
            let mut recorded = delivered;
            let mut last_record = tokio::time::Instant::now();
            // Topic-based subscriptions with backport-max-count get up to that many events
            // per bundle; everything else one notification per request.
            let per_message = self
                .topic
                .as_ref()
                .and_then(|t| t.max_count)
                .map_or(1, |m| m.max(1) as usize);
            for group in batch.chunks(per_message) {
                let Some(last) = group.last() else {
                    continue;
                };
                let d = match &self.topic {
                    Some(t) => {
                        let st =
                            self.topic_status(t, &status, "event-notification", last.event_number);
                        send::topic_message(&self.channel, &st, t, group, None)
                    }
                    None => send::notification(&self.channel, last),
                };
                let result = self.deliver(d, &mut status).await;
                if result == Final::Delivered {
                    delivered = last.event_number;
                }
                let must_record =
                    result != Final::Delivered || last_record.elapsed() >= RECORD_EVERY;
                if must_record && delivered > recorded {
                    if !self.record(delivered).await {
                        return;
                    }
                    recorded = delivered;
                    last_record = tokio::time::Instant::now();
                }
                if result != Final::Delivered {
                    return;
                }
            }
            if delivered > recorded && !self.record(delivered).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    struct Flaky {
        fail_first: usize,
        calls: Vec<Duration>,
        start: Instant,
        retry_after: Option<Duration>,
        gone_at: Option<usize>,
    }

    impl Attempt for Flaky {
        async fn attempt(&mut self) -> Outcome {
            self.calls.push(self.start.elapsed());
            let n = self.calls.len();
            if Some(n) == self.gone_at {
                return Outcome::Failed {
                    reason: "gone".into(),
                    retry_after: None,
                    gone: true,
                };
            }
            if n <= self.fail_first {
                Outcome::Failed {
                    reason: format!("fail {n}"),
                    retry_after: self.retry_after,
                    gone: false,
                }
            } else {
                Outcome::Delivered { status: 200 }
            }
        }
        async fn failed(&mut self, _failures: usize, _reason: &str) {}
    }

    fn schedule() -> Schedule {
        let items: Vec<String> = ["0s", "5s", "5m", "30m"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        Schedule::parse(&items).unwrap()
    }

    fn flaky(fail_first: usize) -> Flaky {
        Flaky {
            fail_first,
            calls: Vec::new(),
            start: Instant::now(),
            retry_after: None,
            gone_at: None,
        }
    }

    fn secs(d: &Duration) -> f64 {
        d.as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_schedule() {
        let mut f = flaky(2);
        let r = deliver_with_retries(&mut f, &schedule(), &CancellationToken::new()).await;
        assert_eq!(r, Final::Delivered);
        let t: Vec<f64> = f.calls.iter().map(secs).collect();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], 0.0, "first attempt at once");
        assert!((4.5..=5.5).contains(&t[1]), "second after ~5 s: {t:?}");
        assert!(
            (t[2] - t[1] >= 270.0) && (t[2] - t[1] <= 330.0),
            "third ~5 min later: {t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_running_out_gives_up() {
        let mut f = flaky(usize::MAX);
        let r = deliver_with_retries(&mut f, &schedule(), &CancellationToken::new()).await;
        assert!(
            matches!(r, Final::GaveUp(ref m) if m.contains("4 attempts")),
            "{r:?}"
        );
        assert_eq!(f.calls.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_lengthens_the_wait_and_410_stops() {
        let mut f = flaky(1);
        f.retry_after = Some(Duration::from_secs(120));
        deliver_with_retries(&mut f, &schedule(), &CancellationToken::new()).await;
        assert!(secs(&f.calls[1]) >= 120.0, "{:?}", f.calls);

        let mut g = flaky(usize::MAX);
        g.gone_at = Some(2);
        let r = deliver_with_retries(&mut g, &schedule(), &CancellationToken::new()).await;
        assert_eq!(r, Final::Gone("gone".into()));
        assert_eq!(g.calls.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_interrupts_a_wait() {
        let stop = CancellationToken::new();
        let mut f = flaky(usize::MAX);
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            s2.cancel();
        });
        let r = deliver_with_retries(&mut f, &schedule(), &stop).await;
        assert_eq!(r, Final::Stopped);
        assert_eq!(f.calls.len(), 2);
    }
}
