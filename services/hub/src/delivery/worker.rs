//! One subscription's delivery: handshake, then every notification in event-number order,
//! each retried on the schedule until it is delivered, the endpoint says 410 Gone, or the
//! schedule runs out; with the subscription's status following along
//! (requested → active → error → active, or off).

use std::time::Duration;

use hub_fhir::subscription::Status;
use hub_store::NewAudit;
use tokio_util::sync::CancellationToken;

use super::retries::{Attempt, Final, Pending, deliver_with_retries};
use super::schedule::Schedule;
use super::send::{self, Dispatch, Outcome};
use crate::channels::disclosure::{Disclosure, Shown};
use crate::channels::render::{self, Kind};
use crate::channels::stream::{Idle, Item, SubscriptionStream};
use crate::metrics::{DeliveryAttempt, StatusChanged};
use crate::model::Subscription;
use crate::state::Hub;

/// Where a parked worker left off: what the next one starts from.
#[derive(Debug, Clone)]
pub(super) struct Resume {
    /// The origin's client it sent through, and the checked address it connects to.
    pub client: super::clients::OriginClient,
    pub pinned: Option<std::net::SocketAddr>,
    /// The last event number delivered (and recorded).
    pub delivered: i64,
    /// When the last request went out (the next heartbeat is a period after it).
    pub last_sent: tokio::time::Instant,
    /// The status as the worker knew it (hub-made changes do not bump the version).
    pub status: Status,
    /// Heartbeats failed in a row (they count towards `error` across parking).
    pub heartbeat_failures: usize,
}

/// How a worker ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Stopped, or its subscription turned off.
    Done,
    /// Its progress was refused: this process no longer holds the lease of this
    /// incarnation (another process took it over, or the subscription was deleted). The
    /// delivery loop drops the lease and starts no worker until it holds one again.
    Refused,
    /// Caught up and idle for `delivery.park_idle_after_ms`: the delivery loop parks the
    /// subscription (no task) and starts a worker from `Resume` when its log moves past
    /// the idle stream's position or its heartbeat is due.
    Parked(Resume, Idle),
}

pub(super) struct Worker {
    pub hub: Hub,
    /// Where a parked predecessor left off (`None`: from the stored progress, with the
    /// handshake first if the subscription is requested).
    pub resume: Option<Resume>,
    /// The endpoint origin's shared client, connecting to its checked address; resolved
    /// again after a failed attempt.
    pub client: std::sync::Mutex<super::clients::OriginClient>,
    /// Where origin clients come from (a moved endpoint gets another).
    pub clients: std::sync::Arc<super::clients::Clients>,
    /// The subscription at the version this worker was started for (a client update
    /// restarts the worker).
    pub sub: Subscription,
    pub secret: String,
    pub stop: CancellationToken,
    /// This process's delivery lease owner id: progress is recorded only while it holds
    /// the subscription's lease.
    pub owner: String,
    /// The address a named endpoint was resolved to (`None` for IP literals).
    pub pinned_addr: std::sync::Mutex<Option<std::net::SocketAddr>>,
}

struct HttpAttempt<'a> {
    w: &'a Worker,
    dispatch: Dispatch,
    status: &'a mut Status,
    /// Failed attempts after which the subscription shows `error`.
    error_after: usize,
    /// For an event notification: what was delivered before it, recorded with each failure
    /// together with the retry state (which then belongs to this message), and the audit
    /// rows of what was delivered but not yet recorded (written first). `None` for a
    /// handshake or heartbeat: no retry state is kept for those.
    progress: Option<(i64, &'a mut Vec<NewAudit>)>,
}

impl Attempt for HttpAttempt<'_> {
    async fn attempt(&mut self) -> Outcome {
        // never sent without the credentials it was given (a key dropped from secrets.keys)
        if let Some(why) = &self.w.sub.sealed_error {
            return Outcome::Failed {
                reason: format!("a sealed credential of this subscription does not open: {why}"),
                retry_after: None,
                gone: false,
            };
        }
        let client = match self.w.client.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // one of the origin's request slots for the time of the request
        let _slot = client.slot().await;
        let outcome = send::send(
            &client.client,
            &self.w.sub.spec.channel,
            &self.w.secret,
            &self.dispatch,
        )
        .await;
        // the client hands the connection back to its pool in a task of its own: let it run
        // before the slot is free, so that the next request finds the connection idle
        // rather than opening another (a narrower race, not a guarantee)
        tokio::task::yield_now().await;
        let event = match &outcome {
            Outcome::Delivered { .. } => DeliveryAttempt::Delivered,
            Outcome::Failed { gone: true, .. } => DeliveryAttempt::Gone,
            Outcome::Failed { .. } => DeliveryAttempt::Failed,
        };
        event.emit(&self.w.hub.metrics);
        outcome
    }

    async fn failed(&mut self, failures: usize, reason: &str, next: Option<Duration>) -> bool {
        let w = self.w;
        // the endpoint may have moved (DNS): the next attempt goes to where its name points now
        w.resolve_again().await;
        tracing::warn!(subscription = %w.sub.id(), tenant = %w.sub.tenant(), failures, %reason, "delivery attempt failed");
        let (through, next_ms) = match &mut self.progress {
            Some((through, disclosed)) => {
                if !disclosed.is_empty() {
                    crate::auth::record(&w.hub, std::mem::take(*disclosed)).await;
                }
                let ms = next.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                (*through, ms)
            }
            None => (0, None),
        };
        let failure = hub_store::Failure {
            delivered_through: through,
            attempts: i64::try_from(failures).unwrap_or(i64::MAX),
            error: reason,
            next_attempt_in_ms: next_ms,
        };
        match w
            .hub
            .store
            .record_failure(w.sub.log_key, failure, Some(&w.owner))
            .await
        {
            Ok(true) => {}
            // another process (or incarnation) owns this now: no retry, no status change
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(subscription = %w.sub.id(), error = %e, "cannot record a failure")
            }
        }
        if failures >= self.error_after && *self.status != Status::Error {
            w.set_status(Status::Error, Some(reason)).await;
            *self.status = Status::Error;
        }
        true
    }
}

/// The longest a worker delivers without recording its progress.
const RECORD_EVERY: Duration = Duration::from_millis(500);

impl Worker {
    /// Resolve and check the endpoint again and connect the next attempt to the address it
    /// has now (still within the egress policy; an address now refused keeps the old one).
    async fn resolve_again(&self) {
        let Some(pinned_before) = self.pinned() else {
            return;
        };
        match self.hub.egress.check(&self.sub.spec.channel.endpoint).await {
            Ok(checked) => {
                let now = checked.pinned.as_ref().map(|(_, a)| *a);
                if now == Some(pinned_before) {
                    return;
                }
                match self.clients.get(&self.hub, &self.sub, &checked) {
                    Ok(c) => {
                        tracing::info!(subscription = %self.sub.id(), "endpoint address changed; using the new one");
                        if let Ok(mut slot) = self.client.lock() {
                            *slot = c;
                        }
                        if let Ok(mut p) = self.pinned_addr.lock() {
                            *p = now;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(subscription = %self.sub.id(), error = %e, "cannot build an HTTP client")
                    }
                }
            }
            Err(why) => {
                tracing::warn!(subscription = %self.sub.id(), %why, "the endpoint's name now resolves to a refused address; keeping the checked one");
            }
        }
    }

    fn pinned(&self) -> Option<std::net::SocketAddr> {
        self.pinned_addr.lock().ok().and_then(|p| *p)
    }

    /// Record that everything up to `through` is delivered; `Some` with how the worker ends
    /// when it must stop: stopped while the store was unavailable (the next worker resends
    /// from the last record: duplicates with the same webhook-id, never a loss), or refused.
    /// Fenced by the lease of this incarnation: when another process holds it now, or the
    /// subscription was deleted (and perhaps re-created), this worker stops (the holder
    /// resends from the last recorded progress, with the same webhook-ids).
    async fn record(&self, through: i64) -> Option<Ended> {
        let recorded = crate::retry::until_ok(&self.stop, "recording a delivery", || {
            self.hub
                .store
                .record_delivered_by(self.sub.log_key, through, Some(&self.owner))
        })
        .await;
        match recorded {
            Some(true) => None,
            Some(false) => Some(self.refused()),
            None => Some(Ended::Done),
        }
    }

    fn refused(&self) -> Ended {
        tracing::warn!(subscription = %self.sub.id(), tenant = %self.sub.tenant(), log_key = %self.sub.log_key, "this process no longer holds the delivery lease of this incarnation (taken over, or the subscription was deleted); its worker stops");
        Ended::Refused
    }

    /// The rendered message as a request to this subscription's endpoint.
    fn dispatch(&self, m: render::Rendered) -> Dispatch {
        let endpoint = &self.sub.spec.channel.endpoint;
        let (method, url) = match &m.resource_path {
            Some(path) => (
                reqwest::Method::PUT,
                format!("{}/{path}", endpoint.trim_end_matches('/')),
            ),
            None => (reqwest::Method::POST, endpoint.clone()),
        };
        Dispatch {
            method,
            url,
            content_type: m.content_type,
            body: m.body.unwrap_or_default(),
            webhook_id: m.id,
        }
    }

    fn message(
        &self,
        status: Status,
        kind: Kind,
        since: i64,
        events: Option<Shown<'_>>,
    ) -> Dispatch {
        let base = &self.hub.base_url;
        let m = render::Message::new(&self.sub, base, status, kind, since);
        self.dispatch(
            match events {
                Some(e) => m.with(e),
                None => m,
            }
            .render(),
        )
    }

    /// One heartbeat attempt: not retried (the next one comes a period later), but failures
    /// count towards `error` like any other.
    async fn heartbeat(&self, status: &mut Status, failures: &mut usize) {
        let since = match self
            .hub
            .store
            .get_subscription(self.sub.tenant(), self.sub.id())
            .await
        {
            Ok(Some(row)) => row.events_since_start,
            _ => self.sub.events_since_start,
        };
        let d = self.message(*status, Kind::Heartbeat, since, None);
        let mut attempt = HttpAttempt {
            w: self,
            dispatch: d,
            status,
            error_after: self.hub.config.delivery.error_after_failures,
            progress: None,
        };
        match attempt.attempt().await {
            Outcome::Delivered { .. } => {
                *failures = 0;
                if *status == Status::Error {
                    self.set_status(Status::Active, None).await;
                    *status = Status::Active;
                }
            }
            Outcome::Failed { reason, .. } => {
                *failures += 1;
                attempt.failed(*failures, &reason, None).await;
            }
        }
    }

    async fn set_status(&self, status: Status, error: Option<&str>) {
        StatusChanged {
            subscription: self.sub.id(),
            tenant: self.sub.tenant(),
            to: status,
            error,
        }
        .emit(&self.hub.metrics);
        if let Err(e) = self
            .hub
            .store
            .set_subscription_status(
                self.sub.tenant(),
                self.sub.id(),
                self.sub.version,
                status.as_str(),
                error,
            )
            .await
        {
            tracing::error!(subscription = %self.sub.id(), error = %e, "cannot record a status change");
        }
    }

    /// Retry one message; on success bring an errored subscription back to active. A
    /// handshake shows `error` at its first failure (the IG: any error in the initial
    /// handshake SHALL set error), and keeps being retried on the schedule. An event
    /// notification's `progress` (see [`HttpAttempt`]) and pending retry `from` a restart.
    async fn deliver(
        &self,
        dispatch: Dispatch,
        kind: Kind,
        status: &mut Status,
        progress: Option<(i64, &mut Vec<NewAudit>)>,
        from: Option<Pending>,
    ) -> Final {
        let schedule: &Schedule = &self.hub.schedule;
        let error_after = if kind == Kind::Handshake {
            1
        } else {
            self.hub.config.delivery.error_after_failures
        };
        let mut attempt = HttpAttempt {
            w: self,
            dispatch,
            status,
            error_after,
            progress,
        };
        let result = deliver_with_retries(&mut attempt, schedule, &self.stop, from).await;
        match &result {
            Final::Delivered if *status != Status::Active => {
                self.set_status(Status::Active, None).await;
                *status = Status::Active;
            }
            Final::Gone(reason) => {
                self.set_status(
                    Status::Off,
                    Some(&format!("the endpoint answered 410 Gone ({reason})")),
                )
                .await;
            }
            Final::GaveUp(reason) => self.set_status(Status::Off, Some(reason)).await,
            _ => {}
        }
        result
    }

    pub(super) async fn run(self) -> Ended {
        let hub = &self.hub;
        let (tenant, id) = (self.sub.tenant(), self.sub.id());
        let mut pending: Option<Pending> = None;
        let (mut status, mut delivered, mut last_sent) = match &self.resume {
            Some(r) => (r.status, r.delivered, r.last_sent),
            None => {
                let mut status = self.sub.status;
                if status == Status::Requested {
                    let d =
                        self.message(status, Kind::Handshake, self.sub.events_since_start, None);
                    match Box::pin(self.deliver(d, Kind::Handshake, &mut status, None, None)).await
                    {
                        Final::Delivered => {}
                        Final::Refused => return self.refused(),
                        _ => return Ended::Done,
                    }
                    tracing::info!(subscription = %self.sub.id(), "handshake accepted");
                }
                // This worker is the rest-hook reader: its cursor is `delivered_through`.
                let Some(state) =
                    crate::retry::until_ok(&self.stop, "reading delivery state", || {
                        hub.store.delivery_state(self.sub.log_key)
                    })
                    .await
                else {
                    return Ended::Done;
                };
                // a retry pending when the last worker stopped goes on where it was
                pending = Pending::stored(&state);
                (status, state.delivered_through, tokio::time::Instant::now())
            }
        };
        let heartbeat = self
            .sub
            .spec
            .channel
            .heartbeat_secs
            .map(|s| Duration::from_secs(u64::from(s)));
        let park_after = Some(hub.config.delivery.park_idle_after_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let mut busy_at = tokio::time::Instant::now();
        let mut heartbeat_failures = self.resume.as_ref().map_or(0, |r| r.heartbeat_failures);
        // a rest-hook worker may be far behind (an endpoint down for a day): no lag limit
        let mut stream = SubscriptionStream::open(hub, &self.sub, delivered).without_lag_limit();
        let group = crate::channels::group_size(&self.sub);
        loop {
            let beat_at = heartbeat.map(|p| last_sent + p);
            let park_at = park_after.map(|p| busy_at + p);
            let quiet_until = match (beat_at, park_at) {
                (Some(b), Some(p)) => Some(b.min(p)),
                (b, p) => b.or(p),
            };
            let batch = match stream
                .next(
                    usize::try_from(hub.config.delivery.batch_size).unwrap_or(1),
                    quiet_until,
                    &self.stop,
                )
                .await
            {
                None => return Ended::Done,
                Some(Err(e)) => {
                    tracing::warn!(subscription = %id, error = %e, "cannot read notifications");
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ended::Done,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                Some(Ok(Item::Quiet)) => {
                    if beat_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        Box::pin(self.heartbeat(&mut status, &mut heartbeat_failures)).await;
                        last_sent = tokio::time::Instant::now();
                        continue;
                    }
                    // idle for `park_after`: park, unless something was logged meanwhile
                    if !stream.parkable() {
                        busy_at = tokio::time::Instant::now();
                        continue;
                    }
                    let client = match self.client.lock() {
                        Ok(c) => c.clone(),
                        Err(poisoned) => poisoned.into_inner().clone(),
                    };
                    let resume = Resume {
                        client,
                        pinned: self.pinned(),
                        delivered,
                        last_sent,
                        status,
                        heartbeat_failures,
                    };
                    return Ended::Parked(resume, stream.into_idle());
                }
                // never said to a stream without a lag limit
                Some(Ok(Item::Lagging { .. })) => continue,
                // this incarnation is gone: its lease goes with it, a new one gets a worker
                Some(Ok(Item::Deleted)) => return self.refused(),
                Some(Ok(Item::HistoryGone { after, resumes_at })) => {
                    // Retention keeps what this reader has not delivered, so this means the
                    // log was purged by hand: say so loudly and go on.
                    tracing::error!(subscription = %id, tenant = %tenant, after, resumes_at, "notifications missing from the log; skipping to what remains");
                    delivered = resumes_at - 1;
                    if let Some(end) = Box::pin(self.record(delivered)).await {
                        return end;
                    }
                    continue;
                }
                Some(Ok(Item::Notifications(batch))) => batch,
            };
            // Progress is recorded once per batch (and at least every RECORD_EVERY), not per
            // notification: a crash re-sends at most that much, with the same webhook-ids.
            let mut recorded = delivered;
            let mut last_record = tokio::time::Instant::now();
            // one disclosure per delivered notification, written with the progress records;
            // the receiver is the owner's own endpoint (`channels::disclosure`)
            let disclosure = Disclosure::to_owner_endpoint(&self.sub);
            let Ok(batch) = disclosure.filter(batch) else {
                // an owner's endpoint has no credential of its own to end
                return Ended::Done;
            };
            let mut disclosed = Vec::new();
            for notes in batch.chunks(group) {
                let Some(last) = notes.last() else {
                    continue;
                };
                let d = self.message(
                    status,
                    Kind::EventNotification,
                    last.event_number,
                    Some(notes),
                );
                let progress = Some((delivered, &mut disclosed));
                let from = pending.take();
                let result =
                    Box::pin(self.deliver(d, Kind::EventNotification, &mut status, progress, from))
                        .await;
                if result == Final::Refused {
                    return self.refused();
                }
                if result == Final::Delivered {
                    delivered = last.event_number;
                    last_sent = tokio::time::Instant::now();
                    crate::metrics::Delivered {
                        channel: crate::metrics::Channel::RestHook,
                        notifications: notes.notes(),
                    }
                    .emit(&hub.metrics);
                    disclosed.extend(disclosure.audit_rows(notes));
                }
                let must_record =
                    result != Final::Delivered || last_record.elapsed() >= RECORD_EVERY;
                if must_record && delivered > recorded {
                    let rows = std::mem::take(&mut disclosed);
                    if Box::pin(crate::auth::record_disclosure(hub, rows))
                        .await
                        .is_err()
                    {
                        // audit.fail_closed: no more deliveries until the audit is written
                        // again (progress unrecorded: what went out is sent again, audited)
                        tracing::error!(subscription = %self.sub.id(), tenant = %self.sub.tenant(), "the audit trail cannot be written; rest-hook deliveries of this subscription pause");
                        return Ended::Done;
                    }
                    if let Some(end) = Box::pin(self.record(delivered)).await {
                        return end;
                    }
                    recorded = delivered;
                    last_record = tokio::time::Instant::now();
                }
                if result != Final::Delivered {
                    return Ended::Done;
                }
            }
            if Box::pin(crate::auth::record_disclosure(hub, disclosed))
                .await
                .is_err()
            {
                tracing::error!(subscription = %self.sub.id(), tenant = %self.sub.tenant(), "the audit trail cannot be written; rest-hook deliveries of this subscription pause");
                return Ended::Done;
            }
            if delivered > recorded
                && let Some(end) = Box::pin(self.record(delivered)).await
            {
                return end;
            }
            busy_at = tokio::time::Instant::now();
        }
    }
}
